//! stdin and stdout as non-blocking tokio I/O.
//!
//! smtpd gives a filter one end of a socketpair as both stdin and stdout; a shell
//! pipeline (tests, benchmarks) gives pipes. Either is put in non-blocking mode and
//! driven by tokio's reactor, so reads and writes are plain syscalls on this thread —
//! not hand-offs to tokio's blocking pool as `tokio::io::stdin()` does, which costs a
//! thread switch per read. Anything else (a file, a terminal) falls back to that.
//!
//! The socket is watched for reading only ([`SocketInput`], [`SocketOutput`]). A unix
//! socket signals "writable" each time its peer takes data out of it, so a socket
//! watched for writing (as `tokio::net::UnixStream` watches it) wakes the filter once
//! more after every answer smtpd reads, for nothing: on a busy two-core MX that is a
//! context switch per answer competing with smtpd for a core. Answers are written
//! straight away instead, and only a write that would block watches for room, until
//! it is done.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::unix::{AsyncFd, AsyncFdRegisterError};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

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
        Kind::Socket => Box::pin(SocketInput::new(UnixStream::from(fd))?),
        Kind::Fifo => Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?),
        Kind::Other => Box::pin(tokio::io::stdin()),
    })
}

fn writer() -> io::Result<Output> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    Ok(match kind_of(&fd) {
        Kind::Socket => Box::pin(SocketOutput::new(UnixStream::from(fd))?),
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

/// Registers `socket` with tokio's reactor for `interest` alone; on failure the
/// error gives the socket back.
#[allow(unsafe_code)]
fn watch(
    socket: UnixStream,
    interest: Interest,
) -> Result<AsyncFd<UnixStream>, AsyncFdRegisterError<UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and is the one
    // `as_raw_fd` returns, until the stream is dropped or given back, which the
    // `AsyncFd` does only after deregistering it.
    unsafe { AsyncFd::register_with_interest(socket, interest) }
}

/// A socket read through tokio's reactor, watched for reading only.
pub(crate) struct SocketInput {
    socket: AsyncFd<UnixStream>,
}

impl SocketInput {
    /// Puts `socket` in non-blocking mode and watches it for reading.
    pub(crate) fn new(socket: UnixStream) -> io::Result<SocketInput> {
        socket.set_nonblocking(true)?;
        Ok(SocketInput {
            socket: watch(socket, Interest::READABLE)?,
        })
    }
}

impl AsyncRead for SocketInput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            match ready.try_io(|socket| socket.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < wanted {
                        // A short read took all there was: wait for the next readiness
                        // event rather than find that out with one more read. (Data
                        // that came meanwhile brought an event of its own, and the
                        // guard clears only the readiness it saw.)
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // drained: try_io cleared the readiness, wait for the next
                Err(_would_block) => {}
            }
        }
    }
}

/// A socket written to directly; watched for room, through tokio's reactor, only from
/// a write that would block or came up short until one goes through whole.
pub(crate) struct SocketOutput {
    socket: UnixStream,
    /// A second descriptor of the socket, made at the start, so that waiting for room
    /// never needs a new one (a filter out of descriptors must still answer): here
    /// while not watched, in `waiting` while registered.
    spare: Option<UnixStream>,
    waiting: Option<AsyncFd<UnixStream>>,
    /// Should the reactor refuse the registration: when to try the write again.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How soon a write is tried again when the socket cannot be watched for room.
const RETRY: std::time::Duration = std::time::Duration::from_millis(1);

impl SocketOutput {
    /// Puts `socket` in non-blocking mode.
    pub(crate) fn new(socket: UnixStream) -> io::Result<SocketOutput> {
        socket.set_nonblocking(true)?;
        Ok(SocketOutput {
            spare: Some(socket.try_clone()?),
            socket,
            waiting: None,
            retry: None,
        })
    }

