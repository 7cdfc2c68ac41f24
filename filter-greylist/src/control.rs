//! The control socket: the admin command on the embedded store while the filter runs.
//!
//! redb lets one process open a file, and the running filter holds it. So the filter
//! listens on a unix socket next to the store (`<store>.sock`, mode 0600, owned by the
//! user smtpd runs the filter as) and runs admin requests on its own open store;
//! `filter-greylist admin` uses the socket when it is there. The output is the same as
//! with direct access: both run [`crate::admin::execute_args`].
//!
//! Wire format, one request per connection: the admin arguments (after `admin`), each
//! followed by a NUL byte, then the client shuts its writing side. The answer is one
//! status byte (`0` done, `1` error) followed by the text, then the filter closes.
//!
//! The socket never hurts the filter: it is served by a thread of its own, outside the
//! runtime that answers smtpd, one connection at a time (decisions go on meanwhile:
//! redb readers never wait, a writer only for the other writer's commit); a request
//! is at most [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`], the
//! answer must be taken within [`REPLY_TIMEOUT`]; every failure is one log line, and
//! a panic in a request (there should be none) ends that request, not the filter.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use crate::store::Store;

/// The largest request accepted (the arguments of one admin command).
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client may take to read the answer (a `list` of a million entries is
/// over 100 MB of text).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The control socket of the store at `store`: `<store>.sock`.
pub fn socket_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

/// The listening socket; removes its file when dropped (if the file is still ours).
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

impl ControlSocket {
    /// Listens at `path`, mode 0600. Call it with the store open: the store's lock says
    /// no other filter serves this store, so a socket file left there is stale (a
    /// killed predecessor) and is replaced. Any other file there is left alone.
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        let what = |e: std::io::Error| format!("control socket {}: {e}", path.display());
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "control socket {}: another process answers on it; not replaced",
                        path.display()
                    ));
                }
                std::fs::remove_file(path).map_err(what)?;
                log::info!("control socket {}: replaced a stale one", path.display());
            }
            Ok(_) => {
                return Err(format!(
                    "control socket {}: a file that is not a socket is in the way; left alone",
                    path.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        let listener = UnixListener::bind(path).map_err(what)?;
        let meta = std::fs::symlink_metadata(path).map_err(what)?;
        let socket = ControlSocket {
            listener,
            path: path.to_path_buf(),
            inode: meta.ino(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(what)?;
        Ok(socket)
    }

    /// Removes the socket file, unless it is no longer ours: a successor may have
    /// bound its own socket at the same path meanwhile.
    pub fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers admin requests on `store` until the process ends (run it on a thread
    /// of its own).
    pub fn serve(&self, store: Arc<dyn Store>) {
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    log::warn!("control socket {}: accept: {e}", self.path.display());
                    // e.g. out of file descriptors: do not spin
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let store = Arc::clone(&store);
            let answered =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(stream, store)));
            match answered {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("control socket {}: {e}", self.path.display()),
                Err(_) => log::error!(
                    "control socket {}: the request panicked; the filter runs on",
                    self.path.display()
                ),
            }
        }
    }
}

/// Reads one request (bounded in size and time), runs it, writes the answer.
fn answer(mut stream: UnixStream, store: Arc<dyn Store>) -> Result<(), String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "request not sent within {REQUEST_TIMEOUT:?}; closed"
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("reading the request: {e}"))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "request not sent within {REQUEST_TIMEOUT:?}; closed"
                ));
            }
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        if n == 0 {
            break true;
        }
        if request.len() + n > MAX_REQUEST {
            break false;
        }
        request.extend_from_slice(&buf[..n]);
    };
    let (status, text) = if complete {
        match crate::admin::execute_args(store.as_ref(), decode_request(&request)) {
            Ok(text) => (b'0', text),
            Err(text) => (b'1', text),
        }
    } else {
        (b'1', format!("request longer than {MAX_REQUEST} bytes\n"))
    };
    stream
        .set_write_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.write_all(&[status]))
        .and_then(|()| stream.write_all(text.as_bytes()))
        .and_then(|()| stream.shutdown(std::net::Shutdown::Both))
        .map_err(|e| format!("writing the answer: {e}"))
}

/// The arguments of a request: NUL-terminated byte strings.
fn decode_request(bytes: &[u8]) -> Vec<OsString> {
    let mut args: Vec<OsString> = bytes
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    // the text after the last NUL (empty for a well-formed request)
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    args
}

/// What became of asking a running filter.
pub enum Asked {
    /// Its answer: `Ok` text for stdout or `Err` text for stderr.
    Answered(Result<String, String>),
    /// No filter answers on this socket (absent or stale): use the store directly.
    NoFilter,
}

/// Sends the admin arguments `args` (after `admin`) to the filter serving `socket`.
pub fn ask(socket: &Path, args: &[OsString]) -> Asked {
    use std::io::ErrorKind;
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Asked::NoFilter;
        }
        Err(e) => {
            return Asked::Answered(Err(format!(
                "control socket {}: {e} (run as root or as the user smtpd runs the filter as)",
                socket.display()
            )));
        }
    };
    let fail = |e: std::io::Error| {
        Asked::Answered(Err(format!("control socket {}: {e}", socket.display())))
    };
    let mut request = Vec::new();
    for a in args {
        request.extend_from_slice(a.as_bytes());
        request.push(0);
    }
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    // the filter may need a while to list a large store
    let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
    if let Err(e) = stream
        .write_all(&request)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
    {
        return fail(e);
    }
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        return fail(e);
    }
    match answer.split_first() {
        Some((b'0', text)) => Asked::Answered(Ok(String::from_utf8_lossy(text).into_owned())),
        Some((_, text)) => Asked::Answered(Err(String::from_utf8_lossy(text).into_owned())),
        None => Asked::Answered(Err(format!(
            "control socket {}: the filter closed without an answer",
            socket.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode() {
        assert_eq!(
            decode_request(b"list\0--json\0"),
            vec![OsString::from("list"), OsString::from("--json")]
        );
        assert!(decode_request(b"").is_empty());
        assert_eq!(
            socket_path(Path::new("/var/db/g.redb")),
            Path::new("/var/db/g.redb.sock")
        );
    }
}
