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
/// `body` the message (CRLF line ends); the answer is the reply body.
pub trait Scanner: Send + Sync + 'static {
    /// Scans one message.
    fn scan(
        &self,
        headers: Vec<(&'static str, Vec<u8>)>,
        body: Bytes,
    ) -> impl Future<Output = Result<Bytes, ScanError>> + Send;
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
        body: Bytes,
    ) -> Result<Bytes, ScanError> {
        let mut req = self.client.post(&self.url);
        for (name, value) in headers {
            match reqwest::header::HeaderValue::from_bytes(&value) {
                Ok(v) => req = req.header(name, v),
                Err(_) => log::debug!("request header {name} left out: not a valid value"),
            }
        }
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ScanError::Status(status));
        }
        resp.bytes().await.map_err(classify)
    }
}
