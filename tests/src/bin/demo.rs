//! The demo behind `scripts/demo`: a loopback OpenSMTPD (7.4 by default, `--daemon 6.8`)
//! with a chain of the example filters, real mail sent with swaks, and what happened,
//! readably: the server's replies, the filters' decisions from smtpd's log, the
//! session-logger lines and the delivered bytes. Exits 0 only if every scenario went as
//! expected; everything it started is stopped on the way out (the rig's drop).
//!
//! ```sh
//! cargo build --release --examples
//! cargo run -p opensmtpd-e2e --release --bin demo -- [--daemon 6.8|7.4]
//! ```
//!
//! Each scenario is one function taking the [`Demo`] and returning its [`Checks`]; a new
//! filter adds its filters in [`start`] and its scenarios to [`SCENARIOS`]. Each
//! scenario sends from its own client address, so that its lines in smtpd's log can be
//! told apart.

use opensmtpd_e2e::*;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const HELO_PATTERN: &str = "^localhost$";
const DEMO_HEADER: &str = "X-Demo: opensmtpd-filter";
const SENDER: &str = "demo@example.org";
const LONG_LINE: usize = 65_500;
const HELO_REPLY: &str = "550 5.7.1 Your HELO name is not acceptable here";
/// filter-senderscore: the demo's clients and their reputation in the rig's copy of the
/// zone; below 30 is refused at connect.
const SCORES: [(&str, u8); 4] = [
    ("127.0.0.10", 90),
    ("127.0.0.50", 50),
    ("127.0.0.90", 80),
    (POOR_CLIENT, 5),
];
const POOR_CLIENT: &str = "127.0.0.20";
const SCORE_REPLY: &str = "550 5.7.1 Your IP reputation is too low for this MX";

/// The rig and what the scenarios share.
struct Demo {
    rig: Rig,
}

/// The expectations of one scenario, each with its result.
#[derive(Default)]
struct Checks(Vec<(String, bool)>);

impl Checks {
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.0.push((what.into(), ok));
    }
    fn ok(&self) -> bool {
        self.0.iter().all(|(_, ok)| *ok)
    }
    fn print(&self) {
        for (what, ok) in &self.0 {
            println!("  [{}] {what}", if *ok { " ok " } else { "FAIL" });
        }
    }
}

type Scenario = fn(&Demo) -> Checks;

/// The scenarios, in order: (title, function).
const SCENARIOS: &[(&str, Scenario)] = &[
    ("a good message with 8-bit bytes", good_message),
    ("a client that says HELO localhost", helo_localhost),
    (
        "a client with a poor IP reputation (SenderScore 5)",
        poor_reputation,
    ),
    (
        "a message with one line of 65,500 bytes (the 64 KiB wedge of 7.4)",
        long_line_message,
    ),
];

