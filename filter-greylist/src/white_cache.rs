//! Whitelist entries read from a store across the network (Redis), kept for a moment so
//! that the next sessions of the same client network or sender domain are decided
//! without a round trip. A busy MX sees the same whitelisted networks (a big sender's
//! outbound hosts) many times a second; each session would otherwise read the same two
//! or three keys again at MAIL FROM, and its first recipient would wait for that read.
//!
//! Only whitelist keys are kept ([`Key::WhiteNet`], [`Key::WhiteDomain`]): they do not
//! depend on the recipient and change rarely (whitelisted once, refreshed at most once
//! a minute). What this process writes is forgotten at once ([`WhiteCache::forget`]);
//! what another process writes (another MX, `filter-greylist remove`) is seen within
//! [`WHITE_CACHE_MAX_AGE`]. A read served from here keeps the time it was read from
//! the store, so a session's own limit on how old its read may be
//! (`filter::WHITE_READ_MAX_AGE`) counts from that moment, not from the session's.
//!
//! Pure: the caller passes the time.

use std::collections::HashMap;

use crate::policy::{Entry, Key, Time};
use crate::store::ReadEntries;

/// How long, in seconds, entries read from the store serve later sessions.
pub const WHITE_CACHE_MAX_AGE: Time = 2;

/// How many keys are kept at most (about 0.5 MB): far more than the distinct networks
/// and domains a busy MX sees within [`WHITE_CACHE_MAX_AGE`]. When full, the reads too
/// old to serve go; if none is, all go.
pub const WHITE_CACHE_CAPACITY: usize = 4096;

/// Recently read whitelist entries: per key, the entry (or its absence) and when it
/// was read.
#[derive(Debug)]
pub struct WhiteCache {
    entries: HashMap<Key, (Time, Option<Entry>)>,
    capacity: usize,
}

impl Default for WhiteCache {
    fn default() -> Self {
        WhiteCache::new(WHITE_CACHE_CAPACITY)
    }
}

/// Whether `key` is one this cache keeps.
fn kept(key: &Key) -> bool {
    matches!(key, Key::WhiteNet(_) | Key::WhiteDomain(_))
}

impl WhiteCache {
    /// An empty cache of at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        WhiteCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Every one of `keys` with its entry, and when the oldest of them was read, if all
    /// are whitelist keys read at most [`WHITE_CACHE_MAX_AGE`] before `now`; `None`
    /// otherwise (the store is then read for all of them).
    pub fn get_all(&self, keys: &[Key], now: Time) -> Option<(Time, ReadEntries)> {
        let mut oldest = now;
        let mut read = Vec::with_capacity(keys.len());
        for key in keys {
            let (at, entry) = self.entries.get(key)?;
            if now.saturating_sub(*at) > WHITE_CACHE_MAX_AGE {
                return None;
            }
            oldest = oldest.min(*at);
            read.push((key.clone(), *entry));
        }
        (!read.is_empty()).then_some((oldest, read))
    }

    /// Keeps the whitelist keys of `read`, entries the store held at `at`.
    pub fn remember(&mut self, read: &[(Key, Option<Entry>)], at: Time) {
        for (key, entry) in read.iter().filter(|(key, _)| kept(key)) {
            if self.entries.len() >= self.capacity && !self.entries.contains_key(key) {
                self.make_room(at);
            }
            if self.entries.len() < self.capacity {
                self.entries.insert(key.clone(), (at, *entry));
            }
        }
    }

