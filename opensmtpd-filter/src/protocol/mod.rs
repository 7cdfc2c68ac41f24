//! The protocol core: pure, no I/O, no async, no allocation on the parse path.
//!
//! [`parse_line`] turns one line from smtpd into an [`Input`] whose fields borrow from
//! the line (httparse-style); answers are written into a caller's buffer through
//! [`Ticket`]s made from the requests, so they can only carry what smtpd sent and can
//! only say what smtpd accepts. The [`runtime`](crate::runtime) moves the bytes; this
//! module decides what they mean.
//!
//! Field orders differ between protocol versions (0.4 to 0.7); the parser reads the
//! version from each line and hands out the same typed values whatever the order on
//! the wire. See [`Dialect`] for every difference, in one place.

mod answer;
mod dataline;
mod fields;
mod handshake;
mod ids;
mod input;
mod register;
mod reply;
mod report;
mod request;
mod version;

pub use answer::{
    AnswerRules, CommitDecision, CommitTicket, DataTicket, Decision, DecisionTicket, EncodeError,
    LongLines, MAX_ANSWER_LINE, MAX_ANSWER_LINE_LEGACY, Ticket, line_too_long_reply,
};
pub use dataline::{is_end_of_message, stuff_into, stuffed_len, unstuff};
pub use fields::{ParseError, Subsystem, Timestamp};
pub use handshake::{ConfigLine, Handshake};
pub use ids::{EnvelopeId, MessageId, SessionId, Token};
pub use input::{Input, describe_line, parse_line};
pub use register::Interest;
pub use reply::{MAX_PARAMETER_LEN, MAX_REPLY_LEN, Parameter, SmtpReply, ValueError};
pub use report::{Address, AuthResult, Event, EventKind, Fcrdns, Report, TxResult, parse_ip};
pub use request::{AuthParam, Client, FilterRequest, Phase, Request};
pub use version::{Dialect, Version};
