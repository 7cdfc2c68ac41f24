//! Hex identifiers: sessions, tokens, messages and envelopes.
//!
//! smtpd writes session ids and tokens as 16 hex digits and parses answers with
//! `strtoull(.., 16)`; anything that is not hex in an answer makes it exit. These
//! newtypes can only be built from hex input or from a number, and always print as
//! lowercase hex, so an answer can never carry a malformed id.

use core::fmt;

fn parse_hex_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in text {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $int:ty, $width:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($int);

        impl $name {
            /// Parses hex digits (either case, at most the type's width).
            pub fn parse(text: &[u8]) -> Option<Self> {
                if text.len() > $width {
                    return None;
                }
                parse_hex_u64(text).map(|v| $name(v as $int))
            }

            /// Wraps a number.
            pub const fn new(value: $int) -> Self {
                $name(value)
            }

            /// The number.
            pub const fn get(self) -> $int {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", stringify!($width), "x}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

hex_id!(
    /// A session id (smtpd's `reqid`), 64 bits.
    SessionId, u64, 16
);
hex_id!(
    /// A request token, 64 bits. Tokens are not unique across sessions: smtpd uses one
    /// token per (filter chain entry, phase), so a pending request is identified by
    /// the pair (session, token).
    Token, u64, 16
);
hex_id!(
    /// A message id within a session (`tx-begin` and friends), 32 bits.
    MessageId, u32, 8
);
hex_id!(
    /// An envelope id (`tx-envelope`), 64 bits.
    EnvelopeId, u64, 16
);

/// Writes `value` as 16 lowercase hex digits; the hot path of every answer.
pub(crate) fn push_hex16(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, slot) in buf.iter_mut().enumerate() {
        *slot = DIGITS[((value >> ((15 - i) * 4)) & 0xf) as usize];
    }
    out.extend_from_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let sid = SessionId::parse(b"0123456789abcdef").unwrap();
        assert_eq!(sid.get(), 0x0123_4567_89ab_cdef);
        assert_eq!(sid.to_string(), "0123456789abcdef");
        assert_eq!(
            SessionId::parse(b"ABC").unwrap().to_string(),
            "0000000000000abc"
        );
        assert_eq!(
            MessageId::parse(b"1a2b3c4d").unwrap().to_string(),
            "1a2b3c4d"
        );
        assert!(MessageId::parse(b"1a2b3c4d5").is_none());
        for bad in [
            &b""[..],
            b"xyz",
            b"12 4",
            b"0x12",
            b"-1",
            b"11111111111111111",
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
        let mut out = Vec::new();
        push_hex16(&mut out, 0xdead_beef);
        assert_eq!(out, b"00000000deadbeef");
    }
}
