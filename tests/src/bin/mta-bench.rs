//! The MTA-level benchmark of issue 8: sessions per second and connect → final 250
//! through a real smtpd on loopback, driven by our load generator
//! ([`opensmtpd_e2e::load`], bench shape: 20 clients, one message per session, 80 % 1 KB,
//! 18 % 50 KB, 2 % 1 MB), for each filter setup, on each daemon. Prints a markdown table.
//! See `tests/BENCHMARKS.md` for the command and how to read the columns.
//!
//! ```text
//! cargo build --release -p filter-senderscore -p filter-greylist -p filter-rspamd
//! cargo build --release -p opensmtpd-filter-examples --example passthrough
//! cargo build --release -p opensmtpd-e2e   # mta-bench and floor-filter
//! cargo run --release -p opensmtpd-e2e --bin mta-bench -- [--daemon 6.8|7.4|both]
//!     [--sessions N] [--clients N] [--only name,name] [--go-dir DIR] [--seed S]
//!     [--rounds N] [--spool memory|disk]
//! ```
//!
//! `--rounds N` runs the chosen rows N times per daemon, every other round in reverse
//! order (A B, B A, A B, …), so that a drift of the machine during the run weighs on
//! both sides alike; the pass-through's share of limit-c's rate is then given per round
//! and as the median of the rounds.
//!
//! `--interleave N` goes further: in each round, the rigs of all the chosen rows are
//! started together and measured in turns of N sessions (A B, B A, …), each rig running
//! the same planned sessions. On this shared virtual machine, other guests take its
//! CPUs for minutes at a time (the `stolen` column); a row measured whole may fall
//! into such a stretch while its sibling does not, and the two then differ by
//! milliseconds for no reason of their own. In turns of a few seconds, both sides see
//! the same machine.
//!
//! Each rig keeps smtpd's spool, the maildir and rspamd's files in `/dev/shm` (a tmpfs)
//! unless `--spool disk` puts them in `/tmp`: smtpd writes every message to its spool
//! and the maildir, and on this machine's virtual disk that alone moved the MAIL …
//! DATA phase between 3 and 7 ms at p50 from one round to the next, whatever the
//! filters ([`opensmtpd_e2e::RigBase`]).
//!
//! Rows that scan with rspamd are measured against rspamd's own scan time of the same
//! messages, read from rspamd's log for the measured run, and against their scanning
//! floor (`scan-floor-…`: the matched floor with a minimal client asking rspamd), which
//! holds rspamd's answer as any client gets it, the HTTP handling rspamd's log leaves
//! out included. A second table splits each row's p50 into the phases of the session,
//! so that what a filter adds shows where it acts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use opensmtpd_e2e::chain::{self, ChainBuilder, ChainFilter, Profile, RspamdTransport};
use opensmtpd_e2e::load::{self, LoadConfig, RunReport, Shape};
use opensmtpd_e2e::rspamd::Rspamd;
use opensmtpd_e2e::{Daemon, DnsRecord, Listener, Rig, RigBase, workspace_root};

/// Where the Debian Go filters are (copied away at start: the package test of another
/// engineer replaces them for a while).
const DEBIAN_LIBEXEC: &str = "/usr/libexec/opensmtpd";
const LIMIT_C_SOURCE: &str = "/work/shared/bench/peers/limit-c/limit.c";
/// Sessions before the measured run (filters started, rspamd warm, caches filled).
const WARM_UP: u64 = 40;

/// One filter setup of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    NoFilter,
    LimitC,
    /// limit-c twice in a chain: smtpd's own cost of two filters.
    LimitC2,
    /// limit-c three times in a chain.
    LimitC3,
    Passthrough,
    OurChain3,
    OurChain2,
    GoChain2,
    /// The three-filter chain with only this filter of ours, limit-c in the other two
    /// places: what the one filter adds (a diagnostic row, not in the default table).
    OursOnly(ChainFilter),
    /// The floor of a chain: `floor-filter` in the place of each of its filters, with
    /// that filter's registrations (smtpd's cost of the events the chain asks for).
    MatchedFloor(Floored),
    /// The matched floor, with the stand-in for the rspamd filter asking rspamd about
    /// each message (`floor-filter --rspamd`: a minimal client, the same headers):
    /// smtpd's cost plus rspamd's answer as any client gets it.
    ScanFloor(Floored),
}

/// The chains that have a matched floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Floored {
    Ours3,
    Ours2,
    Go2,
}

impl Floored {
    const ALL: [Floored; 3] = [Floored::Ours3, Floored::Ours2, Floored::Go2];

    fn chain(self) -> Setup {
        match self {
            Floored::Ours3 => Setup::OurChain3,
            Floored::Ours2 => Setup::OurChain2,
            Floored::Go2 => Setup::GoChain2,
        }
    }
}

impl Setup {
    const ALL: [Setup; 14] = [
        Setup::NoFilter,
        Setup::LimitC,
        Setup::LimitC2,
        Setup::LimitC3,
        Setup::Passthrough,
        Setup::MatchedFloor(Floored::Ours3),
        Setup::ScanFloor(Floored::Ours3),
        Setup::OurChain3,
        Setup::MatchedFloor(Floored::Ours2),
        Setup::ScanFloor(Floored::Ours2),
        Setup::OurChain2,
        Setup::MatchedFloor(Floored::Go2),
        Setup::ScanFloor(Floored::Go2),
        Setup::GoChain2,
    ];

    /// Rows `--only` also takes.
    const DIAGNOSTIC: [Setup; 3] = [
        Setup::OursOnly(ChainFilter::Senderscore),
        Setup::OursOnly(ChainFilter::Greylist),
        Setup::OursOnly(ChainFilter::Rspamd),
    ];

