//! Request bodies → Bedrock Converse (`POST /model/{modelId}/converse`,
//! the model in the path, not the body).
//!
//! Anthropic messages map to Converse almost block for block; an OpenAI
//! chat request goes through the OpenAI → Anthropic translation first (one
//! set of rules for roles, tool calls and images), its errors then naming
//! the Converse API. Like the other translators, messages are written one
//! at a time into the output (no `Value` tree of the whole request).

use serde_json::{json, Map, Value};

use super::API;
use crate::translate::request::{body, chat_to_messages_body};
use crate::translate::{invalid, Options, TranslateError};

type Result<T> = std::result::Result<T, TranslateError>;

fn unsupported(param: &str, opts: &Options) -> Result<()> {
    opts.refuse(param, API)
}

fn write(out: &mut Vec<u8>, v: &impl serde::Serialize) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// An OpenAI chat completions request as a Converse request.
pub fn chat_to_converse_body(body: &[u8], opts: &Options) -> Result<Vec<u8>> {
    // No `max_tokens` default (Converse needs none, and models' limits
    // differ): the inner step writes 0 for "unset".
    let inner = Options {
        default_max_tokens: 0,
        ..*opts
    };
    let anthropic = chat_to_messages_body(body, &inner, None).map_err(|e| match e {
        TranslateError::Unsupported { param, .. } => {
            TranslateError::Unsupported { param, api: API }
        }
        e => e,
    })?;
    converse(&anthropic, opts, true)
}

/// An Anthropic messages request as a Converse request.
pub fn messages_to_converse_body(body: &[u8], opts: &Options) -> Result<Vec<u8>> {
    converse(body, opts, false)
}

/// `zero_max_tokens_unset`: a `max_tokens` of 0 is the inner step's "unset".
fn converse(body: &[u8], opts: &Options, zero_max_tokens_unset: bool) -> Result<Vec<u8>> {
    let mut top = body::top_level(body)?;
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"messages\":[");
    let mut first = true;
    body::for_each_message(body, &top, &mut |i, m| {
        let role = match m["role"].as_str() {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].role must be `user` or `assistant`"
                )))
            }
        };
        let content = message_content(&m["content"], i, opts)?;
        if !first {
            out.push(b',');
        }
        first = false;
        write(&mut out, &json!({"role": role, "content": content}));
        Ok(())
    })?;
    out.push(b']');
    let system = top.params.remove("system");
    let params = converse_params(top.params, opts, zero_max_tokens_unset)?;
    if let Some(system) = system.filter(|s| !s.is_null()) {
        out.extend_from_slice(b",\"system\":");
        write(&mut out, &system_blocks(&system)?);
    }
    for (key, value) in &params {
        out.push(b',');
        write(&mut out, key);
        out.push(b':');
        write(&mut out, value);
    }
    out.push(b'}');
    Ok(out)
}

/// The Anthropic parameters other than `messages` and `system`.
fn converse_params(
    params: Map<String, Value>,
    opts: &Options,
    zero_max_tokens_unset: bool,
) -> Result<Map<String, Value>> {
    let mut inference = Map::new();
    let mut tools = None;
    let mut choice = None;
    for (key, value) in params {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            // The model is in the path, streaming is the endpoint's.
            "model" | "stream" => {}
            "max_tokens" => {
                if !(zero_max_tokens_unset && value.as_u64() == Some(0)) {
                    inference.insert("maxTokens".into(), value);
                }
            }
            "temperature" => {
                inference.insert("temperature".into(), value);
            }
            "top_p" => {
                inference.insert("topP".into(), value);
            }
            "stop_sequences" => {
                inference.insert("stopSequences".into(), value);
            }
            "tools" => tools = Some(converse_tools(value, opts)?),
            "tool_choice" => choice = converse_tool_choice(&value, opts)?,
            // Informational only; Converse has no such field.
            "metadata" => {}
            _ => unsupported(&key, opts)?,
        }
    }
    let mut out = Map::new();
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let mut config = json!({ "tools": tools });
        if let Some(c) = choice {
            config["toolChoice"] = c;
        }
        out.insert("toolConfig".into(), config);
    }
    Ok(out)
}

fn converse_tools(tools: Value, opts: &Options) -> Result<Vec<Value>> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for t in tools {
        if !matches!(t.get("type").and_then(Value::as_str), None | Some("custom")) {
            unsupported("tools[].type", opts)?;
            continue;
        }
        let name = t["name"]
            .as_str()
            .ok_or_else(|| invalid("every tool needs a `name`"))?;
        let schema = if t["input_schema"].is_object() {
            t["input_schema"].clone()
        } else {
            json!({"type": "object", "properties": {}})
        };
        let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
        if let Some(d) = t["description"].as_str().filter(|d| !d.is_empty()) {
            spec["description"] = json!(d);
        }
        out.push(json!({ "toolSpec": spec }));
        if t.get("cache_control").is_some_and(|c| !c.is_null()) {
            out.push(cache_point());
        }
    }
    Ok(out)
}

