//! filter-senderscore against the real daemons (OpenSMTPD 6.8 and 7.4), with the rig's
//! dnsmasq serving a test copy of the SenderScore zone on loopback.
//!
//! Clients are 127/8 addresses (swaks `-li`): 127.0.0.10 / .50 / .90 have scores 10 / 50
//! / 90, 127.0.0.1 has none (NXDOMAIN), 127.0.0.77 gets `127.255.255.255` (what the real
//! zone answers an unregistered or over-quota resolver).
//!
//! The filter is pointed at the rig's DNS server with `--resolver IP:53`. The rig picks
//! that address when it starts, after the filter command is written, so the command runs
//! a small wrapper (in the rig's directory) that reads the address from the resolv.conf
//! smtpd's namespace sees, which is the rig's DNS server.
//!
//! Needs `target/debug/filter-senderscore` (`cargo build -p filter-senderscore`;
//! scripts/test builds every target first).

use opensmtpd_e2e::*;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const BLOCKED: &str = "550 5.7.1 Your IP reputation is too low for this MX";
const FILTER: &str = "senderscore";
const SENDER: &str = "sender@example.org";

fn senderscore_bin() -> PathBuf {
    workspace_bin("filter-senderscore")
}

/// A rig for `daemon` with the test zone and the filter (with `args`) declared; the
/// caller adds listeners and starts it.
fn rig_with(daemon: Daemon, args: &[&str]) -> RigBuilder {
    let mut b = Rig::builder(daemon);
    // the wrapper: the rig's DNS server, as smtpd's namespace sees it, for --resolver
    let rig_dir = b
        .out_dir()
        .parent()
        .expect("the out dir is in the rig's directory")
        .to_path_buf();
    let wrapper = rig_dir.join("senderscore.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             ns=$(sed -n 's/^nameserver[[:space:]]*//p' /etc/resolv.conf | head -n 1)\n\
             exec {} \"$@\" --resolver \"$ns:53\"\n",
            senderscore_bin().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the wrapper");
    let mut cmd = format!("/bin/sh {}", wrapper.display());
    for a in args {
        assert!(!a.contains(['\'', '"', '\\', '\n']), "argument {a:?}");
        cmd.push_str(&format!(" '{a}'"));
    }
    b = b.filter(FILTER, &cmd);
    for (client, score) in [("127.0.0.10", 10), ("127.0.0.50", 50), ("127.0.0.90", 90)] {
        b = b.dns_record(DnsRecord::senderscore(client.parse().unwrap(), score));
    }
    // dnsmasq gives its own records a TTL of 0 (never cached) unless told otherwise
    b.dns_record(DnsRecord::Raw("local-ttl=300".into()))
        .dns_record(DnsRecord::a(
            "77.0.0.127.score.senderscore.com",
            Ipv4Addr::new(127, 255, 255, 255),
        ))
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{subject}@lab.test>\n\nbody of {subject}\n"
    )
    .into_bytes()
}

fn send(rig: &Rig, src: &str, subject: &str) -> String {
    let out = rig.send_message(
        src,
        SENDER,
        &[RCPT_OK],
        &message(subject),
        &["--ehlo", "client.lab.test"],
    );
    transcript(&out)
}

fn delivered_with(rig: &Rig, subject: &str) -> Option<String> {
    rig.delivered_with(subject)
}

fn wait_delivered_with(rig: &Rig, subject: &str) -> String {
    rig.wait_delivered_with(subject, Duration::from_secs(15))
}

/// The filter's decision line for `client` (waits for it).
fn decision(rig: &Rig, client: &str, n: usize) -> Vec<String> {
    let needle = format!("client={client} ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = rig
            .log_lines("filter-senderscore: info: session=")
            .into_iter()
            .filter(|l| l.contains(&needle))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no decision line for {client}\n{}",
            rig.daemon(),
            tail(&rig.smtpd_log(), 40)
        );
        thread::sleep(Duration::from_millis(25));
    }
}

// ------------------------------------------------------------------ scenarios

