//! Incremental detokenisation for streaming output.

use std::sync::Arc;

use super::byte_level::TokenTable;
use super::CodecError;

/// Turns tokens into text one at a time, holding back the bytes of a character that a token
/// split, so that every piece it returns is whole UTF-8.
///
/// Made by [`Tokenizer::decode_stream`](super::Tokenizer::decode_stream). It owns a shared
/// handle on the token table, so it can live in per-sequence state without borrowing the
/// tokenizer.
///
/// Guarantee: after any number of [`step`](Self::step)s over `ids`, the pieces returned so far
/// followed by [`finish`](Self::finish) equal [`Tokenizer::decode`](super::Tokenizer::decode)
/// of `ids` (same `skip_special`), including the U+FFFD replacements for invalid bytes; and
/// when that decode does not end inside a character, the pieces alone equal it. At most three
/// bytes are ever held back.
#[derive(Debug, Clone)]
pub struct DecodeStream {
    table: Arc<TokenTable>,
    skip_special: bool,
    /// The start of a character whose remaining bytes have not arrived (at most 3 bytes).
    pending: Vec<u8>,
}

impl DecodeStream {
    pub(super) fn new(table: Arc<TokenTable>, skip_special: bool) -> Self {
        DecodeStream {
            table,
            skip_special,
            pending: Vec::with_capacity(8),
        }
    }

    /// Appends one token and returns the text it completes: possibly empty (a partial
    /// character, or a skipped special token), possibly longer than the token itself (it
    /// finished a character begun by earlier tokens).
    pub fn step(&mut self, id: u32) -> Result<String, CodecError> {
        let mut out = String::new();
        self.step_into(id, &mut out)?;
        Ok(out)
    }

    /// Like [`step`](Self::step), appending the new text to `out` instead of allocating.
    pub fn step_into(&mut self, id: u32, out: &mut String) -> Result<(), CodecError> {
        self.table
            .append(&[id], self.skip_special, &mut self.pending)?;
        drain_utf8(&mut self.pending, out);
        Ok(())
    }

    /// Ends the stream: returns held-back bytes as U+FFFD (as the one-shot decode renders an
    /// incomplete final character) and resets, ready for a new sequence.
    pub fn finish(&mut self) -> String {
        let tail = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        tail
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Moves the longest decodable prefix of `buf` into `out`, replacing each maximal invalid
/// sequence with U+FFFD exactly as [`String::from_utf8_lossy`] does, and leaves in `buf` only
/// a final sequence that is incomplete (not invalid) and may still be completed.
fn drain_utf8(buf: &mut Vec<u8>, out: &mut String) {
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                // The prefix up to `valid` is UTF-8 by the error's own account.
                out.push_str(&String::from_utf8_lossy(&buf[start..valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid + n;
                    }
                    None => {
                        buf.drain(..valid);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every boundary in `cuts` and checks the stream's output
    /// against `from_utf8_lossy` of the whole.
    fn check_split(bytes: &[u8], cuts: &[usize]) {
        let mut buf = Vec::new();
        let mut out = String::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            buf.extend_from_slice(&bytes[last..c]);
            drain_utf8(&mut buf, &mut out);
            assert!(buf.len() <= 3);
            last = c;
        }
        out.push_str(&String::from_utf8_lossy(&buf));
        assert_eq!(
            out,
            String::from_utf8_lossy(bytes),
            "{bytes:?} cut at {cuts:?}"
        );
    }

    #[test]
    fn split_characters_and_invalid_bytes_match_lossy_decoding() {
        let cases: &[&[u8]] = &[
            "héllo 世界 😀!".as_bytes(),
            b"\xF0\x9F\x98",   // truncated emoji
            b"a\xE6\x97b",     // truncated CJK then ASCII
            b"\xFF\xFEok\xC3", // invalid then truncated
            b"\xED\xA0\x80x",  // surrogate: invalid, three replacements
            b"\xF0\x9F\x98\xF0\x9F\x98\x80",
        ];
        for bytes in cases {
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    check_split(bytes, &[i, j]);
                }
            }
            check_split(bytes, &(1..bytes.len()).collect::<Vec<_>>());
        }
    }
}
