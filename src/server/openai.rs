//! The OpenAI protocol: requests checked field by field (an error names the field),
//! rendered and queued, and the engine's output shaped as OpenAI replies, whole or as
//! server-sent events. Where OpenAI is silent, llama-server's conventions (`top_k`,
//! `min_p`, `chat_template_kwargs`, `reasoning_content`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc as tokio_mpsc;

use super::logprobs::{self, LogprobsWriter};
use super::worker::{Event, Job, Summary};
use super::{body_bytes, App};
use crate::chat::{ChatMessage, ChatPrompt, ReplyEvent, ReplyParser, ToolCall};
use crate::generate::{AnswerRules, GenerateOptions, StopReason};
use crate::json_output::JsonValue;
use crate::sampler::{SamplerOptions, TokenLogprob};
use crate::session::RenderedPrompt;
use crate::tokenizer::Tokenizer;

/// Most stop strings a request may give.
const MAX_STOP_STRINGS: usize = 16;
/// Most choices (`n`) a request may ask for: each is generated in turn.
const MAX_CHOICES: usize = 16;

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The request field the error is about.
    pub(super) param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 about one field; the message starts with the field's name.
    pub fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let param = param.into();
        ApiError {
            message: format!("{param}: {message}"),
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, "")
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message).with_code("invalid_api_key")
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let code = self.code.unwrap_or(match self.status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            s if s.is_server_error() => "internal_error",
            _ => "invalid_request",
        });
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

// ---------------------------------------------------------------------------------------
// Requests

/// The fields of both endpoints; each handler checks that the ones it needs are there and
/// the other endpoint's are not. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Deserialize)]
struct RequestBody {
    messages: Option<Vec<InMessage>>,
    prompt: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    /// llama-server's way to turn thinking off: `{"enable_thinking": false}`.
    chat_template_kwargs: Option<Map<String, Value>>,
    enable_thinking: Option<bool>,
    /// The GLM API's way: `{"type": "disabled"}`.
    thinking: Option<Value>,
    n: Option<i64>,
    /// Chat: true or false; completions: how many alternatives per token.
    logprobs: Option<Value>,
    /// Chat: how many alternatives per token.
    top_logprobs: Option<Value>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    /// llama-server's repeat penalty (1 = off) and its window (-1: the whole context).
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    response_format: Option<Value>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<i64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Option<Value>,
    reasoning_content: Option<String>,
    tool_calls: Option<Vec<InToolCall>>,
}

#[derive(Deserialize)]
struct InToolCall {
    function: InFunction,
}

#[derive(Deserialize)]
struct InFunction {
    name: String,
    /// A JSON object, or a string holding one (as OpenAI sends it).
    arguments: Option<Value>,
}

/// Parses a request body; an error says where the JSON breaks or which field is wrong.
fn parse_body(bytes: &[u8]) -> ApiResult<RequestBody> {
    use serde_json::error::Category;
    let malformed = |e: serde_json::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))
            .with_code("invalid_json")
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(malformed)?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body: RequestBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data if path != "." => ApiError::invalid(path, inner),
            Category::Data => ApiError::new(StatusCode::BAD_REQUEST, inner.to_string()),
            _ => malformed(inner),
        }
    })?;
    de.end().map_err(malformed)?;
    Ok(body)
}

/// The messages as the chat template sees them.
fn chat_messages(messages: Vec<InMessage>) -> ApiResult<Vec<ChatMessage>> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "must hold at least one message",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |field: &str| format!("messages[{i}].{field}");
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                r @ ("user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        at("role"),
                        format!("unknown role {other:?}; expected system, user, assistant or tool"),
                    ))
                }
            };
            let content = content_text(m.content, &at("content"))?;
            let calls = m.tool_calls.unwrap_or_default();
            if !calls.is_empty() && role != "assistant" {
                return Err(ApiError::invalid(
                    at("tool_calls"),
                    "only assistant messages make tool calls",
                ));
            }
            let tool_calls = calls
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let field = at(&format!("tool_calls[{j}].function.arguments"));
                    Ok(ToolCall {
                        name: c.function.name,
                        arguments: arguments(c.function.arguments, &field)?,
                    })
                })
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(ChatMessage {
                role: role.into(),
                content,
                reasoning_content: m.reasoning_content.filter(|_| role == "assistant"),
                tool_calls,
            })
        })
        .collect()
}

