//! Asking rspamd: the [`Scanner`] trait (so that tests can put a fake behind the
//! filter) and [`Rspamd`], its HTTP/1.1 client over TCP (`http://`, or `https://`
//! with rustls and the system's trust store) or a unix socket.
//!
//! The client is hyper's connection-level API and nothing above it: each request
//! drives its own connection inside the filter's handler, so there is no background
//! task, no pool machinery and no connection left behind when a request is abandoned
//! (its timeout, or the session going away, drops the socket with it). Measured against
//! reqwest for the same requests to the same rspamd, this is 0.1–0.2 ms less per
//! message of 50–100 KB (tests/BENCHMARKS.md). A connection rspamd keeps open (newer
//! rspamd versions can; 3.4 closes it after each answer) waits in a small idle list for
//! the next request; one that turns out to have been closed meanwhile is replaced by a
//! new connection and the request sent once more.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use opensmtpd_filter::Message;
use opensmtpd_filter::runtime::Chunks;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

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

impl hyper::body::Body for CrlfBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.chunks.next().map(|chunk| {
            chunk.map(|b| {
                this.remaining = this.remaining.saturating_sub(b.len() as u64);
                hyper::body::Frame::data(b)
            })
        });
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// The largest reply taken from rspamd (its JSON is a few KB; this only bounds memory
/// against something else answering on its port).
pub const MAX_REPLY: usize = 16 << 20;

/// How many kept-open connections wait for the next request, at most.
const MAX_IDLE: usize = 16;

/// How long a kept-open connection may wait before it is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An `http://` or `https://` base URL, checked: where to connect and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether it is `https://`.
    pub tls: bool,
    /// The host name or IP address (without the brackets of an IPv6 literal).
    pub host: String,
    /// The port (80 or 443 when the URL names none).
    pub port: u16,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
    /// The request target: the URL's path without its trailing `/`, then `/checkv2`.
    pub checkv2: String,
}

impl HttpUrl {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let uri: hyper::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{text:?}: the URL is neither http:// nor https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?}: no host in the URL"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: a user name or password in the URL is not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?}: no host in the URL"));
        }
        if uri.query().is_some() {
            return Err(format!("{text:?}: a query in the URL is not supported"));
        }
        // whatever follows the host is `:PORT`, and a port is at most 65535
        let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{text:?}: {p:?} is not a port"))?,
        };
        Ok(HttpUrl {
            tls,
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            checkv2: format!("{}/checkv2", uri.path().trim_end_matches('/')),
        })
    }
}

/// Anything a connection can run over: TCP, TLS over TCP, a unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Connection = http1::Connection<TokioIo<Box<dyn Io>>, CrlfBody>;

/// An open connection: hyper's two halves, driven by whoever holds them.
struct Open {
    sender: http1::SendRequest<CrlfBody>,
    connection: Connection,
}

/// A kept-open connection waiting for the next request.
struct Idle {
    open: Open,
    since: Instant,
}

enum Transport {
    Tcp {
        host: String,
        port: u16,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
        /// The host name's addresses and when they were looked up.
        resolved: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    },
    Unix(PathBuf),
}

