//! The long soak through the three-filter chain, started by hand:
//!
//! ```text
//! cargo build --release -p filter-senderscore -p filter-greylist -p filter-rspamd
//! cargo run --release -p opensmtpd-e2e --bin soak -- --daemon 7.4 --sessions 100000
//! ```
//!
//! Options: `--daemon 6.8|7.4` (required), `--sessions N` (100000), `--seed S` (from the
//! clock, printed), `--clients N` (50), `--max-size BYTES` (5 MiB), `--warm-up N` (1000),
//! `--debug` (debug filter binaries). Prints progress, then the summary table; exits 1
//! when a check fails. Runs as root (the rig).

use opensmtpd_e2e::Daemon;
use opensmtpd_e2e::chain::Profile;
use opensmtpd_e2e::soak::{SoakOptions, run_soak};

const USAGE: &str = "usage: soak --daemon 6.8|7.4 [--sessions N] [--seed S] [--clients N] [--max-size BYTES] [--warm-up N] [--debug]";

fn usage(msg: &str) -> ! {
    eprintln!("soak: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut daemon = None;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let mut opts = SoakOptions::new(Daemon::Smtpd74, 100_000, seed);
    opts.progress_every = 1000;
    let num = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--daemon" => {
                daemon = Some(match args.next().as_deref() {
                    Some("6.8") => Daemon::Smtpd68,
                    Some("7.4") => Daemon::Smtpd74,
                    _ => usage("--daemon is 6.8 or 7.4"),
                })
            }
            "--sessions" => opts.sessions = num(args.next(), "--sessions"),
            "--seed" => opts.seed = num(args.next(), "--seed"),
            "--clients" => opts.concurrency = num(args.next(), "--clients") as usize,
            "--max-size" => opts.shape.max_size = num(args.next(), "--max-size") as usize,
            "--warm-up" => opts.warm_up = num(args.next(), "--warm-up"),
            "--debug" => opts.profile = Profile::Debug,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    opts.daemon = daemon.unwrap_or_else(|| usage("--daemon is required"));
    opts.shape.max_line = opts.shape.max_line.min(opts.daemon.max_filtered_line());
    eprintln!(
        "soak on {}: seed {} (replay with --seed {}), {} sessions",
        opts.daemon, opts.seed, opts.seed, opts.sessions
    );
    match run_soak(&opts) {
        Ok(report) => {
            print!("{}", report.table());
            if !report.problems().is_empty() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}
