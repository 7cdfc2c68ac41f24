//! The soak through the three-filter chain: [`crate::load`]'s random sessions from 50
//! concurrent clients against one smtpd running `filter "inbound" chain { "senderscore",
//! "greylist", "rspamd" }` ([`crate::chain`]), then the checks of issue 8:
//! - smtpd runs and never lost a filter (no "lost processor" / "exited abnormally"
//!   lines), and each filter is still the process it was at the start;
//! - every session got its answers within its deadline (no [`load::Outcome::Failed`]);
//! - every accepted message arrived once per accepted recipient, body byte-identical,
//!   and nothing that was not accepted arrived;
//! - each filter's VmRSS at the end is within 10 % of its VmRSS after the warm-up, both read
//!   with no session open (the warm-up runs to its end before the rest starts).
//!
//! How the chain lets the soak's clients through, and why:
//! - senderscore: every source address (127.0.0.100–149) is served a score of 90 (above
//!   `-blockBelow 20`), so it looks each client up and adds `X-SenderScore`, never
//!   refusing;
//! - greylist: pass time 0 and one warm-up session before the load. The warm-up's first
//!   RCPT is greylisted (which proves the filter is live), its retry passes and
//!   whitelists the clients' network (127.0.0.0/24). From then on every RCPT of the soak
//!   still takes the filter's whole path (SPF check of the sender over the rig's DNS, a
//!   Redis transaction), which an allowlist (`--wl-ip`) would skip, and is accepted;
//! - rspamd scans every message (the soak's bodies score far below `reject`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{Chain, ChainBuilder, ChainFilter, Profile, rss_kb};
use crate::load::{self, LoadConfig, MaildirCheck, Shape, SoakShape};
use crate::{Daemon, Listener, RigError, SmtpClient};

/// The greatest growth of a filter's VmRSS from the warm-up to the end.
pub const MAX_RSS_GROWTH: f64 = 0.10;

/// How long the load pauses before a memory reading: smtpd tells the filters that the
/// last sessions ended (and they let go of them) just after the clients saw them end.
const QUIET_BEFORE_READING: Duration = Duration::from_secs(2);

/// The soak's client addresses: 127.0.0.100 … 127.0.0.(100+n-1).
pub fn sources(n: usize) -> Vec<IpAddr> {
    (0..n.min(150))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + i as u8)))
        .collect()
}

/// What a soak run does.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// The daemon.
    pub daemon: Daemon,
    /// Debug (tests) or release (the long run) filter binaries.
    pub profile: Profile,
    /// Sessions in all.
    pub sessions: u64,
    /// Concurrent clients (50).
    pub concurrency: usize,
    /// The seed (printed, so that a run can be replayed).
    pub seed: u64,
    /// The session shapes.
    pub shape: SoakShape,
    /// After this many sessions the filters' VmRSS is taken as the reference.
    pub warm_up: u64,
    /// The longest a session may take beyond its planned stall.
    pub deadline: Duration,
    /// Print a progress line every this many sessions (0: never).
    pub progress_every: u64,
    /// Sample the filters' VmRSS every this many sessions (0: never), to tell a plateau
    /// from steady growth.
    pub rss_every: u64,
    /// filter-rspamd's `--spool-above` (its default, 1 MiB, when `None`). Messages under
    /// it are held in RAM while rspamd scans them; with the short run's small bodies
    /// none would be spooled at all. A small threshold spools most of them, so the
    /// spool is exercised under load.
    pub rspamd_spool_above: Option<String>,
    /// Growth of VmRSS (KB) tolerated beyond [`MAX_RSS_GROWTH`] (0 in the long run).
    /// A short run has seen fewer of the busiest moments than a long one by its
    /// reference point: a connection more in a pool, a table grown for a larger burst.
    /// The slack stands for those, so the check still catches a leak of a few KB per
    /// session without failing on the run's luck.
    pub rss_slack_kb: u64,
}

impl SoakOptions {
    /// The defaults of the long run: 50 clients, 5 MB, reference after 1000 sessions.
    pub fn new(daemon: Daemon, sessions: u64, seed: u64) -> SoakOptions {
        SoakOptions {
            daemon,
            profile: Profile::Release,
            sessions,
            concurrency: 50,
            seed,
            shape: SoakShape::default(),
            warm_up: 1000,
            deadline: Duration::from_secs(90),
            progress_every: 0,
            rss_every: 1000,
            rspamd_spool_above: None,
            rss_slack_kb: 0,
        }
    }
}

/// One filter's memory over the run.
#[derive(Clone, Debug)]
pub struct FilterMemory {
    /// Which filter.
    pub filter: ChainFilter,
    /// Its PID at the start.
    pub pid: u32,
    /// Its PID at the end (the same, or it was replaced: a failure).
    pub pid_end: Option<u32>,
    /// VmRSS (KB) after the warm-up.
    pub rss_warm: Option<u64>,
    /// VmRSS (KB) at the end.
    pub rss_end: Option<u64>,
    /// VmHWM (KB) at the end.
    pub peak: Option<u64>,
}

