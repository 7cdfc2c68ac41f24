//! The allowlists: `-wl-ip`, `-wl-domain` and `--wl-rcpt` files, and the holder that
//! SIGHUP swaps while sessions read it.
//!
//! Every file has one entry per line, `#` starts a comment, blank lines are ignored.
//! An entry is an IP address, a CIDR network, a domain (`example.org`, which also
//! covers its subdomains) or, in the sender and recipient lists, an address
//! (`user@example.org`). A bad line is an error that names the file and the line.
//!
//! | list | IP / CIDR | domain | address |
//! |---|---|---|---|
//! | `-wl-ip` | the client | the client's forward-confirmed rDNS name | — (error) |
//! | `-wl-domain` | the client | the sender's domain | the sender |
//! | `--wl-rcpt` | — (error) | the recipient's domain | the recipient |

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::policy::unmap;

/// What a list is for (decides which entry kinds it accepts).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ListKind {
    /// `-wl-ip`: clients.
    Client,
    /// `-wl-domain`: senders.
    Sender,
    /// `--wl-rcpt`: recipients.
    Recipient,
    /// `--traps`: greytrap recipients.
    Trap,
}

impl ListKind {
    fn flag(self) -> &'static str {
        match self {
            ListKind::Client => "-wl-ip",
            ListKind::Sender => "-wl-domain",
            ListKind::Recipient => "--wl-rcpt",
            ListKind::Trap => "--traps",
        }
    }
}

/// One parsed list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List {
    nets: Vec<IpNet>,
    domains: Vec<String>,
    addresses: Vec<String>,
}

/// Why a list could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ListError {
    /// The file could not be read.
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A line is not an entry this list takes.
    Line {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// The text of the entry.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Read { flag, path, reason } => {
                write!(f, "{flag} {}: cannot read: {reason}", path.display())
            }
            ListError::Line {
                flag,
                path,
                line,
                text,
                why,
            } => write!(f, "{flag} {} line {line}: {text:?} {why}", path.display()),
        }
    }
}

