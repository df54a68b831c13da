//! The cluster link's frames: a stream of length-prefixed postcard frames read with
//! `frame::read`, the function the shipper, the follower and the witness use, from a reader
//! that hands the stream over in arbitrary pieces. The whole input is also decoded as one
//! frame body, so that the fuzzer reaches the postcard decoder without first guessing a
//! matching length prefix.
//!
//! Checked beyond "no panic": the frames read, and the error that stops the stream, do not
//! depend on how it was split; every frame read encodes and decodes back to itself; nothing
//! allocates more than `MAX_ALLOCATION` (the length prefix is not trusted).

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use relayd::replication::frame::{self, Frame};
use relayd_fuzz::same_however_split;
use tokio::io::{AsyncRead, ReadBuf};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = frame::decode(data) {
        check_round_trip(&body);
    }
    let frames = same_however_split(data, read_frames);
    for frame in frames.iter().filter_map(|f| f.as_ref().ok()) {
        check_round_trip(frame);
    }
});

/// Every frame in the stream, and the error that ended it (the end of the stream included).
fn read_frames(pieces: &[&[u8]]) -> Vec<Result<Frame, String>> {
    let mut stream = Pieces { pieces: pieces.iter(), current: &[] };
    let mut frames = Vec::new();
    loop {
        let frame = now(frame::read(&mut stream)).map_err(|e| e.to_string());
        let failed = frame.is_err();
        frames.push(frame);
        if failed {
            return frames;
        }
    }
}

fn check_round_trip(frame: &Frame) {
    let bytes = frame::encode(frame).expect("a frame that was read encodes");
    let again = frame::decode(&bytes[4..]).expect("an encoded frame decodes");
    assert_eq!(&again, frame);
}

/// Runs a future that cannot wait (its reader is always ready) to its end.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the frame reader waited on a reader that is always ready"),
    }
}

/// A stream that delivers its pieces one read at a time (less when the caller's buffer is
/// smaller), then the end of the stream.
struct Pieces<'a> {
    pieces: std::slice::Iter<'a, &'a [u8]>,
    current: &'a [u8],
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.current.is_empty() {
            match this.pieces.next() {
                Some(piece) => this.current = piece,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current[..n]);
        this.current = &this.current[n..];
        Poll::Ready(Ok(()))
    }
}
