//! Report events: what smtpd tells a filter about sessions, with no answer expected.

use core::fmt;
use std::net::{IpAddr, SocketAddr};

use super::fields::{Fields, ParseError, Subsystem, Timestamp, parse_decimal, split_last};
use super::ids::{EnvelopeId, MessageId, SessionId};
use super::version::{Dialect, Version};

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The 19 report events smtpd knows, for `smtp-in` and `smtp-out` alike.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every event, in the order of smtpd's table.
            pub const ALL: [EventKind; 19] = [$(EventKind::$variant,)*];

            /// The event's name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// Parses an event name.
            pub fn parse(name: &[u8]) -> Option<EventKind> {
                // A literal match compiles to a length switch and one comparison.
                Some(match name {
                    b"link-connect" => EventKind::LinkConnect,
                    b"link-disconnect" => EventKind::LinkDisconnect,
                    b"link-greeting" => EventKind::LinkGreeting,
                    b"link-identify" => EventKind::LinkIdentify,
                    b"link-tls" => EventKind::LinkTls,
                    b"link-auth" => EventKind::LinkAuth,
                    b"tx-reset" => EventKind::TxReset,
                    b"tx-begin" => EventKind::TxBegin,
                    b"tx-mail" => EventKind::TxMail,
                    b"tx-rcpt" => EventKind::TxRcpt,
                    b"tx-envelope" => EventKind::TxEnvelope,
                    b"tx-data" => EventKind::TxData,
                    b"tx-commit" => EventKind::TxCommit,
                    b"tx-rollback" => EventKind::TxRollback,
                    b"protocol-client" => EventKind::ProtocolClient,
                    b"protocol-server" => EventKind::ProtocolServer,
                    b"filter-report" => EventKind::FilterReport,
                    b"filter-response" => EventKind::FilterResponse,
                    b"timeout" => EventKind::Timeout,
                    _ => return None,
                })
            }
        }
    };
}

event_kinds! {
    /// A client connected.
    LinkConnect = "link-connect",
    /// The client went away; the session's state can be freed.
    LinkDisconnect = "link-disconnect",
    /// smtpd sent its 220 banner.
    LinkGreeting = "link-greeting",
    /// HELO/EHLO.
    LinkIdentify = "link-identify",
    /// TLS was established.
    LinkTls = "link-tls",
    /// An AUTH attempt finished.
    LinkAuth = "link-auth",
    /// RSET or end of a transaction.
    TxReset = "tx-reset",
    /// A transaction started (MAIL FROM accepted for processing).
    TxBegin = "tx-begin",
    /// MAIL FROM and its result.
    TxMail = "tx-mail",
    /// RCPT TO and its result.
    TxRcpt = "tx-rcpt",
    /// An envelope was created for an accepted recipient.
    TxEnvelope = "tx-envelope",
    /// DATA and its result.
    TxData = "tx-data",
    /// The message was committed to the queue.
    TxCommit = "tx-commit",
    /// The transaction was abandoned.
    TxRollback = "tx-rollback",
    /// A line the client sent.
    ProtocolClient = "protocol-client",
    /// A line smtpd sent.
    ProtocolServer = "protocol-server",
    /// A filter's `report` decision.
    FilterReport = "filter-report",
    /// A filter in the chain decided something.
    FilterResponse = "filter-response",
    /// The session timed out.
    Timeout = "timeout",
}

#[test]
fn event_names_round_trip() {
    for e in EventKind::ALL {
        assert_eq!(EventKind::parse(e.as_str().as_bytes()), Some(e));
    }
    assert_eq!(EventKind::parse(b"link"), None);
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `report|VERSION|TIMESTAMP|SUBSYSTEM|EVENT|SESSION[|params]`, parsed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Report<'a> {
    /// The protocol version of this line.
    pub version: Version,
    /// When smtpd wrote it.
    pub timestamp: Timestamp,
    /// `smtp-in` or `smtp-out`.
    pub subsystem: Subsystem,
    /// The session it is about.
    pub session: SessionId,
    /// The event and its fields.
    pub event: Event<'a>,
}

/// The forward-confirmed reverse DNS result of a connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Fcrdns {
    /// The PTR name resolves back to the client address.
    Pass,
    /// It does not, or there is no PTR.
    Fail,
    /// The lookup failed.
    Error,
}

/// The result smtpd reports for MAIL FROM, RCPT TO and DATA.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TxResult {
    /// Accepted.
    Ok,
    /// Refused for good (5xx).
    PermFail,
    /// Refused for now (4xx).
    TempFail,
}

