//! Chat prompts: rendering a GGUF's jinja chat template the way transformers'
//! `apply_chat_template` does, and telling the thinking part of a reply from the answer.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::sampler::TokenLogprob;
use crate::tool_calls::{Piece, ToolCallParser};

/// The official GLM-4.7-Flash chat template, for files that carry none.
pub const GLM47_CHAT_TEMPLATE: &str = include_str!("glm47_chat_template.jinja");

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// The thinking of an earlier assistant turn. Left out of the template's view when
    /// `None`, so `m.reasoning_content is defined` means what it means in Python.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Calls an assistant turn made; the template writes them in the model's own format.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
}

/// A function call made by the model. The template sees `name` and `arguments` (a
/// mapping, as transformers expects; the OpenAI API carries it as a JSON string).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: serde_json::Map<String, Json>,
}

/// What a chat template renders: the messages, the tools the model may call (OpenAI's
/// `tools` array, passed to the template as is) and the template switches.
#[derive(Clone, Copy, Debug)]
pub struct ChatPrompt<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: &'a [Json],
    /// End with an open assistant turn for the model to fill.
    pub add_generation_prompt: bool,
    pub enable_thinking: bool,
    /// More variables for the template, as given (llama-server's `chat_template_kwargs`,
    /// such as GLM-4.7's `clear_thinking`); the fields above win over them.
    pub template_kwargs: Option<&'a serde_json::Map<String, Json>>,
}

impl ChatPrompt<'_> {
    /// Renders the prompt with `template` (the file's `tokenizer.chat_template`) or, when
    /// there is none, the official GLM-4.7 template. With `add_generation_prompt` it ends
    /// with `<|assistant|><think>`, or `<|assistant|></think>` when thinking is off.
    pub fn render(&self, template: Option<&str>) -> Result<String> {
        #[derive(Serialize)]
        struct Context<'a> {
            #[serde(flatten)]
            kwargs: Option<&'a serde_json::Map<String, Json>>,
            messages: &'a [ChatMessage],
            add_generation_prompt: bool,
            enable_thinking: bool,
            /// `None` without tools, as transformers passes it.
            tools: Option<&'a [Json]>,
        }
        // A key of both is the named field's: it is taken out of the kwargs.
        let kwargs = self.template_kwargs.map(|k| {
            let mut k = k.clone();
            for named in [
                "messages",
                "add_generation_prompt",
                "enable_thinking",
                "tools",
            ] {
                k.remove(named);
            }
            k
        });
        let context = Context {
            kwargs: kwargs.as_ref(),
            messages: self.messages,
            add_generation_prompt: self.add_generation_prompt,
            enable_thinking: self.enable_thinking,
            tools: Some(self.tools).filter(|t| !t.is_empty()),
        };
        render_template(template.unwrap_or(GLM47_CHAT_TEMPLATE), context)
    }
}

/// Whether a rendered prompt leaves a thinking block open (it ends with `<think>`), so the
/// reply starts with thinking.
pub fn ends_in_thinking(prompt_text: &str) -> bool {
    prompt_text.trim_end().ends_with(THINK_OPEN)
}

/// Renders any chat template with the given variables (an object: `messages`, `tools`,
/// `add_generation_prompt`, ...), in a jinja environment configured like transformers':
/// trim_blocks, lstrip_blocks, loop controls, Python string and dict methods, its `tojson`
/// and `raise_exception`.
pub fn render_template<S: Serialize>(template: &str, context: S) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.render_str(template, context)
        .map_err(|e| Error::Template(e.to_string()))
}

/// transformers' `tojson`: Python's `json.dumps` with its defaults (", " and ": "
/// separators, keys in insertion order, non-ASCII kept) and no HTML escaping, unlike
/// minijinja's built-in filter.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_i64() {
            Some(n) => " ".repeat(n.max(0) as usize),
            None => v.as_str().map(str::to_string).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?,
        }),
    };
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let opts = PyJson {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    opts.write(&mut out, &json, 0);
    Ok(Value::from(out))
}

