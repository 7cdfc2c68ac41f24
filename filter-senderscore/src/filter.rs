//! The glue: [`SenderScore`] implements [`opensmtpd_filter::Filter`] with the
//! [`policy`](crate::policy) and the [`Scorer`].
//!
//! The lookup starts when `link-connect` arrives (or at the `connect` request if that
//! report was missed), on its own task unless the cache has every zone's answer; each
//! phase handler awaits it, so a slow answer holds up only its own session. The runtime runs sessions concurrently.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use opensmtpd_filter::protocol::{
    AuthParam, CommitDecision, Decision, Event, EventKind, Interest, Phase, Report, SmtpReply,
};
use opensmtpd_filter::runtime::DataOutput;
use opensmtpd_filter::session::ClientAddr;
use opensmtpd_filter::{DataMode, Filter, Session};

use crate::allowlist::SharedAllowlist;
use crate::dns::{DnsClient, Scorer, Source};
use crate::policy::{
    BLOCK_REPLY, Policy, Standing, Step, Unknown, Verdict, ZoneResult, test_mode_result,
};

/// How scores are found.
pub enum Lookup<D> {
    /// Asking DNS zones.
    Dns(Arc<Scorer<D>>),
    /// `-testMode`: from the client address.
    Test,
}

/// The filter.
pub struct SenderScore<D> {
    policy: Policy,
    lookup: Lookup<D>,
    allowlist: Arc<SharedAllowlist>,
    block_reply: Option<SmtpReply>,
}

impl<D: DnsClient> SenderScore<D> {
    /// A filter applying `policy` to the scores `lookup` finds, never looking up clients
    /// in `allowlist`.
    pub fn new(policy: Policy, lookup: Lookup<D>, allowlist: Arc<SharedAllowlist>) -> Self {
        SenderScore {
            policy,
            lookup,
            allowlist,
            block_reply: SmtpReply::parse(BLOCK_REPLY).ok(),
        }
    }

    /// Starts finding out about `client`: at once when nothing needs asking, on a task
    /// of its own otherwise.
    fn start(&self, client: Option<&ClientAddr>) -> LookupState {
        let ip = match client {
            Some(ClientAddr::Inet(sa)) => sa.ip(),
            _ => {
                return LookupState::Done(Known {
                    standing: Standing::Looked(ZoneResult::Unknown(Unknown::NoAddress)),
                    source: Source::None,
                    client: client_text(client),
                });
            }
        };
        let client = ip.to_string();
        if self.allowlist.get().contains(ip) {
            return LookupState::Done(Known {
                standing: Standing::Allowlisted,
                source: Source::Allowlist,
                client,
            });
        }
        match &self.lookup {
            Lookup::Test => LookupState::Done(Known {
                standing: Standing::Looked(test_mode_result(ip)),
                source: Source::Test,
                client,
            }),
            // answered from the cache (a client seen moments ago): nothing to wait for
            Lookup::Dns(scorer) => match scorer.cached(ip) {
                Some((result, source)) => LookupState::Done(Known {
                    standing: Standing::Looked(result),
                    source,
                    client,
                }),
                None => {
                    let scorer = Arc::clone(scorer);
                    let task = tokio::spawn(async move { scorer.score(ip).await });
                    LookupState::Running(Task(task), ip)
                }
            },
        }
    }

    /// What is known of the session's client, waiting for the lookup if it runs.
    async fn known(&self, session: &mut Session<SessionState>) -> Known {
        if matches!(session.state.lookup, LookupState::NotStarted) {
            let client = session.info().client.clone();
            session.state.lookup = self.start(client.as_ref());
        }
        let id = session.info().id();
        let done = match &mut session.state.lookup {
            LookupState::Done(known) => return known.clone(),
            LookupState::Running(task, ip) => {
                let (result, source) = match (&mut task.0).await {
                    Ok(found) => found,
                    Err(e) => {
                        log::error!("session {id}: the lookup task failed: {e}");
                        (ZoneResult::Unknown(Unknown::Error), Source::None)
                    }
                };
                Known {
                    standing: Standing::Looked(result),
                    source,
                    client: ip.to_string(),
                }
            }
            LookupState::NotStarted => Known {
                standing: Standing::Looked(ZoneResult::Unknown(Unknown::NoAddress)),
                source: Source::None,
                client: "unknown".into(),
            },
        };
        session.state.lookup = LookupState::Done(done.clone());
        done
    }

