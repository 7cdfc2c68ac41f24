//! Looking scores up: the DNS client (hickory-resolver, A records only), the zones,
//! and the [`Scorer`] that asks every zone for a client, caches the answers per TTL and
//! says once, in plain words, why scores are unknown.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, ResolveErrorKind};

use crate::cache::AnswerCache;
use crate::policy::{AnswerMap, Unknown, ZoneResult, combine};

/// What the DNS said to one A query.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DnsAnswer {
    /// A records (possibly none: the name exists without A records), and the TTL to
    /// keep them for.
    Addrs {
        /// The A records.
        addrs: Vec<Ipv4Addr>,
        /// The smallest TTL of the records (or the negative TTL when there are none).
        ttl: Duration,
    },
    /// NXDOMAIN, with the negative TTL.
    NxDomain {
        /// How long the zone says to remember it.
        ttl: Duration,
    },
    /// No answer in time.
    Timeout,
    /// SERVFAIL, REFUSED or another error code.
    ServFail,
    /// Any other failure (network, malformed answer).
    Error(String),
}

/// A DNS client that asks for A records. The filter's only way to the network, so that
/// tests can put a fake behind it.
pub trait DnsClient: Send + Sync + 'static {
    /// Asks for the A records of `name` (fully qualified, with the final dot).
    fn query_a(&self, name: &str) -> impl Future<Output = DnsAnswer> + Send;
}

/// How long a negative answer without an SOA is remembered.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// The hickory-resolver client: the system resolver or the given servers, UDP with TCP
/// fallback, no DNSSEC, no TLS, no hosts file, its own cache off (the [`Scorer`]
/// caches classified answers).
pub struct HickoryDns {
    resolver: TokioResolver,
}

impl HickoryDns {
    /// A client of `servers` (each over UDP, then TCP), or of the system resolver
    /// (`/etc/resolv.conf`) when `servers` is empty. `timeout` bounds each query.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<HickoryDns, String> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for server in servers {
                group.push(NameServerConfig::new(*server, Protocol::Udp));
                group.push(NameServerConfig::new(*server, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = false;
        opts.validate = false;
        opts.preserve_intermediates = false;
        Ok(HickoryDns {
            resolver: builder.build(),
        })
    }
}

impl DnsClient for HickoryDns {
    async fn query_a(&self, name: &str) -> DnsAnswer {
        match self.resolver.lookup(name, RecordType::A).await {
            Ok(lookup) => {
                let mut addrs = Vec::new();
                let mut ttl = u32::MAX;
                for record in lookup.record_iter() {
                    if let RData::A(a) = record.data() {
                        addrs.push(a.0);
                        ttl = ttl.min(record.ttl());
                    }
                }
                let ttl = if addrs.is_empty() {
                    DEFAULT_NEGATIVE_TTL
                } else {
                    Duration::from_secs(u64::from(ttl))
                };
                DnsAnswer::Addrs { addrs, ttl }
            }
            Err(e) => classify_error(&e),
        }
    }
}

fn classify_error(e: &ResolveError) -> DnsAnswer {
    let proto = match e.kind() {
        ResolveErrorKind::Proto(p) => p,
        _ => return DnsAnswer::Error(e.to_string()),
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound {
            response_code,
            negative_ttl,
            ..
        } => {
            let ttl = negative_ttl
                .map(|t| Duration::from_secs(u64::from(t)))
                .unwrap_or(DEFAULT_NEGATIVE_TTL);
            match *response_code {
                ResponseCode::NXDomain => DnsAnswer::NxDomain { ttl },
                ResponseCode::NoError => DnsAnswer::Addrs { addrs: vec![], ttl },
                _ => DnsAnswer::ServFail,
            }
        }
        ProtoErrorKind::Timeout => DnsAnswer::Timeout,
        _ => DnsAnswer::Error(e.to_string()),
    }
}

/// A reputation zone.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Zone {
    /// The zone name, lower case, without the final dot (`score.senderscore.com`).
    pub name: String,
    /// Its weight in the combined score (1 to 100).
    pub weight: u32,
    /// Whether it serves IPv6 clients (nibble-reversed names, as ip6.arpa).
    pub ipv6: bool,
    /// How its answers map to scores.
    pub map: AnswerMap,
}

