//! An SMTP load generator of our own: N concurrent clients from 127/8 source addresses
//! against one smtpd, each session planned from a seeded RNG so that any session (and
//! the exact bytes of any message it sends) can be rebuilt from `(seed, index)` alone.
//!
//! Two shapes of load:
//! - [`Shape::Bench`]: one message per session, one recipient, a fixed mix of sizes
//!   ([`BENCH_MIX`]: 80 % 1 KB, 18 % 50 KB, 2 % 1 MB, in a fixed order per 50 sessions);
//! - [`Shape::Soak`]: random sessions ([`SoakShape`]): 1–20 recipients (some of them
//!   refused by smtpd), sizes up to a maximum, RSET, several transactions, PIPELINING
//!   when advertised, drops at every phase, stalls, non-UTF-8 bodies, long lines,
//!   dot-stuffed lines.
//!
//! The module has three parts: the pure plan ([`plan_session`], [`message`]), the client
//! that plays a plan over TCP ([`run`]), and the check of what smtpd delivered
//! ([`MaildirCheck`]): every message carries an `X-Load-Id: SEED-SESSION-TX` header, so
//! the check rebuilds the expected body and compares it byte for byte.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// the RNG

/// splitmix64: small, fast, and good enough to shape sessions; seeded per session so that
/// a session's plan does not depend on which thread ran it or when.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// An RNG for one stream of choices.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The RNG of one part (`stream`) of one session of a run.
    pub fn for_session(seed: u64, session: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ session.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mixed = r.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng(mixed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A number in `lo..=hi`, log-uniform (as many small as large orders of magnitude).
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((l + (h - l) * unit).exp() as u64).clamp(lo, hi)
    }
}

// ---------------------------------------------------------------------------------------
// the plan (pure)

/// The bench mix, per 50 sessions: (size in bytes, sessions).
pub const BENCH_MIX: [(usize, u64); 3] = [(1024, 40), (50 * 1024, 9), (1024 * 1024, 1)];

/// The sender domain of every session (unresolvable: SPF `none`).
pub const SENDER_DOMAIN: &str = "load.example";

/// What the soak's sessions look like.
#[derive(Clone, Debug)]
pub struct SoakShape {
    /// The largest message body, in bytes (the issue says 5 MB; `cargo test` uses less).
    pub max_size: usize,
    /// The most recipients of one transaction (20).
    pub max_rcpts: usize,
    /// The longest body line (not dot-stuffed); keep it under the daemon's
    /// `max_filtered_line` or the filters refuse such messages.
    pub max_line: usize,
    /// The shortest and longest stall of a stalling client.
    pub stall: (Duration, Duration),
    /// Percent of sessions that stall once.
    pub stall_percent: u64,
    /// Percent of sessions that drop the connection at a random phase.
    pub drop_percent: u64,
}

impl Default for SoakShape {
    fn default() -> Self {
        SoakShape {
            max_size: 5 * 1024 * 1024,
            max_rcpts: 20,
            max_line: 1990,
            stall: (Duration::from_millis(1500), Duration::from_secs(8)),
            stall_percent: 3,
            drop_percent: 15,
        }
    }
}

/// The kind of load.
#[derive(Clone, Debug)]
pub enum Shape {
    /// One message, one recipient, [`BENCH_MIX`] sizes.
    Bench,
    /// Random sessions.
    Soak(SoakShape),
}

/// The phase of a session: where it was refused, dropped or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Before or at the greeting.
    Connect,
    /// EHLO.
    Ehlo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (waiting for 354).
    Data,
    /// The message content, up to the reply after the final dot.
    Body,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Ehlo => "ehlo",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Body => "body",
            Phase::Rset => "rset",
            Phase::Quit => "quit",
        })
    }
}

/// Where a planned drop happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropAt {
    /// Right after the greeting, before EHLO.
    AfterConnect,
    /// After the EHLO reply.
    AfterEhlo,
    /// In the first transaction, after sending this many RCPT TO (at least one).
    MidRcpt(usize),
    /// In the first transaction, after this many bytes of the message content.
    MidData(usize),
    /// After the last transaction, instead of QUIT.
    BeforeQuit,
}

/// Where a planned stall happens (the client sleeps, then goes on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallAt {
    /// Before EHLO.
    BeforeEhlo,
    /// Before the first MAIL FROM.
    BeforeMail,
    /// Halfway through the first message's content.
    MidData,
    /// Before QUIT.
    BeforeQuit,
}

/// What the body of a message is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Plain ASCII text lines of 76 characters (the bench's).
    Text,
    /// A mix: text, non-UTF-8 bytes, long lines, dot lines, empty lines, tabs and bars.
    Mixed,
}

/// One transaction of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPlan {
    /// The envelope sender (`""` for the null sender).
    pub sender: String,
    /// The recipients in the order sent; `rcpt_valid[i]` tells whether smtpd accepts it.
    pub rcpts: Vec<String>,
    /// Whether smtpd is expected to accept each recipient.
    pub rcpt_valid: Vec<bool>,
    /// Abort this transaction with RSET after the recipients, instead of DATA.
    pub rset_before_data: bool,
    /// Body size in bytes (about: lines are whole).
    pub size: usize,
    /// What the body is made of.
    pub body: BodyKind,
}

