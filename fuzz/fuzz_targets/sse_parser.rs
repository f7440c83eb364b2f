//! The SSE parser on arbitrary upstream bytes, split at arbitrary points:
//! never panics, never grows past its bound, and the events do not depend on
//! where the chunks were split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    h3gate::sse::fuzz_check(data);
});
