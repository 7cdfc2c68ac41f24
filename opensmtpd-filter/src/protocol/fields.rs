//! Splitting a line into `|`-separated fields, and the small typed fields.

use core::fmt;

/// A cursor over the `|`-separated fields of one line. Only the last field a caller
/// takes with [`Fields::rest`] may contain `|`, as in the protocol.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Self {
        Fields { rest: Some(line) }
    }

    /// The next field, up to (not including) the next `|`, or the remainder if there is
    /// no further `|`. `None` once the line is used up.
    pub(crate) fn next_field(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        // Fields before the last are short (ids, names, a timestamp): a plain scan
        // beats a vectorised search's setup cost there.
        match rest.iter().position(|&b| b == b'|') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }

    /// The next field or an error naming it.
    pub(crate) fn expect(&mut self, name: &'static str) -> Result<&'a [u8], ParseError> {
        self.next_field().ok_or(ParseError::MissingField(name))
    }

    /// Everything left, `|` included: the last field of a line.
    pub(crate) fn rest(self) -> Option<&'a [u8]> {
        self.rest
    }

    /// Everything left, or an error naming the missing last field.
    pub(crate) fn expect_rest(self, name: &'static str) -> Result<&'a [u8], ParseError> {
        self.rest.ok_or(ParseError::MissingField(name))
    }

    /// Everything left, or the empty field if the line ended before it. Used for the
    /// requests smtpd sends with an empty parameter (`...|TOKEN|`), tolerating a
    /// daemon that leaves the final `|` off.
    pub(crate) fn rest_or_empty(self) -> &'a [u8] {
        self.rest.unwrap_or(b"")
    }

    /// Checks that no field is left.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        match self.rest {
            None => Ok(()),
            Some(_) => Err(ParseError::TrailingFields),
        }
    }
}

/// Splits `text` at its last `|`: the field order of the pre-0.6 `tx-mail`/`tx-rcpt`
/// and pre-0.7 `link-auth` lines, where the free-text field comes first.
pub(crate) fn split_last(text: &[u8]) -> Option<(&[u8], &[u8])> {
    memchr::memrchr(b'|', text).map(|i| (&text[..i], &text[i + 1..]))
}

/// Why a line could not be parsed. Small and `Copy`, like httparse's errors: it never
/// holds the line, so logging it can never leak a credential.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is empty.
    Empty,
    /// The first field is not `config`, `report` or `filter`.
    UnknownKind,
    /// A required field is missing; names the field.
    MissingField(&'static str),
    /// More fields than the event or phase has.
    TrailingFields,
    /// The version field is not `MAJOR.MINOR`.
    BadVersion,
    /// The timestamp is not `SECONDS.MICROSECONDS`.
    BadTimestamp,
    /// The subsystem is neither `smtp-in` nor `smtp-out` (or a filter line is not `smtp-in`).
    UnknownSubsystem,
    /// The report event is not one smtpd sends.
    UnknownEvent,
    /// The filter phase is not one smtpd sends.
    UnknownPhase,
    /// The session id is not hex.
    BadSessionId,
    /// The token is not hex.
    BadToken,
    /// A message id is not hex.
    BadMessageId,
    /// An envelope id is not hex.
    BadEnvelopeId,
    /// A number (a size, a timeout) is not decimal.
    BadNumber,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty line"),
            ParseError::UnknownKind => f.write_str("not a config, report or filter line"),
            ParseError::MissingField(name) => write!(f, "missing field: {name}"),
            ParseError::TrailingFields => f.write_str("more fields than expected"),
            ParseError::BadVersion => f.write_str("bad protocol version"),
            ParseError::BadTimestamp => f.write_str("bad timestamp"),
            ParseError::UnknownSubsystem => f.write_str("unknown subsystem"),
            ParseError::UnknownEvent => f.write_str("unknown report event"),
            ParseError::UnknownPhase => f.write_str("unknown filter phase"),
            ParseError::BadSessionId => f.write_str("session id is not hex"),
            ParseError::BadToken => f.write_str("token is not hex"),
            ParseError::BadMessageId => f.write_str("message id is not hex"),
            ParseError::BadEnvelopeId => f.write_str("envelope id is not hex"),
            ParseError::BadNumber => f.write_str("bad number"),
        }
    }
}

impl std::error::Error for ParseError {}

/// When smtpd wrote a line: `SECONDS.MICROSECONDS` since the epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch.
    pub secs: u64,
    /// Microseconds, below 1,000,000 when smtpd wrote it.
    pub micros: u32,
}

impl Timestamp {
    /// Parses `SECONDS.MICROSECONDS`, in one pass (it is on every line).
    pub fn parse(text: &[u8]) -> Option<Timestamp> {
        if text.is_empty() || text.len() > 31 {
            return None;
        }
        let (mut secs, mut micros, mut in_micros, mut digits) = (0u64, 0u64, false, 0usize);
        for &b in text {
            match b {
                b'0'..=b'9' if !in_micros => {
                    secs = secs.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                    digits += 1;
                }
                b'0'..=b'9' => micros = micros.checked_mul(10)?.checked_add(u64::from(b - b'0'))?,
                b'.' if !in_micros && digits > 0 => in_micros = true,
                _ => return None,
            }
        }
        if digits == 0 || (in_micros && text.last() == Some(&b'.')) {
            return None;
        }
        Some(Timestamp {
            secs,
            micros: u32::try_from(micros).ok()?,
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.secs, self.micros)
    }
}

/// Parses a non-empty run of ASCII digits that fits in a `u64`.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// The two directions smtpd reports on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Subsystem {
    /// Sessions of clients talking to smtpd (the only subsystem with filters).
    SmtpIn,
    /// Sessions smtpd opens to deliver mail elsewhere.
    SmtpOut,
}

impl Subsystem {
    /// Parses `smtp-in` / `smtp-out`.
    pub fn parse(text: &[u8]) -> Option<Subsystem> {
        match text {
            b"smtp-in" => Some(Subsystem::SmtpIn),
            b"smtp-out" => Some(Subsystem::SmtpOut),
            _ => None,
        }
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Subsystem::SmtpIn => "smtp-in",
            Subsystem::SmtpOut => "smtp-out",
        }
    }
}

impl fmt::Display for Subsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_with_pipe_in_last() {
        let mut f = Fields::new(b"a|b|c|d|e");
        assert_eq!(f.next_field(), Some(&b"a"[..]));
        assert_eq!(f.next_field(), Some(&b"b"[..]));
        assert_eq!(f.rest(), Some(&b"c|d|e"[..]));
        let mut f = Fields::new(b"a|");
        assert_eq!(f.next_field(), Some(&b"a"[..]));
        assert_eq!(f.rest(), Some(&b""[..]));
        let mut f = Fields::new(b"a");
        assert_eq!(f.next_field(), Some(&b"a"[..]));
        assert_eq!(f.rest(), None);
        assert_eq!(split_last(b"x|y|pass"), Some((&b"x|y"[..], &b"pass"[..])));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            Timestamp::parse(b"1700000000.000123"),
            Some(Timestamp {
                secs: 1_700_000_000,
                micros: 123
            })
        );
        assert_eq!(Timestamp::parse(b"17").map(|t| t.secs), Some(17));
        assert_eq!(
            Timestamp::parse(b"1700000000.000123").unwrap().to_string(),
            "1700000000.000123"
        );
        for bad in [
            &b""[..],
            b"x.1",
            b"1.x",
            b"1.99999999999",
            b"-1.0",
            b"99999999999999999999999.1",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad:?}");
        }
    }
}
