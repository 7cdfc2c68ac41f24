//! Our Debian packages, installed: real mail through the three filters as the packages
//! put them on disk (/usr/libexec/opensmtpd/filter-*), named by their bare names in
//! smtpd.conf as an operator names them, on OpenSMTPD 6.8 and 7.4 in turn.
//!
//! Ignored in a plain `cargo test`: it needs our .debs installed over Debian's Go
//! filters, which only `scripts/test-packages` does (and undoes). Run by hand:
//!
//! ```sh
//! scripts/test-packages          # builds, installs, runs this test, restores
//! ```
//!
//! In one smtpd, `filter "inbound" chain { "senderscore", "greylist", "rspamd" }`:
//! a client scoring 10 is refused at connect; a client scoring 50 is greylisted, then
//! accepted after the pass time with the X-SenderScore and rspamd headers and the body
//! byte for byte; GTUBE from it (its network now passed greylisting) is refused with
//! rspamd's 550. filter-greylist keeps its state in its default store, in the directory
//! the package's postinst made: the test fails if that directory is not writable by
//! the filter user.

use opensmtpd_e2e::rspamd::Rspamd;
use opensmtpd_e2e::*;
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The version scripts/build-debs gives our packages.
const VERSION: &str = concat!("1:", env!("CARGO_PKG_VERSION"), "-1");
const PACKAGES: [&str; 3] = [
    "opensmtpd-filter-greylist",
    "opensmtpd-filter-rspamd",
    "opensmtpd-filter-senderscore",
];
const LIBEXEC: &str = "/usr/libexec/opensmtpd";
const STORE_DIR: &str = "/var/db/filter-greylist";

const SENDER: &str = "sender@example.org";
const BLOCKED: &str = "550 5.7.1 Your IP reputation is too low for this MX";
const GREYLISTED: &str = "451 4.7.1 Greylisted: please try again later";
const ACCEPTED: &str = "Message accepted for delivery";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const GTUBE_REJECTED: &str = "550 5.7.1 Gtube pattern";
const PASS_TIME_S: u64 = 2;

fn dpkg_version(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", package])
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The executables of the processes below `pid` (smtpd and the filters it spawned).
fn descendant_exes(pid: u32) -> Vec<PathBuf> {
    let mut parent_of = BTreeMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // the field after the command, which may hold spaces and parentheses
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parent_of.insert(p, ppid);
        }
    }
    let is_below = |mut p: u32| {
        while let Some(&pp) = parent_of.get(&p) {
            if pp == pid {
                return true;
            }
            p = pp;
        }
        false
    };
    parent_of
        .keys()
        .filter(|&&p| is_below(p))
        .filter_map(|p| fs::read_link(format!("/proc/{p}/exe")).ok())
        .collect()
}

/// Waits until no process runs `exe` (the redb store takes one writer: the next rig's
/// filter-greylist must not meet the last one's).
fn wait_gone(exe: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let running = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read_link(e.path().join("exe")).ok())
            .any(|p| p == std::path::Path::new(exe));
        if !running {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{exe} still runs after {timeout:?}"
        );
        sleep(Duration::from_millis(100));
    }
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Sun, 22 Nov 2026 12:00:00 +0000\nMessage-Id: <{subject}@lab.test>\n\n{body}"
    )
    .into_bytes()
}