/// The SenderScore zone.
pub const SENDERSCORE_ZONE: &str = "score.senderscore.com";

impl Default for Zone {
    fn default() -> Self {
        Zone {
            name: SENDERSCORE_ZONE.into(),
            weight: 1,
            ipv6: false,
            map: AnswerMap::SenderScore,
        }
    }
}

impl Zone {
    /// The name to ask for `ip`, fully qualified; none for an IPv6 client of a zone that
    /// does not serve IPv6.
    pub fn query_name(&self, ip: IpAddr) -> Option<String> {
        let mut name = String::with_capacity(80);
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                let _ = write!(name, "{d}.{c}.{b}.{a}.");
            }
            IpAddr::V6(v6) => {
                if !self.ipv6 {
                    return None;
                }
                for byte in v6.octets().iter().rev() {
                    let _ = write!(name, "{:x}.{:x}.", byte & 0xf, byte >> 4);
                }
            }
        }
        name.push_str(&self.name);
        name.push('.');
        Some(name)
    }
}

/// Where a client's standing came from (the `source=` of the decision log line).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// At least one zone was asked now.
    Dns,
    /// Every zone's answer came from the cache.
    Cache,
    /// `-testMode`: from the address itself.
    Test,
    /// The allowlist: nothing was asked.
    Allowlist,
    /// Nothing to ask (a local submission, an unusable address).
    None,
}

impl Source {
    /// The word of the log line.
    pub fn word(self) -> &'static str {
        match self {
            Source::Dns => "dns",
            Source::Cache => "cache",
            Source::Test => "test",
            Source::Allowlist => "allowlist",
            Source::None => "none",
        }
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address
/// the zones list.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Asks every zone about a client and combines the answers.
pub struct Scorer<D> {
    dns: D,
    zones: Vec<Zone>,
    timeout: Duration,
    cache: Mutex<AnswerCache>,
    said: Mutex<HashSet<(usize, Unknown)>>,
}

impl<D: DnsClient> Scorer<D> {
    /// A scorer over `zones` (at least one), each query bounded by `timeout`, with a
    /// cache of `cache_size` answers.
    pub fn new(dns: D, zones: Vec<Zone>, timeout: Duration, cache_size: usize) -> Self {
        let zones = if zones.is_empty() {
            vec![Zone::default()]
        } else {
            zones
        };
        Scorer {
            dns,
            zones,
            timeout,
            cache: Mutex::new(AnswerCache::new(cache_size)),
            said: Mutex::new(HashSet::new()),
        }
    }

    /// The zones.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Looks `ip` up in every zone (concurrently; cached answers are not asked again)
    /// and combines the results. Never takes much longer than the timeout.
    pub async fn score(&self, ip: IpAddr) -> (ZoneResult, Source) {
        let ip = unmapped(ip);
        let asks = self
            .zones
            .iter()
            .enumerate()
            .map(|(i, zone)| self.ask_zone(i, zone, ip));
        let results = futures_util::future::join_all(asks).await;
        self.combined(&results)
    }

    /// What [`Scorer::score`] would find for `ip` without asking anything: `Some` when
    /// every zone's answer is in the cache (or the zone does not serve the address), so
    /// that the caller needs no task to wait for.
    pub fn cached(&self, ip: IpAddr) -> Option<(ZoneResult, Source)> {
        let ip = unmapped(ip);
        let results = self
            .zones
            .iter()
            .enumerate()
            .map(|(i, zone)| self.without_asking(i, zone, ip))
            .collect::<Option<Vec<_>>>()?;
        Some(self.combined(&results))
    }

