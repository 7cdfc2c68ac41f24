//! filter-rspamd against the real daemons (OpenSMTPD 6.8 and 7.4) and a real rspamd
//! 3.4 on loopback ([`opensmtpd_e2e::rspamd`]), or, for the failure paths, small
//! listeners in this process that never answer or answer garbage.
//!
//! Needs `target/debug/filter-rspamd` (`cargo build -p filter-rspamd`; scripts/test
//! builds every target first).

use opensmtpd_e2e::rspamd::{
    DKIM_DOMAIN, DKIM_SELECTOR, Rspamd, SOFT_REJECT_MESSAGE, SOFT_REJECT_SUBJECT,
};
use opensmtpd_e2e::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const FILTER: &str = "rspamd";
const SENDER: &str = "sender@example.org";
const ERROR_REPLY: &str = "451 4.7.1 Temporary failure scanning the message, try again later";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const LOG: &str = "filter-rspamd: info: session=";
const ACCEPTED: &str = "Message accepted for delivery";
/// The request timeout where timeouts are not what is tested: generous, so that a
/// loaded CI machine does not turn a slow scan into a tempfail.
const SLOW_OK: &str = "20000";

fn rspamd_bin() -> PathBuf {
    workspace_bin("filter-rspamd")
}

/// A rig for `daemon` with filter-rspamd asking `url` (with `args`) on the plain listener.
fn rig_with(daemon: Daemon, url: &str, args: &[&str]) -> RigBuilder {
    let mut cmd = format!("{} -url '{url}'", rspamd_bin().display());
    for a in args {
        assert!(!a.contains(['\'', '"', '\\', '\n']), "argument {a:?}");
        cmd.push_str(&format!(" '{a}'"));
    }
    Rig::builder(daemon)
        .filter(FILTER, &cmd)
        .listen_plain(FILTER)
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{subject}@lab.test>\nX-Spam: forged by the client\n\n{body}"
    )
    .into_bytes()
}

fn send(rig: &Rig, subject: &str, body: &str) -> String {
    let out = rig.send_message(
        CLIENT,
        SENDER,
        &[RCPT_OK],
        &message(subject, body),
        &["--ehlo", "client.lab.test"],
    );
    transcript(&out)
}

fn delivered_with(rig: &Rig, subject: &str) -> Option<String> {
    rig.delivered_with(subject)
}

fn wait_delivered_with(rig: &Rig, subject: &str) -> String {
    rig.wait_delivered_with(subject, Duration::from_secs(20))
}

/// The body: everything after the first empty line.
fn body_of(m: &str) -> &str {
    m.split_once("\n\n").map_or("", |(_, b)| b)
}

// ------------------------------------------------------------- in-process listeners

/// What a fake rspamd does with each request.
#[derive(Clone, Copy)]
enum Fake {
    /// Reads the request and never answers.
    Silent,
    /// Answers `200 OK` with this body.
    Answer(&'static [u8]),
}

/// A fake rspamd on 127.0.0.1; returns its URL and the requests it read (head and body).
fn fake_rspamd(kind: Fake) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut sock) = conn else { return };
            let seen = Arc::clone(&seen2);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
            match kind {
                Fake::Silent => {
                    if let Some(req) = read_request(&mut sock) {
                        seen.lock().unwrap().push(req);
                    }
                    held.push(sock);
                }
                Fake::Answer(body) => {
                    thread::spawn(move || {
                        while let Some(req) = read_request(&mut sock) {
                            seen.lock().unwrap().push(req);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if sock.write_all(head.as_bytes()).is_err()
                                || sock.write_all(body).is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }
        }
    });
    (url, seen)
}

fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        let n = sock.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ------------------------------------------------------------------ scenarios

