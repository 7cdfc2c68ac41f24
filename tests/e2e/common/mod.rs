//! Helpers shared by the end-to-end test files (each file uses a part of them).
#![allow(dead_code)]

use opensmtpd_e2e::*;
use std::time::Duration;

/// The envelope sender of the tests' messages (a `|` in it on purpose).
pub const SENDER: &str = "pipe|sender@example.org";

/// A line of `len` bytes starting with `prefix`, filled with a pattern with `|` and tabs.
pub fn long_line(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut l = prefix.to_vec();
    while l.len() < len {
        l.extend_from_slice(b"0123456789|\t");
    }
    l.truncate(len);
    l
}

/// A message with one line per hazard for a filter that echoes data lines: 8-bit bytes,
/// invalid UTF-8, a bare CR, dot lines, leading dots, `|`, tabs, empty lines, and lines of
/// exactly 6.8's limit (1,997 bytes, and 1,996 + the stuffing dot). No line is longer than
/// either daemon takes back.
pub fn hazard_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: =?iso-8859-1?q?Ren=E9?= <pipe|sender@example.org>\n");
    m.extend_from_slice(b"To: rigmail@lab.test, pipe|box@lab.test\n");
    m.extend_from_slice(b"Subject: passthrough \xe9 | bytes\n");
    // smtpd adds Date and Message-Id to authenticated sessions' messages that lack them
    m.extend_from_slice(b"Date: Thu, 01 Jan 2026 00:00:00 +0000\n");
    m.extend_from_slice(b"Message-Id: <hazards@client10.lab.test>\n");
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

/// A short message with a subject and a body.
pub fn simple_message(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: <{SENDER}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{}@client10.lab.test>\n\n",
        subject.replace(' ', "-")
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// Where two messages first differ, line by line.
pub fn show_diff(got: &[u8], want: &[u8]) -> String {
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

/// Sends `msg` with swaks from [`CLIENT`] (EHLO client10.lab.test, sender [`SENDER`]);
/// asserts it reached DATA and returns the transcript.
pub fn send(rig: &Rig, rcpts: &[&str], msg: &[u8]) -> String {
    send_from(rig, CLIENT, "client10.lab.test", rcpts, msg)
}

/// [`send`] from a chosen address with a chosen EHLO name.
pub fn send_from(rig: &Rig, src: &str, ehlo: &str, rcpts: &[&str], msg: &[u8]) -> String {
    let out = rig.send_message(src, SENDER, rcpts, msg, &["--ehlo", ehlo]);
    let t = transcript(&out);
    assert!(
        t.contains("<-  354 "),
        "{}: swaks did not reach DATA ({}):\n{t}\n{}",
        rig.daemon(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// Waits for exactly `n` delivered messages, each from `sender` and, without smtpd's own
/// headers, byte for byte `want`.
pub fn assert_delivered(rig: &Rig, n: usize, sender: &str, want: &[u8]) {
    let daemon = rig.daemon();
    let mails = rig.wait_delivered(n, Duration::from_secs(15));
    // a message too many would show up a moment later
    std::thread::sleep(Duration::from_millis(200));
    let mails = if rig.delivered().len() > mails.len() {
        rig.delivered()
    } else {
        mails
    };
    assert_eq!(mails.len(), n, "{daemon}: messages delivered");
    let return_path = format!("Return-Path: <{sender}>\n");
    for raw in &mails {
        assert!(
            raw.starts_with(return_path.as_bytes()),
            "{daemon}: return path: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        );
        let got = strip_smtpd_headers(raw);
        assert!(
            got == want,
            "{daemon}: delivered bytes differ: {}",
            show_diff(got, want)
        );
    }
}

/// A hand-driven session that sends whole messages and returns the reply to each.
pub struct Client {
    c: SmtpClient,
    what: String,
}

impl Client {
    /// Connects to the plain listener from `src`, reads the greeting, says EHLO.
    pub fn open(rig: &Rig, src: &str) -> Client {
        Self::open_ehlo(rig, src, "client10.lab.test")
    }

    /// [`Client::open`] with a chosen EHLO name (which must be accepted).
    pub fn open_ehlo(rig: &Rig, src: &str, ehlo: &str) -> Client {
        let what = format!("{} from {src}", rig.daemon());
        let mut c = SmtpClient::connect(rig, Listener::Plain, src)
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let r = c
            .read_reply()
            .unwrap_or_else(|e| panic!("{what}: greeting: {e}"));
        assert_eq!(r.code, 220, "{what}: greeting {r}");
        c.expect(&format!("EHLO {ehlo}"), 250)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Client { c, what }
    }

    /// MAIL FROM, RCPT TO (each must be accepted), DATA, the message; returns the reply
    /// to the final dot.
    pub fn message(&mut self, from: &str, rcpts: &[&str], msg: &[u8]) -> Reply {
        let what = &self.what;
        self.c
            .expect(&format!("MAIL FROM:<{from}>"), 250)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for r in rcpts {
            self.c
                .expect(&format!("RCPT TO:<{r}>"), 250)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        self.c
            .expect("DATA", 354)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.c
            .send_data(msg)
            .unwrap_or_else(|e| panic!("{what}: reply to the message: {e}"))
    }

    /// Sets the read and write timeouts of the connection.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.c.set_timeout(timeout).expect("set_timeout");
    }

    /// QUIT.
    pub fn quit(self) {
        let what = self.what;
        let r = self
            .c
            .quit()
            .unwrap_or_else(|e| panic!("{what}: QUIT: {e}"));
        assert_eq!(r.code, 221, "{what}: QUIT: {r}");
    }
}
