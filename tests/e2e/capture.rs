//! Golden transcripts: what a filter receives from a real smtpd, scenario by scenario.
//!
//! One rig per daemon runs every scenario in turn through the capture filter
//! (tests/capture/capture-filter.py), which appends every line it receives to a file.
//! After each scenario (once every session of it has sent `link-disconnect`), the new
//! bytes are cut off as that scenario's transcript.
//!
//! - `RIG_CAPTURE_WRITE=1` (tests/capture/capture.sh): (re)writes
//!   opensmtpd-filter/tests/data/transcripts/smtpd-{6.8,7.4}/NN-name.txt.
//! - otherwise (a normal test run): runs the same scenarios and checks that each one still
//!   produces the same kinds of lines, as many of each, as its stored transcript.

use opensmtpd_e2e::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

const CAPTURE_FILE: &str = "capture.txt";
const EHLO: &str = "EHLO client10.lab.test";
/// Throwaway credentials of the 7.4 scenarios (they appear base64-encoded in `auth` requests).
const USER: &str = "rigtest";
const PASSWORD: &str = "rig-secret-1";
const PIPE_USER: &str = "pipe|user";
const PIPE_PASSWORD: &str = "rig-secret-2";

fn transcripts_dir(daemon: Daemon) -> PathBuf {
    workspace_root()
        .join("opensmtpd-filter/tests/data/transcripts")
        .join(daemon.name())
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.split(|&b| b == b'\n')
        .filter(|l| l.windows(needle.len()).any(|w| w == needle))
        .count()
}

struct Capture<'a> {
    rig: &'a Rig,
    offset: usize,
    sessions: usize,
    chunks: Vec<(String, Vec<u8>)>,
}

impl<'a> Capture<'a> {
    fn new(rig: &'a Rig) -> Self {
        let hs = rig.wait_out(CAPTURE_FILE, Duration::from_secs(10), |c| {
            c.ends_with(b"config|ready\n")
        });
        Capture {
            rig,
            offset: hs.len(),
            sessions: 0,
            chunks: vec![("00-handshake".into(), hs)],
        }
    }

    /// Runs one scenario of `sessions` SMTP sessions and keeps what the filter received.
    fn scenario(&mut self, name: &str, sessions: usize, f: impl FnOnce(&Rig)) {
        let n = self.chunks.len();
        f(self.rig);
        self.sessions += sessions;
        let want = self.sessions;
        let all = self
            .rig
            .wait_out(CAPTURE_FILE, Duration::from_secs(30), |c| {
                count(c, b"|link-connect|") == want && count(c, b"|link-disconnect|") == want
            });
        let chunk = all[self.offset..].to_vec();
        assert!(!chunk.is_empty(), "scenario {name}: nothing captured");
        self.offset = all.len();
        self.chunks.push((format!("{n:02}-{name}"), chunk));
        assert!(self.rig.smtpd_alive(), "smtpd died in scenario {name}");
    }
}

fn ok(r: std::io::Result<Reply>) -> Reply {
    r.unwrap_or_else(|e| panic!("SMTP: {e}"))
}

/// EHLO, MAIL, RCPTs (each with its expected code), DATA, message, QUIT.
fn session(
    rig: &Rig,
    listener: Listener,
    src: &str,
    mail: &str,
    rcpts: &[(&str, u16)],
    msg: &[u8],
) {
    let mut c = SmtpClient::connect(rig, listener, src).expect("connect");
    assert_eq!(ok(c.read_reply()).code, 220);
    ok(c.expect(EHLO, 250));
    ok(c.expect(&format!("MAIL FROM:{mail}"), 250));
    for (r, code) in rcpts {
        ok(c.expect(&format!("RCPT TO:<{r}>"), *code));
    }
    ok(c.expect("DATA", 354));
    let r = ok(c.send_data(msg));
    assert_eq!(r.code, 250, "{r}");
    ok(c.quit());
}