/// Two filters on one rspamd, as for two listeners: the plain listener's with
/// `-settings-id rewrite` (rspamd's `rewrite subject` for any message), the IPv6
/// listener's with `-settings-id addheader --spam-headers always`. The folded Subject
/// is replaced whole; X-Spam headers are written, folded with their commas.
fn settings_ids(daemon: Daemon) {
    let rspamd = Rspamd::start().unwrap();
    let bin = rspamd_bin();
    let rig = Rig::builder(daemon)
        .filter(
            "rewrite",
            &format!(
                "{} -url '{}' -settings-id rewrite --timeout {SLOW_OK}",
                bin.display(),
                rspamd.url()
            ),
        )
        .filter(
            "addheader",
            &format!(
                "{} -url '{}' -settings-id addheader --spam-headers always --timeout {SLOW_OK}",
                bin.display(),
                rspamd.url()
            ),
        )
        .listen_plain("rewrite")
        .listen_ipv6("addheader")
        .start()
        .unwrap();
    let folded = format!(
        "From: <{SENDER}>\nTo: <{RCPT_OK}>\nSubject: a long subject\n that is folded\nMessage-Id: <rw@lab.test>\n\nbody\n"
    );
    let out = rig.send_message(CLIENT, SENDER, &[RCPT_OK], folded.as_bytes(), &[]);
    let t = transcript(&out);
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = wait_delivered_with(&rig, "*** SPAM *** a long subject that is folded");
    assert!(
        !m.contains("\n that is folded"),
        "{daemon}: old Subject lines kept:\n{m}"
    );
    assert!(m.contains("X-Spam: yes\n"), "{daemon}:\n{m}");
    assert!(
        m.contains("X-Rspamd-Action: rewrite subject\n"),
        "{daemon}:\n{m}"
    );

    let out = rig.send_message_at(
        Listener::Ipv6,
        "::1",
        SENDER,
        &[RCPT_OK],
        &message("addheader", "body\n"),
        &[],
    );
    let t = transcript(&out);
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = wait_delivered_with(&rig, "addheader");
    let status = m
        .split("X-Spam-Status: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{daemon}: no X-Spam-Status:\n{m}"));
    let status: Vec<&str> = status
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with('\t'))
        .map(|(_, l)| l)
        .collect();
    assert!(status[0].starts_with("Yes, score="), "{status:?}");
    let tests = status[1..].join(" ");
    assert!(
        tests.starts_with("\ttests=[") && tests.ends_with(']'),
        "{status:?}"
    );
    // every symbol of the list is followed by a comma but the last
    let items: Vec<&str> = tests.split_whitespace().collect();
    assert!(
        items[..items.len() - 1].iter().all(|i| i.ends_with(',')),
        "{status:?}"
    );
    assert!(m.contains("X-Spam: yes\n"), "{m}");
    assert!(m.contains("X-Rspamd-Action: add header\n"), "{m}");
    rig.assert_alive();
}

