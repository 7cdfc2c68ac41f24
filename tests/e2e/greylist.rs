//! filter-greylist against the real daemons (OpenSMTPD 6.8 and 7.4), with the rig's
//! dnsmasq serving SPF zones on loopback and swaks sending from chosen 127/8 addresses.
//!
//! Clients sit in different /24 networks (127.0.1.20, 127.0.2.21, 127.0.3.66, ...) so
//! that the default /24 grouping does not hide what SPF does. Zones:
//!
//! | domain | SPF | authorises |
//! |---|---|---|
//! | `ip4.test` | `ip4:127.0.1.0/24 ip4:127.0.2.21 -all` | 127.0.1.x, 127.0.2.21 |
//! | `inc.test` | `include:ip4.test -all` | the same |
//! | `redir.test` | `redirect=ip4.test` | the same |
//! | `amx.test` | `a mx ~all` (A 127.0.4.40, MX mx1.amx.test = 127.0.5.50) | .4.40, .5.50; softfail else |
//! | `six.test` | `ip6:::1 -all` | ::1 |
//! | `two.test` | two `v=spf1` records | permerror |
//! | `txt.test` | a TXT record that is not SPF | none |
//! | `nospf.test` | none (no such domain) | none |
//!
//! The filter is pointed at the rig's DNS server with `--resolver {dns}:53` and keeps its
//! store in a file the test chooses, so that a second rig (a restarted smtpd and filter)
//! finds it again.
//!
//! Needs `target/debug/filter-greylist` (`cargo build -p filter-greylist`; scripts/test
//! builds every target first).

use opensmtpd_e2e::*;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const FILTER: &str = "greylist";
const GREYLISTED: &str = "451 4.7.1 Greylisted: please try again later";
/// The pass time the scenarios run with.
const PASS: Duration = Duration::from_secs(3);

fn greylist_bin() -> PathBuf {
    workspace_bin("filter-greylist")
}

/// A rig for `daemon` with the SPF zones and the filter (store at `store`, pass time
/// [`PASS`], plus `args`) declared; the caller adds listeners and starts it.
fn rig_with(daemon: Daemon, store: &Path, args: &[&str]) -> RigBuilder {
    rig_with_pass(daemon, store, &PASS.as_secs().to_string(), args)
}

/// [`rig_with`] with the pass time `pass`.
fn rig_with_pass(daemon: Daemon, store: &Path, pass: &str, args: &[&str]) -> RigBuilder {
    let b = Rig::builder(daemon);
    let store = store.display().to_string();
    let mut cmd = format!(
        "{} -passtime {pass} -greyexp 1h -whiteexp 1d --store {store} --resolver {{dns}}:53",
        greylist_bin().display()
    );
    for a in args {
        assert!(!a.contains(['\'', '"', '\\', '\n']), "argument {a:?}");
        cmd.push_str(&format!(" '{a}'"));
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    b.filter(FILTER, &cmd)
        .dns_record(DnsRecord::Raw("local-ttl=300".into()))
        .dns_record(DnsRecord::txt(
            "ip4.test",
            "v=spf1 ip4:127.0.1.0/24 ip4:127.0.2.21 -all",
        ))
        .dns_record(DnsRecord::txt("inc.test", "v=spf1 include:ip4.test -all"))
        .dns_record(DnsRecord::txt("redir.test", "v=spf1 redirect=ip4.test"))
        .dns_record(DnsRecord::txt("amx.test", "v=spf1 a mx ~all"))
        .dns_record(DnsRecord::host("amx.test", ip("127.0.4.40")))
        .dns_record(DnsRecord::host("mx1.amx.test", ip("127.0.5.50")))
        .dns_record(DnsRecord::Raw("mx-host=amx.test,mx1.amx.test,10".into()))
        .dns_record(DnsRecord::txt("six.test", "v=spf1 ip6:::1 -all"))
        .dns_record(DnsRecord::txt("two.test", "v=spf1 ip4:127.0.1.20 -all"))
        .dns_record(DnsRecord::txt("two.test", "v=spf1 -all"))
        .dns_record(DnsRecord::txt("txt.test", "google-site-verification=x"))
}

fn message(subject: &str, from: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{subject}@lab.test>\n\nbody of {subject}\n"
    )
    .into_bytes()
}

