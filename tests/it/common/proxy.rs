//! A TCP fault proxy on std threads, for the replication tests: it listens on a loopback port
//! and forwards every connection to a target, byte for byte, until the test cuts them
//! ([`Proxy::cut`]) or makes it refuse new ones ([`Proxy::block`]), or holds every byte back
//! without closing anything, as a silent network partition does ([`Proxy::pause`]), in both
//! directions or in one only ([`Proxy::pause_one_way`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which way bytes flow through a proxy's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client that connected to the proxy, to the target.
    ToTarget = 0,
    /// From the target back to the client.
    FromTarget = 1,
}

/// A forwarding proxy; stops (and closes what it forwards) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    blocked: AtomicBool,
    /// A silent partition: nothing is forwarded and nothing is closed (see [`Proxy::pause`]).
    paused: AtomicBool,
    /// A silent partition of one direction only, by [`Direction`] index.
    paused_one_way: [AtomicBool; 2],
    stopping: AtomicBool,
    /// Open connections: both sockets of each, by connection number.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Shared {
    fn close(&self, number: u64) {
        let pair = self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&number);
        if let Some((client, server)) = pair {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Listens on a fresh loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            blocked: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            paused_one_way: [AtomicBool::new(false), AtomicBool::new(false)],
            stopping: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy")
        };
        Proxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection, both sides, at once; returns how many.
    pub fn cut(&self) -> usize {
        let open: Vec<(u64, (TcpStream, TcpStream))> =
            self.shared.open.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
        for (_, (client, server)) in &open {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        open.len()
    }

    /// From now on, new connections are closed as soon as they are accepted.
    pub fn block(&self) {
        self.shared.blocked.store(true, Ordering::SeqCst);
    }

    /// New connections are forwarded again.
    pub fn unblock(&self) {
        self.shared.blocked.store(false, Ordering::SeqCst);
    }

    /// A silent partition, as when a network drops packets: from now on no byte goes through
    /// in either direction, on open connections or on new ones (accepted, but not connected to
    /// the target until [`Proxy::resume`]), and nothing is closed: no FIN, no RST, so each side
    /// learns of it only by its own timeouts. What is held back is delivered, in order, on
    /// resume, as TCP retransmissions would after the partition heals.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// A silent partition of one direction: the bytes that flow `direction` are held back
    /// (delivered in order on [`Proxy::resume`]), those of the other direction flow on, and
    /// nothing is closed. New connections are still made.
    pub fn pause_one_way(&self, direction: Direction) {
        self.shared.paused_one_way[direction as usize].store(true, Ordering::SeqCst);
    }

    /// Ends a [`Proxy::pause`] or a [`Proxy::pause_one_way`] (both directions).
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        for way in &self.shared.paused_one_way {
            way.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop up; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.cut();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut number = 0u64;
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.blocked.load(Ordering::SeqCst) {
            refuse(&client);
            continue;
        }
        number += 1;
        if shared.paused.load(Ordering::SeqCst) {
            // Held silent on a thread of its own, and connected once the partition heals.
            let shared = shared.clone();
            std::thread::spawn(move || {
                if wait_paused(&shared, None) {
                    forward(&shared, number, client);
                }
            });
            continue;
        }
        forward(shared, number, client);
    }
}

/// Connects `client` to the target and pumps both ways.
fn forward(shared: &Arc<Shared>, number: u64, client: TcpStream) {
    let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
        refuse(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(client_reader), Ok(server_reader)) = clones else {
        refuse(&client);
        return;
    };
    // Registered before any byte flows, so that a cut from now on reaches it.
    shared
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(number, (client.try_clone().expect("clone"), server.try_clone().expect("clone")));
    pump(shared, number, Direction::ToTarget, client_reader, server);
    pump(shared, number, Direction::FromTarget, server_reader, client);
}

fn refuse(client: &TcpStream) {
    let _ = client.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` on a thread of its own; when either side ends, the whole connection
/// is closed (so the other direction's pump ends too).
fn pump(
    shared: &Arc<Shared>,
    number: u64,
    direction: Direction,
    mut from: TcpStream,
    mut to: TcpStream,
) {
    let shared = shared.clone();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if !wait_paused(&shared, Some(direction)) || to.write_all(&buffer[..n]).is_err()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // A partition carries no FIN either: the close goes through once it heals.
        wait_paused(&shared, Some(direction));
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        shared.close(number);
    });
}

/// Waits while the proxy is paused (wholly, or in `direction` when one is given); false when
/// it is stopping instead.
fn wait_paused(shared: &Shared, direction: Option<Direction>) -> bool {
    let paused = || {
        shared.paused.load(Ordering::SeqCst)
            || direction.is_some_and(|d| shared.paused_one_way[d as usize].load(Ordering::SeqCst))
    };
    while paused() {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !shared.stopping.load(Ordering::SeqCst)
}