    fn key(self) -> &'static str {
        match self {
            Setup::NoFilter => "none",
            Setup::LimitC => "limit-c",
            Setup::LimitC2 => "limit-c-2",
            Setup::LimitC3 => "limit-c-3",
            Setup::Passthrough => "passthrough",
            Setup::OurChain3 => "ours-3",
            Setup::OurChain2 => "ours-2",
            Setup::GoChain2 => "go-2",
            Setup::OursOnly(ChainFilter::Senderscore) => "only-senderscore",
            Setup::OursOnly(ChainFilter::Greylist) => "only-greylist",
            Setup::OursOnly(ChainFilter::Rspamd) => "only-rspamd",
            Setup::MatchedFloor(Floored::Ours3) => "floor-ours-3",
            Setup::MatchedFloor(Floored::Ours2) => "floor-ours-2",
            Setup::MatchedFloor(Floored::Go2) => "floor-go-2",
            Setup::ScanFloor(Floored::Ours3) => "scan-floor-ours-3",
            Setup::ScanFloor(Floored::Ours2) => "scan-floor-ours-2",
            Setup::ScanFloor(Floored::Go2) => "scan-floor-go-2",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Setup::NoFilter => "no filter",
            Setup::LimitC => "limit-c (C floor)",
            Setup::LimitC2 => "limit-c, limit-c (floor of 2 filters)",
            Setup::LimitC3 => "limit-c ×3 (floor of 3 filters)",
            Setup::Passthrough => "our pass-through",
            Setup::OurChain3 => "ours: senderscore, greylist, rspamd",
            Setup::OurChain2 => "ours: senderscore, rspamd",
            Setup::GoChain2 => "Debian Go: senderscore, rspamd",
            Setup::OursOnly(ChainFilter::Senderscore) => "ours: senderscore; limit-c ×2",
            Setup::OursOnly(ChainFilter::Greylist) => "ours: greylist; limit-c ×2",
            Setup::OursOnly(ChainFilter::Rspamd) => "ours: rspamd; limit-c ×2",
            Setup::MatchedFloor(Floored::Ours3) => "floor of ours-3 (same registrations)",
            Setup::MatchedFloor(Floored::Ours2) => "floor of ours-2 (same registrations)",
            Setup::MatchedFloor(Floored::Go2) => "floor of go-2 (same registrations)",
            Setup::ScanFloor(Floored::Ours3) => {
                "scanning floor of ours-3 (+ minimal rspamd client)"
            }
            Setup::ScanFloor(Floored::Ours2) => {
                "scanning floor of ours-2 (+ minimal rspamd client)"
            }
            Setup::ScanFloor(Floored::Go2) => "scanning floor of go-2 (+ minimal rspamd client)",
        }
    }

    /// How many filters smtpd runs each session through.
    fn hops(self) -> usize {
        match self {
            Setup::NoFilter => 0,
            Setup::LimitC | Setup::Passthrough => 1,
            Setup::LimitC2 | Setup::OurChain2 | Setup::GoChain2 => 2,
            Setup::LimitC3 | Setup::OurChain3 | Setup::OursOnly(_) => 3,
            Setup::MatchedFloor(f) | Setup::ScanFloor(f) => f.chain().hops(),
        }
    }

    /// The floor rows this row is measured against, the first one run taken: its
    /// matched floor, else as many limit-c filters as it has hops.
    fn floors(self) -> &'static [Setup] {
        match self {
            Setup::OurChain3 => &[Setup::MatchedFloor(Floored::Ours3), Setup::LimitC3],
            Setup::OurChain2 => &[Setup::MatchedFloor(Floored::Ours2), Setup::LimitC2],
            Setup::GoChain2 => &[Setup::MatchedFloor(Floored::Go2), Setup::LimitC2],
            Setup::Passthrough => &[Setup::LimitC],
            Setup::OursOnly(_) => &[Setup::LimitC3],
            Setup::NoFilter
            | Setup::LimitC
            | Setup::LimitC2
            | Setup::LimitC3
            | Setup::MatchedFloor(_) => &[],
            // its own floor: what the minimal client adds over rspamd's logged scan
            Setup::ScanFloor(Floored::Ours3) => &[Setup::MatchedFloor(Floored::Ours3)],
            Setup::ScanFloor(Floored::Ours2) => &[Setup::MatchedFloor(Floored::Ours2)],
            Setup::ScanFloor(Floored::Go2) => &[Setup::MatchedFloor(Floored::Go2)],
        }
    }

    fn uses_rspamd(self) -> bool {
        matches!(
            self,
            Setup::OurChain3
                | Setup::OurChain2
                | Setup::GoChain2
                | Setup::OursOnly(ChainFilter::Rspamd)
                | Setup::ScanFloor(_)
        )
    }

    /// The scanning floor of a chain row.
    fn scan_floor(self) -> Option<Setup> {
        Floored::ALL
            .into_iter()
            .find(|f| f.chain() == self)
            .map(Setup::ScanFloor)
    }
}

struct Options {
    daemons: Vec<Daemon>,
    sessions: u64,
    clients: usize,
    setups: Vec<Setup>,
    go_dir: Option<PathBuf>,
    seed: u64,
    rounds: usize,
    spool: RigBase,
    /// Measure each round's rows side by side, in turns of this many sessions.
    interleave: Option<u64>,
}

fn usage_text() -> String {
    format!(
        "usage: mta-bench [--daemon 6.8|7.4|both] [--sessions N] [--clients N] [--only {}] [--go-dir DIR] [--seed S] [--rounds N] [--interleave N] [--spool memory|disk]\n\n--interleave N starts every row of a round at once and measures them in turns of N sessions.\n--only also takes {}: the chain with one filter of ours, limit-c in the other places.",
        Setup::ALL.map(Setup::key).join(","),
        Setup::DIAGNOSTIC.map(Setup::key).join(",")
    )
}

fn usage(msg: &str) -> ! {
    eprintln!("mta-bench: {msg}\n{}", usage_text());
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut o = Options {
        daemons: vec![Daemon::Smtpd74, Daemon::Smtpd68],
        sessions: 1000,
        clients: 20,
        setups: Setup::ALL.to_vec(),
        go_dir: None,
        seed: 1,
        rounds: 1,
        spool: RigBase::Shm,
        interleave: None,
    };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--daemon" => {
                o.daemons = match args.next().as_deref() {
                    Some("6.8") => vec![Daemon::Smtpd68],
                    Some("7.4") => vec![Daemon::Smtpd74],
                    Some("both") => vec![Daemon::Smtpd74, Daemon::Smtpd68],
                    _ => usage("--daemon is 6.8, 7.4 or both"),
                }
            }
            "--sessions" => o.sessions = num(args.next(), "--sessions"),
            "--clients" => o.clients = num(args.next(), "--clients") as usize,
            "--seed" => o.seed = num(args.next(), "--seed"),
            "--rounds" => o.rounds = num(args.next(), "--rounds").max(1) as usize,
            "--interleave" => o.interleave = Some(num(args.next(), "--interleave").max(1)),
            "--spool" => {
                o.spool = match args.next().as_deref() {
                    Some("memory") => RigBase::Shm,
                    Some("disk") => RigBase::Tmp,
                    _ => usage("--spool is memory (/dev/shm) or disk (/tmp)"),
                }
            }
            "--go-dir" => {
                o.go_dir = Some(PathBuf::from(
                    args.next()
                        .unwrap_or_else(|| usage("--go-dir needs a path")),
                ))
            }
            "--only" => {
                let list = args.next().unwrap_or_else(|| usage("--only needs names"));
                o.setups = list
                    .split(',')
                    .map(|k| {
                        Setup::ALL
                            .into_iter()
                            .chain(Setup::DIAGNOSTIC)
                            .find(|s| s.key() == k)
                            .unwrap_or_else(|| usage(&format!("no setup {k:?}")))
                    })
                    .collect();
            }
            "-h" | "--help" => {
                println!("{}", usage_text());
                std::process::exit(0)
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

/// A directory every user can read (the filter user runs what is in it).
fn shared_temp_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/mta-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn md5(path: &Path) -> Option<String> {
    let out = Command::new("md5sum").arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Copies the Debian Go filters into `dir`, checking each against its package's md5sums
/// (the package test may have put our binaries in their place for a while).
fn copy_go_filters(from: &Path, dir: &Path) -> Result<(), String> {
    for (bin, pkg) in [
        ("filter-senderscore", "opensmtpd-filter-senderscore"),
        ("filter-rspamd", "opensmtpd-filter-rspamd"),
    ] {
        let src = from.join(bin);
        let sums = std::fs::read_to_string(format!("/var/lib/dpkg/info/{pkg}.md5sums"))
            .unwrap_or_default();
        let want = sums
            .lines()
            .find(|l| l.ends_with(&format!("usr/libexec/opensmtpd/{bin}")))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string);
        let got = md5(&src);
        if want.is_none() || want != got {
            return Err(format!(
                "{} is not the Debian Go {bin} (md5 {got:?}, {pkg} has {want:?}); pass --go-dir with a copy",
                src.display()
            ));
        }
        let dst = dir.join(bin);
        std::fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Builds limit-c the way the shared harness does (`gcc -O2 -Wall`).
fn build_limit_c(dir: &Path) -> Result<PathBuf, String> {
    let out = dir.join("limit-c");
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(LIMIT_C_SOURCE)
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !st.success() {
        return Err(format!("gcc failed on {LIMIT_C_SOURCE}"));
    }
    Ok(out)
}

/// The clients: 127.0.0.100 and up.
fn sources(n: usize) -> Vec<IpAddr> {
    (0..n.min(150))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + i as u8)))
        .collect()
}