/// The options of Python's `json.dumps` that templates use.
struct PyJson {
    ensure_ascii: bool,
    indent: Option<String>,
    sort_keys: bool,
}

impl PyJson {
    fn write(&self, out: &mut String, v: &Json, level: usize) {
        match v {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(&n.to_string()),
            Json::String(s) => self.write_str(out, s),
            Json::Array(items) => {
                self.write_seq(out, ('[', ']'), items.iter().map(|i| (None, i)), level)
            }
            Json::Object(map) => {
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.write_seq(
                    out,
                    ('{', '}'),
                    entries.into_iter().map(|(k, v)| (Some(k), v)),
                    level,
                )
            }
        }
    }

    /// An array or object: with `indent` one item per line, else on one line with ", ".
    fn write_seq<'a>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        items: impl ExactSizeIterator<Item = (Option<&'a String>, &'a Json)>,
        level: usize,
    ) {
        out.push(open);
        if items.len() == 0 {
            out.push(close);
            return;
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(level));
            }
        };
        for (i, (key, value)) in items.enumerate() {
            if i > 0 {
                out.push_str(if self.indent.is_some() { "," } else { ", " });
            }
            newline(out, level + 1);
            if let Some(key) = key {
                self.write_str(out, key);
                out.push_str(": ");
            }
            self.write(out, value, level + 1);
        }
        newline(out, level);
        out.push(close);
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Which part of a reply a piece of text belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Thinking,
    Answer,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Splits generated text, as it streams in, into thinking and answer. `</think>` ends the
/// thinking and `<think>` starts it; the tags themselves are not returned. A tag split over
/// several pushes is held back until it is complete.
pub struct ThinkingSplitter {
    part: Part,
    pending: String,
}

impl ThinkingSplitter {
    /// `thinking`: whether the prompt left a thinking block open (it ended with `<think>`).
    pub fn new(thinking: bool) -> Self {
        ThinkingSplitter {
            part: if thinking {
                Part::Thinking
            } else {
                Part::Answer
            },
            pending: String::new(),
        }
    }

    /// The part the next text belongs to.
    pub fn part(&self) -> Part {
        self.part
    }

    /// Adds generated text; returns the pieces that are now certain, each with its part.
    pub fn push(&mut self, text: &str) -> Vec<(Part, String)> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            let tag = [(THINK_OPEN, Part::Thinking), (THINK_CLOSE, Part::Answer)]
                .into_iter()
                .filter_map(|(tag, part)| self.pending.find(tag).map(|at| (at, tag.len(), part)))
                .min_by_key(|&(at, _, _)| at);
            let Some((at, len, next)) = tag else { break };
            self.emit(&mut out, at);
            self.pending.drain(..len);
            self.part = next;
        }
        // Keep back a tail that may be the start of a tag.
        let keep = self
            .pending
            .rfind('<')
            .filter(|&at| {
                [THINK_OPEN, THINK_CLOSE]
                    .iter()
                    .any(|tag| tag.starts_with(&self.pending[at..]))
            })
            .unwrap_or(self.pending.len());
        self.emit(&mut out, keep);
        out
    }

    /// Returns the held-back text, if any.
    pub fn flush(&mut self) -> Vec<(Part, String)> {
        let mut out = Vec::new();
        self.emit(&mut out, self.pending.len());
        out
    }

    /// Moves the first `len` bytes of `pending` to `out` under the current part.
    fn emit(&mut self, out: &mut Vec<(Part, String)>, len: usize) {
        if len > 0 {
            out.push((self.part, self.pending.drain(..len).collect()));
        }
    }
}

/// Splits a whole reply into (thinking, answer); see [`ThinkingSplitter`].
pub fn split_thinking(text: &str, thinking: bool) -> (String, String) {
    let mut splitter = ThinkingSplitter::new(thinking);
    let mut pieces = splitter.push(text);
    pieces.extend(splitter.flush());
    let mut parts = (String::new(), String::new());
    for (part, piece) in pieces {
        match part {
            Part::Thinking => parts.0.push_str(&piece),
            Part::Answer => parts.1.push_str(&piece),
        }
    }
    parts
}

