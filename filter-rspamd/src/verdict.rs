//! The rules, pure: rspamd's JSON reply in, a [`MessageVerdict`] out. No I/O, no clock.
//!
//! [`Scan::parse`] reads a `/checkv2` reply; [`Policy::decide`] turns it, with the
//! message, into what smtpd is told: the commit answer and the headers to add, remove or
//! rewrite. Every header written is built by [`header_lines`], which never lets a CR, LF
//! or control character from rspamd break a header or the protocol.

use std::fmt::Write as _;

use opensmtpd_filter::protocol::{CommitDecision, SmtpReply};
use opensmtpd_filter::runtime::MessageOutput;
use opensmtpd_filter::{Message, MessageVerdict};
use serde_json::Value;

/// The longest header line we write (RFC 5322: 998 octets without the CRLF).
pub const MAX_HEADER_LINE: usize = 998;

/// What rspamd tells the MTA to do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// `no action`.
    NoAction,
    /// `greylist`.
    Greylist,
    /// `add header`.
    AddHeader,
    /// `rewrite subject`.
    RewriteSubject,
    /// `soft reject`.
    SoftReject,
    /// `reject`.
    Reject,
    /// Anything else (taken as `no action`).
    Other(String),
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "no action" => Action::NoAction,
            "greylist" => Action::Greylist,
            "add header" => Action::AddHeader,
            "rewrite subject" => Action::RewriteSubject,
            "soft reject" => Action::SoftReject,
            "reject" => Action::Reject,
            other => Action::Other(other.to_string()),
        }
    }

    /// rspamd's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Action::NoAction => "no action",
            Action::Greylist => "greylist",
            Action::AddHeader => "add header",
            Action::RewriteSubject => "rewrite subject",
            Action::SoftReject => "soft reject",
            Action::Reject => "reject",
            Action::Other(s) => s,
        }
    }

    /// Whether rspamd says the message is spam.
    pub fn is_spam(&self) -> bool {
        matches!(
            self,
            Action::AddHeader | Action::RewriteSubject | Action::Reject
        )
    }
}

/// A header rspamd asks to add (`milter.add_headers`).
#[derive(Clone, PartialEq, Debug)]
pub struct AddHeader {
    /// The field name.
    pub name: String,
    /// The value as rspamd sent it (may hold CRLF folding).
    pub value: String,
    /// Where: `Some(n)` with n ≥ 0 inserts before the n-th existing field (0: on top);
    /// none or negative appends after the last field.
    pub order: Option<i64>,
}

/// One rspamd `/checkv2` reply, the parts we use.
#[derive(Clone, PartialEq, Debug)]
pub struct Scan {
    /// The action.
    pub action: Action,
    /// The score.
    pub score: f64,
    /// The score of the action rspamd took as the spam threshold.
    pub required: f64,
    /// The new Subject for `rewrite subject`.
    pub subject: Option<String>,
    /// `messages.smtp_message`: the text for the SMTP reply.
    pub smtp_message: Option<String>,
    /// `dkim-signature`: the signature values, in order.
    pub dkim: Vec<String>,
    /// `milter.add_headers`, in rspamd's order.
    pub add_headers: Vec<AddHeader>,
    /// `milter.remove_headers`: name and which occurrence (0: all, n > 0: the n-th,
    /// n < 0: the n-th from the end).
    pub remove_headers: Vec<(String, i64)>,
    /// The symbols with their scores, by name.
    pub symbols: Vec<(String, f64)>,
}

/// Why a reply is not usable.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BadReply(pub String);

