//! Golden transcripts: what real daemons sent (OpenSMTPD 6.8 and 7.4, captured by our
//! capture filter, see tests/data/transcripts/README.md), and hand-written sessions for
//! the versions no daemon here speaks. Each must parse line by line, and replayed
//! through a pass-through filter, must get exactly the answers smtpd expects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use opensmtpd_filter::protocol::{Input, Interest, Request, Version, parse_line};
use opensmtpd_filter::session::SessionInfo;
use opensmtpd_filter::testkit::TestKit;
use opensmtpd_filter::{DataMode, Filter};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/transcripts")
        .join(name)
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.ends_with(b"\n"),
        "{} must end with a newline",
        path.display()
    );
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn scenarios(name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no transcripts in {name}");
    files
}

#[test]
fn every_captured_line_parses_with_its_daemons_version() {
    for (name, version) in [
        ("smtpd-6.8", Version::V0_6),
        ("smtpd-7.4", Version::V0_7),
        ("hand", Version::V0_4),
    ] {
        for file in scenarios(name) {
            for (n, line) in lines_of(&file).iter().enumerate() {
                let parsed = parse_line(line).unwrap_or_else(|e| {
                    panic!(
                        "{}:{}: {e}: {}",
                        file.display(),
                        n + 1,
                        String::from_utf8_lossy(line)
                    )
                });
                let line_version = match parsed {
                    Input::Config(_) => continue,
                    Input::Report(r) => r.version,
                    Input::Request(r) => r.version,
                };
                if name != "hand" {
                    assert_eq!(line_version, version, "{}:{}", file.display(), n + 1);
                }
            }
        }
    }
}

struct Pass;

impl Filter for Pass {
    type Session = ();
    fn interest(&self) -> Interest {
        Interest::new().all_reports().all_phases()
    }
    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }
}

/// What smtpd expects of a pass-through filter, per session, derived from the input
/// alone (not from the library).
fn expected_answers(input: &[Vec<u8>], version: (u32, u32)) -> HashMap<String, Vec<Vec<u8>>> {
    let max_echo = if version < (0, 7) { 1_997 } else { 65_484 };
    let mut want: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut refused: HashMap<String, bool> = HashMap::new();
    for line in input {
        let text = String::from_utf8_lossy(line);
        let f: Vec<&str> = text.splitn(8, '|').collect();
        if f[0] != "filter" {
            continue;
        }
        let (phase, sid, token) = (f[4], f[5].to_string(), f[6]);
        let ids = if version < (0, 5) {
            format!("{token}|{sid}")
        } else {
            format!("{sid}|{token}")
        };
        let answers = want.entry(sid.clone()).or_default();
        match phase {
            "data-line" => {
                let prefix = line.iter().enumerate().filter(|(_, b)| **b == b'|').nth(6).unwrap().0 + 1;
                let data = &line[prefix..];
                if data.len() > max_echo {
                    refused.insert(sid.clone(), true);
                    continue;
                }
                let mut answer = format!("filter-dataline|{ids}|").into_bytes();
                answer.extend_from_slice(data);
                answers.push(answer);
            }
            "commit" if refused.remove(&sid).is_some() => answers.push(
                format!("filter-result|{ids}|reject|552 5.3.4 Message refused: a line is too long for the filters of this server")
                    .into_bytes(),
            ),
            _ => answers.push(format!("filter-result|{ids}|proceed").into_bytes()),
        }
    }
    want
}

async fn replay(handshake: &[String], input: &[Vec<u8>], version: (u32, u32), what: &str) {
    let hs: Vec<&str> = handshake.iter().map(String::as_str).collect();
    let mut kit = TestKit::new(Pass)
        .protocol(version.0, version.1)
        .handshake(&hs)
        .start()
        .await;
    for line in input {
        kit.send(line).await;
    }
    let got_lines = kit.drain().await;
    let summary = kit.finish().await;
    let mut got: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let sid_field = if version < (0, 5) { 2 } else { 1 };
    for line in got_lines {
        let sid = String::from_utf8_lossy(line.split(|&b| b == b'|').nth(sid_field).unwrap())
            .into_owned();
        got.entry(sid).or_default().push(line);
    }
    let want = expected_answers(input, version);
    assert_eq!(got.len(), want.len(), "{what}: sessions answered");
    for (sid, answers) in &want {
        let g = got.get(sid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            g.len(),
            answers.len(),
            "{what}: session {sid}: number of answers"
        );
        for (i, (g, w)) in g.iter().zip(answers).enumerate() {
            assert_eq!(
                g,
                w,
                "{what}: session {sid}: answer {i}:\n got {}\nwant {}",
                String::from_utf8_lossy(g),
                String::from_utf8_lossy(w)
            );
        }
    }
    assert_eq!(
        summary.open_sessions, 0,
        "{what}: every session ended with link-disconnect"
    );
}

#[tokio::test]
async fn captured_sessions_replay_through_a_passthrough_filter() {
    for (name, version) in [("smtpd-6.8", (0, 6)), ("smtpd-7.4", (0, 7))] {
        let files = scenarios(name);
        let handshake: Vec<String> = lines_of(&files[0])
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert!(
            handshake.last().is_some_and(|l| l == "config|ready"),
            "{name}: handshake file"
        );
        for file in &files[1..] {
            let what = format!("{name}/{}", file.file_name().unwrap().to_string_lossy());
            replay(&handshake, &lines_of(file), version, &what).await;
        }
    }
}

#[tokio::test]
async fn hand_written_sessions_of_every_version() {
    for (major, minor) in [(0u32, 4u32), (0, 5), (0, 6), (0, 7)] {
        let file = dir("hand").join(format!("session-{major}.{minor}.txt"));
        let input = lines_of(&file);
        // The fields whose order changes between versions come out the same.
        let mut info = SessionInfo::new(opensmtpd_filter::protocol::SessionId::new(0xc1));
        let mut requests = Vec::new();
        for line in &input {
            match parse_line(line).unwrap() {
                Input::Report(r) => info.apply(&r.event),
                Input::Request(r) => requests.push(format!("{:?}", r.request)),
                Input::Config(_) => {}
            }
            if let Ok(Input::Report(r)) = parse_line(line) {
                if let opensmtpd_filter::protocol::Event::TxRcpt { .. } = r.event {
                    let tx = info.transaction.as_ref().unwrap();
                    assert_eq!(
                        tx.mail_from.as_deref(),
                        Some(&b"pi|pe@example.org"[..]),
                        "0.{minor}"
                    );
                    assert_eq!(tx.recipients[0].address, b"bo|x@lab.test", "0.{minor}");
                }
            }
        }
        assert_eq!(info.authenticated_user(), Some(&b"us|er"[..]), "0.{minor}");
        assert!(
            requests.iter().any(|r| r.contains("<redacted>")),
            "the auth request prints redacted"
        );
        assert!(
            !requests.iter().any(|r| r.contains("AHVz")),
            "never the credentials"
        );
        let line = parse_line(&input[1]).unwrap();
        assert!(matches!(line, Input::Request(r) if matches!(r.request, Request::Connect { .. })));
        let handshake = vec![
            "config|smtpd-version|6.6.4p1".to_string(),
            "config|smtp-session-timeout|300".to_string(),
            "config|subsystem|smtp-in".to_string(),
            "config|ready".to_string(),
        ];
        replay(
            &handshake,
            &input,
            (major, minor),
            &format!("hand/session-{major}.{minor}"),
        )
        .await;
    }
}
