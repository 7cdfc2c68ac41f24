//! The answer cache: one entry per (zone, client address), kept for the answer's TTL,
//! at most a fixed number of entries (the least recently used goes first). Pure: the
//! caller passes the time, so tests run on a fake clock.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::policy::ZoneResult;

/// The longest an answer is kept, whatever its TTL says.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A bounded, TTL-respecting cache of zone answers.
pub struct AnswerCache {
    entries: Option<LruCache<(usize, IpAddr), (ZoneResult, Instant)>>,
}

impl AnswerCache {
    /// A cache of at most `capacity` entries (0: no caching).
    pub fn new(capacity: usize) -> Self {
        AnswerCache {
            entries: NonZeroUsize::new(capacity).map(LruCache::new),
        }
    }

    /// The answer of `zone` for `ip`, if one is cached and not expired at `now`.
    pub fn get(&mut self, zone: usize, ip: IpAddr, now: Instant) -> Option<ZoneResult> {
        let entries = self.entries.as_mut()?;
        let key = (zone, ip);
        match entries.get(&key) {
            Some((result, expires)) if *expires > now => Some(*result),
            Some(_) => {
                entries.pop(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps an answer for `ttl` from `now` (capped at [`MAX_TTL`]). A TTL of zero is
    /// not kept. Only answers are cached: a score, no data, or an answer that is not a
    /// score (`127.255.255.255`, an unexpected address); never a timeout or an error.
    pub fn put(
        &mut self,
        zone: usize,
        ip: IpAddr,
        result: ZoneResult,
        ttl: Duration,
        now: Instant,
    ) {
        let Some(entries) = self.entries.as_mut() else {
            return;
        };
        if ttl.is_zero() || !cacheable(&result) {
            return;
        }
        let Some(expires) = now.checked_add(ttl.min(MAX_TTL)) else {
            return;
        };
        entries.put((zone, ip), (result, expires));
    }

    /// The number of entries (expired ones included until they are looked up or pushed
    /// out).
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, LruCache::len)
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cacheable(result: &ZoneResult) -> bool {
    use crate::policy::Unknown;
    match result {
        ZoneResult::Score(_) | ZoneResult::NoData => true,
        ZoneResult::Unknown(Unknown::Refused | Unknown::Unexpected) => true,
        ZoneResult::Unknown(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Score, Unknown};

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn s(n: u8) -> ZoneResult {
        ZoneResult::Score(Score::new(n).unwrap())
    }

    #[test]
    fn keeps_for_the_ttl_only() {
        let t0 = Instant::now();
        let mut c = AnswerCache::new(10);
        c.put(0, ip(1), s(10), Duration::from_secs(60), t0);
        assert_eq!(c.get(0, ip(1), t0), Some(s(10)));
        assert_eq!(c.get(0, ip(1), t0 + Duration::from_secs(59)), Some(s(10)));
        assert_eq!(c.get(1, ip(1), t0), None, "per zone");
        assert_eq!(c.get(0, ip(1), t0 + Duration::from_secs(60)), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn bounded_least_recently_used_goes() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        let mut c = AnswerCache::new(3);
        for n in 1..=3 {
            c.put(0, ip(n), s(n), ttl, t0);
        }
        assert!(c.get(0, ip(1), t0).is_some()); // 1 is now the most recent
        c.put(0, ip(4), s(4), ttl, t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(0, ip(2), t0), None, "least recently used");
        assert!(c.get(0, ip(1), t0).is_some());
        assert!(c.get(0, ip(4), t0).is_some());
        for n in 0..=255 {
            c.put(0, ip(n), s(n.min(100)), ttl, t0);
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn what_is_cached() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut c = AnswerCache::new(10);
        c.put(0, ip(1), ZoneResult::NoData, ttl, t0);
        c.put(0, ip(2), ZoneResult::Unknown(Unknown::Refused), ttl, t0);
        c.put(0, ip(3), ZoneResult::Unknown(Unknown::Timeout), ttl, t0);
        c.put(0, ip(4), ZoneResult::Unknown(Unknown::ServFail), ttl, t0);
        c.put(0, ip(5), s(5), Duration::ZERO, t0);
        assert_eq!(c.get(0, ip(1), t0), Some(ZoneResult::NoData));
        assert_eq!(
            c.get(0, ip(2), t0),
            Some(ZoneResult::Unknown(Unknown::Refused))
        );
        assert_eq!(c.get(0, ip(3), t0), None);
        assert_eq!(c.get(0, ip(4), t0), None);
        assert_eq!(c.get(0, ip(5), t0), None);
    }

    #[test]
    fn ttl_is_capped_and_zero_capacity_caches_nothing() {
        let t0 = Instant::now();
        let mut c = AnswerCache::new(1);
        c.put(0, ip(1), s(1), Duration::from_secs(u64::MAX / 4), t0);
        assert_eq!(
            c.get(0, ip(1), t0 + MAX_TTL - Duration::from_secs(1)),
            Some(s(1))
        );
        assert_eq!(c.get(0, ip(1), t0 + MAX_TTL), None);
        let mut none = AnswerCache::new(0);
        none.put(0, ip(1), s(1), Duration::from_secs(60), t0);
        assert_eq!(none.get(0, ip(1), t0), None);
        assert!(none.is_empty());
    }
}
