//! The failover controller's clock and its pings, on each data node of a cluster: a tick four
//! times a heartbeat (so that a fence or a failover happens within a quarter heartbeat of its
//! deadline; the core decides what is due), and the pinger, which sends the core's pings to
//! the witness and hands their answers back. Neither decides anything.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Ha;
use super::core::Event;
use super::witness::WitnessClient;
use crate::replication::frame::Frame;

const TICKS_PER_HEARTBEAT: u32 = 4;

/// How long the monitor waits, at most, for a switchover's steps.
pub const SWITCHOVER_STEP: Duration = Duration::from_secs(30);

pub async fn run(ha: Ha) {
    let Some(cluster) = ha.cluster().cloned() else { return };
    if let Some((address, connector)) = ha.witness() {
        // The answer to a ping must come within a heartbeat: a slow witness never holds up
        // the next one for long (and the clock does not wait for it at all).
        let client =
            WitnessClient::new(address.to_string(), connector.clone(), cluster.heartbeat_interval);
        let (pings, queue) = mpsc::channel(1);
        ha.set_pinger(pings);
        tokio::spawn(pinger(ha.clone(), client, queue));
    }
    let mut tick = tokio::time::interval(cluster.heartbeat_interval / TICKS_PER_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ha.submit(Event::Tick);
    }
}

/// Sends each ping and reports its pong, with the time the ping was sent (the lease runs from
/// then, so that a late answer never stretches it).
async fn pinger(ha: Ha, mut client: WitnessClient, mut queue: mpsc::Receiver<(Frame, Instant)>) {
    while let Some((ping, sent)) = queue.recv().await {
        match client.ask(&ping).await {
            Ok(Frame::Pong { granted, granted_to, .. }) => {
                ha.witness_answered(granted, &granted_to);
                ha.submit(Event::Pong { sent: ha.ms(sent), granted, granted_to });
            }
            Ok(other) => tracing::warn!(answer = ?other, "unexpected answer to a ping"),
            Err(e) => tracing::debug!(error = %e, "witness unreachable"),
        }
    }
}