impl std::fmt::Display for BadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn number(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

impl Scan {
    /// Reads a `/checkv2` reply body.
    pub fn parse(body: &[u8]) -> Result<Scan, BadReply> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| BadReply(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| BadReply("not a JSON object".into()))?;
        if let Some(err) = obj.get("error").and_then(Value::as_str) {
            return Err(BadReply(format!("rspamd error: {err}")));
        }
        let action = obj
            .get("action")
            .and_then(Value::as_str)
            .ok_or_else(|| BadReply("no action in the reply".into()))?;
        let mut symbols: Vec<(String, f64)> = match obj.get("symbols") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, s)| (k.clone(), number(s.get("score"))))
                .collect(),
            _ => Vec::new(),
        };
        symbols.sort_by(|a, b| a.0.cmp(&b.0));
        let milter = obj.get("milter");
        let mut add_headers = Vec::new();
        if let Some(Value::Object(m)) = milter.and_then(|m| m.get("add_headers")) {
            // rspamd writes `add_headers` from a hash table whose order changes from
            // one rspamd process to the next; sorting by name (stable, so an array
            // keeps its order) makes the appended headers the same on every MX.
            let mut names: Vec<(&String, &Value)> = m.iter().collect();
            names.sort_by(|a, b| {
                a.0.to_ascii_lowercase()
                    .cmp(&b.0.to_ascii_lowercase())
                    .then(a.0.cmp(b.0))
            });
            for (name, spec) in names {
                add_forms(name, spec, &mut add_headers);
            }
        }
        let mut remove_headers = Vec::new();
        if let Some(Value::Object(m)) = milter.and_then(|m| m.get("remove_headers")) {
            for (name, n) in m {
                remove_headers.push((name.clone(), n.as_i64().unwrap_or(0)));
            }
        }
        Ok(Scan {
            action: Action::parse(action),
            score: number(obj.get("score")),
            required: number(obj.get("required_score")),
            subject: obj
                .get("subject")
                .and_then(Value::as_str)
                .map(str::to_string),
            smtp_message: obj
                .get("messages")
                .and_then(|m| m.get("smtp_message"))
                .and_then(Value::as_str)
                .map(str::to_string),
            dkim: strings(obj.get("dkim-signature")),
            add_headers,
            remove_headers,
            symbols,
        })
    }

    /// Up to `n` symbols with the largest absolute scores (non-zero), largest first.
    pub fn top_symbols(&self, n: usize) -> Vec<(&str, f64)> {
        let mut s: Vec<(&str, f64)> = self
            .symbols
            .iter()
            .filter(|(_, sc)| *sc != 0.0)
            .map(|(k, sc)| (k.as_str(), *sc))
            .collect();
        s.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(b.0)));
        s.truncate(n);
        s
    }
}

/// Every form rspamd uses for one `add_headers` entry: a string, an object with
/// `value` (and `order`), or an array of either.
fn add_forms(name: &str, spec: &Value, out: &mut Vec<AddHeader>) {
    match spec {
        Value::String(s) => out.push(AddHeader {
            name: name.to_string(),
            value: s.clone(),
            order: None,
        }),
        Value::Object(o) => {
            if let Some(value) = o.get("value").and_then(Value::as_str) {
                out.push(AddHeader {
                    name: name.to_string(),
                    value: value.to_string(),
                    order: o
                        .get("order")
                        .or_else(|| o.get("index"))
                        .and_then(Value::as_i64),
                });
            }
        }
        Value::Array(a) => {
            for item in a {
                add_forms(name, item, out);
            }
        }
        _ => {}
    }
}

/// Whether to write X-Spam, X-Spam-Score and X-Spam-Status.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SpamHeaders {
    /// On every scanned message.
    Always,
    /// Never.
    Never,
    /// When rspamd's action is `add header` or `rewrite subject` (or a refusal that
    /// `--never-reject` turned into delivery), as the Go filter (which knows only `add header`).
    #[default]
    OnAction,
}

/// What to do with `greylist`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Greylist {
    /// Deliver (rspamd's greylist module answers `soft reject` when it greylists).
    #[default]
    Proceed,
    /// Answer 451.
    Tempfail,
}

/// What to do when rspamd cannot be asked or answers nonsense.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum OnError {
    /// `451 4.7.1`: the client retries later.
    #[default]
    Tempfail,
    /// Deliver unscanned.
    Accept,
}

/// What to do with mail of authenticated sessions.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AuthMode {
    /// Scan like any other (rspamd knows the user from the `User` header).
    #[default]
    Scan,
    /// Scan, but only add rspamd's DKIM signatures: never refuse, no other header.
    SignOnly,
    /// Do not scan.
    Skip,
}

/// The operator's choices.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Policy {
    /// X-Spam headers.
    pub spam_headers: SpamHeaders,
    /// `greylist`.
    pub greylist: Greylist,
    /// Errors.
    pub on_error: OnError,
    /// Authenticated sessions.
    pub authenticated: AuthMode,
    /// Never refuse: refusals become delivery with headers.
    pub never_reject: bool,
}

/// The reply to an error (`--on-error tempfail`).
pub const ERROR_REPLY: &str = "451 4.7.1 Temporary failure scanning the message, try again later";

/// What was decided about one message, for smtpd and for the log line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Outcome {
    /// For smtpd.
    pub verdict: MessageVerdict,
    /// For the log: `accept`, `reject`, `tempfail`, `headers`...
    pub result: &'static str,
}

