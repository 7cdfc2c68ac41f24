//! Properties of the protocol core, over arbitrary input:
//!
//! - whatever a filter asks of the typed answer API (arbitrary decisions from
//!   arbitrary bytes, arbitrary data lines up to 70,000 bytes, any version 0.4 to 0.7,
//!   any rules), every line written passes the independent `testkit::Validator` of
//!   smtpd's rules, ends with exactly one `\n` and holds no other;
//! - `parse_line` never panics, on arbitrary bytes and on mutations of valid lines, and
//!   what it parses can be answered validly;
//! - dot-stuffing round-trips and never yields the end marker.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use opensmtpd_filter::protocol::{
    AnswerRules, CommitDecision, Decision, EncodeError, EventKind, Input, Interest, LongLines,
    Parameter, Phase, SmtpReply, Ticket, Version, is_end_of_message, parse_line, stuff_into,
    stuffed_len, unstuff,
};
use opensmtpd_filter::testkit::Validator;

const TS: &str = "1700000000.000001";

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn show(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned()
}

// ---------------------------------------------------------------------------------------
// Arbitrary API calls
// ---------------------------------------------------------------------------------------

/// How a reply is built from arbitrary input.
#[derive(Clone, Debug)]
enum ReplySpec {
    /// `SmtpReply::new(code, text)`, the text from arbitrary bytes (lossy UTF-8).
    New(u16, Vec<u8>),
    /// `SmtpReply::parse(line)`.
    Parse(String),
    /// `SmtpReply::sanitized(code, text, fallback)`.
    Sanitized(u16, Vec<u8>, String),
}

impl ReplySpec {
    fn build(&self) -> Option<SmtpReply> {
        match self {
            ReplySpec::New(code, text) => SmtpReply::new(*code, &String::from_utf8_lossy(text)),
            ReplySpec::Parse(line) => SmtpReply::parse(line),
            ReplySpec::Sanitized(code, text, fallback) => {
                SmtpReply::sanitized(*code, text, fallback)
            }
        }
        .ok()
    }
}

#[derive(Clone, Debug)]
enum DecisionSpec {
    Proceed,
    Junk,
    Reject(ReplySpec),
    Disconnect(ReplySpec),
    Rewrite(Vec<u8>),
    Report(Vec<u8>),
}

impl DecisionSpec {
    /// The decision, or `None` when its value could not be built (the call is skipped).
    fn build(&self) -> Option<Decision> {
        Some(match self {
            DecisionSpec::Proceed => Decision::Proceed,
            DecisionSpec::Junk => Decision::Junk,
            DecisionSpec::Reject(r) => Decision::Reject(r.build()?),
            DecisionSpec::Disconnect(r) => Decision::Disconnect(r.build()?),
            DecisionSpec::Rewrite(p) => Decision::Rewrite(Parameter::new(p.clone()).ok()?),
            DecisionSpec::Report(p) => Decision::Report(Parameter::new(p.clone()).ok()?),
        })
    }
}

#[derive(Clone, Debug)]
enum CommitSpec {
    Proceed,
    Reject(ReplySpec),
    Disconnect(ReplySpec),
}

impl CommitSpec {
    fn build(&self) -> Option<CommitDecision> {
        Some(match self {
            CommitSpec::Proceed => CommitDecision::Proceed,
            CommitSpec::Reject(r) => CommitDecision::Reject(r.build()?),
            CommitSpec::Disconnect(r) => CommitDecision::Disconnect(r.build()?),
        })
    }
}

#[derive(Clone, Debug)]
enum LineSpec {
    /// `DataTicket::line(content)`.
    Line(Vec<u8>),
    /// `DataTicket::raw_line(wire)`.
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Op {
    /// A request of a decision phase, with its parameter, answered with a decision.
    Decide {
        session: usize,
        token: u64,
        phase: Phase,
        param: Vec<u8>,
        decision: DecisionSpec,
    },
    /// A commit request answered.
    Commit {
        session: usize,
        token: u64,
        decision: CommitSpec,
    },
    /// A message: data-line requests, the lines written, the final `.`.
    Data {
        session: usize,
        token: u64,
        lines: Vec<LineSpec>,
    },
}

fn code() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 400u16..600, 1 => any::<u16>()]
}

