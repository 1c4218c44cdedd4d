//! GPT-2's byte-level alphabet and the per-token byte table built on it.
//!
//! Byte-level BPE vocabularies spell every byte as a printable character: bytes that are
//! already printable and not whitespace (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves,
//! the other 68 are shifted to U+0100.. in byte order (so a space is `Ġ` U+0120 and a newline
//! `Ċ` U+010A). A token's text therefore maps back to a fixed byte string, and decoding a
//! sequence is concatenating those strings and reading the result as UTF-8.

use super::CodecError;

/// Whether byte `b` is its own symbol in the byte-level alphabet.
const fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 bytes that are not their own symbol, in order: the `n`th is spelled U+0100 + `n`.
const SHIFTED: [u8; 68] = {
    let mut out = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !is_direct(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
};

/// The symbol spelling byte `b` (encoding goes through the `tokenizers` crate; tests use it).
#[cfg(test)]
pub(super) fn byte_to_char(b: u8) -> char {
    if is_direct(b) {
        return char::from(b);
    }
    // `SHIFTED` is sorted, so the position is the number of shifted bytes below `b`.
    let n = SHIFTED.partition_point(|&s| s < b) as u32;
    char::from_u32(0x100 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a symbol spells, if it is one of the 256 symbols.
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let u = u32::from(c);
    if u < 0x100 {
        let b = u as u8;
        return is_direct(b).then_some(b);
    }
    SHIFTED.get(usize::try_from(u - 0x100).ok()?).copied()
}

/// The bytes a token's text stands for. A text with a character outside the alphabet (a
/// control token such as `<｜end▁of▁sentence｜>`) stands for its own UTF-8, as in the
/// Hugging Face `ByteLevel` decoder.
pub(super) fn token_bytes(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
    }
}

/// Every token's bytes in one buffer, and which tokens a skipping decode leaves out.
#[derive(Debug)]
pub(super) struct TokenTable {
    bytes: Vec<u8>,
    /// `ends[i]` is where token `i`'s bytes end; they start where token `i - 1`'s end.
    ends: Vec<usize>,
    /// Control and unknown-type tokens.
    special: Vec<bool>,
}

impl TokenTable {
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut table = TokenTable {
            bytes: Vec::new(),
            ends: Vec::new(),
            special: Vec::new(),
        };
        for (text, special) in tokens {
            token_bytes(text, &mut table.bytes);
            table.ends.push(table.bytes.len());
            table.special.push(special);
        }
        table
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn piece(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    pub(super) fn is_special(&self, id: u32) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.special.get(i).copied())
            .unwrap_or(false)
    }

    /// Appends the bytes of `ids` to `out`, leaving out special tokens if asked.
    pub(super) fn append(
        &self,
        ids: &[u32],
        skip_special: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        for &id in ids {
            let piece = self.piece(id).ok_or(CodecError::InvalidTokenId {
                id,
                vocab_size: self.len(),
            })?;
            if !(skip_special && self.is_special(id)) {
                out.extend_from_slice(piece);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_with_gpt2_landmarks() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert_eq!(char_to_byte(c), Some(b), "byte {b:#04x}");
            assert!(seen.insert(c));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(0x00), 'Ā');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(
            char_to_byte('\u{144}'),
            None,
            "one past the 68 shifted bytes"
        );
    }

    #[test]
    fn foreign_text_stands_for_itself() {
        let mut out = Vec::new();
        token_bytes("ĠhiĊ", &mut out);
        assert_eq!(out, b" hi\n");
        out.clear();
        token_bytes("<｜end▁of▁sentence｜>", &mut out);
        assert_eq!(out, "<｜end▁of▁sentence｜>".as_bytes());
    }

    #[test]
    fn table_pieces_and_bounds() {
        let t = TokenTable::new([("a", false), ("<|x|>", true), ("Ġb", false)]);
        assert_eq!(t.piece(0), Some(&b"a"[..]));
        assert_eq!(t.piece(2), Some(&b" b"[..]));
        assert_eq!(t.piece(3), None);
        let mut out = Vec::new();
        t.append(&[0, 1, 2], true, &mut out).unwrap();
        assert_eq!(out, b"a b");
        assert!(matches!(
            t.append(&[7], false, &mut out),
            Err(CodecError::InvalidTokenId {
                id: 7,
                vocab_size: 3
            })
        ));
    }
}
