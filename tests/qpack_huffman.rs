//! The vendored h3 (vendor/h3) encodes QPACK string literals through a
//! table instead of the crate's bit-by-bit encoder: its output must be the
//! same, byte for byte, on every input. (The wire tests — Chromium,
//! aioquic, ngtcp2 and our own client decoding h3gate's responses — check
//! the decoders' side.)

#[test]
fn the_table_driven_huffman_encoder_matches_the_crates_own() {
    h3::h3gate_huffman_selfcheck().unwrap();
}
