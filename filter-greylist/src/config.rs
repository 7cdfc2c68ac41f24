//! The command line: the Go filter's flags (`-passtime 300`, `-wl-ip FILE`, single
//! dash), the same in GNU style (`--passtime=5m`, `--pass-time 5m`), and ours.
//!
//! [`normalize`] rewrites single-dash long flags into GNU style before clap reads them,
//! so one definition serves both spellings; [`Settings::from_args`] checks every value
//! and says which flag is wrong.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use opensmtpd_filter::protocol::SmtpReply;

use crate::lists::ListFiles;
use crate::policy::{Grouping, Timing};
use crate::store::DEFAULT_PATH;

/// The flags that take a value (GNU spelling and aliases), for [`normalize`].
const VALUE_FLAGS: [&str; 19] = [
    "passtime",
    "pass-time",
    "greyexp",
    "grey-exp",
    "whiteexp",
    "white-exp",
    "wl-ip",
    "wl-domain",
    "wl-rcpt",
    "resolver",
    "store",
    "reply",
    "spf-timeout",
    "purge-interval",
    "hostname",
    "grouping",
    "traps",
    "trap-time",
    "trap-action",
];

/// The default answer to a greylisted recipient.
pub const DEFAULT_REPLY: &str = "451 4.7.1 Greylisted: please try again later";

/// The answer to a trapped client with `--trap-action reject`.
pub const TRAP_REJECT: &str = "550 5.7.1 Mail from this address is refused";

/// The command line as clap reads it (GNU spelling).
#[derive(Parser, Debug)]
#[command(
    name = "filter-greylist",
    version,
    about = "OpenSMTPD filter: SPF-aware greylisting with persistent state.",
    long_about = "OpenSMTPD filter: SPF-aware greylisting with persistent state. A drop-in for \
poolpOrg's Go filter-greylist: its flags are accepted as it spells them (-passtime 300, \
-wl-ip FILE) as well as in GNU style (--pass-time 5m). See filter-greylist(8).",
    after_help = "Durations are seconds (300) or a number with a unit, combinable: 90s, 5m, 4h, 30d, 1h30m.\n\
Every flag may also be written with one dash, as the Go filter does: -passtime 300, -wl-ip FILE."
)]
struct Cli {
    /// Accept a retry this long after the first attempt.
    #[arg(
        long,
        visible_alias = "pass-time",
        value_name = "DURATION",
        default_value = "300"
    )]
    passtime: String,

    /// Forget a greylisted attempt this long after its last retry.
    #[arg(
        long,
        visible_alias = "grey-exp",
        value_name = "DURATION",
        default_value = "4h"
    )]
    greyexp: String,

    /// Forget a whitelisted client or domain this long after its last use.
    #[arg(
        long,
        visible_alias = "white-exp",
        value_name = "DURATION",
        default_value = "30d"
    )]
    whiteexp: String,

    /// File of client IPs, CIDR networks and domains (forward-confirmed rDNS) never
    /// greylisted. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    wl_ip: Option<PathBuf>,

    /// File of sender domains (with their subdomains), sender addresses and client
    /// networks never greylisted. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    wl_domain: Option<PathBuf>,

    /// File of recipient addresses and domains never greylisted. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    wl_rcpt: Option<PathBuf>,

    /// File of greytrap recipients (addresses, domains): a client that writes to one is
    /// trapped for --trap-time. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    traps: Option<PathBuf>,

    /// How long a client that wrote to a greytrap stays trapped.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    trap_time: String,

    /// What a trapped client gets: `tempfail` (the greylisting reply) or `reject`
    /// (550 5.7.1).
    #[arg(long, value_name = "ACTION", default_value = "tempfail")]
    trap_action: String,

    /// DNS server for SPF, IP or IP:PORT (repeatable; default: /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    resolver: Vec<String>,

    /// The state: a file path (created if missing), redis://HOST:PORT/DB (shared by
    /// several MX hosts) or `memory` (lost at exit).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    store: String,

    /// Client networks: `network` (IPv4 /24, IPv6 /64) or `exact` (the address).
    #[arg(long, value_name = "MODE", default_value = "network")]
    grouping: String,

    /// The answer to a greylisted recipient: a 4xx SMTP reply.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_REPLY)]
    reply: String,

    /// The longest one SPF check may take.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    spf_timeout: String,

    /// How often expired entries are removed from the store.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    purge_interval: String,

    /// Our host name, for the SPF `%{r}` macro.
    #[arg(long, value_name = "NAME", default_value = "unknown")]
    hostname: String,

    /// Log more.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// Where the state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded redb file.
    File(PathBuf),
    /// In memory only.
    Memory,
    /// Shared in Redis (`redis://HOST:PORT/DB`).
    Redis(String),
}

