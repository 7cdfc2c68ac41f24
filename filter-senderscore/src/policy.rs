//! The rules, pure: what a DNS answer means, what is known of a client, and what to
//! answer in each phase. No I/O, no clock, no async: every rule is a function of plain
//! values, unit-tested below.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// A reputation score, 0 (worst) to 100 (best). A value of this type is always in range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Score(u8);

impl Score {
    /// The best score.
    pub const MAX: Score = Score(100);

    /// A score, if `n` is 0 to 100.
    pub const fn new(n: u8) -> Option<Score> {
        if n <= 100 { Some(Score(n)) } else { None }
    }

    /// The number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A threshold of `-blockBelow` / `-junkBelow`: a score strictly below it triggers.
/// 0 to 101 (101 catches every known score, 0 none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Threshold(u8);

impl Threshold {
    /// A threshold, if `n` is 0 to 101.
    pub const fn new(n: u8) -> Option<Threshold> {
        if n <= 101 { Some(Threshold(n)) } else { None }
    }

    /// Whether `score` is below the threshold.
    pub fn catches(self, score: Score) -> bool {
        score.0 < self.0
    }
}

/// The step of an SMTP session the filter answers (the phases it may register).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Step {
    /// `connect`.
    Connect,
    /// `helo`.
    Helo,
    /// `ehlo`.
    Ehlo,
    /// `starttls`.
    StartTls,
    /// `auth`.
    Auth,
    /// `mail-from`.
    MailFrom,
    /// `rcpt-to`.
    RcptTo,
    /// `data`.
    Data,
    /// `rset`.
    Rset,
    /// `noop`.
    Noop,
    /// `quit`.
    Quit,
    /// `commit`.
    Commit,
}

impl Step {
    /// Every step, in session order.
    pub const ALL: [Step; 12] = [
        Step::Connect,
        Step::Helo,
        Step::Ehlo,
        Step::StartTls,
        Step::Auth,
        Step::MailFrom,
        Step::RcptTo,
        Step::Data,
        Step::Rset,
        Step::Noop,
        Step::Quit,
        Step::Commit,
    ];

    /// The protocol name of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Ehlo => "ehlo",
            Step::StartTls => "starttls",
            Step::Auth => "auth",
            Step::MailFrom => "mail-from",
            Step::RcptTo => "rcpt-to",
            Step::Data => "data",
            Step::Rset => "rset",
            Step::Noop => "noop",
            Step::Quit => "quit",
            Step::Commit => "commit",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where `-blockBelow` disconnects: the phases the Go filter accepts for `-blockPhase`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum BlockPhase {
    /// At connect (the default).
    #[default]
    Connect,
    /// At the greeting: `helo` and `ehlo` both (the Go filter blocked only the one named,
    /// so a client could escape `-blockPhase helo` by saying EHLO).
    Helo,
    /// At the greeting: `ehlo` and `helo` both.
    Ehlo,
    /// At `STARTTLS`.
    StartTls,
    /// At `AUTH`.
    Auth,
    /// At `MAIL FROM`.
    MailFrom,
    /// At `RCPT TO`.
    RcptTo,
    /// At `QUIT`.
    Quit,
}

impl BlockPhase {
    /// The accepted names, for messages.
    pub const NAMES: &'static str = "connect, helo, ehlo, starttls, auth, mail-from, rcpt-to, quit";

    /// Parses a `-blockPhase` value.
    pub fn parse(name: &str) -> Option<BlockPhase> {
        Some(match name {
            "connect" => BlockPhase::Connect,
            "helo" => BlockPhase::Helo,
            "ehlo" => BlockPhase::Ehlo,
            "starttls" => BlockPhase::StartTls,
            "auth" => BlockPhase::Auth,
            "mail-from" => BlockPhase::MailFrom,
            "rcpt-to" => BlockPhase::RcptTo,
            "quit" => BlockPhase::Quit,
            _ => return None,
        })
    }

