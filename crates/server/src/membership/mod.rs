//! Cluster membership: which nodes are in the cluster, and in which state.
//!
//! SWIM (the foca crate) over UDP datagrams on the peer port's number, each authenticated
//! and encrypted with a key derived from the cluster secret (`transport`). Seeds
//! (`--join`) are resolved again and again (`seeds`), so nodes find each other by a DNS
//! name. The `view` is this node's list of members; every change of its alive set
//! replaces the node's backup candidates ([`crate::Node::set_peers`]). ARCHITECTURE.md,
//! "Membership", says why foca; protocol.md, "Membership", has the bytes.
//!
//! Calling order: [`start`] once (from [`crate::start`]); then any task may read
//! [`Membership::view`], [`Membership::watch`] or [`Membership::alive_peers`], and the
//! drain calls [`Membership::announce_leaving`] before it hands sessions over. At
//! shutdown the driver declares the node gone by itself.

mod codec;
mod driver;
mod identity;
mod seeds;
mod transport;
mod view;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
pub use seeds::{Seed, SeedError};
use sessync_proto::{Keyring, Message, Response};
pub use sessync_proto::{MemberInfo as Member, MemberState};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::lograte::RateLimit;
use crate::shutdown::Shutdown;

/// Membership settings. [`MembershipConfig::default`] suits a LAN: a killed member is
/// declared dead within about `probe_period + probe_rtt + suspect_to_down_after` plus a
/// probe round (about 6 s), and within 10 s on loopback in the tests.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Run membership at all (default true). Off, the node keeps its configured peers.
    pub enabled: bool,
    /// Where to look for the cluster; none for a cluster of one (that others may join).
    pub seeds: Vec<Seed>,
    /// The client address other members are told (default: the bound client address,
    /// with the advertised peer IP when it is bound to an unspecified address).
    pub client_advertise: Option<SocketAddr>,
    /// How often seeds are resolved again (default 5 s).
    pub resolve_every: Duration,
    /// How often seed addresses that are not members are announced to (default 1 s).
    pub announce_every: Duration,
    /// How long a node with seeds waits for a member to answer before it warns (default
    /// 3 s). It shows itself `joining` until one does.
    pub join_grace: Duration,
    /// SWIM probe period (default 1 s).
    pub probe_period: Duration,
    /// How long a direct probe waits before indirect probes (default 500 ms).
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute before it is declared dead (default 3 s).
    pub suspect_to_down_after: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            enabled: true,
            seeds: Vec::new(),
            client_advertise: None,
            resolve_every: Duration::from_secs(5),
            announce_every: Duration::from_secs(1),
            join_grace: Duration::from_secs(3),
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            suspect_to_down_after: Duration::from_secs(3),
        }
    }
}

impl MembershipConfig {
    /// Foca's settings: its LAN profile with our timings.
    fn foca(&self) -> foca::Config {
        // The cluster size only scales retransmissions; 32 covers what we test and run.
        let mut c = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(31));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt.min(self.probe_period / 2);
        c.suspect_to_down_after = self.suspect_to_down_after;
        // Down identities are remembered this long (then a member is forgotten).
        c.remove_down_after = Duration::from_secs(600);
        // Foca's packet limit, so that a sealed datagram stays under a 1500-byte MTU.
        c.max_packet_size = NonZeroUsize::MIN.saturating_add(1400 - 1);
        c
    }
}

/// Datagram counters (STATS `membership_*`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
    stale: AtomicU64,
    replayed: AtomicU64,
    malformed: AtomicU64,
    send_errors: AtomicU64,
    refused_log: RateLimit,
    stale_log: RateLimit,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// " (N more left out)" when a rate-limited log line skipped some.
fn skipped_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it left out)")
    }
}

/// Why a membership request could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The membership task has stopped (the node is shutting down).
    #[error("membership has stopped (the node is shutting down)")]
    Stopped,
}

/// This node's handle on membership: cheap to clone.
#[derive(Debug, Clone)]
pub struct Membership {
    view: watch::Receiver<Arc<[Member]>>,
    commands: mpsc::Sender<driver::Command>,
    counters: Arc<Counters>,
}

impl Membership {
    /// Every member this node knows, itself first, then by peer address. Dead members stay
    /// listed for two minutes.
    pub fn view(&self) -> Arc<[Member]> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every change of the view (`changed().await`, then `borrow()`).
    pub fn watch(&self) -> watch::Receiver<Arc<[Member]>> {
        self.view.clone()
    }