    /// The answer at `step`: the verdict, after the session's delay. Logs the decision
    /// at connect, and any block.
    async fn answer(&self, session: &mut Session<SessionState>, step: Step) -> Decision {
        let known = self.known(session).await;
        let verdict = self.policy.verdict(step, &known.standing);
        let delay = self.policy.delay(&known.standing);
        if step == Step::Connect || verdict != Verdict::Proceed {
            self.log_decision(session, &known, step, verdict, delay);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match verdict {
            Verdict::Proceed => Decision::Proceed,
            Verdict::Junk => Decision::Junk,
            Verdict::Block => match &self.block_reply {
                Some(reply) => Decision::Disconnect(reply.clone()),
                None => Decision::Proceed,
            },
        }
    }

    fn log_decision(
        &self,
        session: &Session<SessionState>,
        known: &Known,
        step: Step,
        verdict: Verdict,
        delay: Duration,
    ) {
        let header = if self.policy.header(&known.standing).is_some() {
            " header=yes"
        } else {
            ""
        };
        log::info!(
            "session={} client={} score={} source={} decision={} phase={} delay={}ms{header}",
            session.info().id(),
            known.client,
            known.standing.score_text(),
            known.source.word(),
            verdict.word(),
            step,
            delay.as_millis(),
        );
    }
}

fn client_text(client: Option<&ClientAddr>) -> String {
    match client {
        Some(ClientAddr::Inet(sa)) => sa.ip().to_string(),
        Some(ClientAddr::Local) => "local".into(),
        _ => "unknown".into(),
    }
}

/// What is known of a session's client.
#[derive(Clone, Debug)]
struct Known {
    standing: Standing,
    source: Source,
    client: String,
}

/// A lookup task, stopped when the session ends before it finishes.
struct Task(tokio::task::JoinHandle<(ZoneResult, Source)>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
enum LookupState {
    #[default]
    NotStarted,
    Running(Task, IpAddr),
    Done(Known),
}

/// The filter's state for one session.
#[derive(Default)]
pub struct SessionState {
    lookup: LookupState,
    /// The header still to write at the start of the message in progress.
    header: Option<String>,
}

impl<D: DnsClient> Filter for SenderScore<D> {
    type Session = SessionState;

    fn interest(&self) -> Interest {
        self.policy
            .steps()
            .into_iter()
            .filter_map(|step| Phase::parse(step.as_str().as_bytes()))
            .fold(
                Interest::new().report(EventKind::LinkConnect),
                Interest::phase,
            )
    }

    fn data_mode(&self) -> DataMode {
        if self.policy.score_header {
            DataMode::Stream
        } else {
            DataMode::Off
        }
    }

    fn on_report(&self, session: &mut Session<SessionState>, report: &Report<'_>) {
        if let Event::LinkConnect { .. } = report.event
            && matches!(session.state.lookup, LookupState::NotStarted)
        {
            let client = session.info().client.clone();
            session.state.lookup = self.start(client.as_ref());
        }
    }

    async fn on_connect(
        &self,
        session: &mut Session<SessionState>,
        _rdns: &[u8],
        client: &ClientAddr,
    ) -> Decision {
        if matches!(session.state.lookup, LookupState::NotStarted) {
            session.state.lookup = self.start(Some(client));
        }
        self.answer(session, Step::Connect).await
    }

    async fn on_helo(&self, session: &mut Session<SessionState>, _: &[u8]) -> Decision {
        self.answer(session, Step::Helo).await
    }

    async fn on_ehlo(&self, session: &mut Session<SessionState>, _: &[u8]) -> Decision {
        self.answer(session, Step::Ehlo).await
    }

    async fn on_starttls(&self, session: &mut Session<SessionState>) -> Decision {
        self.answer(session, Step::StartTls).await
    }

    async fn on_auth(&self, session: &mut Session<SessionState>, _: AuthParam<'_>) -> Decision {
        // the AUTH parameter holds credentials: it is not even looked at
        self.answer(session, Step::Auth).await
    }

    async fn on_mail_from(&self, session: &mut Session<SessionState>, _: &[u8]) -> Decision {
        self.answer(session, Step::MailFrom).await
    }

    async fn on_rcpt_to(&self, session: &mut Session<SessionState>, _: &[u8]) -> Decision {
        self.answer(session, Step::RcptTo).await
    }

    async fn on_data(&self, session: &mut Session<SessionState>) -> Decision {
        let decision = self.answer(session, Step::Data).await;
        session.state.header = match &session.state.lookup {
            LookupState::Done(known) => self.policy.header(&known.standing),
            _ => None,
        };
        decision
    }

    async fn on_rset(&self, session: &mut Session<SessionState>) -> Decision {
        self.answer(session, Step::Rset).await
    }

    async fn on_noop(&self, session: &mut Session<SessionState>) -> Decision {
        self.answer(session, Step::Noop).await
    }

    async fn on_quit(&self, session: &mut Session<SessionState>) -> Decision {
        self.answer(session, Step::Quit).await
    }

    async fn on_commit(&self, session: &mut Session<SessionState>) -> CommitDecision {
        // commit is only ever slowed: blocking and junking are decided earlier
        let known = self.known(session).await;
        let delay = self.policy.delay(&known.standing);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        CommitDecision::Proceed
    }

    fn on_data_line(
        &self,
        session: &mut Session<SessionState>,
        _line: &[u8],
        out: &mut DataOutput<'_>,
    ) {
        if let Some(header) = session.state.header.take() {
            out.line(header.as_bytes());
        }
        out.pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_reply_is_valid() {
        let reply = SmtpReply::parse(BLOCK_REPLY).unwrap();
        assert_eq!(
            reply.as_str(),
            "550 5.7.1 Your IP reputation is too low for this MX"
        );
    }
}