    /// The steps at which the block applies.
    pub fn steps(self) -> &'static [Step] {
        match self {
            BlockPhase::Connect => &[Step::Connect],
            BlockPhase::Helo | BlockPhase::Ehlo => &[Step::Helo, Step::Ehlo],
            BlockPhase::StartTls => &[Step::StartTls],
            BlockPhase::Auth => &[Step::Auth],
            BlockPhase::MailFrom => &[Step::MailFrom],
            BlockPhase::RcptTo => &[Step::RcptTo],
            BlockPhase::Quit => &[Step::Quit],
        }
    }

    /// Whether the block applies at `step`.
    pub fn applies_at(self, step: Step) -> bool {
        self.steps().contains(&step)
    }
}

/// `-slowFactor MS`: the delay of a client with score 0, in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlowFactor(u32);

impl SlowFactor {
    /// The largest accepted factor: one delay stays well under smtpd's 300 s session
    /// timeout.
    pub const MAX_MS: u32 = 120_000;

    /// A factor, if `ms` is 1 to [`SlowFactor::MAX_MS`] (0 means no slowing: `None`).
    pub const fn new(ms: u32) -> Option<SlowFactor> {
        if ms >= 1 && ms <= Self::MAX_MS {
            Some(SlowFactor(ms))
        } else {
            None
        }
    }

    /// The delay for `score`: MS × (100 − score) / 100, rounded down (score 0: MS;
    /// score 100: none).
    pub fn delay(self, score: Score) -> Duration {
        let ms = u64::from(self.0) * u64::from(100 - score.0) / 100;
        Duration::from_millis(ms)
    }

    /// The longest delay (score 0).
    pub fn max_delay(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

/// Why a score is unknown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Unknown {
    /// The zone answered `127.255.255.255`: the resolver is not registered with the
    /// zone, or over its free query quota.
    Refused,
    /// The zone answered an address that is not a score.
    Unexpected,
    /// No answer in time.
    Timeout,
    /// SERVFAIL (or REFUSED, or another DNS error code).
    ServFail,
    /// Any other failure to ask (network error, malformed answer).
    Error,
    /// An IPv6 client and no configured zone serves IPv6.
    Ipv6NotServed,
    /// No address to look up (a local submission, an unparsable address).
    NoAddress,
}

impl Unknown {
    /// A short word for the decision log line.
    pub fn word(self) -> &'static str {
        match self {
            Unknown::Refused => "zone-refused",
            Unknown::Unexpected => "unexpected-answer",
            Unknown::Timeout => "timeout",
            Unknown::ServFail => "servfail",
            Unknown::Error => "dns-error",
            Unknown::Ipv6NotServed => "ipv6-not-served",
            Unknown::NoAddress => "no-address",
        }
    }
}

/// What one zone said about one client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ZoneResult {
    /// A score.
    Score(Score),
    /// NXDOMAIN or no A record: the zone has no data on the client.
    NoData,
    /// No usable answer.
    Unknown(Unknown),
}

/// The address every reputation zone of this family returns to an unregistered or
/// over-quota resolver.
pub const REFUSED_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 255);

/// How a zone's A answers map to scores.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum AnswerMap {
    /// `127.0.4.N` is score N (0 to 100); anything else is unexpected.
    #[default]
    SenderScore,
    /// Each listed address is the given score; anything else is unexpected.
    Table(Vec<(Ipv4Addr, Score)>),
}

impl AnswerMap {
    /// What one A record means.
    pub fn classify_one(&self, addr: Ipv4Addr) -> ZoneResult {
        if addr == REFUSED_ANSWER {
            return ZoneResult::Unknown(Unknown::Refused);
        }
        let score = match self {
            AnswerMap::SenderScore => match addr.octets() {
                [127, 0, 4, n] => Score::new(n),
                _ => None,
            },
            AnswerMap::Table(table) => table.iter().find(|(a, _)| *a == addr).map(|(_, s)| *s),
        };
        match score {
            Some(s) => ZoneResult::Score(s),
            None => ZoneResult::Unknown(Unknown::Unexpected),
        }
    }