impl FilterMemory {
    /// `rss_end / rss_warm - 1`.
    pub fn growth(&self) -> Option<f64> {
        Some(self.rss_end? as f64 / self.rss_warm?.max(1) as f64 - 1.0)
    }
}

/// What a soak saw.
#[derive(Debug)]
pub struct SoakReport {
    /// The options it ran with.
    pub options: SoakOptions,
    /// The load's results.
    pub run: load::RunReport,
    /// Sessions per outcome.
    pub outcomes: Vec<(String, u64)>,
    /// Messages accepted (250 after the final dot).
    pub accepted: u64,
    /// Files expected in the maildir (one per accepted recipient).
    pub expected_files: usize,
    /// Files delivered and checked.
    pub delivered_files: u64,
    /// Delivered files whose body was not the one sent, or without an id of this run.
    pub body_problems: Vec<String>,
    /// Accepted messages missing (or delivered too often), delivered without acceptance.
    pub delivery_problems: Vec<String>,
    /// The filters' memory.
    pub memory: Vec<FilterMemory>,
    /// VmRSS (KB) of each filter (in [`SoakReport::memory`]'s order) every
    /// [`SoakOptions::rss_every`] sessions.
    pub rss_series: Vec<(u64, Vec<Option<u64>>)>,
    /// smtpd's lines about a lost filter.
    pub lost_filter_lines: Vec<String>,
    /// smtpd's and the filters' log lines about temporary failures (451, tempfail,
    /// errors): why a session was refused (at most 20).
    pub tempfail_lines: Vec<String>,
    /// Whether smtpd ran at the end.
    pub smtpd_alive: bool,
    /// The machine's `TcpExtListenOverflows` during the run (all listeners).
    pub listen_overflows: Option<u64>,
}