    /// The peer addresses of the other members that are alive (not joining, leaving or
    /// dead), sorted: where backups may go, and whom a draining node may hand sessions to.
    pub fn alive_peers(&self) -> Vec<SocketAddr> {
        let me = self.view.borrow().first().map(|m| m.peer);
        let mut v: Vec<SocketAddr> = self
            .view
            .borrow()
            .iter()
            .skip(1)
            .filter(|m| m.state == MemberState::Alive && Some(m.peer) != me)
            .map(|m| m.peer)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The peer addresses of every other member not declared dead (joining, alive or
    /// leaving), sorted: whom a lookup asks. A leaving member may still own a session
    /// (its drain hands it over while requests go on), and a joining one may have been
    /// handed one already.
    pub fn not_dead_peers(&self) -> Vec<SocketAddr> {
        let view = self.view.borrow();
        let me = view.first().map(|m| m.peer);
        let mut v: Vec<SocketAddr> = view
            .iter()
            .skip(1)
            .filter(|m| m.state != MemberState::Dead && Some(m.peer) != me)
            .map(|m| m.peer)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the view says the process at `peer` is dead: it lists that address, and
    /// every member it lists there (a restart on the same address is a new member) is
    /// dead. Unknown addresses are not known dead.
    pub fn known_dead(&self, peer: SocketAddr) -> bool {
        let view = self.view.borrow();
        let mut at = view.iter().filter(|m| m.peer == peer).peekable();
        at.peek().is_some() && at.all(|m| m.state == MemberState::Dead)
    }

    /// Tells the cluster that this node is leaving (draining): the others see it as
    /// `leaving` and stop choosing it for backups, while it keeps answering. Returns once
    /// the change is sent (gossip spreads it within a few probe periods). Calling it again
    /// does nothing. At shutdown the node then declares itself gone by itself.
    pub async fn announce_leaving(&self) -> Result<(), MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(driver::Command::AnnounceLeaving(tx))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        rx.await.map_err(|_| MembershipError::Stopped)
    }

    /// Members by state, in the order joining, alive, leaving, dead (this node included).
    pub fn counts(&self) -> [(MemberState, u64); 4] {
        let view = self.view.borrow();
        let n = |s| view.iter().filter(|m| m.state == s).count() as u64;
        [
            (MemberState::Joining, n(MemberState::Joining)),
            (MemberState::Alive, n(MemberState::Alive)),
            (MemberState::Leaving, n(MemberState::Leaving)),
            (MemberState::Dead, n(MemberState::Dead)),
        ]
    }

    /// STATS counters: members by state and datagram counts.
    pub(crate) fn stats(&self) -> Vec<(String, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        let mut v: Vec<(String, u64)> = self
            .counts()
            .iter()
            .map(|(s, n)| (format!("members_{}", s.name()), *n))
            .collect();
        v.extend([
            ("membership_received".to_string(), g(&c.received)),
            ("membership_sent".to_string(), g(&c.sent)),
            ("membership_refused".to_string(), g(&c.refused)),
            ("membership_stale".to_string(), g(&c.stale)),
            ("membership_replayed".to_string(), g(&c.replayed)),
            ("membership_malformed".to_string(), g(&c.malformed)),
            ("membership_send_errors".to_string(), g(&c.send_errors)),
        ]);
        v
    }
}

/// What [`start`] needs to know about the node.
pub(crate) struct Start {
    pub(crate) node_id: [u8; 16],
    pub(crate) keys: Keyring,
    /// The bound peer address: the UDP socket takes the same IP and port number.
    pub(crate) peer_bound: SocketAddr,
    pub(crate) advertise: SocketAddr,
    pub(crate) client_bound: SocketAddr,
}

/// Binds the UDP socket (same IP and port as the bound peer port) and spawns the driver
/// and the seed resolver on `tasks`. `on_alive_change` gets the alive peers' addresses
/// after every change of that set.
pub(crate) fn start(
    node: Start,
    config: MembershipConfig,
    on_alive_change: Box<dyn Fn(Vec<SocketAddr>) + Send + Sync>,
    tasks: &TaskTracker,
    shutdown: Shutdown,
) -> std::io::Result<Membership> {
    let std_socket = std::net::UdpSocket::bind(node.peer_bound).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("membership (UDP) port {}: {e}", node.peer_bound),
        )
    })?;
    std_socket.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std_socket)?);
    let client = config.client_advertise.unwrap_or_else(|| {
        if node.client_bound.ip().is_unspecified() {
            SocketAddr::new(node.advertise.ip(), node.client_bound.port())
        } else {
            node.client_bound
        }
    });
    let me = identity::Identity {
        node_id: node.node_id,
        incarnation: crate::clock::now_ms(),
        leaving: false,
        peer: node.advertise,
        client,
    };
    let (published, view) = watch::channel::<Arc<[Member]>>(Arc::from(Vec::new()));
    let (commands_tx, commands) = mpsc::channel(8);
    let (seeds_tx, seeds_rx) = watch::channel(Vec::new());
    let counters = Arc::new(Counters::default());
    let sealer = transport::Sealer::new(&node.keys, node.node_id);
    if !config.seeds.is_empty() {
        tasks.spawn(seeds::resolve_loop(
            config.seeds.clone(),
            config.resolve_every,
            seeds_tx,
            shutdown.clone(),
        ));
    }
    let d = driver::Driver::new(
        me,
        config,
        socket,
        sealer,
        published,
        counters.clone(),
        on_alive_change,
        seeds_rx,
        commands,
    );
    let mut d = d;
    d.publish();
    tasks.spawn(d.run(shutdown));
    Ok(Membership {
        view,
        commands: commands_tx,
        counters,
    })
}

impl crate::Node {
    /// This node's membership, once [`crate::start`] started it (`None` when it is off).
    pub fn membership(&self) -> Option<&Membership> {
        self.stats.about.get()?.membership.as_ref()
    }

    /// MEMBERS: the node's view (only this node, alive, when membership is off).
    pub(crate) fn members_reply(&self, request_id: u64, out: &mut BytesMut) -> crate::node::After {
        let members: Vec<Member> = match self.membership() {
            Some(m) => m.view().to_vec(),
            None => {
                let client = self.stats.about.get().map_or(self.advertise, |a| a.client);
                vec![Member {
                    node_id: self.node_id,
                    incarnation: 0,
                    state: MemberState::Alive,
                    peer: self.advertise,
                    client,
                }]
            }
        };
        Response::Members(members).encode_frame(request_id, out);
        crate::node::After::Continue
    }
}