fn main() -> ExitCode {
    let daemon = match parse_args() {
        Ok(d) => d,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    println!("== OpenSMTPD filters demo: {daemon} on loopback ==");
    let rig = match start(daemon) {
        Ok(rig) => rig,
        Err(e) => {
            eprintln!("demo: cannot start the rig: {e}");
            return ExitCode::FAILURE;
        }
    };
    let demo = Demo { rig };
    show_setup(&demo);

    let mut all_ok = true;
    for (title, scenario) in SCENARIOS {
        heading(title);
        let checks = scenario(&demo);
        println!("  checks:");
        checks.print();
        all_ok &= checks.ok();
    }

    heading("session-logger: one line per finished session");
    let sessions = demo.rig.log_lines(" smtp connected address=").len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while demo.rig.log_lines("logger: session-logger: info: ").len() < sessions
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    for l in demo.rig.log_lines("logger: session-logger: info: ") {
        println!("  {l}");
    }

    heading("result");
    let alive = demo.rig.smtpd_alive();
    println!(
        "  smtpd still running after all scenarios: {}",
        if alive { "yes" } else { "NO" }
    );
    all_ok &= alive;
    println!(
        "  rig directory (smtpd.conf, smtpd.log; removed now, RIG_KEEP=1 keeps it): {}",
        demo.rig.dir().display()
    );
    drop(demo);
    if all_ok {
        println!("  everything went as expected");
        ExitCode::SUCCESS
    } else {
        println!("  SOMETHING WENT WRONG: see the FAIL lines above");
        ExitCode::FAILURE
    }
}

fn parse_args() -> Result<Daemon, String> {
    let usage = "usage: demo [--daemon 6.8|7.4]   (as root; build the examples first: cargo build --release --examples)";
    let mut daemon = Daemon::Smtpd74;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.as_str() {
            "--daemon" => args.next().ok_or(usage)?,
            s if s.starts_with("--daemon=") => s["--daemon=".len()..].to_string(),
            "-h" | "--help" => return Err(usage.to_string()),
            other => return Err(format!("demo: unknown argument {other:?}\n{usage}")),
        };
        daemon = match value.trim_start_matches("smtpd-") {
            "6.8" => Daemon::Smtpd68,
            "7.4" => Daemon::Smtpd74,
            other => return Err(format!("demo: unknown daemon {other:?}\n{usage}")),
        };
    }
    Ok(daemon)
}

/// The rig: one plain listener through the chain of the example filters (release builds).
fn start(daemon: Daemon) -> Result<Rig, RigError> {
    let example = |name: &str, args: &[&str]| example_cmd_in(name, "release", args);
    let senderscore = format!(
        "{} -blockBelow 30 -scoreHeader --resolver {{dns}}:53",
        workspace_root()
            .join("target/release/filter-senderscore")
            .display()
    );
    let mut builder = Rig::builder(daemon);
    for (client, score) in SCORES {
        let ip = client.parse().expect("a demo client address");
        builder = builder.dns_record(DnsRecord::senderscore(ip, score));
    }
    builder
        .filter("logger", &example("session-logger", &[]))
        .filter("score", &senderscore)
        .filter("helo", &example("helo-reject", &[HELO_PATTERN]))
        .filter("stamp", &example("add-header", &[DEMO_HEADER]))
        .filter_chain("demo", &["logger", "score", "helo", "stamp"])?
        .listen_plain("demo")
        .start()
}

fn show_setup(demo: &Demo) {
    heading("setup");
    let rig = &demo.rig;
    println!(
        "  {} ({}) listening on {}, delivering {MAIL_DOMAIN} to a maildir",
        rig.daemon(),
        rig.daemon().smtpd_bin().display(),
        rig.addr(Listener::Plain)
    );
    println!("  smtpd.conf, filter part:");
    let conf = std::fs::read_to_string(rig.dir().join("smtpd.conf")).unwrap_or_default();
    for l in conf
        .lines()
        .filter(|l| l.starts_with("filter ") || l.starts_with("listen "))
    {
        println!("    {l}");
    }
}

