//! The three filters chained in one smtpd (`filter "inbound" chain { "senderscore",
//! "greylist", "rspamd" }`, [`opensmtpd_e2e::chain`]) against the real daemons
//! (OpenSMTPD 6.8 and 7.4), the rig's dnsmasq, a real rspamd and a real Redis.
//!
//! Clients sit in their own /24 networks (greylisting keys an SPF-less sender by the
//! client's /24), each with its SenderScore in the rig's copy of the zone:
//!
//! | client | score | greylist | used for |
//! |---|---|---|---|
//! | 127.0.11.5 | 5 | | refused at connect |
//! | 127.0.12.50 | 50 | | greylisted, then delivered with the headers |
//! | 127.0.13.7 | 90 | allowlisted | GTUBE refused by rspamd |
//! | 127.0.2x.y | various | some allowlisted | the outages |
//!
//! Every session is timed against a bound derived from the configured timeouts
//! ([`ChainConfig::worst_case`] plus [`SLACK`] for a loaded machine).
//!
//! Needs the debug builds of the three filters (`cargo build -p filter-senderscore -p
//! filter-greylist -p filter-rspamd`; scripts/test builds every target first).

use opensmtpd_e2e::chain::*;
use opensmtpd_e2e::*;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

/// What a loaded 2-core machine may add to a session beyond the configured timeouts.
const SLACK: Duration = Duration::from_secs(5);
const PASS: Duration = Duration::from_secs(3);

const LOW: &str = "127.0.11.5";
const MID: &str = "127.0.12.50";
const ALLOWED: &str = "127.0.13.7";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

/// The chain the first three scenarios share: block below 20, pass time [`PASS`],
/// [`ALLOWED`] allowlisted by filter-greylist, SPF for `chain.test` authorising
/// 127.0.12.0/24.
fn chain(daemon: Daemon) -> Chain {
    ChainBuilder::new(daemon)
        .score(ip(LOW), 5)
        .score(ip(MID), 50)
        .score(ip(ALLOWED), 90)
        .spf("chain.test", "v=spf1 ip4:127.0.12.0/24 -all")
        .pass_time(PASS)
        .greylist_allow(ALLOWED)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"))
}

/// A message with `body`; no header rspamd would DKIM-sign for.
fn message(subject: &str, from: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{subject}@chain.test>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// What one timed session saw.
#[derive(Debug, Default)]
struct Session {
    /// Every command (the greeting first) with its reply.
    replies: Vec<(String, String)>,
    /// The I/O error that ended it early.
    error: Option<String>,
    elapsed: Duration,
}

impl Session {
    /// The last reply (the one that ended the session, or the one to the message).
    fn last(&self) -> &str {
        self.replies.last().map_or("", |(_, r)| r.as_str())
    }
    fn accepted(&self) -> bool {
        self.replies
            .iter()
            .any(|(c, r)| c == "(message)" && r.starts_with("250 "))
    }
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (c, r) in &self.replies {
            writeln!(f, "  {c} -> {r}")?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        write!(f, "  ({:.2} s)", self.elapsed.as_secs_f64())
    }
}

/// One session from `src`: greeting, EHLO, MAIL FROM `from`, RCPT TO [`RCPT_OK`], DATA,
/// `msg`, QUIT, stopping at the first negative reply; every read bounded by `bound`
/// from the start.
fn session(rig: &Rig, src: &str, from: &str, msg: &[u8], bound: Duration) -> Session {
    let start = Instant::now();
    let mut s = Session::default();
    let result = (|| -> std::io::Result<()> {
        let mut c = SmtpClient::connect(rig, Listener::Plain, src)?;
        let left = |c: &SmtpClient| {
            c.set_timeout(
                bound
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1)),
            )
        };
        left(&c)?;
        let r = c.read_reply()?;
        s.replies.push(("(greeting)".into(), r.to_string()));
        if r.code != 220 {
            return Ok(());
        }
        for cmd in [
            "EHLO client.chain.test".to_string(),
            format!("MAIL FROM:<{from}>"),
            format!("RCPT TO:<{RCPT_OK}>"),
            "DATA".to_string(),
        ] {
            left(&c)?;
            let r = c.command(&cmd)?;
            s.replies.push((cmd, r.to_string()));
            if !r.is_positive() {
                let _ = c.quit();
                return Ok(());
            }
        }
        left(&c)?;
        let r = c.send_data(msg)?;
        s.replies.push(("(message)".into(), r.to_string()));
        left(&c)?;
        let _ = c.quit();
        Ok(())
    })();
    if let Err(e) = result {
        s.error = Some(e.to_string());
    }
    s.elapsed = start.elapsed();
    s
}

