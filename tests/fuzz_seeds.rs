//! Every committed fuzz seed (`fuzz/seeds/TARGET/*`, minimised corpora)
//! through the same property its fuzz target checks, in the normal test
//! suite: what the fuzzers found once stays covered without cargo-fuzz.

use std::path::PathBuf;

#[path = "../fuzz/fuzz_targets/pipeline_harness.rs"]
mod pipeline_harness;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} has seeds", dir.display());
    out
}

/// Runs `check` on every seed of `target`, naming the seed that fails.
fn each_seed(target: &str, check: impl Fn(&[u8])) {
    for (path, data) in seeds(target) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(result.is_ok(), "seed {} fails", path.display());
    }
}

#[test]
fn pipeline_seeds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    each_seed("pipeline", pipeline_harness::run);
}

#[test]
fn translate_seeds() {
    each_seed("translate", h3gate::translate::fuzz_check);
}

#[test]
fn responses_events_seeds() {
    each_seed("responses_events", h3gate::translate::responses::fuzz_check);
}

#[test]
fn gemini_sse_seeds() {
    each_seed("gemini_sse", h3gate::translate::gemini::fuzz_check);
}

#[test]
fn eventstream_seeds() {
    each_seed(
        "eventstream",
        h3gate::provider::bedrock::eventstream::fuzz_check,
    );
}

#[test]
fn sse_parser_seeds() {
    each_seed("sse_parser", h3gate::sse::fuzz_check);
}

#[test]
fn config_load_seeds() {
    each_seed("config_load", |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            h3gate::config::fuzz_check(text);
        }
    });
}