impl TxResult {
    fn parse(text: &[u8]) -> Result<TxResult, ParseError> {
        match text {
            b"ok" => Ok(TxResult::Ok),
            b"permfail" => Ok(TxResult::PermFail),
            b"tempfail" => Ok(TxResult::TempFail),
            _ => Err(ParseError::MissingField(
                "result (ok, permfail or tempfail)",
            )),
        }
    }
}

/// The result of an AUTH attempt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AuthResult {
    /// Authenticated.
    Pass,
    /// Wrong credentials.
    Fail,
    /// The attempt could not be checked.
    Error,
}

impl AuthResult {
    fn parse(text: &[u8]) -> Option<AuthResult> {
        match text {
            b"pass" => Some(AuthResult::Pass),
            b"fail" => Some(AuthResult::Fail),
            b"error" => Some(AuthResult::Error),
            _ => None,
        }
    }
}

/// One end of a connection as `link-connect` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Address<'a> {
    /// An IPv4 or IPv6 address and port (`1.2.3.4:25`, `[::1]:25`).
    Inet(SocketAddr),
    /// The local socket (`unix:/var/run/smtpd.sock`): a local submission.
    Unix(&'a [u8]),
    /// Anything else, kept as smtpd wrote it.
    Other(&'a [u8]),
}

impl<'a> Address<'a> {
    /// Parses `ADDR:PORT`, `[ADDR]:PORT`, a bare IPv6 `ADDR:PORT` or `unix:PATH`.
    pub fn parse(text: &'a [u8]) -> Address<'a> {
        if let Some(path) = text.strip_prefix(b"unix:") {
            return Address::Unix(path);
        }
        parse_socket_addr(text).map_or(Address::Other(text), Address::Inet)
    }

    /// The IP address, for an inet address.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Inet(sa) => Some(sa.ip()),
            _ => None,
        }
    }
}

fn parse_socket_addr(text: &[u8]) -> Option<SocketAddr> {
    let text = core::str::from_utf8(text).ok()?;
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa);
    }
    // Some releases print IPv6 without brackets: the port follows the last colon.
    let (ip, port) = text.rsplit_once(':')?;
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

/// Parses an IP address as smtpd writes it in a `connect` request (`[::1]` or bare).
pub fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let text = core::str::from_utf8(text).ok()?;
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// A report event with its fields, in the same field order for every protocol version:
/// the parser undoes the version differences.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// `link-connect|rdns|fcrdns|src|dest`.
    LinkConnect {
        /// The client's reverse DNS name (`<unknown>` when it has none).
        rdns: &'a [u8],
        /// Whether the name resolves back to the address.
        fcrdns: Fcrdns,
        /// The client end.
        src: Address<'a>,
        /// The server end.
        dest: Address<'a>,
    },
    /// `link-disconnect`.
    LinkDisconnect,
    /// `link-greeting|hostname`.
    LinkGreeting {
        /// The host name smtpd greeted with.
        hostname: &'a [u8],
    },
    /// `link-identify|method|identity`.
    LinkIdentify {
        /// `HELO` or `EHLO`.
        method: &'a [u8],
        /// The name the client gave, verbatim.
        identity: &'a [u8],
    },
    /// `link-tls|tls-string`.
    LinkTls {
        /// For example `TLSv1.3:TLS_AES_256_GCM_SHA384:256`.
        tls: &'a [u8],
    },
    /// `link-auth`: `username|result` before 0.7, `result|username` from 0.7.
    LinkAuth {
        /// The result.
        result: AuthResult,
        /// The user name, which may contain `|`.
        username: &'a [u8],
    },
    /// `tx-reset|msgid`.
    TxReset {
        /// The transaction being reset.
        message: MessageId,
    },
    /// `tx-begin|msgid`.
    TxBegin {
        /// The new transaction.
        message: MessageId,
    },
    /// `tx-mail`: `msgid|address|result` before 0.6, `msgid|result|address` from 0.6.
    TxMail {
        /// The transaction.
        message: MessageId,
        /// smtpd's answer to MAIL FROM.
        result: TxResult,
        /// The sender as given (before any filter's rewrite); empty for the null sender.
        address: &'a [u8],
    },
    /// `tx-rcpt`: same field orders as `tx-mail`.
    TxRcpt {
        /// The transaction.
        message: MessageId,
        /// smtpd's answer to RCPT TO.
        result: TxResult,
        /// The recipient as given (before any filter's rewrite).
        address: &'a [u8],
    },
    /// `tx-envelope|msgid|evpid`.
    TxEnvelope {
        /// The transaction.
        message: MessageId,
        /// The envelope created for the last accepted recipient.
        envelope: EnvelopeId,
    },
    /// `tx-data|msgid|result`.
    TxData {
        /// The transaction.
        message: MessageId,
        /// smtpd's answer to DATA.
        result: TxResult,
    },
    /// `tx-commit|msgid|size`.
    TxCommit {
        /// The transaction.
        message: MessageId,
        /// The message size in bytes.
        size: u64,
    },
    /// `tx-rollback|msgid`.
    TxRollback {
        /// The transaction.
        message: MessageId,
    },
    /// `protocol-client|command`: a line the client sent (AUTH secrets masked by smtpd).
    ProtocolClient {
        /// The command line.
        command: &'a [u8],
    },
    /// `protocol-server|response`: a line smtpd sent.
    ProtocolServer {
        /// The response line.
        response: &'a [u8],
    },
    /// `filter-report|kind|name|message`.
    FilterReport {
        /// `builtin` or `proc`.
        kind: &'a [u8],
        /// The reporting filter's name.
        name: &'a [u8],
        /// What it reported.
        message: &'a [u8],
    },
    /// `filter-response|phase|response[|param]`: a decision of any filter in the chain.
    FilterResponse {
        /// The phase, named as in reports (`connected` for connect, `tls` for starttls).
        phase: &'a [u8],
        /// `proceed`, `junk`, `reject`, `disconnect`, `rewrite` or `report`.
        response: &'a [u8],
        /// The decision's parameter, if any.
        param: Option<&'a [u8]>,
    },
    /// `timeout`.
    Timeout,
}

