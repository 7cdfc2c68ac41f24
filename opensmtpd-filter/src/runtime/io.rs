//! The I/O loop: reads lines from smtpd, feeds the engine, writes its answers.

use std::io;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::engine::Engine;
use super::filter::Filter;
use super::logger::write_held;

/// A line longer than this (16 MiB) is not something smtpd sends: it is dropped, with
/// a log line, rather than buffered without bound. smtpd's own lines stay under 64 KiB.
const MAX_INPUT_LINE: usize = 16 << 20;

const READ_CHUNK: usize = 256 * 1024;

/// Messages being written back are added to the output only while it holds less than
/// this: memory for output stays bounded however large the messages, and the answers
/// of other sessions go out between their pieces.
const OUT_BUDGET: usize = 256 * 1024;

pub(crate) async fn drive<F, R, W>(
    engine: &mut Engine<F>,
    mut input: R,
    mut output: W,
) -> io::Result<()>
where
    F: Filter,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = InputLines::new();
    let mut writer = Writer { broken: false };
    loop {
        drain_ready(engine);
        let more = engine.pump(OUT_BUDGET);
        writer.flush(&mut engine.out, &mut output).await;
        write_held();
        tokio::select! {
            biased;
            Some(done) = engine.inflight.next(), if !engine.inflight.is_empty() => engine.complete(done),
            read = input.read(lines.spare()) => match read {
                Ok(0) => break,
                Ok(n) => {
                    lines.filled(n);
                    while let Some(line) = lines.next_line() {
                        engine.handle_line(line);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("reading from smtpd failed ({e}); treating it as the end of input");
                    break;
                }
            },
            // nothing to read now: write the next pieces of the messages being echoed
            () = std::future::ready(()), if more => {}
        }
    }
    if let Some(len) = lines.unfinished() {
        log::warn!("input ended inside a line ({len} bytes without a newline); ignoring it");
    }
    // End of input: smtpd is going away. Let running handlers finish (each is bounded
    // by the handler timeout), write their answers, and stop.
    loop {
        let more = engine.pump(OUT_BUDGET);
        writer.flush(&mut engine.out, &mut output).await;
        write_held();
        if more {
            continue;
        }
        match engine.inflight.next().await {
            Some(done) => engine.complete(done),
            None => break,
        }
    }
    writer.flush(&mut engine.out, &mut output).await;
    Ok(())
}

/// Completes every handler that is ready now, without waiting, so that their answers
/// go out in the same write as the rest.
fn drain_ready<F: Filter>(engine: &mut Engine<F>) {
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // FuturesUnordered yields after a batch; the select below polls it again with the
    // real waker, so nothing is lost by stopping at the first Pending here.
    while let std::task::Poll::Ready(Some(done)) = engine.inflight.poll_next_unpin(&mut cx) {
        engine.complete(done);
    }
}

/// The bytes read from smtpd that are not yet handled, `buf[start..end]`, cut into
/// lines. The buffer is zeroed once, when it grows, not before each read: a read into
/// memory not yet initialised would have to zero it first (256 KiB a read).
struct InputLines {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// `buf[start..scanned]` holds no `\n`.
    scanned: usize,
    /// Inside a line over [`MAX_INPUT_LINE`], whose bytes are dropped up to its end.
    discarding: bool,
}

impl InputLines {
    fn new() -> InputLines {
        InputLines {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            scanned: 0,
            discarding: false,
        }
    }

