//! The "64 KiB wedge" (protocol.md): smtpd 7.4.0p1 reads filter answers into a 64 KiB
//! buffer, and a `filter-dataline` echo longer than that is never consumed: the session
//! hangs and every later session through the same filter stalls until smtpd restarts.
//! Any SMTP client can send such a line. Through the `passthrough` example, one client
//! sending one data line of 65,500 bytes must get `552 5.3.4`, and the next session through
//! the same smtpd must be served at once.
//!
//! On 6.8 (observed): smtpd 6.8 takes the same lines from clients as 7.4 (up to 65,533
//! bytes; from 65,534 on it answers `500 5.0.0 Line too long` itself and drops the client)
//! and hands them to the filter. The line is longer than 6.8 takes back from a filter
//! (1,997 bytes, it would cut it), so the library refuses it the same way: `552 5.3.4`.

mod common;

use common::*;
use opensmtpd_e2e::*;
use std::time::{Duration, Instant};

/// The length of the one long line: over 7.4's limit for filter answers (65,484 bytes of
/// line), under the 65,534 bytes from which smtpd 7.4 itself answers `500 Line too long`.
const WEDGE_LINE: usize = 65_500;

/// How long the next session may take, connect to delivery: a liveness bound, not a
/// performance one (a wedged smtpd never serves it).
const NEXT_SESSION_BOUND: Duration = Duration::from_secs(20);

fn wedge_message() -> Vec<u8> {
    let mut m = b"Subject: one line of 65,500 bytes\n\n".to_vec();
    m.extend_from_slice(&long_line(b"65500 \xe9:", WEDGE_LINE));
    m.extend_from_slice(b"\nlast line\n");
    m
}

