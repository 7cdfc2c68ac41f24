//! The command line: the Go filter's flags (`-url URL`, `-settings-id ID`, single dash),
//! the same in GNU style (`--url URL`, `--url=URL`), and ours.
//!
//! [`normalize`] rewrites single-dash long flags into GNU style before clap reads them,
//! so one definition serves both spellings; [`Settings::from_args`] checks every value
//! and says which flag is wrong.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::client::Endpoint;
use crate::request::RequestOptions;
use crate::verdict::{AuthMode, Greylist, OnError, Policy, SpamHeaders};

/// The flags that take a value, for [`normalize`].
const VALUE_FLAGS: [&str; 12] = [
    "url",
    "settings-id",
    "connect-timeout",
    "timeout",
    "on-error",
    "max-size",
    "spam-headers",
    "greylist",
    "authenticated",
    "mta-name",
    "spool-above",
    "spool-dir",
];

/// The command line as clap reads it (GNU spelling).
#[derive(Parser, Debug)]
#[command(
    name = "filter-rspamd",
    version,
    about = "OpenSMTPD filter: scans each message with rspamd and applies its verdict.",
    long_about = "OpenSMTPD filter: scans each message with rspamd (POST /checkv2) and \
applies its verdict: reject, tempfail, headers, subject rewrite, DKIM signatures. A drop-in \
for the Go filter-rspamd: its flags are accepted as it spells them (-url URL, -settings-id \
ID) as well as in GNU style. See filter-rspamd(8).",
    after_help = "The Go spelling works for every flag: -url URL, -settings-id ID, -timeout 5000."
)]
struct Cli {
    /// rspamd's normal worker: an http(s) URL, or a unix socket path.
    #[arg(long, value_name = "URL", default_value = "http://localhost:11333")]
    url: String,

    /// rspamd settings id sent with each message (Settings-ID).
    #[arg(long, value_name = "ID")]
    settings_id: Option<String>,

    /// Longest wait for a connection to rspamd, in milliseconds (10-60000).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    connect_timeout: u64,

    /// Longest wait for rspamd's whole answer, in milliseconds (100-300000).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout: u64,

    /// When rspamd cannot be asked or answers nonsense: tempfail (451 4.7.1) or accept.
    #[arg(long, value_name = "POLICY", default_value = "tempfail")]
    on_error: String,

    /// Messages larger than this (bytes; K, M or G suffix) are passed unscanned.
    #[arg(long, value_name = "SIZE", default_value = "10M")]
    max_size: String,

    /// A message larger than this (bytes; K, M or G suffix) is kept in a temporary
    /// file rather than in memory while it is scanned.
    #[arg(long, value_name = "SIZE", default_value = "1M")]
    spool_above: String,

    /// Directory for those temporary files (unlinked at once; default: $TMPDIR, else /tmp).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,

    /// X-Spam, X-Spam-Score, X-Spam-Status: always, never, or on-action (add header,
    /// rewrite subject).
    #[arg(long, value_name = "WHEN", default_value = "on-action")]
    spam_headers: String,

    /// The greylist action: proceed (deliver) or tempfail (451 4.7.1).
    #[arg(long, value_name = "WHAT", default_value = "proceed")]
    greylist: String,

    /// Mail of authenticated sessions: scan, sign-only (DKIM signatures only, never
    /// refused) or skip (not scanned).
    #[arg(long, value_name = "MODE", default_value = "scan")]
    authenticated: String,

    /// Never refuse a message: rspamd's refusals become delivery with X-Spam headers.
    #[arg(long)]
    never_reject: bool,

    /// Send `Pass: all` (rspamd checks every rule even after a pre-result).
    #[arg(long)]
    pass_all: bool,

    /// MTA-Name sent to rspamd (default: the name smtpd greets with).
    #[arg(long, value_name = "NAME")]
    mta_name: Option<String>,

