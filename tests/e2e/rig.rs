//! Self-tests of the rig: isolation, DNS, listeners, rejections, clean stop.

use opensmtpd_e2e::*;
use std::time::{Duration, Instant};

fn start(daemon: Daemon) -> Rig {
    Rig::builder(daemon)
        .filter("capture", &capture_filter_cmd("capture.txt"))
        .listen_plain("capture")
        .dns_record(DnsRecord::senderscore("127.0.0.50".parse().unwrap(), 50))
        .dns_record(DnsRecord::txt("lab.test", "v=spf1 ip4:127.0.0.10 -all"))
        .start()
        .unwrap()
}

fn dns_in_namespace(daemon: Daemon) {
    let rig = start(daemon);
    let getent = |name: &str| {
        let out = rig.in_namespace("getent").args(["hosts", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(getent("client50.lab.test"), "127.0.0.50      client50.lab.test");
    assert_eq!(getent("127.0.0.90"), "127.0.0.90      client90.lab.test");
    assert_eq!(getent("50.0.0.127.score.senderscore.com"), "127.0.4.50      50.0.0.127.score.senderscore.com");
    let t = Instant::now();
    assert_eq!(getent("www.example.com"), "");
    assert_eq!(getent("127.0.0.1"), "");
    assert!(t.elapsed() < Duration::from_secs(1), "NXDOMAIN must be immediate");
    let resolv = rig.in_namespace("cat").arg("/etc/resolv.conf").output().unwrap();
    assert!(String::from_utf8_lossy(&resolv.stdout).contains(&rig.dns_addr().to_string()));
    assert!(rig.smtpd_alive());
}

#[test]
fn smtpd68_dns_is_private() {
    dns_in_namespace(Daemon::Smtpd68);
}

#[test]
fn smtpd74_dns_is_private() {
    dns_in_namespace(Daemon::Smtpd74);
}
