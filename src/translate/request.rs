//! Request bodies: OpenAI chat completions ↔ Anthropic messages.
//!
//! Every top-level parameter is either mapped, or refused with a 400 naming
//! it (dropped instead when the route says so). A `null` parameter counts
//! as absent, as both APIs treat it.
//!
//! Memory: the translated body is written as it is made, one message at a
//! time ([`body`]), so translating a request costs about its output's size
//! (plus one message), not a JSON tree of the whole conversation.

use serde_json::{json, Map, Value};

use super::{invalid, Options, TranslateError};

pub(in crate::translate) mod body;

type Result<T> = std::result::Result<T, TranslateError>;

/// A fresh output buffer: about twice the body, so it rarely grows (pages
/// never written are not resident).
fn output_for(body: &[u8]) -> Vec<u8> {
    Vec::with_capacity(body.len().saturating_mul(2).saturating_add(256))
}

/// Writes `v` to `out` (serializing a `Value` or a string cannot fail).
fn write(out: &mut Vec<u8>, v: &impl serde::Serialize) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Ends the object whose `"messages":[…]` is already in `out` with the
/// other parameters, `model` (when given) overriding the client's.
fn finish(mut out: Vec<u8>, mut params: Map<String, Value>, model: Option<&str>) -> Vec<u8> {
    if let Some(model) = model {
        params.insert("model".into(), Value::String(model.into()));
    }
    for (key, value) in &params {
        out.push(b',');
        write(&mut out, key);
        out.push(b':');
        write(&mut out, value);
    }
    out.push(b'}');
    out
}

/// Refuses `param`, or lets it be dropped when the route allows that.
fn unsupported(param: &str, api: &'static str, opts: &Options) -> Result<()> {
    opts.refuse(param, api)
}

// ---------------------------------------------------------------------------
// OpenAI chat completions → Anthropic messages

/// An OpenAI chat completions request as an Anthropic messages request.
pub fn chat_to_messages(body: &[u8], opts: &Options) -> Result<Value> {
    let out = chat_to_messages_body(body, opts, None)?;
    serde_json::from_slice(&out).map_err(|e| invalid(e.to_string()))
}

/// [`chat_to_messages`] as the body to send, with `model` (when given)
/// instead of the client's.
pub fn chat_to_messages_body(body: &[u8], opts: &Options, model: Option<&str>) -> Result<Vec<u8>> {
    let top = body::top_level(body)?;
    let mut out = output_for(body);
    write_anthropic_messages(body, &top, opts, &mut out)?;
    let params = anthropic_params(top.params, opts)?;
    Ok(finish(out, params, model))
}

