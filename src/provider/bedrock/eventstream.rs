//! The AWS event stream (`application/vnd.amazon.eventstream`) that
//! ConverseStream answers with: binary frames, decoded incrementally as the
//! bytes arrive (a frame may be split across any chunk boundary; only the
//! unfinished frame is held), each checked against its CRCs and a size
//! bound before it is buffered.
//!
//! A frame: `total_len` u32 BE, `headers_len` u32 BE, the CRC32 of those
//! eight bytes; the headers (name length u8, name, value type u8, value);
//! the payload; the CRC32 of everything before it.
//!
//! [`to_event`] turns a decoded message into the [`sse::Event`] the relay's
//! translators read: an `event` message as its `:event-type` and JSON
//! payload, an `exception` (or `error`) message as an `exception` event
//! whose data is `{"type": <exception type>, "message": …}`.

use bytes::{Buf, BytesMut};
use serde_json::json;

use crate::sse;

/// Prelude (12 bytes) + message CRC (4).
const OVERHEAD: usize = 16;
/// The largest frame the decoder accepts by default (AWS's own limit is 16 MiB).
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event stream frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("event stream frame length {0} is invalid")]
    BadLength(usize),
    #[error("event stream prelude checksum mismatch")]
    PreludeCrc,
    #[error("event stream message checksum mismatch")]
    MessageCrc,
    #[error("event stream header is malformed")]
    BadHeader,
}

/// A header value; only strings are kept (the rest are read past).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    String(String),
    Other,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: bytes::Bytes,
}

impl Message {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Incremental decoder: [`Decoder::push`] chunks, drain [`Decoder::next_message`].
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame: usize,
    /// The current frame's length, once its prelude was checked.
    frame_len: Option<usize>,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame,
            frame_len: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Whether bytes of an unfinished frame are held.
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete message, if the bytes pushed so far hold one. An
    /// error is final: the stream cannot be resynchronised.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let len = match self.frame_len {
            Some(len) => len,
            None => {
                if self.buf.len() < 12 {
                    return Ok(None);
                }
                let len = self.prelude()?;
                self.frame_len = Some(len);
                len
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        self.frame_len = None;
        let frame = self.buf.split_to(len).freeze();
        let (body, crc) = frame.split_at(len - 4);
        if crc32fast::hash(body) as usize != be32(crc) {
            return Err(FrameError::MessageCrc);
        }
        let headers_len = be32(&frame[4..8]);
        let headers = parse_headers(&frame[12..12 + headers_len])?;
        Ok(Some(Message {
            headers,
            payload: frame.slice(12 + headers_len..len - 4),
        }))
    }