/// VmHWM of the processes in smtpd's mount namespace whose executable is one of `bins`.
/// What one filter process used by the end of a row.
struct FilterUse {
    name: String,
    /// Peak resident size (VmHWM), KB.
    peak_kb: Option<u64>,
    /// CPU time, user + system, warm-up included.
    cpu_s: Option<f64>,
}

impl FilterUse {
    fn of(name: &str, pid: Option<u32>) -> FilterUse {
        FilterUse {
            name: name.to_string(),
            peak_kb: pid.and_then(chain::peak_rss_kb),
            cpu_s: pid.and_then(chain::cpu_seconds),
        }
    }
}

fn filter_peaks(rig: &Rig, bins: &[(String, PathBuf)]) -> Vec<FilterUse> {
    let Some(smtpd) = rig.smtpd_pid() else {
        return Vec::new();
    };
    // every process of each binary (a chain of limit-c runs it more than once)
    bins.iter()
        .flat_map(|(name, path)| {
            let exe = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let want = std::fs::canonicalize(path).unwrap_or(path.clone());
            let mut pids: Vec<u32> = load::processes_named_in_ns_of(smtpd, exe)
                .into_iter()
                .filter(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe")).ok().as_ref() == Some(&want)
                })
                .collect();
            pids.sort_unstable();
            if pids.is_empty() {
                vec![FilterUse::of(name, None)]
            } else {
                pids.into_iter()
                    .map(|p| FilterUse::of(name, Some(p)))
                    .collect()
            }
        })
        .collect()
}

/// One row of the table.
struct Row {
    daemon: Daemon,
    setup: Setup,
    /// Which of the `--rounds` this row belongs to (from 0).
    round: usize,
    report: Option<RunReport>,
    peaks: Vec<FilterUse>,
    /// rspamd's own scan time of the measured run's messages, p50 and p99 (its log).
    rspamd_scan: Option<(Duration, Duration)>,
    /// filter-rspamd's time per message from request to reply, p50 (its log).
    filter_scan: Option<Duration>,
    error: Option<String>,
    smtpd_alive: bool,
    /// CPU used during the measured run.
    cpu: Option<CpuUse>,
}

/// CPU seconds used during a measured run, by smtpd's processes (with the children
/// they reaped: deliveries), by the filters (every other process in smtpd's mount
/// namespace) and by this process (the load generator); and the run's wall time.
/// rspamd, dnsmasq and Redis are outside and not counted.
/// And the CPU time the hypervisor took from this virtual machine meanwhile
/// (`steal` in `/proc/stat`, all CPUs), when the kernel counts it.
#[derive(Clone, Copy)]
struct CpuUse {
    smtpd_s: f64,
    filters_s: f64,
    load_s: f64,
    wall_s: f64,
    sessions: usize,
    stolen_s: Option<f64>,
}

/// A row whose measured run lost more than this share of one CPU's time to the
/// hypervisor (other guests running on the same host) is *disturbed*: on this
/// machine such runs came out up to several milliseconds slower at p50, on whichever
/// row they fell, while runs below 3 % did not (tests/BENCHMARKS.md). Set before
/// looking at which rows it leaves out, and applied to every row of a round alike.
const STOLEN_SHARE_QUIET: f64 = 0.03;

impl CpuUse {
    /// This and `later` (another part of the same measured run) together.
    fn plus(&self, later: &CpuUse) -> CpuUse {
        CpuUse {
            smtpd_s: self.smtpd_s + later.smtpd_s,
            filters_s: self.filters_s + later.filters_s,
            load_s: self.load_s + later.load_s,
            wall_s: self.wall_s + later.wall_s,
            sessions: self.sessions + later.sessions,
            stolen_s: self.stolen_s.zip(later.stolen_s).map(|(a, b)| a + b),
        }
    }

    /// The share of one CPU's time the hypervisor took during the run.
    fn stolen_share(&self) -> Option<f64> {
        Some(self.stolen_s? / self.wall_s.max(1e-9))
    }
}

/// CPU seconds so far of smtpd's processes and of the filters, by PID.
struct CpuSnapshot {
    smtpd: HashMap<u32, f64>,
    filters: HashMap<u32, f64>,
    load_s: f64,
    stolen_s: Option<f64>,
}

/// The CPU time the hypervisor has taken from this machine since it booted, in
/// seconds: the `steal` column of `/proc/stat`'s `cpu` line (in clock ticks).
fn stolen_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

impl CpuSnapshot {
    fn take(rig: &Rig) -> Option<CpuSnapshot> {
        let smtpd_pid = rig.smtpd_pid()?;
        let (mut smtpd, mut filters) = (HashMap::new(), HashMap::new());
        for (pid, exe) in load::processes_in_ns_of(smtpd_pid) {
            let Some(secs) = chain::cpu_seconds_with_reaped(pid) else {
                continue;
            };
            if exe == "smtpd" {
                smtpd.insert(pid, secs);
            } else {
                filters.insert(pid, secs);
            }
        }
        Some(CpuSnapshot {
            smtpd,
            filters,
            load_s: own_cpu_seconds()?,
            stolen_s: stolen_seconds(),
        })
    }

    /// What was used from `self` to `later` (a process born in between counts whole):
    /// by smtpd, by the filters, by the load generator; and what the hypervisor took.
    fn used_until(&self, later: &CpuSnapshot) -> (f64, f64, f64, Option<f64>) {
        let grown = |before: &HashMap<u32, f64>, after: &HashMap<u32, f64>| -> f64 {
            after
                .iter()
                .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
                .sum()
        };
        (
            grown(&self.smtpd, &later.smtpd),
            grown(&self.filters, &later.filters),
            later.load_s - self.load_s,
            later.stolen_s.zip(self.stolen_s).map(|(a, b)| a - b),
        )
    }
}

/// This process's CPU time (user + system, every thread), in seconds.
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

impl Row {
    /// A row not measured yet.
    fn new(daemon: Daemon, setup: Setup, round: usize) -> Row {
        Row {
            daemon,
            setup,
            round,
            report: None,
            peaks: Vec::new(),
            rspamd_scan: None,
            filter_scan: None,
            error: None,
            smtpd_alive: false,
            cpu: None,
        }
    }

    /// rspamd's own scan p50 in this row; zero in a row without rspamd.
    fn scan_p50(&self) -> Option<Duration> {
        match self.rspamd_scan {
            Some((p50, _)) => Some(p50),
            None if !self.setup.uses_rspamd() => Some(Duration::ZERO),
            None => None,
        }
    }