/// Sends one message from `src` as `from` to [`RCPT_OK`]; the transcript (and swaks'
/// stderr). A connection that never got smtpd's greeting (a loopback connect error
/// under load) changed no state and is tried again, up to three times.
fn send_at(rig: &Rig, listener: Listener, src: &str, from: &str, subject: &str) -> String {
    send_with(rig, listener, src, from, subject, &[])
}

/// [`send_at`] with more swaks arguments.
fn send_with(
    rig: &Rig,
    listener: Listener,
    src: &str,
    from: &str,
    subject: &str,
    extra: &[&str],
) -> String {
    let mut args = vec!["--ehlo", "client.lab.test"];
    args.extend_from_slice(extra);
    rig.send_until_greeted(
        listener,
        src,
        from,
        &[RCPT_OK],
        &message(subject, from),
        &args,
    )
}

fn send(rig: &Rig, src: &str, from: &str, subject: &str) -> String {
    send_at(rig, Listener::Plain, src, from, subject)
}

#[track_caller]
fn assert_greylisted(rig: &Rig, t: &str, what: &str) {
    assert!(
        t.contains(GREYLISTED),
        "{}: {what}: not greylisted\n{t}\n--- smtpd log ---\n{}",
        rig.daemon(),
        tail(&rig.smtpd_log(), 30)
    );
}

#[track_caller]
fn assert_accepted(rig: &Rig, t: &str, what: &str) {
    assert!(
        !t.contains(GREYLISTED) && t.contains("Message accepted for delivery"),
        "{}: {what}: not accepted\n{t}\n--- smtpd log ---\n{}",
        rig.daemon(),
        tail(&rig.smtpd_log(), 30)
    );
}

