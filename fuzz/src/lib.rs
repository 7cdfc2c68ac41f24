//! The bodies of the fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`)
//! and by the replay test (`tests/replay.rs`), which runs them over a corpus on stable
//! Rust without cargo-fuzz.
//!
//! - [`parse_line`]: arbitrary bytes into `protocol::parse_line`; a request is answered
//!   with every kind of decision (and data lines), each line checked by the
//!   `testkit::Validator`.
//! - [`runtime`]: arbitrary bytes, split into lines, through the real runtime
//!   (`run_with`) with a pass-through filter; every line it writes is checked by a
//!   `Validator` fed the same input, and every request must get its answer.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use opensmtpd_filter::protocol::{
    self, AnswerRules, CommitDecision, Decision, Dialect, EncodeError, Event, EventKind, Input,
    Interest, LongLines, Parameter, Request, SessionId, SmtpReply, Ticket, Token, Version,
    stuffed_len,
};
use opensmtpd_filter::testkit::Validator;
use opensmtpd_filter::{Config, DataMode, Filter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

/// Checks that `out` is exactly one `\n`-terminated line and that `validator` takes it.
fn check_one_line(validator: &mut Validator, out: &[u8], what: &str) {
    assert_eq!(out.last(), Some(&b'\n'), "{what}: {:?}", lossy(out));
    let body = &out[..out.len() - 1];
    assert!(
        !body.contains(&b'\n'),
        "{what}: two lines: {:?}",
        lossy(out)
    );
    if let Err(v) = validator.filter_wrote(body) {
        panic!("{what}: {v}");
    }
}

fn validator_for(version: Version, allow_report: bool, phase: &str, request: &[u8]) -> Validator {
    let mut v = Validator::new(version.major().into(), version.minor().into(), allow_report);
    v.filter_wrote(format!("register|filter|smtp-in|{phase}").as_bytes())
        .expect("registration");
    v.filter_wrote(b"register|ready").expect("registration");
    v.smtpd_sent(request);
    v
}

fn rules_for(dialect: Dialect) -> [(AnswerRules, usize); 4] {
    let mut all = [(AnswerRules::default(), 0); 4];
    for (n, (allow_report, long_lines)) in [
        (false, LongLines::Refuse),
        (true, LongLines::Refuse),
        (false, LongLines::AllowLegacyTruncation),
        (true, LongLines::AllowLegacyTruncation),
    ]
    .into_iter()
    .enumerate()
    {
        let rules = AnswerRules {
            allow_report,
            long_lines,
        };
        // What the daemon reads: with the legacy option the filter accepts the cut.
        let max_line = if long_lines == LongLines::AllowLegacyTruncation {
            protocol::MAX_ANSWER_LINE
        } else if dialect.truncates_answers() {
            protocol::MAX_ANSWER_LINE_LEGACY
        } else {
            protocol::MAX_ANSWER_LINE
        };
        all[n] = (rules, max_line);
    }
    all
}

/// The `parse_line` target. The input's first line is parsed; the rest (after the
/// first `\n`) provides the values of the answers: reply text, parameter, data line.
pub fn parse_line(data: &[u8]) {
    // The whole input, newlines and all: never a panic.
    let _ = protocol::parse_line(data);
    let (line, extra) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(input) = protocol::parse_line(line) else {
        let _ = protocol::describe_line(line);
        return;
    };
    let _ = format!("{input:?}");
    let Input::Request(request) = input else {
        return;
    };
    let version = request.version;
    let phase = request.request.phase().as_str();

    let code = 400 + u16::from(extra.first().copied().unwrap_or(0)) % 200;
    let mut replies: Vec<SmtpReply> = Vec::new();
    replies.extend(SmtpReply::sanitized(code, extra, "fallback text").ok());
    replies.extend(
        std::str::from_utf8(extra)
            .ok()
            .and_then(|s| SmtpReply::parse(s).ok()),
    );
    replies.push(protocol::line_too_long_reply());
    let param = Parameter::new(extra.to_vec()).ok();

    for (rules, max_line) in rules_for(version.dialect()) {
        let validator = || {
            let mut v = validator_for(version, rules.allow_report, phase, line);
            v.set_max_line(max_line);
            v
        };
        match Ticket::new(&request) {
            Ticket::Decision(_) => {
                let mut decisions = vec![Decision::Proceed, Decision::Junk];
                for r in &replies {
                    decisions.push(Decision::Reject(r.clone()));
                    decisions.push(Decision::Disconnect(r.clone()));
                }
                if let Some(p) = &param {
                    decisions.push(Decision::Rewrite(p.clone()));
                    decisions.push(Decision::Report(p.clone()));
                }
                for decision in &decisions {
                    let Ticket::Decision(ticket) = Ticket::new(&request) else {
                        unreachable!()
                    };
                    assert_eq!(ticket.session(), request.session);
                    let mut out = Vec::new();
                    let result = ticket.answer(decision, &rules, &mut out);
                    if matches!(decision, Decision::Report(_)) && !rules.allow_report {
                        assert_eq!(result, Err(EncodeError::ReportNotSupported));
                    } else {
                        assert_eq!(result, Ok(()));
                    }
                    check_one_line(&mut validator(), &out, &format!("{decision:?}"));
                }
            }
            Ticket::Commit(_) => {
                let mut decisions = vec![CommitDecision::Proceed];
                for r in &replies {
                    decisions.push(CommitDecision::Reject(r.clone()));
                    decisions.push(CommitDecision::Disconnect(r.clone()));
                }
                for decision in &decisions {
                    let Ticket::Commit(ticket) = Ticket::new(&request) else {
                        unreachable!()
                    };
                    let mut out = Vec::new();
                    ticket.answer(decision, &mut out);
                    check_one_line(&mut validator(), &out, &format!("{decision:?}"));
                }
            }
            Ticket::DataLine(ticket) => {
                let Request::DataLine { line: wire } = request.request else {
                    unreachable!()
                };
                assert_eq!(ticket.token(), request.token);
                let max = rules.max_data_line(version.dialect());
                let mut v = validator();
                let mut out = Vec::new();
                // The line as smtpd sent it, byte for byte.
                let result = ticket.raw_line(wire, &rules, &mut out);
                let expect_ok = wire.len() <= max && wire != b"." && !wire.contains(&b'\n');
                assert_eq!(result.is_ok(), expect_ok, "raw_line: {result:?}");
                if result.is_ok() {
                    check_one_line(&mut v, &out, "raw_line");
                    assert!(out.ends_with(&[wire, b"\n"].concat()));
                } else {
                    assert!(out.is_empty());
                }
                // Arbitrary content, stuffed.
                for content in [extra, protocol::unstuff(wire)] {
                    out.clear();
                    let result = ticket.line(content, &rules, &mut out);
                    let expect_ok = stuffed_len(content) <= max && !content.contains(&b'\n');
                    assert_eq!(result.is_ok(), expect_ok, "line: {result:?}");
                    if result.is_ok() {
                        check_one_line(&mut v, &out, "line");
                        let body = &out[50..out.len() - 1];
                        assert_eq!(protocol::unstuff(body), content);
                        assert!(!protocol::is_end_of_message(body));
                    } else {
                        assert!(out.is_empty());
                    }
                }
                out.clear();
                ticket.end(&mut out);
                assert!(out.ends_with(b"|.\n"));
                check_one_line(&mut v, &out, "end");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The runtime target
// ---------------------------------------------------------------------------------------

/// Registers everything and passes everything on, data lines included.
struct PassThrough;

impl Filter for PassThrough {
    type Session = ();

    fn interest(&self) -> Interest {
        EventKind::ALL.into_iter().fold(
            Interest::new().all_reports().all_phases(),
            Interest::report_out,
        )
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }
}

/// Shared between the reader and the writer: which input line the runtime has been
/// given last, and what it wrote while that was so.
#[derive(Default)]
struct Trace {
    /// Index of the line whose last byte was handed out, if any.
    delivered: Option<usize>,
    /// Bytes written, each run tagged with `delivered` at the time.
    written: Vec<(Option<usize>, Vec<u8>)>,
}

/// Hands out the input one piece at a time, never past the end of a line, so every
/// write of the runtime can be traced to the line that caused it (the runtime writes
/// a line's answers before it reads again).
struct Reader {
    lines: Vec<Vec<u8>>,
    /// The bytes after the last `\n` (never a whole line for the runtime).
    tail: Vec<u8>,
    line: usize,
    offset: usize,
    chunk: usize,
    trace: Rc<RefCell<Trace>>,
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let (current, is_line) = match this.lines.get(this.line) {
            Some(l) => (l.as_slice(), true),
            None => (this.tail.as_slice(), false),
        };
        // A line with its `\n`.
        let total = current.len() + usize::from(is_line);
        let n = (total - this.offset).min(this.chunk).min(buf.remaining());
        if n == 0 {
            return Poll::Ready(Ok(())); // end of input
        }
        let end = this.offset + n;
        buf.put_slice(&current[this.offset.min(current.len())..end.min(current.len())]);
        if end > current.len() {
            buf.put_slice(b"\n");
        }
        this.offset = end;
        if this.offset == total && is_line {
            this.trace.borrow_mut().delivered = Some(this.line);
            this.line += 1;
            this.offset = 0;
        }
        Poll::Ready(Ok(()))
    }
}

struct Writer {
    trace: Rc<RefCell<Trace>>,
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut trace = self.trace.borrow_mut();
        let at = trace.delivered;
        trace.written.push((at, buf.to_vec()));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What smtpd expects back for one input line from a pass-through filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// No answer (config, report, garbage).
    Nothing,
    /// One `filter-result|...|proceed` for (session, token).
    Result(SessionId, Token),
    /// The answer to commit: `proceed`, or the refusal of a message with a line too
    /// long to be echoed (`true`).
    Commit(SessionId, Token, bool),
    /// A data line echoed byte for byte, if it fits (`Some(false)`: it does not).
    Echo(SessionId, Token, bool),
    /// The final `.`.
    End(SessionId, Token),
}

/// The per-session part of a simple model of smtpd: what it may send next.
#[derive(Default)]
struct SessionModel {
    /// The token of the open data-line phase (first line seen, final `.` not yet).
    data: Option<Token>,
    /// The message was abandoned mid-data (the client went away): no more requests.
    dead: bool,
    /// A line of the message was too long to be echoed: commit must refuse it.
    refused: bool,
}

thread_local! {
    /// One current-thread runtime per thread, reused by every run (each `run_with`
    /// ends with its input and leaves nothing behind in it).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
}

/// The version class of a line: the rules that decide what an answer looks like.
fn class(v: Version) -> (bool, bool) {
    let d = v.dialect();
    (d.token_first_in_answers(), d.truncates_answers())
}

/// The `runtime` target. The first byte sets how many bytes the reader hands out at a
/// time; the rest is split at `\n` into the lines smtpd sends.
///
/// Lines a real smtpd cannot send in sequence are left out (both from the runtime's
/// input and from the validator), so that a complaint is a fault of the library, not
/// of the harness: a line of another protocol class than the first (one daemon speaks
/// one version), a request other than the next data line while a data-line phase is
/// open, a data line with another token, any request after the message was dropped
/// mid-data, and any line of a session after its `link-disconnect` (session ids are
/// never reused). Garbage lines (that do not parse) go to the runtime only: it must
/// skip them; the validator (smtpd) never sent them.
pub fn runtime(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(first) * usize::from(first);
    let mut pieces: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let tail = pieces.pop().unwrap_or_default().to_vec();

    // The protocol class of the run: that of the first line that has a version.
    let run_version = pieces.iter().find_map(|l| match protocol::parse_line(l) {
        Ok(Input::Report(r)) => Some(r.version),
        Ok(Input::Request(r)) => Some(r.version),
        _ => None,
    });
    let run_class = run_version.map(class);

    let mut sessions: HashMap<SessionId, SessionModel> = HashMap::new();
    let mut closed: HashSet<SessionId> = HashSet::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Per line given to the runtime: whether the validator sees it, and what answer.
    let mut plan: Vec<(bool, Expect)> = Vec::new();
    let rules = AnswerRules::default(); // Config::default(): LongLines::Refuse
    for piece in pieces {
        let keep = match protocol::parse_line(piece) {
            Err(_) => Some((false, Expect::Nothing)),
            Ok(Input::Config(_)) => Some((false, Expect::Nothing)),
            Ok(Input::Report(r)) => {
                if Some(class(r.version)) != run_class || closed.contains(&r.session) {
                    None
                } else {
                    let s = sessions.entry(r.session).or_default();
                    match r.event {
                        Event::LinkDisconnect => {
                            sessions.remove(&r.session);
                            closed.insert(r.session);
                        }
                        Event::TxReset { .. } | Event::TxRollback { .. } => {
                            // The message is abandoned; mid-data, the client went away.
                            s.dead |= s.data.is_some();
                            s.refused = false;
                        }
                        _ => {}
                    }
                    Some((true, Expect::Nothing))
                }
            }
            Ok(Input::Request(r)) => {
                if Some(class(r.version)) != run_class || closed.contains(&r.session) {
                    None
                } else {
                    let s = sessions.entry(r.session).or_default();
                    match (r.request, s.data) {
                        _ if s.dead => None,
                        (Request::DataLine { line }, open) if open.is_none_or(|t| t == r.token) => {
                            if protocol::is_end_of_message(line) {
                                s.data = None;
                                Some((true, Expect::End(r.session, r.token)))
                            } else {
                                s.data = Some(r.token);
                                let max = rules.max_data_line(r.version.dialect());
                                let fits = line.len() <= max;
                                s.refused |= !fits;
                                Some((true, Expect::Echo(r.session, r.token, fits)))
                            }
                        }
                        (_, Some(_)) => None,
                        (Request::Commit, None) => {
                            let refused = std::mem::take(&mut s.refused);
                            Some((true, Expect::Commit(r.session, r.token, refused)))
                        }
                        (request, None) => {
                            if request == Request::Data {
                                s.refused = false;
                            }
                            Some((true, Expect::Result(r.session, r.token)))
                        }
                    }
                }
            }
        };
        if let Some(k) = keep {
            lines.push(piece.to_vec());
            plan.push(k);
        }
    }

    let trace = Rc::new(RefCell::new(Trace::default()));
    let reader = Reader {
        lines: lines.clone(),
        tail,
        line: 0,
        offset: 0,
        chunk,
        trace: Rc::clone(&trace),
    };
    let writer = Writer {
        trace: Rc::clone(&trace),
    };
    let summary = RUNTIME.with(|runtime| {
        runtime.block_on(opensmtpd_filter::run_with(
            PassThrough,
            Config::default(),
            reader,
            writer,
        ))
    });
    assert!(summary.is_ok(), "run_with failed: {summary:?}");

    // Replay: feed the validator the lines up to each write's cause, then check what
    // the runtime wrote for that line against what smtpd expects.
    let v = run_version.unwrap_or(Version::V0_7);
    let mut validator = Validator::new(v.major().into(), v.minor().into(), false);
    let trace = trace.borrow();
    let mut by_line: Vec<Vec<u8>> = vec![Vec::new(); lines.len()];
    for (at, bytes) in &trace.written {
        let at = at.expect("the runtime wrote before it read a line");
        by_line[at].extend_from_slice(bytes);
    }
    let mut registered = false;
    for (n, line) in lines.iter().enumerate() {
        let (to_validator, expect) = plan[n];
        if to_validator {
            validator.smtpd_sent(line);
        }
        let out = &by_line[n];
        if out.is_empty() {
            assert!(
                matches!(expect, Expect::Nothing | Expect::Echo(_, _, false)),
                "line {n}: no answer to {:?}",
                lossy(line)
            );
            continue;
        }
        assert_eq!(
            out.last(),
            Some(&b'\n'),
            "line {n}: output cut: {:?}",
            lossy(out)
        );
        let mut answers = Vec::new();
        for answer in out[..out.len() - 1].split(|&b| b == b'\n') {
            if let Err(violation) = validator.filter_wrote(answer) {
                panic!("after line {n} {:?}: {violation}", lossy(line));
            }
            if answer.starts_with(b"register|") {
                assert!(answers.is_empty(), "registration after an answer");
                if answer == b"register|ready" {
                    assert!(!registered, "registered twice");
                    registered = true;
                }
            } else {
                answers.push(answer);
            }
        }
        let ids = |s: SessionId, t: Token| {
            let (a, b) = if v.dialect().token_first_in_answers() {
                (t.to_string(), s.to_string())
            } else {
                (s.to_string(), t.to_string())
            };
            format!("{a}|{b}|")
        };
        match expect {
            Expect::Nothing | Expect::Echo(_, _, false) => {
                assert!(
                    answers.is_empty(),
                    "line {n}: unexpected answers {answers:?}"
                )
            }
            Expect::Result(s, t) => {
                assert_eq!(answers.len(), 1, "line {n}: {:?}", lossy(line));
                let want = format!("filter-result|{}proceed", ids(s, t));
                assert_eq!(answers[0], want.as_bytes(), "line {n}");
            }
            Expect::Commit(s, t, refused) => {
                assert_eq!(answers.len(), 1, "line {n}: {:?}", lossy(line));
                let decision = if refused {
                    format!("reject|{}", protocol::line_too_long_reply())
                } else {
                    "proceed".to_string()
                };
                let want = format!("filter-result|{}{decision}", ids(s, t));
                assert_eq!(answers[0], want.as_bytes(), "line {n}");
            }
            Expect::Echo(s, t, true) => {
                assert_eq!(answers.len(), 1, "line {n}: {:?}", lossy(line));
                let Ok(Input::Request(r)) = protocol::parse_line(line) else {
                    unreachable!()
                };
                let Request::DataLine { line: wire } = r.request else {
                    unreachable!()
                };
                let mut want = format!("filter-dataline|{}", ids(s, t)).into_bytes();
                want.extend_from_slice(wire);
                assert_eq!(answers[0], &want[..], "line {n}: not echoed byte for byte");
            }
            Expect::End(s, t) => {
                assert_eq!(answers.len(), 1, "line {n}: {:?}", lossy(line));
                let want = format!("filter-dataline|{}.", ids(s, t));
                assert_eq!(answers[0], want.as_bytes(), "line {n}");
            }
        }
    }
}
