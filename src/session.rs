//! Talking to a model, for the command line and the server alike.
//!
//! A [`Session`] owns a backend and remembers which tokens its cache holds, so a prompt that
//! extends the previous one (the next turn of a chat) only feeds what is new. [`Chat`] keeps
//! a conversation's history and renders it through the file's chat template, tools
//! included. A reply streams out split into thinking, answer and tool calls
//! ([`ReplyParser`]), and ends at a stop token, a stop string, the token limit, the end of
//! the context or an interrupt.

use std::sync::atomic::AtomicBool;

use serde_json::Value as Json;

use crate::backend::Backend;
use crate::chat::{ends_in_thinking, ChatMessage, ChatPrompt, ReplyEvent, ReplyParser, ToolCall};
use crate::error::{Error, Result};
use crate::generate::{generate, AnswerRules, GenerateOptions, Generated, Generation};
use crate::json_output::JsonValue;
use crate::tokenizer::Tokenizer;

/// A backend and what its cache holds.
pub struct Session<'a> {
    backend: Box<dyn Backend + 'a>,
    tokenizer: &'a Tokenizer,
    /// The tokens in the backend's cache, position by position.
    cached: Vec<u32>,
}

/// One generation and what it fed.
#[derive(Clone, Debug)]
pub struct Completion {
    pub generation: Generation,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Leading prompt tokens that were already in the cache.
    pub reused: usize,
}

/// A reply, whole.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Everything generated up to a stop string, thinking tags included.
    pub text: String,
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub completion: Completion,
}

impl Reply {
    /// The reply as the assistant's turn in a history (thinking and answer trimmed).
    pub fn message(&self) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: self.content.trim().to_string(),
            reasoning_content: Some(self.reasoning.trim().to_string()).filter(|r| !r.is_empty()),
            tool_calls: self.tool_calls.clone(),
        }
    }
}

impl<'a> Session<'a> {
    pub fn new(backend: Box<dyn Backend + 'a>, tokenizer: &'a Tokenizer) -> Self {
        Session {
            backend,
            tokenizer,
            cached: Vec::new(),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    pub fn tokenizer(&self) -> &'a Tokenizer {
        self.tokenizer
    }

    /// Positions the cache can hold.
    pub fn max_context(&self) -> usize {
        self.backend.max_context()
    }

    /// The tokens the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets what the cache holds: the next prompt is fed whole.
    pub fn forget(&mut self) {
        self.cached.clear();
    }

    /// How many leading tokens of `prompt` the cache already holds.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        self.cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Generates a continuation of `prompt`, feeding only what the cache does not hold yet.
    /// `on_generated` receives the text as it is produced (see [`generate`]); `interrupt`
    /// stops at the next token. This is the one place that feeds the backend.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        on_generated: &mut dyn FnMut(Generated),
    ) -> Result<Completion> {
        let reused = self.reusable_prefix(prompt);
        let result = generate(
            self.backend.as_mut(),
            self.tokenizer,
            prompt,
            reused,
            opts,
            interrupt,
            on_generated,
        );
        match result {
            Ok(generation) => {
                self.cached = prompt
                    .iter()
                    .chain(&generation.ids)
                    .copied()
                    .take(generation.cache_len)
                    .collect();
                Ok(Completion {
                    generation,
                    prompt_tokens: prompt.len(),
                    reused,
                })
            }
            Err(e) => {
                // The cache may hold part of what was fed: trust none of it.
                self.forget();
                Err(e)
            }
        }
    }