/// One message with Latin-1 and invalid UTF-8 bytes, dot lines and `|`: delivered with the
/// demo header first and every other byte as sent.
fn good_message(demo: &Demo) -> Checks {
    let rig = &demo.rig;
    let src = CLIENTS_WITH_RDNS[0];
    let mut msg = Vec::new();
    msg.extend_from_slice(b"From: =?iso-8859-1?q?Ren=E9?= <demo@example.org>\n");
    msg.extend_from_slice(b"To: <rigmail@lab.test>\n");
    msg.extend_from_slice(b"Subject: caf\xe9 | cr\xe8me\n");
    msg.extend_from_slice(b"Date: Thu, 01 Jan 2026 00:00:00 +0000\n");
    msg.extend_from_slice(b"Message-Id: <demo-8bit@client10.lab.test>\n");
    msg.extend_from_slice(b"Content-Type: text/plain; charset=iso-8859-1\n");
    msg.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n\n");
    msg.extend_from_slice(b"Latin-1: caf\xe9, cr\xe8me br\xfbl\xe9e, Gr\xfc\xdfe\n");
    msg.extend_from_slice(b"not UTF-8 at all: \xff\xfe\xc3\n");
    msg.extend_from_slice(b".a line with a leading dot\n");
    msg.extend_from_slice(b"a | pipe\tand a tab\n");
    let before = rig.delivered().len();
    let out = send(demo, src, "client10.lab.test", &msg);
    let mut c = Checks::default();
    c.check(
        "the message is accepted (250)",
        out.contains("Message accepted for delivery"),
    );
    let delivered = wait_delivered(rig, before + 1, Duration::from_secs(15));
    show_session_log(rig, src);
    c.check("one message delivered", delivered.len() == before + 1);
    if let Some(raw) = delivered.get(before) {
        println!("  delivered message (bytes as stored, non-ASCII as \\xNN):");
        print_bytes(raw);
        let got = strip_smtpd_headers(raw);
        let added = format!("{DEMO_HEADER}\nX-SenderScore: 90\n");
        let rest = got.strip_prefix(added.as_bytes());
        c.check(
            format!("the first headers are {added:?} (add-header, filter-senderscore; before smtpd's Received)"),
            rest.is_some(),
        );
        let body = rest.map(strip_smtpd_headers);
        c.check(
            "every other byte is as sent (8-bit bytes, dots, `|`, tabs)",
            body == Some(msg.as_slice()),
        );
    }
    c
}

/// A client whose address has a SenderScore of 5: filter-senderscore drops it at
/// connect with 550, before it can say anything.
fn poor_reputation(demo: &Demo) -> Checks {
    let rig = &demo.rig;
    let before = rig.delivered().len();
    let out = send(
        demo,
        POOR_CLIENT,
        "poor.example.org",
        b"Subject: spam\n\nbuy\n",
    );
    let mut c = Checks::default();
    c.check(
        format!("the connection gets {SCORE_REPLY:?}"),
        out.contains(SCORE_REPLY),
    );
    c.check("no EHLO answered (no 250)", !out.contains("<-  250"));
    let log = show_session_log(rig, POOR_CLIENT);
    c.check(
        "filter-senderscore logged its decision with the score",
        log.iter()
            .any(|l| l.contains("filter-senderscore:") && l.contains("score=5")),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);
    c
}

/// A client with a HELO name the helo-reject filter refuses: 550, no mail.
fn helo_localhost(demo: &Demo) -> Checks {
    let rig = &demo.rig;
    let src = CLIENTS_WITH_RDNS[1];
    let before = rig.delivered().len();
    let out = send(
        demo,
        src,
        "localhost",
        b"Subject: from localhost\n\nhello\n",
    );
    let mut c = Checks::default();
    c.check(
        format!("EHLO localhost gets {HELO_REPLY:?}"),
        out.contains(&format!("<** {HELO_REPLY}")),
    );
    c.check("no DATA (no 354)", !out.contains("<-  354"));
    let log = show_session_log(rig, src);
    c.check(
        "helo-reject logged its decision",
        log.iter()
            .any(|l| l.contains("helo-reject: info:") && l.ends_with("rejected")),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);
    c
}

