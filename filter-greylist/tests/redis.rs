//! The Redis store against a real `redis-server` on loopback (started by the test, on a
//! free port, without persistence): two filters sharing it behave as one greylister,
//! and a Redis that goes away makes the filters accept mail at once (fail open).
//!
//! Needs `/usr/bin/redis-server` (scripts/test provisions it).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use filter_greylist::config::DEFAULT_REPLY;
use filter_greylist::filter::{Clock, Greylist, WHITE_READ_MAX_AGE};
use filter_greylist::lists::SharedLists;
use filter_greylist::policy::{Grouping, Key, REFRESH_GRANULARITY, Spf, Time, Timing};
use filter_greylist::redis_store::RedisStore;
use filter_greylist::spf::SpfChecker;
use filter_greylist::store::Store;
use filter_greylist::white_cache::WHITE_CACHE_MAX_AGE;
use opensmtpd_filter::protocol::SmtpReply;
use opensmtpd_filter::testkit::{Answer, RunningKit, TestKit};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// A redis-server of this test's own on a free port. Tests run side by side: a
    /// port found free may be taken by another test's server before ours binds it (ours
    /// then exits), so the server that answers must be ours, or another port is tried.
    fn start() -> Redis {
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(child) = Redis::spawn(port) {
                return Redis { child, port };
            }
        }
        panic!("no redis-server of this test's own started on a free port in 10 tries");
    }

    /// A redis-server on `port`, once it accepts connections and says it is the one
    /// started here; `None` if it exits first (the port was taken).
    fn spawn(port: u16) -> Option<Child> {
        let mut child = Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test provisions it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if server_pid(addr) == Some(child.id()) {
                return Some(child);
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/3", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty server on the same port (after [`Redis::stop`]).
    fn start_again(&mut self) {
        self.child = Redis::spawn(self.port).expect("redis-server started again on its port");
    }
}

/// The process ID of the redis-server answering at `addr` (`INFO server`).
fn server_pid(addr: SocketAddr) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.windows(11).any(|w| w == b"process_id:") || !reply.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct NoSpf;

impl SpfChecker for NoSpf {
    async fn check(&self, _: IpAddr, _: &str, _: &str) -> Spf {
        Spf::None
    }
}

/// `none` for every sender, counting the checks.
#[derive(Clone, Default)]
struct CountedSpf(Arc<AtomicU64>);

impl SpfChecker for CountedSpf {
    async fn check(&self, _: IpAddr, _: &str, _: &str) -> Spf {
        self.0.fetch_add(1, Ordering::SeqCst);
        Spf::None
    }
}

/// A fake clock near the real time (Redis expiries are absolute times).
#[derive(Clone)]
struct FakeClock(Arc<AtomicU64>);

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

async fn filter(store: Arc<dyn Store>, clock: &FakeClock) -> RunningKit {
    filter_with(NoSpf, store, clock).await
}

/// [`filter`] with the SPF checker `spf`.
async fn filter_with(spf: impl SpfChecker, store: Arc<dyn Store>, clock: &FakeClock) -> RunningKit {
    let g = Greylist::new(
        Timing::default(),
        Grouping::Network,
        SmtpReply::parse(DEFAULT_REPLY).unwrap(),
        Arc::new(spf),
        store,
        Arc::new(SharedLists::default()),
        Arc::new(clock.clone()),
    );
    TestKit::new(g).start().await
}

async fn one(kit: &mut RunningKit, ip: &str, sender: &str) -> Answer {
    let mut s = kit.session();
    s.connect(ip, "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from(sender).await;
    let a = s.rcpt_to("user@lab.test").await;
    s.disconnect().await;
    a
}

fn tempfail() -> Answer {
    Answer::Reject(DEFAULT_REPLY.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_filters_share_one_redis_and_fail_open_when_it_goes() {
    let mut redis = Redis::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = FakeClock(Arc::new(AtomicU64::new(now)));
    let store_a: Arc<dyn Store> = Arc::new(RedisStore::new(&redis.url()).unwrap());
    let store_b: Arc<dyn Store> = Arc::new(RedisStore::new(&redis.url()).unwrap());
    let mut mx_a = filter(Arc::clone(&store_a), &clock).await;
    let mut mx_b = filter(Arc::clone(&store_b), &clock).await;

    // greylisted at MX A, an early retry at MX B is still greylisted (same first-seen)
    assert_eq!(
        one(&mut mx_a, "192.0.2.10", "a@shared.example").await,
        tempfail()
    );
    clock.0.fetch_add(100, Ordering::SeqCst);
    assert_eq!(
        one(&mut mx_b, "192.0.2.10", "a@shared.example").await,
        tempfail()
    );
    let grey = store_b
        .entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.is_grey())
        .expect("the grey entry is in Redis");
    assert_eq!((grey.1.first_seen, grey.1.count), (now, 2));
    assert_eq!(grey.1.expires, now + 100 + 4 * 3600);
    // the retry after the pass time passes at MX B, and the client is whitelisted at A
    clock.0.fetch_add(200, Ordering::SeqCst);
    assert_eq!(
        one(&mut mx_b, "192.0.2.10", "a@shared.example").await,
        Answer::Proceed
    );
    assert_eq!(
        one(&mut mx_a, "192.0.2.99", "z@other.example").await,
        Answer::Proceed
    );
    assert!(
        store_a
            .entries()
            .unwrap()
            .iter()
            .any(|(k, _)| *k == Key::WhiteNet("192.0.2.0/24".parse().unwrap()))
    );

    // one new triplet tried at both MXs: one grey entry holding both attempts
    let mut grey_first = 0;
    for (i, kit) in [&mut mx_a, &mut mx_b].into_iter().enumerate() {
        let a = one(kit, "198.51.100.7", "race@example.org").await;
        assert_eq!(a, tempfail(), "attempt {i}");
    }
    for (k, e) in store_a.entries().unwrap() {
        if k.is_grey() && k.to_string().contains("race@example.org") {
            grey_first += 1;
            assert_eq!(e.count, 2);
        }
    }
    assert_eq!(grey_first, 1);

    // Redis goes away: both filters accept at once, without stalling
    redis.stop();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            one(&mut mx_a, "203.0.113.1", "new@example.org").await,
            Answer::Proceed
        );
        assert_eq!(
            one(&mut mx_b, "203.0.113.2", "new@example.org").await,
            Answer::Proceed
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fail open took {:?}",
        started.elapsed()
    );

    // Redis is back (empty): once the retry pause is over, both greylist again, through
    // new connections (the pool's and the one reads ahead go over)
    redis.start_again();
    tokio::time::sleep(filter_greylist::redis_store::RETRY_AFTER + Duration::from_millis(200))
        .await;
    assert_eq!(
        one(&mut mx_a, "203.0.113.1", "back@example.org").await,
        tempfail()
    );
    assert_eq!(
        one(&mut mx_b, "203.0.113.1", "back@example.org").await,
        tempfail()
    );
    let grey: Vec<_> = store_a
        .entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.is_grey())
        .collect();
    assert_eq!(grey.len(), 1, "{grey:?}");
    assert_eq!(grey[0].1.count, 2);
    // and the reads ahead go over a live connection again
    let read = store_a.read_ahead(vec![grey[0].0.clone()]).await.unwrap();
    assert_eq!(read[0].1.as_ref().map(|e| e.count), Some(2));
    mx_a.finish().await;
    mx_b.finish().await;
}

#[test]
fn an_unreachable_redis_fails_fast() {
    // nothing listens on this port
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let started = Instant::now();
    assert!(store.entries().is_err());
    assert!(
        store.entries().is_err(),
        "the second attempt waits for RETRY_AFTER"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(RedisStore::new("not a url").is_err());
}

fn attempt(client: &str, sender: &str) -> filter_greylist::policy::Attempt {
    filter_greylist::policy::Attempt {
        client: client.parse().unwrap(),
        sender: sender.into(),
        helo: "mx.example.org".into(),
        rcpt: "user@lab.test".into(),
        spf: Spf::None,
        trap: false,
    }
}

fn real_now() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The optimistic transaction: another MX (another connection) changes the watched
/// grey key while this decision's policy runs (between `WATCH`/`MGET` and `EXEC`), so
/// `EXEC` aborts and the decision is taken again on what the other MX wrote. (The
/// policy runs first on a plain `MGET`; a decision that writes runs it again under
/// `WATCH`: the change is made during that second run.)
#[test]
fn a_concurrent_change_aborts_exec_and_the_decision_is_retried() {
    use filter_greylist::policy::{Found, Outcome, Reason, decide, lookup};
    let redis = Redis::start();
    let mx_a = RedisStore::new(&redis.url()).unwrap();
    let mx_b = RedisStore::new(&redis.url()).unwrap();
    let timing = Timing::default();
    let a = attempt("192.0.2.77", "race@example.org");
    let l = lookup(&a, Grouping::Network);
    let now = real_now();
    let other_first_seen = now - 100;
    let calls = std::sync::Mutex::new(Vec::<Found>::new());
    let outcome = mx_a
        .decide(&l, &|found| {
            let mut calls = calls.lock().unwrap();
            calls.push(found.clone());
            if calls.len() == 2 {
                // MX B's first attempt lands now, on its own connection
                let b = mx_b
                    .decide(&l, &|found| {
                        decide(&timing, &l, found, other_first_seen, false)
                    })
                    .unwrap();
                assert_eq!(b.reason, Reason::FirstAttempt);
            }
            decide(&timing, &l, found, now, false)
        })
        .unwrap();
    let calls = calls.into_inner().unwrap();
    assert_eq!(
        calls.len(),
        3,
        "read, then under WATCH; EXEC aborted once and the decision ran again"
    );
    assert_eq!(calls[0].grey, None, "the read saw no entry");
    assert_eq!(
        calls[1].grey, None,
        "the first run under WATCH saw no entry"
    );
    let seen = calls[2].grey.expect("the retry sees MX B's entry");
    assert_eq!(seen.first_seen, other_first_seen);
    // MX B's first-seen time stands: A's decision is an early retry of it
    assert_eq!(outcome.reason, Reason::EarlyRetry(200));
    let stored: Vec<_> = mx_a.entries().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, l.grey);
    assert_eq!(
        (stored[0].1.first_seen, stored[0].1.count),
        (other_first_seen, 2)
    );
    // a decision that changes nothing leaves the keys unwatched and writes nothing
    let idle: Outcome = mx_a
        .decide(&l, &|_| Outcome {
            verdict: filter_greylist::policy::Verdict::Accept,
            reason: Reason::FirstAttempt,
            changes: Vec::new(),
        })
        .unwrap();
    assert!(idle.changes.is_empty());
    assert_eq!(mx_a.entries().unwrap()[0].1.count, 2);
}

/// Two threads (two MX hosts, each with its pool of connections) race many decisions
/// on one triplet: exactly one of them is the first attempt, and no attempt is lost
/// (the count is the number of decisions).
#[test]
fn racing_decisions_on_one_triplet_have_exactly_one_first_attempt() {
    use filter_greylist::policy::{Reason, decide, lookup};
    let redis = Redis::start();
    let now = real_now();
    let per_thread = 300;
    let firsts = AtomicU64::new(0);
    let early = AtomicU64::new(0);
    let a = attempt("198.51.100.77", "race@example.org");
    let l = lookup(&a, Grouping::Network);
    let timing = Timing::default();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let store = RedisStore::new(&redis.url()).unwrap();
            let (l, firsts, early) = (&l, &firsts, &early);
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let o = store
                        .decide(l, &|found| decide(&timing, l, found, now, false))
                        .unwrap();
                    match o.reason {
                        Reason::FirstAttempt => firsts.fetch_add(1, Ordering::SeqCst),
                        Reason::EarlyRetry(_) => early.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}"),
                    };
                }
            });
        }
    });
    assert_eq!(
        firsts.load(Ordering::SeqCst),
        1,
        "exactly one first attempt"
    );
    assert_eq!(early.load(Ordering::SeqCst), 2 * per_thread - 1);
    let stored = RedisStore::new(&redis.url()).unwrap().entries().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        u64::from(stored[0].1.count),
        2 * per_thread,
        "no attempt lost"
    );
}

