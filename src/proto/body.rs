//! The message content readers: DATA (dot-terminated, dot-stuffed) and BDAT (counted chunks).
//!
//! Both decode incrementally, so a body is never held whole, and both store canonical CRLF
//! line endings, so nothing we relay can be read differently by the next hop:
//!
//! * DATA ends only at CRLF "." CRLF: a "." line after a bare LF, or ended by a bare LF, is
//!   content, never the end (the SMTP smuggling attacks of 2023 rely on receivers that disagree
//!   on this). Such a line is stored as ".", CRLF-terminated, and is dot-stuffed again when
//!   relayed.
//! * A bare LF or a bare CR becomes CRLF (as Postfix's `smtpd_forbid_bare_newline =
//!   normalize`, and for CR too): the next hop can then never see a line end that we did not,
//!   whatever it makes of bare CRs. A line ended that way is never the end of DATA.
//! * RFC 5321 section 4.5.2: a leading "." followed by more characters is removed.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Data,
    Bdat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line (DATA only distinguishes this).
    LineStart,
    /// DATA: a "." was read at the start of a line.
    Dot,
    /// DATA: "." CR was read at the start of a line.
    DotCr,
    /// Inside a line.
    InLine,
    /// Inside a line, after a CR.
    Cr,
}

/// An incremental body decoder. Feed it what the client sends; it appends content to `out`.
#[derive(Debug)]
pub struct BodyDecoder {
    mode: Mode,
    state: State,
    /// The previous line ended with CRLF (or this is the first line): only then may a "."
    /// line end the DATA.
    after_crlf: bool,
}

/// What [`BodyDecoder::decode`] found in its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used. Less than the input only when the end of DATA was found: the rest
    /// belongs to the next command.
    pub consumed: usize,
    /// The end-of-data line CRLF "." CRLF was read.
    pub end: bool,
}

impl BodyDecoder {
    pub fn data() -> BodyDecoder {
        BodyDecoder { mode: Mode::Data, state: State::LineStart, after_crlf: true }
    }

    pub fn bdat() -> BodyDecoder {
        BodyDecoder { mode: Mode::Bdat, state: State::InLine, after_crlf: true }
    }

    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::InLine {
                // Most of a body is ordinary bytes inside lines: copy them in one go.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                out.extend_from_slice(&input[i..i + run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let byte = input[i];
            i += 1;
            match self.state {
                State::LineStart if byte == b'.' => self.state = State::Dot,
                State::LineStart => self.in_line(byte, out),
                State::Dot => match byte {
                    b'\r' => self.state = State::DotCr,
                    b'\n' => {
                        out.extend_from_slice(b".\r\n");
                        self.line_ended(false);
                    }
                    // A stuffed dot: drop it.
                    _ => self.in_line(byte, out),
                },
                State::DotCr => {
                    if byte == b'\n' {
                        if self.after_crlf {
                            self.state = State::LineStart;
                            return Decoded { consumed: i, end: true };
                        }
                        out.extend_from_slice(b".\r\n");
                        self.line_ended(true);
                    } else {
                        // A "." line ended by a bare CR: content; the byte starts a new line.
                        out.extend_from_slice(b".\r\n");
                        self.line_ended(false);
                        i -= 1;
                    }
                }
                State::InLine => self.in_line(byte, out),
                State::Cr => {
                    if !self.after_cr(byte, out) {
                        i -= 1;
                    }
                }
            }
        }
        Decoded { consumed: i, end: false }
    }

    /// The end of a BDAT ... LAST body: a CR that was waiting for its LF ends the last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr {
            out.extend_from_slice(b"\r\n");
        }
        self.state = State::InLine;
    }

    fn in_line(&mut self, byte: u8, out: &mut Vec<u8>) {
        match byte {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                self.line_ended(false);
            }
            _ => {
                out.push(byte);
                self.state = State::InLine;
            }
        }
    }

    /// The byte after a CR: an LF completes the line; anything else means the CR was bare —
    /// it ends the line, and the byte (false: not consumed) starts the next one.
    fn after_cr(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(b"\r\n");
        let crlf = byte == b'\n';
        self.line_ended(crlf);
        crlf
    }

    fn line_ended(&mut self, crlf: bool) {
        self.after_crlf = crlf;
        self.state = match self.mode {
            Mode::Data => State::LineStart,
            Mode::Bdat => State::InLine,
        };
    }
}