/// One piece of a reply as it streams.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyEvent {
    Thinking(String),
    Answer(String),
    ToolCall(ToolCall),
    /// A generated token's log-probability, when the options ask for them: one per token,
    /// whatever part of the reply its text falls in, before that text.
    Logprob(TokenLogprob),
}

/// Splits a reply, as it streams in, into thinking, answer and tool calls: the thinking
/// split of [`ThinkingSplitter`], then the GLM-4.7 tool calls in the answer
/// ([`crate::tool_calls`]).
pub struct ReplyParser {
    thinking: Option<ThinkingSplitter>,
    tool_calls: Option<ToolCallParser>,
}

impl ReplyParser {
    /// Plain text (a raw completion): every piece is answer, as generated.
    pub fn plain() -> Self {
        ReplyParser {
            thinking: None,
            tool_calls: None,
        }
    }

    /// A chat reply. `thinking_open`: the prompt left a thinking block open
    /// ([`ends_in_thinking`]). Tool calls are parsed when `tools` (OpenAI's array) is not
    /// empty; otherwise their text stays in the answer.
    pub fn chat(thinking_open: bool, tools: &[Json]) -> Self {
        ReplyParser {
            thinking: Some(ThinkingSplitter::new(thinking_open)),
            tool_calls: (!tools.is_empty()).then(|| ToolCallParser::new(tools)),
        }
    }

    /// Adds generated text; returns the pieces that are now certain.
    pub fn push(&mut self, text: &str) -> Vec<ReplyEvent> {
        let parts = match &mut self.thinking {
            Some(s) => s.push(text),
            None => vec![(Part::Answer, text.to_string())],
        };
        self.route(parts, false)
    }

    /// The held-back rest, once the reply is over.
    pub fn finish(&mut self) -> Vec<ReplyEvent> {
        let parts = match &mut self.thinking {
            Some(s) => s.flush(),
            None => Vec::new(),
        };
        self.route(parts, true)
    }

    fn route(&mut self, parts: Vec<(Part, String)>, last: bool) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        for (part, text) in parts {
            match (part, &mut self.tool_calls) {
                (Part::Thinking, _) => out.push(ReplyEvent::Thinking(text)),
                (Part::Answer, None) => out.push(ReplyEvent::Answer(text)),
                (Part::Answer, Some(p)) => out.extend(p.push(&text).into_iter().map(Into::into)),
            }
        }
        if let (true, Some(p)) = (last, &mut self.tool_calls) {
            out.extend(p.finish().into_iter().map(Into::into));
        }
        out.retain(
            |e| !matches!(e, ReplyEvent::Thinking(t) | ReplyEvent::Answer(t) if t.is_empty()),
        );
        out
    }
}