impl SoakReport {
    /// Everything that makes the soak fail (empty: it passed).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.smtpd_alive {
            p.push("smtpd is not running any more".to_string());
        }
        p.extend(
            self.lost_filter_lines
                .iter()
                .map(|l| format!("lost filter: {l}")),
        );
        for f in self.run.failures().iter().take(20) {
            p.push(format!(
                "session {} got no answer: {} after {:.1} s",
                f.index,
                f.outcome.key(),
                f.elapsed.as_secs_f64()
            ));
        }
        let failures = self.run.failures().len();
        if failures > 20 {
            p.push(format!("... {failures} sessions without an answer in all"));
        }
        for (k, n) in &self.outcomes {
            // the chain lets every soak client through: a refusal of what the plan
            // expects to pass is a defect (a filter answering wrongly under load)
            if k.starts_with("refused:") {
                p.push(format!("{n} sessions {k}"));
            }
        }
        p.extend(self.body_problems.iter().cloned());
        p.extend(self.delivery_problems.iter().take(20).cloned());
        if self.delivery_problems.len() > 20 {
            p.push(format!(
                "... {} delivery problems in all",
                self.delivery_problems.len()
            ));
        }
        for m in &self.memory {
            if m.pid_end != Some(m.pid) {
                p.push(format!(
                    "{}: PID {} at the start, {:?} at the end",
                    m.filter.binary(),
                    m.pid,
                    m.pid_end
                ));
            }
            let over_slack =
                m.rss_end.unwrap_or(0) > m.rss_warm.unwrap_or(0) + self.options.rss_slack_kb;
            match m.growth() {
                Some(g) if g > MAX_RSS_GROWTH && over_slack => p.push(format!(
                    "{}: VmRSS grew {:.1} % from the warm-up ({:?} KB) to the end ({:?} KB)",
                    m.filter.binary(),
                    g * 100.0,
                    m.rss_warm,
                    m.rss_end
                )),
                Some(_) => {}
                None => p.push(format!("{}: VmRSS not measured", m.filter.binary())),
            }
        }
        p
    }

    /// The summary table (markdown).
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak on {} ({:?} filters): seed {}, {} sessions, {} clients, max size {} B, warm-up {} sessions",
            o.daemon, o.profile, o.seed, o.sessions, o.concurrency, o.shape.max_size, o.warm_up
        );
        let _ = writeln!(s, "\n| what | value |\n|---|---|");
        let _ = writeln!(s, "| sessions run | {} |", self.run.results.len());
        for (k, n) in &self.outcomes {
            let _ = writeln!(s, "| outcome {k} | {n} |");
        }
        let _ = writeln!(
            s,
            "| connections lost in smtpd's listen queue and made again | {} (kernel ListenOverflows: {}) |",
            self.run.reconnects(),
            self.listen_overflows
                .map(|n| n.to_string())
                .unwrap_or("-".into())
        );
        let _ = writeln!(s, "| messages accepted | {} |", self.accepted);
        let _ = writeln!(
            s,
            "| files expected (accepted recipients) | {} |",
            self.expected_files
        );
        let _ = writeln!(
            s,
            "| files delivered and checked byte for byte | {} |",
            self.delivered_files
        );
        let _ = writeln!(
            s,
            "| body / delivery problems | {} / {} |",
            self.body_problems.len(),
            self.delivery_problems.len()
        );
        let _ = writeln!(
            s,
            "| smtpd alive, lost-filter lines | {}, {} |",
            self.smtpd_alive,
            self.lost_filter_lines.len()
        );
        let q = |v: Option<Duration>| {
            v.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or("-".into())
        };
        let _ = writeln!(
            s,
            "| connect → 250 p50 / p99 | {} / {} |",
            q(self.run.accept_quantile(0.5)),
            q(self.run.accept_quantile(0.99))
        );
        let _ = writeln!(
            s,
            "| elapsed | {:.1} s ({:.1} sessions/s) |",
            self.run.elapsed.as_secs_f64(),
            self.run.sessions_per_sec()
        );
        let _ = writeln!(
            s,
            "\n| filter | PID | VmRSS after warm-up KB | VmRSS at end KB | growth | VmHWM KB |\n|---|---|---|---|---|---|"
        );
        for m in &self.memory {
            let kb = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("-".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                m.filter.binary(),
                m.pid,
                kb(m.rss_warm),
                kb(m.rss_end),
                m.growth()
                    .map(|g| format!("{:+.1} %", g * 100.0))
                    .unwrap_or("-".into()),
                kb(m.peak)
            );
        }
        if !self.rss_series.is_empty() {
            let _ = writeln!(s, "\nVmRSS KB by sessions done:\n");
            let names: Vec<&str> = self.memory.iter().map(|m| m.filter.binary()).collect();
            let _ = writeln!(
                s,
                "| sessions | {} |\n|---|{}",
                names.join(" | "),
                "---|".repeat(names.len())
            );
            for (done, sample) in &self.rss_series {
                let cells: Vec<String> = sample
                    .iter()
                    .map(|v| v.map(|v| v.to_string()).unwrap_or("-".into()))
                    .collect();
                let _ = writeln!(s, "| {done} | {} |", cells.join(" | "));
            }
        }
        if !self.tempfail_lines.is_empty() {
            let _ = writeln!(
                s,
                "\nlog lines about temporary failures:\n{}",
                self.tempfail_lines.join("\n")
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "\nresult: PASS");
        } else {
            let _ = writeln!(s, "\nresult: FAIL\n{}", problems.join("\n"));
        }
        s
    }
}

/// Starts the chain for a soak (see the module's documentation for its settings).
pub fn start_chain(
    daemon: Daemon,
    profile: Profile,
    clients: usize,
    rspamd_spool_above: Option<&str>,
) -> Result<Chain, RigError> {
    let mut b = ChainBuilder::new(daemon)
        .profile(profile)
        .pass_time(Duration::ZERO);
    if let Some(size) = rspamd_spool_above {
        b = b.filter_arg(ChainFilter::Rspamd, &format!("--spool-above={size}"));
    }
    for ip in sources(clients) {
        if let IpAddr::V4(v4) = ip {
            b = b.score(v4, 90);
        }
    }
    b.start()
}

