use super::*;

fn envelope(id: QueueId) -> Envelope {
    Envelope {
        id,
        sender: "a@client.test".into(),
        recipients: vec!["b@example.com".into(), "c@example.com".into()],
        received_at_ms: 1,
        client: "127.0.0.1".into(),
        helo: "client.test".into(),
        size: 0,
        eight_bit: false,
        smtputf8: false,
    }
}

#[tokio::test]
async fn accepted_messages_are_read_back_with_their_log_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    assert_eq!(spool.ensure_epoch().await.expect("epoch"), 1);
    let id = QueueId::new();
    let mut body = spool.body_writer(id);
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    body.write(&content[..1000]).expect("write");
    body.write(&content[1000..]).expect("write");
    let position = spool.accept(envelope(id), body).await.expect("accept");
    assert_eq!(position, LogPosition { epoch: 1, seq: 2 });

    let record = spool.get(id).expect("get").expect("queued");
    assert_eq!(record.recipients, vec![RecipientState::new(); 2]);
    assert_eq!(record.accepted_at, position);
    let stored: Vec<u8> =
        spool.body(id).map(|c| c.expect("chunk").to_vec()).collect::<Vec<_>>().concat();
    assert_eq!(stored, content);
    assert_eq!(spool.body(id).count(), 4, "100,000 bytes: three full chunks and a tail piece");
    let log: Vec<LogRecord> = spool.log_from(2).collect::<Result<_, _>>().expect("log");
    assert_eq!(log, vec![LogRecord { position, change: Change::Accepted(envelope(id)) }]);
}

#[tokio::test]
async fn a_reopened_spool_continues_the_log_and_keeps_the_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let spool = Spool::open(dir.path()).expect("open");
        spool.ensure_epoch().await.expect("epoch");
        let id = QueueId::new();
        spool.accept(envelope(id), spool.body_writer(id)).await.expect("accept");
    }
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.ensure_epoch().await.expect("epoch"), 1, "no new epoch on restart");
    let id = QueueId::new();
    let position = spool.accept(envelope(id), spool.body_writer(id)).await.expect("accept");
    assert_eq!(position.seq, 3);
    assert_eq!(
        spool.epoch_history().expect("history"),
        vec![EpochStart { epoch: 1, first_seq: 1 }]
    );
}

#[tokio::test]
async fn bodies_never_committed_are_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kept = QueueId::new();
    let abandoned = QueueId::new();
    let crashed = QueueId::new();
    {
        let spool = Spool::open(dir.path()).expect("open");
        spool.ensure_epoch().await.expect("epoch");
        let mut body = spool.body_writer(kept);
        body.write(&[b'k'; 40_000]).expect("write");
        spool.accept(envelope(kept), body).await.expect("accept");
        // A session that gave up: its writer is dropped and cleans up.
        let mut body = spool.body_writer(abandoned);
        body.write(&[b'a'; 40_000]).expect("write");
        drop(body);
        spool.sync().expect("sync");
        assert_eq!(spool.body(abandoned).count(), 0);
        // A process that died mid-body: its chunks are written, its cleanup never runs
        // (marking the writer committed skips it, as a kill -9 would).
        let mut body = spool.body_writer(crashed);
        body.write(&[b'c'; 70_000]).expect("write");
        body.mark_committed();
        drop(body);
        spool.sync().expect("sync");
        assert_eq!(spool.body(crashed).count(), 2);
    }
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.body(crashed).count(), 0, "removed at start");
    // 40,000 bytes: a full chunk, and a tail of 7,296 in two pieces.
    assert_eq!(spool.body(kept).count(), 3, "a committed body stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_share_group_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let before = spool.syncs();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let id = QueueId::new();
                let mut body = spool.body_writer(id);
                body.write(b"Subject: concurrent\r\n\r\nbody\r\n").expect("write");
                spool.accept(envelope(id), body).await.expect("accept")
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.expect("task").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..202).collect::<Vec<u64>>(), "every change got its own sequence number");
    let syncs = spool.syncs() - before;
    assert!(
        syncs < 50,
        "200 concurrent accepts took {syncs} fdatasyncs: group commit is not grouping"
    );
}

