//! `filter-senderscore`: reads the command line and the allowlist, then runs the
//! filter over stdin/stdout until smtpd closes them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use filter_senderscore::allowlist::{Allowlist, SharedAllowlist};
use filter_senderscore::config::{CliOutcome, Mode, Settings};
use filter_senderscore::dns::{HickoryDns, Scorer};
use filter_senderscore::filter::{Lookup, SenderScore};
use opensmtpd_filter::Config;

const NAME: &str = "filter-senderscore";

fn main() -> ExitCode {
    let settings = match Settings::from_args(std::env::args_os()) {
        CliOutcome::Run(settings) => settings,
        CliOutcome::Print(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        CliOutcome::Error(text) => {
            eprint!("{NAME}: {text}");
            return ExitCode::FAILURE;
        }
    };
    let level = if settings.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    opensmtpd_filter::runtime::init_logging(NAME, level);

    let list = match &settings.allowlist {
        Some(path) => match Allowlist::load(path) {
            Ok(list) => list,
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Allowlist::default(),
    };
    let allowlist = Arc::new(SharedAllowlist::new(list));
    if let Err(e) = watch_sighup(settings.allowlist.clone(), Arc::clone(&allowlist)) {
        eprintln!("{NAME}: cannot watch for SIGHUP: {e}");
        return ExitCode::FAILURE;
    }

    let lookup = match &settings.mode {
        Mode::Test => Lookup::Test,
        Mode::Dns {
            resolvers,
            zones,
            timeout,
            cache_size,
        } => match HickoryDns::new(resolvers, *timeout) {
            Ok(dns) => Lookup::Dns(Arc::new(Scorer::new(
                dns,
                zones.clone(),
                *timeout,
                *cache_size,
            ))),
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let config = Config {
        // a handler only waits for its lookup (bounded) and its delay
        handler_timeout: settings.longest_answer() + Duration::from_secs(10),
        ..Config::default()
    };
    let filter = SenderScore::new(settings.policy, lookup, allowlist);
    match opensmtpd_filter::run(filter, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("cannot run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the allowlist on SIGHUP, on a thread of its own, for as long as the filter
/// runs. The handler is in place before this returns, so a SIGHUP never kills the
/// filter (which would take smtpd down), even without an allowlist.
fn watch_sighup(path: Option<PathBuf>, shared: Arc<SharedAllowlist>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let mut hangups = match signal(SignalKind::hangup()) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while hangups.recv().await.is_some() {
                    let Some(path) = &path else {
                        log::info!("SIGHUP: no allowlist configured, nothing to reload");
                        continue;
                    };
                    match shared.reload(path) {
                        Ok(n) => log::info!(
                            "SIGHUP: allowlist {} reloaded ({n} networks)",
                            path.display()
                        ),
                        Err(e) => log::warn!("SIGHUP: {e}; the allowlist in force is kept"),
                    }
                }
            });
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended")))
}
