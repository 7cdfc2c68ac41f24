//! Benchmark (issue: ours against Debian's Go filter-rspamd): the same real rspamd, the
//! same messages (1 KB, 100 KB, 10 MB) sent through a real OpenSMTPD 7.4 with each
//! filter; messages per second and the filter's peak RSS; and rspamd alone (the same
//! messages posted straight to `/checkv2`, as many at a time) for the scan's own cost.
//!
//! Then the latency the filter adds over rspamd's own scan, one message at a time:
//! our filter runs as smtpd runs it (the protocol over its stdin/stdout, fed by this
//! program instead of smtpd), and for each message the time from writing the final `.`
//! to reading the answer to `commit` (which smtpd sends once the filter wrote the
//! message back) is compared with the time of the same `/checkv2` request made
//! straight to rspamd, reusing the connection when rspamd keeps it open as the filter
//! does (rspamd 3.4 closes it after each answer); both medians over the same number of
//! messages, alternating.
//!
//! ```sh
//! cargo build --release -p filter-rspamd --bin filter-rspamd --example bench
//! sudo target/release/examples/bench [N_1KB N_100KB N_10MB [CONCURRENCY [N_LATENCY]]]
//! ```
//!
//! Needs root, the e2e rig (scripts/test provisions it) and opensmtpd-filter-rspamd.
//! Everything runs on loopback.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use opensmtpd_e2e::rspamd::Rspamd;
use opensmtpd_e2e::{Daemon, Listener, RCPT_OK, Rig, SmtpClient, wire_data};

const GO: &str = "/usr/libexec/opensmtpd/filter-rspamd";

fn message(size: usize, n: usize) -> Vec<u8> {
    let line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor\n";
    let mut m = format!(
        "From: <bench@example.org>\nTo: <{RCPT_OK}>\nSubject: bench {size} {n}\nMessage-Id: <bench-{size}-{n}@example.org>\n\n"
    );
    while m.len() < size {
        m.push_str(line);
    }
    m.into_bytes()
}

/// Sends `count` messages of `size` bytes with `conc` clients; returns (seconds, accepted).
fn through_smtpd(rig: &Rig, size: usize, count: usize, conc: usize) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let wire = Arc::new(wire_data(&message(size, 0)));
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..conc {
            let (next, ok, wire) = (Arc::clone(&next), Arc::clone(&ok), Arc::clone(&wire));
            s.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let sent = (|| -> std::io::Result<bool> {
                        let mut c = SmtpClient::connect(rig, Listener::Plain, "127.0.0.10")?;
                        c.set_timeout(Duration::from_secs(120))?;
                        c.read_reply()?;
                        c.expect("EHLO bench.example.org", 250)?;
                        c.expect("MAIL FROM:<bench@example.org>", 250)?;
                        c.expect(&format!("RCPT TO:<{RCPT_OK}>"), 250)?;
                        c.expect("DATA", 354)?;
                        let r = c.send_data(&wire)?;
                        let _ = c.quit();
                        Ok(r.code == 250)
                    })();
                    if matches!(sent, Ok(true)) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (start.elapsed().as_secs_f64(), ok.load(Ordering::Relaxed))
}