/// A standby takes the primary's records only in the epoch its log is in: a record of an older
/// epoch, an epoch that does not go up, or a batch with a hole is refused, and nothing of it
/// is applied.
#[tokio::test]
async fn replicated_records_of_an_older_epoch_or_with_a_hole_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.set_writable(false);
    let at = |epoch, seq| LogPosition { epoch, seq };
    let record = |position, change| LogRecord { position, change };
    let accepted = |epoch, seq| record(at(epoch, seq), Change::Accepted(envelope(QueueId::new())));
    let started = |epoch, seq| record(at(epoch, seq), Change::EpochStarted);
    spool.apply(vec![started(1, 1), started(2, 2)], Vec::new()).await.expect("epochs 1 and 2");

    let refused = [
        ("an older epoch", vec![accepted(1, 3)]),
        ("an epoch that does not go up", vec![started(2, 3)]),
        ("an older epoch after a good record", vec![accepted(2, 3), accepted(1, 4)]),
        ("a hole", vec![accepted(2, 3), accepted(2, 5)]),
        ("a gap", vec![accepted(2, 4)]),
    ];
    for (what, records) in refused {
        let error = spool.apply(records, Vec::new()).await.expect_err(what);
        assert_eq!(error.kind, ErrorKind::Corrupt, "{what}: {error}");
        assert_eq!(spool.last_position(), at(2, 2), "{what}: nothing applied");
        assert_eq!(spool.queue_len(), 0, "{what}: nothing queued");
    }
    let applied = spool.apply(vec![accepted(2, 3), started(3, 4)], Vec::new()).await;
    assert_eq!(applied.expect("the epoch's own records"), at(3, 4));
    assert_eq!(spool.queue_len(), 1);
}

/// The format is stored when the spool is created and checked at every open: a spool of
/// another format is refused, naming both formats, and left as it was.
#[tokio::test]
async fn a_spool_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(Spool::open(dir.path()).expect("create"));
    let path = dir.path().join("spool").join(FILE_NAME);
    let stored = |format: u64| {
        let db = redb::Database::open(&path).expect("redb");
        let txn = db.begin_write().expect("write");
        txn.open_table(tables::META)
            .expect("meta")
            .insert(tables::FORMAT_KEY, format)
            .expect("set");
        txn.commit().expect("commit");
    };
    stored(tables::FORMAT + 1);
    let error = Spool::open(dir.path()).err().expect("another format is refused");
    assert_eq!(error.kind, ErrorKind::Format, "{error}");
    assert!(error.message.contains(&format!("format {}", tables::FORMAT + 1)), "{error}");
    stored(tables::FORMAT);
    Spool::open(dir.path()).expect("its own format opens");
}

/// The number of entries of each table that holds mail, and the log's marks, as a reader sees
/// them now.
fn table_sizes(spool: &Spool) -> [(&'static str, u64); 5] {
    use redb::ReadableTableMetadata;
    let txn = spool.read().expect("read");
    let len = |n: Result<u64, redb::StorageError>| n.expect("table length");
    [
        ("messages", len(txn.open_table(tables::MESSAGES).expect("messages").len())),
        ("bodies", len(txn.open_table(tables::BODIES).expect("bodies").len())),
        ("receiving", len(txn.open_table(tables::RECEIVING).expect("receiving").len())),
        ("log", len(txn.open_table(tables::LOG).expect("log").len())),
        ("marks", len(txn.open_table(tables::MARKS).expect("marks").len())),
    ]
}

/// The log's marks, oldest first.
fn stored_marks(spool: &Spool) -> Vec<retention::Mark> {
    let txn = spool.read().expect("read");
    let table = txn.open_table(tables::MARKS).expect("marks");
    retention::marks(&table).expect("marks").collect::<Result<_, _>>().expect("a mark")
}

/// Bytes of the log's records `from..` as stored.
fn stored_log_bytes(spool: &Spool, from: u64) -> u64 {
    spool.log_entries_from(from).map(|entry| entry.expect("a record").1 as u64).sum()
}

/// Accepts `n` messages of two recipients with 4 KiB bodies; their ids.
async fn accept_some(spool: &Spool, n: usize) -> Vec<QueueId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = QueueId::new();
        let mut body = spool.body_writer(id);
        body.write(&[b'x'; 4096]).expect("write");
        spool.accept(envelope(id), body).await.expect("accept");
        ids.push(id);
    }
    ids
}

