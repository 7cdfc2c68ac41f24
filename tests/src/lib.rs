//! End-to-end test rig: one real OpenSMTPD per test, on loopback, in a private mount
//! namespace, driving the filters under test.
//!
//! ```no_run
//! use opensmtpd_e2e::{Daemon, Rig, capture_filter_cmd};
//! let rig = Rig::builder(Daemon::Smtpd74)
//!     .filter("capture", &capture_filter_cmd("capture.txt"))
//!     .listen_plain("capture")
//!     .start()
//!     .unwrap();
//! let out = rig.swaks(&["-f", "a@example.org", "-t", "rigmail@lab.test"]);
//! assert!(out.status.success());
//! let mails = rig.wait_delivered(1, std::time::Duration::from_secs(10));
//! assert!(rig.smtpd_alive());
//! ```
//!
//! What one [`Rig`] owns (everything is stopped by PID and removed on drop):
//! - a temporary directory `/tmp/opensmtpd-rig-*` (mode 755; under `/dev/shm` after
//!   [`set_rig_base`]`(`[`RigBase::Shm`]`)`) with the config, logs, a
//!   private spool (mode 711), the maildir of the throwaway user and `out/`, a directory
//!   owned by the filter user `opensmtpd` where filters write their files;
//! - a dnsmasq on `127.43.S.53:53` (S is the rig's slot) that answers only the rig's
//!   records (`host-record=` for the test clients, with PTRs) and NXDOMAIN for the rest;
//! - one smtpd (`smtpd -d -v -f CONF`), run under `unshare -m --propagation private` with
//!   its own resolv.conf, an empty /etc/hosts (every name comes from the rig's DNS), its
//!   own spool, a tmpfs `/run` (control socket) and, for 7.4, its own helpers
//!   (mail.maildir, encrypt, ...) bound over the system's in /usr/libexec/opensmtpd. It
//!   listens on `127.43.S.1` (port 25 plain, 587 STARTTLS+AUTH) and `[::1]:(24000+S)`;
//!   smtpd's stderr goes to `smtpd.log` in the rig's directory.
//!
//! Slots are allocated with a lock file per slot (`/tmp/opensmtpd-rig-slots`), so rigs in
//! parallel threads and parallel processes never share an address.
//!
//! The demo (`scripts/demo`, `tests/src/bin/demo.rs`) uses the same rig.
//!
//! Every test names its daemon (`smtpd68_…`, `smtpd74_…`): select daemons with cargo's
//! name filter (`cargo test -p opensmtpd-e2e smtpd74_`), never by skipping inside a test.
//!
//! Environment: `RIG_KEEP=1` keeps the temporary directories for inspection;
//! `RIG_SMTPD74_ROOT` and `RIG_MAIL_USER` as for scripts/lib/provision.sh. A missing
//! daemon or tool makes [`RigBuilder::start`] fail with a hint to run scripts/test.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The mail domain the rig delivers for.
pub const MAIL_DOMAIN: &str = "lab.test";
/// A recipient that is delivered (to the throwaway user's maildir).
pub const RCPT_OK: &str = "rigmail@lab.test";
/// Further recipients delivered to the same maildir (one message file per recipient).
pub const RCPTS_OK_MORE: [&str; 3] = ["alice@lab.test", "bob@lab.test", "pipe|box@lab.test"];
/// A recipient of the rig's domain that smtpd rejects (`524 5.2.4`).
pub const RCPT_UNKNOWN: &str = "nobody@lab.test";
/// A recipient of a foreign domain that smtpd rejects (`550 Invalid recipient`).
pub const RCPT_FOREIGN: &str = "someone@foreign.example";
/// The name smtpd announces (`listen on ... hostname`), with a self-signed certificate.
pub const MX_NAME: &str = "mx.lab.test";
/// Default client address (has a PTR `client10.lab.test`).
pub const CLIENT: &str = "127.0.0.10";
/// Client addresses with forward-confirmed reverse DNS in every rig: `clientN.lab.test`.
pub const CLIENTS_WITH_RDNS: [&str; 3] = ["127.0.0.10", "127.0.0.50", "127.0.0.90"];
/// A client address without any PTR record (rdns `<unknown>`).
pub const CLIENT_NO_RDNS: &str = "127.0.0.1";

const SMTPD68: &str = "/usr/sbin/smtpd";
const DEFAULT_SMTPD74_ROOT: &str = "/var/cache/opensmtpd-filter-rig/opensmtpd-7.4";
const FILTER_USER: &str = "opensmtpd";
const SLOT_DIR: &str = "/tmp/opensmtpd-rig-slots";

/// Where the rigs of this process keep their directories (smtpd's spool, the maildir,
/// the logs; rspamd's too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RigBase {
    /// `/tmp`, on disk: the default, and the only place for runs that keep much mail
    /// (a 100 000-session soak delivers gigabytes).
    Tmp,
    /// `/dev/shm`, a tmpfs: for benchmarks. smtpd creates, writes and renames files in
    /// its spool for every message, and on this machine's virtual disk those took
    /// 3 to 7 ms at p50 from one run to the next, with the same filters: noise larger
    /// than the differences a benchmark is after. In memory they cost the same in
    /// every row.
    Shm,
}

impl RigBase {
    /// The directory.
    pub fn path(self) -> &'static Path {
        match self {
            RigBase::Tmp => Path::new("/tmp"),
            RigBase::Shm => Path::new("/dev/shm"),
        }
    }
}

static RIG_IN_SHM: AtomicBool = AtomicBool::new(false);

/// Puts the directories of this process's next rigs (and rspamds) under `base`.
pub fn set_rig_base(base: RigBase) {
    RIG_IN_SHM.store(base == RigBase::Shm, Ordering::Relaxed);
}

/// Where this process's rigs keep their directories ([`set_rig_base`]).
pub fn rig_base() -> RigBase {
    if RIG_IN_SHM.load(Ordering::Relaxed) {
        RigBase::Shm
    } else {
        RigBase::Tmp
    }
}
const MAX_SLOTS: u32 = 250;
/// How long `start` watches smtpd after it listens, to catch filters that exit at once.
const SETTLE: Duration = Duration::from_millis(200);
const PROVISION_HINT: &str =
    "run scripts/test (or, as root, scripts/lib/provision.sh) to provision the e2e rig";

/// Which real OpenSMTPD a [`Rig`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Daemon {
    /// The system OpenSMTPD 6.8.0p2 of Debian 12 (filter protocol 0.6).
    Smtpd68,
    /// OpenSMTPD 7.4.0p1 from bookworm-backports, unpacked by scripts/lib/provision.sh
    /// (filter protocol 0.7).
    Smtpd74,
}

impl Daemon {
    /// Both daemons.
    pub const ALL: [Daemon; 2] = [Daemon::Smtpd68, Daemon::Smtpd74];

