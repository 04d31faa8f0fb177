//! JSON output: a reply held to one JSON value (RFC 8259), token by token. [`JsonState`]
//! reads the reply's bytes as a pushdown automaton; before each choice, every token whose
//! bytes would leave valid JSON (or a prefix of it) gets a logit of -inf, and once the
//! value is whole only the stop tokens are left, so the reply ends there.

use crate::tokenizer::Tokenizer;
use rayon::prelude::*;

/// Which JSON values the reply may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonValue {
    /// Any value (`"a"`, `3`, `[1]`...).
    Any,
    /// An object, as OpenAI's `response_format: {"type": "json_object"}` asks.
    Object,
}

/// Deepest nesting of objects and arrays (the stack is a bit set).
pub const MAX_DEPTH: u32 = 128;
/// Most whitespace bytes in a row: a line break and indentation, as pretty-printing writes
/// them (llama.cpp's JSON grammar allows the same 21), but no endless newlines.
const MAX_WHITESPACE_RUN: u8 = 21;

/// What the next byte may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A value: at the top, after `:`, after `,` in an array.
    Value,
    /// A value or `]`, just after `[`.
    ValueOrEnd,
    /// A key or `}`, just after `{`.
    KeyOrEnd,
    /// A key, after `,` in an object.
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the end of the container after a value; at the top, nothing (the value is
    /// whole).
    Next,
    /// Inside a string (a key when `key`), after `\`, or in the hex digits of `\u`.
    Str {
        key: bool,
    },
    Escape {
        key: bool,
    },
    Hex {
        key: bool,
        left: u8,
    },
    Number(Num),
    /// Inside `true`, `false` or `null`: `at` bytes of `word` read.
    Literal {
        word: &'static [u8],
        at: u8,
    },
}

/// Where a number stands: after `-`, a leading `0`, other integer digits, `.`, fraction
/// digits, `e`, the exponent's sign, exponent digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// A number may end here.
    fn whole(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

/// The automaton's state; small and `Copy`, so checking a token costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
    expect: Expect,
    /// Open containers, innermost at bit `depth - 1`: 1 for an object, 0 for an array; the
    /// bits from `depth` on are 0.
    stack: u128,
    depth: u32,
    only_object: bool,
    whitespace_run: u8,
}

impl JsonState {
    pub fn new(value: JsonValue) -> Self {
        JsonState {
            expect: Expect::Value,
            stack: 0,
            depth: 0,
            only_object: value == JsonValue::Object,
            whitespace_run: 0,
        }
    }

    /// The bytes so far are one whole JSON value (with whitespace around it).
    pub fn complete(&self) -> bool {
        self.depth == 0
            && match self.expect {
                Expect::Next => true,
                Expect::Number(n) => n.whole(),
                _ => false,
            }
    }

    /// The value is whole and nothing can extend it (a number at the top still could).
    pub fn finished(&self) -> bool {
        self.depth == 0 && self.expect == Expect::Next
    }