    /// What the A records of one answer mean together: no record is no data; records
    /// that all mean the same thing mean that; records that disagree are unexpected.
    pub fn classify(&self, addrs: &[Ipv4Addr]) -> ZoneResult {
        let mut results = addrs.iter().map(|a| self.classify_one(*a));
        let Some(first) = results.next() else {
            return ZoneResult::NoData;
        };
        if results.all(|r| r == first) {
            first
        } else {
            ZoneResult::Unknown(Unknown::Unexpected)
        }
    }
}

/// The score `-testMode` derives from a client address, as the Go filter does: the
/// 4th octet is the score and the 3rd the category (not used); a 4th octet of 255
/// simulates a missing entry. Unlike the Go filter, a 4th octet over 100 is not a score
/// (unknown), and IPv6 clients are unknown.
pub fn test_mode_result(ip: IpAddr) -> ZoneResult {
    match ip {
        IpAddr::V4(v4) => {
            let [_, _, _category, score] = v4.octets();
            if score == 255 {
                return ZoneResult::NoData;
            }
            match Score::new(score) {
                Some(s) => ZoneResult::Score(s),
                None => ZoneResult::Unknown(Unknown::Unexpected),
            }
        }
        IpAddr::V6(_) => ZoneResult::Unknown(Unknown::Ipv6NotServed),
    }
}

/// Combines the results of several zones (each with its weight) into one: the weighted
/// mean of the zones that gave a score, rounded to the nearest integer; with no score,
/// no data if every zone had none, else the first reason a score is unknown.
pub fn combine(results: &[(u32, ZoneResult)]) -> ZoneResult {
    let mut sum: u64 = 0;
    let mut weights: u64 = 0;
    let mut unknown = None;
    for (weight, result) in results {
        match result {
            ZoneResult::Score(s) => {
                sum += u64::from(*weight) * u64::from(s.get());
                weights += u64::from(*weight);
            }
            ZoneResult::Unknown(why) => {
                unknown.get_or_insert(*why);
            }
            ZoneResult::NoData => {}
        }
    }
    if let Some(mean) = (sum + weights / 2).checked_div(weights) {
        // the mean of scores in 0..=100 is in 0..=100
        return ZoneResult::Score(
            Score::new(u8::try_from(mean).unwrap_or(100)).unwrap_or(Score::MAX),
        );
    }
    match unknown {
        Some(why) => ZoneResult::Unknown(why),
        None if results.is_empty() => ZoneResult::Unknown(Unknown::NoAddress),
        None => ZoneResult::NoData,
    }
}

/// What is known of a client, once its lookup is done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Standing {
    /// In the allowlist: never slowed, junked or blocked; no lookup was made.
    Allowlisted,
    /// The zones said this.
    Looked(ZoneResult),
}

impl Standing {
    /// The score, if one is known.
    pub fn score(&self) -> Option<Score> {
        match self {
            Standing::Looked(ZoneResult::Score(s)) => Some(*s),
            _ => None,
        }
    }

    /// The `score=` value of the decision log line.
    pub fn score_text(&self) -> String {
        match self {
            Standing::Allowlisted => "allowlisted".into(),
            Standing::Looked(ZoneResult::Score(s)) => s.to_string(),
            Standing::Looked(ZoneResult::NoData) => "none".into(),
            Standing::Looked(ZoneResult::Unknown(why)) => format!("unknown({})", why.word()),
        }
    }
}

/// What to answer in one phase (before the delay).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Let it through.
    Proceed,
    /// Let it through and mark the mail as junk (never produced at commit).
    Junk,
    /// Disconnect with [`BLOCK_REPLY`].
    Block,
}

impl Verdict {
    /// The `decision=` value of the log line.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Proceed => "proceed",
            Verdict::Junk => "junk",
            Verdict::Block => "disconnect",
        }
    }
}