    /// Log more.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// Everything the command line said, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// rspamd.
    pub endpoint: Endpoint,
    /// Per-request headers.
    pub request: RequestOptions,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Largest message scanned.
    pub max_size: usize,
    /// Messages larger than this are spooled to a temporary file.
    pub spool_above: usize,
    /// Where the temporary files go (`None`: `TMPDIR`, else `/tmp`).
    pub spool_dir: Option<PathBuf>,
    /// What to do with the answers.
    pub policy: Policy,
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

/// Rewrites single-dash long flags into GNU style: `-url X` → `--url=X`,
/// `-settings-id=Y` → `--settings-id=Y`. The value after a flag that takes one is kept
/// as it is, even when it starts with `-`. Anything after `--` is left alone.
pub fn normalize<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    opensmtpd_filter::cli::gnu_style_args(args, &VALUE_FLAGS, |n: &str| {
        n.to_ascii_lowercase().replace('_', "-")
    })
}

/// `-url`: an http(s) URL, or else a unix socket path.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return match crate::client::HttpUrl::parse(text) {
            Ok(_) => Ok(Endpoint::Http(text.to_string())),
            Err(e) => Err(format!("-url {e}")),
        };
    }
    if let Some(path) = text.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if text.is_empty() || text.contains("://") {
        return Err(format!(
            "-url {text:?}: neither an http(s) URL nor a unix socket path"
        ));
    }
    Ok(Endpoint::Unix(PathBuf::from(text)))
}