    /// Reads `bytes`; false (and the state unspecified) when they leave JSON.
    pub fn push_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.push(b))
    }

    /// Reads one byte; false when it cannot come next in JSON.
    pub fn push(&mut self, b: u8) -> bool {
        let whitespace = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let between_tokens = matches!(
            self.expect,
            Expect::Value
                | Expect::ValueOrEnd
                | Expect::KeyOrEnd
                | Expect::Key
                | Expect::Colon
                | Expect::Next
        );
        if between_tokens && whitespace {
            self.whitespace_run += 1;
            return self.whitespace_run <= MAX_WHITESPACE_RUN;
        }
        self.whitespace_run = 0;
        match self.expect {
            Expect::Str { key } => match b {
                b'"' if key => self.expect = Expect::Colon,
                b'"' => self.expect = Expect::Next,
                b'\\' => self.expect = Expect::Escape { key },
                0..=0x1f => return false,
                _ => {}
            },
            Expect::Escape { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.expect = Expect::Str { key }
                }
                b'u' => self.expect = Expect::Hex { key, left: 4 },
                _ => return false,
            },
            Expect::Hex { key, left } => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                self.expect = match left {
                    1 => Expect::Str { key },
                    _ => Expect::Hex {
                        key,
                        left: left - 1,
                    },
                };
            }
            Expect::Literal { word, at } => {
                if word[at as usize] != b {
                    return false;
                }
                self.expect = match at as usize + 1 == word.len() {
                    true => Expect::Next,
                    false => Expect::Literal { word, at: at + 1 },
                };
            }
            Expect::Number(n) => {
                let next = match (n, b) {
                    (Num::Minus, b'0') => Num::Zero,
                    (Num::Minus, b'1'..=b'9') => Num::Int,
                    (Num::Int, b'0'..=b'9') => Num::Int,
                    (Num::Zero | Num::Int, b'.') => Num::Dot,
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
                    (Num::E, b'+' | b'-') => Num::ESign,
                    (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Num::Exp,
                    // The number is over: the byte belongs to what follows it.
                    (n, _) if n.whole() => {
                        self.expect = Expect::Next;
                        return self.push(b);
                    }
                    _ => return false,
                };
                self.expect = Expect::Number(next);
            }
            Expect::Value | Expect::ValueOrEnd => {
                if b == b']' && self.expect == Expect::ValueOrEnd {
                    return self.close(false);
                }
                if self.depth == 0 && self.only_object && b != b'{' {
                    return false;
                }
                self.expect = match b {
                    b'{' => return self.open(true),
                    b'[' => return self.open(false),
                    b'"' => Expect::Str { key: false },
                    b'-' => Expect::Number(Num::Minus),
                    b'0' => Expect::Number(Num::Zero),
                    b'1'..=b'9' => Expect::Number(Num::Int),
                    b't' => Expect::Literal {
                        word: b"true",
                        at: 1,
                    },
                    b'f' => Expect::Literal {
                        word: b"false",
                        at: 1,
                    },
                    b'n' => Expect::Literal {
                        word: b"null",
                        at: 1,
                    },
                    _ => return false,
                };
            }
            Expect::KeyOrEnd | Expect::Key => match b {
                b'"' => self.expect = Expect::Str { key: true },
                b'}' if self.expect == Expect::KeyOrEnd => return self.close(true),
                _ => return false,
            },
            Expect::Colon => match b {
                b':' => self.expect = Expect::Value,
                _ => return false,
            },
            Expect::Next => {
                if self.depth == 0 {
                    return false;
                }
                let in_object = self.innermost_is_object();
                match b {
                    b',' if in_object => self.expect = Expect::Key,
                    b',' => self.expect = Expect::Value,
                    b'}' if in_object => return self.close(true),
                    b']' if !in_object => return self.close(false),
                    _ => return false,
                }
            }
        }
        true
    }

    fn innermost_is_object(&self) -> bool {
        self.depth > 0 && (self.stack >> (self.depth - 1)) & 1 == 1
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth == MAX_DEPTH {
            return false;
        }
        self.stack |= (object as u128) << self.depth;
        self.depth += 1;
        self.expect = match object {
            true => Expect::KeyOrEnd,
            false => Expect::ValueOrEnd,
        };
        true
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.innermost_is_object() != object {
            return false;
        }
        self.depth -= 1;
        // No bit past the depth stays set: states that read alike compare equal (what
        // TokenMasks keeps its masks by).
        self.stack &= !(1 << self.depth);
        self.expect = Expect::Next;
        true
    }
}

/// States whose allowed tokens [`TokenMasks`] keeps.
const RECENT_STATES: usize = 16;

/// Which tokens may come next from a state, for the states met most recently. Walking a
/// 150K-token vocabulary through the automaton takes milliseconds, about a decoded token's
/// time on a GPU; a reply stays in one state for many tokens (inside a string, a number,
/// between the same keys), so each recent state is walked once.
pub struct TokenMasks {
    stop_tokens: Vec<u32>,
    /// (state, a bit per token: it may come next), the most recently used last.
    recent: Vec<(JsonState, Vec<u64>)>,
}

