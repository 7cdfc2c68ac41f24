//! A message going back to smtpd a piece at a time.
//!
//! Writing a whole message into the output buffer at once would hold it in RAM a
//! second time; instead each session's echo keeps its place in the stored message and
//! the I/O loop asks for a chunk at a time while its output buffer is small
//! ([`super::engine::Engine::pump`]), between reads and other sessions' answers.

use std::io;

use bytes::Bytes;

use crate::protocol::{AnswerRules, DataTicket, EncodeError, SmtpReply};

use super::message::{CHUNK, Message, Spool};

/// The reply when the stored message cannot be read or written any more.
pub(crate) fn spool_failure_reply() -> SmtpReply {
    SmtpReply::new(
        451,
        "4.3.0 Temporary failure storing the message, try again later",
    )
    .expect("a valid reply")
}

/// Where the lines of an echo come from.
enum Source {
    /// A stored message, from this stored position on.
    Stored { message: Message, pos: u64 },
    /// A message over the size cap, still arriving: its lines are appended here and
    /// passed on from `pos`; the spool is emptied whenever the echo catches up.
    Arriving { spool: Spool, pos: u64 },
    /// Nothing (more) to read.
    Nothing,
}

impl Source {
    /// The next stored bytes, empty when caught up.
    fn read(&mut self) -> io::Result<Bytes> {
        match self {
            Source::Stored { message, pos } => {
                if *pos >= message.stored_len() {
                    return Ok(Bytes::new());
                }
                let piece = message.read_stored(*pos, CHUNK)?;
                if piece.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spooled message is shorter than written",
                    ));
                }
                *pos += piece.len() as u64;
                Ok(piece)
            }
            Source::Arriving { spool, pos } => {
                if *pos >= spool.len() {
                    spool.clear();
                    *pos = 0;
                    return Ok(Bytes::new());
                }
                let piece = spool.read(*pos, CHUNK)?;
                *pos += piece.len() as u64;
                Ok(piece)
            }
            Source::Nothing => Ok(Bytes::new()),
        }
    }
}

/// What one step of an echo did.
pub(crate) enum Step {
    /// Wrote something; there may be more.
    Wrote,
    /// Nothing to write until more lines arrive.
    Idle,
    /// Everything is written: the final `.` is next.
    Done,
}

/// Where an echo's writes go and where their errors are recorded.
pub(crate) struct Sink<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) rules: &'a AnswerRules,
    pub(crate) refusal: &'a mut Option<SmtpReply>,
    pub(crate) error: &'a mut Option<EncodeError>,
}

impl Sink<'_> {
    fn record(&mut self, result: Result<(), EncodeError>) {
        if let Err(e) = result {
            if self.refusal.is_none() {
                *self.refusal = Some(crate::protocol::line_too_long_reply());
            }
            self.error.get_or_insert(e);
        }
    }
}

/// One session's message on its way back to smtpd.
pub(crate) struct Echo {
    pub(crate) ticket: DataTicket,
    /// Lines written first (unstuffed: header edits), in order.
    head: std::vec::IntoIter<Vec<u8>>,
    source: Source,
    /// A stored line cut by the end of a read, completed by the next.
    partial: Vec<u8>,
    /// Whether all lines are in: the final `.` follows what is stored.
    complete: bool,
}

impl Echo {
    /// A stored message: `head` lines, then the stored lines from `from`.
    pub(crate) fn stored(
        ticket: DataTicket,
        head: Vec<Vec<u8>>,
        message: Message,
        from: u64,
    ) -> Echo {
        Echo {
            ticket,
            head: head.into_iter(),
            source: Source::Stored { message, pos: from },
            partial: Vec::new(),
            complete: true,
        }
    }

    /// A message still arriving: what `spool` holds so far, then the lines given to
    /// [`Echo::append`].
    pub(crate) fn arriving(ticket: DataTicket, spool: Spool) -> Echo {
        Echo {
            ticket,
            head: Vec::new().into_iter(),
            source: Source::Arriving { spool, pos: 0 },
            partial: Vec::new(),
            complete: false,
        }
    }

    /// Whether lines of the message still come to [`Echo::append`].
    pub(crate) fn takes_lines(&self) -> bool {
        !self.complete
    }

    /// The final `.` came: the echo ends once the stored lines are written.
    pub(crate) fn close(&mut self) {
        self.complete = true;
    }

    /// Adds a wire line of a message still arriving. If it cannot be stored, the rest
    /// of the message is dropped and the message is refused at commit.
    pub(crate) fn append(&mut self, wire: &[u8], refusal: &mut Option<SmtpReply>) {
        let Source::Arriving { spool, .. } = &mut self.source else {
            return;
        };
        let stored = match spool.push(&[wire, b"\n"]) {
            Err(super::message::SpoolError::Create(e)) => {
                log::warn!("cannot make a temporary file ({e}); keeping the message in RAM");
                spool.keep_in_ram();
                spool.push(&[wire, b"\n"])
            }
            other => other,
        };
        if let Err(e) = stored {
            log::error!("cannot store a message line ({e:?}); the message will be refused");
            *refusal = Some(spool_failure_reply());
            self.source = Source::Nothing;
            self.partial.clear();
        }
    }

    /// Writes the head lines and at most one stored chunk.
    pub(crate) fn step(&mut self, sink: &mut Sink<'_>) -> Step {
        let mut wrote = false;
        for line in self.head.by_ref() {
            let result = self.ticket.line(&line, sink.rules, sink.out);
            sink.record(result);
            wrote = true;
        }
        if wrote {
            return Step::Wrote;
        }
        let piece = match self.source.read() {
            Ok(piece) => piece,
            Err(e) => {
                log::error!("cannot read a stored message back ({e}); the message will be refused");
                *sink.refusal = Some(spool_failure_reply());
                self.source = Source::Nothing;
                self.partial.clear();
                Bytes::new()
            }
        };
        if !piece.is_empty() {
            let mut rest: &[u8] = &piece;
            while let Some(i) = memchr::memchr(b'\n', rest) {
                let result = if self.partial.is_empty() {
                    self.ticket.framed_line(&rest[..i], sink.rules, sink.out)
                } else {
                    self.partial.extend_from_slice(&rest[..i]);
                    let r = self.ticket.framed_line(&self.partial, sink.rules, sink.out);
                    self.partial.clear();
                    r
                };
                sink.record(result);
                rest = &rest[i + 1..];
            }
            self.partial.extend_from_slice(rest);
            return Step::Wrote;
        }
        if self.complete {
            Step::Done
        } else {
            Step::Idle
        }
    }
}
