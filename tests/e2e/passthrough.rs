//! The `passthrough` example (examples/passthrough.rs: registers every event and phase,
//! proceeds, echoes every data line) between a real smtpd and real clients: it must not
//! change a single byte of the mail (8-bit bytes and invalid UTF-8, dot lines, leading
//! dots, `|`, tabs, long lines), must refuse with `552 5.3.4` what the daemon could not
//! take back whole, and must keep serving after refusals, rejected recipients and clients
//! that drop in the middle of DATA.

mod common;

use common::*;
use opensmtpd_e2e::*;
use std::time::Duration;

/// The message sent: one line per hazard; no line is longer than 6.8 takes back.
fn message() -> Vec<u8> {
    hazard_message()
}

/// A message with lines longer than 6.8 takes back from a filter (7.4 takes them).
fn long_message() -> Vec<u8> {
    let mut m = b"Subject: long lines\n\n".to_vec();
    m.extend_from_slice(&long_line(b"1998:", SMTPD68_MAX_FILTERED_LINE + 1));
    m.push(b'\n');
    m.extend_from_slice(&long_line(b".1997+1:", SMTPD68_MAX_FILTERED_LINE));
    m.push(b'\n');
    m.extend_from_slice(&long_line(b"5000 \xe9:", 5000));
    m.push(b'\n');
    m.extend_from_slice(&long_line(b".5000 with a leading dot:", 5000));
    m.push(b'\n');
    m.extend_from_slice(b"last line\n");
    m
}

fn start(daemon: Daemon) -> Rig {
    Rig::builder(daemon)
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .listen_plain("passthrough")
        .start()
        .unwrap()
}

fn passthrough_delivers_bytes_identically(daemon: Daemon) {
    let rig = start(daemon);
    let msg = message();
    let rcpts = [RCPT_OK, "pipe|box@lab.test"];
    let t = send(&rig, &rcpts, &msg);
    assert!(
        t.contains("Message accepted for delivery"),
        "{daemon}: not accepted:\n{t}"
    );
    // nothing in this message is longer than either daemon takes back
    assert_delivered(&rig, rcpts.len(), SENDER, &msg);
    rig.assert_alive();
}

