//! The greylisting rules, pure: keys, entries, timing and the decision at RCPT TO.
//! No I/O, no clock, no async: the caller passes the time (seconds since the Unix
//! epoch) and the entries it found, and gets back the verdict and the changes to store.
//!
//! - A sender whose domain gives SPF `pass` for the client is keyed by
//!   (sender domain, sender, recipient); anyone else by (client network, sender,
//!   recipient), the network being the exact address or its /24 (IPv4) or /64 (IPv6).
//! - The pass time counts from the first attempt and is never reset by early retries.
//! - A retry after the pass time is accepted and whitelists the client network, or for
//!   an SPF-pass sender the domain (which later visits only match with SPF `pass`).
//! - Whitelist entries are refreshed on use and expire `white_exp` after their last
//!   use; grey entries expire `grey_exp` after their last attempt.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Seconds since the Unix epoch.
pub type Time = u64;

/// A whitelist entry used again sooner than this after its last refresh is not
/// written again (its expiry moves by at most this much less): warm decisions for
/// whitelisted clients then need no write.
pub const REFRESH_GRANULARITY: u64 = 60;

/// The timing of greylisting, in seconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timing {
    /// A retry is accepted this long after the first attempt (Go: `-passtime`, 300).
    pub pass: u64,
    /// A grey entry expires this long after its last attempt (Go: `-greyexp`, 4 h).
    pub grey_exp: u64,
    /// A whitelist entry expires this long after its last use (Go: `-whiteexp`, 30 d).
    pub white_exp: u64,
    /// A client that wrote to a greytrap stays trapped this long (24 h).
    pub trap: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pass: 300,
            grey_exp: 4 * 3600,
            white_exp: 30 * 86400,
            trap: 86400,
        }
    }
}

/// How client addresses are grouped into networks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Grouping {
    /// IPv4 /24, IPv6 /64 (the default: pools retrying from a neighbour address match).
    #[default]
    Network,
    /// The exact address.
    Exact,
}

/// The network `ip` belongs to under `grouping`. An IPv4-mapped IPv6 address counts as
/// its IPv4 address.
pub fn client_net(ip: IpAddr, grouping: Grouping) -> IpNet {
    let ip = unmap(ip);
    let prefix = match (grouping, ip) {
        (Grouping::Exact, IpAddr::V4(_)) => 32,
        (Grouping::Exact, IpAddr::V6(_)) => 128,
        (Grouping::Network, IpAddr::V4(_)) => 24,
        (Grouping::Network, IpAddr::V6(_)) => 64,
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The outcome of the SPF check of a sender, as far as greylisting cares.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Spf {
    /// The domain authorises the client.
    Pass,
    /// `-all`.
    Fail,
    /// `~all`.
    SoftFail,
    /// `?all`.
    Neutral,
    /// No SPF record.
    None,
    /// A DNS error.
    TempError,
    /// A broken record (two records, syntax, too many lookups).
    PermError,
    /// No answer in time.
    Timeout,
    /// Not asked (no domain to ask about).
    NotChecked,
}

impl Spf {
    /// The word of the log line.
    pub fn word(self) -> &'static str {
        match self {
            Spf::Pass => "pass",
            Spf::Fail => "fail",
            Spf::SoftFail => "softfail",
            Spf::Neutral => "neutral",
            Spf::None => "none",
            Spf::TempError => "temperror",
            Spf::PermError => "permerror",
            Spf::Timeout => "timeout",
            Spf::NotChecked => "unchecked",
        }
    }
}

impl fmt::Display for Spf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Where a grey entry's attempts come from.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Origin {
    /// An SPF-pass sender's domain (lower case).
    Domain(String),
    /// The client network.
    Net(IpNet),
}

/// A key of the store.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Key {
    /// A greylisted (origin, sender, recipient).
    Grey {
        /// The domain or network.
        origin: Origin,
        /// The sender (lower case; `<>` for the null sender, keyed by HELO).
        sender: String,
        /// The recipient (lower case).
        rcpt: String,
    },
    /// A whitelisted client network.
    WhiteNet(IpNet),
    /// A whitelisted domain (matches only SPF-pass senders of the domain).
    WhiteDomain(String),
    /// A client address trapped by a greytrap.
    Trap(IpNet),
    /// A greytrap recipient added by the admin command: an address, or a whole domain
    /// (lower case). Its entry never expires ([`NEVER`]).
    Greytrap(String),
}

/// The expiry of entries that live until removed (greytrap recipients).
pub const NEVER: Time = u64::MAX;

const SEP: char = '\u{0}';

impl Key {
    /// The bytes the store keeps it under: `g\0d\0DOMAIN\0SENDER\0RCPT`,
    /// `g\0n\0NET\0SENDER\0RCPT`, `w\0n\0NET`, `w\0d\0DOMAIN`. NUL never occurs in an
    /// SMTP address.
    pub fn encode(&self) -> Vec<u8> {
        let s = match self {
            Key::Grey {
                origin: Origin::Domain(d),
                sender,
                rcpt,
            } => format!("g{SEP}d{SEP}{d}{SEP}{sender}{SEP}{rcpt}"),
            Key::Grey {
                origin: Origin::Net(n),
                sender,
                rcpt,
            } => format!("g{SEP}n{SEP}{n}{SEP}{sender}{SEP}{rcpt}"),
            Key::WhiteNet(n) => format!("w{SEP}n{SEP}{n}"),
            Key::WhiteDomain(d) => format!("w{SEP}d{SEP}{d}"),
            Key::Trap(n) => format!("t{SEP}n{SEP}{n}"),
            Key::Greytrap(r) => format!("t{SEP}a{SEP}{r}"),
        };
        s.into_bytes()
    }

    /// The key stored as `bytes`, if they are one.
    pub fn decode(bytes: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = text.splitn(5, SEP).collect();
        match parts.as_slice() {
            ["g", kind, origin, sender, rcpt] => {
                let origin = match *kind {
                    "d" => Origin::Domain((*origin).to_string()),
                    "n" => Origin::Net(origin.parse().ok()?),
                    _ => return None,
                };
                Some(Key::Grey {
                    origin,
                    sender: (*sender).to_string(),
                    rcpt: (*rcpt).to_string(),
                })
            }
            ["w", "n", net] => Some(Key::WhiteNet(net.parse().ok()?)),
            ["w", "d", domain] => Some(Key::WhiteDomain((*domain).to_string())),
            ["t", "n", net] => Some(Key::Trap(net.parse().ok()?)),
            ["t", "a", rcpt] => Some(Key::Greytrap((*rcpt).to_string())),
            _ => None,
        }
    }

