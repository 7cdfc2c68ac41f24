//! The three filters chained in one smtpd, with their real peers:
//! `filter "inbound" chain { "senderscore", "greylist", "rspamd" }` on the rig's plain
//! listener, the rig's dnsmasq serving SenderScore-style scores and SPF records, a real
//! rspamd ([`crate::rspamd::Rspamd`]) and a real Redis ([`crate::redis::Redis`]) holding
//! the greylisting state. Used by the chain end-to-end tests, the demo, the soak and the
//! MTA-level benchmark.
//!
//! ```no_run
//! use opensmtpd_e2e::Daemon;
//! use opensmtpd_e2e::chain::{ChainBuilder, ChainFilter, Profile};
//! use std::time::Duration;
//! let chain = ChainBuilder::new(Daemon::Smtpd74)
//!     .profile(Profile::Release)
//!     .score("127.0.1.5".parse().unwrap(), 5)
//!     .score("127.0.2.50".parse().unwrap(), 50)
//!     .spf("chain.test", "v=spf1 ip4:127.0.0.0/8 -all")
//!     .pass_time(Duration::from_secs(3))
//!     .greylist_allow("127.0.3.7")
//!     .start()
//!     .unwrap();
//! let rig = chain.rig();
//! for (filter, pid) in chain.filter_pids() {
//!     println!("{} {pid} {:?} KB", filter.binary(), opensmtpd_e2e::chain::rss_kb(pid));
//! }
//! ```
//!
//! What the filters run with (every knob has a builder method):
//! - `filter-senderscore -blockBelow B -scoreHeader --resolver DNS:53 --dns-timeout MS`:
//!   a client scored below B is refused at connect with [`SENDERSCORE_BLOCKED`], others
//!   get `X-SenderScore: N` on top of their messages;
//! - `filter-greylist -passtime P -greyexp 1h -whiteexp 1d --store redis://… --resolver
//!   DNS:53 --spf-timeout S [--wl-ip FILE]`: a first attempt gets [`GREYLISTED`];
//! - `filter-rspamd -url SOCKET --connect-timeout MS --timeout MS --on-error E`: rspamd
//!   is asked on its unix socket through a symbolic link in the rig's directory, so that
//!   [`Chain::start_rspamd`] can put a new rspamd behind the same path while smtpd and
//!   the filter keep running ([`RspamdTransport::Tcp`] asks its TCP port instead, which
//!   cannot be restarted).
//!
//! Binaries are the workspace's, by absolute path (`target/<profile>/filter-…`), never
//! the system's /usr/libexec/opensmtpd ones. Dropping a [`Chain`] stops smtpd (and with
//! it the filters) and dnsmasq first, then rspamd and Redis, each by PID.

use crate::redis::Redis;
use crate::rspamd::Rspamd;
use crate::{Daemon, DnsRecord, Listener, Rig, RigBuilder, RigError, workspace_root};
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The chain's name in smtpd.conf.
pub const CHAIN: &str = "inbound";
/// What filter-senderscore answers a client scored below the block threshold.
pub const SENDERSCORE_BLOCKED: &str = "550 5.7.1 Your IP reputation is too low for this MX";
/// What filter-greylist answers a first attempt (and an early retry).
pub const GREYLISTED: &str = "451 4.7.1 Greylisted: please try again later";
/// What filter-rspamd answers when rspamd cannot be asked (`--on-error tempfail`).
pub const RSPAMD_ERROR: &str = "451 4.7.1 Temporary failure scanning the message, try again later";
/// What filter-rspamd answers GTUBE (rspamd's `reject` with its message).
pub const GTUBE_REJECTED: &str = "550 5.7.1 Gtube pattern";
/// The GTUBE test string: rspamd rejects a message containing it.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// smtpd's own resolver in the rig (`options timeout:1 attempts:2`): the longest one of
/// its lookups (reverse, then forward to confirm) can take when the DNS server is gone.
const SMTPD_RESOLVER_WORST: Duration = Duration::from_secs(4);

