//! Other filter implementations facing the 64 KiB wedge on OpenSMTPD 7.4 (protocol.md):
//! one client sends one data line of 65,500 bytes through the peer. These tests REPORT
//! what happened (is smtpd still alive? is the next session served within 20 s?) and
//! never fail on the peer's behaviour; they fail only when the rig itself breaks (the
//! rig does not start, or a normal message does not go through the peer before the long
//! line).
//!
//! Observed with smtpd 7.4.0p1 (both take about half a second, because neither gets as
//! far as the wedge: each exits on the long REQUEST line, and smtpd exits with it —
//! "lost processor: peer exited abnormally"; one client with one line stops the MX):
//! - `filter-rspamd` (Debian's Go filter, 0.1.7): its `bufio.Scanner` stops at 64 KiB and
//!   the filter exits. It keeps the message until the final dot and then asks rspamd, so
//!   no rspamd is needed to reach the data phase; without one every message gets `421`.
//!   The test runs it against a stub rspamd (a thread answering `{"action": "no action"}`
//!   on 127.0.0.1) so that the control message is delivered.
//! - the C pass-through on libopensmtpd 0.7 (Debian), built with gcc from
//!   tests/peers/c-libopensmtpd-passthrough.c (the throughput bench's, copied):
//!   its 64 KiB input buffer fills up, the next `read(0, buf, 0)` returns 0, which it takes
//!   for EOF, and it exits with status 0 (seen with strace).
//!
//! A wedged smtpd would make a test take about 25 s (5 s for the long line's reply, 20 s
//! for the next session). The peers come from scripts/lib/provision.sh
//! (opensmtpd-filter-rspamd, libopensmtpd-dev, gcc).

mod common;

use common::*;
use opensmtpd_e2e::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WEDGE_LINE: usize = 65_500;
const NEXT_SESSION_BOUND: Duration = Duration::from_secs(20);
/// How long the client with the long line waits for the reply to its final dot.
const LONG_LINE_WAIT: Duration = Duration::from_secs(5);

const FILTER_RSPAMD: &str = "/usr/libexec/opensmtpd/filter-rspamd";

/// A stub of rspamd's `/checkv2`: answers every request with "no action". Runs for the
/// rest of the test process.
fn stub_rspamd() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("stub rspamd: bind");
    let port = listener.local_addr().expect("stub rspamd: address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut req = Vec::new();
                let mut buf = [0u8; 65536];
                // headers, then Content-Length bytes of body
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body =
                    r#"{"action":"no action","score":0.0,"required_score":15.0,"symbols":{}}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// Builds the C pass-through into `dir` (which the filter user can reach).
fn build_c_passthrough(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/c-libopensmtpd-passthrough.c");
    let bin = dir.join("c-libopensmtpd-passthrough");
    let out = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-lopensmtpd")
        .output()
        .expect("gcc (apt-get install gcc libopensmtpd-dev)");
    assert!(
        out.status.success(),
        "gcc failed (apt-get install libopensmtpd-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn wedge_message() -> Vec<u8> {
    let mut m = simple_message("one line of 65,500 bytes", b"");
    m.extend_from_slice(&long_line(b"65500:", WEDGE_LINE));
    m.extend_from_slice(b"\nlast line\n");
    m
}

/// Runs the scenario through `rig`'s filter and prints what happened.
fn report(peer: &str, rig: &Rig) {
    let t0 = Instant::now();
    // the rig works and the peer passes normal mail
    let control = simple_message("control", b"before the long line\n");
    let outcome = rig.session_within(CLIENT, "client10.lab.test", &control, NEXT_SESSION_BOUND);
    assert!(
        outcome.accepted(),
        "{peer}: a normal message does not get through, the rig is broken: {outcome}\n{}",
        tail(&rig.smtpd_log(), 40)
    );
    rig.wait_delivered(1, Duration::from_secs(10));

    // one client, one long line
    let mut lines = vec![format!(
        "peer {peer} on {} with one data line of {WEDGE_LINE} bytes:",
        rig.daemon()
    )];
    let long = (|| -> std::io::Result<Reply> {
        let mut c = SmtpClient::connect(rig, Listener::Plain, CLIENTS_WITH_RDNS[1])?;
        c.read_reply()?;
        c.command("EHLO client50.lab.test")?;
        c.command(&format!("MAIL FROM:<{SENDER}>"))?;
        c.command(&format!("RCPT TO:<{RCPT_OK}>"))?;
        c.command("DATA")?;
        c.set_timeout(LONG_LINE_WAIT)?;
        let r = c.send_data(&wedge_message());
        c.drop_connection();
        r
    })();
    lines.push(match long {
        Ok(r) => format!("  the long line's message: answered {r}"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            format!("  the long line's message: no answer within {LONG_LINE_WAIT:?}")
        }
        Err(e) => format!("  the long line's message: no answer, the connection ended ({e})"),
    });
    std::thread::sleep(Duration::from_millis(500));
    lines.push(format!(
        "  smtpd alive after it: {}",
        if rig.smtpd_alive() { "yes" } else { "NO" }
    ));

    // the next session
    let next = simple_message("after the long line", b"next\n");
    let t = Instant::now();
    let outcome = rig.session_within(
        CLIENTS_WITH_RDNS[2],
        "client90.lab.test",
        &next,
        NEXT_SESSION_BOUND,
    );
    let delivered = outcome.accepted() && {
        let left = NEXT_SESSION_BOUND.saturating_sub(t.elapsed());
        let deadline = Instant::now() + left;
        loop {
            if rig.delivered().len() >= 2 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    lines.push(format!("  next session: {outcome}"));
    lines.push(format!(
        "  next session served within {NEXT_SESSION_BOUND:?}: {}",
        if delivered {
            format!("yes, delivered after {:.2} s", t.elapsed().as_secs_f64())
        } else {
            "NO".to_string()
        }
    ));
    lines.push(format!(
        "  smtpd alive at the end: {}",
        if rig.smtpd_alive() { "yes" } else { "NO" }
    ));
    let notable: Vec<String> = rig
        .smtpd_log()
        .lines()
        .filter(|l| {
            l.contains("lost processor")
                || l.starts_with("peer: ")
                || l.contains("Line too long")
                || l.contains("fatal")
                || l.contains("exited")
        })
        .map(|l| format!("    log: {}", &l[..l.len().min(200)]))
        .collect();
    if !notable.is_empty() {
        lines.push("  smtpd log:".into());
        lines.extend(notable);
    }
    lines.push(format!("  ({:.1} s)", t0.elapsed().as_secs_f64()));
    println!("{}", lines.join("\n"));
}

#[test]
fn smtpd74_peer_wedge_report_filter_rspamd() {
    assert!(
        Path::new(FILTER_RSPAMD).is_file(),
        "{FILTER_RSPAMD} is missing: apt-get install opensmtpd-filter-rspamd"
    );
    let port = stub_rspamd();
    let rig = Rig::builder(Daemon::Smtpd74)
        .filter(
            "peer",
            &format!("{FILTER_RSPAMD} -url http://127.0.0.1:{port}"),
        )
        .listen_plain("peer")
        .start()
        .unwrap();
    report("filter-rspamd 0.1.7 (Go)", &rig);
}

#[test]
fn smtpd74_peer_wedge_report_c_libopensmtpd() {
    let builder = Rig::builder(Daemon::Smtpd74);
    let bin = build_c_passthrough(builder.dir());
    let rig = builder
        .filter("peer", &bin.display().to_string())
        .listen_plain("peer")
        .start()
        .unwrap();
    report("libopensmtpd 0.7 pass-through (C)", &rig);
}
