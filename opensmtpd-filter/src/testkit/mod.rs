//! Drive a filter in-process, as smtpd would, and check every line it writes.
//!
//! The kit runs the filter with the real runtime ([`run_with`](crate::run_with)) over
//! in-memory pipes, speaks any protocol version, and passes every line the filter
//! writes through a [`Validator`] of smtpd's rules: a test fails as soon as the filter
//! writes something that would make smtpd exit.
//!
//! ```
//! use opensmtpd_filter::protocol::{Decision, Interest, Phase, SmtpReply};
//! use opensmtpd_filter::testkit::{Answer, TestKit};
//! use opensmtpd_filter::{Filter, Session};
//!
//! struct NoFoo;
//! impl Filter for NoFoo {
//!     type Session = ();
//!     fn interest(&self) -> Interest {
//!         Interest::new().phase(Phase::MailFrom)
//!     }
//!     async fn on_mail_from(&self, _: &mut Session<()>, address: &[u8]) -> Decision {
//!         if address.starts_with(b"foo@") {
//!             Decision::Reject(SmtpReply::new(550, "5.7.1 No foo").unwrap())
//!         } else {
//!             Decision::Proceed
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut kit = TestKit::new(NoFoo).start().await;
//! let mut s = kit.session();
//! assert_eq!(s.connect("192.0.2.1", "mx.example.org").await, Answer::NotAsked);
//! assert_eq!(s.mail_from("foo@example.org").await, Answer::Reject("550 5.7.1 No foo".into()));
//! assert_eq!(s.mail_from("bar@example.org").await, Answer::Proceed);
//! s.disconnect().await;
//! kit.finish().await;
//! # });
//! ```

mod validator;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

use crate::runtime::{Config, Filter, RunSummary};

pub use validator::{Validator, Violation};

/// How long the kit waits for an answer before failing the test.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer the filter gave to a request, as smtpd reads it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Answer {
    /// The filter did not register the phase: smtpd would not have asked.
    NotAsked,
    /// `proceed`.
    Proceed,
    /// `junk`.
    Junk,
    /// `reject|reply`.
    Reject(String),
    /// `disconnect|reply`.
    Disconnect(String),
    /// `rewrite|param`.
    Rewrite(Vec<u8>),
    /// `report|param`.
    Report(Vec<u8>),
}

/// What a message sent through [`ScriptedSession::data`] came back as.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DataOutcome {
    /// The answer to the `data` request.
    pub data: Answer,
    /// The message lines the filter wrote back, as smtpd would store them (unstuffed);
    /// empty if data-line is not registered or `data` was refused.
    pub lines: Vec<Vec<u8>>,
    /// The same lines exactly as written (still dot-stuffed).
    pub wire_lines: Vec<Vec<u8>>,
    /// The answer to the `commit` request.
    pub commit: Answer,
}

/// Sets up a filter under test.
pub struct TestKit<F: Filter> {
    filter: F,
    config: Config,
    version: (u32, u32),
    handshake: Vec<String>,
}

impl<F: Filter> TestKit<F> {
    /// A kit speaking protocol 0.7 with OpenSMTPD 7.4's handshake.
    pub fn new(filter: F) -> Self {
        TestKit {
            filter,
            config: Config::default(),
            version: (0, 7),
            handshake: handshake("7.4.0-portable", None),
        }
    }

    /// The runtime configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Speaks protocol `major.minor`, with the handshake of a matching OpenSMTPD
    /// release (0.4: 6.6.4, 0.5: 6.7.0, 0.6: 6.8.0p2, 0.7: 7.4.0).
    pub fn protocol(mut self, major: u32, minor: u32) -> Self {
        self.version = (major, minor);
        let release = match (major, minor) {
            (0, 4) => "6.6.4p1",
            (0, 5) => "6.7.0",
            (0, 6) => "6.8.0p2",
            _ => "7.4.0-portable",
        };
        self.handshake = handshake(release, None);
        self
    }

