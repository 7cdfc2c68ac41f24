//! A whole message, as the whole-message data mode hands it to a filter, and the
//! storage behind it: the wire lines in RAM up to a threshold, then in an unlinked
//! temporary file.
//!
//! A message is stored once, as smtpd sent its lines (dot-stuffed, each ended by
//! `\n`), so that lines a filter leaves alone go back byte for byte. The filter reads it
//! unstuffed, a chunk at a time ([`Message::chunks`], [`Message::crlf_chunks`]); only the
//! header section is always in RAM ([`Message::header_section`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::unstuff;

/// The most bytes of header section kept in RAM: header lines beyond it are treated
/// as the start of the body (they go on unchanged, and a filter does not see them in
/// [`Message::header_section`]).
pub const HEADER_CAP: usize = 256 * 1024;

/// How much is read or written at a time.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Where and from what size messages are spooled.
#[derive(Clone, Debug)]
pub(crate) struct SpoolSettings {
    pub(crate) above: usize,
    pub(crate) dir: Option<PathBuf>,
}

/// Why bytes could not be added to a [`Spool`].
#[derive(Debug)]
pub(crate) enum SpoolError {
    /// The temporary file could not be made or first written: nothing was lost, the
    /// content is still in RAM (without the bytes of this call).
    Create(io::Error),
    /// Writing to the temporary file failed: what it holds can no longer be trusted.
    Write(io::Error),
}

/// Append-only bytes: in RAM up to the threshold, then in an unlinked temporary file
/// with a RAM tail of less than [`CHUNK`] bytes not yet written.
pub(crate) struct Spool {
    settings: Arc<SpoolSettings>,
    file: Option<File>,
    /// Bytes in the file.
    flushed: u64,
    tail: Vec<u8>,
    /// The file could not be made: stay in RAM.
    ram_only: bool,
}

impl Spool {
    pub(crate) fn new(settings: Arc<SpoolSettings>) -> Spool {
        Spool {
            settings,
            file: None,
            flushed: 0,
            tail: Vec::new(),
            ram_only: false,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.flushed + self.tail.len() as u64
    }

    /// From now on the spool never makes a file (after [`SpoolError::Create`]).
    pub(crate) fn keep_in_ram(&mut self) {
        self.ram_only = true;
    }

    /// Appends `parts`. Writes go to the file synchronously: they land in the page
    /// cache (the file is unlinked and never synced), in writes of [`CHUNK`] bytes, so
    /// they cost about a memory copy; a thread hand-off per write would cost more.
    pub(crate) fn push(&mut self, parts: &[&[u8]]) -> Result<(), SpoolError> {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if self.file.is_none() {
            if self.ram_only || self.tail.len() + n <= self.settings.above {
                parts.iter().for_each(|p| self.tail.extend_from_slice(p));
                return Ok(());
            }
            let mut file = match &self.settings.dir {
                Some(dir) => tempfile::tempfile_in(dir),
                None => tempfile::tempfile(),
            }
            .map_err(SpoolError::Create)?;
            file.write_all(&self.tail).map_err(SpoolError::Create)?;
            self.flushed = self.tail.len() as u64;
            // the RAM the message took is given back now, not kept as capacity
            self.tail = Vec::with_capacity(CHUNK);
            self.file = Some(file);
        }
        parts.iter().for_each(|p| self.tail.extend_from_slice(p));
        if self.tail.len() >= CHUNK {
            if let Some(file) = self.file.as_mut() {
                file.write_all(&self.tail).map_err(SpoolError::Write)?;
                self.flushed += self.tail.len() as u64;
                self.tail.clear();
                if self.tail.capacity() > 2 * CHUNK {
                    self.tail.shrink_to(CHUNK);
                }
            }
        }
        Ok(())
    }

    /// Up to `max` bytes from `pos`; empty at the end.
    pub(crate) fn read(&self, pos: u64, max: usize) -> io::Result<Bytes> {
        if pos < self.flushed {
            return read_file(self.file.as_ref(), pos, self.flushed, max);
        }
        let start = usize::try_from(pos - self.flushed).unwrap_or(usize::MAX);
        let start = start.min(self.tail.len());
        let end = (start + max).min(self.tail.len());
        Ok(Bytes::copy_from_slice(&self.tail[start..end]))
    }

    /// Empties the spool (its file is closed, and so freed).
    pub(crate) fn clear(&mut self) {
        self.file = None;
        self.flushed = 0;
        self.tail.clear();
        if self.tail.capacity() > 2 * CHUNK {
            self.tail.shrink_to(CHUNK);
        }
    }

    fn freeze(self) -> Stored {
        Stored {
            file: self.file,
            flushed: self.flushed,
            tail: Bytes::from(self.tail),
        }
    }
}

fn read_file(file: Option<&File>, pos: u64, flushed: u64, max: usize) -> io::Result<Bytes> {
    let Some(file) = file else {
        return Ok(Bytes::new());
    };
    let n = usize::try_from(flushed - pos)
        .unwrap_or(usize::MAX)
        .min(max);
    let mut buf = vec![0; n];
    // read_at: no shared file offset, so several readers of one message never
    // disturb each other (the echo to smtpd and the filter's own reads).
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}

/// A finished spool: immutable, shared by the message and its echo.
struct Stored {
    file: Option<File>,
    flushed: u64,
    tail: Bytes,
}

impl Stored {
    fn len(&self) -> u64 {
        self.flushed + self.tail.len() as u64
    }

