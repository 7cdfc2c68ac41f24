//! A small logger to stderr, which smtpd copies into its own log.
//!
//! smtpd reads a filter's stderr in its `lka` process, the same single-threaded event
//! loop that passes the filter's answers on to the sessions: a line a handler logs
//! before its answer is written costs the waiting client a write here and a log write
//! there. So lines logged on the filter's own thread while it works through what
//! smtpd sent are held, and written right after the answers of that turn
//! (`HoldLogs`, `write_held`); lines from any other thread or task go out at once.

use std::cell::RefCell;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use log::{LevelFilter, Log, Metadata, Record};

/// The most bytes one write to a pipe is guaranteed to put in it whole (POSIX's
/// `PIPE_BUF` is at least 512; Linux's and OpenBSD's are 4096 and 512): held lines are
/// written in runs no longer than this, so that they never interleave with the lines
/// of other threads. A single longer line is written alone.
const ATOMIC_WRITE: usize = 512;

thread_local! {
    /// While some: lines logged on this thread are appended here, not written. (A
    /// fresh buffer per hold: an empty `Vec` allocates nothing, and a turn that logs
    /// has allocated its lines already.)
    static HELD: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

struct StderrLogger {
    name: &'static str,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{}: {}: {}\n",
            self.name,
            record.level().as_str().to_lowercase(),
            record.args()
        );
        if !hold(line.as_bytes()) {
            // One write per line, so lines of concurrent writers never interleave.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Sends `log` records at `level` and above to stderr as `NAME: level: message` lines.
/// Does nothing if a logger is already installed.
///
/// Lines that handlers log while the runtime works through a batch of smtpd's input are
/// written right after that batch's answers (smtpd reads stderr in the process that
/// passes the answers on, so a line before an answer delays it); lines logged anywhere
/// else are written at once.
pub fn init_logging(name: &'static str, level: LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLogger { name })).is_ok() {
        log::set_max_level(level);
    }
}

/// Appends `line` to this thread's held lines if they are being held; `false` if not.
fn hold(line: &[u8]) -> bool {
    HELD.try_with(|held| match held.try_borrow_mut() {
        Ok(mut held) => match held.as_mut() {
            Some(buf) => {
                buf.extend_from_slice(line);
                true
            }
            None => false,
        },
        Err(_) => false,
    })
    .unwrap_or(false)
}

/// Takes this thread's held lines (empty when none), leaving an empty buffer if they
/// are being held.
fn take_held() -> Vec<u8> {
    HELD.try_with(|held| match held.try_borrow_mut() {
        Ok(mut held) => held.as_mut().map(std::mem::take).unwrap_or_default(),
        Err(_) => Vec::new(),
    })
    .unwrap_or_default()
}

/// Writes the lines held so far on this thread to stderr, and holds on: the I/O loop
/// calls this right after it wrote a batch of answers.
pub(crate) fn write_held() {
    let lines = take_held();
    if lines.is_empty() {
        return;
    }
    let _ = write_lines(&mut std::io::stderr().lock(), &lines);
}

/// Writes `lines` (whole `\n`-ended lines) in runs of whole lines of at most
/// [`ATOMIC_WRITE`] bytes each, one write per run.
fn write_lines(out: &mut impl Write, lines: &[u8]) -> std::io::Result<()> {
    let mut rest = lines;
    while !rest.is_empty() {
        let mut end = 0;
        for (i, _) in rest.iter().enumerate().filter(|&(_, &b)| b == b'\n') {
            if i + 1 > ATOMIC_WRITE && end > 0 {
                break;
            }
            end = i + 1;
            if end >= ATOMIC_WRITE {
                break;
            }
        }
        if end == 0 {
            // no newline left (cannot happen with the logger's lines): all of it
            end = rest.len();
        }
        out.write_all(&rest[..end])?;
        rest = &rest[end..];
    }
    Ok(())
}

/// Starts holding this thread's log lines; when dropped, writes them and stops (unless
/// an outer hold was already holding them).
struct Hold {
    outer: bool,
}

impl Hold {
    fn start() -> Hold {
        let outer = HELD
            .try_with(|held| match held.try_borrow_mut() {
                Ok(mut held) if held.is_none() => {
                    *held = Some(Vec::new());
                    false
                }
                // already holding (or cannot tell): leave it to the outer hold
                _ => true,
            })
            .unwrap_or(true);
        Hold { outer }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.outer {
            return;
        }
        let held = HELD
            .try_with(|held| held.try_borrow_mut().ok().and_then(|mut h| h.take()))
            .ok()
            .flatten();
        if let Some(lines) = held.filter(|l| !l.is_empty()) {
            let _ = write_lines(&mut std::io::stderr().lock(), &lines);
        }
    }
}

/// A future whose every poll holds the log lines of this thread until the poll ends
/// (or [`write_held`] writes them earlier): the runtime's I/O loop runs in it, so that
/// the lines its handlers log go out after their answers.
pub(crate) struct HoldLogs<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> HoldLogs<F> {
    pub(crate) fn new(inner: F) -> Self {
        HoldLogs {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for HoldLogs<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _hold = Hold::start();
        self.get_mut().inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(n: usize, len: usize) -> Vec<u8> {
        let mut l = format!("{n:04}").into_bytes();
        l.resize(len - 1, b'.');
        l.push(b'\n');
        l
    }

    #[test]
    fn held_lines_are_written_in_runs_of_whole_lines_that_a_pipe_takes_whole() {
        let mut lines = Vec::new();
        for n in 0..20 {
            lines.extend(line(n, 100));
        }
        lines.extend(line(20, 2000));
        lines.extend(line(21, 30));
        let mut out = Writes::default();
        write_lines(&mut out, &lines).unwrap();
        assert_eq!(out.0.concat(), lines, "every byte, in order");
        for w in &out.0 {
            assert_eq!(w.last(), Some(&b'\n'), "whole lines");
            assert!(
                w.len() <= ATOMIC_WRITE || w.iter().filter(|&&b| b == b'\n').count() == 1,
                "a run over {ATOMIC_WRITE} bytes is one line alone"
            );
        }
        // five lines of 100 bytes fill a run of 500
        assert_eq!(out.0[0].len(), 500);
        assert_eq!(out.0.iter().filter(|w| w.len() == 2000).count(), 1);
    }

    #[test]
    fn lines_are_held_only_inside_a_hold() {
        assert!(!hold(b"direct\n"), "not held outside a hold");
        {
            let _hold = Hold::start();
            assert!(hold(b"one\n"));
            {
                // an inner hold leaves the lines to the outer one
                let _inner = Hold::start();
                assert!(hold(b"two\n"));
            }
            assert_eq!(take_held(), b"one\ntwo\n");
            assert!(hold(b"three\n"), "still holding after a take");
            assert_eq!(take_held(), b"three\n");
        }
        assert!(!hold(b"after\n"), "not held once the hold ended");
        assert!(take_held().is_empty());
    }

    #[test]
    fn each_poll_of_a_held_future_holds() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut held_inside = None;
        let mut fut = HoldLogs::new(std::future::poll_fn(|_| {
            held_inside = Some(hold(b""));
            Poll::Ready(())
        }));
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(()));
        drop(fut);
        assert_eq!(held_inside, Some(true));
        assert!(!hold(b""));
    }
}
