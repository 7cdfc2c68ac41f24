//! Message lines: dot-stuffing as on the wire, and the end-of-message marker.
//!
//! smtpd hands a filter each message line exactly as the client sent it, dot-stuffed
//! (`.x` arrives as `..x`), and ends the message with a line holding a single `.`.
//! Lines are bytes: 8-bit mail is not UTF-8, and lines can be far longer than 1000.

/// Whether `line` is the end-of-message marker (a single `.`).
pub fn is_end_of_message(line: &[u8]) -> bool {
    line == b"."
}

/// The line as the message holds it: one leading dot removed if there is one.
/// Do not call it on the end-of-message marker.
pub fn unstuff(line: &[u8]) -> &[u8] {
    line.strip_prefix(b".").unwrap_or(line)
}

/// Appends `content` to `out` as it must go on the wire: a leading dot doubled.
pub fn stuff_into(content: &[u8], out: &mut Vec<u8>) {
    if content.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(content);
}

/// The stuffed length of `content`.
pub fn stuffed_len(content: &[u8]) -> usize {
    content.len() + usize::from(content.first() == Some(&b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_round_trips() {
        for content in [&b""[..], b".", b"..", b".x", b"x.", b"\xe9|\t"] {
            let mut wire = Vec::new();
            stuff_into(content, &mut wire);
            assert_eq!(wire.len(), stuffed_len(content));
            assert!(
                !is_end_of_message(&wire),
                "{content:?} must never look like the end"
            );
            assert_eq!(unstuff(&wire), content);
        }
        assert!(is_end_of_message(b"."));
        assert_eq!(unstuff(b".."), b".");
    }
}
