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
    assert_eq!(spool.body(id).count(), 4, "100,000 bytes in 32 KiB chunks");
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
    assert_eq!(spool.body(kept).count(), 2, "a committed body stays");
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