    /// As [`Session::generate`], with the text split by `parser` into thinking, answer and
    /// tool calls, streamed to `on_event` and collected in the [`Reply`].
    pub fn reply(
        &mut self,
        prompt: &[u32],
        mut parser: ReplyParser,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        on_event: &mut dyn FnMut(&ReplyEvent),
    ) -> Result<Reply> {
        let mut reply = (String::new(), String::new(), String::new(), Vec::new());
        let mut take = |events: Vec<ReplyEvent>| {
            for e in events {
                match &e {
                    ReplyEvent::Thinking(t) => reply.1.push_str(t),
                    ReplyEvent::Answer(t) => reply.2.push_str(t),
                    ReplyEvent::ToolCall(c) => reply.3.push(c.clone()),
                    ReplyEvent::Logprob(_) => {}
                }
                on_event(&e);
            }
        };
        let mut text = String::new();
        let completion = self.generate(prompt, opts, interrupt, &mut |g| match g {
            Generated::Text(piece) => {
                text.push_str(piece);
                take(parser.push(piece));
            }
            Generated::Logprob(l) => take(vec![ReplyEvent::Logprob(l.clone())]),
        })?;
        take(parser.finish());
        reply.0 = text;
        let (text, reasoning, content, tool_calls) = reply;
        Ok(Reply {
            text,
            reasoning,
            content,
            tool_calls,
            completion,
        })
    }
}

/// A chat prompt rendered and encoded, ready to generate from.
#[derive(Clone, Debug)]
pub struct RenderedPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// The prompt leaves a thinking block open: the reply starts with thinking.
    pub thinking_open: bool,
}

impl RenderedPrompt {
    /// Renders `prompt` with the tokenizer's chat template and encodes it.
    pub fn chat(tokenizer: &Tokenizer, prompt: &ChatPrompt) -> Result<RenderedPrompt> {
        let text = prompt.render(tokenizer.chat_template())?;
        Ok(RenderedPrompt {
            ids: tokenizer.encode(&text)?,
            thinking_open: ends_in_thinking(&text),
            text,
        })
    }

    /// The parser for the reply to this prompt.
    pub fn parser(&self, tools: &[Json]) -> ReplyParser {
        ReplyParser::chat(self.thinking_open, tools)
    }

    /// The rules of the reply's answer: it starts once the thinking is over (at once when
    /// the prompt opens none); it is held to `json` when given; and when `call` is given
    /// (`Some("")` a call to any tool, `Some(name)` to that one) it starts with the call's
    /// opening as the template writes one, `\n<tool_call>` and the name, the model writing
    /// the arguments.
    pub fn answer_rules(
        &self,
        tokenizer: &Tokenizer,
        call: Option<&str>,
        json: Option<JsonValue>,
    ) -> Result<AnswerRules> {
        if call.is_none() && json.is_none() {
            return Ok(AnswerRules::default());
        }
        let token = |text: &str| {
            tokenizer.id_of(text).ok_or_else(|| {
                Error::Input(format!(
                    "the model's vocabulary has no {text} token to find the answer by"
                ))
            })
        };
        let mut starts_with = Vec::new();
        if let Some(name) = call {
            token("<tool_call>")?;
            starts_with = tokenizer.encode(&format!("\n<tool_call>{name}"))?;
        }
        let after = match self.thinking_open {
            true => Some(token("</think>")?),
            false => None,
        };
        Ok(AnswerRules {
            after,
            starts_with,
            json,
        })
    }
}

/// A chat reply, and how many of the oldest exchanges the history dropped to make room.
#[derive(Clone, Debug)]
pub struct Turn {
    pub reply: Reply,
    /// Oldest exchanges (a user message and what answered it) dropped before this turn.
    pub dropped: usize,
}

/// A conversation: an optional system message, the turns so far, the tools the model may
/// call and whether it thinks before answering. When the history outgrows the context, the
/// oldest exchanges are dropped (the system message stays).
#[derive(Clone, Debug, Default)]
pub struct Chat {
    system: Option<String>,
    pub thinking: bool,
    /// OpenAI-style tool specifications, passed to the template.
    pub tools: Vec<Json>,
    history: Vec<ChatMessage>,
}

impl Chat {
    pub fn new(system: Option<String>, thinking: bool) -> Chat {
        Chat {
            system,
            thinking,
            ..Default::default()
        }
    }

