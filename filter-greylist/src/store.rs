//! Where greylisting state lives: the [`Store`] trait, an in-memory store for tests,
//! and the embedded single-file store ([redb](https://www.redb.org)).
//!
//! A decision is atomic: [`Store::decide`] reads the entries of a [`Lookup`], asks the
//! policy, and writes its changes in one transaction, committed durably (fsync) before
//! it returns — so an answer smtpd got is never lost by a crash. Decisions that change
//! nothing (a whitelisted client refreshed less than a minute ago) take a read
//! transaction only.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::policy::{
    Change, Entry, Found, Key, Lookup, Outcome, Reason, Time, Timing, Verdict, whitelist_entry,
};

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Keys with their entries, as read from a store: `None` when absent or unreadable.
pub type ReadEntries = Vec<(Key, Option<Entry>)>;

/// What [`Store::read_ahead`] returns: each key asked for, with its entry.
pub type ReadAhead<'a> = Pin<Box<dyn Future<Output = Result<ReadEntries, StoreError>> + Send + 'a>>;

/// A store of greylisting state. Synchronous, called on tokio's blocking pool, but for
/// [`Store::read_ahead`], a future the filter awaits on its own thread.
pub trait Store: Send + Sync + 'static {
    /// Reads the entries of `lookup`, lets `decide` choose, writes its changes durably,
    /// and returns the outcome — atomically with respect to other decisions.
    fn decide(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Result<Outcome, StoreError>;

    /// A decision that only reads, answered at once without blocking: `Some` with
    /// the outcome if `decide` changes nothing, `None` when the decision writes (or
    /// this store cannot read without blocking; the default) and must go through
    /// [`Store::decide`] on the blocking pool. For the common case of a busy MX —
    /// whitelisted clients — this saves the hand-over to another thread.
    fn decide_read_only(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Option<Result<Outcome, StoreError>> {
        let _ = (lookup, decide);
        None
    }

    /// Whether [`Store::read_ahead`] reads: a store across the network, whose round
    /// trip is best taken while the SPF result is awaited, and without the hand-over
    /// to the blocking pool.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// Reads `keys` without blocking (on the caller's tokio runtime, which it needs),
    /// for a decision made once the SPF result is known (with
    /// [`Found::among`](crate::policy::Found::among)): each key with its entry, `None`
    /// when absent or unreadable. Only called when [`Store::reads_ahead`] says so.
    fn read_ahead(&self, keys: Vec<Key>) -> ReadAhead<'_> {
        let _ = keys;
        Box::pin(std::future::ready(Err(StoreError(
            "this store does not read ahead".into(),
        ))))
    }

    /// Removes the entries expired at `now`; returns how many.
    fn purge(&self, now: Time) -> Result<usize, StoreError>;

    /// Every entry (for tests and the admin view), in key order; unreadable ones skipped.
    fn entries(&self) -> Result<Vec<(Key, Entry)>, StoreError>;

    /// Whitelists `key` (a [`Key::WhiteNet`] or [`Key::WhiteDomain`]) now, or refreshes
    /// it; returns whether anything was written.
    fn whitelist(&self, key: &Key, timing: &Timing, now: Time) -> Result<bool, StoreError> {
        let lookup = Lookup::single(key);
        let outcome = self.decide(&lookup, &|found| Outcome {
            verdict: Verdict::Accept,
            reason: Reason::Whitelisted(key.clone()),
            changes: whitelist_entry(found.grey, timing, now)
                .map(|e| vec![Change::Put(key.clone(), e)])
                .unwrap_or_default(),
        })?;
        Ok(!outcome.changes.is_empty())
    }
}

/// The state in memory (tests, `--store memory`): lost when the process ends.
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<Key, Entry>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

fn apply_changes(map: &mut HashMap<Key, Entry>, changes: &[Change]) {
    for c in changes {
        match c {
            Change::Put(k, e) => {
                map.insert(k.clone(), *e);
            }
            Change::Delete(k) => {
                map.remove(k);
            }
        }
    }
}

impl Store for MemoryStore {
    fn decide(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Result<Outcome, StoreError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entries = lookup.keys().iter().map(|k| map.get(*k).copied()).collect();
        let found = Found::from_entries(lookup, entries);
        let outcome = decide(&found);
        apply_changes(&mut map, &outcome.changes);
        Ok(outcome)
    }

