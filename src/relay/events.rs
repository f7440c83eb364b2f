//! The event-stream mode: an upstream SSE stream read event by event for
//! its usage and its end, passed through or translated to the client's API.
//! A Bedrock answer's AWS event stream is decoded frame by frame first
//! (each frame becoming an event the translator reads at once).

use bytes::Bytes;

use super::failure::Failure;
use super::usage::{EventReader, Seen};
use super::{Accounting, Step};
use crate::api::Api;
use crate::provider::bedrock::eventstream;
use crate::sse;
use crate::translate::stream::Translator;

/// Largest SSE event the relay inspects; larger ones pass through unread.
const MAX_OBSERVED_EVENT: usize = 1 << 20;

/// How the upstream's bytes become events.
enum Decoding {
    Sse(sse::Parser),
    /// AWS event-stream frames (Bedrock's ConverseStream).
    Aws(eventstream::Decoder),
}

pub(super) struct Events {
    decoding: Decoding,
    reader: EventReader,
    /// The upstream ended the stream itself (`[DONE]`, `message_stop`, or
    /// an error event): a stream that stops short of this was cut.
    done: bool,
    /// Turns upstream events into the client's (`None`: they pass through).
    translator: Option<Translator>,
    /// An invalid frame came after events the client was still owed: they
    /// went out, the failure comes next.
    broken: bool,
}

impl Events {
    pub(super) fn new(upstream: Api, translator: Option<Translator>) -> Self {
        Events {
            decoding: Decoding::Sse(sse::Parser::new(MAX_OBSERVED_EVENT)),
            reader: EventReader::new(upstream),
            done: false,
            translator,
            broken: false,
        }
    }

    /// A Bedrock event stream, translated (frames of at most 1 MiB).
    pub(super) fn aws(translator: Option<Translator>) -> Self {
        Events {
            decoding: Decoding::Aws(eventstream::Decoder::new(MAX_OBSERVED_EVENT)),
            reader: EventReader::Bedrock,
            done: false,
            translator,
            broken: false,
        }
    }

    /// Reads one chunk's events; a translated stream hands the client its
    /// own events for them instead (possibly none yet).
    pub(super) fn chunk(&mut self, data: &Bytes, account: &Accounting) -> Step {
        if self.broken {
            return Step::Fail(Failure::BadFrame);
        }
        let mut out = String::new();
        match &mut self.decoding {
            Decoding::Sse(parser) => {
                if parser.push(data).is_err() {
                    return self.unreadable();
                }
                while let Decoding::Sse(parser) = &mut self.decoding {
                    match parser.next_event() {
                        Ok(Some(ev)) => self.event(&ev, account, &mut out),
                        Ok(None) => break,
                        Err(_) => return self.unreadable(),
                    }
                }
            }
            Decoding::Aws(decoder) => {
                decoder.push(data);
                while let Decoding::Aws(decoder) = &mut self.decoding {
                    match decoder.next_message() {
                        Ok(Some(msg)) => {
                            if let Some(ev) = eventstream::to_event(&msg) {
                                self.event(&ev, account, &mut out);
                            }
                        }
                        Ok(None) => break,
                        Err(_) if out.is_empty() => return Step::Fail(Failure::BadFrame),
                        Err(_) => {
                            self.broken = true;
                            break;
                        }
                    }
                }
            }
        }
        match self.translator {
            Some(_) => Step::Replace(Bytes::from(out)),
            None => Step::Pass,
        }
    }

    /// One upstream event: read, and translated into `out`.
    fn event(&mut self, ev: &sse::Event, account: &Accounting, out: &mut String) {
        self.read(ev, account);
        if let Some(t) = self.translator.as_mut() {
            t.event(ev, out);
        }
    }

    fn read(&mut self, ev: &sse::Event, account: &Accounting) {
        match self.reader.read(ev) {
            Seen::Nothing => {}
            Seen::Usage(tokens) => account.tokens(tokens),
            Seen::End => self.done = true,
            Seen::Last(tokens) => {
                account.tokens(tokens);
                self.done = true;
            }
            Seen::Failed => {
                account.record.mark_upstream_failure();
                self.done = true;
            }
        }
    }

    /// An event too large to inspect: the rest goes unread — unless the
    /// stream is being translated, which then cannot go on.
    fn unreadable(&self) -> Step {
        match self.translator {
            Some(_) => Step::Fail(Failure::Untranslatable),
            None => Step::Unread,
        }
    }

    /// At the upstream's end: what a translated stream still owes the
    /// client, or `Truncated` if the upstream never ended the stream.
    pub(super) fn finish(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.broken {
            return Err(Failure::BadFrame);
        }
        if !self.done {
            return Err(Failure::Truncated);
        }
        let Some(t) = self.translator.as_mut() else {
            return Ok(None);
        };
        let mut out = String::new();
        t.finish(&mut out);
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}
