//! The example filters (examples/) in real smtpd filter chains: `helo-reject` refuses the
//! HELO/EHLO names it should and only those, `add-header` prepends its header and changes
//! nothing else, `session-logger` writes one line per session to smtpd's log with what
//! smtpd reported (TLS, AUTH user), and `passthrough` after them all keeps every byte.

mod common;

use common::*;
use opensmtpd_e2e::*;
use std::time::Duration;

const HELO_PATTERN: &str = "^localhost$|^bad[.]";
const HELO_REPLY: &str = "550 5.7.1 Your HELO name is not acceptable here";
const HEADER: &str = "X-Chain: session-logger, helo-reject, add-header | passthrough";

/// The session-logger line of the session from `client` (each test's sessions come from
/// different addresses). Filters' stderr lines are in smtpd's log as `NAME: line`.
fn logger_line(rig: &Rig, client: &str) -> String {
    let needle = format!(" client={client} ");
    let lines = rig.wait_log_lines("logger: session-logger: info: session=", 1, Duration::ZERO);
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&needle)).collect();
    assert_eq!(
        mine.len(),
        1,
        "{}: session-logger lines for {client}: {lines:#?}",
        rig.daemon()
    );
    mine[0].clone()
}

/// `helo-reject` before `passthrough`: matching HELO and EHLO names get 550 and no mail
/// goes through; a good name delivers, byte for byte.
fn helo_reject_in_chain(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("helo", &example_cmd("helo-reject", &[HELO_PATTERN]))
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .filter_chain("chain", &["helo", "passthrough"])
        .unwrap()
        .listen_plain("chain")
        .start()
        .unwrap();

    // swaks with EHLO localhost: refused, nothing sent
    let out = rig.send_message(
        CLIENTS_WITH_RDNS[1],
        SENDER,
        &[RCPT_OK],
        b"Subject: from localhost\n\nno\n",
        &["--ehlo", "localhost"],
    );
    let t = transcript(&out);
    assert!(!out.status.success(), "{daemon}: swaks succeeded:\n{t}");
    assert!(
        t.contains(&format!("<** {HELO_REPLY}")),
        "{daemon}: EHLO localhost not refused:\n{t}"
    );
    assert!(!t.contains("<-  354"), "{daemon}: reached DATA:\n{t}");

    // by hand: EHLO and HELO with matching names, then a transaction without a greeting
    let mut c = SmtpClient::connect(&rig, Listener::Plain, CLIENTS_WITH_RDNS[2]).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 220);
    for cmd in ["EHLO bad.example.org", "HELO localhost"] {
        let r = c.command(cmd).unwrap();
        assert_eq!(r.to_string(), HELO_REPLY, "{daemon}: {cmd}");
    }
    let r = c.command(&format!("MAIL FROM:<{SENDER}>")).unwrap();
    assert_eq!(r.code, 503, "{daemon}: MAIL without an accepted HELO: {r}");
    // a refused name can be followed by an acceptable one in the same session
    let r = c.command("HELO localhost.lab.test").unwrap();
    assert_eq!(r.code, 250, "{daemon}: {r}");
    c.quit().unwrap();
    // names that only look alike pass
    let mut c = SmtpClient::connect(&rig, Listener::Plain, CLIENTS_WITH_RDNS[2]).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 220);
    let r = c.command("EHLO notbad.example.org").unwrap();
    assert_eq!(r.code, 250, "{daemon}: {r}");
    c.quit().unwrap();

    // a good name delivers, unchanged
    let msg = hazard_message();
    let t = send(&rig, &[RCPT_OK], &msg);
    assert!(
        t.contains("Message accepted for delivery"),
        "{daemon}: not accepted:\n{t}"
    );
    assert_delivered(&rig, 1, SENDER, &msg);
    let decisions = rig.log_lines("helo: helo-reject: info: session=");
    for name in ["localhost", "bad.example.org"] {
        assert!(
            decisions
                .iter()
                .any(|l| l.ends_with(&format!(" helo={name:?} rejected"))),
            "{daemon}: no decision logged for {name}: {decisions:#?}"
        );
    }
    assert!(
        decisions.iter().all(|l| !l.contains("lab.test")),
        "{daemon}: {decisions:#?}"
    );
    rig.assert_alive();
}

