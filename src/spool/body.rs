//! Message bodies, written and read in chunks so that no message is ever held whole in memory.

use super::{QueueId, Spool, SpoolError, keys};

/// Streams a body into the spool while the client sends it. The chunks are plain inserts: they
/// become durable with the group commit that records the message ([`Spool::accept`]), and a
/// body whose message is never committed is removed (on drop, or at the next start if the
/// process died first).
pub struct BodyWriter {
    spool: Spool,
    id: QueueId,
    /// The tree this body is written to (see `Store::generation`): a body begun before the
    /// tree was reopened lost its chunks with the old tree and may not be committed.
    generation: u64,
    pending: Vec<u8>,
    chunks_written: u32,
    size: u64,
    committed: bool,
}

impl BodyWriter {
    pub(super) fn new(spool: Spool, id: QueueId, generation: u64) -> BodyWriter {
        BodyWriter {
            spool,
            id,
            generation,
            pending: Vec::with_capacity(keys::CHUNK_SIZE),
            chunks_written: 0,
            size: 0,
            committed: false,
        }
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SpoolError> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = keys::CHUNK_SIZE - self.pending.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = later;
            if self.pending.len() == keys::CHUNK_SIZE {
                self.write_chunk()?;
            }
        }
        Ok(())
    }

    /// Writes the last partial chunk. Called by [`Spool::accept`].
    pub(super) fn finish(&mut self) -> Result<(), SpoolError> {
        if !self.pending.is_empty() {
            self.write_chunk()?;
        }
        Ok(())
    }

    pub(super) fn mark_committed(&mut self) {
        self.committed = true;
    }

    fn write_chunk(&mut self) -> Result<(), SpoolError> {
        let key = keys::body_chunk(self.id, self.chunks_written);
        let db = self.spool.db_of(self.generation)?;
        if let Err(e) = db.insert(&key[..], &self.pending[..]) {
            // sled may have failed a write of its own meanwhile (a full disk): the committer
            // must learn it, or nothing would reopen the tree.
            self.spool.nudge_committer();
            return Err(e.into());
        }
        self.chunks_written += 1;
        self.pending.clear();
        Ok(())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // A body of a closed tree is gone with it (what reached the disk was removed as an
        // orphan when the tree was reopened).
        if self.committed || self.chunks_written == 0 || self.spool.db_of(self.generation).is_err()
        {
            return;
        }
        // A body that arrived again for a message already stored (a resent replication or
        // salvage frame) rewrote the same chunks: they belong to that message, keep them.
        if self.spool.get(self.id).is_ok_and(|stored| stored.is_some()) {
            return;
        }
        if let Err(e) = self.spool.remove_body(self.id) {
            tracing::warn!(id = %self.id, error = %e, "could not remove an abandoned body; it is removed at the next start");
        }
    }
}

/// The body chunks of a message, in order.
pub struct BodyChunks {
    inner: super::Scan,
}

impl BodyChunks {
    pub(super) fn new(inner: super::Scan) -> BodyChunks {
        BodyChunks { inner }
    }
}

impl Iterator for BodyChunks {
    type Item = Result<sled::IVec, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|item| item.map(|(_, chunk)| chunk))
    }
}
