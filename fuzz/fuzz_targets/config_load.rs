//! Configuration loading on arbitrary text: never panics, and a refused
//! configuration always says why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        h3gate::config::fuzz_check(text);
    }
});
