//! Message bodies, written and read in chunks so that no message is ever held whole in memory.

use super::commit::Request;
use super::{QueueId, Spool, SpoolError, tables};

/// Cuts a stream of bytes into chunks of [`tables::CHUNK_SIZE`] (the tail in smaller pieces). Its
/// buffer is allocated when bytes come, and handed over with the chunk: a thousand sessions
/// that end their messages at once do not each hold a fresh, empty one.
pub(super) struct Chunker {
    pending: Vec<u8>,
}

impl Chunker {
    pub(super) fn new() -> Chunker {
        Chunker { pending: Vec::new() }
    }

    /// Takes `data`, handing each chunk it completes to `full`.
    pub(super) fn write(
        &mut self,
        mut data: &[u8],
        mut full: impl FnMut(Vec<u8>) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        while !data.is_empty() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(tables::CHUNK_SIZE);
            }
            let room = tables::CHUNK_SIZE - self.pending.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = later;
            if self.pending.len() == tables::CHUNK_SIZE {
                full(self.take())?;
            }
        }
        Ok(())
    }

    /// The bytes left after the last full chunk, in pieces of at most [`tables::TAIL_PIECE`]
    /// (each fits a page of its own or shares one: see [`tables::CHUNK_SIZE`]); each piece is
    /// its own allocation of its size, since it may wait in the committer's queue beside many
    /// others.
    pub(super) fn finish(&mut self) -> Vec<Vec<u8>> {
        let tail = self.take();
        tail.chunks(tables::TAIL_PIECE).map(<[u8]>::to_vec).collect()
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Streams a body into the spool while the client sends it. Each chunk goes to the committer,
/// which stores it with a non-durable commit (or with the durable one it meets first): the
/// chunks become durable with the commit that records the message ([`Spool::accept`]), and a
/// body whose message is never committed is removed (on drop, or at the next start if the
/// process died first).
pub struct BodyWriter {
    spool: Spool,
    id: QueueId,
    chunker: Chunker,
    chunks_sent: u32,
    size: u64,
    committed: bool,
}

impl BodyWriter {
    pub(super) fn new(spool: Spool, id: QueueId) -> BodyWriter {
        BodyWriter { spool, id, chunker: Chunker::new(), chunks_sent: 0, size: 0, committed: false }
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.size += data.len() as u64;
        let (spool, id, sent) = (&self.spool, self.id, &mut self.chunks_sent);
        self.chunker.write(data, |chunk| send_chunk(spool, id, sent, chunk))
    }

    /// Sends the body's tail; the number of chunks the body has. Called by [`Spool::accept`].
    pub(super) fn finish(&mut self) -> Result<u32, SpoolError> {
        for piece in self.chunker.finish() {
            send_chunk(&self.spool, self.id, &mut self.chunks_sent, piece)?;
        }
        Ok(self.chunks_sent)
    }

    pub(super) fn mark_committed(&mut self) {
        self.committed = true;
    }
}

fn send_chunk(spool: &Spool, id: QueueId, sent: &mut u32, data: Vec<u8>) -> Result<(), SpoolError> {
    spool.send_blocking(Request::Chunk { id, index: *sent, data })?;
    *sent += 1;
    Ok(())
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if self.committed || self.chunks_sent == 0 {
            return;
        }
        // The committer removes the chunks unless the message is stored (a body that arrived
        // again for a message already held, in a resent replication or salvage frame).
        if let Err(e) = self.spool.send_blocking(Request::Abandon(self.id)) {
            tracing::warn!(id = %self.id, error = %e, "could not remove an abandoned body; it is removed at the next start");
        }
    }
}

/// The body chunks of a message, in order.
pub struct BodyChunks {
    inner: super::Scan<(u128, u32)>,
}

impl BodyChunks {
    pub(super) fn new(inner: super::Scan<(u128, u32)>) -> BodyChunks {
        BodyChunks { inner }
    }
}

impl Iterator for BodyChunks {
    type Item = Result<Vec<u8>, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}
