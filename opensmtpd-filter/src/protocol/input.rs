//! One line from smtpd, of any kind.

use super::fields::ParseError;
use super::handshake::{ConfigLine, parse_config};
use super::report::{Report, parse_report};
use super::request::{FilterRequest, parse_request};

/// A line smtpd sent, parsed. Every field borrows from the line; nothing is copied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input<'a> {
    /// `config|...` (handshake).
    Config(ConfigLine<'a>),
    /// `report|...` (an event; no answer expected).
    Report(Report<'a>),
    /// `filter|...` (a request; exactly one answer expected).
    Request(FilterRequest<'a>),
}

/// Parses one line, without its `\n`. Never panics, whatever the bytes.
///
/// ```
/// use opensmtpd_filter::protocol::{parse_line, Input, Request};
/// let line = b"filter|0.7|1700000000.000001|smtp-in|mail-from|0123456789abcdef|00000000000000aa|a|b@example.org";
/// let Input::Request(req) = parse_line(line).unwrap() else { unreachable!() };
/// assert_eq!(req.request, Request::MailFrom { address: b"a|b@example.org" });
/// ```
pub fn parse_line(line: &[u8]) -> Result<Input<'_>, ParseError> {
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(rest) = line.strip_prefix(b"filter|") {
        parse_request(rest).map(Input::Request)
    } else if let Some(rest) = line.strip_prefix(b"report|") {
        parse_report(rest).map(Input::Report)
    } else if let Some(rest) = line.strip_prefix(b"config|") {
        parse_config(rest).map(Input::Config)
    } else {
        Err(ParseError::UnknownKind)
    }
}

/// A short, loggable description of a line that could not be parsed: its first five
/// fields at most (kind, version, timestamp, subsystem, event or phase), cut at 80
/// bytes, and its length — never the parameters, which may hold an AUTH credential.
pub fn describe_line(line: &[u8]) -> String {
    let mut end = 0;
    let mut bars = 0;
    for (i, &b) in line.iter().enumerate() {
        if b == b'|' {
            bars += 1;
            if bars == 5 {
                break;
            }
        }
        end = i + 1;
        if end >= 80 {
            break;
        }
    }
    let shown: String = line[..end]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    format!("{shown:?} ({} bytes)", line.len())
}
