//! Whole-process benchmark: preloads a store with N entries (default 1 000 000: half
//! whitelisted networks, half grey triplets), starts the real `filter-greylist` binary
//! on it and speaks the filter protocol on its stdin/stdout, as smtpd does: the
//! handshake, then sessions (`link-connect`, `tx-begin`, `tx-mail` reports, a
//! `rcpt-to` request, `link-disconnect` after the answer), many in flight at once.
//!
//! It reports the time from start to the first answer, warm decisions per second
//! (whitelisted clients: the common case of a busy MX), first attempts per second
//! (one durable write each), and the filter's peak RSS (VmHWM).
//!
//! The sessions use the null sender without HELO, which the filter keys without an
//! SPF lookup: the figures are of the filter and its store, not of DNS.
//!
//! ```sh
//! cargo build --release -p filter-greylist --bin filter-greylist --example bench_process
//! target/release/examples/bench_process /tmp/greylist-bench.redb [N] [SESSIONS]
//! target/release/examples/bench_process redis://127.0.0.1:6379/9 [N] [SESSIONS]  # empties DB 9
//! ```

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use filter_greylist::policy::{Attempt, Entry, Grouping, Key, Spf, Timing, client_net, lookup};
use filter_greylist::redis_store::RedisStore;
use filter_greylist::store::RedbStore;

/// Sessions waiting for their answer at any time (smtpd has many clients at once).
const IN_FLIGHT: usize = 256;

/// Client `i`: one /24 per `i`, skipping 0.x and 127.x (as `examples/bench.rs`).
fn client(i: u32) -> IpAddr {
    let n = i + (1 << 16);
    IpAddr::V4(Ipv4Addr::new(
        (n >> 16) as u8 % 100 + 1,
        (n >> 8) as u8,
        n as u8,
        7,
    ))
}

/// The null sender without HELO, as the sessions below send it.
fn bounce(i: u32) -> Attempt {
    Attempt {
        client: client(i),
        sender: String::new(),
        helo: String::new(),
        rcpt: "user@example.org".into(),
        spf: Spf::NotChecked,
        trap: false,
    }
}

fn preload(target: &str, n: u32, now: u64) {
    let timing = Timing::default();
    let entry = Entry {
        first_seen: now,
        last_seen: now,
        count: 1,
        expires: now + timing.white_exp,
    };
    let redis = target.starts_with("redis://").then(|| {
        // a clean database: entries of an earlier run would turn first attempts into
        // retries
        let mut con = redis::Client::open(target)
            .and_then(|c| c.get_connection())
            .expect("connect to Redis");
        redis::cmd("FLUSHDB")
            .query::<()>(&mut con)
            .expect("FLUSHDB");
        RedisStore::new(target).expect("redis url")
    });
    let redb = redis.is_none().then(|| {
        let _ = std::fs::remove_file(target);
        RedbStore::open(Path::new(target)).expect("store")
    });
    let mut batch = Vec::with_capacity(100_000);
    for i in 0..n {
        // whitelisted networks for even i, grey triplets for odd i
        let key = if i % 2 == 0 {
            Key::WhiteNet(client_net(client(i), Grouping::Network))
        } else {
            lookup(&bounce(i), Grouping::Network).grey
        };
        batch.push((key, entry));
        if batch.len() == 100_000 || i + 1 == n {
            match (&redb, &redis) {
                (Some(s), _) => s.import(&batch).expect("preload"),
                (_, Some(s)) => s.import(&batch).expect("preload"),
                _ => unreachable!(),
            }
            batch.clear();
        }
    }
    // the redb file is closed here: the filter opens it
}