/// RFC 5321 section 4.5.2, sending side (the delivery client's): a "." at the start of a line
/// is doubled. The spool holds CRLF line ends only, so a line starts at the body's start and
/// after each LF. Kept beside the decoder because the two must agree: what [`BodyDecoder`]
/// stored, stuffed and read again by a [`BodyDecoder`], is the same content.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { at_line_start: true }
    }
}

impl DotStuffer {
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &byte in chunk {
            if self.at_line_start && byte == b'.' {
                out.push(b'.');
            }
            out.push(byte);
            self.at_line_start = byte == b'\n';
        }
    }

    /// The end-of-data line, after a CRLF if the body did not end with one.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` split at every possible point, checking that the split never matters.
    fn decode_data(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut whole = Vec::new();
        let mut decoder = BodyDecoder::data();
        let result = decoder.decode(input, &mut whole);
        let end = result.end.then_some(result.consumed);
        for split in 0..input.len() {
            let mut parts = Vec::new();
            let mut decoder = BodyDecoder::data();
            let first = decoder.decode(&input[..split], &mut parts);
            let split_end = if first.end {
                Some(first.consumed)
            } else {
                let second = decoder.decode(&input[split..], &mut parts);
                second.end.then_some(split + second.consumed)
            };
            assert_eq!((&parts, split_end), (&whole, end), "split at {split}");
        }
        (whole, end)
    }

    #[test]
    fn data_ends_at_crlf_dot_crlf_and_leaves_the_rest() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (body, end) = decode_data(input);
        assert_eq!(body, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(end, Some(input.len() - 6));
        assert_eq!(decode_data(b".\r\n"), (vec![], Some(3)), "empty body");
    }

    #[test]
    fn dots_are_unstuffed() {
        let (body, end) = decode_data(b"..leading\r\n...\r\n.x\r\n.\r\n");
        assert_eq!(body, b".leading\r\n..\r\nx\r\n");
        assert_eq!(end, Some(23));
    }

    #[test]
    fn smuggling_sequences_are_content_not_the_end() {
        for (input, stored) in [
            (&b"a\n.\nMAIL FROM:<x@y>\r\n"[..], &b"a\r\n.\r\nMAIL FROM:<x@y>\r\n"[..]),
            (b"a\r\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
            (b"a\n.\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
            (b"a\r.\rb\r\n", b"a\r\n.\r\nb\r\n"),
            (b"a\r\n.\rb\r\n", b"a\r\n.\r\nb\r\n"),
            (b"a\r.\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        ] {
            let (body, end) = decode_data(input);
            assert_eq!(end, None, "{input:?} must not end the data");
            assert_eq!(body, stored, "{input:?}");
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_are_normalised() {
        let (body, _) = decode_data(b"one\ntwo\rthree\r\n..four\r.\r\n");
        assert_eq!(body, b"one\r\ntwo\r\nthree\r\n.four\r\n.\r\n");
    }

    #[test]
    fn bdat_content_is_not_unstuffed_and_cr_lf_may_straddle_chunks() {
        let mut out = Vec::new();
        let mut decoder = BodyDecoder::bdat();
        assert_eq!(decoder.decode(b"..a\r", &mut out), Decoded { consumed: 4, end: false });
        decoder.decode(b"\n.\r\nb\nc\r", &mut out);
        decoder.finish(&mut out);
        assert_eq!(out, b"..a\r\n.\r\nb\r\nc\r\n");
    }

    #[test]
    fn dots_at_line_starts_are_doubled_across_chunks() {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        stuffer.stuff(b".a\r\nb\r", &mut out);
        stuffer.stuff(b"\n.\r\nc.d", &mut out);
        stuffer.end(&mut out);
        assert_eq!(out, b"..a\r\nb\r\n..\r\nc.d\r\n.\r\n");
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(b"x\r\n", &mut out);
        stuffer.end(&mut out);
        assert_eq!(out, b"x\r\n.\r\n");
    }
}