/// One filter of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainFilter {
    /// filter-senderscore, first.
    Senderscore,
    /// filter-greylist, second.
    Greylist,
    /// filter-rspamd, last.
    Rspamd,
}

impl ChainFilter {
    /// The three, in chain order.
    pub const ALL: [ChainFilter; 3] = [
        ChainFilter::Senderscore,
        ChainFilter::Greylist,
        ChainFilter::Rspamd,
    ];

    /// The filter's name in smtpd.conf.
    pub fn name(self) -> &'static str {
        match self {
            ChainFilter::Senderscore => "senderscore",
            ChainFilter::Greylist => "greylist",
            ChainFilter::Rspamd => "rspamd",
        }
    }

    /// The binary's (and the crate's) name; its log lines start with it.
    pub fn binary(self) -> &'static str {
        match self {
            ChainFilter::Senderscore => "filter-senderscore",
            ChainFilter::Greylist => "filter-greylist",
            ChainFilter::Rspamd => "filter-rspamd",
        }
    }
}

/// Which cargo profile's binaries the chain runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `target/debug` (the tests: `cargo build -p filter-…`).
    Debug,
    /// `target/release` (the demo and the benchmark: `cargo build --release -p filter-…`).
    Release,
}

impl Profile {
    /// The profile's directory under the target directory.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// filter-rspamd's `--on-error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// 451 while rspamd cannot be asked (the filter's default).
    Tempfail,
    /// Delivered unscanned while rspamd cannot be asked.
    Accept,
}

/// How filter-rspamd reaches rspamd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RspamdTransport {
    /// rspamd's unix socket through a symbolic link in the rig's directory (restartable).
    UnixSocket,
    /// rspamd's TCP port on 127.0.0.1 (`http://…`); [`Chain::start_rspamd`] fails.
    Tcp,
}

/// The knobs of a chain, as configured (see [`ChainBuilder`] for each).
#[derive(Clone, Debug)]
pub struct ChainConfig {
    pub daemon: Daemon,
    pub profile: Profile,
    /// SenderScore-style scores served by the rig's DNS.
    pub scores: Vec<(Ipv4Addr, u8)>,
    /// TXT records (SPF) served by the rig's DNS: (name, text).
    pub spf: Vec<(String, String)>,
    /// filter-senderscore `-blockBelow`.
    pub block_below: i32,
    /// filter-senderscore `--dns-timeout`.
    pub dns_timeout: Duration,
    /// filter-greylist `-passtime` (whole seconds).
    pub pass_time: Duration,
    /// filter-greylist `--spf-timeout` (whole seconds).
    pub spf_timeout: Duration,
    /// Clients filter-greylist never greylists (`--wl-ip`): IPs or CIDRs.
    pub greylist_allow: Vec<String>,
    /// The Redis database filter-greylist uses.
    pub redis_db: u32,
    /// filter-rspamd `--connect-timeout`.
    pub rspamd_connect_timeout: Duration,
    /// filter-rspamd `--timeout`.
    pub rspamd_timeout: Duration,
    /// filter-rspamd `--on-error`.
    pub on_error: OnError,
    pub rspamd_transport: RspamdTransport,
    /// Further arguments per filter (appended, single-quoted).
    pub extra_args: Vec<(ChainFilter, String)>,
    /// Commands run in a filter's place (benchmarks: the chain with one filter of ours
    /// and the C floor filter in the other places, to see what each filter costs).
    pub substitutes: Vec<(ChainFilter, String)>,
}

impl ChainConfig {
    /// The longest a session of one message may take when every peer of the chain is
    /// at its worst at once (a lookup or a scan running into its timeout), before
    /// `slack`: smtpd's own lookups, filter-senderscore's DNS timeout, filter-greylist's
    /// SPF timeout and Redis' (500 ms to connect, 1 s to read), filter-rspamd's connect
    /// and answer timeouts.
    pub fn worst_case(&self) -> Duration {
        SMTPD_RESOLVER_WORST
            + self.dns_timeout
            + self.spf_timeout
            + Duration::from_millis(1500)
            + self.rspamd_connect_timeout
            + self.rspamd_timeout
    }

