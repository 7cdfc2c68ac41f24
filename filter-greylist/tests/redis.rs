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
use filter_greylist::filter::{Clock, Greylist};
use filter_greylist::lists::SharedLists;
use filter_greylist::policy::{Grouping, Key, Spf, Time, Timing};
use filter_greylist::redis_store::RedisStore;
use filter_greylist::spf::SpfChecker;
use filter_greylist::store::Store;
use opensmtpd_filter::protocol::SmtpReply;
use opensmtpd_filter::testkit::{Answer, RunningKit, TestKit};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test provisions it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/3", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// A fake clock near the real time (Redis expiries are absolute times).
#[derive(Clone)]
struct FakeClock(Arc<AtomicU64>);

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

async fn filter(store: Arc<dyn Store>, clock: &FakeClock) -> RunningKit {
    let g = Greylist::new(
        Timing::default(),
        Grouping::Network,
        SmtpReply::parse(DEFAULT_REPLY).unwrap(),
        Arc::new(NoSpf),
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
