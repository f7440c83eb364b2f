//! The Responses API ↔ OpenAI chat completions, the pivot through which a
//! Responses client reaches every other family (chat ↔ Anthropic messages
//! is `translate::request`/`response`): text, images and tools in; text
//! and tool calls out. What chat cannot carry is a 400 naming it
//! (`previous_response_id`, `store: true`, `background`, built-in tools,
//! …) unless the route drops unsupported parameters; what chat may carry
//! is passed on for the next translation to judge.

use serde_json::{json, Map, Value};

use crate::translate::{invalid, Options, TranslateError};

type Result<T> = std::result::Result<T, TranslateError>;

const API: &str = "chat-completions (translated from the Responses API)";

fn unsupported(param: &str, opts: &Options) -> Result<()> {
    opts.refuse(param, API)
}

/// A Responses API request body as a chat completions request.
pub fn request_to_chat(body: &[u8], opts: &Options) -> Result<Value> {
    let top: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not a JSON object: {e}")))?;
    let mut messages = Vec::new();
    let mut out = Map::new();
    for (key, value) in top {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model"
            | "stream"
            | "temperature"
            | "top_p"
            | "user"
            | "parallel_tool_calls"
            | "service_tier"
            | "safety_identifier"
            | "prompt_cache_key" => {
                out.insert(key, value);
            }
            "metadata" => {}
            "instructions" => messages.insert(0, json!({"role": "system", "content": value})),
            "input" => input_messages(&value, opts, &mut messages)?,
            "max_output_tokens" => {
                out.insert("max_tokens".into(), value);
            }
            "tools" => {
                let tools = tools(&value, opts)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                if let Some(choice) = tool_choice(&value, opts)? {
                    out.insert("tool_choice".into(), choice);
                }
            }
            "text" => {
                if let Some(format) = response_format(&value["format"], opts)? {
                    out.insert("response_format".into(), format);
                }
            }
            "store" if value == false => {}
            "background" if value == false => {}
            "truncation" if value == "disabled" => {}
            "reasoning"
                if value
                    .as_object()
                    .is_some_and(|r| r.values().all(Value::is_null)) => {}
            // Stateful or built-in features chat has no counterpart for.
            _ => unsupported(&key, opts)?,
        }
    }
    if messages.is_empty() {
        return Err(invalid("`input` is required"));
    }
    out.insert("messages".into(), Value::Array(messages));
    if out.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// `input` (a string, or items) as chat messages.
fn input_messages(input: &Value, opts: &Options, out: &mut Vec<Value>) -> Result<()> {
    let items = match input {
        Value::String(text) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(invalid("`input` must be a string or an array of items")),
    };
    for (i, item) in items.iter().enumerate() {
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or("user");
                let content = content(&item["content"], i, opts)?;
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({
                    "id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"].as_str().unwrap_or("{}")},
                });
                // Consecutive calls are one assistant turn.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match &item["output"] {
                    Value::String(s) => Value::String(s.clone()),
                    other => content(other, i, opts)?,
                };
                out.push(
                    json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}),
                );
            }
            // Opaque to other providers: a model's own reasoning summary.
            "reasoning" => {}
            other => unsupported(&format!("input[{i}].type = {other}"), opts)?,
        }
    }
    Ok(())
}

/// A message's content (a string, or parts) as chat content.
fn content(content: &Value, i: usize, opts: &Options) -> Result<Value> {
    let parts = match content {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(format!(
                "input[{i}].content must be a string or an array"
            )))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part["type"].as_str().unwrap_or_default() {
            "input_text" | "output_text" | "text" => {
                out.push(json!({"type": "text", "text": part["text"]}));
            }
            "refusal" => out.push(json!({"type": "text", "text": part["refusal"]})),
            "input_image" => match part["image_url"].as_str() {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(detail) = part["detail"].as_str() {
                        image["detail"] = json!(detail);
                    }
                    out.push(json!({"type": "image_url", "image_url": image}));
                }
                None => unsupported(&format!("input[{i}].content: input_image by file_id"), opts)?,
            },
            other => unsupported(&format!("input[{i}].content type {other}"), opts)?,
        }
    }
    Ok(Value::Array(out))
}

/// Function tools as chat tools; built-in tools (web search, file search,
/// code interpreter, …) are refused by name.
fn tools(tools: &Value, opts: &Options) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, tool) in tools.as_array().into_iter().flatten().enumerate() {
        match tool["type"].as_str().unwrap_or_default() {
            "function" => {
                let mut function = json!({"name": tool["name"], "parameters": tool["parameters"]});
                if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
                    function["description"] = d.clone();
                }
                if let Some(s) = tool.get("strict").filter(|s| !s.is_null()) {
                    function["strict"] = s.clone();
                }
                out.push(json!({"type": "function", "function": function}));
            }
            other => unsupported(
                &format!("tools[{i}].type = {other} (a built-in tool)"),
                opts,
            )?,
        }
    }
    Ok(out)
}

fn tool_choice(choice: &Value, opts: &Options) -> Result<Option<Value>> {
    Ok(match choice {
        Value::String(_) => Some(choice.clone()),
        v if v["type"] == "function" => {
            Some(json!({"type": "function", "function": {"name": v["name"]}}))
        }
        _ => {
            unsupported("tool_choice", opts)?;
            None
        }
    })
}

fn response_format(format: &Value, opts: &Options) -> Result<Option<Value>> {
    Ok(match format["type"].as_str() {
        None | Some("text") => None,
        Some("json_object") => Some(json!({"type": "json_object"})),
        Some("json_schema") => Some(json!({"type": "json_schema", "json_schema": {
            "name": format["name"], "schema": format["schema"], "strict": format["strict"],
        }})),
        Some(_) => {
            unsupported("text.format", opts)?;
            None
        }
    })
}

/// The Responses API's `usage` for a chat `usage`.
pub fn usage(chat: &Value) -> Value {
    let input = chat["prompt_tokens"].as_u64().unwrap_or(0);
    let output = chat["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": chat["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input.saturating_add(output),
    })
}

/// A response object: `status`, `incomplete_details` from a chat
/// `finish_reason`.
pub fn response_object(
    id: &str,
    model: &Value,
    created: &Value,
    output: Value,
    finish: Option<&str>,
    usage: Value,
) -> Value {
    let (status, incomplete) = match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        None => ("in_progress", Value::Null),
        Some(_) => ("completed", Value::Null),
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "background": false, "error": null, "incomplete_details": incomplete,
        "model": model, "output": output, "parallel_tool_calls": true,
        "previous_response_id": null, "store": false, "tools": [], "usage": usage,
        "metadata": {},
    })
}

/// A response id for a translated answer (nothing is stored upstream).
pub fn response_id(chat_id: &str) -> String {
    let bare = chat_id
        .trim_start_matches("chatcmpl-")
        .trim_start_matches("msg_");
    format!("resp_{bare}")
}

/// A whole chat completion as a Responses API response.
pub fn chat_to_response(chat: &Value) -> Value {
    let id = chat["id"].as_str().unwrap_or("gateway");
    let message = &chat["choices"][0]["message"];
    let mut output = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(json!({
            "type": "message", "id": format!("msg_{}", response_id(id).trim_start_matches("resp_")),
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(json!({
            "type": "function_call", "id": format!("fc_{}", call["id"].as_str().unwrap_or_default()),
            "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"], "status": "completed",
        }));
    }
    let finish = chat["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or("stop");
    response_object(
        &response_id(id),
        &chat["model"],
        &chat["created"],
        Value::Array(output),
        Some(finish),
        usage(&chat["usage"]),
    )
}
