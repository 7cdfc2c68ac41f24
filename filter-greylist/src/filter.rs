//! The glue: [`Greylist`] implements [`opensmtpd_filter::Filter`] with the
//! [`policy`](crate::policy), the [`lists`](crate::lists), an [`SpfChecker`] and a
//! [`Store`].
//!
//! Only `rcpt-to` is registered (with the reports that build session state). Each
//! recipient is decided on its own: exemptions first (local, authenticated,
//! allowlisted), then SPF (once per sender per session), then the store, on tokio's
//! blocking pool, committed before the answer. A store that fails lets mail through
//! (fail open) and says so in the log.
//!
//! The SPF check starts as soon as smtpd reports the MAIL FROM it accepted, on a task
//! of the session's own, so its DNS lookups run while the client sends its RCPT TO
//! (a whole round trip for a client that does not pipeline); the first recipient
//! then waits only for what is left of it. A session that ends, or a new sender,
//! cancels a check still running. A store across the network (Redis) is read at the
//! same moment for the sender's whitelist entries (its client network, its domain),
//! which do not depend on the recipient: a whitelisted client's recipients — most of
//! a busy MX's — are then decided without a round trip to the store; and that read
//! serves the next sessions of the same network and domain for a moment
//! ([`white_cache`](crate::white_cache)), so they need none at all. And a client
//! whose network is whitelisted is answered without waiting for the SPF check at all
//! when no result could change the answer or what is written (see
//! [`settled_without_spf`]); when that is already known at MAIL FROM (from the embedded
//! store, or from a read of moments ago), the check is not even started.

use std::net::IpAddr;
use std::sync::Arc;

use opensmtpd_filter::protocol::{
    Decision, Event, EventKind, Fcrdns, Interest, Phase, Report, SmtpReply, Subsystem, TxResult,
};
use opensmtpd_filter::session::{SESSION_REPORTS, SessionInfo};
use opensmtpd_filter::{Filter, Session};

use crate::lists::{Allowed, SharedLists};
use crate::policy::{
    Attempt, Exemption, Found, Grouping, Key, Outcome, Spf, Time, Timing, Verdict, client_net,
    decide, decide_whitelisted, domain_of, keys_for_any_spf, lookup, settled_without_spf,
    white_keys_for_any_spf,
};
use crate::spf::SpfChecker;
use crate::store::{ReadEntries, Store};
use crate::white_cache::WhiteCache;

/// Where the time comes from (a fake one in tests).
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> Time;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The filter.
pub struct Greylist<C> {
    timing: Timing,
    grouping: Grouping,
    reply: SmtpReply,
    trap_reply: SmtpReply,
    spf: Arc<C>,
    store: Arc<dyn Store>,
    lists: Arc<SharedLists>,
    clock: Arc<dyn Clock>,
    last_store_warning: std::sync::Mutex<Option<std::time::Instant>>,
    store_slots: tokio::sync::Semaphore,
    /// Whitelist entries recently read from a store that reads ahead, for the next
    /// sessions of the same network or domain.
    white_cache: Arc<std::sync::Mutex<WhiteCache>>,
}

/// How many store calls run on the blocking pool at once, and how many threads that
/// pool may have (`main.rs`). More would only add threads waiting for the same lock
/// (redb's writer) or the same connections (Redis pool) — and each thread that ever
/// ran brings its own malloc arena, which the soak saw as a resident size still
/// growing after thousands of sessions (tokio's default allows 512 threads; 29 were
/// seen with 16 permits, as the pool starts a thread when none is idle yet).
pub const STORE_CONCURRENCY: usize = 8;

/// How often a failing store is reported.
pub const STORE_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// How long whitelist entries read at MAIL FROM may decide the sender's recipients,
/// in seconds: a pipelining client sends them all at once, a slow one within seconds.
/// After that the store is read again for each, so that an entry removed meanwhile
/// (`filter-greylist remove`) is not used for long.
pub const WHITE_READ_MAX_AGE: Time = 5;

/// The filter's state for one session: the SPF result of the current sender, and its
/// whitelist entries as read when smtpd accepted its MAIL FROM.
#[derive(Default)]
pub struct SessionState {
    spf: SenderSpf,
    white: WhiteRead,
}