/// Greytraps added with the admin command live until removed: no expiry in Redis.
#[test]
fn greytraps_in_redis_never_expire() {
    let redis = Redis::start();
    let url = redis.url();
    let out = filter_greylist::admin::run(
        ["admin", "--store", &url, "add-greytrap", "trap@lab.test"].map(std::ffi::OsString::from),
    )
    .unwrap();
    assert_eq!(out, "added: greytrap:trap@lab.test\n");
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(b"filter-greylist:t\0a\0trap@lab.test".as_slice())
        .query(&mut con)
        .unwrap();
    assert_eq!(ttl, -1, "no expiry");
    let list = filter_greylist::admin::run(
        ["admin", "--store", &url, "list"].map(std::ffi::OsString::from),
    )
    .unwrap();
    assert!(list.contains("greytrap:trap@lab.test"), "{list}");
    assert!(list.lines().nth(1).unwrap().ends_with("never"), "{list}");
}

/// The pool: decisions in flight at once each get their connection (a `WATCH` belongs
/// to one connection), and they are kept for the next ones.
#[test]
fn concurrent_decisions_use_several_connections() {
    use filter_greylist::policy::{decide, lookup};
    let redis = Redis::start();
    let store = RedisStore::new(&redis.url()).unwrap();
    let now = real_now();
    let timing = Timing::default();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..50 {
                    let a = attempt("203.0.113.9", &format!("p{t}-{i}@example.org"));
                    let l = lookup(&a, Grouping::Network);
                    store
                        .decide(&l, &|found| {
                            // hold the connection a little: the others need their own
                            std::thread::sleep(Duration::from_millis(1));
                            decide(&timing, &l, found, now, false)
                        })
                        .unwrap();
                }
            });
        }
    });
    let mut con = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    // the store's idle connections plus this one
    let n = clients.lines().count();
    assert!(n >= 3, "{n} connections:\n{clients}");
    assert!(
        n <= filter_greylist::redis_store::MAX_CONNECTIONS + 1,
        "{clients}"
    );
    assert_eq!(
        store.entries().unwrap().len(),
        4 * 50,
        "one grey entry per sender"
    );
}

