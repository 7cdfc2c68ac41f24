//! Self-tests of the rig: isolation, DNS, listeners, rejections, clean stop.

use opensmtpd_e2e::*;
use std::time::{Duration, Instant};

fn start(daemon: Daemon) -> Rig {
    Rig::builder(daemon)
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .listen_plain("passthrough")
        .dns_record(DnsRecord::senderscore("127.0.0.50".parse().unwrap(), 50))
        .dns_record(DnsRecord::txt("lab.test", "v=spf1 ip4:127.0.0.10 -all"))
        .start()
        .unwrap()
}

fn dns_in_namespace(daemon: Daemon) {
    let rig = start(daemon);
    let getent = |name: &str| {
        let out = rig
            .in_namespace("getent")
            .args(["hosts", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        getent("client50.lab.test"),
        "127.0.0.50      client50.lab.test"
    );
    assert_eq!(getent("127.0.0.90"), "127.0.0.90      client90.lab.test");
    assert_eq!(
        getent("50.0.0.127.score.senderscore.com"),
        "127.0.4.50      50.0.0.127.score.senderscore.com"
    );
    let t = Instant::now();
    assert_eq!(getent("www.example.com"), "");
    assert_eq!(getent("127.0.0.1"), "");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "NXDOMAIN must be immediate"
    );
    let resolv = rig
        .in_namespace("cat")
        .arg("/etc/resolv.conf")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&resolv.stdout).contains(&rig.dns_addr().to_string()));
    rig.assert_alive();
}

#[test]
fn smtpd68_dns_is_private() {
    dns_in_namespace(Daemon::Smtpd68);
}

#[test]
fn smtpd74_dns_is_private() {
    dns_in_namespace(Daemon::Smtpd74);
}

fn rejections_and_isolation(daemon: Daemon) {
    // three rigs of the same daemon at once: each gets its own addresses and maildir
    let rigs: Vec<Rig> = (0..3)
        .map(|_| {
            Rig::builder(daemon)
                .filter("capture", &capture_filter_cmd("capture.txt"))
                .listen_plain("capture")
                .start()
                .unwrap()
        })
        .collect();
    let mut addrs: Vec<_> = rigs.iter().map(|r| r.addr(Listener::Plain)).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), 3);
    for (i, rig) in rigs.iter().enumerate() {
        let subject = format!("Subject: rig {i}\n\nbody {i}\n");
        let out = rig.send_message(
            CLIENT,
            "sender@example.org",
            &[RCPT_OK, RCPT_UNKNOWN, RCPT_FOREIGN],
            subject.as_bytes(),
            &[],
        );
        let t = String::from_utf8_lossy(&out.stdout);
        assert!(
            t.contains("<** 524 5.2.4"),
            "{daemon}: unknown user not rejected:\n{t}"
        );
        assert!(
            t.contains("<** 550 Invalid recipient"),
            "{daemon}: foreign domain not rejected:\n{t}"
        );
        assert!(
            t.contains("Message accepted for delivery"),
            "{daemon}:\n{t}"
        );
    }
    for (i, rig) in rigs.iter().enumerate() {
        let got = rig.wait_delivered(1, Duration::from_secs(10));
        assert_eq!(got.len(), 1);
        assert!(strip_smtpd_headers(&got[0]).starts_with(format!("Subject: rig {i}\n").as_bytes()));
        let cap = rig.read_out("capture.txt");
        assert!(
            cap.starts_with(b"config|smtpd-version|"),
            "the filter's file is readable"
        );
        rig.assert_alive();
    }
    let pids: Vec<u32> = rigs.iter().filter_map(Rig::smtpd_pid).collect();
    drop(rigs);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "smtpd {pid} still runs"
        );
    }
}

#[test]
fn smtpd68_rejects_and_isolates_parallel_rigs() {
    rejections_and_isolation(Daemon::Smtpd68);
}

#[test]
fn smtpd74_rejects_and_isolates_parallel_rigs() {
    rejections_and_isolation(Daemon::Smtpd74);
}