    /// Replaces the handshake lines (each without `\n`, `config|ready` included).
    pub fn handshake(mut self, lines: &[&str]) -> Self {
        self.handshake = lines.iter().map(|l| l.to_string()).collect();
        self
    }

    /// Starts the filter and performs the handshake; the filter's registration is
    /// read and checked.
    pub async fn start(self) -> RunningKit {
        let (kit_side, filter_side) = tokio::io::duplex(1 << 20);
        let (filter_in, filter_out) = tokio::io::split(filter_side);
        let (kit_in, kit_out) = tokio::io::split(kit_side);
        let task = tokio::spawn(crate::runtime::run_with(
            self.filter,
            self.config,
            filter_in,
            filter_out,
        ));
        let allow_report = self
            .handshake
            .iter()
            .any(|l| l.starts_with("config|protocol|"));
        let mut kit = RunningKit {
            to_filter: kit_out,
            from_filter: BufReader::new(kit_in),
            task: Some(task),
            validator: Validator::new(self.version.0, self.version.1, allow_report),
            version: format!("{}.{}", self.version.0, self.version.1),
            numeric_version: self.version,
            registrations: Vec::new(),
            held: HashMap::new(),
            next_session: 0x1000,
        };
        for line in &self.handshake {
            kit.send(line.as_bytes()).await;
        }
        loop {
            let line = kit
                .read_line()
                .await
                .expect("the filter ended during the handshake");
            kit.check(&line);
            kit.registrations
                .push(String::from_utf8_lossy(&line).into_owned());
            if line == b"register|ready" {
                break;
            }
        }
        kit
    }
}

fn handshake(release: &str, protocol: Option<&str>) -> Vec<String> {
    let mut lines = vec![format!("config|smtpd-version|{release}")];
    if let Some(p) = protocol {
        lines.push(format!("config|protocol|{p}"));
    }
    lines.extend([
        "config|smtp-session-timeout|300".into(),
        "config|subsystem|smtp-in".into(),
    ]);
    if !release.starts_with("6.6") && !release.starts_with("6.7") {
        lines.push("config|admd|mx.example.org".into());
    }
    lines.push("config|ready".into());
    lines
}

/// A running filter under test.
pub struct RunningKit {
    to_filter: tokio::io::WriteHalf<DuplexStream>,
    from_filter: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    task: Option<JoinHandle<std::io::Result<RunSummary>>>,
    validator: Validator,
    version: String,
    numeric_version: (u32, u32),
    registrations: Vec<String>,
    /// Answer lines read while waiting for another session's answer.
    held: HashMap<u64, VecDeque<Vec<u8>>>,
    next_session: u64,
}

impl RunningKit {
    /// The registration lines the filter wrote, `register|ready` last.
    pub fn registrations(&self) -> &[String] {
        &self.registrations
    }

    /// Whether the filter registered `phase`.
    pub fn registered_phase(&self, phase: &str) -> bool {
        self.validator
            .registered_phases()
            .iter()
            .any(|p| p == phase)
    }

    /// Whether the filter registered the `smtp-in` report `event`.
    pub fn registered_report(&self, event: &str) -> bool {
        self.registrations
            .iter()
            .any(|r| r == &format!("register|report|smtp-in|{event}"))
    }

    /// The protocol version spoken.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Accepts answer lines up to `max` bytes (see [`Validator::set_max_line`]).
    pub fn allow_lines_up_to(&mut self, max: usize) {
        self.validator.set_max_line(max);
    }

