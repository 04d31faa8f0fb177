//! GLM-4.7's tool-call text, as its chat template writes it and the model generates it:
//!
//! `<tool_call>NAME<arg_key>K1</arg_key><arg_value>V1</arg_value>...</tool_call>`
//!
//! turned into [`ToolCall`]s with JSON arguments, also while the text streams in. The
//! template writes a string value as is and any other value as JSON, so a value that parses
//! as JSON keeps its type and anything else is a string; where the tool's schema declares
//! the argument a string, it stays a string even when it looks like a number.

use serde_json::{Map, Value as Json};

use crate::chat::ToolCall;

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const KEY_OPEN: &str = "<arg_key>";
const KEY_CLOSE: &str = "</arg_key>";
const VALUE_OPEN: &str = "<arg_value>";
const VALUE_CLOSE: &str = "</arg_value>";

/// A piece of streamed answer text: plain text, or a whole tool call.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

/// Finds tool calls in answer text as it streams. Text outside calls comes out as soon as it
/// cannot be the start of `<tool_call>`; a call comes out whole once `</tool_call>` arrives.
/// A call that does not parse comes out as the text it was.
pub struct ToolCallParser {
    /// OpenAI `tools` (for the argument types).
    tools: Vec<Json>,
    pending: String,
    /// Inside `<tool_call>...`: `pending` holds the call's body so far.
    in_call: bool,
}

impl ToolCallParser {
    pub fn new(tools: &[Json]) -> Self {
        ToolCallParser {
            tools: tools.to_vec(),
            pending: String::new(),
            in_call: false,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CALL_CLOSE) else {
                    break;
                };
                let body: String = self.pending.drain(..end + CALL_CLOSE.len()).collect();
                let body = &body[..end];
                out.push(match parse_call(body, &self.tools) {
                    Some(call) => Piece::Call(call),
                    None => {
                        log::warn!(
                            "a tool call that does not parse is passed on as text: {body:?}"
                        );
                        Piece::Text(format!("{CALL_OPEN}{body}{CALL_CLOSE}"))
                    }
                });
                self.in_call = false;
            } else {
                let Some(start) = self.pending.find(CALL_OPEN) else {
                    break;
                };
                let before: String = self.pending.drain(..start + CALL_OPEN.len()).collect();
                push_text(&mut out, &before[..start]);
                self.in_call = true;
            }
        }
        if !self.in_call {
            let held = partial_suffix(&self.pending, CALL_OPEN);
            let text: String = self.pending.drain(..self.pending.len() - held).collect();
            push_text(&mut out, &text);
        }
        out
    }

    /// The rest once the reply is over: held-back text, or an unfinished call as text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        if self.in_call {
            push_text(&mut out, &format!("{CALL_OPEN}{rest}"));
            self.in_call = false;
        } else {
            push_text(&mut out, &rest);
        }
        out
    }
}

fn push_text(out: &mut Vec<Piece>, text: &str) {
    if !text.is_empty() {
        out.push(Piece::Text(text.to_string()));
    }
}

/// Length of the longest tail of `text` that `tag` starts with (shorter than `tag`).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&len| text.ends_with(&tag[..len]))
        .unwrap_or(0)
}

/// Parses a call's body, the text between `<tool_call>` and `</tool_call>`.
pub fn parse_call(body: &str, tools: &[Json]) -> Option<ToolCall> {
    let (name, mut rest) = body.split_at(body.find(KEY_OPEN).unwrap_or(body.len()));
    let name = name.trim();
    if name.is_empty() || name.contains('<') {
        return None;
    }
    let mut arguments = Map::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.strip_prefix(KEY_OPEN)?.split_once(KEY_CLOSE)?;
        let (value, after) = after
            .trim_start()
            .strip_prefix(VALUE_OPEN)?
            .split_once(VALUE_CLOSE)?;
        let key = key.trim();
        let value = if argument_is_string(tools, name, key) {
            Json::String(value.to_string())
        } else {
            serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.to_string()))
        };
        arguments.insert(key.to_string(), value);
        rest = after;
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// Whether the schema of tool `name` declares argument `key` a string.
fn argument_is_string(tools: &[Json], name: &str, key: &str) -> bool {
    tools
        .iter()
        .map(|t| t.get("function").unwrap_or(t))
        .find(|f| f.get("name").and_then(Json::as_str) == Some(name))
        .and_then(|f| {
            f.pointer(&format!(
                "/parameters/properties/{}/type",
                escape_pointer(key)
            ))
        })
        .is_some_and(|t| t == "string")
}

