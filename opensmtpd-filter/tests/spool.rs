//! Whole-message mode with messages larger than the spool threshold: stored in a
//! temporary file, echoed a chunk at a time, header sections replaced, sessions that
//! go away mid-message or mid-echo, many sessions at once, and a spool that fails.

use std::sync::{Arc, Mutex};

use opensmtpd_filter::protocol::{CommitDecision, Interest, Phase};
use opensmtpd_filter::runtime::MessageOutput;
use opensmtpd_filter::testkit::{Answer, RunningKit, TestKit};
use opensmtpd_filter::{Config, DataMode, Filter, Message, MessageVerdict, Session};

type Shared<T> = Arc<Mutex<T>>;

/// What the handler saw of one message.
#[derive(Clone, Debug)]
struct Seen {
    spooled: bool,
    content: Vec<u8>,
    header_section: Vec<u8>,
}

/// Records each message; answers with `output` (header lines replace the header
/// section when `headers` is set, else are prepended).
struct Recorder {
    seen: Shared<Vec<Seen>>,
    commits: Shared<u32>,
    headers: Option<Vec<Vec<u8>>>,
}

impl Recorder {
    fn new(headers: Option<Vec<Vec<u8>>>) -> (Recorder, Shared<Vec<Seen>>, Shared<u32>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let commits = Arc::new(Mutex::new(0));
        (
            Recorder {
                seen: Arc::clone(&seen),
                commits: Arc::clone(&commits),
                headers,
            },
            seen,
            commits,
        )
    }
}

impl Filter for Recorder {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().phase(Phase::MailFrom)
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Message { max_size: 64 << 20 }
    }

    async fn on_message(&self, _: &mut Session<()>, message: &Message) -> MessageVerdict {
        let content = message.to_vec().expect("reading the message back");
        assert_eq!(content.len() as u64, message.len());
        self.seen.lock().unwrap().push(Seen {
            spooled: message.is_spooled(),
            content,
            header_section: message.header_section().to_vec(),
        });
        MessageVerdict {
            decision: CommitDecision::Proceed,
            output: match &self.headers {
                Some(h) => MessageOutput::Headers(h.clone()),
                None => MessageOutput::Unchanged,
            },
        }
    }

    async fn on_commit(&self, _: &mut Session<()>) -> CommitDecision {
        *self.commits.lock().unwrap() += 1;
        CommitDecision::Proceed
    }
}

fn config(above: usize, dir: Option<&str>) -> Config {
    Config {
        spool_above: above,
        spool_dir: dir.map(Into::into),
        ..Config::default()
    }
}

/// Wire lines of a message of about `size` bytes: headers, an empty line, then a
/// body with dot-stuffed lines, an oddly stuffed one (a single dot: smtpd passes it
/// as the client sent it), long lines and bytes that are not UTF-8.
fn wire_message(tag: &str, size: usize) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = vec![
        format!("Subject: {tag}").into_bytes(),
        b"From: <a@example.org>".to_vec(),
        b"X-Folded: a".to_vec(),
        b"\tb".to_vec(),
        Vec::new(),
    ];
    let mut total = 0;
    let mut i = 0u32;
    while total < size {
        let line = match i % 7 {
            0 => format!("..stuffed {tag} {i}").into_bytes(),
            1 => vec![b'x'; 30_000 + (i as usize % 5) * 1000],
            2 => b"\xff\xfe\x00 binary \x80\r".to_vec(),
            3 => b"..".to_vec(),
            4 => Vec::new(),
            5 => format!(".odd {i}").into_bytes(),
            _ => format!("line {i} of {tag}").into_bytes(),
        };
        total += line.len() + 1;
        lines.push(line);
        i += 1;
    }
    lines
}

