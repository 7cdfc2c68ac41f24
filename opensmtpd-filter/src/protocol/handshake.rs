//! The config handshake smtpd sends before anything else.

use super::fields::{Fields, ParseError, Subsystem, parse_decimal};
use super::version::Version;

/// One `config|KEY|VALUE` line. Unknown keys are kept, never an error: each release
/// adds some (`admd` in 6.8, `protocol` in 7.6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ConfigLine<'a> {
    /// `config|smtpd-version|7.4.0-portable`.
    SmtpdVersion(&'a [u8]),
    /// `config|protocol|0.7` (7.6 and later only: never rely on it).
    Protocol(Version),
    /// `config|smtp-session-timeout|300` (seconds).
    SessionTimeout(u64),
    /// `config|subsystem|smtp-in`.
    Subsystem(Subsystem),
    /// `config|admd|NAME`: the authserv-id for Authentication-Results.
    Admd(&'a [u8]),
    /// `config|ready`: the handshake is over; the filter registers now.
    Ready,
    /// Any other key, or a known key with a value we could not read.
    Other {
        /// The key.
        key: &'a [u8],
        /// The value, if the line had one.
        value: Option<&'a [u8]>,
    },
}

pub(crate) fn parse_config(rest: &[u8]) -> Result<ConfigLine<'_>, ParseError> {
    let mut f = Fields::new(rest);
    let key = f.expect("config key")?;
    let value = f.rest();
    let other = ConfigLine::Other { key, value };
    Ok(match (key, value) {
        (b"ready", None) => ConfigLine::Ready,
        (b"smtpd-version", Some(v)) => ConfigLine::SmtpdVersion(v),
        (b"protocol", Some(v)) => Version::parse(v).map_or(other, ConfigLine::Protocol),
        (b"smtp-session-timeout", Some(v)) => {
            parse_decimal(v).map_or(other, ConfigLine::SessionTimeout)
        }
        (b"subsystem", Some(v)) => Subsystem::parse(v).map_or(other, ConfigLine::Subsystem),
        (b"admd", Some(v)) => ConfigLine::Admd(v),
        _ => other,
    })
}

/// What the handshake told us, gathered line by line (owned: it outlives the lines).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Handshake {
    /// `smtpd-version`, as sent.
    pub smtpd_version: Option<String>,
    /// `protocol` (7.6 and later).
    pub protocol: Option<Version>,
    /// `smtp-session-timeout` in seconds.
    pub session_timeout: Option<u64>,
    /// `subsystem` lines.
    pub subsystems: Vec<Subsystem>,
    /// `admd`.
    pub admd: Option<String>,
    /// Keys we do not know, with their values.
    pub other: Vec<(String, Option<String>)>,
    /// Whether `config|ready` was seen.
    pub ready: bool,
}

impl Handshake {
    /// Takes one config line into account.
    pub fn apply(&mut self, line: &ConfigLine<'_>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match *line {
            ConfigLine::SmtpdVersion(v) => self.smtpd_version = Some(text(v)),
            ConfigLine::Protocol(v) => self.protocol = Some(v),
            ConfigLine::SessionTimeout(t) => self.session_timeout = Some(t),
            ConfigLine::Subsystem(s) => {
                if !self.subsystems.contains(&s) {
                    self.subsystems.push(s);
                }
            }
            ConfigLine::Admd(v) => self.admd = Some(text(v)),
            ConfigLine::Ready => self.ready = true,
            ConfigLine::Other { key, value } => self.other.push((text(key), value.map(text))),
        }
    }

    /// The smtpd release as `(major, minor, patch)`, read from `smtpd-version`
    /// (`7.4.0-portable`, `6.8.0p2`).
    pub fn smtpd_release(&self) -> Option<(u32, u32, u32)> {
        let v = self.smtpd_version.as_deref()?;
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some((major, minor, patch))
    }

    /// Whether smtpd accepts the `report` decision: OpenSMTPD 7.6 and later (the same
    /// releases that send `config|protocol`). Before, it makes smtpd exit.
    pub fn allows_report_decision(&self) -> bool {
        self.protocol.is_some() || self.smtpd_release().is_some_and(|r| r >= (7, 6, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        assert_eq!(parse_config(b"ready"), Ok(ConfigLine::Ready));
        assert_eq!(
            parse_config(b"smtpd-version|6.8.0p2"),
            Ok(ConfigLine::SmtpdVersion(b"6.8.0p2"))
        );
        assert_eq!(
            parse_config(b"protocol|0.7"),
            Ok(ConfigLine::Protocol(Version::V0_7))
        );
        assert_eq!(
            parse_config(b"smtp-session-timeout|300"),
            Ok(ConfigLine::SessionTimeout(300))
        );
        assert_eq!(
            parse_config(b"subsystem|smtp-out"),
            Ok(ConfigLine::Subsystem(Subsystem::SmtpOut))
        );
        assert_eq!(
            parse_config(b"admd|mx.example|x"),
            Ok(ConfigLine::Admd(b"mx.example|x"))
        );
        assert_eq!(
            parse_config(b"future-key|v"),
            Ok(ConfigLine::Other {
                key: b"future-key",
                value: Some(b"v")
            })
        );
        assert_eq!(
            parse_config(b"protocol|zero"),
            Ok(ConfigLine::Other {
                key: b"protocol",
                value: Some(b"zero")
            })
        );
    }

    #[test]
    fn report_decision_needs_7_6() {
        let mut hs = Handshake::default();
        hs.apply(&ConfigLine::SmtpdVersion(b"7.4.0-portable"));
        assert_eq!(hs.smtpd_release(), Some((7, 4, 0)));
        assert!(!hs.allows_report_decision());
        hs.smtpd_version = Some("7.6.0".into());
        assert!(hs.allows_report_decision());
        let mut hs = Handshake::default();
        hs.apply(&ConfigLine::SmtpdVersion(b"6.8.0p2"));
        assert_eq!(hs.smtpd_release(), Some((6, 8, 0)));
        assert!(!hs.allows_report_decision());
        hs.apply(&ConfigLine::Protocol(Version::V0_7));
        assert!(hs.allows_report_decision());
    }
}