fn printable(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~\t]{{0,{max}}}")).unwrap()
}

fn reply() -> impl Strategy<Value = ReplySpec> {
    prop_oneof![
        (
            code(),
            prop_oneof![
                printable(600).prop_map(String::into_bytes),
                vec(any::<u8>(), 0..64)
            ]
        )
            .prop_map(|(c, t)| ReplySpec::New(c, t)),
        prop_oneof![
            (code(), printable(520)).prop_map(|(c, t)| format!("{c} {t}")),
            printable(40),
            any::<String>(),
        ]
        .prop_map(ReplySpec::Parse),
        (code(), vec(any::<u8>(), 0..700), printable(20))
            .prop_map(|(c, t, f)| ReplySpec::Sanitized(c, t, f)),
    ]
}

fn param_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64),
        1 => vec(any::<u8>(), 0..1100),
        1 => vec(select(vec![b'|', b'\r', b'\n', 0, b'a', 0xe9, 0xff]), 0..8),
    ]
}

fn decision() -> impl Strategy<Value = DecisionSpec> {
    prop_oneof![
        Just(DecisionSpec::Proceed),
        Just(DecisionSpec::Junk),
        reply().prop_map(DecisionSpec::Reject),
        reply().prop_map(DecisionSpec::Disconnect),
        param_bytes().prop_map(DecisionSpec::Rewrite),
        param_bytes().prop_map(DecisionSpec::Report),
    ]
}

fn commit() -> impl Strategy<Value = CommitSpec> {
    prop_oneof![
        Just(CommitSpec::Proceed),
        reply().prop_map(CommitSpec::Reject),
        reply().prop_map(CommitSpec::Disconnect),
    ]
}

/// Message lines: mostly short arbitrary bytes, some at and around the length limits
/// (with a leading dot and a newline sometimes), some arbitrary up to 70,000 bytes.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let edge = select(vec![
        0usize, 1, 2, 1_996, 1_997, 1_998, 2_047, 65_483, 65_484, 65_485, 65_534, 70_000,
    ]);
    prop_oneof![
        8 => vec(any::<u8>(), 0..200),
        2 => vec(select(vec![b'.', b'\n', b'\r', b'|', b'x', 0xe9, 0xff]), 0..6),
        2 => (edge, any::<u8>(), any::<bool>(), proptest::option::of(any::<Index>())).prop_map(
            |(len, fill, dot, newline)| {
                let mut v = vec![fill; len];
                if dot && len > 0 {
                    v[0] = b'.';
                }
                if let (Some(i), true) = (newline, len > 0) {
                    v[i.index(len)] = b'\n';
                }
                v
            }
        ),
        1 => vec(any::<u8>(), 0..=70_000),
    ]
}

fn line_spec() -> impl Strategy<Value = LineSpec> {
    prop_oneof![
        content().prop_map(LineSpec::Line),
        content().prop_map(LineSpec::Raw),
    ]
}

const SESSIONS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    let decide_phases: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|p| !matches!(p, Phase::Commit | Phase::DataLine))
        .collect();
    prop_oneof![
        3 => (0..SESSIONS, any::<u64>(), select(decide_phases), param_bytes(), decision()).prop_map(
            |(session, token, phase, param, decision)| Op::Decide {
                session,
                token,
                phase,
                param,
                decision
            }
        ),
        1 => (0..SESSIONS, any::<u64>(), commit()).prop_map(|(session, token, decision)| {
            Op::Commit {
                session,
                token,
                decision,
            }
        }),
        2 => (0..SESSIONS, any::<u64>(), vec(line_spec(), 0..6)).prop_map(
            |(session, token, lines)| Op::Data {
                session,
                token,
                lines
            }
        ),
    ]
}

fn rules() -> impl Strategy<Value = AnswerRules> {
    (
        any::<bool>(),
        select(vec![LongLines::Refuse, LongLines::AllowLegacyTruncation]),
    )
        .prop_map(|(allow_report, long_lines)| AnswerRules {
            allow_report,
            long_lines,
        })
}