/// [`session`], failing the test unless the session was answered within the chain's
/// bound ([`ChainConfig::worst_case`] + [`SLACK`]).
#[track_caller]
fn timed_session(chain: &Chain, src: &str, from: &str, msg: &[u8]) -> Session {
    let bound = chain.config().worst_case() + SLACK;
    let s = session(chain.rig(), src, from, msg, bound);
    // the figures (shown with --nocapture, or with a failure)
    println!(
        "{}: session from {src}: {:?} after {:.3} s (bound {:.1} s)",
        chain.rig().daemon(),
        s.last(),
        s.elapsed.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(
        s.error.is_none() && s.elapsed < bound,
        "{}: session from {src} not answered within {bound:?}:\n{s}\n--- smtpd log ---\n{}",
        chain.rig().daemon(),
        tail(&chain.rig().smtpd_log(), 40)
    );
    s
}

/// Fails with the session and smtpd's log unless `ok`.
#[track_caller]
fn expect(chain: &Chain, ok: bool, what: &str, s: &Session) {
    assert!(
        ok,
        "{}: {what}:\n{s}\n--- smtpd log ---\n{}",
        chain.rig().daemon(),
        tail(&chain.rig().smtpd_log(), 40)
    );
}

/// The decision lines of `filter` (`session=…`, any level) that contain every one of
/// `parts` (waits for `n`).
fn decisions(chain: &Chain, filter: ChainFilter, parts: &[&str], n: usize) -> Vec<String> {
    // info for a decision, warn for an error answered by policy
    let needle = format!("{}: ", filter.binary());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = chain
            .rig()
            .log_lines(&needle)
            .into_iter()
            .filter(|l| l.contains(" session=") && parts.iter().all(|p| l.contains(p)))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {n} {} lines with {parts:?} not found\n{}",
            chain.rig().daemon(),
            filter.binary(),
            tail(&chain.rig().smtpd_log(), 40)
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// The delivered message with `subject` (smtpd's own headers removed), as bytes.
fn delivered_bytes(rig: &Rig, subject: &str, timeout: Duration) -> Vec<u8> {
    let needle = format!("Subject: {subject}\n");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(m) = rig
            .delivered()
            .into_iter()
            .find(|m| m.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            return strip_smtpd_headers(&m).to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "{}: {subject} not delivered\n{}",
            rig.daemon(),
            tail(&rig.smtpd_log(), 40)
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// Header block and body of a delivered message.
fn split_message(m: &[u8]) -> (&[u8], &[u8]) {
    match m.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&m[..i + 1], &m[i + 2..]),
        None => (m, &[]),
    }
}

/// The field names of a header block, in order (continuation lines belong to their field).
fn field_names(head: &[u8]) -> Vec<String> {
    split_lines(head)
        .into_iter()
        .filter(|l| !l.is_empty() && l[0] != b' ' && l[0] != b'\t')
        .map(|l| {
            let end = l.iter().position(|&b| b == b':').unwrap_or(l.len());
            String::from_utf8_lossy(&l[..end]).into_owned()
        })
        .collect()
}

/// The value of the first field `name` (unfolded), if any.
fn field_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let prefix = format!("{name}: ");
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some(v) = l.strip_prefix(&prefix) {
            let mut v = v.to_string();
            for c in lines.by_ref() {
                if c.starts_with([' ', '\t']) {
                    v.push_str(c);
                } else {
                    break;
                }
            }
            return Some(v);
        }
    }
    None
}

/// The header fields of a delivered message before the client's own, in the order the
/// chain leaves them: filter-senderscore (first in the chain) prepends X-SenderScore to
/// what smtpd hands the filters, which starts with smtpd's own Received; rspamd's
/// Authentication-Results comes with `order` 1 (inserted before the second field).
const HEADERS_BEFORE: [&str; 3] = ["X-SenderScore", "Authentication-Results", "Received"];
/// rspamd's other milter headers, which filter-rspamd appends after the last field in
/// the order of their names: rspamd's reply lists them in its hash order, which changes
/// from one rspamd process to the next (seen here: three rspamd starts, three orders),
/// so the filter sorts them and every run of this test sees one fixed order.
const HEADERS_AFTER: [&str; 5] = [
    "X-Rspamd-Action",
    "X-Rspamd-Queue-Id",
    "X-Rspamd-Server",
    "X-Spam-Status",
    "X-Spamd-Result",
];

