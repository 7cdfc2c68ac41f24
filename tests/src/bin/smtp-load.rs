//! The load generator on its own, against any SMTP listener (a rig's, or an MX on a test
//! machine):
//!
//! ```text
//! cargo run --release -p opensmtpd-e2e --bin smtp-load -- --target 127.43.7.1:25 \
//!     --mode bench|soak [--sessions N] [--clients N] [--seed S] [--max-size BYTES] \
//!     [--max-line BYTES] [--sources FIRST-LAST] [--maildir DIR]
//! ```
//!
//! `--sources 127.0.0.100-127.0.0.149` (the default: one address per client, up to 50)
//! are the client addresses, used in turn. With `--maildir DIR` (the `maildir` of the
//! user the recipients deliver to: `rigmail@lab.test`, `alice@`, `bob@`, `pipe|box@` in
//! a rig), every delivered file is checked byte for byte against what was sent and
//! removed, and the accepted messages are matched with the delivered ones. Prints the
//! outcomes, sessions/s and p50/p99 from connect to the 250 after the final dot; exits 1
//! when a session got no answer in time or a delivery check failed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use opensmtpd_e2e::load::{self, LoadConfig, MaildirCheck, Shape, SoakShape};

const USAGE: &str = "usage: smtp-load --target IP:PORT [--mode bench|soak] [--sessions N] [--clients N] [--seed S] [--max-size BYTES] [--max-line BYTES] [--sources FIRST-LAST] [--maildir DIR]";

fn usage(msg: &str) -> ! {
    eprintln!("smtp-load: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_sources(s: &str) -> Vec<IpAddr> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a
        .parse()
        .unwrap_or_else(|_| usage("--sources: bad address"));
    let b: Ipv4Addr = b
        .parse()
        .unwrap_or_else(|_| usage("--sources: bad address"));
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 1000 {
        usage("--sources: FIRST-LAST, at most 1000 addresses");
    }
    (a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect()
}

fn main() {
    let mut target: Option<SocketAddr> = None;
    let mut soak = false;
    let mut sessions = 1000;
    let mut clients = 20;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let mut shape = SoakShape::default();
    let mut sources = None;
    let mut maildir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--target" => {
                target = Some(
                    args.next()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| usage("--target IP:PORT")),
                )
            }
            "--mode" => {
                soak = match args.next().as_deref() {
                    Some("bench") => false,
                    Some("soak") => true,
                    _ => usage("--mode is bench or soak"),
                }
            }
            "--sessions" => sessions = num(args.next(), "--sessions"),
            "--clients" => clients = num(args.next(), "--clients") as usize,
            "--seed" => seed = num(args.next(), "--seed"),
            "--max-size" => shape.max_size = num(args.next(), "--max-size") as usize,
            "--max-line" => shape.max_line = num(args.next(), "--max-line") as usize,
            "--sources" => {
                sources = Some(parse_sources(
                    &args.next().unwrap_or_else(|| usage("--sources FIRST-LAST")),
                ))
            }
            "--maildir" => {
                maildir = Some(PathBuf::from(
                    args.next().unwrap_or_else(|| usage("--maildir DIR")),
                ))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let target = target.unwrap_or_else(|| usage("--target is required"));
    let cfg = LoadConfig {
        target,
        sources: sources.unwrap_or_else(|| {
            parse_sources(&format!(
                "127.0.0.100-127.0.0.{}",
                99 + clients.clamp(1, 50)
            ))
        }),
        concurrency: clients,
        sessions,
        seed,
        shape: if soak {
            Shape::Soak(shape)
        } else {
            Shape::Bench
        },
        deadline: Duration::from_secs(120),
    };
    eprintln!(
        "smtp-load: {} sessions ({}), {clients} clients, seed {seed} (replay with --seed {seed})",
        sessions,
        if soak { "soak" } else { "bench mix" }
    );
    let mut check = maildir.as_ref().map(|d| MaildirCheck::new(d, &cfg));
    let report = load::run(&cfg, &|done| {
        if done.is_multiple_of(1000) {
            eprintln!("smtp-load: {done}/{sessions}");
        }
    });
    let mut failed = !report.failures().is_empty();
    println!("| outcome | sessions |\n|---|---|");
    for (k, n) in report.outcomes() {
        println!("| {k} | {n} |");
    }
    let q = |q: f64| {
        report
            .accept_quantile(q)
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or("-".into())
    };
    println!(
        "\nsessions/s {:.1}; connect → 250 p50 {} p99 {}; accepted messages {}; connections made again after smtpd's listen queue lost them {}; elapsed {:.1} s",
        report.sessions_per_sec(),
        q(0.5),
        q(0.99),
        report.accepted_messages(),
        report.reconnects(),
        report.elapsed.as_secs_f64()
    );
    if let Some(check) = check.as_mut() {
        let expected = report.expected_deliveries(seed);
        check.wait_complete(&expected, Duration::from_secs(30));
        let problems: Vec<String> = check
            .problems
            .iter()
            .cloned()
            .chain(check.compare(&expected))
            .collect();
        println!(
            "delivered files checked byte for byte: {} of {} expected; problems: {}",
            check.files,
            expected.values().sum::<usize>(),
            problems.len()
        );
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
        failed |= !problems.is_empty();
    }
    if failed {
        std::process::exit(1);
    }
}
