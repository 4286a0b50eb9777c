//! A node's settings.

use std::net::SocketAddr;
use std::time::Duration;

use sessync_proto::{Keyring, Limits};

use crate::membership::MembershipConfig;
use crate::table::EvictPolicy;
use crate::tls::TlsFiles;

/// Everything a node needs to start. [`NodeConfig::new`] gives the safe defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where applications connect (keep it on loopback or a private interface).
    pub client_addr: SocketAddr,
    /// Where other nodes connect.
    pub peer_addr: SocketAddr,
    /// Where the HTTP port (probes, metrics, status page) listens; `None` (the default)
    /// for no HTTP port.
    pub http_addr: Option<SocketAddr>,
    /// The peer address written into tokens; defaults to the bound peer address.
    pub advertise: Option<SocketAddr>,
    /// The cluster secret(s): token MACs and the peer handshake.
    pub keys: Keyring,
    /// Idle time to live when CREATE does not say (default 30 min).
    pub idle_ttl: Duration,
    /// Absolute lifetime when CREATE does not say; `None` for no absolute lifetime.
    pub max_lifetime: Option<Duration>,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Most bytes of sessions and tombstones (an estimate, see `table::SESSION_OVERHEAD`).
    pub max_memory: usize,
    /// What CREATE does at the limits.
    pub evict: EvictPolicy,
    /// Password clients must give in HELLO; `None` for none.
    pub password: Option<String>,
    /// Most client connections at once; further ones get TOO_MANY_CONNECTIONS and close.
    pub max_connections: usize,
    /// A connection that has not completed a frame this long after its first byte (or after
    /// connecting) is closed with TIMEOUT: the slowloris defence.
    pub frame_timeout: Duration,
    /// A connection with no traffic this long is closed.
    pub idle_timeout: Duration,
    /// A client or authenticated peer connection whose socket accepts no byte of its
    /// replies for this long is closed: one that never reads would otherwise hold its
    /// connection (and the node's shutdown) forever.
    pub write_timeout: Duration,
    /// Most peer connections still in the handshake at once; further ones get
    /// TOO_MANY_CONNECTIONS and close. Authenticated links are not counted.
    pub max_peer_handshakes: usize,
    /// Wire limits (frame size, attribute counts and sizes).
    pub limits: Limits,
    /// How often the sweeper visits one table shard.
    pub sweep_interval: Duration,
    /// How long a request waits on another node before OWNER_UNREACHABLE.
    pub peer_timeout: Duration,
    /// The read lease (protocol.md 12.5): how long after a session's last replication
    /// round its owner serves reads without asking its holders first, and so how old a
    /// backup copy must be before a failover claims it (12.3). Zero: no lease (reads
    /// never wait, claims neither, and a superseded owner may serve stale reads until it
    /// writes).
    pub read_lease: Duration,
    /// Most MOVED answers followed for one request.
    pub max_hops: u8,
    /// The cluster's advertised peer addresses (this node's own may be among them): where
    /// backup copies may go.
    pub peers: Vec<SocketAddr>,
    /// Cluster membership: seeds and timings (see [`MembershipConfig`]). Every change of
    /// the alive members replaces `peers` as the backup candidates.
    pub membership: MembershipConfig,
    /// Backup copies kept of each session this node owns (0, 1 or 2).
    pub replicas: u8,
    /// What a write does when fewer than `replicas` backups can be had.
    pub backup_policy: BackupPolicy,
    /// Mutual TLS on peer links (certificate, key and the cluster CA, which is required);
    /// `None` for plain links. See protocol.md, "Transport security".
    pub peer_tls: Option<TlsFiles>,
    /// TLS on the client port; with a CA, clients must present a certificate that chains
    /// to it. `None` for plain connections (the default, for loopback).
    pub client_tls: Option<TlsFiles>,
    /// The longest wait imposed on an address after failed authentications (client HELLO
    /// passwords and peer handshakes); the wait doubles from 1 ms per failure up to this.
    pub auth_backoff_max: Duration,
    /// Most client connections one IP address may hold that have not authenticated (with
    /// a password set); further ones get TOO_MANY_CONNECTIONS and close. (The peer port's
    /// bound is `max_peer_handshakes`.)
    pub max_unauthenticated_per_address: usize,
}

/// What a write does when fewer than `replicas` backup nodes can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPolicy {
    /// Refuse it with BACKUP_UNAVAILABLE before changing anything when too few backup
    /// nodes are reachable; a backup that fails mid-write makes the reply INDETERMINATE.
    Refuse,
    /// Accept it with fewer copies (counted in STATS `under_replicated_writes`).
    Degrade,
}

impl NodeConfig {
    /// Defaults: 30 min idle TTL, no absolute lifetime, 1M sessions, 1 GiB, reject at the
    /// limit, no password, 10 000 connections, 10 s frame timeout, 5 min idle timeout,
    /// 10 s write timeout, 256 peer handshakes at once, 1 s peer timeout, 3 hops, no
    /// backups (replicas 0; refuse writes without enough backups when they are turned on),
    /// no TLS, authentication back-off up to 2 s, 64 unauthenticated connections per address.
    pub fn new(client_addr: SocketAddr, peer_addr: SocketAddr, keys: Keyring) -> NodeConfig {
        NodeConfig {
            client_addr,
            peer_addr,
            http_addr: None,
            advertise: None,
            keys,
            idle_ttl: Duration::from_secs(30 * 60),
            max_lifetime: None,
            max_sessions: 1_000_000,
            max_memory: 1 << 30,
            evict: EvictPolicy::Reject,
            password: None,
            max_connections: 10_000,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_peer_handshakes: 256,
            limits: Limits::DEFAULT,
            sweep_interval: Duration::from_millis(50),
            peer_timeout: Duration::from_secs(1),
            read_lease: Duration::from_secs(2),
            max_hops: 3,
            peers: Vec::new(),
            membership: MembershipConfig::default(),
            replicas: 0,
            backup_policy: BackupPolicy::Refuse,
            peer_tls: None,
            client_tls: None,
            auth_backoff_max: Duration::from_secs(2),
            max_unauthenticated_per_address: 64,
        }
    }
}
