//! The runtime, driven through the test kit: concurrency, ordering, failures,
//! data modes, long lines and the end of input.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opensmtpd_filter::protocol::{
    CommitDecision, Decision, EventKind, Interest, LongLines, Parameter, Phase, Report, SmtpReply,
};
use opensmtpd_filter::runtime::{DataOutput, MessageOutput};
use opensmtpd_filter::session::{SESSION_REPORTS, SessionInfo};
use opensmtpd_filter::testkit::{Answer, TestKit};
use opensmtpd_filter::{Config, DataMode, Filter, Message, MessageVerdict, Session};
use tokio::sync::Notify;

fn reply(text: &str) -> SmtpReply {
    SmtpReply::parse(text).unwrap()
}

/// Holds `rcpt-to` for `slow@...` until the test releases it; records the order of
/// everything it sees.
#[derive(Default)]
struct Gate {
    release: Notify,
    seen: Mutex<Vec<String>>,
}

struct Gated(Arc<Gate>);

impl Filter for Gated {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new()
            .phase(Phase::RcptTo)
            .phase(Phase::MailFrom)
            .report(EventKind::TxRcpt)
    }

    fn on_report(&self, session: &mut Session<()>, report: &Report<'_>) {
        self.0.seen.lock().unwrap().push(format!(
            "{} report {}",
            session.info().id(),
            report.event.kind()
        ));
    }

    async fn on_mail_from(&self, session: &mut Session<()>, address: &[u8]) -> Decision {
        let who = String::from_utf8_lossy(address).into_owned();
        self.0
            .seen
            .lock()
            .unwrap()
            .push(format!("{} mail {who}", session.info().id()));
        Decision::Proceed
    }

    async fn on_rcpt_to(&self, session: &mut Session<()>, address: &[u8]) -> Decision {
        let who = String::from_utf8_lossy(address).into_owned();
        if who.starts_with("slow@") {
            self.0.release.notified().await;
        }
        self.0
            .seen
            .lock()
            .unwrap()
            .push(format!("{} rcpt {who}", session.info().id()));
        Decision::Proceed
    }
}

fn request(version: &str, phase: &str, session: u64, param: &str) -> Vec<u8> {
    format!("filter|{version}|1.0|smtp-in|{phase}|{session:016x}|00000000000000aa|{param}")
        .into_bytes()
}

fn report(version: &str, event: &str, session: u64, params: &str) -> Vec<u8> {
    format!("report|{version}|1.0|smtp-in|{event}|{session:016x}|{params}").into_bytes()
}

#[tokio::test]
async fn a_waiting_handler_never_delays_another_session() {
    let gate = Arc::new(Gate::default());
    let mut kit = TestKit::new(Gated(gate.clone())).start().await;
    kit.send(&request("0.7", "rcpt-to", 1, "slow@example.org"))
        .await;
    // Session 2 is answered while session 1's handler still waits (it cannot finish
    // before `release` below).
    assert_eq!(
        kit.request(2, &request("0.7", "rcpt-to", 2, "fast@example.org"))
            .await,
        Answer::Proceed
    );
    gate.release.notify_one();
    let answer = kit.next_answer(1).await;
    assert_eq!(
        opensmtpd_filter::testkit::parse_answer(&answer),
        Answer::Proceed
    );
    kit.finish().await;
}

#[tokio::test]
async fn one_session_keeps_its_order_while_a_handler_waits() {
    let gate = Arc::new(Gate::default());
    let mut kit = TestKit::new(Gated(gate.clone())).start().await;
    kit.send(&request("0.7", "rcpt-to", 1, "slow@example.org"))
        .await;
    kit.send(&report("0.7", "tx-rcpt", 1, "00000001|ok|slow@example.org"))
        .await;
    kit.send(&request("0.7", "mail-from", 1, "next@example.org"))
        .await;
    // Another session goes through meanwhile.
    assert_eq!(
        kit.request(2, &request("0.7", "mail-from", 2, "other@example.org"))
            .await,
        Answer::Proceed
    );
    gate.release.notify_one();
    kit.next_answer(1).await;
    kit.next_answer(1).await;
    let seen = gate.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "0000000000000002 mail other@example.org",
            "0000000000000001 rcpt slow@example.org",
            "0000000000000001 report tx-rcpt",
            "0000000000000001 mail next@example.org",
        ]
    );
    kit.finish().await;
}

