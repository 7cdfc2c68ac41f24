//! stdin and stdout as non-blocking tokio I/O.
//!
//! smtpd gives a filter one end of a socketpair as both stdin and stdout; a shell
//! pipeline (tests, benchmarks) gives pipes. Either is put in non-blocking mode and
//! driven by tokio's reactor, so reads and writes are plain syscalls on this thread —
//! not hand-offs to tokio's blocking pool as `tokio::io::stdin()` does, which costs a
//! thread switch per read. Anything else (a file, a terminal) falls back to that.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// stdin, as [`stdio`] gives it.
pub type Input = Pin<Box<dyn AsyncRead + Send>>;
/// stdout, as [`stdio`] gives it.
pub type Output = Pin<Box<dyn AsyncWrite + Send>>;

enum Kind {
    Socket,
    Fifo,
    Other,
}

fn kind_of(fd: &OwnedFd) -> Kind {
    let Ok(file) = fd.try_clone().map(std::fs::File::from) else {
        return Kind::Other;
    };
    match file.metadata().map(|m| m.file_type()) {
        Ok(t) if t.is_socket() => Kind::Socket,
        Ok(t) if t.is_fifo() => Kind::Fifo,
        _ => Kind::Other,
    }
}

fn reader() -> io::Result<Input> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    Ok(match kind_of(&fd) {
        Kind::Socket => {
            let stream = std::os::unix::net::UnixStream::from(fd);
            stream.set_nonblocking(true)?;
            Box::pin(tokio::net::UnixStream::from_std(stream)?)
        }
        Kind::Fifo => Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?),
        Kind::Other => Box::pin(tokio::io::stdin()),
    })
}

fn writer() -> io::Result<Output> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    Ok(match kind_of(&fd) {
        Kind::Socket => {
            let stream = std::os::unix::net::UnixStream::from(fd);
            stream.set_nonblocking(true)?;
            Box::pin(tokio::net::UnixStream::from_std(stream)?)
        }
        Kind::Fifo => Box::pin(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?),
        Kind::Other => Box::pin(tokio::io::stdout()),
    })
}

/// stdin and stdout, non-blocking where they can be, for [`run_with`](super::run_with)
/// in a runtime of your own (for example to watch signals beside the filter):
///
/// ```no_run
/// # use opensmtpd_filter::{protocol::Interest, Config, Filter};
/// # struct MyFilter;
/// # impl Filter for MyFilter { type Session = (); fn interest(&self) -> Interest { Interest::new() } }
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() {
///     let (input, output) = opensmtpd_filter::runtime::stdio();
///     let _ = opensmtpd_filter::run_with(MyFilter, Config::default(), input, output).await;
/// }
/// ```
///
/// Must be called inside a tokio runtime with I/O enabled.
pub fn stdio() -> (Input, Output) {
    let input = reader().unwrap_or_else(|e| {
        log::warn!("stdin cannot be made non-blocking ({e}); using tokio's blocking stdin");
        Box::pin(tokio::io::stdin())
    });
    let output = writer().unwrap_or_else(|e| {
        log::warn!("stdout cannot be made non-blocking ({e}); using tokio's blocking stdout");
        Box::pin(tokio::io::stdout())
    });
    (input, output)
}