impl Policy {
    /// What to answer when rspamd could not be asked or its reply is unusable.
    pub fn on_error(&self) -> MessageVerdict {
        match self.on_error {
            OnError::Accept => MessageVerdict::accept(),
            OnError::Tempfail => match SmtpReply::parse(ERROR_REPLY) {
                Ok(r) => MessageVerdict::reject(r),
                Err(_) => MessageVerdict::accept(),
            },
        }
    }

    /// The verdict on `message` given rspamd's `scan`; `authenticated` says whether the
    /// session authenticated (for [`AuthMode::SignOnly`]).
    pub fn decide(&self, scan: &Scan, message: &Message, authenticated: bool) -> Outcome {
        let sign_only = authenticated && self.authenticated == AuthMode::SignOnly;
        let mut edit = Edit::default();
        for sig in &scan.dkim {
            edit.top.push(("DKIM-Signature".into(), sig.clone()));
        }
        if sign_only {
            return edit.finish(message, CommitDecision::Proceed, "sign-only");
        }
        let refusal = match scan.action {
            Action::Reject => Some(reply(550, "5.7.1", scan, "Spam message rejected")),
            Action::SoftReject => Some(reply(451, "4.7.1", scan, "Try again later")),
            Action::Greylist if self.greylist == Greylist::Tempfail => {
                Some(reply(451, "4.7.1", scan, "Greylisted, try again later"))
            }
            _ => None,
        };
        if let Some(r) = refusal
            && !self.never_reject
        {
            let result = if r.code() >= 500 {
                "reject"
            } else {
                "tempfail"
            };
            return Outcome {
                verdict: MessageVerdict::reject(r),
                result,
            };
        }
        let flagged = scan.action.is_spam() || matches!(scan.action, Action::SoftReject);
        let spam_headers = match self.spam_headers {
            SpamHeaders::Always => true,
            SpamHeaders::Never => false,
            SpamHeaders::OnAction => {
                matches!(scan.action, Action::AddHeader | Action::RewriteSubject)
                    || (self.never_reject && flagged)
            }
        };
        if spam_headers {
            let yes = if flagged { "yes" } else { "no" };
            edit.top.push(("X-Spam".into(), yes.into()));
            edit.top.push((
                "X-Spam-Score".into(),
                format!("{:.2} / {:.2}", scan.score, scan.required),
            ));
            edit.top
                .push(("X-Spam-Status".into(), spam_status(scan, flagged)));
        }
        edit.remove = scan.remove_headers.clone();
        edit.add = scan.add_headers.clone();
        if scan.action == Action::RewriteSubject
            && let Some(s) = &scan.subject
        {
            edit.subject = Some(s.clone());
        }
        edit.finish(message, CommitDecision::Proceed, "accept")
    }
}

/// `CODE X.Y.Z text`, with rspamd's text when it gives one (sanitised, its own enhanced
/// code kept when it is of the same class).
fn reply(code: u16, enhanced: &str, scan: &Scan, fallback: &str) -> SmtpReply {
    let msg = scan
        .smtp_message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let text = match msg {
        Some(m) if has_enhanced_code(m, code) => m.to_string(),
        Some(m) => format!("{enhanced} {m}"),
        None => format!("{enhanced} {fallback}"),
    };
    SmtpReply::sanitized(code, text.as_bytes(), &format!("{enhanced} {fallback}")).unwrap_or_else(
        |_| SmtpReply::new(code, &format!("{enhanced} {fallback}")).expect("a valid reply"),
    )
}