    /// Room for the next read, at least a quarter of [`READ_CHUNK`]: the unfinished
    /// line moves to the front, and the buffer grows only for a line that long.
    fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < READ_CHUNK / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < READ_CHUNK / 4 {
                self.buf.resize(self.buf.len() + READ_CHUNK, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Takes note that a read put `n` bytes into [`spare`](Self::spare).
    fn filled(&mut self, n: usize) {
        self.end += n;
        if self.end - self.start > MAX_INPUT_LINE && !self.has_line() {
            if !self.discarding {
                log::error!("dropping a line of more than {MAX_INPUT_LINE} bytes from smtpd");
            }
            self.discarding = true;
            self.clear();
        }
    }

    fn has_line(&self) -> bool {
        memchr::memchr(b'\n', &self.buf[self.scanned..self.end]).is_some()
    }

    /// The next whole line (without its `\n`), if one was read.
    fn next_line(&mut self) -> Option<&[u8]> {
        loop {
            let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) else {
                self.scanned = self.end;
                // Nothing left, or only more of a line being dropped: hold nothing, so
                // that the rest of an over-long line never piles up again.
                if self.start == self.end || self.discarding {
                    self.clear();
                }
                return None;
            };
            let (start, end) = (self.start, self.scanned + i);
            self.start = end + 1;
            self.scanned = self.start;
            if self.discarding {
                // the end of an over-long line: drop it and go on
                self.discarding = false;
                continue;
            }
            return Some(&self.buf[start..end]);
        }
    }

    /// The length of the line begun but not ended, if any (and not being dropped).
    fn unfinished(&self) -> Option<usize> {
        (self.end > self.start && !self.discarding).then(|| self.end - self.start)
    }

    /// Forgets what is held; gives back what an over-long line made the buffer grow.
    fn clear(&mut self) {
        (self.start, self.end, self.scanned) = (0, 0, 0);
        if self.buf.len() > READ_CHUNK {
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
    }
}

struct Writer {
    broken: bool,
}

impl Writer {
    async fn flush<W: AsyncWrite + Unpin>(&mut self, out: &mut Vec<u8>, output: &mut W) {
        if out.is_empty() {
            return;
        }
        if !self.broken {
            let result = match output.write_all(out).await {
                Ok(()) => output.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // smtpd closed its end: it is going away and stdin will end soon.
                log::error!("writing to smtpd failed ({e}); answers are dropped from now on");
                self.broken = true;
            }
        }
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in reads of at most `read` bytes; returns the lines handled.
    fn feed(lines: &mut InputLines, input: &[u8], read: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let spare = lines.spare();
            let n = spare.len().min(read).min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            lines.filled(n);
            while let Some(line) = lines.next_line() {
                got.push(line.to_vec());
            }
        }
        got
    }

    #[test]
    fn lines_come_whole_whatever_the_reads() {
        let input = b"report|0.7|1|smtp-in|link-connect|x\r\n\nfilter|a\xff\x00b|\n\xc3\x28 not utf-8\nunfinished";
        let want: Vec<&[u8]> = vec![
            b"report|0.7|1|smtp-in|link-connect|x\r",
            b"",
            b"filter|a\xff\x00b|",
            b"\xc3\x28 not utf-8",
        ];
        for read in [1, 2, 3, 7, 64, usize::MAX] {
            let mut lines = InputLines::new();
            assert_eq!(feed(&mut lines, input, read), want, "reads of {read}");
            assert_eq!(lines.unfinished(), Some(b"unfinished".len()));
        }
    }

    #[test]
    fn the_buffer_does_not_grow_for_lines_that_fit_it() {
        let mut lines = InputLines::new();
        let line = [b'x'; 1000];
        let mut input = Vec::new();
        for _ in 0..2000 {
            input.extend_from_slice(&line);
            input.push(b'\n');
        }
        // reads that end mid-line, so that unfinished lines move to the front
        let got = feed(&mut lines, &input, 40_000);
        assert_eq!(got.len(), 2000);
        assert!(got.iter().all(|l| l[..] == line[..]));
        assert_eq!(lines.buf.len(), READ_CHUNK);
        assert_eq!(lines.unfinished(), None);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_dropped_and_the_next_ones_kept() {
        let mut lines = InputLines::new();
        let mut input = b"before\n".to_vec();
        input.resize(input.len() + MAX_INPUT_LINE + READ_CHUNK, b'y');
        input.extend_from_slice(b"\nafter\n");
        let got = feed(&mut lines, &input, READ_CHUNK);
        assert_eq!(got, [b"before".to_vec(), b"after".to_vec()]);
        assert_eq!(lines.unfinished(), None);
        assert_eq!(lines.buf.len(), READ_CHUNK, "given back once dropped");
        // a long line under the limit is kept whole, the buffer growing for it
        let long = vec![b'z'; 3 * READ_CHUNK];
        let got = feed(&mut lines, &[&long[..], b"\n"].concat(), 10_000);
        assert_eq!(got, [long]);
    }

    #[test]
    fn the_rest_of_a_line_being_dropped_is_not_held() {
        let mut lines = InputLines::new();
        let mut input = vec![b'y'; MAX_INPUT_LINE + 1];
        assert!(feed(&mut lines, &input, READ_CHUNK).is_empty());
        assert!(lines.discarding);
        // as much again of the same line: each read is dropped as it comes
        input.truncate(READ_CHUNK);
        for _ in 0..(MAX_INPUT_LINE / READ_CHUNK) {
            assert!(feed(&mut lines, &input, READ_CHUNK).is_empty());
            assert_eq!((lines.start, lines.end), (0, 0), "nothing held");
            assert_eq!(lines.buf.len(), READ_CHUNK, "the buffer does not grow");
        }
        assert_eq!(
            feed(&mut lines, b"yy\nafter\n", READ_CHUNK),
            [b"after".to_vec()]
        );
    }
}