// ------------------------------------------------------------------ scenarios

/// A client scored 5 gets filter-senderscore's 550 instead of the greeting and is
/// disconnected: no EHLO, nothing for greylist or rspamd.
fn low_score_refused_at_connect(daemon: Daemon) {
    let chain = chain(daemon);
    let mut c = SmtpClient::connect(chain.rig(), Listener::Plain, LOW).unwrap();
    c.set_timeout(chain.config().worst_case() + SLACK).unwrap();
    let greeting = c.read_reply().unwrap();
    assert_eq!(greeting.to_string(), SENDERSCORE_BLOCKED, "{daemon}");
    assert!(
        c.command("EHLO client.chain.test").is_err(),
        "{daemon}: still connected after the refusal"
    );
    let line = &decisions(
        &chain,
        ChainFilter::Senderscore,
        &[&format!("client={LOW} ")],
        1,
    )[0];
    assert!(
        line.contains("score=5 source=dns decision=disconnect phase=connect"),
        "{line}"
    );
    thread::sleep(Duration::from_millis(300));
    let mentions = |f: ChainFilter| {
        chain
            .rig()
            .log_lines(&format!("{}: info: session=", f.binary()))
    };
    assert!(
        mentions(ChainFilter::Greylist).is_empty() && mentions(ChainFilter::Rspamd).is_empty(),
        "{daemon}: greylist or rspamd decided for a refused client"
    );
    chain.assert_healthy();
}

/// The body of the mid-score client's message: Latin-1 and invalid UTF-8 bytes, lines
/// that start with dots (one is a lone dot, which must not end the message), a tab, a
/// trailing space, and the longest line this daemon's filters may echo.
fn tricky_body(daemon: Daemon) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"Latin-1: caf\xe9, cr\xe8me br\xfbl\xe9e, Gr\xfc\xdfe\n");
    body.extend_from_slice(b"not UTF-8 at all: \xff\xfe\xc3\x28 \x80\n");
    body.extend_from_slice(b".\n");
    body.extend_from_slice(b"..two dots\n");
    body.extend_from_slice(b".one dot\n");
    body.extend_from_slice(b"a\ttab and a trailing space \n");
    let mut long = Vec::with_capacity(daemon.max_filtered_line());
    while long.len() < daemon.max_filtered_line() {
        long.extend_from_slice(b"0123456789abcdef\xe9");
    }
    long.truncate(daemon.max_filtered_line());
    body.extend_from_slice(&long);
    body.extend_from_slice(b"\n\nlast line after an empty one\n");
    body
}

