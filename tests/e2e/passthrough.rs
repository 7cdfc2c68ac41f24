//! A filter that proceeds and echoes every data line must not change a single byte of the
//! mail: 8-bit bytes and invalid UTF-8, dot lines, leading dots, `|`, tabs, long lines.
//!
//! The filter under test is the capture filter (tests/capture/capture-filter.py) for now;
//! to run the Rust example instead, make `filter_under_test` return
//! `example_bin("passthrough").display().to_string()` and set `SMTPD68_OVERLONG` to what
//! the library does with a line 6.8 would cut (the opensmtpd-filter runtime refuses the
//! message: `LongLine68::Refused`).

use opensmtpd_e2e::*;
use std::time::Duration;

const CAPTURE_FILE: &str = "capture.txt";

/// The proc-exec command of the filter under test.
fn filter_under_test() -> String {
    capture_filter_cmd(CAPTURE_FILE)
}

/// What happens on 6.8 to a message with a data line longer than smtpd 6.8 takes back
/// ([`SMTPD68_MAX_FILTERED_LINE`] bytes, dot-stuffed).
#[allow(dead_code)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LongLine68 {
    /// The filter echoes it whole and smtpd 6.8 silently cuts it (a naive filter).
    Cut,
    /// The filter refuses the message at commit (552), nothing is delivered.
    Refused,
}

const SMTPD68_OVERLONG: LongLine68 = LongLine68::Cut;

fn uses_capture_filter() -> bool {
    filter_under_test().contains("capture-filter.py")
}

/// A line of `len` bytes starting with `prefix`, filled with a pattern with `|` and tabs.
fn long_line(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut l = prefix.to_vec();
    while l.len() < len {
        l.extend_from_slice(b"0123456789|\t");
    }
    l.truncate(len);
    l
}

/// The message sent: one line per hazard; no line is longer than 6.8 takes back.
fn message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: =?iso-8859-1?q?Ren=E9?= <pipe|sender@example.org>\n");
    m.extend_from_slice(b"To: rigmail@lab.test, pipe|box@lab.test\n");
    m.extend_from_slice(b"Subject: passthrough \xe9 | bytes\n");
    m.extend_from_slice(b"X-Tab:\tvalue\twith\ttabs\n");
    m.extend_from_slice(b"Content-Type: text/plain; charset=iso-8859-1\n");
    m.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n");
    m.extend_from_slice(b"\n");
    m.extend_from_slice(b"caf\xe9 cr\xe8me br\xfbl\xe9e (latin-1)\n");
    m.extend_from_slice(b"invalid utf-8: \xff\xfe \xc3 \xed\xa0\x80 \xf8\x88\x80\x80\x80\n");
    m.extend_from_slice("valid utf-8: café ✓\n".as_bytes());
    m.extend_from_slice(b"a bare CR\rinside a line\n");
    m.extend_from_slice(b".\n");
    m.extend_from_slice(b"..\n");
    m.extend_from_slice(b"...\n");
    m.extend_from_slice(b".leading dot\n");
    m.extend_from_slice(b"..two leading dots\n");
    m.extend_from_slice(b" .not leading\n");
    m.extend_from_slice(b"a | pipe | in | the | body|\n");
    m.extend_from_slice(b"|\n");
    m.extend_from_slice(b"||filter-result|0|0|proceed\n");
    m.extend_from_slice(b"\ttab first\tand inside\t\n");
    m.extend_from_slice(b"trailing spaces   \n");
    m.extend_from_slice(b"\n");
    m.extend_from_slice(b"\n");
    m.extend_from_slice(&long_line(b"990:", 990));
    m.push(b'\n');
    // exactly at 6.8's limit: 1997 bytes, and 1996 + the stuffing dot
    m.extend_from_slice(&long_line(b"1997 \xe9:", SMTPD68_MAX_FILTERED_LINE));
    m.push(b'\n');
    m.extend_from_slice(&long_line(b".1996+1:", SMTPD68_MAX_FILTERED_LINE - 1));
    m.push(b'\n');
    m.extend_from_slice(b"last line\n");
    m
}

/// A message with lines longer than 6.8 takes back from a filter.
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

/// What 6.8 delivers of a message whose lines a naive filter echoed whole.
fn cut_by_smtpd68(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in split_lines(msg) {
        out.extend_from_slice(&smtpd68_cut_line(line));
        out.push(b'\n');
    }
    out
}

fn show_diff(got: &[u8], want: &[u8]) -> String {
    let (g, w) = (split_lines(got), split_lines(want));
    for i in 0..g.len().max(w.len()) {
        let (a, b) = (g.get(i), w.get(i));
        if a != b {
            let show = |l: Option<&&[u8]>| {
                l.map(|l| {
                    let s = String::from_utf8_lossy(&l[..l.len().min(120)]).into_owned();
                    format!("{} bytes: {s:?}", l.len())
                })
                .unwrap_or_else(|| "<none>".into())
            };
            return format!(
                "first difference at line {}:\n  got  {}\n  want {}",
                i + 1,
                show(a),
                show(b)
            );
        }
    }
    "no line difference".into()
}

