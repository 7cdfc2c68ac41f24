//! Asking rspamd: the [`Scanner`] trait (so that tests can put a fake behind the
//! filter) and [`Rspamd`], its HTTP implementation over TCP or a unix socket
//! (reqwest with rustls; a connection is reused when rspamd keeps it open — rspamd 3.4
//! closes it after each answer).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use opensmtpd_filter::Message;
use opensmtpd_filter::runtime::Chunks;

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
/// `message` the message as smtpd passed it (the scanner sends it unstuffed with CRLF
/// line ends, see [`CrlfBody`]); the answer is the reply body.
pub trait Scanner: Send + Sync + 'static {
    /// Scans one message.
    fn scan(
        &self,
        headers: Vec<(&'static str, Vec<u8>)>,
        message: Message,
    ) -> impl Future<Output = Result<Bytes, ScanError>> + Send;
}

/// The request body: the message with CRLF line ends, read a chunk (64 KiB) at a time
/// from where it is stored — RAM or its temporary file — as the connection takes it,
/// so a message is never held twice; its exact length is known first
/// (`Content-Length`, no chunked encoding). A read of the temporary file is a plain
/// synchronous read: the file was just written, its pages are in the page cache.
pub struct CrlfBody {
    chunks: Chunks,
    remaining: u64,
}

impl CrlfBody {
    /// The body for `message`.
    pub fn new(message: &Message) -> CrlfBody {
        CrlfBody {
            chunks: message.crlf_chunks(),
            remaining: message.crlf_len(),
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
}

impl http_body::Body for CrlfBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.chunks.next().map(|chunk| {
            chunk.map(|b| {
                this.remaining = this.remaining.saturating_sub(b.len() as u64);
                http_body::Frame::data(b)
            })
        });
        std::task::Poll::Ready(next)
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
        message: Message,
    ) -> Result<Bytes, ScanError> {
        let mut req = self.client.post(&self.url);
        for (name, value) in headers {
            match reqwest::header::HeaderValue::from_bytes(&value) {
                Ok(v) => req = req.header(name, v),
                Err(_) => log::debug!("request header {name} left out: not a valid value"),
            }
        }
        let body = reqwest::Body::wrap(CrlfBody::new(&message));
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
            let message = Message::new(m.to_vec());
            let mut body = CrlfBody::new(&message);
            let len = body.len();
            let mut out = Vec::new();
            for c in body.chunks.by_ref() {
                out.extend_from_slice(&c.unwrap());
            }
            assert_eq!(
                out,
                message.to_crlf().unwrap(),
                "{:?}",
                &m[..m.len().min(40)]
            );
            assert_eq!(out.len() as u64, len);
        }
    }
}
