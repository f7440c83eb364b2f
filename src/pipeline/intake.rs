//! Taking a request in: admission (before the body is read, so a shed
//! request costs no buffer), then the body, bounded and counted, and the
//! few fields of it that routing and limits need.

use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::Ctx;
use crate::error::GatewayError;
use crate::exchange::{Body, GatewayRequest};
use crate::provider::Endpoint;

/// Admission: this client's share (its key's cap, else its address's), then
/// a gateway slot or a bounded wait for one, both claimed until the request
/// ends. (Per-provider gates and token reservations need the body's `model`
/// and `max_tokens`: they come later.)
pub async fn admit(ctx: &mut Ctx<'_>, body: &mut Body) -> Result<ReadAhead, GatewayError> {
    let (who, cap) = match ctx.key() {
        Some(k) => (k.sha256.clone(), k.max_concurrent.map(|c| c as usize)),
        None => (ctx.client.to_string(), None),
    };
    ctx.end.claims.client_slot = ctx
        .state
        .clients
        .enter(&who, cap)
        .map_err(|_| GatewayError::ClientLimit)?;
    // While queued, read a little of the body: a client that goes away
    // shows as the body failing (HTTP/1.1 has no other sign of it while its
    // request waits), and its place is given back at once. Bounded, so a
    // queued request still costs almost no buffer.
    let mut ahead = ReadAhead::default();
    let queued = tokio::time::Instant::now();
    let enter = ctx.state.admission.enter();
    tokio::pin!(enter);
    let permit = loop {
        tokio::select! {
            biased;
            permit = &mut enter => break permit.map_err(GatewayError::Overloaded)?,
            frame = body.frame(), if !ahead.ended && ahead.bytes.len() < READ_AHEAD => match frame {
                None => ahead.ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        ahead.bytes.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(GatewayError::ClientClosed),
            },
        }
    };
    ctx.end.claims.permit = Some(permit);
    if let Some(trace) = &ctx.end.facts.trace {
        trace.internal("admission", queued, Vec::new());
    }
    Ok(ahead)
}

/// What was read of a body while its request waited for admission.
#[derive(Default)]
pub struct ReadAhead {
    bytes: BytesMut,
    /// The body ended within it.
    ended: bool,
}

/// How much of a queued request's body is read ahead.
const READ_AHEAD: usize = 16 * 1024;

/// The fields routing and limits need; the rest of the body is forwarded
/// untouched (unless the target speaks another API).
#[derive(Deserialize, Default)]
pub struct Fields {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    /// (The Responses API's `max_output_tokens`.)
    #[serde(alias = "max_output_tokens")]
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub stream_options: Option<UsageOption>,
}

/// OpenAI's `stream_options`, of which only `include_usage` matters here.
#[derive(Deserialize, Default)]
pub struct UsageOption {
    #[serde(default)]
    pub include_usage: bool,
}

/// A request taken in: its body and the fields read from it.
pub struct Intake {
    pub body: Bytes,
    pub fields: Fields,
    /// The `model` the request names (never empty).
    pub model: String,
}

/// Reads the body (bounded by `[server] max_request_body`, within
/// `request_timeout`) and its fields; `GET /v1/models/{model}` has no body,
/// its model is in the path.
pub async fn take_in(
    ctx: &mut Ctx<'_>,
    req: GatewayRequest,
    endpoint: Endpoint,
    ahead: ReadAhead,
) -> Result<Intake, GatewayError> {
    let (body, fields) = if endpoint == Endpoint::Model {
        let model = req.uri.path()["/v1/models/".len()..].to_string();
        if !safe_model_path(&model) {
            return Err(GatewayError::InvalidRequest(
                "the model name in the path has characters or segments that are not allowed".into(),
            ));
        }
        let fields = Fields {
            model: Some(model),
            max_tokens: Some(0),
            ..Fields::default()
        };
        (Bytes::new(), fields)
    } else {
        let server = &ctx.state.config.server;
        let body = tokio::time::timeout(
            server.request_timeout.get(),
            read_body(ahead, req.body, &req.headers, server.max_request_body.get()),
        )
        .await
        .map_err(|_| GatewayError::RequestTimeout)??;
        ctx.end.facts.request_bytes = body.len() as u64;
        let fields = parse(&body)?;
        (body, fields)
    };
    let model = fields
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            GatewayError::InvalidRequest("you must provide a `model` parameter".into())
        })?;
    ctx.end.facts.model = Some(model.clone());
    Ok(Intake {
        body,
        fields,
        model,
    })
}

fn parse(body: &[u8]) -> Result<Fields, GatewayError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            GatewayError::InvalidRequest(format!("invalid request: {e}"))
        }
        _ => GatewayError::InvalidJson(e.to_string()),
    })
}

/// Reads (and drops) the body of a request that takes none, so HTTP/3
/// and HTTP/2 streams end cleanly: bounded as a body is, within
/// `request_timeout`.
pub async fn drain(ctx: &mut Ctx<'_>, req: GatewayRequest) -> Result<(), GatewayError> {
    let server = &ctx.state.config.server;
    let limit = server.max_request_body.get();
    let body = tokio::time::timeout(
        server.request_timeout.get(),
        read_body(ReadAhead::default(), req.body, &req.headers, limit),
    )
    .await
    .map_err(|_| GatewayError::RequestTimeout)??;
    ctx.end.facts.request_bytes = body.len() as u64;
    Ok(())
}

/// Reads the request body, refusing it as soon as it is known to exceed
/// `limit`: from `Content-Length`, or while counting the streamed bytes.
async fn read_body(
    ahead: ReadAhead,
    mut body: Body,
    headers: &http::HeaderMap,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || GatewayError::PayloadTooLarge { limit };
    if declared.is_some_and(|n| n > limit) || ahead.bytes.len() as u64 > limit {
        discard(body).await;
        return Err(too_large());
    }
    let capacity = declared.unwrap_or(0).min(limit);
    let mut buf = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    buf.extend_from_slice(&ahead.bytes);
    if ahead.ended {
        return Ok(buf.freeze());
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BodyIncomplete)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                discard(body).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a refused body, within bounds, so the
/// client receives the error response instead of a reset (HTTP/1.1 closes
/// the connection, HTTP/3 streams end cleanly). A larger or slower body is
/// abandoned.
async fn discard(mut body: Body) {
    const MAX_BYTES: u64 = 1 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}

/// A model name taken from the path goes into the upstream's URL: only
/// `[A-Za-z0-9._:@/-]`, and no empty, `.` or `..` segment (no way to reach
/// another upstream path with the provider's credentials).
fn safe_model_path(model: &str) -> bool {
    model.len() <= 256
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b))
        && model
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::safe_model_path;

    #[test]
    fn model_names_in_paths() {
        for ok in [
            "gpt-4o-mini",
            "llama3.1:8b",
            "meta-llama/Llama-3.1-8B",
            "a@b",
        ] {
            assert!(safe_model_path(ok), "{ok}");
        }
        for bad in [
            "../admin", "a/../b", "a//b", ".", "a/", "a%2F..", "a?b", "a b", "",
        ] {
            assert!(!safe_model_path(bad), "{bad}");
        }
    }
}
