//! Node counters, reported by STATS.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters and gauges; relaxed atomics, read together only for reporting.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Client connections open now.
    pub(crate) connections: AtomicU64,
    /// Client connections accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Client connections refused at `max_connections`.
    pub(crate) connections_refused: AtomicU64,
    /// Client connections closed because they did not read their replies in time.
    pub(crate) write_timeouts: AtomicU64,
    /// Peer connections refused at `max_peer_handshakes`.
    pub(crate) peer_handshakes_refused: AtomicU64,
    /// Requests handled.
    pub(crate) requests: AtomicU64,
    /// Error replies sent.
    pub(crate) errors: AtomicU64,
    /// Sessions created.
    pub(crate) created: AtomicU64,
    /// Sessions destroyed.
    pub(crate) destroyed: AtomicU64,
    /// Sessions rotated.
    pub(crate) rotated: AtomicU64,
    /// Sessions this node handed to another (COPY served).
    pub(crate) copies_served: AtomicU64,
    /// Sessions this node took over from another (COPY received).
    pub(crate) copies_received: AtomicU64,
    /// MOVED answers given to peers.
    pub(crate) moved: AtomicU64,
    /// Copies that failed (owner unreachable, too many hops, peer error).
    pub(crate) handover_failures: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as (name, value) pairs, for STATS.
    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("connections".into(), g(&self.connections)),
            ("connections_total".into(), g(&self.connections_total)),
            ("connections_refused".into(), g(&self.connections_refused)),
            ("write_timeouts".into(), g(&self.write_timeouts)),
            ("peer_handshakes_refused".into(), g(&self.peer_handshakes_refused)),
            ("requests".into(), g(&self.requests)),
            ("errors".into(), g(&self.errors)),
            ("created".into(), g(&self.created)),
            ("destroyed".into(), g(&self.destroyed)),
            ("rotated".into(), g(&self.rotated)),
            ("copies_served".into(), g(&self.copies_served)),
            ("copies_received".into(), g(&self.copies_received)),
            ("moved".into(), g(&self.moved)),
            ("handover_failures".into(), g(&self.handover_failures)),
        ]
    }
}
