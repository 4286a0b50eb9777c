//! A sessync node: the session table, the client port and (with the peer port) instant
//! copy across nodes. [`start`] binds the ports and returns a [`NodeHandle`] that stops it.

mod client_port;
// the wall clock (virtual in the simulation): public only for tests, benches and fuzzing (feature `testing`), as
// quinn-proto keeps its internals behind `fuzzing`.
#[cfg(feature = "testing")]
pub mod clock;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub)]
mod clock;
mod config;
// what happened to a session a request needed from another node; public (re-exported by
// `handover`) only with the feature `testing`.
#[allow(unreachable_pub)]
mod fetch_error;
// the asking side of the handover, sans-IO: public only for tests, benches and fuzzing (feature `testing`), as
// quinn-proto keeps its internals behind `fuzzing`.
#[cfg(feature = "testing")]
pub mod handover;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub)]
mod handover;
mod http;
mod listen;
mod lograte;
pub mod membership;
mod node;
mod peer_link;
mod peer_port;
mod shutdown;
mod stats;
// the session table: public only for tests, benches and fuzzing (feature `testing`), as
// quinn-proto keeps its internals behind `fuzzing`.
#[cfg(feature = "testing")]
pub mod table;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub)]
mod table;
#[cfg(feature = "testing")]
pub mod testing;
mod throttle;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{BackupPolicy, NodeConfig};
pub use membership::{Member, MemberState, Membership, MembershipConfig, Seed};
pub use node::{DrainReport, Node, DEFAULT_DRAIN_TIMEOUT};
pub use table::{EvictPolicy, TableStats};
pub use throttle::BASE_DELAY as AUTH_BACKOFF_BASE;
pub use tls::{Reload, TlsFiles, EXPIRY_WARNING};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::shutdown::Shutdown;

/// A running node. Dropping it does not stop the node; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    node: Arc<Node>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    trigger: watch::Sender<bool>,
    tasks: TaskTracker,
    tls: Vec<Arc<tls::TlsState>>,
}

impl NodeHandle {
    /// The bound client address (useful with port 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The bound HTTP address, when [`NodeConfig::http_addr`] was set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The node's state, for counters.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Re-reads the TLS files of both ports (what SIGHUP does; a timer also does it every
    /// [`TLS_RELOAD_INTERVAL`]). New connections use the new certificates, existing ones
    /// keep theirs. Files that cannot be read or do not form a valid configuration leave
    /// the current one in place and return the error. One result per TLS port (peer
    /// first), none when TLS is off.
    pub fn reload_tls(&self) -> Vec<std::io::Result<Reload>> {
        self.tls.iter().map(|t| t.reload()).collect()
    }