/// Whitelists the network of the test clients, 192.0.2.0/24, in `store`.
fn whitelist_test_net(store: &Counting, clock: &FakeClock) {
    let net = Key::WhiteNet("192.0.2.0/24".parse().unwrap());
    assert!(
        store
            .whitelist(&net, &Timing::default(), clock.now())
            .unwrap()
    );
}

/// A filter with the SPF checker `spf` over a Redis of its own (kept running while the
/// first value lives), with the test network whitelisted.
async fn whitelisted(spf: impl SpfChecker) -> (Redis, Arc<Counting>, FakeClock, RunningKit) {
    let redis = Redis::start();
    let store = Counting::new(&redis);
    let clock = FakeClock(Arc::new(AtomicU64::new(real_now())));
    whitelist_test_net(&store, &clock);
    let kit = filter_with(spf, Arc::clone(&store) as Arc<dyn Store>, &clock).await;
    (redis, store, clock, kit)
}

/// An SPF check that takes a while: the recipient comes while it runs.
struct SlowSpf;

impl SpfChecker for SlowSpf {
    async fn check(&self, _: IpAddr, _: &str, _: &str) -> Spf {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Spf::None
    }
}

/// The Redis store, counting how the filter asks it.
struct Counting {
    redis: RedisStore,
    decisions: AtomicU64,
    reads_ahead: AtomicU64,
}

