//! The floor of a filter: what smtpd's filter layer costs for a filter that registers
//! exactly what another filter registers and does nothing else. `mta-bench` puts one
//! in the place of each filter of a chain (`floor-ours-3`, `floor-ours-2`,
//! `floor-go-2`), so that the chain's time minus its floor's is what the filters' own
//! work adds, with smtpd's cost of the events they asked for taken out.
//!
//! ```text
//! floor-filter REGISTRATIONS [--rspamd HOST:PORT]
//! ```
//!
//! `REGISTRATIONS` is a file of the `register|…` lines the filter it stands for writes
//! after `config|ready` (captured from it by `mta-bench`), `register|ready` last. Then
//! every `data-line` request is echoed back and every other filter request answered
//! `proceed`; reports are read and dropped.
//!
//! With `--rspamd`, the floor also does the one thing an rspamd filter cannot avoid
//! (`scan-floor-…` rows): it holds each message until its end, posts it to rspamd's
//! `/checkv2` with the session's metadata (the headers filter-rspamd sends, from the
//! same reports), reads the answer to the end without looking at it, and only then
//! echoes the message back. The client is as plain as a client can be: a blocking
//! socket, one write, one read loop, a thread per message so that sessions scan side
//! by side. The chain's time minus this floor's is then what the filters add over
//! rspamd's answer as any client gets it, rspamd's HTTP handling included (which its
//! own logged scan time leaves out).
//!
//! Cheap the way `../shared/bench/peers/limit-c/limit.c` is: big reads, a scan for the
//! newline, the field boundaries found and no more, the answers of one read written
//! together before the next read, nothing allocated per line (unless scanning).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

const READ_CHUNK: usize = 1 << 20;

fn main() {
    let usage = || -> ! {
        eprintln!("usage: floor-filter REGISTRATIONS [--rspamd HOST:PORT]");
        std::process::exit(2)
    };
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next() else { usage() };
    let rspamd: Option<SocketAddr> = match (args.next(), args.next()) {
        (None, _) => None,
        (Some(flag), Some(addr)) if flag == "--rspamd" => match addr.to_string_lossy().parse() {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("floor-filter: --rspamd {}: {e}", addr.to_string_lossy());
                std::process::exit(2);
            }
        },
        _ => usage(),
    };
    let registrations = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("floor-filter: {}: {e}", path.to_string_lossy());
            std::process::exit(2);
        }
    };
    let mut floor = Floor {
        registrations,
        scan: rspamd.map(|rspamd| Scans {
            rspamd,
            sessions: HashMap::new(),
        }),
    };
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut have = 0;
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        if have == buf.len() {
            // a line longer than the buffer: smtpd never sends one
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stdin.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        have += n;
        let mut start = 0;
        while let Some(i) = buf[start..have].iter().position(|&b| b == b'\n') {
            floor.answer(&buf[start..start + i], &mut out);
            start += i + 1;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        // (scanning threads write whole messages under the same lock)
        if !out.is_empty() && write_out(&out).is_err() {
            break;
        }
        out.clear();
    }
}

fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()
}

struct Floor {
    registrations: Vec<u8>,
    scan: Option<Scans>,
}

/// What scanning needs: where rspamd is, and each session's metadata and message.
struct Scans {
    rspamd: SocketAddr,
    /// By session id, as smtpd wrote it.
    sessions: HashMap<Vec<u8>, Session>,
}

/// A session as filter-rspamd would describe it to rspamd, and its message so far.
#[derive(Default)]
struct Session {
    ip: Option<String>,
    hostname: Option<Vec<u8>>,
    helo: Option<Vec<u8>>,
    greeting: Option<Vec<u8>>,
    queue_id: Option<String>,
    from: Option<Vec<u8>>,
    rcpts: Vec<Vec<u8>>,
    message: Vec<u8>,
}

impl Floor {
    fn answer(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if let Some(scans) = &mut self.scan
            && scans.take(line)
        {
            return;
        }
        answer(line, &self.registrations, out);
    }
}

