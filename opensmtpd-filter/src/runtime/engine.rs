//! The filter engine: routes parsed lines to sessions and handlers, and turns their
//! results into answers. No I/O here; [`super::io`] moves the bytes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;

use crate::protocol::{
    AnswerRules, CommitDecision, CommitTicket, ConfigLine, DataTicket, Decision, DecisionTicket,
    EncodeError, EventKind, FilterRequest, Handshake, Input, Interest, Phase, Report, Request,
    SessionId, SmtpReply, Subsystem, Ticket, Version, describe_line, is_end_of_message, parse_line,
    unstuff,
};
use crate::session::{ClientAddr, SessionInfo};

use super::Config;
use super::echo::{Echo, Sink, Step, spool_failure_reply};
use super::filter::{DataMode, DataOutput, Filter, MessageOutput, MessageVerdict, Session};
use super::memory::Releaser;
use super::message::{Message, MessageBuilder, SpoolError, SpoolSettings};

/// Session ids are random 64-bit numbers from smtpd: a multiply-shift mix is enough.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Sessions<S> = HashMap<SessionId, Slot<S>, BuildHasherDefault<IdHasher>>;
pub(crate) type Pending<S> = Pin<Box<dyn Future<Output = Completion<S>> + Send>>;
/// A handler's work for one request: the session goes in and comes back out.
type Work<S, T> = Pin<Box<dyn Future<Output = (Session<S>, T)> + Send>>;

/// How a handler ended.
pub(crate) enum Outcome<T> {
    Done(T),
    Panicked,
    TimedOut,
}

/// A finished handler, with the ticket its answer goes to.
pub(crate) enum Completion<S> {
    Decision(SessionId, DecisionTicket, Outcome<(Session<S>, Decision)>),
    Commit(
        SessionId,
        CommitTicket,
        Outcome<(Session<S>, CommitDecision)>,
    ),
    Message(
        SessionId,
        DataTicket,
        Message,
        Outcome<(Session<S>, MessageVerdict)>,
    ),
    /// The session went away (link-disconnect) while its handler ran.
    Aborted,
}

/// The state of the message in progress in one session.
#[derive(Default)]
struct MessageState {
    /// Between the first data line and the final `.`.
    ticket: Option<DataTicket>,
    /// Whole-message mode, while the message is under the size cap.
    builder: Option<MessageBuilder>,
    /// Whole-message mode: the cap was passed (or the message could not be spooled);
    /// lines go on unchanged.
    oversized: bool,
    /// Whole-message mode: the spool failed; the rest of the lines are dropped and the
    /// message is refused at commit.
    spool_broken: bool,
    /// A data-line handler panicked: lines go on unchanged, commit gets the fallback.
    failed: bool,
    /// The message is refused at commit with this reply.
    refusal: Option<SmtpReply>,
    /// Why a line could not be written (for the log).
    error: Option<EncodeError>,
    /// The whole-message verdict, for commit.
    verdict: Option<CommitDecision>,
}

struct Slot<S> {
    /// `None` while a handler has it.
    session: Option<Session<S>>,
    /// Lines of this session that came while a handler ran, in order.
    queue: VecDeque<Vec<u8>>,
    message: MessageState,
    /// The message going back to smtpd, a piece at a time.
    echo: Option<Echo>,
    abort: Option<AbortHandle>,
    /// The session's info while a handler has the session, to restore it if the
    /// handler fails.
    lent_info: Option<Arc<SessionInfo>>,
}

impl<S: Default> Slot<S> {
    fn new(id: SessionId) -> Self {
        Slot {
            session: Some(Session {
                info: Arc::new(SessionInfo::new(id)),
                state: S::default(),
            }),
            queue: VecDeque::new(),
            message: MessageState::default(),
            echo: None,
            abort: None,
            lent_info: None,
        }
    }

    /// Whether lines must wait: a handler has the session, or its message is still
    /// being written back (what follows, such as commit, goes after the final `.`).
    fn busy(&self) -> bool {
        self.session.is_none() || self.echo.as_ref().is_some_and(|e| !e.takes_lines())
    }

    /// Takes the session out for a handler.
    fn lend(&mut self) -> Option<Session<S>> {
        let session = self.session.take()?;
        self.lent_info = Some(Arc::clone(&session.info));
        Some(session)
    }
}

