//! The whole filter in-process, through the library's test kit (the real runtime over
//! in-memory pipes, every answer checked against smtpd's rules), with a fake SPF
//! checker, a fake clock, and the in-memory or the real redb store: no network, no
//! sleeps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use filter_greylist::config::DEFAULT_REPLY;
use filter_greylist::filter::{Clock, Greylist};
use filter_greylist::lists::{List, ListKind, Lists, SharedLists};
use filter_greylist::policy::{
    Entry, Grouping, Key, Lookup, Outcome, REFRESH_GRANULARITY, Spf, Time, Timing,
};
use filter_greylist::spf::SpfChecker;
use filter_greylist::store::{MemoryStore, RedbStore, Store, StoreError};
use opensmtpd_filter::protocol::SmtpReply;
use opensmtpd_filter::testkit::{Answer, RunningKit, TestKit};

const T0: Time = 1_700_000_000;
const RCPT: &str = "user@lab.test";

// ---------------------------------------------------------------- fakes

/// SPF answers from a table of (client, domain) → result; `none` for anything else.
/// Counts the checks.
#[derive(Clone, Default)]
struct FakeSpf {
    table: Arc<Mutex<HashMap<(IpAddr, String), Spf>>>,
    checks: Arc<AtomicU64>,
}

impl FakeSpf {
    fn set(&self, ip: &str, domain: &str, spf: Spf) -> &Self {
        self.table
            .lock()
            .unwrap()
            .insert((ip.parse().unwrap(), domain.to_string()), spf);
        self
    }
}

impl SpfChecker for FakeSpf {
    async fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);
        self.table
            .lock()
            .unwrap()
            .get(&(ip, domain.to_string()))
            .copied()
            .unwrap_or(Spf::None)
    }
}

/// An SPF check that says `none` once its gate is opened, not before.
struct GatedSpf(tokio::sync::watch::Receiver<bool>);

impl SpfChecker for GatedSpf {
    async fn check(&self, _: IpAddr, _: &str, _: &str) -> Spf {
        let mut gate = self.0.clone();
        let _ = gate.wait_for(|open| *open).await;
        Spf::None
    }
}

#[derive(Clone)]
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn new() -> Self {
        FakeClock(Arc::new(AtomicU64::new(T0)))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

/// A store that always fails.
struct BrokenStore;

impl Store for BrokenStore {
    fn decide(
        &self,
        _: &Lookup,
        _: &dyn Fn(&filter_greylist::policy::Found) -> Outcome,
    ) -> Result<Outcome, StoreError> {
        Err(StoreError("disk on fire".into()))
    }
    fn purge(&self, _: Time) -> Result<usize, StoreError> {
        Err(StoreError("disk on fire".into()))
    }
    fn entries(&self) -> Result<Vec<(Key, Entry)>, StoreError> {
        Err(StoreError("disk on fire".into()))
    }
}

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
    spf: FakeSpf,
    clock: FakeClock,
    store: Arc<dyn Store>,
    lists: Arc<SharedLists>,
    timing: Timing,
    version: (u32, u32),
}

impl Setup {
    fn new() -> Self {
        capture_logs();
        Setup {
            spf: FakeSpf::default(),
            clock: FakeClock::new(),
            store: Arc::new(MemoryStore::new()),
            lists: Arc::new(SharedLists::default()),
            timing: Timing {
                pass: 300,
                grey_exp: 4 * 3600,
                white_exp: 30 * 86400,
                trap: 86400,
            },
            version: (0, 7),
        }
    }

    /// A set-up with the embedded store in a new directory (returned, to be removed),
    /// holding a live whitelist entry for 192.0.2.0/24.
    fn redb_with_test_net_whitelisted(name: &str) -> (Setup, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("greylist-{name}-{}", std::process::id()));
        let mut setup = Setup::new();
        setup.store = Arc::new(RedbStore::open(&dir.join("greylist.redb")).unwrap());
        let net = Key::WhiteNet("192.0.2.0/24".parse().unwrap());
        assert!(setup.store.whitelist(&net, &setup.timing, T0).unwrap());
        (setup, dir)
    }

    async fn start(&self) -> RunningKit {
        self.start_with(self.spf.clone()).await
    }

    /// [`Setup::start`] with the SPF checker `spf` instead of the fake one.
    async fn start_with(&self, spf: impl SpfChecker) -> RunningKit {
        let filter = Greylist::new(
            self.timing,
            Grouping::Network,
            SmtpReply::parse(DEFAULT_REPLY).unwrap(),
            Arc::new(spf),
            Arc::clone(&self.store),
            Arc::clone(&self.lists),
            Arc::new(self.clock.clone()),
        );
        TestKit::new(filter)
            .protocol(self.version.0, self.version.1)
            .start()
            .await
    }
}