/// Both recipients of each message delivered: the messages leave the queue.
async fn deliver(spool: &Spool, ids: &[QueueId]) {
    let delivered = || RecipientState::Delivered { reply: "250 ok".into(), relay: "x".into() };
    for &id in ids {
        let results = vec![(0, delivered()), (1, delivered())];
        spool.commit(vec![Change::Attempted { id, results }], Vec::new()).await.expect("deliver");
    }
}

const WIDE: Retention =
    Retention { bytes: 1 << 40, age: std::time::Duration::from_secs(365 * 86_400) };

#[tokio::test]
async fn every_commit_that_adds_records_marks_the_log_end_with_its_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let before = now_ms();
    accept_some(&spool, 20).await;
    let marks = stored_marks(&spool);
    let end = *marks.last().expect("marks");
    assert_eq!(end.seq, spool.last_position().seq, "the last mark is at the log's end");
    assert_eq!(end.bytes, stored_log_bytes(&spool, 0), "the running total counts every record");
    assert!(end.time_ms >= before && end.time_ms <= now_ms(), "{end:?}");
    // 21 commits within a second and a few KiB: merged, not one mark each.
    assert!(marks.len() <= 2, "{marks:?}");
    // A body chunk alone adds no record, and no mark.
    let mut body = spool.body_writer(QueueId::new());
    body.write(&[b'y'; 40_000]).expect("write");
    spool.sync().expect("sync");
    assert_eq!(stored_marks(&spool), marks);
}

#[tokio::test]
async fn marks_a_second_apart_are_kept_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    for _ in 0..3 {
        accept_some(&spool, 2).await;
        tokio::time::sleep(std::time::Duration::from_millis(retention::MARK_INTERVAL_MS + 50))
            .await;
    }
    let marks = stored_marks(&spool);
    assert!(marks.len() >= 3, "{marks:?}");
    for pair in marks.windows(3) {
        assert!(pair[2].time_ms - pair[0].time_ms >= retention::MARK_INTERVAL_MS, "{marks:?}");
    }
    assert!(marks.windows(2).all(|w| w[0].seq < w[1].seq && w[0].bytes < w[1].bytes));
}

/// Makes the closed spool in `data_dir` look as an older relayd left it: of `format`, without
/// the tables `missing`. Returns the spool file's path.
fn as_format(data_dir: &Path, format: u64, missing: &[&str]) -> PathBuf {
    use redb::TableHandle;
    let path = data_dir.join("spool").join(FILE_NAME);
    let db = redb::Database::open(&path).expect("redb");
    let txn = db.begin_write().expect("write");
    txn.open_table(tables::META).expect("meta").insert(tables::FORMAT_KEY, format).expect("set");
    let doomed: Vec<_> = txn
        .list_tables()
        .expect("tables")
        .filter(|table| missing.contains(&table.name()))
        .collect();
    assert_eq!(doomed.len(), missing.len(), "{missing:?} were there");
    for table in doomed {
        txn.delete_table(table).expect("delete a table");
    }
    txn.commit().expect("commit");
    path
}

#[tokio::test]
async fn a_format_1_spool_is_migrated_at_open_its_log_marked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = {
        let spool = Spool::open(dir.path()).expect("create");
        spool.ensure_epoch().await.expect("epoch");
        accept_some(&spool, 5).await
    };
    // What relayd before format 2 left: format 1, no marks table (nor the tables of format 3).
    let path = as_format(
        dir.path(),
        tables::FORMAT_WITHOUT_MARKS,
        &["marks", "dsn", "epoch_notes", "held"],
    );
    let before = now_ms();
    let spool = Spool::open(dir.path()).expect("a format 1 spool opens");
    let marks = stored_marks(&spool);
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].seq, spool.last_position().seq);
    assert_eq!(marks[0].bytes, stored_log_bytes(&spool, 0));
    assert!(marks[0].time_ms >= before, "marked as of the open: {marks:?}");
    for id in ids {
        assert!(spool.get(id).expect("get").is_some(), "{id} kept");
    }
    // It is of the current format now, and goes on marking.
    accept_some(&spool, 1).await;
    assert_eq!(stored_marks(&spool).last().map(|m| m.seq), Some(spool.last_position().seq));
    drop(spool);
    assert_eq!(stored_format(&path), Some(tables::FORMAT));
}