#[test]
fn smtpd68_passthrough_delivers_bytes_identically() {
    passthrough_delivers_bytes_identically(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_delivers_bytes_identically() {
    passthrough_delivers_bytes_identically(Daemon::Smtpd74);
}

/// Lines of 1,998 to 5,000 bytes: 7.4 takes them back whole and delivers them; on 6.8 the
/// library refuses the message (smtpd would cut the lines). A refused message ends the
/// transaction only: the next one in the same session is delivered.
fn passthrough_long_lines(daemon: Daemon) {
    let rig = start(daemon);
    let msg = long_message();
    let mut c = Client::open(&rig, CLIENT);
    let first = c.message(SENDER, &[RCPT_OK], &msg);
    let next = simple_message("after the long lines", b"short\n");
    let second = c.message(SENDER, &[RCPT_OK], &next);
    c.quit();
    assert_eq!(second.code, 250, "{daemon}: second message: {second}");
    if daemon.cuts_filtered_lines() {
        assert_eq!(first.to_string(), LINE_TOO_LONG_REPLY, "{daemon}");
        assert_delivered(&rig, 1, SENDER, &next);
    } else {
        assert_eq!(first.code, 250, "{daemon}: {first}");
        let mails = rig.wait_delivered(2, Duration::from_secs(15));
        let bodies: Vec<&[u8]> = mails.iter().map(|m| strip_smtpd_headers(m)).collect();
        assert!(
            bodies.contains(&msg.as_slice()),
            "{daemon}: long lines not delivered whole"
        );
        assert!(bodies.contains(&next.as_slice()), "{daemon}");
    }
    rig.assert_alive();
}

#[test]
fn smtpd68_passthrough_long_lines() {
    passthrough_long_lines(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_long_lines() {
    passthrough_long_lines(Daemon::Smtpd74);
}

/// The exact limit of each daemon ([`Daemon::max_filtered_line`], counted dot-stuffed as on
/// the wire): a line of the limit and a dot-led line that reaches it with its stuffing dot
/// are delivered whole; one byte more, either way, and the message is refused.
fn passthrough_exact_limit(daemon: Daemon) {
    let max = daemon.max_filtered_line();
    let rig = start(daemon);
    let mut at_limit = b"Subject: at the limit\n\n".to_vec();
    at_limit.extend_from_slice(&long_line(b"limit \xe9:", max));
    at_limit.push(b'\n');
    at_limit.extend_from_slice(&long_line(b".limit-1+dot:", max - 1));
    at_limit.extend_from_slice(b"\nend\n");
    let over = |prefix: &[u8], len: usize| {
        let mut m = b"Subject: over the limit\n\n".to_vec();
        m.extend_from_slice(&long_line(prefix, len));
        m.extend_from_slice(b"\nend\n");
        m
    };
    let mut c = Client::open(&rig, CLIENT);
    let r = c.message(SENDER, &[RCPT_OK], &at_limit);
    assert_eq!(r.code, 250, "{daemon}: {max}-byte lines: {r}");
    let r = c.message(SENDER, &[RCPT_OK], &over(b"limit+1:", max + 1));
    assert_eq!(
        r.to_string(),
        LINE_TOO_LONG_REPLY,
        "{daemon}: {} bytes",
        max + 1
    );
    let r = c.message(SENDER, &[RCPT_OK], &over(b".limit+dot:", max));
    assert_eq!(
        r.to_string(),
        LINE_TOO_LONG_REPLY,
        "{daemon}: {max} bytes + the stuffing dot"
    );
    c.quit();
    assert_delivered(&rig, 1, SENDER, &at_limit);
    rig.assert_alive();
}

#[test]
fn smtpd68_passthrough_exact_limit() {
    passthrough_exact_limit(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_exact_limit() {
    passthrough_exact_limit(Daemon::Smtpd74);
}

/// Five recipients, one of which smtpd rejects itself (`524 5.2.4`, unknown user): the four
/// accepted ones get byte-identical copies.
fn passthrough_multiple_recipients(daemon: Daemon) {
    let rig = start(daemon);
    let msg = message();
    let rcpts = [
        RCPT_OK,
        RCPTS_OK_MORE[0],
        RCPT_UNKNOWN,
        RCPTS_OK_MORE[1],
        RCPTS_OK_MORE[2],
    ];
    let t = send(&rig, &rcpts, &msg);
    assert!(
        t.contains(&format!("RCPT TO:<{RCPT_UNKNOWN}>\n<** 524 5.2.4")),
        "{daemon}: unknown user not rejected:\n{t}"
    );
    assert!(
        t.contains("Message accepted for delivery"),
        "{daemon}: not accepted:\n{t}"
    );
    assert_delivered(&rig, 4, SENDER, &msg);
    let mails = rig.delivered();
    for r in [
        RCPT_OK,
        RCPTS_OK_MORE[0],
        RCPTS_OK_MORE[1],
        RCPTS_OK_MORE[2],
    ] {
        let header = format!("Delivered-To: {r}\n");
        let n = mails
            .iter()
            .filter(|m| m.windows(header.len()).any(|w| w == header.as_bytes()))
            .count();
        assert_eq!(n, 1, "{daemon}: copies for {r}");
    }
    rig.assert_alive();
}

#[test]
fn smtpd68_passthrough_multiple_recipients() {
    passthrough_multiple_recipients(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_multiple_recipients() {
    passthrough_multiple_recipients(Daemon::Smtpd74);
}

/// Clients that drop in the middle of DATA (after whole lines, in the middle of a line,
/// in the middle of a long line): nothing is delivered for them, and a normal message in a
/// new session is delivered at once (the filter dropped their state and kept working).
fn passthrough_client_drops_mid_data(daemon: Daemon) {
    let rig = start(daemon);
    let drops: [&[u8]; 3] = [
        b"Subject: dropped\r\n\r\nfirst line\r\n.leading dot\r\n",
        b"Subject: dropped mid-line\r\n\r\nhalf a li",
        &[
            b"Subject: dropped in a long line\r\n\r\n".as_slice(),
            &[b'x'; 40_000],
        ]
        .concat(),
    ];
    for (i, bytes) in drops.iter().enumerate() {
        let mut c = SmtpClient::connect(&rig, Listener::Plain, CLIENT).expect("connect");
        assert_eq!(c.read_reply().expect("greeting").code, 220);
        c.expect("EHLO client10.lab.test", 250).expect("EHLO");
        c.expect(&format!("MAIL FROM:<{SENDER}>"), 250)
            .expect("MAIL");
        c.expect(&format!("RCPT TO:<{RCPT_OK}>"), 250)
            .expect("RCPT");
        c.expect("DATA", 354).expect("DATA");
        c.send_raw(bytes).expect("data");
        std::thread::sleep(Duration::from_millis(100));
        c.drop_connection();
        // smtpd reports the drop (tx-rollback, link-disconnect) to the filter
        rig.wait_log_lines(" smtp disconnected reason=", i + 1, Duration::from_secs(10));
    }
    let msg = message();
    let outcome = rig.session_within(CLIENT, "client10.lab.test", &msg, Duration::from_secs(20));
    assert!(outcome.accepted(), "{daemon}: after the drops: {outcome}");
    assert_delivered(&rig, 1, "probe@example.org", &msg);
    rig.assert_alive();
}

#[test]
fn smtpd68_passthrough_client_drops_mid_data() {
    passthrough_client_drops_mid_data(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_client_drops_mid_data() {
    passthrough_client_drops_mid_data(Daemon::Smtpd74);
}