fn unstuffed(wire: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in wire {
        out.extend_from_slice(l.strip_prefix(b".").unwrap_or(l));
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn a_spooled_message_goes_back_byte_for_byte() {
    let (filter, seen, _) = Recorder::new(None);
    let mut kit = TestKit::new(filter)
        .config(config(64 * 1024, None))
        .start()
        .await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let wire = wire_message("big", 3 << 20);
    let outcome = s.data_wire(&wire).await;
    assert_eq!(outcome.wire_lines, wire, "every line as smtpd sent it");
    assert_eq!(outcome.commit, Answer::Proceed);
    // a small one after it stays in RAM
    s.mail_from("a@example.org").await;
    let small = wire_message("small", 2000);
    assert_eq!(s.data_wire(&small).await.wire_lines, small);
    s.disconnect().await;
    assert_eq!(kit.finish().await.open_sessions, 0);
    let seen = seen.lock().unwrap();
    assert!(seen[0].spooled && !seen[1].spooled);
    assert_eq!(
        seen[0].content,
        unstuffed(&wire),
        "the handler reads it unstuffed"
    );
    assert_eq!(
        seen[0].header_section,
        b"Subject: big\nFrom: <a@example.org>\nX-Folded: a\n\tb\n"
    );
    assert_eq!(seen[1].content, unstuffed(&small));
}

#[tokio::test]
async fn header_section_replaced_over_a_spooled_body() {
    let new_headers = vec![
        b"X-Added: 1".to_vec(),
        b".Dotted: header".to_vec(),
        b"Subject: changed".to_vec(),
    ];
    let (filter, seen, _) = Recorder::new(Some(new_headers.clone()));
    let mut kit = TestKit::new(filter)
        .config(config(100_000, None))
        .start()
        .await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let wire = wire_message("edit", 1 << 20);
    let outcome = s.data_wire(&wire).await;
    assert_eq!(
        outcome.lines[..3],
        new_headers[..],
        "the new header section"
    );
    assert_eq!(
        outcome.wire_lines[1], b"..Dotted: header",
        "stuffed on the way"
    );
    assert_eq!(
        outcome.wire_lines[3..],
        wire[4..],
        "the empty line and the body as they were stored"
    );
    // a message with no empty line at all: everything is header section
    s.mail_from("a@example.org").await;
    let only_headers: Vec<Vec<u8>> = vec![b"A: 1".to_vec(), b"B: 2".to_vec()];
    let outcome = s.data_wire(&only_headers).await;
    assert_eq!(outcome.lines, new_headers);
    s.disconnect().await;
    kit.finish().await;
    assert!(seen.lock().unwrap()[0].spooled);
}

/// The data lines, final `.` and `commit` of one message sent without waiting for
/// anything, as raw lines.
async fn send_message(kit: &mut RunningKit, id: u64, wire: &[Vec<u8>], commit: bool) {
    let v = kit.version().to_string();
    let head = |phase: &str| {
        format!("filter|{v}|1700000000.000002|smtp-in|{phase}|{id:016x}|{id:016x}|").into_bytes()
    };
    for line in wire.iter().map(Vec::as_slice).chain([&b"."[..]]) {
        kit.send(&[head("data-line"), line.to_vec()].concat()).await;
    }
    if commit {
        kit.send(&head("commit")).await;
    }
}

/// Reads one session's echoed message up to its `.`.
async fn read_echo(kit: &mut RunningKit, id: u64) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    loop {
        let line = kit.next_answer(id).await;
        let content = line.splitn(4, |&b| b == b'|').nth(3).unwrap().to_vec();
        if content == b"." {
            return lines;
        }
        lines.push(content);
    }
}

#[tokio::test]
async fn many_large_messages_at_once_and_other_answers_in_between() {
    let (filter, seen, _) = Recorder::new(None);
    let mut kit = TestKit::new(filter)
        .config(config(16 * 1024, None))
        .start()
        .await;
    let ids: Vec<u64> = (0..4).map(|_| kit.session().id()).collect();
    let other = kit.session().id();
    let messages: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|i| wire_message(&format!("m{i}"), 200_000))
        .collect();
    for (id, wire) in ids.iter().zip(&messages) {
        // commit sent at once, before the echo: it is answered after the final `.`
        send_message(&mut kit, *id, wire, true).await;
    }
    // another session's request is answered while the messages are written back
    let mail_from = format!(
        "filter|{}|1700000000.000002|smtp-in|mail-from|{other:016x}|{other:016x}|b@example.org",
        kit.version()
    );
    assert_eq!(
        kit.request(other, mail_from.as_bytes()).await,
        Answer::Proceed
    );
    for (id, wire) in ids.iter().zip(&messages) {
        assert_eq!(&read_echo(&mut kit, *id).await, wire);
        let commit = kit.next_answer(*id).await;
        assert_eq!(
            opensmtpd_filter::testkit::parse_answer(&commit),
            Answer::Proceed
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert!(seen.lock().unwrap().iter().all(|s| s.spooled));
    kit.finish().await;
}

#[tokio::test]
async fn a_client_gone_mid_message_or_mid_echo_frees_everything() {
    let (filter, seen, _) = Recorder::new(None);
    let mut kit = TestKit::new(filter)
        .config(config(16 * 1024, None))
        .start()
        .await;
    // mid-message: spooled lines, no final `.`
    let mut s = kit.session();
    s.drop_mid_data(&wire_message("gone", 500_000)).await;
    // mid-echo: the final `.` went in (the handler answers at once, the echo starts),
    // then the client goes away before the message is written back
    let mut s = kit.session();
    let mut wire = wire_message("echo", 4 << 20);
    wire.push(b".".to_vec());
    s.drop_mid_data(&wire).await;
    // the filter goes on serving others
    let mut s = kit.session();
    s.mail_from("b@example.org").await;
    let next = wire_message("next", 300_000);
    assert_eq!(s.data_wire(&next).await.wire_lines, next);
    s.disconnect().await;
    assert_eq!(kit.finish().await.open_sessions, 0);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the message cut short never reached the handler"
    );
    assert_eq!(seen[1].content, unstuffed(&next));
}

#[tokio::test]
async fn a_spool_that_cannot_be_made_passes_the_message_on_unscanned() {
    let (filter, seen, commits) = Recorder::new(None);
    let mut kit = TestKit::new(filter)
        .config(config(
            8 * 1024,
            Some("/nonexistent/opensmtpd-filter-spool"),
        ))
        .start()
        .await;
    let mut s = kit.session();
    s.mail_from("a@example.org").await;
    let wire = wire_message("nospool", 300_000);
    let outcome = s.data_wire(&wire).await;
    assert_eq!(outcome.wire_lines, wire, "passed on whole and unchanged");
    assert_eq!(outcome.commit, Answer::Proceed, "on_commit decides");
    // small messages are still scanned
    s.mail_from("a@example.org").await;
    let small = vec![b"Subject: s".to_vec(), Vec::new(), b"small".to_vec()];
    assert_eq!(s.data_wire(&small).await.wire_lines, small);
    s.disconnect().await;
    kit.finish().await;
    assert_eq!(*commits.lock().unwrap(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].content, unstuffed(&small));
}

/// Like [`Recorder`] with a small size cap.
struct Capped(Recorder);

impl Filter for Capped {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new()
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Message { max_size: 100_000 }
    }

    async fn on_message(&self, s: &mut Session<()>, message: &Message) -> MessageVerdict {
        self.0.on_message(s, message).await
    }

    async fn on_commit(&self, s: &mut Session<()>) -> CommitDecision {
        self.0.on_commit(s).await
    }
}