#[tokio::test]
async fn trimming_keeps_what_is_wanted_within_the_bounds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    accept_some(&spool, 10).await;
    let last = spool.last_position().seq;
    // Within wide bounds, what is wanted stays.
    let trimmed = spool.trim_log(4, now_ms(), &WIDE).expect("trim");
    assert_eq!((trimmed.removed, trimmed.keep_from), (3, 4));
    assert_eq!(spool.log_from(0).next().and_then(Result::ok).map(|r| r.position.seq), Some(4));
    // A day later, with a bound of an hour, nothing is wanted any more but the newest record.
    let hour = Retention { bytes: 1 << 40, age: std::time::Duration::from_secs(3600) };
    let trimmed = spool.trim_log(0, now_ms() + 86_400_000, &hour).expect("trim");
    assert_eq!((trimmed.removed, trimmed.keep_from), (last as usize - 4, last));
    let log: Vec<LogRecord> = spool.log_from(0).collect::<Result<_, _>>().expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].position.seq, last);
    // The marks before it went too, but the one the log's bytes count from.
    assert!(stored_marks(&spool).len() <= 2);
    // The log goes on from there, and the next trim counts its bytes right.
    accept_some(&spool, 1).await;
    let marks = stored_marks(&spool);
    let end = marks.last().expect("a mark");
    assert_eq!(end.seq, last + 1);
}

/// Delivered mail leaves nothing behind once the log is trimmed (records, bodies, messages,
/// receiving marks: no leak), and the pages it freed are used again: six bursts of the same
/// mail take less than twice the disk blocks of one.
#[tokio::test]
async fn delivered_mail_leaves_nothing_and_its_space_is_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let file = dir.path().join("spool").join(FILE_NAME);
    // The blocks the file holds, not its length: redb extends a file under 4 GiB by doubling
    // its length, sparse until written.
    let size = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&file).expect("spool file").blocks() * 512
    };
    let mut sizes = Vec::new();
    for burst in 0..6 {
        let ids = accept_some(&spool, 500).await;
        let peak = size();
        deliver(&spool, &ids).await;
        let last = spool.last_position().seq;
        spool.trim_log(last, now_ms(), &WIDE).expect("trim");
        spool.sync().expect("sync");
        let tables = table_sizes(&spool);
        assert_eq!(
            tables,
            [("messages", 0), ("bodies", 0), ("receiving", 0), ("log", 1), ("marks", tables[4].1)],
            "burst {burst}"
        );
        assert!(tables[4].1 <= 2, "marks: {tables:?}");
        sizes.push((peak, size()));
    }
    // Without reuse six bursts would need six times the room of one. At this small scale
    // redb's own pages weigh, and a burst now and then takes a third more than the first
    // (seen: 4.4 MB, then 6.0 MB for the rest); bench/disk.sh measures the same at 50,000
    // messages, where a second burst added 0.7 % (docs/benchmarks.md).
    let (first_peak, _) = sizes[0];
    let highest = sizes.iter().map(|(peak, _)| *peak).max().unwrap_or(0);
    assert!(
        highest < 2 * first_peak,
        "bursts grew the file from {first_peak} to {highest} bytes: {sizes:?}"
    );
}