/// One data line of 65,500 bytes: the first filter that echoes data lines does not echo it (it would wedge 7.4; 6.8
/// would cut it), the message is refused with 552 5.3.4, and the next session is served
/// at once.
fn long_line_message(demo: &Demo) -> Checks {
    let rig = &demo.rig;
    let src = CLIENTS_WITH_RDNS[2];
    let mut line = Vec::with_capacity(LONG_LINE + 11);
    while line.len() < LONG_LINE {
        line.extend_from_slice(b"0123456789 ");
    }
    line.truncate(LONG_LINE);
    let msg = [
        &b"Subject: one very long line\n\n"[..],
        &line,
        b"\nlast line\n",
    ]
    .concat();
    let before = rig.delivered().len();
    let out = send(demo, src, "client90.lab.test", &msg);
    let mut c = Checks::default();
    c.check(
        format!("refused with {LINE_TOO_LONG_REPLY:?}"),
        out.contains(&format!("<** {LINE_TOO_LONG_REPLY}")),
    );
    let log = show_session_log(rig, src);
    c.check(
        "the first filter that echoes data lines (filter-senderscore, for its header) logged why",
        log.iter()
            .any(|l| l.contains("filter-senderscore: warn:") && l.contains("message refused")),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);

    println!("  the next session, right after:");
    let t = Instant::now();
    let next = b"Subject: after the long line\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <demo-next@client10.lab.test>\n\nstill served\n";
    let outcome = rig.session_within(
        CLIENTS_WITH_RDNS[0],
        "client10.lab.test",
        next,
        Duration::from_secs(20),
    );
    let delivered = outcome.accepted()
        && wait_delivered(
            rig,
            before + 1,
            Duration::from_secs(20).saturating_sub(t.elapsed()),
        )
        .len()
            > before;
    println!("    {outcome}");
    c.check(
        format!(
            "the next session is served and its message delivered ({:.2} s; bound 20 s)",
            t.elapsed().as_secs_f64()
        ),
        delivered && t.elapsed() < Duration::from_secs(20),
    );
    c
}

/// Sends with swaks from `src` and prints the server's replies; returns the transcript.
fn send(demo: &Demo, src: &str, ehlo: &str, msg: &[u8]) -> String {
    let out = demo
        .rig
        .send_message(src, SENDER, &[RCPT_OK], msg, &["--ehlo", ehlo]);
    let t = transcript(&out);
    println!("  swaks from {src}, EHLO {ehlo}: the server's replies");
    for l in server_replies(&t) {
        println!("    {l}");
    }
    if !out.status.success() {
        let code = out
            .status
            .code()
            .map_or("killed".to_string(), |c| c.to_string());
        println!("    (swaks exit status {code}: it says so when a reply is not what it wanted)");
    }
    t
}

/// Prints and returns the lines of smtpd's log about the last session from `src`: smtpd's
/// own lines (they start with the session id), the filters' lines (they name it), and the
/// deliveries of its envelopes. Waits for the session's session-logger line first.
fn show_session_log(rig: &Rig, src: &str) -> Vec<String> {
    let connected = format!(" smtp connected address={src} ");
    let Some(sid) = rig
        .log_lines(&connected)
        .last()
        .and_then(|l| l.split(' ').next().map(str::to_string))
    else {
        println!("  (no session from {src} in smtpd's log)");
        return Vec::new();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.log_lines(&format!("session={sid} ")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    let log = rig.smtpd_log();
    let mut lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains(&sid))
        .map(str::to_string)
        .collect();
    let evpids: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split(" evpid=").nth(1))
        .filter_map(|r| r.split(' ').next())
        .map(|e| format!(" evpid={e} "))
        .collect();
    lines.extend(
        log.lines()
            .filter(|l| {
                l.contains(" mda delivery ") && evpids.iter().any(|e| l.contains(e.as_str()))
            })
            .map(str::to_string),
    );
    println!("  smtpd's log for session {sid} (filters' lines start with the filter's name):");
    for l in &lines {
        println!("    {l}");
    }
    lines
}

/// Waits until `n` messages are delivered (or the timeout passes); returns them.
fn wait_delivered(rig: &Rig, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = rig.delivered();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn print_bytes(raw: &[u8]) {
    for line in split_lines(raw) {
        let mut s = String::new();
        for &b in line {
            match b {
                b'\t' => s.push_str("\\t"),
                b'\\' => s.push_str("\\\\"),
                0x20..=0x7e => s.push(b as char),
                _ => {
                    let _ = write!(s, "\\x{b:02x}");
                }
            }
        }
        println!("    | {s}");
    }
}

fn heading(title: &str) {
    println!("\n-- {title} --");
}