fn tempfail() -> Answer {
    Answer::Reject(DEFAULT_REPLY.to_string())
}

/// One session from `ip`: EHLO, MAIL FROM `sender`, RCPT TO each of `rcpts`; the answers.
async fn deliver(kit: &mut RunningKit, ip: &str, sender: &str, rcpts: &[&str]) -> Vec<Answer> {
    let mut s = kit.session();
    s.connect(ip, "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from(sender).await;
    let mut answers = Vec::new();
    for r in rcpts {
        answers.push(s.rcpt_to(r).await);
    }
    s.disconnect().await;
    answers
}

async fn one(kit: &mut RunningKit, ip: &str, sender: &str) -> Answer {
    deliver(kit, ip, sender, &[RCPT]).await.remove(0)
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn registers_rcpt_to_only() {
    let setup = Setup::new();
    let kit = setup.start().await;
    assert!(kit.registered_phase("rcpt-to"));
    for phase in [
        "connect",
        "helo",
        "ehlo",
        "mail-from",
        "data",
        "data-line",
        "commit",
    ] {
        assert!(!kit.registered_phase(phase), "{phase}");
    }
    assert!(kit.registered_report("link-auth"));
    assert!(kit.registered_report("tx-mail"));
    kit.finish().await;
}

#[tokio::test]
async fn first_try_early_retry_then_accepted_after_the_pass_time() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.10", "a@first.example").await,
        tempfail()
    );
    setup.clock.advance(200);
    assert_eq!(
        one(&mut kit, "192.0.2.10", "a@first.example").await,
        tempfail()
    );
    // early retries do not reset the first-seen time: 100 s more are enough
    setup.clock.advance(100);
    assert_eq!(
        one(&mut kit, "192.0.2.10", "a@first.example").await,
        Answer::Proceed
    );
    // the client is whitelisted now: another sender and recipient pass at once
    assert_eq!(
        deliver(&mut kit, "192.0.2.77", "b@other.example", &["x@lab.test"]).await,
        vec![Answer::Proceed]
    );
    let lines = logged(&["client=192.0.2.10", "sender=<a@first.example>"]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains("rcpt=<user@lab.test> key=net:192.0.2.0/24/a@first.example/user@lab.test spf=none decision=tempfail reason=first-attempt"), "{}", lines[0]);
    assert!(
        lines[1].contains("decision=tempfail reason=early-retry(100s-left)"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("decision=accept reason=retry-passed(now white-net:192.0.2.0/24)"),
        "{}",
        lines[2]
    );
    assert!(lines[0].contains("session="));
    kit.finish().await;
}

#[tokio::test]
async fn spf_pass_from_another_authorised_address_and_fail_from_an_unauthorised_one() {
    let setup = Setup::new();
    setup
        .spf
        .set("192.0.2.10", "pool.example", Spf::Pass)
        .set("198.51.100.20", "pool.example", Spf::Pass)
        .set("203.0.113.30", "pool.example", Spf::Fail);
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.10", "news@pool.example").await,
        tempfail()
    );
    setup.clock.advance(400);
    // an unauthorised address is keyed by its own network: greylisted
    assert_eq!(
        one(&mut kit, "203.0.113.30", "news@pool.example").await,
        tempfail()
    );
    // another address the domain's SPF authorises, in another network: accepted
    assert_eq!(
        one(&mut kit, "198.51.100.20", "news@pool.example").await,
        Answer::Proceed
    );
    // the domain is whitelisted for its SPF-pass mail, not for forgeries
    assert_eq!(
        one(&mut kit, "192.0.2.10", "other@pool.example").await,
        Answer::Proceed
    );
    assert_eq!(
        one(&mut kit, "203.0.113.30", "other@pool.example").await,
        tempfail()
    );
    assert!(
        !logged(&[
            "client=198.51.100.20",
            "spf=pass",
            "key=domain:pool.example/news@pool.example/user@lab.test",
            "decision=accept"
        ])
        .is_empty()
    );
    assert!(!logged(&["client=203.0.113.30", "spf=fail", "key=net:203.0.113.0/24/"]).is_empty());
    kit.finish().await;
}