/// One session, rebuilt from `(seed, index)` by [`plan_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPlan {
    /// The run's seed.
    pub seed: u64,
    /// The session's number in the run.
    pub index: u64,
    /// The EHLO name.
    pub ehlo: String,
    /// Send MAIL, RCPT and DATA in one write when the server advertises PIPELINING.
    pub pipelining: bool,
    /// The transactions, in order (RSET between them).
    pub txs: Vec<TxPlan>,
    /// A planned drop.
    pub drop: Option<DropAt>,
    /// A planned stall and its length.
    pub stall: Option<(StallAt, Duration)>,
}

/// The accepted recipients the rig's smtpd delivers (one maildir file each); see
/// [`crate::RCPT_OK`] and [`crate::RCPTS_OK_MORE`].
pub fn valid_recipients() -> Vec<String> {
    let mut v = vec![crate::RCPT_OK.to_string()];
    v.extend(crate::RCPTS_OK_MORE.iter().map(|s| s.to_string()));
    v
}

/// Plans session `index` of a run with `seed`.
pub fn plan_session(seed: u64, index: u64, shape: &Shape) -> SessionPlan {
    let mut rng = Rng::for_session(seed, index, 0);
    let valid = valid_recipients();
    match shape {
        Shape::Bench => {
            let slot = index % 50;
            let mut acc = 0;
            let mut size = BENCH_MIX[0].0;
            for (s, n) in BENCH_MIX {
                acc += n;
                if slot < acc {
                    size = s;
                    break;
                }
            }
            SessionPlan {
                seed,
                index,
                ehlo: "bench.load.example".into(),
                pipelining: true,
                txs: vec![TxPlan {
                    sender: format!("bench{}@{SENDER_DOMAIN}", index % 100),
                    rcpts: vec![valid[0].clone()],
                    rcpt_valid: vec![true],
                    rset_before_data: false,
                    size,
                    body: BodyKind::Text,
                }],
                drop: None,
                stall: None,
            }
        }
        Shape::Soak(s) => {
            let ntx = match rng.next_u64() % 10 {
                0 => 2,
                1 => 3,
                _ => 1,
            };
            let mut txs = Vec::new();
            for t in 0..ntx {
                let n = rng.range(1, s.max_rcpts.max(1) as u64) as usize;
                // distinct valid recipients (smtpd delivers each once), the rest refused
                let n_valid = rng.range(1, n.min(valid.len()) as u64) as usize;
                let mut rcpts: Vec<(String, bool)> =
                    valid[..n_valid].iter().map(|r| (r.clone(), true)).collect();
                for k in 0..n - n_valid {
                    let bad = if rng.percent(50) {
                        format!("nobody{k}@{}", crate::MAIL_DOMAIN)
                    } else {
                        format!("someone{k}@foreign.example")
                    };
                    rcpts.push((bad, false));
                }
                // shuffle (Fisher-Yates) so refused ones come anywhere
                for i in (1..rcpts.len()).rev() {
                    let j = rng.range(0, i as u64) as usize;
                    rcpts.swap(i, j);
                }
                let size = match rng.next_u64() % 100 {
                    0..=69 => rng.log_range(200, 10_000),
                    70..=94 => rng.log_range(10_000, 200_000),
                    _ => rng.log_range(200_000, s.max_size.max(200_000) as u64),
                } as usize;
                let sender = if rng.percent(3) {
                    String::new()
                } else {
                    format!("s{}.{t}@{SENDER_DOMAIN}", index % 97)
                };
                txs.push(TxPlan {
                    sender,
                    rcpt_valid: rcpts.iter().map(|r| r.1).collect(),
                    rcpts: rcpts.into_iter().map(|r| r.0).collect(),
                    rset_before_data: rng.percent(5),
                    size: size.min(s.max_size),
                    body: BodyKind::Mixed,
                });
            }
            let drop = rng
                .percent(s.drop_percent)
                .then(|| match rng.next_u64() % 5 {
                    0 => DropAt::AfterConnect,
                    1 => DropAt::AfterEhlo,
                    2 => DropAt::MidRcpt(rng.range(1, txs[0].rcpts.len() as u64) as usize),
                    3 => DropAt::MidData(rng.range(0, txs[0].size as u64) as usize),
                    _ => DropAt::BeforeQuit,
                });
            let stall = rng.percent(s.stall_percent).then(|| {
                let at = match rng.next_u64() % 4 {
                    0 => StallAt::BeforeEhlo,
                    1 => StallAt::BeforeMail,
                    2 => StallAt::MidData,
                    _ => StallAt::BeforeQuit,
                };
                let (lo, hi) = (s.stall.0.as_millis() as u64, s.stall.1.as_millis() as u64);
                (at, Duration::from_millis(rng.range(lo, hi)))
            });
            SessionPlan {
                seed,
                index,
                ehlo: format!("c{}.{SENDER_DOMAIN}", index % 1000),
                pipelining: rng.percent(60),
                txs,
                drop,
                stall,
            }
        }
    }
}

/// The `X-Load-Id` of a message: `SEED-SESSION-TX`.
pub fn load_id(seed: u64, index: u64, tx: usize) -> String {
    format!("{seed}-{index}-{tx}")
}

/// Parses an `X-Load-Id` value.
pub fn parse_load_id(s: &str) -> Option<(u64, u64, usize)> {
    let mut it = s.trim().split('-');
    let (a, b, c) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?, c.parse().ok()?))
}