fn chain(daemon: Daemon, rspamd: &Rspamd) {
    // clients in a network of their own per daemon: the store is shared by both runs,
    // and a network that passed greylisting on 6.8 would pass at once on 7.4
    let net = match daemon {
        Daemon::Smtpd68 => 68,
        Daemon::Smtpd74 => 74,
    };
    let low = Ipv4Addr::new(127, 0, net, 10);
    let mid = Ipv4Addr::new(127, 0, net, 50);
    let rig = Rig::builder(daemon)
        .filter(
            "senderscore",
            "filter-senderscore -blockBelow 20 -junkBelow 70 -scoreHeader",
        )
        .filter(
            "greylist",
            &format!("filter-greylist -passtime {PASS_TIME_S}"),
        )
        .filter(
            "rspamd",
            &format!("filter-rspamd -url {} --timeout 60000", rspamd.url()),
        )
        .filter_chain("inbound", &["senderscore", "greylist", "rspamd"])
        .unwrap()
        .listen_plain("inbound")
        .dns_record(DnsRecord::senderscore(low, 10))
        .dns_record(DnsRecord::senderscore(mid, 50))
        .dns_record(DnsRecord::Raw("local-ttl=300".into()))
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let conf = fs::read_to_string(rig.dir().join("smtpd.conf")).unwrap();
    for f in ["filter-senderscore", "filter-greylist", "filter-rspamd"] {
        assert!(
            conf.contains(&format!("proc-exec \"{f} ")),
            "{daemon}: {f} is not named by its bare name:\n{conf}"
        );
    }

    // the filters smtpd runs are the installed binaries
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exes = descendant_exes(rig.smtpd_pid().expect("smtpd runs"));
        let missing: Vec<&str> = ["filter-senderscore", "filter-greylist", "filter-rspamd"]
            .into_iter()
            .filter(|f| !exes.contains(&PathBuf::from(LIBEXEC).join(f)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{daemon}: smtpd does not run {missing:?} from {LIBEXEC}: {exes:?}\n{}",
            tail(&rig.smtpd_log(), 30)
        );
        sleep(Duration::from_millis(100));
    }

    // senderscore: refused at connect
    let t = transcript(&rig.swaks_from(&low.to_string(), &["-f", SENDER, "-t", RCPT_OK]));
    assert!(
        t.contains(BLOCKED),
        "{daemon}: low score not refused:\n{t}\n{}",
        tail(&rig.smtpd_log(), 40)
    );

    // greylist: tempfail, then accepted after the pass time
    let body = "first line\n.a leading dot\n..two dots\nlast line | with a pipe\n";
    let subject = format!("packages-{net}");
    let msg = message(&subject, body);
    let src = mid.to_string();
    let t = transcript(&rig.send_message(&src, SENDER, &[RCPT_OK], &msg, &[]));
    assert!(
        t.contains(GREYLISTED),
        "{daemon}: not greylisted:\n{t}\n{}",
        tail(&rig.smtpd_log(), 40)
    );
    sleep(Duration::from_secs(PASS_TIME_S + 1));
    let t = transcript(&rig.send_message(&src, SENDER, &[RCPT_OK], &msg, &[]));
    assert!(
        t.contains(ACCEPTED),
        "{daemon}: retry after the pass time not accepted:\n{t}\n{}",
        tail(&rig.smtpd_log(), 30)
    );
    let delivered = rig.wait_delivered_with(&subject, Duration::from_secs(30));
    assert!(
        delivered.contains("X-SenderScore: 50\n"),
        "{daemon}: no X-SenderScore:\n{delivered}"
    );
    for h in ["X-Spamd-Result: ", "X-Rspamd-Action: "] {
        assert!(delivered.contains(h), "{daemon}: no {h}:\n{delivered}");
    }
    assert!(
        delivered.ends_with(&format!("\n\n{body}")),
        "{daemon}: body changed:\n{delivered}"
    );

    // rspamd: GTUBE from the same (now passed) client is refused
    let t = transcript(&rig.send_message(
        &src,
        SENDER,
        &[RCPT_OK],
        &message("gtube", &format!("{GTUBE}\n")),
        &[],
    ));
    assert!(
        t.contains(GTUBE_REJECTED),
        "{daemon}: GTUBE not refused:\n{t}\n{}",
        tail(&rig.smtpd_log(), 40)
    );
    assert!(
        rig.delivered_with("gtube").is_none(),
        "{daemon}: GTUBE delivered"
    );
    rig.assert_alive();
    drop(rig);
    wait_gone(
        &format!("{LIBEXEC}/filter-greylist"),
        Duration::from_secs(15),
    );
}

#[test]
#[ignore = "needs our .debs installed: scripts/test-packages installs them, runs it, restores"]
fn smtpd68_and_smtpd74_installed_packages() {
    for p in PACKAGES {
        assert_eq!(
            dpkg_version(p),
            format!("installed {VERSION}"),
            "{p}: not our package"
        );
    }
    let store = fs::metadata(STORE_DIR).expect("the package's postinst makes the store directory");
    let filter_uid = Command::new("id")
        .args(["-u", "opensmtpd"])
        .output()
        .expect("run id");
    let filter_uid: u32 = String::from_utf8_lossy(&filter_uid.stdout)
        .trim()
        .parse()
        .expect("user opensmtpd");
    assert_eq!(store.uid(), filter_uid, "{STORE_DIR}: owner");
    assert_eq!(
        store.permissions().mode() & 0o7777,
        0o750,
        "{STORE_DIR}: mode"
    );

    let rspamd = Rspamd::start().unwrap();
    for daemon in Daemon::ALL {
        chain(daemon, &rspamd);
    }
    // the state is in the default store, in the package's directory
    assert!(
        fs::metadata(format!("{STORE_DIR}/greylist.redb")).is_ok_and(|m| m.len() > 0),
        "filter-greylist kept no state in {STORE_DIR}"
    );
}
