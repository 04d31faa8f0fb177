//! Tokenizer and chat-template checks against `tests/fixtures/tokenizer-cases.json`, the
//! expectations produced by Hugging Face tokenizers/transformers for the fixture GGUFs.

use std::path::PathBuf;

use glm_flash::chat::{render_template, ChatMessage, ChatPrompt, ToolCall};
use glm_flash::gguf::GgufFile;
use glm_flash::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("tokenizer-cases.json"))
        .expect("read tokenizer-cases.json");
    serde_json::from_str(&text).expect("parse tokenizer-cases.json")
}

fn load(gguf: &str) -> (GgufFile, Tokenizer) {
    let file = GgufFile::open(fixture(gguf)).expect("open fixture GGUF");
    let tok = Tokenizer::from_gguf(&file).expect("build tokenizer");
    (file, tok)
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|i| i.as_u64().expect("id") as u32)
        .collect()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().expect("array")
}

/// Checks one string: encode gives the expected ids, decode gives the text back, and the
/// streaming decoder produces the same text without ever returning a broken character.
fn check_string(tok: &Tokenizer, text: &str, expected: &[u32]) -> Result<(), String> {
    let ids = tok.encode(text).map_err(|e| e.to_string())?;
    if ids != expected {
        return Err(format!(
            "encode {text:?}: got {ids:?}, expected {expected:?}"
        ));
    }
    let decoded = tok.decode(expected).map_err(|e| e.to_string())?;
    if decoded != text {
        return Err(format!(
            "decode {expected:?}: got {decoded:?}, expected {text:?}"
        ));
    }
    let mut stream = tok.stream_decoder();
    let mut streamed = String::new();
    for &id in expected {
        let piece = stream.push(id);
        if piece.contains(char::REPLACEMENT_CHARACTER)
            && !text.contains(char::REPLACEMENT_CHARACTER)
        {
            return Err(format!("stream decode of {text:?}: U+FFFD after id {id}"));
        }
        streamed.push_str(&piece);
    }
    streamed.push_str(&stream.flush());
    if streamed != text {
        return Err(format!(
            "stream decode: got {streamed:?}, expected {text:?}"
        ));
    }
    Ok(())
}

#[test]
fn tokenizer_matches_hugging_face_on_every_string() {
    let all = cases();
    for vocab in arr(&all["tokenizers"]) {
        for gguf in arr(&vocab["ggufs"]) {
            let (_, tok) = load(gguf.as_str().unwrap());
            assert_eq!(
                tok.vocab_size() as u64,
                vocab["vocab_size"].as_u64().unwrap()
            );
            for (text, id) in vocab["special_token_ids"].as_object().unwrap() {
                assert_eq!(
                    tok.id_of(text),
                    Some(id.as_u64().unwrap() as u32),
                    "id of {text}"
                );
            }

            let (mut passed, mut failures) = (0, Vec::new());
            let strings = arr(&vocab["cases"])
                .iter()
                .chain(arr(&vocab["special_cases"]));
            for case in strings {
                assert_eq!(
                    case["roundtrip"],
                    Value::Bool(true),
                    "every fixture string round-trips"
                );
                match check_string(&tok, case["text"].as_str().unwrap(), &ids_of(&case["ids"])) {
                    Ok(()) => passed += 1,
                    Err(e) => failures.push(e),
                }
            }
            let total = passed + failures.len();
            println!("{gguf}: {passed}/{total} strings encode, decode and stream-decode as in Hugging Face");
            assert!(total > 0);
            assert!(
                failures.is_empty(),
                "{} failures, first ones:\n{}",
                failures.len(),
                failures[..failures.len().min(10)].join("\n")
            );
        }
    }
}

#[test]
fn tokenizer_stop_tokens_are_the_glm_turn_tokens() {
    let all = cases();
    let vocab = &arr(&all["tokenizers"])[0];
    let special = &vocab["special_token_ids"];
    let mut expected: Vec<u32> = ["<|endoftext|>", "<|user|>", "<|observation|>"]
        .iter()
        .map(|t| special[t].as_u64().unwrap() as u32)
        .collect();
    expected.sort();
    for gguf in arr(&vocab["ggufs"]) {
        let (_, tok) = load(gguf.as_str().unwrap());
        let mut stops = tok.stop_tokens();
        stops.sort();
        assert_eq!(stops, expected, "{gguf}");
    }
}