/// The header of transaction `tx` of a session (`\n` line ends, ending with the empty line).
pub fn message_header(plan: &SessionPlan, tx: usize) -> Vec<u8> {
    let t = &plan.txs[tx];
    let id = load_id(plan.seed, plan.index, tx);
    let from = if t.sender.is_empty() {
        format!("MAILER-DAEMON@{SENDER_DOMAIN}")
    } else {
        t.sender.clone()
    };
    format!(
        "From: <{from}>\nTo: <{}>\nSubject: load {id}\nDate: Sun, 22 Nov 2026 12:00:00 +0000\nMessage-Id: <{id}@{SENDER_DOMAIN}>\nX-Load-Id: {id}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n",
        t.rcpts[0]
    )
    .into_bytes()
}

/// The body of transaction `tx` of a session: lines ending in `\n`, none holding CR, LF
/// or NUL (so that the delivered form is exactly this).
pub fn message_body(plan: &SessionPlan, tx: usize, max_line: usize) -> Vec<u8> {
    let t = &plan.txs[tx];
    let mut rng = Rng::for_session(plan.seed, plan.index, 1 + tx as u64);
    let mut out = Vec::with_capacity(t.size + 200);
    const WORDS: [&str; 12] = [
        "lorem", "ipsum", "mail", "relay", "filter", "queue", "envelope", "smtpd", "pipe",
        "header", "body", "session",
    ];
    let text_line = |rng: &mut Rng, out: &mut Vec<u8>, len: usize| {
        let start = out.len();
        while out.len() - start < len {
            let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            out.push(b' ');
        }
        out.truncate(start + len);
    };
    while out.len() < t.size {
        match t.body {
            BodyKind::Text => text_line(&mut rng, &mut out, 76),
            BodyKind::Mixed => match rng.next_u64() % 20 {
                0 => {
                    // non-UTF-8: latin-1, C1 controls, a broken UTF-8 sequence
                    out.extend_from_slice(b"caf\xe9 cr\xe8me \x80\x9f \xc3\x28 \xff\xfe end");
                }
                1 => {
                    let n = rng.range(990, max_line.max(990) as u64) as usize;
                    text_line(&mut rng, &mut out, n);
                }
                2 => {
                    let dots: [&[u8]; 5] = [b".", b"..", b"...", b".leading dot", b"..two"];
                    out.extend_from_slice(dots[(rng.next_u64() % 5) as usize]);
                }
                3 => {} // an empty line
                4 => out.extend_from_slice(b"\ttab|bar|\t|trailing space "),
                5 => {
                    // UTF-8, and bytes that look like protocol separators
                    out.extend_from_slice("€ ünïcödé | filter|0.7|x".as_bytes());
                }
                _ => {
                    let n = rng.range(1, 78) as usize;
                    text_line(&mut rng, &mut out, n);
                }
            },
        }
        out.push(b'\n');
    }
    out
}

/// The whole message (header and body, `\n` line ends).
pub fn message(plan: &SessionPlan, tx: usize, max_line: usize) -> Vec<u8> {
    let mut m = message_header(plan, tx);
    m.extend_from_slice(&message_body(plan, tx, max_line));
    m
}

/// The DATA content on the wire: CRLF, dot-stuffed, with the final `.` line.
pub fn wire_form(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 40 + 8);
    for line in msg.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

// ---------------------------------------------------------------------------------------
// the client

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Every transaction the plan sent to the end was accepted and QUIT was answered.
    Completed,
    /// The client dropped the connection as planned at this phase ([`Phase::Quit`]: after
    /// its messages were accepted, instead of QUIT; see [`SessionResult::accepted`]).
    Dropped(Phase),
    /// smtpd answered with a refusal (code) where the plan expected success.
    Refused(Phase, u16),
    /// No answer in time, a connection closed by smtpd, a reply that is not SMTP: a
    /// failure of the soak.
    Failed(Phase, String),
}

impl Outcome {
    /// A short key for summaries (`completed`, `dropped:rcpt`, `refused:rcpt:451`,
    /// `failed:body:timeout`).
    pub fn key(&self) -> String {
        match self {
            Outcome::Completed => "completed".into(),
            Outcome::Dropped(p) => format!("dropped:{p}"),
            Outcome::Refused(p, c) => format!("refused:{p}:{c}"),
            Outcome::Failed(p, e) => format!("failed:{p}:{e}"),
        }
    }
}

/// What one session did.
#[derive(Clone, Debug)]
pub struct SessionResult {
    /// The session's number.
    pub index: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// From connect to the 250 after the first message's final dot.
    pub first_accept: Option<Duration>,
    /// When, from connect, the first transaction's replies came: where the time of
    /// `first_accept` went, phase by phase.
    pub marks: PhaseMarks,
    /// Accepted messages: (transaction, accepted recipients).
    pub accepted: Vec<(usize, usize)>,
    /// The whole session.
    pub elapsed: Duration,
    /// Connections lost in smtpd's listen queue (see [`connection_lost_in_listen_queue`])
    /// and made again, as an MTA would after its greeting timeout.
    pub reconnects: u32,
}

/// Times from connect at which a session's replies came, for its first transaction.
/// Each is `None` when the session did not get that far.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseMarks {
    /// The 220 greeting (connect filters, smtpd's own DNS and banner).
    pub greeted: Option<Duration>,
    /// The 250 to EHLO.
    pub ehlo: Option<Duration>,
    /// The 354 to DATA, after MAIL and RCPT (sent pipelined where smtpd offers it).
    pub data: Option<Duration>,
    /// The 250 after the final dot (the same as `first_accept`).
    pub accepted: Option<Duration>,
}

