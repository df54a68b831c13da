//! The standby's side of the link: accept the primary (one at a time: a new link replaces the
//! old), say where our log ends, then apply what it ships and acknowledge it once durable.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Replication;
use super::frame::{self, Frame, Hello};
use super::link::Link;
use crate::spool::{BodyWriter, Change, QueueId, Spool};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    replication: Replication,
    spool: Spool,
    link: Link,
    node: String,
    listener: TcpListener,
) {
    let mut current: Option<JoinHandle<()>> = None;
    loop {
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, link.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(peer = %address, error = %e, "cluster peer refused: TLS handshake failed");
                continue;
            }
            Err(_) => {
                tracing::warn!(peer = %address, "cluster peer refused: no TLS handshake in time");
                continue;
            }
        };
        if let Some(previous) = current.take() {
            previous.abort();
        }
        let (replication, spool, node) = (replication.clone(), spool.clone(), node.clone());
        current = Some(tokio::spawn(async move {
            if let Err(e) = session(&replication, &spool, &node, tls).await {
                tracing::warn!(peer = %address, error = %e, "replication link down");
            }
            replication.unlinked();
        }));
    }
}

async fn session(
    replication: &Replication,
    spool: &Spool,
    node: &str,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(tls);
    let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut reader)).await {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(other)) => return Err(format!("expected Hello, got {other:?}")),
        Ok(Err(e)) => return Err(format!("reading Hello: {e}")),
        Err(_) => return Err("no Hello from the peer".into()),
    };
    if theirs.role != "primary" {
        return Err(format!("peer {} is a {}, not a primary", theirs.node, theirs.role));
    }
    let ours = Hello {
        node: node.to_string(),
        role: "standby".into(),
        history: spool.epoch_history().map_err(|e| e.to_string())?,
        last: spool.last_position(),
    };
    send(&mut writer, &Frame::Hello(ours)).await?;
    replication.linked(&theirs.node);
    tracing::info!(peer = %theirs.node, at = spool.last_position().seq, "following the primary");

    // Bodies arrive chunk by chunk before the record that accepts them.
    let mut bodies: HashMap<QueueId, BodyWriter> = HashMap::new();
    loop {
        let frame = frame::read(&mut reader).await.map_err(|e| e.to_string())?;
        match frame {
            Frame::Chunk { id, data } => {
                let body = bodies.entry(id).or_insert_with(|| spool.body_writer(id));
                body.write(&data).map_err(|e| e.to_string())?;
            }
            Frame::Records { records, primary_last } => {
                let needed = records
                    .iter()
                    .filter_map(|r| match &r.change {
                        Change::Accepted(envelope) => bodies.remove(&envelope.id),
                        _ => None,
                    })
                    .collect();
                let applied = spool.apply(records, needed).await.map_err(|e| e.to_string())?;
                replication.primary_at(primary_last, applied.seq);
                send(&mut writer, &Frame::Ack { seq: applied.seq }).await?;
            }
            Frame::SnapshotBegin { last } => {
                tracing::info!(at = last.seq, "receiving a snapshot from the primary");
                bodies.clear();
                spool.wipe().await.map_err(|e| e.to_string())?;
            }
            Frame::SnapshotMessages(messages) => {
                let needed =
                    messages.iter().filter_map(|m| bodies.remove(&m.envelope.id)).collect();
                spool.install(messages, needed).await.map_err(|e| e.to_string())?;
            }
            Frame::SnapshotEnd { history, last } => {
                spool.resume(history, last).await.map_err(|e| e.to_string())?;
                replication.primary_at(last.seq, last.seq);
                tracing::info!(at = last.seq, messages = spool.queue_len(), "snapshot installed");
                send(&mut writer, &Frame::Ack { seq: last.seq }).await?;
            }
            other @ (Frame::Hello(_) | Frame::Ack { .. }) => {
                return Err(format!("unexpected frame from the primary: {other:?}"));
            }
        }
    }
}

async fn send(writer: &mut (impl AsyncWriteExt + Unpin), frame: &Frame) -> Result<(), String> {
    frame::write(writer, frame).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())
}
