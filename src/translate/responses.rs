//! OpenAI Responses API ids that say where they were made.
//!
//! A stored response lives with the provider — and the API key — that
//! created it: `GET`/`DELETE /v1/responses/{id}` and `previous_response_id`
//! must reach that one. The gateway keeps no map for that (nothing to lose
//! on a restart, nothing to share between replicas): the id the client
//! sees is the upstream's with a tag appended, `{id}_h3g` and 24 hex
//! digits: a hash of the provider's name, of the key's (its id, never the
//! key) and of the client's gateway key, so one client cannot reach
//! another's response through the gateway's shared upstream key.

use serde_json::Value;

use crate::sse::{encode, Event};

pub mod chat;
pub mod stream;

const MARK: &str = "_h3g";

/// Where a response was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseTag {
    /// [`ResponseTag::hash`] of the provider's name.
    pub provider: u32,
    /// The upstream key's id as a number (0: no key).
    pub key: u32,
    /// The client's gateway key (0: none).
    pub owner: u32,
}

impl ResponseTag {
    /// The first four bytes of `text`'s SHA-256.
    pub fn hash(text: &str) -> u32 {
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        u32::from_be_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]])
    }

    /// The leading 8 hex digits of a hex digest (a key id's, a client
    /// key's SHA-256) as a number; 0 for none.
    pub fn from_hex(hex: &str) -> u32 {
        hex.get(..8)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    }

    /// `id` as the client sees it.
    pub fn tag(&self, id: &str) -> String {
        format!(
            "{id}{MARK}{:08x}{:08x}{:08x}",
            self.provider, self.key, self.owner
        )
    }

    /// A tagged id's upstream id and tag; `None` when it carries no tag.
    pub fn split(id: &str) -> Option<(&str, ResponseTag)> {
        let (upstream, tag) = id.rsplit_once(MARK)?;
        if upstream.is_empty() || tag.len() != 24 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let part = |i: usize| u32::from_str_radix(&tag[i * 8..i * 8 + 8], 16).ok();
        Some((
            upstream,
            ResponseTag {
                provider: part(0)?,
                key: part(1)?,
                owner: part(2)?,
            },
        ))
    }

    /// Tags the `id` of a response object (or a deleted one's answer).
    pub fn tag_response(&self, value: &mut Value) {
        let is_response = value["object"]
            .as_str()
            .is_some_and(|o| o.starts_with("response"));
        if let (true, Some(id)) = (is_response, value["id"].as_str()) {
            value["id"] = Value::String(self.tag(id));
        }
    }

    /// One stream event for the client: the lifecycle events
    /// (`response.created`, `.in_progress`, `.completed`, `.failed`,
    /// `.incomplete`, `.queued`) carry the response, whose id is tagged;
    /// every other event passes unchanged.
    pub fn tag_event(&self, ev: &Event, out: &mut String) {
        if ev.data.contains("\"response\":{") {
            if let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) {
                if let Some(id) = v["response"]["id"].as_str() {
                    v["response"]["id"] = Value::String(self.tag(id));
                    out.push_str(&encode(ev.event.as_deref(), &v.to_string()));
                    return;
                }
            }
        }
        out.push_str(&encode(ev.event.as_deref(), &ev.data));
    }
}

/// A Responses request's `previous_response_id`: the body with the
/// upstream's id in its place, and the tag saying where it lives. `Ok(None)`
/// without one; an error (the client's: a 400) for an id the gateway did
/// not give out.
pub fn previous_response(body: &[u8]) -> Result<Option<(Vec<u8>, ResponseTag)>, String> {
    // Cheap check first: most requests have none.
    if !body.windows(22).any(|w| w == b"\"previous_response_id\"") {
        return Ok(None);
    }
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(id) = v.get("previous_response_id").and_then(Value::as_str) else {
        return Ok(None);
    };
    let (upstream, tag) = ResponseTag::split(id).ok_or_else(|| {
        format!("previous_response_id {id:?} was not created through this gateway")
    })?;
    let upstream = upstream.to_string();
    v.insert("previous_response_id".into(), Value::String(upstream));
    Ok(Some((
        serde_json::to_vec(&v).map_err(|e| e.to_string())?,
        tag,
    )))
}