/// Scores 10 / 50 / 90 / none / 127.255.255.255 with `-blockBelow 20 -junkBelow 60
/// -scoreHeader` (Go spelling): blocked / junked with header / header only / untouched
/// / untouched and logged.
fn five_clients(daemon: Daemon) {
    let rig = rig_with(
        daemon,
        &["-blockBelow", "20", "-junkBelow", "60", "-scoreHeader"],
    )
    .listen_plain(FILTER)
    .start()
    .unwrap();

    let t = send(&rig, "127.0.0.10", "from-10");
    assert!(t.contains(BLOCKED), "{daemon}: 10 not blocked:\n{t}");
    assert!(!t.contains("<-  354"), "{daemon}: 10 reached DATA:\n{t}");

    for (client, subject) in [
        ("127.0.0.50", "from-50"),
        ("127.0.0.90", "from-90"),
        ("127.0.0.1", "from-none"),
        ("127.0.0.77", "from-refused"),
    ] {
        let t = send(&rig, client, subject);
        assert!(
            t.contains("<-  250 2.0.0"),
            "{daemon}: {client} not accepted:\n{t}"
        );
    }
    let m50 = wait_delivered_with(&rig, "from-50");
    assert!(m50.starts_with("X-SenderScore: 50\n"), "{daemon}: {m50}");
    assert!(
        m50.contains("X-Spam: Yes\n"),
        "{daemon}: 50 not junked: {m50}"
    );
    let m90 = wait_delivered_with(&rig, "from-90");
    assert!(m90.starts_with("X-SenderScore: 90\n"), "{daemon}: {m90}");
    assert!(!m90.contains("X-Spam"), "{daemon}: {m90}");
    for subject in ["from-none", "from-refused"] {
        let m = wait_delivered_with(&rig, subject);
        assert_eq!(
            m.as_bytes(),
            &message(subject)[..],
            "{daemon}: {subject} was changed"
        );
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rig.delivered().len(),
        4,
        "{daemon}: the blocked client's mail"
    );

    let line = &decision(&rig, "127.0.0.10", 1)[0];
    assert!(
        line.contains("score=10 source=dns decision=disconnect phase=connect"),
        "{line}"
    );
    let line = &decision(&rig, "127.0.0.50", 1)[0];
    assert!(line.contains("score=50 source=dns decision=junk"), "{line}");
    let line = &decision(&rig, "127.0.0.1", 1)[0];
    assert!(
        line.contains("score=none source=dns decision=proceed"),
        "{line}"
    );
    let line = &decision(&rig, "127.0.0.77", 1)[0];
    assert!(
        line.contains("score=unknown(zone-refused) source=dns decision=proceed"),
        "{line}"
    );
    let said = rig.log_lines("answered 127.255.255.255 for 127.0.0.77");
    assert_eq!(
        said.len(),
        1,
        "{daemon}: said once in plain words: {said:?}"
    );
    assert!(said[0].contains("not registered, or over its free query quota"));
    // only A records were asked
    let queries = rig.dns_log();
    assert!(
        !queries.contains("query[AAAA] 10.0.0.127.score") && !queries.contains("query[TXT]"),
        "{daemon}: {queries}"
    );
    rig.assert_alive();
}

/// `-blockPhase rcpt-to`: the low-score client gets its greeting, EHLO and MAIL FROM,
/// and is disconnected at RCPT TO.
fn block_at_rcpt_to(daemon: Daemon) {
    let rig = rig_with(daemon, &["-blockBelow", "20", "-blockPhase", "rcpt-to"])
        .listen_plain(FILTER)
        .start()
        .unwrap();
    let mut c = SmtpClient::connect(&rig, Listener::Plain, "127.0.0.10").unwrap();
    assert_eq!(c.read_reply().unwrap().code, 220, "{daemon}: greeting");
    c.expect("EHLO client.lab.test", 250).unwrap();
    c.expect(&format!("MAIL FROM:<{SENDER}>"), 250).unwrap();
    let r = c.command(&format!("RCPT TO:<{RCPT_OK}>")).unwrap();
    assert_eq!(r.to_string(), BLOCKED, "{daemon}");
    assert!(c.command("NOOP").is_err(), "{daemon}: still connected");
    // a good client goes through
    let t = send(&rig, "127.0.0.90", "good");
    assert!(t.contains("<-  250 2.0.0"), "{daemon}:\n{t}");
    wait_delivered_with(&rig, "good");
    let line = decision(&rig, "127.0.0.10", 2).join("\n");
    assert!(line.contains("decision=proceed phase=connect"), "{line}");
    assert!(line.contains("decision=disconnect phase=rcpt-to"), "{line}");
    rig.assert_alive();
}