    /// Whether this is a grey entry.
    pub fn is_grey(&self) -> bool {
        matches!(self, Key::Grey { .. })
    }
}

impl fmt::Display for Key {
    /// The form of the log line: `domain:example.org/sender/rcpt`,
    /// `net:192.0.2.0/24/sender/rcpt`, `white-net:192.0.2.0/24`, `white-domain:example.org`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Grey {
                origin: Origin::Domain(d),
                sender,
                rcpt,
            } => write!(f, "domain:{d}/{sender}/{rcpt}"),
            Key::Grey {
                origin: Origin::Net(n),
                sender,
                rcpt,
            } => write!(f, "net:{n}/{sender}/{rcpt}"),
            Key::WhiteNet(n) => write!(f, "white-net:{n}"),
            Key::WhiteDomain(d) => write!(f, "white-domain:{d}"),
            Key::Trap(n) => write!(f, "trap:{n}"),
            Key::Greytrap(r) => write!(f, "greytrap:{r}"),
        }
    }
}

/// What the store keeps per key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The first attempt (grey) or the moment of whitelisting (white).
    pub first_seen: Time,
    /// The last attempt (grey) or the last use (white).
    pub last_seen: Time,
    /// Attempts (grey) or accepted uses (white).
    pub count: u32,
    /// When it expires.
    pub expires: Time,
}

/// Why an entry's bytes could not be read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CorruptEntry;

const ENTRY_VERSION: u8 = 1;
/// The size of an encoded entry.
pub const ENTRY_LEN: usize = 1 + 8 + 8 + 4 + 8;

impl Entry {
    /// Fixed-size little-endian encoding, with a version byte first.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = ENTRY_VERSION;
        out[1..9].copy_from_slice(&self.first_seen.to_le_bytes());
        out[9..17].copy_from_slice(&self.last_seen.to_le_bytes());
        out[17..21].copy_from_slice(&self.count.to_le_bytes());
        out[21..29].copy_from_slice(&self.expires.to_le_bytes());
        out
    }

    /// The entry stored as `bytes`; an error for anything [`Entry::encode`] cannot have
    /// written (wrong size or version, times out of order).
    pub fn decode(bytes: &[u8]) -> Result<Entry, CorruptEntry> {
        if bytes.len() != ENTRY_LEN || bytes[0] != ENTRY_VERSION {
            return Err(CorruptEntry);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut c = [0u8; 4];
        c.copy_from_slice(&bytes[17..21]);
        let entry = Entry {
            first_seen: u64_at(1),
            last_seen: u64_at(9),
            count: u32::from_le_bytes(c),
            expires: u64_at(21),
        };
        if entry.first_seen > entry.last_seen || entry.last_seen > entry.expires {
            return Err(CorruptEntry);
        }
        Ok(entry)
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: Time) -> bool {
        now >= self.expires
    }
}

/// One delivery attempt to one recipient, as the decision needs it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Attempt {
    /// The client address.
    pub client: IpAddr,
    /// The sender, lower case; empty for the null sender.
    pub sender: String,
    /// The HELO/EHLO name, lower case (keys the null sender).
    pub helo: String,
    /// The recipient, lower case.
    pub rcpt: String,
    /// The SPF result for the sender (or the HELO name for the null sender).
    pub spf: Spf,
    /// Whether the recipient is a greytrap.
    pub trap: bool,
}

impl Attempt {
    /// The domain SPF checks and SPF-pass keys use: the sender's domain, or the HELO
    /// name for the null sender (or a sender without `@`).
    pub fn domain(&self) -> &str {
        match self.sender.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => d,
            _ => &self.helo,
        }
    }

    /// The same attempt with the SPF result `spf`.
    pub fn with_spf(&self, spf: Spf) -> Attempt {
        Attempt {
            spf,
            ..self.clone()
        }
    }

    /// The sender part of keys: the address, or `<>@HELO` for the null sender.
    pub fn sender_key(&self) -> String {
        if self.sender.is_empty() {
            format!("<>@{}", self.helo)
        } else {
            self.sender.clone()
        }
    }
}

/// The keys one attempt is decided on.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lookup {
    /// The whitelist entries that let it through, in order of preference.
    pub white: Vec<Key>,
    /// Its grey entry.
    pub grey: Key,
    /// The client's trap entry (its exact address).
    pub trap: Key,
    /// The greytrap entries the recipient would have (its address, its domain):
    /// read in the same transaction as the rest, so that a greytrap added with the
    /// admin command counts at once, on every MX sharing the store.
    pub greytraps: Vec<Key>,
}

impl Lookup {
    /// Every key, in the order [`Found::from_entries`] takes their entries: the white
    /// keys, the grey key, the trap key, the greytrap keys.
    pub fn keys(&self) -> Vec<&Key> {
        self.white
            .iter()
            .chain([&self.grey, &self.trap])
            .chain(&self.greytraps)
            .collect()
    }

    /// A lookup of one key alone (its entry comes back as [`Found::grey`]): for
    /// changes made outside a delivery attempt (admin, outgoing mail).
    pub fn single(key: &Key) -> Lookup {
        Lookup {
            white: Vec::new(),
            grey: key.clone(),
            trap: key.clone(),
            greytraps: Vec::new(),
        }
    }
}

/// The greytrap keys of a recipient: the address and its domain.
pub fn greytrap_keys(rcpt: &str) -> Vec<Key> {
    let mut keys = vec![Key::Greytrap(rcpt.to_string())];
    if let Some(domain) = domain_of(rcpt) {
        keys.push(Key::Greytrap(domain.to_string()));
    }
    keys
}

