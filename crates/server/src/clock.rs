//! Wall-clock time in Unix milliseconds: the unit of every deadline on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds. Deadlines are wall-clock so they mean the same on every node
/// of a cluster whose clocks are in sync (NTP); a clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
