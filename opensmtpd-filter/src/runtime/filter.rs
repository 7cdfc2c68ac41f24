//! The trait a filter implements, and what its handlers are given.

use std::future::Future;
use std::sync::Arc;

use crate::protocol::{
    AnswerRules, AuthParam, CommitDecision, DataTicket, Decision, EncodeError, Interest, Report,
    SmtpReply,
};
use crate::session::{ClientAddr, SessionInfo};

use super::message::Message;

/// One session as a handler sees it: what the reports told ([`Session::info`]) and the
/// filter's own per-session state ([`Session::state`]), created with `Default` when
/// the session is first seen and dropped at `link-disconnect`.
#[derive(Debug)]
pub struct Session<S> {
    pub(crate) info: Arc<SessionInfo>,
    /// The filter's own state for this session.
    pub state: S,
}

impl<S> Session<S> {
    /// Builds a session (for tests of a filter's own helpers; the runtime makes them).
    pub fn new(info: SessionInfo, state: S) -> Self {
        Session {
            info: Arc::new(info),
            state,
        }
    }

    /// What smtpd reported about the session so far.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
}

/// How a filter takes part in the data phase.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum DataMode {
    /// Not at all: `data-line` is not registered and smtpd does not send the message.
    #[default]
    Off,
    /// Line by line: [`Filter::on_data_line`] sees each line as it arrives and writes
    /// what goes on. Memory per session: one line.
    Stream,
    /// Whole message: lines are gathered up to `max_size` bytes — in RAM up to
    /// [`Config::spool_above`](super::Config::spool_above), then in a temporary file —
    /// and handed to [`Filter::on_message`] after the final `.`; its verdict decides
    /// what is written and how commit is answered. The message goes back to smtpd a
    /// piece at a time from where it is stored, so memory per message stays bounded
    /// by the spool threshold. A larger message is passed on unchanged as it arrives,
    /// [`Filter::on_message`] is not called and [`Filter::on_commit`] decides; so it
    /// is when the temporary file cannot be made. When writing the temporary file
    /// fails later (disk full), the message is refused at commit with `451 4.3.0`.
    Message {
        /// The most bytes stored per message.
        max_size: usize,
    },
}

/// What [`Filter::on_message`] decided.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MessageVerdict {
    /// The answer to the commit request that follows.
    pub decision: CommitDecision,
    /// What is written back to smtpd.
    pub output: MessageOutput,
}

impl MessageVerdict {
    /// Accept the message unchanged.
    pub fn accept() -> Self {
        MessageVerdict {
            decision: CommitDecision::Proceed,
            output: MessageOutput::Unchanged,
        }
    }

    /// Refuse the message at commit.
    pub fn reject(reply: SmtpReply) -> Self {
        MessageVerdict {
            decision: CommitDecision::Reject(reply),
            output: MessageOutput::Unchanged,
        }
    }
}

/// The message written back to smtpd.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MessageOutput {
    /// As received.
    Unchanged,
    /// These header lines (each without line end; a folded header is several lines,
    /// continuation lines starting with white space) first, then the message.
    Prepend(Vec<Vec<u8>>),
    /// These lines (each without line end) instead of the header section
    /// ([`Message::header_section`]); the rest — the empty line and the body — goes on
    /// from where the message is stored, byte for byte. The way to edit headers of a
    /// large message without copying it.
    Headers(Vec<Vec<u8>>),
    /// Another message: `\n`-terminated unstuffed lines, held in RAM.
    Replace(bytes::Bytes),
}

/// Where [`Filter::on_data_line`] writes the lines that go on to smtpd.
pub struct DataOutput<'a> {
    pub(crate) wire: &'a [u8],
    pub(crate) ticket: &'a DataTicket,
    pub(crate) rules: &'a AnswerRules,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) refusal: &'a mut Option<SmtpReply>,
    pub(crate) error: &'a mut Option<EncodeError>,
}

impl DataOutput<'_> {
    /// Writes one message line (unstuffed: the runtime re-stuffs it). A line that
    /// cannot be written (it holds `\n`, or is longer than smtpd can take back) is not
    /// written, and the message is refused at commit with `552 5.3.4`.
    pub fn line(&mut self, content: &[u8]) {
        let result = self.ticket.line(content, self.rules, self.out);
        self.record(result);
    }

    fn record(&mut self, result: Result<(), EncodeError>) {
        if let Err(e) = result {
            if self.refusal.is_none() {
                *self.refusal = Some(crate::protocol::line_too_long_reply());
            }
            self.error.get_or_insert(e);
        }
    }

    /// Passes the current line on exactly as smtpd sent it, byte for byte (including
    /// a client's odd dot-stuffing). This is what a filter that does not change the
    /// line should call.
    pub fn pass(&mut self) {
        let result = self.ticket.framed_line(self.wire, self.rules, self.out);
        self.record(result);
    }

    /// Refuses the message at commit with `reply`, whatever else is written.
    pub fn refuse(&mut self, reply: SmtpReply) {
        *self.refusal = Some(reply);
    }
}