/// The keys for `attempt`.
pub fn lookup(attempt: &Attempt, grouping: Grouping) -> Lookup {
    let net = client_net(attempt.client, grouping);
    let sender = attempt.sender_key();
    let rcpt = attempt.rcpt.clone();
    let trap = Key::Trap(client_net(attempt.client, Grouping::Exact));
    let greytraps = greytrap_keys(&attempt.rcpt);
    if attempt.spf == Spf::Pass {
        let domain = attempt.domain().to_string();
        Lookup {
            white: vec![Key::WhiteDomain(domain.clone()), Key::WhiteNet(net)],
            grey: Key::Grey {
                origin: Origin::Domain(domain),
                sender,
                rcpt,
            },
            trap,
            greytraps,
        }
    } else {
        Lookup {
            white: vec![Key::WhiteNet(net)],
            grey: Key::Grey {
                origin: Origin::Net(net),
                sender,
                rcpt,
            },
            trap,
            greytraps,
        }
    }
}

/// Every key a decision about `attempt` may read, whatever its SPF result turns out to
/// be (its lookup with SPF pass and without), each once: read while the SPF check still
/// runs, they hold what [`Found::among`] then takes for the lookup the result picks.
pub fn keys_for_any_spf(attempt: &Attempt, grouping: Grouping) -> Vec<Key> {
    unique(
        lookups_for_any_spf(attempt, grouping)
            .iter()
            .flat_map(Lookup::keys),
    )
}

/// The whitelist keys of every attempt from `client` with `sender` (after `helo`),
/// whatever its recipient and its SPF result: known when smtpd accepts the MAIL FROM,
/// so read then, while the SPF check runs (see [`decide_whitelisted`]).
pub fn white_keys_for_any_spf(
    client: IpAddr,
    sender: &str,
    helo: &str,
    grouping: Grouping,
) -> Vec<Key> {
    let attempt = Attempt {
        client,
        sender: sender.to_string(),
        helo: helo.to_string(),
        rcpt: String::new(),
        spf: Spf::NotChecked,
        trap: false,
    };
    unique(
        lookups_for_any_spf(&attempt, grouping)
            .iter()
            .flat_map(|l| &l.white),
    )
}

/// The lookups of `attempt` with an SPF pass and with any other result (every result
/// but a pass has the same lookup).
fn lookups_for_any_spf(attempt: &Attempt, grouping: Grouping) -> [Lookup; 2] {
    [Spf::Pass, Spf::None].map(|spf| lookup(&attempt.with_spf(spf), grouping))
}

/// `keys` in their order, each once.
fn unique<'a>(keys: impl IntoIterator<Item = &'a Key>) -> Vec<Key> {
    let mut out: Vec<Key> = Vec::new();
    for key in keys {
        if !out.contains(key) {
            out.push(key.clone());
        }
    }
    out
}

/// The decision on an attempt whose keys are `lookup` from its whitelist entries alone
/// (`read`: keys with their entries, read before the recipient was known): `Some` when
/// one of them is live, for then they settle it — [`decide`] accepts on a live
/// whitelist entry before it looks at the grey, trap or greytrap entries — and `None`
/// when none is live or a whitelist key of `lookup` is not in `read`.
pub fn decide_whitelisted(
    timing: &Timing,
    lookup: &Lookup,
    read: &[(Key, Option<Entry>)],
    now: Time,
) -> Option<Outcome> {
    let white = lookup
        .white
        .iter()
        .map(|key| read.iter().find(|(k, _)| k == key).map(|(_, e)| *e))
        .collect::<Option<Vec<_>>>()?;
    if !white.iter().flatten().any(|e| !e.expired(now)) {
        return None;
    }
    let found = Found {
        white,
        grey: None,
        trap: None,
        greytraps: vec![None; lookup.greytraps.len()],
    };
    Some(decide(timing, lookup, &found, now, false))
}

/// The decision on an attempt when its SPF result cannot change it, so that the
/// recipient can be answered before the SPF check ends: `decide_for(spf)` decides the
/// attempt with that result (from what the store holds), and when a pass and any
/// other result (every result but a pass has the same [`lookup`]) both accept on a live
/// whitelist entry — the client's network — and write nothing (no refresh due), that
/// is the decision, the one for a result other than a pass. `None` otherwise, or when
/// `decide_for` cannot decide.
pub fn settled_without_spf(decide_for: impl Fn(Spf) -> Option<Outcome>) -> Option<Outcome> {
    let mut settled = None;
    for spf in [Spf::None, Spf::Pass] {
        let outcome = decide_for(spf)?;
        let whitelisted = matches!(outcome.reason, Reason::Whitelisted(_));
        if outcome.verdict != Verdict::Accept || !whitelisted || !outcome.changes.is_empty() {
            return None;
        }
        settled.get_or_insert(outcome);
    }
    settled
}

/// The entries the store holds for a [`Lookup`] (same order; `None`: absent or unreadable).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Found {
    /// One per [`Lookup::white`] key.
    pub white: Vec<Option<Entry>>,
    /// The grey entry.
    pub grey: Option<Entry>,
    /// The trap entry.
    pub trap: Option<Entry>,
    /// One per [`Lookup::greytraps`] key.
    pub greytraps: Vec<Option<Entry>>,
}

impl Found {
    /// The entries of `lookup` among `read` (each key read with its entry, `None`:
    /// absent), or `None` if one of its keys was not read.
    pub fn among(lookup: &Lookup, read: &[(Key, Option<Entry>)]) -> Option<Found> {
        let entries = lookup
            .keys()
            .into_iter()
            .map(|key| read.iter().find(|(k, _)| k == key).map(|(_, e)| *e))
            .collect::<Option<Vec<_>>>()?;
        Some(Found::from_entries(lookup, entries))
    }

    /// The entries of [`Lookup::keys`], in that order (missing ones count as absent).
    pub fn from_entries(lookup: &Lookup, mut entries: Vec<Option<Entry>>) -> Found {
        let n = lookup.white.len();
        entries.resize(n + 2 + lookup.greytraps.len(), None);
        let greytraps = entries.split_off(n + 2);
        let trap = entries.pop().flatten();
        let grey = entries.pop().flatten();
        Found {
            white: entries,
            grey,
            trap,
            greytraps,
        }
    }
}

/// The answer to one recipient.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// `451 4.7.1`: greylisted, retry later.
    Tempfail,
    /// The client is trapped: tempfail or reject, as configured.
    Trapped,
}

impl Verdict {
    /// The word of the log line.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Tempfail => "tempfail",
            Verdict::Trapped => "trapped",
        }
    }
}