/// The same messages straight to rspamd.
fn alone(rspamd: &Rspamd, size: usize, count: usize, conc: usize) -> (f64, usize) {
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let crlf: Vec<u8> = String::from_utf8_lossy(&message(size, 0))
        .replace('\n', "\r\n")
        .into_bytes();
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..conc {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    if rspamd
                        .checkv2_with(&HEADERS, &crlf, Duration::from_secs(120))
                        .is_some_and(|r| r.contains("\"action\""))
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (start.elapsed().as_secs_f64(), ok.load(Ordering::Relaxed))
}

/// VmHWM (KB) of the filter process whose command line holds `needle`.
fn peak_rss_kb(needle: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if argv0.ends_with(b"filter-rspamd") && cmd.contains(needle) {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

fn ours_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    // target/release/examples/bench -> target/release/filter-rspamd
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("filter-rspamd"))
        .expect("target directory")
}

/// The headers the filters send, for rspamd alone.
const HEADERS: [(&str, &str); 8] = [
    ("IP", "127.0.0.10"),
    ("Hostname", "client10.lab.test"),
    ("Helo", "bench.example.org"),
    ("From", "bench@example.org"),
    ("Rcpt", RCPT_OK),
    ("Deliver-To", RCPT_OK),
    ("Queue-Id", "0123abcd"),
    ("MTA-Name", "mx.lab.test"),
];

/// rspamd alone, reusing its connection when rspamd keeps it open, as the filter's
/// client does (rspamd 3.4 answers `Connection: close`: then both connect per request).
struct KeptAlive {
    addr: std::net::SocketAddr,
    stream: Option<std::net::TcpStream>,
}

impl KeptAlive {
    /// One `/checkv2` request; the reply body.
    fn checkv2(&mut self, message: &[u8]) -> Option<String> {
        use std::io::Read;
        let mut s = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = std::net::TcpStream::connect(self.addr).ok()?;
                s.set_nodelay(true).ok()?;
                s
            }
        };
        let mut head = String::from("POST /checkv2 HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in HEADERS {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", message.len()));
        let mut request = head.into_bytes();
        request.extend_from_slice(message);
        s.write_all(&request).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    if !head.contains("connection: close") {
                        self.stream = Some(s);
                    }
                    return Some(body);
                }
            }
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per-message latency (ms, medians): through our filter driven directly over its
/// stdin/stdout (final `.` written → first line of the message back, → commit
/// answered), and rspamd alone.
fn latency(rspamd: &Rspamd, size: usize, count: usize) -> (f64, f64, f64) {
    let mut child = Command::new(ours_bin())
        .args([
            "-url",
            &rspamd.url(),
            "--max-size",
            "20M",
            "--timeout",
            "120000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("our filter");
    let mut to = std::io::BufWriter::with_capacity(256 * 1024, child.stdin.take().unwrap());
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for l in [
        "config|smtpd-version|7.4.0",
        "config|protocol|0.7",
        "config|subsystem|smtp-in",
        "config|ready",
    ] {
        writeln!(to, "{l}").unwrap();
    }
    to.flush().unwrap();
    loop {
        line.clear();
        from.read_line(&mut line).unwrap();
        if line.trim_end() == "register|ready" || line.is_empty() {
            break;
        }
    }
    let msg = message(size, 0);
    let crlf: Vec<u8> = String::from_utf8_lossy(&msg)
        .replace('\n', "\r\n")
        .into_bytes();
    let (mut through, mut first, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let mut direct = KeptAlive {
        addr: rspamd.addr(),
        stream: None,
    };
    // a first request opens the connection, as the filter's first message does
    let _ = direct.checkv2(&crlf);
    for n in 0..count {
        let sid = format!("{:016x}", n + 1);
        let ts = "1700000000.000001";
        for r in [
            format!("link-connect|{sid}|client10.lab.test|pass|127.0.0.10:41000|127.0.0.1:25"),
            format!("link-greeting|{sid}|mx.lab.test"),
            format!("link-identify|{sid}|EHLO|bench.example.org"),
            format!("tx-begin|{sid}|0123abcd"),
            format!("tx-mail|{sid}|0123abcd|ok|bench@example.org"),
            format!("tx-rcpt|{sid}|0123abcd|ok|{RCPT_OK}"),
        ] {
            writeln!(to, "report|0.7|{ts}|smtp-in|{r}").unwrap();
        }
        let head = format!("filter|0.7|{ts}|smtp-in|data-line|{sid}|00000000000000aa|");
        for l in msg
            .strip_suffix(b"\n")
            .unwrap_or(&msg)
            .split(|&b| b == b'\n')
        {
            to.write_all(head.as_bytes()).unwrap();
            if l.first() == Some(&b'.') {
                to.write_all(b".").unwrap();
            }
            to.write_all(l).unwrap();
            to.write_all(b"\n").unwrap();
        }
        to.flush().unwrap();
        let start = Instant::now();
        writeln!(to, "{head}.").unwrap();
        to.flush().unwrap();
        // the message comes back, up to its `.`; then commit
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if from.read_until(b'\n', &mut buf).unwrap() == 0 {
                panic!("the filter ended");
            }
            if first.len() == through.len() {
                first.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            if buf.ends_with(b"|.\n") {
                break;
            }
        }
        writeln!(to, "filter|0.7|{ts}|smtp-in|commit|{sid}|00000000000000bb|").unwrap();
        to.flush().unwrap();
        buf.clear();
        from.read_until(b'\n', &mut buf).unwrap();
        through.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(
            buf.starts_with(b"filter-result|"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        writeln!(to, "report|0.7|{ts}|smtp-in|link-disconnect|{sid}").unwrap();
        to.flush().unwrap();
        let start = Instant::now();
        let r = direct.checkv2(&crlf);
        alone.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(r.is_some_and(|r| r.contains("\"action\"")));
    }
    drop(to);
    let _ = child.wait();
    (median(first), median(through), median(alone))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = [
        (1_000, *args.first().unwrap_or(&400)),
        (100_000, *args.get(1).unwrap_or(&100)),
        (10_000_000, *args.get(2).unwrap_or(&6)),
    ];
    let conc = *args.get(3).unwrap_or(&4);
    let latency_count = *args.get(4).unwrap_or(&20);
    let rspamd = Rspamd::start().expect("rspamd");
    println!(
        "{:<10} {:>6} {:<14} {:>8} {:>10} {:>12} {:>8}",
        "size", "msgs", "who", "wall_s", "msgs/s", "peak_rss_kb", "ok"
    );
    for (size, count) in counts {
        if count == 0 {
            continue;
        }
        let (secs, ok) = alone(&rspamd, size, count, conc);
        println!(
            "{size:<10} {count:>6} {:<14} {secs:>8.2} {:>10.1} {:>12} {ok:>8}",
            "rspamd-alone",
            count as f64 / secs,
            "-"
        );
        for (who, bin, extra) in [
            ("ours", ours_bin(), " --max-size 20M --timeout 120000"),
            ("go", PathBuf::from(GO), ""),
        ] {
            let cmd = format!("{} -url {}{extra}", bin.display(), rspamd.url());
            let rig = Rig::builder(Daemon::Smtpd74)
                .filter("rspamd", &cmd)
                .listen_plain("rspamd")
                .start()
                .expect("the rig");
            let (secs, ok) = through_smtpd(&rig, size, count, conc);
            let rss = peak_rss_kb(&rspamd.url());
            println!(
                "{size:<10} {count:>6} {who:<14} {secs:>8.2} {:>10.1} {rss:>12} {ok:>8}",
                count as f64 / secs
            );
        }
    }
    println!();
    println!(
        "{:<10} {:>6} {:>14} {:>16} {:>16} {:>10}",
        "size", "msgs", "first_line_ms", "commit_answer_ms", "rspamd_alone_ms", "added_ms"
    );
    for (size, _) in counts {
        let n = if size >= 10_000_000 {
            latency_count.div_ceil(4)
        } else {
            latency_count
        };
        if n == 0 {
            continue;
        }
        let (first, through, alone) = latency(&rspamd, size, n);
        println!(
            "{size:<10} {n:>6} {first:>14.2} {through:>16.2} {alone:>16.2} {:>10.2}",
            through - alone
        );
    }
}