    /// The binary of a filter for this profile.
    pub fn binary(&self, filter: ChainFilter) -> PathBuf {
        chain_binary(filter, self.profile)
    }
}

/// The path of a chain filter's binary in the workspace's target directory
/// (`$CARGO_TARGET_DIR` when set, else `<workspace>/target`).
pub fn chain_binary(filter: ChainFilter, profile: Profile) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join(profile.dir()).join(filter.binary())
}

type RigTweak = Box<dyn FnOnce(RigBuilder) -> RigBuilder>;

/// Describes a [`Chain`]; [`ChainBuilder::start`] starts it.
pub struct ChainBuilder {
    config: ChainConfig,
    dns: Vec<DnsRecord>,
    tweaks: Vec<RigTweak>,
}

impl ChainBuilder {
    /// A chain on `daemon` with the test defaults: debug binaries, no scores, no SPF
    /// records, block below 20, DNS timeout 1 s, pass time 3 s, SPF timeout 2 s, no
    /// allowlisted client, Redis database 0, rspamd: connect timeout 1 s, answer timeout
    /// 20 s (a loaded machine must not turn a slow scan into a tempfail), `--on-error
    /// tempfail`, on its unix socket.
    pub fn new(daemon: Daemon) -> ChainBuilder {
        ChainBuilder {
            config: ChainConfig {
                daemon,
                profile: Profile::Debug,
                scores: Vec::new(),
                spf: Vec::new(),
                block_below: 20,
                dns_timeout: Duration::from_millis(1000),
                pass_time: Duration::from_secs(3),
                spf_timeout: Duration::from_secs(2),
                greylist_allow: Vec::new(),
                redis_db: 0,
                rspamd_connect_timeout: Duration::from_millis(1000),
                rspamd_timeout: Duration::from_secs(20),
                on_error: OnError::Tempfail,
                rspamd_transport: RspamdTransport::UnixSocket,
                extra_args: Vec::new(),
                substitutes: Vec::new(),
            },
            dns: Vec::new(),
            tweaks: Vec::new(),
        }
    }

