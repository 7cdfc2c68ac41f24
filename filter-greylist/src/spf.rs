//! SPF: the [`SpfChecker`] trait (so tests can put a fake behind it) and its real
//! implementation, [mail-auth](https://docs.rs/mail-auth)'s RFC 7208 `check_host`
//! (include, redirect, macros, the 10-lookup limit) over hickory-resolver.
//!
//! mail-auth brings its own hickory-resolver; [`MailAuthSpf::new`] configures that
//! resolver: the `--resolver` servers (or `/etc/resolv.conf`), a bounded timeout, and
//! hickory's answer cache, which keeps every DNS answer for its TTL. Each check runs
//! on the session's own task, so a slow answer delays only that session, and is cut
//! at the timeout. Temporary errors, permanent errors and timeouts only mean "not
//! SPF-pass": the sender is then keyed by address, never rejected.
//!
//! One correction to mail-auth: a domain with two or more `v=spf1` records is a
//! permerror (RFC 7208 4.5), where mail-auth evaluates the first record that parses.
//! The filter looks up the sender domain's TXT records itself (through the same cached
//! resolver) and counts the SPF records before calling `check_host`; records reached
//! through `include` or `redirect` are left to mail-auth. That first lookup also
//! settles the commonest case alone: a domain with no SPF record (no such domain, no
//! TXT record, or none that is SPF) is `none` without asking mail-auth, whose own
//! lookup would ask the DNS server again whenever the negative answer is not cached
//! (a server that sends no SOA with it gives no negative TTL).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use crate::policy::Spf;

/// Checks SPF for a sender.
pub trait SpfChecker: Send + Sync + 'static {
    /// The SPF result for `sender` (empty: the null sender, then the HELO identity is
    /// checked) sending from `ip`, which said `helo`.
    fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> impl Future<Output = Spf> + Send;
}

/// mail-auth over hickory-resolver.
pub struct MailAuthSpf {
    auth: MessageAuthenticator,
    timeout: Duration,
    host: String,
}

/// How many DNS answers hickory keeps (each for its TTL).
const DNS_CACHE: u64 = 4096;

impl MailAuthSpf {
    /// A checker asking `servers` (UDP then TCP; the system resolver when empty), each
    /// check bounded by `timeout`. `host` is our own host name (the `%{r}` macro).
    pub fn new(servers: &[SocketAddr], timeout: Duration, host: &str) -> Result<Self, String> {
        let (config, mut opts) = if servers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
        } else {
            let mut list = Vec::new();
            for s in servers {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                list.push(ns);
            }
            (
                ResolverConfig::from_parts(None, vec![], list),
                ResolverOpts::default(),
            )
        };
        opts.timeout = timeout.min(Duration::from_secs(5));
        opts.attempts = 1;
        opts.cache_size = DNS_CACHE;
        opts.edns0 = true;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(MailAuthSpf {
            auth,
            timeout,
            host: host.to_string(),
        })
    }
}

/// mail-auth's result in our terms.
pub fn from_mail_auth(r: SpfResult) -> Spf {
    match r {
        SpfResult::Pass => Spf::Pass,
        SpfResult::Fail => Spf::Fail,
        SpfResult::SoftFail => Spf::SoftFail,
        SpfResult::Neutral => Spf::Neutral,
        SpfResult::TempError => Spf::TempError,
        SpfResult::PermError => Spf::PermError,
        SpfResult::None => Spf::None,
    }
}

impl SpfChecker for MailAuthSpf {
    async fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        if helo.is_empty() && !sender.contains('@') {
            return Spf::NotChecked;
        }
        let domain = sender
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .trim_end_matches('.');
        let check = async {
            match self.spf_records(domain).await {
                // RFC 7208 4.4 and 4.5: no SPF record is `none`
                SpfRecords::Count(0) | SpfRecords::NoSuchData => Spf::None,
                // RFC 7208 4.5: two or more is a permerror (mail-auth takes the first
                // that parses)
                SpfRecords::Count(2..) => Spf::PermError,
                // one record (its answer is cached for check_host), or a lookup that
                // failed: mail-auth evaluates it, or says temperror as it asks again
                SpfRecords::Count(1) | SpfRecords::Unknown => {
                    self.check_host(ip, helo, sender).await
                }
            }
        };
        tokio::time::timeout(self.timeout, check)
            .await
            .unwrap_or(Spf::Timeout)
    }
}

impl MailAuthSpf {
    /// What the DNS says of `domain`'s SPF records.
    async fn spf_records(&self, domain: &str) -> SpfRecords {
        let Ok(name) = Name::from_str_relaxed(format!("{domain}.")) else {
            // not a domain name: mail-auth's check_host says what that is
            return SpfRecords::Unknown;
        };
        match self.auth.resolver().txt_lookup(name).await {
            Ok(lookup) => SpfRecords::Count(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.txt_data.concat()),
                        _ => None,
                    })
                    .filter(|text| is_spf_record(text))
                    .count(),
            ),
            Err(NetError::Dns(DnsError::NoRecordsFound(none)))
                if matches!(
                    none.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                SpfRecords::NoSuchData
            }
            Err(_) => SpfRecords::Unknown,
        }
    }

    async fn check_host(&self, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        let params = if sender.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.host, sender)
        };
        from_mail_auth(
            self.auth
                .check_host(mail_auth::Parameters::new(params))
                .await
                .result(),
        )
    }
}

/// The answer to the sender domain's TXT lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpfRecords {
    /// This many `v=spf1` records among the TXT records.
    Count(usize),
    /// No such domain, or no TXT record at it (NXDOMAIN, or NOERROR with no answer).
    NoSuchData,
    /// The lookup failed (timeout, SERVFAIL, refused …) or the name is not one.
    Unknown,
}

/// Whether a TXT record is an SPF record: `v=spf1` alone or followed by a space
/// (RFC 7208 4.5), case-insensitively.
pub fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_records_are_recognised() {
        assert!(is_spf_record(b"v=spf1 -all"));
        assert!(is_spf_record(b"V=SPF1 ip4:192.0.2.0/24 -all"));
        assert!(is_spf_record(b"v=spf1"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"google-site-verification=x"));
        assert!(!is_spf_record(b"v=spf"));
    }

    #[test]
    fn results_map_one_to_one() {
        assert_eq!(from_mail_auth(SpfResult::Pass), Spf::Pass);
        assert_eq!(from_mail_auth(SpfResult::Fail), Spf::Fail);
        assert_eq!(from_mail_auth(SpfResult::SoftFail), Spf::SoftFail);
        assert_eq!(from_mail_auth(SpfResult::Neutral), Spf::Neutral);
        assert_eq!(from_mail_auth(SpfResult::None), Spf::None);
        assert_eq!(from_mail_auth(SpfResult::TempError), Spf::TempError);
        assert_eq!(from_mail_auth(SpfResult::PermError), Spf::PermError);
    }
}
