//! Per-request output text: incremental detokenisation and stop strings, as vLLM's output
//! processor does them.
//!
//! Each request of an [`Engine`](crate::Engine) built [`with_tokenizer`](crate::Engine::with_tokenizer)
//! owns a [`Detokenizer`]. Every sampled token goes through a [`DecodeStream`] (special tokens
//! skipped, as vLLM's `skip_special_tokens=True`; bytes of a split UTF-8 character held until
//! the character is whole) into `held`, the text not yet given to the caller. Then:
//!
//! 1. **Match**: the leftmost occurrence of any stop string in `held` ends the request; the
//!    text before it is released and the match and everything after it are dropped (vLLM's
//!    default `include_stop_str_in_output=false`).
//! 2. **Hold back**: otherwise the longest suffix of `held` that is a proper prefix of some stop
//!    string stays held (it may become a match with the next token); the rest is released.
//!
//! Searching only `held`, not the whole output, is enough. Invariant after every token: no
//! suffix of the output that starts in the released text is a prefix of a stop string, and no
//! stop string occurs in the output. So a new occurrence cannot start in the released text (its
//! start would have been a suffix that is a prefix of the stop string), and the work per token
//! is bounded by the longest stop string plus the new piece, not by the output length.
//!
//! Trade-offs: matching is on decoded text, so a stop string that the tokenizer can only write
//! with special tokens never matches (vLLM behaves the same with skipped specials). Held-back
//! text delays streaming by at most one stop string's length; a request that finishes for
//! another reason (a stop token, `max_tokens`) releases it. The text of a stop *token* is not
//! part of the output (vLLM v1 skips it too); with SmolLM2 those are control tokens, skipped
//! anyway.

use std::sync::Arc;

use crate::tokenizer::{CodecError, DecodeStream, Tokenizer};

/// One request's detokeniser and stop-string matcher; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Detokenizer {
    stream: DecodeStream,
    stops: Vec<String>,
    /// Decoded text not yet released: at most a proper prefix of a stop string between tokens.
    held: String,
}

impl Detokenizer {
    /// A detokeniser for one request, ending it at any of `stops` (none may be empty).
    pub(crate) fn new(tokenizer: &Arc<Tokenizer>, stops: Vec<String>) -> Self {
        debug_assert!(
            stops.iter().all(|s| !s.is_empty()),
            "validated by the caller"
        );
        Detokenizer {
            stream: tokenizer.decode_stream(true),
            stops,
            held: String::new(),
        }
    }

    /// Decodes `token` and appends to `out` the text that is now certain. Returns true when a
    /// stop string matched: the request is done and `out` got the text before the match.
    pub(crate) fn push(&mut self, token: u32, out: &mut String) -> Result<bool, CodecError> {
        self.stream.step_into(token, &mut self.held)?;
        Ok(self.release(out, false))
    }

    /// Ends the request (for a reason other than a stop string): appends all held text to
    /// `out`, cut before a stop string if the final incomplete character completes one.
    /// Returns true in that last case.
    pub(crate) fn finish(&mut self, out: &mut String) -> bool {
        let tail = self.stream.finish();
        self.held.push_str(&tail);
        self.release(out, true)
    }

    /// Moves the decided part of `held` to `out` (all of it when `all`); true on a match.
    fn release(&mut self, out: &mut String, all: bool) -> bool {
        if let Some(at) = find_stop(&self.held, &self.stops) {
            out.push_str(&self.held[..at]);
            self.held.clear();
            return true;
        }
        let keep = if all {
            0
        } else {
            held_back_len(&self.held, &self.stops)
        };
        let cut = self.held.len() - keep;
        out.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        false
    }
}

