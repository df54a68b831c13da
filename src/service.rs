//! The node's side of systemd's service protocol (`Type=notify`, sd_notify(3)): READY=1 once
//! the listeners are up, STOPPING=1 when the drain starts, and WATCHDOG=1 while the node works.
//! Where `NOTIFY_SOCKET` is unset (not started by systemd) every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::spool::{ErrorKind, Spool, SpoolError};

/// Tells the service manager that the node serves: its listeners accept.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// Tells the service manager that the node is stopping (draining), so that it is not taken for
/// hung while the drain runs.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    // Nothing depends on systemd hearing us: a failed send is worth a line, not a failure.
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog at half the interval it gives (`WATCHDOG_USEC`), for as long as the
/// node's loops answer: this runs on the runtime, so a wedged runtime stops the pings, and on a
/// data node (`spool` given) each ping waits for the spool's committer to answer a sync, so a
/// committer stuck on the disk, or gone, stops them too and systemd restarts the node. Returns
/// at once when systemd asked for no watchdog.
pub async fn watchdog(spool: Option<Spool>) {
    let Some(interval) = sd_notify::watchdog_enabled().map(|limit| limit / 2) else {
        return;
    };
    if std::env::var_os("NOTIFY_SOCKET").is_none() || interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    // After a probe that waited long, the next ping comes a whole interval later, not at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(spool) = &spool
            && !committer_answers(spool, interval).await
        {
            continue;
        }
        notify(NotifyState::Watchdog);
    }
}

/// Whether the spool's committer answers a sync within `patience`. An answer that is an error
/// of the disk (full, or the file being reopened after a failed write) is an answer: the node
/// is working, and says 452 meanwhile. Only a committer that has gone (the spool closed) or
/// that does not answer is not. Waits for a late answer before returning, so that a stuck
/// committer never has more than one probe queued.
async fn committer_answers(spool: &Spool, patience: Duration) -> bool {
    let spool = spool.clone();
    let mut probe = tokio::task::spawn_blocking(move || spool.sync());
    let answer = match tokio::time::timeout(patience, &mut probe).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::warn!("watchdog: the spool's committer does not answer; not pinging systemd");
            let late = probe.await;
            tracing::info!("watchdog: the spool's committer answers again");
            late
        }
    };
    answer.is_ok_and(|result| alive(&result))
}

fn alive(result: &Result<(), SpoolError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => e.kind != ErrorKind::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_error_is_an_answer_and_a_closed_spool_is_not() {
        assert!(alive(&Ok(())));
        assert!(alive(&Err(SpoolError::reopening())));
        assert!(alive(&Err(SpoolError::new(ErrorKind::Io, "EIO"))));
        assert!(!alive(&Err(SpoolError::closed())));
    }

    #[tokio::test]
    async fn an_open_spools_committer_answers_with_a_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let syncs = spool.syncs();
        assert!(committer_answers(&spool, Duration::from_secs(20)).await);
        assert!(spool.syncs() > syncs, "the probe went through the committer");
    }
}