/// rspamd over HTTP/1.1.
pub struct Rspamd {
    transport: Transport,
    host: HeaderValue,
    checkv2: hyper::Uri,
    connect_timeout: Duration,
    timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

/// Why one attempt gave no answer: on a reused connection that rspamd had closed
/// meanwhile ([`Attempt::Stale`]) the request is sent again on a new one.
enum Attempt {
    Stale,
    Failed(ScanError),
}

impl Attempt {
    fn into_error(self) -> ScanError {
        match self {
            // only a reused connection is stale; a new one that closes has failed
            Attempt::Stale => ScanError::Other("connection closed before the answer".into()),
            Attempt::Failed(e) => e,
        }
    }
}

impl Rspamd {
    /// A client for `endpoint` with the given timeouts: `connect` for the connection
    /// (and the TLS handshake), `total` for the whole request.
    pub fn new(endpoint: &Endpoint, connect: Duration, total: Duration) -> Result<Rspamd, String> {
        let (transport, host, checkv2) = match endpoint {
            Endpoint::Http(text) => {
                let url = HttpUrl::parse(text)?;
                let tls = if url.tls {
                    Some((tls_connector()?, tls_name(&url.host)?))
                } else {
                    None
                };
                let host =
                    HeaderValue::from_str(&url.authority).map_err(|e| format!("{text:?}: {e}"))?;
                let checkv2 = hyper::Uri::try_from(url.checkv2.as_str())
                    .map_err(|e| format!("{text:?}: {e}"))?;
                let transport = Transport::Tcp {
                    host: url.host,
                    port: url.port,
                    tls,
                    resolved: Mutex::new(None),
                };
                (transport, host, checkv2)
            }
            Endpoint::Unix(path) => (
                Transport::Unix(path.clone()),
                HeaderValue::from_static("localhost"),
                hyper::Uri::from_static("/checkv2"),
            ),
        };
        Ok(Rspamd {
            transport,
            host,
            checkv2,
            connect_timeout: connect,
            timeout: total,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A new connection, within the connect timeout.
    async fn connect(&self) -> Result<Open, ScanError> {
        let io = tokio::time::timeout(self.connect_timeout, self.transport.open())
            .await
            .map_err(|_| {
                ScanError::Connect(format!(
                    "no connection within {} ms",
                    self.connect_timeout.as_millis()
                ))
            })??;
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ScanError::Other(source_chain(&e)))?;
        Ok(Open { sender, connection })
    }

    /// A kept-open connection that is still usable, if there is one.
    fn take_idle(&self) -> Option<Open> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut kept) = idle.pop() {
            // a connection rspamd closed ends as soon as it is polled
            if kept.since.elapsed() < IDLE_TIMEOUT
                && !kept.open.sender.is_closed()
                && poll_once(&mut kept.open.connection).is_pending()
                && kept.open.sender.is_ready()
            {
                return Some(kept.open);
            }
        }
        None
    }

    fn keep(&self, open: Open) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                open,
                since: Instant::now(),
            });
        }
    }

    fn request(
        &self,
        headers: &[(&'static str, Vec<u8>)],
        message: &Message,
    ) -> hyper::Request<CrlfBody> {
        let body = CrlfBody::new(message);
        let mut request = hyper::Request::new(body);
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = self.checkv2.clone();
        let h = request.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("filter-rspamd/", env!("CARGO_PKG_VERSION"))),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(message.crlf_len()));
        for (name, value) in headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                (Ok(n), Ok(v)) => {
                    h.append(n, v);
                }
                _ => log::debug!("request header {name} left out: not a valid value"),
            }
        }
        request
    }

    /// One request on `open`, driving the connection until the reply is read; the
    /// connection is kept for the next request when rspamd keeps it open.
    async fn attempt(
        &self,
        open: Open,
        reused: bool,
        request: hyper::Request<CrlfBody>,
    ) -> Result<Bytes, Attempt> {
        let Open {
            mut sender,
            mut connection,
        } = open;
        let mut connection_ended = false;
        let (body, closes) = {
            let exchange = async {
                let response = sender.send_request(request).await.map_err(|e| {
                    // rspamd closed a kept connection before it read the request
                    if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) {
                        Attempt::Stale
                    } else {
                        Attempt::Failed(ScanError::Other(source_chain(&e)))
                    }
                })?;
                let status = response.status().as_u16();
                if status != 200 {
                    return Err(Attempt::Failed(ScanError::Status(status)));
                }
                let closes = response
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let body = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
                    .collect()
                    .await
                    .map_err(|e| Attempt::Failed(ScanError::Other(source_chain(&*e))))?
                    .to_bytes();
                Ok((body, closes))
            };
            let mut exchange = std::pin::pin!(exchange);
            loop {
                tokio::select! {
                    biased;
                    done = &mut exchange => break done?,
                    // a connection that ends (or fails) does so into the exchange too
                    _ = &mut connection, if !connection_ended => connection_ended = true,
                }
            }
        };
        if !closes && !connection_ended {
            self.keep(Open { sender, connection });
        }
        Ok(body)
    }

    async fn exchange(
        &self,
        headers: &[(&'static str, Vec<u8>)],
        message: &Message,
    ) -> Result<Bytes, ScanError> {
        if let Some(open) = self.take_idle() {
            match self
                .attempt(open, true, self.request(headers, message))
                .await
            {
                Err(Attempt::Stale) => {}
                done => return done.map_err(Attempt::into_error),
            }
        }
        let open = self.connect().await?;
        self.attempt(open, false, self.request(headers, message))
            .await
            .map_err(Attempt::into_error)
    }
}

impl Transport {
    async fn open(&self) -> Result<Box<dyn Io>, ScanError> {
        let refused = |e: std::io::Error| ScanError::Connect(e.to_string());
        match self {
            Transport::Tcp {
                host,
                port,
                tls,
                resolved,
            } => {
                let addrs = addresses(host, *port, resolved).await.map_err(refused)?;
                let tcp = match tokio::net::TcpStream::connect(&addrs[..]).await {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        // perhaps rspamd moved: look the name up again next time
                        *resolved.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        return Err(refused(e));
                    }
                };
                // the request goes out in one write; no reason to wait for an ACK
                let _ = tcp.set_nodelay(true);
                match tls {
                    None => Ok(Box::new(tcp)),
                    Some((connector, name)) => {
                        let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                            ScanError::Connect(format!("TLS: {}", source_chain(&e)))
                        })?;
                        Ok(Box::new(stream))
                    }
                }
            }
            Transport::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| ScanError::Connect(format!("{}: {e}", path.display())))?;
                Ok(Box::new(unix))
            }
        }
    }
}