/// Everything the command line said, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Pass time and expiries.
    pub timing: Timing,
    /// Client networks.
    pub grouping: Grouping,
    /// The allowlist files.
    pub lists: ListFiles,
    /// DNS servers (empty: the system's).
    pub resolvers: Vec<SocketAddr>,
    /// The store.
    pub store: StoreSpec,
    /// The greylisting answer.
    pub reply: SmtpReply,
    /// The answer to a trapped client.
    pub trap_reply: SmtpReply,
    /// The SPF timeout.
    pub spf_timeout: Duration,
    /// The purge interval.
    pub purge_interval: Duration,
    /// Our host name.
    pub hostname: String,
    /// Debug logging.
    pub verbose: bool,
}

/// The outcome of reading the command line.
#[derive(Debug)]
pub enum CliOutcome {
    /// Run with these settings.
    Run(Box<Settings>),
    /// `--help` or `--version`: print this on stdout and exit 0.
    Print(String),
    /// A wrong flag or value: print this on stderr and exit 1.
    Error(String),
}

/// Rewrites single-dash long flags into GNU style: `-passtime 300` →
/// `--passtime=300`, `-wl-ip=F` → `--wl-ip=F`. The argument after a flag that takes a
/// value is kept as it is. Anything after `--` is left alone; `-h`, `-v` stay.
pub fn normalize<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    opensmtpd_filter::cli::gnu_style_args(args, &VALUE_FLAGS, |n: &str| n.replace('_', "-"))
}

/// A duration: seconds (`300`), or numbers with units `s`, `m`, `h`, `d`, combinable
/// (`5m`, `720h`, `1h30m`, `30d`). Whole seconds only.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        number.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !number.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

impl Settings {
    /// Reads the command line (program name first).
    pub fn from_args<I: IntoIterator<Item = OsString>>(args: I) -> CliOutcome {
        let cli = match Cli::try_parse_from(normalize(args)) {
            Ok(cli) => cli,
            Err(e) => {
                use clap::error::ErrorKind;
                let text = e.render().to_string();
                return match e.kind() {
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliOutcome::Print(text),
                    _ => CliOutcome::Error(text),
                };
            }
        };
        match Settings::check(cli) {
            Ok(s) => CliOutcome::Run(Box::new(s)),
            Err(e) => CliOutcome::Error(format!("error: {e}\n")),
        }
    }

