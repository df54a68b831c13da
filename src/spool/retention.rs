//! How much change log is kept: by its size and its age, which the log's marks tell.
//!
//! A log record carries no time, and the records' sizes vary a hundredfold (an envelope of
//! 1,000 recipients is tens of KiB). So every commit that adds records also writes a **mark**
//! in the same transaction (no fsync of its own): at the log's last sequence number, the time
//! of the commit and the running total of the bytes of log records written. Marks are kept
//! about a second or a quarter of a MiB of records apart (a commit closer than that to the mark
//! before the last replaces the last), so that a day of log has at most some 170,000 of them;
//! the log's size and age are known to that precision. A mark's time is the commit time of the
//! newest record it covers, and a record is dropped for its age only once a mark at or after
//! it is older than the bound: never before its time.
//!
//! [`keep_from`] is the rule, with no I/O: given the marks (oldest first), where some peer still
//! needs the log to go back to, the time and the bounds, the first record to keep.

use std::time::Duration;

use redb::{ReadableTable, Table};

use super::SpoolError;

/// Marks closer together than this and than [`MARK_BYTES`] are merged into one.
pub const MARK_INTERVAL_MS: u64 = 1000;
/// See [`MARK_INTERVAL_MS`].
pub const MARK_BYTES: u64 = 256 * 1024;

/// The bounds on the change log (`[node].log_retention_bytes`, `log_retention_age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of log records kept at most.
    pub bytes: u64,
    /// Records older than this are dropped.
    pub age: Duration,
}

/// A point of the log: record `seq` was committed at `time_ms`, and `bytes` of log records
/// were written up to and with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    pub time_ms: u64,
    pub bytes: u64,
}

/// The first record to keep: from `wanted_from` (what a peer may still need), unless that goes
/// past the bounds: what lies before the last mark older than `retention.age`, or more than
/// `retention.bytes` of records before `end` (the log's last mark), goes in any case. `marks`
/// are the log's marks, oldest first; only the ones before the bounds are read.
pub fn keep_from<E>(
    marks: impl IntoIterator<Item = Result<Mark, E>>,
    end: Mark,
    wanted_from: u64,
    now_ms: u64,
    retention: &Retention,
) -> Result<u64, E> {
    let age_ms = u64::try_from(retention.age.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(age_ms);
    // The mark through which records go, if any.
    let mut through = None;
    // The previous mark left too many bytes after it: dropping through it was not enough.
    let mut too_big = false;
    for mark in marks {
        let mark = mark?;
        if too_big {
            through = Some(mark.seq);
        }
        let old = mark.time_ms < cutoff;
        too_big = end.bytes.saturating_sub(mark.bytes) > retention.bytes;
        if old {
            through = Some(mark.seq);
        }
        if !old && !too_big {
            // Later marks are younger still and leave fewer bytes after them.
            break;
        }
    }
    if too_big {
        through = Some(end.seq);
    }
    Ok(through.map_or(0, |seq| seq + 1).max(wanted_from))
}

fn mark((seq, (time_ms, bytes)): (u64, (u64, u64))) -> Mark {
    Mark { seq, time_ms, bytes }
}

/// The marks of `table`, oldest first.
pub(super) fn marks<'a>(
    table: &'a impl ReadableTable<u64, (u64, u64)>,
) -> Result<impl Iterator<Item = Result<Mark, SpoolError>> + 'a, SpoolError> {
    Ok(table.iter()?.map(|entry| {
        let (seq, value) = entry?;
        Ok(mark((seq.value(), value.value())))
    }))
}

/// The last mark of `table`.
pub(super) fn last_mark(
    table: &impl ReadableTable<u64, (u64, u64)>,
) -> Result<Option<Mark>, SpoolError> {
    Ok(table.last()?.map(|(seq, value)| mark((seq.value(), value.value()))))
}