fn simple_msg(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: <sender@example.org>\nTo: <rigmail@lab.test>\nSubject: {subject}\nMessage-Id: <{}@client10.lab.test>\n\n",
        subject.replace(' ', "-")
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

fn swaks_ok(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: swaks failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_scenarios(daemon: Daemon) -> Vec<(String, Vec<u8>)> {
    let mut b = Rig::builder(daemon)
        .filter("capture", &capture_filter_cmd(CAPTURE_FILE))
        .listen_plain("capture")
        .listen_ipv6("capture");
    if daemon == Daemon::Smtpd74 {
        b = b
            .listen_starttls_auth("capture")
            .auth_user(USER, PASSWORD)
            .auth_user(PIPE_USER, PIPE_PASSWORD);
    }
    let rig = b.start().unwrap();
    let mut cap = Capture::new(&rig);

    cap.scenario("plain-multi-rcpt", 1, |rig| {
        session(
            rig,
            Listener::Plain,
            CLIENT,
            "<sender@example.org>",
            &[
                (RCPT_OK, 250),
                ("alice@lab.test", 250),
                (RCPT_UNKNOWN, 524),
                (RCPT_FOREIGN, 550),
                ("bob@lab.test", 250),
            ],
            &simple_msg(
                "several recipients",
                b"Three recipients accepted, two rejected.\n",
            ),
        );
    });

    cap.scenario("rset", 1, |rig| {
        let mut c = SmtpClient::connect(rig, Listener::Plain, CLIENT).unwrap();
        ok(c.read_reply());
        ok(c.expect(EHLO, 250));
        ok(c.expect("MAIL FROM:<first@example.org>", 250));
        ok(c.expect("RCPT TO:<rigmail@lab.test>", 250));
        ok(c.expect("RSET", 250));
        ok(c.expect("RSET", 250));
        ok(c.expect("MAIL FROM:<second@example.org>", 250));
        ok(c.expect("RCPT TO:<alice@lab.test>", 250));
        ok(c.expect("DATA", 354));
        assert_eq!(
            ok(c.send_data(&simple_msg("after rset", b"Sent after RSET.\n"))).code,
            250
        );
        ok(c.quit());
    });

    cap.scenario("noop-help-unknown", 1, |rig| {
        let mut c = SmtpClient::connect(rig, Listener::Plain, CLIENT).unwrap();
        ok(c.read_reply());
        ok(c.expect(EHLO, 250));
        ok(c.expect("NOOP", 250));
        // 6.8 refuses arguments (500 5.5.4), 7.4 accepts them
        ok(c.command("NOOP with | some arguments"));
        ok(c.expect("HELP", 214));
        let r = ok(c.command("XYZZY plugh"));
        assert_eq!(r.code / 100, 5, "{r}");
        ok(c.expect("MAIL FROM:<noop@example.org>", 250));
        ok(c.expect("NOOP", 250));
        ok(c.expect("RCPT TO:<rigmail@lab.test>", 250));
        ok(c.expect("DATA", 354));
        assert_eq!(
            ok(c.send_data(&simple_msg("noop", b"NOOP inside a transaction.\n"))).code,
            250
        );
        ok(c.quit());
    });

    cap.scenario("helo", 1, |rig| {
        let mut c = SmtpClient::connect(rig, Listener::Plain, "127.0.0.50").unwrap();
        ok(c.read_reply());
        ok(c.expect("HELO client50.lab.test", 250));
        ok(c.expect("MAIL FROM:<helo@example.org>", 250));
        ok(c.expect("RCPT TO:<rigmail@lab.test>", 250));
        ok(c.expect("DATA", 354));
        assert_eq!(
            ok(c.send_data(&simple_msg("helo", b"A HELO session.\n"))).code,
            250
        );
        ok(c.quit());
    });

    cap.scenario("8bit-body", 1, |rig| {
        let mut body = Vec::new();
        body.extend_from_slice(b"Latin-1: caf\xe9 cr\xe8me br\xfbl\xe9e\n");
        body.extend_from_slice(b"invalid UTF-8: \xff\xfe \xc3( \xed\xa0\x80 \xe9\n");
        body.extend_from_slice("UTF-8: café ✓\n".as_bytes());
        body.extend_from_slice(b"a bare CR\rinside a line\n");
        let mut msg = simple_msg("8bit", &body);
        msg.splice(
            0..0,
            b"X-Latin1: caf\xe9\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n"
                .iter()
                .copied(),
        );
        session(rig, Listener::Plain, CLIENT, "<latin1@example.org> BODY=8BITMIME", &[(RCPT_OK, 250)], &msg);
    });

    cap.scenario("dot-lines", 1, |rig| {
        let body = b"one dot:\n.\ntwo dots:\n..\nthree dots:\n...\n.leading dot\n..two leading dots\n. dot space\nlast line\n";
        session(rig, Listener::Plain, CLIENT, "<dots@example.org>", &[(RCPT_OK, 250)], &simple_msg("dots", body));
    });

    cap.scenario("pipes", 1, |rig| {
        let body = b"a | pipe | in | the | body\n|\n||\n|leading and trailing|\nfilter-result|0000000000000000|0000000000000000|proceed\n";
        let mut msg = simple_msg("pipes | in | subject", body);
        msg.splice(0..0, b"X-Pipe: a|b|c\n".iter().copied());
        session(
            rig,
            Listener::Plain,
            CLIENT,
            "<pipe|sender@example.org>",
            &[("pipe|box@lab.test", 250), ("no|such@lab.test", 524)],
            &msg,
        );
    });

    cap.scenario("tabs", 1, |rig| {
        let body = b"\ttab first\n\t\ntab\tinside\tthe\tline\ntrailing tab\t\ntrailing spaces   \n \t mixed \t \n";
        let mut msg = simple_msg("tabs", body);
        msg.splice(0..0, b"X-Folded: first\n\tfolded with a tab\n  folded with spaces\n".iter().copied());
        session(rig, Listener::Plain, CLIENT, "<tabs@example.org>", &[(RCPT_OK, 250)], &msg);
    });

    cap.scenario("long-lines", 1, |rig| {
        let mut body = Vec::new();
        let mut l990 = b"990 bytes:".to_vec();
        l990.resize(990, b'x');
        body.extend_from_slice(&l990);
        body.push(b'\n');
        let mut l5000 = b"5000 bytes:".to_vec();
        while l5000.len() < 5000 {
            l5000.extend_from_slice(b"0123456789abcdef|\t");
        }
        l5000.truncate(5000);
        body.extend_from_slice(&l5000);
        body.push(b'\n');
        let mut d5000 = b".5000 bytes with a leading dot:".to_vec();
        d5000.resize(5000, b'y');
        body.extend_from_slice(&d5000);
        body.push(b'\n');
        session(
            rig,
            Listener::Plain,
            CLIENT,
            "<long@example.org>",
            &[(RCPT_OK, 250)],
            &simple_msg("long lines", &body),
        );
    });

    cap.scenario("null-sender", 1, |rig| {
        let msg = b"From: MAILER-DAEMON@example.org\nTo: <rigmail@lab.test>\nSubject: bounce\n\nA bounce has a null sender.\n";
        session(rig, Listener::Plain, CLIENT, "<>", &[(RCPT_OK, 250)], msg);
    });

    cap.scenario("drop-mid-data", 1, |rig| {
        let mut c = SmtpClient::connect(rig, Listener::Plain, CLIENT).unwrap();
        ok(c.read_reply());
        ok(c.expect(EHLO, 250));
        ok(c.expect("MAIL FROM:<dropper@example.org>", 250));
        ok(c.expect("RCPT TO:<rigmail@lab.test>", 250));
        ok(c.expect("DATA", 354));
        c.send_raw(
            b"Subject: never finished\r\n\r\nfirst line\r\nlast line of an unfinished message\r\n",
        )
        .unwrap();
        // let smtpd pass the lines to the filter before the connection goes away
        rig.wait_out(CAPTURE_FILE, Duration::from_secs(10), |t| {
            t.split(|&b| b == b'\n')
                .any(|l| l.ends_with(b"|last line of an unfinished message"))
        });
        c.drop_connection();
    });

    cap.scenario("no-rdns", 1, |rig| {
        // 127.0.0.1 has no PTR in the rig's DNS (and the rig's /etc/hosts is empty)
        let mut c = SmtpClient::connect(rig, Listener::Plain, CLIENT_NO_RDNS).unwrap();
        ok(c.read_reply());
        ok(c.expect("EHLO localhost", 250));
        ok(c.quit());
    });

    cap.scenario("ipv6", 1, |rig| {
        let mut c = SmtpClient::connect(rig, Listener::Ipv6, "::1").unwrap();
        ok(c.read_reply());
        ok(c.expect("EHLO [IPv6:::1]", 250));
        ok(c.expect("MAIL FROM:<v6@example.org>", 250));
        ok(c.expect("RCPT TO:<rigmail@lab.test>", 250));
        ok(c.expect("DATA", 354));
        assert_eq!(
            ok(c.send_data(&simple_msg("ipv6", b"Over IPv6 loopback.\n"))).code,
            250
        );
        ok(c.quit());
    });

    if daemon == Daemon::Smtpd74 {
        let tls_msg = |s: &str| simple_msg(s, format!("Sent with {s}.\n").as_bytes());
        cap.scenario("starttls", 1, |rig| {
            let out = rig.send_message_at(
                Listener::StartTlsAuth,
                CLIENT,
                "tls@example.org",
                &[RCPT_OK],
                &tls_msg("starttls"),
                &["--ehlo", "client10.lab.test", "--tls"],
            );
            swaks_ok(out, "starttls");
        });
        let auth = |mech: &'static str, user: &'static str, pw: &'static str, good: bool| {
            move |rig: &Rig| {
                let out = rig.send_message_at(
                    Listener::StartTlsAuth,
                    CLIENT,
                    "auth@example.org",
                    &[RCPT_OK],
                    &tls_msg(&format!("auth {mech}")),
                    &[
                        "--ehlo",
                        "client10.lab.test",
                        "--tls",
                        "--auth",
                        mech,
                        "--auth-user",
                        user,
                        "--auth-password",
                        pw,
                    ],
                );
                if good {
                    swaks_ok(out, mech);
                } else {
                    assert!(
                        !out.status.success(),
                        "AUTH {mech} with a wrong password succeeded"
                    );
                    assert!(
                        String::from_utf8_lossy(&out.stdout).contains("535"),
                        "no 535 for a bad password:\n{}\n{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        };
        cap.scenario("auth-plain-ok", 1, auth("PLAIN", USER, PASSWORD, true));
        cap.scenario("auth-login-ok", 1, auth("LOGIN", USER, PASSWORD, true));
        cap.scenario(
            "auth-plain-fail",
            1,
            auth("PLAIN", USER, "wrong-password", false),
        );
        cap.scenario(
            "auth-login-fail",
            1,
            auth("LOGIN", USER, "wrong-password", false),
        );
        cap.scenario(
            "auth-plain-pipe-user",
            1,
            auth("PLAIN", PIPE_USER, PIPE_PASSWORD, true),
        );
        cap.scenario(
            "auth-login-pipe-user",
            1,
            auth("LOGIN", PIPE_USER, PIPE_PASSWORD, true),
        );
    }
    let chunks = cap.chunks;
    drop(rig);
    chunks
}

/// `report|EVENT`, `filter|PHASE` or `config|KEY` of each line, counted.
fn kinds(text: &[u8]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let f: Vec<&[u8]> = line.splitn(6, |&b| b == b'|').collect();
        let k = match f[0] {
            b"report" | b"filter" if f.len() > 4 => format!(
                "{}|{}",
                "report|filter"
                    .split('|')
                    .find(|x| x.as_bytes() == f[0])
                    .unwrap(),
                String::from_utf8_lossy(f[4])
            ),
            b"config" if f.len() > 1 => format!("config|{}", String::from_utf8_lossy(f[1])),
            _ => format!(
                "other|{}",
                String::from_utf8_lossy(&line[..line.len().min(20)])
            ),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn capture(daemon: Daemon) {
    let chunks = run_scenarios(daemon);
    let dir = transcripts_dir(daemon);
    if std::env::var_os("RIG_CAPTURE_WRITE").is_some_and(|v| v == "1") {
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            if e.path().extension().is_some_and(|x| x == "txt") {
                fs::remove_file(e.path()).unwrap();
            }
        }
        for (name, data) in &chunks {
            fs::write(dir.join(format!("{name}.txt")), data).unwrap();
        }
        eprintln!(
            "{daemon}: wrote {} transcripts to {}",
            chunks.len(),
            dir.display()
        );
        return;
    }
    for (name, data) in &chunks {
        let golden = dir.join(format!("{name}.txt"));
        let Ok(stored) = fs::read(&golden) else {
            panic!(
                "{daemon}: {} is missing: run tests/capture/capture.sh",
                golden.display()
            );
        };
        assert_eq!(
            kinds(data),
            kinds(&stored),
            "{daemon}: scenario {name} now gives other lines than {} (regenerate with tests/capture/capture.sh if smtpd or the scenario changed)",
            golden.display()
        );
    }
}

#[test]
fn smtpd68_capture_scenarios_match_transcripts() {
    capture(Daemon::Smtpd68);
}

#[test]
fn smtpd74_capture_scenarios_match_transcripts() {
    capture(Daemon::Smtpd74);
}
