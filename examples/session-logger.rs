//! A report-only filter: registers no filter phase (it can never delay mail) and logs
//! one line per finished session to stderr, which smtpd writes to its log.
//!
//! ```text
//! filter "logger" proc-exec "/path/to/session-logger"
//! ```

use opensmtpd_filter::protocol::{Event, Interest, Report};
use opensmtpd_filter::session::SESSION_REPORTS;
use opensmtpd_filter::{Config, Filter, Session};

struct SessionLogger;

#[derive(Default)]
struct Counts {
    rejected_recipients: u32,
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(
        || "-".to_string(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

impl Filter for SessionLogger {
    type Session = Counts;

    fn interest(&self) -> Interest {
        SESSION_REPORTS
    }

    fn on_report(&self, session: &mut Session<Counts>, report: &Report<'_>) {
        match report.event {
            Event::TxRcpt { result, .. } if result != opensmtpd_filter::protocol::TxResult::Ok => {
                session.state.rejected_recipients += 1;
            }
            Event::LinkDisconnect => {
                let info = session.info();
                // Never the AUTH secret: only the user name smtpd reported.
                log::info!(
                    "session={} client={} rdns={} helo={} tls={} user={} messages={} rejected-rcpts={}",
                    info.id(),
                    info.client_ip().map_or_else(
                        || if info.is_local() {
                            "local".into()
                        } else {
                            "-".into()
                        },
                        |ip| ip.to_string()
                    ),
                    text(info.rdns.as_deref()),
                    text(info.helo.as_deref()),
                    if info.tls.is_some() { "yes" } else { "no" },
                    text(info.authenticated_user()),
                    info.messages_committed,
                    session.state.rejected_recipients,
                );
            }
            _ => {}
        }
    }
}

fn main() {
    opensmtpd_filter::runtime::init_logging("session-logger", log::LevelFilter::Info);
    if let Err(e) = opensmtpd_filter::run(SessionLogger, Config::default()) {
        log::error!("cannot start: {e}");
    }
}
