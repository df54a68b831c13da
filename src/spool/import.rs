//! Building a spool from another store's contents: the way in for `tools/sled-import`, which
//! reads the spool of a sled-based relayd and writes a new one through this API, so that the
//! new spool's layout stays this module's alone.
//!
//! The new spool is built in `data_dir/spool.importing` with non-durable commits, made durable
//! by one durable commit at the end; then the old spool directory becomes `data_dir/spool.sled`
//! and the new one `data_dir/spool`, and the data directory is synced. An import that stops
//! half-way leaves the old spool where it was (and is started again from the beginning).

use std::path::{Path, PathBuf};

use redb::{Database, Durability, WriteTransaction};

use super::body::Chunker;
use super::commit::Staging;
use super::record::{EpochStart, LogPosition, LogRecord, MessageRecord};
use super::{ErrorKind, FILE_NAME, SpoolError, open, tables};
use crate::config::Role;

/// A new spool being filled.
pub struct Import {
    db: Database,
    data_dir: PathBuf,
}

/// Where an import left things.
#[derive(Debug)]
pub struct Imported {
    /// The new spool's directory (`data_dir/spool`).
    pub spool: PathBuf,
    /// Where the old spool's files were kept (`data_dir/spool.sled`).
    pub kept: PathBuf,
}

impl Import {
    /// Starts a new spool for `data_dir`, whose `spool` directory holds the old one.
    pub fn begin(data_dir: &Path) -> Result<Import, SpoolError> {
        let kept = data_dir.join("spool.sled");
        if kept.exists() {
            return Err(SpoolError::new(
                ErrorKind::Format,
                format!(
                    "{} exists already: an earlier import kept the old spool there",
                    kept.display()
                ),
            ));
        }
        let building = data_dir.join("spool.importing");
        // What an import that stopped half-way left: ours to throw away.
        if building.exists() {
            std::fs::remove_dir_all(&building)?;
        }
        std::fs::create_dir_all(&building)?;
        let opened = open::open_file(&building.join(FILE_NAME))?;
        Ok(Import { db: opened.db, data_dir: data_dir.to_path_buf() })
    }

    /// A queued message with its body, read a piece at a time from `body` (pieces of any
    /// size; they are stored in the spool's own chunks). The body must hold the envelope's
    /// size in bytes.
    pub fn message<B: AsRef<[u8]>, E: std::fmt::Display>(
        &mut self,
        message: &MessageRecord,
        body: impl IntoIterator<Item = Result<B, E>>,
    ) -> Result<(), SpoolError> {
        let id = message.envelope.id;
        self.change(|txn| {
            let mut bodies = txn.open_table(tables::BODIES)?;
            let mut chunker = Chunker::new();
            let (mut index, mut size) = (0u32, 0u64);
            let mut store = |chunk: Vec<u8>| -> Result<(), SpoolError> {
                bodies.insert((id.as_u128(), index), chunk.as_slice())?;
                index += 1;
                Ok(())
            };
            for piece in body {
                let piece =
                    piece.map_err(|e| SpoolError::corrupt(format!("the body of {id}: {e}")))?;
                size += piece.as_ref().len() as u64;
                chunker.write(piece.as_ref(), &mut store)?;
            }
            for piece in chunker.finish() {
                store(piece)?;
            }
            if size != message.envelope.size {
                return Err(SpoolError::corrupt(format!(
                    "the body of {id} has {size} bytes, its envelope says {}",
                    message.envelope.size
                )));
            }
            drop(bodies);
            let mut staging = Staging::open(txn, Vec::new())?;
            staging.put(message)
        })
    }

    /// Records of the change log, as they were.
    pub fn log(&mut self, records: &[LogRecord]) -> Result<(), SpoolError> {
        self.change(|txn| {
            let mut log = txn.open_table(tables::LOG)?;
            for record in records {
                log.insert(record.position.seq, postcard::to_stdvec(record)?.as_slice())?;
            }
            Ok(())
        })
    }

    /// The node's state: its epoch history, where a snapshot left its log (if it was built
    /// from one), whether a snapshot was being installed, and its role.
    pub fn state(
        &mut self,
        history: &[EpochStart],
        resumed: Option<LogPosition>,
        snapshot_incomplete: bool,
        role: Option<Role>,
    ) -> Result<(), SpoolError> {
        self.change(|txn| {
            let mut state = txn.open_table(tables::STATE)?;
            state.insert(tables::EPOCH_HISTORY, postcard::to_stdvec(history)?.as_slice())?;
            if let Some(resumed) = resumed {
                state.insert(tables::RESUMED, postcard::to_stdvec(&resumed)?.as_slice())?;
            }
            if snapshot_incomplete {
                state.insert(tables::SNAPSHOT_INCOMPLETE, [1u8].as_slice())?;
            }
            if let Some(role) = role {
                state.insert(tables::ROLE, role.as_str().as_bytes())?;
            }
            Ok(())
        })
    }

    /// Makes the new spool durable and puts it in the old one's place, keeping the old one.
    pub fn finish(self) -> Result<Imported, SpoolError> {
        let mut txn = self.db.begin_write()?;
        super::commit::make_durable(&mut txn)?;
        txn.commit()?;
        drop(self.db);
        let spool = self.data_dir.join("spool");
        let kept = self.data_dir.join("spool.sled");
        let building = self.data_dir.join("spool.importing");
        std::fs::File::open(&building)?.sync_all()?;
        std::fs::rename(&spool, &kept)?;
        std::fs::rename(&building, &spool)?;
        std::fs::File::open(&self.data_dir)?.sync_all()?;
        Ok(Imported { spool, kept })
    }

    /// One non-durable commit of `stage` (the durable one is `finish`'s).
    fn change(
        &mut self,
        stage: impl FnOnce(&WriteTransaction) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        stage(&txn)?;
        txn.commit()?;
        Ok(())
    }
}