/// Lets the filter's tasks run until `done` holds (at most 5 s, then fails).
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never happened: {what}");
}

#[tokio::test]
async fn the_spf_check_starts_when_smtpd_accepts_the_sender() {
    let setup = Setup::new();
    let checks = || setup.spf.checks.load(Ordering::SeqCst);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    s.connect("192.0.2.12", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from("a@early.example").await;
    // no RCPT TO yet: the check runs while the client sends it
    until("an SPF check after MAIL FROM", || checks() == 1).await;
    assert_eq!(s.rcpt_to("u1@lab.test").await, tempfail());
    assert_eq!(s.rcpt_to("u2@lab.test").await, tempfail());
    assert_eq!(checks(), 1, "the recipients share the early check");
    // a new sender in the same session is checked anew
    s.rset().await;
    s.mail_from("b@other.example").await;
    until("an SPF check of the second sender", || checks() == 2).await;
    assert_eq!(s.rcpt_to("u1@lab.test").await, tempfail());
    assert_eq!(checks(), 2);
    s.disconnect().await;
    assert!(
        !logged(&[
            "client=192.0.2.12 ",
            "sender=<b@other.example>",
            "key=net:192.0.2.0/24/b@other.example/u1@lab.test spf=none"
        ])
        .is_empty()
    );
    // an allowlisted client is not checked at all
    let p = std::path::Path::new("/test");
    setup.lists.set(Lists {
        clients: List::parse("192.0.2.13\n", p, ListKind::Client).unwrap(),
        ..Lists::default()
    });
    assert_eq!(
        one(&mut kit, "192.0.2.13", "c@early.example").await,
        Answer::Proceed
    );
    assert_eq!(checks(), 2, "no SPF check for an allowlisted client");
    kit.finish().await;
}

#[tokio::test]
async fn each_recipient_is_decided_and_spf_is_checked_once_per_sender() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    let answers = deliver(
        &mut kit,
        "192.0.2.11",
        "a@multi.example",
        &["u1@lab.test", "u2@lab.test"],
    )
    .await;
    assert_eq!(answers, vec![tempfail(), tempfail()]);
    assert_eq!(setup.spf.checks.load(Ordering::SeqCst), 1);
    setup.clock.advance(300);
    // only u1 retried: u3 is new
    let answers = deliver(
        &mut kit,
        "192.0.2.11",
        "a@multi.example",
        &["u1@lab.test", "u3@lab.test"],
    )
    .await;
    assert_eq!(
        answers,
        vec![Answer::Proceed, Answer::Proceed],
        "u1 whitelisted the client"
    );
    kit.finish().await;
}

#[tokio::test]
async fn null_sender_is_keyed_by_helo() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    assert_eq!(one(&mut kit, "192.0.2.12", "").await, tempfail());
    assert!(
        !logged(&[
            "client=192.0.2.12",
            "sender=<>",
            "key=net:192.0.2.0/24/<>@client.example/user@lab.test"
        ])
        .is_empty()
    );
    kit.finish().await;
}

#[tokio::test]
async fn local_sessions_are_exempt() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    let mut s = kit.session();
    s.connect("local", "localhost").await;
    s.mail_from("root@lab.test").await;
    assert_eq!(s.rcpt_to(RCPT).await, Answer::Proceed);
    s.disconnect().await;
    assert!(!logged(&["client=local", "decision=accept reason=local"]).is_empty());
    kit.finish().await;
}

