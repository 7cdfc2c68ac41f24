//! A real rspamd (Debian's 3.4) for one test, on loopback, with every module that
//! reaches the internet or needs Redis disabled (`../shared/lab-notes.md`).
//!
//! ```no_run
//! use opensmtpd_e2e::rspamd::Rspamd;
//! let rspamd = Rspamd::start().unwrap();
//! println!("{}", rspamd.url()); // http://127.0.0.1:PORT, for filter-rspamd -url
//! ```
//!
//! What it is configured with (the same as the replies recorded in
//! `filter-rspamd/tests/replies/`): `milter_headers` adds X-Spamd-Result,
//! Authentication-Results, X-Rspamd-Server, X-Rspamd-Queue-Id, X-Spam-Status and
//! X-Rspamd-Action to every message (local and authenticated ones too); a message whose
//! Subject holds [`SOFT_REJECT_SUBJECT`] gets `soft reject` with the message
//! [`SOFT_REJECT_MESSAGE`] (multimap + force_actions); the settings ids `addheader`,
//! `rewrite` and `greylist` make that action the one any message gets; mail whose From is
//! in [`DKIM_DOMAIN`] is DKIM-signed (a key made for each rspamd). GTUBE gets
//! `reject` ("Gtube pattern"). Only the normal worker runs (no controller, no proxy),
//! on a TCP port ([`Rspamd::url`]) and a unix socket ([`Rspamd::unix_socket`]).
//!
//! The compiled hyperscan cache is shared by every test in a directory under /tmp
//! (building it takes 10 to 30 s; with it, a start takes about 2 s); starts are
//! serialised with a lock file so that only one rspamd writes the cache at a time.
//! rspamd runs as `_rspamd` in its own process group, gets SIGTERM when the thread that
//! started it ends, and is stopped by its PID on drop.

use crate::PortStart;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A Subject containing this gets `soft reject`.
pub const SOFT_REJECT_SUBJECT: &str = "softreject-please";
/// rspamd's message for it.
pub const SOFT_REJECT_MESSAGE: &str = "Try again later (test)";

/// rspamd signs mail from this domain (From header), with [`DKIM_SELECTOR`].
pub const DKIM_DOMAIN: &str = "lab.test";
/// The DKIM selector.
pub const DKIM_SELECTOR: &str = "rig";

const CACHE_DIR: &str = "/tmp/opensmtpd-rig-rspamd-cache";
const USER: &str = "_rspamd";
const MODULES_OFF: [&str; 23] = [
    "fuzzy_check",
    "rbl",
    "surbl",
    "dcc",
    "asn",
    "phishing",
    "url_redirector",
    "emails",
    "reputation",
    "neural",
    "spamassassin",
    "rspamd_update",
    "p0f",
    "external_services",
    "antivirus",
    "metadata_exporter",
    "clickhouse",
    "elastic",
    "history_redis",
    "greylist",
    "ratelimit",
    "replies",
    "bimi",
];

/// A running rspamd. Dropping it stops it.
pub struct Rspamd {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
}