/// The fuzz target's property (here so tests run it too): tagged ids
/// round-trip, `previous_response_id` handling never panics and leaves
/// JSON, and tagging a stream keeps every event, its name, and the data of
/// every event that carries no response unchanged.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((upstream, tag)) = ResponseTag::split(&text) {
        assert_eq!(
            ResponseTag::split(&tag.tag(upstream)),
            Some((upstream, tag))
        );
    }
    if let Ok(Some((body, _))) = previous_response(data) {
        let v: Value = serde_json::from_slice(&body).expect("the body stays JSON");
        assert!(v["previous_response_id"].is_string());
    }
    let tag = ResponseTag {
        provider: 1,
        key: 2,
        owner: 3,
    };
    let mut parser = crate::sse::Parser::new(1 << 20);
    let _ = parser.push(text.as_bytes());
    let _ = parser.push(b"\n\n");
    let mut upstream = Vec::new();
    let mut out = String::new();
    while let Ok(Some(ev)) = parser.next_event() {
        tag.tag_event(&ev, &mut out);
        upstream.push(ev);
    }
    let mut again = crate::sse::Parser::new(1 << 22);
    let _ = again.push(out.as_bytes());
    let mut tagged = Vec::new();
    while let Ok(Some(ev)) = again.next_event() {
        tagged.push(ev);
    }
    assert_eq!(tagged.len(), upstream.len(), "every event kept");
    for (u, t) in upstream.iter().zip(&tagged) {
        assert_eq!(u.event, t.event);
        if !u.data.contains("\"response\":{") {
            assert_eq!(
                u.data, t.data,
                "an event without a response passes unchanged"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_ids_round_trip_and_untagged_ones_do_not_parse() {
        let tag = ResponseTag {
            provider: ResponseTag::hash("openai"),
            key: 0xdeadbeef,
            owner: 7,
        };
        let id = tag.tag("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452e3a6");
        assert!(id.starts_with("resp_67ccd2bed1ec"));
        assert_eq!(
            ResponseTag::split(&id),
            Some(("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452e3a6", tag))
        );
        // An upstream id that itself holds the mark: the last one counts.
        let odd = tag.tag("resp_x_h3gnothex");
        assert_eq!(ResponseTag::split(&odd).unwrap().0, "resp_x_h3gnothex");
        for bad in [
            "resp_abc",
            "_h3g000000000000000000000000",
            "resp_h3g_h3gzz",
            "",
        ] {
            assert_eq!(ResponseTag::split(bad), None, "{bad}");
        }
        assert_eq!(ResponseTag::from_hex("1a2b3c4d5e"), 0x1a2b3c4d);
        assert_eq!(ResponseTag::from_hex(""), 0);
    }

    #[test]
    fn responses_and_lifecycle_events_are_tagged() {
        let tag = ResponseTag {
            provider: 1,
            key: 2,
            owner: 3,
        };
        let mut v =
            serde_json::json!({"id": "resp_1", "object": "response", "output": [{"id": "msg_1"}]});
        tag.tag_response(&mut v);
        assert_eq!(v["id"], tag.tag("resp_1"));
        assert_eq!(
            v["output"][0]["id"], "msg_1",
            "item ids are not response ids"
        );
        let mut list = serde_json::json!({"object": "list", "data": [], "first_id": "msg_1"});
        tag.tag_response(&mut list);
        assert_eq!(list["first_id"], "msg_1");
        let ev = Event {
            event: Some("response.completed".into()),
            data: r#"{"type":"response.completed","response":{"id":"resp_1","usage":{}}}"#.into(),
            id: None,
        };
        let mut out = String::new();
        tag.tag_event(&ev, &mut out);
        assert!(out.starts_with("event: response.completed\n"), "{out}");
        assert!(out.contains(&tag.tag("resp_1")), "{out}");
        let delta = Event {
            event: Some("response.output_text.delta".into()),
            data: r#"{"type":"response.output_text.delta","delta":"hi"}"#.into(),
            id: None,
        };
        let mut out = String::new();
        tag.tag_event(&delta, &mut out);
        assert_eq!(out, encode(Some("response.output_text.delta"), &delta.data));
    }

    #[test]
    fn fuzz_property_on_samples() {
        for s in [
            "",
            "resp_1_h3g000000010000000200000003",
            "event: response.created\ndata: {\"response\":{\"id\":\"resp_1\"}}\n\n",
            "data: {\"response\":{\"id\":5}}\n\ndata\n\n:comment\n\nevent: x\n\n",
            r#"{"previous_response_id":"resp_1_h3g000000010000000200000003"}"#,
            r#"{"previous_response_id":"x"}"#,
        ] {
            fuzz_check(s.as_bytes());
        }
    }

    #[test]
    fn previous_response_id_is_untagged_or_refused() {
        let tag = ResponseTag {
            provider: 9,
            key: 8,
            owner: 7,
        };
        let body = serde_json::json!({"model": "m", "input": "hi", "previous_response_id": tag.tag("resp_9")});
        let (out, got) = previous_response(body.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(got, tag);
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["previous_response_id"], "resp_9");
        assert_eq!(out["input"], "hi");
        assert_eq!(previous_response(br#"{"model":"m"}"#).unwrap(), None);
        assert_eq!(
            previous_response(br#"{"previous_response_id":null}"#).unwrap(),
            None
        );
        let err = previous_response(br#"{"previous_response_id":"resp_1"}"#).unwrap_err();
        assert!(err.contains("not created through this gateway"), "{err}");
    }
}
