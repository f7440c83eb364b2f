//! Request bodies: OpenAI chat completions and Anthropic messages →
//! Gemini `generateContent`.
//!
//! Messages become `contents` (roles `user` / `model`, consecutive turns of
//! one role merged), system text becomes `systemInstruction`, tools become
//! one `functionDeclarations` tool (the client's JSON schema as
//! `parametersJsonSchema`), `tool_choice` becomes
//! `toolConfig.functionCallingConfig`, sampling parameters go into
//! `generationConfig`. Gemini's function responses carry the function's
//! name, not a call id: each tool result is matched by id to the call the
//! conversation made earlier. Every other parameter is refused with a 400
//! naming it (dropped instead when the route says so); `null` counts as
//! absent.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::translate::{invalid, Options, TranslateError};

type Result<T> = std::result::Result<T, TranslateError>;

const API: &str = "Gemini generateContent";

fn unsupported(param: &str, opts: &Options) -> Result<()> {
    opts.refuse(param, API)
}

/// The body's top-level object.
fn object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("the request body must be a JSON object")),
        Err(e) => Err(invalid(format!("request body is not valid JSON: {e}"))),
    }
}

/// `contents` built a turn at a time: a part for the same role as the last
/// one joins its turn (Gemini wants function responses to one turn's calls
/// together, and alternating roles).
#[derive(Default)]
struct Contents {
    turns: Vec<Value>,
    /// Call id → function name, for the tool results that follow.
    calls: HashMap<String, String>,
}

impl Contents {
    fn push(&mut self, role: &str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        if let Some(last) = self.turns.last_mut().filter(|t| t["role"] == role) {
            if let Some(p) = last["parts"].as_array_mut() {
                p.extend(parts);
                return;
            }
        }
        self.turns.push(json!({"role": role, "parts": parts}));
    }

    fn call(&mut self, id: &str, name: &str, args: Value) -> Value {
        if !id.is_empty() {
            self.calls.insert(id.to_string(), name.to_string());
        }
        json!({"functionCall": {"name": name, "args": args}})
    }

    fn response(&self, id: &str, response: Value, i: usize) -> Result<Value> {
        let name = self.calls.get(id).ok_or_else(|| {
            invalid(format!(
                "messages[{i}]: the tool result `{id}` answers no earlier tool call"
            ))
        })?;
        Ok(json!({"functionResponse": {"name": name, "response": response}}))
    }
}

/// A tool's output as Gemini's `response` object: a JSON object as is,
/// anything else under `content`.
fn response_object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    }
}

/// A base64 data URL as an `inlineData` part.
fn inline_data(url: &str, i: usize) -> Result<Value> {
    let (mime, data) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            invalid(format!(
                "messages[{i}]: images must be base64 data URLs for a Gemini model"
            ))
        })?;
    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
}

/// One function declaration.
fn declaration(name: &Value, description: &Value, schema: &Value) -> Result<Value> {
    let name = name
        .as_str()
        .ok_or_else(|| invalid("every tool needs a name"))?;
    let mut d = json!({"name": name});
    if let Some(text) = description.as_str() {
        d["description"] = json!(text);
    }
    if schema.is_object() {
        d["parametersJsonSchema"] = schema.clone();
    }
    Ok(d)
}

/// `toolConfig` for a mode, limited to one function when named.
fn tool_config(mode: &str, only: Option<&str>) -> Value {
    let mut c = json!({ "mode": mode });
    if let Some(name) = only {
        c["allowedFunctionNames"] = json!([name]);
    }
    json!({ "functionCallingConfig": c })
}

