//! Hex identifiers: sessions, tokens, messages and envelopes.
//!
//! smtpd writes session ids and tokens as 16 hex digits and parses answers with
//! `strtoull(.., 16)`; anything that is not hex in an answer makes it exit. These
//! newtypes can only be built from hex input or from a number, and always print as
//! lowercase hex, so an answer can never carry a malformed id.

use core::fmt;

/// Hex digit values; 0xff marks a byte that is not a hex digit.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn parse_hex_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    // Branch-free per digit: every id of every line goes through here.
    let mut value: u64 = 0;
    let mut invalid = 0u8;
    for &b in text {
        let digit = HEX_VALUE[b as usize];
        invalid |= digit & 0xf0;
        value = (value << 4) | u64::from(digit & 0x0f);
    }
    (invalid == 0).then_some(value)
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

/// Two lowercase hex digits per byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// Writes `value` as 16 lowercase hex digits; the hot path of every answer.
pub(crate) fn push_hex16(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; 16];
    for (i, byte) in value.to_be_bytes().iter().enumerate() {
        buf[2 * i..2 * i + 2].copy_from_slice(&HEX_PAIRS[*byte as usize]);
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
