//! smtpd's rules for what a filter writes, checked line by line.
//!
//! Written from OpenSMTPD's `lka_filter.c` / `lka_proc.c` / `smtp_session.c`, apart
//! from the encoder in [`crate::protocol`], so that one checks the other. Each rule
//! that would make smtpd exit (or wedge, or silently alter a message) is a
//! [`Violation`].

use std::collections::{HashMap, VecDeque};
use std::fmt;

/// A line smtpd would refuse, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The offending line (cut to 200 bytes).
    pub line: String,
    /// What is wrong with it, in smtpd's terms.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "smtpd would exit or misbehave: {}: {}",
            self.rule, self.line
        )
    }
}

const REPORT_EVENTS: [&str; 19] = [
    "link-connect",
    "link-disconnect",
    "link-greeting",
    "link-identify",
    "link-tls",
    "link-auth",
    "tx-reset",
    "tx-begin",
    "tx-mail",
    "tx-rcpt",
    "tx-envelope",
    "tx-data",
    "tx-commit",
    "tx-rollback",
    "protocol-client",
    "protocol-server",
    "filter-report",
    "filter-response",
    "timeout",
];

const FILTER_PHASES: [&str; 15] = [
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail-from",
    "rcpt-to",
    "data",
    "data-line",
    "rset",
    "quit",
    "noop",
    "help",
    "wiz",
    "commit",
];

/// A request smtpd is waiting for the filter to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Waiting {
    token: u64,
    phase: String,
    /// data-line only: smtpd sent the final `.` of this message.
    ended: bool,
}

/// Follows the conversation (what smtpd sent, what the filter answered) and checks
/// every answer line against smtpd's rules.
#[derive(Clone, Debug)]
pub struct Validator {
    token_first: bool,
    allow_report: bool,
    max_line: usize,
    ready: bool,
    registered_phases: Vec<String>,
    /// Per session, the requests not yet answered, oldest first. smtpd itself waits
    /// for each answer; a replay may send several, which must be answered in order.
    waiting: HashMap<u64, VecDeque<Waiting>>,
    /// Sessions smtpd has sent lines for (closed ones included).
    known: std::collections::HashSet<u64>,
}