/// A large spool file mostly free (its mail delivered) is compacted at the next start; one
/// that holds its mail is not.
#[tokio::test]
async fn a_mostly_free_spool_file_is_compacted_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("spool").join(FILE_NAME);
    let size = || std::fs::metadata(&file).expect("spool file").len();
    let big = |spool: &Spool| {
        let id = QueueId::new();
        let mut body = spool.body_writer(id);
        body.write(&vec![b'z'; 256 * 1024]).expect("write");
        (id, body)
    };
    let mut ids = Vec::new();
    {
        let spool = Spool::open(dir.path()).expect("open");
        spool.ensure_epoch().await.expect("epoch");
        let wanted = open::COMPACT_FROM / (256 * 1024) + 40;
        for _ in 0..wanted {
            let (id, body) = big(&spool);
            spool.accept(envelope(id), body).await.expect("accept");
            ids.push(id);
        }
    }
    let full = size();
    assert!(full > open::COMPACT_FROM, "{full} bytes");
    drop(Spool::open(dir.path()).expect("reopen"));
    assert!(size() >= full - full / 10, "a file that holds its mail stays: {full} -> {}", size());
    {
        // The last messages stay queued: the free pages are not all at the file's end, where
        // redb gives them back by itself.
        let spool = Spool::open(dir.path()).expect("reopen");
        deliver(&spool, &ids[..ids.len() - 4]).await;
        spool.trim_log(spool.last_position().seq, now_ms(), &WIDE).expect("trim");
        spool.sync().expect("sync");
    }
    let delivered = size();
    let spool = Spool::open(dir.path()).expect("reopen, compacting");
    assert!(size() < delivered / 4, "compacted from {delivered} to {} bytes", size());
    assert_eq!(spool.queue_len(), 4);
    for &id in &ids[ids.len() - 4..] {
        let body: usize = spool.body(id).map(|chunk| chunk.expect("a chunk").len()).sum();
        assert_eq!(body, 256 * 1024, "{id} kept whole");
    }
    let (id, body) = big(&spool);
    spool.accept(envelope(id), body).await.expect("the compacted spool takes mail");
}

#[tokio::test]
async fn holds_follow_the_log_survive_a_reopen_and_go_with_their_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = {
        let spool = Spool::open(dir.path()).expect("open");
        spool.ensure_epoch().await.expect("epoch");
        let ids = accept_some(&spool, 3).await;
        let gone = QueueId::new();
        let held = Change::Held { ids: vec![ids[0], ids[1], gone], since_ms: 1_000 };
        spool.commit(vec![held], Vec::new()).await.expect("hold");
        // Held again later: the first time stays.
        let again = Change::Held { ids: vec![ids[0]], since_ms: 2_000 };
        spool.commit(vec![again], Vec::new()).await.expect("hold again");
        assert_eq!(spool.held().expect("held"), vec![(ids[0], 1_000), (ids[1], 1_000)]);
        ids
    };
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.held_since(ids[0]).expect("read"), Some(1_000), "a hold survives a restart");
    assert_eq!(spool.held_since(ids[2]).expect("read"), None);
    spool.commit(vec![Change::Released { ids: vec![ids[0]] }], Vec::new()).await.expect("release");
    assert_eq!(spool.held_since(ids[0]).expect("read"), None);
    // A held message delivered or deleted takes its hold along.
    deliver(&spool, &ids[1..2]).await;
    assert_eq!(spool.held().expect("held"), vec![]);
}

#[tokio::test]
async fn a_rewind_takes_the_primarys_holds_of_the_messages_it_sets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let ids = accept_some(&spool, 3).await;
    let to = spool.last_position();
    let held = Change::Held { ids: vec![ids[0], ids[2]], since_ms: 5 };
    spool.commit(vec![held], Vec::new()).await.expect("hold on the branch");
    let history = spool.epoch_history().expect("history");
    let primary_state = |id| spool.get(id).expect("get").expect("queued");
    let messages = vec![primary_state(ids[0]), primary_state(ids[1])];
    // The primary holds ids[1] (not ids[0]); ids[2] is not among the messages the rewind
    // sets, so its hold is this node's own still.
    let held = vec![(ids[1], 9)];
    let state = Rewound { messages, held, ..Rewound::default() };
    spool.rewind(to, history, state, vec![]).await.expect("rewind");
    assert_eq!(spool.held().expect("held"), vec![(ids[1], 9), (ids[2], 5)]);
    assert_eq!(spool.last_position(), to, "the branch's record is gone");
}

/// A DSN request for `envelope`'s two recipients: NOTIFY=DELAY,FAILURE with an ORCPT for the
/// first, NEVER for the second.
fn dsn_request() -> Dsn {
    use crate::proto::dsn::{Notify, Orcpt, RcptDsn, Ret};
    let orcpt = Orcpt { addr_type: "rfc822".into(), address: "B@example.com".into() };
    let first = RcptDsn {
        notify: Some(Notify { success: false, failure: true, delay: true }),
        orcpt: Some(orcpt),
    };
    let second = RcptDsn { notify: Some(Notify::NEVER), orcpt: None };
    Dsn {
        ret: Some(Ret::Headers),
        envid: Some("ENV-1".into()),
        recipients: [first, second]
            .map(|request| RecipientDsn { request, delay_reported: false })
            .to_vec(),
    }
}