    /// A new scripted session (ids are handed out in order).
    pub fn session(&mut self) -> ScriptedSession<'_> {
        self.next_session += 1;
        let id = self.next_session;
        ScriptedSession {
            kit: self,
            id,
            message: 0,
            rcpt: 0,
        }
    }

    /// Sends one raw line (without `\n`) to the filter.
    pub async fn send(&mut self, line: &[u8]) {
        self.validator.smtpd_sent(line);
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.to_filter
            .write_all(&buf)
            .await
            .expect("the filter stopped reading");
    }

    async fn read_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            ANSWER_TIMEOUT,
            self.from_filter.read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Err(_) => panic!("no answer from the filter within {ANSWER_TIMEOUT:?}"),
            Ok(Err(e)) => panic!("reading from the filter failed: {e}"),
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => {
                assert_eq!(
                    line.pop(),
                    Some(b'\n'),
                    "the filter wrote a line without a newline"
                );
                Some(line)
            }
        }
    }

    fn check(&mut self, line: &[u8]) {
        if let Err(v) = self.validator.filter_wrote(line) {
            panic!("{v}");
        }
    }

    /// Reads the next answer line of `session` (checked), holding other sessions'.
    pub async fn next_answer(&mut self, session: u64) -> Vec<u8> {
        if let Some(line) = self.held.get_mut(&session).and_then(VecDeque::pop_front) {
            return line;
        }
        loop {
            let line = self
                .read_line()
                .await
                .expect("the filter ended while an answer was due");
            self.check(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            let ids: Vec<&str> = text.splitn(4, '|').collect();
            let sid_field = if self.numeric_version < (0, 5) { 2 } else { 1 };
            let sid = ids
                .get(sid_field)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .unwrap_or(u64::MAX);
            if sid == session {
                return line;
            }
            self.held.entry(sid).or_default().push_back(line);
        }
    }

    /// Sends a request line and returns the parsed answer.
    pub async fn request(&mut self, session: u64, line: &[u8]) -> Answer {
        self.send(line).await;
        let answer = self.next_answer(session).await;
        parse_answer(&answer)
    }

    /// Ends the filter's input, as smtpd does when it stops. Answers still due can be
    /// read after this; [`RunningKit::finish`] then waits for the filter to end.
    pub async fn close_input(&mut self) {
        self.to_filter
            .shutdown()
            .await
            .expect("closing the filter's input");
    }

    /// Closes the input and returns, in order, every line the filter writes until it
    /// ends (each checked), after any held for [`RunningKit::next_answer`].
    pub async fn drain(&mut self) -> Vec<Vec<u8>> {
        self.close_input().await;
        let mut lines: Vec<Vec<u8>> = self.held.drain().flat_map(|(_, q)| q).collect();
        while let Some(line) = self.read_line().await {
            self.check(&line);
            lines.push(line);
        }
        lines
    }

    /// Ends the input (as smtpd does when it stops) and waits for the filter to finish;
    /// fails the test if it wrote anything more that is invalid or did not end.
    pub async fn finish(mut self) -> RunSummary {
        self.to_filter
            .shutdown()
            .await
            .expect("closing the filter's input");
        while let Some(line) = self.read_line().await {
            self.check(&line);
        }
        let task = self.task.take().expect("finish is called once");
        let result = tokio::time::timeout(ANSWER_TIMEOUT, task).await;
        match result {
            Err(_) => panic!("the filter did not end after its input ended"),
            Ok(Err(e)) => panic!("the filter's runtime panicked: {e}"),
            Ok(Ok(Err(e))) => panic!("the filter's runtime failed: {e}"),
            Ok(Ok(Ok(summary))) => summary,
        }
    }
}

/// Parses a `filter-result` line into an [`Answer`].
pub fn parse_answer(line: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(line);
    let mut f = text.splitn(4, '|');
    let rest = f.nth(3).unwrap_or("");
    let (word, param) = match rest.split_once('|') {
        Some((w, p)) => (w, Some(p)),
        None => (rest, None),
    };
    let raw_param = || {
        let prefix = line.len() - param.map_or(0, str::len);
        line[prefix..].to_vec()
    };
    match (word, param) {
        ("proceed", None) => Answer::Proceed,
        ("junk", None) => Answer::Junk,
        ("reject", Some(p)) => Answer::Reject(p.to_string()),
        ("disconnect", Some(p)) => Answer::Disconnect(p.to_string()),
        ("rewrite", Some(_)) => Answer::Rewrite(raw_param()),
        ("report", Some(_)) => Answer::Report(raw_param()),
        _ => panic!("not a decision: {text}"),
    }
}