fn interest() -> impl Strategy<Value = Interest> {
    (any::<u32>(), any::<u32>(), any::<u16>()).prop_map(|(r_in, r_out, phases)| {
        let mut i = Interest::new();
        for (n, e) in EventKind::ALL.into_iter().enumerate() {
            if r_in & (1 << n) != 0 {
                i = i.report(e);
            }
            if r_out & (1 << n) != 0 {
                i = i.report_out(e);
            }
        }
        for (n, p) in Phase::ALL.into_iter().enumerate() {
            if phases & (1 << n) != 0 {
                i = i.phase(p);
            }
        }
        i
    })
}

/// A request line as smtpd writes it.
fn request_line(minor: u16, phase: Phase, session: u64, token: u64, param: &[u8]) -> Vec<u8> {
    let mut line =
        format!("filter|0.{minor}|{TS}|smtp-in|{phase}|{session:016x}|{token:016x}|").into_bytes();
    line.extend_from_slice(param);
    line
}

/// The checks on one API call's output: exactly one line, `\n`-terminated, valid.
fn check_one_line(validator: &mut Validator, out: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(out.last(), Some(&b'\n'), "{:?}", show(out));
    prop_assert_eq!(
        memchr_count(out),
        1,
        "more than one newline: {:?}",
        show(out)
    );
    validator.filter_wrote(&out[..out.len() - 1]).map_err(fail)
}

fn memchr_count(out: &[u8]) -> usize {
    out.iter().filter(|&&b| b == b'\n').count()
}

struct Harness {
    minor: u16,
    rules: AnswerRules,
    validator: Validator,
    sessions: [u64; SESSIONS],
}

