//! Filter requests: what smtpd asks a filter to decide on.

use core::fmt;
use std::net::IpAddr;

use super::fields::{Fields, ParseError, Subsystem, Timestamp};
use super::ids::{SessionId, Token};
use super::report::parse_ip;
use super::version::Version;

macro_rules! phases {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The 15 filter phases of `smtp-in`.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        pub enum Phase {
            $($(#[$doc])* $variant,)*
        }

        impl Phase {
            /// Every phase, in the order of smtpd's table.
            pub const ALL: [Phase; 15] = [$(Phase::$variant,)*];

            /// The phase's name on the wire (in requests and `register|filter|` lines).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Phase::$variant => $name,)*
                }
            }

            /// Parses a phase name.
            pub fn parse(name: &[u8]) -> Option<Phase> {
                // A literal match compiles to a length switch and one comparison.
                Some(match name {
                    b"connect" => Phase::Connect,
                    b"helo" => Phase::Helo,
                    b"ehlo" => Phase::Ehlo,
                    b"starttls" => Phase::Starttls,
                    b"auth" => Phase::Auth,
                    b"mail-from" => Phase::MailFrom,
                    b"rcpt-to" => Phase::RcptTo,
                    b"data" => Phase::Data,
                    b"data-line" => Phase::DataLine,
                    b"rset" => Phase::Rset,
                    b"quit" => Phase::Quit,
                    b"noop" => Phase::Noop,
                    b"help" => Phase::Help,
                    b"wiz" => Phase::Wiz,
                    b"commit" => Phase::Commit,
                    _ => return None,
                })
            }
        }
    };
}

phases! {
    /// A client connected (`rdns|address`).
    Connect = "connect",
    /// HELO.
    Helo = "helo",
    /// EHLO.
    Ehlo = "ehlo",
    /// STARTTLS.
    Starttls = "starttls",
    /// AUTH (the parameter carries the client's credentials).
    Auth = "auth",
    /// MAIL FROM.
    MailFrom = "mail-from",
    /// RCPT TO.
    RcptTo = "rcpt-to",
    /// DATA.
    Data = "data",
    /// One line of the message, answered with data lines instead of a decision.
    DataLine = "data-line",
    /// RSET.
    Rset = "rset",
    /// QUIT.
    Quit = "quit",
    /// NOOP.
    Noop = "noop",
    /// HELP (registered, never queried by smtpd).
    Help = "help",
    /// WIZ (registered, never queried by smtpd).
    Wiz = "wiz",
    /// The end of DATA, after the final `.`: the last chance to refuse the message.
    Commit = "commit",
}

#[test]
fn phase_names_round_trip() {
    for p in Phase::ALL {
        assert_eq!(Phase::parse(p.as_str().as_bytes()), Some(p));
    }
    assert_eq!(Phase::parse(b"data-lin"), None);
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `filter|VERSION|TIMESTAMP|smtp-in|PHASE|SESSION|TOKEN|params`, parsed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FilterRequest<'a> {
    /// The protocol version of this line.
    pub version: Version,
    /// When smtpd wrote it.
    pub timestamp: Timestamp,
    /// The session it is about.
    pub session: SessionId,
    /// The token the answer must carry.
    pub token: Token,
    /// The phase and its parameter.
    pub request: Request<'a>,
}

/// Where a client connected from, as the `connect` request gives it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Client<'a> {
    /// A network client.
    Ip(IpAddr),
    /// A local submission through the unix socket (`local`).
    Local,
    /// Anything else, kept as smtpd wrote it.
    Other(&'a [u8]),
}

/// The parameter of an `auth` request: the AUTH command's arguments verbatim.
///
/// The initial response of `AUTH PLAIN` carries the client's password (base64, not
/// masked by smtpd). `Debug` prints only the mechanism, so that logging a request can
/// never leak it; read the response on purpose with [`AuthParam::initial_response`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthParam<'a> {
    raw: &'a [u8],
}

impl<'a> AuthParam<'a> {
    /// Wraps the raw parameter.
    pub fn new(raw: &'a [u8]) -> Self {
        AuthParam { raw }
    }