impl std::error::Error for ListError {}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `name` is `domain` or one of its subdomains (both lower case).
fn under(name: &str, domain: &str) -> bool {
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

impl List {
    /// Parses the text of a list file; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path, kind: ListKind) -> Result<List, ListError> {
        let mut list = List::default();
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |why: &'static str| ListError::Line {
                flag: kind.flag(),
                path: path.to_path_buf(),
                line: i + 1,
                text: entry.chars().take(100).collect(),
                why,
            };
            let net = entry
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| entry.parse::<IpAddr>().map(|ip| IpNet::from(unmap(ip))));
            if let Ok(net) = net {
                if matches!(kind, ListKind::Recipient | ListKind::Trap) {
                    return Err(bad("is an address or network: this list takes recipients"));
                }
                list.nets.push(net);
                continue;
            }
            let lower = entry.trim_end_matches('.').to_ascii_lowercase();
            if let Some((local, domain)) = lower.rsplit_once('@') {
                if kind == ListKind::Client {
                    return Err(bad(
                        "is a mail address: this list takes IP addresses, networks and domains",
                    ));
                }
                if local.is_empty() || !valid_domain(domain) {
                    return Err(bad("is not a mail address"));
                }
                list.addresses.push(lower);
                continue;
            }
            if valid_domain(&lower) && lower.contains(|c: char| c.is_ascii_alphabetic()) {
                list.domains.push(lower);
                continue;
            }
            return Err(bad(
                "is not an IP address, CIDR network, domain or mail address",
            ));
        }
        list.nets = IpNet::aggregate(&list.nets);
        Ok(list)
    }

    /// Reads and parses a list file.
    pub fn load(path: &Path, kind: ListKind) -> Result<List, ListError> {
        let bytes = std::fs::read(path).map_err(|e| ListError::Read {
            flag: kind.flag(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        List::parse(&String::from_utf8_lossy(&bytes), path, kind)
    }

    /// Whether a network entry covers `ip`.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether a domain entry covers `name` (lower case).
    pub fn has_domain(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.domains.iter().any(|d| under(name, d))
    }

    /// Whether an address entry is `address` or a domain entry covers its domain.
    pub fn has_address(&self, address: &str) -> bool {
        self.addresses.iter().any(|a| a == address)
            || address
                .rsplit_once('@')
                .is_some_and(|(_, d)| self.has_domain(d))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.nets.len() + self.domains.len() + self.addresses.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The three lists in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    /// `-wl-ip`.
    pub clients: List,
    /// `-wl-domain`.
    pub senders: List,
    /// `--wl-rcpt`.
    pub recipients: List,
    /// `--traps`.
    pub traps: List,
}

/// The files the lists come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFiles {
    /// `-wl-ip FILE`.
    pub clients: Option<PathBuf>,
    /// `-wl-domain FILE`.
    pub senders: Option<PathBuf>,
    /// `--wl-rcpt FILE`.
    pub recipients: Option<PathBuf>,
    /// `--traps FILE`.
    pub traps: Option<PathBuf>,
}

impl ListFiles {
    /// Reads every configured file; the first error stops.
    pub fn load(&self) -> Result<Lists, ListError> {
        let one = |p: &Option<PathBuf>, kind| match p {
            Some(p) => List::load(p, kind),
            None => Ok(List::default()),
        };
        Ok(Lists {
            clients: one(&self.clients, ListKind::Client)?,
            senders: one(&self.senders, ListKind::Sender)?,
            recipients: one(&self.recipients, ListKind::Recipient)?,
            traps: one(&self.traps, ListKind::Trap)?,
        })
    }
}

/// Why a list lets an attempt through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Allowed {
    /// The client.
    Client,
    /// The sender.
    Sender,
    /// The recipient.
    Recipient,
}

impl Lists {
    /// Whether a list lets this attempt through. `rdns` is the client's rDNS name only
    /// when it is forward-confirmed; `sender` and `rcpt` are lower case.
    pub fn allows(
        &self,
        client: IpAddr,
        rdns: Option<&str>,
        sender: &str,
        rcpt: &str,
    ) -> Option<Allowed> {
        if self.clients.has_ip(client) || rdns.is_some_and(|n| self.clients.has_domain(n)) {
            return Some(Allowed::Client);
        }
        if self.senders.has_ip(client) || (!sender.is_empty() && self.senders.has_address(sender)) {
            return Some(Allowed::Sender);
        }
        if self.recipients.has_address(rcpt) {
            return Some(Allowed::Recipient);
        }
        None
    }
}

/// The lists in force, replaced as a whole on SIGHUP while sessions read them.
#[derive(Debug, Default)]
pub struct SharedLists {
    current: RwLock<Arc<Lists>>,
}

impl SharedLists {
    /// Starts with `lists`.
    pub fn new(lists: Lists) -> Self {
        SharedLists {
            current: RwLock::new(Arc::new(lists)),
        }
    }

    /// The lists in force now.
    pub fn get(&self) -> Arc<Lists> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `lists` in force.
    pub fn set(&self, lists: Lists) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(lists);
    }

    /// Reads the files again and puts them in force; on error the lists in force stay
    /// and the error is returned.
    pub fn reload(&self, files: &ListFiles) -> Result<usize, ListError> {
        let lists = files.load()?;
        let n =
            lists.clients.len() + lists.senders.len() + lists.recipients.len() + lists.traps.len();
        self.set(lists);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, kind: ListKind) -> Result<List, ListError> {
        List::parse(text, Path::new("/etc/wl"), kind)
    }

    #[test]
    fn client_list() {
        let l = parse(
            "# relays\n192.0.2.7\n\n198.51.100.0/24  # partner\n2001:db8::/32\nRelay.Example.ORG.\n",
            ListKind::Client,
        )
        .unwrap();
        let lists = Lists {
            clients: l,
            ..Lists::default()
        };
        let allows = |ip: &str, rdns: Option<&str>| {
            lists.allows(ip.parse().unwrap(), rdns, "a@x.example", "u@lab.test")
        };
        assert_eq!(allows("192.0.2.7", None), Some(Allowed::Client));
        assert_eq!(allows("::ffff:192.0.2.7", None), Some(Allowed::Client));
        assert_eq!(allows("192.0.2.8", None), None);
        assert_eq!(allows("198.51.100.99", None), Some(Allowed::Client));
        assert_eq!(allows("2001:db8:5::1", None), Some(Allowed::Client));
        assert_eq!(
            allows("203.0.113.1", Some("mx1.relay.example.org")),
            Some(Allowed::Client)
        );
        assert_eq!(
            allows("203.0.113.1", Some("relay.example.org")),
            Some(Allowed::Client)
        );
        assert_eq!(allows("203.0.113.1", Some("notrelay.example.org")), None);
        assert_eq!(allows("203.0.113.1", None), None);
    }

    #[test]
    fn sender_and_recipient_lists() {
        let lists = Lists {
            senders: parse(
                "partner.example\nboss@other.example\n192.0.2.0/28\n",
                ListKind::Sender,
            )
            .unwrap(),
            recipients: parse("postmaster@lab.test\nopen.example\n", ListKind::Recipient).unwrap(),
            ..Lists::default()
        };
        let ip = "203.0.113.1".parse().unwrap();
        assert_eq!(
            lists.allows(ip, None, "a@partner.example", "u@lab.test"),
            Some(Allowed::Sender)
        );
        assert_eq!(
            lists.allows(ip, None, "a@sub.partner.example", "u@lab.test"),
            Some(Allowed::Sender)
        );
        assert_eq!(
            lists.allows(ip, None, "boss@other.example", "u@lab.test"),
            Some(Allowed::Sender)
        );
        assert_eq!(
            lists.allows(ip, None, "clerk@other.example", "u@lab.test"),
            None
        );
        assert_eq!(lists.allows(ip, None, "", "u@lab.test"), None);
        assert_eq!(
            lists.allows("192.0.2.3".parse().unwrap(), None, "", "u@lab.test"),
            Some(Allowed::Sender)
        );
        assert_eq!(
            lists.allows(ip, None, "x@y.example", "postmaster@lab.test"),
            Some(Allowed::Recipient)
        );
        assert_eq!(
            lists.allows(ip, None, "x@y.example", "any@open.example"),
            Some(Allowed::Recipient)
        );
        assert_eq!(lists.allows(ip, None, "x@y.example", "u@lab.test"), None);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let e = parse("192.0.2.1\n# ok\n192.0.2.300\n", ListKind::Client).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-wl-ip /etc/wl line 3: \"192.0.2.300\" is not an IP address, CIDR network, domain or mail address"
        );
        let e = parse("a@b.example\n", ListKind::Client).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse("ok.example\n192.0.2.0/24\n", ListKind::Recipient).unwrap_err();
        assert!(
            e.to_string().starts_with("--wl-rcpt /etc/wl line 2:"),
            "{e}"
        );
        for bad in ["192.0.2.0/33", "a b", "@x.example", "x@", "1.2.3"] {
            assert!(parse(bad, ListKind::Sender).is_err(), "{bad}");
        }
        let e = List::load(Path::new("/nonexistent/wl"), ListKind::Sender).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("-wl-domain /nonexistent/wl: cannot read:"),
            "{e}"
        );
    }

    #[test]
    fn reload_keeps_the_old_lists_on_error() {
        let dir = std::env::temp_dir().join(format!("greylist-lists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("wl-ip");
        std::fs::write(&file, "192.0.2.1\n").unwrap();
        let files = ListFiles {
            clients: Some(file.clone()),
            ..ListFiles::default()
        };
        let shared = SharedLists::new(files.load().unwrap());
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!shared.get().clients.has_ip(ip2));
        std::fs::write(&file, "192.0.2.2\n").unwrap();
        assert_eq!(shared.reload(&files), Ok(1));
        assert!(shared.get().clients.has_ip(ip2));
        std::fs::write(&file, "garbage here\n").unwrap();
        assert!(shared.reload(&files).is_err());
        assert!(shared.get().clients.has_ip(ip2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