#[test]
fn smtpd68_helo_reject_in_chain() {
    helo_reject_in_chain(Daemon::Smtpd68);
}

#[test]
fn smtpd74_helo_reject_in_chain() {
    helo_reject_in_chain(Daemon::Smtpd74);
}

/// The four examples in one chain: the delivered message is the added header followed by
/// the sent bytes, unchanged; smtpd's log has the session-logger line of every session,
/// the refused HELO included.
fn chain_of_examples(daemon: Daemon) {
    let rig = Rig::builder(daemon)
        .filter("logger", &example_cmd("session-logger", &[]))
        .filter("helo", &example_cmd("helo-reject", &[HELO_PATTERN]))
        .filter("stamp", &example_cmd("add-header", &[HEADER]))
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .filter_chain("chain", &["logger", "helo", "stamp", "passthrough"])
        .unwrap()
        .listen_plain("chain")
        .start()
        .unwrap();
    let msg = hazard_message();
    let t = send(&rig, &[RCPT_OK, RCPT_UNKNOWN, RCPTS_OK_MORE[2]], &msg);
    assert!(
        t.contains("Message accepted for delivery"),
        "{daemon}: not accepted:\n{t}"
    );
    let out = rig.send_message(
        CLIENTS_WITH_RDNS[1],
        SENDER,
        &[RCPT_OK],
        b"Subject: x\n\ny\n",
        &["--ehlo", "localhost"],
    );
    assert!(
        transcript(&out).contains(&format!("<** {HELO_REPLY}")),
        "{daemon}:\n{}",
        transcript(&out)
    );
    // two messages in one session: one header each
    let second = simple_message("second in the session", b".dot\n");
    let mut c = Client::open(&rig, CLIENT_NO_RDNS);
    for m in [&msg, &second] {
        let r = c.message(SENDER, &[RCPT_OK], m);
        assert_eq!(r.code, 250, "{daemon}: {r}");
    }
    c.quit();

    let mails = rig.wait_delivered(4, Duration::from_secs(15));
    assert_eq!(mails.len(), 4, "{daemon}");
    let mut seconds = 0;
    for raw in &mails {
        // smtpd's Received header goes through the filters as the first data lines: the
        // added header comes before it
        let got = strip_smtpd_headers(raw);
        let Some(rest) = got.strip_prefix(format!("{HEADER}\n").as_bytes()) else {
            panic!(
                "{daemon}: the added header is not first: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(200)])
            );
        };
        assert!(rest.starts_with(b"Received: "), "{daemon}");
        let got = strip_smtpd_headers(rest);
        if got == second.as_slice() {
            seconds += 1;
            continue;
        }
        assert!(
            got == msg.as_slice(),
            "{daemon}: delivered bytes differ: {}",
            show_diff(got, &msg)
        );
    }
    assert_eq!(seconds, 1, "{daemon}");

    rig.wait_log_lines(
        "logger: session-logger: info: session=",
        3,
        Duration::from_secs(10),
    );
    let line = logger_line(&rig, CLIENT);
    assert!(
        line.ends_with(" client=127.0.0.10 rdns=client10.lab.test helo=client10.lab.test tls=no user=- messages=1 rejected-rcpts=1"),
        "{daemon}: {line}"
    );
    let line = logger_line(&rig, CLIENTS_WITH_RDNS[1]);
    assert!(
        line.ends_with(" client=127.0.0.50 rdns=client50.lab.test helo=- tls=no user=- messages=0 rejected-rcpts=0"),
        "{daemon}: {line}"
    );
    let line = logger_line(&rig, CLIENT_NO_RDNS);
    assert!(
        line.ends_with(" client=127.0.0.1 rdns=<unknown> helo=client10.lab.test tls=no user=- messages=2 rejected-rcpts=0"),
        "{daemon}: {line}"
    );
    // swaks's EHLO localhost, then its fallback HELO localhost: two decisions
    let decisions = rig.log_lines("helo: helo-reject: info: session=");
    assert_eq!(decisions.len(), 2, "{daemon}: {decisions:#?}");
    assert!(
        decisions
            .iter()
            .all(|l| l.ends_with(" helo=\"localhost\" rejected")),
        "{daemon}: {decisions:#?}"
    );
    rig.assert_alive();
}