    fn check(cli: Cli) -> Result<Settings, String> {
        let dur = |flag: &str, text: &str| {
            parse_duration(text).ok_or_else(|| {
                format!("{flag} {text:?}: not a duration (seconds, or e.g. 90s, 5m, 4h, 30d)")
            })
        };
        let pass = dur("-passtime", &cli.passtime)?.as_secs();
        let grey_exp = dur("-greyexp", &cli.greyexp)?.as_secs();
        let white_exp = dur("-whiteexp", &cli.whiteexp)?.as_secs();
        if grey_exp <= pass {
            return Err(format!(
                "-greyexp ({grey_exp} s) must be longer than -passtime ({pass} s): no retry could ever pass"
            ));
        }
        if white_exp == 0 {
            return Err("-whiteexp must be longer than 0".into());
        }
        let grouping = match cli.grouping.as_str() {
            "network" => Grouping::Network,
            "exact" => Grouping::Exact,
            other => {
                return Err(format!(
                    "--grouping {other:?}: use network (IPv4 /24, IPv6 /64) or exact"
                ));
            }
        };
        let resolvers = cli
            .resolver
            .iter()
            .map(|r| parse_resolver(r))
            .collect::<Result<Vec<_>, _>>()?;
        let store = match cli.store.as_str() {
            "memory" => StoreSpec::Memory,
            "" => return Err("--store: give a file path or memory".into()),
            s if s.starts_with("redis://") => StoreSpec::Redis(s.to_string()),
            s if s.contains("://") => {
                return Err(format!(
                    "--store {s:?}: give a file path, redis://HOST:PORT/DB or memory"
                ));
            }
            s => StoreSpec::File(PathBuf::from(s)),
        };
        let reply = SmtpReply::parse(&cli.reply)
            .ok()
            .filter(|r| (400..500).contains(&r.code()) && r.code() != 421)
            .ok_or_else(|| {
                format!(
                    "--reply {:?}: must be a 4xx SMTP reply other than 421, e.g. {DEFAULT_REPLY:?}",
                    cli.reply
                )
            })?;
        let trap = dur("--trap-time", &cli.trap_time)?.as_secs();
        if trap == 0 {
            return Err("--trap-time must be longer than 0".into());
        }
        let trap_reply = match cli.trap_action.as_str() {
            "tempfail" => reply.clone(),
            "reject" => SmtpReply::parse(TRAP_REJECT).map_err(|e| e.to_string())?,
            other => {
                return Err(format!("--trap-action {other:?}: use tempfail or reject"));
            }
        };
        let spf_timeout = dur("--spf-timeout", &cli.spf_timeout)?;
        if !(1..=60).contains(&spf_timeout.as_secs()) {
            return Err("--spf-timeout must be 1 s to 60 s".into());
        }
        let purge_interval = dur("--purge-interval", &cli.purge_interval)?;
        if purge_interval.as_secs() < 10 {
            return Err("--purge-interval must be at least 10 s".into());
        }
        Ok(Settings {
            timing: Timing {
                pass,
                grey_exp,
                white_exp,
                trap,
            },
            grouping,
            lists: ListFiles {
                clients: cli.wl_ip,
                senders: cli.wl_domain,
                recipients: cli.wl_rcpt,
                traps: cli.traps,
            },
            resolvers,
            store,
            reply,
            trap_reply,
            spf_timeout,
            purge_interval,
            hostname: cli.hostname,
            verbose: cli.verbose,
        })
    }
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "--resolver {text:?}: not an IP address or IP:PORT (e.g. 127.0.0.1:53 or [::1]:53)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("filter-greylist")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn run(list: &[&str]) -> Settings {
        match Settings::from_args(args(list)) {
            CliOutcome::Run(s) => *s,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    fn error(list: &[&str]) -> String {
        match Settings::from_args(args(list)) {
            CliOutcome::Error(e) => e,
            other => panic!("{list:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("300"), Some(300));
        assert_eq!(d("5m"), Some(300));
        assert_eq!(d("720h"), Some(720 * 3600));
        assert_eq!(d("1h30m"), Some(5400));
        assert_eq!(d("30d"), Some(30 * 86400));
        assert_eq!(d("90s"), Some(90));
        assert_eq!(d("0"), Some(0));
        for bad in ["", "5x", "m", "5m3", "-5", "1.5h", "99999999999999999999d"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn go_command_line() {
        let s = run(&[
            "-passtime",
            "60",
            "-greyexp",
            "2h",
            "-whiteexp",
            "720h",
            "-wl-ip",
            "/etc/ips",
            "-wl-domain",
            "/etc/domains",
        ]);
        assert_eq!(
            s.timing,
            Timing {
                pass: 60,
                grey_exp: 7200,
                white_exp: 720 * 3600,
                trap: 86400
            }
        );
        assert_eq!(s.lists.clients, Some("/etc/ips".into()));
        assert_eq!(s.lists.senders, Some("/etc/domains".into()));
        assert_eq!(s.lists.recipients, None);
        assert_eq!(s.store, StoreSpec::File(DEFAULT_PATH.into()));
        assert_eq!(s.grouping, Grouping::Network);
        assert_eq!(s.reply.as_str(), DEFAULT_REPLY);
    }

    #[test]
    fn gnu_command_line_and_defaults() {
        let s = run(&[]);
        assert_eq!(s.timing, Timing::default());
        assert!(s.resolvers.is_empty());
        let s = run(&[
            "--pass-time=5m",
            "--grey-exp",
            "1d",
            "--wl-rcpt",
            "/etc/rcpts",
            "--resolver",
            "127.0.0.1:5353",
            "--resolver=::1",
            "--store",
            "/tmp/g.redb",
            "--grouping",
            "exact",
            "--reply",
            "450 4.7.1 Come back later",
        ]);
        assert_eq!(s.timing.pass, 300);
        assert_eq!(s.timing.grey_exp, 86400);
        assert_eq!(s.lists.recipients, Some("/etc/rcpts".into()));
        assert_eq!(
            s.resolvers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(s.store, StoreSpec::File("/tmp/g.redb".into()));
        assert_eq!(s.grouping, Grouping::Exact);
        assert_eq!(s.reply.as_str(), "450 4.7.1 Come back later");
        assert_eq!(run(&["--store", "memory"]).store, StoreSpec::Memory);
        let s = run(&[
            "--traps",
            "/etc/traps",
            "--trap-time",
            "2d",
            "--trap-action",
            "reject",
        ]);
        assert_eq!(s.lists.traps, Some("/etc/traps".into()));
        assert_eq!(s.timing.trap, 2 * 86400);
        assert_eq!(s.trap_reply.as_str(), TRAP_REJECT);
        assert_eq!(run(&[]).trap_reply.as_str(), DEFAULT_REPLY);
        assert_eq!(
            run(&["--store", "redis://127.0.0.1:6379/2"]).store,
            StoreSpec::Redis("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(run(&["-wl_ip", "/x"]).lists.clients, Some("/x".into()));
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert!(error(&["-passtime", "soon"]).contains("-passtime \"soon\""));
        assert!(error(&["-greyexp", "60", "-passtime", "300"]).contains("-greyexp"));
        assert!(error(&["-whiteexp", "0"]).contains("-whiteexp"));
        assert!(error(&["--resolver", "dns.example"]).contains("--resolver"));
        assert!(error(&["--reply", "550 5.7.1 no"]).contains("--reply"));
        assert!(error(&["--reply", "421 bye"]).contains("--reply"));
        assert!(error(&["--grouping", "/16"]).contains("--grouping"));
        assert!(error(&["--store", "http://127.0.0.1/"]).contains("--store"));
        assert!(error(&["-noSuchFlag"]).contains("--noSuchFlag"));
        assert!(error(&["-passtime"]).contains("--passtime"));
        assert!(error(&["--spf-timeout", "0"]).contains("--spf-timeout"));
        assert!(error(&["--trap-action", "drop"]).contains("--trap-action"));
        assert!(error(&["--trap-time", "0"]).contains("--trap-time"));
    }

    #[test]
    fn help_and_version() {
        for h in ["--help", "-h", "-help"] {
            match Settings::from_args(args(&[h])) {
                CliOutcome::Print(text) => {
                    assert!(text.contains("--passtime"), "{h}");
                    assert!(text.contains("--wl-rcpt"), "{h}");
                    assert!(text.contains("-passtime 300"), "{h}");
                }
                other => panic!("{h}: {other:?}"),
            }
        }
        assert!(matches!(
            Settings::from_args(args(&["--version"])),
            CliOutcome::Print(_)
        ));
    }
}
