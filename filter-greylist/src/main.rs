//! `filter-greylist`: reads the command line, the allowlists and the store, then runs
//! the filter over stdin/stdout until smtpd closes them, with SIGHUP reloading the
//! lists and a background task purging expired entries.

use std::process::ExitCode;
use std::sync::Arc;

use filter_greylist::config::{CliOutcome, Settings, StoreSpec};
use filter_greylist::control::ControlSocket;
use filter_greylist::filter::{Clock, Greylist, SystemClock};
use filter_greylist::lists::{ListFiles, SharedLists};
use filter_greylist::redis_store::RedisStore;
use filter_greylist::spf::MailAuthSpf;
use filter_greylist::store::{MemoryStore, RedbStore, Store};
use opensmtpd_filter::Config;

const NAME: &str = "filter-greylist";

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "admin") {
        return match filter_greylist::admin::run(std::env::args_os().skip(1)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(text) => {
                eprint!("{NAME} admin: {text}");
                if !text.ends_with('\n') {
                    eprintln!();
                }
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::from_args(std::env::args_os()) {
        CliOutcome::Run(settings) => *settings,
        CliOutcome::Print(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        CliOutcome::Error(text) => {
            eprint!("{NAME}: {text}");
            return ExitCode::FAILURE;
        }
    };
    // before the first thread: a second start with glibc's per-thread caches off
    let reexec_error = filter_greylist::allocator::reexec_without_tcache();
    let level = if settings.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    opensmtpd_filter::runtime::init_logging(NAME, level);
    filter_greylist::allocator::restore_name();
    if let Some(e) = reexec_error {
        log::warn!(
            "cannot start again with glibc's per-thread malloc caches off ({e}); running with them"
        );
    }

    let lists = match settings.lists.load() {
        Ok(lists) => Arc::new(SharedLists::new(lists)),
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store: Arc<dyn Store> = match &settings.store {
        StoreSpec::Memory => {
            log::warn!("--store memory: greylisting state is lost when the filter stops");
            Arc::new(MemoryStore::new())
        }
        StoreSpec::Redis(url) => match RedisStore::new(url) {
            Ok(store) => {
                log::info!("store: Redis at {url}");
                Arc::new(store)
            }
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return ExitCode::FAILURE;
            }
        },
        StoreSpec::File(path) => match RedbStore::open(path) {
            Ok(store) => {
                log::info!("store {} opened", path.display());
                Arc::new(store)
            }
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(filter_greylist::filter::STORE_CONCURRENCY)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let spf = match MailAuthSpf::new(
            &settings.resolvers,
            settings.spf_timeout,
            &settings.hostname,
        ) {
            Ok(spf) => Arc::new(spf),
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return Err(());
            }
        };
        if let Err(e) = watch_sighup(settings.lists.clone(), Arc::clone(&lists)) {
            eprintln!("{NAME}: cannot watch for SIGHUP: {e}");
            return Err(());
        }
        // the admin command's way in while we hold the embedded store
        let control = match &settings.store {
            StoreSpec::File(path) => {
                match ControlSocket::bind(&filter_greylist::control::socket_path(path)) {
                    Ok(socket) => {
                        let socket = Arc::new(socket);
                        let serving = Arc::clone(&socket);
                        let store = Arc::clone(&store);
                        let thread = std::thread::Builder::new()
                            .name("control-socket".into())
                            .spawn(move || serving.serve(store));
                        match thread {
                            Ok(_) => {
                                log::info!("control socket {} ready", socket.path().display());
                                Some(socket)
                            }
                            Err(e) => {
                                log::warn!("control socket: cannot start its thread: {e}");
                                None
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("{e}; the admin command cannot reach this filter");
                        None
                    }
                }
            }
            StoreSpec::Memory | StoreSpec::Redis(_) => None,
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        tokio::spawn(purge(
            Arc::clone(&store),
            Arc::clone(&clock),
            settings.purge_interval,
        ));
        let filter = Greylist::new(
            settings.timing,
            settings.grouping,
            settings.reply.clone(),
            spf,
            store,
            lists,
            clock,
        )
        .with_trap_reply(settings.trap_reply.clone());
        let config = Config {
            // SPF (bounded) and one store commit
            handler_timeout: settings.spf_timeout + std::time::Duration::from_secs(30),
            ..Config::default()
        };
        let (input, output) = opensmtpd_filter::runtime::stdio();
        let ran = opensmtpd_filter::run_with(filter, config, input, output).await;
        if let Some(socket) = control {
            socket.remove();
        }
        match ran {
            Ok(_) => Ok(()),
            Err(e) => {
                log::error!("cannot run: {e}");
                Err(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

/// Reloads the lists on SIGHUP. The handler is in place before this returns, so a
/// SIGHUP never kills the filter (which would take smtpd down), even without lists.
fn watch_sighup(files: ListFiles, shared: Arc<SharedLists>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match shared.reload(&files) {
                Ok(n) => log::info!("SIGHUP: allowlists reloaded ({n} entries)"),
                Err(e) => log::warn!("SIGHUP: {e}; the allowlists in force are kept"),
            }
        }
    });
    Ok(())
}

/// Removes expired entries every `interval`, on the blocking pool.
async fn purge(store: Arc<dyn Store>, clock: Arc<dyn Clock>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        let now = clock.now();
        match tokio::task::spawn_blocking(move || store.purge(now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => log::info!("purge: {n} expired entries removed"),
            Ok(Err(e)) => log::warn!("purge: {e}"),
            Err(e) => log::warn!("purge: the task failed: {e}"),
        }
    }
}
