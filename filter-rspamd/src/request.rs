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