impl Harness {
    /// Sends `line` to the validator (as smtpd) and parses it (as the filter).
    fn ticket(&mut self, line: &[u8]) -> Result<Ticket, TestCaseError> {
        self.validator.smtpd_sent(line);
        match parse_line(line) {
            Ok(Input::Request(request)) => {
                prop_assert_eq!(request.version, Version::new(0, self.minor));
                Ok(Ticket::new(&request))
            }
            other => Err(fail(format!("{:?} did not parse: {other:?}", show(line)))),
        }
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Decide {
                session,
                token,
                phase,
                param,
                decision,
            } => {
                let Some(decision) = decision.build() else {
                    return Ok(());
                };
                // smtpd's parameters hold no newline; connect is `rdns|address`.
                let mut p: Vec<u8> = param.iter().copied().filter(|&b| b != b'\n').collect();
                if *phase == Phase::Connect {
                    p.splice(0..0, b"rdns|".iter().copied());
                }
                let line = request_line(self.minor, *phase, self.sessions[*session], *token, &p);
                let Ticket::Decision(ticket) = self.ticket(&line)? else {
                    return Err(fail("not a decision ticket"));
                };
                prop_assert_eq!(ticket.phase(), *phase);
                let mut out = Vec::new();
                let result = ticket.answer(&decision, &self.rules, &mut out);
                let refused = matches!(decision, Decision::Report(_)) && !self.rules.allow_report;
                if refused {
                    prop_assert_eq!(result, Err(EncodeError::ReportNotSupported));
                    prop_assert!(out.ends_with(b"|proceed\n"), "{:?}", show(&out));
                } else {
                    prop_assert_eq!(result, Ok(()));
                }
                check_one_line(&mut self.validator, &out)
            }
            Op::Commit {
                session,
                token,
                decision,
            } => {
                let Some(decision) = decision.build() else {
                    return Ok(());
                };
                let line = request_line(
                    self.minor,
                    Phase::Commit,
                    self.sessions[*session],
                    *token,
                    b"",
                );
                let Ticket::Commit(ticket) = self.ticket(&line)? else {
                    return Err(fail("not a commit ticket"));
                };
                let mut out = Vec::new();
                ticket.answer(&decision, &mut out);
                check_one_line(&mut self.validator, &out)
            }
            Op::Data {
                session,
                token,
                lines,
            } => {
                let id = self.sessions[*session];
                let first = request_line(self.minor, Phase::DataLine, id, *token, b"first");
                let Ticket::DataLine(ticket) = self.ticket(&first)? else {
                    return Err(fail("not a data-line ticket"));
                };
                let max = self
                    .rules
                    .max_data_line(Version::new(0, self.minor).dialect());
                for spec in lines {
                    let (bytes, raw) = match spec {
                        LineSpec::Line(b) => (b, false),
                        LineSpec::Raw(b) => (b, true),
                    };
                    // The request smtpd sent for this line (its bytes do not matter to
                    // the validator; a line with `\n` cannot come from smtpd).
                    let wire: &[u8] = if bytes.contains(&b'\n') || bytes == b"." {
                        b"x"
                    } else {
                        bytes
                    };
                    let request = request_line(self.minor, Phase::DataLine, id, *token, wire);
                    self.validator.smtpd_sent(&request);
                    let mut out = Vec::new();
                    let has_newline = bytes.contains(&b'\n');
                    let (result, len) = if raw {
                        (ticket.raw_line(bytes, &self.rules, &mut out), bytes.len())
                    } else {
                        (
                            ticket.line(bytes, &self.rules, &mut out),
                            stuffed_len(bytes),
                        )
                    };
                    let should_fail = len > max || has_newline || (raw && bytes == b".");
                    prop_assert_eq!(
                        result.is_err(),
                        should_fail,
                        "raw={} len={} max={} {:?}",
                        raw,
                        len,
                        max,
                        result
                    );
                    if let Err(e) = result {
                        prop_assert!(out.is_empty(), "an error wrote {:?}", show(&out));
                        if len > max {
                            prop_assert_eq!(e, EncodeError::LineTooLong { len, max });
                        }
                        continue;
                    }
                    check_one_line(&mut self.validator, &out)?;
                    // The content comes back as written (stuffed or byte for byte).
                    let body = &out[50..out.len() - 1];
                    if raw {
                        prop_assert_eq!(body, &bytes[..]);
                    } else {
                        prop_assert_eq!(unstuff(body), &bytes[..]);
                        prop_assert!(!is_end_of_message(body));
                    }
                }
                let end = request_line(self.minor, Phase::DataLine, id, *token, b".");
                self.validator.smtpd_sent(&end);
                let mut out = Vec::new();
                ticket.end(&mut out);
                prop_assert!(out.ends_with(b"|.\n"));
                check_one_line(&mut self.validator, &out)
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_answer_line_passes_the_validator(
        minor in select(vec![4u16, 5, 6, 7]),
        rules in rules(),
        interest in interest(),
        sessions in proptest::array::uniform3(any::<u64>()),
        ops in vec(op(), 0..24),
    ) {
        let mut validator = Validator::new(0, u32::from(minor), rules.allow_report);
        if minor < 7 && rules.long_lines == LongLines::AllowLegacyTruncation {
            // The filter accepts smtpd's silent cut of long lines before 7.4.
            validator.set_max_line(opensmtpd_filter::protocol::MAX_ANSWER_LINE);
        }
        // The registration first: every line of it valid too.
        let registration = interest.registration();
        prop_assert!(registration.ends_with(b"register|ready\n"));
        for line in registration.split_inclusive(|&b| b == b'\n') {
            check_one_line(&mut validator, line)?;
        }
        prop_assert!(validator.is_ready());
        let mut harness = Harness { minor, rules, validator, sessions };
        for op in &ops {
            harness.run(op)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// parse_line never panics
// ---------------------------------------------------------------------------------------

/// Valid lines of every kind, every event and phase, every version.
fn valid_lines() -> Vec<Vec<u8>> {
    let sid = "0123456789abcdef";
    let tok = "00000000000000aa";
    let mut lines: Vec<Vec<u8>> = vec![
        b"config|smtpd-version|7.4.0-portable".to_vec(),
        b"config|protocol|0.7".to_vec(),
        b"config|smtp-session-timeout|300".to_vec(),
        b"config|subsystem|smtp-in".to_vec(),
        b"config|admd|mx.example.org".to_vec(),
        b"config|ready".to_vec(),
    ];
    for ver in ["0.4", "0.5", "0.6", "0.7", "0.12"] {
        let new_tx = ver != "0.4" && ver != "0.5";
        let new_auth = ver == "0.7" || ver == "0.12";
        for sub in ["smtp-in", "smtp-out"] {
            for (event, params) in [
                (
                    "link-connect",
                    Some("mx|pass|192.0.2.1:41000|[::1]:25".to_string()),
                ),
                (
                    "link-connect",
                    Some("<unknown>|fail|unix:/var/run/smtpd.sock|unix:/x".to_string()),
                ),
                ("link-disconnect", None),
                ("link-greeting", Some("mx.example.org".to_string())),
                ("link-identify", Some("EHLO|client|x".to_string())),
                (
                    "link-tls",
                    Some("TLSv1.3:TLS_AES_256_GCM_SHA384:256".to_string()),
                ),
                (
                    "link-auth",
                    Some(
                        if new_auth {
                            "pass|pipe|user"
                        } else {
                            "pipe|user|pass"
                        }
                        .to_string(),
                    ),
                ),
                ("tx-reset", Some("1a2b3c4d".to_string())),
                ("tx-begin", Some("1a2b3c4d".to_string())),
                (
                    "tx-mail",
                    Some(
                        if new_tx {
                            "1a2b3c4d|ok|a|b@c"
                        } else {
                            "1a2b3c4d|a|b@c|ok"
                        }
                        .to_string(),
                    ),
                ),
                (
                    "tx-rcpt",
                    Some(
                        if new_tx {
                            "1a2b3c4d|permfail|"
                        } else {
                            "1a2b3c4d||tempfail"
                        }
                        .to_string(),
                    ),
                ),
                ("tx-envelope", Some("1a2b3c4d|1a2b3c4d00000001".to_string())),
                ("tx-data", Some("1a2b3c4d|ok".to_string())),
                ("tx-commit", Some("1a2b3c4d|4096".to_string())),
                ("tx-rollback", Some("1a2b3c4d".to_string())),
                ("protocol-client", Some("MAIL FROM:<a|b@c>".to_string())),
                ("protocol-server", Some("250 ok".to_string())),
                ("filter-report", Some("builtin|name|a|message".to_string())),
                ("filter-response", Some("rcpt-to|reject|550 no".to_string())),
                ("timeout", None),
            ] {
                let mut line = format!("report|{ver}|{TS}|{sub}|{event}|{sid}");
                if let Some(p) = params {
                    line.push('|');
                    line.push_str(&p);
                }
                lines.push(line.into_bytes());
            }
        }
        for (phase, param) in [
            ("connect", &b"<unknown>|[::1]"[..]),
            ("connect", b"mx|local"),
            ("helo", b"client"),
            ("ehlo", b"client|x"),
            ("starttls", b""),
            ("auth", b"PLAIN AHVzZXIAcGFzcw=="),
            ("mail-from", b""),
            ("rcpt-to", b"pipe|box@lab.test"),
            ("data", b""),
            ("data-line", b"..caf\xe9 \xff"),
            ("data-line", b"."),
            ("rset", b""),
            ("quit", b""),
            ("noop", b""),
            ("help", b""),
            ("wiz", b""),
            ("commit", b""),
        ] {
            let mut line = format!("filter|{ver}|{TS}|smtp-in|{phase}|{sid}|{tok}|").into_bytes();
            line.extend_from_slice(param);
            lines.push(line);
        }
    }
    lines
}

#[derive(Clone, Debug)]
enum Mutation {
    Insert(Index, u8),
    Delete(Index),
    Replace(Index, u8),
    Truncate(Index),
    /// Inserts a field separator.
    Pipe(Index),
    /// Removes a whole field (up to the next `|`).
    DropField(Index),
    /// Doubles the line.
    Repeat,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        any::<u8>(),
        select(vec![b'|', b'.', b'0', b'f', b'\n', b'\r', 0xff])
    ];
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::Pipe),
        any::<Index>().prop_map(Mutation::DropField),
        Just(Mutation::Repeat),
    ]
}

fn apply(line: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::Insert(i, b) => line.insert(at(i, line.len() + 1), *b),
        Mutation::Delete(i) if !line.is_empty() => {
            line.remove(at(i, line.len()));
        }
        Mutation::Replace(i, b) if !line.is_empty() => {
            let i = at(i, line.len());
            line[i] = *b;
        }
        Mutation::Truncate(i) => line.truncate(at(i, line.len() + 1)),
        Mutation::Pipe(i) => line.insert(at(i, line.len() + 1), b'|'),
        Mutation::DropField(i) => {
            let bars: Vec<usize> = line
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'|')
                .map(|(n, _)| n)
                .collect();
            if !bars.is_empty() {
                let n = at(i, bars.len());
                let start = bars[n];
                let end = bars.get(n + 1).copied().unwrap_or(line.len());
                line.drain(start..end);
            }
        }
        Mutation::Repeat => {
            let copy = line.clone();
            line.extend_from_slice(&copy);
        }
        _ => {}
    }
}

