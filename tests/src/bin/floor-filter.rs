//! The floor of a filter: what smtpd's filter layer costs for a filter that registers
//! exactly what another filter registers and does nothing else. `mta-bench` puts one
//! in the place of each filter of a chain (`floor-ours-3`, `floor-ours-2`,
//! `floor-go-2`), so that the chain's time minus its floor's is what the filters' own
//! work adds, with smtpd's cost of the events they asked for taken out.
//!
//! ```text
//! floor-filter REGISTRATIONS
//! ```
//!
//! `REGISTRATIONS` is a file of the `register|…` lines the filter it stands for writes
//! after `config|ready` (captured from it by `mta-bench`), `register|ready` last. Then
//! every `data-line` request is echoed back and every other filter request answered
//! `proceed`; reports are read and dropped.
//!
//! Cheap the way `../shared/bench/peers/limit-c/limit.c` is: big reads, a scan for the
//! newline, the field boundaries found and no more, the answers of one read written
//! together before the next read, nothing allocated per line.

use std::io::{Read, Write};

const READ_CHUNK: usize = 1 << 20;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: floor-filter REGISTRATIONS");
        std::process::exit(2);
    };
    let registrations = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("floor-filter: {}: {e}", path.to_string_lossy());
            std::process::exit(2);
        }
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut have = 0;
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        if have == buf.len() {
            // a line longer than the buffer: smtpd never sends one
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stdin.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        have += n;
        let mut start = 0;
        while let Some(i) = buf[start..have].iter().position(|&b| b == b'\n') {
            answer(&buf[start..start + i], &registrations, &mut out);
            start += i + 1;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if !out.is_empty() {
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
            out.clear();
        }
    }
}

/// The answer to one line from smtpd, appended to `out`.
fn answer(line: &[u8], registrations: &[u8], out: &mut Vec<u8>) {
    if line == b"config|ready" {
        out.extend_from_slice(registrations);
        return;
    }
    // filter|VERSION|TIME|SUBSYSTEM|PHASE|SESSION|TOKEN[|PARAMETERS]
    let Some(rest) = line.strip_prefix(b"filter|") else {
        return;
    };
    let mut fields = rest.splitn(7, |&b| b == b'|');
    let (Some(_version), Some(_time), Some(_subsystem), Some(phase), Some(session), Some(token)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return;
    };
    let parameters = fields.next();
    if phase == b"data-line" {
        out.extend_from_slice(b"filter-dataline|");
        out.extend_from_slice(session);
        out.push(b'|');
        out.extend_from_slice(token);
        out.push(b'|');
        out.extend_from_slice(parameters.unwrap_or_default());
        out.push(b'\n');
    } else {
        out.extend_from_slice(b"filter-result|");
        out.extend_from_slice(session);
        out.push(b'|');
        out.extend_from_slice(token);
        out.extend_from_slice(b"|proceed\n");
    }
}

#[cfg(test)]
mod tests {
    use super::answer;

    fn answers(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            answer(
                l,
                b"register|filter|smtp-in|data-line\nregister|ready\n",
                &mut out,
            );
        }
        out
    }

    #[test]
    fn registers_what_it_was_given_and_answers_every_request() {
        assert_eq!(
            answers(&[b"config|protocol|0.7", b"config|ready"]),
            b"register|filter|smtp-in|data-line\nregister|ready\n"
        );
        assert_eq!(
            answers(&[b"filter|0.7|1.5|smtp-in|data-line|s1|t1|a|b||c"]),
            b"filter-dataline|s1|t1|a|b||c\n"
        );
        assert_eq!(
            answers(&[b"filter|0.7|1.5|smtp-in|data-line|s1|t1|"]),
            b"filter-dataline|s1|t1|\n"
        );
        assert_eq!(
            answers(&[b"filter|0.6|1.5|smtp-in|commit|s1|t2"]),
            b"filter-result|s1|t2|proceed\n"
        );
        assert_eq!(
            answers(&[b"report|0.7|1.5|smtp-in|link-connect|s1|x|pass|1.2.3.4:5|6.7.8.9:25"]),
            b""
        );
    }
}