/// `-slowFactor 5000`: every answer to the score-10 client waits 4.5 s; a client with
/// score 100 that connects meanwhile is served at once and finishes first.
fn slow_factor(daemon: Daemon) {
    let rig = rig_with(daemon, &["-slowFactor", "5000"])
        .dns_record(DnsRecord::senderscore(Ipv4Addr::new(127, 0, 0, 20), 100))
        .listen_plain(FILTER)
        .start()
        .unwrap();
    let start = Instant::now();
    let slow = {
        let mut c = SmtpClient::connect(&rig, Listener::Plain, "127.0.0.10").unwrap();
        thread::spawn(move || {
            let greeting = c.read_reply().map(|r| (r.code, Instant::now()));
            let ehlo = c
                .command("EHLO slow.lab.test")
                .map(|r| (r.code, Instant::now()));
            let _ = c.command("QUIT");
            (greeting, ehlo)
        })
    };
    // let the slow client's connect reach the filter first
    thread::sleep(Duration::from_millis(300));
    let t = send(&rig, "127.0.0.20", "fast");
    let fast_done = Instant::now();
    assert!(t.contains("<-  250 2.0.0"), "{daemon}:\n{t}");
    let (greeting, ehlo) = slow.join().unwrap();
    let (code, greeted) = greeting.expect("slow client greeting");
    assert_eq!(code, 220);
    let (code, ehloed) = ehlo.expect("slow client EHLO");
    assert_eq!(code, 250);
    assert!(
        fast_done < greeted,
        "{daemon}: the good client finished after the slow one was greeted ({:?} vs {:?})",
        fast_done - start,
        greeted - start
    );
    assert!(
        greeted - start >= Duration::from_millis(4000),
        "{daemon}: greeting not slowed"
    );
    assert!(
        ehloed - greeted >= Duration::from_millis(4000),
        "{daemon}: EHLO not slowed"
    );
    wait_delivered_with(&rig, "fast");
    let line = &decision(&rig, "127.0.0.10", 1)[0];
    assert!(
        line.contains("score=10") && line.contains("delay=4500ms"),
        "{line}"
    );
    let line = &decision(&rig, "127.0.0.20", 1)[0];
    assert!(
        line.contains("score=100") && line.contains("delay=0ms"),
        "{line}"
    );
    rig.assert_alive();
}

/// The rig's DNS server is stopped mid-test: scores not yet cached become unknown and
/// mail flows (the score-10 client is not blocked); a cached score is still used.
fn dns_stopped(daemon: Daemon) {
    let rig = rig_with(
        daemon,
        &["-blockBelow", "20", "-scoreHeader", "--dns-timeout", "1000"],
    )
    .listen_plain(FILTER)
    .start()
    .unwrap();
    let t = send(&rig, "127.0.0.90", "before");
    assert!(t.contains("<-  250 2.0.0"), "{daemon}:\n{t}");
    assert!(wait_delivered_with(&rig, "before").starts_with("X-SenderScore: 90\n"));

    stop_dns(&rig);

    let t = send(&rig, "127.0.0.10", "after-10");
    assert!(
        t.contains("<-  250 2.0.0"),
        "{daemon}: mail must flow without DNS:\n{t}"
    );
    let m = wait_delivered_with(&rig, "after-10");
    assert!(!m.contains("X-SenderScore"), "{daemon}: {m}");
    let line = &decision(&rig, "127.0.0.10", 1)[0];
    assert!(
        line.contains("score=unknown(") && line.contains("decision=proceed"),
        "{line}"
    );
    let t = send(&rig, "127.0.0.90", "after-90");
    assert!(t.contains("<-  250 2.0.0"), "{daemon}:\n{t}");
    assert!(wait_delivered_with(&rig, "after-90").starts_with("X-SenderScore: 90\n"));
    let lines = decision(&rig, "127.0.0.90", 2);
    assert!(lines[1].contains("source=cache"), "{lines:?}");
    rig.assert_alive();
}

