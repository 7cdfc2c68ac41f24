//! Runs both fuzz targets over the golden transcripts, over inputs written by hand
//! and over whatever is in `corpus/<target>/` and `artifacts/<target>/`: the targets'
//! checks on stable Rust, without cargo-fuzz or libFuzzer's instrumentation.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml` (add `-- --nocapture` to see counts).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The captured and hand-written transcripts: (handshake, scenario) pairs.
fn transcripts() -> Vec<Vec<u8>> {
    let base = root().join("../opensmtpd-filter/tests/data/transcripts");
    let mut streams = Vec::new();
    for dir in ["smtpd-6.8", "smtpd-7.4", "hand"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(base.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        let handshake = files
            .iter()
            .find(|f| f.ends_with("00-handshake.txt"))
            .map(|f| std::fs::read(f).unwrap())
            .unwrap_or_else(|| b"config|smtpd-version|6.6.4\nconfig|ready\n".to_vec());
        for file in files.iter().filter(|f| !f.ends_with("00-handshake.txt")) {
            let mut stream = handshake.clone();
            stream.extend(std::fs::read(file).unwrap());
            streams.push(stream);
        }
    }
    assert!(streams.len() > 20);
    streams
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                inputs.push(std::fs::read(path).unwrap());
            }
        }
    }
    inputs
}

#[test]
fn parse_line_target() {
    let mut inputs = corpus("parse_line");
    for stream in transcripts() {
        for line in stream.split(|&b| b == b'\n') {
            inputs.push(line.to_vec());
            let mut with_extra = line.to_vec();
            with_extra.extend_from_slice(b"\n550 5.7.1 no|thanks \xe9");
            inputs.push(with_extra);
        }
    }
    for extra in [&b"x"[..], b".", b"..", b"", b"\xff\n", &[b'a'; 70_000]] {
        for ver in ["0.4", "0.5", "0.6", "0.7", "0.12"] {
            for wire in [&b"..x"[..], b".", b"", &[b'y'; 65_484], &[b'y'; 1_998]] {
                let mut input = format!("filter|{ver}|1.0|smtp-in|data-line|01|02|").into_bytes();
                input.extend_from_slice(wire);
                input.push(b'\n');
                input.extend_from_slice(extra);
                inputs.push(input);
            }
        }
    }
    for input in &inputs {
        opensmtpd_filter_fuzz::parse_line(input);
    }
    println!("parse_line: {} inputs", inputs.len());
}

#[test]
fn runtime_target() {
    let mut inputs = corpus("runtime");
    for stream in transcripts() {
        for chunk in [0u8, 1, 7, 255] {
            let mut input = vec![chunk];
            input.extend_from_slice(&stream);
            inputs.push(input);
        }
    }
    // A message with lines around the limits, and the same with no handshake.
    for ver in ["0.4", "0.6", "0.7"] {
        let mut s = b"\x03config|ready\n".to_vec();
        for len in [1_997usize, 1_998, 65_484, 65_485] {
            s.extend_from_slice(format!("filter|{ver}|1.0|smtp-in|data-line|0a|0b|").as_bytes());
            s.extend(std::iter::repeat_n(b'z', len));
            s.push(b'\n');
        }
        s.extend_from_slice(format!("filter|{ver}|1.0|smtp-in|data-line|0a|0b|.\n").as_bytes());
        s.extend_from_slice(format!("filter|{ver}|1.0|smtp-in|commit|0a|0c|\n").as_bytes());
        let mut bare = vec![3u8];
        bare.extend_from_slice(&s[b"\x03config|ready\n".len()..]);
        inputs.push(s);
        inputs.push(bare);
    }
    for input in &inputs {
        opensmtpd_filter_fuzz::runtime(input);
    }
    println!("runtime: {} inputs", inputs.len());
}