/// Panics on `helo`, never answers `ehlo`; counts `mail-from` calls per session.
struct Faulty;

impl Filter for Faulty {
    type Session = u32;

    fn interest(&self) -> Interest {
        Interest::new()
            .phase(Phase::Helo)
            .phase(Phase::Ehlo)
            .phase(Phase::MailFrom)
            .union(SESSION_REPORTS)
    }

    async fn on_helo(&self, _: &mut Session<u32>, identity: &[u8]) -> Decision {
        if identity == b"boom" {
            panic!("handler bug");
        }
        Decision::Proceed
    }

    async fn on_ehlo(&self, _: &mut Session<u32>, _: &[u8]) -> Decision {
        std::future::pending::<()>().await;
        Decision::Proceed
    }

    async fn on_mail_from(&self, session: &mut Session<u32>, _: &[u8]) -> Decision {
        session.state += 1;
        // The session info survives a failed handler.
        assert_eq!(
            session.info().client_ip(),
            Some("192.0.2.7".parse().unwrap())
        );
        Decision::Reject(SmtpReply::new(550, &format!("call {}", session.state)).unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_get_the_fallback_and_the_session_goes_on() {
    let config = Config {
        handler_timeout: Duration::from_secs(5),
        fallback: CommitDecision::Reject(reply("451 4.3.0 Temporary filter failure")),
        ..Config::default()
    };
    let mut kit = TestKit::new(Faulty).config(config).start().await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "client.example.org").await;
    assert_eq!(
        s.mail_from("a@example.org").await,
        Answer::Reject("550 call 1".into())
    );
    assert_eq!(
        s.helo("boom").await,
        Answer::Reject("451 4.3.0 Temporary filter failure".into())
    );
    // The filter's own state was reset with the panic; the session goes on.
    assert_eq!(
        s.mail_from("a@example.org").await,
        Answer::Reject("550 call 1".into())
    );
    assert_eq!(
        s.ehlo("never").await,
        Answer::Reject("451 4.3.0 Temporary filter failure".into())
    );
    assert_eq!(s.helo("fine").await, Answer::Proceed);
    s.disconnect().await;
    assert_eq!(kit.finish().await.open_sessions, 0);
}

#[tokio::test]
async fn a_disconnect_while_a_handler_waits_frees_the_session() {
    let gate = Arc::new(Gate::default());
    let mut kit = TestKit::new(Gated(gate.clone())).start().await;
    kit.send(&request("0.7", "rcpt-to", 1, "slow@example.org"))
        .await;
    kit.send(&format!("report|0.7|1.0|smtp-in|link-disconnect|{:016x}", 1).into_bytes())
        .await;
    assert_eq!(
        kit.request(2, &request("0.7", "rcpt-to", 2, "x@example.org"))
            .await,
        Answer::Proceed
    );
    let summary = kit.finish().await;
    // Session 2 never disconnected; session 1 is gone although its handler never ended.
    assert_eq!(summary.open_sessions, 1);
    assert!(
        !gate
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("slow@"))
    );
}

/// Records the session state at rcpt-to.
#[derive(Default)]
struct Recorder(Mutex<Vec<SessionInfo>>);

struct Recording(Arc<Recorder>);

impl Filter for Recording {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().phase(Phase::RcptTo).union(SESSION_REPORTS)
    }

    async fn on_rcpt_to(&self, session: &mut Session<()>, _: &[u8]) -> Decision {
        self.0.0.lock().unwrap().push(session.info().clone());
        Decision::Proceed
    }
}

#[tokio::test]
async fn session_state_follows_the_reports_in_every_version() {
    for (major, minor) in [(0, 4), (0, 5), (0, 6), (0, 7)] {
        let recorder = Arc::new(Recorder::default());
        let mut kit = TestKit::new(Recording(recorder.clone()))
            .protocol(major, minor)
            .start()
            .await;
        let mut s = kit.session();
        s.connect("2001:db8::5", "client.example.org").await;
        s.ehlo("client.example.org").await;
        s.starttls("TLSv1.3:TLS_AES_256_GCM_SHA384:256").await;
        s.auth_plain(b"us|er", b"secret", true).await;
        s.mail_from("sender@example.org").await;
        s.rcpt_to("first@example.org").await;
        s.rcpt_to("second@example.org").await;
        s.disconnect().await;
        assert_eq!(kit.finish().await.open_sessions, 0, "0.{minor}");
        let seen = recorder.0.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            last.client_ip(),
            Some("2001:db8::5".parse().unwrap()),
            "0.{minor}"
        );
        assert_eq!(last.helo.as_deref(), Some(&b"client.example.org"[..]));
        assert_eq!(
            last.tls.as_deref(),
            Some(&b"TLSv1.3:TLS_AES_256_GCM_SHA384:256"[..])
        );
        assert_eq!(last.authenticated_user(), Some(&b"us|er"[..]), "0.{minor}");
        let tx = last.transaction.as_ref().unwrap();
        assert_eq!(
            tx.mail_from.as_deref(),
            Some(&b"sender@example.org"[..]),
            "0.{minor}"
        );
        assert_eq!(
            tx.accepted_recipients().collect::<Vec<_>>(),
            vec![&b"first@example.org"[..]]
        );
    }
}

