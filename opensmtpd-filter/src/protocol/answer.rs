//! Answers: decisions and data lines, encoded so that smtpd can always read them.
//!
//! Each way an answer line can make smtpd exit or wedge is ruled out here, by type or
//! by a check before anything is written:
//!
//! | smtpd rule | how it cannot be broken |
//! |---|---|
//! | a `reject`/`disconnect` needs a 4xx/5xx reply | [`SmtpReply`] cannot hold anything else |
//! | no parameter after proceed/junk, one after the others | [`Decision`] variants |
//! | no `junk` (or `rewrite`) at commit | [`CommitTicket`] takes a [`CommitDecision`] |
//! | `report` only from OpenSMTPD 7.6 | [`AnswerRules::allow_report`]; replaced by `proceed` otherwise |
//! | session/token order by version, hex ids | the ticket encodes both from the request |
//! | a token smtpd did not send | tickets are made only from parsed requests |
//! | no CR/LF inside a line | [`SmtpReply`], [`Parameter`], [`DataTicket::line`] |
//! | `filter-dataline` only before the final `.` | [`DataTicket::end`] consumes the ticket |
//! | no line longer than smtpd reads (64 KiB wedge) | [`AnswerRules::max_data_line`] |
//! | no `report|` line, no other kind of line | there is no API that writes one |

use core::fmt;

use super::dataline::{stuff_into, stuffed_len};
use super::ids::{SessionId, Token, push_hex16};
use super::reply::{Parameter, SmtpReply};
use super::request::{FilterRequest, Phase, Request};
use super::version::Dialect;

/// The longest answer line, without its `\n`, that smtpd 7.4 was seen to read (its
/// buffer is 64 KiB; a longer line is never consumed and wedges the filter's pipe).
pub const MAX_ANSWER_LINE: usize = 65_534;

/// The longest answer line OpenSMTPD before 7.4 (protocol < 0.7) keeps whole: it copies
/// each line into a 2,048-byte buffer and silently cuts the rest.
pub const MAX_ANSWER_LINE_LEGACY: usize = 2_047;

/// `filter-dataline|` + 16 hex + `|` + 16 hex + `|`.
const DATA_LINE_OVERHEAD: usize = 50;

/// A decision for any phase but commit and data-line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Let the command through (to the next filter).
    Proceed,
    /// Let it through and mark the session's (or transaction's) mail as junk.
    Junk,
    /// Refuse the command with this reply; the session goes on (421 ends it).
    Reject(SmtpReply),
    /// Refuse with this reply and drop the client.
    Disconnect(SmtpReply),
    /// Replace the command's parameter (an address, a HELO name).
    Rewrite(Parameter),
    /// Let it through and have smtpd report this text to report subscribers
    /// (OpenSMTPD 7.6 and later; `proceed` is sent to older daemons).
    Report(Parameter),
}

/// A decision for the commit phase: no `junk` (smtpd exits on it), no `rewrite`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CommitDecision {
    /// Accept the message.
    Proceed,
    /// Refuse the message with this reply.
    Reject(SmtpReply),
    /// Refuse the message and drop the client.
    Disconnect(SmtpReply),
}

impl From<CommitDecision> for Decision {
    fn from(d: CommitDecision) -> Decision {
        match d {
            CommitDecision::Proceed => Decision::Proceed,
            CommitDecision::Reject(r) => Decision::Reject(r),
            CommitDecision::Disconnect(r) => Decision::Disconnect(r),
        }
    }
}

/// How to treat a message line longer than the daemon can take back whole.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum LongLines {
    /// Do not echo the line; refuse the message at commit with `552 5.3.4`. On 7.4 and
    /// later this applies to lines over 65,484 bytes (the 64 KiB wedge); before 7.4 to
    /// lines over 1,997 bytes, which smtpd would otherwise silently cut.
    #[default]
    Refuse,
    /// Before 7.4 only: echo long lines and let smtpd cut them at 1,997 bytes, as every
    /// other filter does (the message is delivered, altered). On 7.4 and later this is
    /// the same as `Refuse`: a longer line would wedge the daemon.
    AllowLegacyTruncation,
}

/// What the answers of one filter must respect, from the handshake and the options.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AnswerRules {
    /// Whether the daemon accepts the `report` decision (OpenSMTPD 7.6+).
    pub allow_report: bool,
    /// The long-line policy.
    pub long_lines: LongLines,
}

