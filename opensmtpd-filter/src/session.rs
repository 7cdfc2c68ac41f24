//! What is known about one SMTP session, built from smtpd's reports.
//!
//! [`SessionInfo::apply`] takes each report of a session in order; the runtime does it
//! for you before your handlers see the session. Pure: no I/O, no clock.

use std::net::{IpAddr, SocketAddr};

use crate::protocol::{
    Address, AuthResult, Client, EnvelopeId, Event, EventKind, Fcrdns, Interest, MessageId,
    SessionId, TxResult,
};

/// The reports [`SessionInfo`] learns from. Register them (`interest.union(..)`) to
/// have the full state; a filter that needs less may register less.
pub const SESSION_REPORTS: Interest = Interest::new()
    .report(EventKind::LinkConnect)
    .report(EventKind::LinkDisconnect)
    .report(EventKind::LinkGreeting)
    .report(EventKind::LinkIdentify)
    .report(EventKind::LinkTls)
    .report(EventKind::LinkAuth)
    .report(EventKind::TxReset)
    .report(EventKind::TxBegin)
    .report(EventKind::TxMail)
    .report(EventKind::TxRcpt)
    .report(EventKind::TxEnvelope)
    .report(EventKind::TxData)
    .report(EventKind::TxCommit)
    .report(EventKind::TxRollback)
    .report(EventKind::FilterResponse);

/// Where the client is.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum ClientAddr {
    /// A network client (the port is 0 when only the `connect` request was seen).
    Inet(SocketAddr),
    /// A local submission through smtpd's unix socket.
    Local,
    /// Something smtpd wrote that is not an address.
    Other(Vec<u8>),
}

impl ClientAddr {
    /// The client's IP address, for a network client.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            ClientAddr::Inet(sa) => Some(sa.ip()),
            _ => None,
        }
    }

    /// Whether this is a local (unix socket) submission.
    pub fn is_local(&self) -> bool {
        matches!(self, ClientAddr::Local)
    }
}

/// The AUTH outcome of a session.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Auth {
    /// The result of the last attempt.
    pub result: AuthResult,
    /// The user name given (may contain `|` and any byte).
    pub username: Vec<u8>,
}

/// One recipient of a transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Recipient {
    /// The address, after any filter's rewrite.
    pub address: Vec<u8>,
    /// smtpd's answer.
    pub result: TxResult,
    /// The envelope created for it, once `tx-envelope` came.
    pub envelope: Option<EnvelopeId>,
}

/// The transaction in progress (MAIL FROM to commit or reset).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transaction {
    /// smtpd's message id.
    pub id: MessageId,
    /// The sender, after any filter's rewrite; empty for the null sender.
    pub mail_from: Option<Vec<u8>>,
    /// smtpd's answer to MAIL FROM.
    pub mail_from_result: Option<TxResult>,
    /// Every RCPT TO, accepted or not, in order.
    pub recipients: Vec<Recipient>,
    /// smtpd's answer to DATA.
    pub data_result: Option<TxResult>,
}

impl Transaction {
    fn new(id: MessageId) -> Self {
        Transaction {
            id,
            mail_from: None,
            mail_from_result: None,
            recipients: Vec::new(),
            data_result: None,
        }
    }

    /// The recipients smtpd accepted.
    pub fn accepted_recipients(&self) -> impl Iterator<Item = &[u8]> {
        self.recipients
            .iter()
            .filter(|r| r.result == TxResult::Ok)
            .map(|r| r.address.as_slice())
    }
}

/// Everything the reports told about a session so far.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionInfo {
    id: SessionId,
    /// The client's reverse DNS name (`<unknown>` when there is none).
    pub rdns: Option<Vec<u8>>,
    /// Whether the rDNS name resolves back to the client.
    pub fcrdns: Option<Fcrdns>,
    /// The client.
    pub client: Option<ClientAddr>,
    /// The listener the client connected to.
    pub server: Option<ClientAddr>,
    /// The host name in smtpd's banner.
    pub greeting: Option<Vec<u8>>,
    /// `HELO` or `EHLO`.
    pub helo_method: Option<Vec<u8>>,
    /// The HELO/EHLO name the client gave (the last one, after STARTTLS).
    pub helo: Option<Vec<u8>>,
    /// The TLS description (`TLSv1.3:TLS_AES_256_GCM_SHA384:256`) once TLS is up.
    pub tls: Option<Vec<u8>>,
    /// The last AUTH attempt.
    pub auth: Option<Auth>,
    /// The transaction in progress.
    pub transaction: Option<Transaction>,
    /// Messages committed in this session so far.
    pub messages_committed: u32,
    rewritten_mail_from: Option<Vec<u8>>,
    rewritten_rcpt_to: Option<Vec<u8>>,
}

