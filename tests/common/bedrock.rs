//! The test upstream's Bedrock side: `POST /model/{modelId}/converse` and
//! `/converse-stream`, answered with the mock's Converse builders
//! (`h3gate::provider::mock::bedrock`: real event-stream frames with CRCs,
//! `metadata` usage, Bedrock's error shape). Every request's SigV4
//! signature is CHECKED: recomputed for region `us-east-1` with the secret
//! of its access key ([`secret_for`]; any session token must be signed
//! too), and a wrong one is answered 403 `InvalidSignatureException`, as
//! AWS does. A stream is sent in 13-byte pieces, so frames arrive split.
//! The model id (percent-decoded from the path, a leading `br-` dropped)
//! picks the behaviour:
//!
//! | model                  | behaviour                                          |
//! |------------------------|----------------------------------------------------|
//! | anything else          | 7 prompt and 5 completion tokens (tools: a call)   |
//! | `status-NNN`           | Bedrock's error for NNN (`x-amzn-ErrorType`)        |
//! | `slow`                 | waits 5 s before the response headers              |
//! | `drop-mid-stream`      | two frames, then the connection is cut             |
//! | `exception-mid-stream` | three frames, then a `throttlingException` frame   |
//! | `bad-frame`            | a frame whose CRC is wrong                         |

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use h3gate::provider::bedrock::sigv4::{self, Credentials};
use h3gate::provider::mock::bedrock as mock;
use h3gate::provider::mock::Answer;
use h3gate::provider::Endpoint;

use super::upstream::{full, respond, BoxError, RespBody};

/// The region the test gateway's Bedrock providers sign for.
pub const REGION: &str = "us-east-1";
/// The fake access key of the test config's Bedrock providers.
pub const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";

/// The (fake) secret the upstream expects for an access key id.
pub fn secret_for(access_key_id: &str) -> String {
    format!("test-secret-for-{access_key_id}-not-real")
}

/// The model id of a Bedrock path, and whether it streams.
pub fn parse_path(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, action) = rest.rsplit_once('/')?;
    let stream = match action {
        "converse" => false,
        "converse-stream" => true,
        _ => return None,
    };
    Some((percent_decode(id), stream))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request's signature is right for its access key.
fn signature_ok(parts: &http::request::Parts, body: &[u8]) -> bool {
    let h = &parts.headers;
    let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let Some(auth) = text("authorization") else {
        return false;
    };
    let Some(akid) = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
    else {
        return false;
    };
    let creds = Credentials {
        access_key_id: akid.to_string(),
        secret_access_key: h3gate::config::Secret::new(secret_for(akid)),
        session_token: text("x-amz-security-token").map(h3gate::config::Secret::new),
    };
    let Some(host) = text("host") else {
        return false;
    };
    let uri = format!(
        "http://{host}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    sigv4::verify(
        parts.method.as_str(),
        &uri,
        h,
        body,
        &creds,
        REGION,
        "bedrock",
    )
}

fn error(status: u16, message: &str) -> hyper::Response<RespBody> {
    let (status, headers, body) = mock::error_response(status, message);
    let mut resp = respond(status.as_u16(), "application/json", full(body));
    resp.headers_mut().extend(headers);
    resp
}

/// A Bedrock request's answer.
pub async fn handle(
    parts: &http::request::Parts,
    body: &[u8],
    json: &Value,
) -> hyper::Response<RespBody> {
    let Some((model, stream)) = parse_path(parts.uri.path()) else {
        return error(404, "no such operation");
    };
    if !signature_ok(parts, body) {
        let mut resp = error(
            403,
            "The request signature we calculated does not match the signature you provided.",
        );
        resp.headers_mut().insert(
            "x-amzn-errortype",
            "InvalidSignatureException".parse().unwrap(),
        );
        return resp;
    }
    let model = model.strip_prefix("br-").unwrap_or(&model).to_string();
    if let Some(code) = model.strip_prefix("status-").and_then(|c| c.parse().ok()) {
        return error(code, "Too many requests, please wait before trying again.");
    }
    if model == "slow" {
        // The slow upstream under test: this wait is its behaviour.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let req = mock::mock_request(json, &model);
    let (cached, written) = req.cache_usage();
    let mut answer = Answer::new(&model, Endpoint::Messages, 7, 5).with_cache(cached, written);
    answer.tool = req.tool_call();
    if !stream {
        return respond(200, "application/json", full(answer.converse().to_string()));
    }
    let frames = match model.as_str() {
        "exception-mid-stream" => {
            mock::frames_ending_in_exception(&answer, "throttlingException", "Too many tokens")
        }
        _ => answer.converse_frames(),
    };
    let mut bytes: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
    let mut pieces: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    match model.as_str() {
        "drop-mid-stream" => {
            let two: usize = frames[..2].iter().map(|f| f.len()).sum();
            pieces.push(Ok(Frame::data(Bytes::copy_from_slice(&bytes[..two]))));
            pieces.push(Err("upstream cut the connection".into()));
        }
        _ => {
            if model == "bad-frame" {
                let at = frames[0].len() + frames[1].len() - 6;
                bytes[at] ^= 0x20;
            }
            for piece in bytes.chunks(13) {
                pieces.push(Ok(Frame::data(Bytes::copy_from_slice(piece))));
            }
        }
    }
    // A gap before a cut (the behaviour: a stream that dies later).
    let pieces =
        futures_util::StreamExt::then(futures_util::stream::iter(pieces), |p| async move {
            if p.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            p
        });
    let body = StreamBody::new(pieces).boxed();
    respond(200, h3gate::provider::bedrock::EVENT_STREAM, body)
}