/// What a parsed line must satisfy: it names its own event or phase, and a request
/// can be answered validly whatever its version.
fn check_parsed(line: &[u8]) -> Result<(), TestCaseError> {
    let Ok(input) = parse_line(line) else {
        return Ok(());
    };
    // Debug never panics either.
    let _ = format!("{input:?}");
    let field = |n: usize| line.split(|&b| b == b'|').nth(n).unwrap_or(b"");
    match input {
        Input::Config(_) => prop_assert!(line.starts_with(b"config|")),
        Input::Report(r) => {
            prop_assert_eq!(r.event.kind().as_str().as_bytes(), field(4));
            prop_assert_eq!(
                opensmtpd_filter::protocol::SessionId::parse(field(5)),
                Some(r.session)
            );
        }
        Input::Request(r) => {
            prop_assert_eq!(r.request.phase().as_str().as_bytes(), field(4));
            let mut v = Validator::new(r.version.major().into(), r.version.minor().into(), false);
            v.filter_wrote(format!("register|filter|smtp-in|{}", r.request.phase()).as_bytes())
                .map_err(fail)?;
            v.filter_wrote(b"register|ready").map_err(fail)?;
            v.smtpd_sent(line);
            let mut out = Vec::new();
            match Ticket::new(&r) {
                Ticket::Decision(t) => t
                    .answer(&Decision::Junk, &AnswerRules::default(), &mut out)
                    .map_err(fail)?,
                Ticket::Commit(t) => t.answer(&CommitDecision::Proceed, &mut out),
                Ticket::DataLine(t) => t.end(&mut out),
            }
            check_one_line(&mut v, &out)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn parse_line_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..400)) {
        check_parsed(&bytes)?;
    }

    #[test]
    fn parse_line_never_panics_on_field_soup(
        fields in vec(
            prop_oneof![
                select(vec![
                    "report", "filter", "config", "0.4", "0.5", "0.6", "0.7", "0.12", "1.0",
                    "1700000000.000001", "smtp-in", "smtp-out", "link-auth", "tx-mail",
                    "tx-rcpt", "tx-envelope", "tx-commit", "link-connect", "connect",
                    "data-line", "commit", "0123456789abcdef", "00000000000000aa", "1a2b3c4d",
                    "ok", "pass", "", ".", "[::1]:25", "<unknown>", "local", "unix:/x",
                ]).prop_map(|s| s.as_bytes().to_vec()),
                vec(any::<u8>(), 0..8),
            ],
            0..12,
        ),
    ) {
        let line = fields.join(&b'|');
        check_parsed(&line)?;
    }

    #[test]
    fn parse_line_never_panics_on_mutated_valid_lines(
        base in select(valid_lines()),
        mutations in vec(mutation(), 0..6),
    ) {
        prop_assert!(parse_line(&base).is_ok(), "{:?}", show(&base));
        let mut line = base;
        for m in &mutations {
            apply(&mut line, m);
            check_parsed(&line)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dot-stuffing
// ---------------------------------------------------------------------------------------

fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(select(vec![b'.', b'x', b'\r']), 0..5),
        vec(any::<u8>(), 0..64).prop_map(|v| [&b"."[..], &v].concat()),
        vec(any::<u8>(), 0..64).prop_map(|v| [&b".."[..], &v].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn stuffing_then_unstuffing_is_the_identity(content in any_line()) {
        let mut wire = b"prefix|".to_vec();
        stuff_into(&content, &mut wire);
        let wire = &wire[7..];
        prop_assert_eq!(wire.len(), stuffed_len(&content));
        prop_assert_eq!(unstuff(wire), &content[..]);
        prop_assert!(!is_end_of_message(wire), "{:?} stuffed to the end marker", content);
        // A stuffed line starts with a dot only if it was doubled.
        if wire.first() == Some(&b'.') {
            prop_assert!(wire.starts_with(b".."));
        }
    }
}
