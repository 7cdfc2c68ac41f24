//! A whole message, as the whole-message data mode hands it to a filter.

use bytes::Bytes;

/// One message, unstuffed: each line as the message holds it, ended by `\n` (the CRLF
/// of the wire is not kept; a bare CR inside a line is). Cheap to clone: the bytes are
/// shared, so a filter can hand them to an HTTP client without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    content: Bytes,
}

impl Message {
    /// Wraps content made of `\n`-terminated lines.
    pub fn new(content: impl Into<Bytes>) -> Message {
        Message {
            content: content.into(),
        }
    }

    /// The whole message, `\n`-terminated lines.
    pub fn as_bytes(&self) -> &[u8] {
        &self.content
    }

    /// The whole message as shared bytes.
    pub fn bytes(&self) -> Bytes {
        self.content.clone()
    }

    /// Size in bytes (with one `\n` per line).
    pub fn len(&self) -> usize {
        self.content.len()
    }

    /// Whether the message has no line at all.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The lines, without their `\n`.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let content: &[u8] = &self.content;
        let body = content.strip_suffix(b"\n").unwrap_or(content);
        body.split(|&b| b == b'\n')
            .filter(move |_| !content.is_empty())
    }

    /// The header section: every line before the first empty line (or the whole
    /// message if there is none), `\n`-terminated.
    pub fn header_section(&self) -> &[u8] {
        &self.content[..self
            .body_offset()
            .map_or(self.content.len(), |o| o.saturating_sub(1))]
    }

    /// The body: everything after the first empty line.
    pub fn body(&self) -> &[u8] {
        &self.content[self.body_offset().unwrap_or(self.content.len())..]
    }

    fn body_offset(&self) -> Option<usize> {
        let c: &[u8] = &self.content;
        if c.first() == Some(&b'\n') {
            return Some(1);
        }
        memchr::memmem::find(c, b"\n\n").map(|i| i + 2)
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

    /// The message with CRLF line ends, as it travelled on the wire (unstuffed): what
    /// an HTTP scanner such as rspamd expects.
    pub fn to_crlf(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + self.content.len() / 32 + 2);
        for line in self.lines() {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_headers_body() {
        let m = Message::new(&b"Subject: a\n\tfolded\nFrom: x@y\n\nbody \xe9\n.\n"[..]);
        assert_eq!(m.lines().count(), 6);
        assert_eq!(m.header("subject").unwrap(), b"a\n\tfolded");
        assert_eq!(m.header_section(), b"Subject: a\n\tfolded\nFrom: x@y\n");
        assert_eq!(m.body(), b"body \xe9\n.\n");
        assert_eq!(
            m.to_crlf(),
            b"Subject: a\r\n\tfolded\r\nFrom: x@y\r\n\r\nbody \xe9\r\n.\r\n"
        );
        let empty = Message::new(Bytes::new());
        assert_eq!(empty.lines().count(), 0);
        assert_eq!(empty.body(), b"");
        let no_headers = Message::new(&b"\nbody\n"[..]);
        assert_eq!(no_headers.header_section(), b"");
        assert_eq!(no_headers.body(), b"body\n");
        let only_blank = Message::new(&b"\n"[..]);
        assert_eq!(only_blank.lines().collect::<Vec<_>>(), vec![&b""[..]]);
    }
}