impl TokenMasks {
    /// Masks for a reply that ends at `stop_tokens`.
    pub fn new(stop_tokens: &[u32]) -> Self {
        TokenMasks {
            stop_tokens: stop_tokens.to_vec(),
            recent: Vec::new(),
        }
    }

    /// Sets to -inf the logit of every token that cannot come next from `state`: while the
    /// value is not whole, those whose bytes leave JSON, the control tokens and the stop
    /// tokens; once it is, all but the stop tokens. Returns how many tokens are left.
    pub fn mask(&mut self, state: &JsonState, tokenizer: &Tokenizer, logits: &mut [f32]) -> usize {
        match self.recent.iter().position(|(s, _)| s == state) {
            Some(i) => {
                let hit = self.recent.remove(i);
                self.recent.push(hit);
            }
            None => {
                if self.recent.len() == RECENT_STATES {
                    self.recent.remove(0);
                }
                let allowed = self.allowed(state, tokenizer, logits.len());
                self.recent.push((*state, allowed));
            }
        }
        let allowed = &self.recent[self.recent.len() - 1].1;
        let mut left = 0;
        for (id, logit) in logits.iter_mut().enumerate() {
            if allowed[id / 64] >> (id % 64) & 1 == 1 {
                left += 1;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        left
    }

    /// One bit per token of a `vocab`-token vocabulary: whether it may come next. The
    /// words of 64 tokens are walked on every core.
    fn allowed(&self, state: &JsonState, tokenizer: &Tokenizer, vocab: usize) -> Vec<u64> {
        let complete = state.complete();
        let continues = |token: u32| {
            if self.stop_tokens.contains(&token) {
                complete
            } else if tokenizer.is_control(token) {
                false
            } else {
                let bytes = tokenizer.token_bytes(token).unwrap_or_default();
                let mut s = *state;
                !bytes.is_empty() && s.push_all(bytes)
            }
        };
        (0..vocab.div_ceil(64))
            .into_par_iter()
            .map(|word| {
                (64 * word..vocab.min(64 * word + 64))
                    .filter(|&id| continues(id as u32))
                    .fold(0u64, |bits, id| bits | 1 << (id % 64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is left of closed containers leaves no trace: the states inside an array after
    /// an inner object and after an inner array are one state.
    #[test]
    fn states_that_read_alike_are_equal() {
        let after = |text: &str| {
            let mut s = JsonState::new(JsonValue::Any);
            assert!(s.push_all(text.as_bytes()), "{text}");
            s
        };
        assert_eq!(after("[{}, "), after("[[], "));
        assert_eq!(
            after(r#"{"a": {"b": [1]}, "c": "#),
            after(r#"{"a": [[2]], "c": "#)
        );
    }

    /// The kept masks are the masks: along a reply's states (many repeated, more distinct
    /// ones than are kept), masking with one `TokenMasks` gives the logits a fresh walk of
    /// the vocabulary gives, and a token is left exactly when its bytes continue the JSON
    /// (a stop token exactly when the value is whole).
    #[test]
    fn kept_token_masks_equal_a_fresh_walk() {
        let file = crate::synth::builtin_model();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let stop = [2u32];
        let vocab = tok.vocab_size();
        let text = r#"{"a": "some text here", "b": [1, 22, 333, -4.5e6], "c": {"d": [true, false, null], "e": "\u00e9\n"}, "f": [[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]], "g": "more text"}"#;
        let mut kept = TokenMasks::new(&stop);
        let mut state = JsonState::new(JsonValue::Object);
        let mut distinct = Vec::new();
        for &b in text.as_bytes() {
            let mut got = vec![0.5f32; vocab];
            let mut want = vec![0.5f32; vocab];
            let left = kept.mask(&state, &tok, &mut got);
            assert_eq!(left, TokenMasks::new(&stop).mask(&state, &tok, &mut want));
            assert_eq!(got, want, "after {:?}", state);
            for (id, &logit) in got.iter().enumerate() {
                let id = id as u32;
                let continues = if stop.contains(&id) {
                    state.complete()
                } else {
                    let bytes = tok.token_bytes(id).unwrap();
                    let mut s = state;
                    !tok.is_control(id) && !bytes.is_empty() && s.push_all(bytes)
                };
                assert_eq!(logit == 0.5, continues, "token {id} after {:?}", state);
            }
            if !distinct.contains(&state) {
                distinct.push(state);
            }
            assert!(state.push(b));
        }
        assert!(distinct.len() > RECENT_STATES, "{} states", distinct.len());
        assert!(state.finished());
    }

    fn reads(value: JsonValue, text: &str) -> Option<bool> {
        let mut s = JsonState::new(value);
        s.push_all(text.as_bytes()).then(|| s.complete())
    }

    /// Texts serde_json parses are whole values; their prefixes are valid but not whole;
    /// texts it refuses are refused at some byte or left incomplete.
    #[test]
    fn json_state_agrees_with_serde_json() {
        let good = [
            r#"{}"#,
            r#"{"a": 1, "b": [true, false, null], "c": {"d": "e\"\\\/\b\f\n\r\t\u00e9"}}"#,
            "  {\n  \"x\" : -0.5e+10 , \"y\":[ ] }\n",
            r#"{"n": [0, -1, 12.25, 1E3, 2e-2, -0.0]}"#,
            r#"{"é": "ünïcödé ✓"}"#,
            r#"[[[[{"deep": [1, [2, [3]]]}]]]]"#,
            r#""text""#,
            r#"3"#,
            r#"-12.5e7"#,
            r#"null"#,
        ];
        for text in good {
            serde_json::from_str::<serde_json::Value>(text).unwrap();
            assert_eq!(reads(JsonValue::Any, text), Some(true), "{text}");
            let object = text.trim_start().starts_with('{');
            assert_eq!(
                reads(JsonValue::Object, text) == Some(true),
                object,
                "{text}"
            );
            for cut in 1..text.len() {
                if !text.is_char_boundary(cut) {
                    continue;
                }
                let prefix = &text[..cut];
                let whole = serde_json::from_str::<serde_json::Value>(prefix).is_ok();
                assert_eq!(reads(JsonValue::Any, prefix), Some(whole), "{prefix:?}");
            }
        }
        let bad = [
            r#"{"a" 1}"#,
            r#"{"a": 1,}"#,
            r#"[1, 2,]"#,
            r#"{a: 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": .5}"#,
            r#"{"a": +1}"#,
            r#"{"a": tru}"#,
            r#"{"a": "\x"}"#,
            r#"{"a": "\u12g4"}"#,
            "{\"a\": \"line\nbreak\"}",
            r#"{"a": 1}}"#,
            r#"[1}"#,
            r#"{"a": 1} {"b": 2}"#,
            r#"{"a": NaN}"#,
        ];
        for text in bad {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "{text}"
            );
            assert_ne!(reads(JsonValue::Any, text), Some(true), "{text}");
        }
        assert_eq!(reads(JsonValue::Object, "[1]"), None);
        assert_eq!(reads(JsonValue::Object, "\"s\""), None);
    }

    #[test]
    fn nesting_and_whitespace_are_bounded() {
        let deep = "[".repeat(MAX_DEPTH as usize);
        assert_eq!(reads(JsonValue::Any, &deep), Some(false));
        assert_eq!(reads(JsonValue::Any, &format!("{deep}[")), None);
        let spaces = " ".repeat(MAX_WHITESPACE_RUN as usize);
        assert_eq!(reads(JsonValue::Any, &format!("{spaces}1")), Some(true));
        assert_eq!(reads(JsonValue::Any, &format!("{spaces} 1")), None);
        // The run restarts after other bytes.
        assert_eq!(
            reads(JsonValue::Any, &format!("[{spaces}1,{spaces}2]")),
            Some(true)
        );
    }
}