/// A message's text: a string, null, or an array of `{"type": "text", "text": ...}` parts.
fn content_text(content: Option<Value>, field: &str) -> ApiResult<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(
                |(k, part)| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                    (Some("text"), _) => Err(ApiError::invalid(
                        format!("{field}[{k}].text"),
                        "expected a string",
                    )),
                    (Some(other), _) => Err(ApiError::invalid(
                        format!("{field}[{k}].type"),
                        format!("{other:?} parts are not supported; only text"),
                    )),
                    (None, _) => Err(ApiError::invalid(
                        format!("{field}[{k}]"),
                        "expected {\"type\": \"text\", \"text\": ...}",
                    )),
                },
            )
            .collect(),
        Some(_) => Err(ApiError::invalid(
            field,
            "expected a string or an array of text parts",
        )),
    }
}

/// A tool call's arguments as a mapping (the template iterates over them).
fn arguments(value: Option<Value>, field: &str) -> ApiResult<Map<String, Value>> {
    let value = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(&s)
            .map_err(|e| ApiError::invalid(field, format!("not JSON: {e}")))?,
        Some(v) => v,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid(field, "expected a JSON object")),
    }
}

/// What `tool_choice` asks of the reply.
#[derive(Debug, PartialEq)]
enum ToolChoice {
    /// The model decides ("auto", the default).
    Auto,
    /// "none": the template gets no tools.
    None,
    /// "required": at least one call, to any tool.
    Required,
    /// `{"type": "function", "function": {"name": ...}}`: a call to that tool.
    Named(String),
}

/// The tools the template gets (none when `tool_choice` is "none"), and the choice.
fn tools(body: &RequestBody) -> ApiResult<(Vec<Value>, ToolChoice)> {
    let tools = body.tools.clone().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        let name = t.pointer("/function/name").and_then(Value::as_str);
        if t.get("type").and_then(Value::as_str) != Some("function") || name.is_none() {
            return Err(ApiError::invalid(
                format!("tools[{i}]"),
                "expected {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}",
            ));
        }
    }
    let choice = match &body.tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => return Ok((Vec::new(), ToolChoice::None)),
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v.pointer("/function/name").and_then(Value::as_str);
            let name = name.ok_or_else(|| ApiError::invalid("tool_choice.function.name", "missing"))?;
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ))
        }
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(ApiError::invalid(
            "tool_choice",
            "\"required\" needs tools to call",
        )),
        ToolChoice::Named(name)
            if !tools
                .iter()
                .any(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name)) =>
        {
            Err(ApiError::invalid(
                "tool_choice.function.name",
                format!("no tool is named {name:?}"),
            ))
        }
        _ => Ok((tools, choice)),
    }
}

/// How many choices the request asks for (`n`, 1 by default).
fn choices(body: &RequestBody) -> ApiResult<usize> {
    match body.n {
        None => Ok(1),
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(
            "n",
            format!("{n}: expected 1 to {MAX_CHOICES} choices"),
        )),
    }
}

/// `response_format`: `{"type": "text"}` (the default) or `{"type": "json_object"}`, an
/// answer held to one JSON object.
fn json_answer(format: Option<&Value>) -> ApiResult<Option<JsonValue>> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonValue::Object)),
        Some("json_schema") => Err(ApiError::invalid(
            "response_format",
            "json_schema is not supported yet ({\"type\": \"json_object\"} holds the answer to a JSON object, without a schema)",
        )),
        _ => Err(ApiError::invalid(
            "response_format",
            "expected {\"type\": \"text\"} or {\"type\": \"json_object\"}",
        )),
    }
}

/// The rules of a chat reply's answer ([`RenderedPrompt::answer_rules`]): a JSON answer
/// (`response_format`) or one that is a tool call (`tool_choice` "required" or a named
/// function), not both.
fn chat_answer(
    tokenizer: &Tokenizer,
    prompt: &RenderedPrompt,
    choice: &ToolChoice,
    json: Option<JsonValue>,
) -> ApiResult<AnswerRules> {
    let call = match choice {
        ToolChoice::Required => Some(""),
        ToolChoice::Named(name) => Some(name.as_str()),
        ToolChoice::Auto | ToolChoice::None => None,
    };
    let field = match (call, json) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "response_format",
                "a JSON answer and a required tool call exclude each other",
            ))
        }
        (Some(_), None) => "tool_choice",
        _ => "response_format",
    };
    prompt
        .answer_rules(tokenizer, call, json)
        .map_err(|e| ApiError::invalid(field, e))
}