fn converse_tool_choice(choice: &Value, opts: &Options) -> Result<Option<Value>> {
    if choice["disable_parallel_tool_use"] == json!(true) {
        unsupported("tool_choice.disable_parallel_tool_use", opts)?;
    }
    Ok(match choice["type"].as_str() {
        Some("auto") => Some(json!({"auto": {}})),
        Some("any") => Some(json!({"any": {}})),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => Some(json!({"tool": {"name": name}})),
            None => return Err(invalid("`tool_choice` must name a tool")),
        },
        // Converse cannot forbid tool use while tools are offered.
        Some("none") => {
            unsupported("tool_choice", opts)?;
            None
        }
        _ => return Err(invalid("unknown `tool_choice.type`")),
    })
}

fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

fn has_cache_control(b: &Value) -> bool {
    b.get("cache_control").is_some_and(|c| !c.is_null())
}

/// `system`: a string or text blocks (a `cache_control` adds a cache point).
fn system_blocks(system: &Value) -> Result<Vec<Value>> {
    match system {
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({ "text": s })]),
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for b in blocks {
                match (b["type"].as_str(), b["text"].as_str()) {
                    (Some("text"), Some(t)) => {
                        if !t.is_empty() {
                            out.push(json!({ "text": t }));
                        }
                        if has_cache_control(b) {
                            out.push(cache_point());
                        }
                    }
                    _ => return Err(invalid("system: only text blocks are supported")),
                }
            }
            Ok(out)
        }
        _ => Err(invalid("system has the wrong type")),
    }
}

/// A message's content as Converse content blocks.
fn message_content(content: &Value, i: usize, opts: &Options) -> Result<Vec<Value>> {
    let blocks = match content {
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({ "text": s })]),
        Value::Array(b) => b,
        _ => return Err(invalid(format!("messages[{i}].content has the wrong type"))),
    };
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let kind = b["type"].as_str().unwrap_or_default();
        match kind {
            "text" => {
                let text = b["text"].as_str().unwrap_or_default();
                if !text.is_empty() {
                    out.push(json!({ "text": text }));
                }
            }
            "image" => match image(&b["source"], i, opts)? {
                Some(img) => out.push(img),
                None => continue,
            },
            "tool_use" => out.push(json!({"toolUse": {
                "toolUseId": b["id"].as_str().unwrap_or_default(),
                "name": b["name"].as_str().unwrap_or_default(),
                "input": if b["input"].is_object() { b["input"].clone() } else { json!({}) },
            }})),
            "tool_result" => {
                let mut result = json!({
                    "toolUseId": b["tool_use_id"].as_str().unwrap_or_default(),
                    "content": tool_result_content(&b["content"], i, opts)?,
                });
                if b["is_error"] == json!(true) {
                    result["status"] = json!("error");
                }
                out.push(json!({ "toolResult": result }));
            }
            other => {
                unsupported(&format!("messages[{i}].content[].type={other}"), opts)?;
                continue;
            }
        }
        if has_cache_control(b) {
            out.push(cache_point());
        }
    }
    Ok(out)
}

fn tool_result_content(content: &Value, i: usize, opts: &Options) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({ "text": s })]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => {
                        out.push(json!({"text": p["text"].as_str().unwrap_or_default()}))
                    }
                    Some("image") => {
                        if let Some(img) = image(&p["source"], i, opts)? {
                            out.push(img);
                        }
                    }
                    other => unsupported(
                        &format!(
                            "messages[{i}].content[].tool_result.content[].type={}",
                            other.unwrap_or_default()
                        ),
                        opts,
                    )?,
                }
            }
            Ok(out)
        }
        _ => Err(invalid(format!(
            "messages[{i}].tool_result content has the wrong type"
        ))),
    }
}

/// An Anthropic image source as a Converse image block (`None`: dropped).
fn image(source: &Value, i: usize, opts: &Options) -> Result<Option<Value>> {
    match source["type"].as_str() {
        Some("base64") => {
            let format = match source["media_type"].as_str().unwrap_or_default() {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => {
                    return Err(invalid(format!(
                    "messages[{i}]: image type `{other}` is not supported (png, jpeg, gif, webp)"
                )))
                }
            };
            Ok(Some(json!({"image": {
                "format": format,
                "source": {"bytes": source["data"].as_str().unwrap_or_default()},
            }})))
        }
        // Converse takes image bytes (or S3 objects), not URLs.
        Some("url") => {
            unsupported(&format!("messages[{i}].content[].image_url"), opts)?;
            Ok(None)
        }
        _ => Err(invalid(format!("messages[{i}]: unknown image source"))),
    }
}