#[test]
fn smtpd74_starttls_auth() {
    let rig = Rig::builder(Daemon::Smtpd74)
        .filter("capture", &capture_filter_cmd("capture.txt"))
        .listen_starttls_auth("capture")
        .start()
        .unwrap();
    let (user, pw) = rig.auth_credentials();
    assert!(user.contains('|'));
    let out = rig.swaks_at(
        Listener::StartTlsAuth,
        CLIENT,
        &[
            "-f",
            "a@example.org",
            "-t",
            RCPT_OK,
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            pw,
        ],
    );
    assert!(out.status.success(), "{}", transcript(&out));
    rig.wait_delivered(1, Duration::from_secs(10));
    let cap = String::from_utf8_lossy(&rig.read_out("capture.txt")).into_owned();
    assert!(
        cap.contains("|link-auth|") && cap.contains(&format!("|pass|{user}\n")),
        "{cap}"
    );
    assert!(cap.contains("|link-tls|"));
    rig.assert_alive();
}

/// The IPv6 listener; the `connect` request's address is `[::1]` on both daemons.
fn ipv6_listener(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("capture", &capture_filter_cmd("capture.txt"))
        .listen_ipv6("capture")
        .start()
        .unwrap();
    let out = rig.swaks_at(
        Listener::Ipv6,
        "::1",
        &["-f", "b@example.org", "-t", RCPT_OK],
    );
    assert!(out.status.success(), "{daemon}: {}", transcript(&out));
    rig.wait_delivered(1, Duration::from_secs(10));
    let cap = String::from_utf8_lossy(&rig.read_out("capture.txt")).into_owned();
    let connect: Vec<&str> = cap
        .lines()
        .filter(|l| l.contains("|smtp-in|connect|"))
        .collect();
    assert_eq!(connect.len(), 1, "{daemon}: {cap}");
    assert!(
        connect[0].ends_with("|<unknown>|[::1]"),
        "{daemon}: {}",
        connect[0]
    );
    rig.assert_alive();
}

#[test]
fn smtpd68_ipv6_listener() {
    ipv6_listener(Daemon::Smtpd68);
}

#[test]
fn smtpd74_ipv6_listener() {
    ipv6_listener(Daemon::Smtpd74);
}

#[test]
fn smtpd68_has_no_starttls_listener() {
    let err = Rig::builder(Daemon::Smtpd68)
        .filter("capture", &capture_filter_cmd("capture.txt"))
        .listen_starttls_auth("capture")
        .start()
        .err()
        .expect("6.8 with STARTTLS must be refused");
    assert!(err.to_string().contains("7.4"), "{err}");
}