fn has_enhanced_code(text: &str, code: u16) -> bool {
    let first = text.split(' ').next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    parts.len() == 3
        && parts[0] == (code / 100).to_string()
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `Yes, score=S required=R` then `tests=[A=1.000, B=2.000, ...]` folded at 78 columns
/// with every comma kept.
pub fn spam_status(scan: &Scan, spam: bool) -> String {
    let mut out = format!(
        "{}, score={:.3} required={:.3}",
        if spam { "Yes" } else { "No" },
        scan.score,
        scan.required
    );
    if scan.symbols.is_empty() {
        return out;
    }
    out.push_str("\r\n\ttests=[");
    let mut col = 8 + 7;
    let n = scan.symbols.len();
    for (i, (name, score)) in scan.symbols.iter().enumerate() {
        let mut item = String::new();
        let _ = write!(item, "{name}={score:.3}");
        item.push(if i + 1 == n { ']' } else { ',' });
        if i > 0 {
            if col + 1 + item.len() > 78 {
                out.push_str("\r\n\t");
                col = 8;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(&item);
        col += item.len();
    }
    out
}

/// The header changes for one message.
#[derive(Default)]
struct Edit {
    /// On top, in this order.
    top: Vec<(String, String)>,
    remove: Vec<(String, i64)>,
    add: Vec<AddHeader>,
    subject: Option<String>,
}

/// A header field of the message: its lines (without `\n`).
struct Field<'a> {
    name: &'a [u8],
    lines: Vec<&'a [u8]>,
}

fn fields(header_section: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    let section = header_section.strip_suffix(b"\n").unwrap_or(header_section);
    if section.is_empty() {
        return out;
    }
    for line in section.split(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        match out.last_mut() {
            Some(f) if continuation => f.lines.push(line),
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(&line[..0], |c| trim_ascii_end(&line[..c]));
                out.push(Field {
                    name,
                    lines: vec![line],
                });
            }
        }
    }
    out
}

fn trim_ascii_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &s[..end]
}

impl Edit {
    fn finish(self, message: &Message, decision: CommitDecision, result: &'static str) -> Outcome {
        let mut top: Vec<Vec<u8>> = Vec::new();
        for (name, value) in &self.top {
            top.extend(header_lines(name, value));
        }
        let needs_rewrite = self.subject.is_some()
            || !self.add.is_empty()
            || self.remove.iter().any(|(name, _)| {
                message
                    .headers()
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            });
        let output = if !needs_rewrite {
            if top.is_empty() {
                MessageOutput::Unchanged
            } else {
                MessageOutput::Prepend(top)
            }
        } else {
            MessageOutput::Headers(self.rewrite(message, top))
        };
        Outcome {
            verdict: MessageVerdict { decision, output },
            result,
        }
    }

    /// The new header section; the rest of the message goes on as it is stored.
    fn rewrite(&self, message: &Message, top: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let section = message.header_section();
        let mut kept: Vec<Field<'_>> = fields(section);
        // removals, on the message's own fields
        for (name, which) in &self.remove {
            let matching: Vec<usize> = kept
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(i, _)| i)
                .collect();
            let drop: Vec<usize> = match *which {
                0 => matching,
                n if n > 0 => matching.get(n as usize - 1).copied().into_iter().collect(),
                n => {
                    let back = n.unsigned_abs() as usize;
                    matching
                        .len()
                        .checked_sub(back)
                        .and_then(|i| matching.get(i).copied())
                        .into_iter()
                        .collect()
                }
            };
            for i in drop.into_iter().rev() {
                kept.remove(i);
            }
        }
        let subject_lines = self.subject.as_ref().map(|s| header_lines("Subject", s));
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(top.len() + kept.len() + self.add.len());
        let push = |line: &[u8], out: &mut Vec<Vec<u8>>| out.push(line.to_vec());
        for l in &top {
            push(l, &mut out);
        }
        let inserts = |index: usize| {
            self.add
                .iter()
                .filter(move |h| h.order.is_some_and(|o| o >= 0 && o as usize == index))
        };
        let mut subject_done = false;
        for (i, f) in kept.iter().enumerate() {
            for h in inserts(i) {
                for l in header_lines(&h.name, &h.value) {
                    push(&l, &mut out);
                }
            }
            match &subject_lines {
                Some(lines) if !subject_done && f.name.eq_ignore_ascii_case(b"Subject") => {
                    for l in lines {
                        push(l, &mut out);
                    }
                    subject_done = true;
                }
                _ => {
                    for l in &f.lines {
                        push(l, &mut out);
                    }
                }
            }
        }
        if let Some(lines) = &subject_lines
            && !subject_done
        {
            for l in lines {
                push(l, &mut out);
            }
        }
        // inserts beyond the last field, then appends, in rspamd's order
        for h in self
            .add
            .iter()
            .filter(|h| h.order.is_some_and(|o| o >= 0 && o as usize >= kept.len()))
            .chain(self.add.iter().filter(|h| h.order.is_none_or(|o| o < 0)))
        {
            for l in header_lines(&h.name, &h.value) {
                push(&l, &mut out);
            }
        }
        out
    }
}