/// The filter's decision lines that contain every one of `parts` (waits for `n`).
fn decisions(rig: &Rig, parts: &[&str], n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = rig
            .log_lines("filter-greylist: info: session=")
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {n} decision lines with {parts:?} not found\n{}",
            rig.daemon(),
            tail(&rig.smtpd_log(), 40)
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until no process holds the store's lock (the stopped filter has exited).
fn wait_store_released(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(store)
            .expect("the store exists");
        if f.try_lock().is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store {} is still locked",
            store.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ scenarios

/// The scenario: 451 first, 451 early retry, accepted from another address the
/// domain's SPF authorises after the pass time, greylisted from unauthorised ones; the
/// SPF mechanisms give the results they should; state survives a restart of smtpd and
/// the filter.
fn greylisting_spf_and_restart(daemon: Daemon) {
    let mut rig = rig_with(daemon, Path::new("{out}/greylist.redb"), &[])
        .listen_plain(FILTER)
        .listen_ipv6(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let store = rig.out_dir().join("greylist.redb");
    let first = Instant::now();

    let t = send(&rig, "127.0.1.20", "news@ip4.test", "first");
    assert_greylisted(&rig, &t, "first attempt");
    let l = decisions(&rig, &["client=127.0.1.20 ", "sender=<news@ip4.test>"], 1);
    assert!(
        l[0].contains(&format!("rcpt=<{RCPT_OK}> key=domain:ip4.test/news@ip4.test/{RCPT_OK} spf=pass decision=tempfail reason=first-attempt")),
        "{}", l[0]
    );
    let t = send(&rig, "127.0.1.20", "news@ip4.test", "early");
    assert_greylisted(&rig, &t, "early retry");
    decisions(&rig, &["client=127.0.1.20 ", "reason=early-retry"], 1);

    // an address ip4.test does not authorise: keyed by its own network
    let t = send(&rig, "127.0.3.66", "news@ip4.test", "forged");
    assert_greylisted(&rig, &t, "unauthorised address");
    let l = decisions(&rig, &["client=127.0.3.66 ", "sender=<news@ip4.test>"], 1);
    assert!(
        l[0].contains("key=net:127.0.3.0/24/news@ip4.test/"),
        "{}",
        l[0]
    );
    assert!(l[0].contains("spf=fail decision=tempfail"), "{}", l[0]);

    // the mechanisms: first attempts, each with its SPF result in the log
    let mut nospf_sent = Instant::now();
    for (src, from, spf, key) in [
        ("127.0.1.20", "a@inc.test", "pass", "domain:inc.test/"),
        ("127.0.2.21", "a@redir.test", "pass", "domain:redir.test/"),
        ("127.0.4.40", "a@amx.test", "pass", "domain:amx.test/"),
        ("127.0.5.50", "b@amx.test", "pass", "domain:amx.test/"),
        ("127.0.3.66", "c@amx.test", "softfail", "net:127.0.3.0/24/"),
        ("127.0.1.20", "a@two.test", "permerror", "net:127.0.1.0/24/"),
        ("127.0.1.20", "a@txt.test", "none", "net:127.0.1.0/24/"),
        ("127.0.3.66", "a@nospf.test", "none", "net:127.0.3.0/24/"),
    ] {
        if from == "a@nospf.test" {
            nospf_sent = Instant::now();
        }
        let t = send(&rig, src, from, "mechanism");
        assert_greylisted(&rig, &t, from);
        let l = decisions(
            &rig,
            &[&format!("client={src} "), &format!("sender=<{from}>")],
            1,
        );
        assert!(l[0].contains(&format!("key={key}")), "{from}: {}", l[0]);
        assert!(l[0].contains(&format!("spf={spf} ")), "{from}: {}", l[0]);
    }
    let t = send_at(&rig, Listener::Ipv6, "::1", "a@six.test", "six");
    assert_greylisted(&rig, &t, "IPv6 first attempt");
    let l = decisions(&rig, &["client=::1 ", "sender=<a@six.test>"], 1);
    assert!(l[0].contains("key=domain:six.test/a@six.test/"), "{}", l[0]);
    assert!(l[0].contains("spf=pass"), "{}", l[0]);

    // after the pass time, a retry from another address of ip4.test is accepted
    thread::sleep(PASS.saturating_sub(first.elapsed()) + Duration::from_millis(300));
    let t = send(&rig, "127.0.2.21", "news@ip4.test", "passed");
    assert_accepted(&rig, &t, "retry from another authorised address");
    let l = decisions(&rig, &["client=127.0.2.21 ", "sender=<news@ip4.test>"], 1);
    assert!(
        l[0].contains("decision=accept reason=retry-passed(now white-domain:ip4.test)"),
        "{}",
        l[0]
    );
    // a new unauthorised address is still greylisted
    let t = send(&rig, "127.0.6.66", "news@ip4.test", "forged-again");
    assert_greylisted(&rig, &t, "unauthorised address after the domain passed");
    let t = send(&rig, "127.0.1.99", "other@ip4.test", "domain-white");
    assert_accepted(&rig, &t, "whitelisted domain");
    let delivered = rig.wait_delivered(2, Duration::from_secs(15));
    assert_eq!(delivered.len(), 2, "{daemon}");
    rig.assert_alive();

    // restart smtpd and the filter: the same store file, a new rig
    rig.stop();
    wait_store_released(&store);
    let rig2 = rig_with(daemon, &store, &[])
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: restart: {e}"));
    // the domain whitelisting survived
    let t = send(&rig2, "127.0.2.21", "news@ip4.test", "after-restart");
    assert_accepted(&rig2, &t, "whitelisted domain after the restart");
    decisions(
        &rig2,
        &[
            "client=127.0.2.21 ",
            "reason=whitelisted(white-domain:ip4.test)",
        ],
        1,
    );
    // the grey entry of nospf.test survived: its retry passes, not a first attempt
    thread::sleep(PASS.saturating_sub(nospf_sent.elapsed()) + Duration::from_millis(300));
    let t = send(&rig2, "127.0.3.66", "a@nospf.test", "grey-after-restart");
    assert_accepted(&rig2, &t, "grey entry from before the restart");
    decisions(
        &rig2,
        &[
            "client=127.0.3.66 ",
            "sender=<a@nospf.test>",
            "reason=retry-passed(now white-net:127.0.3.0/24)",
        ],
        1,
    );
    rig2.assert_alive();
    drop(rig2);
    drop(rig);
}

#[test]
fn smtpd68_greylist_spf_and_restart() {
    greylisting_spf_and_restart(Daemon::Smtpd68);
}

#[test]
fn smtpd74_greylist_spf_and_restart() {
    greylisting_spf_and_restart(Daemon::Smtpd74);
}

/// 7.4 (working STARTTLS and AUTH): an authenticated sender is not greylisted, the
/// same triplet unauthenticated is.
#[test]
fn smtpd74_greylist_authenticated_sender_exempt() {
    const PW: &str = "greylist-e2e-pw";
    let daemon = Daemon::Smtpd74;
    let rig = rig_with(daemon, Path::new("{out}/greylist.redb"), &[])
        .auth_user("rigtest", PW)
        .listen_starttls_auth(FILTER)
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let from = "boss@nospf.test";
    let t = send_with(
        &rig,
        Listener::StartTlsAuth,
        "127.0.7.70",
        from,
        "authenticated",
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "rigtest",
            "--auth-password",
            PW,
        ],
    );
    assert!(t.contains("235 "), "not authenticated:\n{t}");
    assert_accepted(&rig, &t, "authenticated sender");
    decisions(&rig, &["client=127.0.7.70 ", "reason=authenticated"], 1);
    let t = send(&rig, "127.0.7.70", from, "unauthenticated");
    assert_greylisted(&rig, &t, "the same triplet unauthenticated");
    decisions(&rig, &["client=127.0.7.70 ", "reason=first-attempt"], 1);
    rig.wait_delivered(1, Duration::from_secs(15));
    rig.assert_alive();
}

/// `filter-greylist admin --store STORE ARGS…` run by the test (root) while smtpd runs
/// the filter as its filter user: it goes through the filter's control socket.
fn admin(store: &Path, args: &[&str]) -> String {
    let out = run_with_timeout(
        std::process::Command::new(greylist_bin())
            .arg("admin")
            .arg("--store")
            .arg(store)
            .args(args),
        Duration::from_secs(30),
    )
    .expect("run the admin command");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "admin {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The admin command while smtpd and the filter run (the filter holds the redb file):
/// `allow` of a greylisted client makes its next attempt pass, long before the pass
/// time (30 min); `list` shows the entries; a greytrap added with `add-greytrap` traps
/// the next client writing to it.
fn admin_while_running(daemon: Daemon) {
    let rig = rig_with_pass(daemon, Path::new("{out}/greylist.redb"), "30m", &[])
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let store = rig.out_dir().join("greylist.redb");
    let t = send(&rig, "127.0.8.80", "a@nospf.test", "before-allow");
    assert_greylisted(&rig, &t, "first attempt");
    let t = send(&rig, "127.0.8.80", "a@nospf.test", "early");
    assert_greylisted(&rig, &t, "early retry (pass time 30 min)");
    let socket = rig.out_dir().join("greylist.redb.sock");
    assert!(socket.exists(), "{daemon}: no control socket");
    let list = admin(&store, &["list"]);
    assert!(
        list.lines().any(|l| l.starts_with("grey ")
            && l.contains(&format!("net:127.0.8.0/24/a@nospf.test/{RCPT_OK}"))),
        "{daemon}: {list}"
    );
    assert_eq!(
        admin(&store, &["allow", "127.0.8.80"]),
        "allowed: white-net:127.0.8.0/24\n"
    );
    let t = send(&rig, "127.0.8.80", "a@nospf.test", "after-allow");
    assert_accepted(&rig, &t, "after admin allow");
    decisions(
        &rig,
        &[
            "client=127.0.8.80 ",
            "reason=whitelisted(white-net:127.0.8.0/24)",
        ],
        1,
    );
    rig.wait_delivered_with("after-allow", Duration::from_secs(15));
    let json = admin(&store, &["list", "--json"]);
    assert!(
        json.contains("\"kind\":\"white\",\"key\":\"white-net:127.0.8.0/24\""),
        "{daemon}: {json}"
    );
    // a greytrap added now traps the next client writing to it
    admin(&store, &["add-greytrap", "spamtrap@lab.test"]);
    let out = rig.send_message_at(
        Listener::Plain,
        "127.0.9.90",
        "x@nospf.test",
        &["spamtrap@lab.test"],
        &message("trap", "x@nospf.test"),
        &["--ehlo", "client.lab.test"],
    );
    assert!(
        transcript(&out).contains(GREYLISTED),
        "{}",
        transcript(&out)
    );
    decisions(
        &rig,
        &[
            "client=127.0.9.90 ",
            "reason=greytrap-hit(now trap:127.0.9.90/32)",
        ],
        1,
    );
    assert!(admin(&store, &["list"]).contains("trap:127.0.9.90/32"));
    rig.assert_alive();
}

#[test]
fn smtpd68_greylist_admin_while_running() {
    admin_while_running(Daemon::Smtpd68);
}

#[test]
fn smtpd74_greylist_admin_while_running() {
    admin_while_running(Daemon::Smtpd74);
}

/// Learning from outgoing mail (smtp-out reports): smtpd relays mail for
/// `alice@lab.test` to a second smtpd (the peer) through an action that names the
/// filter (`relay host smtp://PEER filter "greylist"`: smtpd then gives the filter the
/// smtp-out subsystem). After the peer accepted the recipient, the peer's network is
/// whitelisted in the store (seen with `admin list`); on 7.4 (working AUTH), mail an
/// authenticated user sends whitelists the recipient's domain.
fn outgoing_mail_whitelists_its_peer(daemon: Daemon) {
    use std::os::unix::fs::PermissionsExt;
    let peer = Rig::builder(daemon)
        .listen_plain_unfiltered()
        .start()
        .unwrap_or_else(|e| panic!("{daemon} peer: {e}"));
    let peer_addr = peer.addr(Listener::Plain);
    const PW: &str = "greylist-out-pw";
    // the sending client is allowlisted: its mail goes out at once
    let wl_dir = std::env::temp_dir().join(format!(
        "greylist-out-{}-{}",
        std::process::id(),
        daemon.name()
    ));
    std::fs::create_dir_all(&wl_dir).unwrap();
    std::fs::set_permissions(&wl_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wl = wl_dir.join("wl-ip");
    std::fs::write(&wl, "127.0.6.60\n").unwrap();
    std::fs::set_permissions(&wl, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = rig_with(
        daemon,
        Path::new("{out}/greylist.redb"),
        &["-wl-ip", wl.to_str().unwrap()],
    )
    .smtpd_conf_line(&format!(
        "action \"out\" relay host smtp://{}:{} filter \"{FILTER}\"",
        peer_addr.ip(),
        peer_addr.port()
    ))
    .smtpd_conf_line("match from any for rcpt-to \"alice@lab.test\" action \"out\"")
    .listen_plain(FILTER);
    if daemon == Daemon::Smtpd74 {
        b = b.auth_user("rigout", PW).listen_starttls_auth(FILTER);
    }
    let rig = b.start().unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let store = rig.out_dir().join("greylist.redb");
    let from = "boss@nospf.test";
    let out = rig.send_message_at(
        Listener::Plain,
        "127.0.6.60",
        from,
        &["alice@lab.test"],
        &message("relayed-out", from),
        &["--ehlo", "client.lab.test"],
    );
    assert!(
        transcript(&out).contains("Message accepted for delivery"),
        "{daemon}: {}",
        transcript(&out)
    );
    peer.wait_delivered_with("relayed-out", Duration::from_secs(30));
    let net = match peer_addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        other => panic!("peer on {other}"),
    };
    let learned = rig.wait_log_lines(
        &format!(
            "outgoing: delivered to {}: whitelisted white-net:{net}",
            peer_addr.ip()
        ),
        1,
        Duration::from_secs(15),
    );
    assert_eq!(learned.len(), 1, "{daemon}: {learned:?}");
    let list = admin(&store, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("white ") && l.contains(&format!("white-net:{net} "))),
        "{daemon}: the peer is not whitelisted:\n{list}"
    );
    if daemon == Daemon::Smtpd74 {
        let out = rig.send_message_at(
            Listener::StartTlsAuth,
            "127.0.7.71",
            "user@nospf.test",
            &["alice@lab.test"],
            &message("authenticated-out", "user@nospf.test"),
            &[
                "--ehlo",
                "client.lab.test",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "rigout",
                "--auth-password",
                PW,
            ],
        );
        let t = transcript(&out);
        assert!(t.contains("235 "), "not authenticated:\n{t}");
        assert_accepted(&rig, &t, "authenticated sender");
        rig.wait_log_lines(
            "outgoing: an authenticated user wrote to <alice@lab.test>: whitelisted white-domain:lab.test",
            1,
            Duration::from_secs(15),
        );
        let list = admin(&store, &["list", "--json"]);
        assert!(
            list.contains("\"kind\":\"white\",\"key\":\"white-domain:lab.test\""),
            "{list}"
        );
        peer.wait_delivered_with("authenticated-out", Duration::from_secs(30));
    }
    rig.assert_alive();
    peer.assert_alive();
    let _ = std::fs::remove_dir_all(&wl_dir);
}

#[test]
fn smtpd68_greylist_outgoing_mail_whitelists_its_peer() {
    outgoing_mail_whitelists_its_peer(Daemon::Smtpd68);
}

#[test]
fn smtpd74_greylist_outgoing_mail_whitelists_its_peer() {
    outgoing_mail_whitelists_its_peer(Daemon::Smtpd74);
}