    /// Checks the prelude at the front of the buffer: the frame's length.
    fn prelude(&self) -> Result<usize, FrameError> {
        let p = &self.buf[..12];
        let total = be32(&p[0..4]);
        let headers = be32(&p[4..8]);
        if crc32fast::hash(&p[..8]) as usize != be32(&p[8..12]) {
            return Err(FrameError::PreludeCrc);
        }
        if total > self.max_frame {
            return Err(FrameError::TooLarge(total));
        }
        if total < OVERHEAD || headers > total - OVERHEAD {
            return Err(FrameError::BadLength(total));
        }
        Ok(total)
    }
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    let mut headers = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, FrameError> {
        if b.len() < n {
            return Err(FrameError::BadHeader);
        }
        let out = b[..n].to_vec();
        b.advance(n);
        Ok(out)
    };
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        let name = String::from_utf8(take(&mut b, name_len)?).map_err(|_| FrameError::BadHeader)?;
        let kind = take(&mut b, 1)?[0];
        let value = match kind {
            0 | 1 => HeaderValue::Other,
            2 => skip(&mut b, 1)?,
            3 => skip(&mut b, 2)?,
            4 => skip(&mut b, 4)?,
            5 | 8 => skip(&mut b, 8)?,
            9 => skip(&mut b, 16)?,
            6 | 7 => {
                let len = take(&mut b, 2)?;
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                let bytes = take(&mut b, len)?;
                if kind == 7 {
                    HeaderValue::String(
                        String::from_utf8(bytes).map_err(|_| FrameError::BadHeader)?,
                    )
                } else {
                    HeaderValue::Other
                }
            }
            _ => return Err(FrameError::BadHeader),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

fn skip(b: &mut &[u8], n: usize) -> Result<HeaderValue, FrameError> {
    if b.len() < n {
        return Err(FrameError::BadHeader);
    }
    b.advance(n);
    Ok(HeaderValue::Other)
}

/// One frame with string headers (what Bedrock sends, and what the mock
/// and the test upstream send back).
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        let name = truncated(name, 255).as_bytes();
        let value = truncated(value, u16::MAX as usize).as_bytes();
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value);
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An `event` frame: `:event-type` `event_type`, a JSON payload.
pub fn event_frame(event_type: &str, payload: &serde_json::Value) -> Vec<u8> {
    encode_frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An `exception` frame, as Bedrock ends a failed stream.
pub fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    encode_frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// The event the translators read for `msg` (`None`: a message type
/// with nothing for the client).
pub fn to_event(msg: &Message) -> Option<sse::Event> {
    let exception = |kind: &str, message: &str| sse::Event {
        event: Some("exception".into()),
        data: json!({"type": kind, "message": message}).to_string(),
        id: None,
    };
    match msg.header(":message-type") {
        Some("event") => Some(sse::Event {
            event: Some(msg.header(":event-type").unwrap_or_default().to_string()),
            data: String::from_utf8_lossy(&msg.payload).into_owned(),
            id: None,
        }),
        Some("exception") => {
            let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            let message = body["message"]
                .as_str()
                .or(body["Message"].as_str())
                .unwrap_or("the upstream provider failed mid-stream");
            Some(exception(
                msg.header(":exception-type").unwrap_or("exception"),
                message,
            ))
        }
        Some("error") => Some(exception(
            msg.header(":error-code").unwrap_or("error"),
            msg.header(":error-message")
                .unwrap_or("the upstream provider failed mid-stream"),
        )),
        _ => None,
    }
}

/// The fuzz target's property, here so tests run it too: any bytes, fed
/// whole, one byte at a time or split where the first byte says, decode to
/// the same messages and the same error (never a panic); every message
/// read goes through both client translators, whose output is SSE with
/// JSON events; and any bytes framed by [`encode_frame`] decode back.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    use crate::translate::stream::Translator;
    use crate::translate::Conversion;

    let decode = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut d = Decoder::new(1 << 16);
        let mut out = Vec::new();
        for piece in pieces {
            d.push(piece);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    };
    let whole = decode(&mut std::iter::once(data));
    assert_eq!(whole, decode(&mut data.chunks(1)), "byte by byte");
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    assert_eq!(whole, decode(&mut [a, b].into_iter()), "split at {cut}");

    for conv in [
        Conversion::ConverseToChat {
            include_usage: true,
        },
        Conversion::ConverseToMessages,
    ] {
        let mut t = Translator::new(conv, "fuzz").expect("a converting stream");
        let mut out = String::new();
        for m in &whole.0 {
            if let Some(ev) = to_event(m) {
                t.event(&ev, &mut out);
            }
        }
        t.finish(&mut out);
        let mut p = sse::Parser::new(1 << 22);
        let _ = p.push(out.as_bytes());
        while let Ok(Some(ev)) = p.next_event() {
            if ev.data != "[DONE]" {
                serde_json::from_str::<serde_json::Value>(&ev.data)
                    .expect("translated events carry JSON");
            }
        }
    }

    let text = String::from_utf8_lossy(data);
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid += 1;
    }
    let (name, value) = text.split_at(mid);
    let frame = encode_frame(&[(":event-type", name), ("v", value)], data);
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&frame);
    let m = d
        .next_message()
        .expect("an encoded frame decodes")
        .expect("whole");
    assert_eq!(&m.payload[..], data);
    assert!(!d.is_mid_frame());
}

#[cfg(test)]
mod tests;
