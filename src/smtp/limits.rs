//! Connection limits: in total and per client IP, checked before the greeting.

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