fn wedge_line_is_refused_and_smtpd_keeps_serving(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .listen_plain("passthrough")
        .start()
        .unwrap();

    // one client, one long line
    let mut c = Client::open(&rig, CLIENT);
    let t = Instant::now();
    let r = c.message(SENDER, &[RCPT_OK], &wedge_message());
    assert_eq!(
        r.to_string(),
        LINE_TOO_LONG_REPLY,
        "{daemon}: the {WEDGE_LINE}-byte line"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{daemon}: slow refusal"
    );
    c.quit();
    let refusals = rig.wait_log_lines(
        &format!("message refused at commit: data line of {WEDGE_LINE} bytes"),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(refusals.len(), 1, "{daemon}: {refusals:?}");

    // the next session, from another client, through the same smtpd and filter
    let next = simple_message("after the long line", b"served at once\n");
    let t = Instant::now();
    let outcome = rig.session_within(
        CLIENTS_WITH_RDNS[1],
        "client50.lab.test",
        &next,
        NEXT_SESSION_BOUND,
    );
    assert!(
        outcome.accepted(),
        "{daemon}: the session after the long line: {outcome}"
    );
    let mails = rig.wait_delivered(1, NEXT_SESSION_BOUND.saturating_sub(t.elapsed()));
    assert!(
        t.elapsed() < NEXT_SESSION_BOUND,
        "{daemon}: the next session took {:?}",
        t.elapsed()
    );
    eprintln!(
        "{daemon}: {WEDGE_LINE}-byte line refused; next session: {outcome}; delivered {:.2} s after it began",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        mails.len(),
        1,
        "{daemon}: only the second message is delivered"
    );
    assert_eq!(strip_smtpd_headers(&mails[0]), next.as_slice(), "{daemon}");
    rig.assert_alive();
}

#[test]
fn smtpd68_wedge_line_is_refused_and_smtpd_keeps_serving() {
    wedge_line_is_refused_and_smtpd_keeps_serving(Daemon::Smtpd68);
}

#[test]
fn smtpd74_wedge_line_is_refused_and_smtpd_keeps_serving() {
    wedge_line_is_refused_and_smtpd_keeps_serving(Daemon::Smtpd74);
}

/// The longest line smtpd takes from a client ([`SMTPD_CLIENT_LINE_MAX`], the same on both
/// daemons) goes to the filter, which refuses it; one byte more and smtpd answers
/// `500 Line too long` itself and drops the client. Either way the next session is served.
fn client_line_limit(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .listen_plain("passthrough")
        .start()
        .unwrap();
    let msg = |len: usize| {
        let mut m = format!("Subject: a line of {len} bytes\n\n").into_bytes();
        m.extend_from_slice(&long_line(b".dot-led: ", len));
        m.extend_from_slice(b"\nend\n");
        m
    };
    // dot-led: the client sends the stuffing dot, so the wire line is exactly the limit
    let mut c = Client::open(&rig, CLIENT);
    let r = c.message(SENDER, &[RCPT_OK], &msg(SMTPD_CLIENT_LINE_MAX - 1));
    assert_eq!(r.to_string(), LINE_TOO_LONG_REPLY, "{daemon}");
    c.quit();
    let mut c = Client::open(&rig, CLIENT);
    let r = c.message(SENDER, &[RCPT_OK], &msg(SMTPD_CLIENT_LINE_MAX));
    assert_eq!(r.to_string(), "500 5.0.0 Line too long", "{daemon}");
    rig.wait_log_lines(
        " smtp bad-input result=\"500 5.0.0 Line too long\"",
        1,
        Duration::from_secs(5),
    );
    let next = simple_message("after the limits", b"served\n");
    let outcome = rig.session_within(CLIENT, "client10.lab.test", &next, NEXT_SESSION_BOUND);
    assert!(outcome.accepted(), "{daemon}: the next session: {outcome}");
    let mails = rig.wait_delivered(1, NEXT_SESSION_BOUND);
    assert_eq!(mails.len(), 1, "{daemon}");
    assert_eq!(strip_smtpd_headers(&mails[0]), next.as_slice(), "{daemon}");
    rig.assert_alive();
}

#[test]
fn smtpd68_client_line_limit() {
    client_line_limit(Daemon::Smtpd68);
}

#[test]
fn smtpd74_client_line_limit() {
    client_line_limit(Daemon::Smtpd74);
}

/// The rig's own check that the wedge is real and that the tests above would see it: a
/// naive filter that echoes every data line whole (our reference from the throughput
/// bench, /work/shared/bench/peers/python-naive, copied into the test as a constant) makes
/// smtpd 7.4.0p1 hang the long line's session and every later one: smtpd stays up but
/// serves nobody. If this ever stops failing to serve, the daemon no longer wedges, and
/// the liveness checks above prove less than they claim.
#[test]
fn smtpd74_naive_echo_filter_wedges_smtpd() {
    let builder = Rig::builder(Daemon::Smtpd74);
    let script = builder.dir().join("naive-echo.py");
    std::fs::write(&script, NAIVE_ECHO_FILTER).unwrap();
    let rig = builder
        .filter("naive", &format!("/usr/bin/python3 {}", script.display()))
        .listen_plain("naive")
        .start()
        .unwrap();
    // the naive filter passes normal mail
    let control = simple_message("control", b"before the long line\n");
    let outcome = rig.session_within(CLIENT, "client10.lab.test", &control, NEXT_SESSION_BOUND);
    assert!(outcome.accepted(), "control message: {outcome}");
    rig.wait_delivered(1, Duration::from_secs(10));

    let mut c = SmtpClient::connect(&rig, Listener::Plain, CLIENTS_WITH_RDNS[1]).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 220);
    c.expect("EHLO client50.lab.test", 250).unwrap();
    c.expect(&format!("MAIL FROM:<{SENDER}>"), 250).unwrap();
    c.expect(&format!("RCPT TO:<{RCPT_OK}>"), 250).unwrap();
    c.expect("DATA", 354).unwrap();
    c.set_timeout(Duration::from_secs(3)).unwrap();
    let long = c.send_data(&wedge_message());
    assert!(
        long.is_err(),
        "the long line's message was answered: {long:?}"
    );
    // a wedge is for good: a few seconds show it
    let next = simple_message("after the long line", b"never served\n");
    let outcome = rig.session_within(
        CLIENTS_WITH_RDNS[2],
        "client90.lab.test",
        &next,
        Duration::from_secs(5),
    );
    eprintln!("smtpd-7.4 with a naive echo filter, after the long line: {outcome}");
    // this filter registers data-line only: later sessions get as far as DATA and hang
    // there (a filter that also registers connect hangs them before the greeting)
    assert!(
        outcome.data_reply.is_none() && outcome.error.is_some(),
        "served after the long line: {outcome}"
    );
    assert_eq!(rig.delivered().len(), 1);
    rig.assert_alive();
}

/// A filter that echoes data lines whole and answers every other request with proceed
/// (the bench's naive reference, in short).
const NAIVE_ECHO_FILTER: &str = r#"
import os
rest = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    lines = (rest + chunk).split(b"\n")
    rest = lines.pop()
    out = []
    for line in lines:
        f = line.split(b"|")
        if f[0] == b"config" and f[1] == b"ready":
            out.append(b"register|filter|smtp-in|data-line\nregister|ready\n")
        elif f[0] == b"filter" and f[4] == b"data-line":
            out.append(b"filter-dataline|%s|%s|%s\n" % (f[5], f[6], b"|".join(f[7:])))
        elif f[0] == b"filter":
            out.append(b"filter-result|%s|%s|proceed\n" % (f[5], f[6]))
    data = b"".join(out)
    while data:
        data = data[os.write(1, data):]
"#;
