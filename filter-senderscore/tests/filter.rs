//! The whole filter in-process, through the library's test kit (the real runtime over
//! in-memory pipes, every answer checked against smtpd's rules), with a fake DNS behind
//! the `DnsClient` trait: no network. Time is tokio's paused clock where it matters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use filter_senderscore::allowlist::{Allowlist, SharedAllowlist};
use filter_senderscore::dns::{DnsAnswer, DnsClient, Scorer, Zone};
use filter_senderscore::filter::{Lookup, SenderScore};
use filter_senderscore::policy::{
    AnswerMap, BlockPhase, Policy, REFUSED_ANSWER, Score, SlowFactor, Threshold,
};
use opensmtpd_filter::Config;
use opensmtpd_filter::testkit::{Answer, RunningKit, TestKit};
use tokio::time::Instant;

const BLOCKED: &str = "550 5.7.1 Your IP reputation is too low for this MX";

// ---------------------------------------------------------------- fake DNS

#[derive(Clone)]
struct Entry {
    answer: DnsAnswer,
    delay: Duration,
}

/// Answers from a table (NXDOMAIN for anything else), after a per-name delay; counts
/// the queries.
#[derive(Clone, Default)]
struct FakeDns {
    table: Arc<Mutex<HashMap<String, Entry>>>,
    queries: Arc<Mutex<Vec<String>>>,
}

impl FakeDns {
    fn set(&self, name: &str, answer: DnsAnswer, delay: Duration) {
        self.table
            .lock()
            .unwrap()
            .insert(name.to_string(), Entry { answer, delay });
    }

    /// `d.c.b.a.ZONE.` → `127.0.4.score`, TTL 300 s.
    fn score(&self, zone: &str, client: &str, score: u8) -> &Self {
        self.addrs(zone, client, &[Ipv4Addr::new(127, 0, 4, score)], 300)
    }

    fn addrs(&self, zone: &str, client: &str, addrs: &[Ipv4Addr], ttl: u64) -> &Self {
        self.set(
            &name(zone, client),
            DnsAnswer::Addrs {
                addrs: addrs.to_vec(),
                ttl: Duration::from_secs(ttl),
            },
            Duration::ZERO,
        );
        self
    }

    fn count(&self) -> usize {
        self.queries.lock().unwrap().len()
    }
}

impl DnsClient for FakeDns {
    async fn query_a(&self, name: &str) -> DnsAnswer {
        self.queries.lock().unwrap().push(name.to_string());
        let entry = self.table.lock().unwrap().get(name).cloned();
        match entry {
            Some(Entry { answer, delay }) => {
                tokio::time::sleep(delay).await;
                answer
            }
            None => DnsAnswer::NxDomain {
                ttl: Duration::from_secs(60),
            },
        }
    }
}

fn name(zone: &str, client: &str) -> String {
    let ip: Ipv4Addr = client.parse().unwrap();
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.{zone}.")
}

const SS: &str = "score.senderscore.com";

// ---------------------------------------------------------------- captured log

struct Capture;

