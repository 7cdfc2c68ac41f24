//! The request, pure: the HTTP headers of `POST /checkv2` from what smtpd reported
//! about the session and the transaction.

use opensmtpd_filter::session::{ClientAddr, SessionInfo};

/// What the operator configured for every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `Settings-ID`.
    pub settings_id: Option<String>,
    /// `MTA-Name` (default: the name smtpd greets with).
    pub mta_name: Option<String>,
    /// Send `Pass: all` (rspamd runs every rule, even after a pre-result).
    pub pass_all: bool,
}

/// The request headers, in order: `(name, value)`. Values never hold CR, LF, NUL or
/// another control character (they become `?`), so each is a valid HTTP header value.
pub fn headers(info: &SessionInfo, opts: &RequestOptions) -> Vec<(&'static str, Vec<u8>)> {
    let mut h: Vec<(&'static str, Vec<u8>)> = Vec::new();
    match &info.client {
        Some(ClientAddr::Inet(sa)) => h.push(("IP", sa.ip().to_string().into_bytes())),
        Some(ClientAddr::Local) => h.push(("IP", b"127.0.0.1".to_vec())),
        _ => {}
    }
    if let Some(rdns) = &info.rdns {
        if rdns.as_slice() == b"<unknown>" || rdns.is_empty() {
            h.push(("Hostname", b"unknown".to_vec()));
        } else {
            h.push(("Hostname", rdns.clone()));
        }
    }
    if let Some(helo) = &info.helo {
        h.push(("Helo", helo.clone()));
    }
    if let Some(tx) = &info.transaction {
        if let Some(from) = &tx.mail_from {
            if from.is_empty() {
                h.push(("From", b"<>".to_vec()));
            } else {
                h.push(("From", from.clone()));
            }
        }
        let rcpts: Vec<&[u8]> = tx.accepted_recipients().collect();
        for r in &rcpts {
            h.push(("Rcpt", r.to_vec()));
        }
        if let [only] = rcpts.as_slice() {
            h.push(("Deliver-To", only.to_vec()));
        }
        h.push(("Queue-Id", tx.id.to_string().into_bytes()));
    }
    if let Some(user) = info.authenticated_user() {
        h.push(("User", user.to_vec()));
    }
    if let Some(name) = &opts.mta_name {
        h.push(("MTA-Name", name.clone().into_bytes()));
    } else if let Some(greeting) = &info.greeting {
        h.push(("MTA-Name", greeting.clone()));
    }
    if let Some(id) = &opts.settings_id {
        h.push(("Settings-ID", id.clone().into_bytes()));
    }
    if let Some(tls) = &info.tls {
        // VERSION:CIPHER:BITS
        let mut parts = tls.split(|&b| b == b':');
        if let (Some(version), Some(cipher)) = (parts.next(), parts.next()) {
            h.push(("TLS-Cipher", cipher.to_vec()));
            h.push(("TLS-Version", version.to_vec()));
        }
    }
    if opts.pass_all {
        h.push(("Pass", b"all".to_vec()));
    }
    for (_, v) in &mut h {
        for b in v.iter_mut() {
            if (*b < 0x20 && *b != b'\t') || *b == 0x7f {
                *b = b'?';
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use opensmtpd_filter::protocol::{Input, SessionId, parse_line};

    fn session(lines: &[&[u8]]) -> SessionInfo {
        let mut info = SessionInfo::new(SessionId::new(1));
        for line in lines {
            match parse_line(line).unwrap() {
                Input::Report(r) => info.apply(&r.event),
                other => panic!("not a report: {other:?}"),
            }
        }
        info
    }

    fn get<'a>(h: &'a [(&'static str, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
        h.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn every_header_from_a_full_session() {
        let info = session(&[
            b"report|0.7|1.0|smtp-in|link-connect|01|<unknown>|fail|[2001:db8::1]:4000|[2001:db8::25]:25",
            b"report|0.7|1.0|smtp-in|link-greeting|01|mx.example.org",
            b"report|0.7|1.0|smtp-in|link-identify|01|EHLO|bad\x01helo",
            b"report|0.7|1.0|smtp-in|link-tls|01|TLSv1.2:ECDHE-RSA-AES256-GCM-SHA384:256",
            b"report|0.7|1.0|smtp-in|link-auth|01|pass|us|er",
            b"report|0.7|1.0|smtp-in|tx-begin|01|0000000a",
            b"report|0.7|1.0|smtp-in|tx-mail|01|0000000a|ok|",
            b"report|0.7|1.0|smtp-in|tx-rcpt|01|0000000a|ok|a@example.org",
            b"report|0.7|1.0|smtp-in|tx-rcpt|01|0000000a|permfail|b@example.org",
        ]);
        let opts = RequestOptions {
            settings_id: Some("sub".into()),
            mta_name: Some("relay.example.org".into()),
            pass_all: true,
        };
        let h = headers(&info, &opts);
        assert_eq!(get(&h, "IP"), [b"2001:db8::1"]);
        assert_eq!(get(&h, "Hostname"), [b"unknown"]);
        assert_eq!(get(&h, "Helo"), [b"bad?helo"]);
        assert_eq!(get(&h, "From"), [b"<>"]);
        assert_eq!(get(&h, "Rcpt"), [b"a@example.org"]);
        assert_eq!(get(&h, "Deliver-To"), [b"a@example.org"]);
        assert_eq!(get(&h, "Queue-Id"), [b"0000000a"]);
        assert_eq!(get(&h, "User"), [b"us|er"]);
        assert_eq!(get(&h, "MTA-Name"), [b"relay.example.org"]);
        assert_eq!(get(&h, "Settings-ID"), [b"sub"]);
        assert_eq!(get(&h, "TLS-Cipher"), [b"ECDHE-RSA-AES256-GCM-SHA384"]);
        assert_eq!(get(&h, "TLS-Version"), [b"TLSv1.2"]);
        assert_eq!(get(&h, "Pass"), [b"all"]);
    }

    #[test]
    fn little_known_little_sent() {
        let info = session(&[b"report|0.6|1.0|smtp-in|link-auth|01|user|fail"]);
        let h = headers(&info, &RequestOptions::default());
        assert!(h.is_empty(), "{h:?}");
    }
}
