//! Store benchmark: fills a store with N entries (default 1 000 000: half whitelisted
//! networks, half grey triplets, loaded in batches of 100 000), then measures the time to open it, warm decisions per
//! second for whitelisted clients (read path), decisions that write (first attempts,
//! durable commits), and the peak RSS. `BENCH_THREADS` (8) sets the threads of the
//! concurrent phase.
//!
//! ```sh
//! cargo run --release -p filter-greylist --example bench -- /tmp/bench.redb [N]
//! cargo run --release -p filter-greylist --example bench -- redis://127.0.0.1:6379/9 [N]
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use filter_greylist::policy::{
    Attempt, Entry, Grouping, Key, Spf, Timing, client_net, decide, lookup,
};
use filter_greylist::redis_store::RedisStore;
use filter_greylist::store::{RedbStore, Store};

fn client(i: u32) -> IpAddr {
    // one /24 per i, skipping 0.x and 127.x
    let n = i + (1 << 16);
    IpAddr::V4(Ipv4Addr::new(
        (n >> 16) as u8 % 100 + 1,
        (n >> 8) as u8,
        n as u8,
        7,
    ))
}

fn attempt(i: u32, sender: &str) -> Attempt {
    Attempt {
        client: client(i),
        sender: sender.to_string(),
        helo: "mx.example.org".into(),
        rcpt: "user@example.org".into(),
        spf: Spf::None,
        trap: false,
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open(target: &str) -> Box<dyn Store> {
    if target.starts_with("redis://") {
        Box::new(RedisStore::new(target).expect("redis url"))
    } else {
        Box::new(RedbStore::open(std::path::Path::new(target)).expect("store"))
    }
}

fn run(store: &dyn Store, a: &Attempt, now: u64) -> bool {
    let timing = Timing::default();
    let l = lookup(a, Grouping::Network);
    store
        .decide(&l, &|found| decide(&timing, &l, found, now, false))
        .map(|o| o.changes.is_empty())
        .expect("decision")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/tmp/filter-greylist-bench.redb".into());
    let n: u32 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let timing = Timing::default();

    let fill = Instant::now();
    {
        let mut batch = Vec::with_capacity(100_000);
        let entry = Entry {
            first_seen: now,
            last_seen: now,
            count: 1,
            expires: now + timing.white_exp,
        };
        let redis = target
            .starts_with("redis://")
            .then(|| RedisStore::new(&target).expect("redis url"));
        let redb = redis
            .is_none()
            .then(|| RedbStore::open(std::path::Path::new(&target)).expect("store"));
        for i in 0..n {
            // whitelisted networks for even i, grey triplets for odd i
            let key = if i % 2 == 0 {
                Key::WhiteNet(client_net(client(i), Grouping::Network))
            } else {
                lookup(&attempt(i, "fill@example.org"), Grouping::Network).grey
            };
            batch.push((key, entry));
            if batch.len() == 100_000 || i + 1 == n {
                match (&redb, &redis) {
                    (Some(s), _) => s.import(&batch).expect("fill"),
                    (_, Some(s)) => s.import(&batch).expect("fill"),
                    _ => unreachable!(),
                }
                batch.clear();
            }
        }
    }
    println!("fill: {:.1} s", fill.elapsed().as_secs_f64());

    let start = Instant::now();
    let store = open(&target);
    let first = run(store.as_ref(), &attempt(0, "a@example.org"), now);
    println!(
        "open + first decision: {:.3} s (read-only: {first})",
        start.elapsed().as_secs_f64()
    );

    let rounds = 200_000.min(n / 2);
    let warm = Instant::now();
    for r in 0..rounds {
        let i = (r * 2) % n;
        run(store.as_ref(), &attempt(i, "a@example.org"), now);
    }
    let secs = warm.elapsed().as_secs_f64();
    println!(
        "whitelisted decisions: {rounds} in {secs:.2} s = {:.0}/s",
        f64::from(rounds) / secs
    );

    // concurrent decisions, as the filter's blocking pool makes them (sessions in
    // parallel): redb readers run side by side, Redis decisions each on a connection
    // of the pool
    let threads: u32 = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(8);
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::from(store);
    let conc = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let store = std::sync::Arc::clone(&store);
            scope.spawn(move || {
                for r in (t..rounds).step_by(threads as usize) {
                    let i = (r * 2) % n;
                    run(store.as_ref(), &attempt(i, "a@example.org"), now);
                }
            });
        }
    });
    let secs = conc.elapsed().as_secs_f64();
    println!(
        "whitelisted decisions, {threads} threads: {rounds} in {secs:.2} s = {:.0}/s",
        f64::from(rounds) / secs
    );

    let writes = 2000;
    let w = Instant::now();
    for r in 0..writes {
        run(store.as_ref(), &attempt(r * 2 + 1, "new@example.org"), now);
    }
    let secs = w.elapsed().as_secs_f64();
    println!(
        "first attempts (durable write each): {writes} in {secs:.2} s = {:.0}/s",
        f64::from(writes) / secs
    );
    println!("peak RSS: {} KB", rss_kb());
}