/// Writes `{"messages":[…]` (and `"system":[…]` when there is any) to
/// `out`, a message at a time.
fn write_anthropic_messages(
    body: &[u8],
    top: &body::Top,
    opts: &Options,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.extend_from_slice(b"{\"messages\":[");
    let mut system = Vec::new();
    let mut open: Option<&'static str> = None;
    let mut blocks_in_open = 0usize;
    body::for_each_message(body, top, &mut |i, m| {
        let (role, blocks) = chat_message(m, i, opts)?;
        let Some(role) = role else {
            for b in blocks {
                if !system.is_empty() {
                    system.push(b',');
                }
                write(&mut system, &b);
            }
            return Ok(());
        };
        // Consecutive messages of the same role are merged (Anthropic alternates).
        if open != Some(role) {
            if open.is_some() {
                out.extend_from_slice(b"]},");
            }
            out.extend_from_slice(b"{\"role\":\"");
            out.extend_from_slice(role.as_bytes());
            out.extend_from_slice(b"\",\"content\":[");
            open = Some(role);
            blocks_in_open = 0;
        }
        for b in blocks {
            if blocks_in_open > 0 {
                out.push(b',');
            }
            write(out, &b);
            blocks_in_open += 1;
        }
        Ok(())
    })?;
    if open.is_some() {
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    if !system.is_empty() {
        out.extend_from_slice(b",\"system\":[");
        out.extend_from_slice(&system);
        out.push(b']');
    }
    Ok(())
}

/// The OpenAI parameters other than `messages` as Anthropic's.
fn anthropic_params(chat: Map<String, Value>, opts: &Options) -> Result<Map<String, Value>> {
    const API: &str = "Anthropic Messages";
    let mut params = Map::new();
    let mut max_tokens: Option<Value> = None;
    let mut parallel_tool_calls: Option<bool> = None;
    let mut tool_choice: Option<Value> = None;
    for (key, value) in chat {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "temperature" | "top_p" | "stream" => {
                params.insert(key, value);
            }
            "max_completion_tokens" => max_tokens = Some(value),
            "max_tokens" => {
                max_tokens.get_or_insert(value);
            }
            "stop" => {
                let seqs = match value {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) => a,
                    _ => return Err(invalid("`stop` must be a string or an array of strings")),
                };
                params.insert("stop_sequences".into(), Value::Array(seqs));
            }
            "tools" => {
                params.insert("tools".into(), Value::Array(chat_tools(value, opts)?));
            }
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => parallel_tool_calls = value.as_bool(),
            "user" => {
                params.insert("metadata".into(), json!({ "user_id": value }));
            }
            // The translated stream always carries usage; the gateway
            // decides whether the client sees it.
            "stream_options" => {}
            "n" if value.as_u64() == Some(1) => {}
            _ => unsupported(&key, API, opts)?,
        }
    }
    params.insert(
        "max_tokens".into(),
        max_tokens.unwrap_or_else(|| json!(opts.default_max_tokens)),
    );
    if let Some(choice) = anthropic_tool_choice(tool_choice, parallel_tool_calls)? {
        params.insert("tool_choice".into(), choice);
    }
    Ok(params)
}

/// OpenAI's `tool_choice` and `parallel_tool_calls` as Anthropic's
/// `tool_choice` (`None`: leave it out).
fn anthropic_tool_choice(
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
) -> Result<Option<Value>> {
    let choice = match tool_choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            other => return Err(invalid(format!("unknown tool_choice `{other}`"))),
        },
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err(invalid("`tool_choice` must name a function")),
        },
    };
    Ok(match (choice, parallel_tool_calls) {
        (Some(mut c), Some(false)) => {
            c["disable_parallel_tool_use"] = json!(true);
            Some(c)
        }
        (None, Some(false)) => Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        (c, _) => c,
    })
}

fn chat_tools(tools: Value, opts: &Options) -> Result<Vec<Value>> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        if tool["type"] != "function" {
            unsupported("tools[].type", "Anthropic Messages", opts)?;
            continue;
        }
        let f = &tool["function"];
        let name = f["name"]
            .as_str()
            .ok_or_else(|| invalid("every tool needs `function.name`"))?;
        let mut t = json!({
            "name": name,
            "input_schema": if f["parameters"].is_object() {
                f["parameters"].clone()
            } else {
                json!({"type": "object", "properties": {}})
            },
        });
        if let Some(d) = f["description"].as_str() {
            t["description"] = json!(d);
        }
        out.push(t);
    }
    Ok(out)
}

/// OpenAI message `i` → its Anthropic role (`None`: a `system` block)
/// and content blocks.
fn chat_message(m: Value, i: usize, opts: &Options) -> Result<(Option<&'static str>, Vec<Value>)> {
    let role = m["role"].as_str().unwrap_or_default();
    let blocks = match role {
        "system" | "developer" => return Ok((None, text_blocks(&m["content"], i)?)),
        "user" => user_blocks(&m["content"], i, opts)?,
        "assistant" => {
            let mut blocks = text_blocks(&m["content"], i)?;
            if let Some(calls) = m["tool_calls"].as_array() {
                for call in calls {
                    let f = &call["function"];
                    let args = f["arguments"].as_str().unwrap_or("{}");
                    let input: Value = if args.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|_| {
                            invalid(format!(
                                "messages[{i}].tool_calls: `arguments` is not valid JSON"
                            ))
                        })?
                    };
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"].as_str().unwrap_or_default(),
                        "name": f["name"].as_str().unwrap_or_default(),
                        "input": input,
                    }));
                }
            }
            blocks
        }
        "tool" => {
            let content = match &m["content"] {
                Value::String(s) => json!(s),
                v => Value::Array(text_blocks(v, i)?),
            };
            vec![json!({
                "type": "tool_result",
                "tool_use_id": m["tool_call_id"].as_str().unwrap_or_default(),
                "content": content,
            })]
        }
        other => {
            return Err(invalid(format!(
                "messages[{i}]: role `{other}` cannot be sent to an Anthropic model"
            )))
        }
    };
    let role = if role == "assistant" {
        "assistant"
    } else {
        "user"
    };
    Ok((Some(role), blocks))
}