    /// Runs sessions `range` of the measured run on `built`'s rig, adding them (and the
    /// CPU they used) to the row.
    fn add_block(&mut self, built: &Built, o: &Options, range: std::ops::Range<u64>) {
        let rig = built.rig();
        let cpu_before = CpuSnapshot::take(rig);
        let report = load::run_range(&bench_config(rig, o), range, &|_| {});
        if let (Some(before), Some(after)) = (cpu_before, CpuSnapshot::take(rig)) {
            let (smtpd_s, filters_s, load_s, stolen_s) = before.used_until(&after);
            let block = CpuUse {
                smtpd_s,
                filters_s,
                load_s,
                wall_s: report.elapsed.as_secs_f64(),
                sessions: report.results.len(),
                stolen_s,
            };
            self.cpu = Some(match self.cpu {
                Some(so_far) => so_far.plus(&block),
                None => block,
            });
        }
        self.report = Some(match self.report.take() {
            Some(so_far) => so_far.then(report),
            None => report,
        });
    }

    /// After the measured run: rspamd's scan times of its messages (and filter-rspamd's
    /// own, when it logs them), the filters' peaks, smtpd's health.
    fn finish(&mut self, built: &Built, marks: &Marks) {
        let rig = built.rig();
        if let (Some(r), Some(mark)) = (built.rspamd(self.setup), marks.rspamd) {
            let times = r.logged_scan_times(mark);
            self.rspamd_scan = load::quantile(times.clone(), 0.5).zip(load::quantile(times, 0.99));
        }
        let filter_times: Vec<Duration> = rig
            .log_lines(FILTER_RSPAMD_SCAN)
            .iter()
            .skip(marks.filter_rspamd)
            .filter_map(|l| opensmtpd_e2e::millis_after(l, " elapsed="))
            .collect();
        self.filter_scan = load::quantile(filter_times, 0.5);
        self.peaks = built.peaks();
        self.smtpd_alive = rig.smtpd_alive();
    }
}

/// Where the logs stood when the measured run began.
struct Marks {
    rspamd: Option<u64>,
    filter_rspamd: usize,
}

/// Warm-up sessions (not measured: filters started, rspamd warm, caches filled); where
/// the logs stand after them.
fn warm_up(built: &Built, setup: Setup, o: &Options) -> Marks {
    let rig = built.rig();
    let mut warm = bench_config(rig, o);
    warm.sessions = WARM_UP;
    warm.seed = o.seed.wrapping_add(1_000_000);
    let _ = load::run(&warm, &|_| {});
    Marks {
        rspamd: built.rspamd(setup).map(Rspamd::log_len),
        filter_rspamd: rig.log_lines(FILTER_RSPAMD_SCAN).len(),
    }
}

fn bench_config(rig: &Rig, o: &Options) -> LoadConfig {
    LoadConfig {
        target: rig.addr(Listener::Plain),
        sources: sources(o.clients),
        concurrency: o.clients,
        sessions: o.sessions,
        seed: o.seed,
        shape: Shape::Bench,
        deadline: Duration::from_secs(60),
    }
}

/// What starts filter-rspamd's log line of a scanned message.
const FILTER_RSPAMD_SCAN: &str = "filter-rspamd: info: session=";

/// A rig with a two-filter chain `senderscore, rspamd` of the given commands.
fn two_filter_rig(
    daemon: Daemon,
    o: &Options,
    senderscore: &str,
    rspamd: &str,
) -> Result<Rig, String> {
    let mut b = Rig::builder(daemon).dns_record(DnsRecord::Raw("local-ttl=300".into()));
    for ip in sources(o.clients) {
        if let IpAddr::V4(v4) = ip {
            b = b.dns_record(DnsRecord::senderscore(v4, 90));
        }
    }
    b.filter("senderscore", senderscore)
        .filter("rspamd", rspamd)
        .filter_chain("inbound", &["senderscore", "rspamd"])
        .map_err(|e| e.to_string())?
        .listen_plain("inbound")
        .start()
        .map_err(|e| e.to_string())
}

/// A setup's rig, started: what a row measures.
struct Built {
    target: Target,
    /// An rspamd of the row's own (a chain's is the chain's).
    rspamd: Option<Rspamd>,
    /// The filters whose peak RSS and CPU the row reports, by name and binary.
    bins: Vec<(String, PathBuf)>,
}

enum Target {
    Rig(Rig),
    /// The three-filter chain, and which of its filters are ours.
    Chain(Box<chain::Chain>, Vec<ChainFilter>),
}

impl Built {
    fn rig(&self) -> &Rig {
        match &self.target {
            Target::Rig(rig) => rig,
            Target::Chain(c, _) => c.rig(),
        }
    }

    /// The rspamd the row's filters ask, if they ask one.
    fn rspamd(&self, setup: Setup) -> Option<&Rspamd> {
        match &self.target {
            Target::Rig(_) => self.rspamd.as_ref(),
            Target::Chain(c, _) => c.rspamd().filter(|_| setup.uses_rspamd()),
        }
    }

    fn peaks(&self) -> Vec<FilterUse> {
        match &self.target {
            Target::Rig(rig) => filter_peaks(rig, &self.bins),
            Target::Chain(c, ours) => ours
                .iter()
                .map(|&f| FilterUse::of(f.binary(), c.filter_pid(f)))
                .collect(),
        }
    }
}

/// One row: its rig started, warmed up, measured, stopped.
fn run_setup(daemon: Daemon, setup: Setup, round: usize, o: &Options, tools: &Tools) -> Row {
    let mut row = Row::new(daemon, setup, round);
    match build(daemon, setup, o, tools) {
        Ok(built) => {
            let marks = warm_up(&built, setup, o);
            row.add_block(&built, o, 0..o.sessions);
            row.finish(&built, &marks);
        }
        Err(e) => row.error = Some(e),
    }
    row
}

/// The rows of one round with their rigs all started at once, measured in turns of
/// `block` sessions (the order of the setups reversed every other turn): a drift of
/// the machine, or another guest taking its CPUs for a while, then weighs on every row
/// of the round alike. Each rig runs the same planned sessions (same seed), block by
/// block, so the rows measure the same sessions.
fn run_interleaved(
    daemon: Daemon,
    round: usize,
    block: u64,
    o: &Options,
    tools: &Tools,
) -> Vec<Row> {
    let mut rows: Vec<Row> = o
        .setups
        .iter()
        .map(|&setup| Row::new(daemon, setup, round))
        .collect();
    let mut built: Vec<(usize, Built, Marks)> = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        match build(daemon, row.setup, o, tools) {
            Ok(b) => {
                let marks = warm_up(&b, row.setup, o);
                built.push((i, b, marks));
            }
            Err(e) => row.error = Some(e),
        }
    }
    let mut from = 0;
    let mut turn = 0;
    while from < o.sessions {
        let to = (from + block.max(1)).min(o.sessions);
        let mut order: Vec<&(usize, Built, Marks)> = built.iter().collect();
        if turn % 2 == 1 {
            order.reverse();
        }
        for (i, b, _) in order {
            rows[*i].add_block(b, o, from..to);
        }
        from = to;
        turn += 1;
    }
    for (i, b, marks) in &built {
        rows[*i].finish(b, marks);
    }
    rows
}