/// The pass-through filter of the examples, inline.
struct Pass;

impl Filter for Pass {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().all_reports().all_phases()
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }
}

fn odd_lines() -> Vec<Vec<u8>> {
    vec![
        b"Subject: caf\xe9 |pipes| \tand tabs".to_vec(),
        b"".to_vec(),
        b".".to_vec(),
        b"..".to_vec(),
        b".leading dot".to_vec(),
        b"\xff\xfe not utf-8 \r bare CR".to_vec(),
        vec![b'x'; 990],
    ]
}

#[tokio::test]
async fn passthrough_is_byte_identical_in_every_version() {
    for (major, minor) in [(0, 4), (0, 5), (0, 6), (0, 7)] {
        let mut kit = TestKit::new(Pass).protocol(major, minor).start().await;
        let mut s = kit.session();
        assert_eq!(s.connect("192.0.2.1", "<unknown>").await, Answer::Proceed);
        assert_eq!(s.ehlo("x").await, Answer::Proceed);
        assert_eq!(s.mail_from("").await, Answer::Proceed);
        assert_eq!(s.rcpt_to("a|b@example.org").await, Answer::Proceed);
        let outcome = s.data(&odd_lines()).await;
        assert_eq!(outcome.lines, odd_lines(), "0.{minor}");
        assert_eq!(outcome.commit, Answer::Proceed);
        // A client that does not dot-stuff: passed on exactly as sent.
        let raw = s.data_wire(&[&b".not stuffed"[..], b"x"]).await;
        assert_eq!(
            raw.wire_lines,
            vec![b".not stuffed".to_vec(), b"x".to_vec()]
        );
        assert_eq!(s.quit().await, Answer::Proceed);
        s.disconnect().await;
        kit.finish().await;
    }
}

#[tokio::test]
async fn a_line_smtpd_7_4_cannot_read_back_refuses_the_message() {
    let mut kit = TestKit::new(Pass).start().await;
    let mut s = kit.session();
    s.connect("192.0.2.1", "a.example.org").await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@example.org").await;
    let at_limit = vec![b'y'; 65_484];
    let over = vec![b'z'; 65_500];
    let outcome = s
        .data(&[
            b"before".to_vec(),
            at_limit.clone(),
            over,
            b"after".to_vec(),
        ])
        .await;
    assert_eq!(
        outcome.lines,
        vec![b"before".to_vec(), at_limit, b"after".to_vec()]
    );
    assert!(
        matches!(outcome.commit, Answer::Reject(ref r) if r.starts_with("552 5.3.4 ")),
        "{:?}",
        outcome.commit
    );
    // The next message and the next session are served normally.
    s.mail_from("a@example.org").await;
    assert_eq!(s.data(&[b"ok"]).await.commit, Answer::Proceed);
    s.disconnect().await;
    let mut s = kit.session();
    assert_eq!(
        s.connect("192.0.2.2", "b.example.org").await,
        Answer::Proceed
    );
    kit.finish().await;
}

#[tokio::test]
async fn before_7_4_long_lines_are_refused_or_left_to_smtpd_as_chosen() {
    let long = vec![b'l'; 2_000];
    let mut kit = TestKit::new(Pass).protocol(0, 6).start().await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let outcome = s.data(std::slice::from_ref(&long)).await;
    assert!(outcome.lines.is_empty());
    assert!(matches!(outcome.commit, Answer::Reject(ref r) if r.starts_with("552 ")));
    kit.finish().await;

    let config = Config {
        long_lines: LongLines::AllowLegacyTruncation,
        ..Config::default()
    };
    let mut kit = TestKit::new(Pass)
        .protocol(0, 6)
        .config(config)
        .start()
        .await;
    kit.allow_lines_up_to(65_534);
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let outcome = s.data(std::slice::from_ref(&long)).await;
    assert_eq!(outcome.lines, vec![long]);
    assert_eq!(outcome.commit, Answer::Proceed);
    kit.finish().await;
}

