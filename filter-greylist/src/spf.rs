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

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
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
        let params = if sender.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.host, sender)
        };
        match tokio::time::timeout(
            self.timeout,
            self.auth.check_host(mail_auth::Parameters::new(params)),
        )
        .await
        {
            Ok(out) => from_mail_auth(out.result()),
            Err(_) => Spf::Timeout,
        }
    }
}