fn dying_filter_fails_start(daemon: Daemon) {
    let t = Instant::now();
    let started = Rig::builder(daemon)
        .filter("dies", "/bin/false")
        .listen_plain("dies")
        .start();
    match started {
        Err(err) => assert!(err.to_string().contains("did not start"), "{err}"),
        // smtpd listens before its filters register; under load the filter may exit after
        // start() has returned: smtpd must then go down shortly after.
        Ok(rig) => {
            while rig.smtpd_alive() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!rig.smtpd_alive(), "smtpd survived a filter that exits");
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn smtpd68_dying_filter_fails_start_clearly() {
    dying_filter_fails_start(Daemon::Smtpd68);
}

#[test]
fn smtpd74_dying_filter_fails_start_clearly() {
    dying_filter_fails_start(Daemon::Smtpd74);
}

#[test]
fn chain_of_unknown_filter_is_an_error() {
    let err = Rig::builder(Daemon::Smtpd74)
        .filter("a", &capture_filter_cmd("a.txt"))
        .filter_chain("chain", &["a", "b"])
        .err()
        .expect("unknown member");
    assert!(err.to_string().contains("\"b\""), "{err}");
}

fn filter_chain_runs_both_filters(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("a", &capture_filter_cmd("a.txt"))
        .filter("b", &capture_filter_cmd("b.txt"))
        .filter_chain("chain", &["a", "b"])
        .unwrap()
        .listen_plain("chain")
        .start()
        .unwrap();
    let out = rig.send_message(
        CLIENT,
        "c@example.org",
        &[RCPT_OK],
        b"Subject: chain\n\nhello\n",
        &[],
    );
    assert!(out.status.success(), "{daemon}:\n{}", transcript(&out));
    rig.wait_delivered(1, Duration::from_secs(10));
    for f in ["a.txt", "b.txt"] {
        rig.wait_out(f, Duration::from_secs(5), |c| {
            c.windows(16).any(|w| w == b"|link-disconnect")
        });
    }
    rig.assert_alive();
}

#[test]
fn smtpd68_filter_chain_runs_both_filters() {
    filter_chain_runs_both_filters(Daemon::Smtpd68);
}

#[test]
fn smtpd74_filter_chain_runs_both_filters() {
    filter_chain_runs_both_filters(Daemon::Smtpd74);
}

#[test]
fn missing_smtpd74_fails_with_provisioning_hint() {
    let err = Rig::builder(Daemon::Smtpd74)
        .smtpd74_root("/nonexistent/opensmtpd-7.4")
        .listen_plain_unfiltered()
        .start()
        .err()
        .expect("a rig without 7.4 must not start");
    assert_eq!(
        err.to_string(),
        "smtpd-7.4: /nonexistent/opensmtpd-7.4/usr/sbin/smtpd is missing: run scripts/test (or, as root, scripts/lib/provision.sh) to provision the e2e rig"
    );
    // the same check, with the helpers missing
    let root = std::env::temp_dir().join(format!("rig-no-helpers-{}", std::process::id()));
    let sbin = root.join("usr/sbin");
    std::fs::create_dir_all(&sbin).unwrap();
    std::fs::copy("/bin/true", sbin.join("smtpd")).unwrap();
    let err = Daemon::Smtpd74.check_installed_at(&root).err();
    std::fs::remove_dir_all(&root).unwrap();
    let err = err.expect("missing helpers must be an error").to_string();
    assert!(
        err.contains("usr/libexec/opensmtpd/mail.maildir is missing: run scripts/test"),
        "{err}"
    );
}

#[test]
fn example_bin_fails_clearly_when_not_built() {
    let err =
        std::panic::catch_unwind(|| example_bin("no-such-example-xyz")).expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("is not built") && msg.contains("cargo build --examples"),
        "{msg}"
    );
}

#[test]
fn smtpd74_sees_its_own_helpers_and_the_system_libexec() {
    let rig = Rig::builder(Daemon::Smtpd74)
        .listen_plain_unfiltered()
        .start()
        .unwrap();
    let cmp = rig
        .in_namespace("cmp")
        .arg("/usr/libexec/opensmtpd/mail.maildir")
        .arg(Daemon::Smtpd74.libexec().join("mail.maildir"))
        .status()
        .unwrap();
    assert!(cmp.success(), "7.4 must deliver with its own mail.maildir");
    let ls = rig
        .in_namespace("ls")
        .arg("/usr/libexec/opensmtpd/")
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    for f in std::fs::read_dir("/usr/libexec/opensmtpd").unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(ls.contains(&name), "{name} hidden in the 7.4 namespace");
    }
    rig.assert_alive();
}

#[test]
fn relative_filter_command_is_an_error() {
    let err = Rig::builder(Daemon::Smtpd68)
        .filter("x", "env FOO=1 /bin/cat")
        .listen_plain("x")
        .start()
        .err()
        .expect("must be refused");
    assert!(err.to_string().contains("must start with '/'"), "{err}");
}

/// A daemon that died without a word in its log (SIGKILL, a crash) says how it ended in
/// the rig's messages; its PID stays the rig's until the rig stops.
#[test]
fn smtpd74_rig_says_how_smtpd_ended() {
    let mut rig = start(Daemon::Smtpd74);
    assert_eq!(rig.smtpd_state(), "runs");
    let pid = rig.smtpd_pid().expect("smtpd runs") as i32;
    // SAFETY: a signal to the smtpd this rig started, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let t = Instant::now();
    while rig.smtpd_alive() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rig.smtpd_state(), "was killed by signal 9");
    // looking did not reap it: asked again, the answer is the same
    assert_eq!(rig.smtpd_state(), "was killed by signal 9");
    rig.stop();
}