impl Counting {
    fn new(redis: &Redis) -> Arc<Counting> {
        Arc::new(Counting {
            redis: RedisStore::new(&redis.url()).unwrap(),
            decisions: AtomicU64::new(0),
            reads_ahead: AtomicU64::new(0),
        })
    }

    /// Decisions through the store, reads ahead.
    fn counts(&self) -> (u64, u64) {
        (
            self.decisions.load(Ordering::SeqCst),
            self.reads_ahead.load(Ordering::SeqCst),
        )
    }
}

impl Store for Counting {
    fn decide(
        &self,
        lookup: &filter_greylist::policy::Lookup,
        decide: &dyn Fn(&filter_greylist::policy::Found) -> filter_greylist::policy::Outcome,
    ) -> Result<filter_greylist::policy::Outcome, filter_greylist::store::StoreError> {
        self.decisions.fetch_add(1, Ordering::SeqCst);
        self.redis.decide(lookup, decide)
    }

    fn reads_ahead(&self) -> bool {
        self.redis.reads_ahead()
    }

    fn read_ahead(&self, keys: Vec<Key>) -> filter_greylist::store::ReadAhead<'_> {
        self.reads_ahead.fetch_add(1, Ordering::SeqCst);
        self.redis.read_ahead(keys)
    }

    fn purge(&self, now: Time) -> Result<usize, filter_greylist::store::StoreError> {
        self.redis.purge(now)
    }

    fn entries(
        &self,
    ) -> Result<Vec<(Key, filter_greylist::policy::Entry)>, filter_greylist::store::StoreError>
    {
        self.redis.entries()
    }
}

