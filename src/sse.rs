//! Server-sent events: an incremental parser (chunks may split anywhere) and
//! the encoder used for events the gateway writes itself.
//!
//! Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; a
//! blank line dispatches; `:` starts a comment; `data` lines are joined with
//! `\n`; unknown fields are ignored.

use bytes::{Buf, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any (Anthropic names its events; OpenAI does not).
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event exceeded {0} bytes")]
    TooLarge(usize),
}

/// Incremental parser: [`Parser::push`] bytes as they arrive, then drain
/// complete events with [`Parser::next_event`].
#[derive(Debug)]
pub struct Parser {
    buf: BytesMut,
    max_event: usize,
    pending: Event,
    has_data: bool,
    /// The previous chunk ended in CR: a following LF belongs to it.
    skip_lf: bool,
}

impl Parser {
    /// A parser that refuses events (or lines) larger than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Parser {
            buf: BytesMut::new(),
            max_event,
            pending: Event::default(),
            has_data: false,
            skip_lf: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SseError> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.max_event {
            // Only an unfinished line can be this large once events are drained.
            if !self.buf.iter().any(|&b| b == b'\n' || b == b'\r') {
                return Err(SseError::TooLarge(self.max_event));
            }
        }
        Ok(())
    }

    /// The next complete event, if the bytes pushed so far hold one.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.buf) else {
                if self.buf.len() > self.max_event {
                    return Err(SseError::TooLarge(self.max_event));
                }
                return Ok(None);
            };
            let line = self.buf.split_to(end);
            let terminator = self.buf[0];
            self.buf.advance(1);
            if terminator == b'\r' {
                if self.buf.is_empty() {
                    self.skip_lf = true;
                } else if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
            }
            if line.is_empty() {
                if let Some(ev) = self.dispatch() {
                    return Ok(Some(ev));
                }
                continue;
            }
            self.field(&line)?;
        }
    }

    fn field(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // Valid UTF-8 (every real event) through `from_utf8`'s word-at-a-time
        // check; `from_utf8_lossy` alone went char by char.
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(&value);
                self.has_data = true;
                if self.pending.data.len() > self.max_event {
                    return Err(SseError::TooLarge(self.max_event));
                }
            }
            b"event" => self.pending.event = Some(value.into_owned()),
            b"id" if !value.contains('\0') => self.pending.id = Some(value.into_owned()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Option<Event> {
        let ev = std::mem::take(&mut self.pending);
        let had = std::mem::replace(&mut self.has_data, false);
        had.then_some(ev)
    }
}

/// Encodes one event. Multi-line data becomes several `data:` lines.
pub fn encode(event: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    if let Some(name) = event {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The fuzz target's property, here so tests run it too: parsing never
/// panics, and the events do not depend on where the input was split.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    const MAX: usize = 4096;
    let collect = |chunks: &[&[u8]]| -> Result<Vec<Event>, SseError> {
        let mut p = Parser::new(MAX);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c)?;
            while let Some(ev) = p.next_event()? {
                assert!(ev.data.len() <= MAX);
                out.push(ev);
            }
        }
        Ok(out)
    };
    let whole = collect(&[data]);
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let (a, b) = data.split_at(split);
    let parts = collect(&[a, b]);
    if let (Ok(x), Ok(y)) = (&whole, &parts) {
        assert_eq!(x, y, "events depend on the split point");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c).unwrap();
            while let Some(ev) = p.next_event().unwrap() {
                out.push(ev);
            }
        }
        out
    }

    #[test]
    fn openai_stream_split_anywhere() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            let evs = parse_all(&[a, b]);
            assert_eq!(evs.len(), 2, "split at {split}");
            assert_eq!(evs[0].data, "{\"a\":1}");
            assert_eq!(evs[1].data, "[DONE]");
        }
    }

    #[test]
    fn named_events_crlf_and_multiline() {
        let evs = parse_all(&[
            b"event: message_start\r\ndata: a\r\ndata: b\r\n\r\nevent: ping\rdata:c\r\r",
        ]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some("message_start"));
        assert_eq!(evs[0].data, "a\nb");
        assert_eq!(evs[1].event.as_deref(), Some("ping"));
        assert_eq!(evs[1].data, "c");
    }

    #[test]
    fn cr_lf_split_across_chunks() {
        let evs = parse_all(&[b"data: x\r", b"\n\r", b"\ndata: y\n\n"]);
        assert_eq!(
            evs.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
    }

    #[test]
    fn oversized_line_is_refused() {
        let mut p = Parser::new(16);
        let r = p.push(&[b'a'; 64]).and_then(|_| p.next_event().map(|_| ()));
        assert_eq!(r, Err(SseError::TooLarge(16)));
    }

    #[test]
    fn fuzz_property_holds_on_seeds() {
        for seed in [
            &b""[..],
            b"data: x\n\n",
            b"\x05data: a\r\ndata: b\r\n\r\n",
            b"\x03\r\r\n\n:c\ndata\n\nevent: e\rid: 1\rdata: [DONE]\r\r",
        ] {
            fuzz_check(seed);
        }
    }

    #[test]
    fn encode_round_trips() {
        let s = encode(Some("error"), "line1\nline2");
        assert_eq!(s, "event: error\ndata: line1\ndata: line2\n\n");
        let evs = parse_all(&[s.as_bytes()]);
        assert_eq!(evs[0].data, "line1\nline2");
    }
}