    /// The zones' results combined, by weight, and where they came from.
    fn combined(&self, results: &[(ZoneResult, Source)]) -> (ZoneResult, Source) {
        let from = |source| results.iter().any(|(_, s)| *s == source);
        let source = if from(Source::Dns) {
            Source::Dns
        } else if from(Source::Cache) {
            Source::Cache
        } else {
            Source::None
        };
        let weighted: Vec<(u32, ZoneResult)> = self
            .zones
            .iter()
            .zip(results)
            .map(|(z, (r, _))| (z.weight, *r))
            .collect();
        (combine(&weighted), source)
    }

    /// One zone's result for `ip` when no question is needed: from the cache, or none
    /// (the zone does not serve the client's address family).
    fn without_asking(
        &self,
        index: usize,
        zone: &Zone,
        ip: IpAddr,
    ) -> Option<(ZoneResult, Source)> {
        match zone.query_name(ip) {
            None => Some(self.not_served(index, ip)),
            Some(_) => self.cache_hit(index, ip),
        }
    }

    /// The result of a zone that does not serve `ip`'s address family.
    fn not_served(&self, index: usize, ip: IpAddr) -> (ZoneResult, Source) {
        self.say_once(index, Unknown::Ipv6NotServed, &ip, "");
        (ZoneResult::Unknown(Unknown::Ipv6NotServed), Source::None)
    }

    /// The zone's cached answer for `ip`, if any.
    fn cache_hit(&self, index: usize, ip: IpAddr) -> Option<(ZoneResult, Source)> {
        let now = tokio::time::Instant::now().into_std();
        let hit = self.lock_cache().get(index, ip, now)?;
        Some((hit, Source::Cache))
    }