/// The byte offset of the leftmost occurrence in `text` of any of `stops`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// The length of the longest suffix of `text` that is a proper prefix of one of `stops`. The
/// suffix is whole characters: `text` ends with a string of that many bytes.
fn held_back_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .filter_map(|stop| {
            (1..stop.len().min(text.len() + 1))
                .rev()
                .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matching_and_holding_back_on_text() {
        let s = stops(&["world", "é!"]);
        assert_eq!(find_stop("hello world, world", &s), Some(6));
        assert_eq!(find_stop("café!", &s), Some(3));
        assert_eq!(find_stop("hello", &s), None);
        assert_eq!(held_back_len("hello wor", &s), 3);
        assert_eq!(held_back_len("hello", &s), 0);
        assert_eq!(
            held_back_len("caf\u{e9}", &s),
            2,
            "a whole multi-byte character"
        );
        assert_eq!(held_back_len("w", &s), 1);
        assert_eq!(held_back_len("", &s), 0);
        assert_eq!(held_back_len("world", &stops(&["world"])), 0, "not proper");
    }

    /// The synthetic test vocabulary: byte `b` is token `4 + b`, then merges such as "he".
    fn tokenizer() -> Arc<Tokenizer> {
        Arc::new(crate::tokenizer::tests::small("smollm"))
    }

    fn byte(b: u8) -> u32 {
        4 + u32::from(b)
    }

    /// Feeds `tokens`; returns each token's released text and the index of the stopping token.
    fn run(d: &mut Detokenizer, tokens: &[u32]) -> (Vec<String>, Option<usize>) {
        let mut pieces = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let mut out = String::new();
            let stopped = d.push(t, &mut out).unwrap();
            pieces.push(out);
            if stopped {
                return (pieces, Some(i));
            }
        }
        (pieces, None)
    }

    #[test]
    fn a_stop_string_spanning_two_tokens_cuts_the_output() {
        let t = tokenizer();
        let mut d = Detokenizer::new(&t, stops(&["lo w"]));
        let tokens = t.encode("hello world", false).unwrap();
        let (pieces, stopped) = run(&mut d, &tokens);
        assert_eq!(pieces.concat(), "hel");
        let last = stopped.expect("stopped");
        // "lo w" is spread over more than one token.
        assert!(t.decode(&tokens[last..=last], false).unwrap().len() < 4);
    }

    #[test]
    fn a_held_back_prefix_that_does_not_match_is_released() {
        let t = tokenizer();
        let mut d = Detokenizer::new(&t, stops(&["low"]));
        let tokens = t.encode("hello world", false).unwrap();
        let (pieces, stopped) = run(&mut d, &tokens);
        assert_eq!(stopped, None);
        // After "hello" the "lo" (a prefix of "low") is held; " " releases it.
        let at = pieces.iter().position(|p| p.contains("lo")).unwrap();
        assert!(pieces[at].starts_with("lo"), "{pieces:?}");
        assert_eq!(pieces[..at].concat(), "hel");
        let mut tail = String::new();
        assert!(!d.finish(&mut tail));
        assert_eq!(pieces.concat() + &tail, "hello world");
    }

    #[test]
    fn finishing_releases_held_text() {
        let t = tokenizer();
        let mut d = Detokenizer::new(&t, stops(&["hello"]));
        let (pieces, stopped) = run(&mut d, &t.encode("say hel", false).unwrap());
        assert_eq!((pieces.concat().as_str(), stopped), ("say ", None));
        let mut tail = String::new();
        assert!(!d.finish(&mut tail));
        assert_eq!(tail, "hel");
    }

    #[test]
    fn multi_byte_characters_split_across_tokens() {
        let t = tokenizer();
        let [e1, e2] = [0xC3, 0xA9]; // é
        let mut d = Detokenizer::new(&t, stops(&["é!"]));
        // The first byte completes nothing, the second completes "é", held as a prefix of "é!".
        let (pieces, stopped) = run(&mut d, &[byte(b'a'), byte(e1), byte(e2)]);
        assert_eq!((pieces, stopped), (stops(&["a", "", ""]), None));
        let (pieces, stopped) = run(&mut d, &[byte(b'b')]);
        assert_eq!((pieces, stopped), (stops(&["éb"]), None));
        let (pieces, stopped) = run(&mut d, &[byte(e1), byte(e2), byte(b'!'), byte(b'x')]);
        assert_eq!((pieces.concat(), stopped), (String::new(), Some(2)));

        // A multi-byte stop string matches once its character is whole.
        let mut d = Detokenizer::new(&t, stops(&["\u{e9}"]));
        let (pieces, stopped) = run(&mut d, &[byte(b'c'), byte(e1), byte(e2)]);
        assert_eq!((pieces.concat(), stopped), ("c".to_string(), Some(2)));

        // A character cut off at the end becomes U+FFFD, like a one-shot decode.
        let mut d = Detokenizer::new(&t, stops(&["zz"]));
        let (pieces, _) = run(&mut d, &[byte(b'z'), byte(e1)]);
        let mut tail = String::new();
        d.finish(&mut tail);
        assert_eq!(pieces.concat() + &tail, "z\u{fffd}");
    }

    #[test]
    fn a_stop_string_in_the_first_token_releases_nothing() {
        let t = tokenizer();
        let mut d = Detokenizer::new(&t, stops(&["he"]));
        let (pieces, stopped) = run(&mut d, &t.encode("hello", false).unwrap());
        assert_eq!((pieces, stopped), (stops(&[""]), Some(0)));
    }

    #[test]
    fn special_tokens_are_skipped_and_the_leftmost_stop_wins() {
        let t = tokenizer();
        // After "he" the "e" is held (a prefix of "el"); "ll" completes both stop strings, and
        // "el" starts first although "ll" is listed first.
        let mut d = Detokenizer::new(&t, stops(&["ll", "el"]));
        // <|im_start|> (id 1) decodes to nothing.
        let mut tokens = vec![1];
        tokens.extend(t.encode("hello", false).unwrap());
        let (pieces, stopped) = run(&mut d, &tokens);
        assert_eq!((pieces, stopped), (stops(&["", "h", ""]), Some(2)));
    }
}