/// Starts `setup`'s rig on `daemon`.
fn build(daemon: Daemon, setup: Setup, o: &Options, tools: &Tools) -> Result<Built, String> {
    let release = |name: &str| workspace_root().join("target/release").join(name);
    let plain = |rig: Rig, rspamd: Option<Rspamd>, bins: Vec<(String, PathBuf)>| Built {
        target: Target::Rig(rig),
        rspamd,
        bins,
    };
    match setup {
        Setup::NoFilter => {
            let rig = Rig::builder(daemon)
                .listen_plain_unfiltered()
                .start()
                .map_err(|e| e.to_string())?;
            Ok(plain(rig, None, Vec::new()))
        }
        Setup::LimitC | Setup::Passthrough => {
            let bin = if setup == Setup::LimitC {
                tools.limit_c.clone()?
            } else {
                let p = release("examples/passthrough");
                if !p.is_file() {
                    return Err(format!(
                        "{} is not built: cargo build --release -p opensmtpd-filter-examples --example passthrough",
                        p.display()
                    ));
                }
                p
            };
            let rig = Rig::builder(daemon)
                .filter("f", &bin.display().to_string())
                .listen_plain("f")
                .start()
                .map_err(|e| e.to_string())?;
            Ok(plain(rig, None, vec![(setup.key().to_string(), bin)]))
        }
        Setup::LimitC2 | Setup::LimitC3 => {
            let bin = tools.limit_c.clone()?;
            let commands = vec![bin.display().to_string(); setup.hops()];
            let rig = chain_rig(daemon, &commands)?;
            Ok(plain(rig, None, vec![(setup.key().to_string(), bin)]))
        }
        Setup::MatchedFloor(kind) | Setup::ScanFloor(kind) => {
            let scanning = matches!(setup, Setup::ScanFloor(_));
            let rspamd = if scanning {
                Some(Rspamd::start()?)
            } else {
                None
            };
            let floor = release("floor-filter");
            if !floor.is_file() {
                return Err(format!(
                    "{} is not built: cargo build --release -p opensmtpd-e2e",
                    floor.display()
                ));
            }
            let mut commands = Vec::new();
            for (name, bin, args) in stand_ins(kind, tools)? {
                let regs = registrations(&bin, &args, daemon)?;
                let file =
                    tools
                        .dir
                        .join(format!("{}-{}-{name}.reg", setup.key(), daemon.protocol()));
                std::fs::write(&file, regs).map_err(|e| format!("{}: {e}", file.display()))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let mut command = format!("{} {}", floor.display(), file.display());
                if let (Some(r), "rspamd") = (&rspamd, name.as_str()) {
                    command.push_str(&format!(" --rspamd {}", r.addr()));
                }
                commands.push(command);
            }
            let rig = chain_rig(daemon, &commands)?;
            Ok(plain(rig, rspamd, vec![(setup.key().to_string(), floor)]))
        }
        Setup::OurChain3 | Setup::OursOnly(_) => {
            let mut b = ChainBuilder::new(daemon)
                .profile(Profile::Release)
                .pass_time(Duration::ZERO)
                .rspamd_transport(RspamdTransport::Tcp);
            for ip in sources(o.clients) {
                if let IpAddr::V4(v4) = ip {
                    b = b.score(v4, 90);
                }
            }
            let ours = match setup {
                Setup::OursOnly(f) => vec![f],
                _ => ChainFilter::ALL.to_vec(),
            };
            for f in ChainFilter::ALL {
                if !ours.contains(&f) {
                    b = b.substitute(f, &tools.limit_c.clone()?.display().to_string());
                }
            }
            let c = b.start().map_err(|e| e.to_string())?;
            if ours.contains(&ChainFilter::Greylist) {
                opensmtpd_e2e::soak::pass_greylist(&c, "127.0.0.100")?;
            }
            Ok(Built {
                target: Target::Chain(Box::new(c), ours),
                rspamd: None,
                bins: Vec::new(),
            })
        }
        Setup::OurChain2 | Setup::GoChain2 => {
            let rspamd = Rspamd::start()?;
            let (ss, rs) = if setup == Setup::GoChain2 {
                let dir = tools.go_dir.clone()?;
                (dir.join("filter-senderscore"), dir.join("filter-rspamd"))
            } else {
                (release("filter-senderscore"), release("filter-rspamd"))
            };
            let ss_cmd = if setup == Setup::GoChain2 {
                // the Go filter resolves through /etc/resolv.conf: the rig's DNS
                format!("{} -blockBelow 20 -scoreHeader", ss.display())
            } else {
                format!(
                    "{} -blockBelow 20 -scoreHeader --resolver {{dns}}:53",
                    ss.display()
                )
            };
            let rs_cmd = format!("{} -url {}", rs.display(), rspamd.url());
            let rig = two_filter_rig(daemon, o, &ss_cmd, &rs_cmd)?;
            Ok(plain(
                rig,
                Some(rspamd),
                vec![("senderscore".into(), ss), ("rspamd".into(), rs)],
            ))
        }
    }
}

struct Tools {
    /// Where limit-c, the Go filters' copies and the floors' registrations are.
    dir: PathBuf,
    limit_c: Result<PathBuf, String>,
    go_dir: Result<PathBuf, String>,
}

/// A rig whose plain listener runs a chain of these filter commands.
fn chain_rig(daemon: Daemon, commands: &[String]) -> Result<Rig, String> {
    let names: Vec<String> = (1..=commands.len()).map(|i| format!("f{i}")).collect();
    let mut b = Rig::builder(daemon);
    for (n, c) in names.iter().zip(commands) {
        b = b.filter(n, c);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    b.filter_chain("inbound", &names)
        .map_err(|e| e.to_string())?
        .listen_plain("inbound")
        .start()
        .map_err(|e| e.to_string())
}

/// The filters of the chain a matched floor stands for, in chain order: name, binary
/// and the options of the chain's row that decide what each registers.
fn stand_ins(kind: Floored, tools: &Tools) -> Result<Vec<(String, PathBuf, Vec<String>)>, String> {
    let release = |name: &str| workspace_root().join("target/release").join(name);
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let senderscore = args(&["-blockBelow", "20", "-scoreHeader"]);
    // nothing listens on port 1: the filters register before they use a backend
    let rspamd = args(&["-url", "http://127.0.0.1:1"]);
    Ok(match kind {
        Floored::Ours3 | Floored::Ours2 => {
            let mut v = vec![(
                "senderscore".to_string(),
                release("filter-senderscore"),
                senderscore,
            )];
            if kind == Floored::Ours3 {
                v.push((
                    "greylist".into(),
                    release("filter-greylist"),
                    args(&["-passtime", "0", "--store", "redis://127.0.0.1:1/0"]),
                ));
            }
            v.push(("rspamd".into(), release("filter-rspamd"), rspamd));
            v
        }
        Floored::Go2 => {
            let dir = tools.go_dir.clone()?;
            vec![
                (
                    "senderscore".into(),
                    dir.join("filter-senderscore"),
                    senderscore,
                ),
                ("rspamd".into(), dir.join("filter-rspamd"), rspamd),
            ]
        }
    })
}

/// The `register|…` lines `bin` writes after the configuration `daemon` sends
/// (`register|ready` last), read from the filter run on its own for the purpose.
fn registrations(bin: &Path, args: &[String], daemon: Daemon) -> Result<Vec<u8>, String> {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let version = match daemon {
        Daemon::Smtpd68 => "6.8.0p2",
        Daemon::Smtpd74 => "7.4.0-portable",
    };
    let handshake = format!(
        "config|smtpd-version|{version}\nconfig|smtp-session-timeout|300\nconfig|subsystem|smtp-in\nconfig|admd|mx.lab.test\nconfig|ready\n"
    );
    // stdin stays open until the end: a filter may stop at its end before it registers
    let mut stdin = child.stdin.take();
    let written = stdin.as_mut().map(|s| s.write_all(handshake.as_bytes()));
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(out) = stdout {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let ready = line == "register|ready";
                lines.push(line);
                if ready {
                    break;
                }
            }
        }
        let _ = tx.send(lines);
    });
    let lines = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let lines = lines.map_err(|_| format!("{}: no register|ready within 10 s", bin.display()))?;
    if !matches!(written, Some(Ok(())))
        || lines.last().map(String::as_str) != Some("register|ready")
    {
        return Err(format!(
            "{}: did not register (it wrote {lines:?})",
            bin.display()
        ));
    }
    if let Some(odd) = lines.iter().find(|l| !l.starts_with("register|")) {
        return Err(format!(
            "{}: wrote {odd:?} before register|ready",
            bin.display()
        ));
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    Ok(out)
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .unwrap_or("-".into())
}

