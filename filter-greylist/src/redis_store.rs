//! Shared state for several MX hosts: the same keys and entries as the embedded store,
//! kept in Redis (`--store redis://HOST:PORT/DB`).
//!
//! - A decision first reads its keys with one `MGET` (atomic); if the policy changes
//!   nothing (a whitelisted client seen less than a minute ago: most decisions of a
//!   busy MX) that is all. Otherwise it is one optimistic transaction: `WATCH` the
//!   keys, `MGET` them, let the policy decide again, then `MULTI` / `SET … EXAT` /
//!   `DEL` / `EXEC`; a concurrent change of a watched key (another MX deciding the same
//!   triplet) makes `EXEC` fail and the decision is taken again. So the first-seen
//!   time is set once, by whoever is first.
//! - Every key carries its expiry (`EXAT`): Redis purges expired entries itself.
//! - Redis unreachable or failing: [`Store::decide`] returns an error at once (connect
//!   timeout 500 ms, then no new attempt for [`RETRY_AFTER`]), and the filter accepts
//!   the mail. Reads and writes time out after 1 s. Decisions never stall.
//! - Connections come from a small pool: each decision takes an idle connection (or
//!   opens one), uses it alone — a `WATCH` belongs to its connection, so a connection
//!   is never shared by two decisions in flight — and gives it back; at most
//!   [`MAX_IDLE`] are kept. Concurrent decisions (tokio's blocking pool) thus run on as
//!   many connections instead of waiting for one. An error drops the connection and
//!   every idle one (they lead to the same server).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisResult};

use crate::policy::{Change, Entry, Found, Key, Lookup, NEVER, Outcome, Time};
use crate::store::{Store, StoreError};

/// The prefix of every key this filter writes.
pub const PREFIX: &[u8] = b"filter-greylist:";
/// How long a failed connection keeps the store from trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How many idle connections are kept for the next decisions.
pub const MAX_IDLE: usize = 16;

fn redis_key(key: &Key) -> Vec<u8> {
    [PREFIX, key.encode().as_slice()].concat()
}

/// The Redis store.
pub struct RedisStore {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    down_until: Mutex<Option<Instant>>,
}

impl RedisStore {
    /// A store at `url` (`redis://HOST:PORT/DB`). Does not connect yet: Redis being
    /// down at start only means failing open until it is back.
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("--store {url:?}: {e}"))?;
        Ok(RedisStore {
            client,
            idle: Mutex::new(Vec::new()),
            down_until: Mutex::new(None),
        })
    }

    /// An idle connection, or a new one unless Redis failed less than [`RETRY_AFTER`]
    /// ago.
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(con) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(con);
        }
        if let Some(until) = *self.down_until.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < until
        {
            return Err(StoreError("Redis is unreachable (retrying soon)".into()));
        }
        self.client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|c| {
                c.set_read_timeout(Some(IO_TIMEOUT))?;
                c.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(c)
            })
            .map_err(|e| {
                self.failed();
                StoreError(format!("cannot connect to Redis: {e}"))
            })
    }

    /// Holds new connections back for [`RETRY_AFTER`] and drops the idle ones.
    fn failed(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + RETRY_AFTER);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs `f` on a connection of its own; a connection that failed is dropped.
    fn with_con<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut con = self.take()?;
        match f(&mut con) {
            Ok(v) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(con);
                }
                Ok(v)
            }
            Err(e) => {
                self.failed();
                Err(StoreError(format!("Redis: {e}")))
            }
        }
    }
}

impl RedisStore {
    /// Writes many entries in one pipeline: for bulk loads.
    pub fn import(&self, entries: &[(Key, Entry)]) -> Result<(), StoreError> {
        self.with_con(|con| {
            let mut pipe = redis::pipe();
            for (k, e) in entries {
                set_entry(&mut pipe, k, e);
            }
            pipe.query::<()>(con)
        })
    }
}

/// Adds `SET key value EXAT expiry` (no expiry for entries that live until removed).
fn set_entry(pipe: &mut redis::Pipeline, key: &Key, entry: &Entry) {
    let cmd = pipe
        .cmd("SET")
        .arg(redis_key(key))
        .arg(entry.encode().as_slice());
    if entry.expires != NEVER {
        cmd.arg("EXAT").arg(entry.expires.max(1));
    }
    cmd.ignore();
}

fn decode(v: Option<Vec<u8>>) -> Option<Entry> {
    v.and_then(|b| Entry::decode(&b).ok())
}

impl Store for RedisStore {
    fn decide(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Result<Outcome, StoreError> {
        let keys: Vec<Vec<u8>> = lookup.keys().into_iter().map(redis_key).collect();
        self.with_con(|con| {
            // one round trip first: MGET reads the keys atomically, and most decisions
            // of a busy MX (whitelisted clients) change nothing
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query(con)?;
            let outcome = decide(&Found::from_entries(
                lookup,
                values.into_iter().map(decode).collect(),
            ));
            if outcome.changes.is_empty() {
                return Ok(outcome);
            }
            // it writes: decide again under WATCH, so that a concurrent change aborts it
            redis::transaction(con, &keys, |con, pipe| {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query(con)?;
                let found = Found::from_entries(lookup, values.into_iter().map(decode).collect());
                let outcome = decide(&found);
                if outcome.changes.is_empty() {
                    return Ok(Some(outcome));
                }
                for change in &outcome.changes {
                    match change {
                        Change::Put(k, e) => set_entry(pipe, k, e),
                        Change::Delete(k) => {
                            pipe.cmd("DEL").arg(redis_key(k)).ignore();
                        }
                    }
                }
                let done: Option<()> = pipe.query(con)?;
                pipe.clear();
                Ok(done.map(|()| outcome))
            })
        })
    }

    fn purge(&self, _now: Time) -> Result<usize, StoreError> {
        // every key carries its expiry: Redis removes them itself
        Ok(0)
    }

    fn entries(&self) -> Result<Vec<(Key, Entry)>, StoreError> {
        self.with_con(|con| {
            let mut pattern = PREFIX.to_vec();
            pattern.push(b'*');
            let mut cursor: u64 = 0;
            let mut all = Vec::new();
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)?;
                for k in keys {
                    let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(con)?;
                    if let (Some(key), Some(entry)) = (Key::decode(&k[PREFIX.len()..]), decode(v)) {
                        all.push((key, entry));
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(all)
        })
    }
}