/// Marks the end of the log, in the transaction that wrote it: a mark at the log's last record
/// (none if the log is empty), counting the bytes of the records after the previous mark. Marks
/// past the log's end (a rewound branch) are removed first. Every transaction that adds records
/// ends with this, so the last mark is always at the log's end; a spool written without marks
/// (format 1, an import) is marked by the same call at its open.
pub(super) fn seal(
    log: &Table<u64, &'static [u8]>,
    marks: &mut Table<u64, (u64, u64)>,
    now_ms: u64,
) -> Result<(), SpoolError> {
    let Some(end) = log.last()?.map(|(seq, _)| seq.value()) else { return Ok(()) };
    if end < u64::MAX {
        marks.retain_in(end + 1.., |_, _| false)?;
    }
    let last = last_mark(marks)?;
    if last.is_some_and(|last| last.seq == end) {
        return Ok(());
    }
    let from = last.map_or(0, |last| last.seq + 1);
    let mut added = 0u64;
    for entry in log.range(from..=end)? {
        added += entry?.1.value().len() as u64;
    }
    let next = Mark {
        seq: end,
        time_ms: last.map_or(now_ms, |last| now_ms.max(last.time_ms)),
        bytes: last.map_or(0, |last| last.bytes) + added,
    };
    if let Some(last) = last {
        let before = marks.range(..last.seq)?.next_back().transpose()?;
        let close =
            before.map(|(seq, value)| mark((seq.value(), value.value()))).is_some_and(|before| {
                next.time_ms - before.time_ms < MARK_INTERVAL_MS
                    && next.bytes - before.bytes < MARK_BYTES
            });
        if close {
            marks.remove(last.seq)?;
        }
    }
    marks.insert(next.seq, (next.time_ms, next.bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const HOUR_MS: u64 = 3_600_000;

    fn bounds(bytes: u64, hours: u64) -> Retention {
        Retention { bytes, age: Duration::from_secs(hours * 3600) }
    }

    /// Marks every 100 records, an hour apart, 1 MiB apart: record 100 at hour 1, 200 at 2...
    fn hourly(hours: u64) -> Vec<Mark> {
        (1..=hours).map(|h| Mark { seq: h * 100, time_ms: h * HOUR_MS, bytes: h * MIB }).collect()
    }

    fn point(marks: &[Mark], wanted: u64, now_ms: u64, retention: Retention) -> u64 {
        let end = *marks.last().expect("a mark");
        let read = marks.iter().map(|m| Ok::<_, ()>(*m));
        keep_from(read, end, wanted, now_ms, &retention).expect("no read error")
    }

    #[test]
    fn within_both_bounds_everything_wanted_is_kept() {
        let marks = hourly(10);
        assert_eq!(point(&marks, 0, 10 * HOUR_MS, bounds(100 * MIB, 100)), 0);
        assert_eq!(point(&marks, 450, 10 * HOUR_MS, bounds(100 * MIB, 100)), 450);
    }

    #[test]
    fn records_past_the_age_go_even_when_wanted() {
        let marks = hourly(10);
        // Now is hour 10, the bound 3 hours: marks of hours 1 to 6 are older than hour 7, so
        // records through 600 go; hour 7's mark is not older, so its records (601..=700) stay.
        assert_eq!(point(&marks, 0, 10 * HOUR_MS, bounds(100 * MIB, 3)), 601);
        // A standby at 300 wants more than the bound allows: the bound wins.
        assert_eq!(point(&marks, 300, 10 * HOUR_MS, bounds(100 * MIB, 3)), 601);
        // One that wants less than the bound keeps what it wants... less.
        assert_eq!(point(&marks, 900, 10 * HOUR_MS, bounds(100 * MIB, 3)), 900);
    }

    #[test]
    fn records_past_the_size_go_even_when_wanted() {
        let marks = hourly(10);
        // 10 MiB written, 3.5 MiB kept at most: dropping through hour 6's mark leaves 4 MiB,
        // too many; through hour 7's leaves 3 MiB.
        assert_eq!(point(&marks, 0, 10 * HOUR_MS, bounds(3 * MIB + MIB / 2, 100)), 701);
        // Exactly 3 MiB fits.
        assert_eq!(point(&marks, 0, 10 * HOUR_MS, bounds(3 * MIB, 100)), 701);
        assert_eq!(point(&marks, 650, 10 * HOUR_MS, bounds(3 * MIB, 100)), 701);
        assert_eq!(point(&marks, 800, 10 * HOUR_MS, bounds(3 * MIB, 100)), 800);
    }

    #[test]
    fn the_tighter_bound_decides() {
        let marks = hourly(10);
        // Age keeps from 801 (hours 9, 10), size from 501 (5 MiB): age wins.
        assert_eq!(point(&marks, 0, 10 * HOUR_MS + 1, bounds(5 * MIB, 2)), 801);
        // Age keeps from 201, size from 901: size wins.
        assert_eq!(point(&marks, 0, 10 * HOUR_MS + 1, bounds(MIB, 8)), 901);
    }

    #[test]
    fn an_idle_log_older_than_the_bound_goes_through_its_last_mark() {
        let marks = hourly(3);
        assert_eq!(point(&marks, 0, 100 * HOUR_MS, bounds(100 * MIB, 1)), 301);
    }

    #[test]
    fn a_single_record_bigger_than_the_bound_goes_too() {
        let marks =
            [Mark { seq: 1, time_ms: 0, bytes: 10 }, Mark { seq: 2, time_ms: 0, bytes: 5 * MIB }];
        assert_eq!(point(&marks, 0, 1, bounds(MIB, 1)), 3);
    }

    #[test]
    fn only_the_marks_before_the_bounds_are_read() {
        let marks = hourly(10);
        let mut read = 0;
        let iter = marks.iter().map(|m| {
            read += 1;
            Ok::<_, ()>(*m)
        });
        let kept = keep_from(iter, marks[9], 0, 10 * HOUR_MS, &bounds(100 * MIB, 3));
        assert_eq!(kept, Ok(601));
        assert_eq!(read, 7, "hours 1 to 6, then hour 7's mark, which is within");
    }

    #[test]
    fn a_read_error_is_returned() {
        let marks = [Ok(Mark { seq: 1, time_ms: 0, bytes: 0 }), Err("disk")];
        let end = Mark { seq: 9, time_ms: 0, bytes: 0 };
        assert_eq!(keep_from(marks, end, 0, HOUR_MS, &bounds(MIB, 0)), Err("disk"));
    }
}