/// Why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reason {
    /// A live whitelist entry matched (the key).
    Whitelisted(Key),
    /// No live grey entry: this is the first attempt.
    FirstAttempt,
    /// A retry before the pass time; this many seconds are left.
    EarlyRetry(u64),
    /// A retry after the pass time: accepted, and the key whitelisted.
    Passed(Key),
    /// The recipient is a greytrap: the client is trapped from now on.
    HitTrap(Key),
    /// The client is trapped (until the entry expires).
    Trapped(Key),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Whitelisted(k) => write!(f, "whitelisted({k})"),
            Reason::FirstAttempt => f.write_str("first-attempt"),
            Reason::EarlyRetry(left) => write!(f, "early-retry({left}s-left)"),
            Reason::Passed(k) => write!(f, "retry-passed(now {k})"),
            Reason::HitTrap(k) => write!(f, "greytrap-hit(now {k})"),
            Reason::Trapped(k) => write!(f, "trapped({k})"),
        }
    }
}

/// A change to the store.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// Write this entry.
    Put(Key, Entry),
    /// Remove it.
    Delete(Key),
}

/// The decision on one attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Outcome {
    /// Accept or tempfail.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// What to store (durably, before answering).
    pub changes: Vec<Change>,
}

/// Decides an attempt whose keys are `lookup`, given what the store holds for them.
///
/// Order: a live whitelist entry accepts (a whitelisted client is not trapped); a
/// trapped client is refused; a greytrap recipient (`trap`: on the `--traps` list, or
/// a live greytrap entry of the store) traps the client; then greylisting.
pub fn decide(timing: &Timing, lookup: &Lookup, found: &Found, now: Time, trap: bool) -> Outcome {
    let trap = trap || found.greytraps.iter().flatten().any(|e| !e.expired(now));
    // a live whitelist entry: accept, refreshed (at most once per REFRESH_GRANULARITY)
    for (key, entry) in lookup.white.iter().zip(&found.white) {
        let Some(entry) = entry else { continue };
        if entry.expired(now) {
            continue;
        }
        let mut changes = Vec::new();
        if now.saturating_sub(entry.last_seen) >= REFRESH_GRANULARITY {
            changes.push(Change::Put(
                key.clone(),
                Entry {
                    first_seen: entry.first_seen,
                    last_seen: now.max(entry.last_seen),
                    count: entry.count.saturating_add(1),
                    expires: now.saturating_add(timing.white_exp).max(entry.expires),
                },
            ));
        }
        return Outcome {
            verdict: Verdict::Accept,
            reason: Reason::Whitelisted(key.clone()),
            changes,
        };
    }
    // a trapped client: everything it sends is refused until the trap expires
    if found.trap.is_some_and(|e| !e.expired(now)) {
        return Outcome {
            verdict: Verdict::Trapped,
            reason: Reason::Trapped(lookup.trap.clone()),
            changes: Vec::new(),
        };
    }
    if trap {
        return Outcome {
            verdict: Verdict::Trapped,
            reason: Reason::HitTrap(lookup.trap.clone()),
            changes: vec![Change::Put(
                lookup.trap.clone(),
                Entry {
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    expires: now.saturating_add(timing.trap),
                },
            )],
        };
    }
    let grey_key = lookup.grey.clone();
    match found.grey.filter(|e| !e.expired(now)) {
        None => Outcome {
            verdict: Verdict::Tempfail,
            reason: Reason::FirstAttempt,
            changes: vec![Change::Put(
                grey_key,
                Entry {
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    expires: now.saturating_add(timing.grey_exp),
                },
            )],
        },
        Some(grey) if now < grey.first_seen.saturating_add(timing.pass) => Outcome {
            verdict: Verdict::Tempfail,
            reason: Reason::EarlyRetry(grey.first_seen + timing.pass - now),
            changes: vec![Change::Put(
                grey_key,
                Entry {
                    // never reset: the pass time counts from the first attempt
                    first_seen: grey.first_seen,
                    last_seen: now.max(grey.last_seen),
                    count: grey.count.saturating_add(1),
                    expires: now.saturating_add(timing.grey_exp).max(grey.expires),
                },
            )],
        },
        Some(_) => {
            let white = match &lookup.grey {
                Key::Grey {
                    origin: Origin::Domain(d),
                    ..
                } => Key::WhiteDomain(d.clone()),
                Key::Grey {
                    origin: Origin::Net(n),
                    ..
                } => Key::WhiteNet(*n),
                other => other.clone(),
            };
            Outcome {
                verdict: Verdict::Accept,
                reason: Reason::Passed(white.clone()),
                changes: vec![
                    Change::Delete(grey_key),
                    Change::Put(
                        white,
                        Entry {
                            first_seen: now,
                            last_seen: now,
                            count: 1,
                            expires: now.saturating_add(timing.white_exp),
                        },
                    ),
                ],
            }
        }
    }
}

/// The whitelist entry to write when `key` is whitelisted from outside a delivery
/// attempt (a peer we delivered to, a domain our users write to): a new entry, or the
/// existing one refreshed; `None` when it was refreshed less than
/// [`REFRESH_GRANULARITY`] ago and is still live.
pub fn whitelist_entry(existing: Option<Entry>, timing: &Timing, now: Time) -> Option<Entry> {
    match existing.filter(|e| !e.expired(now)) {
        Some(e) if now.saturating_sub(e.last_seen) < REFRESH_GRANULARITY => None,
        Some(e) => Some(Entry {
            first_seen: e.first_seen,
            last_seen: now.max(e.last_seen),
            count: e.count.saturating_add(1),
            expires: now.saturating_add(timing.white_exp).max(e.expires),
        }),
        None => Some(Entry {
            first_seen: now,
            last_seen: now,
            count: 1,
            expires: now.saturating_add(timing.white_exp),
        }),
    }
}

/// Why an attempt is not greylisted at all.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Exemption {
    /// A local (unix socket) submission.
    Local,
    /// An authenticated session.
    Authenticated,
    /// The client is on `-wl-ip` (or a network entry of another list).
    AllowedClient,
    /// The sender or its domain is on `-wl-domain`.
    AllowedSender,
    /// The recipient or its domain is on `--wl-rcpt`.
    AllowedRecipient,
    /// No client address to key on (smtpd said something that is not one).
    NoAddress,
}