/// A recipient that comes while the SPF check still runs: the sender's whitelist
/// entries were read at MAIL FROM, meanwhile, and a decision that changes nothing (a
/// whitelisted network) is taken from that read, with no round trip at the recipient;
/// otherwise the recipient's keys are read, and a decision that writes goes through the
/// store's transaction.
#[tokio::test]
async fn redis_is_read_while_the_spf_check_runs() {
    let redis = Redis::start();
    let store = Counting::new(&redis);
    let clock = FakeClock(Arc::new(AtomicU64::new(real_now())));
    let mut kit = filter_with(SlowSpf, Arc::clone(&store) as Arc<dyn Store>, &clock).await;
    // first attempt: greylisted (read at MAIL FROM and at RCPT), written by the store
    assert_eq!(
        one(&mut kit, "192.0.2.10", "a@example.org").await,
        tempfail()
    );
    assert_eq!(store.counts(), (1, 2));
    // after the pass time: accepted and whitelisted, written by the store
    clock.0.fetch_add(301, Ordering::SeqCst);
    assert_eq!(
        one(&mut kit, "192.0.2.10", "a@example.org").await,
        Answer::Proceed
    );
    assert_eq!(store.counts(), (2, 4));
    // the whitelisted network, a new sender (each of a domain of its own, so that no
    // session's read serves the next): from the read at MAIL FROM alone
    for n in 0..3 {
        assert_eq!(
            one(&mut kit, "192.0.2.11", &format!("b@example{n}.org")).await,
            Answer::Proceed
        );
    }
    assert_eq!(store.counts(), (2, 7));
    // another network: greylisted, through the store again
    assert_eq!(
        one(&mut kit, "198.51.100.1", "c@example.org").await,
        tempfail()
    );
    assert_eq!(store.counts(), (3, 9));
    kit.finish().await;
}

/// With the SPF result known before the recipient comes (the usual case when the
/// client waits for each reply), a whitelisted client is decided from the read made at
/// its MAIL FROM alone, one read per sender (each of a domain of its own: a read
/// serves the next senders of the same domain, see below).
#[tokio::test]
async fn a_known_spf_result_still_reads_ahead() {
    let (_redis, store, _, mut kit) = whitelisted(NoSpf).await;
    for n in 0..3 {
        let mut s = kit.session();
        s.connect("192.0.2.11", "client.example").await;
        s.ehlo("client.example").await;
        s.mail_from(&format!("b@example{n}.org")).await;
        // the SPF check (NoSpf answers at once) is done before the recipient comes
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.rcpt_to("user@lab.test").await, Answer::Proceed);
        s.disconnect().await;
    }
    // the whitelist above was the one decision through the store
    assert_eq!(store.counts(), (1, 3));
    kit.finish().await;
}