#[tokio::test]
async fn a_message_over_the_cap_goes_on_as_it_arrives() {
    let (filter, seen, commits) = Recorder::new(None);
    let mut kit = TestKit::new(Capped(filter))
        .config(config(16 * 1024, None))
        .start()
        .await;
    let mut s = kit.session();
    let wire = wire_message("over", 600_000);
    let outcome = s.data_wire(&wire).await;
    assert_eq!(outcome.wire_lines, wire);
    assert_eq!(outcome.commit, Answer::Proceed);
    let under = wire_message("under", 50_000);
    assert_eq!(s.data_wire(&under).await.wire_lines, under);
    s.disconnect().await;
    kit.finish().await;
    assert_eq!(*commits.lock().unwrap(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

mod arbitrary {
    //! Arbitrary messages through the whole-message mode, with arbitrary spool
    //! thresholds: what goes back is what came in, line for line and byte for byte,
    //! and the handler reads it unstuffed, whatever falls on a chunk boundary.

    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A wire line: dots, CRs, bytes that are not UTF-8, long lines that straddle the
    /// 64 KiB chunks (no `\n`, never the lone `.` that ends a message, no longer than
    /// smtpd 7.4 takes back).
    fn wire_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'a'), Just(0xe9u8), Just(b' ')], 0..12),
            1 => (0usize..65_000, any::<u8>()).prop_map(|(n, b)| {
                let b = if b == b'\n' { b'x' } else { b };
                vec![b; n]
            }),
        ]
        .prop_map(|l| if l == b"." { b"..".to_vec() } else { l })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn messages_go_back_as_they_came(
            wire in vec(wire_line(), 0..40),
            above in prop_oneof![Just(0usize), 1usize..200, 60_000usize..140_000],
            edit in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (headers, seen) = rt.block_on(async {
                let new_headers = edit.then(|| vec![b"X-New: 1".to_vec()]);
                let (filter, seen, _) = Recorder::new(new_headers.clone());
                let mut kit = TestKit::new(filter).config(config(above, None)).start().await;
                let mut s = kit.session();
                let out = s.data_wire(&wire).await;
                s.disconnect().await;
                kit.finish().await;
                (out.wire_lines, seen)
            });
            let seen = seen.lock().unwrap();
            let got = &seen[0];
            prop_assert!(got.content == unstuffed(&wire));
            if edit {
                // the header section is replaced, the rest goes on as it came
                let kept = got.header_section.iter().filter(|&&b| b == b'\n').count();
                prop_assert_eq!(&headers[0], &b"X-New: 1".to_vec());
                prop_assert!(headers[1..] == wire[kept..]);
            } else {
                prop_assert!(headers == wire);
            }
        }
    }
}

