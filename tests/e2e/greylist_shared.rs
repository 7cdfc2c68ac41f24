//! filter-greylist against the real daemons, part two: greytraps (6.8 and 7.4), and two
//! MX hosts — an OpenSMTPD 6.8 and an OpenSMTPD 7.4 — sharing their state through one
//! real `redis-server` on loopback: a sender greylisted at one passes at the other.
//!
//! Needs `target/debug/filter-greylist` and `/usr/bin/redis-server` (scripts/test
//! provisions both).

use opensmtpd_e2e::redis::Redis;
use opensmtpd_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

const FILTER: &str = "greylist";
const GREYLISTED: &str = "451 4.7.1 Greylisted: please try again later";
const TRAPPED: &str = "550 5.7.1 Mail from this address is refused";
const PASS: Duration = Duration::from_secs(3);

fn greylist_bin() -> PathBuf {
    workspace_bin("filter-greylist")
}

fn rig_with(daemon: Daemon, args: &str) -> RigBuilder {
    let cmd = format!(
        "{} -passtime {} --resolver {{dns}}:53 {args}",
        greylist_bin().display(),
        PASS.as_secs()
    );
    Rig::builder(daemon).filter(FILTER, &cmd)
}

fn message(subject: &str, from: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\nTo: <{RCPT_OK}>\nSubject: {subject}\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <{subject}@lab.test>\n\nbody of {subject}\n"
    )
    .into_bytes()
}

/// Sends from `src` as `from` to `rcpt`; the transcript and swaks' stderr. A connection
/// that never got the greeting changed nothing and is tried again (three times).
fn send(rig: &Rig, src: &str, from: &str, rcpt: &str, subject: &str) -> String {
    rig.send_until_greeted(
        Listener::Plain,
        src,
        from,
        &[rcpt],
        &message(subject, from),
        &["--ehlo", "client.lab.test"],
    )
}

#[track_caller]
fn expect(rig: &Rig, t: &str, reply: Option<&str>, what: &str) {
    let ok = match reply {
        Some(r) => t.contains(r),
        None => {
            !t.contains(GREYLISTED)
                && !t.contains(TRAPPED)
                && t.contains("Message accepted for delivery")
        }
    };
    assert!(
        ok,
        "{}: {what}: expected {}\n{t}\n--- smtpd log ---\n{}",
        rig.daemon(),
        reply.unwrap_or("acceptance"),
        tail(&rig.smtpd_log(), 30)
    );
}

/// A client that writes to a greytrap is refused for everything after, even after the
/// pass time; its neighbour is only greylisted.
fn greytrap(daemon: Daemon) {
    let b = Rig::builder(daemon);
    let traps = b.dir().join("traps");
    std::fs::write(
        &traps,
        "# never used anywhere but in spam lists\nspamtrap@lab.test\n",
    )
    .unwrap();
    std::fs::set_permissions(&traps, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cmd = format!(
        "{} -passtime {} --resolver {{dns}}:53 --store memory --traps {} --trap-action reject",
        greylist_bin().display(),
        PASS.as_secs(),
        traps.display()
    );
    let rig = b
        .filter(FILTER, &cmd)
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("{daemon}: {e}"));
    let t = send(
        &rig,
        "127.0.8.80",
        "x@spam.test",
        "spamtrap@lab.test",
        "trap",
    );
    expect(&rig, &t, Some(TRAPPED), "the greytrap");
    let t = send(&rig, "127.0.8.80", "x@spam.test", RCPT_OK, "after-trap");
    expect(
        &rig,
        &t,
        Some(TRAPPED),
        "a real recipient from the trapped client",
    );
    let t = send(&rig, "127.0.8.81", "x@spam.test", RCPT_OK, "neighbour");
    expect(&rig, &t, Some(GREYLISTED), "the neighbour");
    thread::sleep(PASS + Duration::from_millis(300));
    let t = send(&rig, "127.0.8.80", "x@spam.test", RCPT_OK, "after-pass");
    expect(
        &rig,
        &t,
        Some(TRAPPED),
        "the trapped client after the pass time",
    );
    let t = send(
        &rig,
        "127.0.8.81",
        "x@spam.test",
        RCPT_OK,
        "neighbour-retry",
    );
    expect(&rig, &t, None, "the neighbour's retry");
    let lines = rig.log_lines("reason=greytrap-hit(now trap:127.0.8.80/32)");
    assert_eq!(lines.len(), 1, "{daemon}: {lines:?}");
    rig.assert_alive();
}

#[test]
fn smtpd68_greylist_greytrap() {
    greytrap(Daemon::Smtpd68);
}

#[test]
fn smtpd74_greylist_greytrap() {
    greytrap(Daemon::Smtpd74);
}

/// Two MX hosts, OpenSMTPD 6.8 and 7.4, one Redis: greylisted at the 6.8 MX, the
/// retry passes at the 7.4 MX, and the client is then whitelisted at both. With Redis
/// gone, both accept at once (fail open) and stay up.
#[test]
fn smtpd74_greylist_redis_shared_with_smtpd68() {
    let mut redis = Redis::start();
    let store = format!("--store redis://127.0.0.1:{}/5", redis.port());
    let mx68 = rig_with(Daemon::Smtpd68, &store)
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("6.8: {e}"));
    let mx74 = rig_with(Daemon::Smtpd74, &store)
        .listen_plain(FILTER)
        .start()
        .unwrap_or_else(|e| panic!("7.4: {e}"));
    let first = Instant::now();
    let t = send(&mx68, "127.0.9.90", "news@nospf.test", RCPT_OK, "at-68");
    expect(&mx68, &t, Some(GREYLISTED), "first attempt at MX 6.8");
    let t = send(
        &mx74,
        "127.0.9.90",
        "news@nospf.test",
        RCPT_OK,
        "early-at-74",
    );
    expect(&mx74, &t, Some(GREYLISTED), "early retry at MX 7.4");
    assert_eq!(
        mx74.log_lines("reason=early-retry").len(),
        1,
        "the 7.4 MX saw the 6.8 MX's first attempt"
    );
    thread::sleep(PASS.saturating_sub(first.elapsed()) + Duration::from_millis(300));
    let t = send(
        &mx74,
        "127.0.9.90",
        "news@nospf.test",
        RCPT_OK,
        "retry-at-74",
    );
    expect(&mx74, &t, None, "retry at MX 7.4 after the pass time");
    let t = send(
        &mx68,
        "127.0.9.91",
        "other@nospf.test",
        RCPT_OK,
        "white-at-68",
    );
    expect(&mx68, &t, None, "the whitelisted network at MX 6.8");
    mx68.wait_delivered(1, Duration::from_secs(15));
    mx74.wait_delivered(1, Duration::from_secs(15));

    redis.stop();
    let started = Instant::now();
    let t = send(
        &mx68,
        "127.0.10.1",
        "new@nospf.test",
        RCPT_OK,
        "no-redis-68",
    );
    expect(&mx68, &t, None, "MX 6.8 without Redis");
    let t = send(
        &mx74,
        "127.0.10.2",
        "new@nospf.test",
        RCPT_OK,
        "no-redis-74",
    );
    expect(&mx74, &t, None, "MX 7.4 without Redis");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fail open took {:?}",
        started.elapsed()
    );
    assert_eq!(mx68.log_lines("reason=store-unavailable").len(), 1);
    assert!(!mx74.log_lines("store failing (").is_empty());
    mx68.assert_alive();
    mx74.assert_alive();
}