/// A client scored 50 is greylisted at RCPT TO (and again on an early retry); after the
/// pass time its retry is delivered with X-SenderScore on top and rspamd's headers after
/// the client's own, in a fixed order, and the body byte for byte as sent.
fn mid_score_greylisted_then_delivered(daemon: Daemon) {
    let chain = chain(daemon);
    let from = "mid@chain.test";
    let body = tricky_body(daemon);
    let msg = message("mid-score", from, &body);
    let s = timed_session(&chain, MID, from, &msg);
    // the first attempt is recorded in whole seconds, some time before the session
    // ends: a retry one second past the pass time after that end is past it in the
    // store's reckoning too, however slowly the first session went
    let first_done = Instant::now();
    expect(
        &chain,
        s.last() == GREYLISTED,
        "first attempt not greylisted",
        &s,
    );
    expect(
        &chain,
        s.replies
            .last()
            .is_some_and(|(c, _)| c.starts_with("RCPT TO")),
        "greylisted elsewhere than at RCPT TO",
        &s,
    );
    let s = timed_session(&chain, MID, from, &msg);
    expect(
        &chain,
        s.last() == GREYLISTED,
        "early retry not greylisted",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={MID} ")],
        2,
    );
    assert!(
        l[0].contains("key=domain:chain.test/mid@chain.test/")
            && l[0].contains("spf=pass decision=tempfail reason=first-attempt"),
        "{}",
        l[0]
    );
    assert!(l[1].contains("reason=early-retry"), "{}", l[1]);

    thread::sleep(PASS.saturating_sub(first_done.elapsed()) + Duration::from_millis(1100));
    let s = timed_session(&chain, MID, from, &msg);
    expect(
        &chain,
        s.accepted(),
        "retry after the pass time not accepted",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={MID} "), "decision=accept"],
        1,
    );
    assert!(
        l[0].contains("reason=retry-passed(now white-domain:chain.test)"),
        "{}",
        l[0]
    );
    let l = decisions(
        &chain,
        ChainFilter::Senderscore,
        &[&format!("client={MID} ")],
        1,
    );
    assert!(
        l[0].contains("score=50 source=dns decision=proceed"),
        "{}",
        l[0]
    );
    decisions(
        &chain,
        ChainFilter::Rspamd,
        &[&format!("client={MID} "), "answer=proceed"],
        1,
    );

    // one more message from the same client, now whitelisted: delivered at once
    let second = message("mid-score-again", from, &body);
    let s = timed_session(&chain, MID, from, &second);
    expect(
        &chain,
        s.accepted(),
        "a whitelisted sender's next message not accepted",
        &s,
    );

    let m = delivered_bytes(chain.rig(), "mid-score", Duration::from_secs(20));
    let (head, got_body) = split_message(&m);
    let (sent_head, _) = split_message(&msg);
    let names = field_names(head);
    let sent_names = field_names(sent_head);
    let mut want: Vec<String> = HEADERS_BEFORE.iter().map(|s| s.to_string()).collect();
    want.extend(sent_names.iter().cloned());
    assert_eq!(
        names[..want.len().min(names.len())],
        want[..],
        "{daemon}: the header fields and their order:\n{}",
        String::from_utf8_lossy(head)
    );
    assert_eq!(
        names[want.len()..],
        HEADERS_AFTER,
        "{daemon}: rspamd's headers after the client's:\n{}",
        String::from_utf8_lossy(head)
    );
    let m2 = delivered_bytes(chain.rig(), "mid-score-again", Duration::from_secs(20));
    let (head2, body2) = split_message(&m2);
    assert_eq!(
        field_names(head2),
        names,
        "{daemon}: two messages through one rspamd, two orders"
    );
    assert!(
        body2 == body.as_slice(),
        "{daemon}: the second body changed"
    );
    assert_eq!(
        field_value(head, "X-SenderScore").as_deref(),
        Some("50"),
        "{daemon}"
    );
    assert_eq!(
        field_value(head, "X-Rspamd-Action").as_deref(),
        Some("no action"),
        "{daemon}"
    );
    assert!(
        got_body == body.as_slice(),
        "{daemon}: the body changed ({} bytes sent, {} delivered; first difference at byte {:?})",
        body.len(),
        got_body.len(),
        body.iter().zip(got_body).position(|(a, b)| a != b)
    );
    assert_eq!(chain.rig().delivered().len(), 2, "{daemon}");
    chain.assert_healthy();
}

/// GTUBE from a client filter-greylist allowlists: not greylisted, scanned, and refused
/// with rspamd's 550 after the message; nothing delivered.
fn allowlisted_gtube_rejected(daemon: Daemon) {
    let chain = chain(daemon);
    let from = "sender@nospf.test";
    let msg = message("gtube", from, format!("{GTUBE}\n").as_bytes());
    let s = timed_session(&chain, ALLOWED, from, &msg);
    expect(
        &chain,
        s.replies
            .iter()
            .any(|(c, r)| c == "(message)" && r.starts_with(GTUBE_REJECTED)),
        "GTUBE not refused with 550 after the message",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={ALLOWED} ")],
        1,
    );
    assert!(
        l[0].contains("decision=accept reason=allowlisted-client"),
        "{}",
        l[0]
    );
    let l = decisions(
        &chain,
        ChainFilter::Rspamd,
        &[&format!("client={ALLOWED} ")],
        1,
    );
    assert!(l[0].contains("action=\"reject\""), "{}", l[0]);
    thread::sleep(Duration::from_millis(300));
    assert!(
        chain.rig().delivered().is_empty(),
        "{daemon}: GTUBE delivered"
    );
    chain.assert_healthy();
}

// ------------------------------------------------------------------ outages