/// Text-only content (system, assistant, tool): a string or text parts.
fn text_blocks(content: &Value, i: usize) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") | Some("refusal") => {
                    let text = p["text"].as_str().or(p["refusal"].as_str());
                    Ok(json!({"type": "text", "text": text.unwrap_or_default()}))
                }
                _ => Err(invalid(format!(
                    "messages[{i}]: only text content is allowed in this message"
                ))),
            })
            .collect(),
        _ => Err(invalid(format!("messages[{i}].content has the wrong type"))),
    }
}

/// User content: text and images (by URL or base64 data URL).
fn user_blocks(content: &Value, i: usize, opts: &Options) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_blocks(content, i);
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p["type"].as_str() {
            Some("text") => out.push(json!({"type": "text", "text": p["text"]})),
            Some("image_url") => {
                let url = p["image_url"]["url"]
                    .as_str()
                    .or(p["image_url"].as_str())
                    .ok_or_else(|| invalid(format!("messages[{i}]: image_url needs a url")))?;
                out.push(json!({"type": "image", "source": image_source(url, i)?}));
            }
            Some(other) => unsupported(
                &format!("messages[{i}].content[].type={other}"),
                "Anthropic Messages",
                opts,
            )?,
            None => {
                return Err(invalid(format!(
                    "messages[{i}]: content part without a type"
                )))
            }
        }
    }
    Ok(out)
}

fn image_source(url: &str, i: usize) -> Result<Value> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "url", "url": url}));
    };
    let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
        invalid(format!(
            "messages[{i}]: only base64 data URLs are supported"
        ))
    })?;
    Ok(json!({"type": "base64", "media_type": media_type, "data": data}))
}

// ---------------------------------------------------------------------------
// Anthropic messages → OpenAI chat completions

/// An Anthropic messages request as an OpenAI chat completions request.
pub fn messages_to_chat(body: &[u8], opts: &Options) -> Result<Value> {
    let out = messages_to_chat_body(body, opts, None)?;
    serde_json::from_slice(&out).map_err(|e| invalid(e.to_string()))
}

/// [`messages_to_chat`] as the body to send, with `model` (when given)
/// instead of the client's.
pub fn messages_to_chat_body(body: &[u8], opts: &Options, model: Option<&str>) -> Result<Vec<u8>> {
    let mut top = body::top_level(body)?;
    let mut out = output_for(body);
    write_chat_messages(body, &mut top, opts, &mut out)?;
    let params = chat_params(top.params, opts)?;
    Ok(finish(out, params, model))
}

/// Writes `{"messages":[…]` to `out`, a message at a time, starting with
/// the `system` parameter (taken out of `top`) as a system message.
fn write_chat_messages(
    body: &[u8],
    top: &mut body::Top,
    opts: &Options,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.extend_from_slice(b"{\"messages\":[");
    let mut first = true;
    if let Some(system) = top.params.remove("system").filter(|s| !s.is_null()) {
        let text = joined_text(&system, "system")?;
        write(out, &json!({"role": "system", "content": text}));
        first = false;
    }
    let mut chat = Vec::new();
    body::for_each_message(body, top, &mut |i, m| {
        anthropic_message(m, i, opts, &mut chat)?;
        for v in chat.drain(..) {
            if !first {
                out.push(b',');
            }
            write(out, &v);
            first = false;
        }
        Ok(())
    })?;
    out.push(b']');
    Ok(())
}

