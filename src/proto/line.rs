//! Command lines: the bytes a client sends between commands, cut into lines. No I/O here: the
//! session hands in whatever its socket buffer holds, however the client's writes were split,
//! and takes back how much was used, so that the bytes after a line stay for the next read.

use super::reply::Reply;

/// The longest command line taken, CRLF included. RFC 5321 asks for at least 512 octets;
/// Postfix reads up to 2048 (line_length_limit), and so do we. Longer lines are refused,
/// never held.
pub const MAX_COMMAND_LINE: usize = 2048;

/// What [`LineReader::push`] did with its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Input bytes used: up to and including the line's LF, or all of it when no LF came.
    pub consumed: usize,
    /// A complete line, without its CRLF, or the reply refusing it (too long, ended by a bare
    /// LF, holding a NUL). `None`: the line goes on in the next input.
    pub line: Option<Result<Vec<u8>, Reply>>,
}

/// Assembles one command line from pieces of input. Holds at most [`MAX_COMMAND_LINE`] bytes:
/// the rest of a longer line is read and dropped until its LF.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
    too_long: bool,
}

impl LineReader {
    /// Takes `input` up to the first LF. Once a line is complete the reader is empty again,
    /// ready for the next one.
    pub fn push(&mut self, input: &[u8]) -> Pushed {
        let (consumed, complete) = match memchr::memchr(b'\n', input) {
            Some(lf) => (lf + 1, true),
            None => (input.len(), false),
        };
        if !self.too_long {
            self.line.extend_from_slice(&input[..consumed]);
            if self.line.len() > MAX_COMMAND_LINE {
                self.too_long = true;
                self.line = Vec::new();
            }
        }
        let line = complete.then(|| self.complete());
        Pushed { consumed, line }
    }

    fn complete(&mut self) -> Result<Vec<u8>, Reply> {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.too_long) {
            return Err(Reply::new(500, "5.5.2", "Error: line too long"));
        }
        let Some(content) = line.strip_suffix(b"\r\n") else {
            return Err(Reply::new(
                500,
                "5.5.2",
                "Error: bare LF received; end commands with CRLF",
            ));
        };
        if content.contains(&0) {
            return Err(Reply::new(501, "5.5.2", "Error: NUL character in command"));
        }
        Ok(content.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line in `input`, pushed in pieces of `piece` bytes.
    fn lines(input: &[u8], piece: usize) -> Vec<Result<Vec<u8>, u16>> {
        let mut reader = LineReader::default();
        let mut out = Vec::new();
        for mut chunk in input.chunks(piece) {
            while !chunk.is_empty() {
                let pushed = reader.push(chunk);
                chunk = &chunk[pushed.consumed..];
                out.extend(pushed.line.map(|line| line.map_err(|reply| reply.code)));
            }
        }
        out
    }

    #[test]
    fn lines_end_at_crlf_whatever_the_pieces() {
        let input = b"EHLO a\r\nMAIL FROM:<a@b.c>\r\nbare\nnul\0\r\npartial";
        let expected =
            vec![Ok(b"EHLO a".to_vec()), Ok(b"MAIL FROM:<a@b.c>".to_vec()), Err(500), Err(501)];
        for piece in 1..=input.len() {
            assert_eq!(lines(input, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn a_long_line_is_refused_whole_and_the_next_one_is_read() {
        let mut input = vec![b'x'; MAX_COMMAND_LINE * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(lines(&input, 1000), vec![Err(500), Ok(b"NOOP".to_vec())]);
        let mut fits = vec![b'x'; MAX_COMMAND_LINE - 2];
        fits.extend_from_slice(b"\r\n");
        assert_eq!(lines(&fits, 7), vec![Ok(vec![b'x'; MAX_COMMAND_LINE - 2])]);
    }
}
