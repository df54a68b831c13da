//! Connection limits: in total and per client IP, checked before the greeting; and the
//! process's own limit on open files, which must leave room for them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open SMTP connections. A connection holds a [`ConnectionSlot`] for its lifetime.
#[derive(Clone, Default)]
pub struct ConnectionLimiter {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LimitExceeded {
    Total,
    PerIp,
}

impl ConnectionLimiter {
    /// Takes a slot for a new connection from `ip`, unless a limit is reached.
    pub fn try_acquire(
        &self,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnectionSlot, LimitExceeded> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= max_total {
            return Err(LimitExceeded::Total);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnectionSlot { limiter: self.clone(), ip })
    }

    /// Open connections, for the metrics.
    pub fn active(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

/// Releases its connection's place when dropped.
pub struct ConnectionSlot {
    limiter: ConnectionLimiter,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(from_ip) = counts.per_ip.get_mut(&self.ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Descriptors for everything but client sessions: the spool, the listeners, the admin
/// endpoint, deliveries in flight, the cluster link.
const DESCRIPTORS_RESERVED: u64 = 256;

/// Raises the soft limit on open files to the hard one, so that `max_connections` sessions fit
/// (a login shell's soft limit is often 1,024, and the default max_connections is 1,000), and
/// warns when even the hard limit leaves too few: past it, new clients would not get their
/// 421 but wait unanswered in the listen queue, and deliveries could not connect.
pub fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if soft.is_some() && soft != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    let needed = (max_connections as u64).saturating_add(DESCRIPTORS_RESERVED);
    if let Some(open_files) = soft.filter(|&n| n < needed) {
        tracing::warn!(
            open_files,
            max_connections,
            needed,
            "the open-files limit is too low for smtp.max_connections: raise it \
             (LimitNOFILE in the systemd unit, ulimit -n) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_slots_are_released() {
        let limiter = ConnectionLimiter::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limiter.try_acquire(a, 3, 2).ok();
        let _second = limiter.try_acquire(a, 3, 2).ok();
        assert_eq!(limiter.try_acquire(a, 3, 2).err(), Some(LimitExceeded::PerIp));
        let _third = limiter.try_acquire(b, 3, 2).ok();
        assert_eq!(limiter.try_acquire(b, 3, 2).err(), Some(LimitExceeded::Total));
        drop(first);
        assert_eq!(limiter.active(), 2);
        assert!(limiter.try_acquire(a, 3, 2).is_ok());
    }
}
