//! The GLM-4 tokenizer, rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! GLM-4.7-Flash uses a byte-level BPE (llama.cpp's `gpt2` model) with the `glm4` pre-split
//! regex. Encoding is done by Hugging Face's `tokenizers` crate so merges, the pre-split and
//! special-token matching behave exactly like the reference tokenizer. Decoding maps every
//! token to its bytes with our own table: a streaming decoder needs the raw bytes of each
//! token (a UTF-8 character may span tokens), and `decode` uses the same table so the two can
//! never disagree.

use std::collections::HashMap;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// The pre-split regex of llama.cpp's `glm4` pre-tokenizer (the same as in GLM-4's
/// `tokenizer.json`). It runs before the byte-level mapping, on the original text.
const GLM4_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`) that mark added tokens: their text in
/// the input is matched as the token instead of going through BPE.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Texts of the GLM chat-turn tokens that end a reply whatever the metadata says: the model
/// hands the turn back by starting the next user or tool turn.
const GLM_STOP_TEXTS: [&str; 3] = ["<|endoftext|>", "<|user|>", "<|observation|>"];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Vocabulary entries as stored in the file (byte-level encoded for normal tokens).
    tokens: Vec<String>,
    /// Which ids are control tokens (`<|user|>`, `<think>`, `[gMASK]`...), indexed by id.
    control: Vec<bool>,
    /// The bytes each token stands for, indexed by id.
    token_bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    padding: Option<u32>,
    chat_template: Option<String>,
}

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

impl Tokenizer {
    /// Builds the tokenizer from the metadata of `gguf`; fails on anything but a byte-level
    /// BPE and on inconsistent metadata (a merge of unknown tokens, a short token-type list).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let missing = |key: &str| tok_err(format!("{}: {key} is missing", gguf.name));
        let model = gguf
            .get_str("tokenizer.ggml.model")?
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(tok_err(format!(
                "{}: tokenizer.ggml.model is \"{model}\"; only \"gpt2\" (byte-level BPE) is supported",
                gguf.name
            )));
        }
        match gguf.get_str("tokenizer.ggml.pre")? {
            Some("glm4") => {}
            other => log::warn!(
                "{}: tokenizer.ggml.pre is {other:?}, not \"glm4\"; using the glm4 pre-split pattern",
                gguf.name
            ),
        }

        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let token_types = gguf
            .get_int_array("tokenizer.ggml.token_type")?
            .ok_or_else(|| missing("tokenizer.ggml.token_type"))?;
        if token_types.len() != tokens.len() {
            return Err(tok_err(format!(
                "{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                gguf.name,
                token_types.len(),
                tokens.len()
            )));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(tok_err(format!(
                "{}: {} tokens do not fit 32-bit ids",
                gguf.name,
                tokens.len()
            )));
        }

        let mut ids = HashMap::with_capacity(tokens.len());
        let mut duplicates = 0;
        for (id, &text) in tokens.iter().enumerate() {
            if ids.insert(text.to_string(), id as u32).is_some() {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            // Only a text's last id can come out of encoding (llama.cpp does the same); all
            // ids still decode.
            log::warn!(
                "{}: {duplicates} vocabulary entries repeat an earlier entry",
                gguf.name
            );
        }

        let merges = parse_merges(&merges, &ids)?;
        let bpe = BPE::builder()
            .vocab_and_merges(
                ids.iter()
                    .map(|(t, &id)| (t.clone(), id))
                    .collect::<Vocab>(),
                merges,
            )
            .build()
            .map_err(|e| tok_err(format!("{}: building the BPE model: {e}", gguf.name)))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let split = Split::new(
            SplitPattern::Regex(GLM4_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(format!("glm4 pre-split pattern: {e}")))?;
        // The regex does the splitting; ByteLevel only maps bytes to its printable alphabet.
        let byte_level = ByteLevel::new(false, false, false);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(&text, &t)| AddedToken::from(text, t == TOKEN_TYPE_CONTROL).normalized(false))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| tok_err(format!("{}: adding special tokens: {e}", gguf.name)))?;

        let meta_id = |key: &str| -> Result<Option<u32>> {
            let full = format!("tokenizer.ggml.{key}");
            match gguf.get_int::<u32>(&full)? {
                Some(id) if id as usize >= tokens.len() => Err(tok_err(format!(
                    "{}: {full} = {id} is out of range (vocab {})",
                    gguf.name,
                    tokens.len()
                ))),
                id => Ok(id),
            }
        };

        Ok(Tokenizer {
            inner,
            token_bytes: tokens.iter().map(|t| token_text_bytes(t)).collect(),
            control: token_types
                .iter()
                .map(|&t| t == TOKEN_TYPE_CONTROL)
                .collect(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            ids,
            bos: meta_id("bos_token_id")?,
            eos: meta_id("eos_token_id")?,
            eot: meta_id("eot_token_id")?,
            eom: meta_id("eom_token_id")?,
            padding: meta_id("padding_token_id")?,
            chat_template: gguf.get_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }

    /// Token ids of `text`. Nothing (no BOS) is added; the text of a special token such as
    /// `<|user|>` becomes that token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included. Bytes that are not valid UTF-8 become
    /// U+FFFD, as in Hugging Face's decoder.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.bytes_of(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes token `id` stands for (a fragment of a character for some tokens).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.bytes_of(id)
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                tok_err(format!(
                    "token id {id} out of range (vocab {})",
                    self.tokens.len()
                ))
            })
    }

    /// The vocabulary entry of `id` as stored in the file (byte-level alphabet, so a space
    /// shows as `Ġ`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// A control token: chat structure (`<|user|>`, `<think>`), not text.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a vocabulary entry, e.g. `id_of("<|user|>")`.
    pub fn id_of(&self, token_text: &str) -> Option<u32> {
        self.ids.get(token_text).copied()
    }

    /// Ids that end generation: the GLM turn tokens present in the vocabulary plus the
    /// file's eos/eot/eom ids, without repeats.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let by_text = GLM_STOP_TEXTS.iter().filter_map(|t| self.id_of(t));
        let mut stops: Vec<u32> = Vec::new();
        for id in by_text.chain([self.eos, self.eot, self.eom].into_iter().flatten()) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        stops
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn padding_token_id(&self) -> Option<u32> {
        self.padding
    }

    /// The file's `tokenizer.chat_template` (jinja), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// A decoder for generated tokens, fed one id at a time.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }
}

/// Parses "a b" merge rules into pairs, checking that both parts and their concatenation are
/// vocabulary entries (the BPE builder would fail later with a less helpful message).
fn parse_merges(merges: &[&str], ids: &HashMap<String, u32>) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m
                .split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .ok_or_else(|| {
                    tok_err(format!(
                        "merge {i} {m:?} is not two tokens separated by one space"
                    ))
                })?;
            if !ids.contains_key(a) || !ids.contains_key(b) {
                return Err(tok_err(format!("merge {i} {m:?} refers to unknown token")));
            }
            if !ids.contains_key(&format!("{a}{b}")) {
                return Err(tok_err(format!(
                    "merge {i} {m:?} produces {:?}, which is not in the vocabulary",
                    format!("{a}{b}")
                )));
            }
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

/// The bytes of a vocabulary entry: each character of the GPT-2 byte-level alphabet stands
/// for one byte. An entry with other characters (possible for added tokens) is taken as
/// plain UTF-8 text, which is what Hugging Face's ByteLevel decoder does.
fn token_text_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(byte_level_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves and the
/// other 68 bytes (0..=32, 127..=160, 173), in order, to U+0100 onwards.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let c = c as u32;
    match c {
        _ if printable(c) => Some(c as u8),
        0x100..=0x120 => Some((c - 0x100) as u8),
        0x121..=0x142 => Some((c - 0x121 + 127) as u8),
        0x143 => Some(173),
        _ => None,
    }
}

/// Turns generated ids into text as they come. A character split over several tokens is
/// held back until its last byte arrives, so only whole characters are ever returned.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete character at the end of what was pushed so far.
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token and returns the text it completes (often empty while a multi-byte
    /// character is pending). An id outside the vocabulary yields U+FFFD, as bytes that
    /// can never be text do; the concatenated output equals `Tokenizer::decode` of all ids.
    pub fn push(&mut self, id: u32) -> String {
        match self.tokenizer.bytes_of(id) {
            Ok(bytes) => self.pending.extend_from_slice(bytes),
            Err(_) => {
                let mut out = self.flush();
                out.push(char::REPLACEMENT_CHARACTER);
                return out;
            }
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("checked valid"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that no continuation can repair: one U+FFFD, like a lossy decode.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Returns whatever is still held back (an unfinished character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value, ValueType};

    fn str_array(items: &[&str]) -> Value {
        Value::Array(
            ValueType::String,
            items.iter().map(|s| Value::String(s.to_string())).collect(),
        )
    }

    /// A GGUF holding only tokenizer metadata, for the error paths.
    fn gguf_with(tokens: &[&str], merges: &[&str], types: &[i32], model: &str) -> GgufFile {
        let mut w = GgufWriter::default();
        w.kv("tokenizer.ggml.model", Value::String(model.into()));
        w.kv("tokenizer.ggml.pre", Value::String("glm4".into()));
        w.kv("tokenizer.ggml.tokens", str_array(tokens));
        w.kv("tokenizer.ggml.merges", str_array(merges));
        w.kv(
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        );
        let mut bytes = Vec::new();
        w.write(&mut bytes, |_, _| Ok(())).unwrap();
        GgufFile::from_vec("test.gguf", bytes).unwrap()
    }

    fn err_text(r: Result<Tokenizer>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tokenizer_byte_level_alphabet_is_a_bijection() {
        let mut seen = [false; 256];
        for c in (0..0x200u32).filter_map(char::from_u32) {
            if let Some(b) = byte_level_byte(c) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
    }

    #[test]
    fn tokenizer_small_vocab_encodes_and_decodes() {
        let tokens = ["a", "b", "Ġ", "ab", "Ġab", "<|user|>"];
        let tok = Tokenizer::from_gguf(&gguf_with(
            &tokens,
            &["a b", "Ġ ab"],
            &[1, 1, 1, 1, 1, 3],
            "gpt2",
        ))
        .unwrap();
        assert_eq!(tok.encode("ab ab<|user|>").unwrap(), vec![3, 4, 5]);
        assert_eq!(tok.decode(&[3, 4, 5]).unwrap(), "ab ab<|user|>");
        assert_eq!(tok.stop_tokens(), vec![5]);
        assert_eq!(
            tok.decode(&[99999]).unwrap_err().to_string(),
            "tokenizer: token id 99999 out of range (vocab 6)"
        );
    }

    #[test]
    fn tokenizer_rejects_bad_metadata() {
        let e = err_text(Tokenizer::from_gguf(&gguf_with(&["a"], &[], &[1], "llama")));
        assert!(e.contains("\"llama\""), "{e}");
        let e = err_text(Tokenizer::from_gguf(&gguf_with(
            &["a", "b"],
            &[],
            &[1],
            "gpt2",
        )));
        assert!(
            e.contains("token_type has 1 entries but tokenizer.ggml.tokens has 2"),
            "{e}"
        );
        let e = err_text(Tokenizer::from_gguf(&gguf_with(
            &["a", "b", "ab"],
            &["a b", "a c"],
            &[1, 1, 1],
            "gpt2",
        )));
        assert!(e.contains("merge 1 \"a c\" refers to unknown token"), "{e}");
        let e = err_text(Tokenizer::from_gguf(&gguf_with(
            &["a", "b"],
            &["a b"],
            &[1, 1],
            "gpt2",
        )));
        assert!(e.contains("produces \"ab\""), "{e}");
    }

    #[test]
    fn tokenizer_stream_decoder_matches_lossy_decode() {
        // "é" is split over two tokens; "\u{80}" alone (0xC2 0x80 split as 0xC2 then 'x') is broken.
        let tokens = ["Ã", "©", "Â", "x", "ðŁ", "ļ", "Ģ"];
        let tok = Tokenizer::from_gguf(&gguf_with(&tokens, &[], &[1; 7], "gpt2")).unwrap();
        let ids = [0, 1, 2, 3, 4, 5, 6, 4];
        let mut dec = tok.stream_decoder();
        let pieces: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
        assert_eq!(pieces, ["", "é", "", "\u{FFFD}x", "", "", "🚀", ""]);
        assert_eq!(dec.flush(), "\u{FFFD}");
        assert_eq!(pieces.concat() + "\u{FFFD}", tok.decode(&ids).unwrap());
    }
}