#[test]
fn smtpd68_rspamd_settings_ids() {
    settings_ids(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_settings_ids() {
    settings_ids(Daemon::Smtpd74);
}

/// A normal message is delivered with rspamd's headers, the client's forged X-Spam
/// removed and the body byte for byte; GTUBE gets 550 with rspamd's message; the
/// soft-reject rule gets 451; one log line per message.
fn verdicts(daemon: Daemon) {
    let rspamd = Rspamd::start().unwrap();
    let rig = rig_with(daemon, &rspamd.url(), &["--timeout", SLOW_OK])
        .start()
        .unwrap();
    let body = "a body line\n.a leading dot\n..two dots\nlast line | with a pipe\n";
    let t = send(&rig, "normal", body);
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = format!("\n{}", wait_delivered_with(&rig, "normal"));
    assert_eq!(body_of(&m), body, "{daemon}: the body changed:\n{m}");
    for h in [
        "\nX-Spamd-Result: default: False [",
        "\nAuthentication-Results: mx.lab.test;",
        "\nX-Rspamd-Queue-Id: ",
        "\nX-Rspamd-Action: no action\n",
    ] {
        assert!(m.contains(h), "{daemon}: no {h:?} in\n{m}");
    }
    assert!(
        !m.contains("X-Spam: forged"),
        "{daemon}: forged X-Spam kept:\n{m}"
    );

    let t = send(&rig, "gtube", &format!("{GTUBE}\n"));
    assert!(
        t.contains("550 5.7.1 Gtube pattern"),
        "{daemon}: GTUBE not rejected:\n{t}"
    );
    let t = send(&rig, SOFT_REJECT_SUBJECT, "soft\n");
    assert!(
        t.contains(&format!("451 4.7.1 {SOFT_REJECT_MESSAGE}")),
        "{daemon}: not soft-rejected:\n{t}"
    );
    let lines = rig.wait_log_lines(LOG, 3, Duration::from_secs(10));
    assert!(
        lines[0].contains("client=127.0.0.10 action=\"no action\" score=")
            && lines[0].contains("result=accept answer=proceed"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("action=\"reject\"")
            && lines[1].contains("answer=\"550 5.7.1 Gtube pattern\""),
        "{lines:?}"
    );
    assert!(lines[2].contains("action=\"soft reject\""), "{lines:?}");
    thread::sleep(Duration::from_millis(300));
    assert!(delivered_with(&rig, "gtube").is_none());
    assert_eq!(rig.delivered().len(), 1);
    rig.assert_alive();
}

/// rspamd goes away between two messages: the second gets 451 within the timeouts and
/// smtpd keeps serving.
fn rspamd_stopped(daemon: Daemon) {
    let mut rspamd = Rspamd::start().unwrap();
    let rig = rig_with(
        daemon,
        &rspamd.url(),
        &["--connect-timeout", "500", "--timeout", SLOW_OK],
    )
    .start()
    .unwrap();
    let t = send(&rig, "before", "before\n");
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    wait_delivered_with(&rig, "before");
    rspamd.stop();
    let start = Instant::now();
    let t = send(&rig, "after", "after\n");
    assert!(t.contains(ERROR_REPLY), "{daemon}: no tempfail:\n{t}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{daemon}: took {:?}",
        start.elapsed()
    );
    let lines = rig.wait_log_lines("action=error", 1, Duration::from_secs(5));
    assert!(lines[0].contains("cannot connect"), "{lines:?}");
    assert!(delivered_with(&rig, "after").is_none());
    rig.assert_alive();
}

/// A listener that reads the request and never answers: the request timeout applies.
fn silent_listener(daemon: Daemon) {
    let (url, seen) = fake_rspamd(Fake::Silent);
    let rig = rig_with(daemon, &url, &["--timeout", "1500"])
        .start()
        .unwrap();
    let start = Instant::now();
    let t = send(&rig, "silence", "silence\n");
    let took = start.elapsed();
    assert!(t.contains(ERROR_REPLY), "{daemon}: no tempfail:\n{t}");
    assert!(took >= Duration::from_millis(1400), "{daemon}: {took:?}");
    assert!(took < Duration::from_secs(8), "{daemon}: {took:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let lines = rig.wait_log_lines("action=error", 1, Duration::from_secs(5));
    assert!(lines[0].contains("timed out"), "{lines:?}");
    // and with --on-error accept, the next message is delivered unscanned
    drop(rig);
    let rig = rig_with(daemon, &url, &["--timeout", "1000", "--on-error", "accept"])
        .start()
        .unwrap();
    let t = send(&rig, "accepted", "accepted\n");
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = wait_delivered_with(&rig, "accepted");
    assert!(!m.contains("X-Spamd-Result"), "{m}");
    rig.assert_alive();
}

/// A listener that answers garbage: the error path.
fn garbage_json(daemon: Daemon) {
    let (url, _) = fake_rspamd(Fake::Answer(b"{\"action\": [garbage"));
    let rig = rig_with(daemon, &url, &[]).start().unwrap();
    let t = send(&rig, "garbage", "garbage\n");
    assert!(t.contains(ERROR_REPLY), "{daemon}: no tempfail:\n{t}");
    let lines = rig.wait_log_lines("action=error", 1, Duration::from_secs(5));
    assert!(lines[0].contains("unusable reply"), "{lines:?}");
    rig.assert_alive();
}

/// The peak resident memory (VmHWM, KB) of the filter process whose command line holds
/// `needle`.
fn filter_peak_rss_kb(needle: &str) -> Option<u64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // the filter itself, not a shell that started it
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if argv0.ends_with(b"/filter-rspamd") && cmdline.contains(needle) {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

/// A 20 MB message with `--max-size 1M` is passed on unscanned (rspamd here answers
/// garbage: a scan would tempfail it), whole, with one log line, and the filter's
/// memory stays below the message's size (a debug build peaks at about 13 MB here;
/// with the message buffered it would pass 30 MB); a small message is still scanned.
fn large_message(daemon: Daemon) {
    let (url, seen) = fake_rspamd(Fake::Answer(b"{\"action\": [garbage"));
    let rig = rig_with(daemon, &url, &["--max-size", "1M"])
        .start()
        .unwrap();
    let line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?\n";
    let body = line.repeat(20_000_000 / line.len());
    let t = send(&rig, "large", &body);
    assert!(
        t.contains(ACCEPTED),
        "{daemon}: large message refused:\n{}",
        tail(&t, 20)
    );
    let m = wait_delivered_with(&rig, "large");
    assert_eq!(body_of(&m).len(), body.len(), "{daemon}: the body changed");
    assert!(body_of(&m) == body, "{daemon}: the body changed");
    let lines = rig.wait_log_lines("action=unscanned", 1, Duration::from_secs(5));
    assert!(
        lines[0].contains("larger than --max-size 1048576"),
        "{lines:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the large message was sent to rspamd"
    );
    let rss = filter_peak_rss_kb(&url).expect("the filter process");
    assert!(rss > 1024, "{daemon}: {rss} KB is not the filter's memory");
    eprintln!("{daemon}: filter peak RSS {rss} KB after a 20 MB message");
    assert!(
        rss < 24 * 1024,
        "{daemon}: filter peak RSS {rss} KB for a 20 MB message"
    );
    let t = send(&rig, "small", "small\n");
    assert!(
        t.contains(ERROR_REPLY),
        "{daemon}: the small message was not scanned:\n{t}"
    );
    rig.assert_alive();
}

/// A 20 MB message under `--max-size` is scanned by the real rspamd: it is spooled to
/// a temporary file (`--spool-above 1M`, in a directory of our own that is empty
/// afterwards: the file is unlinked at once), sent to rspamd from there, and delivered
/// with rspamd's headers (the client's X-Spam removed: the header section is
/// replaced) and the body byte for byte; the filter's peak memory stays far below the
/// message's size (the message is never in RAM whole, nor copied for the answer).
fn large_message_scanned(daemon: Daemon) {
    let rspamd = Rspamd::start().unwrap();
    let spool = std::env::temp_dir().join(format!(
        "filter-rspamd-spool-{}-{daemon}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&spool);
    std::fs::create_dir_all(&spool).unwrap();
    // smtpd may run the filter as its own user
    std::fs::set_permissions(&spool, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let spool_arg = spool.display().to_string();
    let rig = rig_with(
        daemon,
        &rspamd.url(),
        &[
            "--timeout",
            "120000",
            "--max-size",
            "32M",
            "--spool-above",
            "1M",
            "--spool-dir",
            &spool_arg,
        ],
    )
    .start()
    .unwrap();
    let line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?\n";
    let mut body = line.repeat(20_000_000 / line.len());
    body.push_str(".a leading dot\n..two dots\nlast | line\n");
    let t = send(&rig, "large-scanned", &body);
    assert!(
        t.contains(ACCEPTED),
        "{daemon}: large message refused:\n{}",
        tail(&t, 20)
    );
    let m = format!("\n{}", wait_delivered_with(&rig, "large-scanned"));
    assert_eq!(body_of(&m).len(), body.len(), "{daemon}: the body changed");
    assert!(body_of(&m) == body, "{daemon}: the body changed");
    let head = &m[..m.len() - body.len()];
    assert!(
        head.contains("\nX-Spamd-Result: default: "),
        "{daemon}: not scanned:\n{head}"
    );
    assert!(
        !head.contains("X-Spam: forged"),
        "{daemon}: forged X-Spam kept:\n{head}"
    );
    let lines = rig.wait_log_lines(LOG, 1, Duration::from_secs(10));
    assert!(
        lines[0].contains("result=accept answer=proceed"),
        "{lines:?}"
    );
    let rss = filter_peak_rss_kb(&spool_arg).expect("the filter process");
    assert!(rss > 1024, "{daemon}: {rss} KB is not the filter's memory");
    eprintln!("{daemon}: filter peak RSS {rss} KB after scanning a 20 MB message");
    assert!(
        rss < 16 * 1024,
        "{daemon}: filter peak RSS {rss} KB for a scanned 20 MB message"
    );
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
    assert!(
        left.is_empty(),
        "{daemon}: files left in the spool dir: {left:?}"
    );
    rig.assert_alive();
    let _ = std::fs::remove_dir_all(&spool);
}

/// The spool runs out of space mid-message (`--spool-dir` on a 2 MB tmpfs mounted for
/// the test, a 20 MB message under `--max-size`): the message is refused with
/// `451 4.3.0` at the end of DATA, nothing is delivered, smtpd keeps running, the
/// tmpfs is empty again, and the next (small) message is scanned as usual.
fn spool_full(daemon: Daemon) {
    let (url, seen) = fake_rspamd(Fake::Answer(b"{\"action\": [garbage"));
    let dir = std::env::temp_dir().join(format!(
        "filter-rspamd-full-{}-{daemon}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=1777", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs on {}", dir.display());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    let dir_arg = dir.display().to_string();
    let rig = rig_with(
        daemon,
        &url,
        &[
            "--max-size",
            "32M",
            "--spool-above",
            "64K",
            "--spool-dir",
            &dir_arg,
        ],
    )
    .start()
    .unwrap();
    let line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?\n";
    let body = line.repeat(20_000_000 / line.len());
    let t = send(&rig, "spool-full", &body);
    assert!(
        t.contains("451 4.3.0 Temporary failure storing the message"),
        "{daemon}: not refused:\n{}",
        tail(&t, 20)
    );
    rig.assert_alive();
    assert!(
        seen.lock().unwrap().is_empty(),
        "the message was sent to rspamd"
    );
    let t = send(&rig, "after-full", "small\n");
    assert!(
        t.contains(ERROR_REPLY),
        "{daemon}: the small message was not scanned:\n{t}"
    );
    thread::sleep(Duration::from_millis(300));
    assert!(delivered_with(&rig, "spool-full").is_none());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{daemon}: files left: {left:?}");
    rig.assert_alive();
}

/// rspamd on a unix socket, given as the Go filter takes it (`-url /path`): a normal
/// message is delivered with rspamd's headers, GTUBE refused.
fn unix_socket(daemon: Daemon) {
    let rspamd = Rspamd::start().unwrap();
    let path = rspamd.unix_socket().display().to_string();
    let rig = rig_with(daemon, &path, &["--timeout", SLOW_OK])
        .start()
        .unwrap();
    let t = send(&rig, "over-unix", "over a unix socket\n");
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = wait_delivered_with(&rig, "over-unix");
    assert!(
        m.contains("X-Spamd-Result: "),
        "{daemon}: not scanned:\n{m}"
    );
    let t = send(&rig, "gtube-unix", &format!("{GTUBE}\n"));
    assert!(t.contains("550 5.7.1 Gtube pattern"), "{daemon}:\n{t}");
    rig.assert_alive();
}

/// rspamd signs mail from its DKIM domain: the signature (folded by rspamd) arrives on
/// top of the message, whole, and the body is unchanged.
fn dkim_signature(daemon: Daemon) {
    let rspamd = Rspamd::start().unwrap();
    let rig = rig_with(daemon, &rspamd.url(), &["--timeout", SLOW_OK])
        .start()
        .unwrap();
    let from = format!("alice@{DKIM_DOMAIN}");
    let msg = format!(
        "From: <{from}>\nTo: <{RCPT_OK}>\nSubject: signed\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <signed@lab.test>\n\nsign me\n.dot\n"
    );
    let out = rig.send_message(CLIENT, &from, &[RCPT_OK], msg.as_bytes(), &[]);
    let t = transcript(&out);
    assert!(t.contains(ACCEPTED), "{daemon}:\n{t}");
    let m = wait_delivered_with(&rig, "signed");
    let sig = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={DKIM_DOMAIN}; s={DKIM_SELECTOR};\n"
    );
    assert!(m.contains(&sig), "{daemon}: no signature:\n{m}");
    let after = m.split(&sig).nth(1).unwrap();
    // continuation lines up to the b= tag, every one folded with white space
    let cont: Vec<&str> = after
        .lines()
        .take_while(|l| l.starts_with([' ', '\t']))
        .collect();
    assert!(
        cont.iter().any(|l| l.trim_start().starts_with("b=")),
        "{daemon}:\n{m}"
    );
    assert!(cont.iter().any(|l| l.contains("bh=")), "{daemon}:\n{m}");
    assert_eq!(body_of(&format!("\n{m}")), "sign me\n.dot\n");
    rig.assert_alive();
}

#[test]
fn smtpd68_rspamd_dkim_signature() {
    dkim_signature(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_dkim_signature() {
    dkim_signature(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_unix_socket() {
    unix_socket(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_unix_socket() {
    unix_socket(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_large_message_scanned() {
    large_message_scanned(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_large_message_scanned() {
    large_message_scanned(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_spool_full() {
    spool_full(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_spool_full() {
    spool_full(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_large_message() {
    large_message(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_large_message() {
    large_message(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_verdicts() {
    verdicts(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_verdicts() {
    verdicts(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_stopped() {
    rspamd_stopped(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_stopped() {
    rspamd_stopped(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_silent_listener() {
    silent_listener(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_silent_listener() {
    silent_listener(Daemon::Smtpd74);
}

#[test]
fn smtpd68_rspamd_garbage_json() {
    garbage_json(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rspamd_garbage_json() {
    garbage_json(Daemon::Smtpd74);
}

/// 7.4 (working STARTTLS and AUTH): the request carries `User` and the TLS headers
/// (seen on the wire by a recording listener), and the real rspamd knows the user
/// (its Authentication-Results says `smtp.auth=`).
#[test]
fn smtpd74_rspamd_authenticated_user_and_tls() {
    const PW: &str = "rig-secret-rspamd-4";
    const USER: &str = "rig|sender";
    let auth_args = |subject: &'static str| {
        move |rig: &Rig| {
            let out = rig.send_message_at(
                Listener::StartTlsAuth,
                CLIENT,
                SENDER,
                &[RCPT_OK],
                &message(subject, "authenticated\n"),
                &[
                    "--ehlo",
                    "client.lab.test",
                    "--tls",
                    "--auth",
                    "PLAIN",
                    "--auth-user",
                    USER,
                    "--auth-password",
                    PW,
                ],
            );
            transcript(&out)
        }
    };
    let normal: &'static [u8] = Box::leak(
        std::fs::read(workspace_root().join("filter-rspamd/tests/replies/normal.json"))
            .unwrap()
            .into_boxed_slice(),
    );
    let (url, seen) = fake_rspamd(Fake::Answer(normal));
    let rig = Rig::builder(Daemon::Smtpd74)
        .filter(FILTER, &format!("{} -url '{url}'", rspamd_bin().display()))
        .auth_user(USER, PW)
        .listen_starttls_auth(FILTER)
        .start()
        .unwrap();
    let t = auth_args("recorded")(&rig);
    assert!(t.contains(ACCEPTED), "{t}");
    let req = seen.lock().unwrap()[0].clone();
    let lower = req.to_ascii_lowercase();
    assert!(req.starts_with("POST /checkv2 HTTP/1.1\r\n"), "{req}");
    for h in [
        format!("user: {USER}\r\n"),
        "tls-version: tlsv1.".to_string(),
        "tls-cipher: ".to_string(),
        "ip: 127.0.0.10\r\n".to_string(),
        "helo: client.lab.test\r\n".to_string(),
        format!("from: {SENDER}\r\n"),
        format!("rcpt: {RCPT_OK}\r\n"),
        format!("deliver-to: {RCPT_OK}\r\n"),
        "mta-name: mx.lab.test\r\n".to_string(),
        "queue-id: ".to_string(),
    ] {
        assert!(
            lower.contains(&h.to_ascii_lowercase()),
            "no {h:?} in\n{req}"
        );
    }
    assert!(!req.contains(PW), "the password went to rspamd");
    // the body is the message with CRLF line ends
    assert!(req.contains("\r\n\r\nauthenticated\r\n"), "{req}");
    drop(rig);

    let rspamd = Rspamd::start().unwrap();
    let rig = Rig::builder(Daemon::Smtpd74)
        .filter(
            FILTER,
            &format!(
                "{} -url '{}' --timeout {SLOW_OK}",
                rspamd_bin().display(),
                rspamd.url()
            ),
        )
        .auth_user(USER, PW)
        .listen_starttls_auth(FILTER)
        .start()
        .unwrap();
    let t = auth_args("real")(&rig);
    assert!(t.contains(ACCEPTED), "{t}");
    let m = wait_delivered_with(&rig, "real");
    assert!(
        m.contains(&format!("smtp.auth={USER}")),
        "rspamd did not get the user:\n{m}"
    );
    assert!(rig.log_lines(PW).is_empty(), "the password is in the log");
    rig.assert_alive();
}
