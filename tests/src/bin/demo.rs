//! The demo behind `scripts/demo`: a loopback OpenSMTPD (7.4 by default, `--daemon 6.8`)
//! with the three filters chained, `filter "inbound" chain { "senderscore", "greylist",
//! "rspamd" }` ([`opensmtpd_e2e::chain`], release builds), the rig's DNS server serving
//! the reputation zone and SPF, a real rspamd and a real Redis; real mail sent with swaks,
//! and what happened, readably: the server's replies, what each filter decided (from its
//! own log lines in smtpd's log) and the delivered bytes. Exits 0 only if every scenario
//! went as expected; everything it started is stopped on the way out (by PID, on drop).
//!
//! ```sh
//! cargo build --release -p filter-senderscore -p filter-greylist -p filter-rspamd
//! cargo run -p opensmtpd-e2e --release --bin demo -- [--daemon 6.8|7.4]
//! ```
//!
//! Each scenario is one function taking the [`Demo`] and returning its [`Checks`]; they
//! run in the order of [`SCENARIOS`] and share the chain's state (the greylisting of the
//! second one whitelists the domain the fourth one sends from). Each client has its own
//! address, so that its lines in smtpd's log can be told apart.

use opensmtpd_e2e::chain::{
    Chain, ChainBuilder, ChainFilter, GREYLISTED, GTUBE, GTUBE_REJECTED, Profile,
    SENDERSCORE_BLOCKED,
};
use opensmtpd_e2e::*;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The demo's clients, their SenderScore in the rig's copy of the zone, and their part.
const POOR: &str = "127.0.0.20";
const MIDDLING: &str = "127.0.0.50";
const POOL: &str = "127.0.0.90";
const ALLOWED: &str = "127.0.0.10";
const SCORES: [(&str, u8); 4] = [(POOR, 5), (MIDDLING, 50), (POOL, 80), (ALLOWED, 90)];
/// Below this score, a client is refused at connect.
const BLOCK_BELOW: i32 = 30;
/// The sender domain and its SPF policy: every address of 127.0.0.0/24 may send for it.
const DOMAIN: &str = "example.org";
const SPF: &str = "v=spf1 ip4:127.0.0.0/24 -all";
const PASS: Duration = Duration::from_secs(3);
const LONG_LINE: usize = 65_500;

/// The chain and what the scenarios share.
struct Demo {
    chain: Chain,
}