/// rspamd, then the DNS server, then Redis are stopped one at a time and started again;
/// every session is answered within the bound, the policy that applies applies, smtpd
/// never loses a filter and the filters are the same processes at the end.
fn peers_stopped_one_at_a_time(daemon: Daemon, on_error: OnError) {
    // clients: W allowlisted (score 90), others in their own /24s
    const W: &str = "127.0.21.90";
    const LOW_CACHED: &str = "127.0.22.5";
    const LOW_UNCACHED: &str = "127.0.23.5";
    const FRESH_DNS: &str = "127.0.24.70";
    const GREY_NO_DNS: &str = "127.0.25.70";
    const NO_REDIS: &str = "127.0.26.70";
    const REDIS_BACK: &str = "127.0.27.70";
    let mut chain = ChainBuilder::new(daemon)
        .score(ip(W), 90)
        .score(ip(LOW_CACHED), 5)
        .score(ip(LOW_UNCACHED), 5)
        .score(ip(FRESH_DNS), 70)
        .score(ip(GREY_NO_DNS), 70)
        .score(ip(NO_REDIS), 70)
        .score(ip(REDIS_BACK), 70)
        .spf("outage.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .pass_time(PASS)
        .greylist_allow(W)
        .greylist_allow(LOW_UNCACHED)
        .greylist_allow(FRESH_DNS)
        // tight rspamd timeouts: the bound below is derived from them
        .rspamd_timeouts(Duration::from_millis(1000), Duration::from_secs(10))
        .on_error(on_error)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let pids = chain.wait_filter_pids(Duration::from_secs(10));
    assert_eq!(pids.len(), 3, "{daemon}: {pids:?}");
    let bound = chain.config().worst_case() + SLACK;
    let rspamd_log = |chain: &Chain, client: &str| {
        decisions(
            chain,
            ChainFilter::Rspamd,
            &[&format!("client={client} ")],
            1,
        )
    };
    let mut n = 0;
    // a message with a subject of its own: (subject, message)
    let mut msg = |what: &str| {
        n += 1;
        let subject = format!("{what}-{n}");
        let m = message(&subject, "x@outage.test", b"an ordinary message\n");
        (subject, m)
    };

    // everything up: delivered with every header; the low client's score gets cached
    let (_, m) = msg("all-up");
    let s = timed_session(&chain, W, "x@outage.test", &m);
    expect(&chain, s.accepted(), "all up: not accepted", &s);
    let s = timed_session(&chain, LOW_CACHED, "x@outage.test", &msg("low").1);
    expect(
        &chain,
        s.last() == SENDERSCORE_BLOCKED,
        "all up: low score not refused",
        &s,
    );

    // 1. rspamd stopped: the message gets --on-error's answer, the rest works
    chain.stop_rspamd();
    let (no_rspamd, m) = msg("no-rspamd");
    let s = timed_session(&chain, W, "x@outage.test", &m);
    match on_error {
        OnError::Tempfail => {
            expect(
                &chain,
                s.last() == RSPAMD_ERROR,
                "rspamd down: no tempfail",
                &s,
            );
        }
        OnError::Accept => {
            expect(
                &chain,
                s.accepted(),
                "rspamd down: not accepted unscanned",
                &s,
            );
            let got = delivered_bytes(chain.rig(), &no_rspamd, bound);
            let (head, _) = split_message(&got);
            assert!(
                field_value(head, "X-Spamd-Result").is_none(),
                "{daemon}: rspamd headers without rspamd"
            );
        }
    }
    let l = rspamd_log(&chain, W);
    assert!(
        l.iter().any(|l| l.contains("action=error")),
        "{daemon}: {l:?}"
    );
    let s = timed_session(&chain, LOW_CACHED, "x@outage.test", &msg("low").1);
    expect(
        &chain,
        s.last() == SENDERSCORE_BLOCKED,
        "rspamd down: low score not refused",
        &s,
    );
    chain
        .start_rspamd()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let (rspamd_back, m) = msg("rspamd-back");
    let s = timed_session(&chain, W, "x@outage.test", &m);
    expect(&chain, s.accepted(), "rspamd back: not accepted", &s);
    let got = delivered_bytes(chain.rig(), &rspamd_back, bound);
    assert!(
        field_value(split_message(&got).0, "X-Spamd-Result").is_some(),
        "{daemon}: rspamd back, but no rspamd headers"
    );
    chain.assert_healthy();

    // 2. DNS stopped: senderscore fails open (a low score not yet cached is unknown: not
    //    refused, no header), a cached score still applies; greylisting keys a sender
    //    whose SPF cannot be checked by the client's network (a first attempt: 451)
    chain.stop_dns();
    let (dns_down_low, m) = msg("dns-down-low");
    let s = timed_session(&chain, LOW_UNCACHED, "x@outage.test", &m);
    expect(
        &chain,
        s.accepted(),
        "DNS down: an unknown score must not block",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Senderscore,
        &[&format!("client={LOW_UNCACHED} ")],
        1,
    );
    assert!(
        l[0].contains("score=unknown(") && l[0].contains("decision=proceed"),
        "{}",
        l[0]
    );
    let got = delivered_bytes(chain.rig(), &dns_down_low, bound);
    assert!(
        field_value(split_message(&got).0, "X-SenderScore").is_none(),
        "{daemon}: a score header without DNS"
    );
    let s = timed_session(&chain, LOW_CACHED, "x@outage.test", &msg("low").1);
    expect(
        &chain,
        s.last() == SENDERSCORE_BLOCKED,
        "DNS down: cached low score not applied",
        &s,
    );
    let s = timed_session(
        &chain,
        GREY_NO_DNS,
        "x@outage.test",
        &msg("dns-down-grey").1,
    );
    expect(
        &chain,
        s.last() == GREYLISTED,
        "DNS down: first attempt not greylisted",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={GREY_NO_DNS} ")],
        1,
    );
    assert!(
        l[0].contains("key=net:127.0.25.0/24/")
            && (l[0].contains("spf=temperror") || l[0].contains("spf=timeout"))
            && l[0].contains("reason=first-attempt"),
        "{}",
        l[0]
    );
    chain
        .start_dns()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let (dns_back, m) = msg("dns-back");
    let s = timed_session(&chain, FRESH_DNS, "x@outage.test", &m);
    expect(&chain, s.accepted(), "DNS back: not accepted", &s);
    let got = delivered_bytes(chain.rig(), &dns_back, bound);
    assert_eq!(
        field_value(split_message(&got).0, "X-SenderScore").as_deref(),
        Some("70"),
        "{daemon}: DNS back, but no score"
    );
    chain.assert_healthy();

    // 3. Redis stopped: greylisting fails open (a first attempt is accepted)
    chain.stop_redis();
    let s = timed_session(&chain, NO_REDIS, "x@outage.test", &msg("no-redis").1);
    expect(
        &chain,
        s.accepted(),
        "Redis down: greylisting did not fail open",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={NO_REDIS} ")],
        1,
    );
    assert!(
        l[0].contains("decision=accept reason=store-unavailable"),
        "{}",
        l[0]
    );
    chain.start_redis();
    // filter-greylist makes no new attempt for 2 s after a failure
    thread::sleep(Duration::from_millis(2500));
    let s = timed_session(&chain, REDIS_BACK, "x@outage.test", &msg("redis-back").1);
    expect(
        &chain,
        s.last() == GREYLISTED,
        "Redis back: first attempt not greylisted",
        &s,
    );
    let l = decisions(
        &chain,
        ChainFilter::Greylist,
        &[&format!("client={REDIS_BACK} ")],
        1,
    );
    assert!(l[0].contains("reason=first-attempt"), "{}", l[0]);

    chain.assert_healthy();
    assert_eq!(
        chain.filter_pids(),
        pids,
        "{daemon}: a filter was restarted"
    );
}

// ------------------------------------------------------------------ per daemon

#[test]
fn smtpd68_chain_low_score_refused_at_connect() {
    low_score_refused_at_connect(Daemon::Smtpd68);
}

#[test]
fn smtpd74_chain_low_score_refused_at_connect() {
    low_score_refused_at_connect(Daemon::Smtpd74);
}

#[test]
fn smtpd68_chain_mid_score_greylisted_then_delivered() {
    mid_score_greylisted_then_delivered(Daemon::Smtpd68);
}

#[test]
fn smtpd74_chain_mid_score_greylisted_then_delivered() {
    mid_score_greylisted_then_delivered(Daemon::Smtpd74);
}

#[test]
fn smtpd68_chain_allowlisted_gtube_rejected() {
    allowlisted_gtube_rejected(Daemon::Smtpd68);
}

#[test]
fn smtpd74_chain_allowlisted_gtube_rejected() {
    allowlisted_gtube_rejected(Daemon::Smtpd74);
}

#[test]
fn smtpd68_chain_peers_stopped_tempfail() {
    peers_stopped_one_at_a_time(Daemon::Smtpd68, OnError::Tempfail);
}

#[test]
fn smtpd74_chain_peers_stopped_tempfail() {
    peers_stopped_one_at_a_time(Daemon::Smtpd74, OnError::Tempfail);
}

#[test]
fn smtpd68_chain_peers_stopped_accept() {
    peers_stopped_one_at_a_time(Daemon::Smtpd68, OnError::Accept);
}

#[test]
fn smtpd74_chain_peers_stopped_accept() {
    peers_stopped_one_at_a_time(Daemon::Smtpd74, OnError::Accept);
}