    /// Which binaries: `target/debug` or `target/release`.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.config.profile = profile;
        self
    }

    /// Serves a SenderScore-style score for a client.
    pub fn score(mut self, client: Ipv4Addr, score: u8) -> Self {
        self.config.scores.push((client, score));
        self
    }

    /// Serves a TXT record (an SPF policy: `spf("chain.test", "v=spf1 ip4:127.0.0.0/8 -all")`).
    pub fn spf(mut self, domain: &str, record: &str) -> Self {
        self.config
            .spf
            .push((domain.to_string(), record.to_string()));
        self
    }

    /// Any other record for the rig's DNS.
    pub fn dns_record(mut self, record: DnsRecord) -> Self {
        self.dns.push(record);
        self
    }

    /// filter-senderscore's `-blockBelow` (-1: never).
    pub fn block_below(mut self, score: i32) -> Self {
        self.config.block_below = score;
        self
    }

    /// filter-senderscore's `--dns-timeout`.
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.config.dns_timeout = timeout;
        self
    }

    /// filter-greylist's pass time (rounded up to whole seconds).
    pub fn pass_time(mut self, pass: Duration) -> Self {
        self.config.pass_time = pass;
        self
    }

    /// filter-greylist's `--spf-timeout` (rounded up to whole seconds).
    pub fn spf_timeout(mut self, timeout: Duration) -> Self {
        self.config.spf_timeout = timeout;
        self
    }

    /// A client (IP or CIDR) filter-greylist never greylists (`--wl-ip`).
    pub fn greylist_allow(mut self, client: &str) -> Self {
        self.config.greylist_allow.push(client.to_string());
        self
    }

    /// The Redis database filter-greylist keeps its state in.
    pub fn redis_db(mut self, db: u32) -> Self {
        self.config.redis_db = db;
        self
    }

    /// filter-rspamd's `--connect-timeout` and `--timeout`.
    pub fn rspamd_timeouts(mut self, connect: Duration, answer: Duration) -> Self {
        self.config.rspamd_connect_timeout = connect;
        self.config.rspamd_timeout = answer;
        self
    }

    /// filter-rspamd's `--on-error`.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.config.on_error = on_error;
        self
    }

    /// How filter-rspamd reaches rspamd.
    pub fn rspamd_transport(mut self, transport: RspamdTransport) -> Self {
        self.config.rspamd_transport = transport;
        self
    }

    /// One more argument for a filter's command line (after the chain's own).
    pub fn filter_arg(mut self, filter: ChainFilter, arg: &str) -> Self {
        self.config.extra_args.push((filter, arg.to_string()));
        self
    }

    /// Runs `command` (a whole smtpd.conf `proc-exec` command) in the place of `filter`.
    pub fn substitute(mut self, filter: ChainFilter, command: &str) -> Self {
        self.config.substitutes.push((filter, command.to_string()));
        self
    }

    /// Changes the rig before it starts (more listeners, environment, smtpd.conf lines).
    /// The plain listener through the chain is already there.
    pub fn rig(mut self, tweak: impl FnOnce(RigBuilder) -> RigBuilder + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Starts Redis, rspamd (a few seconds with a warm cache), dnsmasq and smtpd with the
    /// chain on the plain listener. Fails when a binary is not built, saying how to build
    /// it; panics when redis-server is not installed ([`Redis::start`]).
    pub fn start(self) -> Result<Chain, RigError> {
        let ChainBuilder {
            config,
            dns,
            tweaks,
        } = self;
        let substitute = |f: ChainFilter| {
            config
                .substitutes
                .iter()
                .find(|(g, _)| *g == f)
                .map(|(_, c)| c.clone())
        };
        for f in ChainFilter::ALL {
            if substitute(f).is_some() {
                continue;
            }
            let bin = config.binary(f);
            if !bin.is_file() {
                let release = if config.profile == Profile::Release {
                    " --release"
                } else {
                    ""
                };
                return Err(RigError::new(format!(
                    "{} is not built: run `cargo build{release} -p filter-senderscore -p filter-greylist -p filter-rspamd`",
                    bin.display()
                )));
            }
        }
        let redis = Redis::start();
        let rspamd = Rspamd::start().map_err(RigError::new)?;

        let mut b = Rig::builder(config.daemon);
        let rig_dir = b.dir().to_path_buf();
        let rspamd_link = rig_dir.join("rspamd.sock");
        let rspamd_url = match config.rspamd_transport {
            RspamdTransport::UnixSocket => {
                std::os::unix::fs::symlink(rspamd.unix_socket(), &rspamd_link)?;
                rspamd_link.display().to_string()
            }
            RspamdTransport::Tcp => rspamd.url(),
        };
        let extra = |f: ChainFilter| -> Result<String, RigError> {
            let mut s = String::new();
            for (_, a) in config.extra_args.iter().filter(|(g, _)| *g == f) {
                if a.contains(['\'', '"', '\\', '\n', '\r']) {
                    return Err(RigError::new(format!(
                        "{}: argument {a:?} cannot go into smtpd.conf",
                        f.binary()
                    )));
                }
                s.push_str(&format!(" '{a}'"));
            }
            Ok(s)
        };
        let senderscore = format!(
            "{} -blockBelow {} -scoreHeader --resolver {{dns}}:53 --dns-timeout {}{}",
            config.binary(ChainFilter::Senderscore).display(),
            config.block_below,
            config.dns_timeout.as_millis(),
            extra(ChainFilter::Senderscore)?
        );
        let mut greylist = format!(
            "{} -passtime {} -greyexp 1h -whiteexp 1d --store {} --resolver {{dns}}:53 --spf-timeout {}s",
            config.binary(ChainFilter::Greylist).display(),
            whole_seconds(config.pass_time),
            redis.url(config.redis_db),
            whole_seconds(config.spf_timeout)
        );
        if !config.greylist_allow.is_empty() {
            let list = rig_dir.join("greylist-wl-ip");
            let mut text = String::from("# clients filter-greylist never greylists\n");
            for c in &config.greylist_allow {
                text.push_str(c);
                text.push('\n');
            }
            write_readable(&list, &text)?;
            greylist.push_str(&format!(" --wl-ip {}", list.display()));
        }
        greylist.push_str(&extra(ChainFilter::Greylist)?);
        let on_error = match config.on_error {
            OnError::Tempfail => "tempfail",
            OnError::Accept => "accept",
        };
        let rspamd_cmd = format!(
            "{} -url {rspamd_url} --connect-timeout {} --timeout {} --on-error {on_error}{}",
            config.binary(ChainFilter::Rspamd).display(),
            config.rspamd_connect_timeout.as_millis(),
            config.rspamd_timeout.as_millis(),
            extra(ChainFilter::Rspamd)?
        );

        // dnsmasq gives its own records a TTL of 0 (never cached) unless told otherwise
        b = b.dns_record(DnsRecord::Raw("local-ttl=300".into()));
        for (client, score) in &config.scores {
            b = b.dns_record(DnsRecord::senderscore(*client, *score));
        }
        for (name, text) in &config.spf {
            b = b.dns_record(DnsRecord::txt(name, text));
        }
        for r in dns {
            b = b.dns_record(r);
        }
        b = b
            .filter(
                ChainFilter::Senderscore.name(),
                &substitute(ChainFilter::Senderscore).unwrap_or(senderscore),
            )
            .filter(
                ChainFilter::Greylist.name(),
                &substitute(ChainFilter::Greylist).unwrap_or(greylist),
            )
            .filter(
                ChainFilter::Rspamd.name(),
                &substitute(ChainFilter::Rspamd).unwrap_or(rspamd_cmd),
            )
            .filter_chain(CHAIN, &ChainFilter::ALL.map(ChainFilter::name))?
            .listen_plain(CHAIN);
        for t in tweaks {
            b = t(b);
        }
        let rig = b.start()?;
        Ok(Chain {
            rig,
            rspamd: Some(rspamd),
            redis,
            config,
            rspamd_link,
        })
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn write_readable(path: &Path, text: &str) -> std::io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

/// A running chain: smtpd with the three filters, its DNS server, rspamd and Redis.
pub struct Chain {
    // dropped first: smtpd and its filters go before their peers
    rig: Rig,
    rspamd: Option<Rspamd>,
    redis: Redis,
    config: ChainConfig,
    rspamd_link: PathBuf,
}

impl Chain {
    /// The rig (smtpd, its log, its DNS server, the maildir, sending helpers).
    pub fn rig(&self) -> &Rig {
        &self.rig
    }

    /// The rig, to stop and start its DNS server.
    pub fn rig_mut(&mut self) -> &mut Rig {
        &mut self.rig
    }

    /// The knobs the chain runs with.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// rspamd while it runs.
    pub fn rspamd(&self) -> Option<&Rspamd> {
        self.rspamd.as_ref()
    }

    /// Redis.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Stops rspamd (by PID); filter-rspamd then cannot reach it.
    pub fn stop_rspamd(&mut self) {
        if let Some(mut r) = self.rspamd.take() {
            r.stop();
        }
    }

    /// Starts a new rspamd and points the chain's socket link at it (unix socket
    /// transport only). Does nothing when one runs.
    pub fn start_rspamd(&mut self) -> Result<(), RigError> {
        if self.rspamd.is_some() {
            return Ok(());
        }
        if self.config.rspamd_transport != RspamdTransport::UnixSocket {
            return Err(RigError::new(
                "rspamd can be restarted behind the chain only on its unix socket",
            ));
        }
        let rspamd = Rspamd::start().map_err(RigError::new)?;
        // replace the link atomically: filter-rspamd may connect at any moment
        let tmp = self.rspamd_link.with_extension("sock.new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(rspamd.unix_socket(), &tmp)?;
        fs::rename(&tmp, &self.rspamd_link)?;
        self.rspamd = Some(rspamd);
        Ok(())
    }

    /// Stops Redis (by PID); filter-greylist then fails open.
    pub fn stop_redis(&mut self) {
        self.redis.stop();
    }

    /// Starts Redis again on its port, empty (no persistence): greylisting starts over.
    pub fn start_redis(&mut self) {
        self.redis.restart();
    }

    /// Stops the rig's DNS server.
    pub fn stop_dns(&mut self) {
        self.rig.stop_dns();
    }

    /// Starts the rig's DNS server again.
    pub fn start_dns(&mut self) -> Result<(), RigError> {
        self.rig.start_dns()
    }

    /// The PID of a filter's process: the process in smtpd's mount namespace whose
    /// command line starts with the filter's binary (smtpd runs it with `/bin/sh -c`,
    /// which may or may not exec it: the shell itself is never taken).
    pub fn filter_pid(&self, filter: ChainFilter) -> Option<u32> {
        let smtpd = self.rig.smtpd_pid()?;
        let ns = fs::read_link(format!("/proc/{smtpd}/ns/mnt")).ok()?;
        let bin = self.config.binary(filter);
        let argv0 = bin.as_os_str().as_encoded_bytes();
        let mut found = None;
        for e in fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if fs::read_link(e.path().join("ns/mnt")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).next() == Some(argv0) {
                found = Some(pid);
                break;
            }
        }
        found
    }

    /// The PIDs of the three filters once all three run, polled for up to `within`
    /// (smtpd starts them through `/bin/sh -c`, and on a loaded machine the last one
    /// can still be on its way when the listener is up); whatever is found by then.
    pub fn wait_filter_pids(&self, within: Duration) -> Vec<(ChainFilter, u32)> {
        let deadline = Instant::now() + within;
        loop {
            let pids = self.filter_pids();
            if pids.len() == ChainFilter::ALL.len() || Instant::now() >= deadline {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The PIDs of the three filters, in chain order (a filter not found is left out).
    pub fn filter_pids(&self) -> Vec<(ChainFilter, u32)> {
        ChainFilter::ALL
            .iter()
            .filter_map(|&f| self.filter_pid(f).map(|p| (f, p)))
            .collect()
    }

    /// smtpd's log lines that say it lost a filter (`lost processor`, `lost child`, a
    /// processor that exited): none may ever appear.
    pub fn lost_filter_lines(&self) -> Vec<String> {
        self.rig
            .smtpd_log()
            .lines()
            .filter(|l| {
                l.contains("lost processor")
                    || l.contains("lost child")
                    || l.contains("exited abnormally")
                    || l.contains("failed to write to processor")
            })
            .map(str::to_string)
            .collect()
    }

    /// Panics unless smtpd runs and never lost a filter.
    #[track_caller]
    pub fn assert_healthy(&self) {
        self.rig.assert_alive();
        let lost = self.lost_filter_lines();
        assert!(
            lost.is_empty(),
            "{}: smtpd lost a filter:\n{}",
            self.rig.daemon(),
            lost.join("\n")
        );
        for f in ChainFilter::ALL {
            assert!(
                self.filter_pid(f).is_some(),
                "{}: {} does not run any more",
                self.rig.daemon(),
                f.binary()
            );
        }
    }

    /// The listener the chain is on.
    pub fn listener(&self) -> Listener {
        Listener::Plain
    }
}

/// A process's resident set size in KB (`VmRSS`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:")
}

/// A process's peak resident set size in KB (`VmHWM`).
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:")
}

/// The CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_ticks(pid).and_then(|(own, _)| ticks_to_seconds(own))
}

/// The CPU time (user + system) process `pid` has used so far, with that of its
/// children it has waited for, in seconds.
pub fn cpu_seconds_with_reaped(pid: u32) -> Option<f64> {
    cpu_ticks(pid).and_then(|(own, reaped)| ticks_to_seconds(own + reaped))
}

/// A process's own CPU ticks and those of its children it has waited for.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((field(11)? + field(12)?, field(13)? + field(14)?))
}

fn ticks_to_seconds(ticks: u64) -> Option<f64> {
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