    /// The system message (if any) and the turns so far.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let system = self.system.iter().map(|s| ChatMessage::new("system", s));
        system.chain(self.history.iter().cloned()).collect()
    }

    /// The turns so far, without the system message.
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// Adds a message without generating (a tool's result, an earlier turn).
    pub fn push(&mut self, message: ChatMessage) {
        self.history.push(message);
    }

    /// Forgets every turn; the system message stays.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Sends the user's message and generates the reply, which joins the history. First
    /// the oldest exchanges are dropped while the prompt leaves less room than
    /// [`Chat::reply_room`]. On an error the history stays as it was.
    pub fn send(
        &mut self,
        session: &mut Session,
        user: &str,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        on_event: &mut dyn FnMut(&ReplyEvent),
    ) -> Result<Turn> {
        self.history.push(ChatMessage::new("user", user));
        let result = self.respond(session, opts, interrupt, on_event);
        if result.is_err() {
            self.history.pop();
        }
        result
    }

    /// Generates the assistant's turn for the history as it stands (after [`Chat::push`]ing
    /// tool results, say); the reply joins the history. First the oldest exchanges are
    /// dropped while the prompt leaves less room than [`Chat::reply_room`]; on an error the
    /// history stays as it was.
    pub fn respond(
        &mut self,
        session: &mut Session,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        on_event: &mut dyn FnMut(&ReplyEvent),
    ) -> Result<Turn> {
        let before = self.history.clone();
        let result = self.fit(session, opts).and_then(|(prompt, dropped)| {
            let parser = prompt.parser(&self.tools);
            let reply = session.reply(&prompt.ids, parser, opts, interrupt, on_event)?;
            Ok(Turn { reply, dropped })
        });
        match &result {
            Ok(turn) => self.history.push(turn.reply.message()),
            Err(_) => self.history = before,
        }
        result
    }

    /// Positions kept free for the reply when the history is trimmed: `-n` tokens, at most
    /// half the context.
    pub fn reply_room(opts: &GenerateOptions, max_context: usize) -> usize {
        opts.max_new_tokens.min(max_context / 2)
    }

    /// Renders the history, dropping the oldest exchanges until the prompt leaves
    /// [`Chat::reply_room`] free or only the newest message is left. Returns the prompt
    /// and how many exchanges went.
    fn fit(
        &mut self,
        session: &Session,
        opts: &GenerateOptions,
    ) -> Result<(RenderedPrompt, usize)> {
        let ctx = session.max_context();
        let room = Self::reply_room(opts, ctx);
        let mut dropped = 0;
        loop {
            let prompt = self.render(session.tokenizer())?;
            // The next exchange starts at the second user message; without one, the newest
            // message is all there is (a prompt too long for the context is then an error).
            let next = self.history.iter().skip(1).position(|m| m.role == "user");
            match next {
                Some(i) if prompt.ids.len() + room > ctx => {
                    self.history.drain(..=i);
                    dropped += 1;
                }
                _ => return Ok((prompt, dropped)),
            }
        }
    }

    fn render(&self, tokenizer: &Tokenizer) -> Result<RenderedPrompt> {
        let messages = self.messages();
        RenderedPrompt::chat(
            tokenizer,
            &ChatPrompt {
                messages: &messages,
                tools: &self.tools,
                add_generation_prompt: true,
                enable_thinking: self.thinking,
                template_kwargs: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Output, Rows, Want};
    use crate::engine::{open_backend, BackendKind, BackendOptions, Model};
    use crate::sampler::SamplerOptions;

    fn greedy(n: usize, model: &Model) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: n,
            sampler: SamplerOptions::greedy(),
            stop_tokens: model.tokenizer.stop_tokens(),
            stop_strings: Vec::new(),
            special_text: true,
            logprobs: None,
            answer: Default::default(),
        }
    }

    fn cpu_opts() -> BackendOptions {
        BackendOptions {
            kind: BackendKind::Cpu,
            threads: 1,
            ctx: 256,
            ..Default::default()
        }
    }

    #[test]
    fn session_chat_reuses_the_cache_and_replies_as_a_fresh_session() {
        let model = Model::builtin();
        let weights = model.weights().unwrap();
        let opened = open_backend(&cpu_opts(), &model.config, &weights, 0, None).unwrap();
        assert_eq!(opened.kind, BackendKind::Cpu);
        let mut session = Session::new(opened.backend, &model.tokenizer);
        let opts = greedy(6, &model);
        let mut chat = Chat::new(Some("Be brief.".into()), true);
        let mut streamed = Vec::new();
        let first = chat
            .send(&mut session, "Hello there", &opts, None, &mut |e| {
                streamed.push(e.clone())
            })
            .unwrap()
            .reply;
        assert_eq!(first.completion.reused, 0);
        let thinking: String = streamed
            .iter()
            .filter_map(|e| match e {
                ReplyEvent::Thinking(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(thinking, first.reasoning);
        assert_eq!(chat.history().len(), 2);
        assert_eq!(chat.history()[1], first.message());

        let second = chat
            .send(&mut session, "And again", &opts, None, &mut |_| {})
            .unwrap()
            .reply;
        // The second prompt starts with the first one: its tokens come from the cache.
        assert!(second.completion.reused >= first.completion.prompt_tokens / 2);
        assert!(second.completion.prompt_tokens > first.completion.prompt_tokens);

        // A fresh session given the same history replies the same.
        let other = open_backend(&cpu_opts(), &model.config, &weights, 0, None).unwrap();
        let mut fresh = Session::new(other.backend, &model.tokenizer);
        let mut replay = Chat::new(Some("Be brief.".into()), true);
        replay.push(chat.history()[0].clone());
        replay.push(chat.history()[1].clone());
        let again = replay
            .send(&mut fresh, "And again", &opts, None, &mut |_| {})
            .unwrap()
            .reply;
        assert_eq!(again.completion.reused, 0);
        assert_eq!(
            again.completion.generation.ids,
            second.completion.generation.ids
        );
        assert_eq!(again.text, second.text);

        // A failed turn leaves the history as it was.
        let mut tiny = Session::new(
            open_backend(
                &BackendOptions {
                    ctx: 4,
                    ..cpu_opts()
                },
                &model.config,
                &weights,
                0,
                None,
            )
            .unwrap()
            .backend,
            &model.tokenizer,
        );
        let before = chat.history().len();
        let err = chat
            .send(
                &mut tiny,
                "This prompt is far too long",
                &opts,
                None,
                &mut |_| {},
            )
            .unwrap_err();
        assert!(err.to_string().contains("context"), "{err}");
        assert_eq!(chat.history().len(), before);
    }

    #[test]
    fn chat_drops_the_oldest_exchanges_when_the_context_fills() {
        let model = Model::builtin();
        let weights = model.weights().unwrap();
        let ctx = 96;
        let opened = open_backend(
            &BackendOptions { ctx, ..cpu_opts() },
            &model.config,
            &weights,
            0,
            None,
        )
        .unwrap();
        let mut session = Session::new(opened.backend, &model.tokenizer);
        // 8 new tokens at most: the prompt may fill the context up to 88 tokens.
        let opts = greedy(8, &model);
        assert_eq!(Chat::reply_room(&opts, ctx), 8);
        let mut chat = Chat::new(Some("Be brief.".into()), false);
        let mut dropped = 0;
        let mut turns = 0;
        for i in 0..12 {
            let turn = chat
                .send(
                    &mut session,
                    &format!("Message number {i}"),
                    &opts,
                    None,
                    &mut |_| {},
                )
                .unwrap();
            let prompt = turn.reply.completion.prompt_tokens;
            assert!(
                prompt + 8 <= ctx || chat.history().len() == 2,
                "turn {i}: {prompt} tokens"
            );
            dropped += turn.dropped;
            turns += 1;
            // The history holds the exchanges sent minus those dropped, newest last.
            assert_eq!(chat.history().len(), 2 * (turns - dropped), "turn {i}");
            assert_eq!(
                chat.history()[chat.history().len() - 2].content,
                format!("Message number {i}")
            );
        }
        assert!(dropped > 0, "12 exchanges fit in {ctx} tokens?");
        // What remains starts with a user message: whole exchanges went.
        assert_eq!(chat.history()[0].role, "user");
        // A message too long for the context alone fails and leaves the history alone.
        let before = chat.history().to_vec();
        let long = "word ".repeat(200);
        let err = chat
            .send(&mut session, &long, &opts, None, &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("context"), "{err}");
        assert_eq!(chat.history(), &before[..]);
    }

    /// A tool round trip: the assistant's call and the tool's result go into the history,
    /// the tools into the prompt, and the model answers the result.
    #[test]
    fn session_chat_with_tools_answers_a_tool_result() {
        let model = Model::builtin();
        let weights = model.weights().unwrap();
        let room = BackendOptions {
            ctx: 1024,
            ..cpu_opts()
        };
        let backend = open_backend(&room, &model.config, &weights, 0, None).unwrap();
        let mut session = Session::new(backend.backend, &model.tokenizer);
        let opts = greedy(3, &model);
        let mut plain = Chat::new(None, false);
        plain.push(ChatMessage::new("user", "Weather in Paris?"));
        let without_tools = plain
            .respond(&mut session, &opts, None, &mut |_| {})
            .unwrap()
            .reply;

        let mut chat = Chat::new(None, false);
        chat.tools = vec![serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}}}})];
        chat.push(ChatMessage::new("user", "Weather in Paris?"));
        let call = ToolCall {
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris"})
                .as_object()
                .unwrap()
                .clone(),
        };
        chat.push(ChatMessage {
            tool_calls: vec![call],
            ..ChatMessage::new("assistant", "")
        });
        chat.push(ChatMessage::new("tool", "{\"temp_c\": 21}"));
        let reply = chat
            .respond(&mut session, &opts, None, &mut |_| {})
            .unwrap()
            .reply;
        let messages = chat.messages();
        let text = ChatPrompt {
            messages: &messages[..3],
            tools: &chat.tools,
            add_generation_prompt: true,
            enable_thinking: false,
            template_kwargs: None,
        }
        .render(model.tokenizer.chat_template())
        .unwrap();
        assert!(
            text.contains("<tools>") && text.contains("\"name\": \"get_weather\""),
            "{text}"
        );
        assert!(text.contains("<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"), "{text}");
        assert!(text.ends_with("<|observation|><tool_response>{\"temp_c\": 21}</tool_response><|assistant|></think>"), "{text}");
        assert_eq!(
            reply.completion.prompt_tokens,
            model.tokenizer.encode(&text).unwrap().len()
        );
        assert!(reply.completion.prompt_tokens > without_tools.completion.prompt_tokens);
        assert_eq!(chat.history().len(), 4);
        assert_eq!(chat.history()[3].role, "assistant");
    }

    /// Plays a fixed reply: the logits after position p peak at `script[p - prompt_len]`.
    struct Scripted {
        script: Vec<u32>,
        prompt_len: usize,
        vocab: usize,
        cache_len: usize,
    }

    impl Backend for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }

        fn max_context(&self) -> usize {
            1 << 16
        }
        fn prompt_piece(&self) -> usize {
            256
        }

        fn cache_len(&self) -> usize {
            self.cache_len
        }

        fn cache_type(&self) -> crate::ops_common::CacheType {
            crate::ops_common::CacheType::F32
        }

        fn fill_cache_for_bench(&mut self, _block: &[f32], _positions: usize) -> Result<()> {
            unreachable!("the session never benchmarks")
        }

        fn truncate(&mut self, len: usize) -> Result<()> {
            crate::backend::check_truncate(len, self.cache_len)?;
            self.cache_len = len;
            Ok(())
        }

        fn feed(&mut self, tokens: &[u32], pos: usize, want: Want) -> Result<Output> {
            crate::backend::check_feed(tokens, pos, self.cache_len, 1 << 16, self.vocab)?;
            self.cache_len += tokens.len();
            let next = self.script[self.cache_len - self.prompt_len];
            Ok(match want {
                Want::Argmax => Output::Argmax(next),
                Want::Logits(Rows::Last) => {
                    let mut logits = vec![0.0; self.vocab];
                    logits[next as usize] = 1.0;
                    Output::Logits(logits)
                }
                other => unreachable!("the session never asks for {other:?}"),
            })
        }
    }

    /// The official template's own tool-call text, generated token by token through the
    /// GLM-4.7 tokenizer's special tokens, comes out as a tool call.
    #[test]
    fn session_reply_parses_the_templates_tool_call_text_token_by_token() {
        use crate::gguf::GgufFile;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/small2-q8_0.gguf"
        );
        let tokenizer = Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
        let call = ToolCall {
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris", "days": 2})
                .as_object()
                .unwrap()
                .clone(),
        };
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let turn = [
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage {
                tool_calls: vec![call.clone()],
                ..ChatMessage::new("assistant", "")
            },
        ];
        let render = |messages: &[ChatMessage], add_generation_prompt| {
            ChatPrompt {
                messages,
                tools: &tools,
                add_generation_prompt,
                enable_thinking: true,
                template_kwargs: None,
            }
            .render(tokenizer.chat_template())
            .unwrap()
        };
        let prompt = RenderedPrompt::chat(
            &tokenizer,
            &ChatPrompt {
                messages: &turn[..1],
                tools: &tools,
                add_generation_prompt: true,
                enable_thinking: true,
                template_kwargs: None,
            },
        )
        .unwrap();
        assert!(prompt.thinking_open);
        // What the template writes for the assistant's call, after its `<|assistant|>`.
        let written = render(&turn, false);
        let call_text = &written[written.rfind("<|assistant|>").unwrap() + "<|assistant|>".len()..];
        assert!(
            call_text.starts_with("</think><tool_call>get_weather<arg_key>"),
            "{call_text}"
        );
        let mut script = tokenizer
            .encode(&format!("Let me check.{call_text}"))
            .unwrap();
        assert!(
            script.contains(&tokenizer.id_of("<tool_call>").unwrap()),
            "a special token"
        );
        script.push(tokenizer.id_of("<|observation|>").unwrap());

        let backend = Scripted {
            script,
            prompt_len: prompt.ids.len(),
            vocab: tokenizer.vocab_size(),
            cache_len: 0,
        };
        let mut session = Session::new(Box::new(backend), &tokenizer);
        let opts = GenerateOptions {
            max_new_tokens: 100,
            sampler: SamplerOptions::greedy(),
            stop_tokens: tokenizer.stop_tokens(),
            stop_strings: Vec::new(),
            special_text: true,
            logprobs: None,
            answer: Default::default(),
        };
        let mut events = Vec::new();
        let reply = session
            .reply(&prompt.ids, prompt.parser(&tools), &opts, None, &mut |e| {
                events.push(e.clone())
            })
            .unwrap();
        assert_eq!(reply.reasoning, "Let me check.");
        assert_eq!(reply.content, "");
        assert_eq!(reply.tool_calls, std::slice::from_ref(&call));
        assert_eq!(events.last(), Some(&ReplyEvent::ToolCall(call)));
        let observation = tokenizer.id_of("<|observation|>").unwrap();
        assert_eq!(
            reply.completion.generation.stop,
            crate::generate::StopReason::StopToken(observation)
        );
    }
}
