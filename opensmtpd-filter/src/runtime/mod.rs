//! The tokio runtime: runs a [`Filter`] over stdin/stdout.
//!
//! A thin adapter around the [`protocol`](crate::protocol) core: it reads lines,
//! hands each session's lines to the filter in order (sessions run concurrently),
//! writes the answers in batches — one write per batch of input, never one per line —
//! and stops only at the end of its input, after the handlers still running finished.

mod echo;
mod engine;
mod filter;
mod io;
mod logger;
mod memory;
mod message;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::{CommitDecision, Handshake, LongLines};

pub use filter::{DataMode, DataOutput, Filter, MessageOutput, MessageVerdict, Session};
pub use logger::init_logging;
pub use message::{Chunks, HEADER_CAP, Message};
pub use stdio::{Input, Output, stdio};

/// How the runtime treats handlers and long lines.
#[derive(Clone, Debug)]
pub struct Config {
    /// The longest a handler may run before its request is answered with
    /// [`Config::fallback`]. smtpd's own session timeout is 300 s.
    pub handler_timeout: Duration,
    /// The answer when a handler panics or times out (valid in every phase).
    pub fallback: CommitDecision,
    /// What to do with a message line too long to be written back whole.
    pub long_lines: LongLines,
    /// [`DataMode::Message`]: a message larger than this many bytes is moved from RAM
    /// to a temporary file (unlinked at once) as it arrives.
    pub spool_above: usize,
    /// Where the temporary files go; `None`: `TMPDIR`, else `/tmp`.
    pub spool_dir: Option<PathBuf>,
    /// With glibc: map buffers of 256 KiB and more on their own (so they go back to
    /// the system when freed) and release the heap's free pages whenever the last
    /// session ends, so that the resident size follows what the filter holds. This
    /// sets process-wide allocator parameters; turn it off when the filter shares its
    /// process with code that tunes malloc itself. No effect with other C libraries,
    /// whose malloc returns memory on its own.
    ///
    /// Out of its reach: glibc's per-thread caches, which only `GLIBC_TUNABLES` can
    /// turn off, read when the program starts. A filter that also works on other
    /// threads (tokio's blocking pool, say) may see its resident size creep up by some
    /// percent over a long run because of them; filter-greylist, whose store runs on
    /// such threads, starts itself with `glibc.malloc.tcache_count=0` for that reason.
    pub release_memory: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            handler_timeout: Duration::from_secs(60),
            fallback: CommitDecision::Proceed,
            long_lines: LongLines::Refuse,
            spool_above: 1 << 20,
            spool_dir: None,
            release_memory: true,
        }
    }
}

/// What a finished run saw, for the caller's logs and tests.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// The handshake smtpd sent.
    pub handshake: Handshake,
    /// Sessions that still had state at the end (sessions without `link-disconnect`).
    pub open_sessions: usize,
}

/// Runs `filter` over `input` and `output` until `input` ends.
///
/// Never fails because of what it reads: bad lines are logged and skipped. The only
/// error is none — the `Result` is kept for future I/O setup errors — and output errors
/// (smtpd closed its end) are logged once, after which answers are dropped.
pub async fn run_with<F, R, W>(
    filter: F,
    config: Config,
    input: R,
    output: W,
) -> std::io::Result<RunSummary>
where
    F: Filter,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut engine = engine::Engine::new(Arc::new(filter), config);
    // the lines handlers log go out after their answers (see logger.rs)
    logger::HoldLogs::new(io::drive(&mut engine, input, output)).await?;
    if engine.session_count() > 0 {
        // smtpd ends every session with link-disconnect before it goes: state still
        // held here is a session it never ended, or one this filter failed to forget
        log::info!(
            "input ended with {} sessions still open",
            engine.session_count()
        );
    }
    Ok(RunSummary {
        handshake: engine.handshake().clone(),
        open_sessions: engine.session_count(),
    })
}

/// Runs `filter` over stdin/stdout on a single-threaded tokio runtime until stdin ends.
/// This is what a filter's `main` calls.
pub fn run<F: Filter>(filter: F, config: Config) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (input, output) = stdio::stdio();
        run_with(filter, config, input, output).await.map(drop)
    })
}