    fn read(&self, pos: u64, max: usize) -> io::Result<Bytes> {
        if pos < self.flushed {
            return read_file(self.file.as_ref(), pos, self.flushed, max);
        }
        let start = usize::try_from(pos - self.flushed).unwrap_or(usize::MAX);
        let start = start.min(self.tail.len());
        let end = (start + max).min(self.tail.len());
        Ok(self.tail.slice(start..end))
    }
}

/// Follows the header section while lines come in.
#[derive(Default)]
struct HeaderScan {
    section: Vec<u8>,
    /// Stored bytes the section takes.
    stored: u64,
    closed: bool,
}

impl HeaderScan {
    /// Takes one line: `content` unstuffed, `stored` its stored size with the `\n`.
    fn take(&mut self, content: &[u8], stored: usize) {
        if self.closed {
            return;
        }
        if content.is_empty() || self.section.len() + content.len() + 1 > HEADER_CAP {
            self.closed = true;
            return;
        }
        self.section.extend_from_slice(content);
        self.section.push(b'\n');
        self.stored += stored as u64;
    }
}

/// Gathers a message's wire lines as they arrive.
pub(crate) struct MessageBuilder {
    spool: Spool,
    header: HeaderScan,
    len: u64,
    lines: u64,
}

impl MessageBuilder {
    pub(crate) fn new(settings: Arc<SpoolSettings>) -> MessageBuilder {
        MessageBuilder {
            spool: Spool::new(settings),
            header: HeaderScan::default(),
            len: 0,
            lines: 0,
        }
    }

    /// Stored bytes so far (the wire lines with their `\n`).
    pub(crate) fn stored_len(&self) -> u64 {
        self.spool.len()
    }

    /// Adds one wire line (stuffed, without its `\n`). On error nothing was added.
    pub(crate) fn push_line(&mut self, wire: &[u8]) -> Result<(), SpoolError> {
        self.spool.push(&[wire, b"\n"])?;
        let content = unstuff(wire);
        self.header.take(content, wire.len() + 1);
        self.len += content.len() as u64 + 1;
        self.lines += 1;
        Ok(())
    }

    /// The spool, to pass on what was gathered.
    pub(crate) fn into_spool(self) -> Spool {
        self.spool
    }

    pub(crate) fn finish(self) -> Message {
        Message {
            inner: Arc::new(Inner {
                header: Bytes::from(self.header.section),
                header_stored: self.header.stored,
                stored: self.spool.freeze(),
                stuffed: true,
                len: self.len,
                newlines: self.lines,
                open_last_line: false,
            }),
        }
    }
}

/// One message, as the whole-message data mode hands it to
/// [`Filter::on_message`](super::Filter::on_message): its lines unstuffed, each ended
/// by `\n` (the CRLF of the wire is not kept; a bare CR inside a line is).
///
/// A large message is not in RAM: it is read a chunk at a time with
/// [`Message::chunks`] (or [`Message::crlf_chunks`] for an HTTP scanner), from RAM or
/// from the temporary file it was spooled to. The header section is always in RAM.
/// Cheap to clone (shared); the temporary file goes away with the last clone.
///
/// ```
/// use opensmtpd_filter::Message;
///
/// let m = Message::new(&b"Subject: hi\n\tthere\n\nbody\n.dot\n"[..]);
/// assert_eq!(m.header("subject").unwrap(), b"hi\n\tthere");
/// assert_eq!(m.header_section(), b"Subject: hi\n\tthere\n");
/// assert_eq!(m.len(), 30);
/// assert_eq!(m.to_vec().unwrap(), b"Subject: hi\n\tthere\n\nbody\n.dot\n");
/// assert_eq!(m.to_crlf().unwrap(), b"Subject: hi\r\n\tthere\r\n\r\nbody\r\n.dot\r\n");
/// ```
#[derive(Clone)]
pub struct Message {
    inner: Arc<Inner>,
}

struct Inner {
    /// The header section, unstuffed.
    header: Bytes,
    /// Stored bytes of the header section.
    header_stored: u64,
    stored: Stored,
    /// Stored as wire lines (a leading dot doubled) rather than as content.
    stuffed: bool,
    /// Unstuffed size.
    len: u64,
    newlines: u64,
    /// The last line has no `\n` (only for [`Message::new`] content).
    open_last_line: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.inner.len)
            .field("header_len", &self.inner.header.len())
            .field("spooled", &self.is_spooled())
            .finish()
    }
}

