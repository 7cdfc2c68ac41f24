//! The command line: the Go filter's flags (`-blockBelow 50`, single dash, camelCase),
//! the same in GNU style (`--block-below 50`, `--block-below=50`), and ours.
//!
//! [`normalize`] rewrites Go-style arguments into GNU style before clap reads them, so
//! one definition serves both spellings; [`Settings::from_args`] checks every value and
//! says which flag is wrong.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::dns::{SENDERSCORE_ZONE, Zone};
use crate::policy::{AnswerMap, BlockPhase, Policy, Score, SlowFactor, Threshold};

/// The flags that take a value (GNU spelling), for [`normalize`].
const VALUE_FLAGS: [&str; 10] = [
    "block-below",
    "block-phase",
    "junk-below",
    "slow-factor",
    "allowlist",
    "whitelist",
    "resolver",
    "zone",
    "dns-timeout",
    "cache-size",
];

/// The command line as clap reads it (GNU spelling).
#[derive(Parser, Debug)]
#[command(
    name = "filter-senderscore",
    version,
    about = "OpenSMTPD filter: blocks, junks or slows down clients by IP reputation (SenderScore).",
    long_about = "OpenSMTPD filter: blocks, junks or slows down clients by IP reputation \
(SenderScore and zones like it). A drop-in for the Go filter-senderscore: its flags are \
accepted as it spells them (-blockBelow 50) as well as in GNU style (--block-below 50). \
See filter-senderscore(8).",
    after_help = "Every flag may also be written the Go way: -blockBelow 50, -scoreHeader, -testMode, -allowlist FILE, -whitelist FILE."
)]
struct Cli {
    /// Disconnect clients whose score is below N (0-101; -1: never) at --block-phase.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    block_below: i64,

    /// Where --block-below disconnects: connect, helo, ehlo, starttls, auth, mail-from,
    /// rcpt-to or quit (helo and ehlo both mean the greeting).
    #[arg(long, value_name = "PHASE", default_value = "connect")]
    block_phase: String,

    /// Mark the mail of clients whose score is below N as junk (0-101; -1: never).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    junk_below: i64,

    /// Delay every answer to a client by MS x (100 - score) / 100 milliseconds
    /// (1-120000; 0 or -1: never). No delay when the score is unknown.
    #[arg(long, value_name = "MS", default_value_t = -1, allow_negative_numbers = true)]
    slow_factor: i64,

    /// Prepend "X-SenderScore: N" to each message when the score is known.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    score_header: bool,

    /// File of IP addresses and CIDR networks (one per line, # comments) never looked
    /// up, slowed, junked or blocked. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", visible_alias = "whitelist")]
    allowlist: Option<PathBuf>,

    /// No DNS: the score is the client address's 4th octet (255: no data), as the Go
    /// filter's -testMode.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    test_mode: bool,

    /// DNS server to ask, IP or IP:PORT (repeatable; default: the system resolver).
    #[arg(long, value_name = "IP:PORT")]
    resolver: Vec<String>,

    /// Reputation zone to ask (repeatable; default: score.senderscore.com):
    /// NAME[,weight=W][,ipv6][,A.B.C.D=SCORE...]. Several zones are combined into their
    /// weighted mean.
    #[arg(long, value_name = "SPEC")]
    zone: Vec<String>,

    /// The longest a lookup may take, in milliseconds (100-30000).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    dns_timeout: u64,

    /// The most answers kept in the cache (0: no cache).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    cache_size: usize,

    /// Log more (each lookup).
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// How scores are obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// From DNS zones.
    Dns {
        /// The servers to ask (empty: the system resolver).
        resolvers: Vec<SocketAddr>,
        /// The zones, at least one.
        zones: Vec<Zone>,
        /// The longest one lookup may take.
        timeout: Duration,
        /// The most cached answers.
        cache_size: usize,
    },
    /// `-testMode`: from the client address itself.
    Test,
}

