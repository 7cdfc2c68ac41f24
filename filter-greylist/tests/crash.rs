//! Durability: the real binary, fed the protocol over a pipe as smtpd would, killed with
//! SIGKILL in the middle of a stream of decisions. Every whitelisting it acknowledged
//! (a `proceed` smtpd could have read) must be in the store afterwards.
//!
//! Sessions have no HELO and the null sender, so no SPF lookup is made (nothing to
//! check): each client network `10.A.B.0/24` gets a first attempt (tempfail) and, with
//! `-passtime 0`, an accepted retry that whitelists the network.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use filter_greylist::policy::Key;
use filter_greylist::store::{RedbStore, Store};

const NETWORKS: u32 = 1500;
const KILL_AFTER: usize = 200;

fn session_lines(n: u32, attempt: u32) -> String {
    let sid = format!("{:016x}", u64::from(n) * 2 + u64::from(attempt) + 1);
    let (a, b) = (n / 256, n % 256);
    let head = "report|0.7|1700000000.000001|smtp-in";
    format!(
        "{head}|link-connect|{sid}|<unknown>|fail|10.{a}.{b}.1:4000|192.0.2.25:25\n\
         {head}|tx-begin|{sid}|0000000a\n\
         {head}|tx-mail|{sid}|0000000a|ok|\n\
         filter|0.7|1700000000.000002|smtp-in|rcpt-to|{sid}|00000000000000aa|user@lab.test\n"
    )
}

#[test]
fn kill_9_loses_no_acknowledged_whitelisting() {
    let dir = std::env::temp_dir().join(format!("greylist-crash-{}", std::process::id()));
    let store_path = dir.join("greylist.redb");
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_filter-greylist"))
        .args(["-passtime", "0", "--store"])
        .arg(&store_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the filter");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();

    // read answers on a thread: every proceed is an acknowledged whitelisting
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut input = String::from(
        "config|smtpd-version|7.4.0-portable\nconfig|smtp-session-timeout|300\nconfig|subsystem|smtp-in\nconfig|ready\n",
    );
    // each network: a first attempt, then the retry (answered in order per session;
    // the retry's session comes after the first's answer is committed only if the
    // filter is fast, so both orders are fine: a retry seen first is a first attempt)
    for n in 0..NETWORKS {
        input.push_str(&session_lines(n, 0));
        input.push_str(&session_lines(n, 1));
    }
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        // keep stdin open until killed: EOF would end the filter cleanly
        std::thread::sleep(Duration::from_secs(120));
        drop(stdin);
    });

    let mut acknowledged: HashSet<(u32, u32)> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while acknowledged.len() < KILL_AFTER {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the filter answers");
        // filter-result|SID|TOKEN|proceed
        let fields: Vec<&str> = line.split('|').collect();
        if fields.first() == Some(&"filter-result") && fields.get(3) == Some(&"proceed") {
            let sid = u64::from_str_radix(fields[1], 16).unwrap();
            let n = ((sid - 1) / 2) as u32;
            acknowledged.insert((n / 256, n % 256));
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // whatever was still in the pipe was written before the kill: acknowledged too
    drop(writer);
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        let fields: Vec<&str> = line.split('|').collect();
        if fields.first() == Some(&"filter-result") && fields.get(3) == Some(&"proceed") {
            let sid = u64::from_str_radix(fields[1], 16).unwrap();
            let n = ((sid - 1) / 2) as u32;
            acknowledged.insert((n / 256, n % 256));
        }
    }
    assert!(
        acknowledged.len() < NETWORKS as usize,
        "the filter finished before it was killed: raise NETWORKS"
    );

    let store = RedbStore::open(&store_path).expect("the store opens after a kill -9");
    let white: HashSet<(u32, u32)> = store
        .entries()
        .unwrap()
        .into_iter()
        .filter_map(|(k, _)| match k {
            Key::WhiteNet(net) => match net.addr() {
                std::net::IpAddr::V4(v4) => {
                    let o = v4.octets();
                    Some((u32::from(o[1]), u32::from(o[2])))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let lost: Vec<_> = acknowledged.difference(&white).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged whitelistings lost: {:?}",
        lost.len(),
        acknowledged.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    drop(store);

    // the admin command reads the same file
    let out = Command::new(env!("CARGO_BIN_EXE_filter-greylist"))
        .args(["admin", "--store"])
        .arg(&store_path)
        .args(["list", "--json"])
        .output()
        .expect("run the admin command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let listed = text
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"white\",\"key\":\"white-net:10."))
        .count();
    assert_eq!(listed, white.len(), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_filter-greylist"))
        .args(["admin", "--store"])
        .arg(&store_path)
        .args(["explain", "10.0.0.1", "", "user@lab.test"])
        .output()
        .expect("run the admin command");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("grey key:  net:10.0.0.0/24/<>@/user@lab.test"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