/// Whether `name` can be a header field name (printable ASCII, no colon).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// The lines of header `name: value`, safe to write: the value's own line breaks (CRLF,
/// LF or CR) become folds (a continuation line always starts with white space), other
/// control characters become spaces, empty continuation lines are dropped, and lines
/// longer than [`MAX_HEADER_LINE`] are folded at white space or, failing that, cut.
/// An invalid name gives no lines.
pub fn header_lines(name: &str, value: &str) -> Vec<Vec<u8>> {
    if !valid_name(name) {
        return Vec::new();
    }
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (i, piece) in value
        .split(['\r', '\n'])
        .enumerate()
        .filter(|(i, p)| *i == 0 || !p.trim().is_empty())
    {
        let clean: Vec<u8> = piece
            .bytes()
            .map(|b| {
                if b < 0x20 && b != b'\t' || b == 0x7f {
                    b' '
                } else {
                    b
                }
            })
            .collect();
        let mut line = if i == 0 {
            let mut l = format!("{name}:").into_bytes();
            if !clean.is_empty() {
                l.push(b' ');
                l.extend_from_slice(trim_start(&clean));
            }
            l
        } else if clean.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            clean
        } else {
            let mut l = vec![b'\t'];
            l.extend_from_slice(&clean);
            l
        };
        while line.len() > MAX_HEADER_LINE {
            let cut = line[1..MAX_HEADER_LINE]
                .iter()
                .rposition(|&b| b == b' ' || b == b'\t')
                .map(|p| p + 1)
                .filter(|&p| p > 1 && line[..p].iter().any(|&b| b != b' ' && b != b'\t'))
                .unwrap_or(MAX_HEADER_LINE);
            let rest = line.split_off(cut);
            lines.push(line);
            line = if rest.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                rest
            } else {
                let mut l = vec![b'\t'];
                l.extend_from_slice(&rest);
                l
            };
        }
        lines.push(line);
    }
    lines
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies recorded from rspamd 3.4 (tests/replies/, see the README there).
    fn recorded(name: &str) -> Scan {
        let path = format!("{}/tests/replies/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Scan::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn msg(text: &str) -> Message {
        Message::new(text.as_bytes().to_vec())
    }

    const PLAIN: &str = "Received: from client\n\tby mx\nFrom: <a@example.org>\nSubject: hello there\nX-Spam: forged\nTo: <b@lab.test>\n\nbody\n.leading dot\n";

    /// The message as it goes on: the new header section, then the rest as stored.
    fn replaced(o: &Outcome, m: &Message) -> String {
        match &o.verdict.output {
            MessageOutput::Headers(lines) => {
                let mut out = Vec::new();
                for l in lines {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
                let all = m.to_vec().unwrap();
                out.extend_from_slice(&all[m.header_section().len()..]);
                String::from_utf8(out).unwrap()
            }
            other => panic!("not replaced: {other:?}"),
        }
    }

    fn lines(v: &[Vec<u8>]) -> Vec<String> {
        v.iter()
            .map(|l| String::from_utf8(l.clone()).unwrap())
            .collect()
    }

    #[test]
    fn parses_every_recorded_reply() {
        let n = recorded("normal");
        assert_eq!(n.action, Action::NoAction);
        assert_eq!((n.score, n.required), (0.9, 15.0));
        assert_eq!(n.add_headers.len(), 6);
        // by name
        assert_eq!(n.add_headers[0].name, "Authentication-Results");
        assert_eq!(n.add_headers[0].order, Some(1));
        assert_eq!(n.add_headers[5].name, "X-Spamd-Result");
        assert_eq!(n.remove_headers[0], ("X-Spamd-Result".into(), 0));
        assert_eq!(
            n.top_symbols(2),
            vec![("DATE_IN_PAST", 1.0), ("MIME_GOOD", -0.1)]
        );
        let g = recorded("gtube");
        assert_eq!(g.action, Action::Reject);
        assert_eq!(g.smtp_message.as_deref(), Some("Gtube pattern"));
        assert_eq!(recorded("soft").action, Action::SoftReject);
        assert_eq!(recorded("greylist").action, Action::Greylist);
        assert_eq!(recorded("addheader").action, Action::AddHeader);
        let r = recorded("rewrite");
        assert_eq!(r.action, Action::RewriteSubject);
        assert_eq!(
            r.subject.as_deref(),
            Some("*** SPAM *** a long subject that is folded")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"{\"score\": 1}",
            b"{\"error\": \"bad request\"}",
            b"{\"action\": 5}",
        ] {
            assert!(
                Scan::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reject_and_soft_reject() {
        let p = Policy::default();
        let o = p.decide(&recorded("gtube"), &msg(PLAIN), false);
        assert_eq!(
            o.verdict,
            MessageVerdict::reject(SmtpReply::parse("550 5.7.1 Gtube pattern").unwrap())
        );
        assert_eq!(o.result, "reject");
        let o = p.decide(&recorded("soft"), &msg(PLAIN), false);
        assert_eq!(
            o.verdict.decision,
            CommitDecision::Reject(SmtpReply::parse("451 4.7.1 Try again later (test)").unwrap())
        );
        // no message, a hostile message, a message with its own enhanced code
        let mut s = recorded("gtube");
        s.smtp_message = None;
        assert_eq!(
            p.decide(&s, &msg(PLAIN), false).verdict.decision,
            CommitDecision::Reject(SmtpReply::parse("550 5.7.1 Spam message rejected").unwrap())
        );
        s.smtp_message = Some("bad\r\nRCPT TO:<x@y>\u{7}\u{e9}".into());
        assert_eq!(
            p.decide(&s, &msg(PLAIN), false).verdict.decision,
            CommitDecision::Reject(SmtpReply::parse("550 5.7.1 bad??RCPT TO:<x@y>???").unwrap())
        );
        s.smtp_message = Some("5.7.0 Policy says no".into());
        assert_eq!(
            p.decide(&s, &msg(PLAIN), false).verdict.decision,
            CommitDecision::Reject(SmtpReply::parse("550 5.7.0 Policy says no").unwrap())
        );
        s.smtp_message = Some("4.7.0 wrong class".into());
        assert_eq!(
            p.decide(&s, &msg(PLAIN), false).verdict.decision,
            CommitDecision::Reject(SmtpReply::parse("550 5.7.1 4.7.0 wrong class").unwrap())
        );
        s.smtp_message = Some("x".repeat(2000));
        let CommitDecision::Reject(r) = p.decide(&s, &msg(PLAIN), false).verdict.decision else {
            panic!()
        };
        assert!(r.as_str().len() <= 510);
    }

    #[test]
    fn greylist_proceeds_or_tempfails() {
        let s = recorded("greylist");
        let o = Policy::default().decide(&s, &msg(PLAIN), false);
        assert_eq!(o.verdict.decision, CommitDecision::Proceed);
        let p = Policy {
            greylist: Greylist::Tempfail,
            ..Policy::default()
        };
        assert_eq!(
            p.decide(&s, &msg(PLAIN), false).verdict.decision,
            CommitDecision::Reject(
                SmtpReply::parse("451 4.7.1 Greylisted, try again later").unwrap()
            )
        );
    }

    #[test]
    fn milter_headers_in_order_and_removals() {
        let o = Policy::default().decide(&recorded("normal"), &msg(PLAIN), false);
        assert_eq!(o.verdict.decision, CommitDecision::Proceed);
        let out = replaced(&o, &msg(PLAIN));
        // X-Spam (in remove_headers) is gone; Authentication-Results (order 1) is the
        // second field; the others follow the message's fields by name; the body is
        // byte for byte the same
        assert!(!out.contains("X-Spam: forged"), "{out}");
        let names: Vec<&str> = out
            .split("\n\n")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with(['\t', ' ']))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Received",
                "Authentication-Results",
                "From",
                "Subject",
                "To",
                "X-Rspamd-Action",
                "X-Rspamd-Queue-Id",
                "X-Rspamd-Server",
                "X-Spam-Status",
                "X-Spamd-Result"
            ]
        );
        assert!(
            out.contains("Authentication-Results: mx.lab.test;\n\tnone\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "X-Spamd-Result: default: False [0.90 / 15.00];\n\tDATE_IN_PAST(1.00)[7811];\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("\n\nbody\n.leading dot\n"), "{out}");
        assert!(!out.contains('\r'));
    }

    #[test]
    fn remove_headers_occurrences() {
        let m = msg("A: 1\nB: x\nA: 2\n\tfolded\nA: 3\n\nbody\n");
        let mut s = recorded("gtube");
        s.action = Action::NoAction;
        let run = |which: i64| {
            let mut s = s.clone();
            s.remove_headers = vec![("a".into(), which)];
            let out = replaced(&Policy::default().decide(&s, &m, false), &m);
            out.split("\n\n").next().unwrap().to_string()
        };
        assert_eq!(run(0), "B: x");
        assert_eq!(run(1), "B: x\nA: 2\n\tfolded\nA: 3");
        assert_eq!(run(2), "A: 1\nB: x\nA: 3");
        assert_eq!(run(-1), "A: 1\nB: x\nA: 2\n\tfolded");
        assert_eq!(run(-3), "B: x\nA: 2\n\tfolded\nA: 3");
        assert_eq!(run(4), "A: 1\nB: x\nA: 2\n\tfolded\nA: 3");
        // nothing to remove and nothing to add: untouched
        s.remove_headers = vec![("X-Absent".into(), 0)];
        assert_eq!(
            Policy::default().decide(&s, &m, false).verdict.output,
            MessageOutput::Unchanged
        );
    }

    #[test]
    fn add_headers_in_every_form() {
        let body = br#"{"action":"no action","score":0,"required_score":15,
            "milter":{"add_headers":{
              "X-One":"plain string",
              "X-Arr":["first",{"value":"second","order":0},"third"],
              "X-Obj":{"value":"top","order":0},
              "X-Bad Name":"dropped",
              "X-Num":5
            }}}"#;
        let s = Scan::parse(body).unwrap();
        assert_eq!(s.add_headers.len(), 6);
        let out = replaced(
            &Policy::default().decide(&s, &msg("From: a\n\nb\n"), false),
            &msg("From: a\n\nb\n"),
        );
        assert_eq!(
            out,
            "X-Arr: second\nX-Obj: top\nFrom: a\nX-Arr: first\nX-Arr: third\nX-One: plain string\n\nb\n"
        );
    }

    #[test]
    fn appended_headers_do_not_depend_on_rspamds_key_order() {
        // Two rspamd processes write the same headers in different key orders.
        let a = br#"{"action":"no action","milter":{"add_headers":{
            "X-Spamd-Result":"r","X-Rspamd-Server":"s","x-rspamd-action":"a"}}}"#;
        let b = br#"{"action":"no action","milter":{"add_headers":{
            "x-rspamd-action":"a","X-Spamd-Result":"r","X-Rspamd-Server":"s"}}}"#;
        let out = |body: &[u8]| {
            let s = Scan::parse(body).unwrap();
            replaced(
                &Policy::default().decide(&s, &msg("From: a\n\nb\n"), false),
                &msg("From: a\n\nb\n"),
            )
        };
        assert_eq!(out(a), out(b));
        assert_eq!(
            out(a),
            "From: a\nx-rspamd-action: a\nX-Rspamd-Server: s\nX-Spamd-Result: r\n\nb\n"
        );
    }

    #[test]
    fn spam_headers_when_asked() {
        let s = recorded("addheader");
        let p = Policy::default();
        let out = replaced(&p.decide(&s, &msg(PLAIN), false), &msg(PLAIN));
        assert!(out.starts_with("X-Spam: yes\nX-Spam-Score: 0.90 / 100.00\nX-Spam-Status: Yes, score=0.900 required=100.000\n\ttests=[ARC_NA=0.000, DATE_IN_PAST=1.000, FROM_EQ_ENVFROM=0.000,\n"), "{out}");
        // every comma kept, no line over 78 columns, closing bracket
        let status: String = out
            .split("X-Spam-Status: ")
            .nth(1)
            .unwrap()
            .split("\nReceived:")
            .next()
            .unwrap()
            .to_string();
        assert!(status.lines().all(|l| l.len() <= 78), "{status}");
        let tests = status.split("tests=[").nth(1).unwrap();
        let items: Vec<&str> = tests.split(',').collect();
        assert_eq!(items.len(), s.symbols.len(), "{status}");
        assert!(tests.trim_end().ends_with(']'));
        // no action: none by default, "no" with always, none with never
        let n = recorded("normal");
        assert!(!replaced(&p.decide(&n, &msg(PLAIN), false), &msg(PLAIN)).contains("X-Spam:"));
        let always = Policy {
            spam_headers: SpamHeaders::Always,
            ..p
        };
        assert!(
            replaced(&always.decide(&n, &msg(PLAIN), false), &msg(PLAIN))
                .starts_with("X-Spam: no\n")
        );
        let never = Policy {
            spam_headers: SpamHeaders::Never,
            ..p
        };
        assert!(!replaced(&never.decide(&s, &msg(PLAIN), false), &msg(PLAIN)).contains("X-Spam:"));
    }

    #[test]
    fn rewrite_subject_even_folded() {
        let mut s = recorded("rewrite");
        s.add_headers.clear();
        let m = msg("From: a\nSubject: a long subject\n that is folded\nTo: b\n\nbody\n");
        let out = replaced(&Policy::default().decide(&s, &m, false), &m);
        assert!(
            out.contains("From: a\nSubject: *** SPAM *** a long subject that is folded\nTo: b\n"),
            "{out}"
        );
        assert!(!out.contains("\n that is folded"), "{out}");
        // a message without Subject gets one; a hostile subject stays one header
        let mut s2 = s.clone();
        s2.subject = Some("evil\r\nBcc: x@y\r\n".into());
        let out = replaced(
            &Policy::default().decide(&s2, &msg("From: a\n\nb\n"), false),
            &msg("From: a\n\nb\n"),
        );
        assert!(out.contains("Subject: evil\n\tBcc: x@y\n"), "{out}");
    }

    #[test]
    fn never_reject_and_sign_only() {
        let p = Policy {
            never_reject: true,
            ..Policy::default()
        };
        let o = p.decide(&recorded("gtube"), &msg(PLAIN), false);
        assert_eq!(o.verdict.decision, CommitDecision::Proceed);
        let MessageOutput::Prepend(top) = &o.verdict.output else {
            panic!("{o:?}")
        };
        assert_eq!(lines(top)[0], "X-Spam: yes");
        let mut s = recorded("gtube");
        s.dkim = vec!["v=1; a=rsa-sha256; d=lab.test;\r\n\tb=abc".into()];
        let sign = Policy {
            authenticated: AuthMode::SignOnly,
            ..Policy::default()
        };
        let o = sign.decide(&s, &msg(PLAIN), true);
        assert_eq!(o.verdict.decision, CommitDecision::Proceed);
        assert_eq!(
            o.verdict.output,
            MessageOutput::Prepend(vec![
                b"DKIM-Signature: v=1; a=rsa-sha256; d=lab.test;".to_vec(),
                b"\tb=abc".to_vec()
            ])
        );
        // not authenticated: scanned as usual
        assert!(sign.decide(&s, &msg(PLAIN), false).verdict.decision != CommitDecision::Proceed);
    }

    #[test]
    fn dkim_signatures_string_or_array() {
        let s =
            Scan::parse(br#"{"action":"no action","dkim-signature":["v=1; a","v=1; b"]}"#).unwrap();
        assert_eq!(s.dkim, ["v=1; a", "v=1; b"]);
        let o = Policy::default().decide(&s, &msg("From: a\n\nb\n"), false);
        assert_eq!(
            o.verdict.output,
            MessageOutput::Prepend(vec![
                b"DKIM-Signature: v=1; a".to_vec(),
                b"DKIM-Signature: v=1; b".to_vec()
            ])
        );
        let s = Scan::parse(br#"{"action":"no action","dkim-signature":"v=1; c"}"#).unwrap();
        assert_eq!(s.dkim, ["v=1; c"]);
    }

    #[test]
    fn header_lines_never_break() {
        assert_eq!(lines(&header_lines("X-A", "v")), ["X-A: v"]);
        assert_eq!(
            lines(&header_lines("X-A", "a\r\nb\n\tc\r\r\n\n d\x00e\x1b")),
            ["X-A: a", "\tb", "\tc", " d e "]
        );
        assert!(header_lines("X A", "v").is_empty());
        assert!(header_lines("X:A", "v").is_empty());
        assert!(header_lines("", "v").is_empty());
        let long = header_lines("X-Long", &"word ".repeat(500));
        assert!(long.len() > 1);
        assert!(long.iter().all(|l| l.len() <= MAX_HEADER_LINE));
        assert!(long[1..].iter().all(|l| l[0] == b' ' || l[0] == b'\t'));
        let solid = header_lines("X-Solid", &"x".repeat(3000));
        assert!(
            solid.iter().all(|l| l.len() <= MAX_HEADER_LINE),
            "{:?}",
            lines(&solid)
        );
        assert!(solid[1..].iter().all(|l| l[0] == b'\t' || l[0] == b' '));
        for l in long.iter().chain(&solid) {
            assert!(!l.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
        }
    }

    #[test]
    fn errors_follow_the_policy() {
        assert_eq!(
            Policy::default().on_error(),
            MessageVerdict::reject(SmtpReply::parse(ERROR_REPLY).unwrap())
        );
        let accept = Policy {
            on_error: OnError::Accept,
            ..Policy::default()
        };
        assert_eq!(accept.on_error(), MessageVerdict::accept());
    }
}
