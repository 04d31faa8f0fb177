//! `glm-flash serve` over real HTTP on localhost: servers started in-process on free ports
//! (CPU backend), talked to with a blocking HTTP client. Greedy answers are checked against
//! `glm-flash run --temp 0`, the prompt of a tool conversation against transformers'
//! rendering, and the server against bad requests, disconnecting clients and 16 clients at
//! once.
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::fixture;
use glm_flash::engine::{BackendKind, BackendOptions};
use glm_flash::sampler::SamplerOptions;
use glm_flash::server::{Defaults, ServeOptions, Server, MAX_BODY_BYTES};
use serde_json::{json, Value};

fn options(model: Option<PathBuf>) -> ServeOptions {
    ServeOptions {
        model,
        backend: BackendOptions {
            kind: BackendKind::Cpu,
            adapter: None,
            threads: 1,
            ctx: 512,
            ..Default::default()
        },
        host: "127.0.0.1".into(),
        port: 0,
        api_key: None,
        cors_origins: Vec::new(),
        parallel: 1,
        defaults: Defaults {
            max_tokens: 16,
            sampler: SamplerOptions::greedy(),
            fixed_seed: true,
            thinking: true,
        },
        show_progress: false,
    }
}

/// The built-in model, shared by the tests that do not count requests.
fn builtin() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(options(None)).unwrap())
}

/// The fixture whose tokenizer has GLM-4.7's special tokens and official template.
fn small2() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(options(Some(fixture("small2-q8_0.gguf")))).unwrap())
}

struct Client {
    base: String,
    agent: ureq::Agent,
    key: Option<String>,
}

fn client(server: &Server) -> Client {
    client_with_timeout(server, Duration::from_secs(60))
}

fn client_with_timeout(server: &Server, timeout: Duration) -> Client {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    Client {
        base: format!("http://{}", server.addr()),
        agent,
        key: None,
    }
}

impl Client {
    /// Sends `body` (raw bytes); returns the status and the JSON reply.
    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    /// A request that must succeed.
    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, json) = self.post(path, body);
        assert_eq!(status, 200, "POST {path} {body}: {json}");
        json
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let json = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (status, json)
    }

    /// A streamed request: the JSON of every `data:` event; checks the stream ends with
    /// `data: [DONE]` and the events are text/event-stream.
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut events = Vec::new();
        let mut done = false;
        for line in reader.lines() {
            let line = line.unwrap();
            let Some(data) = line.strip_prefix("data: ") else {
                assert!(line.is_empty() || line.starts_with(':'), "{line:?}");
                continue;
            };
            assert!(!done, "data after [DONE]: {data}");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
        assert!(done, "no [DONE] at the end of {events:?}");
        events
    }
}

/// `glm-flash run` with `args` (greedy, CPU); returns stdout without its final newline.
fn run_cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(["run", "--temp", "0", "--backend", "cpu", "--threads", "1"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{stdout:?}"))
        .to_string()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Concatenated chat deltas of a stream: (reasoning, content, finish reason).
fn chat_deltas(events: &[Value]) -> (String, String, String) {
    let (mut reasoning, mut content, mut finish) = (String::new(), String::new(), None);
    for e in events {
        assert_eq!(e["object"], "chat.completion.chunk", "{e}");
        let Some(choice) = e["choices"].get(0) else {
            continue;
        };
        let d = &choice["delta"];
        reasoning += d["reasoning_content"].as_str().unwrap_or_default();
        content += d["content"].as_str().unwrap_or_default();
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons");
            finish = Some(f.to_string());
        }
    }
    (reasoning, content, finish.expect("a finish reason"))
}

/// Polls `/health` until `done` holds for it (at most 10 s).
fn wait_for_health(c: &Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, h) = c.get("/health");
        assert_eq!(status, 200);
        assert_eq!(h["status"], "ok");
        if done(&h) {
            return h;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_and_models() {
    let c = client(builtin());
    let (status, h) = c.get("/health");
    assert_eq!((status, &h["status"]), (200, &json!("ok")), "{h}");
    let (status, m) = c.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(m["data"][0]["context_length"], 512);
    let (_, m) = client(small2()).get("/v1/models");
    assert_eq!(m["data"][0]["id"], "small2-q8_0.gguf");
}

#[test]
fn greedy_completion_equals_the_cli_streamed_or_not() {
    let prompt = "The lighthouse keeper";
    let want = run_cli(&["-p", prompt, "-n", "12"]);
    let c = client(builtin());
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0});
    let r = c.ok("/v1/completions", &body);
    assert_eq!(r["object"], "text_completion");
    let choice = &r["choices"][0];
    assert_eq!(choice["text"], want.as_str(), "{r}");
    let generated = r["usage"]["completion_tokens"].as_u64().unwrap();
    let expected_finish = if generated == 12 { "length" } else { "stop" };
    assert_eq!(choice["finish_reason"], expected_finish);
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(
        r["usage"]["total_tokens"].as_u64(),
        Some(prompt_tokens + generated)
    );

    let events = c.stream("/v1/completions", &body);
    let text: String = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, want);
    let last = &events.last().unwrap()["choices"][0];
    assert_eq!(last["finish_reason"], expected_finish);
    // An array of one prompt is the same prompt.
    let one = json!({"prompt": [prompt], "max_tokens": 12, "temperature": 0});
    assert_eq!(
        c.ok("/v1/completions", &one)["choices"][0]["text"],
        want.as_str()
    );
}

