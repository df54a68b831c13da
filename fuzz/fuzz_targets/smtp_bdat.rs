//! BDAT: the counted-chunk body reader (line ends normalised, no dot-unstuffing), fed the
//! content of the chunks in arbitrary pieces, then finished as BDAT ... LAST does.
//!
//! Checked beyond "no panic": the content does not depend on where the chunks were cut; it has
//! only CRLF line ends; content already in canonical CRLF form is stored as it came; stored
//! content relayed by DATA (dot-stuffed, read back) arrives the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::proto::BodyDecoder;
use relayd_fuzz::{bare_line_end, relayed, same_however_split};

fuzz_target!(|data: &[u8]| {
    let content = same_however_split(data, read_chunks);
    assert_eq!(bare_line_end(&content), None, "{content:?}");
    if bare_line_end(data).is_none() {
        assert_eq!(content, data, "canonical content changed");
    }
    // Relayed over DATA: the stuffer ends an unterminated last line, which comes back with
    // its CRLF.
    let mut expected = content.clone();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(relayed(&content), expected, "relayed content differs");
});

fn read_chunks(chunks: &[&[u8]]) -> Vec<u8> {
    let mut decoder = BodyDecoder::bdat();
    let mut content = Vec::new();
    for chunk in chunks {
        // A BDAT chunk is read to its announced size: the decoder must take all of it.
        let decoded = decoder.decode(chunk, &mut content);
        assert!(!decoded.end && decoded.consumed == chunk.len(), "{decoded:?}");
    }
    decoder.finish(&mut content);
    content
}