fn dsn_entries(spool: &Spool) -> u64 {
    use redb::ReadableTableMetadata;
    let txn = spool.read().expect("read");
    txn.open_table(tables::DSN).expect("dsn").len().expect("length")
}

#[tokio::test]
async fn a_dsn_request_is_stored_with_its_message_marked_and_removed_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let (plain, with_dsn) = (QueueId::new(), QueueId::new());
    spool.accept(envelope(plain), spool.body_writer(plain)).await.expect("accept");
    let accepted = Change::accepted(envelope(with_dsn), Some(dsn_request()));
    spool.commit(vec![accepted], vec![spool.body_writer(with_dsn)]).await.expect("accept");
    // Without DSN parameters, nothing more is stored than before.
    assert_eq!(spool.dsn(plain).expect("read"), None);
    assert_eq!(dsn_entries(&spool), 1);
    assert_eq!(spool.dsn(with_dsn).expect("read"), Some(dsn_request()));

    let marked = Change::DelayReported { id: with_dsn, recipients: vec![0] };
    spool.commit(vec![marked], Vec::new()).await.expect("mark");
    let stored = spool.dsn(with_dsn).expect("read").expect("stored");
    assert!(stored.recipients[0].delay_reported && !stored.recipients[1].delay_reported);

    let delivered = RecipientState::Delivered { reply: "250 ok".into(), relay: "mx".into() };
    let results = vec![(0, delivered.clone()), (1, delivered)];
    spool
        .commit(vec![Change::Attempted { id: with_dsn, results }], Vec::new())
        .await
        .expect("done");
    assert_eq!(spool.get(with_dsn).expect("get"), None);
    assert_eq!(dsn_entries(&spool), 0, "removed with its message");
}

#[test]
fn an_older_peer_gets_dsn_changes_as_stand_ins_that_keep_its_queue() {
    let id = QueueId::new();
    let accepted = Change::accepted(envelope(id), Some(dsn_request()));
    assert_eq!(accepted.since_protocol(), 2);
    assert_eq!(accepted.clone().for_protocol(2), accepted);
    assert_eq!(accepted.for_protocol(1), Change::Accepted(envelope(id)));
    let marked = Change::DelayReported { id, recipients: vec![0] };
    assert_eq!(marked.since_protocol(), 2);
    assert_eq!(marked.for_protocol(1), Change::Attempted { id, results: vec![] });
    assert_eq!(Change::accepted(envelope(id), None), Change::Accepted(envelope(id)));
}

#[test]
fn a_salvaged_message_keeps_the_requests_of_the_recipients_it_keeps() {
    let dsn = dsn_request();
    let kept = dsn.only(&[1]);
    assert_eq!((kept.ret, kept.envid.as_deref()), (dsn.ret, Some("ENV-1")));
    assert_eq!(kept.recipients, vec![dsn.recipients[1].clone()]);
    assert_eq!(dsn.recipient(1), Some(&dsn.recipients[1]));
    assert_eq!(dsn.recipient(7), None, "past the end: nothing asked");
}

#[tokio::test]
async fn a_format_2_spool_is_migrated_at_open_with_empty_dsn_and_held_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = {
        let spool = Spool::open(dir.path()).expect("create");
        spool.ensure_epoch().await.expect("epoch");
        accept_some(&spool, 3).await
    };
    // What relayd 0.1.0 left: format 2, without the tables of format 3.
    let path = as_format(dir.path(), tables::FORMAT_0_1_0, &["dsn", "epoch_notes", "held"]);
    let spool = Spool::open(dir.path()).expect("a format 2 spool opens");
    assert_eq!(spool.held().expect("the held table is there"), vec![]);
    for &id in &ids {
        assert!(spool.get(id).expect("get").is_some(), "{id} kept");
        assert_eq!(spool.dsn(id).expect("the dsn table is there"), None);
    }
    let id = QueueId::new();
    let accepted = Change::accepted(envelope(id), Some(dsn_request()));
    spool.commit(vec![accepted], vec![spool.body_writer(id)]).await.expect("accept");
    assert_eq!(spool.dsn(id).expect("read"), Some(dsn_request()));
    drop(spool);
    assert_eq!(stored_format(&path), Some(tables::FORMAT));
}