pub(crate) struct Engine<F: Filter> {
    filter: Arc<F>,
    config: Config,
    data_mode: DataMode,
    interest: Interest,
    rules: AnswerRules,
    handshake: Handshake,
    registered: bool,
    sessions: Sessions<F::Session>,
    warned_versions: Vec<Version>,
    /// Sessions whose handler finished while lines waited behind it.
    resumable: Vec<SessionId>,
    /// Where whole messages are stored.
    spool: Arc<SpoolSettings>,
    /// Sessions with an echo.
    echoing: Vec<SessionId>,
    /// Answers not yet written.
    pub(crate) out: Vec<u8>,
    pub(crate) inflight: FuturesUnordered<Pending<F::Session>>,
    /// Gives freed memory back when no session is open (`None`: turned off).
    memory: Option<Releaser>,
}

impl<F: Filter> Engine<F> {
    pub(crate) fn new(filter: Arc<F>, config: Config) -> Self {
        let data_mode = filter.data_mode();
        let mut interest = filter.interest().report(EventKind::LinkDisconnect);
        if EventKind::ALL
            .iter()
            .any(|e| interest.has_report(Subsystem::SmtpOut, *e))
        {
            interest = interest.report_out(EventKind::LinkDisconnect);
        }
        if data_mode != DataMode::Off {
            interest = interest.phase(Phase::DataLine);
        }
        let rules = AnswerRules {
            allow_report: false,
            long_lines: config.long_lines,
        };
        let spool = Arc::new(SpoolSettings {
            above: config.spool_above,
            dir: config.spool_dir.clone(),
        });
        let memory = config.release_memory.then(Releaser::new);
        Engine {
            filter,
            config,
            data_mode,
            interest,
            rules,
            handshake: Handshake::default(),
            registered: false,
            sessions: Sessions::default(),
            warned_versions: Vec::new(),
            resumable: Vec::new(),
            spool,
            echoing: Vec::new(),
            out: Vec::with_capacity(64 * 1024),
            inflight: FuturesUnordered::new(),
            memory,
        }
    }

    /// Forgets a session that ended; when it was the last one, the memory it and the
    /// others used goes back to the system.
    fn end_session(&mut self, id: SessionId) {
        self.sessions.remove(&id);
        if self.sessions.is_empty()
            && let Some(memory) = self.memory.as_mut()
        {
            memory.idle();
        }
    }

    /// What the handshake said.
    pub(crate) fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The number of sessions with state.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one line from smtpd, without its `\n`.
    pub(crate) fn handle_line(&mut self, line: &[u8]) {
        self.dispatch(line);
        self.resume_queues();
    }

    /// Takes a finished handler's result (see [`Engine::finish`]).
    pub(crate) fn complete(&mut self, completion: Completion<F::Session>) {
        self.finish(completion);
        self.resume_queues();
    }

    /// Handles the lines that waited behind handlers that have finished. A loop, not a
    /// recursion: a queued line whose handler finishes at once comes back here.
    fn resume_queues(&mut self) {
        while let Some(id) = self.resumable.pop() {
            while let Some(slot) = self.sessions.get_mut(&id) {
                if slot.busy() {
                    break;
                }
                let Some(line) = slot.queue.pop_front() else {
                    break;
                };
                self.dispatch(&line);
            }
        }
    }

    fn dispatch(&mut self, line: &[u8]) {
        match parse_line(line) {
            Ok(Input::Config(config)) => self.on_config(&config),
            Ok(Input::Report(report)) => {
                self.before_traffic(report.version);
                self.route(report.session, line, Some(report), None);
            }
            Ok(Input::Request(request)) => {
                self.before_traffic(request.version);
                self.route(request.session, line, None, Some(request));
            }
            Err(e) => log::warn!("ignoring a line smtpd sent: {e}: {}", describe_line(line)),
        }
    }

    fn on_config(&mut self, config: &ConfigLine<'_>) {
        if self.registered {
            log::warn!("ignoring a config line after the handshake: {config:?}");
            return;
        }
        self.handshake.apply(config);
        if let ConfigLine::Other { key, .. } = config {
            log::debug!("unknown config key {:?}", String::from_utf8_lossy(key));
        }
        if matches!(config, ConfigLine::Ready) {
            self.register();
        }
    }

    fn register(&mut self) {
        self.rules.allow_report = self.handshake.allows_report_decision();
        self.out.extend_from_slice(&self.interest.registration());
        self.registered = true;
    }

