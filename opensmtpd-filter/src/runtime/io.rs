//! The I/O loop: reads lines from smtpd, feeds the engine, writes its answers.

use std::io;

use bytes::{Buf, BytesMut};
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
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanned = 0; // bytes of `buf` known to hold no `\n`
    let mut discarding = false; // inside an over-long line
    let mut writer = Writer { broken: false };
    loop {
        drain_ready(engine);
        let more = engine.pump(OUT_BUDGET);
        writer.flush(&mut engine.out, &mut output).await;
        write_held();
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            Some(done) = engine.inflight.next(), if !engine.inflight.is_empty() => engine.complete(done),
            read = input.read_buf(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) => {
                    while let Some(i) = memchr::memchr(b'\n', &buf[scanned..]) {
                        let end = scanned + i;
                        if discarding {
                            discarding = false;
                        } else {
                            engine.handle_line(&buf[..end]);
                        }
                        buf.advance(end + 1);
                        scanned = 0;
                    }
                    scanned = buf.len();
                    if buf.len() > MAX_INPUT_LINE {
                        if !discarding {
                            log::error!("dropping a line of more than {MAX_INPUT_LINE} bytes from smtpd");
                        }
                        discarding = true;
                        buf.clear();
                        scanned = 0;
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
    if !buf.is_empty() && !discarding {
        log::warn!(
            "input ended inside a line ({} bytes without a newline); ignoring it",
            buf.len()
        );
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