/// Whole-message mode: adds a header, rejects messages whose body says REJECTME,
/// replaces the body of messages whose subject is "replace".
struct Whole(Arc<Mutex<Vec<Vec<u8>>>>);

impl Filter for Whole {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new()
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Message { max_size: 200 }
    }

    async fn on_message(&self, _: &mut Session<()>, message: &Message) -> MessageVerdict {
        let content = message.to_vec().unwrap();
        self.0.lock().unwrap().push(content.clone());
        if memchr::memmem::find(&content, b"REJECTME").is_some() {
            return MessageVerdict::reject(reply("550 5.7.1 rejected"));
        }
        if message.header("subject").as_deref() == Some(&b"replace"[..]) {
            return MessageVerdict {
                decision: CommitDecision::Proceed,
                output: MessageOutput::Replace(bytes::Bytes::from_static(
                    b"Subject: new\n\n.dot\n",
                )),
            };
        }
        MessageVerdict {
            decision: CommitDecision::Proceed,
            output: MessageOutput::Prepend(vec![b"X-Checked: yes".to_vec(), b"\tfolded".to_vec()]),
        }
    }

    async fn on_commit(&self, _: &mut Session<()>) -> CommitDecision {
        CommitDecision::Reject(reply("552 5.3.4 too big for this test"))
    }
}

#[tokio::test]
async fn whole_message_mode() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut kit = TestKit::new(Whole(seen.clone())).start().await;
    assert!(kit.registered_phase("data-line") && kit.registered_phase("commit"));
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let sent: Vec<&[u8]> = vec![b"Subject: hi", b"", b".dotted", b"caf\xe9"];
    let outcome = s.data(&sent).await;
    assert_eq!(
        seen.lock().unwrap()[0],
        b"Subject: hi\n\n.dotted\ncaf\xe9\n",
        "the handler sees it unstuffed"
    );
    let mut expected: Vec<Vec<u8>> = vec![b"X-Checked: yes".to_vec(), b"\tfolded".to_vec()];
    expected.extend(sent.iter().map(|l| l.to_vec()));
    assert_eq!(outcome.lines, expected);
    assert_eq!(outcome.wire_lines[4], b"..dotted", "written back stuffed");
    assert_eq!(outcome.commit, Answer::Proceed);

    s.mail_from("a@example.org").await;
    let outcome = s.data(&[&b"Subject: x"[..], b"", b"REJECTME"]).await;
    assert_eq!(outcome.commit, Answer::Reject("550 5.7.1 rejected".into()));

    s.mail_from("a@example.org").await;
    let outcome = s.data(&[&b"Subject: replace"[..], b"", b"old"]).await;
    assert_eq!(
        outcome.lines,
        vec![b"Subject: new".to_vec(), b"".to_vec(), b".dot".to_vec()]
    );

    // Over 200 bytes: passed on unchanged, on_message not called, on_commit decides.
    s.mail_from("a@example.org").await;
    let big: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("line {i} of a big message").into_bytes())
        .collect();
    let calls = seen.lock().unwrap().len();
    let outcome = s.data(&big).await;
    assert_eq!(outcome.lines, big);
    assert_eq!(seen.lock().unwrap().len(), calls);
    assert_eq!(
        outcome.commit,
        Answer::Reject("552 5.3.4 too big for this test".into())
    );
    s.disconnect().await;
    kit.finish().await;
}

#[tokio::test]
async fn a_client_dropping_mid_data_frees_everything() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut kit = TestKit::new(Whole(seen.clone())).start().await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    s.drop_mid_data(&[&b"Subject: gone"[..], b"", b"half"])
        .await;
    let mut s = kit.session();
    s.mail_from("b@example.org").await;
    assert_eq!(s.data(&[b"x"]).await.commit, Answer::Proceed);
    s.disconnect().await;
    assert_eq!(kit.finish().await.open_sessions, 0);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the dropped message never reached the handler"
    );
}

/// Streaming mode filter that adds a header and panics on a poisoned line.
struct Stamper;