macro_rules! decision_handler {
    ($(#[$doc:meta])* $name:ident $(, $arg:ident: $ty:ty)*) => {
        $(#[$doc])*
        ///
        /// The default lets it through.
        fn $name(
            &self,
            session: &mut Session<Self::Session>,
            $($arg: $ty,)*
        ) -> impl Future<Output = Decision> + Send {
            let _ = (session, $($arg,)*);
            async { Decision::Proceed }
        }
    };
}

/// A filter: what it registers and how it answers.
///
/// Handlers of one session run one at a time, in the order smtpd sent the lines;
/// handlers of different sessions run concurrently, so a handler may await DNS or
/// HTTP without holding up anyone else. Each request gets exactly one answer: if a
/// handler panics or runs past [`Config::handler_timeout`](super::Config), the runtime
/// answers with [`Config::fallback`](super::Config) and logs one line.
///
/// Only the phases in [`Filter::interest`] are asked; overriding a handler without
/// registering its phase has no effect.
pub trait Filter: Send + Sync + 'static {
    /// The filter's own per-session state.
    type Session: Default + Send + 'static;

    /// The report events and filter phases to register. `link-disconnect` is always
    /// added (the runtime frees session state on it), and `data-line` follows
    /// [`Filter::data_mode`]. Add [`SESSION_REPORTS`](crate::session::SESSION_REPORTS)
    /// for a full [`SessionInfo`].
    fn interest(&self) -> Interest;

    /// How the filter takes part in the data phase.
    fn data_mode(&self) -> DataMode {
        DataMode::Off
    }

    /// Called for each registered report, after the session state took it into
    /// account. Synchronous: reports need no answer.
    fn on_report(&self, session: &mut Session<Self::Session>, report: &Report<'_>) {
        let _ = (session, report);
    }

    decision_handler!(
        /// `connect`: a client connected (reverse DNS name and address).
        on_connect, rdns: &[u8], client: &ClientAddr
    );
    decision_handler!(
        /// `helo`: the HELO name.
        on_helo, identity: &[u8]
    );
    decision_handler!(
        /// `ehlo`: the EHLO name.
        on_ehlo, identity: &[u8]
    );
    decision_handler!(
        /// `starttls`.
        on_starttls
    );
    decision_handler!(
        /// `auth`: the mechanism and initial response (a secret: never log it).
        on_auth, param: AuthParam<'_>
    );
    decision_handler!(
        /// `mail-from`: the sender, bare, empty for the null sender.
        on_mail_from, address: &[u8]
    );
    decision_handler!(
        /// `rcpt-to`: one recipient, bare.
        on_rcpt_to, address: &[u8]
    );
    decision_handler!(
        /// `data`.
        on_data
    );
    decision_handler!(
        /// `rset`.
        on_rset
    );
    decision_handler!(
        /// `quit`.
        on_quit
    );
    decision_handler!(
        /// `noop`.
        on_noop
    );
    decision_handler!(
        /// `help` (smtpd never asks it).
        on_help
    );
    decision_handler!(
        /// `wiz` (smtpd never asks it).
        on_wiz
    );

    /// `commit`: the message is complete. The default accepts it. In
    /// [`DataMode::Message`] this is called only when the message was too large for
    /// [`Filter::on_message`].
    fn on_commit(
        &self,
        session: &mut Session<Self::Session>,
    ) -> impl Future<Output = CommitDecision> + Send {
        let _ = session;
        async { CommitDecision::Proceed }
    }

    /// [`DataMode::Stream`]: one line of the message, unstuffed (the final `.` is not
    /// passed). Write what goes on to `out`; the default passes the line on unchanged
    /// with [`DataOutput::pass`].
    fn on_data_line(
        &self,
        session: &mut Session<Self::Session>,
        line: &[u8],
        out: &mut DataOutput<'_>,
    ) {
        let _ = (session, line);
        out.pass();
    }

    /// [`DataMode::Message`]: the whole message. The default accepts it unchanged.
    fn on_message(
        &self,
        session: &mut Session<Self::Session>,
        message: &Message,
    ) -> impl Future<Output = MessageVerdict> + Send {
        let _ = (session, message);
        async { MessageVerdict::accept() }
    }
}