/// A JSON pointer reference token: `~` and `/` escaped.
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather_tool() -> Json {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                           "zip": {"type": "string"}}}}})
    }

    fn call(name: &str, args: Json) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn tool_call_values_keep_json_types_unless_the_schema_says_string() {
        let body = "get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>\
                    <arg_key>days</arg_key><arg_value>2</arg_value>\
                    <arg_key>zip</arg_key><arg_value>75001</arg_value>\
                    <arg_key>opts</arg_key><arg_value>{\"units\": \"metric\"}</arg_value>";
        assert_eq!(
            parse_call(body, &[weather_tool()]),
            Some(call(
                "get_weather",
                json!({"city": "Paris", "days": 2, "zip": "75001", "opts": {"units": "metric"}})
            ))
        );
        // Without the schema, "75001" is a number.
        assert_eq!(
            parse_call(body, &[]).unwrap().arguments["zip"],
            json!(75001)
        );
        // No arguments, whitespace between the parts the model may add.
        assert_eq!(parse_call(" now \n", &[]), Some(call("now", json!({}))));
        assert_eq!(
            parse_call("f\n<arg_key>a</arg_key>\n<arg_value>x y</arg_value>\n", &[]),
            Some(call("f", json!({"a": "x y"})))
        );
        // Broken structure: not a call.
        assert_eq!(parse_call("", &[]), None);
        assert_eq!(parse_call("f<arg_key>a</arg_key>", &[]), None);
        assert_eq!(parse_call("f<arg_key>a<arg_value>1</arg_value>", &[]), None);
    }

    /// The text split at every byte offset gives the same pieces as in one push.
    #[test]
    fn tool_call_parser_handles_every_split_of_the_stream() {
        let text = "Let me check.<tool_call>get_weather<arg_key>city</arg_key>\
                    <arg_value>Zürich</arg_value></tool_call>a <tool_b <tool_call>now</tool_call>";
        let want = vec![
            Piece::Text("Let me check.".into()),
            Piece::Call(call("get_weather", json!({"city": "Zürich"}))),
            Piece::Text("a <tool_b ".into()),
            Piece::Call(call("now", json!({}))),
        ];
        let merged = |pieces: Vec<Piece>| {
            let mut out: Vec<Piece> = Vec::new();
            for p in pieces {
                match (out.last_mut(), p) {
                    (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                    (_, p) => out.push(p),
                }
            }
            out
        };
        for cut in 0..=text.len() {
            for cut2 in [cut, (cut + 7).min(text.len())] {
                if !text.is_char_boundary(cut) || !text.is_char_boundary(cut2) {
                    continue;
                }
                let mut p = ToolCallParser::new(&[weather_tool()]);
                let mut pieces = p.push(&text[..cut]);
                pieces.extend(p.push(&text[cut..cut2]));
                pieces.extend(p.push(&text[cut2..]));
                pieces.extend(p.finish());
                assert_eq!(merged(pieces), want, "cut at {cut}, {cut2}");
            }
        }
        // Text is not held back longer than needed.
        let mut p = ToolCallParser::new(&[]);
        assert_eq!(p.push("a <tool"), vec![Piece::Text("a ".into())]);
        assert_eq!(p.push("box"), vec![Piece::Text("<toolbox".into())]);
    }

    #[test]
    fn unfinished_or_broken_calls_come_out_as_text() {
        let mut p = ToolCallParser::new(&[]);
        assert_eq!(
            p.push("x<tool_call>f<arg_key>a"),
            vec![Piece::Text("x".into())]
        );
        assert_eq!(
            p.finish(),
            vec![Piece::Text("<tool_call>f<arg_key>a".into())]
        );
        let mut p = ToolCallParser::new(&[]);
        assert_eq!(
            p.push("<tool_call></tool_call>"),
            vec![Piece::Text("<tool_call></tool_call>".into())]
        );
    }
}
