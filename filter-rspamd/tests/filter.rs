//! The whole filter in-process, through the library's test kit (the real runtime over
//! in-memory pipes, every answer checked against smtpd's rules): with a fake
//! [`Scanner`] to see exactly what is asked and answered, and with the real HTTP client
//! against small local servers (garbage, silence, refusal, a unix socket, keep-alive).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use filter_rspamd::client::{Endpoint, Rspamd, ScanError, Scanner};
use filter_rspamd::filter::RspamdFilter;
use filter_rspamd::request::RequestOptions;
use filter_rspamd::verdict::{AuthMode, ERROR_REPLY, OnError, Policy};
use opensmtpd_filter::testkit::{Answer, TestKit};
use opensmtpd_filter::{Config, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GTUBE: &[u8] = include_bytes!("replies/gtube.json");
const NORMAL: &[u8] = include_bytes!("replies/normal.json");

type Request = (Vec<(&'static str, Vec<u8>)>, Bytes);

/// Answers every scan with a fixed reply (or error) after a delay; keeps the requests.
#[derive(Clone)]
struct Fake {
    reply: Result<Bytes, ScanError>,
    delay: Duration,
    /// Only messages containing this are delayed (None: all).
    slow_marker: Option<&'static [u8]>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    fn new(reply: &[u8]) -> Fake {
        Fake {
            reply: Ok(Bytes::copy_from_slice(reply)),
            delay: Duration::ZERO,
            slow_marker: None,
            seen: Arc::default(),
        }
    }

    fn failing(e: ScanError) -> Fake {
        Fake {
            reply: Err(e),
            delay: Duration::ZERO,
            slow_marker: None,
            seen: Arc::default(),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

impl Scanner for Fake {
    async fn scan(
        &self,
        headers: Vec<(&'static str, Vec<u8>)>,
        message: Message,
    ) -> Result<Bytes, ScanError> {
        let body = Bytes::from(message.to_vec().unwrap());
        let slow = self
            .slow_marker
            .is_none_or(|m| body.windows(m.len()).any(|w| w == m));
        self.seen.lock().unwrap().push((headers, body));
        if slow && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.reply.clone()
    }
}

fn filter<S: Scanner>(scanner: S, policy: Policy, max_size: usize) -> RspamdFilter<S> {
    RspamdFilter::new(
        scanner,
        RequestOptions {
            settings_id: Some("inbound".into()),
            ..RequestOptions::default()
        },
        policy,
        max_size,
    )
}

const MESSAGE: [&[u8]; 7] = [
    b"From: <a@example.org>",
    b"Subject: hello",
    b"X-Spam: forged by the client",
    b"",
    b"body line",
    b".leading dot",
    b"caf\xe9",
];

fn header<'a>(req: &'a Request, name: &str) -> Vec<&'a [u8]> {
    req.0
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[tokio::test]
async fn request_headers_body_and_milter_headers() {
    let fake = Fake::new(NORMAL);
    let mut kit = TestKit::new(filter(fake.clone(), Policy::default(), 1 << 20))
        .protocol(0, 7)
        .start()
        .await;
    let mut s = kit.session();
    // only the data phase is registered: connect is not asked
    assert_eq!(
        s.connect("192.0.2.7", "mail.example.org").await,
        Answer::NotAsked
    );
    s.ehlo("client.example.org").await;
    s.starttls("TLSv1.3:TLS_AES_256_GCM_SHA384:256").await;
    s.auth_plain(b"us|er", b"secret", true).await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    s.rcpt_to("c@lab.test").await;
    let out = s.data(&MESSAGE).await;
    assert_eq!(out.commit, Answer::Proceed);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(header(r, "IP"), [b"192.0.2.7"]);
    assert_eq!(header(r, "Hostname"), [b"mail.example.org"]);
    assert_eq!(header(r, "Helo"), [b"client.example.org"]);
    assert_eq!(header(r, "From"), [b"a@example.org"]);
    assert_eq!(header(r, "Rcpt"), [&b"b@lab.test"[..], b"c@lab.test"]);
    assert!(header(r, "Deliver-To").is_empty());
    assert_eq!(header(r, "User"), [b"us|er"]);
    assert_eq!(header(r, "MTA-Name"), [b"mx.example.org"]);
    assert_eq!(header(r, "Settings-ID"), [b"inbound"]);
    assert_eq!(header(r, "TLS-Cipher"), [b"TLS_AES_256_GCM_SHA384"]);
    assert_eq!(header(r, "TLS-Version"), [b"TLSv1.3"]);
    assert_eq!(header(r, "Queue-Id").len(), 1);
    assert!(header(r, "Pass").is_empty());
    assert!(
        !r.0.iter()
            .any(|(_, v)| v.windows(6).any(|w| w == b"secret"))
    );
    // the message unstuffed (the HTTP client sends it with CRLF: see http_client_*)
    assert_eq!(
        &r.1[..],
        &b"From: <a@example.org>\nSubject: hello\nX-Spam: forged by the client\n\nbody line\n.leading dot\ncaf\xe9\n"[..]
    );
    // what goes on: the forged X-Spam removed, rspamd's headers added, body unchanged
    let text: Vec<String> = out
        .lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(
        !text.iter().any(|l| l.starts_with("X-Spam: forged")),
        "{text:?}"
    );
    assert_eq!(text[0], "From: <a@example.org>");
    assert!(text[1].starts_with("Authentication-Results: "), "{text:?}");
    assert!(text.iter().any(|l| l.starts_with("X-Spamd-Result: ")));
    let body_at = out.lines.iter().position(|l| l.is_empty()).unwrap();
    assert_eq!(
        out.lines[body_at + 1..],
        [&b"body line"[..], b".leading dot", b"caf\xe9"]
    );
    kit.finish().await;
}

#[tokio::test]
async fn local_session_single_recipient_null_sender() {
    let fake = Fake::new(NORMAL);
    let mut kit = TestKit::new(filter(fake.clone(), Policy::default(), 1 << 20))
        .protocol(0, 6)
        .start()
        .await;
    let mut s = kit.session();
    s.connect("local", "localhost").await;
    s.helo("me").await;
    s.mail_from("").await;
    s.rcpt_to("b@lab.test").await;
    let out = s.data(&MESSAGE).await;
    assert_eq!(out.commit, Answer::Proceed);
    let r = &fake.requests()[0];
    assert_eq!(header(r, "IP"), [b"127.0.0.1"]);
    assert_eq!(header(r, "From"), [b"<>"]);
    assert_eq!(header(r, "Deliver-To"), [b"b@lab.test"]);
    assert!(header(r, "User").is_empty());
    assert!(header(r, "TLS-Cipher").is_empty());
    kit.finish().await;
}

#[tokio::test]
async fn gtube_is_rejected_with_rspamds_message() {
    let fake = Fake::new(GTUBE);
    let mut kit = TestKit::new(filter(fake, Policy::default(), 1 << 20))
        .start()
        .await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "mail.example.org").await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    let out = s.data(&MESSAGE).await;
    assert_eq!(out.commit, Answer::Reject("550 5.7.1 Gtube pattern".into()));
    kit.finish().await;
}

#[tokio::test]
async fn errors_tempfail_or_accept() {
    for (error, policy, want) in [
        (
            ScanError::Timeout,
            OnError::Tempfail,
            Answer::Reject(ERROR_REPLY.into()),
        ),
        (
            ScanError::Connect("refused".into()),
            OnError::Accept,
            Answer::Proceed,
        ),
    ] {
        let fake = Fake::failing(error);
        let policy = Policy {
            on_error: policy,
            ..Policy::default()
        };
        let mut kit = TestKit::new(filter(fake, policy, 1 << 20)).start().await;
        let mut s = kit.session();
        s.connect("192.0.2.7", "mail.example.org").await;
        s.mail_from("a@example.org").await;
        s.rcpt_to("b@lab.test").await;
        let out = s.data(&MESSAGE).await;
        assert_eq!(out.commit, want);
        assert_eq!(out.lines, MESSAGE.map(<[u8]>::to_vec));
        kit.finish().await;
    }
    // a reply that is not rspamd's
    let fake = Fake::new(b"<html>502 Bad Gateway</html>");
    let mut kit = TestKit::new(filter(fake, Policy::default(), 1 << 20))
        .start()
        .await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "mail.example.org").await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    assert_eq!(
        s.data(&MESSAGE).await.commit,
        Answer::Reject(ERROR_REPLY.into())
    );
    kit.finish().await;
}

#[tokio::test]
async fn over_max_size_passes_unscanned_and_skip_authenticated() {
    let fake = Fake::new(GTUBE);
    let mut kit = TestKit::new(filter(fake.clone(), Policy::default(), 20))
        .start()
        .await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "mail.example.org").await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    let out = s.data(&MESSAGE).await;
    assert_eq!(out.commit, Answer::Proceed);
    assert_eq!(out.lines, MESSAGE.map(<[u8]>::to_vec));
    assert!(fake.requests().is_empty());
    kit.finish().await;

    let policy = Policy {
        authenticated: AuthMode::Skip,
        ..Policy::default()
    };
    let mut kit = TestKit::new(filter(fake.clone(), policy, 1 << 20))
        .protocol(0, 7)
        .start()
        .await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "mail.example.org").await;
    s.auth_plain(b"user", b"pw", true).await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    assert_eq!(s.data(&MESSAGE).await.commit, Answer::Proceed);
    assert!(fake.requests().is_empty());
    kit.finish().await;
}

#[tokio::test]
async fn a_slow_answer_delays_no_other_session() {
    // rspamd takes 2 s for messages that say "slow", answers the others at once
    let mut fake = Fake::new(NORMAL);
    fake.delay = Duration::from_millis(2000);
    fake.slow_marker = Some(b"slow");
    let mut kit = TestKit::new(filter(fake, Policy::default(), 1 << 20))
        .start()
        .await;
    let mut a = kit.session();
    a.connect("192.0.2.7", "a.example.org").await;
    a.mail_from("a@example.org").await;
    a.rcpt_to("b@lab.test").await;
    let a_id = a.id();
    assert_eq!(a.request("data", b"").await, Answer::NotAsked);
    // session a's message goes in whole; its scan starts and takes its time
    for line in [&b"Subject: slow"[..], b"", b"slow body", b"."] {
        let mut l =
            format!("filter|0.7|1700000000.000002|smtp-in|data-line|{a_id:016x}|00000000000000ab|")
                .into_bytes();
        l.extend_from_slice(line);
        a.kit().send(&l).await;
    }
    let start = Instant::now();
    let mut b = kit.session();
    b.connect("192.0.2.8", "b.example.org").await;
    b.mail_from("a@example.org").await;
    b.rcpt_to("b@lab.test").await;
    let out = b.data(&MESSAGE).await;
    assert_eq!(out.commit, Answer::Proceed);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "session b waited {:?}",
        start.elapsed()
    );
    // a's answer still comes, later
    let first = kit.next_answer(a_id).await;
    assert!(
        first.starts_with(b"filter-dataline|"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
    kit.finish().await;
}

// ------------------------------------------------------------- the real HTTP client

/// A one-shot HTTP server on loopback: for each connection, reads a request (headers
/// and Content-Length body) and answers with `reply` (None: never answers).
async fn server(reply: Option<&'static [u8]>) -> (String, Arc<Mutex<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0u32));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                loop {
                    let Some(_) = read_request(&mut sock).await else {
                        return;
                    };
                    match reply {
                        Some(body) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if sock.write_all(head.as_bytes()).await.is_err()
                                || sock.write_all(body).await.is_err()
                            {
                                return;
                            }
                        }
                        None => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(sock: &mut S) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn client(url: &str, timeout_ms: u64) -> Rspamd {
    Rspamd::new(
        &Endpoint::Http(url.to_string()),
        Duration::from_millis(500),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
}

#[tokio::test]
async fn http_client_keeps_the_connection_alive() {
    let (url, accepted) = server(Some(NORMAL)).await;
    let c = client(&url, 2000);
    for _ in 0..3 {
        scan_ok(&c).await;
    }
    assert_eq!(*accepted.lock().unwrap(), 1);
}

/// What a scripted server does on each connection, request by request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Script {
    /// Answers and closes, saying `Connection: close`.
    AnswerAndClose,
    /// Answers, keeps the connection open for 50 ms of quiet, then closes it.
    AnswerThenCloseWhenIdle,
    /// First connection: answers the first request, then closes on reading the
    /// second without answering; later connections answer everything.
    DropTheSecondRequest,
}

/// An HTTP server on loopback following `script`; counts connections and requests.
async fn scripted_server(script: Script) -> (String, Arc<Mutex<(u32, u32)>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Mutex::new((0u32, 0u32)));
    let seen = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let first_connection = {
                let mut c = seen.lock().unwrap();
                c.0 += 1;
                c.0 == 1
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                for n in 1.. {
                    let read = if script == Script::AnswerThenCloseWhenIdle && n > 1 {
                        match tokio::time::timeout(
                            Duration::from_millis(50),
                            read_request(&mut sock),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => return, // idle: close
                        }
                    } else {
                        read_request(&mut sock).await
                    };
                    if read.is_none() {
                        return;
                    }
                    seen.lock().unwrap().1 += 1;
                    if script == Script::DropTheSecondRequest && first_connection && n == 2 {
                        return;
                    }
                    let close = script == Script::AnswerAndClose;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\n{}Content-Length: {}\r\n\r\n",
                        if close { "Connection: close\r\n" } else { "" },
                        NORMAL.len()
                    );
                    if sock.write_all(head.as_bytes()).await.is_err()
                        || sock.write_all(NORMAL).await.is_err()
                        || close
                    {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), counts)
}

async fn scan_ok(c: &Rspamd) {
    let reply = c
        .scan(
            vec![("IP", b"192.0.2.1".to_vec())],
            Message::new(&b"a\n"[..]),
        )
        .await
        .unwrap();
    assert_eq!(&reply[..], NORMAL);
}

/// Also by host name: the default URL says `localhost`, which is looked up, and every
/// address it has is tried (rspamd may listen on one of 127.0.0.1 and ::1 only).
#[tokio::test]
async fn http_client_opens_a_connection_per_request_when_rspamd_closes_them() {
    for by_name in [false, true] {
        let (url, counts) = scripted_server(Script::AnswerAndClose).await;
        let url = if by_name {
            url.replace("127.0.0.1", "localhost")
        } else {
            url
        };
        let c = client(&url, 2000);
        for _ in 0..3 {
            scan_ok(&c).await;
        }
        assert_eq!(*counts.lock().unwrap(), (3, 3), "{url}");
    }
}

#[tokio::test]
async fn http_client_replaces_a_kept_connection_rspamd_closed_meanwhile() {
    let (url, counts) = scripted_server(Script::AnswerThenCloseWhenIdle).await;
    let c = client(&url, 2000);
    scan_ok(&c).await;
    scan_ok(&c).await; // at once: the kept connection
    assert_eq!(*counts.lock().unwrap(), (1, 2));
    tokio::time::sleep(Duration::from_millis(300)).await; // rspamd closed it
    scan_ok(&c).await;
    assert_eq!(*counts.lock().unwrap(), (2, 3));
}

#[tokio::test]
async fn http_client_sends_again_what_a_closing_connection_dropped() {
    let (url, counts) = scripted_server(Script::DropTheSecondRequest).await;
    let c = client(&url, 2000);
    scan_ok(&c).await;
    // the kept connection takes the request and closes without an answer: the
    // request goes again on a new connection, and the scan succeeds
    scan_ok(&c).await;
    assert_eq!(*counts.lock().unwrap(), (2, 3));
}

/// `https://`: the client speaks TLS, names the host (SNI) and checks the certificate
/// against the system's trust store, so a self-signed one is refused, at connect.
#[tokio::test]
async fn https_checks_the_certificate() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    // a self-signed certificate for localhost, made for this test only
    let cert = CertificateDer::from(include_bytes!("tls/cert.der").to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        include_bytes!("tls/key.der").to_vec(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let Ok(start) =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), sock)
                    .await
            else {
                continue;
            };
            seen.lock()
                .unwrap()
                .push(start.client_hello().server_name().map(str::to_string));
            let _ = start.into_stream(Arc::clone(acceptor.config())).await;
        }
    });
    let c = client(&format!("https://localhost:{port}"), 2000);
    let e = c.scan(vec![], Message::new(&b"a\n"[..])).await.unwrap_err();
    match &e {
        ScanError::Connect(text) => assert!(text.contains("certificate"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(*names.lock().unwrap(), [Some("localhost".to_string())]);
}

#[tokio::test]
async fn http_client_times_out_and_reports_refusal() {
    let (url, _) = server(None).await;
    let c = client(&url, 300);
    let start = Instant::now();
    let e = c.scan(vec![], Message::new(&b"a\n"[..])).await.unwrap_err();
    assert_eq!(e, ScanError::Timeout);
    assert!(start.elapsed() < Duration::from_secs(2));

    // nothing listens there any more
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), 1000);
    let e = c.scan(vec![], Message::new(&b"a\n"[..])).await.unwrap_err();
    assert!(matches!(e, ScanError::Connect(_)), "{e:?}");

    let c = Rspamd::new(
        &Endpoint::Unix("/nonexistent/rspamd.sock".into()),
        Duration::from_millis(500),
        Duration::from_millis(500),
    )
    .unwrap();
    let e = c.scan(vec![], Message::new(&b"a\n"[..])).await.unwrap_err();
    assert!(matches!(e, ScanError::Connect(_)), "{e:?}");
}