/// All the recipients of a whitelisted client's sender are decided from the one read
/// made at its MAIL FROM — but not after [`WHITE_READ_MAX_AGE`]: then each recipient's
/// keys are read again (an entry removed meanwhile must not be used for long).
#[tokio::test]
async fn a_whitelisted_senders_recipients_share_the_read_at_mail_from() {
    let (_redis, store, clock, mut kit) = whitelisted(NoSpf).await;
    let mut s = kit.session();
    s.connect("192.0.2.11", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from("b@example.org").await;
    for n in 0..3 {
        assert_eq!(s.rcpt_to(&format!("u{n}@lab.test")).await, Answer::Proceed);
    }
    assert_eq!(store.counts(), (1, 1), "one read for three recipients");
    // a recipient later than that: read again, and still accepted
    clock.0.fetch_add(WHITE_READ_MAX_AGE + 1, Ordering::SeqCst);
    assert_eq!(s.rcpt_to("late@lab.test").await, Answer::Proceed);
    assert_eq!(store.counts(), (1, 2));
    // a sender of another domain in the same session: its own read at its MAIL FROM
    s.rset().await;
    s.mail_from("c@example.net").await;
    assert_eq!(s.rcpt_to("u@lab.test").await, Answer::Proceed);
    assert_eq!(store.counts(), (1, 3));
    s.disconnect().await;
    kit.finish().await;
}

/// One session from the test network: `sender`, one recipient, accepted.
async fn whitelisted_session(kit: &mut RunningKit, sender: &str) {
    let mut s = kit.session();
    s.connect("192.0.2.11", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from(sender).await;
    assert_eq!(s.rcpt_to("user@lab.test").await, Answer::Proceed);
    s.disconnect().await;
}

/// The whitelist entries read for one session serve the next sessions of the same
/// network and sender domain for [`WHITE_CACHE_MAX_AGE`]: no read at their MAIL FROM,
/// so no wait at their first recipient, and, as that read settles them, no SPF check
/// either. After that the store is read again.
#[tokio::test]
async fn the_next_sessions_of_a_whitelisted_network_reuse_a_recent_read() {
    let spf = CountedSpf::default();
    let checks = || spf.0.load(Ordering::SeqCst);
    let (_redis, store, clock, mut kit) = whitelisted(spf.clone()).await;
    let (decisions, reads) = store.counts();
    whitelisted_session(&mut kit, "a@example.org").await;
    assert_eq!(store.counts(), (decisions, reads + 1));
    // started at MAIL FROM beside the read, before its entries were known
    let started = checks();
    assert!(started <= 1);
    // the same network and domain, moments later: from the first session's read
    whitelisted_session(&mut kit, "b@example.org").await;
    clock.0.fetch_add(WHITE_CACHE_MAX_AGE, Ordering::SeqCst);
    whitelisted_session(&mut kit, "c@example.org").await;
    assert_eq!(
        store.counts(),
        (decisions, reads + 1),
        "no read for two sessions"
    );
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(checks(), started, "no SPF check for two sessions");
    // another sender domain: its own key, so its own read
    whitelisted_session(&mut kit, "d@example.net").await;
    assert_eq!(store.counts(), (decisions, reads + 2));
    // later than the max age: read again
    clock.0.fetch_add(1, Ordering::SeqCst);
    whitelisted_session(&mut kit, "e@example.org").await;
    assert_eq!(store.counts(), (decisions, reads + 3));
    kit.finish().await;
}

/// An entry this filter writes is not served from what it read before: after a
/// session refreshes the network's whitelist entry, the next session reads the
/// refreshed entry from the store (and so writes nothing), instead of the cached one
/// that said a refresh was due.
#[tokio::test]
async fn an_entry_the_filter_writes_is_read_again() {
    let (_redis, store, clock, mut kit) = whitelisted(NoSpf).await;
    clock.0.fetch_add(REFRESH_GRANULARITY, Ordering::SeqCst);
    let (decisions, reads) = store.counts();
    // due for a refresh: the store's transaction writes it
    whitelisted_session(&mut kit, "a@example.org").await;
    assert_eq!(store.counts(), (decisions + 1, reads + 1));
    // the refreshed entry, read from the store: nothing to write
    whitelisted_session(&mut kit, "b@example.org").await;
    assert_eq!(store.counts(), (decisions + 1, reads + 2));
    // and that read serves the next one
    whitelisted_session(&mut kit, "c@example.org").await;
    assert_eq!(store.counts(), (decisions + 1, reads + 2));
    kit.finish().await;
}

/// An SPF check that never ends.
struct HangingSpf;

impl SpfChecker for HangingSpf {
    async fn check(&self, _: IpAddr, _: &str, _: &str) -> Spf {
        std::future::pending().await
    }
}

/// With Redis too, a whitelisted client is answered while its SPF check still runs,
/// from the read made at its MAIL FROM (no SPF result could change the answer).
#[tokio::test]
async fn a_whitelisted_client_is_answered_before_its_spf_check_ends() {
    let (_redis, store, _, mut kit) = whitelisted(HangingSpf).await;
    let mut s = kit.session();
    s.connect("192.0.2.11", "client.example").await;
    s.ehlo("client.example").await;
    s.mail_from("b@example.org").await;
    let answer = tokio::time::timeout(Duration::from_secs(5), s.rcpt_to("user@lab.test"))
        .await
        .expect("answered while the SPF check runs");
    assert_eq!(answer, Answer::Proceed);
    assert_eq!(
        store.counts(),
        (1, 1),
        "the read at MAIL FROM, nothing more"
    );
    s.disconnect().await;
    kit.finish().await;
}