/// The Anthropic parameters other than `messages` and `system` as OpenAI's.
fn chat_params(anthropic: Map<String, Value>, opts: &Options) -> Result<Map<String, Value>> {
    const API: &str = "OpenAI Chat Completions";
    let mut params = Map::new();
    let mut disable_parallel = false;
    for (key, value) in anthropic {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "temperature" | "top_p" | "max_tokens" => {
                params.insert(key, value);
            }
            "stream" => {
                if value == json!(true) {
                    params.insert("stream_options".into(), json!({"include_usage": true}));
                }
                params.insert(key, value);
            }
            "stop_sequences" => {
                params.insert("stop".into(), value);
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| !u.is_null()) {
                    params.insert("user".into(), user.clone());
                }
            }
            "tools" => {
                params.insert("tools".into(), Value::Array(anthropic_tools(value, opts)?));
            }
            "tool_choice" => {
                disable_parallel = value["disable_parallel_tool_use"] == json!(true);
                params.insert("tool_choice".into(), chat_tool_choice(&value)?);
            }
            _ => unsupported(&key, API, opts)?,
        }
    }
    if disable_parallel {
        params.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(params)
}

/// Anthropic `tools` as OpenAI function tools.
fn anthropic_tools(tools: Value, opts: &Options) -> Result<Vec<Value>> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array"));
    };
    let mut list = Vec::with_capacity(tools.len());
    for t in tools {
        // Custom tools have no type (or "custom"); others are
        // Anthropic-hosted tools OpenAI cannot run.
        if !matches!(t.get("type").and_then(Value::as_str), None | Some("custom")) {
            unsupported("tools[].type", "OpenAI Chat Completions", opts)?;
            continue;
        }
        let mut f = json!({
            "name": t["name"],
            "parameters": t["input_schema"],
        });
        if let Some(d) = t["description"].as_str() {
            f["description"] = json!(d);
        }
        list.push(json!({"type": "function", "function": f}));
    }
    Ok(list)
}

/// Anthropic's `tool_choice` as OpenAI's.
fn chat_tool_choice(choice: &Value) -> Result<Value> {
    Ok(match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
        _ => return Err(invalid("unknown `tool_choice.type`")),
    })
}

/// The text of a string or of text blocks, joined.
fn joined_text(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = Vec::with_capacity(blocks.len());
            for b in blocks {
                match (b["type"].as_str(), b["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push(t),
                    _ => return Err(invalid(format!("{what}: only text blocks are supported"))),
                }
            }
            Ok(text.join("\n\n"))
        }
        _ => Err(invalid(format!("{what} has the wrong type"))),
    }
}

/// One Anthropic message → one or more OpenAI messages (tool results
/// become `tool` messages, placed first as OpenAI requires).
fn anthropic_message(m: Value, i: usize, opts: &Options, chat: &mut Vec<Value>) -> Result<()> {
    let role = m["role"].as_str().unwrap_or_default().to_string();
    let blocks = match &m["content"] {
        Value::String(s) => {
            chat.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(invalid(format!("messages[{i}].content has the wrong type"))),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b["type"].as_str().unwrap_or_default() {
            "text" => parts.push(json!({"type": "text", "text": b["text"]})),
            "image" => {
                let s = &b["source"];
                let url = match s["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        s["media_type"].as_str().unwrap_or("image/png"),
                        s["data"].as_str().unwrap_or_default()
                    ),
                    Some("url") => s["url"].as_str().unwrap_or_default().to_string(),
                    _ => return Err(invalid(format!("messages[{i}]: unknown image source"))),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            "tool_use" => calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            "tool_result" => {
                let content = match &b["content"] {
                    Value::Null => String::new(),
                    v => joined_text(v, &format!("messages[{i}].tool_result"))?,
                };
                chat.push(json!({
                    "role": "tool",
                    "tool_call_id": b["tool_use_id"],
                    "content": content,
                }));
            }
            other => unsupported(
                &format!("messages[{i}].content[].type={other}"),
                "OpenAI Chat Completions",
                opts,
            )?,
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text.concat()) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        chat.push(msg);
    } else if !parts.is_empty() {
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = if only_text && parts.len() == 1 {
            parts[0]["text"].clone()
        } else {
            Value::Array(parts)
        };
        chat.push(json!({"role": role, "content": content}));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