/// Whether the reply starts with thinking: `chat_template_kwargs.enable_thinking`, else
/// `enable_thinking`, else `thinking.type`, else the server's default.
fn thinking(body: &RequestBody, default: bool) -> ApiResult<bool> {
    if let Some(v) = body
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
    {
        return v.as_bool().ok_or_else(|| {
            ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "expected true or false",
            )
        });
    }
    if let Some(on) = body.enable_thinking {
        return Ok(on);
    }
    match &body.thinking {
        None | Some(Value::Null) => Ok(default),
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => Ok(true),
            Some("disabled") => Ok(false),
            _ => Err(ApiError::invalid(
                "thinking",
                "expected {\"type\": \"enabled\"} or {\"type\": \"disabled\"}",
            )),
        },
    }
}

/// Sampling, limits, stop strings and log-probabilities, from the request (to the endpoint
/// of `kind`) and the server's defaults.
fn generate_options(body: &RequestBody, app: &App, kind: Kind) -> ApiResult<GenerateOptions> {
    let defaults = &app.defaults;
    let (field, max) = match (body.max_completion_tokens, body.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_new_tokens = match max {
        None => defaults.max_tokens,
        Some(-1) => usize::MAX,
        Some(m) if m >= 0 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                field,
                format!("{m}: expected -1 (no limit) or more"),
            ))
        }
    };
    let d = &defaults.sampler;
    let temperature = body.temperature.unwrap_or(d.temperature);
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(ApiError::invalid(
            "temperature",
            format!("{temperature}: expected 0 (greedy) or more"),
        ));
    }
    let top_p = body.top_p.unwrap_or(d.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("{top_p}: expected a value in (0, 1]"),
        ));
    }
    let min_p = body.min_p.unwrap_or(d.min_p);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(
            "min_p",
            format!("{min_p}: expected a value in [0, 1]"),
        ));
    }
    let top_k = match body.top_k {
        None => d.top_k,
        Some(k) if k >= 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("{k}: expected 0 (off) or more"),
            ))
        }
    };
    let seed = match body.seed {
        Some(s) => s as u64,
        None if defaults.fixed_seed => d.seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64),
    };
    for (field, value) in [
        ("frequency_penalty", body.frequency_penalty),
        ("presence_penalty", body.presence_penalty),
    ] {
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(ApiError::invalid(field, "expected a number"));
        }
    }
    let repeat_penalty = body.repeat_penalty.unwrap_or(d.repeat_penalty);
    if !(repeat_penalty.is_finite() && repeat_penalty > 0.0) {
        return Err(ApiError::invalid(
            "repeat_penalty",
            format!("{repeat_penalty}: expected a value above 0 (1 = off)"),
        ));
    }
    let penalty_last_n = match body.repeat_last_n {
        None => d.penalty_last_n,
        Some(-1) => usize::MAX,
        Some(n) if n >= 0 => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "repeat_last_n",
                format!("{n}: expected -1 (the whole context), 0 (off) or more"),
            ))
        }
    };
    Ok(GenerateOptions {
        max_new_tokens,
        sampler: SamplerOptions {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            repeat_penalty,
            presence_penalty: body.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: body.frequency_penalty.unwrap_or(d.frequency_penalty),
            penalty_last_n,
        },
        stop_tokens: app.engine.info().tokenizer.stop_tokens(),
        stop_strings: stop_strings(body.stop.as_ref())?,
        // A chat reply's parser reads the thinking and tool-call markup; a plain completion
        // is text, as `glm-flash run` prints it.
        special_text: kind == Kind::Chat,
        logprobs: logprobs::requested(kind, body.logprobs.as_ref(), body.top_logprobs.as_ref())?,
        // The chat endpoint adds where the answer starts and a required tool call.
        answer: AnswerRules {
            json: json_answer(body.response_format.as_ref())?,
            ..AnswerRules::default()
        },
    })
}