    fn purge(&self, now: Time) -> Result<usize, StoreError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, e| !e.expired(now));
        Ok(before - map.len())
    }

    fn entries(&self) -> Result<Vec<(Key, Entry)>, StoreError> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(Key, Entry)> = map.iter().map(|(k, e)| (k.clone(), *e)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("greylist");
const META: TableDefinition<&str, &str> = TableDefinition::new("filter-greylist-meta");
const FORMAT_KEY: &str = "format";
/// The format marker of our store files.
pub const FORMAT: &str = "filter-greylist 1";
/// The default store path.
pub const DEFAULT_PATH: &str = "/var/db/filter-greylist/greylist.redb";
/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// How long opening waits for another process to release the store.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How many expired entries one purge transaction removes at most.
const PURGE_BATCH: usize = 10_000;

/// Why the store file cannot be used. The filter stops with this message: it never
/// recreates a file it cannot read.
#[derive(Debug)]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, in words.
    pub why: String,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}: {}", self.path.display(), self.why)
    }
}

impl std::error::Error for OpenError {}

/// The embedded store: one redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    corrupt_seen: Mutex<u64>,
}

fn st<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError(format!("{what}: {e}"))
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its directory) if it does not exist.
    /// An existing file must be a filter-greylist store: a foreign or corrupt file is
    /// an error, never overwritten. An empty file (made with `touch` for ownership) is
    /// initialised.
    pub fn open(path: &Path) -> Result<RedbStore, OpenError> {
        let err = |why: String| OpenError {
            path: path.to_path_buf(),
            why,
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(err("is a directory".into())),
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        err(format!(
                            "cannot create the directory {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
                false
            }
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        if existing {
            let mut head = [0u8; 9];
            let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
            let n = f
                .read(&mut head)
                .map_err(|e| err(format!("cannot read: {e}")))?;
            if n < head.len() || head != REDB_MAGIC {
                return Err(err(
                    "is not a filter-greylist store (not a redb database file); it was left untouched: give another --store path, or move the file away if it is not needed"
                        .into(),
                ));
            }
        }
        // Probe an existing file read-only first (opening for writing changes its header):
        // a foreign redb file is then refused without a byte changed. A store of ours
        // that was not closed cleanly (kill -9) cannot be opened read-only; it is opened
        // for writing, which repairs it, and checked after.
        if existing {
            let probe = std::panic::catch_unwind(|| Database::builder().open_read_only(path));
            if let Ok(Ok(ro)) = probe {
                check_marker(&ro).map_err(err)?;
            }
        }
        // redb asserts on some damaged headers: a panic here must become an error. A
        // predecessor that smtpd is stopping may still hold the file's lock: wait for it.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let opened = loop {
            let opened = std::panic::catch_unwind(|| {
                if existing {
                    Database::open(path)
                } else {
                    Database::create(path)
                }
            });
            match opened {
                Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other,
            }
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(err(format!(
                    "is in use by another process (a running filter-greylist?) after waiting {} s",
                    LOCK_WAIT.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(err(format!(
                    "cannot open ({e}); the file was left untouched: restore it from a backup or move it away"
                )));
            }
            Err(_) => {
                return Err(err(
                    "is damaged (the database library could not read its header); the file was left untouched"
                        .into(),
                ));
            }
        };
        let store = RedbStore {
            db,
            path: path.to_path_buf(),
            corrupt_seen: Mutex::new(0),
        };
        store.check_format(existing).map_err(err)?;
        Ok(store)
    }

    /// A new file gets the format marker and the table; an existing one must have them.
    fn check_format(&self, existing: bool) -> Result<(), String> {
        if existing {
            return check_marker(&self.db);
        }
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(FORMAT_KEY, FORMAT).map_err(|e| e.to_string())?;
            txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }

    /// Writes many entries in one transaction (one commit): for bulk loads.
    pub fn import(&self, entries: &[(Key, Entry)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(st("begin write"))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(st("open table"))?;
            for (k, e) in entries {
                table
                    .insert(k.encode().as_slice(), e.encode().as_slice())
                    .map_err(st("write"))?;
            }
        }
        txn.commit().map_err(st("commit"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes a stored entry; a corrupt one is logged (once per 1000) and reads as
    /// absent, so that the next decision overwrites it.
    fn read_entry(&self, key: &Key, bytes: &[u8]) -> Option<Entry> {
        match Entry::decode(bytes) {
            Ok(e) => Some(e),
            Err(_) => {
                let mut n = self.corrupt_seen.lock().unwrap_or_else(|p| p.into_inner());
                if (*n).is_multiple_of(1000) {
                    log::warn!(
                        "store {}: the entry {key} is corrupt ({} bytes); skipped, it will be overwritten",
                        self.path.display(),
                        bytes.len()
                    );
                }
                *n += 1;
                None
            }
        }
    }

    fn found<T: ReadableTable<&'static [u8], &'static [u8]>>(
        &self,
        table: &T,
        lookup: &Lookup,
    ) -> Result<Found, StoreError> {
        let get = |key: &Key| -> Result<Option<Entry>, StoreError> {
            let v = table.get(key.encode().as_slice()).map_err(st("read"))?;
            Ok(v.and_then(|v| self.read_entry(key, v.value())))
        };
        let mut entries = Vec::new();
        for k in lookup.keys() {
            entries.push(get(k)?);
        }
        Ok(Found::from_entries(lookup, entries))
    }
}

/// Whether a redb database carries our format marker.
fn check_marker(db: &impl ReadableDatabase) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let format = match txn.open_table(META) {
        Ok(meta) => meta
            .get(FORMAT_KEY)
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_string()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    match format.as_deref() {
        Some(FORMAT) => Ok(()),
        Some(other) => Err(format!(
            "is a store of another format ({other:?}, expected {FORMAT:?}); it was left untouched"
        )),
        None => Err(
            "is a redb database of another program (no filter-greylist format marker); it was left untouched"
                .into(),
        ),
    }
}

impl Store for RedbStore {
    fn decide_read_only(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Option<Result<Outcome, StoreError>> {
        // a read transaction never waits for writers (copy-on-write); its pages are
        // cached by redb, so on a warm store this is a few microseconds
        let read = || -> Result<Option<Outcome>, StoreError> {
            let txn = self.db.begin_read().map_err(st("begin read"))?;
            let table = txn.open_table(ENTRIES).map_err(st("open table"))?;
            let outcome = decide(&self.found(&table, lookup)?);
            Ok(outcome.changes.is_empty().then_some(outcome))
        };
        read().transpose()
    }

    fn decide(
        &self,
        lookup: &Lookup,
        decide: &dyn Fn(&Found) -> Outcome,
    ) -> Result<Outcome, StoreError> {
        // read-only first: most decisions of a busy MX are whitelisted clients
        {
            let txn = self.db.begin_read().map_err(st("begin read"))?;
            let table = txn.open_table(ENTRIES).map_err(st("open table"))?;
            let outcome = decide(&self.found(&table, lookup)?);
            if outcome.changes.is_empty() {
                return Ok(outcome);
            }
        }
        // then decide again inside the write transaction (serialised with every other
        // writer), so two sessions of one triplet cannot both count as first attempt
        let txn = self.db.begin_write().map_err(st("begin write"))?;
        let outcome = {
            let mut table = txn.open_table(ENTRIES).map_err(st("open table"))?;
            let outcome = decide(&self.found(&table, lookup)?);
            for c in &outcome.changes {
                match c {
                    Change::Put(k, e) => {
                        table
                            .insert(k.encode().as_slice(), e.encode().as_slice())
                            .map_err(st("write"))?;
                    }
                    Change::Delete(k) => {
                        table.remove(k.encode().as_slice()).map_err(st("write"))?;
                    }
                }
            }
            outcome
        };
        txn.commit().map_err(st("commit"))?;
        Ok(outcome)
    }

    fn purge(&self, now: Time) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            // find a batch of expired (or unreadable) keys without blocking writers
            let doomed: Vec<Vec<u8>> = {
                let txn = self.db.begin_read().map_err(st("begin read"))?;
                let table = txn.open_table(ENTRIES).map_err(st("open table"))?;
                let mut doomed = Vec::new();
                for item in table.iter().map_err(st("scan"))? {
                    let (k, v) = item.map_err(st("scan"))?;
                    let dead = Entry::decode(v.value()).map_or(true, |e| e.expired(now));
                    if dead {
                        doomed.push(k.value().to_vec());
                        if doomed.len() >= PURGE_BATCH {
                            break;
                        }
                    }
                }
                doomed
            };
            if doomed.is_empty() {
                return Ok(total);
            }
            let txn = self.db.begin_write().map_err(st("begin write"))?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(st("open table"))?;
                for k in &doomed {
                    // an entry refreshed since the scan stays
                    let still_dead = match table.get(k.as_slice()).map_err(st("read"))? {
                        Some(v) => Entry::decode(v.value()).map_or(true, |e| e.expired(now)),
                        None => false,
                    };
                    if still_dead {
                        table.remove(k.as_slice()).map_err(st("write"))?;
                        total += 1;
                    }
                }
            }
            txn.commit().map_err(st("commit"))?;
            if doomed.len() < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    fn entries(&self) -> Result<Vec<(Key, Entry)>, StoreError> {
        let txn = self.db.begin_read().map_err(st("begin read"))?;
        let table = txn.open_table(ENTRIES).map_err(st("open table"))?;
        let mut all = Vec::new();
        for item in table.iter().map_err(st("scan"))? {
            let (k, v) = item.map_err(st("scan"))?;
            if let (Some(key), Ok(entry)) = (Key::decode(k.value()), Entry::decode(v.value())) {
                all.push((key, entry));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Attempt, Grouping, Spf, Timing, Verdict, decide, lookup};

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "greylist-store-{name}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn attempt(client: &str) -> Attempt {
        Attempt {
            client: client.parse().unwrap(),
            sender: "a@example.org".into(),
            helo: "mx.example.org".into(),
            rcpt: "u@lab.test".into(),
            spf: Spf::None,
            trap: false,
        }
    }

    fn run(store: &dyn Store, a: &Attempt, now: Time) -> Outcome {
        let timing = Timing::default();
        let l = lookup(a, Grouping::Network);
        store
            .decide(&l, &|found| decide(&timing, &l, found, now, false))
            .unwrap()
    }

    const T0: Time = 1_700_000_000;

    fn scenario(store: &dyn Store) {
        let a = attempt("192.0.2.10");
        assert_eq!(run(store, &a, T0).verdict, Verdict::Tempfail);
        assert_eq!(run(store, &a, T0 + 10).verdict, Verdict::Tempfail);
        assert_eq!(run(store, &a, T0 + 300).verdict, Verdict::Accept);
        let all = store.entries().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, Key::WhiteNet("192.0.2.0/24".parse().unwrap()));
        let b = attempt("198.51.100.1");
        run(store, &b, T0);
        assert_eq!(store.entries().unwrap().len(), 2);
        // the grey entry expires 4 h after its attempt, the white one 30 d after use
        assert_eq!(store.purge(T0 + 4 * 3600).unwrap(), 1);
        assert_eq!(store.entries().unwrap().len(), 1);
        assert_eq!(store.purge(T0 + 300 + 30 * 86400).unwrap(), 1);
        assert!(store.entries().unwrap().is_empty());
    }

    #[test]
    fn memory_store() {
        scenario(&MemoryStore::new());
    }

    #[test]
    fn redb_store_and_reopen() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("sub/greylist.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            scenario(&store);
            run(&store, &attempt("192.0.2.10"), T0);
        }
        let store = RedbStore::open(&path).unwrap();
        let a = attempt("192.0.2.10");
        assert_eq!(
            run(&store, &a, T0 + 10).reason,
            crate::policy::Reason::EarlyRetry(290)
        );
    }

    #[test]
    fn foreign_files_are_refused_and_left_alone() {
        let dir = TempDir::new("foreign");
        let text = dir.0.join("text");
        std::fs::write(&text, "hello, not a database\n").unwrap();
        let e = RedbStore::open(&text).err().unwrap();
        assert!(
            e.to_string().contains("is not a filter-greylist store"),
            "{e}"
        );
        assert_eq!(std::fs::read(&text).unwrap(), b"hello, not a database\n");

        // a redb file of another program
        let other = dir.0.join("other.redb");
        {
            let db = Database::create(&other).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let t: TableDefinition<&str, u64> = TableDefinition::new("things");
                txn.open_table(t).unwrap().insert("x", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let before = std::fs::read(&other).unwrap();
        let e = RedbStore::open(&other).err().unwrap();
        assert!(e.to_string().contains("another program"), "{e}");
        assert!(
            std::fs::read(&other).unwrap() == before,
            "the file was changed"
        );

        // redb's signature followed by garbage
        let damaged = dir.0.join("damaged.redb");
        let mut bytes = REDB_MAGIC.to_vec();
        bytes.extend(std::iter::repeat_n(0xa5u8, 5000));
        std::fs::write(&damaged, &bytes).unwrap();
        let e = RedbStore::open(&damaged).err().unwrap();
        assert!(e.to_string().starts_with("store "), "{e}");
        assert!(
            std::fs::read(&damaged).unwrap() == bytes,
            "the file was changed"
        );

        assert!(
            RedbStore::open(&dir.0)
                .err()
                .unwrap()
                .to_string()
                .contains("directory")
        );

        // an empty file is initialised
        let empty = dir.0.join("empty.redb");
        std::fs::write(&empty, b"").unwrap();
        RedbStore::open(&empty).unwrap();
        drop(RedbStore::open(&empty).unwrap());
    }

    #[test]
    fn a_corrupt_entry_is_skipped_and_overwritten() {
        let dir = TempDir::new("corrupt");
        let path = dir.0.join("g.redb");
        let store = RedbStore::open(&path).unwrap();
        let a = attempt("192.0.2.10");
        let l = lookup(&a, Grouping::Network);
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ENTRIES).unwrap();
                t.insert(l.grey.encode().as_slice(), &b"junk"[..]).unwrap();
                t.insert(&b"not a key"[..], &b"junk"[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(store.entries().unwrap().is_empty());
        let o = run(&store, &a, T0);
        assert_eq!(o.reason, crate::policy::Reason::FirstAttempt);
        assert_eq!(store.entries().unwrap().len(), 1);
        // the purge removes what cannot be read
        assert_eq!(store.purge(T0).unwrap(), 1);
        assert_eq!(store.entries().unwrap().len(), 1);
    }
}