impl Exemption {
    /// The reason word of the log line.
    pub fn word(&self) -> &'static str {
        match self {
            Exemption::Local => "local",
            Exemption::Authenticated => "authenticated",
            Exemption::AllowedClient => "allowlisted-client",
            Exemption::AllowedSender => "allowlisted-sender",
            Exemption::AllowedRecipient => "allowlisted-recipient",
            Exemption::NoAddress => "no-client-address",
        }
    }
}

/// The domain of an address (after the last `@`), lower case, if any.
pub fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The store as a map, and a fake clock: a scenario is a list of attempts at times.
    struct Sim {
        timing: Timing,
        grouping: Grouping,
        map: HashMap<Key, Entry>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                timing: Timing::default(),
                grouping: Grouping::Network,
                map: HashMap::new(),
            }
        }

        fn attempt(&mut self, now: Time, a: &Attempt) -> Outcome {
            let l = lookup(a, self.grouping);
            let entries = l.keys().iter().map(|k| self.map.get(*k).copied()).collect();
            let found = Found::from_entries(&l, entries);
            let out = decide(&self.timing, &l, &found, now, a.trap);
            for c in &out.changes {
                match c {
                    Change::Put(k, e) => {
                        self.map.insert(k.clone(), *e);
                    }
                    Change::Delete(k) => {
                        self.map.remove(k);
                    }
                }
            }
            out
        }

        fn verdict(&mut self, now: Time, a: &Attempt) -> Verdict {
            self.attempt(now, a).verdict
        }
    }

    fn att(client: &str, sender: &str, rcpt: &str, spf: Spf) -> Attempt {
        Attempt {
            client: client.parse().unwrap(),
            sender: sender.into(),
            helo: "mx.example.org".into(),
            rcpt: rcpt.into(),
            spf,
            trap: false,
        }
    }

    const T0: Time = 1_700_000_000;
    use Verdict::{Accept, Tempfail};

    /// Every mix of whitelist, grey, trap and greytrap entries (live, expired or
    /// absent), for both SPF results and both trap flags: whenever the whitelist entries
    /// read at MAIL FROM give a decision, it is the decision the whole lookup gives.
    #[test]
    fn a_decision_from_the_whitelist_entries_alone_is_the_whole_decision() {
        let timing = Timing::default();
        let grouping = Grouping::Network;
        let now = T0 + 1000;
        let states = [
            None,
            Some(Entry {
                first_seen: T0,
                last_seen: T0,
                count: 1,
                expires: now + 10,
            }),
            // due for a refresh: the decision writes
            Some(Entry {
                first_seen: T0 - 5000,
                last_seen: now - REFRESH_GRANULARITY,
                count: 4,
                expires: now + 10,
            }),
            Some(Entry {
                first_seen: T0,
                last_seen: T0,
                count: 1,
                expires: now - 1,
            }),
        ];
        let mut decided = 0;
        for spf in [Spf::Pass, Spf::None] {
            for trap in [false, true] {
                let a = Attempt {
                    trap,
                    ..att("192.0.2.10", "a@example.org", "u@lab.test", spf)
                };
                let l = lookup(&a, grouping);
                let white_keys = white_keys_for_any_spf(a.client, &a.sender, &a.helo, grouping);
                assert!(l.white.iter().all(|k| white_keys.contains(k)));
                let n = l.keys().len();
                // each key of the lookup in each state (4^n mixes)
                for mix in 0..states.len().pow(n as u32) {
                    let entries: Vec<Option<Entry>> = (0..n)
                        .map(|i| states[mix / states.len().pow(i as u32) % states.len()])
                        .collect();
                    let whole = decide(
                        &timing,
                        &l,
                        &Found::from_entries(&l, entries.clone()),
                        now,
                        trap,
                    );
                    let read: Vec<(Key, Option<Entry>)> = white_keys
                        .iter()
                        .map(|k| {
                            let i = l.keys().iter().position(|x| *x == k);
                            (k.clone(), i.and_then(|i| entries[i]))
                        })
                        .collect();
                    match decide_whitelisted(&timing, &l, &read, now) {
                        Some(alone) => {
                            assert_eq!(alone, whole, "{spf:?} trap={trap} {entries:?}");
                            decided += 1;
                        }
                        None => assert!(
                            !matches!(whole.reason, Reason::Whitelisted(_)),
                            "a whitelisted attempt must be decided from its whitelist entries: {entries:?}"
                        ),
                    }
                }
            }
        }
        assert!(decided > 0);
        // a whitelist key that was not read: no decision
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        let l = lookup(&a, grouping);
        assert_eq!(decide_whitelisted(&timing, &l, &[], now), None);
    }

    /// Every mix of entries: when the decision is settled without the SPF result, every
    /// SPF result gives that accept, writing nothing.
    #[test]
    fn a_decision_settled_without_spf_is_every_spf_results_decision() {
        let timing = Timing::default();
        let grouping = Grouping::Network;
        let now = T0 + 1000;
        let live = Entry {
            first_seen: T0,
            last_seen: now,
            count: 2,
            expires: now + 10,
        };
        let states = [
            None,
            Some(live),
            // due for a refresh
            Some(Entry {
                last_seen: now - REFRESH_GRANULARITY,
                ..live
            }),
            Some(Entry {
                expires: now - 1,
                ..live
            }),
        ];
        let all_spf = [
            Spf::Pass,
            Spf::Fail,
            Spf::SoftFail,
            Spf::Neutral,
            Spf::None,
            Spf::TempError,
            Spf::PermError,
            Spf::Timeout,
            Spf::NotChecked,
        ];
        let base = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::NotChecked);
        // every key any SPF result reads, each in each state
        let keys = keys_for_any_spf(&base, grouping);
        let mut settled = 0;
        for mix in 0..states.len().pow(keys.len() as u32) {
            let held: HashMap<&Key, Entry> = keys
                .iter()
                .enumerate()
                .filter_map(|(i, k)| {
                    states[mix / states.len().pow(i as u32) % states.len()].map(|e| (k, e))
                })
                .collect();
            let decide_with = |spf: Spf| {
                let a = Attempt {
                    spf,
                    ..base.clone()
                };
                let l = lookup(&a, grouping);
                let entries = l.keys().iter().map(|k| held.get(*k).copied()).collect();
                decide(&timing, &l, &Found::from_entries(&l, entries), now, a.trap)
            };
            if let Some(outcome) = settled_without_spf(|spf| Some(decide_with(spf))) {
                settled += 1;
                assert_eq!(outcome.verdict, Verdict::Accept);
                assert!(outcome.changes.is_empty());
                for spf in all_spf {
                    let each = decide_with(spf);
                    assert_eq!(each.verdict, Verdict::Accept, "{spf:?} {held:?}");
                    assert!(each.changes.is_empty(), "{spf:?} {held:?}");
                }
            }
        }
        assert!(settled > 0);
        // undecidable for one result: not settled
        assert_eq!(
            settled_without_spf(|spf| (spf == Spf::None).then(|| decide(
                &timing,
                &lookup(&base, grouping),
                &Found::default(),
                now,
                false
            ))),
            None
        );
    }

    #[test]
    fn keys_read_ahead_serve_whatever_spf_says() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        let pass = Attempt {
            spf: Spf::Pass,
            ..a.clone()
        };
        // the network whitelisted, one domain key and one grey key present
        s.map.insert(
            Key::WhiteNet(client_net(a.client, s.grouping)),
            Entry {
                first_seen: T0,
                last_seen: T0,
                count: 3,
                expires: T0 + 86_400,
            },
        );
        s.attempt(T0, &pass);
        let keys = keys_for_any_spf(&a, s.grouping);
        let read: Vec<(Key, Option<Entry>)> = keys
            .iter()
            .map(|k| (k.clone(), s.map.get(k).copied()))
            .collect();
        for attempt in [&a, &pass] {
            let l = lookup(attempt, s.grouping);
            let direct: Vec<Option<Entry>> =
                l.keys().iter().map(|k| s.map.get(*k).copied()).collect();
            assert_eq!(
                Found::among(&l, &read),
                Some(Found::from_entries(&l, direct)),
                "{:?}",
                attempt.spf
            );
            assert_eq!(
                keys.iter().filter(|k| l.keys().contains(k)).count(),
                l.keys().len(),
                "every key of the lookup is read, once"
            );
        }
        // a key that was not read: no answer from the read, the store is asked
        let short: Vec<(Key, Option<Entry>)> = read
            .iter()
            .filter(|(k, _)| !matches!(k, Key::WhiteNet(_)))
            .cloned()
            .collect();
        assert_eq!(Found::among(&lookup(&a, s.grouping), &short), None);
    }

    #[test]
    fn first_attempt_then_early_retries_then_pass() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        let o = s.attempt(T0, &a);
        assert_eq!((o.verdict, o.reason), (Tempfail, Reason::FirstAttempt));
        // early retries never reset the first-seen time
        for dt in [10, 100, 200, 299] {
            let o = s.attempt(T0 + dt, &a);
            assert_eq!(o.verdict, Tempfail, "at +{dt}");
            assert_eq!(o.reason, Reason::EarlyRetry(300 - dt));
        }
        let grey = s.map.get(&lookup(&a, Grouping::Network).grey).unwrap();
        assert_eq!(
            (grey.first_seen, grey.last_seen, grey.count),
            (T0, T0 + 299, 5)
        );
        let o = s.attempt(T0 + 300, &a);
        assert_eq!(o.verdict, Accept);
        let white = Key::WhiteNet("192.0.2.0/24".parse().unwrap());
        assert_eq!(o.reason, Reason::Passed(white.clone()));
        assert!(!s.map.contains_key(&lookup(&a, Grouping::Network).grey));
        assert_eq!(s.map[&white].expires, T0 + 300 + 30 * 86400);
        // the whitelisted client now passes for any sender and recipient
        let other = att("192.0.2.10", "z@other.example", "v@lab.test", Spf::Fail);
        assert_eq!(
            s.attempt(T0 + 400, &other).reason,
            Reason::Whitelisted(white)
        );
    }

    #[test]
    fn a_client_retrying_faster_than_the_pass_time_gets_through() {
        // the Go filter reset the timer on every retry: this client never passed there
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        let mut t = T0;
        let mut passed_at = None;
        while t < T0 + 1000 {
            if s.verdict(t, &a) == Accept {
                passed_at = Some(t);
                break;
            }
            t += 60;
        }
        assert_eq!(passed_at, Some(T0 + 300));
    }

    #[test]
    fn grey_expiry_starts_over() {
        let mut s = Sim::new();
        s.timing = Timing {
            pass: 300,
            grey_exp: 3600,
            white_exp: 86400,
            trap: 86400,
        };
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0, &a), Tempfail);
        // no retry within grey_exp of the last attempt: the entry is dead
        let o = s.attempt(T0 + 3600, &a);
        assert_eq!((o.verdict, o.reason), (Tempfail, Reason::FirstAttempt));
        assert_eq!(s.verdict(T0 + 3600 + 299, &a), Tempfail);
        assert_eq!(s.verdict(T0 + 3600 + 300, &a), Accept);
    }

    #[test]
    fn grey_expiry_counts_from_the_last_attempt() {
        let mut s = Sim::new();
        s.timing.grey_exp = 1000;
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        s.verdict(T0 + 200, &a);
        // 1100 s after the first attempt but 900 s after the last: still alive, passes
        assert_eq!(s.verdict(T0 + 1100, &a), Accept);
    }

    #[test]
    fn white_expiry_and_refresh_on_use() {
        let mut s = Sim::new();
        s.timing = Timing {
            pass: 60,
            grey_exp: 3600,
            white_exp: 1000,
            trap: 86400,
        };
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        assert_eq!(s.verdict(T0 + 60, &a), Accept);
        let wk = Key::WhiteNet("192.0.2.0/24".parse().unwrap());
        // used at +900: refreshed, so alive at +1800 (more than 1000 after whitelisting)
        assert_eq!(s.verdict(T0 + 900, &a), Accept);
        assert_eq!(s.map[&wk].expires, T0 + 1900);
        assert_eq!(s.map[&wk].count, 2);
        assert_eq!(s.verdict(T0 + 1800, &a), Accept);
        // a use within REFRESH_GRANULARITY of the last refresh writes nothing
        let o = s.attempt(T0 + 1810, &a);
        assert_eq!(o.verdict, Accept);
        assert!(o.changes.is_empty());
        // unused for white_exp: expired, greylisted again
        let o = s.attempt(T0 + 1800 + 1000, &a);
        assert_eq!((o.verdict, o.reason), (Tempfail, Reason::FirstAttempt));
    }

    #[test]
    fn spf_pass_from_another_address_of_the_domain_matches() {
        let mut s = Sim::new();
        let first = att("192.0.2.10", "a@pool.example", "u@lab.test", Spf::Pass);
        let o = s.attempt(T0, &first);
        assert_eq!(o.verdict, Tempfail);
        assert_eq!(
            lookup(&first, Grouping::Network).grey.to_string(),
            "domain:pool.example/a@pool.example/u@lab.test"
        );
        // a retry from another network, authorised by the same SPF record
        let other = att("198.51.100.7", "a@pool.example", "u@lab.test", Spf::Pass);
        assert_eq!(s.verdict(T0 + 100, &other), Tempfail, "still early");
        let o = s.attempt(T0 + 301, &other);
        assert_eq!(o.verdict, Accept);
        assert_eq!(
            o.reason,
            Reason::Passed(Key::WhiteDomain("pool.example".into()))
        );
        // the domain is whitelisted for SPF-pass senders from anywhere
        let third = att("203.0.113.5", "b@pool.example", "w@lab.test", Spf::Pass);
        assert_eq!(
            s.attempt(T0 + 400, &third).reason,
            Reason::Whitelisted(Key::WhiteDomain("pool.example".into()))
        );
        // but not for the same domain without SPF pass (re-checked on each visit)
        for spf in [
            Spf::Fail,
            Spf::SoftFail,
            Spf::None,
            Spf::TempError,
            Spf::PermError,
        ] {
            let forged = att("203.0.113.99", "b@pool.example", "w@lab.test", spf);
            assert_eq!(s.verdict(T0 + 500, &forged), Tempfail, "{spf}");
        }
        // and the client network of the SPF-pass retry was not whitelisted
        assert!(
            !s.map
                .contains_key(&Key::WhiteNet("198.51.100.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn spf_fail_from_another_address_is_greylisted_again() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@strict.example", "u@lab.test", Spf::Pass);
        s.verdict(T0, &a);
        // an unauthorised address of another network: keyed by its own network
        for spf in [Spf::Fail, Spf::None, Spf::Neutral, Spf::Timeout] {
            let b = att("198.51.100.7", "a@strict.example", "u@lab.test", spf);
            let o = s.attempt(T0 + 400, &b);
            assert_eq!(o.verdict, Tempfail, "{spf}");
        }
        let b = att("198.51.100.7", "a@strict.example", "u@lab.test", Spf::Fail);
        assert_eq!(
            lookup(&b, Grouping::Network).grey.to_string(),
            "net:198.51.100.0/24/a@strict.example/u@lab.test"
        );
    }

    #[test]
    fn ipv4_24_and_ipv6_64_grouping() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        let neighbour = att("192.0.2.200", "a@example.org", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 300, &neighbour), Accept);
        let other_net = att("192.0.3.10", "a@example.org", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 301, &other_net), Tempfail);

        let v6 = att("2001:db8:1:2::1", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &v6);
        let v6_same64 = att(
            "2001:db8:1:2:ffff::9",
            "a@example.org",
            "u@lab.test",
            Spf::None,
        );
        assert_eq!(s.verdict(T0 + 300, &v6_same64), Accept);
        let v6_other64 = att("2001:db8:1:3::1", "a@example.org", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 300, &v6_other64), Tempfail);
        // a mapped IPv4 address is its IPv4 address
        assert_eq!(
            client_net("::ffff:192.0.2.77".parse().unwrap(), Grouping::Network),
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn exact_grouping() {
        let mut s = Sim::new();
        s.grouping = Grouping::Exact;
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        let neighbour = att("192.0.2.11", "a@example.org", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 300, &neighbour), Tempfail);
        assert_eq!(s.verdict(T0 + 300, &a), Accept);
        assert!(
            s.map
                .contains_key(&Key::WhiteNet("192.0.2.10/32".parse().unwrap()))
        );
        assert_eq!(
            client_net("2001:db8::5".parse().unwrap(), Grouping::Exact).to_string(),
            "2001:db8::5/128"
        );
    }

    #[test]
    fn triplets_are_distinct() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        let other_rcpt = att("192.0.2.10", "a@example.org", "v@lab.test", Spf::None);
        assert_eq!(
            s.attempt(T0 + 300, &other_rcpt).reason,
            Reason::FirstAttempt
        );
        let other_sender = att("192.0.2.10", "b@example.org", "u@lab.test", Spf::None);
        assert_eq!(
            s.attempt(T0 + 300, &other_sender).reason,
            Reason::FirstAttempt
        );
    }

    #[test]
    fn null_sender_is_keyed_by_helo() {
        let mut s = Sim::new();
        let mut bounce = att("192.0.2.10", "", "u@lab.test", Spf::Pass);
        bounce.helo = "mta.pool.example".into();
        assert_eq!(bounce.domain(), "mta.pool.example");
        let l = lookup(&bounce, Grouping::Network);
        assert_eq!(
            l.grey.to_string(),
            "domain:mta.pool.example/<>@mta.pool.example/u@lab.test"
        );
        s.verdict(T0, &bounce);
        let mut other_helo = bounce.clone();
        other_helo.helo = "other.example".into();
        assert_eq!(
            s.attempt(T0 + 300, &other_helo).reason,
            Reason::FirstAttempt
        );
        assert_eq!(s.verdict(T0 + 300, &bounce), Accept);
    }

    #[test]
    fn greytraps() {
        let mut s = Sim::new();
        s.timing.trap = 1000;
        let mut hit = att("192.0.2.10", "spam@bad.example", "trap@lab.test", Spf::None);
        hit.trap = true;
        let o = s.attempt(T0, &hit);
        let trap_key = Key::Trap("192.0.2.10/32".parse().unwrap());
        assert_eq!(
            (o.verdict, o.reason),
            (Verdict::Trapped, Reason::HitTrap(trap_key.clone()))
        );
        // everything from that address is refused, even after the pass time
        let other = att("192.0.2.10", "spam@bad.example", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 10, &other), Verdict::Trapped);
        assert_eq!(
            s.attempt(T0 + 500, &other).reason,
            Reason::Trapped(trap_key.clone())
        );
        // its neighbours are not trapped (exact address), only greylisted
        let neighbour = att("192.0.2.11", "x@bad.example", "u@lab.test", Spf::None);
        assert_eq!(s.verdict(T0 + 10, &neighbour), Tempfail);
        // the trap expires
        assert_eq!(s.attempt(T0 + 1000, &other).reason, Reason::FirstAttempt);
        // a whitelisted client is not trapped
        let mut white = att("198.51.100.1", "a@good.example", "u@lab.test", Spf::None);
        s.verdict(T0, &white);
        assert_eq!(s.verdict(T0 + 300, &white), Accept);
        white.rcpt = "trap@lab.test".into();
        white.trap = true;
        assert_eq!(s.verdict(T0 + 400, &white), Accept);
        assert_eq!(
            Key::decode(&trap_key.encode()),
            Some(trap_key),
            "trap keys round-trip"
        );
    }

    #[test]
    fn greytraps_from_the_store() {
        let mut s = Sim::new();
        s.timing.trap = 1000;
        let forever = |now| Entry {
            first_seen: now,
            last_seen: now,
            count: 1,
            expires: NEVER,
        };
        s.map
            .insert(Key::Greytrap("trap@lab.test".into()), forever(T0));
        s.map
            .insert(Key::Greytrap("spamtrap.test".into()), forever(T0));
        let trap_key = Key::Trap("192.0.2.10/32".parse().unwrap());
        // a stored address traps the client, as the --traps list does
        let hit = att("192.0.2.10", "spam@bad.example", "trap@lab.test", Spf::None);
        assert_eq!(
            s.attempt(T0, &hit).reason,
            Reason::HitTrap(trap_key.clone())
        );
        let other = att("192.0.2.10", "spam@bad.example", "u@lab.test", Spf::None);
        assert_eq!(
            s.attempt(T0 + 500, &other).reason,
            Reason::Trapped(trap_key)
        );
        // a stored domain traps every address of it; its neighbours only greylisted
        let domain = att(
            "192.0.2.20",
            "x@bad.example",
            "any@spamtrap.test",
            Spf::None,
        );
        assert_eq!(s.verdict(T0, &domain), Verdict::Trapped);
        let fine = att("192.0.2.30", "x@bad.example", "u@lab.test", Spf::None);
        assert_eq!(s.attempt(T0, &fine).reason, Reason::FirstAttempt);
        // greytrap entries never expire, and round-trip through their bytes
        assert!(!forever(T0).expired(Time::MAX - 1));
        let k = Key::Greytrap("trap@lab.test".into());
        assert_eq!(Key::decode(&k.encode()), Some(k.clone()));
        assert_eq!(k.to_string(), "greytrap:trap@lab.test");
        assert_eq!(
            greytrap_keys("trap@lab.test"),
            vec![k, Key::Greytrap("lab.test".into())]
        );
    }

    #[test]
    fn whitelisting_from_outside_an_attempt() {
        let t = Timing::default();
        let new = whitelist_entry(None, &t, T0).unwrap();
        assert_eq!(
            (new.first_seen, new.count, new.expires),
            (T0, 1, T0 + t.white_exp)
        );
        assert_eq!(
            whitelist_entry(Some(new), &t, T0 + 59),
            None,
            "fresh enough"
        );
        let refreshed = whitelist_entry(Some(new), &t, T0 + 60).unwrap();
        assert_eq!((refreshed.first_seen, refreshed.count), (T0, 2));
        assert_eq!(refreshed.expires, T0 + 60 + t.white_exp);
        let expired = whitelist_entry(Some(new), &t, T0 + t.white_exp).unwrap();
        assert_eq!((expired.first_seen, expired.count), (T0 + t.white_exp, 1));
    }

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let keys = [
            Key::Grey {
                origin: Origin::Domain("example.org".into()),
                sender: "a|b@example.org".into(),
                rcpt: "u@lab.test".into(),
            },
            Key::Grey {
                origin: Origin::Net("2001:db8::/64".parse().unwrap()),
                sender: "<>@helo.example".into(),
                rcpt: "u@lab.test".into(),
            },
            Key::WhiteNet("192.0.2.0/24".parse().unwrap()),
            Key::WhiteDomain("example.org".into()),
        ];
        for k in keys {
            assert_eq!(Key::decode(&k.encode()), Some(k.clone()));
        }
        for bad in [
            &b""[..],
            b"x",
            b"g\0q\0a\0b\0c",
            b"w\0n\0not-a-net",
            b"\xff\xfe",
        ] {
            assert_eq!(Key::decode(bad), None);
        }
    }

    #[test]
    fn entries_round_trip_and_corruption_is_detected() {
        let e = Entry {
            first_seen: T0,
            last_seen: T0 + 5,
            count: 3,
            expires: T0 + 100,
        };
        assert_eq!(Entry::decode(&e.encode()), Ok(e));
        assert_eq!(Entry::decode(&[]), Err(CorruptEntry));
        assert_eq!(Entry::decode(&e.encode()[..10]), Err(CorruptEntry));
        let mut wrong_version = e.encode();
        wrong_version[0] = 9;
        assert_eq!(Entry::decode(&wrong_version), Err(CorruptEntry));
        let backwards = Entry {
            first_seen: T0 + 10,
            last_seen: T0,
            count: 1,
            expires: T0 + 20,
        };
        assert_eq!(Entry::decode(&backwards.encode()), Err(CorruptEntry));
    }

    #[test]
    fn an_unreadable_grey_entry_counts_as_absent() {
        // the store passes None for an entry it could not decode
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        let l = lookup(&a, Grouping::Network);
        let o = decide(&Timing::default(), &l, &Found::default(), T0, false);
        assert_eq!(o.reason, Reason::FirstAttempt);
    }

    #[test]
    fn clock_going_backwards_never_panics_or_passes_early() {
        let mut s = Sim::new();
        let a = att("192.0.2.10", "a@example.org", "u@lab.test", Spf::None);
        s.verdict(T0, &a);
        assert_eq!(s.verdict(T0 - 100, &a), Tempfail);
        let grey = s.map[&lookup(&a, Grouping::Network).grey];
        assert_eq!(grey.first_seen, T0);
        assert_eq!(s.verdict(T0 + 300, &a), Accept);
    }
}