/// The warm-up session of the greylist: greylisted first (the filter is live), then a
/// retry that passes (pass time 0) and whitelists the clients' network.
pub fn pass_greylist(chain: &Chain, src: &str) -> Result<(), String> {
    let step = |what: &str, r: std::io::Result<crate::Reply>, want: u16| match r {
        Ok(r) if r.code == want => Ok(()),
        Ok(r) => Err(format!(
            "greylist warm-up: {what}: expected {want}, got {r}"
        )),
        Err(e) => Err(format!("greylist warm-up: {what}: {e}")),
    };
    let mut c = SmtpClient::connect(chain.rig(), Listener::Plain, src)
        .map_err(|e| format!("greylist warm-up: connect: {e}"))?;
    c.set_timeout(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    step("greeting", c.read_reply(), 220)?;
    step("EHLO", c.command("EHLO warmup.load.example"), 250)?;
    let mail = format!("MAIL FROM:<warmup@{}>", load::SENDER_DOMAIN);
    let rcpt = format!("RCPT TO:<{}>", crate::RCPT_OK);
    step("MAIL", c.command(&mail), 250)?;
    step("first RCPT (greylisted)", c.command(&rcpt), 451)?;
    step("RSET", c.command("RSET"), 250)?;
    // the pass time is 0 s, counted in whole seconds: retry in the next second
    std::thread::sleep(Duration::from_millis(1100));
    step("MAIL again", c.command(&mail), 250)?;
    step("RCPT retried (passes)", c.command(&rcpt), 250)?;
    step("QUIT", c.quit(), 221)
}

/// Runs a soak on a chain started with [`start_chain`] (after [`pass_greylist`]).
pub fn soak(chain: &Chain, opts: &SoakOptions) -> SoakReport {
    let rig = chain.rig();
    let cfg = LoadConfig {
        target: rig.addr(Listener::Plain),
        sources: sources(opts.concurrency),
        concurrency: opts.concurrency,
        sessions: opts.sessions,
        seed: opts.seed,
        shape: Shape::Soak(opts.shape.clone()),
        deadline: opts.deadline,
    };
    let pids = chain.filter_pids();
    let warm: Mutex<HashMap<u32, u64>> = Mutex::new(HashMap::new());
    let series: Mutex<Vec<(u64, Vec<Option<u64>>)>> = Mutex::new(Vec::new());
    let check = Arc::new(Mutex::new(MaildirCheck::new(&rig.maildir(), &cfg)));
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = load::scan_in_background(check.clone(), stop.clone());
    let started = Instant::now();
    let overflows_before = load::listen_overflows();
    let progress = |done: u64| {
        if opts.rss_every > 0 && done.is_multiple_of(opts.rss_every) {
            let sample = pids.iter().map(|(_, pid)| rss_kb(*pid)).collect();
            series
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((done, sample));
        }
        if opts.progress_every > 0 && done.is_multiple_of(opts.progress_every) {
            eprintln!(
                "soak {}: {done}/{} sessions, {:.0} s",
                opts.daemon,
                opts.sessions,
                started.elapsed().as_secs_f64()
            );
        }
    };
    // The warm-up runs to its end first: both memory readings are then taken with no
    // session open, so they compare what the filters keep, not what was in flight.
    let warm_up = opts.warm_up.min(opts.sessions);
    let first = load::run_range(&cfg, 0..warm_up, &progress);
    std::thread::sleep(QUIET_BEFORE_READING);
    {
        let mut w = warm.lock().unwrap_or_else(|e| e.into_inner());
        for (_, pid) in &pids {
            if let Some(kb) = rss_kb(*pid) {
                w.insert(*pid, kb);
            }
        }
    }
    let run = first.then(load::run_range(&cfg, warm_up..opts.sessions, &progress));
    let listen_overflows = match (overflows_before, load::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = scanner.join();
    let expected = run.expected_deliveries(opts.seed);
    let mut check = Arc::try_unwrap(check)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_else(|_| MaildirCheck::new(&rig.maildir(), &cfg));
    // deliveries trail the 250s: wait until all came or none came for 30 s
    check.wait_complete(&expected, Duration::from_secs(30));
    std::thread::sleep(QUIET_BEFORE_READING);
    let warm = warm.into_inner().unwrap_or_else(|e| e.into_inner());
    let end_pids = chain.filter_pids();
    let memory = pids
        .iter()
        .map(|&(f, pid)| FilterMemory {
            filter: f,
            pid,
            pid_end: end_pids.iter().find(|(g, _)| *g == f).map(|x| x.1),
            rss_warm: warm.get(&pid).copied(),
            rss_end: rss_kb(pid),
            peak: crate::chain::peak_rss_kb(pid),
        })
        .collect();
    SoakReport {
        options: opts.clone(),
        outcomes: run.outcomes(),
        accepted: run.accepted_messages(),
        expected_files: expected.values().sum(),
        delivered_files: check.files,
        body_problems: check.problems.clone(),
        delivery_problems: check.compare(&expected),
        memory,
        rss_series: series.into_inner().unwrap_or_else(|e| e.into_inner()),
        lost_filter_lines: chain.lost_filter_lines(),
        tempfail_lines: rig
            .smtpd_log()
            .lines()
            .filter(|l| {
                (l.contains("failed-command") && l.contains("result=\"4"))
                    || l.contains("action=error")
                    || l.contains("result=tempfail")
                    || l.contains("error:")
            })
            .take(20)
            .map(str::to_string)
            .collect(),
        smtpd_alive: rig.smtpd_alive(),
        listen_overflows,
        run,
    }
}

/// Starts the chain, passes the greylist and soaks: the whole run.
pub fn run_soak(opts: &SoakOptions) -> Result<SoakReport, String> {
    let chain = start_chain(
        opts.daemon,
        opts.profile,
        opts.concurrency,
        opts.rspamd_spool_above.as_deref(),
    )
    .map_err(|e| format!("{}: the chain did not start: {e}", opts.daemon))?;
    pass_greylist(&chain, "127.0.0.100")?;
    Ok(soak(&chain, opts))
}