#[tokio::test]
async fn http_client_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("filter-rspamd-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("rspamd.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let req = read_request(&mut sock).await.unwrap();
        *seen2.lock().unwrap() = req;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", GTUBE.len());
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(GTUBE).await.unwrap();
    });
    let c = Rspamd::new(
        &Endpoint::Unix(path.clone()),
        Duration::from_millis(500),
        Duration::from_millis(2000),
    )
    .unwrap();
    let reply = c
        .scan(
            vec![("Settings-ID", b"x".to_vec())],
            Message::new(&b"body\n"[..]),
        )
        .await
        .unwrap();
    assert_eq!(&reply[..], GTUBE);
    let req = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(req.starts_with("POST /checkv2 HTTP/1.1\r\n"), "{req}");
    assert!(
        req.to_ascii_lowercase().contains("settings-id: x\r\n"),
        "{req}"
    );
    assert!(req.ends_with("\r\n\r\nbody\r\n"), "{req}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn garbage_and_silence_through_the_whole_filter() {
    let (garbage, _) = server(Some(b"{\"action\": [nonsense")).await;
    let (silent, _) = server(None).await;
    for url in [garbage, silent] {
        let mut kit = TestKit::new(filter(client(&url, 400), Policy::default(), 1 << 20))
            .config(Config {
                handler_timeout: Duration::from_secs(5),
                ..Config::default()
            })
            .start()
            .await;
        let mut s = kit.session();
        s.connect("192.0.2.7", "mail.example.org").await;
        s.mail_from("a@example.org").await;
        s.rcpt_to("b@lab.test").await;
        let start = Instant::now();
        assert_eq!(
            s.data(&MESSAGE).await.commit,
            Answer::Reject(ERROR_REPLY.into()),
            "{url}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        kit.finish().await;
    }
}

/// A message over the spool threshold goes to rspamd from its temporary file, CRLF,
/// exactly; rspamd's header edits replace the header section and the body goes back
/// to smtpd as it was stored.
#[tokio::test]
async fn a_spooled_message_is_scanned_and_edited_without_a_copy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = Arc::clone(&bodies);
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        while let Some(req) = read_request(&mut sock).await {
            let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            seen.lock().unwrap().push(req[end..].to_vec());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                NORMAL.len()
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(NORMAL).await.unwrap();
        }
    });
    let mut kit = TestKit::new(filter(client(&url, 5000), Policy::default(), 8 << 20))
        .config(Config {
            spool_above: 64 * 1024,
            ..Config::default()
        })
        .start()
        .await;
    let mut s = kit.session();
    s.connect("192.0.2.7", "mail.example.org").await;
    s.mail_from("a@example.org").await;
    s.rcpt_to("b@lab.test").await;
    let mut wire: Vec<Vec<u8>> = MESSAGE[..4].iter().map(|l| l.to_vec()).collect();
    let mut want = Vec::new();
    for l in &MESSAGE[..4] {
        want.extend_from_slice(l);
        want.extend_from_slice(b"\r\n");
    }
    for i in 0..40_000u32 {
        let line = match i % 3 {
            0 => format!("..dotted {i}").into_bytes(),
            1 => b"\xe9\x00 binary".to_vec(),
            _ => vec![b'y'; (i % 500) as usize],
        };
        want.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        want.extend_from_slice(b"\r\n");
        wire.push(line);
    }
    let out = s.data_wire(&wire).await;
    assert_eq!(out.commit, Answer::Proceed);
    assert_eq!(bodies.lock().unwrap().len(), 1);
    assert!(
        bodies.lock().unwrap()[0] == want,
        "rspamd got the message unstuffed, CRLF, whole"
    );
    // X-Spam (rspamd removes it) is gone, rspamd's headers are in, the rest is the same
    let blank = out.wire_lines.iter().position(|l| l.is_empty()).unwrap();
    let headers = &out.wire_lines[..blank];
    assert!(!headers.iter().any(|h| h.starts_with(b"X-Spam:")));
    assert!(headers.iter().any(|h| h.starts_with(b"X-Spamd-Result:")));
    assert_eq!(
        out.wire_lines[blank..],
        wire[3..],
        "the body as it was sent"
    );
    s.disconnect().await;
    kit.finish().await;
}