/// Everything the command line said, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Thresholds, block phase, slowing, header.
    pub policy: Policy,
    /// The allowlist file.
    pub allowlist: Option<PathBuf>,
    /// DNS or test mode.
    pub mode: Mode,
    /// Debug logging.
    pub verbose: bool,
}

/// The outcome of reading the command line.
#[derive(Debug)]
pub enum CliOutcome {
    /// Run with these settings.
    Run(Settings),
    /// `--help` or `--version`: print this on stdout and exit 0.
    Print(String),
    /// A wrong flag or value: print this on stderr and exit 1.
    Error(String),
}

/// Rewrites Go-style flags into GNU style: `-blockBelow 50` → `--block-below=50`,
/// `--scoreHeader` → `--score-header`. Values (the argument after a flag that takes one)
/// are kept as they are, even when they start with `-` (`-blockBelow -1`). Anything after
/// `--` is left alone.
pub fn normalize<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    opensmtpd_filter::cli::gnu_style_args(args, &VALUE_FLAGS, opensmtpd_filter::cli::kebab_case)
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
            Ok(settings) => CliOutcome::Run(settings),
            Err(e) => CliOutcome::Error(format!("error: {e}\n")),
        }
    }

    fn check(cli: Cli) -> Result<Settings, String> {
        let block_phase = BlockPhase::parse(&cli.block_phase).ok_or_else(|| {
            format!(
                "-blockPhase {:?}: not a phase; use one of {}",
                cli.block_phase,
                BlockPhase::NAMES
            )
        })?;
        let block = threshold("-blockBelow", cli.block_below)?.map(|t| (t, block_phase));
        let junk = threshold("-junkBelow", cli.junk_below)?;
        let slow = match cli.slow_factor {
            -1 | 0 => None,
            ms => Some(
                u32::try_from(ms)
                    .ok()
                    .and_then(SlowFactor::new)
                    .ok_or_else(|| {
                        format!(
                            "-slowFactor {ms}: must be 1 to {} milliseconds (0 or -1: no slowing)",
                            SlowFactor::MAX_MS
                        )
                    })?,
            ),
        };
        let policy = Policy {
            block,
            junk,
            slow,
            score_header: cli.score_header,
        };
        if !(100..=30_000).contains(&cli.dns_timeout) {
            return Err(format!(
                "--dns-timeout {}: must be 100 to 30000 milliseconds",
                cli.dns_timeout
            ));
        }
        let mode = if cli.test_mode {
            if !cli.resolver.is_empty() || !cli.zone.is_empty() {
                return Err(
                    "-testMode asks no DNS: --resolver and --zone cannot go with it".into(),
                );
            }
            Mode::Test
        } else {
            let resolvers = cli
                .resolver
                .iter()
                .map(|r| parse_resolver(r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut zones = cli
                .zone
                .iter()
                .map(|z| parse_zone(z))
                .collect::<Result<Vec<_>, _>>()?;
            if zones.is_empty() {
                zones.push(Zone::default());
            }
            Mode::Dns {
                resolvers,
                zones,
                timeout: Duration::from_millis(cli.dns_timeout),
                cache_size: cli.cache_size,
            }
        };
        Ok(Settings {
            policy,
            allowlist: cli.allowlist,
            mode,
            verbose: cli.verbose,
        })
    }

    /// The longest any one handler can run: the lookup, then the longest delay.
    pub fn longest_answer(&self) -> Duration {
        let lookup = match &self.mode {
            Mode::Dns { timeout, .. } => *timeout,
            Mode::Test => Duration::ZERO,
        };
        let delay = self.policy.slow.map_or(Duration::ZERO, |s| s.max_delay());
        lookup + delay
    }
}

fn threshold(flag: &str, n: i64) -> Result<Option<Threshold>, String> {
    if n == -1 {
        return Ok(None);
    }
    u8::try_from(n)
        .ok()
        .and_then(Threshold::new)
        .map(Some)
        .ok_or_else(|| format!("{flag} {n}: must be 0 to 101 (-1: never)"))
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

/// `NAME[,weight=W][,ipv6][,A.B.C.D=SCORE...]`.
fn parse_zone(spec: &str) -> Result<Zone, String> {
    let bad = |why: &str| format!("--zone {spec:?}: {why}");
    let mut parts = spec.split(',');
    let name = parts
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid_name = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return Err(bad("not a DNS zone name"));
    }
    let mut zone = Zone {
        name,
        ..Zone::default()
    };
    let mut table = Vec::new();
    for part in parts {
        let part = part.trim();
        if part == "ipv6" {
            zone.ipv6 = true;
        } else if let Some(w) = part.strip_prefix("weight=") {
            zone.weight = w
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=100).contains(w))
                .ok_or_else(|| bad("weight must be 1 to 100"))?;
        } else if let Some((addr, score)) = part.split_once('=') {
            let addr: Ipv4Addr = addr
                .parse()
                .map_err(|_| bad(&format!("{addr:?} is not an IPv4 answer address")))?;
            let score = score
                .parse::<u8>()
                .ok()
                .and_then(Score::new)
                .ok_or_else(|| bad(&format!("{score:?} is not a score (0 to 100)")))?;
            table.push((addr, score));
        } else {
            return Err(bad(&format!(
                "unknown option {part:?} (weight=W, ipv6, or A.B.C.D=SCORE)"
            )));
        }
    }
    if !table.is_empty() {
        zone.map = AnswerMap::Table(table);
    }
    if zone.name == SENDERSCORE_ZONE && zone.ipv6 {
        log::debug!("{SENDERSCORE_ZONE} is asked about IPv6 clients as configured");
    }
    Ok(zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("filter-senderscore")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn run(list: &[&str]) -> Settings {
        match Settings::from_args(args(list)) {
            CliOutcome::Run(s) => s,
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
    fn normalizes_go_flags() {
        let n = |l: &[&str]| {
            normalize(args(l))
                .into_iter()
                .skip(1)
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            n(&[
                "-blockBelow",
                "50",
                "-blockPhase",
                "rcpt-to",
                "-scoreHeader"
            ]),
            [
                "--block-below=50",
                "--block-phase=rcpt-to",
                "--score-header"
            ]
        );
        assert_eq!(n(&["-junkBelow=-1"]), ["--junk-below=-1"]);
        assert_eq!(n(&["-slowFactor", "-1"]), ["--slow-factor=-1"]);
        assert_eq!(n(&["--blockBelow", "5"]), ["--block-below=5"]);
        assert_eq!(n(&["--block-below", "5"]), ["--block-below=5"]);
        assert_eq!(n(&["-allowlist", "-odd-file"]), ["--allowlist=-odd-file"]);
        assert_eq!(n(&["-h"]), ["-h"]);
        assert_eq!(n(&["-testMode=true"]), ["--test-mode=true"]);
        assert_eq!(n(&["--", "-blockBelow"]), ["--", "-blockBelow"]);
        assert_eq!(n(&["-blockBelow"]), ["--block-below"]);
    }

    #[test]
    fn go_command_line() {
        let s = run(&[
            "-blockBelow",
            "20",
            "-blockPhase",
            "rcpt-to",
            "-junkBelow",
            "60",
            "-slowFactor",
            "1000",
            "-scoreHeader",
        ]);
        assert_eq!(
            s.policy,
            Policy {
                block: Some((Threshold::new(20).unwrap(), BlockPhase::RcptTo)),
                junk: Threshold::new(60),
                slow: SlowFactor::new(1000),
                score_header: true,
            }
        );
        assert_eq!(
            s.mode,
            Mode::Dns {
                resolvers: vec![],
                zones: vec![Zone::default()],
                timeout: Duration::from_millis(2000),
                cache_size: 10_000
            }
        );
        assert_eq!(s.longest_answer(), Duration::from_millis(3000));
    }

    #[test]
    fn gnu_command_line_and_defaults() {
        let s = run(&[]);
        assert_eq!(s.policy, Policy::default());
        assert_eq!(s.allowlist, None);
        let s = run(&[
            "--block-below=30",
            "--score-header=false",
            "--whitelist",
            "/etc/allow",
            "--resolver",
            "127.0.0.1:5353",
            "--resolver=::1",
            "--test-mode=false",
        ]);
        assert_eq!(
            s.policy.block,
            Some((Threshold::new(30).unwrap(), BlockPhase::Connect))
        );
        assert!(!s.policy.score_header);
        assert_eq!(s.allowlist, Some(PathBuf::from("/etc/allow")));
        let Mode::Dns { resolvers, .. } = s.mode else {
            panic!()
        };
        assert_eq!(
            resolvers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(run(&["-allowlist", "/a"]).allowlist, Some("/a".into()));
        assert_eq!(run(&["-testMode"]).mode, Mode::Test);
        assert_eq!(run(&["-slowFactor", "0"]).policy.slow, None);
        assert_eq!(run(&["-blockBelow", "-1"]).policy.block, None);
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert!(error(&["-blockPhase", "data"]).contains("-blockPhase \"data\""));
        assert!(error(&["-blockBelow", "102"]).contains("-blockBelow 102"));
        assert!(error(&["-junkBelow", "-5"]).contains("-junkBelow -5"));
        assert!(error(&["-blockBelow", "x"]).contains("--block-below"));
        assert!(error(&["-slowFactor", "999999"]).contains("-slowFactor"));
        assert!(error(&["-resolver", "dns.example"]).contains("--resolver"));
        assert!(error(&["-noSuchFlag"]).contains("--no-such-flag"));
        assert!(error(&["--zone", "bad zone"]).contains("--zone"));
        assert!(error(&["--dns-timeout", "5"]).contains("--dns-timeout"));
        assert!(error(&["-testMode", "--resolver", "127.0.0.1"]).contains("-testMode"));
        assert!(error(&["-blockBelow"]).contains("--block-below"));
    }

    #[test]
    fn help_and_version() {
        for h in ["--help", "-h", "-help"] {
            match Settings::from_args(args(&[h])) {
                CliOutcome::Print(text) => {
                    assert!(text.contains("--block-below"), "{h}");
                    assert!(text.contains("-blockBelow"), "{h}");
                }
                other => panic!("{h}: {other:?}"),
            }
        }
        assert!(matches!(
            Settings::from_args(args(&["--version"])),
            CliOutcome::Print(_)
        ));
    }

    #[test]
    fn zones() {
        let z = parse_zone("Rep.Example.Org.,weight=3,ipv6,127.0.0.2=0,127.0.0.3=40").unwrap();
        assert_eq!(z.name, "rep.example.org");
        assert_eq!(z.weight, 3);
        assert!(z.ipv6);
        assert_eq!(
            z.map,
            AnswerMap::Table(vec![
                ("127.0.0.2".parse().unwrap(), Score::new(0).unwrap()),
                ("127.0.0.3".parse().unwrap(), Score::new(40).unwrap())
            ])
        );
        assert_eq!(
            parse_zone("score.senderscore.com").unwrap(),
            Zone::default()
        );
        for bad in [
            "",
            ",weight=2",
            "a..b",
            "x.example,weight=0",
            "x.example,weight=101",
            "x.example,127.0.0.2=101",
            "x.example,::1=5",
            "x.example,colour=red",
            "x y.example",
        ] {
            assert!(parse_zone(bad).is_err(), "{bad}");
        }
        let s = run(&["--zone", "a.example", "--zone", "b.example,weight=2"]);
        let Mode::Dns { zones, .. } = s.mode else {
            panic!()
        };
        assert_eq!(zones.len(), 2);
    }
}