/// The reply of a block.
pub const BLOCK_REPLY: &str = "550 5.7.1 Your IP reputation is too low for this MX";

/// The operator's policy: thresholds, block phase, slowing, header.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Policy {
    /// `-blockBelow` (none: never block) and `-blockPhase`.
    pub block: Option<(Threshold, BlockPhase)>,
    /// `-junkBelow` (none: never junk).
    pub junk: Option<Threshold>,
    /// `-slowFactor` (none: never slow).
    pub slow: Option<SlowFactor>,
    /// `-scoreHeader`.
    pub score_header: bool,
}

impl Policy {
    /// The steps the filter must be asked about: connect always (the lookup is
    /// awaited and the decision logged there), the block phase, every step when
    /// slowing, data when adding the header (the score is awaited before the message).
    pub fn steps(&self) -> Vec<Step> {
        Step::ALL
            .into_iter()
            .filter(|step| {
                *step == Step::Connect
                    || self.slow.is_some()
                    || self.block.is_some_and(|(_, p)| p.applies_at(*step))
                    || (self.score_header && *step == Step::Data)
            })
            .collect()
    }

    /// What to answer at `step`. Unknown scores and allowlisted clients always proceed.
    /// Junk is decided at connect only (it marks the whole session), so never at commit.
    pub fn verdict(&self, step: Step, standing: &Standing) -> Verdict {
        let Some(score) = standing.score() else {
            return Verdict::Proceed;
        };
        if let Some((threshold, phase)) = self.block
            && phase.applies_at(step)
            && threshold.catches(score)
        {
            return Verdict::Block;
        }
        if step == Step::Connect && self.junk.is_some_and(|t| t.catches(score)) {
            return Verdict::Junk;
        }
        Verdict::Proceed
    }

    /// The delay before every answer of the session: `-slowFactor` × (100 − score) /
    /// 100 for a known score (score 0 included), none for an unknown score or an
    /// allowlisted client.
    pub fn delay(&self, standing: &Standing) -> Duration {
        match (self.slow, standing.score()) {
            (Some(factor), Some(score)) => factor.delay(score),
            _ => Duration::ZERO,
        }
    }

