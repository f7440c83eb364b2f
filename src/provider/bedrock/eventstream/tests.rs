use serde_json::json;

use super::*;

fn stream() -> Vec<u8> {
    let mut out = event_frame("messageStart", &json!({"role": "assistant"}));
    out.extend(event_frame(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "Hé"}, "p": "abc"}),
    ));
    out.extend(event_frame(
        "messageStop",
        &json!({"stopReason": "end_turn"}),
    ));
    out.extend(exception_frame("throttlingException", "Too many requests"));
    out
}

fn decode_all(d: &mut Decoder, out: &mut Vec<Message>) -> Result<(), FrameError> {
    while let Some(m) = d.next_message()? {
        out.push(m);
    }
    Ok(())
}

#[test]
fn frames_split_at_every_offset_decode_the_same() {
    let bytes = stream();
    let mut whole = Decoder::new(MAX_FRAME);
    whole.push(&bytes);
    let mut expected = Vec::new();
    decode_all(&mut whole, &mut expected).unwrap();
    assert_eq!(expected.len(), 4);
    assert!(!whole.is_mid_frame());
    for cut in 0..=bytes.len() {
        for second in [cut, (cut + 7).min(bytes.len())] {
            let mut d = Decoder::new(MAX_FRAME);
            let mut got = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..second], &bytes[second..]] {
                d.push(piece);
                decode_all(&mut d, &mut got).unwrap();
            }
            assert_eq!(got, expected, "cut at {cut}, {second}");
        }
    }
    // One byte at a time, too.
    let mut d = Decoder::new(MAX_FRAME);
    let mut got = Vec::new();
    for b in &bytes {
        d.push(std::slice::from_ref(b));
        decode_all(&mut d, &mut got).unwrap();
    }
    assert_eq!(got, expected);
}

#[test]
fn messages_become_the_translators_events() {
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&stream());
    let mut msgs = Vec::new();
    decode_all(&mut d, &mut msgs).unwrap();
    let ev: Vec<sse::Event> = msgs.iter().filter_map(to_event).collect();
    assert_eq!(ev[0].event.as_deref(), Some("messageStart"));
    let delta: serde_json::Value = serde_json::from_str(&ev[1].data).unwrap();
    assert_eq!(delta["delta"]["text"], "Hé");
    assert_eq!(ev[3].event.as_deref(), Some("exception"));
    let e: serde_json::Value = serde_json::from_str(&ev[3].data).unwrap();
    assert_eq!(
        e,
        json!({"type": "throttlingException", "message": "Too many requests"})
    );
    // An `error` message carries its code and message in headers.
    let frame = encode_frame(
        &[
            (":message-type", "error"),
            (":error-code", "InternalFailure"),
            (":error-message", "boom"),
        ],
        b"",
    );
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&frame);
    let m = d.next_message().unwrap().unwrap();
    let e: serde_json::Value = serde_json::from_str(&to_event(&m).unwrap().data).unwrap();
    assert_eq!(e, json!({"type": "InternalFailure", "message": "boom"}));
}

#[test]
fn a_bad_checksum_is_refused() {
    let good = event_frame("messageStart", &json!({"role": "assistant"}));
    // Prelude CRC: refused as soon as the prelude is in.
    let mut bad = good.clone();
    bad[9] ^= 1;
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&bad[..12]);
    assert_eq!(d.next_message(), Err(FrameError::PreludeCrc));
    // Message CRC: a flipped payload byte.
    let mut bad = good.clone();
    let i = bad.len() - 6;
    bad[i] ^= 0x20;
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&bad);
    assert_eq!(d.next_message(), Err(FrameError::MessageCrc));
}

#[test]
fn an_oversize_frame_is_refused_from_its_prelude() {
    let big = event_frame(
        "contentBlockDelta",
        &json!({"delta": {"text": "x".repeat(2000)}}),
    );
    let mut d = Decoder::new(1024);
    d.push(&big[..12]);
    assert!(matches!(d.next_message(), Err(FrameError::TooLarge(n)) if n == big.len()));
    // Lengths that cannot hold a frame.
    let mut tiny = Vec::new();
    tiny.extend_from_slice(&8u32.to_be_bytes());
    tiny.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32fast::hash(&tiny);
    tiny.extend_from_slice(&crc.to_be_bytes());
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&tiny);
    assert_eq!(d.next_message(), Err(FrameError::BadLength(8)));
}

#[test]
fn other_header_types_are_read_past() {
    // :date as a timestamp (type 8), a bool, an int32, a uuid, then a string.
    let mut h = Vec::new();
    for (name, kind, value) in [
        (":date", 8u8, vec![0u8; 8]),
        ("flag", 0, vec![]),
        ("n", 4, vec![0, 0, 0, 5]),
        ("id", 9, vec![1; 16]),
    ] {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(kind);
        h.extend_from_slice(&value);
    }
    let payload = br#"{"role":"assistant"}"#;
    let mut inner = encode_frame(
        &[(":message-type", "event"), (":event-type", "messageStart")],
        payload,
    );
    // Rebuild with the extra headers in front.
    let strings_len = be32(&inner[4..8]);
    let mut headers = h.clone();
    headers.extend_from_slice(&inner[12..12 + strings_len]);
    let total = 16 + headers.len() + payload.len();
    inner.clear();
    inner.extend_from_slice(&(total as u32).to_be_bytes());
    inner.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let c = crc32fast::hash(&inner);
    inner.extend_from_slice(&c.to_be_bytes());
    inner.extend_from_slice(&headers);
    inner.extend_from_slice(payload);
    let c = crc32fast::hash(&inner);
    inner.extend_from_slice(&c.to_be_bytes());
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&inner);
    let m = d.next_message().unwrap().unwrap();
    assert_eq!(m.header(":event-type"), Some("messageStart"));
    assert_eq!(m.headers.len(), 6);
    assert_eq!(&m.payload[..], payload);
    // A header cut short is malformed, not a panic.
    let mut bad = h[..5].to_vec();
    bad.truncate(5);
    assert_eq!(parse_headers(&bad), Err(FrameError::BadHeader));
}

/// The fuzz property on hand-picked shapes (the fuzz target explores the rest).
#[test]
fn fuzz_property_on_samples() {
    let mut samples: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; 12],
        vec![0xff; 40],
        "é".repeat(200).into_bytes(),
        stream(),
        exception_frame("validationException", "bad"),
    ];
    let mut bad = stream();
    bad[20] ^= 1;
    samples.push(bad);
    let mut cut = stream();
    cut.truncate(cut.len() - 3);
    samples.push(cut);
    // Events whose payloads are not what the translators expect.
    let mut odd = event_frame("contentBlockDelta", &json!({"delta": 5}));
    odd.extend(event_frame("metadata", &json!({"usage": "x"})));
    odd.extend(encode_frame(&[(":message-type", "event")], b"not json"));
    odd.extend(event_frame("messageStop", &json!([])));
    samples.push(odd);
    for s in samples {
        fuzz_check(&s);
    }
}
