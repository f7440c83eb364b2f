//! The whole request pipeline in-process (no sockets) on arbitrary method,
//! path, headers and body, in front of the built-in mock provider: never
//! panics, always answers, and every response body can be read to its end.
//! The input format is in `pipeline_harness.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "pipeline_harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