/// Milliseconds to two decimals, for figures well under a millisecond apart.
fn ms2(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print_table(rows: &[Row], o: &Options) {
    println!(
        "\n{} sessions per row after {WARM_UP} warm-up sessions, {} concurrent clients from 127.0.0.100+, one message per session: 80 % 1 KB, 18 % 50 KB, 2 % 1 MB (seed {}); smtpd's spool and maildir in {}.\n",
        o.sessions,
        o.clients,
        o.seed,
        match o.spool {
            RigBase::Shm => "/dev/shm (memory)",
            RigBase::Tmp => "/tmp (disk)",
        }
    );
    println!(
        "| daemon | filters | sessions/s | vs none | connect→250 p50 ms | p99 ms | not accepted | filter peak RSS (VmHWM) KB / CPU s | rspamd's scan p50 / p99 ms (filter-rspamd's request p50) | p50 − none − scan ms | p50 − floor (− scan) ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut none_rate: HashMap<String, (f64, Option<Duration>)> = HashMap::new();
    for r in rows {
        if r.setup == Setup::NoFilter
            && let Some(rep) = &r.report
        {
            none_rate.insert(
                r.daemon.to_string(),
                (rep.sessions_per_sec(), rep.accept_quantile(0.5)),
            );
        }
    }
    for r in rows {
        let Some(rep) = &r.report else {
            println!(
                "| {} | {} | not run: {} | | | | | | | | |",
                r.daemon,
                r.setup.describe(),
                r.error.as_deref().unwrap_or("?")
            );
            continue;
        };
        let rate = rep.sessions_per_sec();
        let none = none_rate.get(&r.daemon.to_string());
        let vs = none
            .map(|(n, _)| format!("{:.1} %", rate / n * 100.0))
            .unwrap_or("-".into());
        let not_accepted = rep
            .results
            .iter()
            .filter(|x| x.first_accept.is_none())
            .count();
        let peaks = r
            .peaks
            .iter()
            .map(|u| {
                let kb = u.peak_kb.map_or("-".into(), |k| k.to_string());
                let cpu = u.cpu_s.map_or("-".into(), |c| format!("{c:.2}"));
                format!("{} {kb} / {cpu}", u.name)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut scan = r
            .rspamd_scan
            .map(|(a, b)| format!("{} / {}", ms2(a), ms2(b)))
            .unwrap_or("-".into());
        if let Some(f) = r.filter_scan {
            scan.push_str(&format!(" ({})", ms2(f)));
        }
        let overhead = match (r.scan_p50(), rep.accept_quantile(0.5), none) {
            (Some(scan), Some(p50), Some((_, Some(none_p50)))) if r.setup.hops() > 0 => {
                format!(
                    "{:+.1}",
                    (p50.as_secs_f64() - none_p50.as_secs_f64() - scan.as_secs_f64()) * 1000.0
                )
            }
            _ => "-".into(),
        };
        let over_floor = over_floor_ms(rows, r).map_or("-".into(), |v| format!("{v:+.2}"));
        let mut note = String::new();
        if o.rounds > 1 {
            note.push_str(&format!(" (round {})", r.round + 1));
        }
        if !r.smtpd_alive {
            note.push_str(" (smtpd died)");
        }
        if let Some(e) = &r.error {
            note.push_str(&format!(" ({e})"));
        }
        println!(
            "| {} | {}{note} | {:.1} | {vs} | {} | {} | {not_accepted} | {} | {scan} | {overhead} | {over_floor} |",
            r.daemon,
            r.setup.describe(),
            rate,
            ms(rep.accept_quantile(0.5)),
            ms(rep.accept_quantile(0.99)),
            if peaks.is_empty() { "-".into() } else { peaks },
        );
    }
    print_phases(rows);
    print_cpu(rows);
    for &daemon in &o.daemons {
        // per round: whether it was quiet, and a's rate over b's in %
        let ratios = |a: Setup, b: Setup| -> Vec<(bool, f64)> {
            (0..o.rounds)
                .filter_map(|round| {
                    let row = |setup: Setup| {
                        rows.iter().find(|r| {
                            r.daemon == daemon
                                && r.setup == setup
                                && r.round == round
                                && r.report.is_some()
                        })
                    };
                    let (ra, rb) = (row(a)?, row(b)?);
                    let rate = |r: &Row| r.report.as_ref().map(RunReport::sessions_per_sec);
                    Some((quiet_round(rows, ra), rate(ra)? / rate(rb)? * 100.0))
                })
                .collect()
        };
        let values = |all: &[(bool, f64)]| all.iter().map(|(_, v)| *v).collect::<Vec<_>>();
        let pt = ratios(Setup::Passthrough, Setup::LimitC);
        if !pt.is_empty() {
            println!(
                "\n{daemon}: our pass-through runs at {} of limit-c's session rate (target: at least 97 %).{}",
                describe_ratios(&values(&pt)),
                quiet_rounds_line(&pt, describe_ratios)
            );
            let per_session = |setup: Setup, part: fn(&CpuUse) -> f64| -> Vec<f64> {
                rows.iter()
                    .filter(|r| r.daemon == daemon && r.setup == setup)
                    .filter_map(|r| r.cpu.as_ref())
                    .map(|c| part(c) / c.sessions.max(1) as f64 * 1000.0)
                    .collect()
            };
            let cpu_line = |what: &str, part: fn(&CpuUse) -> f64| {
                let (ours, floor) = (
                    per_session(Setup::Passthrough, part),
                    per_session(Setup::LimitC, part),
                );
                if !ours.is_empty() && !floor.is_empty() {
                    println!(
                        "{daemon}: CPU per session of {what}: {:.3} ms with our pass-through, {:.3} ms with limit-c (medians of the rounds).",
                        median(&ours),
                        median(&floor)
                    );
                }
            };
            cpu_line("smtpd", |c| c.smtpd_s);
            cpu_line("the filter", |c| c.filters_s);
            cpu_line("smtpd, the filter and the load generator", |c| {
                c.smtpd_s + c.filters_s + c.load_s
            });
        }
        let chain = ratios(Setup::OurChain2, Setup::GoChain2);
        if !chain.is_empty() {
            println!(
                "{daemon}: our senderscore+rspamd chain runs at {} of the Go chain's session rate.{}",
                describe_ratios(&values(&chain)),
                quiet_rounds_line(&chain, describe_ratios)
            );
        }
        for setup in o.setups.iter().filter(|s| s.uses_rspamd()) {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.daemon == daemon && r.setup == *setup)
                .collect();
            // per round: whether it was quiet, and the figure
            let each = |figure: fn(&[Row], &Row) -> Option<f64>| -> Vec<(bool, f64)> {
                mine.iter()
                    .filter_map(|r| Some((quiet_round(rows, r), figure(rows, r)?)))
                    .collect()
            };
            let over_floor = each(over_floor_ms);
            let floor = mine.iter().find_map(|r| floor_row(rows, r));
            if let (false, Some(floor)) = (over_floor.is_empty(), floor) {
                let note = if matches!(setup, Setup::ScanFloor(_)) {
                    "a minimal client's overhead: rspamd's HTTP handling and the wake-ups its log leaves out"
                } else {
                    "target for ours: at most 1 ms"
                };
                println!(
                    "{daemon}: {} adds {} at p50 over {} and rspamd's own logged scan ({note}).{}",
                    setup.describe(),
                    describe_ms(&values(&over_floor)),
                    floor.setup.describe(),
                    quiet_rounds_line(&over_floor, describe_ms)
                );
            }
            let over_scan_floor = each(over_scan_floor_ms);
            if let (false, Some(scan_floor)) = (over_scan_floor.is_empty(), setup.scan_floor()) {
                println!(
                    "{daemon}: {} adds {} at p50 over {}, whose p50 holds rspamd's answer as a minimal client gets it.{}",
                    setup.describe(),
                    describe_ms(&values(&over_scan_floor)),
                    scan_floor.describe(),
                    quiet_rounds_line(&over_scan_floor, describe_ms)
                );
                let net = each(over_scan_floor_net_ms);
                println!(
                    "{daemon}: {} adds {} at p50 over {}, each less its own rspamd's logged scan p50 (each row has an rspamd of its own; this takes out how fast that one happened to be).{}",
                    setup.describe(),
                    describe_ms(&values(&net)),
                    scan_floor.describe(),
                    quiet_rounds_line(&net, describe_ms)
                );
            }
        }
    }
    for r in rows {
        if let Some(rep) = &r.report {
            let other: Vec<String> = rep
                .outcomes()
                .into_iter()
                .filter(|(k, _)| k != "completed")
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !other.is_empty() || rep.reconnects() > 0 {
                println!(
                    "\n{} {}: {} (connections made again after smtpd's listen queue lost them: {})",
                    r.daemon,
                    r.setup.key(),
                    other.join(", "),
                    rep.reconnects()
                );
            }
        }
    }
}

/// Where the CPU goes during each row's measured run, per session.
fn print_cpu(rows: &[Row]) {
    println!(
        "\nCPU per session in ms during the measured run (smtpd: its processes and the deliveries they reaped; filters: every other process in smtpd's mount namespace; load: this benchmark's clients; rspamd, dnsmasq and Redis not counted). Cores busy: the three together over wall time, of the machine's {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Stolen: the share of one CPU's time the hypervisor gave other guests during the run; over {:.0} % the row is disturbed.\n",
        STOLEN_SHARE_QUIET * 100.0
    );
    println!("| daemon | filters | smtpd | filters | load | together | cores busy | stolen |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let Some(c) = &r.cpu else { continue };
        let per = |secs: f64| secs / c.sessions.max(1) as f64 * 1000.0;
        let together = c.smtpd_s + c.filters_s + c.load_s;
        let stolen = match c.stolen_share() {
            Some(share) if share > STOLEN_SHARE_QUIET => {
                format!("{:.1} % (disturbed)", share * 100.0)
            }
            Some(share) => format!("{:.1} %", share * 100.0),
            None => "-".into(),
        };
        println!(
            "| {} | {} (round {}) | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {stolen} |",
            r.daemon,
            r.setup.describe(),
            r.round + 1,
            per(c.smtpd_s),
            per(c.filters_s),
            per(c.load_s),
            per(together),
            together / c.wall_s.max(1e-9)
        );
    }
}

/// Whether the hypervisor took at most [`STOLEN_SHARE_QUIET`] of a CPU during the
/// measured run of every row of `r`'s round (same daemon): a round that can be
/// compared. Unknown (no `steal` count) counts as quiet.
fn quiet_round(rows: &[Row], r: &Row) -> bool {
    rows.iter()
        .filter(|x| x.daemon == r.daemon && x.round == r.round)
        .filter_map(|x| x.cpu.as_ref()?.stolen_share())
        .all(|share| share <= STOLEN_SHARE_QUIET)
}

/// ` In the N quiet rounds of M (…): <describe>.` when some rounds were disturbed and
/// at least two were not; empty otherwise.
fn quiet_rounds_line(all: &[(bool, f64)], describe: fn(&[f64]) -> String) -> String {
    let quiet: Vec<f64> = all.iter().filter(|(q, _)| *q).map(|(_, v)| *v).collect();
    if quiet.len() == all.len() || quiet.len() < 2 {
        return String::new();
    }
    format!(
        " In the {} of {} rounds where the hypervisor took at most {:.0} % of a CPU during every row: {}.",
        quiet.len(),
        all.len(),
        STOLEN_SHARE_QUIET * 100.0,
        describe(&quiet)
    )
}

/// Where each row's connect → 250 goes: the p50 of each phase of the session, and how
/// much more it is than in the row's floor (same daemon and round).
fn print_phases(rows: &[Row]) {
    println!(
        "\nWhere the time goes: p50 of each phase in ms (in brackets: minus the same phase in the row's floor, same round).\n"
    );
    println!(
        "| daemon | filters | connect → 220 | EHLO → 250 | MAIL, RCPT, DATA → 354 | body → 250 |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let Some(rep) = &r.report else { continue };
        let phases = rep.phase_quantiles(0.5);
        let floor = floor_row(rows, r)
            .and_then(|x| x.report.as_ref())
            .map(|x| x.phase_quantiles(0.5));
        let cells: Vec<String> = (0..4)
            .map(|i| {
                let own = phases[i].map_or("-".into(), ms2);
                match (phases[i], floor.and_then(|f| f[i])) {
                    (Some(p), Some(f)) => format!(
                        "{own} ({:+.2})",
                        (p.as_secs_f64() - f.as_secs_f64()) * 1000.0
                    ),
                    _ => own,
                }
            })
            .collect();
        println!(
            "| {} | {} (round {}) | {} |",
            r.daemon,
            r.setup.describe(),
            r.round + 1,
            cells.join(" | ")
        );
    }
}

/// The floor row `r` is measured against: the first of [`Setup::floors`] run on the
/// same daemon in the same round.
fn floor_row<'a>(rows: &'a [Row], r: &Row) -> Option<&'a Row> {
    r.setup
        .floors()
        .iter()
        .find_map(|&floor| sibling(rows, r, floor))
}

/// The row of `setup` run on the same daemon in the same round as `r`, if it measured.
fn sibling<'a>(rows: &'a [Row], r: &Row, setup: Setup) -> Option<&'a Row> {
    rows.iter().find(|x| {
        x.daemon == r.daemon && x.setup == setup && x.round == r.round && x.report.is_some()
    })
}