    /// One zone's result for `ip`, and where it came from: the DNS, the cache, or
    /// nowhere (the zone does not serve the client's address family).
    async fn ask_zone(&self, index: usize, zone: &Zone, ip: IpAddr) -> (ZoneResult, Source) {
        let Some(name) = zone.query_name(ip) else {
            return self.not_served(index, ip);
        };
        if let Some(hit) = self.cache_hit(index, ip) {
            return hit;
        }
        let answer = match tokio::time::timeout(self.timeout, self.dns.query_a(&name)).await {
            Ok(answer) => answer,
            Err(_) => DnsAnswer::Timeout,
        };
        let (result, ttl, detail) = match answer {
            DnsAnswer::Addrs { addrs, ttl } => {
                let result = zone.map.classify(&addrs);
                let detail = addrs
                    .iter()
                    .map(Ipv4Addr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                (result, Some(ttl), detail)
            }
            DnsAnswer::NxDomain { ttl } => (ZoneResult::NoData, Some(ttl), String::new()),
            DnsAnswer::Timeout => (ZoneResult::Unknown(Unknown::Timeout), None, String::new()),
            DnsAnswer::ServFail => (ZoneResult::Unknown(Unknown::ServFail), None, String::new()),
            DnsAnswer::Error(e) => (ZoneResult::Unknown(Unknown::Error), None, e),
        };
        if let ZoneResult::Unknown(why) = result {
            self.say_once(index, why, &ip, &detail);
        }
        if let Some(ttl) = ttl {
            let now = tokio::time::Instant::now().into_std();
            self.lock_cache().put(index, ip, result, ttl, now);
        }
        (result, Source::Dns)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, AnswerCache> {
        // a panic while holding the lock cannot leave the cache inconsistent
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs, once per zone and cause, why scores are unknown.
    fn say_once(&self, index: usize, why: Unknown, ip: &IpAddr, detail: &str) {
        let first = self
            .said
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((index, why));
        if !first {
            return;
        }
        let zone = &self.zones[index].name;
        let text = match why {
            Unknown::Refused => format!(
                "{zone} answered 127.255.255.255 for {ip}: the zone refuses this resolver (not registered, or over its free query quota); scores from {zone} are unknown while it answers so, and unknown scores never block or junk"
            ),
            Unknown::Unexpected => format!(
                "{zone} answered {detail} for {ip}, which is not a score; such answers are treated as unknown (said once)"
            ),
            Unknown::Timeout => format!(
                "{zone} did not answer within {} ms (first seen for {ip}); scores are unknown when this happens, mail goes on (said once)",
                self.timeout.as_millis()
            ),
            Unknown::ServFail => format!(
                "the resolver failed (SERVFAIL or REFUSED) asking {zone} about {ip}; scores are unknown when this happens, mail goes on (said once)"
            ),
            Unknown::Error => format!(
                "cannot ask {zone} about {ip}: {detail}; scores are unknown when this happens, mail goes on (said once)"
            ),
            Unknown::Ipv6NotServed => format!(
                "{ip} is an IPv6 client and {zone} is not configured for IPv6 (--zone {zone},ipv6); its score is unknown (said once)"
            ),
            Unknown::NoAddress => return,
        };
        log::warn!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let z = Zone::default();
        assert_eq!(
            z.query_name("192.0.2.10".parse().unwrap()).as_deref(),
            Some("10.2.0.192.score.senderscore.com.")
        );
        assert_eq!(z.query_name("2001:db8::1".parse().unwrap()), None);
        let v6 = Zone {
            name: "rep.example.org".into(),
            ipv6: true,
            ..Zone::default()
        };
        assert_eq!(
            v6.query_name("2001:db8::1".parse().unwrap()).as_deref(),
            Some(
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.rep.example.org."
            )
        );
    }

    /// Answers every name with `127.0.4.<score>`, the score set per zone name suffix,
    /// and counts the questions.
    struct FixedDns {
        asked: std::sync::atomic::AtomicUsize,
    }

    impl DnsClient for FixedDns {
        async fn query_a(&self, name: &str) -> DnsAnswer {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let score = if name.ends_with(".a.example.") {
                10
            } else {
                90
            };
            DnsAnswer::Addrs {
                addrs: vec![Ipv4Addr::new(127, 0, 4, score)],
                ttl: Duration::from_secs(60),
            }
        }
    }

    #[tokio::test]
    async fn cached_answers_only_when_every_zone_is_cached_and_as_score_would() {
        let zones = ["a.example", "b.example"].map(|name| Zone {
            name: name.into(),
            weight: 1,
            ..Zone::default()
        });
        let dns = FixedDns {
            asked: std::sync::atomic::AtomicUsize::new(0),
        };
        let scorer = Scorer::new(dns, zones.to_vec(), Duration::from_secs(1), 100);
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(scorer.cached(ip), None);
        // one zone cached, the other not: still a question to ask
        let one = Scorer::new(
            FixedDns {
                asked: std::sync::atomic::AtomicUsize::new(0),
            },
            zones.to_vec(),
            Duration::from_secs(1),
            100,
        );
        one.lock_cache().put(
            0,
            ip,
            ZoneResult::Score(crate::policy::Score::new(10).unwrap()),
            Duration::from_secs(60),
            tokio::time::Instant::now().into_std(),
        );
        assert_eq!(one.cached(ip), None);
        let (asked_result, asked_source) = scorer.score(ip).await;
        assert_eq!(asked_source, Source::Dns);
        let asked = scorer.dns.asked.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(asked, 2);
        // both now cached: the same result, from the cache, with no question
        assert_eq!(scorer.cached(ip), Some((asked_result, Source::Cache)));
        // an IPv4 client through an IPv6 socket is the same client
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert_eq!(scorer.cached(mapped), Some((asked_result, Source::Cache)));
        assert_eq!(
            scorer.dns.asked.load(std::sync::atomic::Ordering::SeqCst),
            2
        );
    }
}