    fn before_traffic(&mut self, version: Version) {
        if !self.registered {
            // Answering before register|ready makes smtpd exit; a daemon that skips
            // config|ready must still be served, so register now.
            log::warn!("smtpd sent traffic before config|ready; registering now");
            self.register();
        }
        if !version.is_known() && !self.warned_versions.contains(&version) {
            self.warned_versions.push(version);
            log::warn!(
                "protocol version {version} is not one this library knows (0.4 to 0.7); \
                 reading it by the rules of the nearest known version"
            );
        }
    }

    /// Sends a line to its session: handled now if the session is idle, queued behind
    /// the running handler otherwise.
    fn route(
        &mut self,
        id: SessionId,
        line: &[u8],
        report: Option<Report<'_>>,
        request: Option<FilterRequest<'_>>,
    ) {
        let slot = self.sessions.entry(id).or_insert_with(|| Slot::new(id));
        if slot.busy() {
            if matches!(
                report,
                Some(Report {
                    event: crate::protocol::Event::LinkDisconnect,
                    ..
                })
            ) {
                // The client is gone: stop the handler and the echo; smtpd no longer
                // wants an answer.
                if let Some(abort) = slot.abort.take() {
                    abort.abort();
                }
                self.end_session(id);
            } else {
                slot.queue.push_back(line.to_vec());
            }
            return;
        }
        if let Some(report) = report {
            self.on_report(id, &report);
        } else if let Some(request) = request {
            self.on_request(id, &request);
        }
    }

