//! `filter-rspamd`: reads the command line, then runs the filter over stdin/stdout
//! until smtpd closes them.

use std::process::ExitCode;
use std::time::Duration;

use filter_rspamd::client::Rspamd;
use filter_rspamd::config::{CliOutcome, Settings};
use filter_rspamd::filter::RspamdFilter;
use opensmtpd_filter::Config;
use opensmtpd_filter::protocol::CommitDecision;

const NAME: &str = "filter-rspamd";

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

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let scanner = Rspamd::new(
            &settings.endpoint,
            settings.connect_timeout,
            settings.timeout,
        )?;
        log::info!(
            "asking rspamd at {} (timeouts: connect {} ms, request {} ms), messages up to {} bytes, spooled to {} above {} bytes",
            settings.endpoint,
            settings.connect_timeout.as_millis(),
            settings.timeout.as_millis(),
            settings.max_size,
            settings
                .spool_dir
                .as_deref()
                .unwrap_or(&std::env::temp_dir())
                .display(),
            settings.spool_above
        );
        let fallback = match settings.policy.on_error().decision {
            CommitDecision::Reject(r) => CommitDecision::Reject(r),
            _ => CommitDecision::Proceed,
        };
        let config = Config {
            // the request is bounded by its own timeouts; this is the backstop
            handler_timeout: settings.connect_timeout + settings.timeout + Duration::from_secs(2),
            fallback,
            spool_above: settings.spool_above,
            spool_dir: settings.spool_dir.clone(),
            ..Config::default()
        };
        let filter = RspamdFilter::new(
            scanner,
            settings.request.clone(),
            settings.policy,
            settings.max_size,
        );
        let (input, output) = opensmtpd_filter::runtime::stdio();
        opensmtpd_filter::run_with(filter, config, input, output)
            .await
            .map(drop)
            .map_err(|e| format!("cannot run: {e}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