impl Demo {
    fn rig(&self) -> &Rig {
        self.chain.rig()
    }
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
    (
        "a client with a poor reputation (SenderScore 5)",
        poor_reputation,
    ),
    (
        "a client with a middling reputation (SenderScore 50): greylisted, then delivered",
        greylisted_then_delivered,
    ),
    (
        "GTUBE from a client greylisting allowlists (SenderScore 90)",
        allowlisted_gtube,
    ),
    (
        "a clean message with 8-bit bytes from another address of example.org's SPF pool",
        clean_message,
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
    println!("== OpenSMTPD filters demo: senderscore -> greylist -> rspamd on {daemon} ==");
    println!("(starting Redis, rspamd, the DNS server and smtpd; rspamd takes a few seconds)");
    let chain = match start(daemon) {
        Ok(chain) => chain,
        Err(e) => {
            eprintln!("demo: cannot start the chain: {e}");
            return ExitCode::FAILURE;
        }
    };
    let demo = Demo { chain };
    show_setup(&demo);
    let pids = demo.chain.filter_pids();

    let mut all_ok = true;
    for (title, scenario) in SCENARIOS {
        heading(title);
        let checks = scenario(&demo);
        println!("  checks:");
        checks.print();
        all_ok &= checks.ok();
    }

    heading("result");
    let alive = demo.rig().smtpd_alive();
    println!(
        "  smtpd still running after all scenarios: {}",
        if alive { "yes" } else { "NO" }
    );
    let lost = demo.chain.lost_filter_lines();
    println!(
        "  smtpd lost a filter: {}",
        if lost.is_empty() { "never" } else { "YES" }
    );
    for l in &lost {
        println!("    {l}");
    }
    let same = pids.len() == 3 && demo.chain.filter_pids() == pids;
    println!(
        "  the three filters are the processes that started: {}",
        if same { "yes" } else { "NO" }
    );
    for (f, pid) in demo.chain.filter_pids() {
        let kb =
            |v: Option<u64>| v.map_or("?".to_string(), |k| format!("{:.1} MB", k as f64 / 1024.0));
        println!(
            "    {:<20} PID {pid:<7} RSS {} (peak {})",
            f.binary(),
            kb(opensmtpd_e2e::chain::rss_kb(pid)),
            kb(opensmtpd_e2e::chain::peak_rss_kb(pid))
        );
    }
    all_ok &= alive && lost.is_empty() && same;
    println!(
        "  rig directory (smtpd.conf, smtpd.log; removed now, RIG_KEEP=1 keeps it): {}",
        demo.rig().dir().display()
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
    let usage = "usage: demo [--daemon 6.8|7.4]   (as root; build the filters first: cargo build --release -p filter-senderscore -p filter-greylist -p filter-rspamd)";
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

/// The chain: release builds, the demo's scores and SPF record, greylisting with a pass
/// time of [`PASS`] and [`ALLOWED`] on its allowlist.
fn start(daemon: Daemon) -> Result<Chain, RigError> {
    let mut b = ChainBuilder::new(daemon)
        .profile(Profile::Release)
        .block_below(BLOCK_BELOW)
        .spf(DOMAIN, SPF)
        .pass_time(PASS)
        .greylist_allow(ALLOWED);
    for (client, score) in SCORES {
        b = b.score(client.parse().expect("a demo client address"), score);
    }
    b.start()
}

fn show_setup(demo: &Demo) {
    heading("setup");
    let rig = demo.rig();
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
    println!(
        "  the rig's DNS server ({}:53) answers the reputation zone and SPF:",
        rig.dns_addr()
    );
    for (client, score) in SCORES {
        println!("    {client:<12} SenderScore {score}");
    }
    println!("    {DOMAIN:<12} TXT \"{SPF}\"");
    if let Some(r) = demo.chain.rspamd() {
        println!(
            "  rspamd 3.4 on {} and {} (filter-rspamd asks the socket)",
            r.url(),
            r.unix_socket().display()
        );
    }
    println!(
        "  Redis on 127.0.0.1:{} holds the greylisting state",
        demo.chain.redis().port()
    );
}

/// A client with a SenderScore of 5: filter-senderscore refuses it at connect, before it
/// can say anything; greylist and rspamd never hear of it.
fn poor_reputation(demo: &Demo) -> Checks {
    let rig = demo.rig();
    let before = rig.delivered().len();
    let out = send(
        demo,
        POOR,
        &format!("spammer@{DOMAIN}"),
        "poor.example.org",
        b"Subject: buy now\n\ncheap\n",
    );
    let mut c = Checks::default();
    c.check(
        format!("the connection gets {SENDERSCORE_BLOCKED:?} instead of a greeting"),
        out.contains(&format!("<** {SENDERSCORE_BLOCKED}")),
    );
    c.check("no EHLO answered (no 250)", !out.contains("<-  250"));
    let lines = show_decisions(rig, POOR);
    c.check(
        "filter-senderscore: score 5, disconnect at connect",
        decided(
            &lines,
            ChainFilter::Senderscore,
            &["score=5 ", "decision=disconnect phase=connect"],
        ),
    );
    c.check(
        "filter-greylist and filter-rspamd were never asked",
        !lines
            .iter()
            .any(|l| l.contains("filter-greylist:") || l.contains("filter-rspamd:")),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);
    c
}

/// A client with a SenderScore of 50: passes filter-senderscore (header only), is
/// greylisted at RCPT TO, retries too early, then after the pass time is accepted,
/// scanned by rspamd and delivered with the headers of both.
fn greylisted_then_delivered(demo: &Demo) -> Checks {
    let rig = demo.rig();
    let from = format!("news@{DOMAIN}");
    let msg = format!(
        "From: <{from}>\nTo: <{RCPT_OK}>\nSubject: the monthly news\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <news@example.org>\n\nHello,\nthe news of the month.\n"
    );
    let before = rig.delivered().len();
    let mut c = Checks::default();
    let first = Instant::now();
    println!("  first attempt:");
    let out = send(demo, MIDDLING, &from, "client50.lab.test", msg.as_bytes());
    c.check(
        format!("the first attempt gets {GREYLISTED:?} at RCPT TO"),
        out.contains(&format!("<** {GREYLISTED}")),
    );
    let lines = show_decisions(rig, MIDDLING);
    c.check(
        "filter-senderscore: score 50, proceed",
        decided(
            &lines,
            ChainFilter::Senderscore,
            &["score=50 ", "decision=proceed"],
        ),
    );
    c.check(
        "filter-greylist: SPF pass, tempfail, first attempt",
        decided(
            &lines,
            ChainFilter::Greylist,
            &["spf=pass", "decision=tempfail reason=first-attempt"],
        ),
    );
    println!("  an early retry, at once:");
    let out = send(demo, MIDDLING, &from, "client50.lab.test", msg.as_bytes());
    c.check(
        "the early retry is greylisted again",
        out.contains(&format!("<** {GREYLISTED}")),
    );
    let lines = show_decisions(rig, MIDDLING);
    c.check(
        "filter-greylist: early retry (the first-seen time is kept)",
        decided(
            &lines,
            ChainFilter::Greylist,
            &["decision=tempfail reason=early-retry"],
        ),
    );
    let wait = PASS.saturating_sub(first.elapsed()) + Duration::from_millis(300);
    println!(
        "  waiting {:.1} s for the pass time ({} s), then the retry:",
        wait.as_secs_f64(),
        PASS.as_secs()
    );
    std::thread::sleep(wait);
    let out = send(demo, MIDDLING, &from, "client50.lab.test", msg.as_bytes());
    c.check(
        "the retry after the pass time is accepted (250)",
        out.contains("Message accepted for delivery"),
    );
    let lines = show_decisions(rig, MIDDLING);
    c.check(
        "filter-greylist: retry passed, example.org whitelisted",
        decided(
            &lines,
            ChainFilter::Greylist,
            &["decision=accept reason=retry-passed(now white-domain:example.org)"],
        ),
    );
    c.check(
        "filter-rspamd: scanned, no action, proceed",
        decided(
            &lines,
            ChainFilter::Rspamd,
            &["action=\"no action\"", "answer=proceed"],
        ),
    );
    let delivered = wait_delivered(rig, before + 1, Duration::from_secs(20));
    if let Some(raw) = delivered.get(before) {
        print_delivered(raw);
        let got = strip_smtpd_headers(raw);
        c.check(
            "X-SenderScore: 50 on top (filter-senderscore, first in the chain)",
            got.starts_with(b"X-SenderScore: 50\n"),
        );
        c.check(
            "rspamd's headers are there (X-Spamd-Result, X-Rspamd-Action: no action)",
            contains(got, b"\nX-Spamd-Result: ")
                && contains(got, b"\nX-Rspamd-Action: no action\n"),
        );
        c.check(
            "the body is as sent",
            got.ends_with(b"\n\nHello,\nthe news of the month.\n"),
        );
    } else {
        c.check("the message was delivered", false);
    }
    c
}

/// GTUBE from a client on greylisting's allowlist: not greylisted, scanned by rspamd and
/// refused with 550 after the message.
fn allowlisted_gtube(demo: &Demo) -> Checks {
    let rig = demo.rig();
    let before = rig.delivered().len();
    let msg =
        format!("From: <friend@{DOMAIN}>\nTo: <{RCPT_OK}>\nSubject: the test pattern\n\n{GTUBE}\n");
    let out = send(
        demo,
        ALLOWED,
        &format!("friend@{DOMAIN}"),
        "client10.lab.test",
        msg.as_bytes(),
    );
    let mut c = Checks::default();
    c.check(
        format!("the message gets {GTUBE_REJECTED:?}"),
        out.contains(&format!("<** {GTUBE_REJECTED}")),
    );
    let lines = show_decisions(rig, ALLOWED);
    c.check(
        "filter-senderscore: score 90, proceed",
        decided(
            &lines,
            ChainFilter::Senderscore,
            &["score=90 ", "decision=proceed"],
        ),
    );
    c.check(
        "filter-greylist: accept, the client is allowlisted",
        decided(
            &lines,
            ChainFilter::Greylist,
            &["decision=accept reason=allowlisted-client"],
        ),
    );
    c.check(
        "filter-rspamd: rspamd says reject, 550",
        decided(
            &lines,
            ChainFilter::Rspamd,
            &["action=\"reject\"", "result=reject"],
        ),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);
    c
}

/// A clean message with Latin-1 and invalid UTF-8 bytes, dot lines, `|` and a tab, from
/// another address example.org's SPF authorises: the domain was whitelisted by the
/// retry above, so it is delivered at once, with every byte of the body as sent.
fn clean_message(demo: &Demo) -> Checks {
    let rig = demo.rig();
    let mut head = Vec::new();
    head.extend_from_slice(b"From: =?iso-8859-1?q?Ren=E9?= <rene@example.org>\n");
    head.extend_from_slice(b"To: <rigmail@lab.test>\n");
    head.extend_from_slice(b"Subject: caf\xe9 | cr\xe8me\n");
    head.extend_from_slice(b"Date: Thu, 01 Jan 2026 00:00:00 +0000\n");
    head.extend_from_slice(b"Message-Id: <demo-8bit@example.org>\n");
    head.extend_from_slice(b"Content-Type: text/plain; charset=iso-8859-1\n");
    head.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n");
    let mut body = Vec::new();
    body.extend_from_slice(b"Latin-1: caf\xe9, cr\xe8me br\xfbl\xe9e, Gr\xfc\xdfe\n");
    body.extend_from_slice(b"not UTF-8 at all: \xff\xfe\xc3\n");
    body.extend_from_slice(b".a line with a leading dot\n");
    body.extend_from_slice(b".\n");
    body.extend_from_slice(b"a | pipe\tand a tab\n");
    let msg = [&head[..], b"\n", &body[..]].concat();
    let before = rig.delivered().len();
    let out = send(demo, POOL, "rene@example.org", "client90.lab.test", &msg);
    let mut c = Checks::default();
    c.check(
        "accepted at once (250): no greylisting",
        out.contains("Message accepted for delivery") && !out.contains(GREYLISTED),
    );
    let lines = show_decisions(rig, POOL);
    c.check(
        "filter-senderscore: score 80, proceed",
        decided(
            &lines,
            ChainFilter::Senderscore,
            &["score=80 ", "decision=proceed"],
        ),
    );
    c.check(
        "filter-greylist: SPF pass, example.org is whitelisted",
        decided(
            &lines,
            ChainFilter::Greylist,
            &[
                "spf=pass",
                "decision=accept reason=whitelisted(white-domain:example.org)",
            ],
        ),
    );
    c.check(
        "filter-rspamd: scanned, proceed",
        decided(&lines, ChainFilter::Rspamd, &["answer=proceed"]),
    );
    let delivered = wait_delivered(rig, before + 1, Duration::from_secs(20));
    if let Some(raw) = delivered.get(before) {
        print_delivered(raw);
        let got = strip_smtpd_headers(raw);
        let (got_head, got_body) = match got.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&got[..i + 1], &got[i + 2..]),
            None => (got, &b""[..]),
        };
        let names: Vec<String> = split_lines(got_head)
            .into_iter()
            .filter(|l| !l.is_empty() && l[0] != b' ' && l[0] != b'\t')
            .map(|l| {
                let end = l.iter().position(|&b| b == b':').unwrap_or(l.len());
                String::from_utf8_lossy(&l[..end]).into_owned()
            })
            .collect();
        println!("  the header fields, in order: {}", names.join(", "));
        c.check(
            "first X-SenderScore: 80, Authentication-Results (rspamd), smtpd's Received",
            names.len() > 3
                && names[..3] == ["X-SenderScore", "Authentication-Results", "Received"]
                && got.starts_with(b"X-SenderScore: 80\n"),
        );
        c.check(
            "the client's own header fields follow, every byte as sent",
            contains(got_head, &head),
        );
        c.check(
            "then rspamd's: X-Spamd-Result, X-Spam-Status, X-Rspamd-Queue-Id, X-Rspamd-Server, X-Rspamd-Action",
            {
                let mut tail: Vec<&str> = names.iter().skip(3 + 7).map(String::as_str).collect();
                tail.sort();
                tail == ["X-Rspamd-Action", "X-Rspamd-Queue-Id", "X-Rspamd-Server", "X-Spam-Status", "X-Spamd-Result"]
            },
        );
        c.check(
            "the body is byte for byte as sent (8-bit bytes, dots, `|`, tab)",
            got_body == body.as_slice(),
        );
    } else {
        c.check("the message was delivered", false);
    }
    c
}

/// One data line of 65,500 bytes from the allowlisted client: filter-senderscore, the
/// first filter that echoes data lines, does not echo it (it would wedge 7.4; 6.8 would
/// cut it), the message is refused with 552 5.3.4, and the next session is served at once.
fn long_line_message(demo: &Demo) -> Checks {
    let rig = demo.rig();
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
    let out = send(
        demo,
        ALLOWED,
        &format!("friend@{DOMAIN}"),
        "client10.lab.test",
        &msg,
    );
    let mut c = Checks::default();
    c.check(
        format!("refused with {LINE_TOO_LONG_REPLY:?}"),
        out.contains(&format!("<** {LINE_TOO_LONG_REPLY}")),
    );
    let lines = show_decisions(rig, ALLOWED);
    c.check(
        "filter-senderscore (it echoes data lines for its header) said why",
        lines
            .iter()
            .any(|l| l.contains("filter-senderscore: warn:") && l.contains("message refused")),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.check("nothing delivered", rig.delivered().len() == before);

    println!("  the next session, right after:");
    let t = Instant::now();
    let bound = Duration::from_secs(20);
    let next = b"From: <friend@example.org>\nSubject: after the long line\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-Id: <demo-next@example.org>\n\nstill served\n";
    let out = send(
        demo,
        ALLOWED,
        &format!("friend@{DOMAIN}"),
        "client10.lab.test",
        next,
    );
    let delivered = out.contains("Message accepted for delivery")
        && wait_delivered(rig, before + 1, bound.saturating_sub(t.elapsed())).len() > before;
    c.check(
        format!(
            "the next session is served and its message delivered ({:.2} s; bound {} s)",
            t.elapsed().as_secs_f64(),
            bound.as_secs()
        ),
        delivered && t.elapsed() < bound,
    );
    c
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether one of `lines` is a line of `filter` with every one of `parts`.
fn decided(lines: &[String], filter: ChainFilter, parts: &[&str]) -> bool {
    let name = format!("{}: ", filter.binary());
    lines
        .iter()
        .any(|l| l.contains(&name) && parts.iter().all(|p| l.contains(p)))
}

/// Sends with swaks from `src` and prints the server's replies; returns the transcript.
fn send(demo: &Demo, src: &str, from: &str, ehlo: &str, msg: &[u8]) -> String {
    let out = demo
        .rig()
        .send_message(src, from, &[RCPT_OK], msg, &["--ehlo", ehlo]);
    let t = transcript(&out);
    println!("  swaks from {src}, EHLO {ehlo}, MAIL FROM <{from}>: the server's replies");
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

/// Prints and returns the filters' lines about the last session from `src` (they name
/// smtpd's session id), each with a plain account of what the filter decided. Waits a
/// little for them: a filter logs as it answers.
fn show_decisions(rig: &Rig, src: &str) -> Vec<String> {
    let connected = format!(" smtp connected address={src} ");
    let Some(sid) = rig
        .log_lines(&connected)
        .last()
        .and_then(|l| l.split(' ').next().map(str::to_string))
    else {
        println!("  (no session from {src} in smtpd's log)");
        return Vec::new();
    };
    // decisions say `session=ID `, warnings `session ID:`
    let of_session = || {
        let (a, b) = (format!("session={sid} "), format!("session {sid}:"));
        rig.smtpd_log()
            .lines()
            .filter(|l| l.contains(&a) || l.contains(&b))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // the session is over when swaks returns; give the last filter's line a moment
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut lines = of_session();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = of_session();
        if now.len() == lines.len() && !now.is_empty() || Instant::now() > deadline {
            lines = now;
            break;
        }
        lines = now;
    }
    println!("  what the filters decided (their own lines in smtpd's log, session {sid}):");
    for l in &lines {
        println!("    {}", l.trim());
        if let Some(account) = account(l) {
            println!("      => {account}");
        }
    }
    lines
}

/// A filter's log line in plain words.
fn account(line: &str) -> Option<String> {
    let v = |k: &str| field(line, k).unwrap_or_else(|| "?".to_string());
    if line.contains("filter-senderscore: info:") {
        Some(format!(
            "senderscore: score {} ({}) -> {} at {}",
            v("score"),
            v("source"),
            v("decision"),
            v("phase")
        ))
    } else if line.contains("filter-greylist: info:") {
        Some(format!(
            "greylist: SPF {} -> {} ({})",
            v("spf"),
            v("decision"),
            v("reason")
        ))
    } else if line.contains("filter-rspamd:") && line.contains(" action=") {
        Some(format!(
            "rspamd: action {}, score {} -> {}",
            v("action"),
            v("score"),
            v("answer")
        ))
    } else if let Some((_, said)) = line.split_once(": warn: ") {
        Some(format!(
            "warning: {}",
            said.split_once(": ").map_or(said, |(_, why)| why)
        ))
    } else {
        None
    }
}

/// The value of `key=` in a log line (`"…"` quoted values unquoted).
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next().map(str::to_string)
    } else {
        rest.split(' ').next().map(str::to_string)
    }
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

fn print_delivered(raw: &[u8]) {
    println!("  delivered message (bytes as stored, non-ASCII as \\xNN):");
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