fn uid_gid(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Holds an exclusive lock on a file until dropped.
struct Lock(File);

impl Lock {
    fn take(path: &Path) -> std::io::Result<Lock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Rspamd {
    /// Writes a configuration in a new temporary directory and starts rspamd on a free
    /// loopback port; returns once it answers `/ping`. The port is free when chosen
    /// but rspamd binds it a moment later: if something else (another test's daemon)
    /// took it meanwhile, rspamd is started again on another port, up to three times.
    pub fn start() -> Result<Rspamd, String> {
        crate::start_on_a_free_port("rspamd", Rspamd::start_on)
    }

    fn start_on(port: u16) -> Result<Rspamd, PortStart> {
        let bin = Path::new("/usr/bin/rspamd");
        if !bin.exists() {
            return Err("rspamd is not installed: run scripts/test (it provisions it)".into());
        }
        let (uid, gid) = uid_gid(USER).ok_or("user _rspamd is missing: is rspamd installed?")?;
        let io = |e: std::io::Error| format!("rspamd setup: {e}");
        let dir = crate::rig_base().path().join(format!(
            "opensmtpd-rig-rspamd-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        for d in ["", "local.d", "override.d", "run", "log"] {
            fs::create_dir_all(dir.join(d)).map_err(io)?;
            fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        for d in ["run", "log"] {
            chown(dir.join(d), Some(uid), Some(gid)).map_err(io)?;
        }
        fs::create_dir_all(CACHE_DIR).map_err(io)?;
        chown(CACHE_DIR, Some(uid), Some(gid)).map_err(io)?;
        fs::set_permissions(CACHE_DIR, fs::Permissions::from_mode(0o755)).map_err(io)?;

        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let d = dir.display();
        let files: Vec<(String, String)> = vec![
            (
                "override.d/worker-normal.inc".into(),
                format!(
                    "bind_socket = \"{addr}\";\nbind_socket = \"{d}/run/normal.sock mode=0666\";\ncount = 1;\n"
                ),
            ),
            (
                "override.d/worker-controller.inc".into(),
                "enabled = false;\n".into(),
            ),
            (
                "override.d/worker-proxy.inc".into(),
                "enabled = false;\n".into(),
            ),
            (
                "override.d/worker-fuzzy.inc".into(),
                "enabled = false;\n".into(),
            ),
            (
                "override.d/logging.inc".into(),
                "type = \"console\";\nlevel = \"info\";\n".into(),
            ),
            (
                // nothing answers there: every DNS lookup fails at once, on loopback
                "local.d/options.inc".into(),
                "dns { nameserver = [\"127.0.0.1:5353\"]; timeout = 1s; retransmits = 1; }\n"
                    .into(),
            ),
            (
                "local.d/milter_headers.conf".into(),
                "use = [\"x-spamd-result\", \"x-rspamd-server\", \"x-rspamd-queue-id\", \"authentication-results\", \"x-spam-status\", \"x-rspamd-action\"];\nskip_local = false;\nskip_authenticated = false;\n".into(),
            ),
            (
                "local.d/multimap.conf".into(),
                format!(
                    "SOFT_SUBJECT {{ type = \"header\"; header = \"Subject\"; regexp = true; map = \"{d}/soft.map\"; score = 0.0; }}\n"
                ),
            ),
            ("soft.map".into(), format!("/{SOFT_REJECT_SUBJECT}/\n")),
            (
                "local.d/force_actions.conf".into(),
                format!(
                    "rules {{ SOFT_TEST {{ action = \"soft reject\"; expression = \"SOFT_SUBJECT\"; message = \"{SOFT_REJECT_MESSAGE}\"; }} }}\n"
                ),
            ),
            (
                "local.d/settings.conf".into(),
                "addheader { id = \"addheader\"; apply { actions { \"add header\" = 0.1; \"rewrite subject\" = 100; reject = 200; greylist = 150; } } }\n\
                 rewrite { id = \"rewrite\"; apply { actions { \"rewrite subject\" = 0.1; reject = 200; \"add header\" = 100; greylist = 150; } } }\n\
                 greylist { id = \"greylist\"; apply { actions { greylist = 0.1; reject = 200; \"add header\" = 100; \"rewrite subject\" = 150; } } }\n"
                    .into(),
            ),
        ];
        // DKIM signing for lab.test (selector "rig"): mail from lab.test gets a signature
        let key = dir.join("dkim.pem");
        let ok = Command::new("/usr/bin/openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io)?;
        if !ok.success() {
            return Err("openssl genrsa failed".into());
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).map_err(io)?;
        let mut files = files;
        files.push((
            "local.d/dkim_signing.conf".into(),
            format!(
                "allow_username_mismatch = true;\ndomain {{ {DKIM_DOMAIN} {{ path = \"{}\"; selector = \"{DKIM_SELECTOR}\"; }} }}\n",
                key.display()
            ),
        ));
        for (name, text) in &files {
            let p = dir.join(name);
            fs::write(&p, text).map_err(io)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io)?;
        }
        for m in MODULES_OFF.iter().chain(&["mx_check"]) {
            let p = dir.join(format!("override.d/{m}.conf"));
            fs::write(&p, "enabled = false;\n").map_err(io)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io)?;
        }

        let _lock = Lock::take(Path::new(&format!("{CACHE_DIR}.lock"))).map_err(io)?;
        let log = File::create(dir.join("rspamd.log")).map_err(io)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "-f",
            "-u",
            USER,
            "-g",
            USER,
            "-c",
            "/etc/rspamd/rspamd.conf",
        ])
        .arg(format!("--var=LOCAL_CONFDIR={d}"))
        .arg(format!("--var=DBDIR={CACHE_DIR}"))
        .arg(format!("--var=RUNDIR={d}/run"))
        .arg(format!("--var=LOGDIR={d}/log"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log)
        .process_group(0);
        // SAFETY: prctl in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start rspamd: {e}"))?;
        let mut r = Rspamd {
            child: Some(child),
            dir,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if r.ping() {
                // the first scan loads what the workers load lazily: do it here, so that
                // the test's first message is not the slow one
                let warm = b"From: <warm@example.org>\r\nSubject: warm-up\r\n\r\nwarm-up\r\n";
                return match r.checkv2(warm, Duration::from_secs(60)) {
                    Some(reply) if reply.contains("\"action\"") => Ok(r),
                    other => Err(format!(
                        "rspamd's first scan failed ({other:?}):\n{}",
                        crate::tail(&r.log(), 30)
                    )
                    .into()),
                };
            }
            let log = r.log();
            if log.contains("cannot listen on normal socket") {
                return Err(PortStart::Taken(crate::tail(&log, 5)));
            }
            if let Some(c) = r.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("rspamd exited ({status}):\n{}", crate::tail(&log, 30)).into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "rspamd did not answer /ping within 90 s:\n{}",
                    crate::tail(&log, 30)
                )
                .into());
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(300)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf.windows(4).any(|w| w == b"pong")
    }

    /// Sends `message` to `/checkv2` and returns the reply body.
    pub fn checkv2(&self, message: &[u8], timeout: Duration) -> Option<String> {
        self.checkv2_with(&[], message, timeout)
    }

    /// [`Rspamd::checkv2`] with request headers (`("IP", "192.0.2.1")`...).
    pub fn checkv2_with(
        &self,
        headers: &[(&str, &str)],
        message: &[u8],
        timeout: Duration,
    ) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut head =
            String::from("POST /checkv2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", message.len()));
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(message).ok()?;
        // read the head, then exactly Content-Length bytes (rspamd may keep the
        // connection open)
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let body_start = end + 4;
                match len {
                    Some(len) if buf.len() >= body_start + len => {
                        return Some(
                            String::from_utf8_lossy(&buf[body_start..body_start + len])
                                .into_owned(),
                        );
                    }
                    _ => {}
                }
            }
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                let text = String::from_utf8_lossy(&buf).into_owned();
                return text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The unix socket the normal worker also listens on (mode 0666, in a directory
    /// everyone can reach).
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.join("run/normal.sock")
    }

    /// The address of the normal worker.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What rspamd logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("rspamd.log")).unwrap_or_default())
            .into_owned()
    }

    /// How many bytes rspamd has logged so far: a mark for [`Rspamd::logged_scan_times`].
    pub fn log_len(&self) -> u64 {
        fs::metadata(self.dir.join("rspamd.log")).map_or(0, |m| m.len())
    }

    /// rspamd's own time for each message it scanned since byte `since` of its log, as
    /// it logs it at the end of each scan (`rspamd_task_write_log: … time: 2.553ms`,
    /// or `time: 2.55ms real, …` in older versions): the scan, without the HTTP
    /// exchange around it.
    pub fn logged_scan_times(&self, since: u64) -> Vec<Duration> {
        let log = fs::read(self.dir.join("rspamd.log")).unwrap_or_default();
        let from = usize::try_from(since).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[from..])
            .lines()
            .filter(|l| l.contains("rspamd_task_write_log"))
            .filter_map(scan_time_of)
            .collect()
    }

    /// Stops rspamd now (SIGTERM to its PID, then its process group if it lingers).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signals to the process we started and its own group.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
        }
        // the workers leave with the main process; make sure none keeps the port
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.ping() {
            sleep(Duration::from_millis(50));
        }
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("RIG_KEEP").is_some_and(|v| v == "1") {
            // cleanup_stale_rigs leaves it alone
            let _ = fs::write(self.dir.join("kept"), "RIG_KEEP=1\n");
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `time: 2.553ms` of one of rspamd's task log lines.
fn scan_time_of(line: &str) -> Option<Duration> {
    crate::millis_after(line, ", time: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_time_is_read_from_rspamd_task_log_lines() {
        let v34 = "2026-11-22 22:24:01 #31115(normal) <195450>; task; rspamd_task_write_log: id: <1-8-0@load.example>, qid: <ad567da4>, ip: 127.0.0.100, (default: F (no action): [0.00/15.00] [MIME_GOOD(-0.10){text/plain;}]), len: 1554, time: 2.553ms, dns req: 0, digest: <487a>";
        assert_eq!(scan_time_of(v34), Some(Duration::from_micros(2553)));
        let older = "... rspamd_task_write_log: id: <x>, len: 10, time: 12.5ms real, 3.1ms virtual, dns req: 0";
        assert_eq!(scan_time_of(older), Some(Duration::from_micros(12500)));
        assert_eq!(
            scan_time_of("rspamd_task_write_log: id: <x>, len: 10"),
            None
        );
        assert_eq!(scan_time_of("rspamd_task_write_log: x, time: NaNms"), None);
    }
}