#[tokio::test]
async fn snapshots_and_rewinds_take_the_dsn_requests_of_their_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.ensure_epoch().await.expect("epoch");
    let (a, b) = (QueueId::new(), QueueId::new());
    let message = |id| MessageRecord {
        envelope: envelope(id),
        recipients: vec![RecipientState::new(); 2],
        accepted_at: LogPosition { epoch: 1, seq: 2 },
    };
    // A snapshot: a with its request, b without; a request for a message not sent is dropped.
    spool.wipe().await.expect("wipe");
    let requests = vec![(a, dsn_request()), (QueueId::new(), dsn_request())];
    spool.install(vec![message(a), message(b)], requests, Vec::new()).await.expect("install");
    assert_eq!(spool.dsn(a).expect("read"), Some(dsn_request()));
    assert_eq!(spool.dsn(b).expect("read"), None);
    assert_eq!(dsn_entries(&spool), 1);
    // A rewind sets both to the primary's state: a without a request now, b with one.
    let history = vec![EpochStart { epoch: 1, first_seq: 1 }];
    let to = LogPosition { epoch: 1, seq: 1 };
    let requests = vec![(b, dsn_request())];
    let messages = vec![message(a), message(b)];
    spool
        .rewind(to, history, Rewound { messages, dsn: requests, ..Rewound::default() }, Vec::new())
        .await
        .expect("rewind");
    assert_eq!(spool.dsn(a).expect("read"), None);
    assert_eq!(spool.dsn(b).expect("read"), Some(dsn_request()));
    // The next snapshot erases them with the rest.
    spool.wipe().await.expect("wipe");
    assert_eq!(dsn_entries(&spool), 0);
}

/// The golden spool: a spool file written by relayd 0.1.0 itself (tests/fixtures/v0.1.0, see
/// its README: mail delivered in epoch 1, a switchover, mail queued in epoch 2) opens, migrated
/// where its format is older, with the queue 0.1.0 listed, the epochs and the role it had, and
/// its log and bodies readable. A change that cannot read 0.1.0's spool fails here.
#[tokio::test]
async fn the_spool_relayd_0_1_0_wrote_opens_with_its_queue_epochs_log_and_bodies() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool directory");
    let unzipped = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(fixtures.join("spool.redb.gz"))
        .output()
        .expect("gzip");
    assert!(unzipped.status.success(), "gzip -dc spool.redb.gz");
    std::fs::write(dir.path().join("spool/spool.redb"), unzipped.stdout).expect("spool.redb");
    let listed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("queue.json")).expect("queue.json"),
    )
    .expect("queue.json is JSON");

    let spool = Spool::open(dir.path()).expect("0.1.0's spool opens");
    let epochs: Vec<u64> = spool.epoch_history().expect("epochs").iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1, 2], "epoch 1, and the switchover's epoch 2");
    assert_eq!(spool.persisted_role().expect("role"), Some(Role::Primary));
    assert_eq!(spool.highest_epoch().expect("highest epoch"), 2);

    let messages: Vec<MessageRecord> = spool.messages().collect::<Result<_, _>>().expect("read");
    let queue: Vec<(String, String, Vec<String>)> = messages
        .iter()
        .map(|m| {
            let addresses = m.envelope.recipients.clone();
            assert!(m.recipients.iter().all(RecipientState::is_pending), "{m:?}");
            (m.envelope.id.to_string(), m.envelope.sender.clone(), addresses)
        })
        .collect();
    let expected: Vec<(String, String, Vec<String>)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            let addresses = m["recipients"].as_array().expect("recipients").iter();
            let addresses = addresses.map(|r| r["address"].as_str().expect("address").to_string());
            let id = m["id"].as_str().expect("id").to_string();
            (id, m["sender"].as_str().expect("sender").to_string(), addresses.collect())
        })
        .collect();
    assert_eq!(queue.len(), 4, "four messages queued");
    assert_eq!(queue, expected, "the queue 0.1.0 listed");
    for message in &messages {
        let body: Vec<u8> = spool
            .body(message.envelope.id)
            .map(|c| c.expect("chunk").to_vec())
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(body.len() as u64, message.envelope.size, "{}", message.envelope.id);
        assert!(String::from_utf8_lossy(&body).contains("@campaign.test>"), "a Message-ID");
    }

    // The log, every record decoded: the three messages accepted and delivered in epoch 1
    // (b, the standby then, began from a snapshot of a's empty spool, after epoch 1's start),
    // epoch 2's start and the four messages queued in it.
    let log: Vec<LogRecord> = spool.log_from(1).collect::<Result<_, _>>().expect("the log");
    let count = |epoch: u64, kind: fn(&Change) -> bool| {
        log.iter().filter(|r| r.position.epoch == epoch && kind(&r.change)).count()
    };
    let started = |c: &Change| matches!(c, Change::EpochStarted);
    let accepted = |c: &Change| matches!(c, Change::Accepted(_));
    let delivered = |c: &Change| match c {
        Change::Attempted { results, .. } => {
            results.iter().any(|(_, r)| matches!(r, RecipientState::Delivered { .. }))
        }
        _ => false,
    };
    assert_eq!((count(1, accepted), count(1, delivered)), (3, 3));
    assert_eq!((count(2, started), count(2, accepted), count(2, delivered)), (1, 4, 0));
    assert_eq!(spool.last_position(), log.last().expect("records").position);
}