/// Where the SPF check of a sender is.
#[derive(Default)]
enum SenderSpf {
    /// Not started.
    #[default]
    None,
    /// Running since the MAIL FROM (its own timeout bounds it).
    Checking { sender: String, task: Task<Spf> },
    /// Done.
    Known { sender: String, result: Spf },
}

/// Where the read of a sender's whitelist entries is (a store that reads ahead only).
#[derive(Default)]
enum WhiteRead {
    /// Not started.
    #[default]
    None,
    /// Started at `at` (`None` from the task: the read failed).
    Reading {
        sender: String,
        at: Time,
        task: Task<Option<ReadEntries>>,
    },
    /// Done.
    Read {
        sender: String,
        at: Time,
        entries: ReadEntries,
    },
}

/// Work on a task of its own, cancelled when dropped.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The whitelist entries in `white` if they were read for `sender`, at most
/// [`WHITE_READ_MAX_AGE`] before `now`.
async fn white_entries(white: WhiteRead, sender: &str, now: Time) -> Option<(Time, ReadEntries)> {
    let (at, entries) = match white {
        WhiteRead::Reading {
            sender: s,
            at,
            mut task,
        } if s == sender => (at, (&mut task.0).await.ok().flatten()?),
        WhiteRead::Read {
            sender: s,
            at,
            entries,
        } if s == sender => (at, entries),
        _ => return None,
    };
    (now.saturating_sub(at) <= WHITE_READ_MAX_AGE).then_some((at, entries))
}

/// The lock of `mutex`, even if a thread panicked holding it (the data stays usable:
/// every change under these locks is a single insert or removal).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn lower(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_lowercase()
}

/// The current transaction's sender, lowercase (empty for the null sender or none).
fn sender_of(info: &SessionInfo) -> String {
    info.transaction
        .as_ref()
        .and_then(|t| t.mail_from.as_deref())
        .map(lower)
        .unwrap_or_default()
}

/// The client's HELO/EHLO name, lowercase (empty before it gave one).
fn helo_of(info: &SessionInfo) -> String {
    info.helo.as_deref().map(lower).unwrap_or_default()
}

fn client_text(info: &SessionInfo) -> String {
    if info.is_local() {
        return "local".into();
    }
    info.client_ip()
        .map_or_else(|| "unknown".into(), |ip| ip.to_string())
}

impl<C: SpfChecker> Greylist<C> {
    /// A greylister answering `reply` to greylisted recipients.
    pub fn new(
        timing: Timing,
        grouping: Grouping,
        reply: SmtpReply,
        spf: Arc<C>,
        store: Arc<dyn Store>,
        lists: Arc<SharedLists>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Greylist {
            timing,
            grouping,
            trap_reply: reply.clone(),
            reply,
            spf,
            store,
            lists,
            clock,
            last_store_warning: std::sync::Mutex::new(None),
            store_slots: tokio::sync::Semaphore::new(STORE_CONCURRENCY),
            white_cache: Arc::default(),
        }
    }

    /// Answers trapped clients with `reply` (by default, the greylisting reply).
    pub fn with_trap_reply(mut self, reply: SmtpReply) -> Self {
        self.trap_reply = reply;
        self
    }

    fn exemption(&self, info: &SessionInfo, sender: &str, rcpt: &str) -> Option<Exemption> {
        if info.is_local() {
            return Some(Exemption::Local);
        }
        if info.authenticated_user().is_some() {
            return Some(Exemption::Authenticated);
        }
        let Some(ip) = info.client_ip() else {
            return Some(Exemption::NoAddress);
        };
        let rdns = (info.fcrdns == Some(Fcrdns::Pass))
            .then(|| info.rdns.as_deref().map(lower))
            .flatten();
        self.lists
            .get()
            .allows(ip, rdns.as_deref(), sender, rcpt)
            .map(|a| match a {
                Allowed::Client => Exemption::AllowedClient,
                Allowed::Sender => Exemption::AllowedSender,
                Allowed::Recipient => Exemption::AllowedRecipient,
            })
    }