/// One session scripted like smtpd runs it: each step sends the reports the filter
/// registered and the request (if it registered the phase), and returns the answer.
pub struct ScriptedSession<'k> {
    kit: &'k mut RunningKit,
    id: u64,
    message: u32,
    rcpt: u32,
}

const TOKEN_BASE: u64 = 0x5eed_0000_0000_0000;

fn token_of(phase: &str) -> u64 {
    TOKEN_BASE
        + phase
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            % 0xffff_ffff
}

impl ScriptedSession<'_> {
    /// The session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The kit, for raw lines.
    pub fn kit(&mut self) -> &mut RunningKit {
        self.kit
    }

    fn v(&self) -> &str {
        &self.kit.version
    }

    /// Sends a report of this session if the filter registered its event.
    pub async fn report(&mut self, event: &str, params: Option<&[u8]>) {
        if !self.kit.registered_report(event) {
            return;
        }
        let mut line = format!(
            "report|{}|1700000000.000001|smtp-in|{event}|{:016x}",
            self.v(),
            self.id
        )
        .into_bytes();
        if let Some(p) = params {
            line.push(b'|');
            line.extend_from_slice(p);
        }
        self.kit.send(&line).await;
    }

    /// Sends a request of this session and returns the answer, or
    /// [`Answer::NotAsked`] if the filter did not register the phase.
    pub async fn request(&mut self, phase: &str, param: &[u8]) -> Answer {
        if !self.kit.registered_phase(phase) {
            return Answer::NotAsked;
        }
        let line = self.request_line(phase, param);
        self.kit.request(self.id, &line).await
    }

    fn request_line(&self, phase: &str, param: &[u8]) -> Vec<u8> {
        let mut line = format!(
            "filter|{}|1700000000.000002|smtp-in|{phase}|{:016x}|{:016x}|",
            self.v(),
            self.id,
            token_of(phase)
        )
        .into_bytes();
        line.extend_from_slice(param);
        line
    }

    /// A client connects from `ip` (an IPv4 or IPv6 address, or `local`) with reverse
    /// name `rdns`: `link-connect`, the `connect` request, then the greeting.
    pub async fn connect(&mut self, ip: &str, rdns: &str) -> Answer {
        let src = if ip == "local" {
            "unix:/var/run/smtpd.sock".to_string()
        } else if ip.contains(':') {
            format!("[{ip}]:41000")
        } else {
            format!("{ip}:41000")
        };
        let dest = if ip == "local" {
            src.clone()
        } else {
            "192.0.2.25:25".to_string()
        };
        let fcrdns = if rdns == "<unknown>" { "fail" } else { "pass" };
        self.report(
            "link-connect",
            Some(format!("{rdns}|{fcrdns}|{src}|{dest}").as_bytes()),
        )
        .await;
        let client = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let answer = self
            .request("connect", format!("{rdns}|{client}").as_bytes())
            .await;
        if accepted(&answer) {
            self.report("link-greeting", Some(b"mx.example.org")).await;
        }
        answer
    }

    async fn identify(&mut self, method: &str, name: &[u8]) -> Answer {
        let mut command = method.as_bytes().to_vec();
        command.push(b' ');
        command.extend_from_slice(name);
        self.report("protocol-client", Some(&command)).await;
        let answer = self.request(&method.to_ascii_lowercase(), name).await;
        if accepted(&answer) {
            let mut params = method.as_bytes().to_vec();
            params.push(b'|');
            params.extend_from_slice(name);
            self.report("link-identify", Some(&params)).await;
        }
        answer
    }

    /// `HELO name`.
    pub async fn helo(&mut self, name: impl AsRef<[u8]>) -> Answer {
        self.identify("HELO", name.as_ref()).await
    }

    /// `EHLO name`.
    pub async fn ehlo(&mut self, name: impl AsRef<[u8]>) -> Answer {
        self.identify("EHLO", name.as_ref()).await
    }

    /// `STARTTLS`, then TLS comes up with description `tls`.
    pub async fn starttls(&mut self, tls: &str) -> Answer {
        let answer = self.request("starttls", b"").await;
        if accepted(&answer) {
            self.report("link-tls", Some(tls.as_bytes())).await;
        }
        answer
    }

    /// `AUTH PLAIN` with these credentials; `success` is smtpd's verdict, reported in
    /// `link-auth` with the version's field order.
    pub async fn auth_plain(&mut self, user: &[u8], password: &[u8], success: bool) -> Answer {
        let mut creds = vec![0u8];
        creds.extend_from_slice(user);
        creds.push(0);
        creds.extend_from_slice(password);
        let mut param = b"PLAIN ".to_vec();
        param.extend_from_slice(base64(&creds).as_bytes());
        self.report("protocol-client", Some(b"AUTH PLAIN ********"))
            .await;
        let answer = self.request("auth", &param).await;
        if accepted(&answer) {
            let result: &[u8] = if success { b"pass" } else { b"fail" };
            let params = if self.kit.numeric_version >= (0, 7) {
                [result, b"|", user].concat()
            } else {
                [user, b"|", result].concat()
            };
            self.report("link-auth", Some(&params)).await;
        }
        answer
    }

    fn msgid(&self) -> String {
        format!(
            "{:08x}",
            (self.id as u32).wrapping_mul(16).wrapping_add(self.message)
        )
    }

    fn tx_params(&self, result: &str, address: &[u8]) -> Vec<u8> {
        let msgid = self.msgid();
        if self.kit.numeric_version >= (0, 6) {
            [msgid.as_bytes(), b"|", result.as_bytes(), b"|", address].concat()
        } else {
            [msgid.as_bytes(), b"|", address, b"|", result.as_bytes()].concat()
        }
    }

    /// `MAIL FROM:<address>` (empty for the null sender): the request, then `tx-begin`
    /// and `tx-mail` with the answer's result.
    pub async fn mail_from(&mut self, address: impl AsRef<[u8]>) -> Answer {
        let address = address.as_ref();
        self.message += 1;
        self.rcpt = 0;
        let answer = self.request("mail-from", address).await;
        let result = tx_result(&answer);
        if result == "ok" {
            let msgid = self.msgid();
            self.report("tx-begin", Some(msgid.as_bytes())).await;
        }
        let params = self.tx_params(result, address);
        self.report("tx-mail", Some(&params)).await;
        answer
    }

    /// `RCPT TO:<address>`: the request, then `tx-rcpt` (and `tx-envelope` if accepted).
    pub async fn rcpt_to(&mut self, address: impl AsRef<[u8]>) -> Answer {
        let address = address.as_ref();
        let answer = self.request("rcpt-to", address).await;
        let result = tx_result(&answer);
        let params = self.tx_params(result, address);
        self.report("tx-rcpt", Some(&params)).await;
        if result == "ok" {
            self.rcpt += 1;
            let envelope = format!("{}|{}{:08x}", self.msgid(), self.msgid(), self.rcpt);
            self.report("tx-envelope", Some(envelope.as_bytes())).await;
        }
        answer
    }

    /// `DATA`, the message lines (given as the message holds them: the kit dot-stuffs
    /// them as a client would), the final `.` and `commit`; returns what the filter
    /// wrote back and its answers.
    pub async fn data<L: AsRef<[u8]>>(&mut self, lines: &[L]) -> DataOutcome {
        let wire: Vec<Vec<u8>> = lines
            .iter()
            .map(|l| {
                let l = l.as_ref();
                if l.first() == Some(&b'.') {
                    [b".", l].concat()
                } else {
                    l.to_vec()
                }
            })
            .collect();
        self.data_wire(&wire).await
    }

    /// Like [`ScriptedSession::data`], with lines given exactly as on the wire.
    pub async fn data_wire<L: AsRef<[u8]>>(&mut self, wire: &[L]) -> DataOutcome {
        let data = self.request("data", b"").await;
        let mut outcome = DataOutcome {
            data: data.clone(),
            lines: Vec::new(),
            wire_lines: Vec::new(),
            commit: Answer::NotAsked,
        };
        if !accepted(&data) {
            return outcome;
        }
        let msgid = self.msgid();
        self.report("tx-data", Some(format!("{msgid}|ok").as_bytes()))
            .await;
        if self.kit.registered_phase("data-line") {
            // Lines go out as smtpd sends them: without waiting for the echoes.
            for line in wire.iter().map(AsRef::as_ref).chain([&b"."[..]]) {
                let request = self.request_line("data-line", line);
                self.kit.send(&request).await;
            }
            loop {
                let line = self.kit.next_answer(self.id).await;
                let text_end = nth_bar(&line, 3).map_or(line.len(), |i| i + 1);
                let content = line[text_end..].to_vec();
                if !line.starts_with(b"filter-dataline|") {
                    panic!(
                        "expected a data line, got {}",
                        String::from_utf8_lossy(&line)
                    );
                }
                if content == b"." {
                    break;
                }
                outcome
                    .lines
                    .push(content.strip_prefix(b".").unwrap_or(&content).to_vec());
                outcome.wire_lines.push(content);
            }
        }
        outcome.commit = self.request("commit", b"").await;
        if accepted(&outcome.commit) {
            self.report("tx-commit", Some(format!("{msgid}|1000").as_bytes()))
                .await;
        } else {
            self.report("tx-rollback", Some(msgid.as_bytes())).await;
        }
        outcome
    }

    /// `RSET`: the request, then `tx-reset`.
    pub async fn rset(&mut self) -> Answer {
        let answer = self.request("rset", b"").await;
        let msgid = self.msgid();
        self.report("tx-reset", Some(msgid.as_bytes())).await;
        answer
    }

    /// `NOOP`.
    pub async fn noop(&mut self) -> Answer {
        self.request("noop", b"").await
    }

    /// `QUIT`.
    pub async fn quit(&mut self) -> Answer {
        self.request("quit", b"").await
    }

    /// The client starts a message and drops the connection mid-DATA: some data lines
    /// without the final `.`, then `tx-rollback`, `tx-reset` and `link-disconnect`.
    pub async fn drop_mid_data<L: AsRef<[u8]>>(&mut self, wire: &[L]) {
        let data = self.request("data", b"").await;
        if !accepted(&data) {
            return;
        }
        if self.kit.registered_phase("data-line") {
            for line in wire {
                let request = self.request_line("data-line", line.as_ref());
                self.kit.send(&request).await;
            }
        }
        let msgid = self.msgid();
        self.report("tx-rollback", Some(msgid.as_bytes())).await;
        self.report("tx-reset", Some(msgid.as_bytes())).await;
        self.disconnect().await;
    }

    /// The client goes away: `link-disconnect`.
    pub async fn disconnect(&mut self) {
        self.report("link-disconnect", None).await;
        self.kit.validator.session_closed(self.id);
        // Lines the filter may still write for this session are checked by finish().
        self.kit.held.remove(&self.id);
    }
}

fn accepted(answer: &Answer) -> bool {
    matches!(
        answer,
        Answer::NotAsked | Answer::Proceed | Answer::Junk | Answer::Rewrite(_) | Answer::Report(_)
    )
}

fn tx_result(answer: &Answer) -> &'static str {
    match answer {
        Answer::Reject(r) | Answer::Disconnect(r) if r.starts_with('4') => "tempfail",
        Answer::Reject(_) | Answer::Disconnect(_) => "permfail",
        _ => "ok",
    }
}

fn nth_bar(line: &[u8], n: usize) -> Option<usize> {
    line.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'|')
        .map(|(i, _)| i)
        .nth(n - 1)
}

/// Standard base64 (for AUTH PLAIN test credentials).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
    }
}