/// Assembles the request from its pieces (`generationConfig` left out when empty).
fn assemble(
    contents: Contents,
    system: Vec<Value>,
    generation: Map<String, Value>,
    mut extra: Map<String, Value>,
) -> Vec<u8> {
    extra.insert("contents".into(), Value::Array(contents.turns));
    if !system.is_empty() {
        extra.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if !generation.is_empty() {
        extra.insert("generationConfig".into(), Value::Object(generation));
    }
    serde_json::to_vec(&extra).unwrap_or_default()
}

/// `stop` or `stop_sequences` as `stopSequences`.
fn stop_sequences(value: Value) -> Result<Value> {
    match value {
        s @ Value::String(_) => Ok(json!([s])),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(Value::Array(a)),
        _ => Err(invalid("stop sequences must be a string or strings")),
    }
}

// ---------------------------------------------------------------------------
// OpenAI chat completions → Gemini

/// An OpenAI chat completions request as a Gemini `generateContent` body.
pub fn chat_to_gemini(body: &[u8], opts: &Options) -> Result<Vec<u8>> {
    let top = object(body)?;
    let mut contents = Contents::default();
    let mut system = Vec::new();
    let mut generation = Map::new();
    let mut extra = Map::new();
    let mut max_tokens = None;
    let mut messages = None;
    for (key, value) in top {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "messages" => messages = Some(value),
            "model" | "stream" | "stream_options" | "user" => {}
            "temperature" => {
                generation.insert("temperature".into(), value);
            }
            "top_p" => {
                generation.insert("topP".into(), value);
            }
            "seed" => {
                generation.insert("seed".into(), value);
            }
            "presence_penalty" => {
                generation.insert("presencePenalty".into(), value);
            }
            "frequency_penalty" => {
                generation.insert("frequencyPenalty".into(), value);
            }
            "max_completion_tokens" => max_tokens = Some(value),
            "max_tokens" => {
                max_tokens.get_or_insert(value);
            }
            "stop" => {
                generation.insert("stopSequences".into(), stop_sequences(value)?);
            }
            "n" if value.as_u64() == Some(1) => {}
            "parallel_tool_calls" if value == json!(true) => {}
            "response_format" => response_format(&value, &mut generation, opts)?,
            "tools" => {
                if let Some(tools) = chat_tools(value, opts)? {
                    extra.insert("tools".into(), tools);
                }
            }
            "tool_choice" => {
                extra.insert("toolConfig".into(), chat_tool_choice(&value)?);
            }
            _ => unsupported(&key, opts)?,
        }
    }
    if let Some(n) = max_tokens {
        generation.insert("maxOutputTokens".into(), n);
    }
    let Some(Value::Array(messages)) = messages else {
        return Err(invalid("`messages` must be an array"));
    };
    for (i, m) in messages.iter().enumerate() {
        chat_message(m, i, opts, &mut contents, &mut system)?;
    }
    Ok(assemble(contents, system, generation, extra))
}

fn response_format(v: &Value, generation: &mut Map<String, Value>, opts: &Options) -> Result<()> {
    match v["type"].as_str() {
        Some("text") => {}
        Some("json_object") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            let schema = &v["json_schema"]["schema"];
            if schema.is_object() {
                generation.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => unsupported("response_format.type", opts)?,
    }
    Ok(())
}

fn chat_tools(tools: Value, opts: &Options) -> Result<Option<Value>> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array"));
    };
    let mut decls = Vec::with_capacity(tools.len());
    for tool in &tools {
        if tool["type"] != "function" {
            unsupported("tools[].type", opts)?;
            continue;
        }
        let f = &tool["function"];
        decls.push(declaration(
            &f["name"],
            &f["description"],
            &f["parameters"],
        )?);
    }
    Ok((!decls.is_empty()).then(|| json!([{ "functionDeclarations": decls }])))
}

fn chat_tool_choice(choice: &Value) -> Result<Value> {
    Ok(match choice {
        Value::String(s) => match s.as_str() {
            "auto" => tool_config("AUTO", None),
            "required" => tool_config("ANY", None),
            "none" => tool_config("NONE", None),
            other => return Err(invalid(format!("unknown tool_choice `{other}`"))),
        },
        v => match v["function"]["name"].as_str() {
            Some(name) => tool_config("ANY", Some(name)),
            None => return Err(invalid("`tool_choice` must name a function")),
        },
    })
}