impl From<Piece> for ReplyEvent {
    fn from(p: Piece) -> Self {
        match p {
            Piece::Text(t) => ReplyEvent::Answer(t),
            Piece::Call(c) => ReplyEvent::ToolCall(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_thinking_splitter_handles_tags_split_across_pushes() {
        let mut s = ThinkingSplitter::new(true);
        let mut pieces = Vec::new();
        for chunk in [
            "Let me",
            " think.</th",
            "ink>",
            "The answer",
            " is <b>4</b>.",
        ] {
            pieces.extend(s.push(chunk));
        }
        pieces.extend(s.flush());
        let thinking: String = pieces
            .iter()
            .filter(|p| p.0 == Part::Thinking)
            .map(|p| p.1.as_str())
            .collect();
        let answer: String = pieces
            .iter()
            .filter(|p| p.0 == Part::Answer)
            .map(|p| p.1.as_str())
            .collect();
        assert_eq!(thinking, "Let me think.");
        assert_eq!(answer, "The answer is <b>4</b>.");
        assert_eq!(
            split_thinking("a<think>b</think>c", false),
            ("b".to_string(), "ac".to_string())
        );
    }

    #[test]
    fn chat_reply_parser_splits_thinking_answer_and_tool_calls() {
        let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
        let text =
            "plan</think>Sure.<tool_call>f<arg_key>n</arg_key><arg_value>3</arg_value></tool_call>";
        let want = vec![
            ReplyEvent::Thinking("plan".into()),
            ReplyEvent::Answer("Sure.".into()),
            ReplyEvent::ToolCall(ToolCall {
                name: "f".into(),
                arguments: serde_json::json!({"n": 3}).as_object().unwrap().clone(),
            }),
        ];
        // One byte at a time, merging adjacent text of the same part.
        let mut p = ReplyParser::chat(true, &tools);
        let mut events: Vec<ReplyEvent> = Vec::new();
        for (i, c) in text.char_indices() {
            events.extend(p.push(&text[i..i + c.len_utf8()]));
        }
        events.extend(p.finish());
        let mut merged: Vec<ReplyEvent> = Vec::new();
        for e in events {
            match (merged.last_mut(), e) {
                (Some(ReplyEvent::Thinking(a)), ReplyEvent::Thinking(b))
                | (Some(ReplyEvent::Answer(a)), ReplyEvent::Answer(b)) => a.push_str(&b),
                (_, e) => merged.push(e),
            }
        }
        assert_eq!(merged, want);
        // Without tools the call stays text; plain text is never split.
        let mut p = ReplyParser::chat(false, &[]);
        let mut events = p.push("<tool_call>f</tool_call>");
        events.extend(p.finish());
        assert_eq!(
            events,
            [ReplyEvent::Answer("<tool_call>f</tool_call>".into())]
        );
        let mut p = ReplyParser::plain();
        assert_eq!(
            p.push("a</think>b"),
            [ReplyEvent::Answer("a</think>b".into())]
        );
        assert!(p.finish().is_empty());
    }

    /// Template kwargs reach the template beside the named variables, which win over them;
    /// GLM-4.7's `clear_thinking: false` keeps the thinking of earlier turns.
    #[test]
    fn template_kwargs_reach_the_template() {
        let messages = [
            ChatMessage::new("user", "Hi"),
            ChatMessage {
                reasoning_content: Some("They greet me.".into()),
                ..ChatMessage::new("assistant", "Hello!")
            },
            ChatMessage::new("user", "How are you?"),
        ];
        let kwargs: serde_json::Map<String, Json> =
            serde_json::from_value(serde_json::json!({"greeting": "hey", "messages": "x"}))
                .unwrap();
        let render = |template_kwargs: Option<&serde_json::Map<String, Json>>, template| {
            let prompt = ChatPrompt {
                messages: &messages,
                tools: &[],
                add_generation_prompt: true,
                enable_thinking: true,
                template_kwargs,
            };
            prompt.render(template).unwrap()
        };
        let custom = "{{ greeting }} {{ messages | length }}";
        assert_eq!(render(Some(&kwargs), Some(custom)), "hey 3");
        let official = |kwargs: serde_json::Value| {
            let kwargs = serde_json::from_value(kwargs).unwrap();
            render(Some(&kwargs), None)
        };
        let kept = official(serde_json::json!({"clear_thinking": false}));
        assert!(
            kept.contains("<think>They greet me.</think>Hello!"),
            "{kept}"
        );
        let cleared = render(None, None);
        assert!(
            cleared.contains("</think>Hello!") && !cleared.contains("greet"),
            "{cleared}"
        );
        assert_eq!(
            official(serde_json::json!({"clear_thinking": true})),
            cleared
        );
    }

    #[test]
    fn chat_tojson_writes_python_json() {
        let out = render_template(
            "{{ v | tojson }}|{{ v | tojson(ensure_ascii=True) }}|{{ v | tojson(indent=2) }}",
            serde_json::json!({"v": {"b": [1, "é<>"], "a": {}}}),
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, \"é<>\"], \"a\": {}}|{\"b\": [1, \"\\u00e9<>\"], \"a\": {}}|\
             {\n  \"b\": [\n    1,\n    \"é<>\"\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn chat_raise_exception_is_an_error() {
        let err = render_template(
            "{{ raise_exception('no tools here') }}",
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no tools here"), "{err}");
    }
}