    /// Watches the socket for room (if not already): registering reports it writable
    /// at once if room was made since the last write, so no wake-up can be missed.
    /// `false` if the reactor refused.
    fn wait_for_room(&mut self) -> bool {
        if self.waiting.is_none()
            && let Some(spare) = self.spare.take()
        {
            match watch(spare, Interest::WRITABLE) {
                Ok(waiting) => self.waiting = Some(waiting),
                Err(e) => {
                    let (spare, cause) = e.into_parts();
                    self.spare = Some(spare);
                    // once: the reactor refusing is a state of the machine, not an event
                    static WARNED: AtomicBool = AtomicBool::new(false);
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "cannot wait for room to write to smtpd ({cause}); trying again every millisecond"
                        );
                    }
                }
            }
        }
        self.waiting.is_some()
    }

    /// Stops watching (deregisters the second descriptor and keeps it).
    fn stop_waiting(&mut self) {
        if let Some(waiting) = self.waiting.take() {
            self.spare = Some(waiting.into_inner());
        }
    }
}

impl AsyncWrite for SocketOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(retry) = this.retry.as_mut() {
                ready!(retry.as_mut().poll(cx));
                this.retry = None;
            }
            let written = match &this.waiting {
                None => (&this.socket).write(buf),
                Some(waiting) => {
                    let mut ready = ready!(waiting.poll_write_ready(cx))?;
                    match ready.try_io(|socket| socket.get_ref().write(buf)) {
                        Ok(written) => {
                            if matches!(written, Ok(n) if n < buf.len()) {
                                // full again: wait for the next event, not for EAGAIN
                                ready.clear_ready();
                            }
                            written
                        }
                        Err(_would_block) => continue,
                    }
                }
            };
            match written {
                Ok(n) if n < buf.len() => {
                    // A short write filled the socket: the next one waits for room.
                    this.wait_for_room();
                    return Poll::Ready(Ok(n));
                }
                Ok(n) => {
                    this.stop_waiting();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !this.wait_for_room() {
                        this.retry = Some(Box::pin(tokio::time::sleep(RETRY)));
                    }
                }
                Err(e) => {
                    this.stop_waiting();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // nothing is buffered here
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_larger_than_the_socket_takes_waits_for_room_and_loses_nothing() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut output = SocketOutput::new(ours).unwrap();
        let mut peer = SocketInput::new(theirs).unwrap();
        // far more than a socket buffer: the writer must wait for the reader
        let sent = pattern(8 << 20);
        let writing = async {
            output.write_all(&sent).await.unwrap();
            output.shutdown().await.unwrap();
            assert!(output.waiting.is_none(), "no longer watching once written");
            assert!(
                output.spare.is_some(),
                "the second descriptor kept for next time"
            );
        };
        let reading = async {
            let mut got = Vec::new();
            // small reads, so that the writer blocks many times over
            let mut chunk = [0u8; 3000];
            loop {
                let n = peer.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break got;
                }
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
        };
        let ((), got) = tokio::join!(writing, reading);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte, in order");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_that_cannot_be_watched_is_written_all_the_same() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut output = SocketOutput::new(ours).unwrap();
        // as if the reactor had refused the registration: no descriptor to register
        output.spare = None;
        let mut peer = SocketInput::new(theirs).unwrap();
        let sent = pattern(1 << 20);
        let writing = async {
            output.write_all(&sent).await.unwrap();
            output.shutdown().await.unwrap();
        };
        let reading = async {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writing, reading);
        assert!(got == sent, "every byte, in order");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_input_waits_for_lines_and_sees_the_end() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut input = SocketInput::new(ours).unwrap();
        let mut peer = SocketOutput::new(theirs).unwrap();
        let writing = async {
            for n in 0..100 {
                peer.write_all(format!("line {n}\n").as_bytes())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            drop(peer);
        };
        let reading = async {
            let mut got = Vec::new();
            input.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writing, reading);
        let want: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(got, want.as_bytes());
    }
}
