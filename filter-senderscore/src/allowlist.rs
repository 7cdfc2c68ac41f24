//! The allowlist: addresses and networks whose clients are never looked up, slowed,
//! junked or blocked.
//!
//! File format (the Go filter's): one IPv4/IPv6 address or CIDR network per line,
//! `#` starts a comment, blank lines are ignored. Unlike the Go filter, a bad line is
//! an error that names the file and the line, and IPv6 works.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// A parsed allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    nets: Vec<IpNet>,
}

/// Why an allowlist could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum AllowlistError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A line is not an address or network.
    Line {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// The text of the entry.
        text: String,
    },
}

impl fmt::Display for AllowlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowlistError::Read { path, reason } => {
                write!(f, "cannot read allowlist {}: {reason}", path.display())
            }
            AllowlistError::Line { path, line, text } => write!(
                f,
                "allowlist {} line {line}: {text:?} is not an IP address or CIDR network",
                path.display()
            ),
        }
    }
}

impl std::error::Error for AllowlistError {}

impl Allowlist {
    /// Parses the text of an allowlist file; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Allowlist, AllowlistError> {
        let mut nets = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let net = entry
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| AllowlistError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: entry.chars().take(100).collect(),
                })?;
            nets.push(net);
        }
        Ok(Allowlist {
            nets: IpNet::aggregate(&nets),
        })
    }

    /// Reads and parses an allowlist file.
    pub fn load(path: &Path) -> Result<Allowlist, AllowlistError> {
        let bytes = std::fs::read(path).map_err(|e| AllowlistError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        Allowlist::parse(&text, path)
    }

    /// Whether `ip` is allowlisted. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The number of networks (after merging adjacent and overlapping ones).
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// The allowlist in force, replaced as a whole on SIGHUP while sessions read it.
#[derive(Debug, Default)]
pub struct SharedAllowlist {
    current: std::sync::RwLock<std::sync::Arc<Allowlist>>,
}

impl SharedAllowlist {
    /// Starts with `list`.
    pub fn new(list: Allowlist) -> Self {
        SharedAllowlist {
            current: std::sync::RwLock::new(std::sync::Arc::new(list)),
        }
    }

    /// The list in force now.
    pub fn get(&self) -> std::sync::Arc<Allowlist> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        std::sync::Arc::clone(&guard)
    }

    /// Puts `list` in force.
    pub fn set(&self, list: Allowlist) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = std::sync::Arc::new(list);
    }

    /// Reads `path` again and puts it in force; on error the list in force stays and
    /// the error is returned.
    pub fn reload(&self, path: &Path) -> Result<usize, AllowlistError> {
        let list = Allowlist::load(path)?;
        let n = list.len();
        self.set(list);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Allowlist, AllowlistError> {
        Allowlist::parse(text, Path::new("/etc/allow"))
    }

    #[test]
    fn addresses_networks_comments() {
        let list = parse(
            "# trusted relays\n\
             192.0.2.7\n\
             \n\
             198.51.100.0/24   # partner\n\
             10.1.2.3/8\n\
             2001:db8::/32\n\
             ::1\n",
        )
        .unwrap();
        let has = |s: &str| list.contains(s.parse().unwrap());
        assert!(has("192.0.2.7"));
        assert!(!has("192.0.2.8"));
        assert!(has("198.51.100.200"));
        assert!(has("10.200.0.1"), "host bits of a network are dropped");
        assert!(has("2001:db8:1::5"));
        assert!(has("::1"));
        assert!(!has("2001:db9::1"));
        assert!(has("::ffff:192.0.2.7"));
        assert!(!list.is_empty());
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let err = parse("192.0.2.1\n# ok\n192.0.2.300\n").unwrap_err();
        assert_eq!(
            err,
            AllowlistError::Line {
                path: "/etc/allow".into(),
                line: 3,
                text: "192.0.2.300".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "allowlist /etc/allow line 3: \"192.0.2.300\" is not an IP address or CIDR network"
        );
        assert!(parse("192.0.2.0/33").is_err());
        assert!(parse("example.org").is_err());
    }

    #[test]
    fn empty_and_missing() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# nothing\n   \n").unwrap().is_empty());
        let err = Allowlist::load(Path::new("/nonexistent/allowlist")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read allowlist /nonexistent/allowlist:")
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        for text in [
            "\u{0}\u{1}",
            "/",
            "1.2.3.4/",
            "::/",
            "#",
            "\r\n\r\n",
            "1.2.3.4 5.6.7.8",
        ] {
            let _ = parse(text);
        }
        let list = parse("0.0.0.0/0\n").unwrap();
        assert!(list.contains("203.0.113.9".parse().unwrap()));
    }
}