/// Stops the rig's dnsmasq (the PID the rig recorded, checked against its command line).
fn stop_dns(rig: &Rig) {
    let pids = std::fs::read_to_string(rig.dir().join("pids")).expect("the rig's pids file");
    let pid: u32 = pids
        .lines()
        .find_map(|l| l.strip_prefix("dnsmasq "))
        .and_then(|p| p.trim().parse().ok())
        .expect("dnsmasq's PID");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let conf = format!("--conf-file={}/dnsmasq.conf", rig.dir().display());
    assert!(
        cmdline.windows(conf.len()).any(|w| w == conf.as_bytes()),
        "PID {pid} is not this rig's dnsmasq"
    );
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    // wait until its socket is gone
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "dnsmasq did not stop");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `-allowlist FILE`: an allowlisted client is never blocked; the list is reloaded on
/// SIGHUP (flags and cache kept: the score-90 client's header still comes from the cache).
fn allowlist_and_sighup(daemon: Daemon) {
    // `{rig}` in a filter command is the rig's directory
    let b = rig_with(
        daemon,
        &[
            "-blockBelow",
            "20",
            "-scoreHeader",
            "-allowlist",
            "{rig}/allow.txt",
        ],
    );
    let allow = b.out_dir().parent().unwrap().join("allow.txt");
    std::fs::write(&allow, "# test\n127.0.0.8/29\n").unwrap();
    let rig = b.listen_plain(FILTER).start().unwrap();
    let t = send(&rig, "127.0.0.10", "allowed");
    assert!(
        t.contains("<-  250 2.0.0"),
        "{daemon}: allowlisted client blocked:\n{t}"
    );
    let m = wait_delivered_with(&rig, "allowed");
    assert!(!m.contains("X-SenderScore"), "{daemon}: {m}");
    let t = send(&rig, "127.0.0.90", "cached-90");
    assert!(t.contains("<-  250 2.0.0"));

    std::fs::write(&allow, "# emptied\n").unwrap();
    let pid = filter_pid(&rig);
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(ok.success());
    rig.wait_log_lines("SIGHUP: allowlist", 1, Duration::from_secs(10));

    let t = send(&rig, "127.0.0.10", "not-allowed");
    assert!(
        t.contains(BLOCKED),
        "{daemon}: not blocked after reload:\n{t}"
    );
    let t = send(&rig, "127.0.0.90", "cached-90-again");
    assert!(t.contains("<-  250 2.0.0"));
    assert!(wait_delivered_with(&rig, "cached-90-again").starts_with("X-SenderScore: 90\n"));
    let lines = decision(&rig, "127.0.0.90", 2);
    assert!(lines[1].contains("source=cache"), "{lines:?}");
    assert_eq!(filter_pid(&rig), pid, "{daemon}: the filter restarted");
    rig.assert_alive();
}

/// The PID of the filter process of this rig (in smtpd's mount namespace).
fn filter_pid(rig: &Rig) -> u32 {
    let smtpd = rig.smtpd_pid().expect("smtpd runs");
    let ns = std::fs::read_link(format!("/proc/{smtpd}/ns/mnt")).expect("smtpd's namespace");
    let bin = senderscore_bin().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(e.path().join("ns/mnt")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.starts_with(bin.as_bytes()) {
            return pid;
        }
    }
    panic!("no filter-senderscore process in the rig's namespace");
}