    /// `smtpd-6.8` / `smtpd-7.4`.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Smtpd68 => "smtpd-6.8",
            Daemon::Smtpd74 => "smtpd-7.4",
        }
    }

    /// The filter protocol version on `report|`/`filter|` lines.
    pub fn protocol(self) -> &'static str {
        match self {
            Daemon::Smtpd68 => "0.6",
            Daemon::Smtpd74 => "0.7",
        }
    }

    /// Where the unpacked 7.4 lives (`$RIG_SMTPD74_ROOT` or the provisioning default).
    pub fn smtpd74_root() -> PathBuf {
        std::env::var_os("RIG_SMTPD74_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SMTPD74_ROOT))
    }

    /// The smtpd binary.
    pub fn smtpd_bin(self) -> PathBuf {
        self.smtpd_bin_at(&Self::smtpd74_root())
    }

    /// The smtpd binary, with 7.4 unpacked under `root74`.
    pub fn smtpd_bin_at(self, root74: &Path) -> PathBuf {
        match self {
            Daemon::Smtpd68 => PathBuf::from(SMTPD68),
            Daemon::Smtpd74 => root74.join("usr/sbin/smtpd"),
        }
    }

    /// The libexec directory holding mail.maildir, encrypt, ...
    pub fn libexec(self) -> PathBuf {
        self.libexec_at(&Self::smtpd74_root())
    }

    /// The libexec directory, with 7.4 unpacked under `root74`.
    pub fn libexec_at(self, root74: &Path) -> PathBuf {
        match self {
            Daemon::Smtpd68 => PathBuf::from("/usr/libexec/opensmtpd"),
            Daemon::Smtpd74 => root74.join("usr/libexec/opensmtpd"),
        }
    }

    /// Whether 6.8's cut of returned data lines applies (see [`smtpd68_cut_line`]).
    pub fn cuts_filtered_lines(self) -> bool {
        self == Daemon::Smtpd68
    }

    /// The longest data line (dot-stuffed, as on the wire) the opensmtpd-filter runtime
    /// echoes under this daemon; a longer one makes it refuse the message at commit with
    /// [`LINE_TOO_LONG_REPLY`]. 6.8: [`SMTPD68_MAX_FILTERED_LINE`] (smtpd would cut a
    /// longer one); 7.4: [`SMTPD74_MAX_FILTERED_LINE`] (a longer one wedges smtpd).
    pub fn max_filtered_line(self) -> usize {
        match self {
            Daemon::Smtpd68 => SMTPD68_MAX_FILTERED_LINE,
            Daemon::Smtpd74 => SMTPD74_MAX_FILTERED_LINE,
        }
    }

    /// Checks that the daemon's smtpd and helpers exist (7.4 under `root74`); the error
    /// says how to provision them.
    pub fn check_installed_at(self, root74: &Path) -> Result<(), RigError> {
        let bin = self.smtpd_bin_at(root74);
        if !is_executable(&bin) {
            return Err(RigError::new(format!(
                "{}: {} is missing: {PROVISION_HINT}",
                self.name(),
                bin.display()
            )));
        }
        let maildir = self.libexec_at(root74).join("mail.maildir");
        if !is_executable(&maildir) {
            return Err(RigError::new(format!(
                "{}: {} is missing: {PROVISION_HINT}",
                self.name(),
                maildir.display()
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error setting up or starting a rig. `Debug` prints the message as is, so that
/// `.unwrap()` shows a readable text.
pub struct RigError(String);

impl RigError {
    fn new(msg: impl Into<String>) -> Self {
        RigError(msg.into())
    }
}

impl fmt::Display for RigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RigError {}

impl From<std::io::Error> for RigError {
    fn from(e: std::io::Error) -> Self {
        RigError(format!("I/O error: {e}"))
    }
}

/// A record served by the rig's DNS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsRecord {
    /// A (or AAAA for an IPv6 address) record only.
    A { name: String, addr: IpAddr },
    /// A/AAAA record plus the matching PTR record (dnsmasq `host-record=`).
    Host { name: String, addr: IpAddr },
    /// TXT record; long texts are split into 255-byte strings.
    Txt { name: String, text: String },
    /// PTR record for an address.
    Ptr { addr: IpAddr, name: String },
    /// A raw dnsmasq configuration line.
    Raw(String),
}

impl DnsRecord {
    /// An A/AAAA record.
    pub fn a(name: &str, addr: impl Into<IpAddr>) -> Self {
        DnsRecord::A {
            name: name.into(),
            addr: addr.into(),
        }
    }
    /// An A/AAAA record with its PTR.
    pub fn host(name: &str, addr: impl Into<IpAddr>) -> Self {
        DnsRecord::Host {
            name: name.into(),
            addr: addr.into(),
        }
    }
    /// A TXT record (e.g. SPF: `DnsRecord::txt("lab.test", "v=spf1 ip4:127.0.0.10 -all")`).
    pub fn txt(name: &str, text: &str) -> Self {
        DnsRecord::Txt {
            name: name.into(),
            text: text.into(),
        }
    }
    /// A PTR record.
    pub fn ptr(addr: impl Into<IpAddr>, name: &str) -> Self {
        DnsRecord::Ptr {
            addr: addr.into(),
            name: name.into(),
        }
    }
    /// A SenderScore-style answer: `d.c.b.a.score.senderscore.com -> 127.0.4.<score>`.
    pub fn senderscore(client: Ipv4Addr, score: u8) -> Self {
        let [a, b, c, d] = client.octets();
        DnsRecord::a(
            &format!("{d}.{c}.{b}.{a}.score.senderscore.com"),
            Ipv4Addr::new(127, 0, 4, score),
        )
    }

    fn dnsmasq_line(&self) -> Result<String, RigError> {
        let check = |s: &str| {
            if s.is_empty() || s.contains(['\n', '\r', ',', '/', ' ', '"', '#']) {
                Err(RigError::new(format!("bad DNS name {s:?}")))
            } else {
                Ok(())
            }
        };
        Ok(match self {
            DnsRecord::A { name, addr } => {
                check(name)?;
                format!("address=/{name}/{addr}")
            }
            DnsRecord::Host { name, addr } => {
                check(name)?;
                format!("host-record={name},{addr}")
            }
            DnsRecord::Txt { name, text } => {
                check(name)?;
                if text.contains(['\n', '\r']) {
                    return Err(RigError::new("TXT text with a line break"));
                }
                let escaped = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
                let bytes = text.as_bytes();
                let mut parts = Vec::new();
                let mut start = 0;
                while start < bytes.len() || parts.is_empty() {
                    let mut end = (start + 255).min(bytes.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    parts.push(format!("\"{}\"", escaped(&text[start..end])));
                    start = end;
                }
                format!("txt-record={name},{}", parts.join(","))
            }
            DnsRecord::Ptr { addr, name } => {
                check(name)?;
                format!("ptr-record={},{name}", reverse_name(*addr))
            }
            DnsRecord::Raw(line) => {
                if line.contains(['\n', '\r']) {
                    return Err(RigError::new("raw dnsmasq line with a line break"));
                }
                line.clone()
            }
        })
    }
}

/// The reverse DNS name of an address (`d.c.b.a.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(a) => {
            let mut s = String::new();
            for byte in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

/// One of the rig's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Listener {
    /// `127.43.S.1:25`, plain SMTP.
    Plain,
    /// `127.43.S.1:587`, STARTTLS offered, AUTH PLAIN/LOGIN (optional) after it (7.4 only).
    StartTlsAuth,
    /// `[::1]:(24000+S)`, plain SMTP over IPv6.
    Ipv6,
}

#[derive(Clone, Debug)]
struct ListenSpec {
    kind: Listener,
    filter: Option<String>,
}

/// Builds a [`Rig`]; see [`Rig::builder`].
pub struct RigBuilder {
    daemon: Daemon,
    dir: TempDir,
    filters: Vec<(String, String)>,
    chains: Vec<(String, Vec<String>)>,
    listeners: Vec<ListenSpec>,
    dns: Vec<DnsRecord>,
    auth: Vec<(String, String)>,
    extra_conf: Vec<String>,
    envs: Vec<(String, String)>,
    smtpd74_root: PathBuf,
}

impl RigBuilder {
    /// The rig's directory (exists already, mode 755, removed with the rig): a place for
    /// files a filter needs before the rig starts (a peer binary built for the test).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Where this rig looks for the unpacked OpenSMTPD 7.4 (default: [`Daemon::smtpd74_root`]).
    pub fn smtpd74_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.smtpd74_root = root.into();
        self
    }

    /// The directory where filters may write their files (owned by the filter user).
    /// `{out}` in a filter command is replaced with it.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path.join("out")
    }

    /// Declares `filter "NAME" proc-exec "COMMAND"`. In COMMAND, `{dns}` stands for the
    /// IPv4 address of the rig's DNS server (port 53), and `{out}` for
    /// [`RigBuilder::out_dir`] and `{rig}` for the rig's directory. The command runs
    /// with `/bin/sh -c` as user `opensmtpd`: use absolute paths that user can reach.
    /// It must start with `/`: smtpd looks any other command up in /usr/libexec/opensmtpd/
    /// (`env X=1 ...` would run `/usr/libexec/opensmtpd/env`); for shell syntax, write
    /// `/bin/sh -c '...'`. Peer filters installed there keep their path
    /// (`/usr/libexec/opensmtpd/filter-senderscore ...`), on 7.4 too. The one exception
    /// is a bare name that is installed there (`filter-rspamd -url ...`, as packages are
    /// named in smtpd.conf): smtpd resolves it itself.
    pub fn filter(mut self, name: &str, command: &str) -> Self {
        self.filters.push((name.to_string(), command.to_string()));
        self
    }

    /// Declares `filter "NAME" chain { "a", "b", ... }` over filters declared before.
    pub fn filter_chain(mut self, name: &str, members: &[&str]) -> Result<Self, RigError> {
        if members.is_empty() {
            return Err(RigError::new(format!("filter chain {name:?} is empty")));
        }
        for m in members {
            if !self.filters.iter().any(|(n, _)| n == m) {
                return Err(RigError::new(format!(
                    "filter chain {name:?}: no filter named {m:?} declared before it"
                )));
            }
        }
        self.chains.push((
            name.to_string(),
            members.iter().map(|s| s.to_string()).collect(),
        ));
        Ok(self)
    }

    /// Adds the plain listener `127.43.S.1:25` through the named filter (or chain).
    pub fn listen_plain(self, filter: &str) -> Self {
        self.listen(Listener::Plain, Some(filter))
    }

    /// Adds the plain listener without any filter.
    pub fn listen_plain_unfiltered(self) -> Self {
        self.listen(Listener::Plain, None)
    }

    /// Adds the STARTTLS listener `127.43.S.1:587` with AUTH (PLAIN, LOGIN; offered after
    /// STARTTLS; optional: `tls pki mx.lab.test auth-optional <creds>`) through the named filter. 7.4 only (STARTTLS is broken in the 6.8 build with OpenSSL 3).
    /// Credentials: [`RigBuilder::auth_user`] or the default [`Rig::auth_credentials`].
    pub fn listen_starttls_auth(self, filter: &str) -> Self {
        self.listen(Listener::StartTlsAuth, Some(filter))
    }

    /// Adds the IPv6 listener `[::1]:(24000+S)` through the named filter.
    pub fn listen_ipv6(self, filter: &str) -> Self {
        self.listen(Listener::Ipv6, Some(filter))
    }

    /// Adds a listener of the given kind, with or without a filter.
    pub fn listen(mut self, kind: Listener, filter: Option<&str>) -> Self {
        self.listeners.retain(|l| l.kind != kind);
        self.listeners.push(ListenSpec {
            kind,
            filter: filter.map(str::to_string),
        });
        self
    }

    /// Adds an AUTH user with its password (the user name may contain `|`, not spaces).
    /// Without any, the rig has one user `rig|user` with a made-up password.
    pub fn auth_user(mut self, user: &str, password: &str) -> Self {
        self.auth.push((user.to_string(), password.to_string()));
        self
    }

    /// Adds a record to the rig's DNS server.
    pub fn dns_record(mut self, record: DnsRecord) -> Self {
        self.dns.push(record);
        self
    }

    /// Adds a raw line to smtpd.conf (before the listeners).
    pub fn smtpd_conf_line(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_string());
        self
    }

    /// Sets an environment variable for smtpd (and so for the filters it spawns).
    /// RUST_LOG and RUST_BACKTRACE are passed through from the test's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes the configuration, starts dnsmasq and smtpd, and waits until smtpd listens
    /// on every listener and has stayed up for 200 ms more.
    ///
    /// smtpd listens before its filters have registered (sessions that arrive meanwhile wait
    /// until they have). A filter that exits at once makes `start` fail with smtpd's log; one
    /// that exits later (slow start, heavy load) still takes smtpd down after `start`
    /// returned: end tests with `assert!(rig.smtpd_alive())`.
    pub fn start(self) -> Result<Rig, RigError> {
        Rig::start(self)
    }
}

/// A running smtpd with its DNS server, for one test. Dropping it stops everything.
pub struct Rig {
    daemon: Daemon,
    slot: Slot,
    smtpd: Option<Child>,
    smtpd_mnt_ns: Option<MntNs>,
    dnsmasq: Option<Child>,
    listeners: BTreeMap<Listener, SocketAddr>,
    auth: Vec<(String, String)>,
    msg_counter: AtomicU32,
    // last: removed after the processes are gone
    dir: TempDir,
}

impl Rig {
    /// Starts describing a rig for one daemon.
    pub fn builder(daemon: Daemon) -> RigBuilder {
        static CLEANUP: std::sync::Once = std::sync::Once::new();
        CLEANUP.call_once(cleanup_stale_rigs);
        let dir =
            TempDir::new().unwrap_or_else(|e| panic!("cannot create the rig's directory: {e}"));
        RigBuilder {
            daemon,
            dir,
            filters: Vec::new(),
            chains: Vec::new(),
            listeners: Vec::new(),
            dns: Vec::new(),
            auth: Vec::new(),
            extra_conf: Vec::new(),
            envs: Vec::new(),
            smtpd74_root: Daemon::smtpd74_root(),
        }
    }

    fn start(b: RigBuilder) -> Result<Rig, RigError> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(RigError::new(format!(
                "the e2e rig must run as root: {PROVISION_HINT}"
            )));
        }
        b.daemon.check_installed_at(&b.smtpd74_root)?;
        for tool in [
            "/usr/sbin/dnsmasq",
            "/usr/bin/swaks",
            "/usr/bin/unshare",
            "/usr/bin/openssl",
        ] {
            if !is_executable(Path::new(tool)) {
                return Err(RigError::new(format!(
                    "{tool} is missing: {PROVISION_HINT}"
                )));
            }
        }
        if !Path::new("/var/spool/smtpd").is_dir() {
            return Err(RigError::new(format!(
                "/var/spool/smtpd is missing: {PROVISION_HINT}"
            )));
        }
        let mail_user = mail_user();
        let (mail_uid, mail_gid) = lookup_user(&mail_user).ok_or_else(|| {
            RigError::new(format!("user {mail_user} is missing: {PROVISION_HINT}"))
        })?;
        let (filter_uid, filter_gid) = lookup_user(FILTER_USER).ok_or_else(|| {
            RigError::new(format!("user {FILTER_USER} is missing: {PROVISION_HINT}"))
        })?;
        if b.listeners.is_empty() {
            return Err(RigError::new("a rig needs at least one listener"));
        }
        let declared =
            |n: &str| b.filters.iter().any(|(f, _)| f == n) || b.chains.iter().any(|(c, _)| c == n);
        for l in &b.listeners {
            if let Some(f) = &l.filter
                && !declared(f)
            {
                return Err(RigError::new(format!(
                    "listener {:?}: no filter named {f:?}",
                    l.kind
                )));
            }
            if l.kind == Listener::StartTlsAuth && b.daemon == Daemon::Smtpd68 {
                return Err(RigError::new(
                    "listen_starttls_auth needs smtpd 7.4: STARTTLS is broken in Debian's 6.8 build with OpenSSL 3",
                ));
            }
        }

        let libexec = b.daemon.libexec_at(&b.smtpd74_root);
        let slot = Slot::acquire()?;
        let dir = b.dir.path.clone();
        let s = slot.n;
        let listen_v4 = Ipv4Addr::new(127, 43, s as u8, 1);
        let dns_addr = Ipv4Addr::new(127, 43, s as u8, 53);
        let mut listeners = BTreeMap::new();
        for l in &b.listeners {
            let addr = match l.kind {
                Listener::Plain => SocketAddr::new(listen_v4.into(), 25),
                Listener::StartTlsAuth => SocketAddr::new(listen_v4.into(), 587),
                Listener::Ipv6 => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 24000 + s as u16),
            };
            listeners.insert(l.kind, addr);
        }

        // directories
        let spool = dir.join("spool");
        fs::create_dir(&spool)?;
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o711))?;
        let maildir = dir.join("maildir");
        fs::create_dir(&maildir)?;
        chown(&maildir, Some(mail_uid), Some(mail_gid))?;
        fs::set_permissions(&maildir, fs::Permissions::from_mode(0o700))?;
        let out = dir.join("out");
        fs::create_dir(&out)?;
        chown(&out, Some(filter_uid), Some(filter_gid))?;
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755))?;
        fs::create_dir(dir.join("msg"))?;

        // DNS
        let mut dns = vec![
            "port=53".to_string(),
            format!("listen-address={dns_addr}"),
            "bind-interfaces".into(),
            "no-resolv".into(),
            "no-hosts".into(),
            "no-poll".into(),
            "local=/lab.test/".into(),
            "local=/127.in-addr.arpa/".into(),
            "local=/ip6.arpa/".into(),
            // everything else: NXDOMAIN, nothing is ever forwarded
            "local=/#/".into(),
            format!("host-record={MX_NAME},{listen_v4}"),
        ];
        for c in CLIENTS_WITH_RDNS {
            let last = c.rsplit('.').next().unwrap_or("0");
            dns.push(format!("host-record=client{last}.lab.test,{c}"));
        }
        for r in &b.dns {
            dns.push(r.dnsmasq_line()?);
        }
        let dns_conf = dir.join("dnsmasq.conf");
        fs::write(&dns_conf, dns.join("\n") + "\n")?;
        // an empty hosts file: every name and address is answered by the rig's DNS only
        fs::write(
            dir.join("hosts"),
            "# opensmtpd-e2e rig: names come from the rig's DNS only\n",
        )?;
        fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {dns_addr}\noptions timeout:1 attempts:2\n"),
        )?;

        // tables
        let mut vusers = format!("{RCPT_OK} {mail_user}\n");
        for r in RCPTS_OK_MORE {
            vusers.push_str(&format!("{r} {mail_user}\n"));
        }
        fs::write(dir.join("vusers"), vusers)?;

        let mut auth = b.auth.clone();
        if auth.is_empty() {
            auth.push((
                "rig|user".to_string(),
                format!(
                    "pw-{}-{}",
                    std::process::id(),
                    RIG_COUNTER.load(Ordering::Relaxed)
                ),
            ));
        }
        let mut conf = String::new();
        conf.push_str("# generated by opensmtpd-e2e\n");
        if listeners.contains_key(&Listener::StartTlsAuth) {
            let tls = dir.join("tls");
            fs::create_dir(&tls)?;
            let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
            run_checked(
                Command::new("/usr/bin/openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                    ])
                    .arg("-subj")
                    .arg(format!("/CN={MX_NAME}"))
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert),
            )?;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
            let mut creds_text = String::new();
            for (user, password) in &auth {
                if user.contains(char::is_whitespace) || user.is_empty() {
                    return Err(RigError::new(format!(
                        "AUTH user name {user:?}: must be non-empty without spaces"
                    )));
                }
                let hash = run_checked(Command::new(libexec.join("encrypt")).arg(password))?;
                creds_text.push_str(&format!(
                    "{user} {}\n",
                    String::from_utf8_lossy(&hash).trim()
                ));
            }
            let creds = dir.join("creds");
            fs::write(&creds, creds_text)?;
            chown(&creds, Some(0), Some(filter_gid))?;
            fs::set_permissions(&creds, fs::Permissions::from_mode(0o640))?;
            conf.push_str(&format!(
                "pki {MX_NAME} cert \"{}\"\npki {MX_NAME} key \"{}\"\ntable creds file:{}\n",
                cert.display(),
                key.display(),
                creds.display()
            ));
        }
        conf.push_str(&format!(
            "table vusers file:{}\n",
            dir.join("vusers").display()
        ));
        let out_s = out.display().to_string();
        let dir_s = dir.display().to_string();
        for (name, cmd) in &b.filters {
            let program = cmd.split_whitespace().next().unwrap_or_default();
            let installed = !program.contains('/')
                && Path::new("/usr/libexec/opensmtpd").join(program).is_file();
            if !cmd.starts_with('/') && !installed {
                return Err(RigError::new(format!(
                    "filter {name:?}: the command must start with '/' (smtpd would look {cmd:?} up in /usr/libexec/opensmtpd/); use /bin/sh -c '...' for shell syntax"
                )));
            }
            let cmd = cmd
                .replace("{out}", &out_s)
                .replace("{rig}", &dir_s)
                .replace("{dns}", &dns_addr.to_string());
            conf_string_ok(name)?;
            conf_string_ok(&cmd)?;
            conf.push_str(&format!("filter \"{name}\" proc-exec \"{cmd}\"\n"));
        }
        for (name, members) in &b.chains {
            conf_string_ok(name)?;
            let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
            conf.push_str(&format!(
                "filter \"{name}\" chain {{ {} }}\n",
                list.join(", ")
            ));
        }
        for line in &b.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        for l in &b.listeners {
            let addr = listeners[&l.kind];
            let mut line = format!(
                "listen on {} port {} hostname {MX_NAME}",
                addr.ip(),
                addr.port()
            );
            if l.kind == Listener::StartTlsAuth {
                line.push_str(&format!(" tls pki {MX_NAME} auth-optional <creds>"));
            }
            if let Some(f) = &l.filter {
                line.push_str(&format!(" filter \"{f}\""));
            }
            conf.push_str(&line);
            conf.push('\n');
        }
        conf.push_str(&format!(
            "action \"local\" maildir \"{}\" virtual <vusers>\nmatch from any for domain \"{MAIL_DOMAIN}\" action \"local\"\n",
            maildir.display()
        ));
        let conf_path = dir.join("smtpd.conf");
        fs::write(&conf_path, conf)?;

        let mut rig = Rig {
            daemon: b.daemon,
            slot,
            smtpd: None,
            smtpd_mnt_ns: None,
            dnsmasq: None,
            listeners,
            auth,
            msg_counter: AtomicU32::new(0),
            dir: b.dir,
        };

        // dnsmasq
        rig.dnsmasq = Some(spawn_dnsmasq(
            &dns_conf,
            File::create(dir.join("dnsmasq.log"))?,
        )?);
        rig.wait_dns("dnsmasq did not start")?;

        // smtpd
        let mut script = format!(
            "set -e; mount --bind {d}/resolv.conf /etc/resolv.conf; mount --bind {d}/hosts /etc/hosts; mount --bind {d}/spool /var/spool/smtpd; mount -t tmpfs -o mode=755 rigrun /run; ",
            d = dir_s
        );
        if b.daemon == Daemon::Smtpd74 {
            // 7.4's helpers (mail.maildir, encrypt, ...) over the system's, file by file, so
            // that other programs there (peer filters such as filter-senderscore) stay visible
            let sys = Path::new("/usr/libexec/opensmtpd");
            let helpers: Vec<PathBuf> = fs::read_dir(&libexec)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            let all_covered = !helpers.is_empty()
                && helpers
                    .iter()
                    .all(|h| h.file_name().is_some_and(|n| sys.join(n).is_file()));
            if all_covered {
                for h in &helpers {
                    let target = sys.join(h.file_name().unwrap_or_default());
                    script.push_str(&format!(
                        "mount --bind {} {}; ",
                        h.display(),
                        target.display()
                    ));
                }
            } else {
                // a helper without a system counterpart: hide the whole directory instead
                script.push_str(&format!(
                    "mount --bind {} /usr/libexec/opensmtpd; ",
                    libexec.display()
                ));
            }
        }
        script.push_str(&format!(
            "exec {} -d -v -f {}",
            b.daemon.smtpd_bin_at(&b.smtpd74_root).display(),
            conf_path.display()
        ));
        let log = File::create(dir.join("smtpd.log"))?;
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["-m", "--propagation", "private", "/bin/sh", "-c", &script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // If this test process dies without dropping the rig, smtpd gets SIGTERM (it stays
        // root, so the setting survives; see also cleanup_stale_rigs).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        for k in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &b.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| RigError::new(format!("cannot start smtpd: {e}")))?;
        rig.smtpd = Some(child);
        let addrs: Vec<SocketAddr> = rig.listeners.values().copied().collect();
        let pid = rig.smtpd_pid();
        let failed = |rig: &Rig, e: &str| {
            RigError::new(format!(
                "{} did not start: {e}\n--- smtpd.conf ---\n{}--- smtpd log (tail) ---\n{}",
                rig.daemon,
                fs::read_to_string(&conf_path).unwrap_or_default(),
                tail(&rig.smtpd_log(), 60)
            ))
        };
        if let Err(e) = rig.wait_listening(&addrs, Proto::Tcp, pid, Duration::from_secs(20)) {
            return Err(failed(&rig, &e));
        }
        // The namespace smtpd runs in: everything in it belongs to this rig.
        if let Some(pid) = pid {
            rig.smtpd_mnt_ns = MntNs::of(pid);
        }
        // smtpd listens before its filters have registered: a filter that exits at once
        // (bad flag, missing file) takes smtpd down a moment later. Give it that moment.
        let settle = Instant::now() + SETTLE;
        while Instant::now() < settle {
            if !rig.smtpd_alive() {
                return Err(failed(
                    &rig,
                    "smtpd exited (a filter that exits takes smtpd down)",
                ));
            }
            sleep(Duration::from_millis(10));
        }
        // what a later run needs to stop this rig if this process dies without dropping it
        let mut pids = format!("smtpd {}\n", pid.unwrap_or(0));
        if let Some(ns) = &rig.smtpd_mnt_ns {
            pids.push_str(&format!("mntns {}\n", ns.id.display()));
        }
        if let Some(d) = &rig.dnsmasq {
            pids.push_str(&format!("dnsmasq {}\n", d.id()));
        }
        fs::write(dir.join("pids"), pids)?;
        Ok(rig)
    }

    fn wait_listening(
        &self,
        addrs: &[SocketAddr],
        proto: Proto,
        pid: Option<u32>,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let bound = listening_sockets(proto);
            if addrs.iter().all(|a| bound.contains(a)) {
                return Ok(());
            }
            if pid.is_some_and(|p| !pid_running(p)) {
                return Err("smtpd exited".into());
            }
            if proto == Proto::Udp && self.dnsmasq.as_ref().is_some_and(|c| !pid_running(c.id())) {
                return Err("dnsmasq exited".into());
            }
            if Instant::now() > deadline {
                return Err(format!("nothing listens on {addrs:?} after {timeout:?}"));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The daemon this rig runs.
    pub fn daemon(&self) -> Daemon {
        self.daemon
    }

    /// The rig's slot number S (addresses 127.43.S.x).
    pub fn slot(&self) -> u32 {
        self.slot.n
    }

    /// The address of a listener. Panics if the rig has no such listener.
    pub fn addr(&self, listener: Listener) -> SocketAddr {
        *self
            .listeners
            .get(&listener)
            .unwrap_or_else(|| panic!("this rig has no {listener:?} listener"))
    }

    /// The address of the rig's DNS server (port 53).
    pub fn dns_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 43, self.slot.n as u8, 53)
    }

    /// The (first) AUTH user and password of the STARTTLS listener.
    pub fn auth_credentials(&self) -> (&str, &str) {
        (&self.auth[0].0, &self.auth[0].1)
    }

    /// All AUTH users and passwords.
    pub fn auth_users(&self) -> &[(String, String)] {
        &self.auth
    }

    /// The rig's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The directory filters write to (`{out}` in filter commands).
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path.join("out")
    }

    /// The maildir of the throwaway user.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path.join("maildir")
    }

    /// Reads a file a filter wrote in [`Rig::out_dir`] (empty if it does not exist yet).
    pub fn read_out(&self, name: &str) -> Vec<u8> {
        fs::read(self.out_dir().join(name)).unwrap_or_default()
    }

    /// Waits until a file in [`Rig::out_dir`] satisfies `pred`, and returns its content.
    /// Panics with the smtpd log on timeout.
    pub fn wait_out(&self, name: &str, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let data = self.read_out(name);
            if pred(&data) {
                return data;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {name} did not reach the expected state within {timeout:?}; it holds {} bytes\n--- smtpd log (tail) ---\n{}",
                    self.daemon,
                    data.len(),
                    tail(&self.smtpd_log(), 40)
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The PID of smtpd (the parent process), if it was started.
    pub fn smtpd_pid(&self) -> Option<u32> {
        self.smtpd.as_ref().map(Child::id)
    }

    /// Whether the smtpd parent process is still running.
    pub fn smtpd_alive(&self) -> bool {
        self.smtpd_pid().is_some_and(pid_running)
    }

    /// Panics, with the tail of smtpd's log, unless smtpd still runs. End every test with
    /// it: a filter that exits takes smtpd down, maybe after the test's last check.
    pub fn assert_alive(&self) {
        assert!(
            self.smtpd_alive(),
            "{}: smtpd {}\n--- smtpd log (tail) ---\n{}",
            self.daemon,
            self.smtpd_state(),
            tail(&self.smtpd_log(), 40)
        );
    }

    /// How the smtpd parent is doing: "runs", "exited with status N" or "was killed by
    /// signal N". Looked at without reaping it, so that its PID stays ours: a daemon
    /// that died without a line in its log (SIGKILL, a crash) says how here.
    pub fn smtpd_state(&self) -> String {
        let Some(pid) = self.smtpd_pid() else {
            return "was never started".into();
        };
        // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) };
        // SAFETY: the fields are those of a SIGCHLD siginfo, filled in by waitid.
        let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
        match (r, info.si_code) {
            (-1, _) => format!(
                "is in an unknown state ({})",
                std::io::Error::last_os_error()
            ),
            _ if child == 0 => "runs".into(),
            (_, libc::CLD_EXITED) => format!("exited with status {status}"),
            (_, libc::CLD_KILLED | libc::CLD_DUMPED) => {
                format!("was killed by signal {status}")
            }
            (_, code) => format!("ended (code {code}, status {status})"),
        }
    }

    /// The lines of smtpd's log that contain `needle` (filters' stderr is in this log).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.smtpd_log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `n` lines of smtpd's log contain `needle`, and returns them.
    /// Panics with the log's tail on timeout.
    pub fn wait_log_lines(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines(needle);
            if lines.len() >= n {
                return lines;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {} of {n} log lines with {needle:?} after {timeout:?}\n--- smtpd log (tail) ---\n{}",
                    self.daemon,
                    lines.len(),
                    tail(&self.smtpd_log(), 40)
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// One complete session with a deadline: connect from `src` to the plain listener,
    /// greeting, EHLO, MAIL FROM, RCPT TO [`RCPT_OK`], DATA, `msg`, QUIT. Every step waits
    /// at most until `timeout` (from the start) has passed. Never panics: the outcome says
    /// how far it got. Used to tell whether smtpd still serves clients.
    pub fn session_within(
        &self,
        src: &str,
        ehlo: &str,
        msg: &[u8],
        timeout: Duration,
    ) -> SessionOutcome {
        let start = Instant::now();
        let mut out = SessionOutcome::default();
        let result = (|| -> std::io::Result<()> {
            let mut c = SmtpClient::connect(self, Listener::Plain, src)?;
            let remaining = |c: &SmtpClient| {
                let left = timeout.saturating_sub(start.elapsed());
                c.set_timeout(left.max(Duration::from_millis(1)))
            };
            remaining(&c)?;
            let r = c.read_reply()?;
            out.greeting = Some(start.elapsed());
            out.replies.push(("(greeting)".into(), r.clone()));
            if r.code != 220 {
                return Ok(());
            }
            let cmds = [
                format!("EHLO {ehlo}"),
                "MAIL FROM:<probe@example.org>".to_string(),
                format!("RCPT TO:<{RCPT_OK}>"),
                "DATA".to_string(),
            ];
            for cmd in cmds {
                remaining(&c)?;
                let r = c.command(&cmd)?;
                let positive = r.is_positive();
                out.replies.push((cmd, r));
                if !positive {
                    return Ok(());
                }
            }
            remaining(&c)?;
            let r = c.send_data(msg)?;
            out.replies.push(("(message)".into(), r.clone()));
            out.data_reply = Some(r);
            remaining(&c)?;
            let _ = c.quit();
            Ok(())
        })();
        if let Err(e) = result {
            out.error = Some(e.to_string());
        }
        out.elapsed = start.elapsed();
        out
    }

    /// smtpd's stderr (`-d -v`) so far.
    pub fn smtpd_log(&self) -> String {
        self.read_log("smtpd.log")
    }

    /// dnsmasq's log so far.
    pub fn dns_log(&self) -> String {
        self.read_log("dnsmasq.log")
    }

    fn read_log(&self, name: &str) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path.join(name)).unwrap_or_default())
            .into_owned()
    }

    /// A command that runs inside smtpd's mount namespace (its resolv.conf, spool, /run),
    /// e.g. `rig.in_namespace("getent").args(["hosts", "client10.lab.test"])`.
    pub fn in_namespace(&self, program: impl AsRef<OsStr>) -> Command {
        let pid = self.smtpd_pid().expect("smtpd not started");
        let mut c = Command::new("/usr/bin/nsenter");
        c.arg("-t")
            .arg(pid.to_string())
            .arg("-m")
            .arg("--")
            .arg(program);
        c
    }

    /// Runs swaks against the plain listener from [`CLIENT`]. `args` come after
    /// `--server/--port/-li`; e.g. `&["-f", "a@example.org", "-t", RCPT_OK]`.
    pub fn swaks(&self, args: &[&str]) -> Output {
        self.swaks_at(Listener::Plain, CLIENT, args)
    }

    /// Runs swaks against the plain listener from a chosen 127/8 source address.
    pub fn swaks_from(&self, src: &str, args: &[&str]) -> Output {
        self.swaks_at(Listener::Plain, src, args)
    }

    /// Runs swaks against a listener from a source address (`::1` for [`Listener::Ipv6`]).
    /// Killed after 120 s.
    pub fn swaks_at(&self, listener: Listener, src: &str, args: &[&str]) -> Output {
        let addr = self.addr(listener);
        let mut cmd = Command::new("/usr/bin/swaks");
        cmd.arg("--server")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("-li")
            .arg(src)
            .arg("--timeout")
            .arg("60")
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("cannot run swaks: {e}"))
    }

    /// Sends one message with swaks: `data` is the message (header and body) with `\n`
    /// or `\r\n` line ends, sent byte for byte in wire form (CRLF, dot-stuffed, `--no-data-fixup`).
    /// `extra` are further swaks arguments (e.g. `--ehlo`, `--tls`).
    pub fn send_message(
        &self,
        src: &str,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
        extra: &[&str],
    ) -> Output {
        self.send_message_at(Listener::Plain, src, from, rcpts, data, extra)
    }

    /// [`Rig::send_message`] to a chosen listener.
    pub fn send_message_at(
        &self,
        listener: Listener,
        src: &str,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
        extra: &[&str],
    ) -> Output {
        let n = self.msg_counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path.join("msg").join(format!("msg-{n}.eml"));
        fs::write(&path, wire_data(data)).expect("write message file");
        let from_arg = if from.is_empty() {
            "<>".to_string()
        } else {
            from.to_string()
        };
        let to = rcpts.join(",");
        let data_arg = format!("@{}", path.display());
        let mut args: Vec<&str> = vec![
            "-f",
            &from_arg,
            "-t",
            &to,
            "--data",
            &data_arg,
            "--no-data-fixup",
        ];
        args.extend_from_slice(extra);
        self.swaks_at(listener, src, &args)
    }

    /// [`Rig::send_message_at`], as a test that counts attempts needs it: a connection
    /// that never got smtpd's greeting (lost in its listen queue) changed nothing and is
    /// made again, up to three times. Returns the transcript and swaks' stderr.
    pub fn send_until_greeted(
        &self,
        listener: Listener,
        src: &str,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
        extra: &[&str],
    ) -> String {
        let mut text = String::new();
        for _ in 0..3 {
            let out = self.send_message_at(listener, src, from, rcpts, data, extra);
            text = format!(
                "{}\n--- swaks stderr ---\n{}",
                transcript(&out),
                String::from_utf8_lossy(&out.stderr)
            );
            if text.contains("<-  220 ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        text
    }

    /// A TCP connection to a listener from a chosen source address, for hand-made SMTP
    /// sessions (e.g. a client that drops mid-DATA).
    pub fn connect_from(&self, listener: Listener, src: &str) -> std::io::Result<TcpStream> {
        let src: IpAddr = src.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{src}: {e}"))
        })?;
        connect_from(SocketAddr::new(src, 0), self.addr(listener))
    }

    /// The delivered message whose `Subject:` is `subject`, without smtpd's own headers.
    pub fn delivered_with(&self, subject: &str) -> Option<String> {
        let needle = format!("Subject: {subject}\n");
        self.delivered()
            .iter()
            .find(|m| m.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .map(|m| String::from_utf8_lossy(strip_smtpd_headers(m)).into_owned())
    }

    /// [`Rig::delivered_with`], waiting up to `timeout`; fails the test with smtpd's log
    /// if it does not come.
    pub fn wait_delivered_with(&self, subject: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.delivered_with(subject) {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {subject} not delivered\n{}",
                self.daemon(),
                tail(&self.smtpd_log(), 40)
            );
            sleep(Duration::from_millis(25));
        }
    }

    /// The message files delivered so far (maildir `new/`), oldest first.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let new = self.maildir().join("new");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&new)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        if m.is_file() {
                            Some((m.modified().ok()?, e.path()))
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| fs::read(p).ok())
            .collect()
    }

    /// Waits until at least `n` messages are delivered and returns them (oldest first).
    /// Panics with the smtpd log on timeout.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {} of {n} messages delivered after {timeout:?} (smtpd alive: {})\n--- smtpd log (tail) ---\n{}",
                    self.daemon,
                    got.len(),
                    self.smtpd_alive(),
                    tail(&self.smtpd_log(), 60)
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Stops smtpd and dnsmasq now (also done on drop).
    pub fn stop(&mut self) {
        if let Some(child) = self.smtpd.take() {
            stop_child(child, self.smtpd_mnt_ns.take());
        }
        if let Some(child) = self.dnsmasq.take() {
            stop_child(child, None);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let state = panicking.then(|| self.smtpd_state());
        self.stop();
        if let Some(state) = state {
            eprintln!(
                "{} rig {} (slot {}): smtpd {state}; log tail:\n{}",
                self.daemon,
                self.dir.path.display(),
                self.slot.n,
                tail(&self.smtpd_log(), 30)
            );
        }
    }
}

