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
    /// Random pauses taken because two nodes kept taking a session from each other.
    pub(crate) contention_backoffs: AtomicU64,
    /// Backup copies confirmed by backups (REPLICATE answered OK).
    pub(crate) replicated: AtomicU64,
    /// REPLICATE requests that failed (no answer, refused); the backup was replaced.
    pub(crate) replicate_failures: AtomicU64,
    /// Writes acknowledged or answered with fewer backups than `replicas`.
    pub(crate) under_replicated_writes: AtomicU64,
    /// Writes answered INDETERMINATE.
    pub(crate) indeterminate: AtomicU64,
    /// Writes refused with BACKUP_UNAVAILABLE.
    pub(crate) backup_unavailable: AtomicU64,
    /// Sessions this node took over from a backup copy after their owner was gone.
    pub(crate) promotions: AtomicU64,
    /// Backup copies this node handed to a node that reported their owner gone.
    pub(crate) backups_promoted: AtomicU64,
    /// Client HELLOs refused for a wrong password.
    pub(crate) auth_failures: AtomicU64,
    /// Peer handshakes that failed authentication (wrong secret, unknown key id).
    pub(crate) peer_auth_failures: AtomicU64,
    /// Connections refused because their address held too many unauthenticated ones.
    pub(crate) unauthenticated_refused: AtomicU64,
    /// TLS handshakes that failed on a TLS port (plain-text client, certificate from
    /// another CA, expired or missing certificate, truncated handshake).
    pub(crate) tls_failures: AtomicU64,
    /// Connections that opened with a TLS ClientHello on a plain port.
    pub(crate) tls_on_plain_port: AtomicU64,
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
            ("contention_backoffs".into(), g(&self.contention_backoffs)),
            ("replicated".into(), g(&self.replicated)),
            ("replicate_failures".into(), g(&self.replicate_failures)),
            ("under_replicated_writes".into(), g(&self.under_replicated_writes)),
            ("indeterminate".into(), g(&self.indeterminate)),
            ("backup_unavailable".into(), g(&self.backup_unavailable)),
            ("promotions".into(), g(&self.promotions)),
            ("backups_promoted".into(), g(&self.backups_promoted)),
            ("auth_failures".into(), g(&self.auth_failures)),
            ("peer_auth_failures".into(), g(&self.peer_auth_failures)),
            ("unauthenticated_refused".into(), g(&self.unauthenticated_refused)),
            ("tls_failures".into(), g(&self.tls_failures)),
            ("tls_on_plain_port".into(), g(&self.tls_on_plain_port)),
        ]
    }
}