impl PhaseMarks {
    /// The four phases' lengths: connect → 220, EHLO → 250, MAIL … → 354, body → 250.
    pub fn phases(&self) -> [Option<Duration>; 4] {
        let between = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        [
            self.greeted,
            between(self.greeted, self.ehlo),
            between(self.ehlo, self.data),
            between(self.data, self.accepted),
        ]
    }
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// smtpd's listener.
    pub target: SocketAddr,
    /// Client source addresses, used in turn.
    pub sources: Vec<IpAddr>,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Sessions in all.
    pub sessions: u64,
    /// The seed (print it: the run can be replayed).
    pub seed: u64,
    /// Bench or soak.
    pub shape: Shape,
    /// Longest a session may take beyond its planned stall: past it, it fails as a hang.
    pub deadline: Duration,
}

impl LoadConfig {
    /// The longest body line of the shape.
    pub fn max_line(&self) -> usize {
        match &self.shape {
            Shape::Bench => 76,
            Shape::Soak(s) => s.max_line,
        }
    }
}

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    deadline: Instant,
}

enum Step {
    Reply(u16),
    Io(String),
}

impl Conn {
    fn arm(&self) -> std::io::Result<()> {
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }

    /// Reads one reply (multi-line) and returns its code; an I/O problem as text.
    fn reply(&mut self) -> Step {
        self.reply_ext().0
    }

    /// Reads one reply; also says whether a line of it is `PIPELINING`.
    fn reply_ext(&mut self) -> (Step, bool) {
        let mut pipelining = false;
        loop {
            if let Err(e) = self.arm() {
                return (Step::Io(io_kind(&e)), pipelining);
            }
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return (Step::Io("closed".into()), pipelining),
                Ok(_) => {}
                Err(e) => return (Step::Io(io_kind(&e)), pipelining),
            }
            if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
                return (Step::Io("bad-reply".into()), pipelining);
            }
            if line[4..].starts_with(b"PIPELINING") {
                pipelining = true;
            }
            let code = (line[0] - b'0') as u16 * 100
                + (line[1] - b'0') as u16 * 10
                + (line[2] - b'0') as u16;
            if line[3] != b'-' {
                return (Step::Reply(code), pipelining);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.arm().map_err(|e| io_kind(&e))?;
        self.stream.write_all(bytes).map_err(|e| io_kind(&e))
    }

    fn drop_now(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => "timeout".into(),
        ConnectionReset => "reset".into(),
        ConnectionRefused => "refused".into(),
        BrokenPipe => "broken-pipe".into(),
        _ => format!("{:?}", e.kind()),
    }
}

/// Plays one session. Never panics: the result says how it ended.
pub fn run_session(cfg: &LoadConfig, plan: &SessionPlan) -> SessionResult {
    let start = Instant::now();
    let stall_len = plan.stall.map(|s| s.1).unwrap_or_default();
    let mut res = SessionResult {
        index: plan.index,
        outcome: Outcome::Completed,
        first_accept: None,
        marks: PhaseMarks::default(),
        accepted: Vec::new(),
        elapsed: Duration::ZERO,
        reconnects: 0,
    };
    let src = cfg.sources[(plan.index % cfg.sources.len() as u64) as usize];
    res.outcome = match play(
        cfg,
        plan,
        src,
        start + cfg.deadline + stall_len,
        start,
        &mut res,
    ) {
        Ok(o) | Err(o) => o,
    };
    res.elapsed = start.elapsed();
    res
}

fn stall_if(plan: &SessionPlan, at: StallAt) {
    if let Some((s, d)) = plan.stall
        && s == at
    {
        std::thread::sleep(d);
    }
}

/// How long a client waits for the greeting before it checks whether smtpd's side of
/// the connection exists at all (and then again each time as long). Short: the check
/// asks the kernel (a connection that smtpd has, even one still in its accept queue, is
/// waited for until the deadline), and a lost one would otherwise put this wait into
/// the measured times.
const GREETING_CHECK: Duration = Duration::from_millis(500);
/// The most connections a session makes again after losing one in the listen queue.
const MAX_RECONNECTS: u32 = 10;

/// Connects from `src` and reads the 220 greeting. A connection lost in smtpd's listen
/// queue ([`connection_lost_in_listen_queue`]) is closed and made again (counted in
/// `reconnects`), as an MTA would after its greeting timeout, only sooner.
fn connect_greeted(
    target: SocketAddr,
    src: IpAddr,
    deadline: Instant,
    reconnects: &mut u32,
) -> Result<Conn, Outcome> {
    use Phase::Connect;
    loop {
        let stream = crate::connect_from(SocketAddr::new(src, 0), target)
            .map_err(|e| Outcome::Failed(Connect, io_kind(&e)))?;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(|e| Outcome::Failed(Connect, io_kind(&e)))?;
        let reader = BufReader::with_capacity(
            8192,
            stream
                .try_clone()
                .map_err(|e| Outcome::Failed(Connect, io_kind(&e)))?,
        );
        let check_at = Instant::now() + GREETING_CHECK;
        let mut c = Conn {
            stream,
            reader,
            deadline: check_at.min(deadline),
        };
        loop {
            match c.reply() {
                Step::Reply(220) => {
                    c.deadline = deadline;
                    return Ok(c);
                }
                Step::Reply(code) => return Err(Outcome::Refused(Connect, code)),
                Step::Io(e) if e == "timeout" && Instant::now() < deadline => {
                    if connection_lost_in_listen_queue(target, local) {
                        break;
                    }
                    // smtpd has the connection: the greeting is only late
                    c.deadline = (Instant::now() + GREETING_CHECK).min(deadline);
                }
                Step::Io(e) => return Err(Outcome::Failed(Connect, e)),
            }
        }
        c.drop_now();
        *reconnects += 1;
        if *reconnects > MAX_RECONNECTS {
            return Err(Outcome::Failed(Connect, "lost-in-listen-queue".into()));
        }
    }
}