impl AnswerRules {
    /// The longest stuffed data line that may be echoed under `dialect`.
    pub fn max_data_line(&self, dialect: Dialect) -> usize {
        let line_max = if dialect.truncates_answers() && self.long_lines == LongLines::Refuse {
            MAX_ANSWER_LINE_LEGACY
        } else {
            MAX_ANSWER_LINE
        };
        line_max - DATA_LINE_OVERHEAD
    }
}

/// What could not be written as asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum EncodeError {
    /// `report` asked of a daemon older than 7.6; `proceed` was written instead.
    ReportNotSupported,
    /// A data line holds `\n`; nothing was written.
    NewlineInLine,
    /// A data line is longer than the daemon can take back; nothing was written.
    LineTooLong {
        /// The stuffed length of the line.
        len: usize,
        /// The most the daemon takes.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::ReportNotSupported => {
                f.write_str("the report decision needs OpenSMTPD 7.6 or later; answered proceed")
            }
            EncodeError::NewlineInLine => f.write_str("data line contains a newline"),
            EncodeError::LineTooLong { len, max } => {
                write!(
                    f,
                    "data line of {len} bytes is longer than the {max} bytes smtpd takes back"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

fn push_ids(out: &mut Vec<u8>, dialect: Dialect, session: SessionId, token: Token) {
    let (first, second) = if dialect.token_first_in_answers() {
        (token.get(), session.get())
    } else {
        (session.get(), token.get())
    };
    push_hex16(out, first);
    out.push(b'|');
    push_hex16(out, second);
    out.push(b'|');
}

fn push_result(
    out: &mut Vec<u8>,
    dialect: Dialect,
    session: SessionId,
    token: Token,
    decision: &Decision,
) {
    out.extend_from_slice(b"filter-result|");
    push_ids(out, dialect, session, token);
    let (word, param): (&[u8], Option<&[u8]>) = match decision {
        Decision::Proceed => (b"proceed", None),
        Decision::Junk => (b"junk", None),
        Decision::Reject(r) => (b"reject", Some(r.as_str().as_bytes())),
        Decision::Disconnect(r) => (b"disconnect", Some(r.as_str().as_bytes())),
        Decision::Rewrite(p) => (b"rewrite", Some(p.as_bytes())),
        Decision::Report(p) => (b"report", Some(p.as_bytes())),
    };
    out.extend_from_slice(word);
    if let Some(param) = param {
        out.push(b'|');
        out.extend_from_slice(param);
    }
    out.push(b'\n');
}

/// The answer slot of one request: what smtpd sent (session, token, version), so the
/// answer carries exactly those. Obtained from a parsed request with [`Ticket::new`].
#[derive(Debug, PartialEq, Eq)]
pub enum Ticket {
    /// Any phase but commit and data-line.
    Decision(DecisionTicket),
    /// The commit phase.
    Commit(CommitTicket),
    /// A data line: answered with zero or more lines, the end marker last.
    DataLine(DataTicket),
}

impl Ticket {
    /// The ticket for a request.
    pub fn new(request: &FilterRequest<'_>) -> Ticket {
        let slot = Slot {
            session: request.session,
            token: request.token,
            dialect: request.version.dialect(),
        };
        match request.request {
            Request::Commit => Ticket::Commit(CommitTicket(slot)),
            Request::DataLine { .. } => Ticket::DataLine(DataTicket::new(slot)),
            ref r => Ticket::Decision(DecisionTicket {
                slot,
                phase: r.phase(),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    session: SessionId,
    token: Token,
    dialect: Dialect,
}

/// Answers one request of a phase other than commit and data-line, exactly once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "every request needs exactly one answer"]
pub struct DecisionTicket {
    slot: Slot,
    phase: Phase,
}

impl DecisionTicket {
    /// The phase being answered.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The session.
    pub fn session(&self) -> SessionId {
        self.slot.session
    }

    /// Writes the answer. Always writes exactly one well-formed line: a decision the
    /// daemon does not support is replaced by `proceed` and reported in the error.
    pub fn answer(
        self,
        decision: &Decision,
        rules: &AnswerRules,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let Slot {
            session,
            token,
            dialect,
        } = self.slot;
        if matches!(decision, Decision::Report(_)) && !rules.allow_report {
            push_result(out, dialect, session, token, &Decision::Proceed);
            return Err(EncodeError::ReportNotSupported);
        }
        push_result(out, dialect, session, token, decision);
        Ok(())
    }
}

/// Answers one commit request, exactly once, with a decision valid at commit.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "every request needs exactly one answer"]
pub struct CommitTicket(Slot);

impl CommitTicket {
    /// The session.
    pub fn session(&self) -> SessionId {
        self.0.session
    }

    /// Writes the answer.
    pub fn answer(self, decision: &CommitDecision, out: &mut Vec<u8>) {
        let Slot {
            session,
            token,
            dialect,
        } = self.0;
        push_result(out, dialect, session, token, &decision.clone().into());
    }
}

/// Writes the data lines of one message: any number of lines, then [`DataTicket::end`],
/// which consumes it, so no line can follow the final `.`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a message must be ended with DataTicket::end"]
pub struct DataTicket {
    slot: Slot,
    /// `filter-dataline|SESSION|TOKEN|` in the version's order: the same for every
    /// line of the message, so it is built once.
    prefix: [u8; DATA_LINE_OVERHEAD],
}

impl DataTicket {
    fn new(slot: Slot) -> Self {
        let mut prefix = Vec::with_capacity(DATA_LINE_OVERHEAD);
        prefix.extend_from_slice(b"filter-dataline|");
        push_ids(&mut prefix, slot.dialect, slot.session, slot.token);
        let mut fixed = [0u8; DATA_LINE_OVERHEAD];
        fixed.copy_from_slice(&prefix);
        DataTicket {
            slot,
            prefix: fixed,
        }
    }

    /// The session.
    pub fn session(&self) -> SessionId {
        self.slot.session
    }

    /// The token of the data-line phase.
    pub fn token(&self) -> Token {
        self.slot.token
    }

    /// Writes one message line, given as the message holds it (unstuffed): a leading
    /// dot is doubled. Writes nothing and returns an error if the line holds `\n` or
    /// is longer than the daemon takes back.
    pub fn line(
        &self,
        content: &[u8],
        rules: &AnswerRules,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let len = stuffed_len(content);
        let max = rules.max_data_line(self.slot.dialect);
        if len > max {
            return Err(EncodeError::LineTooLong { len, max });
        }
        if memchr::memchr(b'\n', content).is_some() {
            return Err(EncodeError::NewlineInLine);
        }
        self.push_prefix(out);
        stuff_into(content, out);
        out.push(b'\n');
        Ok(())
    }

    /// Writes one line exactly as smtpd sent it (still dot-stuffed, or not, as the
    /// client wrote it): what passes a line on byte for byte. Same checks as
    /// [`DataTicket::line`].
    pub fn raw_line(
        &self,
        wire: &[u8],
        rules: &AnswerRules,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let max = rules.max_data_line(self.slot.dialect);
        if wire.len() > max {
            return Err(EncodeError::LineTooLong {
                len: wire.len(),
                max,
            });
        }
        if memchr::memchr(b'\n', wire).is_some() {
            return Err(EncodeError::NewlineInLine);
        }
        self.framed_line(wire, rules, out)
    }

    /// [`DataTicket::raw_line`] for a line cut from the input at `\n` (so it holds
    /// none): the runtime's pass-through path.
    pub(crate) fn framed_line(
        &self,
        wire: &[u8],
        rules: &AnswerRules,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let max = rules.max_data_line(self.slot.dialect);
        if wire.len() > max {
            return Err(EncodeError::LineTooLong {
                len: wire.len(),
                max,
            });
        }
        if wire == b"." {
            return Err(EncodeError::NewlineInLine);
        }
        self.push_prefix(out);
        out.extend_from_slice(wire);
        out.push(b'\n');
        Ok(())
    }

    /// Writes the final `.` and closes the data-line phase.
    pub fn end(self, out: &mut Vec<u8>) {
        self.push_prefix(out);
        out.extend_from_slice(b".\n");
    }

    fn push_prefix(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
    }
}

/// The fixed answer for a message refused because a line could not be echoed.
pub fn line_too_long_reply() -> SmtpReply {
    SmtpReply::parse("552 5.3.4 Message refused: a line is too long for the filters of this server")
        .expect("static reply is valid")
}
