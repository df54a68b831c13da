//! Property tests of the grammar: whatever bytes a client sends, parsing answers (a command or
//! an error reply) and never panics; the body decoders give the same result however the input
//! is split across reads. (Coverage-guided fuzzing of the same functions is planned.)

use proptest::prelude::*;

use super::{BodyDecoder, Decoded, command};

/// Decodes `input` in the pieces given by `cuts` (positions, in any order).
fn decode_in_pieces(
    mut decoder: BodyDecoder,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Option<usize>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.into_iter().chain([input.len()]) {
        if end < start {
            continue;
        }
        let Decoded { consumed, end: done } = decoder.decode(&input[start..end], &mut out);
        if done {
            return (out, Some(start + consumed));
        }
        start = end;
    }
    (out, None)
}

/// Bytes that exercise the decoders' edge cases more often than uniform noise would.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()],
        0..200,
    )
}

proptest! {
    #[test]
    fn any_command_line_parses_or_gets_a_reply(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        match command::parse(&line) {
            Ok(_) => {}
            Err(reply) => prop_assert!((400..600).contains(&reply.code)),
        }
    }

    #[test]
    fn data_decoding_does_not_depend_on_how_the_input_is_split(
        input in body_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = decode_in_pieces(BodyDecoder::data(), &input, &[]);
        let pieces = decode_in_pieces(BodyDecoder::data(), &input, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn decoded_content_has_only_crlf_line_ends(input in body_bytes()) {
        for decoder in [BodyDecoder::data(), BodyDecoder::bdat()] {
            // A CR still waiting for its LF is held back, not written: the output so far
            // has only whole line ends.
            let (out, _) = decode_in_pieces(decoder, &input, &[]);
            for (i, &byte) in out.iter().enumerate() {
                if byte == b'\n' {
                    prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {} in {:?}", i, out);
                }
                if byte == b'\r' {
                    prop_assert!(out.get(i + 1) == Some(&b'\n'), "bare CR at {} in {:?}", i, out);
                }
            }
        }
    }
}
