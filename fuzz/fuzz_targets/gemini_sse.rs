//! The Gemini translators (both request surfaces, whole responses, and the
//! `alt=sse` stream to OpenAI chunks and to Anthropic events) on arbitrary
//! bytes: never panics, and whatever it produces is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    h3gate::translate::gemini::fuzz_check(data);
});