fn filter_bin() -> PathBuf {
    // target/<profile>/examples/bench_process -> target/<profile>/filter-greylist
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("filter-greylist"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p filter-greylist --bin filter-greylist",
        bin.display()
    );
    bin
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const HEAD: &str = "report|0.6|1700000000.000001|smtp-in";

fn session_lines(out: &mut impl Write, sid: u64, i: u32) {
    let ip = client(i);
    let _ = write!(
        out,
        "{HEAD}|link-connect|{sid:016x}|<unknown>|fail|{ip}:4000|192.0.2.25:25\n\
         {HEAD}|tx-begin|{sid:016x}|0000000a\n\
         {HEAD}|tx-mail|{sid:016x}|0000000a|ok|\n\
         filter|0.6|1700000000.000002|smtp-in|rcpt-to|{sid:016x}|00000000000000aa|user@example.org\n"
    );
}

struct Filter {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    answers: mpsc::Receiver<(u64, bool)>,
}

impl Filter {
    fn start(target: &str) -> Filter {
        let mut child = Command::new(filter_bin())
            .args(["--store", target, "--resolver", "127.0.0.1:9"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the filter");
        let stdin = BufWriter::with_capacity(64 * 1024, child.stdin.take().expect("piped"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::with_capacity(64 * 1024, stdout).lines() {
                let Ok(line) = line else { break };
                // filter-result|SESSION|TOKEN|proceed or reject|CODE TEXT
                let mut parts = line.split('|');
                if parts.next() != Some("filter-result") {
                    continue;
                }
                let sid = parts
                    .next()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .unwrap_or(0);
                let proceed = parts.nth(1) == Some("proceed");
                if tx.send((sid, proceed)).is_err() {
                    break;
                }
            }
        });
        Filter {
            child,
            stdin,
            answers,
        }
    }

    /// Runs `count` sessions for the clients `client_of(k)`, at most [`IN_FLIGHT`]
    /// waiting at once; returns how many were accepted.
    fn sessions(&mut self, first_sid: u64, count: u32, client_of: impl Fn(u32) -> u32) -> u32 {
        let mut sent = 0u32;
        let mut answered = 0u32;
        let mut accepted = 0u32;
        while answered < count {
            while sent < count && ((sent - answered) as usize) < IN_FLIGHT {
                session_lines(
                    &mut self.stdin,
                    first_sid + u64::from(sent),
                    client_of(sent),
                );
                sent += 1;
            }
            self.stdin.flush().expect("write to the filter");
            let (sid, proceed) = self
                .answers
                .recv_timeout(Duration::from_secs(30))
                .expect("an answer within 30 s");
            let _ = writeln!(self.stdin, "{HEAD}|link-disconnect|{sid:016x}");
            accepted += u32::from(proceed);
            answered += 1;
            // take whatever else has arrived before writing more
            while let Ok((sid, proceed)) = self.answers.try_recv() {
                let _ = writeln!(self.stdin, "{HEAD}|link-disconnect|{sid:016x}");
                accepted += u32::from(proceed);
                answered += 1;
            }
        }
        accepted
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/tmp/filter-greylist-bench.redb".into());
    let n: u32 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let warm_sessions: u32 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
        .min(n / 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();

    let fill = Instant::now();
    preload(&target, n, now);
    let fill = fill.elapsed();

    let started = Instant::now();
    let mut filter = Filter::start(&target);
    let _ = filter
        .stdin
        .write_all(b"config|smtpd-version|6.8.0p2\nconfig|subsystem|smtp-in\nconfig|ready\n");
    let first = filter.sessions(1, 1, |_| 0);
    let to_first_answer = started.elapsed();
    assert_eq!(first, 1, "client 0 is whitelisted");

    // warm-up: the pages of the clients we are about to ask for
    filter.sessions(10, 20_000.min(warm_sessions), |k| (k * 2) % n);
    let warm = Instant::now();
    let accepted = filter.sessions(1_000_000, warm_sessions, |k| (k * 2) % n);
    let warm = warm.elapsed();
    assert_eq!(accepted, warm_sessions, "whitelisted clients are accepted");

    // first attempts: grey triplets never seen (new clients): one write each
    let writes = 2_000u32;
    let w = Instant::now();
    let accepted = filter.sessions(10_000_000, writes, |k| n + 2 * k + 1);
    let w = w.elapsed();
    assert_eq!(accepted, 0, "first attempts are greylisted");

    let rss = vm_hwm_kb(filter.child.id());
    drop(filter.stdin);
    let status = filter.child.wait().expect("the filter ends");
    assert!(status.success(), "the filter ended with {status}");

    let store = if target.starts_with("redis://") {
        "Redis"
    } else {
        "redb (embedded)"
    };
    let per_sec = |k: u32, d: Duration| f64::from(k) / d.as_secs_f64();
    println!("filter-greylist, whole process, store {store}: {target}");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| entries preloaded | {n} ({:.1} s) |", fill.as_secs_f64());
    println!(
        "| start to first answer | {:.1} ms |",
        to_first_answer.as_secs_f64() * 1000.0
    );
    println!(
        "| warm decisions, whitelisted clients ({warm_sessions} sessions, {IN_FLIGHT} in flight) | {:.0} /s |",
        per_sec(warm_sessions, warm)
    );
    println!(
        "| first attempts ({writes}, a durable write each) | {:.0} /s |",
        per_sec(writes, w)
    );
    println!("| peak RSS of the filter (VmHWM) | {} MB |", rss / 1024);
}