/// A request's penalties reach the choice of tokens as the same flags of `glm-flash run`
/// do: a presence penalty of 100 over the whole context (no token may repeat; greedy
/// "Hello" repeats some of its first 60 tokens without it) and the
/// three penalties over a window, each against the CLI; without them the reply is the
/// server's greedy default.
#[test]
fn penalties_from_the_request_equal_the_cli() {
    let prompt = "Hello";
    let c = client(builtin());
    let served = |extra: Value| {
        let mut body = json!({"prompt": prompt, "max_tokens": 60, "temperature": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c.ok("/v1/completions", &body)["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let plain = run_cli(&["-p", prompt, "-n", "60"]);
    assert_eq!(served(json!({})), plain);
    let no_repeats = run_cli(&[
        "-p",
        prompt,
        "-n",
        "60",
        "--presence-penalty",
        "100",
        "--repeat-last-n",
        "-1",
    ]);
    assert_ne!(no_repeats, plain, "the penalty changed nothing");
    assert_eq!(
        served(json!({"presence_penalty": 100, "repeat_last_n": -1})),
        no_repeats
    );
    let mixed = run_cli(&[
        "-p",
        prompt,
        "-n",
        "60",
        "--repeat-penalty",
        "1.5",
        "--frequency-penalty",
        "0.5",
        "--presence-penalty",
        "-0.25",
        "--repeat-last-n",
        "8",
    ]);
    assert_ne!(mixed, plain, "the penalties changed nothing");
    assert_eq!(
        served(json!({"repeat_penalty": 1.5, "frequency_penalty": 0.5,
                      "presence_penalty": -0.25, "repeat_last_n": 8})),
        mixed
    );
}

#[test]
fn greedy_chat_equals_the_cli_with_the_thinking_split() {
    let model = fixture("small2-q8_0.gguf");
    let model = model.to_str().unwrap();
    let question = "Why is the sea salty?";
    let c = client(small2());

    // Thinking on: the prompt ends with <think>, the reply starts as reasoning.
    let cli = run_cli(&["-m", model, "--chat", "-p", question, "-n", "10"]);
    let body = json!({"messages": user(question), "max_tokens": 10, "temperature": 0});
    let r = c.ok("/v1/chat/completions", &body);
    assert_eq!(r["object"], "chat.completion");
    let message = &r["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    let reasoning = message["reasoning_content"].as_str().unwrap_or_default();
    let content = message["content"].as_str().unwrap();
    assert!(
        !reasoning.is_empty(),
        "the reply starts inside <think>: {r}"
    );
    assert_eq!(format!("{reasoning}{content}"), cli);

    let events = c.stream("/v1/chat/completions", &body);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let (s_reasoning, s_content, finish) = chat_deltas(&events);
    assert_eq!(
        (s_reasoning.as_str(), s_content.as_str()),
        (reasoning, content)
    );
    assert_eq!(finish, r["choices"][0]["finish_reason"].as_str().unwrap());

    // Thinking off, in each of the three ways a request can say it.
    let cli = run_cli(&[
        "-m",
        model,
        "--chat",
        "--no-think",
        "-p",
        question,
        "-n",
        "10",
    ]);
    for off in [
        json!({"chat_template_kwargs": {"enable_thinking": false}}),
        json!({"enable_thinking": false}),
        json!({"thinking": {"type": "disabled"}}),
    ] {
        let mut body = body.clone();
        body.as_object_mut()
            .unwrap()
            .extend(off.as_object().unwrap().clone());
        let r = c.ok("/v1/chat/completions", &body);
        let message = &r["choices"][0]["message"];
        assert!(message.get("reasoning_content").is_none(), "{off}: {r}");
        assert_eq!(message["content"], cli.as_str(), "{off}");
        let (s_reasoning, s_content, _) = chat_deltas(&c.stream("/v1/chat/completions", &body));
        assert_eq!(
            (s_reasoning.as_str(), s_content.as_str()),
            ("", cli.as_str()),
            "{off}"
        );
    }
}

#[test]
fn stop_strings_end_the_reply_before_them() {
    let c = client(builtin());
    let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0});
    let full = c.ok("/v1/completions", &body)["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    for stop_field in [json!(stop), json!(["\u{1}never", stop])] {
        let mut body = body.clone();
        body["stop"] = stop_field.clone();
        let r = c.ok("/v1/completions", &body);
        assert_eq!(
            r["choices"][0]["text"], want,
            "stop {stop_field} in {full:?}"
        );
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        let streamed: String = c
            .stream("/v1/completions", &body)
            .iter()
            .map(|e| e["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(streamed, want, "streamed, stop {stop_field}");
    }
    // Chat too: the stop string cuts the text wherever it falls (thinking or answer).
    let s2 = client(small2());
    let body = json!({"messages": user("Tell me a story"), "max_tokens": 16, "temperature": 0,
                      "enable_thinking": false});
    let full = s2.ok("/v1/chat/completions", &body)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut with_stop = body.clone();
    with_stop["stop"] = json!([stop]);
    let r = s2.ok("/v1/chat/completions", &with_stop);
    assert_eq!(
        r["choices"][0]["message"]["content"],
        &full[..full.find(&stop).unwrap()]
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

/// The tool conversation of the fixtures' chat cases, sent the OpenAI way (arguments as a
/// JSON string, ids): the prompt the server renders has exactly the token count of
/// transformers' rendering.
#[test]
fn tools_and_tool_results_reach_the_template_like_transformers() {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("tokenizer-cases.json")).unwrap()).unwrap();
    let case = cases["chat_templates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["ggufs"]
                .as_array()
                .unwrap()
                .contains(&json!("small2-q8_0.gguf"))
        })
        .flat_map(|e| e["cases"].as_array().unwrap())
        .find(|c| c["name"] == "tools")
        .expect("a tools case for small2");
    let mut messages = case["messages"].clone();
    for m in messages.as_array_mut().unwrap() {
        if let Some(calls) = m.get_mut("tool_calls") {
            for (i, call) in calls.as_array_mut().unwrap().iter_mut().enumerate() {
                call["id"] = json!(format!("call_{i}"));
                let args = call["function"]["arguments"].to_string();
                call["function"]["arguments"] = json!(args);
            }
        }
        if m["role"] == "tool" {
            m["tool_call_id"] = json!("call_0");
        }
    }
    let body = json!({
        "messages": messages,
        "tools": case["kwargs"]["tools"],
        "tool_choice": "auto",
        "max_tokens": 4,
        "temperature": 0,
    });
    let r = client(small2()).ok("/v1/chat/completions", &body);
    let want = case["ids"].as_array().unwrap().len();
    assert_eq!(r["usage"]["prompt_tokens"], want, "{r}");
    // With tool_choice "none" the tools are left out of the prompt.
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let r = client(small2()).ok("/v1/chat/completions", &none);
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() < want as u64);
}

/// `tool_choice` "required" or a named function: the reply's call is opened for the model
/// (`\n<tool_call>` and the name, as the template writes a call) and it writes the rest.
/// The fixture's random weights make no sense of it, so the tokens (seen through their
/// log-probabilities) are what is checked: they start with the opening, thinking off; with
/// thinking on, they do not start with it (it waits for the end of the thinking).
#[test]
fn a_required_tool_call_is_opened_for_the_model() {
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ]);
    let tokens = |choice: Value, thinking: bool| -> String {
        let body = json!({"messages": user("What is the weather in Paris?"), "tools": tools,
                          "tool_choice": choice, "max_tokens": 8, "temperature": 0,
                          "logprobs": true, "enable_thinking": thinking});
        let r = client(small2()).ok("/v1/chat/completions", &body);
        let content = r["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(content.len(), 8, "{r}");
        content
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect()
    };
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let text = tokens(named.clone(), false);
    assert!(text.starts_with("\n<tool_call>get_time"), "{text:?}");
    let text = tokens(json!("required"), false);
    assert!(text.starts_with("\n<tool_call>"), "{text:?}");
    let text = tokens(json!("auto"), false);
    assert!(!text.starts_with("\n<tool_call>"), "{text:?}");
    let text = tokens(named, true);
    assert!(!text.starts_with("\n<tool_call>"), "{text:?}");
}

/// `response_format: {"type": "json_object"}`: the answer is a JSON object or, cut by
/// `max_tokens`, the start of one (the fixture's weights are random; every token is
/// drawn from those that keep it JSON), through both endpoints, whole or streamed. A schema
/// is refused, as is a JSON answer that must also be a tool call.
#[test]
fn a_json_answer_is_json() {
    let json_prefix = |text: &str| -> bool {
        let mut state =
            glm_flash::json_output::JsonState::new(glm_flash::json_output::JsonValue::Object);
        state.push_all(text.as_bytes())
    };
    let c = client(small2());
    let format = json!({"type": "json_object"});
    for seed in 0..3 {
        let body = json!({"messages": user("Describe Paris as JSON."), "max_tokens": 24,
                          "temperature": 1, "seed": seed, "response_format": format,
                          "enable_thinking": false});
        let r = c.ok("/v1/chat/completions", &body);
        let choice = &r["choices"][0];
        let content = choice["message"]["content"].as_str().unwrap();
        assert!(json_prefix(content), "{content:?}");
        if choice["finish_reason"] == "stop" {
            serde_json::from_str::<Value>(content).unwrap();
        }
        let (_, streamed, _) = chat_deltas(&c.stream("/v1/chat/completions", &body));
        assert_eq!(streamed, content);
    }
    let body = json!({"prompt": "Paris:", "max_tokens": 24, "response_format": format});
    let r = c.ok("/v1/completions", &body);
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(json_prefix(text), "{text:?}");

    let chat = "/v1/chat/completions";
    let schema = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": {}}});
    let (status, e) = c.post(
        chat,
        &json!({"messages": user("hi"), "response_format": schema}),
    );
    assert_eq!(
        (status, &e["error"]["param"]),
        (400, &json!("response_format")),
        "{e}"
    );
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let body = json!({"messages": user("hi"), "response_format": format, "tools": tools,
                      "tool_choice": "required"});
    let (status, e) = c.post(chat, &body);
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("exclude"),
        "{e}"
    );
}

/// `chat_template_kwargs` reach the template: GLM-4.7's `clear_thinking: false` keeps an
/// earlier turn's thinking in the prompt, so the prompt is longer by it.
#[test]
fn chat_template_kwargs_reach_the_template() {
    let messages = json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "They greet me."},
        {"role": "user", "content": "How are you?"}
    ]);
    let prompt_tokens = |kwargs: Value| {
        let body = json!({"messages": messages, "max_tokens": 1, "chat_template_kwargs": kwargs});
        let r = client(small2()).ok("/v1/chat/completions", &body);
        r["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let cleared = prompt_tokens(json!({}));
    assert!(prompt_tokens(json!({"clear_thinking": false})) > cleared);
    assert_eq!(prompt_tokens(json!({"clear_thinking": true})), cleared);
}

#[test]
fn a_conversation_that_goes_on_reuses_its_slot() {
    let mut opts = options(Some(fixture("small2-q8_0.gguf")));
    opts.parallel = 2;
    let server = Server::start(opts).unwrap();
    let c = client(&server);
    let ask = |messages: &Value| {
        let body = json!({"messages": messages, "max_tokens": 6, "temperature": 0});
        c.ok("/v1/chat/completions", &body)
    };
    let a1_messages = json!([{"role": "system", "content": "You answer in French."},
                             {"role": "user", "content": "Where is Lyon?"}]);
    let a1 = ask(&a1_messages);
    assert_eq!(a1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // Another conversation in between takes the other slot.
    let b1 = ask(&json!([{"role": "user", "content": "Name a colour."}]));
    assert!(
        b1["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            <= 2
    );
    let mut a2_messages = a1_messages.clone();
    let reply = &a1["choices"][0]["message"];
    a2_messages.as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": reply["content"],
               "reasoning_content": reply["reasoning_content"]}),
        json!({"role": "user", "content": "And Lille?"}),
    ]);
    let a2 = ask(&a2_messages);
    let a1_prompt = a1["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = a2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // All of the first prompt but its closing `<think>` comes from the cache.
    assert!(
        cached + 1 >= a1_prompt,
        "cached {cached} of a first prompt of {a1_prompt}"
    );
    // The same request again: the same reply, from a cache that now holds almost all of it.
    let again = ask(&a2_messages);
    assert_eq!(again["choices"], a2["choices"]);
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > cached
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_goes_on() {
    let c = client(builtin());
    let chat = "/v1/chat/completions";
    let expect =
        |(status, json): (u16, Value), want_status: u16, param: Option<&str>, text: &str| {
            assert_eq!(status, want_status, "{json}");
            let e = &json["error"];
            assert!(e["message"].as_str().unwrap().contains(text), "{json}");
            assert!(e["type"].is_string() && e["code"].is_string(), "{json}");
            if let Some(p) = param {
                assert_eq!(e["param"], p, "{json}");
            }
        };
    expect(
        c.post_raw(chat, b"{\"messages\": ["),
        400,
        None,
        "malformed JSON",
    );
    expect(c.post_raw(chat, b""), 400, None, "malformed JSON");
    expect(c.post_raw(chat, b"{} {}"), 400, None, "malformed JSON");
    expect(
        c.post(chat, &json!({})),
        400,
        Some("messages"),
        "messages: missing",
    );
    expect(
        c.post(chat, &json!({"messages": []})),
        400,
        Some("messages"),
        "at least one",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "temperature": "hot"})),
        400,
        Some("temperature"),
        "invalid type",
    );
    expect(
        c.post(chat, &json!({"messages": [{"content": "hi"}]})),
        400,
        Some("messages[0]"),
        "missing field `role`",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": [{"role": "robot", "content": "hi"}]}),
        ),
        400,
        Some("messages[0].role"),
        "unknown role",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "top_p": 2})),
        400,
        Some("top_p"),
        "(0, 1]",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "repeat_penalty": 0})),
        400,
        Some("repeat_penalty"),
        "above 0",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "repeat_last_n": -2})),
        400,
        Some("repeat_last_n"),
        "-1 (the whole context)",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "presence_penalty": 1e39}),
        ),
        400,
        Some("presence_penalty"),
        "a number",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "n": 17})),
        400,
        Some("n"),
        "1 to 16",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "logprobs": true, "top_logprobs": 21}),
        ),
        400,
        Some("top_logprobs"),
        "from 0 to 20",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "top_logprobs": 2})),
        400,
        Some("top_logprobs"),
        "needs \"logprobs\": true",
    );
    expect(
        c.post(
            "/v1/completions",
            &json!({"prompt": "hi", "logprobs": true}),
        ),
        400,
        Some("logprobs"),
        "from 0 to 20",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "tool_choice": "required"}),
        ),
        400,
        Some("tool_choice"),
        "needs tools",
    );
    let weather = json!([{"type": "function", "function": {"name": "get_weather",
                          "parameters": {"type": "object"}}}]);
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "tools": weather,
                    "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        ),
        400,
        Some("tool_choice.function.name"),
        "no tool is named \"get_time\"",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "tools": weather, "tool_choice": "always"}),
        ),
        400,
        Some("tool_choice"),
        "\"required\"",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": user("hi"), "tools": [{"name": "f"}]}),
        ),
        400,
        Some("tools[0]"),
        "function",
    );
    expect(
        c.post(chat, &json!({"messages": user("hi"), "stop": 3})),
        400,
        Some("stop"),
        "string",
    );
    expect(
        c.post(
            chat,
            &json!({"messages": [{"role": "assistant", "content": null,
            "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]}),
        ),
        400,
        Some("messages[0].tool_calls[0].function.arguments"),
        "not JSON",
    );
    expect(
        c.post("/v1/completions", &json!({"prompt": 7})),
        400,
        Some("prompt"),
        "string",
    );
    expect(
        c.post("/v1/completions", &json!({"prompt": ""})),
        400,
        Some("prompt"),
        "empty",
    );
    // Longer than the context of 512 tokens.
    let long = "lighthouse keeper ".repeat(400);
    let (status, json) = c.post("/v1/completions", &json!({"prompt": long}));
    expect(
        (status, json.clone()),
        400,
        Some("prompt"),
        "context holds 512",
    );
    assert_eq!(json["error"]["code"], "context_length_exceeded");
    expect(
        c.post(chat, &json!({"messages": user(&long)})),
        400,
        Some("messages"),
        "context holds 512",
    );
    expect(c.get("/v1/nothing"), 404, None, "no route GET /v1/nothing");
    expect(
        c.post("/v2/chat", &json!({})),
        404,
        None,
        "no route POST /v2/chat",
    );
    expect(c.get(chat), 405, None, "GET is not allowed");
    // One byte over the limit: the whole body is read, then refused.
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    expect(c.post_raw(chat, &big), 413, None, "larger than");

    // Still serving.
    let (status, h) = c.get("/health");
    assert_eq!((status, &h["status"]), (200, &json!("ok")));
    c.ok(
        "/v1/completions",
        &json!({"prompt": "Still there?", "max_tokens": 2}),
    );
}

/// The tokens' log-probabilities, whole and streamed: one entry per completion token, the
/// same either way and in both endpoints' shapes; asking for them changes no token; greedy
/// choices are each position's most likely token; the tokens' bytes make up the text. (That
/// the values are the model's log-softmax is held against teacher-forced logits in the
/// library's tests.)
#[test]
fn logprobs_come_with_every_token_whole_or_streamed() {
    let c = client(builtin());
    let prompt = "The lighthouse keeper";
    let plain = c.ok(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 10, "temperature": 0}),
    );
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);

    // Completions: {tokens, token_logprobs, top_logprobs, text_offset}.
    let body = json!({"prompt": prompt, "max_tokens": 10, "temperature": 0, "logprobs": 2});
    let r = c.ok("/v1/completions", &body);
    let choice = &r["choices"][0];
    assert_eq!(choice["text"], plain["choices"][0]["text"]);
    let lp = &choice["logprobs"];
    let n = r["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), n, "{lp}");
    // Control tokens (`<|...|>`) are named, but leave no text in a completion.
    let control = |t: &str| t.starts_with("<|") && t.ends_with("|>");
    let text: String = tokens.iter().filter(|t| !control(t)).copied().collect();
    assert_eq!(text, choice["text"].as_str().unwrap());
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(lp["text_offset"][i], offset, "{lp}");
        offset += if control(token) {
            0
        } else {
            token.chars().count()
        };
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{lp}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(chosen <= 0.0 && chosen == best, "token {i} of greedy: {lp}");
    }
    let streamed: Vec<Value> = c
        .stream("/v1/completions", &body)
        .iter()
        .filter(|e| !e["choices"][0]["logprobs"].is_null())
        .map(|e| e["choices"][0]["logprobs"].clone())
        .collect();
    let joined = |key: &str| -> Vec<Value> {
        streamed
            .iter()
            .flat_map(|l| l[key].as_array().unwrap().clone())
            .collect()
    };
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(joined(key), *lp[key].as_array().unwrap(), "{key}");
    }

    // Chat: {"content": [{token, logprob, bytes, top_logprobs}]}.
    let body = json!({"messages": user("Why is the sky blue?"), "max_tokens": 12,
                      "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let r = c.ok("/v1/chat/completions", &body);
    let content = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut bytes = Vec::new();
    for entry in &content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{entry}");
        assert_eq!(top[0]["token"], entry["token"], "greedy: {entry}");
        assert_eq!(top[0]["logprob"], entry["logprob"], "{entry}");
        assert!(top[0]["logprob"].as_f64() >= top[2]["logprob"].as_f64());
        bytes.extend(
            entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    let message = &r["choices"][0]["message"];
    let text = String::from_utf8_lossy(&bytes);
    let reasoning = message["reasoning_content"].as_str().unwrap_or_default();
    let answer = message["content"].as_str().unwrap();
    assert!(
        text.contains(reasoning.trim()) && text.contains(answer.trim()),
        "{text:?} against {message}"
    );
    let mut streamed = Vec::new();
    for e in c.stream("/v1/chat/completions", &body) {
        if let Some(more) = e["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(more.iter().cloned());
        }
    }
    // The same tokens; the values to float32 rounding (this request reuses the slot's
    // cache, so its last prompt token is fed alone rather than with the prompt).
    assert_eq!(streamed.len(), content.len());
    let same = |a: &Value, b: &Value| {
        assert_eq!((&a["token"], &a["bytes"]), (&b["token"], &b["bytes"]));
        let (x, y) = (
            a["logprob"].as_f64().unwrap(),
            b["logprob"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-5, "{a} against {b}");
    };
    for (a, b) in streamed.iter().zip(&content) {
        same(a, b);
        let (ta, tb) = (
            a["top_logprobs"].as_array().unwrap(),
            b["top_logprobs"].as_array().unwrap(),
        );
        assert_eq!(ta.len(), tb.len());
        ta.iter().zip(tb).for_each(|(a, b)| same(a, b));
    }
}

/// `n` choices: each is the reply a request of one choice gets with the seed plus its
/// index, whole or streamed (chunks tagged with their choice, each chat choice opened with
/// its role); the usage counts the prompt once and every choice's tokens.
#[test]
fn several_choices_are_the_replies_of_their_seeds() {
    let c = client(builtin());
    let body = json!({"prompt": "The lighthouse keeper", "max_tokens": 8, "temperature": 1,
                      "seed": 7, "n": 3});
    let r = c.ok("/v1/completions", &body);
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{r}");
    let mut completion_tokens = 0;
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let one = json!({"prompt": "The lighthouse keeper", "max_tokens": 8, "temperature": 1,
                         "seed": 7 + i});
        let alone = c.ok("/v1/completions", &one);
        assert_eq!(choice["text"], alone["choices"][0]["text"], "choice {i}");
        completion_tokens += alone["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert_ne!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(r["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        r["usage"]["prompt_tokens"],
        c.ok(
            "/v1/completions",
            &json!({"prompt": "The lighthouse keeper", "max_tokens": 1})
        )["usage"]["prompt_tokens"]
    );
    let mut streamed = vec![String::new(); 3];
    for e in c.stream("/v1/completions", &body) {
        let choice = &e["choices"][0];
        streamed[choice["index"].as_u64().unwrap() as usize] += choice["text"].as_str().unwrap();
    }
    for (i, text) in streamed.iter().enumerate() {
        assert_eq!(choices[i]["text"], text.as_str(), "choice {i}");
    }

    let body = json!({"messages": user("Hi"), "max_tokens": 6, "temperature": 1, "seed": 3,
                      "n": 2, "stream_options": {"include_usage": true}});
    let whole = c.ok("/v1/chat/completions", &body);
    let events = c.stream("/v1/chat/completions", &body);
    for i in 0..2 {
        let mine: Vec<Value> = events
            .iter()
            .filter(|e| e["choices"][0]["index"] == i)
            .cloned()
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        let (reasoning, content, finish) = chat_deltas(&mine);
        let message = &whole["choices"][i]["message"];
        assert_eq!(
            reasoning,
            message["reasoning_content"].as_str().unwrap_or_default()
        );
        assert_eq!(content, message["content"].as_str().unwrap());
        assert_eq!(
            finish,
            whole["choices"][i]["finish_reason"].as_str().unwrap()
        );
    }
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
}

/// `--cors-origin`: a browser's preflight from an allowed origin is answered before the key
/// is asked for, that origin's requests (refusals too) carry the header that lets its page
/// read them, and another origin's, or any origin's on a server without the flag, do not;
/// `*` lets any origin in.
/// An origin that is not one is refused before the model loads.
#[test]
fn cors_origins_may_call_from_a_browser() {
    let page = "http://localhost:3000";
    let mut opts = options(None);
    opts.api_key = Some("s3cret".into());
    opts.cors_origins = vec![page.into(), "https://app.example".into()];
    let server = Server::start(opts).unwrap();
    let url = |path: &str| format!("http://{}{path}", server.addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let allowed = |resp: &ureq::http::Response<ureq::Body>| {
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    let pre = agent
        .options(url("/v1/chat/completions"))
        .header("Origin", page)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .call()
        .unwrap();
    assert_eq!(pre.status().as_u16(), 200);
    assert_eq!(allowed(&pre).as_deref(), Some(page));
    let header = |name: &str| pre.headers()[name].to_str().unwrap().to_lowercase();
    assert!(header("access-control-allow-methods").contains("post"));
    assert!(header("access-control-allow-headers").contains("authorization"));

    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let post = |origin: &str, key: Option<&str>| {
        let mut req = agent
            .post(url("/v1/completions"))
            .header("Origin", origin)
            .header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        req.send(body.as_bytes()).unwrap()
    };
    let ok = post(page, Some("s3cret"));
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(allowed(&ok).as_deref(), Some(page));
    let refused = post(page, None);
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(allowed(&refused).as_deref(), Some(page));
    let other = post("http://elsewhere.example", Some("s3cret"));
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(allowed(&other), None);

    let plain = agent
        .get(format!("http://{}/health", builtin().addr()))
        .header("Origin", page)
        .call()
        .unwrap();
    assert_eq!(allowed(&plain), None);

    for bad in [
        "localhost:3000",
        "http://localhost:3000/app",
        "http://",
        "ftp://x",
    ] {
        let mut opts = options(None);
        opts.cors_origins = vec![bad.into()];
        let err = Server::start(opts).err().expect(bad).to_string();
        assert!(err.contains("--cors-origin") && err.contains(bad), "{err}");
    }
}

#[test]
fn api_key_is_required_on_v1_only() {
    let mut opts = options(None);
    opts.api_key = Some("s3cret".into());
    let server = Server::start(opts).unwrap();
    let mut c = client(&server);
    let body = json!({"prompt": "Hi", "max_tokens": 2});
    let (status, json) = c.post("/v1/completions", &body);
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["error"]["type"], "authentication_error");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    c.key = Some("wrong".into());
    let (status, json) = c.post("/v1/completions", &body);
    assert_eq!(status, 401);
    assert_eq!(json["error"]["code"], "invalid_api_key");
    c.key = Some("s3cret".into());
    c.ok("/v1/completions", &body);
    c.key = None;
    assert_eq!(c.get("/health").0, 200);
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let mut opts = options(None);
    opts.backend.ctx = 4096;
    let server = Server::start(opts).unwrap();
    let c = client(&server);
    // About 3200 tokens: seconds of prefill (a random model's reply may end any time, its
    // prompt cannot), fed in chunks with a check for cancellation between them.
    let long = "lighthouse keeper ".repeat(400);
    let body = json!({"messages": user(&long), "max_tokens": 4, "stream": true});
    let resp = c
        .agent
        .post(format!("{}/v1/chat/completions", c.base))
        .send(body.to_string().as_bytes())
        .unwrap();
    // The first event (the role) comes before the prefill; then the client leaves.
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first = lines
        .find(|l| l.as_ref().unwrap().starts_with("data: "))
        .unwrap();
    assert!(first.unwrap().contains("\"role\":\"assistant\""));
    drop(lines);
    let h = wait_for_health(&c, "the streamed request was cancelled", |h| {
        h["requests"]["cancelled"] == 1
    });
    assert_eq!(h["requests"]["served"], 0, "{h}");

    // A client that gives up waiting for a whole reply cancels it too.
    let impatient = client_with_timeout(&server, Duration::from_millis(300));
    let body = json!({"prompt": long, "max_tokens": 4});
    let gave_up = impatient
        .agent
        .post(format!("{}/v1/completions", c.base))
        .send(body.to_string().as_bytes());
    assert!(
        gave_up.is_err(),
        "the reply should take longer than the client waits"
    );
    drop(impatient);
    let h = wait_for_health(&c, "the whole-reply request was cancelled", |h| {
        h["requests"]["cancelled"] == 2
    });
    assert_eq!(h["requests"]["served"], 0, "{h}");
    // And the next request is served.
    c.ok(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 3}),
    );
    let h = wait_for_health(&c, "one served", |h| h["requests"]["served"] == 1);
    assert_eq!(h["requests"]["queued"], 0);
}

/// 16 clients at once, 3 requests each (chat and completions, streamed and whole), plus
/// clients that leave mid-stream: every answer equals the single-client greedy answer.
#[test]
fn sixteen_clients_at_once_get_their_own_answers() {
    let mut opts = options(None);
    opts.parallel = 4;
    let server = Server::start(opts).unwrap();
    let started = Instant::now();
    let prompts = ["The sea", "A red fox", "Numbers: 1, 2,", "Über alles"];
    let request = |p: usize, chat: bool| -> (&'static str, Value) {
        match chat {
            true => (
                "/v1/chat/completions",
                json!({"messages": user(prompts[p]), "max_tokens": 8}),
            ),
            false => (
                "/v1/completions",
                json!({"prompt": prompts[p], "max_tokens": 8}),
            ),
        }
    };
    let answer_of = |chat: bool, r: &Value| -> String {
        match chat {
            true => {
                let m = &r["choices"][0]["message"];
                format!("{}|{}", m["reasoning_content"], m["content"])
            }
            false => r["choices"][0]["text"].as_str().unwrap().to_string(),
        }
    };
    // The answers of one client alone (the server's default is greedy).
    let c = client(&server);
    let mut expected = Vec::new();
    for p in 0..prompts.len() {
        for chat in [false, true] {
            let (path, body) = request(p, chat);
            expected.push(((p, chat), answer_of(chat, &c.ok(path, &body))));
        }
    }
    let expected = std::sync::Arc::new(expected);

    std::thread::scope(|s| {
        for client_no in 0..16 {
            let server = &server;
            let expected = expected.clone();
            s.spawn(move || {
                let c = client(server);
                if client_no % 4 == 3 {
                    // Leaves in the middle of a stream that would run long.
                    let body = json!({"prompt": prompts[0], "max_tokens": 300, "stream": true});
                    let resp = c
                        .agent
                        .post(format!("{}/v1/completions", c.base))
                        .send(body.to_string().as_bytes())
                        .unwrap();
                    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
                    lines.find(|l| l.as_ref().unwrap().starts_with("data: {"));
                }
                for round in 0..3 {
                    let p = (client_no + round) % prompts.len();
                    let chat = (client_no + round) % 2 == 1;
                    let (path, body) = request(p, chat);
                    let got = if round == 1 {
                        let events = c.stream(path, &body);
                        match chat {
                            true => {
                                let (r, a, _) = chat_deltas(&events);
                                let or_null = |s: String| match s.is_empty() {
                                    true => "null".to_string(),
                                    false => json!(s).to_string(),
                                };
                                format!("{}|{}", or_null(r), json!(a))
                            }
                            false => events
                                .iter()
                                .map(|e| e["choices"][0]["text"].as_str().unwrap())
                                .collect(),
                        }
                    } else {
                        answer_of(chat, &c.ok(path, &body))
                    };
                    let want = &expected.iter().find(|(k, _)| *k == (p, chat)).unwrap().1;
                    assert_eq!(&got, want, "client {client_no} round {round}");
                }
            });
        }
    });
    let h = wait_for_health(&c, "every request done", |h| h["requests"]["queued"] == 0);
    assert_eq!(h["requests"]["failed"], 0, "{h}");
    assert!(h["requests"]["served"].as_u64().unwrap() >= 8 + 48, "{h}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
}