impl Event<'_> {
    /// Which event this is.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::LinkConnect { .. } => EventKind::LinkConnect,
            Event::LinkDisconnect => EventKind::LinkDisconnect,
            Event::LinkGreeting { .. } => EventKind::LinkGreeting,
            Event::LinkIdentify { .. } => EventKind::LinkIdentify,
            Event::LinkTls { .. } => EventKind::LinkTls,
            Event::LinkAuth { .. } => EventKind::LinkAuth,
            Event::TxReset { .. } => EventKind::TxReset,
            Event::TxBegin { .. } => EventKind::TxBegin,
            Event::TxMail { .. } => EventKind::TxMail,
            Event::TxRcpt { .. } => EventKind::TxRcpt,
            Event::TxEnvelope { .. } => EventKind::TxEnvelope,
            Event::TxData { .. } => EventKind::TxData,
            Event::TxCommit { .. } => EventKind::TxCommit,
            Event::TxRollback { .. } => EventKind::TxRollback,
            Event::ProtocolClient { .. } => EventKind::ProtocolClient,
            Event::ProtocolServer { .. } => EventKind::ProtocolServer,
            Event::FilterReport { .. } => EventKind::FilterReport,
            Event::FilterResponse { .. } => EventKind::FilterResponse,
            Event::Timeout => EventKind::Timeout,
        }
    }
}

fn message_id(text: &[u8]) -> Result<MessageId, ParseError> {
    MessageId::parse(text).ok_or(ParseError::BadMessageId)
}