impl Message {
    /// A message in RAM from its content: unstuffed `\n`-terminated lines (for tests
    /// and for filters that make messages of their own).
    pub fn new(content: impl Into<Bytes>) -> Message {
        let content: Bytes = content.into();
        let mut header = HeaderScan::default();
        let mut newlines = 0;
        for line in content.split_inclusive(|&b| b == b'\n') {
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            if line.len() > text.len() {
                newlines += 1;
            }
            header.take(text, line.len());
        }
        Message {
            inner: Arc::new(Inner {
                header: Bytes::from(header.section),
                header_stored: header.stored,
                len: content.len() as u64,
                newlines,
                open_last_line: content.last().is_some_and(|&b| b != b'\n'),
                stored: Stored {
                    file: None,
                    flushed: 0,
                    tail: content,
                },
                stuffed: false,
            }),
        }
    }

    /// Size in bytes, unstuffed, with one `\n` per line.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Whether the message has no line at all.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Size with CRLF line ends: what [`Message::crlf_chunks`] gives.
    pub fn crlf_len(&self) -> u64 {
        self.inner.len + self.inner.newlines + if self.inner.open_last_line { 2 } else { 0 }
    }

    /// Whether the message went to a temporary file (it was larger than
    /// [`Config::spool_above`](super::Config::spool_above)).
    pub fn is_spooled(&self) -> bool {
        self.inner.stored.file.is_some()
    }

    /// The header section: every line before the first empty line (or the whole
    /// message if there is none), `\n`-terminated, at most [`HEADER_CAP`] bytes: the
    /// lines beyond are left to the body.
    pub fn header_section(&self) -> &[u8] {
        &self.inner.header
    }

    /// The header fields, in order: `(name, value)` with the value unfolded lines
    /// joined as they are (continuation lines keep their leading white space, joined by
    /// `\n`). The name is not checked beyond "up to the first colon".
    pub fn headers(&self) -> Vec<(&[u8], Vec<u8>)> {
        let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::new();
        for line in self.header_section().split(|&b| b == b'\n') {
            if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(b'\n');
                    value.extend_from_slice(line);
                }
                continue;
            }
            if let Some(colon) = memchr::memchr(b':', line) {
                let value = line[colon + 1..]
                    .strip_prefix(b" ")
                    .unwrap_or(&line[colon + 1..]);
                fields.push((&line[..colon], value.to_vec()));
            }
        }
        fields
    }

    /// The first value of header `name` (case-insensitive), unfolded as in [`Message::headers`].
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The whole message, unstuffed, `\n` line ends, in pieces of at most 64 KiB (plus
    /// their share of removed dots): shared bytes when the message is in RAM, read
    /// from its file otherwise. A read error ends the iteration.
    pub fn chunks(&self) -> Chunks {
        Chunks::new(self.clone(), false)
    }

    /// As [`Message::chunks`] with each `\n` sent as CRLF (a last line without `\n`
    /// gets one): the message as it travelled on the wire, unstuffed — what an HTTP
    /// scanner such as rspamd expects. [`Message::crlf_len`] bytes in all.
    pub fn crlf_chunks(&self) -> Chunks {
        Chunks::new(self.clone(), true)
    }

    /// The whole message in one buffer (it is read from its file if it was spooled).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        collect(self.chunks(), self.inner.len)
    }

    /// The whole message with CRLF line ends in one buffer.
    pub fn to_crlf(&self) -> io::Result<Vec<u8>> {
        collect(self.crlf_chunks(), self.crlf_len())
    }

    /// Stored bytes of the header section: where the echo of the rest starts.
    pub(crate) fn header_stored(&self) -> u64 {
        self.inner.header_stored
    }

    /// Stored bytes.
    pub(crate) fn stored_len(&self) -> u64 {
        self.inner.stored.len()
    }

    /// Stored bytes from `pos`, at most `max`.
    pub(crate) fn read_stored(&self, pos: u64, max: usize) -> io::Result<Bytes> {
        self.inner.stored.read(pos, max)
    }
}