fn to_client(address: &Address<'_>) -> ClientAddr {
    match *address {
        Address::Inet(sa) => ClientAddr::Inet(sa),
        Address::Unix(_) => ClientAddr::Local,
        Address::Other(text) => ClientAddr::Other(text.to_vec()),
    }
}

impl SessionInfo {
    /// A session nothing is known about yet.
    pub fn new(id: SessionId) -> Self {
        SessionInfo {
            id,
            rdns: None,
            fcrdns: None,
            client: None,
            server: None,
            greeting: None,
            helo_method: None,
            helo: None,
            tls: None,
            auth: None,
            transaction: None,
            messages_committed: 0,
            rewritten_mail_from: None,
            rewritten_rcpt_to: None,
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The user name, if AUTH succeeded.
    pub fn authenticated_user(&self) -> Option<&[u8]> {
        self.auth
            .as_ref()
            .filter(|a| a.result == AuthResult::Pass)
            .map(|a| a.username.as_slice())
    }

    /// Whether the client is a local (unix socket) submission.
    pub fn is_local(&self) -> bool {
        self.client.as_ref().is_some_and(ClientAddr::is_local)
    }

    /// The client's IP address, for a network client.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.as_ref().and_then(ClientAddr::ip)
    }

    /// Learns from the `connect` request (useful when `link-connect` is not registered).
    pub fn apply_connect_request(&mut self, rdns: &[u8], client: &Client<'_>) {
        if self.rdns.is_none() {
            self.rdns = Some(rdns.to_vec());
        }
        if self.client.is_none() {
            self.client = Some(match *client {
                Client::Ip(ip) => ClientAddr::Inet(SocketAddr::new(ip, 0)),
                Client::Local => ClientAddr::Local,
                Client::Other(text) => ClientAddr::Other(text.to_vec()),
            });
        }
    }

    /// Learns from one report of this session.
    pub fn apply(&mut self, event: &Event<'_>) {
        match *event {
            Event::LinkConnect {
                rdns,
                fcrdns,
                src,
                dest,
            } => {
                self.rdns = Some(rdns.to_vec());
                self.fcrdns = Some(fcrdns);
                self.client = Some(to_client(&src));
                self.server = Some(to_client(&dest));
            }
            Event::LinkGreeting { hostname } => self.greeting = Some(hostname.to_vec()),
            Event::LinkIdentify { method, identity } => {
                self.helo_method = Some(method.to_vec());
                self.helo = Some(identity.to_vec());
            }
            Event::LinkTls { tls } => self.tls = Some(tls.to_vec()),
            Event::LinkAuth { result, username } => {
                self.auth = Some(Auth {
                    result,
                    username: username.to_vec(),
                });
            }
            Event::TxBegin { message } => self.transaction = Some(Transaction::new(message)),
            Event::TxMail {
                message,
                result,
                address,
            } => {
                let rewritten = self.rewritten_mail_from.take();
                let tx = self.transaction_for(message);
                tx.mail_from = Some(rewritten.unwrap_or_else(|| address.to_vec()));
                tx.mail_from_result = Some(result);
            }
            Event::TxRcpt {
                message,
                result,
                address,
            } => {
                let address = self
                    .rewritten_rcpt_to
                    .take()
                    .unwrap_or_else(|| address.to_vec());
                self.transaction_for(message).recipients.push(Recipient {
                    address,
                    result,
                    envelope: None,
                });
            }
            Event::TxEnvelope { message, envelope } => {
                let tx = self.transaction_for(message);
                if let Some(r) = tx
                    .recipients
                    .iter_mut()
                    .rev()
                    .find(|r| r.result == TxResult::Ok)
                {
                    r.envelope = Some(envelope);
                }
            }
            Event::TxData { message, result } => {
                self.transaction_for(message).data_result = Some(result)
            }
            Event::TxCommit { .. } => {
                self.messages_committed = self.messages_committed.saturating_add(1);
                self.transaction = None;
            }
            Event::TxReset { .. } | Event::TxRollback { .. } => self.transaction = None,
            Event::FilterResponse {
                phase,
                response: b"rewrite",
                param: Some(param),
            } => match phase {
                b"mail-from" => self.rewritten_mail_from = Some(param.to_vec()),
                b"rcpt-to" => self.rewritten_rcpt_to = Some(param.to_vec()),
                _ => {}
            },
            _ => {}
        }
    }

    fn transaction_for(&mut self, id: MessageId) -> &mut Transaction {
        // A transaction whose tx-begin was not registered (or not seen) starts here.
        match self.transaction {
            Some(ref tx) if tx.id == id => {}
            _ => self.transaction = Some(Transaction::new(id)),
        }
        self.transaction.get_or_insert_with(|| Transaction::new(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Input, parse_line};

    fn feed(info: &mut SessionInfo, lines: &[&[u8]]) {
        for line in lines {
            match parse_line(line).unwrap() {
                Input::Report(r) => info.apply(&r.event),
                other => panic!("not a report: {other:?}"),
            }
        }
    }

    #[test]
    fn follows_a_session_with_rewrites() {
        let mut s = SessionInfo::new(SessionId::new(1));
        feed(
            &mut s,
            &[
                b"report|0.7|1.0|smtp-in|link-connect|01|mx.example|pass|192.0.2.1:4000|192.0.2.2:25",
                b"report|0.7|1.0|smtp-in|link-identify|01|EHLO|client.example",
                b"report|0.7|1.0|smtp-in|link-tls|01|TLSv1.3:TLS_AES_256_GCM_SHA384:256",
                b"report|0.7|1.0|smtp-in|link-auth|01|pass|us|er",
                b"report|0.7|1.0|smtp-in|tx-begin|01|0000000a",
                b"report|0.7|1.0|smtp-in|filter-response|01|mail-from|rewrite|new@example.org",
                b"report|0.7|1.0|smtp-in|tx-mail|01|0000000a|ok|old@example.org",
                b"report|0.7|1.0|smtp-in|tx-rcpt|01|0000000a|ok|a@example.org",
                b"report|0.7|1.0|smtp-in|tx-envelope|01|0000000a|0000000a00000001",
                b"report|0.7|1.0|smtp-in|tx-rcpt|01|0000000a|permfail|b@example.org",
            ],
        );
        assert_eq!(s.client_ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(s.helo.as_deref(), Some(&b"client.example"[..]));
        assert_eq!(s.authenticated_user(), Some(&b"us|er"[..]));
        let tx = s.transaction.as_ref().unwrap();
        assert_eq!(tx.mail_from.as_deref(), Some(&b"new@example.org"[..]));
        assert_eq!(
            tx.accepted_recipients().collect::<Vec<_>>(),
            vec![&b"a@example.org"[..]]
        );
        assert_eq!(
            tx.recipients[0].envelope,
            Some(EnvelopeId::new(0xa_0000_0001))
        );
        feed(
            &mut s,
            &[b"report|0.7|1.0|smtp-in|tx-commit|01|0000000a|1234"],
        );
        assert!(s.transaction.is_none());
        assert_eq!(s.messages_committed, 1);
    }

    #[test]
    fn local_and_failed_auth_in_old_order() {
        let mut s = SessionInfo::new(SessionId::new(2));
        feed(
            &mut s,
            &[
                b"report|0.6|1.0|smtp-in|link-connect|02|host|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock",
                b"report|0.6|1.0|smtp-in|link-auth|02|joe|fail",
            ],
        );
        assert!(s.is_local());
        assert_eq!(s.authenticated_user(), None);
        assert_eq!(s.auth.as_ref().unwrap().username, b"joe");
    }
}
