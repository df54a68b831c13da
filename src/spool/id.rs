//! Queue ids: unique across nodes and time-ordered, so that ids minted by a newly promoted
//! primary never collide with those of the old one and the spool lists in arrival order.

use std::fmt;
use std::str::FromStr;

/// A message's queue id: a UUIDv7 (48-bit millisecond timestamp, then random bits), shown as
/// 32 upper-case hex digits in replies, logs and the admin API.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct QueueId(u128);

impl QueueId {
    pub fn new() -> QueueId {
        QueueId(uuid::Uuid::now_v7().as_u128())
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> QueueId {
        QueueId(u128::from_be_bytes(bytes))
    }

    /// The id as the spool's tables key it (ordered as the ids are).
    pub(super) fn as_u128(self) -> u128 {
        self.0
    }

    pub(super) fn from_u128(id: u128) -> QueueId {
        QueueId(id)
    }
}

impl Default for QueueId {
    fn default() -> Self {
        QueueId::new()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(QueueId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_and_ids_are_ordered() {
        let a = QueueId::new();
        let b = QueueId::new();
        assert!(a < b, "v7 ids minted later sort later");
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<QueueId>(), Ok(a));
        assert_eq!(QueueId::from_bytes(a.to_bytes()), a);
    }
}
