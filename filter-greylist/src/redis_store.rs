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
//!   is never shared by two decisions in flight — and gives it back. At most
//!   [`MAX_CONNECTIONS`] are open: concurrent decisions (tokio's blocking pool) run on
//!   as many connections instead of waiting for one, and beyond that wait (at most
//!   1 s, then fail open) for one to come back rather than open and close connections.
//!   An error drops the connection and every idle one (they lead to the same server).
//! - The filter reads a recipient's keys ahead (one `MGET`, while the SPF result is
//!   awaited) over one more connection, asynchronous and multiplexed, on the filter's
//!   own thread: a whitelisted client's decision then takes no hand-over to the
//!   blocking pool, whose thread wake-ups cost more than the round trip itself.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Connection, RedisResult};

use crate::policy::{Change, Entry, Found, Key, Lookup, NEVER, Outcome, Time};
use crate::store::{ReadAhead, Store, StoreError};

/// The prefix of every key this filter writes.
pub const PREFIX: &[u8] = b"filter-greylist:";
/// How long a failed connection keeps the store from trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// The most connections open at once (decisions in flight beyond that wait for one).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a decision waits for a connection when all are busy before failing open.
const POOL_WAIT: Duration = Duration::from_secs(1);

fn redis_key(key: &Key) -> Vec<u8> {
    [PREFIX, key.encode().as_slice()].concat()
}

/// The Redis store.
pub struct RedisStore {
    client: Client,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// The connection reads ahead go over, opened on the first one (inside the
    /// filter's runtime); dropped on an error with the pool's connections.
    reader: Mutex<Option<MultiplexedConnection>>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Connection>,
    /// Connections open (idle or in use).
    open: usize,
    down_until: Option<Instant>,
}

impl RedisStore {
    /// A store at `url` (`redis://HOST:PORT/DB`). Does not connect yet: Redis being
    /// down at start only means failing open until it is back.
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("--store {url:?}: {e}"))?;
        Ok(RedisStore {
            client,
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            reader: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_reader(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection for reads ahead: the open one, or a new one (unless Redis failed
    /// less than [`RETRY_AFTER`] ago). Its requests time out like the pool's.
    async fn reader(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(con) = self.lock_reader().as_ref() {
            return Ok(con.clone());
        }
        if let Some(until) = self.lock().down_until
            && Instant::now() < until
        {
            return Err(StoreError("Redis is unreachable (retrying soon)".into()));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(con) => {
                // two first reads may both connect: the later one's is kept
                *self.lock_reader() = Some(con.clone());
                Ok(con)
            }
            Err(e) => {
                self.failed(false);
                Err(StoreError(format!("cannot connect to Redis: {e}")))
            }
        }
    }

    /// An idle connection, or a new one (unless Redis failed less than [`RETRY_AFTER`]
    /// ago), or, with [`MAX_CONNECTIONS`] in use, the next one given back.
    fn take(&self) -> Result<Connection, StoreError> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut pool = self.lock();
        loop {
            if let Some(con) = pool.idle.pop() {
                return Ok(con);
            }
            if let Some(until) = pool.down_until
                && Instant::now() < until
            {
                return Err(StoreError("Redis is unreachable (retrying soon)".into()));
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let connected = self
                    .client
                    .get_connection_with_timeout(CONNECT_TIMEOUT)
                    .and_then(|c| {
                        c.set_read_timeout(Some(IO_TIMEOUT))?;
                        c.set_write_timeout(Some(IO_TIMEOUT))?;
                        Ok(c)
                    });
                return connected.map_err(|e| {
                    self.failed(true);
                    StoreError(format!("cannot connect to Redis: {e}"))
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError(format!(
                    "all {MAX_CONNECTIONS} Redis connections busy for {POOL_WAIT:?}"
                )));
            }
            pool = self
                .returned
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A connection that failed is gone (`pooled`: one of the pool's, counted in
    /// `open`, else the reader or a connect that was not counted): holds new
    /// connections back for [`RETRY_AFTER`] and drops the idle ones and the reader
    /// (they lead to the same server).
    fn failed(&self, pooled: bool) {
        let mut pool = self.lock();
        pool.down_until = Some(Instant::now() + RETRY_AFTER);
        pool.open = pool
            .open
            .saturating_sub(usize::from(pooled) + pool.idle.len());
        pool.idle.clear();
        drop(pool);
        self.lock_reader().take();
        // waiters fail fast now instead of waiting for POOL_WAIT
        self.returned.notify_all();
    }

    /// Runs `f` on a connection of its own; a connection that failed is dropped.
    fn with_con<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut con = self.take()?;
        match f(&mut con) {
            Ok(v) => {
                self.lock().idle.push(con);
                self.returned.notify_one();
                Ok(v)
            }
            Err(e) => {
                drop(con);
                self.failed(true);
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

/// The entries at `names` (Redis keys), read atomically; `None`: absent or unreadable.
fn mget(con: &mut Connection, names: &[Vec<u8>]) -> RedisResult<Vec<Option<Entry>>> {
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(names).query(con)?;
    Ok(values.into_iter().map(decode).collect())
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
            let outcome = decide(&Found::from_entries(lookup, mget(con, &keys)?));
            if outcome.changes.is_empty() {
                return Ok(outcome);
            }
            // it writes: decide again under WATCH, so that a concurrent change aborts it
            redis::transaction(con, &keys, |con, pipe| {
                let found = Found::from_entries(lookup, mget(con, &keys)?);
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

    fn reads_ahead(&self) -> bool {
        true
    }

    fn read_ahead(&self, keys: Vec<Key>) -> ReadAhead<'_> {
        Box::pin(async move {
            let names: Vec<Vec<u8>> = keys.iter().map(redis_key).collect();
            let mut con = self.reader().await?;
            let values: RedisResult<Vec<Option<Vec<u8>>>> =
                redis::cmd("MGET").arg(&names).query_async(&mut con).await;
            match values {
                Ok(values) => Ok(keys
                    .into_iter()
                    .zip(values.into_iter().map(decode))
                    .collect()),
                Err(e) => {
                    self.failed(false);
                    Err(StoreError(format!("Redis: {e}")))
                }
            }
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