impl Filter for Stamper {
    type Session = bool;

    fn interest(&self) -> Interest {
        Interest::new().phase(Phase::Commit)
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }

    fn on_data_line(&self, session: &mut Session<bool>, line: &[u8], out: &mut DataOutput<'_>) {
        if !session.state {
            session.state = true;
            out.line(b"X-Stamp: 1");
        }
        if line == b"poison" {
            panic!("data-line handler bug");
        }
        if line == b"bad" {
            out.line(b"two\nlines");
            return;
        }
        out.pass();
    }

    async fn on_commit(&self, session: &mut Session<bool>) -> CommitDecision {
        session.state = false;
        CommitDecision::Proceed
    }
}

#[tokio::test]
async fn streaming_mode_edits_and_survives_handler_faults() {
    let config = Config {
        fallback: CommitDecision::Reject(reply("451 4.3.0 try later")),
        ..Config::default()
    };
    let mut kit = TestKit::new(Stamper).config(config).start().await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let outcome = s.data(&[&b"a"[..], b".b"]).await;
    assert_eq!(
        outcome.lines,
        vec![b"X-Stamp: 1".to_vec(), b"a".to_vec(), b".b".to_vec()]
    );
    assert_eq!(outcome.commit, Answer::Proceed);

    s.mail_from("a@example.org").await;
    let outcome = s.data(&[&b"a"[..], b"poison", b"c"]).await;
    assert_eq!(
        outcome.lines,
        vec![
            b"X-Stamp: 1".to_vec(),
            b"a".to_vec(),
            b"poison".to_vec(),
            b"c".to_vec()
        ]
    );
    assert_eq!(outcome.commit, Answer::Reject("451 4.3.0 try later".into()));

    s.mail_from("a@example.org").await;
    let outcome = s.data(&[&b"bad"[..], b"d"]).await;
    assert!(matches!(outcome.commit, Answer::Reject(ref r) if r.starts_with("552 ")));
    kit.finish().await;
}

/// Answers `report` and `rewrite`.
struct Reporter;

impl Filter for Reporter {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().phase(Phase::Helo).phase(Phase::MailFrom)
    }

    async fn on_helo(&self, _: &mut Session<()>, _: &[u8]) -> Decision {
        Decision::Report(Parameter::new("seen a helo").unwrap())
    }

    async fn on_mail_from(&self, _: &mut Session<()>, _: &[u8]) -> Decision {
        Decision::Rewrite(Parameter::new("new|sender@example.org").unwrap())
    }
}

#[tokio::test]
async fn report_decision_only_from_7_6() {
    let mut kit = TestKit::new(Reporter).start().await;
    let mut s = kit.session();
    assert_eq!(
        s.helo("x").await,
        Answer::Proceed,
        "7.4 exits on report: proceed instead"
    );
    assert_eq!(
        s.mail_from("a@example.org").await,
        Answer::Rewrite(b"new|sender@example.org".to_vec())
    );
    kit.finish().await;

    let hs = [
        "config|smtpd-version|7.6.0",
        "config|protocol|0.7",
        "config|smtp-session-timeout|300",
        "config|subsystem|smtp-in",
        "config|admd|mx.example.org",
        "config|ready",
    ];
    let mut kit = TestKit::new(Reporter).handshake(&hs).start().await;
    let mut s = kit.session();
    assert_eq!(s.helo("x").await, Answer::Report(b"seen a helo".to_vec()));
    kit.finish().await;
}

#[tokio::test]
async fn bad_input_is_skipped_and_everything_else_answered() {
    let mut kit = TestKit::new(Pass).start().await;
    for garbage in [
        &b"garbage"[..],
        b"",
        b"filter|0.7|1.0|smtp-in|nope|0000000000000001|00000000000000aa|",
        b"filter|0.7|1.0|smtp-in|helo|zz|00000000000000aa|x",
        b"report|0.7|1.0|smtp-in|link-unknown|0000000000000001|x",
        b"config|late|1",
        b"\xff\xfe\x00|||||||",
        b"filter|9.9|1.0|smtp-in|helo|0000000000000003|00000000000000aa|future.example",
    ] {
        kit.send(garbage).await;
    }
    // The future-version request was answered, by the newest rules.
    assert_eq!(
        opensmtpd_filter::testkit::parse_answer(&kit.next_answer(3).await),
        Answer::Proceed
    );
    // A request for a session never announced is answered.
    assert_eq!(
        kit.request(9, &request("0.7", "mail-from", 9, "a@example.org"))
            .await,
        Answer::Proceed
    );
    kit.finish().await;
}

