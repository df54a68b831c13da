//! Property tests of the grammar: whatever bytes a client sends, parsing answers (a command or
//! an error reply) and never panics; the body decoders give the same result however the input
//! is split across reads. The fuzz targets in fuzz/ check the same properties, coverage-guided.

use proptest::prelude::*;

use super::{BodyDecoder, Command, Decoded, DotStuffer, LineReader, Reply, command};

/// `input` cut at `cuts` (positions, in any order, taken modulo the length).
fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut start = 0;
    let mut out = Vec::new();
    for end in cuts.into_iter().chain([input.len()]) {
        out.push(&input[start..end]);
        start = end;
    }
    out
}

/// Decodes `input` in the pieces given by `cuts`.
fn decode_in_pieces(
    mut decoder: BodyDecoder,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in pieces(input, cuts) {
        let Decoded { consumed, end: done } = decoder.decode(piece, &mut out);
        if done {
            return (out, Some(start + consumed));
        }
        start += piece.len();
    }
    (out, None)
}

/// The commands (or refusals) in a client's stream read in the pieces given by `cuts`, as a
/// session reads them: lines first, then each line parsed.
fn commands_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<Result<Command, Reply>> {
    let mut reader = LineReader::default();
    let mut commands = Vec::new();
    for mut piece in pieces(input, cuts) {
        while !piece.is_empty() {
            let pushed = reader.push(piece);
            piece = &piece[pushed.consumed..];
            commands.extend(pushed.line.map(|line| line.and_then(|line| command::parse(&line))));
        }
    }
    commands
}

/// Command streams: real command fragments, line ends bare and whole, NULs and noise.
fn command_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just(b"MAIL FROM:<a@b.c> SIZE=10".to_vec()),
        Just(b"RCPT TO:<u@example.com>".to_vec()),
        Just(b"EHLO x".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\0".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(fragment, 0..20).prop_map(|parts| parts.concat())
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
    fn a_command_stream_gives_the_same_commands_however_it_is_split(
        input in command_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(commands_in_pieces(&input, &[]), commands_in_pieces(&input, &cuts));
    }

    #[test]
    fn stored_data_relayed_dot_stuffed_reads_back_the_same(mut input in body_bytes()) {
        // Ended for sure (possibly earlier): only a complete body is relayed.
        input.extend_from_slice(b"\r\n.\r\n");
        let (content, end) = decode_in_pieces(BodyDecoder::data(), &input, &[]);
        prop_assert!(end.is_some());
        let mut wire = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(&content, &mut wire);
        stuffer.end(&mut wire);
        let relayed = decode_in_pieces(BodyDecoder::data(), &wire, &[]);
        prop_assert_eq!(relayed, (content, Some(wire.len())));
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