fn log_lines() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        log_lines()
            .lock()
            .unwrap()
            .push(format!("{}: {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Captured lines that contain every one of `parts`.
fn logged(parts: &[&str]) -> Vec<String> {
    log_lines()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- set-up

struct Setup {
    policy: Policy,
    dns: FakeDns,
    zones: Vec<Zone>,
    allowlist: Arc<SharedAllowlist>,
    timeout: Duration,
    cache: usize,
    version: (u32, u32),
    test_mode: bool,
}

impl Setup {
    fn new(policy: Policy) -> Self {
        capture_logs();
        Setup {
            policy,
            dns: FakeDns::default(),
            zones: vec![Zone::default()],
            allowlist: Arc::new(SharedAllowlist::default()),
            timeout: Duration::from_millis(2000),
            cache: 100,
            version: (0, 7),
            test_mode: false,
        }
    }

    async fn start(&self) -> RunningKit {
        let lookup = if self.test_mode {
            Lookup::Test
        } else {
            Lookup::Dns(Arc::new(Scorer::new(
                self.dns.clone(),
                self.zones.clone(),
                self.timeout,
                self.cache,
            )))
        };
        let filter = SenderScore::new(self.policy, lookup, Arc::clone(&self.allowlist));
        let max_delay = self.policy.slow.map_or(Duration::ZERO, |s| s.max_delay());
        TestKit::new(filter)
            .protocol(self.version.0, self.version.1)
            .config(Config {
                handler_timeout: self.timeout + max_delay + Duration::from_secs(10),
                ..Config::default()
            })
            .start()
            .await
    }
}

fn th(n: u8) -> Option<Threshold> {
    Threshold::new(n)
}

/// The configuration: block below 20 at connect, junk below 60, header.
fn standard() -> Policy {
    Policy {
        block: Some((Threshold::new(20).unwrap(), BlockPhase::Connect)),
        junk: th(60),
        slow: None,
        score_header: true,
    }
}

fn standard_dns(dns: &FakeDns) {
    dns.score(SS, "127.0.0.10", 10)
        .score(SS, "127.0.0.50", 50)
        .score(SS, "127.0.0.90", 90)
        .addrs(SS, "127.0.0.77", &[REFUSED_ANSWER], 300);
}

fn message() -> Vec<&'static [u8]> {
    vec![b"Subject: hello", b"", b"body", b".dot"]
}

// ---------------------------------------------------------------- scenarios

/// Scores 10 / 50 / 90 / none / 127.255.255.255: blocked / junked with header /
/// header only / untouched / untouched and logged — on protocol 0.6 and 0.7.
#[tokio::test]
async fn the_five_clients_on_both_protocols() {
    for version in [(0, 6), (0, 7)] {
        let mut setup = Setup::new(standard());
        setup.version = version;
        standard_dns(&setup.dns);
        let mut kit = setup.start().await;

        let mut s = kit.session();
        assert_eq!(
            s.connect("127.0.0.10", "client10.lab.test").await,
            Answer::Disconnect(BLOCKED.into())
        );
        s.disconnect().await;

        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.50", "c50").await, Answer::Junk);
        assert_eq!(s.ehlo("c50").await, Answer::NotAsked);
        assert_eq!(s.mail_from("a@example.org").await, Answer::NotAsked);
        let out = s.data(&message()).await;
        assert_eq!(out.data, Answer::Proceed);
        assert_eq!(out.lines[0], b"X-SenderScore: 50");
        assert_eq!(&out.lines[1..], &message()[..]);
        assert_eq!(out.commit, Answer::Proceed);
        s.disconnect().await;

        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.90", "c90").await, Answer::Proceed);
        let out = s.data(&message()).await;
        assert_eq!(out.lines[0], b"X-SenderScore: 90");
        assert_eq!(out.lines.len(), 5);
        s.disconnect().await;

        for untouched in ["127.0.0.1", "127.0.0.77"] {
            let mut s = kit.session();
            assert_eq!(s.connect(untouched, "x").await, Answer::Proceed);
            let out = s.data(&message()).await;
            assert_eq!(out.lines, message(), "{untouched}: no header");
            assert_eq!(out.commit, Answer::Proceed);
            s.disconnect().await;
        }
        kit.finish().await;
    }
    // the refusal is said in plain words, once
    let said = logged(&["127.255.255.255", "refuses this resolver"]);
    assert!(!said.is_empty());
    assert!(
        !logged(&[
            "client=127.0.0.77",
            "score=unknown(zone-refused)",
            "decision=proceed"
        ])
        .is_empty()
    );
    assert!(
        !logged(&[
            "client=127.0.0.10",
            "score=10",
            "source=dns",
            "decision=disconnect"
        ])
        .is_empty()
    );
}

#[tokio::test]
async fn registers_only_what_it_uses() {
    let setup = Setup::new(Policy::default());
    let kit = setup.start().await;
    assert!(kit.registered_phase("connect"));
    assert!(kit.registered_report("link-connect"));
    for p in [
        "helo",
        "ehlo",
        "mail-from",
        "rcpt-to",
        "data",
        "data-line",
        "commit",
    ] {
        assert!(!kit.registered_phase(p), "{p}");
    }
    kit.finish().await;

    let kit = Setup::new(standard()).start().await;
    for p in ["connect", "data", "data-line", "commit"] {
        assert!(kit.registered_phase(p), "{p}");
    }
    assert!(!kit.registered_phase("rcpt-to"));
    kit.finish().await;

    let kit = Setup::new(Policy {
        slow: SlowFactor::new(10),
        ..Policy::default()
    })
    .start()
    .await;
    for p in [
        "connect",
        "helo",
        "ehlo",
        "starttls",
        "auth",
        "mail-from",
        "rcpt-to",
        "data",
        "rset",
        "noop",
        "quit",
        "commit",
    ] {
        assert!(kit.registered_phase(p), "{p}");
    }
    assert!(!kit.registered_phase("data-line"));
    kit.finish().await;
}

#[tokio::test]
async fn block_at_rcpt_to_not_at_connect() {
    let setup = Setup::new(Policy {
        block: Some((Threshold::new(20).unwrap(), BlockPhase::RcptTo)),
        ..Policy::default()
    });
    standard_dns(&setup.dns);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.10", "c10").await, Answer::Proceed);
    assert_eq!(s.mail_from("a@example.org").await, Answer::NotAsked);
    assert_eq!(
        s.rcpt_to("b@example.org").await,
        Answer::Disconnect(BLOCKED.into())
    );
    s.disconnect().await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.50", "c50").await, Answer::Proceed);
    assert_eq!(s.rcpt_to("b@example.org").await, Answer::Proceed);
    s.disconnect().await;
    kit.finish().await;
    assert!(!logged(&["client=127.0.0.10", "decision=disconnect", "phase=rcpt-to"]).is_empty());
}

#[tokio::test]
async fn block_at_the_greeting_whichever_the_client_says() {
    for phase in [BlockPhase::Helo, BlockPhase::Ehlo] {
        let setup = Setup::new(Policy {
            block: Some((Threshold::new(20).unwrap(), phase)),
            ..Policy::default()
        });
        standard_dns(&setup.dns);
        let mut kit = setup.start().await;
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.10", "c10").await, Answer::Proceed);
        assert_eq!(s.ehlo("c10").await, Answer::Disconnect(BLOCKED.into()));
        s.disconnect().await;
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.10", "c10").await, Answer::Proceed);
        assert_eq!(s.helo("c10").await, Answer::Disconnect(BLOCKED.into()));
        s.disconnect().await;
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.90", "c90").await, Answer::Proceed);
        assert_eq!(s.ehlo("c90").await, Answer::Proceed);
        s.disconnect().await;
        kit.finish().await;
    }
}

#[tokio::test]
async fn block_at_auth_and_the_password_is_never_logged() {
    let setup = Setup::new(Policy {
        block: Some((Threshold::new(20).unwrap(), BlockPhase::Auth)),
        ..Policy::default()
    });
    standard_dns(&setup.dns);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.10", "c10").await, Answer::Proceed);
    assert_eq!(s.ehlo("c10").await, Answer::NotAsked);
    assert_eq!(
        s.starttls("TLSv1.3:TLS_AES_256_GCM_SHA384:256").await,
        Answer::NotAsked
    );
    assert_eq!(
        s.auth_plain(b"joe", b"s3cret-pw-xyzzy", true).await,
        Answer::Disconnect(BLOCKED.into())
    );
    s.disconnect().await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.90", "c90").await, Answer::Proceed);
    assert_eq!(
        s.auth_plain(b"joe", b"s3cret-pw-xyzzy", true).await,
        Answer::Proceed
    );
    s.disconnect().await;
    kit.finish().await;
    assert!(logged(&["s3cret"]).is_empty());
    assert!(logged(&["czNjcmV0"]).is_empty()); // base64 of the start of the password
}

#[tokio::test]
async fn thresholds_at_the_edges() {
    let setup = Setup::new(Policy {
        block: Some((Threshold::new(50).unwrap(), BlockPhase::Connect)),
        junk: th(51),
        ..Policy::default()
    });
    for (ip, score) in [
        ("127.0.1.1", 0),
        ("127.0.1.2", 49),
        ("127.0.1.3", 50),
        ("127.0.1.4", 51),
        ("127.0.1.5", 100),
    ] {
        setup.dns.score(SS, ip, score);
    }
    let mut kit = setup.start().await;
    for (ip, want) in [
        ("127.0.1.1", Answer::Disconnect(BLOCKED.into())),
        ("127.0.1.2", Answer::Disconnect(BLOCKED.into())),
        ("127.0.1.3", Answer::Junk),
        ("127.0.1.4", Answer::Proceed),
        ("127.0.1.5", Answer::Proceed),
    ] {
        let mut s = kit.session();
        assert_eq!(s.connect(ip, "x").await, want, "{ip}");
        s.disconnect().await;
    }
    kit.finish().await;
}

/// Unknown never blocks, junks, slows or adds a header: SERVFAIL, timeout, an error,
/// an unexpected answer, disagreeing records, IPv6, a local client.
#[tokio::test(start_paused = true)]
async fn unknown_never_blocks_or_junks() {
    let mut setup = Setup::new(Policy {
        block: Some((Threshold::new(101).unwrap(), BlockPhase::Connect)),
        junk: th(101),
        slow: SlowFactor::new(5000),
        score_header: true,
    });
    setup.timeout = Duration::from_millis(500);
    let dns = &setup.dns;
    dns.set(&name(SS, "127.0.2.1"), DnsAnswer::ServFail, Duration::ZERO);
    dns.set(&name(SS, "127.0.2.2"), DnsAnswer::Timeout, Duration::ZERO);
    dns.set(
        &name(SS, "127.0.2.3"),
        DnsAnswer::Error("connection refused".into()),
        Duration::ZERO,
    );
    dns.addrs(SS, "127.0.2.4", &[Ipv4Addr::new(10, 0, 0, 1)], 300);
    dns.addrs(
        SS,
        "127.0.2.5",
        &[Ipv4Addr::new(127, 0, 4, 1), Ipv4Addr::new(127, 0, 4, 2)],
        300,
    );
    dns.addrs(SS, "127.0.2.6", &[Ipv4Addr::new(127, 0, 4, 101)], 300);
    // answers, but too late
    dns.set(
        &name(SS, "127.0.2.7"),
        DnsAnswer::Addrs {
            addrs: vec![Ipv4Addr::new(127, 0, 4, 0)],
            ttl: Duration::from_secs(60),
        },
        Duration::from_secs(30),
    );
    let mut kit = setup.start().await;
    for ip in [
        "127.0.2.1",
        "127.0.2.2",
        "127.0.2.3",
        "127.0.2.4",
        "127.0.2.5",
        "127.0.2.6",
        "127.0.2.7",
        "2001:db8::7",
        "local",
    ] {
        let start = Instant::now();
        let mut s = kit.session();
        assert_eq!(s.connect(ip, "x").await, Answer::Proceed, "{ip}");
        assert!(
            start.elapsed() <= Duration::from_millis(600),
            "{ip}: {:?}",
            start.elapsed()
        );
        assert_eq!(s.ehlo("x").await, Answer::Proceed);
        let out = s.data(&message()).await;
        assert_eq!(out.lines, message(), "{ip}: no header");
        s.disconnect().await;
    }
    kit.finish().await;
    assert!(!logged(&["answered 10.0.0.1 for 127.0.2.4", "not a score"]).is_empty());
    assert!(!logged(&["did not answer within 500 ms"]).is_empty());
    assert!(!logged(&["SERVFAIL"]).is_empty());
    assert!(!logged(&["connection refused"]).is_empty());
    assert!(!logged(&["2001:db8::7 is an IPv6 client"]).is_empty());
    assert!(
        !logged(&[
            "client=2001:db8::7",
            "score=unknown(ipv6-not-served)",
            "source=none"
        ])
        .is_empty()
    );
    assert!(!logged(&["client=local", "score=unknown(no-address)", "source=none"]).is_empty());
}

/// The slowed client waits MS × (100 − score) / 100 before each answer; a good client
/// connecting at the same time is answered at once.
#[tokio::test(start_paused = true)]
async fn slow_client_does_not_delay_a_good_one() {
    let setup = Setup::new(Policy {
        slow: SlowFactor::new(2000),
        ..Policy::default()
    });
    setup
        .dns
        .score(SS, "127.0.0.10", 10)
        .score(SS, "127.0.0.90", 100);
    let mut kit = setup.start().await;
    let v = kit.version().to_string();
    let (slow, good) = (0x51u64, 0x52u64);
    for (sid, ip) in [(slow, "127.0.0.10"), (good, "127.0.0.90")] {
        kit.send(
            format!("report|{v}|1.0|smtp-in|link-connect|{sid:016x}|x|pass|{ip}:4000|127.0.0.1:25")
                .as_bytes(),
        )
        .await;
    }
    let start = Instant::now();
    for (sid, ip) in [(slow, "127.0.0.10"), (good, "127.0.0.90")] {
        kit.send(
            format!("filter|{v}|1.0|smtp-in|connect|{sid:016x}|00000000000000aa|x|{ip}").as_bytes(),
        )
        .await;
    }
    let g = kit.next_answer(good).await;
    let good_at = start.elapsed();
    assert!(g.ends_with(b"|proceed"));
    let s = kit.next_answer(slow).await;
    let slow_at = start.elapsed();
    assert!(s.ends_with(b"|proceed"));
    assert!(
        good_at < Duration::from_millis(100),
        "good client waited {good_at:?}"
    );
    assert!(
        slow_at >= Duration::from_millis(1800),
        "slow client waited {slow_at:?}"
    );
    // every later answer of the slow session waits too, the good session's do not
    for (sid, min, max) in [(good, 0, 100), (slow, 1800, 1900)] {
        let t = Instant::now();
        let answer = kit
            .request(
                sid,
                format!(
                    "filter|{v}|1.0|smtp-in|mail-from|{sid:016x}|00000000000000bb|a@example.org"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(answer, Answer::Proceed);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(min) && took < Duration::from_millis(max),
            "session {sid:x}: {took:?}"
        );
    }
    kit.finish().await;
}

/// Score 0 is slowed by the full factor; an unknown score is not slowed.
#[tokio::test(start_paused = true)]
async fn slow_factor_at_score_zero_and_unknown() {
    let setup = Setup::new(Policy {
        slow: SlowFactor::new(1000),
        ..Policy::default()
    });
    setup.dns.score(SS, "127.0.3.1", 0);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    let t = Instant::now();
    assert_eq!(s.connect("127.0.3.1", "x").await, Answer::Proceed);
    assert_eq!(s.quit().await, Answer::Proceed);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    s.disconnect().await;
    let mut s = kit.session();
    let t = Instant::now();
    assert_eq!(s.connect("127.0.3.2", "x").await, Answer::Proceed);
    assert_eq!(s.quit().await, Answer::Proceed);
    assert!(t.elapsed() < Duration::from_millis(50));
    s.disconnect().await;
    kit.finish().await;
}

/// A slow DNS answer for one client holds up only that client's session.
#[tokio::test(start_paused = true)]
async fn slow_dns_delays_only_its_session() {
    let setup = Setup::new(standard());
    setup.dns.set(
        &name(SS, "127.0.0.50"),
        DnsAnswer::Addrs {
            addrs: vec![Ipv4Addr::new(127, 0, 4, 50)],
            ttl: Duration::from_secs(60),
        },
        Duration::from_millis(1500),
    );
    setup.dns.score(SS, "127.0.0.90", 90);
    let mut kit = setup.start().await;
    let v = kit.version().to_string();
    let start = Instant::now();
    for (sid, ip) in [(0x61u64, "127.0.0.50"), (0x62, "127.0.0.90")] {
        kit.send(
            format!("filter|{v}|1.0|smtp-in|connect|{sid:016x}|00000000000000aa|x|{ip}").as_bytes(),
        )
        .await;
    }
    assert!(kit.next_answer(0x62).await.ends_with(b"|proceed"));
    assert!(start.elapsed() < Duration::from_millis(100));
    assert!(kit.next_answer(0x61).await.ends_with(b"|junk"));
    assert!(start.elapsed() >= Duration::from_millis(1400));
    kit.finish().await;
}

/// Answers are cached per TTL: a second session from the same client asks nothing;
/// after the TTL the zone is asked again. Timeouts are not cached.
#[tokio::test(start_paused = true)]
async fn cache_per_ttl() {
    let mut setup = Setup::new(standard());
    setup.timeout = Duration::from_millis(300);
    setup
        .dns
        .addrs(SS, "127.0.0.50", &[Ipv4Addr::new(127, 0, 4, 50)], 60);
    setup
        .dns
        .set(&name(SS, "127.0.0.66"), DnsAnswer::Timeout, Duration::ZERO);
    let mut kit = setup.start().await;
    for _ in 0..3 {
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.50", "x").await, Answer::Junk);
        s.disconnect().await;
    }
    assert_eq!(setup.dns.count(), 1);
    assert!(!logged(&["client=127.0.0.50", "source=cache"]).is_empty());
    // NXDOMAIN is cached too (its negative TTL)
    for _ in 0..2 {
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.5", "x").await, Answer::Proceed);
        s.disconnect().await;
    }
    assert_eq!(setup.dns.count(), 2);
    for _ in 0..2 {
        let mut s = kit.session();
        assert_eq!(s.connect("127.0.0.66", "x").await, Answer::Proceed);
        s.disconnect().await;
    }
    assert_eq!(setup.dns.count(), 4, "timeouts are asked again");
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.50", "x").await, Answer::Junk);
    s.disconnect().await;
    assert_eq!(setup.dns.count(), 5, "asked again after the TTL");
    kit.finish().await;
}

#[tokio::test]
async fn allowlisted_clients_are_not_looked_up() {
    let setup = Setup::new(Policy {
        slow: SlowFactor::new(1000),
        ..standard()
    });
    standard_dns(&setup.dns);
    setup
        .allowlist
        .set(Allowlist::parse("127.0.0.8/29 # relays\n", std::path::Path::new("test")).unwrap());
    let mut kit = setup.start().await;
    let mut s = kit.session();
    let t = std::time::Instant::now();
    assert_eq!(s.connect("127.0.0.10", "x").await, Answer::Proceed);
    let out = s.data(&message()).await;
    assert_eq!(out.lines, message(), "no header for an allowlisted client");
    assert!(t.elapsed() < Duration::from_millis(900), "not slowed");
    s.disconnect().await;
    assert_eq!(setup.dns.count(), 0);
    // the list can change under a running filter (what SIGHUP does)
    setup.allowlist.set(Allowlist::default());
    let mut s = kit.session();
    assert_eq!(
        s.connect("127.0.0.10", "x").await,
        Answer::Disconnect(BLOCKED.into())
    );
    s.disconnect().await;
    assert_eq!(setup.dns.count(), 1);
    kit.finish().await;
    assert!(!logged(&["client=127.0.0.10", "score=allowlisted", "source=allowlist"]).is_empty());
}

#[tokio::test]
async fn sighup_reload_keeps_the_old_list_on_error() {
    let dir = std::env::temp_dir().join(format!("senderscore-allow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("allow");
    std::fs::write(&path, "192.0.2.1\n").unwrap();
    let shared = SharedAllowlist::new(Allowlist::load(&path).unwrap());
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(shared.get().contains(ip("192.0.2.1")));
    std::fs::write(&path, "198.51.100.0/24\n").unwrap();
    assert_eq!(shared.reload(&path), Ok(1));
    assert!(!shared.get().contains(ip("192.0.2.1")));
    assert!(shared.get().contains(ip("198.51.100.9")));
    std::fs::write(&path, "198.51.100.0/24\nnot-an-address\n").unwrap();
    let err = shared.reload(&path).unwrap_err();
    assert!(err.to_string().contains("line 2"));
    assert!(shared.get().contains(ip("198.51.100.9")), "old list kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// -testMode: no DNS, the 4th octet is the score, 255 is no data.
#[tokio::test]
async fn test_mode() {
    let mut setup = Setup::new(standard());
    setup.test_mode = true;
    let mut kit = setup.start().await;
    for (ip, want) in [
        ("10.0.4.10", Answer::Disconnect(BLOCKED.into())),
        ("10.0.4.50", Answer::Junk),
        ("10.0.4.90", Answer::Proceed),
        ("10.0.4.255", Answer::Proceed),
        ("10.0.4.200", Answer::Proceed),
    ] {
        let mut s = kit.session();
        assert_eq!(s.connect(ip, "x").await, want, "{ip}");
        s.disconnect().await;
    }
    kit.finish().await;
    assert_eq!(setup.dns.count(), 0);
    assert!(!logged(&["client=10.0.4.90", "score=90", "source=test"]).is_empty());
}

/// A header is written once per message, at its start, for every message of a session.
#[tokio::test]
async fn header_on_the_first_line_of_each_message() {
    let setup = Setup::new(Policy {
        score_header: true,
        ..Policy::default()
    });
    setup.dns.score(SS, "127.0.0.90", 90);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.90", "x").await, Answer::Proceed);
    for _ in 0..2 {
        s.mail_from("a@example.org").await;
        s.rcpt_to("b@example.org").await;
        let out = s.data(&[&b"\xe9 8-bit | line"[..]]).await;
        assert_eq!(
            out.lines,
            vec![b"X-SenderScore: 90".to_vec(), b"\xe9 8-bit | line".to_vec()]
        );
    }
    // an empty message gets the header too? No data line comes, so nothing is written.
    let out = s.data::<&[u8]>(&[]).await;
    assert!(out.lines.is_empty());
    s.disconnect().await;
    kit.finish().await;
}

/// Several zones: the weighted mean of those that answer; a table for a zone with
/// another convention; IPv6 for a zone that serves it.
#[tokio::test]
async fn zones_combined() {
    let mut setup = Setup::new(Policy {
        junk: th(50),
        score_header: true,
        ..Policy::default()
    });
    setup.zones = vec![
        Zone::default(),
        Zone {
            name: "rep.example.org".into(),
            weight: 3,
            ipv6: true,
            map: AnswerMap::Table(vec![
                (Ipv4Addr::new(127, 0, 0, 2), Score::new(0).unwrap()),
                (Ipv4Addr::new(127, 0, 0, 3), Score::new(80).unwrap()),
            ]),
        },
    ];
    setup.dns.score(SS, "127.0.5.1", 100);
    setup.dns.addrs(
        "rep.example.org",
        "127.0.5.1",
        &[Ipv4Addr::new(127, 0, 0, 2)],
        300,
    );
    setup.dns.score(SS, "127.0.5.2", 20);
    setup.dns.addrs(
        "rep.example.org",
        "127.0.5.2",
        &[Ipv4Addr::new(127, 0, 0, 3)],
        300,
    );
    setup.dns.set(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.rep.example.org.",
        DnsAnswer::Addrs {
            addrs: vec![Ipv4Addr::new(127, 0, 0, 3)],
            ttl: Duration::from_secs(60),
        },
        Duration::ZERO,
    );
    let mut kit = setup.start().await;
    // (100 × 1 + 0 × 3) / 4 = 25 → junk
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.5.1", "x").await, Answer::Junk);
    assert_eq!(s.data(&[b"x"]).await.lines[0], b"X-SenderScore: 25");
    s.disconnect().await;
    // (20 + 80 × 3) / 4 = 65
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.5.2", "x").await, Answer::Proceed);
    assert_eq!(s.data(&[b"x"]).await.lines[0], b"X-SenderScore: 65");
    s.disconnect().await;
    // IPv6: only the second zone serves it
    let mut s = kit.session();
    assert_eq!(s.connect("2001:db8::1", "x").await, Answer::Proceed);
    assert_eq!(s.data(&[b"x"]).await.lines[0], b"X-SenderScore: 80");
    s.disconnect().await;
    kit.finish().await;
}

/// A client that goes away while its lookup runs: nothing is written for it, the
/// filter goes on.
#[tokio::test(start_paused = true)]
async fn client_gone_during_lookup() {
    let setup = Setup::new(standard());
    setup.dns.set(
        &name(SS, "127.0.0.50"),
        DnsAnswer::Addrs {
            addrs: vec![Ipv4Addr::new(127, 0, 4, 50)],
            ttl: Duration::from_secs(60),
        },
        Duration::from_millis(1000),
    );
    setup.dns.score(SS, "127.0.0.90", 90);
    let mut kit = setup.start().await;
    let v = kit.version().to_string();
    kit.send(
        format!("filter|{v}|1.0|smtp-in|connect|0000000000000071|00000000000000aa|x|127.0.0.50")
            .as_bytes(),
    )
    .await;
    kit.send(format!("report|{v}|1.0|smtp-in|link-disconnect|0000000000000071").as_bytes())
        .await;
    let mut s = kit.session();
    assert_eq!(s.connect("127.0.0.90", "x").await, Answer::Proceed);
    s.disconnect().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let rest = kit.drain().await;
    assert!(rest.is_empty(), "{rest:?}");
}
