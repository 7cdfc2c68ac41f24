//! The real binary: start-up errors name what is wrong and exit 1 (smtpd then says the
//! filter could not start, instead of running without it), and SIGHUP reloads the
//! allowlists while the filter runs on, keeping its state; on glibc the filter serves
//! from its second start, with the per-thread malloc caches off.

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
        Running::start_with(args, None)
    }

    /// [`Running::start`] with `GLIBC_TUNABLES` set to `tunables` (`None`: unset).
    fn start_with(args: &[&str], tunables: Option<&str>) -> Running {
        let mut command = Command::new(BIN);
        match tunables {
            Some(t) => command.env("GLIBC_TUNABLES", t),
            None => command.env_remove("GLIBC_TUNABLES"),
        };
        let mut child = command
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
        self.rcpt_to(sid, ip, "user@lab.test")
    }

    /// [`Running::rcpt`] to `rcpt`.
    fn rcpt_to(&mut self, sid: u64, ip: &str, rcpt: &str) -> String {
        let head = "report|0.6|1700000000.000001|smtp-in";
        let lines = format!(
            "{head}|link-connect|{sid:016x}|<unknown>|fail|{ip}:4000|192.0.2.25:25\n\
             {head}|tx-begin|{sid:016x}|0000000a\n\
             {head}|tx-mail|{sid:016x}|0000000a|ok|\n\
             filter|0.6|1700000000.000002|smtp-in|rcpt-to|{sid:016x}|00000000000000aa|{rcpt}\n"
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

/// What `pid` was started with: its first argument and its `GLIBC_TUNABLES`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn started_as(pid: u32) -> (String, Option<String>) {
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
    let cmdline = read("cmdline");
    let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let environ = read("environ");
    let tunables = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    (String::from_utf8_lossy(arg0).into_owned(), tunables)
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn serves_with_glibc_per_thread_caches_off() {
    let mut f = Running::start_with(&["--store", "memory"], None);
    // an answer: the second start serves, on the same pipes
    assert!(f.rcpt(1, "192.0.2.7").starts_with("451 4.7.1"));
    let (arg0, tunables) = started_as(f.child.id());
    assert_eq!(arg0, BIN, "the same PID and arguments");
    assert_eq!(tunables.as_deref(), Some("glibc.malloc.tcache_count=0"));
    // and the same name, not `exe`: `pkill -HUP -x filter-greylist` must find it
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", f.child.id())).unwrap();
    assert_eq!(comm.trim_end(), "filter-greylist");
    drop(f.stdin);
    assert!(f.child.wait().unwrap().success());

    // the operator's own tunables are kept, with the count put in front (glibc may cut
    // what /proc shows after the first tunable)
    let mut f = Running::start_with(&["--store", "memory"], Some("glibc.malloc.arena_max=2"));
    assert!(f.rcpt(1, "192.0.2.7").starts_with("451 4.7.1"));
    let (_, tunables) = started_as(f.child.id());
    let tunables = tunables.unwrap_or_default();
    assert!(
        tunables == "glibc.malloc.tcache_count=0"
            || tunables == "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2",
        "{tunables}"
    );
    drop(f.stdin);
    assert!(f.child.wait().unwrap().success());

    // and a count the operator chose is left alone
    let mut f = Running::start_with(&["--store", "memory"], Some("glibc.malloc.tcache_count=7"));
    assert!(f.rcpt(1, "192.0.2.7").starts_with("451 4.7.1"));
    let (_, tunables) = started_as(f.child.id());
    assert_eq!(tunables.as_deref(), Some("glibc.malloc.tcache_count=7"));
    drop(f.stdin);
    assert!(f.child.wait().unwrap().success());
}

fn admin(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .args(args)
        .output()
        .expect("run the admin command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn admin_goes_through_the_control_socket_of_a_running_filter() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    let dir = temp_dir("control");
    let store = dir.join("greylist.redb");
    let store_arg = store.to_str().unwrap();
    let socket = dir.join("greylist.redb.sock");
    // a socket left by a killed filter is replaced
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut f = Running::start(&["--store", store_arg, "--trap-action", "reject"]);
    let greylisted = f.rcpt(1, "192.0.2.50");
    assert!(greylisted.starts_with("451 4.7.1"), "{greylisted}");
    let meta = std::fs::symlink_metadata(&socket).expect("the control socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // the store is locked by the filter: without the socket this would wait 10 s, fail
    let t = std::time::Instant::now();
    let (ok, list) = admin(&["--store", store_arg, "list"]);
    assert!(ok, "{list}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "answered through the socket"
    );
    assert!(list.starts_with("KIND "), "{list}");
    assert!(
        list.contains("net:192.0.2.0/24/<>@/user@lab.test"),
        "{list}"
    );
    let (ok, json) = admin(&["--store", store_arg, "list", "--json"]);
    assert!(ok && json.contains("\"kind\":\"grey\""), "{json}");

    // allow: the next attempt passes
    let (ok, out) = admin(&["--store", store_arg, "allow", "192.0.2.50"]);
    assert!(ok, "{out}");
    assert_eq!(out, "allowed: white-net:192.0.2.0/24\n");
    assert_eq!(f.rcpt(2, "192.0.2.50"), "proceed");
    // remove: greylisted again (an early retry of the first attempt)
    let (ok, out) = admin(&["--store", store_arg, "remove", "192.0.2.50"]);
    assert!(
        ok && out.contains("removed: white-net:192.0.2.0/24"),
        "{out}"
    );
    assert!(f.rcpt(3, "192.0.2.50").starts_with("451"));
    // trap a client: refused (--trap-action reject); untrap: greylisted only
    let (ok, out) = admin(&["--store", store_arg, "trap", "203.0.113.7"]);
    assert!(
        ok && out.starts_with("trapped: trap:203.0.113.7/32"),
        "{out}"
    );
    assert!(f.rcpt(4, "203.0.113.7").starts_with("550 5.7.1"));
    let (ok, out) = admin(&["--store", store_arg, "untrap", "203.0.113.7"]);
    assert!(ok && out == "untrapped: trap:203.0.113.7/32\n", "{out}");
    assert!(f.rcpt(5, "203.0.113.7").starts_with("451 4.7.1"));
    // a greytrap added while the filter runs counts at its next decision
    let (ok, out) = admin(&["--store", store_arg, "add-greytrap", "trap@lab.test"]);
    assert!(ok && out == "added: greytrap:trap@lab.test\n", "{out}");
    assert!(
        f.rcpt_to(6, "198.51.100.80", "trap@lab.test")
            .starts_with("550 5.7.1")
    );
    assert!(
        f.rcpt(7, "198.51.100.80").starts_with("550 5.7.1"),
        "trapped"
    );
    let (_, list) = admin(&["--store", store_arg, "list"]);
    assert!(list.contains("greytrap:trap@lab.test"), "{list}");
    assert!(list.contains("trap:198.51.100.80/32"), "{list}");
    // errors come back as errors
    let (ok, out) = admin(&["--store", store_arg, "allow", "not a thing"]);
    assert!(!ok && out.contains("is not an address"), "{out}");

    // a client that connects and says nothing does not hold decisions up
    let idle = UnixStream::connect(&socket).unwrap();
    assert_eq!(
        f.rcpt_to(8, "192.0.2.99", "x@lab.test").get(..3),
        Some("451")
    );
    drop(idle);
    // an oversized request is refused with an answer, and the filter runs on
    let mut big = UnixStream::connect(&socket).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = big.write_all(&vec![b'x'; 100_000]);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut big, &mut answer);
    assert!(
        answer.starts_with(b"1request longer than 65536 bytes"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let (ok, _) = admin(&["--store", store_arg, "list"]);
    assert!(ok);
    assert!(f.child.try_wait().unwrap().is_none(), "the filter runs on");

    // end of input ends the filter and removes the socket; the file is then opened directly
    drop(f.stdin);
    assert!(f.child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed on exit");
    let (ok, list) = admin(&["--store", store_arg, "list"]);
    assert!(ok && list.contains("greytrap:trap@lab.test"), "{list}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// smtpd reads a filter's stderr in the same process that passes its answers on: the
/// decision line of a recipient is written after its answer, not before. The filter's
/// stdout and stderr here are one pipe, so the order the bytes arrive in is the order
/// of the writes.
#[test]
fn a_decision_is_answered_before_it_is_logged() {
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(BIN)
        .args(["--store", "memory"])
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .expect("start the filter");
    let mut stdin = child.stdin.take().unwrap();
    let head = "report|0.6|1700000000.000001|smtp-in";
    let sid = "00000000000000c1";
    write!(
        stdin,
        "config|smtpd-version|6.8.0p2\nconfig|subsystem|smtp-in\nconfig|ready\n\
         {head}|link-connect|{sid}|<unknown>|fail|192.0.2.80:4000|192.0.2.25:25\n\
         {head}|tx-begin|{sid}|0000000a\n\
         {head}|tx-mail|{sid}|0000000a|ok|\n\
         filter|0.6|1700000000.000002|smtp-in|rcpt-to|{sid}|00000000000000aa|user@lab.test\n"
    )
    .unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("decision=")) {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no decision line; output: {seen:#?}"),
        }
    }
    let answered = seen.iter().position(|l| l.starts_with("filter-result|"));
    let logged = seen.iter().position(|l| l.contains("decision="));
    assert!(
        answered.is_some() && answered < logged,
        "the answer first: {seen:#?}"
    );
    drop(stdin);
    let _ = child.wait();
}