fn collect(chunks: Chunks, len: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for chunk in chunks {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The pieces of a [`Message`], from [`Message::chunks`] or [`Message::crlf_chunks`].
/// Owns a clone of the message, so it can be handed to an HTTP body.
pub struct Chunks {
    message: Message,
    pos: u64,
    at_line_start: bool,
    crlf: bool,
    done: bool,
}

impl Chunks {
    fn new(message: Message, crlf: bool) -> Chunks {
        Chunks {
            message,
            pos: 0,
            at_line_start: true,
            crlf,
            done: false,
        }
    }

    fn convert(&mut self, piece: Bytes) -> Bytes {
        let unstuff = self.message.inner.stuffed;
        let dots = unstuff
            && ((self.at_line_start && piece.first() == Some(&b'.'))
                || memchr::memmem::find(&piece, b"\n.").is_some());
        if !self.crlf && !dots {
            self.at_line_start = piece.last() == Some(&b'\n');
            return piece;
        }
        let extra = if self.crlf { piece.len() / 16 + 16 } else { 0 };
        let mut out = Vec::with_capacity(piece.len() + extra);
        let mut line_start = self.at_line_start;
        for segment in piece.split_inclusive(|&b| b == b'\n') {
            let text = match segment.first() {
                Some(b'.') if line_start && unstuff => &segment[1..],
                _ => segment,
            };
            match text.strip_suffix(b"\n") {
                Some(line) if self.crlf => {
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
                _ => out.extend_from_slice(text),
            }
            line_start = segment.last() == Some(&b'\n');
        }
        self.at_line_start = line_start;
        Bytes::from(out)
    }
}

impl Iterator for Chunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        if self.pos >= self.message.inner.stored.len() {
            self.done = true;
            if self.crlf && self.message.inner.open_last_line {
                return Some(Ok(Bytes::from_static(b"\r\n")));
            }
            return None;
        }
        match self.message.inner.stored.read(self.pos, CHUNK) {
            Ok(piece) if piece.is_empty() => {
                self.done = true;
                Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spooled message is shorter than written",
                )))
            }
            Ok(piece) => {
                self.pos += piece.len() as u64;
                Some(Ok(self.convert(piece)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(above: usize) -> Arc<SpoolSettings> {
        Arc::new(SpoolSettings { above, dir: None })
    }

    /// A message built from wire lines, spooled above `above` bytes.
    fn built(wire: &[&[u8]], above: usize) -> Message {
        let mut b = MessageBuilder::new(settings(above));
        for l in wire {
            b.push_line(l).unwrap();
        }
        b.finish()
    }

    /// What the lines unstuffed and `\n`-terminated are.
    fn content(wire: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in wire {
            out.extend_from_slice(unstuff(l));
            out.push(b'\n');
        }
        out
    }

    fn crlf(wire: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in wire {
            out.extend_from_slice(unstuff(l));
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn content_in_ram() {
        let m = Message::new(&b"Subject: a\n\tfolded\nFrom: x@y\n\nbody \xe9\n.\n"[..]);
        assert_eq!(m.header("subject").unwrap(), b"a\n\tfolded");
        assert_eq!(m.header_section(), b"Subject: a\n\tfolded\nFrom: x@y\n");
        assert_eq!(
            m.to_crlf().unwrap(),
            b"Subject: a\r\n\tfolded\r\nFrom: x@y\r\n\r\nbody \xe9\r\n.\r\n"
        );
        assert_eq!(m.crlf_len(), m.to_crlf().unwrap().len() as u64);
        assert!(!m.is_spooled());
        let empty = Message::new(Bytes::new());
        assert!(empty.is_empty());
        assert_eq!(empty.to_crlf().unwrap(), b"");
        let no_headers = Message::new(&b"\nbody\n"[..]);
        assert_eq!(no_headers.header_section(), b"");
        let open = Message::new(&b"a\nno newline"[..]);
        assert_eq!(open.to_crlf().unwrap(), b"a\r\nno newline\r\n");
        assert_eq!(open.crlf_len(), 15);
        let only_headers = Message::new(&b"A: 1\nB: 2\n"[..]);
        assert_eq!(only_headers.header_section(), b"A: 1\nB: 2\n");
    }

    /// The same wire lines give the same message in RAM and spooled.
    #[test]
    fn ram_and_spool_agree() {
        let long: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut dotted_long = b"..".to_vec();
        dotted_long.extend_from_slice(&long[..70_000]);
        let binary: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![b"Subject: x", b"", b"..dot", b"body"],
            vec![b"..starts with a dot", b"X: y", b"", b""],
            vec![b"A: 1", b"B: 2"],
            vec![b"", b"body only", b".."],
            vec![b"Subject: long", b"", &long, &dotted_long, b"..", b"end"],
            vec![b"X-Bin: \x00\xff\r", b"", &binary, b"\r", b"..\x80"],
            vec![&long[..100_000], b"", b"after a long header"],
        ];
        for wire in &cases {
            let want = content(wire);
            for above in [usize::MAX, 0, 10, 70_000] {
                let m = built(wire, above);
                assert_eq!(m.len(), want.len() as u64);
                assert_eq!(m.to_vec().unwrap(), want, "above {above}");
                assert_eq!(m.to_crlf().unwrap(), crlf(wire), "above {above}");
                assert_eq!(m.crlf_len(), crlf(wire).len() as u64);
                assert_eq!(
                    m.is_spooled(),
                    above < usize::MAX && above < m.stored_len() as usize
                );
                let from_content = Message::new(want.clone());
                assert_eq!(m.header_section(), from_content.header_section());
                for c in m.chunks() {
                    assert!(c.unwrap().len() <= CHUNK);
                }
            }
        }
    }

    #[test]
    fn header_section_is_capped() {
        let field = vec![b'x'; 1000];
        let mut wire: Vec<Vec<u8>> = (0..300)
            .map(|i| [format!("X-{i}: ").into_bytes(), field.clone()].concat())
            .collect();
        wire.push(Vec::new());
        wire.push(b"body".to_vec());
        let lines: Vec<&[u8]> = wire.iter().map(|l| l.as_slice()).collect();
        let m = built(&lines, 1 << 20);
        assert!(m.header_section().len() <= HEADER_CAP);
        assert!(m.header_section().len() > HEADER_CAP - 1100);
        assert!(m.header_section().ends_with(b"\n"));
        assert_eq!(m.header_stored(), m.header_section().len() as u64);
        assert_eq!(m.to_vec().unwrap(), content(&lines));
    }

    #[test]
    fn header_stored_counts_stuffing() {
        let m = built(&[b"..X: 1", b"Y: 2", b"", b"b"], usize::MAX);
        assert_eq!(m.header_section(), b".X: 1\nY: 2\n");
        assert_eq!(m.header_stored(), 12);
        assert_eq!(&m.read_stored(12, 100).unwrap()[..], b"\nb\n");
    }

    /// A write that fails once the file is in use (a full disk) says so: what the
    /// file holds can no longer be trusted.
    #[test]
    fn a_failing_write_is_reported_as_such() {
        let mut spool = Spool::new(settings(0));
        // a file that cannot be written, as a disk that is full
        spool.file = Some(File::open("/dev/null").unwrap());
        let line = vec![b'x'; CHUNK];
        assert!(matches!(spool.push(&[&line]), Err(SpoolError::Write(_))));
    }

    #[test]
    fn spool_in_a_missing_directory_keeps_the_content() {
        let s = Arc::new(SpoolSettings {
            above: 4,
            dir: Some("/nonexistent/opensmtpd-filter-test".into()),
        });
        let mut b = MessageBuilder::new(s);
        b.push_line(b"abc").unwrap();
        assert!(matches!(b.push_line(b"def"), Err(SpoolError::Create(_))));
        let mut spool = b.into_spool();
        assert_eq!(&spool.read(0, 100).unwrap()[..], b"abc\n");
        spool.keep_in_ram();
        spool.push(&[b"def\n"]).unwrap();
        assert_eq!(&spool.read(2, 100).unwrap()[..], b"c\ndef\n");
    }
}