    /// The SASL mechanism (`PLAIN`, `LOGIN`, ...): the first word.
    pub fn mechanism(&self) -> &'a [u8] {
        match self.separator() {
            Some(i) => &self.raw[..i],
            None => self.raw,
        }
    }

    /// The initial response after the mechanism, if any. Secret: never log it.
    pub fn initial_response(&self) -> Option<&'a [u8]> {
        self.separator().map(|i| &self.raw[i + 1..])
    }

    /// smtpd splits the AUTH arguments at a space or a tab.
    fn separator(&self) -> Option<usize> {
        self.raw.iter().position(|&b| b == b' ' || b == b'\t')
    }

    /// The whole parameter. Secret: never log it.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl fmt::Debug for AuthParam<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthParam")
            .field("mechanism", &String::from_utf8_lossy(self.mechanism()))
            .field(
                "initial_response",
                &self.initial_response().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A filter request's phase and parameter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request<'a> {
    /// `connect|rdns|address`: two fields, not the four of the man page.
    Connect {
        /// The client's reverse DNS name.
        rdns: &'a [u8],
        /// The client address.
        client: Client<'a>,
    },
    /// `helo|identity`.
    Helo {
        /// The name the client gave.
        identity: &'a [u8],
    },
    /// `ehlo|identity`.
    Ehlo {
        /// The name the client gave.
        identity: &'a [u8],
    },
    /// `starttls|`.
    Starttls,
    /// `auth|MECHANISM [initial-response]`.
    Auth(AuthParam<'a>),
    /// `mail-from|address`: the bare address, empty for the null sender.
    MailFrom {
        /// The sender.
        address: &'a [u8],
    },
    /// `rcpt-to|address`.
    RcptTo {
        /// The recipient.
        address: &'a [u8],
    },
    /// `data|`.
    Data,
    /// `data-line|line`: one line, dot-stuffed as on the wire; `.` alone ends the message.
    DataLine {
        /// The raw line (bytes, not necessarily UTF-8).
        line: &'a [u8],
    },
    /// `rset|`.
    Rset,
    /// `quit|`.
    Quit,
    /// `noop|`.
    Noop,
    /// `help|`.
    Help,
    /// `wiz|`.
    Wiz,
    /// `commit|`.
    Commit,
}

impl Request<'_> {
    /// The phase of this request.
    pub fn phase(&self) -> Phase {
        match self {
            Request::Connect { .. } => Phase::Connect,
            Request::Helo { .. } => Phase::Helo,
            Request::Ehlo { .. } => Phase::Ehlo,
            Request::Starttls => Phase::Starttls,
            Request::Auth(_) => Phase::Auth,
            Request::MailFrom { .. } => Phase::MailFrom,
            Request::RcptTo { .. } => Phase::RcptTo,
            Request::Data => Phase::Data,
            Request::DataLine { .. } => Phase::DataLine,
            Request::Rset => Phase::Rset,
            Request::Quit => Phase::Quit,
            Request::Noop => Phase::Noop,
            Request::Help => Phase::Help,
            Request::Wiz => Phase::Wiz,
            Request::Commit => Phase::Commit,
        }
    }
}

/// Parses the part of a filter line after `filter|`.
pub(crate) fn parse_request(rest: &[u8]) -> Result<FilterRequest<'_>, ParseError> {
    let mut f = Fields::new(rest);
    let version = Version::parse(f.expect("version")?).ok_or(ParseError::BadVersion)?;
    let timestamp = Timestamp::parse(f.expect("timestamp")?).ok_or(ParseError::BadTimestamp)?;
    // Data lines are nine in ten of all lines: read their fixed-width part directly.
    if let Some(after) = f.rest().and_then(|r| r.strip_prefix(b"smtp-in|data-line|")) {
        if after.len() >= 34 && after[16] == b'|' && after[33] == b'|' {
            if let (Some(session), Some(token)) =
                (SessionId::parse(&after[..16]), Token::parse(&after[17..33]))
            {
                let request = Request::DataLine { line: &after[34..] };
                return Ok(FilterRequest {
                    version,
                    timestamp,
                    session,
                    token,
                    request,
                });
            }
        }
    }
    if Subsystem::parse(f.expect("subsystem")?) != Some(Subsystem::SmtpIn) {
        return Err(ParseError::UnknownSubsystem);
    }
    let phase = Phase::parse(f.expect("phase")?).ok_or(ParseError::UnknownPhase)?;
    let session = SessionId::parse(f.expect("session id")?).ok_or(ParseError::BadSessionId)?;
    let token = Token::parse(f.expect("token")?).ok_or(ParseError::BadToken)?;
    let request = match phase {
        Phase::DataLine => Request::DataLine {
            line: f.expect_rest("data line")?,
        },
        Phase::Connect => {
            let mut f = Fields::new(f.expect_rest("rdns")?);
            let rdns = f.expect("rdns")?;
            let addr = f.expect_rest("client address")?;
            let client = if addr == b"local" {
                Client::Local
            } else {
                parse_ip(addr).map_or(Client::Other(addr), Client::Ip)
            };
            Request::Connect { rdns, client }
        }
        Phase::Helo => Request::Helo {
            identity: f.expect_rest("identity")?,
        },
        Phase::Ehlo => Request::Ehlo {
            identity: f.expect_rest("identity")?,
        },
        Phase::Auth => Request::Auth(AuthParam::new(f.expect_rest("auth parameter")?)),
        Phase::MailFrom => Request::MailFrom {
            address: f.expect_rest("address")?,
        },
        Phase::RcptTo => Request::RcptTo {
            address: f.expect_rest("address")?,
        },
        // These carry an empty parameter; whatever smtpd might put there is ignored.
        Phase::Starttls => Request::Starttls,
        Phase::Data => Request::Data,
        Phase::Rset => Request::Rset,
        Phase::Quit => Request::Quit,
        Phase::Noop => Request::Noop,
        Phase::Help => Request::Help,
        Phase::Wiz => Request::Wiz,
        Phase::Commit => Request::Commit,
    };
    Ok(FilterRequest {
        version,
        timestamp,
        session,
        token,
        request,
    })
}