#[tokio::test]
async fn authenticated_sessions_are_exempt_in_every_protocol_version() {
    for version in [(0, 4), (0, 5), (0, 6), (0, 7)] {
        let mut setup = Setup::new();
        setup.version = version;
        let mut kit = setup.start().await;
        // a failed AUTH does not exempt
        let mut s = kit.session();
        s.connect("192.0.2.13", "client.example").await;
        s.ehlo("client.example").await;
        s.auth_plain(b"joe", b"wrong", false).await;
        s.mail_from("joe@auth.example").await;
        assert_eq!(s.rcpt_to(RCPT).await, tempfail(), "{version:?} failed auth");
        s.disconnect().await;
        // a successful one does (user names with | included)
        let mut s = kit.session();
        s.connect("192.0.2.14", "client.example").await;
        s.ehlo("client.example").await;
        s.auth_plain(b"jo|e", b"secret", true).await;
        s.mail_from("joe@auth.example").await;
        assert_eq!(s.rcpt_to(RCPT).await, Answer::Proceed, "{version:?} auth");
        s.disconnect().await;
        kit.finish().await;
    }
    assert!(!logged(&["client=192.0.2.14", "reason=authenticated"]).is_empty());
    // the password never reaches the log
    assert!(logged(&["secret"]).is_empty());
}

#[tokio::test]
async fn allowlisted_clients_senders_and_recipients() {
    let setup = Setup::new();
    let p = std::path::Path::new("/test");
    setup.lists.set(Lists {
        clients: List::parse("192.0.2.0/28\n", p, ListKind::Client).unwrap(),
        senders: List::parse("partner.example\n", p, ListKind::Sender).unwrap(),
        recipients: List::parse("postmaster@lab.test\n", p, ListKind::Recipient).unwrap(),
        traps: List::default(),
    });
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.5", "a@x.example").await,
        Answer::Proceed
    );
    assert_eq!(
        one(&mut kit, "192.0.2.50", "a@sub.partner.example").await,
        Answer::Proceed
    );
    assert_eq!(
        deliver(
            &mut kit,
            "192.0.2.50",
            "a@x.example",
            &["postmaster@lab.test", RCPT]
        )
        .await,
        vec![Answer::Proceed, tempfail()]
    );
    assert!(!logged(&["client=192.0.2.5 ", "reason=allowlisted-client"]).is_empty());
    assert!(!logged(&["reason=allowlisted-sender"]).is_empty());
    assert!(!logged(&["reason=allowlisted-recipient"]).is_empty());
    assert_eq!(
        setup.spf.checks.load(Ordering::SeqCst),
        1,
        "no SPF for exempt mail"
    );
    kit.finish().await;
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_64() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "2001:db8:1:2::10", "a@six.example").await,
        tempfail()
    );
    setup.clock.advance(300);
    assert_eq!(
        one(&mut kit, "2001:db8:1:2::99", "a@six.example").await,
        Answer::Proceed
    );
    assert!(!logged(&["key=net:2001:db8:1:2::/64/a@six.example"]).is_empty());
    kit.finish().await;
}

#[tokio::test]
async fn a_failing_store_fails_open_with_a_log_line() {
    let mut setup = Setup::new();
    setup.store = Arc::new(BrokenStore);
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.15", "a@broken.example").await,
        Answer::Proceed
    );
    assert_eq!(
        one(&mut kit, "192.0.2.15", "b@broken.example").await,
        Answer::Proceed
    );
    assert_eq!(
        logged(&[
            "client=192.0.2.15 ",
            "decision=accept reason=store-unavailable"
        ])
        .len(),
        2
    );
    assert_eq!(
        logged(&["WARN", "store failing (disk on fire)"]).len(),
        1,
        "said once a minute"
    );
    kit.finish().await;
}

#[tokio::test]
async fn state_survives_a_restart_with_the_redb_store() {
    let dir = std::env::temp_dir().join(format!("greylist-kit-{}", std::process::id()));
    let path = dir.join("greylist.redb");
    let mut setup = Setup::new();
    setup.store = Arc::new(RedbStore::open(&path).unwrap());
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.16", "a@restart.example").await,
        tempfail()
    );
    kit.finish().await;
    // a new filter process: same file, later
    setup.store = Arc::new(BrokenStore);
    setup.store = Arc::new(RedbStore::open(&path).unwrap());
    setup.clock.advance(300);
    let mut kit = setup.start().await;
    assert_eq!(
        one(&mut kit, "192.0.2.16", "a@restart.example").await,
        Answer::Proceed
    );
    kit.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (real time, briefly) until the store holds `key`: whitelisting from reports