#[test]
fn smtpd68_chain_of_examples() {
    chain_of_examples(Daemon::Smtpd68);
}

#[test]
fn smtpd74_chain_of_examples() {
    chain_of_examples(Daemon::Smtpd74);
}

/// AUTH over STARTTLS (7.4 only: STARTTLS is broken in Debian's 6.8 build): the
/// session-logger line says `tls=yes` and the user name smtpd reported for a successful
/// AUTH (one with `|` in it too), no user for a failed one; no password reaches the log.
#[test]
fn smtpd74_session_logger_reports_tls_and_auth() {
    const PW1: &str = "rig-secret-plain-1";
    const PW2: &str = "rig-secret-login-2";
    let rig = Rig::builder(Daemon::Smtpd74)
        .auth_user("rigtest", PW1)
        .auth_user("pipe|user", PW2)
        .filter("logger", &example_cmd("session-logger", &[]))
        .filter("passthrough", &example_cmd("passthrough", &[]))
        .filter_chain("chain", &["logger", "passthrough"])
        .unwrap()
        .listen_starttls_auth("chain")
        .start()
        .unwrap();
    let msg = hazard_message();
    let auth = |src: &str, mech: &str, user: &str, pw: &str| {
        rig.send_message_at(
            Listener::StartTlsAuth,
            src,
            SENDER,
            &[RCPT_OK],
            &msg,
            &[
                "--ehlo",
                "client.lab.test",
                "--tls",
                "--auth",
                mech,
                "--auth-user",
                user,
                "--auth-password",
                pw,
            ],
        )
    };
    let ok1 = auth(CLIENTS_WITH_RDNS[0], "PLAIN", "rigtest", PW1);
    assert!(ok1.status.success(), "PLAIN:\n{}", transcript(&ok1));
    let ok2 = auth(CLIENTS_WITH_RDNS[1], "LOGIN", "pipe|user", PW2);
    assert!(ok2.status.success(), "LOGIN:\n{}", transcript(&ok2));
    let bad = auth(CLIENTS_WITH_RDNS[2], "PLAIN", "pipe|user", PW1);
    let t = transcript(&bad);
    assert!(!bad.status.success(), "a wrong password passed:\n{t}");
    assert!(t.contains("<~* 535 "), "no 535:\n{t}");
    // no TLS, no AUTH (auth is optional on this listener)
    let out = rig.send_message_at(
        Listener::StartTlsAuth,
        CLIENT_NO_RDNS,
        SENDER,
        &[RCPT_OK],
        &msg,
        &["--ehlo", "client.lab.test"],
    );
    assert!(out.status.success(), "plain:\n{}", transcript(&out));
    assert_delivered(&rig, 3, SENDER, &msg);

    rig.wait_log_lines(
        "logger: session-logger: info: session=",
        4,
        Duration::from_secs(10),
    );
    let want = [
        (CLIENTS_WITH_RDNS[0], "tls=yes user=rigtest messages=1"),
        (CLIENTS_WITH_RDNS[1], "tls=yes user=pipe|user messages=1"),
        (CLIENTS_WITH_RDNS[2], "tls=yes user=- messages=0"),
        (CLIENT_NO_RDNS, "tls=no user=- messages=1"),
    ];
    for (client, tail) in want {
        let line = logger_line(&rig, client);
        assert!(
            line.contains(&format!(" helo=client.lab.test {tail} rejected-rcpts=0")),
            "{client}: {line}"
        );
    }
    let filter_lines: Vec<String> = rig
        .smtpd_log()
        .lines()
        .filter(|l| l.starts_with("logger: ") || l.starts_with("passthrough: "))
        .map(str::to_string)
        .collect();
    for secret in [PW1, PW2] {
        assert!(
            filter_lines.iter().all(|l| !l.contains(secret)),
            "a password in the filters' log lines: {filter_lines:#?}"
        );
    }
    rig.assert_alive();
}