impl Scans {
    /// Follows the session in a report, or holds a message line; at the message's end,
    /// starts its scan. Whether the line was taken (no answer to write now).
    ///
    /// The fields are split here rather than with the library's parser, so that no
    /// code of ours is in the floor.
    fn take(&mut self, line: &[u8]) -> bool {
        // report|VERSION|TIME|SUBSYSTEM|EVENT|SESSION|PARAMETERS…
        // filter|VERSION|TIME|SUBSYSTEM|PHASE|SESSION|TOKEN|PARAMETERS…
        let mut f = line.splitn(7, |&b| b == b'|');
        let (Some(kind), Some(_), Some(_), Some(b"smtp-in"), Some(what), Some(session)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        let rest = f.next().unwrap_or_default();
        match (kind, what) {
            (b"report", event) => {
                self.follow(session, event, rest);
                false
            }
            (b"filter", b"data-line") => {
                let mut token_data = rest.splitn(2, |&b| b == b'|');
                let token = token_data.next().unwrap_or_default();
                let data = token_data.next().unwrap_or_default();
                let s = self.sessions.entry(session.to_vec()).or_default();
                if data != b"." {
                    // smtpd sends the lines dot-stuffed; rspamd gets the message
                    let data = data.strip_prefix(b".").unwrap_or(data);
                    s.message.extend_from_slice(data);
                    s.message.extend_from_slice(b"\r\n");
                    return true;
                }
                let message = std::mem::take(&mut s.message);
                let request = s.request(&message);
                let rspamd = self.rspamd;
                let echo = echo_lines(session, token, &message);
                std::thread::spawn(move || {
                    scan(rspamd, &request, &message);
                    let _ = write_out(&echo);
                });
                true
            }
            _ => false,
        }
    }

    /// Takes what filter-rspamd would tell rspamd from a report (protocol 0.6 and 0.7).
    fn follow(&mut self, session: &[u8], event: &[u8], params: &[u8]) {
        if event == b"link-disconnect" {
            self.sessions.remove(session);
            return;
        }
        let s = self.sessions.entry(session.to_vec()).or_default();
        let fields: Vec<&[u8]> = params.split(|&b| b == b'|').collect();
        match (event, fields.as_slice()) {
            (b"link-connect", [rdns, _fcrdns, src, ..]) => {
                s.ip = client_ip(src);
                s.hostname = Some(if rdns.is_empty() || *rdns == b"<unknown>" {
                    b"unknown".to_vec()
                } else {
                    rdns.to_vec()
                });
            }
            (b"link-greeting", [hostname, ..]) => s.greeting = Some(hostname.to_vec()),
            (b"link-identify", [_method, identity, ..]) => s.helo = Some(identity.to_vec()),
            (b"tx-begin", [msgid, ..]) => {
                s.queue_id = Some(String::from_utf8_lossy(msgid).into_owned());
                s.from = None;
                s.rcpts.clear();
            }
            // 0.6 and later: msgid|result|address (the address may hold '|')
            (b"tx-mail", [_, b"ok", ..]) => s.from = Some(fields[2..].join(&b'|')),
            (b"tx-rcpt", [_, b"ok", ..]) => s.rcpts.push(fields[2..].join(&b'|')),
            _ => {}
        }
    }
}

/// The client's address in a `link-connect` source (`1.2.3.4:5`, `[::1]:5`, `unix:…`).
fn client_ip(src: &[u8]) -> Option<String> {
    let src = std::str::from_utf8(src).ok()?;
    if src.starts_with("unix:") {
        return Some("127.0.0.1".into());
    }
    let (host, _port) = src.rsplit_once(':')?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

impl Session {
    /// The request head filter-rspamd would send for `message` (same headers, same order).
    fn request(&self, message: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nContent-Length: {}\r\n",
            message.len()
        )
        .into_bytes();
        let mut header = |name: &str, value: &[u8]| {
            h.extend_from_slice(name.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(value);
            h.extend_from_slice(b"\r\n");
        };
        if let Some(ip) = &self.ip {
            header("IP", ip.as_bytes());
        }
        if let Some(v) = &self.hostname {
            header("Hostname", v);
        }
        if let Some(v) = &self.helo {
            header("Helo", v);
        }
        if let Some(v) = &self.from {
            header("From", if v.is_empty() { b"<>" } else { v });
        }
        for r in &self.rcpts {
            header("Rcpt", r);
        }
        if let [only] = self.rcpts.as_slice() {
            header("Deliver-To", only);
        }
        if let Some(v) = &self.queue_id {
            header("Queue-Id", v.as_bytes());
        }
        if let Some(v) = &self.greeting {
            header("MTA-Name", v);
        }
        h.extend_from_slice(b"\r\n");
        h
    }
}

/// Posts one message and reads rspamd's whole answer (rspamd closes the connection
/// after it); the answer itself is not looked at.
fn scan(rspamd: SocketAddr, head: &[u8], message: &[u8]) {
    let Ok(mut c) = TcpStream::connect(rspamd) else {
        return;
    };
    let _ = c.set_nodelay(true);
    let mut request = Vec::with_capacity(head.len() + message.len());
    request.extend_from_slice(head);
    request.extend_from_slice(message);
    if c.write_all(&request).is_ok() {
        let mut sink = [0u8; 16 * 1024];
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// The `filter-dataline` answers that give `message` (CRLF lines, unstuffed) back
/// to `session`, stuffed again, then its end.
fn echo_lines(session: &[u8], token: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() * 2);
    let body = message.strip_suffix(b"\r\n").unwrap_or(message);
    if !message.is_empty() {
        for l in body.split(|&b| b == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            push_dataline(&mut out, session, token);
            if l.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(l);
            out.push(b'\n');
        }
    }
    push_dataline(&mut out, session, token);
    out.extend_from_slice(b".\n");
    out
}

/// `filter-dataline|SESSION|TOKEN|`: the start of a data-line answer.
fn push_dataline(out: &mut Vec<u8>, session: &[u8], token: &[u8]) {
    out.extend_from_slice(b"filter-dataline|");
    out.extend_from_slice(session);
    out.push(b'|');
    out.extend_from_slice(token);
    out.push(b'|');
}

/// The answer to one line from smtpd, appended to `out`.
fn answer(line: &[u8], registrations: &[u8], out: &mut Vec<u8>) {
    if line == b"config|ready" {
        out.extend_from_slice(registrations);
        return;
    }
    // filter|VERSION|TIME|SUBSYSTEM|PHASE|SESSION|TOKEN[|PARAMETERS]
    let Some(rest) = line.strip_prefix(b"filter|") else {
        return;
    };
    let mut fields = rest.splitn(7, |&b| b == b'|');
    let (Some(_version), Some(_time), Some(_subsystem), Some(phase), Some(session), Some(token)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return;
    };
    let parameters = fields.next();
    if phase == b"data-line" {
        push_dataline(out, session, token);
        out.extend_from_slice(parameters.unwrap_or_default());
        out.push(b'\n');
    } else {
        out.extend_from_slice(b"filter-result|");
        out.extend_from_slice(session);
        out.push(b'|');
        out.extend_from_slice(token);
        out.extend_from_slice(b"|proceed\n");
    }
}

#[cfg(test)]
mod tests {
    use super::{Scans, answer, client_ip, echo_lines};

    fn answers(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            answer(
                l,
                b"register|filter|smtp-in|data-line\nregister|ready\n",
                &mut out,
            );
        }
        out
    }

    #[test]
    fn registers_what_it_was_given_and_answers_every_request() {
        assert_eq!(
            answers(&[b"config|protocol|0.7", b"config|ready"]),
            b"register|filter|smtp-in|data-line\nregister|ready\n"
        );
        assert_eq!(
            answers(&[b"filter|0.7|1.5|smtp-in|data-line|s1|t1|a|b||c"]),
            b"filter-dataline|s1|t1|a|b||c\n"
        );
        assert_eq!(
            answers(&[b"filter|0.7|1.5|smtp-in|data-line|s1|t1|"]),
            b"filter-dataline|s1|t1|\n"
        );
        assert_eq!(
            answers(&[b"filter|0.6|1.5|smtp-in|commit|s1|t2"]),
            b"filter-result|s1|t2|proceed\n"
        );
        assert_eq!(
            answers(&[b"report|0.7|1.5|smtp-in|link-connect|s1|x|pass|1.2.3.4:5|6.7.8.9:25"]),
            b""
        );
    }

    #[test]
    fn a_held_message_is_echoed_back_stuffed_as_it_came() {
        assert_eq!(
            echo_lines(b"s1", b"t1", b"Subject: x\r\n\r\n.hidden\r\n\r\n"),
            b"filter-dataline|s1|t1|Subject: x\nfilter-dataline|s1|t1|\nfilter-dataline|s1|t1|..hidden\nfilter-dataline|s1|t1|\nfilter-dataline|s1|t1|.\n"
        );
        assert_eq!(echo_lines(b"s1", b"t1", b""), b"filter-dataline|s1|t1|.\n");
    }

    #[test]
    fn the_scan_request_carries_what_the_reports_said() {
        let mut scans = Scans {
            rspamd: "127.0.0.1:1".parse().unwrap(),
            sessions: Default::default(),
        };
        for l in [
            &b"report|0.7|1.5|smtp-in|link-connect|s1|<unknown>|error|127.0.0.100:4000|127.43.1.1:25"[..],
            b"report|0.7|1.5|smtp-in|link-greeting|s1|mx.lab.test",
            b"report|0.7|1.5|smtp-in|link-identify|s1|EHLO|bench.example",
            b"report|0.7|1.5|smtp-in|tx-begin|s1|0badcafe",
            b"report|0.7|1.5|smtp-in|tx-mail|s1|0badcafe|ok|a@b.example",
            b"report|0.7|1.5|smtp-in|tx-rcpt|s1|0badcafe|ok|u@lab.test",
            b"report|0.7|1.5|smtp-in|tx-rcpt|s1|0badcafe|permfail|x@lab.test",
        ] {
            assert!(!scans.take(l));
        }
        assert!(scans.take(b"filter|0.7|1.5|smtp-in|data-line|s1|t1|..dot"));
        let s = &scans.sessions[&b"s1".to_vec()];
        assert_eq!(s.message, b".dot\r\n");
        assert_eq!(
            String::from_utf8(s.request(&s.message)).unwrap(),
            "POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nContent-Length: 6\r\nIP: 127.0.0.100\r\nHostname: unknown\r\nHelo: bench.example\r\nFrom: a@b.example\r\nRcpt: u@lab.test\r\nDeliver-To: u@lab.test\r\nQueue-Id: 0badcafe\r\nMTA-Name: mx.lab.test\r\n\r\n"
        );
        assert_eq!(client_ip(b"[::1]:25").as_deref(), Some("::1"));
        assert!(!scans.take(b"report|0.7|1.5|smtp-in|link-disconnect|s1"));
        assert!(scans.sessions.is_empty());
    }
}