/// TERM the process, KILL after 5 s; then KILL whatever still runs in its mount namespace.
fn stop_child(mut child: Child, mnt_ns: Option<MntNs>) {
    let pid = child.id() as libc::pid_t;
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // Wait without reaping, so that the PID cannot be reused while we look around.
    while pid_running(pid as u32) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    if pid_running(pid as u32) {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if let Some(ns) = &mnt_ns {
        // Stragglers of this rig (e.g. a filter that does not exit on EOF): every process
        // in the rig's private mount namespace, by PID.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = pids_in_mnt_ns(&ns.id);
            if left.is_empty() || Instant::now() > deadline {
                for p in left {
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
    let _ = child.wait();
}

/// The private mount namespace a rig's smtpd runs in, held open for as long as the rig
/// may look for its processes. A namespace's id passes to the next namespace made once
/// the last holder is gone: without the hold, a rig that waits for its stragglers after
/// its smtpd and filters have exited would see the namespace of a rig another test has
/// just started under the same id, and kill that rig (seen in CI).
struct MntNs {
    /// What `/proc/PID/ns/mnt` links to, e.g. `mnt:[4026532301]`.
    id: PathBuf,
    _hold: File,
}

impl MntNs {
    /// The namespace of `pid`, unless it is this process's own.
    fn of(pid: u32) -> Option<MntNs> {
        use std::os::fd::AsRawFd;
        let hold = File::open(format!("/proc/{pid}/ns/mnt")).ok()?;
        // the id of the namespace held, not of whatever pid is in by now
        let id = fs::read_link(format!("/proc/self/fd/{}", hold.as_raw_fd())).ok()?;
        let own = fs::read_link("/proc/self/ns/mnt").ok();
        (own.as_ref() != Some(&id)).then_some(MntNs { id, _hold: hold })
    }
}

fn pids_in_mnt_ns(ns: &Path) -> Vec<libc::pid_t> {
    let own = std::process::id() as libc::pid_t;
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.filter_map(Result::ok) {
            let Some(pid) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if pid == own {
                continue;
            }
            if fs::read_link(e.path().join("ns/mnt")).ok().as_deref() == Some(ns) {
                out.push(pid);
            }
        }
    }
    out
}

/// Whether a child process of ours (or any process) is running: not reaped and not a zombie.
fn pid_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the ")" that closes the command name
            let state = s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// Local addresses with a listening TCP socket (or a bound UDP socket).
fn listening_sockets(proto: Proto) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let files: [(&str, bool); 2] = match proto {
        Proto::Tcp => [("/proc/net/tcp", false), ("/proc/net/tcp6", true)],
        Proto::Udp => [("/proc/net/udp", false), ("/proc/net/udp6", true)],
    };
    for (file, v6) in files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            // TCP_LISTEN is 0A; UDP sockets are 07 (TCP_CLOSE) when bound
            let want = if proto == Proto::Tcp { "0A" } else { "07" };
            if f[3] != want {
                continue;
            }
            if let Some(a) = parse_proc_addr(f[1], v6) {
                out.push(a);
            }
        }
    }
    out
}

fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !v6 {
        let n = u32::from_str_radix(ip, 16).ok()?;
        Some(SocketAddr::new(Ipv4Addr::from(n.swap_bytes()).into(), port))
    } else {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.swap_bytes().to_be_bytes());
        }
        Some(SocketAddr::new(Ipv6Addr::from(bytes).into(), port))
    }
}

/// A TCP connection bound to a source address before connecting.
pub fn connect_from(src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
                (
                    ss,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
                (
                    ss,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // from here on, the stream owns and closes the fd
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (ss, len) = sockaddr(src);
    if unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (ds, dlen) = sockaddr(dst);
    if unsafe { libc::connect(fd, &ds as *const _ as *const libc::sockaddr, dlen) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Converts a message (`\n` or `\r\n` line ends) into the DATA swaks sends with
/// `--no-data-fixup`: CRLF line ends, dot-stuffed, ending with `\r\n.` (swaks adds the
/// final CRLF). A missing final line end is added.
pub fn wire_data(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 40 + 8);
    for line in split_lines(msg) {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.push(b'.');
    out
}

/// The lines of a message, without their `\n` / `\r\n` ends (a final line end adds no
/// empty line).
pub fn split_lines(msg: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = msg.split(|&b| b == b'\n').collect();
    if msg.ends_with(b"\n") || msg.is_empty() {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// Removes the header lines smtpd adds in front of a delivered message: `Return-Path:`,
/// `Delivered-To:` and the first `Received:` (with its continuation lines).
pub fn strip_smtpd_headers(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    let mut received_seen = false;
    loop {
        let skip = if rest.starts_with(b"Return-Path:") || rest.starts_with(b"Delivered-To:") {
            true
        } else if !received_seen && rest.starts_with(b"Received:") {
            received_seen = true;
            true
        } else {
            false
        };
        if !skip {
            return rest;
        }
        // drop the line and its continuation lines
        loop {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => rest = &rest[i + 1..],
                None => return &[],
            }
            if !(rest.starts_with(b" ") || rest.starts_with(b"\t")) {
                break;
            }
        }
    }
}

/// The longest data line (as the filter echoes it, dot-stuffed) that smtpd 6.8.0p2 keeps
/// whole. Its filter-answer buffer holds 2048 bytes including the NUL, so the longest
/// answer line is 2047 bytes: `filter-dataline|` (16) + 16-hex session + `|` + 16-hex
/// token + `|` = 50 bytes of prefix leave 1997 bytes of line.
pub const SMTPD68_MAX_FILTERED_LINE: usize = 1997;

/// The longest data line (dot-stuffed) a filter may echo to smtpd 7.4.0p1: it reads
/// filter answers into a 64 KiB buffer, and an answer line it cannot hold wedges the
/// filter's pipe for good (protocol.md, "the 64 KiB wedge"). The opensmtpd-filter runtime
/// caps an answer line at 65,534 bytes; `filter-dataline|` + two 16-hex ids take 50.
pub const SMTPD74_MAX_FILTERED_LINE: usize = 65_484;

/// The longest line (CRLF not counted) smtpd takes from an SMTP client, 6.8.0p2 and
/// 7.4.0p1 alike (observed): from 65,534 bytes on it answers `500 5.0.0 Line too long` and
/// drops the client, and the filters never see the line.
pub const SMTPD_CLIENT_LINE_MAX: usize = 65_533;

/// How the opensmtpd-filter runtime refuses a message with a line too long to echo.
pub const LINE_TOO_LONG_REPLY: &str =
    "552 5.3.4 Message refused: a line is too long for the filters of this server";

/// Models 6.8's silent cut of returned (filtered) data lines: `line` is a message line
/// as delivered (not dot-stuffed); the dot-stuffed form is cut to
/// [`SMTPD68_MAX_FILTERED_LINE`] bytes, then smtpd removes the stuffing dot.
pub fn smtpd68_cut_line(line: &[u8]) -> Vec<u8> {
    let mut stuffed = Vec::with_capacity(line.len() + 1);
    if line.first() == Some(&b'.') {
        stuffed.push(b'.');
    }
    stuffed.extend_from_slice(line);
    stuffed.truncate(SMTPD68_MAX_FILTERED_LINE);
    if stuffed.first() == Some(&b'.') {
        stuffed.remove(0);
    }
    stuffed
}

/// The path of an example binary built by cargo: `<target>/debug/examples/<name>`, where
/// `<target>` is `$CARGO_TARGET_DIR` (relative to the workspace root) or, failing that, the
/// target directory this test binary runs from, or `<workspace>/target`. Panics, saying how
/// to build it, when it does not exist, and when the filter user cannot run it.
pub fn example_bin(name: &str) -> PathBuf {
    example_bin_in(name, "debug")
}

/// [`example_bin`] for a cargo profile directory (`debug`, `release`).
pub fn example_bin_in(name: &str, profile: &str) -> PathBuf {
    let build = if profile == "debug" {
        "cargo build --examples".to_string()
    } else {
        format!("cargo build --examples --profile {profile}")
    };
    find_built(name, profile, Some("examples"), &build)
}

/// A binary of the workspace (a filter: `filter-greylist`, ...) built in the debug
/// profile, found like [`example_bin`]; fails clearly if it is not built.
pub fn workspace_bin(name: &str) -> PathBuf {
    find_built(name, "debug", None, &format!("cargo build -p {name}"))
}

/// `<target>/<profile>[/<sub>]/<name>`, for the target directories cargo may have used
/// (CARGO_TARGET_DIR, the one this test binary runs from, the workspace's `target`).
fn find_built(name: &str, profile: &str, sub: Option<&str>, build: &str) -> PathBuf {
    let workspace = workspace_root();
    let within = |dir: PathBuf| match sub {
        Some(sub) => dir.join(sub),
        None => dir,
    };
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            workspace.join(t)
        };
        candidates.push(within(t.join(profile)));
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<test binary> or <target>/<profile>/<binary>
        for dir in exe.ancestors().skip(1).take(2) {
            if dir.file_name() == Some(OsStr::new(profile)) {
                candidates.push(within(dir.to_path_buf()));
            }
        }
    }
    candidates.push(within(workspace.join("target").join(profile)));
    for dir in &candidates {
        let p = dir.join(name);
        if is_executable(&p) {
            if !world_reachable(&p) {
                panic!(
                    "{name} at {} is not reachable by the filter user {FILTER_USER} (every directory must be o+x, the binary o+rx)",
                    p.display()
                );
            }
            return p;
        }
    }
    panic!(
        "binary {name:?} is not built (looked in {}): run `{build}` (scripts/test does) first",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The proc-exec command that runs an example (debug build, see [`example_bin`]) with
/// arguments, each single-quoted for smtpd's `/bin/sh -c`: e.g.
/// `example_cmd("helo-reject", &["^localhost$"])`. Panics on an argument that cannot go
/// into smtpd.conf that way (a quote or a backslash).
pub fn example_cmd(name: &str, args: &[&str]) -> String {
    example_cmd_in(name, "debug", args)
}

/// [`example_cmd`] for a cargo profile directory (`debug`, `release`).
pub fn example_cmd_in(name: &str, profile: &str, args: &[&str]) -> String {
    let mut cmd = example_bin_in(name, profile).display().to_string();
    for a in args {
        assert!(
            !a.contains(['\'', '"', '\\', '\n', '\r']),
            "example argument {a:?}: no quotes, backslashes or line breaks in smtpd.conf"
        );
        cmd.push_str(&format!(" '{a}'"));
    }
    cmd
}

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The capture filter script (`tests/capture/capture-filter.py`).
pub fn capture_filter_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("capture/capture-filter.py")
}

/// The proc-exec command that runs the capture filter, appending everything it receives to
/// `{out}/<file>` (read it with [`Rig::read_out`]).
pub fn capture_filter_cmd(file: &str) -> String {
    format!(
        "/usr/bin/python3 {} {{out}}/{file}",
        capture_filter_script().display()
    )
}

fn world_reachable(p: &Path) -> bool {
    let mut cur = Some(p);
    let mut first = true;
    while let Some(c) = cur {
        let Ok(m) = fs::metadata(c) else { return false };
        let mode = m.permissions().mode();
        let need = if first { 0o005 } else { 0o001 };
        if mode & need != need {
            return false;
        }
        first = false;
        cur = c.parent();
    }
    true
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn conf_string_ok(s: &str) -> Result<(), RigError> {
    if s.contains(['"', '\n', '\r', '\\']) {
        Err(RigError::new(format!(
            "cannot put {s:?} into smtpd.conf (quote, backslash or line break)"
        )))
    } else {
        Ok(())
    }
}

fn mail_user() -> String {
    std::env::var("RIG_MAIL_USER").unwrap_or_else(|_| "rigmail".to_string())
}

/// uid and gid of a local user, from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Runs a command, fails with its output unless it succeeds; returns stdout.
fn run_checked(cmd: &mut Command) -> Result<Vec<u8>, RigError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RigError::new(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(RigError::new(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// Runs a command collecting its output; kills it (by PID) after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// The milliseconds written right after `marker` in a log line (`marker` then
/// `2.553ms`), as rspamd's task lines (`, time: `) and filter-rspamd's (` elapsed=`)
/// give them.
pub fn millis_after(line: &str, marker: &str) -> Option<Duration> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let ms: f64 = rest[..rest.find("ms")?].parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// The last `n` lines of a text.
/// A TCP port on 127.0.0.1 that is free now (nothing holds it once this returns).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Why a daemon did not start on the port it was given.
pub(crate) enum PortStart {
    /// Something else (another test's daemon) took the port between [`free_port`] and
    /// the daemon's bind; what the daemon said.
    Taken(String),
    Failed(String),
}

impl<T: Into<String>> From<T> for PortStart {
    fn from(e: T) -> PortStart {
        PortStart::Failed(e.into())
    }
}

/// Starts `what` with `start` on a free port of 127.0.0.1, and on another one when the
/// port was taken before the daemon bound it, up to three times.
pub(crate) fn start_on_a_free_port<T>(
    what: &str,
    mut start: impl FnMut(u16) -> Result<T, PortStart>,
) -> Result<T, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        let port = free_port().map_err(|e| format!("{what}: no free port: {e}"))?;
        match start(port) {
            Ok(started) => return Ok(started),
            Err(PortStart::Taken(said)) if tries < 3 => {
                eprintln!("{what}: port {port} was taken before it bound it; again:\n{said}");
            }
            Err(PortStart::Taken(said)) => {
                return Err(format!("{what}: its port was taken, three times:\n{said}"));
            }
            Err(PortStart::Failed(e)) => return Err(e),
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n") + "\n"
}

/// swaks' transcript (its stdout) as text.
pub fn transcript(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server's replies in a swaks transcript (`<-`, `<**`, `<~`, `<~*` lines), and swaks'
/// own errors (`***`), without the message data swaks echoes.
pub fn server_replies(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("<-")
                || t.starts_with("<*")
                || t.starts_with("<~")
                || t.starts_with("***")
        })
        .collect()
}

static RIG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temporary directory `/tmp/opensmtpd-rig-PID-N-XXXX` (mode 755; the base is
/// [`rig_base`]), removed on drop unless `RIG_KEEP=1`.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let n = RIG_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = rig_base().path().join(format!(
            "opensmtpd-rig-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("RIG_KEEP").is_some_and(|v| v == "1") {
            let _ = fs::write(self.path.join("kept"), "RIG_KEEP=1\n");
            eprintln!("RIG_KEEP=1: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A slot number held by a lock on `/tmp/opensmtpd-rig-slots/slot-N` (released when the
/// file is closed, also if the process dies).
struct Slot {
    n: u32,
    _lock: File,
}

impl Slot {
    fn acquire() -> Result<Slot, RigError> {
        fs::create_dir_all(SLOT_DIR)?;
        // start at a different place in each process, to skip slots other processes hold
        let start = (std::process::id() + RIG_COUNTER.load(Ordering::Relaxed) * 7) % MAX_SLOTS;
        for i in 0..MAX_SLOTS {
            let n = 1 + (start + i) % MAX_SLOTS;
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(format!("{SLOT_DIR}/slot-{n}"))?;
            if f.try_lock().is_ok() {
                // a stale daemon of a killed run may still hold the slot's addresses
                let busy = listening_sockets(Proto::Tcp)
                    .into_iter()
                    .chain(listening_sockets(Proto::Udp))
                    .any(|a| match a.ip() {
                        IpAddr::V4(ip) => ip.octets()[..3] == [127, 43, n as u8],
                        IpAddr::V6(_) => a.port() == 24000 + n as u16,
                    });
                if busy {
                    continue;
                }
                let mut f = f;
                let _ = writeln!(f, "{}", std::process::id());
                return Ok(Slot { n, _lock: f });
            }
        }
        Err(RigError::new(format!(
            "all {MAX_SLOTS} rig slots are in use"
        )))
    }
}

/// An SMTP reply: its code and text lines (without the code and separator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether the code is 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// What [`Rig::session_within`] saw.
#[derive(Clone, Debug, Default)]
pub struct SessionOutcome {
    /// When the greeting arrived (from the start of the session).
    pub greeting: Option<Duration>,
    /// Every command with its reply, the greeting first.
    pub replies: Vec<(String, Reply)>,
    /// The reply to the message (after the final dot), if it came.
    pub data_reply: Option<Reply>,
    /// The I/O error that ended the session early (a timeout, a refused connection).
    pub error: Option<String>,
    /// How long the whole session took.
    pub elapsed: Duration,
}

impl SessionOutcome {
    /// Whether the message was accepted (250 after the final dot).
    pub fn accepted(&self) -> bool {
        self.data_reply.as_ref().is_some_and(|r| r.code == 250)
    }
}

impl fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.greeting {
            Some(g) => write!(f, "greeting after {:.1} s", g.as_secs_f64())?,
            None => write!(f, "no greeting")?,
        }
        if let Some(r) = &self.data_reply {
            write!(f, "; message answered {r}")?;
        } else if let Some((cmd, r)) = self.replies.last() {
            write!(f, "; last reply: {cmd} -> {r}")?;
        }
        if let Some(e) = &self.error {
            write!(f, "; stopped by: {e}")?;
        }
        write!(f, " ({:.1} s in all)", self.elapsed.as_secs_f64())
    }
}

/// A hand-driven plain SMTP session (for what swaks cannot do: RSET, NOOP, HELO, a drop
/// in the middle of DATA, raw bytes in commands). No pipelining: one command, one reply.
pub struct SmtpClient {
    stream: TcpStream,
    reader: std::io::BufReader<TcpStream>,
}

impl SmtpClient {
    /// Connects to a listener of the rig from `src` (a 127/8 address or `::1`). The
    /// greeting is not read yet: call [`SmtpClient::read_reply`].
    pub fn connect(rig: &Rig, listener: Listener, src: &str) -> std::io::Result<SmtpClient> {
        let stream = rig.connect_from(listener, src)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let reader = std::io::BufReader::new(stream.try_clone()?);
        Ok(SmtpClient { stream, reader })
    }

    /// Sets the read and write timeouts (30 s after connect).
    pub fn set_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        use std::io::BufRead;
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad reply line {text:?}"),
                )
            })?;
            let more = text.as_bytes().get(3) == Some(&b'-');
            lines.push(text.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn command(&mut self, line: &str) -> std::io::Result<Reply> {
        self.command_bytes(line.as_bytes())
    }

    /// Sends raw bytes + CRLF and reads the reply.
    pub fn command_bytes(&mut self, line: &[u8]) -> std::io::Result<Reply> {
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"\r\n");
        self.stream.write_all(&buf)?;
        self.read_reply()
    }

    /// Sends a command and checks that the reply has the expected code.
    pub fn expect(&mut self, line: &str, code: u16) -> std::io::Result<Reply> {
        let r = self.command(line)?;
        if r.code != code {
            return Err(std::io::Error::other(format!(
                "{line:?}: expected {code}, got {r}"
            )));
        }
        Ok(r)
    }

    /// Writes raw bytes, reads nothing.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a message's content after a 354 (wire form, see [`wire_data`]) with the final
    /// dot and reads the reply.
    pub fn send_data(&mut self, msg: &[u8]) -> std::io::Result<Reply> {
        let mut data = wire_data(msg);
        data.extend_from_slice(b"\r\n");
        self.stream.write_all(&data)?;
        self.read_reply()
    }

    /// Closes the connection without QUIT (both directions).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// QUIT, then waits for the server to close the connection.
    pub fn quit(mut self) -> std::io::Result<Reply> {
        let r = self.command("QUIT")?;
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok(r)
    }
}

/// Stops what rigs of dead test processes left behind (a test binary killed with SIGKILL
/// cannot drop its rigs): for each `opensmtpd-rig-PID-*` in `/tmp` or `/dev/shm` whose
/// PID is gone, the smtpd and dnsmasq recorded in its `pids` file (checked against
/// their mount namespace or command line, so that a reused PID is never hit) and every
/// process in the recorded mount namespace get SIGKILL; then the directory is removed.
/// The directories of rspamds such a process started (`opensmtpd-rig-rspamd-PID-N`)
/// are removed too. Directories kept with `RIG_KEEP=1` are left alone.
pub fn cleanup_stale_rigs() {
    let entries = [RigBase::Tmp, RigBase::Shm]
        .into_iter()
        .filter_map(|b| fs::read_dir(b.path()).ok())
        .flatten();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("opensmtpd-rig-") else {
            continue;
        };
        // an rspamd's directory (`opensmtpd-rig-rspamd-PID-N`): rspamd itself died with
        // the process that started it (PR_SET_PDEATHSIG), so only the files are left
        let rspamd = rest.strip_prefix("rspamd-");
        let Some(owner) = rspamd
            .unwrap_or(rest)
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = e.path();
        if dir.join("kept").exists() {
            continue;
        }
        if rspamd.is_some() {
            let _ = fs::remove_dir_all(&dir);
            continue;
        }
        let Ok(pids) = fs::read_to_string(dir.join("pids")) else {
            continue;
        };
        let field = |k: &str| {
            pids.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let mut killed_any = false;
        if let Some(ns) = field("mntns ") {
            let ns = PathBuf::from(ns);
            // Namespace ids are reused once a namespace is gone: kill only if the
            // namespace still has this rig's mounts (its mountinfo names this rig's
            // directory: resolv.conf, spool), never another, live rig that got the
            // same id.
            let marker = format!("{}/", dir.display());
            let members = pids_in_mnt_ns(&ns);
            let still_ours = members.first().is_some_and(|p| {
                let mounts = fs::read(format!("/proc/{p}/mountinfo")).unwrap_or_default();
                mounts.windows(marker.len()).any(|w| w == marker.as_bytes())
            });
            if still_ours
                && fs::read_link("/proc/self/ns/mnt").ok().as_deref() != Some(ns.as_path())
            {
                for p in members {
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                    killed_any = true;
                }
            }
        }
        if let Some(p) = field("dnsmasq ").and_then(|p| p.parse::<libc::pid_t>().ok()) {
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let conf = format!("--conf-file={}/dnsmasq.conf", dir.display());
            if p > 0 && cmdline.windows(conf.len()).any(|w| w == conf.as_bytes()) {
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
                killed_any = true;
            }
        }
        if killed_any {
            sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
pub mod redis;
pub mod rspamd;

/// The rig's DNS server stopped and started again while smtpd runs (the three-filter
/// chain tests: senderscore and SPF lookups failing, then served again).
impl Rig {
    /// Whether the rig's dnsmasq runs.
    pub fn dns_running(&self) -> bool {
        self.dnsmasq.as_ref().is_some_and(|c| pid_running(c.id()))
    }

    /// Stops the rig's dnsmasq (SIGKILL to the PID the rig started, then reaped): from
    /// now on, DNS queries to [`Rig::dns_addr`] get ICMP port unreachable. Does nothing
    /// when it is stopped.
    pub fn stop_dns(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the rig's dnsmasq again with the same configuration and address, and
    /// waits until it is bound. Does nothing when it runs.
    pub fn start_dns(&mut self) -> Result<(), RigError> {
        if self.dnsmasq.is_some() {
            return Ok(());
        }
        let dir = self.dir.path.clone();
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("dnsmasq.log"))?;
        let child = spawn_dnsmasq(&dir.join("dnsmasq.conf"), log)?;
        let pid = child.id();
        self.dnsmasq = Some(child);
        // the pids file names the new dnsmasq, for cleanup_stale_rigs
        let pids = fs::read_to_string(dir.join("pids")).unwrap_or_default();
        let mut text: String = pids
            .lines()
            .filter(|l| !l.starts_with("dnsmasq "))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("dnsmasq {pid}\n"));
        fs::write(dir.join("pids"), text)?;
        self.wait_dns("dnsmasq did not start again")
    }

    /// Waits until the rig's dnsmasq answers on its address; `what` heads the error.
    fn wait_dns(&self, what: &str) -> Result<(), RigError> {
        self.wait_listening(
            &[SocketAddr::new(self.dns_addr().into(), 53)],
            Proto::Udp,
            None,
            Duration::from_secs(10),
        )
        .map_err(|e| RigError::new(format!("{what}: {e}\n{}", self.read_log("dnsmasq.log"))))
    }
}

/// Starts dnsmasq in the foreground on `conf`, its output to `log`, in its own process
/// group (stopped by PID with the rig).
fn spawn_dnsmasq(conf: &Path, log: File) -> Result<Child, RigError> {
    Command::new("/usr/sbin/dnsmasq")
        .arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file=")
        .arg("--log-facility=-")
        .arg("--user=nobody")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| RigError::new(format!("cannot start dnsmasq: {e}")))
}
pub mod chain;
pub mod load;
pub mod soak;

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_taken_port_is_given_up_for_another_up_to_three_times() {
        let mut ports = Vec::new();
        let started = start_on_a_free_port("d", |port| {
            ports.push(port);
            if ports.len() < 3 {
                Err(PortStart::Taken("in use".into()))
            } else {
                Ok(port)
            }
        });
        assert_eq!(started, Ok(ports[2]));
        let mut tries = 0;
        let e = start_on_a_free_port("d", |_| -> Result<(), _> {
            tries += 1;
            Err(PortStart::Taken("in use".into()))
        })
        .unwrap_err();
        assert_eq!(tries, 3);
        assert!(e.contains("three times"), "{e}");
        let mut tries = 0;
        let e = start_on_a_free_port("d", |_| -> Result<(), _> {
            tries += 1;
            Err("broken".into())
        })
        .unwrap_err();
        assert_eq!((tries, e.as_str()), (1, "broken"));
    }
}