    async fn spf_for(&self, state: &mut SessionState, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        let result = match std::mem::take(&mut state.spf) {
            SenderSpf::Known { sender: s, result } if s == sender => result,
            SenderSpf::Checking {
                sender: s,
                mut task,
            } if s == sender => match (&mut task.0).await {
                Ok(result) => result,
                Err(e) => {
                    log::warn!("the SPF check of <{sender}> failed: {e}");
                    Spf::TempError
                }
            },
            // none yet, or one for an earlier sender (dropping it cancels it)
            _ => self.spf.check(ip, helo, sender).await,
        };
        state.spf = SenderSpf::Known {
            sender: sender.to_string(),
            result,
        };
        result
    }

    /// Starts the SPF check of the sender smtpd just accepted, and the read of its
    /// whitelist entries from a store that reads ahead, unless no recipient of it will
    /// need them (a local, authenticated or allowlisted client or sender; for the
    /// check, a client whose whitelisted network settles it already).
    fn start_checks(&self, session: &mut Session<SessionState>) {
        let info = session.info();
        let sender = sender_of(info);
        if self.exemption(info, &sender, "").is_some() {
            return;
        }
        let (Some(ip), Ok(runtime)) = (info.client_ip(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let helo = helo_of(info);
        let now = self.clock.now();
        if self.store.reads_ahead() {
            let keys = white_keys_for_any_spf(ip, &sender, &helo, self.grouping);
            let cached = lock(&self.white_cache).get_all(&keys, now);
            session.state.white = match cached {
                // read for an earlier session moments ago: no round trip
                Some((at, entries)) => WhiteRead::Read {
                    sender: sender.clone(),
                    at,
                    entries,
                },
                None => {
                    let store = Arc::clone(&self.store);
                    let cache = Arc::clone(&self.white_cache);
                    let task = runtime.spawn(async move {
                        let read = store.read_ahead(keys).await.ok()?;
                        lock(&cache).remember(&read, now);
                        Some(read)
                    });
                    WhiteRead::Reading {
                        sender: sender.clone(),
                        at: now,
                        task: Task(task),
                    }
                }
            };
        }
        // A client that the entries at hand already settle, whatever its SPF result (a
        // network whitelisted in the embedded store, or in a read of moments ago), needs
        // no check: its DNS queries would only take CPU from the sessions that do. A
        // recipient that the entries do not settle after all (a greytrap, a refresh
        // come due) runs the check when it comes.
        let white_at_hand = match &session.state.white {
            WhiteRead::None => None,
            WhiteRead::Read { entries, .. } => Some(entries),
            WhiteRead::Reading { .. } => {
                return self.spawn_spf(session, &runtime, ip, helo, sender);
            }
        };
        let any_recipient = Attempt {
            client: ip,
            sender: sender.clone(),
            helo: helo.clone(),
            rcpt: String::new(),
            spf: Spf::NotChecked,
            trap: false,
        };
        if self
            .settled_without_spf(&any_recipient, white_at_hand, now)
            .is_some()
        {
            // (a check still running for an earlier sender is cancelled)
            session.state.spf = SenderSpf::None;
            return;
        }
        self.spawn_spf(session, &runtime, ip, helo, sender);
    }

    /// Starts the SPF check of `sender` on a task of its own.
    fn spawn_spf(
        &self,
        session: &mut Session<SessionState>,
        runtime: &tokio::runtime::Handle,
        ip: IpAddr,
        helo: String,
        sender: String,
    ) {
        let spf = Arc::clone(&self.spf);
        let checked = sender.clone();
        let task = runtime.spawn(async move { spf.check(ip, &helo, &checked).await });
        session.state.spf = SenderSpf::Checking {
            sender,
            task: Task(task),
        };
    }

    /// Whitelists `key` in the background (nobody waits for it) and logs it.
    fn learn(&self, key: Key, why: String) {
        let store = Arc::clone(&self.store);
        let timing = self.timing;
        let now = self.clock.now();
        let cache = Arc::clone(&self.white_cache);
        tokio::spawn(async move {
            let k = key.clone();
            let written =
                tokio::task::spawn_blocking(move || store.whitelist(&k, &timing, now)).await;
            lock(&cache).forget([&key]);
            match written {
                Ok(Ok(true)) => log::info!("outgoing: {why}: whitelisted {key}"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => log::warn!("outgoing: {why}: cannot whitelist {key}: {e}"),
                Err(e) => log::warn!("outgoing: {why}: the store task failed: {e}"),
            }
        });
    }

    /// Says why the store fails, at most once a minute (the decision lines say each
    /// acceptance).
    fn warn_store(&self, error: &str) {
        let mut last = lock(&self.last_store_warning);
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= STORE_WARNING_INTERVAL) {
            *last = Some(now);
            log::warn!(
                "store failing ({error}): mail is accepted without greylisting (fail open); said at most once a minute"
            );
        }
    }

    /// The decision on `attempt` if no SPF result can change it (see
    /// [`settled_without_spf`]): from `white`, the entries read at MAIL FROM, for a
    /// store that reads ahead; from a read-only look into the store otherwise (an
    /// embedded store's read transaction takes microseconds; a store that cannot
    /// decide read-only, such as the memory store, never settles early).
    fn settled_without_spf(
        &self,
        attempt: &Attempt,
        white: Option<&ReadEntries>,
        now: Time,
    ) -> Option<Outcome> {
        let lookup_for = |spf| lookup(&attempt.with_spf(spf), self.grouping);
        match white {
            Some(read) => settled_without_spf(|spf| {
                decide_whitelisted(&self.timing, &lookup_for(spf), read, now)
            }),
            None if !self.store.reads_ahead() => settled_without_spf(|spf| {
                let l = lookup_for(spf);
                let decide_one = |found: &Found| decide(&self.timing, &l, found, now, attempt.trap);
                self.store.decide_read_only(&l, &decide_one)?.ok()
            }),
            None => None,
        }
    }

    /// The decision on `attempt` once its SPF result is known (set in it), with `white`,
    /// the entries read at MAIL FROM, if any.
    async fn decide_after_spf(
        &self,
        session: &mut Session<SessionState>,
        attempt: &mut Attempt,
        white: Option<ReadEntries>,
        now: Time,
    ) -> Result<Outcome, String> {
        let ip = attempt.client;
        let spf = self.spf_for(&mut session.state, ip, &attempt.helo, &attempt.sender);
        if !self.store.reads_ahead() {
            attempt.spf = spf.await;
            return self.store_decide(attempt, now, None).await;
        }
        let Some(white) = white else {
            // no read since the MAIL FROM (or too old, or failed): the store across the
            // network is read while the SPF result is awaited, for whichever result it
            // gives, on this thread
            let keys = keys_for_any_spf(attempt, self.grouping);
            let (spf, read) = tokio::join!(spf, self.store.read_ahead(keys));
            if let Ok(read) = &read {
                lock(&self.white_cache).remember(read, now);
            }
            attempt.spf = spf;
            // a failed read: the store decides as usual, and reports the failure
            return self.store_decide(attempt, now, read.ok()).await;
        };
        attempt.spf = spf.await;
        let l = lookup(attempt, self.grouping);
        match decide_whitelisted(&self.timing, &l, &white, now) {
            // a whitelisted client, as read at MAIL FROM: no round trip to the store
            Some(outcome) if outcome.changes.is_empty() => Ok(outcome),
            // its entry is due for a refresh: the store's transaction
            Some(_) => self.store_decide(attempt, now, None).await,
            None => {
                let keys = l.keys().into_iter().cloned().collect();
                let read = self.store.read_ahead(keys).await;
                self.store_decide(attempt, now, read.ok()).await
            }
        }
    }

    /// The store's decision about `attempt`. From `read` (entries read ahead) when they
    /// hold every key and the decision changes nothing: what the store itself would
    /// do with that read; otherwise the store decides (it reads again, and writes).
    async fn store_decide(
        &self,
        attempt: &Attempt,
        now: Time,
        read: Option<ReadEntries>,
    ) -> Result<Outcome, String> {
        let store = Arc::clone(&self.store);
        let timing = self.timing;
        let l = lookup(attempt, self.grouping);
        let trap = attempt.trap;
        if let Some(found) = read.as_deref().and_then(|read| Found::among(&l, read)) {
            let outcome = decide(&timing, &l, &found, now, trap);
            if outcome.changes.is_empty() {
                return Ok(outcome);
            }
        }
        if let Some(read) =
            store.decide_read_only(&l, &|found| decide(&timing, &l, found, now, trap))
        {
            return read.map_err(|e| e.to_string());
        }
        // never closed, so acquiring only waits
        let _slot = self.store_slots.acquire().await;
        let white = l.white.clone();
        let task = tokio::task::spawn_blocking(move || {
            store.decide(&l, &|found| decide(&timing, &l, found, now, trap))
        });
        let decided = task.await;
        // whatever the store wrote (it decides again on what it reads), the next
        // session reads it from the store
        lock(&self.white_cache).forget(&white);
        match decided {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the store task failed: {e}")),
        }
    }
}

impl<C: SpfChecker> Filter for Greylist<C> {
    type Session = SessionState;

    fn interest(&self) -> Interest {
        SESSION_REPORTS
            .phase(Phase::RcptTo)
            .report_out(EventKind::LinkConnect)
            .report_out(EventKind::TxRcpt)
    }

    fn on_report(&self, session: &mut Session<SessionState>, report: &Report<'_>) {
        if report.subsystem == Subsystem::SmtpIn {
            if let Event::TxMail {
                result: TxResult::Ok,
                ..
            } = report.event
            {
                self.start_checks(session);
            }
            return;
        }
        // a recipient accepted by a host we deliver to: whitelist that host's network
        if let Event::TxRcpt {
            result: TxResult::Ok,
            ..
        } = report.event
            && let Some(peer) = session.info().server.as_ref().and_then(|s| s.ip())
        {
            let key = Key::WhiteNet(client_net(peer, self.grouping));
            self.learn(key, format!("delivered to {peer}"));
        }
    }

    async fn on_rcpt_to(&self, session: &mut Session<SessionState>, address: &[u8]) -> Decision {
        let info = session.info();
        let id = info.id();
        let client = client_text(info);
        let rcpt = lower(address);
        let sender = sender_of(info);
        let helo = helo_of(info);
        if let Some(ex) = self.exemption(info, &sender, &rcpt) {
            // our users write to this domain: its SPF-pass mail is welcome
            if ex == Exemption::Authenticated
                && let Some(domain) = domain_of(&rcpt)
            {
                self.learn(
                    Key::WhiteDomain(domain.to_string()),
                    format!("an authenticated user wrote to <{rcpt}>"),
                );
            }
            log::info!(
                "session={id} client={client} sender=<{sender}> rcpt=<{rcpt}> key=- spf=- decision=accept reason={}",
                ex.word()
            );
            return Decision::Proceed;
        }
        let Some(ip) = info.client_ip() else {
            return Decision::Proceed;
        };
        let mut attempt = Attempt {
            client: ip,
            sender: sender.clone(),
            helo,
            rcpt: rcpt.clone(),
            spf: Spf::NotChecked,
            trap: self.lists.get().traps.has_address(&rcpt),
        };
        let now = self.clock.now();
        // the sender's whitelist entries as read at its MAIL FROM (a store that reads
        // ahead), if recent enough
        let white = match std::mem::take(&mut session.state.white) {
            WhiteRead::None => None,
            started => white_entries(started, &sender, now).await,
        };
        if let Some((at, entries)) = &white {
            session.state.white = WhiteRead::Read {
                sender: sender.clone(),
                at: *at,
                entries: entries.clone(),
            };
        }
        let white = white.map(|(_, entries)| entries);
        // a whitelisted client that no SPF result would treat otherwise: answered
        // without waiting for the check
        let (decided, spf_word) = match self.settled_without_spf(&attempt, white.as_ref(), now) {
            Some(outcome) => (Ok(outcome), "-"),
            None => {
                let decided = self
                    .decide_after_spf(session, &mut attempt, white, now)
                    .await;
                (decided, attempt.spf.word())
            }
        };
        let key = lookup(&attempt, self.grouping).grey;
        match decided {
            Ok(outcome) => {
                log::info!(
                    "session={id} client={client} sender=<{sender}> rcpt=<{rcpt}> key={key} spf={spf_word} decision={} reason={}",
                    outcome.verdict.word(),
                    outcome.reason
                );
                match outcome.verdict {
                    Verdict::Accept => Decision::Proceed,
                    Verdict::Tempfail => Decision::Reject(self.reply.clone()),
                    Verdict::Trapped => Decision::Reject(self.trap_reply.clone()),
                }
            }
            Err(e) => {
                log::info!(
                    "session={id} client={client} sender=<{sender}> rcpt=<{rcpt}> key={key} spf={spf_word} decision=accept reason=store-unavailable"
                );
                self.warn_store(&e);
                Decision::Proceed
            }
        }
    }
}