mod sessions {
    //! Several sessions at once, each with an arbitrary message, a commit sent early
    //! or not, and a client that may go away mid-message or mid-echo: every session
    //! still there gets its message back byte for byte and exactly one answer to
    //! commit, and nothing is left at the end.

    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Fate {
        /// Sends commit after reading the message back, as smtpd does.
        Commit,
        /// Sends commit right after the final `.`, before the message came back.
        EarlyCommit,
        /// Goes away after this many data lines.
        GoneMidMessage(usize),
        /// Goes away right after the final `.`.
        GoneMidEcho,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            Just(Fate::Commit),
            Just(Fate::EarlyCommit),
            (0usize..30).prop_map(Fate::GoneMidMessage),
            Just(Fate::GoneMidEcho),
        ]
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(
                prop_oneof![Just(b'.'), Just(b'x'), Just(0xffu8), Just(b':')],
                0..8
            ),
            (0usize..3000).prop_map(|n| vec![b'y'; n]),
        ]
        .prop_map(|l| if l == b"." { b"..".to_vec() } else { l })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn every_session_gets_its_message_and_one_answer(
            plan in vec((vec(line(), 0..30), fate()), 1..5),
            above in prop_oneof![Just(0usize), 100usize..5000, Just(1usize << 20)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let failure = rt.block_on(async {
                let (filter, _, _) = Recorder::new(None);
                let mut kit = TestKit::new(filter).config(config(above, None)).start().await;
                let mut waiting = Vec::new();
                for (wire, fate) in &plan {
                    let mut s = kit.session();
                    let id = s.id();
                    let v = s.kit().version().to_string();
                    let head = |phase: &str| {
                        format!("filter|{v}|1700000000.000002|smtp-in|{phase}|{id:016x}|{id:016x}|")
                            .into_bytes()
                    };
                    let cut = match fate {
                        Fate::GoneMidMessage(n) => Some((*n).min(wire.len())),
                        _ => None,
                    };
                    for l in &wire[..cut.unwrap_or(wire.len())] {
                        s.kit().send(&[head("data-line"), l.clone()].concat()).await;
                    }
                    match fate {
                        Fate::GoneMidMessage(_) => s.disconnect().await,
                        Fate::GoneMidEcho => {
                            s.kit().send(&[head("data-line"), b".".to_vec()].concat()).await;
                            s.disconnect().await;
                        }
                        Fate::Commit | Fate::EarlyCommit => {
                            s.kit().send(&[head("data-line"), b".".to_vec()].concat()).await;
                            let early = matches!(fate, Fate::EarlyCommit);
                            if early {
                                s.kit().send(&head("commit")).await;
                            }
                            waiting.push((id, wire.clone(), early, head("commit")));
                        }
                    }
                }
                for (id, wire, early, commit) in waiting {
                    let back = read_echo(&mut kit, id).await;
                    if back != wire {
                        return Some(format!("session {id}: message changed"));
                    }
                    if !early {
                        kit.send(&commit).await;
                    }
                    let answer = opensmtpd_filter::testkit::parse_answer(&kit.next_answer(id).await);
                    if answer != Answer::Proceed {
                        return Some(format!("session {id}: {answer:?}"));
                    }
                    let gone = format!(
                        "report|{}|1700000000.000001|smtp-in|link-disconnect|{id:016x}",
                        kit.version()
                    );
                    kit.send(gone.as_bytes()).await;
                }
                let open = kit.finish().await.open_sessions;
                (open != 0).then(|| format!("{open} sessions left"))
            });
            prop_assert!(failure.is_none(), "{:?}", failure);
        }
    }
}