/// Format 3: a format 2 spool (relayd 0.1.0's) is migrated at open, its epochs un-noted; an
/// epoch begun with a note holds it (in the same batch as its `EpochStarted`), and a standby
/// that applies the log holds it too, as it holds a pause of automatic failover.
#[tokio::test]
async fn epoch_notes_and_the_failover_pause_are_kept_and_replicated_and_format_2_migrated() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let spool = Spool::open(dir.path()).expect("create");
        spool.ensure_epoch().await.expect("epoch");
    }
    let path = as_format(dir.path(), tables::FORMAT_0_1_0, &["dsn", "epoch_notes", "held"]);
    let spool = Spool::open(dir.path()).expect("a format 2 spool opens");
    assert_eq!(spool.epoch_notes().expect("notes"), vec![], "epoch 1 was not noted");
    let note = EpochNote {
        epoch: 2,
        node: "b".into(),
        cause: EpochCause::Failover,
        reason: "primary silent".into(),
        at_ms: 7,
    };
    let begun = spool.begin_epoch(2, Some(note.clone())).await.expect("epoch 2");
    assert_eq!(begun, LogPosition { epoch: 2, seq: 3 }, "the note right after EpochStarted");
    assert_eq!(spool.epoch_notes().expect("notes"), vec![note.clone()]);
    spool.commit(vec![Change::FailoverPaused { paused: true }], Vec::new()).await.expect("pause");
    assert!(spool.failover_paused().expect("paused"));

    let standby_dir = tempfile::tempdir().expect("temp dir");
    let standby = Spool::open(standby_dir.path()).expect("standby");
    standby.set_writable(false);
    let log: Vec<LogRecord> = spool.log_from(1).collect::<Result<_, _>>().expect("log");
    standby.apply(log, Vec::new()).await.expect("apply");
    assert_eq!(standby.epoch_notes().expect("notes"), vec![note]);
    assert!(standby.failover_paused().expect("paused"));
    // A standby's own resume, and a wipe (a rebuild) keeps it and the notes.
    standby.persist_failover_paused(false).await.expect("resume");
    standby.wipe().await.expect("wipe");
    assert!(!standby.failover_paused().expect("resumed"));
    assert_eq!(standby.epoch_notes().expect("notes").len(), 1);
    assert!(standby.snapshot_incomplete().expect("partial"), "a rebuild is resumed at a restart");
    drop(spool);
    assert_eq!(stored_format(&path), Some(tables::FORMAT));
}

/// The format the spool file at `path` says it is.
fn stored_format(path: &std::path::Path) -> Option<u64> {
    let db = redb::Database::open(path).expect("redb");
    let txn = db.begin_read().expect("read");
    let meta = txn.open_table(tables::META).expect("meta");
    meta.get(tables::FORMAT_KEY).expect("get").map(|f| f.value())
}
