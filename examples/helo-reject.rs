//! Rejects clients whose HELO/EHLO name matches a regular expression.
//!
//! ```text
//! filter "helo" proc-exec "/path/to/helo-reject '^(localhost|\\[?[0-9.]+\\]?)$'"
//! ```

use opensmtpd_filter::protocol::{Decision, Interest, Phase, SmtpReply};
use opensmtpd_filter::{Config, Filter, Session};
use regex::bytes::Regex;

struct HeloReject {
    pattern: Regex,
    reply: SmtpReply,
}

impl HeloReject {
    fn decide(&self, session: &Session<()>, identity: &[u8]) -> Decision {
        if !self.pattern.is_match(identity) {
            return Decision::Proceed;
        }
        log::info!(
            "session={} helo={:?} rejected",
            session.info().id(),
            String::from_utf8_lossy(identity)
        );
        Decision::Reject(self.reply.clone())
    }
}

impl Filter for HeloReject {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().phase(Phase::Helo).phase(Phase::Ehlo)
    }

    async fn on_helo(&self, session: &mut Session<()>, identity: &[u8]) -> Decision {
        self.decide(session, identity)
    }

    async fn on_ehlo(&self, session: &mut Session<()>, identity: &[u8]) -> Decision {
        self.decide(session, identity)
    }
}

fn main() {
    opensmtpd_filter::runtime::init_logging("helo-reject", log::LevelFilter::Info);
    let Some(pattern) = std::env::args().nth(1) else {
        eprintln!("usage: helo-reject REGEX");
        std::process::exit(2);
    };
    let pattern = match Regex::new(&pattern) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("helo-reject: bad regular expression {pattern:?}: {e}");
            std::process::exit(2);
        }
    };
    let reply =
        SmtpReply::new(550, "5.7.1 Your HELO name is not acceptable here").expect("valid reply");
    if let Err(e) = opensmtpd_filter::run(HeloReject { pattern, reply }, Config::default()) {
        log::error!("cannot start: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opensmtpd_filter::testkit::{Answer, TestKit};

    #[tokio::test]
    async fn rejects_matching_names_only() {
        let filter = HeloReject {
            pattern: Regex::new(r"^(localhost|\[?[0-9.]+\]?)$").unwrap(),
            reply: SmtpReply::new(550, "5.7.1 no").unwrap(),
        };
        let mut kit = TestKit::new(filter).protocol(0, 6).start().await;
        let mut s = kit.session();
        assert_eq!(s.connect("192.0.2.1", "<unknown>").await, Answer::NotAsked);
        assert_eq!(
            s.ehlo("localhost").await,
            Answer::Reject("550 5.7.1 no".into())
        );
        assert_eq!(
            s.helo("[192.0.2.1]").await,
            Answer::Reject("550 5.7.1 no".into())
        );
        assert_eq!(s.ehlo(b"mx.example.org\xe9").await, Answer::Proceed);
        kit.finish().await;
    }
}