/// `r`'s p50 minus `floor`'s, in ms.
fn p50_over(r: &Row, floor: &Row) -> Option<f64> {
    let floor_p50 = floor.report.as_ref()?.accept_quantile(0.5)?;
    let p50 = r.report.as_ref()?.accept_quantile(0.5)?;
    Some((p50.as_secs_f64() - floor_p50.as_secs_f64()) * 1000.0)
}

/// The row's p50 minus its floor's p50 (same daemon and round) minus rspamd's own scan
/// p50 in this row, in ms: what the row's filters add over smtpd's own filter layer and
/// over the scan. `None` for the floor rows themselves.
fn over_floor_ms(rows: &[Row], r: &Row) -> Option<f64> {
    Some(p50_over(r, floor_row(rows, r)?)? - r.scan_p50()?.as_secs_f64() * 1000.0)
}

/// The row's p50 minus its scanning floor's p50 (same daemon and round), in ms: what
/// the row's filters add over smtpd's own filter layer and a minimal rspamd client.
fn over_scan_floor_ms(rows: &[Row], r: &Row) -> Option<f64> {
    p50_over(r, sibling(rows, r, r.setup.scan_floor()?)?)
}

/// As [`over_scan_floor_ms`], each row's p50 less its own rspamd's logged scan p50:
/// what the row's filters add over a minimal client asking an rspamd as fast as theirs.
fn over_scan_floor_net_ms(rows: &[Row], r: &Row) -> Option<f64> {
    let floor = sibling(rows, r, r.setup.scan_floor()?)?;
    let scans = r.scan_p50()?.as_secs_f64() - floor.scan_p50()?.as_secs_f64();
    Some(p50_over(r, floor)? - scans * 1000.0)
}