    /// The header line to prepend to each message, if any: only with `-scoreHeader`
    /// and a known score.
    pub fn header(&self, standing: &Standing) -> Option<String> {
        if !self.score_header {
            return None;
        }
        standing.score().map(|s| format!("X-SenderScore: {s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(n: u8) -> Standing {
        Standing::Looked(ZoneResult::Score(Score::new(n).unwrap()))
    }

    const NODATA: Standing = Standing::Looked(ZoneResult::NoData);

    fn unknowns() -> Vec<Standing> {
        [
            Unknown::Refused,
            Unknown::Unexpected,
            Unknown::Timeout,
            Unknown::ServFail,
            Unknown::Error,
            Unknown::Ipv6NotServed,
            Unknown::NoAddress,
        ]
        .into_iter()
        .map(|u| Standing::Looked(ZoneResult::Unknown(u)))
        .collect()
    }

    fn th(n: u8) -> Threshold {
        Threshold::new(n).unwrap()
    }

    const PHASES: [BlockPhase; 8] = [
        BlockPhase::Connect,
        BlockPhase::Helo,
        BlockPhase::Ehlo,
        BlockPhase::StartTls,
        BlockPhase::Auth,
        BlockPhase::MailFrom,
        BlockPhase::RcptTo,
        BlockPhase::Quit,
    ];

    #[test]
    fn ranges() {
        assert!(Score::new(100).is_some() && Score::new(101).is_none());
        assert!(Threshold::new(101).is_some() && Threshold::new(102).is_none());
        assert!(SlowFactor::new(0).is_none() && SlowFactor::new(1).is_some());
        assert!(SlowFactor::new(SlowFactor::MAX_MS + 1).is_none());
        assert!(th(50).catches(Score::new(49).unwrap()));
        assert!(!th(50).catches(Score::new(50).unwrap()));
        assert!(!th(0).catches(Score::new(0).unwrap()));
        assert!(th(101).catches(Score::MAX));
    }

    #[test]
    fn block_phase_names() {
        for (name, phase) in [
            ("connect", BlockPhase::Connect),
            ("helo", BlockPhase::Helo),
            ("ehlo", BlockPhase::Ehlo),
            ("starttls", BlockPhase::StartTls),
            ("auth", BlockPhase::Auth),
            ("mail-from", BlockPhase::MailFrom),
            ("rcpt-to", BlockPhase::RcptTo),
            ("quit", BlockPhase::Quit),
        ] {
            assert_eq!(BlockPhase::parse(name), Some(phase));
        }
        for bad in ["data", "commit", "CONNECT", "", "rcpt", "data-line"] {
            assert_eq!(BlockPhase::parse(bad), None, "{bad}");
        }
        assert_eq!(BlockPhase::default(), BlockPhase::Connect);
    }

    /// Every block phase × every step × scores around the threshold.
    #[test]
    fn block_at_its_phase_only() {
        for phase in PHASES {
            let policy = Policy {
                block: Some((th(50), phase)),
                ..Policy::default()
            };
            for step in Step::ALL {
                let expect_block = phase.applies_at(step);
                for n in [0, 10, 49] {
                    let want = if expect_block {
                        Verdict::Block
                    } else {
                        Verdict::Proceed
                    };
                    assert_eq!(
                        policy.verdict(step, &score(n)),
                        want,
                        "{phase:?} {step} {n}"
                    );
                }
                for n in [50, 51, 90, 100] {
                    assert_eq!(policy.verdict(step, &score(n)), Verdict::Proceed);
                }
                assert_eq!(policy.verdict(step, &NODATA), Verdict::Proceed);
                assert_eq!(
                    policy.verdict(step, &Standing::Allowlisted),
                    Verdict::Proceed
                );
                for u in unknowns() {
                    assert_eq!(policy.verdict(step, &u), Verdict::Proceed);
                }
            }
        }
    }

    #[test]
    fn helo_and_ehlo_block_both_greetings() {
        for phase in [BlockPhase::Helo, BlockPhase::Ehlo] {
            assert!(phase.applies_at(Step::Helo) && phase.applies_at(Step::Ehlo));
            assert!(!phase.applies_at(Step::Connect));
        }
    }

    #[test]
    fn junk_at_connect_only_never_at_commit() {
        let policy = Policy {
            junk: Some(th(60)),
            ..Policy::default()
        };
        for step in Step::ALL {
            let want = if step == Step::Connect {
                Verdict::Junk
            } else {
                Verdict::Proceed
            };
            assert_eq!(policy.verdict(step, &score(59)), want, "{step}");
            assert_eq!(policy.verdict(step, &score(60)), Verdict::Proceed);
            assert_eq!(policy.verdict(step, &NODATA), Verdict::Proceed);
            assert_eq!(
                policy.verdict(step, &Standing::Allowlisted),
                Verdict::Proceed
            );
            for u in unknowns() {
                assert_eq!(policy.verdict(step, &u), Verdict::Proceed);
            }
        }
        assert_eq!(policy.verdict(Step::Commit, &score(0)), Verdict::Proceed);
    }

    #[test]
    fn block_wins_over_junk_at_the_block_phase() {
        let policy = Policy {
            block: Some((th(20), BlockPhase::Connect)),
            junk: Some(th(60)),
            ..Policy::default()
        };
        assert_eq!(policy.verdict(Step::Connect, &score(10)), Verdict::Block);
        assert_eq!(policy.verdict(Step::Connect, &score(50)), Verdict::Junk);
        assert_eq!(policy.verdict(Step::Connect, &score(90)), Verdict::Proceed);
        // blocking later: junk at connect, block at rcpt-to
        let later = Policy {
            block: Some((th(20), BlockPhase::RcptTo)),
            ..policy
        };
        assert_eq!(later.verdict(Step::Connect, &score(10)), Verdict::Junk);
        assert_eq!(later.verdict(Step::MailFrom, &score(10)), Verdict::Proceed);
        assert_eq!(later.verdict(Step::RcptTo, &score(10)), Verdict::Block);
        assert_eq!(later.verdict(Step::RcptTo, &score(50)), Verdict::Proceed);
    }

    #[test]
    fn nothing_configured_proceeds() {
        let policy = Policy::default();
        for step in Step::ALL {
            for n in [0, 50, 100] {
                assert_eq!(policy.verdict(step, &score(n)), Verdict::Proceed);
            }
        }
        assert_eq!(policy.delay(&score(0)), Duration::ZERO);
        assert_eq!(policy.header(&score(0)), None);
    }

    #[test]
    fn delays() {
        let policy = Policy {
            slow: SlowFactor::new(1000),
            ..Policy::default()
        };
        assert_eq!(policy.delay(&score(0)), Duration::from_millis(1000));
        assert_eq!(policy.delay(&score(10)), Duration::from_millis(900));
        assert_eq!(policy.delay(&score(50)), Duration::from_millis(500));
        assert_eq!(policy.delay(&score(99)), Duration::from_millis(10));
        assert_eq!(policy.delay(&score(100)), Duration::ZERO);
        assert_eq!(policy.delay(&NODATA), Duration::ZERO);
        assert_eq!(policy.delay(&Standing::Allowlisted), Duration::ZERO);
        for u in unknowns() {
            assert_eq!(policy.delay(&u), Duration::ZERO);
        }
        // rounding down, as the Go filter's integer arithmetic
        let odd = SlowFactor::new(333).unwrap();
        assert_eq!(
            odd.delay(Score::new(1).unwrap()),
            Duration::from_millis(329)
        );
        assert_eq!(odd.max_delay(), Duration::from_millis(333));
    }

    #[test]
    fn header_only_with_a_known_score() {
        let policy = Policy {
            score_header: true,
            ..Policy::default()
        };
        assert_eq!(
            policy.header(&score(0)).as_deref(),
            Some("X-SenderScore: 0")
        );
        assert_eq!(
            policy.header(&score(90)).as_deref(),
            Some("X-SenderScore: 90")
        );
        assert_eq!(policy.header(&NODATA), None);
        assert_eq!(policy.header(&Standing::Allowlisted), None);
        for u in unknowns() {
            assert_eq!(policy.header(&u), None);
        }
    }

    #[test]
    fn steps_registered() {
        assert_eq!(Policy::default().steps(), vec![Step::Connect]);
        let block = Policy {
            block: Some((th(10), BlockPhase::Ehlo)),
            ..Policy::default()
        };
        assert_eq!(block.steps(), vec![Step::Connect, Step::Helo, Step::Ehlo]);
        let header = Policy {
            score_header: true,
            junk: Some(th(5)),
            ..Policy::default()
        };
        assert_eq!(header.steps(), vec![Step::Connect, Step::Data]);
        let slow = Policy {
            slow: SlowFactor::new(10),
            ..Policy::default()
        };
        assert_eq!(slow.steps(), Step::ALL.to_vec());
    }

    #[test]
    fn senderscore_answers() {
        let m = AnswerMap::SenderScore;
        let s = |n| ZoneResult::Score(Score::new(n).unwrap());
        assert_eq!(m.classify(&[Ipv4Addr::new(127, 0, 4, 10)]), s(10));
        assert_eq!(m.classify(&[Ipv4Addr::new(127, 0, 4, 0)]), s(0));
        assert_eq!(m.classify(&[Ipv4Addr::new(127, 0, 4, 100)]), s(100));
        assert_eq!(m.classify(&[]), ZoneResult::NoData);
        let refused = ZoneResult::Unknown(Unknown::Refused);
        let unexpected = ZoneResult::Unknown(Unknown::Unexpected);
        assert_eq!(m.classify(&[REFUSED_ANSWER]), refused);
        for odd in [
            Ipv4Addr::new(127, 0, 4, 101),
            Ipv4Addr::new(127, 0, 4, 127),
            Ipv4Addr::new(127, 0, 4, 255),
            Ipv4Addr::new(127, 0, 3, 50),
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(127, 255, 255, 254),
        ] {
            assert_eq!(m.classify(&[odd]), unexpected, "{odd}");
        }
        // agreeing duplicates are fine, disagreeing records are not a score
        let a = Ipv4Addr::new(127, 0, 4, 70);
        assert_eq!(m.classify(&[a, a]), s(70));
        assert_eq!(m.classify(&[a, Ipv4Addr::new(127, 0, 4, 71)]), unexpected);
        assert_eq!(m.classify(&[a, REFUSED_ANSWER]), unexpected);
    }

    #[test]
    fn table_answers() {
        let m = AnswerMap::Table(vec![
            (Ipv4Addr::new(127, 0, 0, 2), Score::new(0).unwrap()),
            (Ipv4Addr::new(127, 0, 0, 3), Score::new(40).unwrap()),
        ]);
        assert_eq!(
            m.classify(&[Ipv4Addr::new(127, 0, 0, 3)]),
            ZoneResult::Score(Score::new(40).unwrap())
        );
        assert_eq!(
            m.classify(&[Ipv4Addr::new(127, 0, 4, 3)]),
            ZoneResult::Unknown(Unknown::Unexpected)
        );
        assert_eq!(
            m.classify(&[REFUSED_ANSWER]),
            ZoneResult::Unknown(Unknown::Refused)
        );
    }

    #[test]
    fn test_mode_like_the_go_filter() {
        let r = |s: &str| test_mode_result(s.parse().unwrap());
        assert_eq!(r("127.0.0.10"), ZoneResult::Score(Score::new(10).unwrap()));
        assert_eq!(r("10.1.4.0"), ZoneResult::Score(Score::new(0).unwrap()));
        assert_eq!(r("10.1.4.100"), ZoneResult::Score(Score::new(100).unwrap()));
        assert_eq!(r("10.1.4.255"), ZoneResult::NoData);
        assert_eq!(r("10.1.4.127"), ZoneResult::Unknown(Unknown::Unexpected));
        assert_eq!(r("::1"), ZoneResult::Unknown(Unknown::Ipv6NotServed));
    }

    #[test]
    fn combining_zones() {
        let s = |n| ZoneResult::Score(Score::new(n).unwrap());
        let to = ZoneResult::Unknown(Unknown::Timeout);
        let refused = ZoneResult::Unknown(Unknown::Refused);
        assert_eq!(combine(&[(1, s(40))]), s(40));
        assert_eq!(combine(&[(1, s(40)), (1, s(61))]), s(51)); // 50.5 rounds up
        assert_eq!(combine(&[(3, s(100)), (1, s(0))]), s(75));
        assert_eq!(combine(&[(1, s(30)), (1, to)]), s(30));
        assert_eq!(combine(&[(1, s(30)), (1, ZoneResult::NoData)]), s(30));
        assert_eq!(
            combine(&[(1, ZoneResult::NoData), (1, ZoneResult::NoData)]),
            ZoneResult::NoData
        );
        assert_eq!(combine(&[(1, ZoneResult::NoData), (1, refused)]), refused);
        assert_eq!(combine(&[(1, to), (1, refused)]), to);
        assert_eq!(combine(&[]), ZoneResult::Unknown(Unknown::NoAddress));
        assert_eq!(combine(&[(100, s(100)), (100, s(100))]), s(100));
    }

    #[test]
    fn score_texts() {
        assert_eq!(score(7).score_text(), "7");
        assert_eq!(NODATA.score_text(), "none");
        assert_eq!(Standing::Allowlisted.score_text(), "allowlisted");
        assert_eq!(
            Standing::Looked(ZoneResult::Unknown(Unknown::Refused)).score_text(),
            "unknown(zone-refused)"
        );
    }
}
