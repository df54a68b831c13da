//! The failover controller's clock, on each data node of a cluster. Every heartbeat interval:
//! ping the witness (its answer renews a primary's lease, or tells it a newer epoch exists);
//! then a primary fences itself if its lease ran out (or serves again if it was renewed), and
//! a standby whose primary has been silent for `failover_timeout` asks the witness for the
//! next epoch and, granted, promotes itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Ha;
use super::witness::{self, WitnessClient};
use crate::config::Role;
use crate::replication::frame::Frame;

/// Set while a planned switchover holds the primary fenced: the lease must not unfence it.
pub type Hold = Arc<AtomicBool>;

pub async fn run(ha: Ha, hold: Hold) {
    let (Some(cluster), Some(connector)) = (ha.cluster().cloned(), ha.connector().cloned()) else {
        return;
    };
    let mut witness = cluster
        .witness
        .clone()
        .map(|address| WitnessClient::new(address, connector.clone(), cluster.heartbeat_interval));
    // The clocks are read four times a heartbeat, so that a fence or a failover happens within
    // a quarter heartbeat of its deadline; the witness is pinged once a heartbeat.
    let mut tick = tokio::time::interval(cluster.heartbeat_interval / TICKS_PER_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    let mut warned_no_witness = false;
    // The epoch last refused, so that a refusal is logged once, not every heartbeat.
    let mut last_denied = 0;
    loop {
        tick.tick().await;
        // The lease first: nothing the witness says (or how long it takes to say it) may delay
        // a primary's fencing.
        let status = ha.status();
        if status.role == Role::Primary
            && !status.fenced
            && ha.leased()
            && ha.silence() > cluster.lease
        {
            ha.fence(&format!(
                "no word from the standby or the witness for {} ms (lease {} ms)",
                ha.silence().as_millis(),
                cluster.lease.as_millis()
            ));
        }
        let status = ha.status();
        ticks = ticks.wrapping_add(1);
        let ping_now = ticks % TICKS_PER_HEARTBEAT == 1;
        if let Some(client) = witness.as_mut().filter(|_| ping_now) {
            let ping = Frame::Ping {
                node: ha.node().to_string(),
                role: status.role.as_str().to_string(),
                epoch: status.epoch,
                serving: status.serving(),
            };
            let sent = std::time::Instant::now();
            match client.ask(&ping).await {
                Ok(Frame::Pong { granted, .. })
                    if status.role == Role::Primary && granted > status.epoch =>
                {
                    ha.step_down(granted, "the witness granted a newer epoch").await;
                }
                Ok(Frame::Pong { .. }) if status.role == Role::Primary => ha.heard_at(sent),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "witness unreachable"),
            }
        }
        let silence = ha.silence();
        match status.role {
            Role::Primary
                if status.fenced && silence <= cluster.lease && !hold.load(Ordering::Relaxed) =>
            {
                ha.unfence("heard the standby or the witness: lease renewed");
            }
            // Claimed every tick (a quarter heartbeat) while the witness still hears the old
            // primary: it grants as soon as its own window has passed.
            Role::Standby if cluster.auto_failover && silence > cluster.failover_timeout => {
                let epoch = status.epoch + 1;
                let reason = format!("primary silent for {} ms", silence.as_millis());
                match (&cluster.witness, cluster.allow_failover_without_witness) {
                    (Some(address), _) => {
                        match witness::claim(
                            address,
                            &connector,
                            ha.node(),
                            epoch,
                            false,
                            cluster.failover_timeout,
                        )
                        .await
                        {
                            Ok((true, _)) => {
                                if let Err(e) = ha
                                    .promote(
                                        epoch,
                                        &format!("{reason}; the witness granted epoch {epoch}"),
                                    )
                                    .await
                                {
                                    tracing::error!(error = %e, "promotion failed");
                                }
                            }
                            Ok((false, why)) => {
                                if epoch != last_denied {
                                    tracing::info!(epoch, reason = %why, "the witness refused to grant an epoch");
                                    last_denied = epoch;
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "cannot ask the witness"),
                        }
                    }
                    (None, true) => {
                        let reason = format!(
                            "{reason}; no witness (allow_failover_without_witness = true: split brain possible)"
                        );
                        if let Err(e) = ha.promote(epoch, &reason).await {
                            tracing::error!(error = %e, "promotion failed");
                        }
                    }
                    (None, false) => {
                        if !warned_no_witness {
                            tracing::warn!(
                                "primary silent, but no witness is configured: not promoting (relayd promote, or set allow_failover_without_witness)"
                            );
                            warned_no_witness = true;
                        }
                    }
                }
            }
            _ => {}
        }
        // A fresh silence is logged once per episode only.
        if silence < cluster.heartbeat_interval * 2 {
            warned_no_witness = false;
        }
    }
}

const TICKS_PER_HEARTBEAT: u32 = 4;

/// How long the monitor waits, at most, for a switchover's steps.
pub const SWITCHOVER_STEP: Duration = Duration::from_secs(30);