    /// Stops accepting, lets every connection finish the requests it has fully received,
    /// and waits up to `grace` for them. Returns whether everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.trigger.send(true);
        self.node.peers.close_all();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// A port that could not be bound, in words that name its role and address
/// (`peer port 127.0.0.1:7800: address already in use`); the error keeps the OS error's
/// kind.
fn bind_error(role: &str, addr: SocketAddr, e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind as K;
    let words = match e.kind() {
        K::AddrInUse => {
            "address already in use (another sessync node or another program holds it)".to_string()
        }
        K::AddrNotAvailable => "address not available on this machine".to_string(),
        K::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_string(),
        _ => e.to_string(),
    };
    std::io::Error::new(e.kind(), format!("{role} port {addr}: {words}"))
}

fn bind(role: &str, addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = listen::bind(addr).map_err(|e| bind_error(role, addr, e))?;
    let bound = l.local_addr().map_err(|e| bind_error(role, addr, e))?;
    Ok((l, bound))
}

/// Binds the client and peer ports (and the HTTP port, when configured) and starts
/// serving. Must run inside a tokio runtime. A port that cannot be bound fails with an
/// error naming its role and address (`peer port 127.0.0.1:7800: address already in use`).
pub async fn start(config: NodeConfig) -> std::io::Result<NodeHandle> {
    // The advertised address goes into every token and to every member: a wildcard there
    // (`--peer 0.0.0.0:P` without `--advertise`) names no node, and another node dialing
    // it reaches itself.
    let advertised = config.advertise.unwrap_or(config.peer_addr);
    if advertised.ip().is_unspecified() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("peer address {advertised} names every address, not this node, and goes into tokens and to the other members: give --advertise the address the other nodes reach this node's peer port at"),
        ));
    }
    let peer_tls = match &config.peer_tls {
        Some(files) => Some(tls::TlsState::load(tls::Role::Peer, files.clone())?),
        None => None,
    };
    let client_tls = match &config.client_tls {
        Some(files) => Some(tls::TlsState::load(tls::Role::Client, files.clone())?),
        None => None,
    };
    let (client, client_addr) = bind("client", config.client_addr)?;
    let (peer, peer_addr) = bind("peer", config.peer_addr)?;
    let http = match config.http_addr {
        Some(a) => Some(bind("http", a)?),
        None => None,
    };
    let http_addr = http.as_ref().map(|(_, a)| *a);
    let advertise = config.advertise.unwrap_or(peer_addr);
    let sweep_interval = config.sweep_interval;
    let (orphan_tx, orphan_rx) = tokio::sync::mpsc::channel(ORPHAN_QUEUE);
    let (refresh_tx, refresh_rx) = tokio::sync::mpsc::channel(REFRESH_QUEUE);
    let membership_config = config.membership.clone();
    let node = Arc::new(Node::new(config, advertise, orphan_tx, refresh_tx));
    let (trigger, shutdown) = Shutdown::new();
    let tasks = TaskTracker::new();
    let membership = if membership_config.enabled {
        let weak = Arc::downgrade(&node);
        Some(membership::start(
            membership::Start {
                node_id: node.node_id,
                keys: node.config.keys.clone(),
                peer_bound: peer_addr,
                advertise,
                client_bound: client_addr,
            },
            membership_config,
            // Every change of the alive members replaces the backup candidates. Until each
            // `--peers` address has been seen alive once, the `--peers` list is kept in
            // as well: a node that printed its ready line would otherwise refuse writes
            // needing backups (BACKUP_UNAVAILABLE) for the moment the first probes take.
            {
                let pending: std::collections::HashSet<SocketAddr> = node
                    .config
                    .peers
                    .iter()
                    .copied()
                    .filter(|p| *p != advertise)
                    .collect();
                let pending = std::sync::Mutex::new(pending);
                Box::new(move |alive: Vec<SocketAddr>| {
                    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                    for a in &alive {
                        pending.remove(a);
                    }
                    let mut peers = alive;
                    peers.extend(pending.iter().copied());
                    peers.sort();
                    peers.dedup();
                    if let Some(n) = weak.upgrade() {
                        n.set_peers(peers);
                    }
                })
            },
            &tasks,
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let _ = node.stats.about.set(stats::About {
        started: std::time::Instant::now(),
        node_id: node.node_id,
        client: client_addr,
        peer: peer_addr,
        advertise,
        http: http_addr,
        peers: node.peers.clone(),
        node: Arc::downgrade(&node),
        membership,
    });
    if let Some(t) = &peer_tls {
        node.peers.set_tls(t.clone());
    }
    if let Some((listener, _)) = http {
        let health = Arc::new(http::Health::default());
        tasks.spawn(http::prober(node.clone(), health.clone(), shutdown.clone()));
        tasks.spawn(http::accept_loop(
            node.clone(),
            health,
            listener,
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    tasks.spawn(client_port::accept_loop(
        node.clone(),
        client,
        shutdown.clone(),
        tasks.clone(),
        client_tls.clone(),
    ));
    tasks.spawn(peer_port::accept_loop(
        node.clone(),
        peer,
        shutdown.clone(),
        tasks.clone(),
        peer_tls.clone(),
    ));
    let tls: Vec<_> = peer_tls.into_iter().chain(client_tls).collect();
    if !tls.is_empty() {
        tasks.spawn(tls_reloads(tls.clone(), shutdown.clone()));
    }
    tasks.spawn(sweeper(node.clone(), sweep_interval, shutdown.clone()));
    tasks.spawn(late_replies(node.clone(), orphan_rx, shutdown.clone()));
    tasks.spawn(backup_refreshes(node.clone(), refresh_rx, shutdown.clone()));
    tasks.spawn(node::repair_loop(node.clone(), shutdown.clone()));
    Ok(NodeHandle {
        node,
        client_addr,
        peer_addr,
        http_addr,
        trigger,
        tasks,
        tls,
    })
}

/// How often the TLS files are re-read (a reload happens only if they changed).
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Re-reads the TLS files on a timer, and warns daily while a certificate is close to
/// expiry.
async fn tls_reloads(states: Vec<Arc<tls::TlsState>>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(TLS_RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        for s in &states {
            if let Err(e) = s.reload() {
                tracing::warn!("TLS files not reloaded (the certificate in use stays): {e}");
            }
            if ticks % (24 * 60) == 0 {
                s.check_expiry();
            }
        }
    }
}

/// Late peer replies kept before further ones are dropped (they are rare: a reply that
/// arrived after its request's deadline).
const ORPHAN_QUEUE: usize = 1024;

/// Backup access-time refreshes queued by reads before further ones are dropped (a
/// dropped one is sent by a later read).
pub(crate) const REFRESH_QUEUE: usize = 4096;

/// Sends reads' newer access times to backups, off the reads' path.
async fn backup_refreshes(
    node: Arc<Node>,
    mut rx: tokio::sync::mpsc::Receiver<sessync_proto::SessionId>,
    mut shutdown: Shutdown,
) {
    loop {
        let id = tokio::select! {
            _ = shutdown.wait() => return,
            m = rx.recv() => match m {
                Some(id) => id,
                None => return,
            },
        };
        node.refresh_backups(id);
    }
}

/// Installs COPY_DATA replies that arrived after their request gave up: the owner handed
/// the session to us when it sent them, so dropping them would strand the session.
async fn late_replies(
    node: Arc<Node>,
    mut rx: tokio::sync::mpsc::Receiver<(SocketAddr, sessync_proto::PeerMessage)>,
    mut shutdown: Shutdown,
) {
    loop {
        let (from, msg) = tokio::select! {
            _ = shutdown.wait() => return,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        if let sessync_proto::PeerMessage::CopyData {
            transfer,
            holders,
            record,
        } = msg
        {
            tracing::debug!(%from, session = %record.id, "installing a late COPY_DATA");
            node.install_late_copy(from, transfer, &record, &holders).await;
        }
    }
}

/// Visits one table shard per tick, so reclaiming expired entries is spread out and never
/// holds more than one inner lock at a time.
async fn sweeper(node: Arc<Node>, every: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shard = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        node.table.sweep_shard(shard, clock::now_ms());
        shard = (shard + 1) % table::SHARDS;
    }
}