/// `+0.42 ms`, or with several rounds `median +0.50 ms (rounds: +0.42, +0.58)`.
fn describe_ms(each: &[f64]) -> String {
    if let [one] = each {
        return format!("{one:+.2} ms");
    }
    let listed: Vec<String> = each.iter().map(|v| format!("{v:+.2}")).collect();
    let (mean, half_width) = mean_and_interval(each);
    format!(
        "median {:+.2} ms, mean {mean:+.2} ms ± {half_width:.2} (95 % interval of the mean) (rounds: {})",
        median(each),
        listed.join(", ")
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// `95.4 %`, or with several rounds `median 96.1 %, mean 96.2 % ± 1.3 (rounds: 95.4,
/// 97.0, 96.1)`: the ± is the 95 % confidence interval of the mean (Student's t), which
/// says how far the rounds' spread leaves the true ratio open.
fn describe_ratios(ratios: &[f64]) -> String {
    if let [one] = ratios {
        return format!("{one:.1} %");
    }
    let median = median(ratios);
    let (mean, half_width) = mean_and_interval(ratios);
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.1}")).collect();
    format!(
        "median {median:.1} %, mean {mean:.1} % ± {half_width:.1} (95 % interval of the mean) (rounds: {})",
        each.join(", ")
    )
}

/// The mean of `values` (at least two) and the half-width of its 95 % confidence
/// interval, from Student's t with n − 1 degrees of freedom.
fn mean_and_interval(values: &[f64]) -> (f64, f64) {
    // two-sided 95 % quantiles of Student's t for 1 to 30 degrees of freedom
    const T95: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let t = T95.get(values.len() - 2).copied().unwrap_or(1.960);
    (mean, t * (variance / n).sqrt())
}

fn main() {
    let o = parse_args();
    opensmtpd_e2e::set_rig_base(o.spool);
    let tmp = shared_temp_dir("tools");
    // copy the Go filters first, before anything else can replace them
    let go_dir = match &o.go_dir {
        Some(d) => copy_go_filters(d, &tmp),
        None => copy_go_filters(Path::new(DEBIAN_LIBEXEC), &tmp),
    }
    .map(|()| tmp.clone());
    let tools = Tools {
        dir: tmp.clone(),
        limit_c: build_limit_c(&tmp),
        go_dir,
    };
    if let Err(e) = &tools.go_dir {
        eprintln!("mta-bench: Go filters: {e}");
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for &daemon in &o.daemons {
        for round in 0..o.rounds {
            if let Some(block) = o.interleave {
                eprintln!(
                    "mta-bench: {daemon} round {} interleaved ({:.0} s so far)",
                    round + 1,
                    started.elapsed().as_secs_f64()
                );
                for row in run_interleaved(daemon, round, block, &o, &tools) {
                    if let Some(e) = &row.error {
                        eprintln!("mta-bench: {daemon} {}: {e}", row.setup.key());
                    }
                    rows.push(row);
                }
                continue;
            }
            let mut order = o.setups.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for setup in order {
                eprintln!(
                    "mta-bench: {daemon} {} round {} ({:.0} s so far)",
                    setup.key(),
                    round + 1,
                    started.elapsed().as_secs_f64()
                );
                let row = run_setup(daemon, setup, round, &o, &tools);
                if let Some(e) = &row.error {
                    eprintln!("mta-bench: {daemon} {}: {e}", setup.key());
                }
                rows.push(row);
            }
        }
    }
    print_table(&rows, &o);
    println!("\nwhole run: {:.0} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_rounds_are_summed_up_apart_only_when_some_were_disturbed() {
        let all_quiet = [(true, 1.0), (true, 2.0), (true, 3.0)];
        assert_eq!(quiet_rounds_line(&all_quiet, describe_ms), "");
        // one quiet round left: nothing to sum up
        let one_quiet = [(false, 1.0), (true, 2.0), (false, 3.0)];
        assert_eq!(quiet_rounds_line(&one_quiet, describe_ms), "");
        let mixed = [(true, 1.0), (false, 9.0), (true, 3.0)];
        let line = quiet_rounds_line(&mixed, describe_ms);
        assert!(line.starts_with(" In the 2 of 3 rounds where the hypervisor took at most 3 % of a CPU during every row: median +2.00 ms"), "{line}");
        assert!(line.contains("(rounds: +1.00, +3.00)"), "{line}");
    }

    #[test]
    fn the_stolen_time_is_read_from_proc_stat() {
        // every kernel since 2.6.11 has the column; it only grows
        let before = stolen_seconds().expect("/proc/stat's steal column");
        let after = stolen_seconds().expect("/proc/stat's steal column");
        assert!(before >= 0.0 && after >= before);
    }

    #[test]
    fn the_interval_of_a_mean_follows_students_t() {
        // 1..=5: mean 3, sample variance 2.5, standard error √0.5, t(4) = 2.776
        let (mean, half) = mean_and_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((mean - 3.0).abs() < 1e-12);
        assert!((half - 2.776 * 0.5f64.sqrt()).abs() < 1e-9);
        // no spread, no interval
        assert_eq!(mean_and_interval(&[97.0, 97.0, 97.0]), (97.0, 0.0));
        // beyond the table, the normal quantile
        let many = [1.0, 3.0].repeat(20);
        let (_, half) = mean_and_interval(&many);
        let sd = (40.0f64 / 39.0).sqrt();
        assert!((half - 1.960 * sd / 40f64.sqrt()).abs() < 1e-9);
    }
}