#[tokio::test(start_paused = true)]
async fn end_of_input_lets_running_handlers_answer_first() {
    struct Slow;
    impl Filter for Slow {
        type Session = ();
        fn interest(&self) -> Interest {
            Interest::new().phase(Phase::MailFrom)
        }
        async fn on_mail_from(&self, _: &mut Session<()>, _: &[u8]) -> Decision {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Decision::Junk
        }
    }
    let mut kit = TestKit::new(Slow).start().await;
    kit.send(&request("0.7", "mail-from", 1, "a@example.org"))
        .await;
    kit.close_input().await;
    assert_eq!(
        opensmtpd_filter::testkit::parse_answer(&kit.next_answer(1).await),
        Answer::Junk
    );
    kit.finish().await;
}

#[tokio::test]
async fn traffic_before_config_ready_is_answered_after_registering() {
    // A daemon that skipped config|ready: the filter must still register before its
    // first answer (an answer before register|ready makes smtpd exit). The kit's
    // validator checks the order.
    let kit = TestKit::new(Pass)
        .handshake(&["config|smtpd-version|7.4.0-portable", "config|ready"])
        .start()
        .await;
    assert!(
        kit.registrations()
            .last()
            .is_some_and(|l| l == "register|ready")
    );
    kit.finish().await;

    let (mut to_filter, filter_in) = tokio::io::duplex(1 << 16);
    let (filter_out, mut from_filter) = tokio::io::duplex(1 << 16);
    let run = tokio::spawn(opensmtpd_filter::run_with(
        Pass,
        Config::default(),
        filter_in,
        filter_out,
    ));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    to_filter
        .write_all(&[request("0.7", "helo", 1, "early.example"), b"\n".to_vec()].concat())
        .await
        .unwrap();
    drop(to_filter);
    let summary = run.await.unwrap().unwrap();
    let mut out = String::new();
    from_filter.read_to_string(&mut out).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let ready = lines
        .iter()
        .position(|l| *l == "register|ready")
        .expect("registered");
    assert!(lines[..ready].iter().all(|l| l.starts_with("register|")));
    assert_eq!(
        lines[ready + 1..],
        ["filter-result|0000000000000001|00000000000000aa|proceed"]
    );
    assert_eq!(summary.open_sessions, 1);
}

#[tokio::test]
async fn state_is_freed_for_every_finished_session() {
    // 20,000 sessions, a few hundred open at once: nothing stays behind.
    let (mut to_filter, filter_in) = tokio::io::duplex(1 << 20);
    let (filter_out, mut from_filter) = tokio::io::duplex(1 << 20);
    let run = tokio::spawn(opensmtpd_filter::run_with(
        Pass,
        Config::default(),
        filter_in,
        filter_out,
    ));
    let drain = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        from_filter.read_to_end(&mut sink).await.unwrap();
        sink.iter().filter(|&&b| b == b'\n').count()
    });
    use tokio::io::AsyncWriteExt;
    to_filter
        .write_all(b"config|smtpd-version|7.4.0-portable\nconfig|ready\n")
        .await
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..20_000u64 {
        let open = i + 1;
        batch.extend_from_slice(&report(
            "0.7",
            "link-connect",
            open,
            "a.example|pass|192.0.2.1:1|192.0.2.2:25",
        ));
        batch.push(b'\n');
        batch.extend_from_slice(&request("0.7", "mail-from", open, "a@example.org"));
        batch.push(b'\n');
        if i >= 300 {
            let close = i - 299;
            batch.extend_from_slice(
                format!("report|0.7|1.0|smtp-in|link-disconnect|{close:016x}\n").as_bytes(),
            );
        }
        if batch.len() > 1 << 16 {
            to_filter.write_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    for close in 19_701..=20_000u64 {
        batch.extend_from_slice(
            format!("report|0.7|1.0|smtp-in|link-disconnect|{close:016x}\n").as_bytes(),
        );
    }
    to_filter.write_all(&batch).await.unwrap();
    drop(to_filter);
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.open_sessions, 0);
    // registration lines + one answer per request
    assert_eq!(drain.await.unwrap(), 19 + 13 + 1 + 20_000);
}