fn stop_strings(stop: Option<&Value>) -> ApiResult<Vec<String>> {
    let list = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid(format!("stop[{i}]"), "expected a string"))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "expected a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("{} stop strings; at most {MAX_STOP_STRINGS}", list.len()),
        ));
    }
    Ok(list)
}

/// The prompt must leave room in the context.
fn check_context(prompt_tokens: usize, context: usize, field: &str) -> ApiResult<()> {
    if prompt_tokens > context {
        return Err(ApiError::invalid(
            field,
            format!(
                "the prompt has {prompt_tokens} tokens but the context holds {context} \
                 (start the server with a larger --ctx)"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// A field that belongs to the other endpoint.
fn reject_other(present: bool, field: &str, why: &str) -> ApiResult<()> {
    if present {
        return Err(ApiError::invalid(field, why));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Handlers

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    chat(&app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(
    app: &Arc<App>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let mut body = parse_body(&body_bytes(body)?)?;
    reject_other(
        body.prompt.is_some(),
        "prompt",
        "raw prompts go to /v1/completions; chat takes messages",
    )?;
    let messages = body
        .messages
        .take()
        .ok_or_else(|| ApiError::invalid("messages", "missing"))?;
    let messages = chat_messages(messages)?;
    let (tools, tool_choice) = tools(&body)?;
    let thinking = thinking(&body, app.defaults.thinking)?;
    let mut opts = generate_options(&body, app, Kind::Chat)?;
    let info = app.engine.info();
    let prompt = RenderedPrompt::chat(
        &info.tokenizer,
        &ChatPrompt {
            messages: &messages,
            tools: &tools,
            add_generation_prompt: true,
            enable_thinking: thinking,
            template_kwargs: body.chat_template_kwargs.as_ref(),
        },
    )
    .map_err(|e| ApiError::invalid("messages", e))?;
    check_context(prompt.ids.len(), info.context, "messages")?;
    opts.answer = chat_answer(&info.tokenizer, &prompt, &tool_choice, opts.answer.json)?;
    let shape = Shape::new(app, Kind::Chat, &opts);
    let n = choices(&body)?;
    let reply = queue(app, &prompt.ids, || prompt.parser(&tools), &opts, n)?;
    Ok(match body.stream.unwrap_or(false) {
        true => stream(reply, shape, include_usage(&body)),
        false => whole(reply, shape).await?,
    })
}

pub async fn completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    complete(&app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn complete(
    app: &Arc<App>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = parse_body(&body_bytes(body)?)?;
    let chat_only = "belongs to /v1/chat/completions";
    reject_other(body.messages.is_some(), "messages", chat_only)?;
    reject_other(body.tools.is_some(), "tools", chat_only)?;
    reject_other(body.echo == Some(true), "echo", "not supported yet")?;
    reject_other(body.suffix.is_some(), "suffix", "not supported yet")?;
    reject_other(
        body.best_of.is_some_and(|b| b != 1),
        "best_of",
        "only 1 is supported",
    )?;
    let text = match &body.prompt {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default()
        }
        None => return Err(ApiError::invalid("prompt", "missing")),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "expected a string (or an array of one string)",
            ))
        }
    };
    let opts = generate_options(&body, app, Kind::Completion)?;
    let info = app.engine.info();
    let ids = info
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid("prompt", e))?;
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "empty"));
    }
    check_context(ids.len(), info.context, "prompt")?;
    let shape = Shape::new(app, Kind::Completion, &opts);
    let n = choices(&body)?;
    let reply = queue(app, &ids, ReplyParser::plain, &opts, n)?;
    Ok(match body.stream.unwrap_or(false) {
        true => stream(reply, shape, include_usage(&body)),
        false => whole(reply, shape).await?,
    })
}

fn include_usage(body: &RequestBody) -> bool {
    body.stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// The engine's output as replies

/// A queued request: the engine's events, and the flag that stops its generation when
/// this is dropped (the reply was sent, or the client went away).
struct Pending {
    events: tokio_mpsc::UnboundedReceiver<Event>,
    _cancel: CancelOnDrop,
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Queues the `n` choices of a request, one job each: the engine generates them in turn,
/// each after the first continuing the prompt already in the slot's cache. Choice i samples
/// with the request's seed plus i, so choices differ unless they are greedy.
fn queue(
    app: &App,
    prompt: &[u32],
    parser: impl Fn() -> ReplyParser,
    opts: &GenerateOptions,
    n: usize,
) -> ApiResult<VecDeque<Pending>> {
    (0..n)
        .map(|i| {
            let (events, rx) = tokio_mpsc::unbounded_channel();
            let cancel = Arc::new(AtomicBool::new(false));
            let mut opts = opts.clone();
            opts.sampler.seed = opts.sampler.seed.wrapping_add(i as u64);
            let job = Job {
                prompt: prompt.to_vec(),
                parser: parser(),
                opts,
                cancel: cancel.clone(),
                events,
            };
            if !app.engine.submit(job) {
                return Err(engine_gone());
            }
            Ok(Pending {
                events: rx,
                _cancel: CancelOnDrop(cancel),
            })
        })
        .collect()
}

fn engine_gone() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped")
        .with_code("unavailable")
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

/// What every reply object of one request carries, and which choice is being written.
struct Shape {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// The index of the choice being written.
    choice: usize,
    /// When the request asked for log-probabilities.
    logprobs: Option<LogprobsWriter>,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shape {
    fn new(app: &App, kind: Kind, opts: &GenerateOptions) -> Shape {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Shape {
            kind,
            id: format!("{prefix}-{:x}{n:06x}", app.created),
            created: unix_time(),
            model: app.engine.info().model_name.clone(),
            choice: 0,
            logprobs: opts
                .logprobs
                .map(|_| LogprobsWriter::new(app.engine.info().tokenizer.clone(), kind)),
        }
    }

    /// Moves on to the next choice (its text offsets count from 0 again).
    fn next_choice(&mut self) {
        self.choice += 1;
        if let Some(w) = &mut self.logprobs {
            *w = w.fresh();
        }
    }

    /// A chat chunk's choice: a delta, with the log-probabilities of its tokens.
    fn delta(&self, delta: Value, logprobs: Value) -> Value {
        json!({"index": self.choice, "delta": delta, "logprobs": logprobs, "finish_reason": null})
    }

    /// The chunk that opens a chat choice in a stream: the role.
    fn role_piece(&self) -> Value {
        let first = self.delta(json!({"role": "assistant", "content": ""}), Value::Null);
        self.wrap(true, json!([first]), None)
    }

    /// A choice's `logprobs` for `tokens`: null when none were asked for, or when a chunk
    /// of a stream carries none.
    fn logprobs(&mut self, tokens: &[TokenLogprob], chunk: bool) -> Value {
        match &mut self.logprobs {
            Some(w) if !(chunk && tokens.is_empty()) => w.write(tokens),
            _ => Value::Null,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    fn tool_call(&self, index: usize, call: &ToolCall) -> Value {
        json!({
            "index": index,
            "id": format!("call_{}_{index}", self.id),
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": Value::Object(call.arguments.clone()).to_string(),
            },
        })
    }

    /// A stream chunk with one piece of the reply (text or a tool call), and the
    /// log-probabilities of the tokens generated since the chunk before.
    fn piece(&mut self, event: &ReplyEvent, tool_index: usize, tokens: &[TokenLogprob]) -> Value {
        let logprobs = self.logprobs(tokens, true);
        let index = self.choice;
        let choice = match (self.kind, event) {
            (Kind::Completion, ReplyEvent::Answer(t) | ReplyEvent::Thinking(t)) => {
                json!({"index": index, "text": t, "logprobs": logprobs, "finish_reason": null})
            }
            (Kind::Chat, ReplyEvent::Thinking(t)) => {
                self.delta(json!({"reasoning_content": t}), logprobs)
            }
            (Kind::Chat, ReplyEvent::Answer(t)) => self.delta(json!({"content": t}), logprobs),
            (_, ReplyEvent::ToolCall(c)) => self.delta(
                json!({"tool_calls": [self.tool_call(tool_index, c)]}),
                logprobs,
            ),
            // The stream sends a token's log-probability with the next piece instead.
            (Kind::Completion, ReplyEvent::Logprob(_)) => {
                json!({"index": index, "text": "", "logprobs": logprobs, "finish_reason": null})
            }
            (Kind::Chat, ReplyEvent::Logprob(_)) => self.delta(json!({}), logprobs),
        };
        self.wrap(true, json!([choice]), None)
    }

    /// The chunk that ends the stream's choice, with the log-probabilities not sent yet.
    fn last_piece(&mut self, finish: &str, tokens: &[TokenLogprob]) -> Value {
        let logprobs = self.logprobs(tokens, true);
        let index = self.choice;
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": index, "delta": {}, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": index, "text": "", "logprobs": logprobs, "finish_reason": finish})
            }
        };
        self.wrap(true, json!([choice]), None)
    }

    /// The current choice of a whole reply.
    fn whole_choice(
        &mut self,
        reasoning: &str,
        content: &str,
        calls: &[ToolCall],
        tokens: &[TokenLogprob],
        stop: StopReason,
    ) -> Value {
        let finish = finish_reason(stop, !calls.is_empty());
        let logprobs = self.logprobs(tokens, false);
        let index = self.choice;
        match self.kind {
            Kind::Completion => {
                json!({"index": index, "text": content, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Chat => {
                // OpenAI's content is null when the reply is only tool calls.
                let content = match calls.is_empty() || !content.is_empty() {
                    true => json!(content),
                    false => Value::Null,
                };
                let mut message = json!({"role": "assistant", "content": content});
                if !reasoning.is_empty() {
                    message["reasoning_content"] = json!(reasoning);
                }
                if !calls.is_empty() {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| self.tool_call(i, c))
                        .collect();
                    message["tool_calls"] = json!(calls);
                }
                json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }
}

/// The token counts of a request's choices: the prompt (counted once, its cached part as
/// the first choice found it) and every choice's completion.
#[derive(Default)]
struct Usage {
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
}

impl Usage {
    fn add(&mut self, s: &Summary, first: bool) {
        if first {
            self.prompt_tokens = s.prompt_tokens;
            self.cached_tokens = s.cached_tokens;
        }
        self.completion_tokens += s.completion_tokens;
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

fn finish_reason(stop: StopReason, tool_calls: bool) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// Waits for every choice of the reply and sends them as one JSON object.
async fn whole(pendings: VecDeque<Pending>, mut shape: Shape) -> ApiResult<Response> {
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for mut pending in pendings {
        let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
        let mut tokens = Vec::new();
        let summary = loop {
            match pending.events.recv().await {
                Some(Event::Piece(ReplyEvent::Thinking(t))) => reasoning.push_str(&t),
                Some(Event::Piece(ReplyEvent::Answer(t))) => content.push_str(&t),
                Some(Event::Piece(ReplyEvent::ToolCall(c))) => calls.push(c),
                Some(Event::Piece(ReplyEvent::Logprob(l))) => tokens.push(l),
                Some(Event::Done(s)) => break s,
                Some(Event::Failed(msg)) => {
                    return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg))
                }
                None => return Err(engine_gone()),
            }
        };
        usage.add(&summary, choices.is_empty());
        choices.push(shape.whole_choice(&reasoning, &content, &calls, &tokens, summary.stop));
        shape.next_choice();
    }
    let reply = shape.wrap(false, json!(choices), Some(usage.json()));
    Ok(axum::Json(reply).into_response())
}

/// Streams the reply as server-sent events, choice after choice: a first chunk with the
/// role (chat), one chunk per piece, a last chunk with the finish reason; then the usage if
/// asked, and `[DONE]`. Each chunk carries the log-probabilities (if asked) of the tokens
/// generated since the one before.
fn stream(mut pendings: VecDeque<Pending>, shape: Shape, include_usage: bool) -> Response {
    struct State {
        pending: Pending,
        /// The choices after this one.
        pendings: VecDeque<Pending>,
        shape: Shape,
        include_usage: bool,
        usage: Usage,
        out: VecDeque<SseEvent>,
        tool_calls: usize,
        /// Log-probabilities not yet sent.
        tokens: Vec<TokenLogprob>,
        over: bool,
    }
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let mut out = VecDeque::new();
    if shape.kind == Kind::Chat {
        out.push_back(data(shape.role_piece()));
    }
    let state = State {
        pending: pendings.pop_front().expect("at least one choice"),
        pendings,
        shape,
        include_usage,
        usage: Usage::default(),
        out,
        tool_calls: 0,
        tokens: Vec::new(),
        over: false,
    };
    let events = futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.over {
                return None;
            }
            match st.pending.events.recv().await {
                Some(Event::Piece(ReplyEvent::Logprob(l))) => st.tokens.push(l),
                Some(Event::Piece(p)) => {
                    let tokens = std::mem::take(&mut st.tokens);
                    st.out
                        .push_back(data(st.shape.piece(&p, st.tool_calls, &tokens)));
                    st.tool_calls += matches!(p, ReplyEvent::ToolCall(_)) as usize;
                }
                Some(Event::Done(s)) => {
                    let finish = finish_reason(s.stop, st.tool_calls > 0);
                    let tokens = std::mem::take(&mut st.tokens);
                    st.out.push_back(data(st.shape.last_piece(finish, &tokens)));
                    st.usage.add(&s, st.shape.choice == 0);
                    if let Some(next) = st.pendings.pop_front() {
                        st.pending = next;
                        st.shape.next_choice();
                        st.tool_calls = 0;
                        if st.shape.kind == Kind::Chat {
                            st.out.push_back(data(st.shape.role_piece()));
                        }
                        continue;
                    }
                    if st.include_usage {
                        let u = st.shape.wrap(true, json!([]), Some(st.usage.json()));
                        st.out.push_back(data(u));
                    }
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.over = true;
                }
                Some(Event::Failed(msg)) => {
                    let e = json!({"error": {"message": msg, "type": "server_error", "param": null, "code": "internal_error"}});
                    st.out.push_back(data(e));
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.over = true;
                }
                None => {
                    let e = json!({"error": {"message": "the engine has stopped", "type": "server_error", "param": null, "code": "unavailable"}});
                    st.out.push_back(data(e));
                    st.over = true;
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kind: Kind) -> Shape {
        Shape {
            kind,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m.gguf".into(),
            choice: 0,
            logprobs: None,
        }
    }

    fn summary(stop: StopReason) -> Summary {
        Summary {
            prompt_tokens: 5,
            completion_tokens: 3,
            cached_tokens: 2,
            stop,
        }
    }

    fn weather() -> ToolCall {
        ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "Paris", "days": 2})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn openai_reply_with_only_tool_calls() {
        let s = summary(StopReason::StopToken(9));
        let mut usage = Usage::default();
        usage.add(&s, true);
        let mut reply_shape = shape(Kind::Chat);
        let choice = reply_shape.whole_choice("plan", "", &[weather()], &[], s.stop);
        let r = reply_shape.wrap(false, json!([choice]), Some(usage.json()));
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        let m = &choice["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["reasoning_content"], "plan");
        let call = &m["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["id"], "call_chatcmpl-1_0");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris", "days": 2}));
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                                      "prompt_tokens_details": {"cached_tokens": 2}})
        );
        // The same call streamed: one delta with the whole call, at its index.
        let chunk = shape(Kind::Chat).piece(&ReplyEvent::ToolCall(weather()), 1, &[]);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let delta = &chunk["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(delta["index"], 1);
        assert_eq!(
            delta["function"]["arguments"],
            call["function"]["arguments"]
        );
        // A length cut wins over the calls made before it.
        assert_eq!(finish_reason(StopReason::MaxTokens, true), "length");
        assert_eq!(finish_reason(StopReason::StopString(0), false), "stop");
    }

    #[test]
    fn openai_request_errors_name_the_field() {
        let err = |body: &str| match parse_body(body.as_bytes()) {
            Ok(_) => panic!("{body} parsed"),
            Err(e) => (e.param, e.message),
        };
        let (param, message) =
            err(r#"{"messages": [{"role": "user", "content": "x"}, {"role": 3}]}"#);
        assert_eq!(param.as_deref(), Some("messages[1].role"));
        assert!(
            message.starts_with("messages[1].role: invalid type: integer"),
            "{message}"
        );
        let (param, message) = err(r#"{"max_tokens": 1.5}"#);
        assert_eq!(param.as_deref(), Some("max_tokens"), "{message}");
        assert_eq!(
            err("[1, 2]"),
            (None, "the request body must be a JSON object".into())
        );
        let (param, message) = err("[1, 2");
        assert_eq!(param, None);
        assert!(message.starts_with("malformed JSON"), "{message}");
    }
}