/// The messages of a case as `ChatMessage`s, when they fit (string content, tool calls
/// with their arguments as a mapping).
fn as_chat_messages(messages: &[Value]) -> Option<Vec<ChatMessage>> {
    messages
        .iter()
        .map(|m| {
            let obj = m.as_object()?;
            let known = ["role", "content", "reasoning_content", "tool_calls"];
            if obj.keys().any(|k| !known.contains(&k.as_str())) {
                return None;
            }
            let tool_calls = match obj.get("tool_calls") {
                None => Vec::new(),
                Some(calls) => calls
                    .as_array()?
                    .iter()
                    .map(|c| {
                        let f = c.get("function").unwrap_or(c);
                        Some(ToolCall {
                            name: f.get("name")?.as_str()?.to_string(),
                            arguments: f.get("arguments")?.as_object()?.clone(),
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
            };
            Some(ChatMessage {
                role: obj.get("role")?.as_str()?.to_string(),
                content: obj.get("content")?.as_str()?.to_string(),
                reasoning_content: obj
                    .get("reasoning_content")
                    .map(|r| r.as_str().map(str::to_string))
                    .unwrap_or(None),
                tool_calls,
            })
        })
        .collect()
}

#[test]
fn chat_templates_render_as_transformers() {
    let all = cases();
    let (mut rendered, mut via_render_chat, mut via_fallback) = (0, 0, 0);
    for entry in arr(&all["chat_templates"]) {
        let template_text = entry["template"].as_str().unwrap();
        let is_official = template_text == glm_flash::chat::GLM47_CHAT_TEMPLATE;
        for gguf in arr(&entry["ggufs"]) {
            let (_, tok) = load(gguf.as_str().unwrap());
            let template = tok
                .chat_template()
                .expect("fixture GGUF has a chat template");
            assert_eq!(
                template, template_text,
                "{gguf}: template differs from tokenizer-cases.json"
            );

            for case in arr(&entry["cases"]) {
                let name = format!("{gguf} case {}", case["name"]);
                let expected_text = case["text"].as_str().unwrap();
                let expected_ids = ids_of(&case["ids"]);
                let kwargs = case["kwargs"].as_object().unwrap();

                // The template sees messages plus exactly the kwargs transformers got.
                let mut context = kwargs.clone();
                context.insert("messages".into(), case["messages"].clone());
                context.entry("tools").or_insert(Value::Null);
                let text =
                    render_template(template, &context).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(text, expected_text, "{name}: rendered text");
                assert_eq!(
                    tok.encode(&text).unwrap(),
                    expected_ids,
                    "{name}: ids of the rendered text"
                );
                rendered += 1;

                // The public entry point, wherever the case fits its arguments.
                let Some(messages) = as_chat_messages(arr(&case["messages"])) else {
                    continue;
                };
                let tools = kwargs
                    .get("tools")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let prompt = ChatPrompt {
                    messages: &messages,
                    tools: &tools,
                    add_generation_prompt: kwargs["add_generation_prompt"].as_bool().unwrap(),
                    enable_thinking: kwargs
                        .get("enable_thinking")
                        .is_none_or(|v| v.as_bool().unwrap()),
                    // Its named fields among them change nothing.
                    template_kwargs: Some(kwargs),
                };
                let text = prompt.render(Some(template)).unwrap();
                assert_eq!(text, expected_text, "{name}: ChatPrompt::render");
                via_render_chat += 1;
                if is_official {
                    let text = prompt.render(None).unwrap();
                    assert_eq!(
                        text, expected_text,
                        "{name}: ChatPrompt::render with the built-in template"
                    );
                    via_fallback += 1;
                }
            }
        }
    }
    println!(
        "chat templates: {rendered} cases rendered and tokenized as transformers; \
         {via_render_chat} also through ChatPrompt::render, {via_fallback} through the built-in GLM-4.7 template"
    );
    assert!(rendered > 0 && via_render_chat > 0 && via_fallback > 0);
}

/// The tool calls in transformers' rendering of the official template parse back into the
/// calls the case's messages made, with their JSON types.
#[test]
fn tool_call_text_of_the_template_parses_back() {
    use glm_flash::tool_calls::{Piece, ToolCallParser};
    let all = cases();
    let mut checked = 0;
    for entry in arr(&all["chat_templates"]) {
        if entry["template"].as_str().unwrap() != glm_flash::chat::GLM47_CHAT_TEMPLATE {
            continue;
        }
        for case in arr(&entry["cases"]) {
            let Some(messages) = as_chat_messages(arr(&case["messages"])) else {
                continue;
            };
            let want: Vec<ToolCall> = messages.iter().flat_map(|m| m.tool_calls.clone()).collect();
            if want.is_empty() {
                continue;
            }
            let tools = case["kwargs"]["tools"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let text = case["text"].as_str().unwrap();
            let mut parser = ToolCallParser::new(&tools);
            let mut pieces = parser.push(text);
            pieces.extend(parser.finish());
            let got: Vec<ToolCall> = pieces
                .into_iter()
                .filter_map(|p| match p {
                    Piece::Call(c) => Some(c),
                    Piece::Text(_) => None,
                })
                .collect();
            assert_eq!(got, want, "{}", case["name"]);
            checked += 1;
        }
    }
    assert!(checked > 0, "no case with tool calls");
}
