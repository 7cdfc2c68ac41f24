//! Values that go into answers, validated when they are built.

use core::fmt;

/// The longest SMTP reply line we send (RFC 5321: 512 bytes with CRLF).
pub const MAX_REPLY_LEN: usize = 510;

/// The longest `rewrite`/`report` parameter we send. With it every `filter-result` line
/// stays under the 2,047 bytes OpenSMTPD before 7.4 reads, so nothing is ever cut.
pub const MAX_PARAMETER_LEN: usize = 1000;

/// Why a reply or parameter was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ValueError {
    /// The reply code is not 4xx or 5xx.
    CodeNotRefusal,
    /// A reply must be `CODE SP text` with some text.
    MissingText,
    /// CR, LF or NUL (or, in a reply, another control or non-ASCII byte).
    ForbiddenByte,
    /// Empty parameter.
    Empty,
    /// Longer than the limit.
    TooLong,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueError::CodeNotRefusal => "reply code must be 4xx or 5xx",
            ValueError::MissingText => "reply must be a 3-digit code, a space and some text",
            ValueError::ForbiddenByte => "control, non-ASCII, CR, LF or NUL byte",
            ValueError::Empty => "empty parameter",
            ValueError::TooLong => "too long",
        })
    }
}

impl std::error::Error for ValueError {}

/// A refusal: a single-line SMTP reply whose code is 4xx or 5xx, with text of printable
/// ASCII, at most [`MAX_REPLY_LEN`] bytes. A value of this type is always a valid
/// `reject`/`disconnect` parameter (smtpd turns an invalid one into 421 and drops the
/// client).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SmtpReply(String);

impl SmtpReply {
    /// Builds `CODE text`. `text` may start with an enhanced status code (`5.7.1 ...`).
    ///
    /// ```
    /// use opensmtpd_filter::protocol::SmtpReply;
    /// let r = SmtpReply::new(451, "4.7.1 Greylisted, retry later").unwrap();
    /// assert_eq!(r.as_str(), "451 4.7.1 Greylisted, retry later");
    /// assert!(SmtpReply::new(250, "ok").is_err());
    /// assert!(SmtpReply::new(550, "bad\r\nDATA").is_err());
    /// ```
    pub fn new(code: u16, text: &str) -> Result<SmtpReply, ValueError> {
        if !(400..600).contains(&code) {
            return Err(ValueError::CodeNotRefusal);
        }
        Self::parse(&format!("{code} {text}"))
    }

    /// Validates a whole reply line such as `550 5.7.1 Go away`.
    pub fn parse(line: &str) -> Result<SmtpReply, ValueError> {
        let b = line.as_bytes();
        if b.len() > MAX_REPLY_LEN {
            return Err(ValueError::TooLong);
        }
        if !line
            .bytes()
            .all(|c| c == b'\t' || (b' '..=b'~').contains(&c))
        {
            return Err(ValueError::ForbiddenByte);
        }
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(ValueError::MissingText);
        }
        if b[0] != b'4' && b[0] != b'5' {
            return Err(ValueError::CodeNotRefusal);
        }
        if b.len() < 5 || b[3] != b' ' || b[4..].iter().all(|&c| c == b' ' || c == b'\t') {
            return Err(ValueError::MissingText);
        }
        Ok(SmtpReply(line.to_owned()))
    }

    /// Builds `CODE text` from untrusted text (a backend's message): control and
    /// non-ASCII bytes become `?`, the result is cut to fit, and empty text becomes
    /// `fallback`.
    pub fn sanitized(code: u16, text: &[u8], fallback: &str) -> Result<SmtpReply, ValueError> {
        let mut clean: String = text
            .iter()
            .map(|&c| {
                if (b' '..=b'~').contains(&c) {
                    c as char
                } else {
                    '?'
                }
            })
            .collect();
        // Cut first, then look for text: a cut can leave only blanks.
        clean.truncate(MAX_REPLY_LEN - 4);
        if clean.trim().is_empty() {
            clean = fallback.to_owned();
        }
        Self::new(code, &clean)
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        self.0[..3].parse().unwrap_or(451)
    }

    /// Whether smtpd will drop the client after sending it (code 421).
    pub fn disconnects(&self) -> bool {
        self.0.starts_with("421")
    }

    /// The whole line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpReply({:?})", self.0)
    }
}

/// The parameter of a `rewrite` or `report` decision: non-empty bytes without CR, LF
/// or NUL, at most [`MAX_PARAMETER_LEN`]. `|` is allowed (it is the last field).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Parameter(Vec<u8>);

impl Parameter {
    /// Validates a parameter.
    pub fn new(value: impl Into<Vec<u8>>) -> Result<Parameter, ValueError> {
        let value = value.into();
        if value.is_empty() {
            return Err(ValueError::Empty);
        }
        if value.len() > MAX_PARAMETER_LEN {
            return Err(ValueError::TooLong);
        }
        if value.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
            return Err(ValueError::ForbiddenByte);
        }
        Ok(Parameter(value))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parameter({:?})", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert!(SmtpReply::parse("550 5.7.1 no").is_ok());
        assert!(SmtpReply::parse("421 bye").unwrap().disconnects());
        assert_eq!(SmtpReply::parse("451 x").unwrap().code(), 451);
        for bad in [
            "",
            "550",
            "550 ",
            "550-x",
            "250 ok",
            "5x0 y",
            "650 y",
            "550  ",
            "550 a\rb",
            "550 caf\u{e9}",
        ] {
            assert!(SmtpReply::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SmtpReply::parse(&format!("550 {}", "a".repeat(600))),
            Err(ValueError::TooLong)
        );
        let s = SmtpReply::sanitized(550, b"spam\r\n\xe9 here", "rejected").unwrap();
        assert_eq!(s.as_str(), "550 spam??? here");
        assert_eq!(
            SmtpReply::sanitized(451, b"  ", "try later")
                .unwrap()
                .as_str(),
            "451 try later"
        );
        assert_eq!(
            SmtpReply::sanitized(451, &[b'x'; 2000], "-")
                .unwrap()
                .as_str()
                .len(),
            510
        );
    }

    #[test]
    fn sanitized_falls_back_when_the_cut_leaves_blanks() {
        let blanks_then_text = [&[b' '; 506][..], b"x"].concat();
        assert_eq!(
            SmtpReply::sanitized(550, &blanks_then_text, "no")
                .unwrap()
                .as_str(),
            "550 no"
        );
    }

    #[test]
    fn parameters() {
        assert!(Parameter::new("a|b@example.org").is_ok());
        assert_eq!(Parameter::new(""), Err(ValueError::Empty));
        assert_eq!(Parameter::new("a\nb"), Err(ValueError::ForbiddenByte));
        assert_eq!(Parameter::new(vec![b'a'; 1001]), Err(ValueError::TooLong));
    }
}
