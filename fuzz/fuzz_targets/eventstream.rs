//! The AWS event-stream decoder (Bedrock's ConverseStream) on arbitrary
//! bytes, however they are split, and its events through both client
//! translators: never panics, decodes the same whatever the chunking, and
//! whatever the translators produce is SSE carrying JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    h3gate::provider::bedrock::eventstream::fuzz_check(data);
});
