//! Log-probabilities, as OpenAI's two endpoints ask for and shape them: chat's
//! `logprobs: true` with `top_logprobs: N`, answered as `{"content": [{token, logprob,
//! bytes, top_logprobs}]}`, and the legacy completions' `logprobs: N`, answered as
//! `{tokens, token_logprobs, top_logprobs, text_offset}`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::openai::{ApiError, Kind};
use crate::sampler::{TokenLogprob, MAX_TOP_LOGPROBS};
use crate::tokenizer::Tokenizer;

/// What the request asks for: `None`, or each token's log-probability with this many
/// alternatives.
pub fn requested(
    kind: Kind,
    logprobs: Option<&Value>,
    top_logprobs: Option<&Value>,
) -> Result<Option<usize>, ApiError> {
    let count = |field: &str, v: &Value| match v.as_u64() {
        Some(n) if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
        _ => Err(ApiError::invalid(
            field,
            format!("{v}: expected an integer from 0 to {MAX_TOP_LOGPROBS}"),
        )),
    };
    let given = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    match kind {
        Kind::Chat => {
            let on = match given(logprobs) {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(v) => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        format!("{v}: expected true or false"),
                    ))
                }
            };
            match (on, given(top_logprobs)) {
                (false, None) => Ok(None),
                (false, Some(_)) => Err(ApiError::invalid(
                    "top_logprobs",
                    "needs \"logprobs\": true",
                )),
                (true, None) => Ok(Some(0)),
                (true, Some(v)) => count("top_logprobs", &v).map(Some),
            }
        }
        Kind::Completion => {
            if given(top_logprobs).is_some() {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "belongs to /v1/chat/completions; a completion's logprobs is the count",
                ));
            }
            given(logprobs).map(|v| count("logprobs", &v)).transpose()
        }
    }
}

/// Writes the `logprobs` of a reply's choices, whole or chunk by chunk (a stream's chunks
/// carry the tokens generated since the one before, their text offsets counting on).
pub struct LogprobsWriter {
    tokenizer: Arc<Tokenizer>,
    kind: Kind,
    /// Characters of the completion's text before the next token, for `text_offset`.
    offset: TextOffset,
}

impl LogprobsWriter {
    pub fn new(tokenizer: Arc<Tokenizer>, kind: Kind) -> Self {
        LogprobsWriter {
            tokenizer,
            kind,
            offset: TextOffset::default(),
        }
    }

    /// A writer for the next choice: the same tokenizer and shape, text offsets from 0.
    pub fn fresh(&self) -> Self {
        LogprobsWriter::new(self.tokenizer.clone(), self.kind)
    }

    /// The `logprobs` object of a choice that carries `tokens`.
    pub fn write(&mut self, tokens: &[TokenLogprob]) -> Value {
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut entry = self.entry(t.id, t.logprob);
                        let top: Vec<Value> =
                            t.top.iter().map(|&(id, l)| self.entry(id, l)).collect();
                        entry["top_logprobs"] = json!(top);
                        entry
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let (mut texts, mut logprobs, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for t in tokens {
                    texts.push(self.text(t.id));
                    logprobs.push(t.logprob);
                    let top: Map<String, Value> = t
                        .top
                        .iter()
                        .map(|&(id, l)| (self.text(id), json!(l)))
                        .collect();
                    tops.push(top);
                    // Control tokens leave no text in a completion.
                    let text = match self.tokenizer.is_control(t.id) {
                        true => &[][..],
                        false => self.tokenizer.token_bytes(t.id).unwrap_or_default(),
                    };
                    offsets.push(self.offset.advance(text));
                }
                json!({"tokens": texts, "token_logprobs": logprobs, "top_logprobs": tops,
                       "text_offset": offsets})
            }
        }
    }

    fn bytes(&self, id: u32) -> &[u8] {
        self.tokenizer.token_bytes(id).unwrap_or_default()
    }

    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    /// `{token, logprob, bytes}`: the token's text (a piece of a character shows as U+FFFD)
    /// and its exact UTF-8 bytes.
    fn entry(&self, id: u32, logprob: f32) -> Value {
        json!({"token": self.text(id), "logprob": logprob, "bytes": self.bytes(id)})
    }
}

/// Counts the characters of text that arrives as bytes, a character possibly split over
/// several tokens (counted once, with the token that completes it); a byte sequence that
/// is not UTF-8 counts as one U+FFFD, as lossy decoding shows it.
#[derive(Default)]
struct TextOffset {
    chars: usize,
    /// The start of a character whose remaining bytes have not arrived yet.
    partial: Vec<u8>,
}

impl TextOffset {
    /// The offset before `bytes`; then counts them.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let before = self.chars;
        self.partial.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.chars += s.chars().count();
                    self.partial.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let good = std::str::from_utf8(&self.partial[..valid]).unwrap_or_default();
                    self.chars += good.chars().count();
                    match e.error_len() {
                        // An incomplete character at the end: wait for its next bytes.
                        None => {
                            self.partial.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            self.chars += 1;
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_field_they_get_wrong() {
        let chat = |l: Value, t: Value| requested(Kind::Chat, Some(&l), Some(&t));
        assert_eq!(chat(json!(true), json!(5)).unwrap(), Some(5));
        assert_eq!(chat(json!(true), Value::Null).unwrap(), Some(0));
        assert_eq!(chat(json!(false), Value::Null).unwrap(), None);
        assert_eq!(requested(Kind::Chat, None, None).unwrap(), None);
        let param = |r: Result<Option<usize>, ApiError>| r.unwrap_err().param.unwrap();
        assert_eq!(param(chat(json!(false), json!(2))), "top_logprobs");
        assert_eq!(param(chat(json!(true), json!(21))), "top_logprobs");
        assert_eq!(param(chat(json!(true), json!(-1))), "top_logprobs");
        assert_eq!(param(chat(json!(3), Value::Null)), "logprobs");
        let completion = |l: Value| requested(Kind::Completion, Some(&l), None);
        assert_eq!(completion(json!(2)).unwrap(), Some(2));
        assert_eq!(completion(json!(0)).unwrap(), Some(0));
        assert_eq!(completion(Value::Null).unwrap(), None);
        assert_eq!(param(completion(json!(true))), "logprobs");
        assert_eq!(param(completion(json!(2.5))), "logprobs");
        let both = requested(Kind::Completion, Some(&json!(1)), Some(&json!(1)));
        assert_eq!(param(both), "top_logprobs");
    }

    #[test]
    fn text_offsets_count_characters_split_over_tokens_once() {
        let mut o = TextOffset::default();
        assert_eq!(o.advance(b"ab"), 0);
        // "é" (c3 a9) in two tokens: counted with the second.
        assert_eq!(o.advance(&[0xc3]), 2);
        assert_eq!(o.advance(&[0xa9, b'c']), 2);
        assert_eq!(o.advance(b""), 4);
        // A byte that starts no character counts as one replacement character.
        assert_eq!(o.advance(&[0xff, b'd']), 4);
        assert_eq!(o.advance("→".as_bytes()), 6);
        assert_eq!(o.advance(b"x"), 7);
    }
}
