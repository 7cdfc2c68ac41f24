//! Protocol versions and the field-order rules that depend on them.

use core::fmt;

/// A filter-protocol version as smtpd writes it in field 2 of every line (`0.7`).
///
/// Versions compare numerically, component by component, so `0.10 > 0.9`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Version {
    major: u16,
    minor: u16,
}

impl Version {
    /// 0.4: OpenSMTPD 6.6.x. Replies put the token before the session id.
    pub const V0_4: Version = Version::new(0, 4);
    /// 0.5: OpenBSD-current between 6.6 and 6.7 only. Session id first in replies.
    pub const V0_5: Version = Version::new(0, 5);
    /// 0.6: OpenSMTPD 6.7 – 7.3. `tx-mail`/`tx-rcpt` carry the result before the address.
    pub const V0_6: Version = Version::new(0, 6);
    /// 0.7: OpenSMTPD 7.4 and later. `link-auth` carries the result before the user name.
    pub const V0_7: Version = Version::new(0, 7);

    /// The oldest version whose rules we know.
    pub const OLDEST_KNOWN: Version = Version::V0_4;
    /// The newest version whose rules we know.
    pub const NEWEST_KNOWN: Version = Version::V0_7;

    /// Builds a version from its two components.
    pub const fn new(major: u16, minor: u16) -> Version {
        Version { major, minor }
    }

    /// Parses `MAJOR.MINOR` (decimal, no sign, no spaces, at most 5 digits each).
    pub fn parse(text: &[u8]) -> Option<Version> {
        let dot = text.iter().position(|&b| b == b'.')?;
        Some(Version {
            major: parse_component(&text[..dot])?,
            minor: parse_component(&text[dot + 1..])?,
        })
    }

    /// The major component.
    pub const fn major(self) -> u16 {
        self.major
    }

    /// The minor component.
    pub const fn minor(self) -> u16 {
        self.minor
    }

    /// Whether this version's rules are known exactly (0.4 to 0.7). Lines of other
    /// versions are parsed by the nearest known rules; the runtime warns once.
    pub fn is_known(self) -> bool {
        (Version::OLDEST_KNOWN..=Version::NEWEST_KNOWN).contains(&self)
    }

    /// The field-order rules for lines of this version.
    pub fn dialect(self) -> Dialect {
        Dialect { version: self }
    }
}

fn parse_component(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut value: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).ok()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The field-order rules of one protocol version, in one place.
///
/// Versions older than 0.4 follow the 0.4 rules and versions newer than 0.7 the 0.7
/// rules: that is the best guess for a daemon we have never seen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Dialect {
    version: Version,
}

impl Dialect {
    /// The version these rules were derived from.
    pub fn version(self) -> Version {
        self.version
    }

    /// Up to 0.4, answers are `filter-result|TOKEN|SESSION|...`; from 0.5 on
    /// `filter-result|SESSION|TOKEN|...` (the same for `filter-dataline`).
    pub fn token_first_in_answers(self) -> bool {
        self.version < Version::V0_5
    }

    /// From 0.6 on, `tx-mail` and `tx-rcpt` are `msgid|result|address`; before,
    /// `msgid|address|result`.
    pub fn tx_result_before_address(self) -> bool {
        self.version >= Version::V0_6
    }

    /// From 0.7 on, `link-auth` is `result|username`; before, `username|result`.
    pub fn auth_result_before_user(self) -> bool {
        self.version >= Version::V0_7
    }

    /// Before 0.7 (OpenSMTPD up to 7.3), smtpd copies each answer line into a
    /// `LINE_MAX` (2048) buffer and silently cuts what does not fit: a returned data
    /// line loses everything past 1,997 bytes.
    pub fn truncates_answers(self) -> bool {
        self.version < Version::V0_7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares_numerically() {
        let v = |s: &str| Version::parse(s.as_bytes()).unwrap();
        assert_eq!(v("0.7"), Version::V0_7);
        assert!(v("0.10") > v("0.9"));
        assert!(v("1.0") > v("0.99"));
        assert_eq!(v("0.7").to_string(), "0.7");
        for bad in [
            "", "0", ".7", "0.", "0.7.1", "a.b", "0.-1", "0. 7", "0.70000", "+0.7",
        ] {
            assert_eq!(Version::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn dialect_rules_per_version() {
        let d4 = Version::V0_4.dialect();
        let d5 = Version::V0_5.dialect();
        let d6 = Version::V0_6.dialect();
        let d7 = Version::V0_7.dialect();
        assert!(d4.token_first_in_answers() && !d5.token_first_in_answers());
        assert!(!d5.tx_result_before_address() && d6.tx_result_before_address());
        assert!(!d6.auth_result_before_user() && d7.auth_result_before_user());
        assert!(d6.truncates_answers() && !d7.truncates_answers());
        let future = Version::new(0, 12).dialect();
        assert!(future.auth_result_before_user() && !future.token_first_in_answers());
        assert!(!Version::new(0, 12).is_known() && Version::V0_5.is_known());
    }
}
