//! DATA: the dot-terminated, dot-stuffed body reader, fed a client's stream in arbitrary
//! pieces. After each end of data the rest of the stream is read as the next body, as a
//! session does for a second transaction.
//!
//! Checked beyond "no panic": the bodies and where each ends do not depend on how the stream
//! was split; stored content has only CRLF line ends; a stored body, dot-stuffed as the
//! delivery client sends it and read back, is the same content ending at the same place (so
//! the next hop cannot see an end of data, or a line end, that we did not).

#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::proto::BodyDecoder;
use relayd_fuzz::{bare_line_end, relayed, same_however_split};

/// One body: its content, and the stream offset just past its end of data (none: the stream
/// ended first).
type Body = (Vec<u8>, Option<usize>);

fuzz_target!(|data: &[u8]| {
    let bodies = same_however_split(data, read_bodies);
    for (content, end) in &bodies {
        assert_eq!(bare_line_end(content), None, "{content:?}");
        // An ended body always ends with its CRLF (or is empty), so it comes back unchanged.
        if end.is_some() {
            assert_eq!(&relayed(content), content, "relayed content differs");
        }
    }
});

fn read_bodies(pieces: &[&[u8]]) -> Vec<Body> {
    let mut bodies = Vec::new();
    let mut decoder = BodyDecoder::data();
    let mut content = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let decoded = decoder.decode(rest, &mut content);
            assert!(decoded.consumed > 0 && decoded.consumed <= rest.len(), "no progress");
            assert!(decoded.end || decoded.consumed == rest.len(), "stopped short of the end");
            rest = &rest[decoded.consumed..];
            offset += decoded.consumed;
            if decoded.end {
                bodies.push((std::mem::take(&mut content), Some(offset)));
                decoder = BodyDecoder::data();
            }
        }
    }
    bodies.push((content, None));
    bodies
}