fn hex(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

impl Validator {
    /// A validator for a daemon speaking protocol `major.minor`; `allow_report` for
    /// OpenSMTPD 7.6 and later.
    pub fn new(major: u32, minor: u32, allow_report: bool) -> Self {
        let v = (major, minor);
        Validator {
            token_first: v < (0, 5),
            allow_report,
            // 7.4 reads 64 KiB lines (65,534 bytes without the newline were seen to
            // pass); before, 2,047 bytes are kept and the rest is silently cut.
            max_line: if v < (0, 7) { 2_047 } else { 65_534 },
            ready: false,
            registered_phases: Vec::new(),
            waiting: HashMap::new(),
            known: Default::default(),
        }
    }

    /// Allows answer lines up to `max` bytes (e.g. 65,534 on a pre-7.4 daemon, for a
    /// filter that accepts smtpd's silent cut of long lines).
    pub fn set_max_line(&mut self, max: usize) {
        self.max_line = max;
    }

    /// The phases the filter registered.
    pub fn registered_phases(&self) -> &[String] {
        &self.registered_phases
    }

    /// Whether `register|ready` was seen.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Notes a line smtpd sent (requests set what an answer must match).
    pub fn smtpd_sent(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let f: Vec<&str> = text.splitn(8, '|').collect();
        if f.len() >= 6 && f[0] == "report" {
            if let Some(session) = hex(f[5].split('|').next().unwrap_or("")) {
                self.known.insert(session);
            }
        }
        if f.len() < 7 || f[0] != "filter" {
            return;
        }
        let (Some(session), Some(token)) = (hex(f[5]), hex(f[6])) else {
            return;
        };
        self.known.insert(session);
        let phase = f[4].to_string();
        let queue = self.waiting.entry(session).or_default();
        if phase == "data-line" {
            let end = f.get(7) == Some(&".");
            // The lines of one message belong to one data-line phase, open until the
            // filter echoes the final `.`.
            if let Some(open) = queue
                .back_mut()
                .filter(|w| w.phase == "data-line" && !w.ended)
            {
                open.ended = end;
                return;
            }
            queue.push_back(Waiting {
                token,
                phase,
                ended: end,
            });
            return;
        }
        queue.push_back(Waiting {
            token,
            phase,
            ended: false,
        });
    }

    /// Forgets a session (smtpd freed it: a late answer is ignored by smtpd).
    pub fn session_closed(&mut self, session: u64) {
        self.waiting.remove(&session);
    }

    /// Checks one line the filter wrote (without its `\n`).
    pub fn filter_wrote(&mut self, line: &[u8]) -> Result<(), Violation> {
        let fail = |rule: &str| {
            let shown: String = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            Err(Violation {
                line: shown,
                rule: rule.to_string(),
            })
        };
        if line.len() > self.max_line {
            return fail(&format!(
                "line of {} bytes is longer than the {} smtpd reads",
                line.len(),
                self.max_line
            ));
        }
        if line.contains(&b'\r') && !line.starts_with(b"filter-dataline|") {
            return fail("CR in an answer line");
        }
        if !self.ready {
            return self.check_register(line, fail);
        }
        if line.starts_with(b"report|") {
            return fail("a filter must never write a report line");
        }
        let text = String::from_utf8_lossy(line);
        let mut f = text.splitn(4, '|');
        let kind = f.next().unwrap_or("");
        if kind != "filter-result" && kind != "filter-dataline" {
            return fail("not filter-result, filter-dataline or report");
        }
        let (Some(a), Some(b)) = (f.next(), f.next()) else {
            return fail("missing session id or token");
        };
        let (Some(a), Some(b)) = (hex(a), hex(b)) else {
            return fail("session id or token is not hex");
        };
        let (session, token) = if self.token_first { (b, a) } else { (a, b) };
        let Some(rest) = f.next() else {
            return fail("missing directive");
        };
        let Some(waiting) = self.waiting.get(&session).and_then(|q| q.front()).cloned() else {
            if !self.known.contains(&session) {
                return fail(
                    "answer for a session smtpd never sent (wrong id order?): the real one would hang",
                );
            }
            // smtpd ignores answers for sessions it no longer knows.
            return Ok(());
        };
        if waiting.token != token {
            return fail("token is not the one smtpd sent for this phase");
        }
        if kind == "filter-dataline" {
            if waiting.phase != "data-line" {
                return fail("filter-dataline out of the data-line phase");
            }
            if rest == "." {
                // The phase ends; commit comes next.
                self.answered(session);
            }
            return Ok(());
        }
        if waiting.phase == "data-line" {
            return fail("filter-result in the data-line phase");
        }
        let (word, param) = match rest.split_once('|') {
            Some((w, p)) => (w, Some(p)),
            None => (rest, None),
        };
        match (word, param) {
            ("proceed", None) => {}
            ("proceed", Some(_)) => return fail("parameter after proceed"),
            ("junk", Some(_)) => return fail("parameter after junk"),
            ("junk", None) if waiting.phase == "commit" => return fail("junk at commit"),
            ("junk", None) => {}
            ("reject" | "disconnect", Some(p)) => {
                let b = p.as_bytes();
                let valid = b.len() >= 5
                    && (b[0] == b'4' || b[0] == b'5')
                    && b[1].is_ascii_digit()
                    && b[2].is_ascii_digit()
                    && b[3] == b' ';
                if !valid {
                    return fail(
                        "reject/disconnect reply is not '4xx text' or '5xx text' (smtpd answers 421)",
                    );
                }
            }
            ("rewrite", Some("")) => return fail("empty rewrite parameter"),
            ("rewrite", Some(_)) if waiting.phase == "commit" => return fail("rewrite at commit"),
            ("rewrite", Some(_)) => {}
            ("report", Some(_)) if !self.allow_report => {
                return fail("report decision before OpenSMTPD 7.6");
            }
            ("report", Some(_)) => {}
            ("reject" | "disconnect" | "rewrite" | "report", None) => {
                return fail("missing parameter");
            }
            _ => return fail("unknown decision"),
        }
        self.answered(session);
        Ok(())
    }

    fn answered(&mut self, session: u64) {
        if let Some(queue) = self.waiting.get_mut(&session) {
            queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&session);
            }
        }
    }

    fn check_register(
        &mut self,
        line: &[u8],
        fail: impl Fn(&str) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        let text = String::from_utf8_lossy(line);
        let f: Vec<&str> = text.split('|').collect();
        match f.as_slice() {
            ["register", "ready"] => {
                self.ready = true;
                Ok(())
            }
            ["register", "report", subsystem, event] => {
                if *subsystem != "smtp-in" && *subsystem != "smtp-out" {
                    return fail("unknown subsystem");
                }
                if *event != "*" && !REPORT_EVENTS.contains(event) {
                    return fail("unknown report event");
                }
                Ok(())
            }
            ["register", "filter", subsystem, phase] => {
                if *subsystem != "smtp-in" {
                    return fail("filters exist only for smtp-in");
                }
                if !FILTER_PHASES.contains(phase) {
                    return fail("unknown filter phase (no wildcard for filters)");
                }
                self.registered_phases.push(phase.to_string());
                Ok(())
            }
            _ => fail("a line other than register|... before register|ready"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(v: &mut Validator) {
        v.filter_wrote(b"register|filter|smtp-in|commit").unwrap();
        v.filter_wrote(b"register|ready").unwrap();
    }

    #[test]
    fn catches_each_fatal_answer() {
        let mut v = Validator::new(0, 7, false);
        assert!(
            v.filter_wrote(b"filter-result|01|02|proceed").is_err(),
            "answer before ready"
        );
        assert!(v.filter_wrote(b"register|filter|smtp-out|connect").is_err());
        assert!(v.filter_wrote(b"register|filter|smtp-in|*").is_err());
        assert!(v.filter_wrote(b"register|report|smtp-in|nope").is_err());
        ready(&mut v);
        v.smtpd_sent(b"filter|0.7|1.0|smtp-in|commit|0000000000000001|00000000000000aa|");
        for bad in [
            &b"filter-result|0000000000000001|00000000000000aa|junk"[..],
            b"filter-result|0000000000000001|00000000000000bb|proceed",
            b"filter-result|000000000000000g|00000000000000aa|proceed",
            b"filter-result|0000000000000001|00000000000000aa|proceed|x",
            b"filter-result|0000000000000001|00000000000000aa|reject|250 ok",
            b"filter-result|0000000000000001|00000000000000aa|reject",
            b"filter-result|0000000000000001|00000000000000aa|report|x",
            b"filter-result|0000000000000001|00000000000000aa|maybe",
            b"filter-dataline|0000000000000001|00000000000000aa|x",
            b"report|0.7|1.0|smtp-in|x|0000000000000001",
            b"hello",
        ] {
            assert!(
                v.filter_wrote(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        v.filter_wrote(b"filter-result|0000000000000001|00000000000000aa|reject|550 5.7.1 no")
            .unwrap();
    }

    #[test]
    fn data_line_phase_and_old_order() {
        let mut v = Validator::new(0, 4, false);
        ready(&mut v);
        v.smtpd_sent(b"filter|0.4|1.0|smtp-in|data-line|0000000000000001|00000000000000aa|x");
        // 0.4: token first
        assert!(
            v.filter_wrote(b"filter-dataline|0000000000000001|00000000000000aa|x")
                .is_err()
        );
        v.filter_wrote(b"filter-dataline|00000000000000aa|0000000000000001|x")
            .unwrap();
        assert!(
            v.filter_wrote(b"filter-result|00000000000000aa|0000000000000001|proceed")
                .is_err()
        );
        v.filter_wrote(b"filter-dataline|00000000000000aa|0000000000000001|.")
            .unwrap();
        let long = [b'x'; 2100];
        v.smtpd_sent(b"filter|0.4|1.0|smtp-in|data-line|0000000000000001|00000000000000aa|x");
        let mut line = b"filter-dataline|00000000000000aa|0000000000000001|".to_vec();
        line.extend_from_slice(&long);
        assert!(v.filter_wrote(&line).is_err(), "cut by smtpd before 7.4");
    }
}
