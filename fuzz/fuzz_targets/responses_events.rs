//! Responses API ids and stream events on arbitrary bytes: tagged ids
//! round-trip, `previous_response_id` handling never panics, and tagging
//! a stream keeps every event (see `translate::responses::fuzz_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    h3gate::translate::responses::fuzz_check(data);
});