    /// Drops `keys` (this process is writing them).
    pub fn forget<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) {
        for key in keys {
            self.entries.remove(key);
        }
    }

    /// How many keys are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops what is too old to serve; if that frees nothing, everything (a burst of
    /// distinct clients within the max age: they would not have been served anyway
    /// before most of them are too old).
    fn make_room(&mut self, now: Time) {
        self.entries
            .retain(|_, (at, _)| now.saturating_sub(*at) <= WHITE_CACHE_MAX_AGE);
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Origin;

    fn net(s: &str) -> Key {
        Key::WhiteNet(s.parse().unwrap())
    }

    fn domain(s: &str) -> Key {
        Key::WhiteDomain(s.into())
    }

    fn entry(last_seen: Time) -> Entry {
        Entry {
            first_seen: 1,
            last_seen,
            count: 3,
            expires: 1_000_000,
        }
    }

    #[test]
    fn a_read_serves_until_it_is_older_than_the_max_age() {
        let mut cache = WhiteCache::default();
        let keys = [net("192.0.2.0/24"), domain("example.org")];
        cache.remember(
            &[(keys[0].clone(), Some(entry(90))), (keys[1].clone(), None)],
            100,
        );
        let expected = vec![(keys[0].clone(), Some(entry(90))), (keys[1].clone(), None)];
        assert_eq!(cache.get_all(&keys, 100), Some((100, expected.clone())));
        assert_eq!(
            cache.get_all(&keys, 100 + WHITE_CACHE_MAX_AGE),
            Some((100, expected))
        );
        assert_eq!(cache.get_all(&keys, 101 + WHITE_CACHE_MAX_AGE), None);
    }

    #[test]
    fn all_keys_or_none_and_the_oldest_read_time() {
        let mut cache = WhiteCache::default();
        cache.remember(&[(net("192.0.2.0/24"), Some(entry(90)))], 100);
        cache.remember(&[(domain("example.org"), Some(entry(95)))], 101);
        let both = [net("192.0.2.0/24"), domain("example.org")];
        assert_eq!(cache.get_all(&both, 101).map(|(at, _)| at), Some(100));
        // one key never read: the store is asked for all of them
        assert_eq!(
            cache.get_all(&[net("192.0.2.0/24"), domain("example.net")], 101),
            None
        );
        // one key too old: likewise
        assert_eq!(cache.get_all(&both, 100 + WHITE_CACHE_MAX_AGE + 1), None);
        // no keys: nothing to serve
        assert_eq!(cache.get_all(&[], 101), None);
    }

    #[test]
    fn only_whitelist_keys_are_kept() {
        let mut cache = WhiteCache::default();
        let grey = Key::Grey {
            origin: Origin::Net("192.0.2.0/24".parse().unwrap()),
            sender: "a@example.org".into(),
            rcpt: "b@example.net".into(),
        };
        let trap = Key::Trap("192.0.2.0/24".parse().unwrap());
        let greytrap = Key::Greytrap("trap@example.net".into());
        cache.remember(
            &[
                (grey.clone(), Some(entry(1))),
                (trap.clone(), Some(entry(1))),
                (greytrap.clone(), Some(entry(1))),
                (net("192.0.2.0/24"), Some(entry(1))),
            ],
            10,
        );
        assert_eq!(cache.len(), 1);
        for key in [grey, trap, greytrap] {
            assert_eq!(cache.get_all(&[key], 10), None);
        }
    }

    #[test]
    fn what_this_process_writes_is_forgotten() {
        let mut cache = WhiteCache::default();
        let keys = [net("192.0.2.0/24"), domain("example.org")];
        cache.remember(
            &[(keys[0].clone(), Some(entry(1))), (keys[1].clone(), None)],
            10,
        );
        cache.forget(&keys[1..]);
        assert_eq!(cache.get_all(&keys, 10), None);
        assert!(cache.get_all(&keys[..1], 10).is_some());
    }

    #[test]
    fn a_newer_read_replaces_an_older_one() {
        let mut cache = WhiteCache::default();
        let key = net("192.0.2.0/24");
        cache.remember(&[(key.clone(), None)], 10);
        cache.remember(&[(key.clone(), Some(entry(11)))], 11);
        assert_eq!(
            cache.get_all(std::slice::from_ref(&key), 11),
            Some((11, vec![(key, Some(entry(11)))]))
        );
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let mut cache = WhiteCache::new(4);
        for i in 0..4u8 {
            cache.remember(&[(net(&format!("192.0.{i}.0/24")), None)], 10);
        }
        assert_eq!(cache.len(), 4);
        // full of reads young enough to serve: all go
        cache.remember(&[(net("198.51.100.0/24"), None)], 11);
        assert_eq!(cache.len(), 1);
        for i in 0..3u8 {
            cache.remember(&[(net(&format!("203.0.{i}.0/24")), None)], 30);
        }
        assert_eq!(cache.len(), 4);
        // the one read at 11 is too old to serve at 30 + max age: only it goes
        cache.remember(&[(domain("example.org"), None)], 30 + WHITE_CACHE_MAX_AGE);
        assert_eq!(cache.len(), 4);
        assert_eq!(
            cache.get_all(&[net("198.51.100.0/24")], 30 + WHITE_CACHE_MAX_AGE),
            None
        );
        // a key already kept is replaced in place, whatever the fill
        cache.remember(&[(domain("example.org"), Some(entry(5)))], 33);
        assert_eq!(cache.len(), 4);
    }
}
