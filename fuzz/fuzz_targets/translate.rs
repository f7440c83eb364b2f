//! Every translator (requests, responses and streams, both directions) on
//! arbitrary bytes: never panics, and whatever it produces is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    h3gate::translate::fuzz_check(data);
});