/// An IPv6 client (no zone configured for IPv6): its score is unknown, said once in plain
/// words, and its mail flows untouched even with thresholds that catch every score.
fn ipv6_client(daemon: Daemon) {
    let rig = rig_with(
        daemon,
        &["-blockBelow", "101", "-junkBelow", "101", "-scoreHeader"],
    )
    .listen_ipv6(FILTER)
    .start()
    .unwrap();
    let out = rig.send_message_at(
        Listener::Ipv6,
        "::1",
        SENDER,
        &[RCPT_OK],
        &message("from-v6"),
        &["--ehlo", "client.lab.test"],
    );
    let t = transcript(&out);
    assert!(
        t.contains("<-  250 2.0.0"),
        "{daemon}: IPv6 client refused:\n{t}"
    );
    let m = wait_delivered_with(&rig, "from-v6");
    assert_eq!(m.as_bytes(), &message("from-v6")[..], "{daemon}: changed");
    let line = &decision(&rig, "::1", 1)[0];
    assert!(
        line.contains("score=unknown(ipv6-not-served) source=none decision=proceed"),
        "{line}"
    );
    assert_eq!(rig.log_lines("is an IPv6 client").len(), 1);
    rig.assert_alive();
}

// ------------------------------------------------------------------ per daemon

#[test]
fn smtpd68_senderscore_five_clients() {
    five_clients(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_five_clients() {
    five_clients(Daemon::Smtpd74);
}

#[test]
fn smtpd68_senderscore_block_at_rcpt_to() {
    block_at_rcpt_to(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_block_at_rcpt_to() {
    block_at_rcpt_to(Daemon::Smtpd74);
}

#[test]
fn smtpd68_senderscore_slow_factor() {
    slow_factor(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_slow_factor() {
    slow_factor(Daemon::Smtpd74);
}

#[test]
fn smtpd68_senderscore_dns_stopped() {
    dns_stopped(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_dns_stopped() {
    dns_stopped(Daemon::Smtpd74);
}

#[test]
fn smtpd68_senderscore_allowlist_and_sighup() {
    allowlist_and_sighup(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_allowlist_and_sighup() {
    allowlist_and_sighup(Daemon::Smtpd74);
}

/// 7.4 (working STARTTLS): `-blockPhase auth` lets the low-score client connect, say
/// EHLO and start TLS, and disconnects it at AUTH; a good client authenticates and
/// sends. The password never reaches the log.
#[test]
fn smtpd74_senderscore_block_at_auth() {
    const PW: &str = "rig-secret-senderscore-7";
    let rig = rig_with(
        Daemon::Smtpd74,
        &["-blockBelow", "20", "-blockPhase", "auth"],
    )
    .auth_user("rigtest", PW)
    .listen_starttls_auth(FILTER)
    .start()
    .unwrap();
    let auth = |src: &str, subject: &str| {
        let out = rig.send_message_at(
            Listener::StartTlsAuth,
            src,
            SENDER,
            &[RCPT_OK],
            &message(subject),
            &[
                "--ehlo",
                "client.lab.test",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "rigtest",
                "--auth-password",
                PW,
            ],
        );
        transcript(&out)
    };
    let t = auth("127.0.0.10", "low-auth");
    let replies = server_replies(&t).join("\n");
    assert!(replies.contains("<-  220 "), "not refused at connect:\n{t}");
    assert!(replies.contains("<-  220 2.0.0"), "STARTTLS refused:\n{t}");
    assert!(
        replies.contains(&format!("<~* {BLOCKED}")),
        "not refused at AUTH:\n{t}"
    );
    assert!(!replies.contains("235 "), "authenticated:\n{t}");
    let t = auth("127.0.0.90", "good-auth");
    assert!(
        t.contains("<~  235 "),
        "good client not authenticated:\n{t}"
    );
    assert!(
        t.contains("<~  250 2.0.0"),
        "good client's mail refused:\n{t}"
    );
    wait_delivered_with(&rig, "good-auth");
    assert!(delivered_with(&rig, "low-auth").is_none());
    let lines = decision(&rig, "127.0.0.10", 2).join("\n");
    assert!(lines.contains("decision=proceed phase=connect"), "{lines}");
    assert!(lines.contains("decision=disconnect phase=auth"), "{lines}");
    assert!(rig.log_lines(PW).is_empty(), "the password is in the log");
    rig.assert_alive();
}

#[test]
fn smtpd68_senderscore_ipv6_client() {
    ipv6_client(Daemon::Smtpd68);
}

#[test]
fn smtpd74_senderscore_ipv6_client() {
    ipv6_client(Daemon::Smtpd74);
}
