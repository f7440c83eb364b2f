//! The vendored h3 (vendor/h3) encodes QPACK string literals through a
//! table instead of the crate's bit-by-bit encoder, and decodes them as a
//! canonical code instead of walking the crate's bit-window tree: the
//! encoder's output must be the crate's, byte for byte, on every input; the
//! decoder must read it back as the crate's decoder does, agree with it on
//! random input both accept, and refuse what RFC 7541 §5.2 refuses (EOS in
//! the string, padding over 7 bits or not all ones). (The wire tests —
//! Chromium, aioquic, ngtcp2 and our own client talking to h3gate — check
//! both sides against other implementations.)

#[test]
fn the_table_driven_huffman_coder_matches_the_crates_own() {
    h3::h3gate_huffman_selfcheck().unwrap();
}