/// runs in the background.
async fn wait_for_key(store: &Arc<dyn Store>, key: &Key) {
    for _ in 0..500 {
        if store.entries().unwrap().iter().any(|(k, _)| k == key) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{key} never written");
}

#[tokio::test]
async fn hosts_we_deliver_to_are_whitelisted() {
    let setup = Setup::new();
    let mut kit = setup.start().await;
    assert!(kit.registered_report("link-connect"));
    // an smtp-out session: we deliver to 203.0.113.50, which accepts the recipient
    let head = "report|0.7|1700000000.000001|smtp-out";
    let sid = "00000000000000f1";
    for line in [
        format!(
            "{head}|link-connect|{sid}|mx.partner.example|pass|192.0.2.25:40000|203.0.113.50:25"
        ),
        format!("{head}|tx-begin|{sid}|0000000b"),
        format!("{head}|tx-mail|{sid}|0000000b|ok|us@lab.test"),
        format!("{head}|tx-rcpt|{sid}|0000000b|ok|bob@partner.example"),
        format!("{head}|link-disconnect|{sid}"),
    ] {
        kit.send(line.as_bytes()).await;
    }
    let key = Key::WhiteNet("203.0.113.0/24".parse().unwrap());
    wait_for_key(&setup.store, &key).await;
    // mail from that network is not greylisted
    assert_eq!(
        one(&mut kit, "203.0.113.77", "bob@partner.example").await,
        Answer::Proceed
    );
    assert!(
        !logged(&["outgoing: delivered to 203.0.113.50: whitelisted white-net:203.0.113.0/24"])
            .is_empty()
    );
    // a refused recipient whitelists nothing
    let sid = "00000000000000f2";
    for line in [
        format!(
            "{head}|link-connect|{sid}|mx.other.example|pass|192.0.2.25:40001|198.51.100.60:25"
        ),
        format!("{head}|tx-begin|{sid}|0000000c"),
        format!("{head}|tx-mail|{sid}|0000000c|ok|us@lab.test"),
        format!("{head}|tx-rcpt|{sid}|0000000c|permfail|nobody@other.example"),
        format!("{head}|link-disconnect|{sid}"),
    ] {
        kit.send(line.as_bytes()).await;
    }
    assert_eq!(
        one(&mut kit, "198.51.100.61", "x@other.example").await,
        tempfail()
    );
    kit.finish().await;
}

#[tokio::test]
async fn domains_our_users_write_to_are_whitelisted_for_spf_pass_mail() {
    let setup = Setup::new();
    setup
        .spf
        .set("198.51.100.80", "friend.example", Spf::Pass)
        .set("198.51.100.81", "friend.example", Spf::Fail);
    let mut kit = setup.start().await;
    let mut s = kit.session();
    s.connect("192.0.2.30", "laptop.example").await;
    s.ehlo("laptop.example").await;
    s.auth_plain(b"alice", b"pw", true).await;
    s.mail_from("alice@lab.test").await;
    assert_eq!(s.rcpt_to("Carol@Friend.Example").await, Answer::Proceed);
    s.disconnect().await;
    wait_for_key(&setup.store, &Key::WhiteDomain("friend.example".into())).await;
    assert_eq!(
        one(&mut kit, "198.51.100.80", "carol@friend.example").await,
        Answer::Proceed
    );
    // a forgery of that domain is still greylisted
    assert_eq!(
        one(&mut kit, "198.51.100.81", "carol@friend.example").await,
        tempfail()
    );
    kit.finish().await;
}

#[tokio::test]
async fn a_greytrap_traps_the_client() {
    let setup = Setup::new();
    let p = std::path::Path::new("/test");
    setup.lists.set(Lists {
        traps: List::parse("spamtrap@lab.test\n", p, ListKind::Trap).unwrap(),
        ..Lists::default()
    });
    let filter = Greylist::new(
        setup.timing,
        Grouping::Network,
        SmtpReply::parse(DEFAULT_REPLY).unwrap(),
        Arc::new(setup.spf.clone()),
        Arc::clone(&setup.store),
        Arc::clone(&setup.lists),
        Arc::new(setup.clock.clone()),
    )
    .with_trap_reply(SmtpReply::parse("550 5.7.1 Mail from this address is refused").unwrap());
    let mut kit = TestKit::new(filter).start().await;
    let refused = Answer::Reject("550 5.7.1 Mail from this address is refused".into());
    assert_eq!(
        deliver(
            &mut kit,
            "192.0.2.40",
            "x@spam.example",
            &["spamtrap@lab.test"]
        )
        .await,
        vec![refused.clone()]
    );
    // everything else from that client is refused, even a retry after the pass time
    setup.clock.advance(400);
    assert_eq!(one(&mut kit, "192.0.2.40", "x@spam.example").await, refused);
    assert!(
        !logged(&[
            "client=192.0.2.40 ",
            "decision=trapped reason=trapped(trap:192.0.2.40/32)"
        ])
        .is_empty()
    );
    assert!(
        !logged(&[
            "client=192.0.2.40 ",
            "reason=greytrap-hit(now trap:192.0.2.40/32)"
        ])
        .is_empty()
    );
    // a neighbour is only greylisted
    assert_eq!(
        one(&mut kit, "192.0.2.41", "x@spam.example").await,
        tempfail()
    );
    // the trap expires after --trap-time
    setup.clock.advance(86400);
    assert_eq!(
        one(&mut kit, "192.0.2.40", "x@spam.example").await,
        tempfail()
    );
    kit.finish().await;
}

/// A client whose network is whitelisted is answered while its SPF check still runs:
/// no SPF result could change the answer, and none would write anything. Once its
/// entry is due for a refresh, the recipient waits for the result, which picks the
/// entry to refresh (the sender's domain, on a pass). With the embedded store.
#[tokio::test]
async fn a_whitelisted_client_is_answered_before_its_spf_check_ends() {
    let (setup, dir) = Setup::redb_with_test_net_whitelisted("gated");
    let (open, gate) = tokio::sync::watch::channel(false);
    let mut kit = setup.start_with(GatedSpf(gate)).await;
    let mut s = kit.session();
    s.connect("192.0.2.11", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from("gated@example.org").await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), s.rcpt_to(RCPT))
        .await
        .expect("answered while the SPF check runs");
    assert_eq!(answer, Answer::Proceed);
    assert_eq!(
        logged(&[
            "sender=<gated@example.org>",
            "spf=- decision=accept reason=whitelisted(white-net:192.0.2.0/24)"
        ])
        .len(),
        1,
        "{:?}",
        logged(&["sender=<gated@example.org>"])
    );
    // a minute later the entry is due for a refresh: that recipient waits
    setup.clock.advance(REFRESH_GRANULARITY);
    {
        let later = s.rcpt_to("later@lab.test");
        tokio::pin!(later);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut later)
                .await
                .is_err(),
            "a refresh waits for the SPF result"
        );
        open.send(true).unwrap();
        assert_eq!(later.await, Answer::Proceed);
    }
    assert_eq!(
        logged(&[
            "sender=<gated@example.org>",
            "rcpt=<later@lab.test>",
            "spf=none"
        ])
        .len(),
        1
    );
    s.disconnect().await;
    kit.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client whose whitelisted network settles every recipient whatever its SPF result