/// Parses the params of one event (everything after the session id; `None` when the
/// line ended at the session id).
pub(crate) fn parse_event<'a>(
    kind: EventKind,
    params: Option<&'a [u8]>,
    dialect: Dialect,
) -> Result<Event<'a>, ParseError> {
    // Events without params: smtpd writes no `|` after the session id, but accept an
    // empty trailing field as well.
    let no_params = |params: Option<&[u8]>| match params {
        None | Some(b"") => Ok(()),
        Some(_) => Err(ParseError::TrailingFields),
    };
    let mut f = Fields::new(params.unwrap_or(b""));
    let event = match kind {
        EventKind::LinkDisconnect => {
            no_params(params)?;
            Event::LinkDisconnect
        }
        EventKind::Timeout => {
            no_params(params)?;
            Event::Timeout
        }
        _ if params.is_none() => return Err(ParseError::MissingField("event parameters")),
        EventKind::LinkConnect => {
            let rdns = f.expect("rdns")?;
            let fcrdns = match f.expect("fcrdns")? {
                b"pass" => Fcrdns::Pass,
                b"fail" => Fcrdns::Fail,
                b"error" => Fcrdns::Error,
                _ => return Err(ParseError::MissingField("fcrdns (pass, fail or error)")),
            };
            let src = Address::parse(f.expect("source address")?);
            let dest = Address::parse(f.expect_rest("destination address")?);
            Event::LinkConnect {
                rdns,
                fcrdns,
                src,
                dest,
            }
        }
        EventKind::LinkGreeting => Event::LinkGreeting {
            hostname: f.rest_or_empty(),
        },
        EventKind::LinkIdentify => {
            let method = f.expect("method")?;
            Event::LinkIdentify {
                method,
                identity: f.expect_rest("identity")?,
            }
        }
        EventKind::LinkTls => Event::LinkTls {
            tls: f.rest_or_empty(),
        },
        EventKind::LinkAuth => {
            let all = f.rest_or_empty();
            let (result, username) = if dialect.auth_result_before_user() {
                let mut f = Fields::new(all);
                let result = f.expect("auth result")?;
                (result, f.expect_rest("username")?)
            } else {
                let (user, result) =
                    split_last(all).ok_or(ParseError::MissingField("auth result"))?;
                (result, user)
            };
            let result = AuthResult::parse(result).ok_or(ParseError::MissingField(
                "auth result (pass, fail or error)",
            ))?;
            Event::LinkAuth { result, username }
        }
        EventKind::TxReset | EventKind::TxBegin | EventKind::TxRollback => {
            let message = message_id(f.expect("message id")?)?;
            f.finish()?;
            match kind {
                EventKind::TxReset => Event::TxReset { message },
                EventKind::TxBegin => Event::TxBegin { message },
                _ => Event::TxRollback { message },
            }
        }
        EventKind::TxMail | EventKind::TxRcpt => {
            let message = message_id(f.expect("message id")?)?;
            let rest = f.expect_rest("result and address")?;
            let (result, address) = if dialect.tx_result_before_address() {
                let mut f = Fields::new(rest);
                let result = f.expect("result")?;
                (result, f.rest_or_empty())
            } else {
                let (address, result) =
                    split_last(rest).ok_or(ParseError::MissingField("result"))?;
                (result, address)
            };
            let result = TxResult::parse(result)?;
            if kind == EventKind::TxMail {
                Event::TxMail {
                    message,
                    result,
                    address,
                }
            } else {
                Event::TxRcpt {
                    message,
                    result,
                    address,
                }
            }
        }
        EventKind::TxEnvelope => {
            let message = message_id(f.expect("message id")?)?;
            let envelope =
                EnvelopeId::parse(f.expect("envelope id")?).ok_or(ParseError::BadEnvelopeId)?;
            f.finish()?;
            Event::TxEnvelope { message, envelope }
        }
        EventKind::TxData => {
            let message = message_id(f.expect("message id")?)?;
            let result = TxResult::parse(f.expect("result")?)?;
            f.finish()?;
            Event::TxData { message, result }
        }
        EventKind::TxCommit => {
            let message = message_id(f.expect("message id")?)?;
            let size = parse_decimal(f.expect("size")?).ok_or(ParseError::BadNumber)?;
            f.finish()?;
            Event::TxCommit { message, size }
        }
        EventKind::ProtocolClient => Event::ProtocolClient {
            command: f.rest_or_empty(),
        },
        EventKind::ProtocolServer => Event::ProtocolServer {
            response: f.rest_or_empty(),
        },
        EventKind::FilterReport => {
            let kind = f.expect("filter kind")?;
            let name = f.expect("filter name")?;
            Event::FilterReport {
                kind,
                name,
                message: f.rest_or_empty(),
            }
        }
        EventKind::FilterResponse => {
            let phase = f.expect("phase")?;
            let response = f.expect("response")?;
            Event::FilterResponse {
                phase,
                response,
                param: f.rest(),
            }
        }
    };
    Ok(event)
}

/// Parses the part of a report line after `report|`.
pub(crate) fn parse_report(rest: &[u8]) -> Result<Report<'_>, ParseError> {
    let mut f = Fields::new(rest);
    let version = Version::parse(f.expect("version")?).ok_or(ParseError::BadVersion)?;
    let timestamp = Timestamp::parse(f.expect("timestamp")?).ok_or(ParseError::BadTimestamp)?;
    let subsystem = Subsystem::parse(f.expect("subsystem")?).ok_or(ParseError::UnknownSubsystem)?;
    let kind = EventKind::parse(f.expect("event")?).ok_or(ParseError::UnknownEvent)?;
    let session = SessionId::parse(f.expect("session id")?).ok_or(ParseError::BadSessionId)?;
    let event = parse_event(kind, f.rest(), version.dialect())?;
    Ok(Report {
        version,
        timestamp,
        subsystem,
        session,
        event,
    })
}
