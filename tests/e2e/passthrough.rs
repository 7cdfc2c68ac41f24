//! A filter that proceeds and echoes every data line must not change a single byte of the
//! mail: 8-bit bytes and invalid UTF-8, dot lines, leading dots, `|`, tabs, long lines.
//!
//! The filter under test is the capture filter (tests/capture/capture-filter.py) for now;
//! to run the Rust example instead, make `filter_under_test` return
//! `example_bin("passthrough").display().to_string()`.

use opensmtpd_e2e::*;
use std::time::Duration;

const CAPTURE_FILE: &str = "capture.txt";

/// The proc-exec command of the filter under test.
fn filter_under_test() -> String {
    capture_filter_cmd(CAPTURE_FILE)
}

fn uses_capture_filter() -> bool {
    filter_under_test().contains("capture-filter.py")
}

/// The message sent: one line per hazard.
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
    let mut l990 = b"990:".to_vec();
    l990.resize(990, b'x');
    m.extend_from_slice(&l990);
    m.push(b'\n');
    let mut l5000 = b".5000 with leading dot and \xe9:".to_vec();
    while l5000.len() < 5000 {
        l5000.extend_from_slice(b"0123456789|\t");
    }
    l5000.truncate(5000);
    m.extend_from_slice(&l5000);
    m.push(b'\n');
    m.extend_from_slice(b"last line\n");
    m
}

/// What must arrive: the message, with 6.8's cut of filtered lines modelled.
fn expected(daemon: Daemon, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in split_lines(msg) {
        if daemon.cuts_filtered_lines() {
            out.extend_from_slice(&smtpd68_cut_line(line));
        } else {
            out.extend_from_slice(line);
        }
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

fn passthrough_delivers_bytes_identically(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("under-test", &filter_under_test())
        .listen_plain("under-test")
        .start()
        .unwrap();
    let msg = message();
    let rcpts = [RCPT_OK, "pipe|box@lab.test"];
    let out = rig.send_message(
        CLIENT,
        "pipe|sender@example.org",
        &rcpts,
        &msg,
        &["--ehlo", "client10.lab.test"],
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && transcript.contains("Message accepted for delivery"),
        "swaks failed ({}):\n{transcript}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let want = expected(daemon, &msg);
    let mails = rig.wait_delivered(rcpts.len(), Duration::from_secs(15));
    assert_eq!(mails.len(), rcpts.len());
    for raw in &mails {
        assert!(
            raw.starts_with(b"Return-Path: <pipe|sender@example.org>\n"),
            "{daemon}: return path"
        );
        let got = strip_smtpd_headers(raw);
        assert!(
            got == want.as_slice(),
            "{daemon}: delivered bytes differ: {}",
            show_diff(got, &want)
        );
    }
    if daemon.cuts_filtered_lines() {
        // the 5000-byte line is cut on 6.8
        assert_ne!(want, msg);
    } else {
        // nothing is cut on 7.4: the expectation is the message itself
        assert_eq!(want, msg);
    }

    if uses_capture_filter() {
        // The filter saw every line, dot-stuffed as on the wire, and the final ".".
        let cap = rig.wait_out(CAPTURE_FILE, Duration::from_secs(10), |c| {
            c.windows(16).any(|w| w == b"|link-disconnect")
        });
        let data_lines: Vec<&[u8]> = cap
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"filter|") && l.windows(11).any(|w| w == b"|data-line|"))
            .map(|l| l.splitn(8, |&b| b == b'|').nth(7).unwrap_or(b""))
            .collect();
        let wire: Vec<Vec<u8>> = split_lines(&msg)
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
