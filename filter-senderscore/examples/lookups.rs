//! Lookups per second through the filter's `Scorer` (hickory-resolver, the answer
//! cache) against a DNS server, cold (every client asked once, empty cache) then warm
//! (the same clients again, from the cache). Used by `bench/run.sh`.
//!
//! ```text
//! lookups RESOLVER_IP:PORT CLIENTS CONCURRENCY
//! ```
//! Clients are 10.1.X.Y for the first CLIENTS addresses from 10.1.0.1 on (the bench's
//! dnsmasq serves a SenderScore record for each).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filter_senderscore::dns::{HickoryDns, Scorer, Source, Zone};
use filter_senderscore::policy::ZoneResult;

fn client(i: u32) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

async fn pass(
    scorer: &Arc<Scorer<HickoryDns>>,
    clients: u32,
    concurrency: u32,
) -> (Duration, [u32; 3]) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let scorer = Arc::clone(scorer);
        tasks.push(tokio::spawn(async move {
            // [scores, other results, answered from the cache]
            let mut counts = [0u32; 3];
            let mut i = w;
            while i < clients {
                let (result, source) = scorer.score(client(i)).await;
                match result {
                    ZoneResult::Score(_) => counts[0] += 1,
                    _ => counts[1] += 1,
                }
                if source == Source::Cache {
                    counts[2] += 1;
                }
                i += concurrency;
            }
            counts
        }));
    }
    let mut total = [0u32; 3];
    for t in tasks {
        if let Ok(c) = t.await {
            for k in 0..3 {
                total[k] += c[k];
            }
        }
    }
    (start.elapsed(), total)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(resolver), Some(clients), Some(concurrency)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<u32>().ok()),
        args.get(3).and_then(|a| a.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: lookups RESOLVER_IP:PORT CLIENTS CONCURRENCY");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let timeout = Duration::from_secs(2);
        let dns = HickoryDns::new(&[resolver], timeout).expect("resolver");
        let scorer = Arc::new(Scorer::new(dns, vec![Zone::default()], timeout, clients as usize + 16));
        for (name, _) in [("cold", 0), ("warm", 1)] {
            let (took, [scores, other, cached]) = pass(&scorer, clients, concurrency).await;
            let per_s = f64::from(clients) / took.as_secs_f64();
            println!(
                "{name}\t{clients} lookups\t{:.3} s\t{per_s:.0} lookups/s\tscores={scores} other={other} from_cache={cached}",
                took.as_secs_f64()
            );
        }
    });
}
