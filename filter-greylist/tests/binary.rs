//! The real binary: start-up errors name what is wrong and exit 1 (smtpd then says the
//! filter could not start, instead of running without it), and SIGHUP reloads the
//! allowlists while the filter runs on, keeping its state.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_filter-greylist");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("greylist-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_error(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the filter");
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail at start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_up_errors_name_the_culprit() {
    let dir = temp_dir("errors");
    let e = start_error(&["-wl-ip", "/nonexistent/wl-ip", "--store", "memory"]);
    assert!(e.contains("-wl-ip /nonexistent/wl-ip: cannot read"), "{e}");
    let list = dir.join("wl-domain");
    std::fs::write(&list, "example.org\n# fine\nnot an entry\n").unwrap();
    let e = start_error(&["-wl-domain", list.to_str().unwrap(), "--store", "memory"]);
    assert!(
        e.contains(&format!("-wl-domain {} line 3:", list.display())),
        "{e}"
    );
    let foreign = dir.join("notes.txt");
    std::fs::write(&foreign, "my notes\n").unwrap();
    let e = start_error(&["--store", foreign.to_str().unwrap()]);
    assert!(e.contains("is not a filter-greylist store"), "{e}");
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"my notes\n",
        "left untouched"
    );
    let e = start_error(&["-passtime", "soon"]);
    assert!(e.contains("-passtime \"soon\""), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the filter");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("filter-result|") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        stdin
            .write_all(b"config|smtpd-version|6.8.0p2\nconfig|subsystem|smtp-in\nconfig|ready\n")
            .unwrap();
        Running {
            child,
            stdin,
            answers,
        }
    }

    /// One session from `ip` (no HELO, null sender: no SPF lookup); the answer.
    fn rcpt(&mut self, sid: u64, ip: &str) -> String {
        let head = "report|0.6|1700000000.000001|smtp-in";
        let lines = format!(
            "{head}|link-connect|{sid:016x}|<unknown>|fail|{ip}:4000|192.0.2.25:25\n\
             {head}|tx-begin|{sid:016x}|0000000a\n\
             {head}|tx-mail|{sid:016x}|0000000a|ok|\n\
             filter|0.6|1700000000.000002|smtp-in|rcpt-to|{sid:016x}|00000000000000aa|user@lab.test\n"
        );
        self.stdin.write_all(lines.as_bytes()).unwrap();
        let answer = self
            .answers
            .recv_timeout(Duration::from_secs(10))
            .expect("an answer");
        // smtpd frees the session after the answer (an answer after it is dropped)
        self.stdin
            .write_all(format!("{head}|link-disconnect|{sid:016x}\n").as_bytes())
            .unwrap();
        answer.rsplit('|').next().unwrap_or_default().to_string()
    }
}

#[test]
fn sighup_reloads_the_lists_and_keeps_the_state() {
    let dir = temp_dir("sighup");
    let list = dir.join("wl-ip");
    std::fs::write(&list, "192.0.2.1\n").unwrap();
    let mut f = Running::start(&["-wl-ip", list.to_str().unwrap(), "--store", "memory"]);
    assert_eq!(f.rcpt(1, "192.0.2.1"), "proceed");
    let greylisted = f.rcpt(2, "198.51.100.9");
    assert!(greylisted.starts_with("451 4.7.1"), "{greylisted}");
    std::fs::write(&list, "198.51.100.0/24\n").unwrap();
    let hup = |pid: u32| {
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    hup(f.child.id());
    // the reload is asynchronous: ask until it shows
    let mut answer = String::new();
    for sid in 3..200 {
        answer = f.rcpt(sid, "198.51.100.9");
        if answer == "proceed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(answer, "proceed", "the new list is in force");
    assert!(
        f.rcpt(300, "192.0.2.1").starts_with("451"),
        "the old entry is gone"
    );
    // a broken list keeps the lists in force; the filter runs on
    std::fs::write(&list, "garbage line\n").unwrap();
    hup(f.child.id());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.rcpt(301, "198.51.100.9"), "proceed");
    // the state is kept across reloads: 192.0.2.1's grey entry (made after the first
    // reload) makes this an early retry
    assert!(f.rcpt(302, "192.0.2.1").starts_with("451"));
    assert!(
        f.child.try_wait().unwrap().is_none(),
        "the filter still runs"
    );
    // end of input ends it cleanly
    drop(f.stdin);
    let status = f.child.wait().unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
