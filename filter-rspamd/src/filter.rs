//! The glue: [`RspamdFilter`] implements [`opensmtpd_filter::Filter`] with the
//! [`request`](crate::request) and [`verdict`](crate::verdict) rules and a
//! [`Scanner`].
//!
//! The whole message (up to `--max-size`) comes to [`Filter::on_message`], which asks
//! rspamd and answers with the verdict. Each session's message is its own handler: one
//! slow rspamd answer holds up only its own session.

use std::sync::Arc;
use std::time::Instant;

use opensmtpd_filter::protocol::{CommitDecision, Interest};
use opensmtpd_filter::session::{ClientAddr, SESSION_REPORTS, SessionInfo};
use opensmtpd_filter::{DataMode, Filter, Message, MessageVerdict, Session};

use crate::client::Scanner;
use crate::request::{RequestOptions, headers};
use crate::verdict::{AuthMode, Outcome, Policy, Scan};

/// How many symbols the log line names.
pub const LOG_SYMBOLS: usize = 5;

/// The filter.
pub struct RspamdFilter<S> {
    scanner: Arc<S>,
    request: RequestOptions,
    policy: Policy,
    max_size: usize,
}

impl<S: Scanner> RspamdFilter<S> {
    /// A filter asking `scanner`, applying `policy`, scanning messages up to `max_size`.
    pub fn new(scanner: S, request: RequestOptions, policy: Policy, max_size: usize) -> Self {
        RspamdFilter {
            scanner: Arc::new(scanner),
            request,
            policy,
            max_size,
        }
    }
}

/// What the log line says about a session.
struct Who {
    session: String,
    queue: String,
    client: String,
}

fn who(info: &SessionInfo) -> Who {
    Who {
        session: info.id().to_string(),
        queue: info
            .transaction
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.id.to_string()),
        client: match &info.client {
            Some(ClientAddr::Inet(sa)) => sa.ip().to_string(),
            Some(ClientAddr::Local) => "local".into(),
            _ => "unknown".into(),
        },
    }
}

fn answer_text(v: &MessageVerdict) -> String {
    match &v.decision {
        CommitDecision::Proceed => "proceed".into(),
        CommitDecision::Reject(r) => format!("\"{r}\""),
        CommitDecision::Disconnect(r) => format!("\"{r}\""),
    }
}

impl<S: Scanner> Filter for RspamdFilter<S> {
    type Session = ();

    fn interest(&self) -> Interest {
        SESSION_REPORTS
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Message {
            max_size: self.max_size,
        }
    }

    async fn on_message(&self, session: &mut Session<()>, message: &Message) -> MessageVerdict {
        let start = Instant::now();
        let info = session.info();
        let w = who(info);
        let authenticated = info.authenticated_user().is_some();
        if authenticated && self.policy.authenticated == AuthMode::Skip {
            log::info!(
                "session={} queue={} client={} action=skipped reason=authenticated size={} elapsed=0ms answer=proceed",
                w.session,
                w.queue,
                w.client,
                message.len()
            );
            return MessageVerdict::accept();
        }
        let request = headers(info, &self.request);
        let result = self.scanner.scan(request, message.clone()).await;
        // tenths of a millisecond: a scan on the same host takes one to a few ms
        let elapsed = format!("{:.1}", start.elapsed().as_secs_f64() * 1000.0);
        let scan = match result {
            Ok(reply) => Scan::parse(&reply).map_err(|e| format!("unusable reply: {e}")),
            Err(e) => Err(e.to_string()),
        };
        match scan {
            Ok(scan) => {
                let Outcome { verdict, result } = self.policy.decide(&scan, message, authenticated);
                let symbols: Vec<String> = scan
                    .top_symbols(LOG_SYMBOLS)
                    .iter()
                    .map(|(n, s)| format!("{n}({s:.2})"))
                    .collect();
                log::info!(
                    "session={} queue={} client={} action=\"{}\" score={:.2}/{:.2} symbols={} size={} elapsed={}ms result={} answer={}",
                    w.session,
                    w.queue,
                    w.client,
                    scan.action.as_str().escape_debug(),
                    scan.score,
                    scan.required,
                    if symbols.is_empty() {
                        "-".to_string()
                    } else {
                        symbols.join(",")
                    },
                    message.len(),
                    elapsed,
                    result,
                    answer_text(&verdict),
                );
                verdict
            }
            Err(e) => {
                let verdict = self.policy.on_error();
                log::warn!(
                    "session={} queue={} client={} action=error error=\"{}\" size={} elapsed={}ms answer={}",
                    w.session,
                    w.queue,
                    w.client,
                    e.escape_debug(),
                    message.len(),
                    elapsed,
                    answer_text(&verdict),
                );
                verdict
            }
        }
    }

    async fn on_commit(&self, session: &mut Session<()>) -> CommitDecision {
        // only messages over --max-size come here: they were passed on unscanned
        let w = who(session.info());
        log::info!(
            "session={} queue={} client={} action=unscanned reason=\"larger than --max-size {} or no temporary file\" answer=proceed",
            w.session,
            w.queue,
            w.client,
            self.max_size
        );
        CommitDecision::Proceed
    }
}