/// `10M`, `512K`, `1G`, `1000000`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 1024),
        (i, 'm' | 'M') => (&t[..i], 1024 * 1024),
        (i, 'g' | 'G') => (&t[..i], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn choice<T: Copy>(flag: &str, value: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(value))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            format!("--{flag} {value:?}: use one of {}", names.join(", "))
        })
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
        let endpoint = parse_endpoint(&cli.url)?;
        if !(10..=60_000).contains(&cli.connect_timeout) {
            return Err(format!(
                "--connect-timeout {}: must be 10 to 60000 milliseconds",
                cli.connect_timeout
            ));
        }
        if !(100..=300_000).contains(&cli.timeout) {
            return Err(format!(
                "--timeout {}: must be 100 to 300000 milliseconds",
                cli.timeout
            ));
        }
        let max_size = parse_size(&cli.max_size)
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--max-size {:?}: a size such as 10M", cli.max_size))?;
        let spool_above = parse_size(&cli.spool_above).ok_or_else(|| {
            format!(
                "--spool-above {:?}: a size such as 1M (0: always)",
                cli.spool_above
            )
        })?;
        if let Some(dir) = &cli.spool_dir
            && !dir.is_dir()
        {
            return Err(format!("--spool-dir {}: not a directory", dir.display()));
        }
        let policy = Policy {
            spam_headers: choice(
                "spam-headers",
                &cli.spam_headers,
                &[
                    ("always", SpamHeaders::Always),
                    ("never", SpamHeaders::Never),
                    ("on-action", SpamHeaders::OnAction),
                ],
            )?,
            greylist: choice(
                "greylist",
                &cli.greylist,
                &[
                    ("proceed", Greylist::Proceed),
                    ("tempfail", Greylist::Tempfail),
                ],
            )?,
            on_error: choice(
                "on-error",
                &cli.on_error,
                &[("tempfail", OnError::Tempfail), ("accept", OnError::Accept)],
            )?,
            authenticated: choice(
                "authenticated",
                &cli.authenticated,
                &[
                    ("scan", AuthMode::Scan),
                    ("sign-only", AuthMode::SignOnly),
                    ("skip", AuthMode::Skip),
                ],
            )?,
            never_reject: cli.never_reject,
        };
        let clean = |flag: &str, v: Option<String>| -> Result<Option<String>, String> {
            match v {
                Some(s) if s.is_empty() || s.bytes().any(|b| b < 0x20 || b == 0x7f) => Err(
                    format!("--{flag} {s:?}: must be non-empty, without control characters"),
                ),
                other => Ok(other),
            }
        };
        Ok(Settings {
            endpoint,
            request: RequestOptions {
                settings_id: clean("settings-id", cli.settings_id)?,
                mta_name: clean("mta-name", cli.mta_name)?,
                pass_all: cli.pass_all,
            },
            connect_timeout: Duration::from_millis(cli.connect_timeout),
            timeout: Duration::from_millis(cli.timeout),
            max_size,
            spool_above,
            spool_dir: cli.spool_dir,
            policy,
            verbose: cli.verbose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("filter-rspamd")
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
    fn go_flags_and_defaults() {
        let s = run(&[]);
        assert_eq!(s.endpoint, Endpoint::Http("http://localhost:11333".into()));
        assert_eq!(s.request, RequestOptions::default());
        assert_eq!(s.policy, Policy::default());
        assert_eq!(s.max_size, 10 * 1024 * 1024);
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.connect_timeout, Duration::from_secs(1));
        let s = run(&["-url", "http://127.0.0.1:11333", "-settings-id", "outbound"]);
        assert_eq!(s.endpoint, Endpoint::Http("http://127.0.0.1:11333".into()));
        assert_eq!(s.request.settings_id.as_deref(), Some("outbound"));
        let s = run(&["-url=/var/run/rspamd/normal.sock"]);
        assert_eq!(
            s.endpoint,
            Endpoint::Unix("/var/run/rspamd/normal.sock".into())
        );
        let s = run(&["--url", "unix:/run/r.sock", "--settings-id=x"]);
        assert_eq!(s.endpoint, Endpoint::Unix("/run/r.sock".into()));
        assert_eq!(s.request.settings_id.as_deref(), Some("x"));
    }

    #[test]
    fn our_flags() {
        let s = run(&[
            "--on-error",
            "accept",
            "--max-size",
            "512K",
            "--spam-headers=always",
            "--greylist",
            "tempfail",
            "--authenticated",
            "sign-only",
            "--never-reject",
            "--pass-all",
            "--mta-name",
            "mx.example.org",
            "--timeout",
            "2500",
            "-connect-timeout",
            "300",
            "-spool-above",
            "64K",
            "--spool-dir=/tmp",
        ]);
        assert_eq!(
            s.policy,
            Policy {
                spam_headers: SpamHeaders::Always,
                greylist: Greylist::Tempfail,
                on_error: OnError::Accept,
                authenticated: AuthMode::SignOnly,
                never_reject: true,
            }
        );
        assert_eq!(s.max_size, 512 * 1024);
        assert_eq!(s.spool_above, 64 * 1024);
        assert_eq!(s.spool_dir.as_deref(), Some(std::path::Path::new("/tmp")));
        assert!(s.request.pass_all);
        assert_eq!(s.request.mta_name.as_deref(), Some("mx.example.org"));
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.connect_timeout, Duration::from_millis(300));
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert!(error(&["--on-error", "421"]).contains("--on-error"));
        assert!(error(&["--spam-headers", "sometimes"]).contains("--spam-headers"));
        assert!(error(&["--max-size", "big"]).contains("--max-size"));
        assert!(error(&["--max-size", "0"]).contains("--max-size"));
        assert!(error(&["--spool-above", "x"]).contains("--spool-above"));
        assert!(error(&["--spool-dir", "/nonexistent/d"]).contains("--spool-dir"));
        assert!(error(&["--timeout", "5"]).contains("--timeout"));
        assert!(error(&["-url", "ftp://x"]).contains("-url"));
        assert!(error(&["-url", "http://"]).contains("-url"));
        assert!(error(&["-noSuchFlag"]).contains("--nosuchflag"));
        assert!(error(&["-settings-id", ""]).contains("--settings-id"));
        assert!(error(&["-url"]).contains("--url"));
    }

    #[test]
    fn help_and_version() {
        for h in ["--help", "-h", "-help"] {
            match Settings::from_args(args(&[h])) {
                CliOutcome::Print(text) => {
                    assert!(text.contains("--settings-id"), "{h}");
                    assert!(text.contains("-url URL"), "{h}");
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
    fn sizes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