/// How long a host name's addresses are used before it is looked up again.
const RESOLVED_FOR: Duration = Duration::from_secs(60);

/// The addresses of `host`: an IP address as it is; a name (the default URL says
/// `localhost`) looked up on the blocking pool at most once a minute, not per message.
async fn addresses(
    host: &str,
    port: u16,
    resolved: &Mutex<Option<(Vec<SocketAddr>, Instant)>>,
) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some((addrs, at)) = &*resolved.lock().unwrap_or_else(|e| e.into_inner())
        && at.elapsed() < RESOLVED_FOR
    {
        return Ok(addrs.clone());
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    *resolved.lock().unwrap_or_else(|e| e.into_inner()) = Some((addrs.clone(), Instant::now()));
    Ok(addrs)
}

/// Polls `future` once, without a waker to call back: used to see whether a kept
/// connection has ended (rspamd closed it) before it is reused.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// TLS with the platform's trust store (rustls and the ring provider).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
        .map_err(|e| format!("cannot load the system's trust store: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn tls_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a TLS certificate ({e})"))
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
        tokio::time::timeout(self.timeout, self.exchange(&headers, &message))
            .await
            .unwrap_or(Err(ScanError::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_name_is_looked_up_once_a_minute() {
        // an address known for a name that DNS would not resolve: used as it is
        let known = SocketAddr::from(([127, 0, 0, 1], 11333));
        let cache = Mutex::new(Some((vec![known], Instant::now())));
        let got = addresses("rspamd.invalid", 11333, &cache).await.unwrap();
        assert_eq!(got, [known]);
        // once it is a minute old, the name is looked up again (and fails here)
        let old = Instant::now().checked_sub(RESOLVED_FOR + Duration::from_secs(1));
        *cache.lock().unwrap() = old.map(|at| (vec![known], at));
        assert!(addresses("rspamd.invalid", 11333, &cache).await.is_err());
        // an IP address is never looked up or kept
        let cache = Mutex::new(None);
        let got = addresses("::1", 80, &cache).await.unwrap();
        assert_eq!(got, [SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 80))]);
        assert!(cache.lock().unwrap().is_none());
        // a name that resolves is kept
        let got = addresses("localhost", 80, &cache).await.unwrap();
        assert!(!got.is_empty());
        assert_eq!(
            cache.lock().unwrap().as_ref().map(|(a, _)| a.clone()),
            Some(got)
        );
    }

    #[test]
    fn urls_say_where_to_connect_and_what_to_ask() {
        let u = HttpUrl::parse("http://127.0.0.1:11333").unwrap();
        assert_eq!(
            u,
            HttpUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 11333,
                authority: "127.0.0.1:11333".into(),
                checkv2: "/checkv2".into(),
            }
        );
        let u = HttpUrl::parse("HTTPS://rspamd.example.org/scan/").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("rspamd.example.org", 443));
        assert_eq!(u.checkv2, "/scan/checkv2");
        let u = HttpUrl::parse("http://[::1]:11333/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 11333));
        assert_eq!(u.authority, "[::1]:11333");
        assert_eq!(u.checkv2, "/checkv2");
        assert_eq!(HttpUrl::parse("http://localhost").unwrap().port, 80);
        for (bad, says) in [
            ("http://", "not a URL"),
            ("ftp://x", "neither http:// nor https://"),
            ("http://user:pw@x:1", "user name or password"),
            ("http://x:1/?a=b", "query"),
            ("http://x:99999", "not a port"),
            ("http://x:0", "not a port"),
        ] {
            let e = HttpUrl::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

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
