//! Asking rspamd: the [`Scanner`] trait (so that tests can put a fake behind the
//! filter) and [`Rspamd`], its HTTP implementation over TCP or a unix socket
//! (reqwest with rustls; connections are kept alive and reused across messages).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// Where rspamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An `http://` or `https://` base URL.
    Http(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Http(u) => f.write_str(u),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why rspamd gave no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// Could not connect (refused, no such socket, connect timeout).
    Connect(String),
    /// No complete answer within the request timeout.
    Timeout,
    /// An HTTP status other than 200.
    Status(u16),
    /// Anything else (reset connection, broken HTTP).
    Other(String),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Connect(e) => write!(f, "cannot connect: {e}"),
            ScanError::Timeout => f.write_str("timed out"),
            ScanError::Status(s) => write!(f, "HTTP status {s}"),
            ScanError::Other(e) => f.write_str(e),
        }
    }
}

/// Something that scans a message: `headers` are the `/checkv2` request headers,
/// `message` the message as [`opensmtpd_filter::Message`] holds it (unstuffed,
/// `\n`-terminated lines; the scanner sends it with CRLF line ends, see [`CrlfBody`]);
/// the answer is the reply body.
pub trait Scanner: Send + Sync + 'static {
    /// Scans one message.
    fn scan(
        &self,
        headers: Vec<(&'static str, Vec<u8>)>,
        message: Bytes,
    ) -> impl Future<Output = Result<Bytes, ScanError>> + Send;
}

/// How much of the message is converted to CRLF at a time.
const CHUNK: usize = 64 * 1024;

/// The request body: the message with each `\n` sent as CRLF, converted a chunk at a
/// time as the connection takes it, so a message is never held twice; its exact length
/// is known first (`Content-Length`, no chunked encoding). The same bytes as
/// [`opensmtpd_filter::Message::to_crlf`].
pub struct CrlfBody {
    src: Bytes,
    pos: usize,
    /// A last line without `\n` still needs its CRLF.
    tail: bool,
    remaining: u64,
}

impl CrlfBody {
    /// The body for `message` (`\n`-terminated lines).
    pub fn new(message: Bytes) -> CrlfBody {
        let newlines = message.iter().filter(|&&b| b == b'\n').count();
        let tail = message.last().is_some_and(|&b| b != b'\n');
        let remaining = (message.len() + newlines + if tail { 2 } else { 0 }) as u64;
        CrlfBody {
            src: message,
            pos: 0,
            tail,
            remaining,
        }
    }

    /// The exact number of bytes the body will give.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether it gives nothing.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The next piece, or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.src.len() {
            if self.tail {
                self.tail = false;
                self.remaining = self.remaining.saturating_sub(2);
                return Some(Bytes::from_static(b"\r\n"));
            }
            return None;
        }
        let end = (self.pos + CHUNK).min(self.src.len());
        let piece = &self.src[self.pos..end];
        let mut out = Vec::with_capacity(piece.len() + piece.len() / 16 + 16);
        for line in piece.split_inclusive(|&b| b == b'\n') {
            if let Some(l) = line.strip_suffix(b"\n") {
                out.extend_from_slice(l);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(line);
            }
        }
        self.pos = end;
        self.remaining = self.remaining.saturating_sub(out.len() as u64);
        Some(Bytes::from(out))
    }
}

impl http_body::Body for CrlfBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .next_chunk()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// rspamd over HTTP.
pub struct Rspamd {
    client: reqwest::Client,
    url: String,
}

impl Rspamd {
    /// A client for `endpoint` with the given timeouts (connect; whole request).
    pub fn new(endpoint: &Endpoint, connect: Duration, total: Duration) -> Result<Rspamd, String> {
        // reqwest is built without a default crypto provider: ring, installed once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(total)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .user_agent(concat!("filter-rspamd/", env!("CARGO_PKG_VERSION")));
        let url = match endpoint {
            Endpoint::Http(base) => format!("{}/checkv2", base.trim_end_matches('/')),
            Endpoint::Unix(path) => {
                b = b.unix_socket(path.clone());
                "http://localhost/checkv2".to_string()
            }
        };
        let client = b
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"))?;
        Ok(Rspamd { client, url })
    }
}

fn classify(e: reqwest::Error) -> ScanError {
    if e.is_timeout() {
        ScanError::Timeout
    } else if e.is_connect() {
        ScanError::Connect(source_chain(&e))
    } else {
        ScanError::Other(source_chain(&e))
    }
}

/// The error and its causes on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

impl Scanner for Rspamd {
    async fn scan(
        &self,
        headers: Vec<(&'static str, Vec<u8>)>,
        message: Bytes,
    ) -> Result<Bytes, ScanError> {
        let mut req = self.client.post(&self.url);
        for (name, value) in headers {
            match reqwest::header::HeaderValue::from_bytes(&value) {
                Ok(v) => req = req.header(name, v),
                Err(_) => log::debug!("request header {name} left out: not a valid value"),
            }
        }
        let body = reqwest::Body::wrap(CrlfBody::new(message));
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ScanError::Status(status));
        }
        resp.bytes().await.map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opensmtpd_filter::Message;

    #[test]
    fn crlf_body_is_to_crlf() {
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| {
                if i % 77 == 0 {
                    vec![b'\n']
                } else {
                    vec![b'a' + (i % 26) as u8]
                }
            })
            .collect();
        for m in [
            &b""[..],
            b"\n",
            b"a\n",
            b"a\nb\n\n",
            b"no newline at the end",
            b"x\r\ny\n",
            &big,
        ] {
            let mut body = CrlfBody::new(Bytes::copy_from_slice(m));
            let len = body.len();
            let mut out = Vec::new();
            while let Some(c) = body.next_chunk() {
                out.extend_from_slice(&c);
            }
            assert_eq!(
                out,
                Message::new(m.to_vec()).to_crlf(),
                "{:?}",
                &m[..m.len().min(40)]
            );
            assert_eq!(out.len() as u64, len);
            assert!(body.is_empty());
        }
    }
}