/// Text-only content (system, assistant, tool): a string or text parts.
fn chat_text(content: &Value, i: usize) -> Result<Vec<String>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") | Some("refusal") => Ok(p["text"]
                    .as_str()
                    .or(p["refusal"].as_str())
                    .unwrap_or_default()
                    .to_string()),
                _ => Err(invalid(format!(
                    "messages[{i}]: only text content is allowed in this message"
                ))),
            })
            .collect(),
        _ => Err(invalid(format!("messages[{i}].content has the wrong type"))),
    }
}

fn text_parts(texts: Vec<String>) -> Vec<Value> {
    texts.into_iter().map(|t| json!({ "text": t })).collect()
}

fn chat_message(
    m: &Value,
    i: usize,
    opts: &Options,
    contents: &mut Contents,
    system: &mut Vec<Value>,
) -> Result<()> {
    match m["role"].as_str().unwrap_or_default() {
        "system" | "developer" => system.extend(text_parts(chat_text(&m["content"], i)?)),
        "user" => {
            let parts = match &m["content"] {
                Value::Array(parts) => chat_user_parts(parts, i, opts)?,
                other => text_parts(chat_text(other, i)?),
            };
            contents.push("user", parts);
        }
        "assistant" => {
            let mut parts = text_parts(chat_text(&m["content"], i)?);
            for call in m["tool_calls"].as_array().into_iter().flatten() {
                let f = &call["function"];
                let args = f["arguments"].as_str().unwrap_or("{}");
                let args: Value = if args.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(args).map_err(|_| {
                        invalid(format!(
                            "messages[{i}].tool_calls: `arguments` is not valid JSON"
                        ))
                    })?
                };
                let id = call["id"].as_str().unwrap_or_default();
                let name = f["name"].as_str().unwrap_or_default();
                parts.push(contents.call(id, name, args));
            }
            contents.push("model", parts);
        }
        "tool" => {
            let text = chat_text(&m["content"], i)?.concat();
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            let part = contents.response(id, response_object(&text), i)?;
            contents.push("user", vec![part]);
        }
        other => {
            return Err(invalid(format!(
                "messages[{i}]: role `{other}` cannot be sent to a Gemini model"
            )))
        }
    }
    Ok(())
}

fn chat_user_parts(parts: &[Value], i: usize, opts: &Options) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p["type"].as_str() {
            Some("text") => out.push(json!({"text": p["text"].as_str().unwrap_or_default()})),
            Some("image_url") => {
                let url = p["image_url"]["url"]
                    .as_str()
                    .or(p["image_url"].as_str())
                    .ok_or_else(|| invalid(format!("messages[{i}]: image_url needs a url")))?;
                out.push(inline_data(url, i)?);
            }
            Some(other) => unsupported(&format!("messages[{i}].content[].type={other}"), opts)?,
            None => {
                return Err(invalid(format!(
                    "messages[{i}]: content part without a type"
                )))
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Anthropic messages → Gemini

/// An Anthropic messages request as a Gemini `generateContent` body.
pub fn messages_to_gemini(body: &[u8], opts: &Options) -> Result<Vec<u8>> {
    let top = object(body)?;
    let mut contents = Contents::default();
    let mut system = Vec::new();
    let mut generation = Map::new();
    let mut extra = Map::new();
    let mut messages = None;
    for (key, value) in top {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "messages" => messages = Some(value),
            "model" | "stream" | "metadata" => {}
            "system" => system = anthropic_system(&value)?,
            "max_tokens" => {
                generation.insert("maxOutputTokens".into(), value);
            }
            "temperature" => {
                generation.insert("temperature".into(), value);
            }
            "top_p" => {
                generation.insert("topP".into(), value);
            }
            "top_k" => {
                generation.insert("topK".into(), value);
            }
            "stop_sequences" => {
                generation.insert("stopSequences".into(), stop_sequences(value)?);
            }
            "tools" => {
                if let Some(tools) = anthropic_tools(value, opts)? {
                    extra.insert("tools".into(), tools);
                }
            }
            "tool_choice" => {
                if value["disable_parallel_tool_use"] == json!(true) {
                    unsupported("tool_choice.disable_parallel_tool_use", opts)?;
                }
                extra.insert("toolConfig".into(), anthropic_tool_choice(&value)?);
            }
            _ => unsupported(&key, opts)?,
        }
    }
    let Some(Value::Array(messages)) = messages else {
        return Err(invalid("`messages` must be an array"));
    };
    for (i, m) in messages.iter().enumerate() {
        anthropic_message(m, i, opts, &mut contents)?;
    }
    Ok(assemble(contents, system, generation, extra))
}

/// A string or text blocks, joined.
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

fn anthropic_system(v: &Value) -> Result<Vec<Value>> {
    let text = joined_text(v, "system")?;
    Ok(if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "text": text })]
    })
}