fn start(daemon: Daemon) -> Rig {
    Rig::builder(daemon)
        .filter("under-test", &filter_under_test())
        .listen_plain("under-test")
        .start()
        .unwrap()
}

fn send(rig: &Rig, rcpts: &[&str], msg: &[u8]) -> String {
    let out = rig.send_message(
        CLIENT,
        "pipe|sender@example.org",
        rcpts,
        msg,
        &["--ehlo", "client10.lab.test"],
    );
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        transcript.contains("<-  354 "),
        "{}: swaks did not reach DATA ({}):\n{transcript}\n{}",
        rig.daemon(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    transcript
}

fn assert_delivered(rig: &Rig, n: usize, want: &[u8]) {
    let daemon = rig.daemon();
    let mails = rig.wait_delivered(n, Duration::from_secs(15));
    assert_eq!(mails.len(), n, "{daemon}: messages delivered");
    for raw in &mails {
        assert!(
            raw.starts_with(b"Return-Path: <pipe|sender@example.org>\n"),
            "{daemon}: return path"
        );
        let got = strip_smtpd_headers(raw);
        assert!(
            got == want,
            "{daemon}: delivered bytes differ: {}",
            show_diff(got, want)
        );
    }
}

/// The data lines the capture filter received for the last message, and its final ".".
fn check_capture(rig: &Rig, msg: &[u8]) {
    let daemon = rig.daemon();
    let cap = rig.wait_out(CAPTURE_FILE, Duration::from_secs(10), |c| {
        c.windows(16).any(|w| w == b"|link-disconnect")
    });
    let data_lines: Vec<&[u8]> = cap
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"filter|") && l.windows(11).any(|w| w == b"|data-line|"))
        .map(|l| l.splitn(8, |&b| b == b'|').nth(7).unwrap_or(b""))
        .collect();
    let wire: Vec<Vec<u8>> = split_lines(msg)
        .iter()
        .map(|l| {
            if l.first() == Some(&b'.') {
                [b".", *l].concat()
            } else {
                l.to_vec()
            }
        })
        .collect();
    let tail_start = data_lines.len() - wire.len() - 1;
    for (i, w) in wire.iter().enumerate() {
        assert!(
            data_lines[tail_start + i] == w.as_slice(),
            "{daemon}: data line {i} differs in the filter's input"
        );
    }
    assert_eq!(data_lines.last().copied(), Some(&b"."[..]));
}

fn passthrough_delivers_bytes_identically(daemon: Daemon) {
    if deselected(daemon) {
        return;
    }
    let rig = start(daemon);
    let msg = message();
    let rcpts = [RCPT_OK, "pipe|box@lab.test"];
    let t = send(&rig, &rcpts, &msg);
    assert!(
        t.contains("Message accepted for delivery"),
        "{daemon}: not accepted:\n{t}"
    );
    // nothing in this message is longer than either daemon takes back
    assert_delivered(&rig, rcpts.len(), &msg);
    if uses_capture_filter() {
        check_capture(&rig, &msg);
    }
    assert!(
        rig.smtpd_alive(),
        "{daemon}: smtpd died\n{}",
        tail(&rig.smtpd_log(), 40)
    );
}

fn passthrough_long_lines(daemon: Daemon) {
    if deselected(daemon) {
        return;
    }
    let rig = start(daemon);
    let msg = long_message();
    let t = send(&rig, &[RCPT_OK], &msg);
    match (daemon.cuts_filtered_lines(), SMTPD68_OVERLONG) {
        (false, _) => {
            // 7.4 takes back long lines whole
            assert!(
                t.contains("Message accepted for delivery"),
                "{daemon}:\n{t}"
            );
            assert_delivered(&rig, 1, &msg);
        }
        (true, LongLine68::Cut) => {
            assert!(
                t.contains("Message accepted for delivery"),
                "{daemon}:\n{t}"
            );
            let want = cut_by_smtpd68(&msg);
            assert_ne!(want, msg);
            assert_delivered(&rig, 1, &want);
        }
        (true, LongLine68::Refused) => {
            assert!(t.contains("<** 552 "), "{daemon}: not refused:\n{t}");
            std::thread::sleep(Duration::from_millis(300));
            assert!(rig.delivered().is_empty(), "{daemon}: delivered anyway");
        }
    }
    if uses_capture_filter() {
        check_capture(&rig, &msg);
    }
    assert!(
        rig.smtpd_alive(),
        "{daemon}: smtpd died\n{}",
        tail(&rig.smtpd_log(), 40)
    );
}

#[test]
fn smtpd68_passthrough_delivers_bytes_identically() {
    passthrough_delivers_bytes_identically(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_delivers_bytes_identically() {
    passthrough_delivers_bytes_identically(Daemon::Smtpd74);
}

#[test]
fn smtpd68_passthrough_long_lines() {
    passthrough_long_lines(Daemon::Smtpd68);
}

#[test]
fn smtpd74_passthrough_long_lines() {
    passthrough_long_lines(Daemon::Smtpd74);
}
