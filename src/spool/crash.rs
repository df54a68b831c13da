//! Crash tests through redb's `StorageBackend` hook: the spool on a disk of our making that
//! fails a write, tears one (writes part of it, then fails), fails an fsync (and loses what
//! was written since the last one, as Linux may after a failed writeback), or loses its power
//! (every later operation fails; what was not synced is lost, or only part of it reaches the
//! platter, in any order).
//!
//! Properties, for many seeded runs of concurrent senders with the fault at a random point:
//! an `accept` whose commit met a fault never returns Ok (so no 250), reopening after the cut
//! never panics, and every message whose accept returned Ok is there with its whole body.
//! `RELAYD_CRASH_SEEDS` sets how many runs (default 32), `RELAYD_CRASH_SEED` runs one.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::*;

/// What the disk does at its `fault_at`-th write, set-length or sync.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The write fails; nothing of it lands.
    FailWrite,
    /// The write lands in part, then fails.
    TearWrite,
    /// The sync fails, and every write since the last good sync is lost.
    FailSync,
    /// The power goes: this and every later operation fail.
    PowerCut,
}

/// One change not yet synced.
#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct DiskState {
    /// What the platter holds: the image as of the last good sync.
    synced: Vec<u8>,
    /// What reads see: `synced` plus every pending change.
    current: Vec<u8>,
    pending: Vec<Pending>,
    /// Operations so far: writes, syncs, and all (set-lengths too).
    writes: u64,
    syncs: u64,
    operations: u64,
    /// The fault, and the count (of its kind of operation) at which it fires.
    fault: Option<(Fault, u64)>,
    /// The fault that fired, if one did.
    fired: Option<Fault>,
    dead: bool,
    /// Backends open on this disk (a reopen waits for the old one to close, as a file lock
    /// would make it).
    open: usize,
}

/// A disk shared by the backends opened on it, one after the other.
#[derive(Clone, Default)]
struct Disk(Arc<Mutex<DiskState>>);

impl Disk {
    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn backend(&self) -> Backend {
        self.state().open += 1;
        Backend { disk: self.clone() }
    }

    /// The disk after the power came back: what was synced, plus each pending change kept,
    /// dropped or (a write) torn at random, in order.
    fn after_power_cut(&self, rng: &mut fastrand::Rng, keep_none: bool) -> Disk {
        let state = self.state();
        let mut image = state.synced.clone();
        for change in &state.pending {
            if keep_none || rng.bool() {
                continue;
            }
            match change {
                Pending::SetLen(len) => image.resize(*len as usize, 0),
                Pending::Write { offset, data } => {
                    let kept = if rng.u8(..4) == 0 { rng.usize(..=data.len()) } else { data.len() };
                    put(&mut image, *offset, &data[..kept]);
                }
            }
        }
        let state = DiskState { synced: image.clone(), current: image, ..DiskState::default() };
        Disk(Arc::new(Mutex::new(state)))
    }
}