/// Whether the kernel has no socket for smtpd's side of a connection that the client
/// sees as established. smtpd listens with a backlog of 5 (`SMTPD_BACKLOG`); with SYN
/// cookies on (Linux's default), a burst of connections answers every SYN with a
/// cookie, and the final ACK of one that finds the accept queue full is dropped
/// (`TcpExtListenOverflows`) without any state: the client waits for a greeting that
/// never comes. Read from `/proc/net/tcp` (IPv4; an IPv6 target is never "lost").
pub fn connection_lost_in_listen_queue(server: SocketAddr, client: SocketAddr) -> bool {
    let (SocketAddr::V4(server), SocketAddr::V4(client)) = (server, client) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let parse = |field: &str| -> Option<(std::net::Ipv4Addr, u16)> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some((ip.to_ne_bytes().into(), u16::from_str_radix(port, 16).ok()?))
    };
    let want_local = (*server.ip(), server.port());
    let want_remote = (*client.ip(), client.port());
    !table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace().skip(1);
        let (Some(local), Some(remote)) = (f.next(), f.next()) else {
            return false;
        };
        parse(local) == Some(want_local) && parse(remote) == Some(want_remote)
    })
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExtListenOverflows` in `/proc/net/netstat`), machine-wide.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// The session; `Err` ends it early with that outcome.
fn play(
    cfg: &LoadConfig,
    plan: &SessionPlan,
    src: IpAddr,
    deadline: Instant,
    start: Instant,
    res: &mut SessionResult,
) -> Result<Outcome, Outcome> {
    use Phase::*;
    let failed = |p: Phase, e: String| Outcome::Failed(p, e);
    let mut c = connect_greeted(cfg.target, src, deadline, &mut res.reconnects)?;
    res.marks.greeted = Some(start.elapsed());
    let expect = |c: &mut Conn, p: Phase, want: u16| -> Result<(), Outcome> {
        match c.reply() {
            Step::Reply(code) if code == want => Ok(()),
            Step::Reply(code) => Err(Outcome::Refused(p, code)),
            Step::Io(e) => Err(Outcome::Failed(p, e)),
        }
    };
    if plan.drop == Some(DropAt::AfterConnect) {
        c.drop_now();
        return Err(Outcome::Dropped(Connect));
    }
    stall_if(plan, StallAt::BeforeEhlo);
    c.send(format!("EHLO {}\r\n", plan.ehlo).as_bytes())
        .map_err(|e| failed(Ehlo, e))?;
    let server_pipelining = match c.reply_ext() {
        (Step::Reply(250), p) => {
            res.marks.ehlo = Some(start.elapsed());
            p
        }
        (Step::Reply(code), _) => return Err(Outcome::Refused(Ehlo, code)),
        (Step::Io(e), _) => return Err(failed(Ehlo, e)),
    };
    if plan.drop == Some(DropAt::AfterEhlo) {
        c.drop_now();
        return Err(Outcome::Dropped(Ehlo));
    }
    stall_if(plan, StallAt::BeforeMail);
    let pipelined = plan.pipelining && server_pipelining;
    let max_line = cfg.max_line();
    for (t, tx) in plan.txs.iter().enumerate() {
        let first = t == 0;
        let mid_rcpt = match plan.drop {
            Some(DropAt::MidRcpt(k)) if first => Some(k.min(tx.rcpts.len())),
            _ => None,
        };
        let nrcpt = mid_rcpt.unwrap_or(tx.rcpts.len());
        let with_data = mid_rcpt.is_none() && !tx.rset_before_data;
        let mail = format!("MAIL FROM:<{}>\r\n", tx.sender);
        let rcpt = |r: &str| format!("RCPT TO:<{r}>\r\n");
        // replies: MAIL, the RCPTs, maybe DATA
        let mut accepted_rcpts = 0;
        let mut data_ok = false;
        if pipelined {
            let mut batch = mail.into_bytes();
            for r in &tx.rcpts[..nrcpt] {
                batch.extend_from_slice(rcpt(r).as_bytes());
            }
            if with_data {
                batch.extend_from_slice(b"DATA\r\n");
            }
            c.send(&batch).map_err(|e| failed(Mail, e))?;
            if mid_rcpt.is_some() {
                c.drop_now();
                return Err(Outcome::Dropped(Rcpt));
            }
            let mail_code = match c.reply() {
                Step::Reply(code) => code,
                Step::Io(e) => return Err(failed(Mail, e)),
            };
            for (i, _) in tx.rcpts.iter().enumerate() {
                match c.reply() {
                    Step::Reply(250) => accepted_rcpts += 1,
                    Step::Reply(code) if mail_code == 250 && tx.rcpt_valid[i] => {
                        return Err(Outcome::Refused(Rcpt, code));
                    }
                    Step::Reply(_) => {}
                    Step::Io(e) => return Err(failed(Rcpt, e)),
                }
            }
            if mail_code != 250 {
                return Err(Outcome::Refused(Mail, mail_code));
            }
            if with_data {
                match c.reply() {
                    Step::Reply(354) => {
                        data_ok = true;
                        if first {
                            res.marks.data = Some(start.elapsed());
                        }
                    }
                    Step::Reply(code) => return Err(Outcome::Refused(Data, code)),
                    Step::Io(e) => return Err(failed(Data, e)),
                }
            }
        } else {
            c.send(mail.as_bytes()).map_err(|e| failed(Mail, e))?;
            expect(&mut c, Mail, 250)?;
            for (i, r) in tx.rcpts[..nrcpt].iter().enumerate() {
                c.send(rcpt(r).as_bytes()).map_err(|e| failed(Rcpt, e))?;
                match c.reply() {
                    Step::Reply(250) => accepted_rcpts += 1,
                    Step::Reply(code) if tx.rcpt_valid[i] => {
                        return Err(Outcome::Refused(Rcpt, code));
                    }
                    Step::Reply(_) => {}
                    Step::Io(e) => return Err(failed(Rcpt, e)),
                }
            }
            if mid_rcpt.is_some() {
                c.drop_now();
                return Err(Outcome::Dropped(Rcpt));
            }
            if with_data {
                c.send(b"DATA\r\n").map_err(|e| failed(Data, e))?;
                expect(&mut c, Data, 354)?;
                data_ok = true;
                if first {
                    res.marks.data = Some(start.elapsed());
                }
            }
        }
        if !data_ok {
            c.send(b"RSET\r\n").map_err(|e| failed(Rset, e))?;
            expect(&mut c, Rset, 250)?;
            continue;
        }
        let wire = wire_form(&message(plan, t, max_line));
        let cut = match plan.drop {
            Some(DropAt::MidData(n)) if first => Some(n.min(wire.len().saturating_sub(3))),
            _ => None,
        };
        let stall_mid = first && matches!(plan.stall, Some((StallAt::MidData, _)));
        let end = cut.unwrap_or(wire.len());
        let half = if stall_mid { end / 2 } else { end };
        for (a, b) in [(0, half), (half, end)] {
            for chunk in wire[a..b].chunks(64 * 1024) {
                c.send(chunk).map_err(|e| failed(Body, e))?;
            }
            if a == 0 && stall_mid {
                stall_if(plan, StallAt::MidData);
            }
        }
        if cut.is_some() {
            c.drop_now();
            return Err(Outcome::Dropped(Body));
        }
        match c.reply() {
            Step::Reply(250) => {
                if first {
                    res.first_accept = Some(start.elapsed());
                    res.marks.accepted = res.first_accept;
                }
                res.accepted.push((t, accepted_rcpts));
            }
            Step::Reply(code) => return Err(Outcome::Refused(Body, code)),
            Step::Io(e) => return Err(failed(Body, e)),
        }
        if t + 1 < plan.txs.len() {
            c.send(b"RSET\r\n").map_err(|e| failed(Rset, e))?;
            expect(&mut c, Rset, 250)?;
        }
    }
    stall_if(plan, StallAt::BeforeQuit);
    if plan.drop == Some(DropAt::BeforeQuit) {
        c.drop_now();
        return Ok(Outcome::Dropped(Quit));
    }
    c.send(b"QUIT\r\n").map_err(|e| failed(Quit, e))?;
    expect(&mut c, Quit, 221)?;
    Ok(Outcome::Completed)
}

/// The results of a run.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// One per session, in the order they ended.
    pub results: Vec<SessionResult>,
    /// When each session ended (from the start of the run), in `results`' order.
    pub ended: Vec<Duration>,
    /// How long the clients took to start (they start [`RAMP_STEP`] apart).
    pub ramp: Duration,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl RunReport {
    /// This run followed by `later` (run right after it), as one report.
    pub fn then(mut self, later: RunReport) -> RunReport {
        let offset = self.elapsed;
        self.results.extend(later.results);
        self.ended
            .extend(later.ended.into_iter().map(|t| t + offset));
        self.elapsed += later.elapsed;
        self
    }

    /// Sessions per outcome key, sorted.
    pub fn outcomes(&self) -> Vec<(String, u64)> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for r in &self.results {
            *m.entry(r.outcome.key()).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v
    }

    /// The sessions that failed (no answer in time, connection lost, ...).
    pub fn failures(&self) -> Vec<&SessionResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(..)))
            .collect()
    }

    /// Accepted messages (transactions with a 250 after the final dot).
    pub fn accepted_messages(&self) -> u64 {
        self.results.iter().map(|r| r.accepted.len() as u64).sum()
    }

    /// The files smtpd should deliver: one per accepted recipient of each accepted message,
    /// keyed by `X-Load-Id`.
    pub fn expected_deliveries(&self, seed: u64) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in &self.results {
            for &(tx, n) in &r.accepted {
                m.insert(load_id(seed, r.index, tx), n);
            }
        }
        m
    }

    /// Connections made again after smtpd's listen queue lost them.
    pub fn reconnects(&self) -> u64 {
        self.results.iter().map(|r| r.reconnects as u64).sum()
    }

    /// Completed sessions per second of wall time.
    ///
    /// Counted once every client runs (after [`RunReport::ramp`]), so that the ramp-up,
    /// the same fixed time in every run, does not weigh more in a short run than in a
    /// long one.
    pub fn sessions_per_sec(&self) -> f64 {
        let window = self.elapsed.saturating_sub(self.ramp);
        if window.is_zero() {
            return self.results.len() as f64 / self.elapsed.as_secs_f64().max(1e-9);
        }
        let n = self.ended.iter().filter(|&&t| t > self.ramp).count();
        n as f64 / window.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of connect → 250 after the first message.
    pub fn accept_quantile(&self, q: f64) -> Option<Duration> {
        quantile(
            self.results.iter().filter_map(|r| r.first_accept).collect(),
            q,
        )
    }

    /// The `q` quantile of each of [`PhaseMarks::phases`], over the sessions that went
    /// through all four.
    pub fn phase_quantiles(&self, q: f64) -> [Option<Duration>; 4] {
        let complete: Vec<[Duration; 4]> = self
            .results
            .iter()
            .filter_map(|r| {
                let [a, b, c, d] = r.marks.phases();
                Some([a?, b?, c?, d?])
            })
            .collect();
        std::array::from_fn(|i| quantile(complete.iter().map(|p| p[i]).collect(), q))
    }
}

/// The `q` quantile (0..=1) of `v`, `None` when it is empty.
pub fn quantile(mut v: Vec<Duration>, q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    Some(v[i.min(v.len() - 1)])
}

/// Runs the load: `cfg.concurrency` threads take sessions in turn until `cfg.sessions`
/// have run. `on_progress(done)` is called (from a worker) each time a session ends.
pub fn run(cfg: &LoadConfig, on_progress: &(dyn Fn(u64) + Sync)) -> RunReport {
    run_range(cfg, 0..cfg.sessions, on_progress)
}

/// Runs sessions `range` of the run `cfg` plans (so a run can be made in parts, with a
/// quiet moment between them); `on_progress` is given the number of sessions done
/// counted from session 0.
pub fn run_range(
    cfg: &LoadConfig,
    range: std::ops::Range<u64>,
    on_progress: &(dyn Fn(u64) + Sync),
) -> RunReport {
    let clients = cfg.concurrency.max(1);
    let next = AtomicU64::new(range.start);
    let done = AtomicU64::new(range.start);
    let results = Mutex::new(Vec::with_capacity(
        range.end.saturating_sub(range.start) as usize
    ));
    let start = Instant::now();
    std::thread::scope(|s| {
        for k in 0..clients {
            let (next, done, results) = (&next, &done, &results);
            s.spawn(move || {
                // clients start apart, as independent senders would, not in one burst
                // that only fills smtpd's listen queue (backlog 5)
                std::thread::sleep(RAMP_STEP * k as u32);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        break;
                    }
                    let plan = plan_session(cfg.seed, i, &cfg.shape);
                    let r = run_session(cfg, &plan);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((r, start.elapsed()));
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    on_progress(n);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let (results, ended) = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .unzip();
    RunReport {
        results,
        ended,
        ramp: RAMP_STEP * (clients as u32 - 1),
        elapsed,
    }
}

/// The time between the starts of two clients.
pub const RAMP_STEP: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// the check of deliveries

/// Checks delivered messages in a maildir (`new/`) against the plan and removes each
/// file once checked (a long soak delivers far more than the disk should hold).
pub struct MaildirCheck {
    new_dir: PathBuf,
    seed: u64,
    shape: Shape,
    max_line: usize,
    /// Files checked per `X-Load-Id`.
    pub delivered: HashMap<String, usize>,
    /// Files whose body was not the one sent, or that carry no (or a foreign) id.
    pub problems: Vec<String>,
    /// Files checked in all.
    pub files: u64,
}

impl MaildirCheck {
    /// Checks `maildir/new` for a run with this seed and shape.
    pub fn new(maildir: &Path, cfg: &LoadConfig) -> MaildirCheck {
        MaildirCheck {
            new_dir: maildir.join("new"),
            seed: cfg.seed,
            shape: cfg.shape.clone(),
            max_line: cfg.max_line(),
            delivered: HashMap::new(),
            problems: Vec::new(),
            files: 0,
        }
    }

    /// Checks and removes every file now in `new/`; returns how many.
    pub fn scan(&mut self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.new_dir) else {
            return 0;
        };
        let paths: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        let mut n = 0;
        for p in paths {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            n += 1;
            self.files += 1;
            if let Err(e) = self.check(&bytes) {
                if self.problems.len() < 50 {
                    self.problems.push(format!("{}: {e}", p.display()));
                } else if self.problems.len() == 50 {
                    self.problems.push("(more problems not listed)".into());
                }
            }
            let _ = std::fs::remove_file(&p);
        }
        n
    }

    fn check(&mut self, file: &[u8]) -> Result<(), String> {
        let split = file
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or("no end of header")?;
        let (header, body) = (&file[..split + 1], &file[split + 2..]);
        let needle = b"\nX-Load-Id: ";
        let at = header
            .windows(needle.len())
            .position(|w| w == needle)
            .ok_or("no X-Load-Id header")?;
        let rest = &header[at + needle.len()..];
        let id_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let id = String::from_utf8_lossy(&rest[..id_end]).into_owned();
        let (seed, index, tx) = parse_load_id(&id).ok_or(format!("bad id {id:?}"))?;
        if seed != self.seed {
            return Err(format!("id {id} is not from this run (seed {})", self.seed));
        }
        let plan = plan_session(seed, index, &self.shape);
        if tx >= plan.txs.len() {
            return Err(format!("id {id}: no such transaction"));
        }
        *self.delivered.entry(id.clone()).or_default() += 1;
        let expected = message_body(&plan, tx, self.max_line);
        if body != expected.as_slice() {
            let first_diff = body
                .iter()
                .zip(expected.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(body.len().min(expected.len()));
            return Err(format!(
                "id {id}: body differs at byte {first_diff} (got {} bytes, sent {})",
                body.len(),
                expected.len()
            ));
        }
        Ok(())
    }

    /// Compares what was delivered with what was accepted: every accepted message arrived
    /// once per accepted recipient, nothing else arrived. Returns the discrepancies.
    pub fn compare(&self, expected: &HashMap<String, usize>) -> Vec<String> {
        let mut out = Vec::new();
        for (id, &n) in expected {
            let got = self.delivered.get(id).copied().unwrap_or(0);
            if got != n {
                out.push(format!(
                    "{id}: {got} files delivered, {n} recipients accepted"
                ));
            }
        }
        for (id, &got) in &self.delivered {
            if !expected.contains_key(id) {
                out.push(format!("{id}: {got} files delivered, never accepted"));
            }
        }
        out.sort();
        out
    }

    /// Scans until every expected file arrived or `quiet` passed without a new file.
    pub fn wait_complete(&mut self, expected: &HashMap<String, usize>, quiet: Duration) {
        let want: usize = expected.values().sum();
        let mut last_new = Instant::now();
        loop {
            if self.scan() > 0 {
                last_new = Instant::now();
            }
            let got: usize = self.delivered.values().sum();
            if got >= want || last_new.elapsed() > quiet {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `scan` on a [`MaildirCheck`] every 200 ms in a thread until `stop` is set.
pub fn scan_in_background(
    check: Arc<Mutex<MaildirCheck>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            check.lock().unwrap_or_else(|e| e.into_inner()).scan();
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

// ---------------------------------------------------------------------------------------
// process memory

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// PIDs of processes in the mount namespace of `ns_pid` whose executable's file name is
/// `exe_name` (the filter itself, never the shell that started it).
pub fn processes_named_in_ns_of(ns_pid: u32, exe_name: &str) -> Vec<u32> {
    let deleted = format!("{exe_name} (deleted)");
    processes_in_ns_of(ns_pid)
        .into_iter()
        .filter(|(_, name)| name == exe_name || *name == deleted)
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process in the mount namespace of `ns_pid` (that process included), by PID,
/// with its executable's file name.
pub fn processes_in_ns_of(ns_pid: u32) -> Vec<(u32, String)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{ns_pid}/ns/mnt")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((pid, name));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak() -> Shape {
        Shape::Soak(SoakShape::default())
    }

    #[test]
    fn plans_are_a_function_of_seed_and_index() {
        for i in 0..200 {
            assert_eq!(plan_session(7, i, &soak()), plan_session(7, i, &soak()));
        }
        assert_ne!(plan_session(7, 1, &soak()), plan_session(8, 1, &soak()));
    }

    #[test]
    fn soak_plans_cover_every_shape() {
        let plans: Vec<SessionPlan> = (0..5000).map(|i| plan_session(1, i, &soak())).collect();
        for d in [DropAt::AfterConnect, DropAt::AfterEhlo, DropAt::BeforeQuit] {
            assert!(plans.iter().any(|p| p.drop == Some(d)), "{d:?}");
        }
        assert!(
            plans
                .iter()
                .any(|p| matches!(p.drop, Some(DropAt::MidRcpt(_))))
        );
        assert!(
            plans
                .iter()
                .any(|p| matches!(p.drop, Some(DropAt::MidData(_))))
        );
        assert!(plans.iter().any(|p| p.stall.is_some()));
        assert!(plans.iter().any(|p| p.txs.len() > 1));
        assert!(
            plans
                .iter()
                .any(|p| p.txs.iter().any(|t| t.rset_before_data))
        );
        assert!(
            plans
                .iter()
                .any(|p| p.txs.iter().any(|t| t.rcpts.len() == 20))
        );
        assert!(
            plans
                .iter()
                .any(|p| p.txs.iter().any(|t| t.size > 1_000_000))
        );
        for p in &plans {
            for t in &p.txs {
                assert!((1..=20).contains(&t.rcpts.len()));
                assert!(t.rcpt_valid.iter().any(|&v| v));
                assert!(t.size <= 5 * 1024 * 1024);
            }
        }
    }

    #[test]
    fn bench_mix_is_fixed() {
        let sizes: Vec<usize> = (0..50)
            .map(|i| plan_session(3, i, &Shape::Bench).txs[0].size)
            .collect();
        assert_eq!(sizes.iter().filter(|&&s| s == 1024).count(), 40);
        assert_eq!(sizes.iter().filter(|&&s| s == 50 * 1024).count(), 9);
        assert_eq!(sizes.iter().filter(|&&s| s == 1024 * 1024).count(), 1);
    }

    #[test]
    fn bodies_hold_what_the_soak_needs_and_no_line_breaks_inside_lines() {
        let mut saw = (false, false, false);
        for i in 0..300 {
            let plan = plan_session(5, i, &soak());
            let body = message_body(&plan, 0, 1990);
            assert!(body.len() >= plan.txs[0].size);
            assert!(!body.contains(&b'\r') && !body.contains(&0));
            for line in body.split(|&b| b == b'\n') {
                assert!(line.len() <= 1990);
                saw.0 |= std::str::from_utf8(line).is_err();
                saw.1 |= line.first() == Some(&b'.');
                saw.2 |= line.len() >= 990;
            }
        }
        assert_eq!(saw, (true, true, true));
    }

    #[test]
    fn wire_form_stuffs_dots_and_ends_with_the_dot_line() {
        assert_eq!(wire_form(b"a\n.b\n.\n"), b"a\r\n..b\r\n..\r\n.\r\n");
    }

    #[test]
    fn load_ids_round_trip() {
        assert_eq!(parse_load_id(&load_id(9, 12, 2)), Some((9, 12, 2)));
        assert_eq!(parse_load_id("9-12"), None);
    }
}