fn anthropic_tools(tools: Value, opts: &Options) -> Result<Option<Value>> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array"));
    };
    let mut decls = Vec::with_capacity(tools.len());
    for t in &tools {
        if !matches!(t.get("type").and_then(Value::as_str), None | Some("custom")) {
            unsupported("tools[].type", opts)?;
            continue;
        }
        decls.push(declaration(
            &t["name"],
            &t["description"],
            &t["input_schema"],
        )?);
    }
    Ok((!decls.is_empty()).then(|| json!([{ "functionDeclarations": decls }])))
}

fn anthropic_tool_choice(choice: &Value) -> Result<Value> {
    Ok(match choice["type"].as_str() {
        Some("auto") => tool_config("AUTO", None),
        Some("any") => tool_config("ANY", None),
        Some("none") => tool_config("NONE", None),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => tool_config("ANY", Some(name)),
            None => return Err(invalid("`tool_choice` of type `tool` needs a name")),
        },
        _ => return Err(invalid("unknown `tool_choice.type`")),
    })
}

fn anthropic_message(m: &Value, i: usize, opts: &Options, contents: &mut Contents) -> Result<()> {
    let role = match m["role"].as_str() {
        Some("user") => "user",
        Some("assistant") => "model",
        _ => {
            return Err(invalid(format!(
                "messages[{i}].role must be user or assistant"
            )))
        }
    };
    let blocks = match &m["content"] {
        Value::String(s) => {
            contents.push(role, vec![json!({ "text": s })]);
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(invalid(format!("messages[{i}].content has the wrong type"))),
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for b in blocks {
        match b["type"].as_str().unwrap_or_default() {
            "text" => parts.push(json!({"text": b["text"].as_str().unwrap_or_default()})),
            "image" => {
                let s = &b["source"];
                if s["type"] != "base64" {
                    return Err(invalid(format!(
                        "messages[{i}]: images must be base64 for a Gemini model"
                    )));
                }
                parts.push(json!({"inlineData": {
                    "mimeType": s["media_type"].as_str().unwrap_or("image/png"),
                    "data": s["data"].as_str().unwrap_or_default(),
                }}));
            }
            "tool_use" => {
                let id = b["id"].as_str().unwrap_or_default();
                let name = b["name"].as_str().unwrap_or_default();
                let args = if b["input"].is_object() {
                    b["input"].clone()
                } else {
                    json!({})
                };
                parts.push(contents.call(id, name, args));
            }
            "tool_result" => {
                let text = match &b["content"] {
                    Value::Null => String::new(),
                    v => joined_text(v, &format!("messages[{i}].tool_result"))?,
                };
                let response = if b["is_error"] == json!(true) {
                    json!({ "error": text })
                } else {
                    response_object(&text)
                };
                let id = b["tool_use_id"].as_str().unwrap_or_default();
                parts.push(contents.response(id, response, i)?);
            }
            // The model's own reasoning: Gemini takes none back.
            "thinking" | "redacted_thinking" => {}
            other => unsupported(&format!("messages[{i}].content[].type={other}"), opts)?,
        }
    }
    contents.push(role, parts);
    Ok(())
}