    fn on_report(&mut self, id: SessionId, report: &Report<'_>) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(session) = slot.session.as_mut() else {
            return;
        };
        Arc::make_mut(&mut session.info).apply(&report.event);
        match report.event {
            crate::protocol::Event::TxReset { .. } | crate::protocol::Event::TxRollback { .. } => {
                slot.message = MessageState::default();
            }
            _ => {}
        }
        if self
            .interest
            .has_report(report.subsystem, report.event.kind())
        {
            let filter = &self.filter;
            if catch_unwind(AssertUnwindSafe(|| filter.on_report(session, report))).is_err() {
                log::error!(
                    "session {id}: the report handler panicked on {}",
                    report.event.kind()
                );
            }
        }
        if matches!(report.event, crate::protocol::Event::LinkDisconnect) {
            self.end_session(id);
        }
    }

    fn on_request(&mut self, id: SessionId, request: &FilterRequest<'_>) {
        if let Request::DataLine { line } = request.request {
            // One ticket per message, made from its first line (smtpd keeps the token).
            let open = self.sessions.get(&id).is_some_and(|slot| {
                slot.message.ticket.is_some() || slot.echo.as_ref().is_some_and(Echo::takes_lines)
            });
            let ticket = if open { None } else { Some(request) };
            return self.on_data_line(id, ticket, line);
        }
        let ticket = match Ticket::new(request) {
            Ticket::Commit(ticket) => return self.on_commit(id, ticket),
            Ticket::Decision(ticket) => ticket,
            Ticket::DataLine(_) => return,
        };
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(mut session) = slot.lend() else {
            return;
        };
        let filter = Arc::clone(&self.filter);
        let work: Work<F::Session, Decision> = match request.request {
            Request::Connect { rdns, client } => {
                Arc::make_mut(&mut session.info).apply_connect_request(rdns, &client);
                let rdns = rdns.to_vec();
                let client = match client {
                    crate::protocol::Client::Ip(ip) => {
                        ClientAddr::Inet(std::net::SocketAddr::new(ip, 0))
                    }
                    crate::protocol::Client::Local => ClientAddr::Local,
                    crate::protocol::Client::Other(t) => ClientAddr::Other(t.to_vec()),
                };
                Box::pin(async move {
                    let d = filter.on_connect(&mut session, &rdns, &client).await;
                    (session, d)
                })
            }
            Request::Helo { identity } => {
                let identity = identity.to_vec();
                Box::pin(async move {
                    let d = filter.on_helo(&mut session, &identity).await;
                    (session, d)
                })
            }
            Request::Ehlo { identity } => {
                let identity = identity.to_vec();
                Box::pin(async move {
                    let d = filter.on_ehlo(&mut session, &identity).await;
                    (session, d)
                })
            }
            Request::Auth(param) => {
                let raw = param.raw().to_vec();
                Box::pin(async move {
                    let d = filter
                        .on_auth(&mut session, crate::protocol::AuthParam::new(&raw))
                        .await;
                    (session, d)
                })
            }
            Request::MailFrom { address } => {
                let address = address.to_vec();
                Box::pin(async move {
                    let d = filter.on_mail_from(&mut session, &address).await;
                    (session, d)
                })
            }
            Request::RcptTo { address } => {
                let address = address.to_vec();
                Box::pin(async move {
                    let d = filter.on_rcpt_to(&mut session, &address).await;
                    (session, d)
                })
            }
            Request::Data => {
                slot.message = MessageState::default();
                Box::pin(async move {
                    let d = filter.on_data(&mut session).await;
                    (session, d)
                })
            }
            Request::Starttls => Box::pin(async move {
                let d = filter.on_starttls(&mut session).await;
                (session, d)
            }),
            Request::Rset => Box::pin(async move {
                let d = filter.on_rset(&mut session).await;
                (session, d)
            }),
            Request::Quit => Box::pin(async move {
                let d = filter.on_quit(&mut session).await;
                (session, d)
            }),
            Request::Noop => Box::pin(async move {
                let d = filter.on_noop(&mut session).await;
                (session, d)
            }),
            Request::Help => Box::pin(async move {
                let d = filter.on_help(&mut session).await;
                (session, d)
            }),
            Request::Wiz => Box::pin(async move {
                let d = filter.on_wiz(&mut session).await;
                (session, d)
            }),
            Request::DataLine { .. } | Request::Commit => return,
        };
        let timeout = self.config.handler_timeout;
        self.start(id, work, timeout, move |outcome| {
            Completion::Decision(id, ticket, outcome)
        });
    }

    /// Runs a handler's future under the timeout, catching panics, abortable if the
    /// session goes away.
    fn start<T: Send + 'static>(
        &mut self,
        id: SessionId,
        work: Pin<Box<dyn Future<Output = T> + Send>>,
        timeout: std::time::Duration,
        complete: impl FnOnce(Outcome<T>) -> Completion<F::Session> + Send + 'static,
    ) {
        let (abort, registration) = AbortHandle::new_pair();
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.abort = Some(abort);
        }
        let guarded = Abortable::new(
            tokio::time::timeout(timeout, AssertUnwindSafe(work).catch_unwind()),
            registration,
        );
        let mut pending: Pending<F::Session> = Box::pin(async move {
            match guarded.await {
                Err(_aborted) => Completion::Aborted,
                Ok(Err(_elapsed)) => complete(Outcome::TimedOut),
                Ok(Ok(Err(_panic))) => complete(Outcome::Panicked),
                Ok(Ok(Ok(value))) => complete(Outcome::Done(value)),
            }
        });
        // Most handlers answer without waiting: poll once here so their answer goes
        // out now, in order, with no queueing. One that waits is polled again (with a
        // real waker) by the set it joins, so the no-op waker of this first poll is
        // never relied on.
        let waker = futures_util::task::noop_waker();
        match pending
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
        {
            std::task::Poll::Ready(done) => self.finish(done),
            std::task::Poll::Pending => self.inflight.push(pending),
        }
    }

    fn on_data_line(&mut self, id: SessionId, first: Option<&FilterRequest<'_>>, line: &[u8]) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(session) = slot.session.as_mut() else {
            return;
        };
        let message = &mut slot.message;
        if let Some(echo) = slot.echo.as_mut().filter(|e| e.takes_lines()) {
            // a message over the cap: its lines go on behind what is being written
            if is_end_of_message(line) {
                echo.close();
            } else {
                echo.append(line, &mut message.refusal);
            }
            return;
        }
        if let Some(Ticket::DataLine(ticket)) = first.map(Ticket::new) {
            if let DataMode::Message { .. } = self.data_mode {
                message.builder = Some(MessageBuilder::new(Arc::clone(&self.spool)));
            }
            message.ticket = Some(ticket);
        }
        if is_end_of_message(line) {
            let Some(ticket) = message.ticket.take() else {
                return;
            };
            match message.builder.take() {
                Some(builder) => {
                    let message = builder.finish();
                    let Some(mut session) = slot.lend() else {
                        return;
                    };
                    let filter = Arc::clone(&self.filter);
                    let handed = message.clone();
                    let work = Box::pin(async move {
                        let verdict = filter.on_message(&mut session, &handed).await;
                        (session, verdict)
                    });
                    let timeout = self.config.handler_timeout;
                    self.start(id, work, timeout, move |o| {
                        Completion::Message(id, ticket, message, o)
                    });
                }
                None => {
                    if let Some(error) = message.error {
                        log::warn!("session {id}: message refused at commit: {error}");
                    }
                    ticket.end(&mut self.out);
                }
            }
            return;
        }
        if message.ticket.is_none() || message.spool_broken {
            return;
        }
        if let Some(builder) = message.builder.as_mut() {
            let DataMode::Message { max_size } = self.data_mode else {
                return;
            };
            let over = builder.stored_len() + line.len() as u64 + 1 > max_size as u64;
            let stored = if over {
                Ok(())
            } else {
                builder.push_line(line)
            };
            match stored {
                Ok(()) if !over => return,
                Ok(()) => {
                    log::info!(
                        "session {id}: message larger than {max_size} bytes, passed on unchanged"
                    );
                }
                Err(SpoolError::Create(e)) => {
                    log::error!(
                        "session {id}: cannot make a temporary file for the message ({e}); \
                         it is passed on unchanged, not given to the filter"
                    );
                }
                Err(SpoolError::Write(e)) => {
                    log::error!(
                        "session {id}: cannot write the message to its temporary file ({e}); \
                         it will be refused at commit"
                    );
                    message.builder = None;
                    message.spool_broken = true;
                    message.refusal = Some(spool_failure_reply());
                    return;
                }
            }
            // What was gathered goes on unchanged, and so does the rest, a piece at a
            // time (see `pump`), never more of it in RAM than the spool threshold.
            message.oversized = true;
            let (Some(builder), Some(ticket)) = (message.builder.take(), message.ticket.take())
            else {
                return;
            };
            let mut echo = Echo::arriving(ticket, builder.into_spool());
            echo.append(line, &mut message.refusal);
            slot.echo = Some(echo);
            self.echoing.push(id);
            return;
        }
        let Some(ticket) = message.ticket.as_ref() else {
            return;
        };
        let mut output = DataOutput {
            wire: line,
            ticket,
            rules: &self.rules,
            out: &mut self.out,
            refusal: &mut message.refusal,
            error: &mut message.error,
        };
        if message.oversized || message.failed || self.data_mode != DataMode::Stream {
            output.pass();
            return;
        }
        let written = output.out.len();
        let filter = &self.filter;
        let content = unstuff(line);
        if catch_unwind(AssertUnwindSafe(|| {
            filter.on_data_line(session, content, &mut output)
        }))
        .is_err()
        {
            log::error!(
                "session {id}: the data-line handler panicked; the rest of the message goes on unchanged"
            );
            message.failed = true;
            if self.out.len() == written {
                let mut output = DataOutput {
                    wire: line,
                    ticket,
                    rules: &self.rules,
                    out: &mut self.out,
                    refusal: &mut message.refusal,
                    error: &mut message.error,
                };
                output.pass();
            }
        }
    }

    fn on_commit(&mut self, id: SessionId, ticket: CommitTicket) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        let message = std::mem::take(&mut slot.message);
        // smtpd sends commit only after our final `.`, so no data-line phase is open
        // here; if one were, writing into it now would make smtpd exit: the ticket
        // (`message.ticket`) is left unused.
        let decided = match (message.refusal, message.verdict) {
            (Some(reply), _) => Some(CommitDecision::Reject(reply)),
            (None, Some(verdict)) => Some(verdict),
            (None, None) if message.failed => Some(self.config.fallback.clone()),
            (None, None) => None,
        };
        if let Some(decision) = decided {
            ticket.answer(&decision, &mut self.out);
            return;
        }
        let Some(mut session) = slot.lend() else {
            return;
        };
        let filter = Arc::clone(&self.filter);
        let work = Box::pin(async move {
            let d = filter.on_commit(&mut session).await;
            (session, d)
        });
        let timeout = self.config.handler_timeout;
        self.start(id, work, timeout, move |o| {
            Completion::Commit(id, ticket, o)
        });
    }

    /// Writes the answer of a finished handler and gives the session back; lines that
    /// queued up behind it are handled by [`Engine::resume_queues`].
    fn finish(&mut self, completion: Completion<F::Session>) {
        let (id, session) = match completion {
            Completion::Aborted => return,
            Completion::Decision(id, ticket, outcome) => {
                let phase = ticket.phase();
                let (session, decision) =
                    self.settle(id, phase.as_str(), outcome, |f| f.clone().into());
                if let Err(e) = ticket.answer(&decision, &self.rules, &mut self.out) {
                    log::warn!("session {id}: {phase}: {e}");
                }
                (id, session)
            }
            Completion::Commit(id, ticket, outcome) => {
                let (session, decision) = self.settle(id, "commit", outcome, Clone::clone);
                ticket.answer(&decision, &mut self.out);
                (id, session)
            }
            Completion::Message(id, ticket, original, outcome) => {
                let fallback = self.config.fallback.clone();
                let (session, verdict) = self.settle(id, "message", outcome, |_| MessageVerdict {
                    decision: fallback.clone(),
                    output: MessageOutput::Unchanged,
                });
                self.write_message(id, ticket, original, verdict);
                (id, session)
            }
        };
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        slot.abort = None;
        slot.lent_info = None;
        slot.session = Some(session);
        if !slot.queue.is_empty() {
            self.resumable.push(id);
        }
    }

    /// The value of a finished handler, or the fallback (and a fresh session state)
    /// when it panicked or timed out.
    fn settle<T>(
        &mut self,
        id: SessionId,
        what: &str,
        outcome: Outcome<(Session<F::Session>, T)>,
        fallback: impl FnOnce(&CommitDecision) -> T,
    ) -> (Session<F::Session>, T) {
        let failure = match outcome {
            Outcome::Done(done) => return done,
            Outcome::Panicked => "panicked",
            Outcome::TimedOut => "timed out",
        };
        log::error!(
            "session {id}: the {what} handler {failure}; answering {:?} (the session's filter state is reset)",
            self.config.fallback
        );
        let info = self
            .sessions
            .get_mut(&id)
            .and_then(|slot| slot.lent_info.take())
            .unwrap_or_else(|| Arc::new(SessionInfo::new(id)));
        (
            Session {
                info,
                state: Default::default(),
            },
            fallback(&self.config.fallback),
        )
    }

    /// Starts writing the message back as the verdict says; [`Engine::pump`] writes it
    /// a piece at a time. The verdict answers the commit that follows.
    fn write_message(
        &mut self,
        id: SessionId,
        ticket: DataTicket,
        message: Message,
        verdict: MessageVerdict,
    ) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            ticket.end(&mut self.out);
            return;
        };
        let m = &mut slot.message;
        m.verdict = Some(verdict.decision);
        let echo = match verdict.output {
            MessageOutput::Unchanged => Echo::stored(ticket, Vec::new(), message, 0),
            MessageOutput::Prepend(lines) => Echo::stored(ticket, lines, message, 0),
            MessageOutput::Headers(lines) => {
                let from = message.header_stored();
                Echo::stored(ticket, lines, message, from)
            }
            MessageOutput::Replace(content) => {
                let mut output = DataOutput {
                    wire: b"",
                    ticket: &ticket,
                    rules: &self.rules,
                    out: &mut self.out,
                    refusal: &mut m.refusal,
                    error: &mut m.error,
                };
                let text = content.strip_suffix(b"\n").unwrap_or(&content);
                if !content.is_empty() {
                    text.split(|&b| b == b'\n').for_each(|l| output.line(l));
                }
                ticket.end(&mut self.out);
                if let Some(error) = m.error {
                    log::warn!("session {id}: message refused at commit: {error}");
                }
                return;
            }
        };
        slot.echo = Some(echo);
        self.echoing.push(id);
    }

    /// Writes pieces of the messages being echoed, a chunk per session in turn, until
    /// `out` holds `budget` bytes. Returns whether more is ready to write now.
    pub(crate) fn pump(&mut self, budget: usize) -> bool {
        let mut more = false;
        while self.out.len() < budget && !self.echoing.is_empty() {
            more = false;
            let mut i = 0;
            while i < self.echoing.len() {
                let id = self.echoing[i];
                let Some(slot) = self.sessions.get_mut(&id) else {
                    self.echoing.swap_remove(i);
                    continue;
                };
                let Some(echo) = slot.echo.as_mut() else {
                    self.echoing.swap_remove(i);
                    continue;
                };
                let mut sink = Sink {
                    out: &mut self.out,
                    rules: &self.rules,
                    refusal: &mut slot.message.refusal,
                    error: &mut slot.message.error,
                };
                match echo.step(&mut sink) {
                    Step::Wrote => {
                        more = true;
                        i += 1;
                    }
                    Step::Idle => i += 1,
                    Step::Done => {
                        if let Some(echo) = slot.echo.take() {
                            echo.ticket.end(&mut self.out);
                        }
                        if let Some(error) = slot.message.error {
                            log::warn!("session {id}: message refused at commit: {error}");
                        }
                        if !slot.queue.is_empty() {
                            self.resumable.push(id);
                        }
                        self.echoing.swap_remove(i);
                    }
                }
            }
            if !more {
                break;
            }
        }
        self.resume_queues();
        more
    }
}