/// is known to be so at MAIL FROM (the embedded store's read-only decision): its SPF
/// check is not even started, so its DNS queries take no CPU from other sessions. Once
/// the entry is due for a refresh, the result matters again and the check starts at
/// MAIL FROM as for any other client.
#[tokio::test]
async fn a_client_settled_at_mail_from_is_not_checked_for_spf() {
    let (setup, dir) = Setup::redb_with_test_net_whitelisted("unchecked");
    let checks = || setup.spf.checks.load(Ordering::SeqCst);
    let mut kit = setup.start().await;
    for sender in ["a@settled.example", "b@settled.example"] {
        assert_eq!(one(&mut kit, "192.0.2.30", sender).await, Answer::Proceed);
    }
    // a check, had one started, would have run by now
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(checks(), 0, "no SPF check for a settled client");
    // a client of another network is checked at its MAIL FROM
    assert_eq!(
        one(&mut kit, "198.51.100.30", "c@settled.example").await,
        tempfail()
    );
    until("an SPF check of an unknown client", || checks() == 1).await;
    // due for a refresh: the result picks the entry refreshed, so it is checked
    setup.clock.advance(REFRESH_GRANULARITY);
    let mut s = kit.session();
    s.connect("192.0.2.30", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from("d@settled.example").await;
    until("an SPF check after MAIL FROM", || checks() == 2).await;
    assert_eq!(s.rcpt_to(RCPT).await, Answer::Proceed);
    assert_eq!(
        checks(),
        2,
        "the recipient used the check started at MAIL FROM"
    );
    s.disconnect().await;
    kit.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}