fn put(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

#[derive(Debug)]
struct Backend {
    disk: Disk,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

/// What an operation is, for the count a fault fires at.
#[derive(PartialEq)]
enum Operation {
    Write,
    Sync,
    SetLen,
}

impl DiskState {
    /// Counts an operation; the fault it meets, if this is the one.
    fn operation(&mut self, operation: Operation) -> Result<Option<Fault>, io::Error> {
        if self.dead {
            return Err(eio("no power"));
        }
        self.operations += 1;
        match operation {
            Operation::Write => self.writes += 1,
            Operation::Sync => self.syncs += 1,
            Operation::SetLen => {}
        }
        let Some((fault, at)) = self.fault else { return Ok(None) };
        let count = match fault {
            Fault::FailWrite | Fault::TearWrite if operation == Operation::Write => self.writes,
            Fault::FailSync if operation == Operation::Sync => self.syncs,
            Fault::PowerCut => self.operations,
            _ => return Ok(None),
        };
        if count != at {
            return Ok(None);
        }
        self.fault = None;
        self.fired = Some(fault);
        if fault == Fault::PowerCut {
            self.dead = true;
            return Err(eio("power cut"));
        }
        Ok(Some(fault))
    }

    /// Arms `fault` a random number of its operations from now.
    fn arm(&mut self, fault: Fault, rng: &mut fastrand::Rng) {
        let at = match fault {
            Fault::FailWrite | Fault::TearWrite => self.writes + rng.u64(1..200),
            Fault::FailSync => self.syncs + rng.u64(1..24),
            Fault::PowerCut => self.operations + rng.u64(1..300),
        };
        self.fault = Some((fault, at));
    }
}

impl redb::StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        let state = self.disk.state();
        if state.dead {
            return Err(eio("no power"));
        }
        Ok(state.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.disk.state();
        if state.dead {
            return Err(eio("no power"));
        }
        let start = offset as usize;
        let bytes = state.current.get(start..start + out.len()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the disk")
        })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.disk.state();
        state.operation(Operation::SetLen)?;
        state.current.resize(len as usize, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.disk.state();
        if state.operation(Operation::Sync)?.is_some() {
            // What the failed writeback held is gone, and the next sync will not say so.
            state.current = state.synced.clone();
            state.pending.clear();
            return Err(eio("fsync"));
        }
        state.synced = state.current.clone();
        state.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.disk.state();
        let fault = state.operation(Operation::Write)?;
        let landed = match fault {
            None => data,
            Some(_) => &data[..data.len() / 2],
        };
        let landed = if fault == Some(Fault::FailWrite) { &[][..] } else { landed };
        put(&mut state.current, offset, landed);
        state.pending.push(Pending::Write { offset, data: landed.to_vec() });
        match fault {
            Some(_) => Err(eio("write")),
            None => Ok(()),
        }
    }

    fn close(&self) -> Result<(), io::Error> {
        self.disk.state().open -= 1;
        Ok(())
    }
}

/// Opens a spool on `disk`; after a failed write the committer opens it again once the old
/// backend is closed.
fn open_on(disk: &Disk, dir: &Path) -> Result<Spool, SpoolError> {
    let reopen_disk = disk.clone();
    let reopen = Box::new(move || {
        if reopen_disk.state().open > 0 {
            return Err(SpoolError::new(ErrorKind::Locked, "the old backend is still open"));
        }
        open::open_backend(reopen_disk.backend())
    });
    Spool::open_backend(disk.backend(), dir, reopen)
}

/// A message's body: `size` bytes that depend on `n`.
fn body_of(n: u64, size: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(n);
    (0..size).map(|_| rng.u8(..)).collect()
}

fn envelope(id: QueueId, size: u64) -> Envelope {
    Envelope {
        id,
        sender: "a@client.test".into(),
        recipients: vec!["b@example.com".into()],
        received_at_ms: 1,
        client: "127.0.0.1".into(),
        helo: "client.test".into(),
        size,
        eight_bit: false,
        smtputf8: false,
    }
}

/// One run: senders, a fault at a random point, a power cut at the end, a reopen, checks.
/// The fault that fired, if any, and how many messages were acknowledged.
async fn run(seed: u64) -> (Option<Fault>, usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Disk::default();
    let spool = open_on(&disk, dir.path()).expect("open a fresh spool");
    spool.ensure_epoch().await.expect("epoch");
    let fault =
        [Fault::FailWrite, Fault::TearWrite, Fault::FailSync, Fault::PowerCut][rng.usize(..4)];
    disk.state().arm(fault, &mut rng);
    let senders: Vec<_> = (0..8u64)
        .map(|sender| {
            let spool = spool.clone();
            let sizes: Vec<usize> = (0..4).map(|_| rng.usize(..100_000)).collect();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for (i, size) in sizes.into_iter().enumerate() {
                    let n = seed * 1000 + sender * 10 + i as u64;
                    let id = QueueId::new();
                    let content = body_of(n, size);
                    let mut body = spool.body_writer(id);
                    // Written in pieces, as a session does, waiting between them for more
                    // bytes from the client (so that a fault may come in the middle).
                    let mut written = Ok(());
                    for piece in content.chunks(10_000) {
                        written = written.and_then(|()| body.write(piece));
                        tokio::time::sleep(std::time::Duration::from_micros(300)).await;
                    }
                    if written.is_err() {
                        continue;
                    }
                    if spool.accept(envelope(id, size as u64), body).await.is_ok() {
                        acknowledged.push((id, n, size));
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.expect("sender"));
    }
    let fired = disk.state().fired;
    // The power goes; the process dies with it.
    disk.state().dead = true;
    drop(spool);
    let keep_none = rng.bool();
    let after = disk.after_power_cut(&mut rng, keep_none);
    let spool = open_on(&after, dir.path())
        .unwrap_or_else(|e| panic!("reopen after the cut ({fired:?}, keep_none {keep_none}): {e}"));
    let stored: BTreeMap<QueueId, MessageRecord> = spool
        .messages()
        .map(|m| m.map(|m| (m.envelope.id, m)))
        .collect::<Result<_, _>>()
        .expect("read the messages back");
    for (id, n, size) in &acknowledged {
        let record = stored.get(id).unwrap_or_else(|| {
            panic!("message {id} acknowledged, lost ({fired:?}, keep_none {keep_none})")
        });
        assert_eq!(record.envelope.size, *size as u64);
        let body: Vec<u8> =
            spool.body(*id).collect::<Result<Vec<_>, _>>().expect("read a body").concat();
        assert!(body == body_of(*n, *size), "message {id}'s body differs ({fired:?})");
    }
    let logged: std::collections::BTreeSet<QueueId> = spool
        .log_from(0)
        .filter_map(|record| match record.expect("read the log").change {
            Change::Accepted(envelope) => Some(envelope.id),
            _ => None,
        })
        .collect();
    for (id, ..) in &acknowledged {
        assert!(logged.contains(id), "message {id} acknowledged, its log record lost ({fired:?})");
    }
    assert_eq!(spool.queue_len(), stored.len() as u64);
    // The spool takes mail again after the cut.
    spool.ensure_epoch().await.expect("epoch after the cut");
    let id = QueueId::new();
    spool.accept(envelope(id, 0), spool.body_writer(id)).await.expect("accept after the cut");
    (fired, acknowledged.len())
}

fn seeds() -> Vec<u64> {
    let var = |name| std::env::var(name).ok().and_then(|v: String| v.parse().ok());
    match var("RELAYD_CRASH_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (0..var("RELAYD_CRASH_SEEDS").unwrap_or(32)).map(|i| first * 1000 + i).collect()
        }
    }
}

#[test]
fn faults_and_power_cuts_never_lose_an_acknowledged_message() {
    let seeds = seeds();
    let mut fired = Vec::new();
    let mut acknowledged = 0;
    for &seed in &seeds {
        let outcome = std::panic::catch_unwind(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(60), run(seed))
                    .await
                    .expect("a run ends")
            })
        });
        match outcome {
            Ok((fault, acked)) => {
                fired.extend(fault);
                acknowledged += acked;
            }
            Err(_) => {
                panic!("crash test failed with seed {seed}: rerun with RELAYD_CRASH_SEED={seed}")
            }
        }
    }
    eprintln!(
        "{} runs, {acknowledged} messages acknowledged, faults fired: {fired:?}",
        seeds.len()
    );
    // The runs must have met faults of every kind (each run arms one at random), or they
    // proved nothing about them.
    if seeds.len() >= 24 {
        for kind in [Fault::FailWrite, Fault::TearWrite, Fault::FailSync, Fault::PowerCut] {
            assert!(fired.contains(&kind), "no run met a {kind:?}");
        }
    }
}
