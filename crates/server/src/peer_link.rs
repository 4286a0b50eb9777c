//! Outgoing peer links: one persistent, authenticated, multiplexed connection from this
//! node to each peer it has needed.
//!
//! Each node dials its own link to a peer and uses it for its own requests; the peer's
//! requests to us come over the link the peer dialled (served by `peer_port`). So a pair
//! of nodes that both ask each other holds two connections, each carrying requests one
//! way: no simultaneous-dial tie-break is needed and each connection's roles are fixed.
//!
//! A link is dialled on first need, keeps many requests in flight (replies matched by
//! request id, in any order), sends PING when idle and is dropped when the peer goes
//! quiet. After a failed dial, requests fail at once until a backoff (100 ms doubling to
//! 5 s) has passed, so a dead peer costs nothing per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sessync_proto::{
    Dialler, ErrorCode, ErrorReply, FrameCodec, HandshakeError, Keyring, Limits, Message, PeerMessage,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

mod conn;
mod dial;
mod processes;

use crate::lograte::RateLimit;
use crate::stats::LatencyHistogram;
use conn::{resend_loop, run_link, sweep_deadlines, Conn, ConnShared, Pending, Resend, Waiter};

/// What an operator reads when a handshake fails because a proof does not verify.
pub(crate) const SECRET_HINT: &str = "proof does not verify: do the nodes share the cluster secret?";
use crate::tls::{Stream, TlsState};

/// Requests queued on one link before senders wait (back-pressure).
const LINK_QUEUE: usize = 1024;
/// Bytes a link's reads take at a time (the read buffer's capacity).
const LINK_READ_BUFFER: usize = 64 * 1024;
/// A PING goes out after this long without traffic from the peer.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// A link with no traffic from the peer for this long is dropped.
const DEAD_AFTER: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a peer request got no reply. Either way the request may or may not have been
/// processed by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkError {
    /// Could not connect or authenticate (or still backing off after that); why.
    #[error("{0}")]
    Unreachable(String),
    /// Connected, but no reply before the deadline or the link broke.
    #[error("no reply in time, or the link broke")]
    Lost,
}

struct DialState {
    conn: Option<Conn>,
    next_dial: Instant,
    backoff: Duration,
}

struct Link {
    addr: SocketAddr,
    state: tokio::sync::Mutex<DialState>,
    /// The last PING round trip in microseconds (0: none measured yet).
    rtt_us: AtomicU64,
    /// Whether the link was last seen up (for logging "up" and "down" once each).
    was_up: AtomicBool,
    /// Why the last dial failed, for the status page.
    last_error: Mutex<Option<String>>,
    /// When this peer last left a request of ours unanswered until its deadline, with no
    /// reply to any later one yet ([`Peers::silent`]): milliseconds since [`Peers::epoch`]
    /// plus one; 0 when it answered since.
    silent_since: AtomicU64,
    /// The node id of the process at this address known to predate FEATURES (it
    /// answered ERROR, UNKNOWN_OPCODE as every earlier release does, or closed):
    /// links to it are dialled without asking (protocol.md 9.3).
    /// A restart there (a new id, perhaps a newer release) is asked again.
    predates_features: Mutex<Option<[u8; 16]>>,
}

/// One outgoing link as the status page, `/metrics` and STATS show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LinkState {
    /// Connected and authenticated now.
    pub(crate) up: bool,
    /// Not up, and requests fail at once until the backoff after a failed dial passes.
    pub(crate) backing_off: bool,
    /// The last PING round trip, when one was measured.
    pub(crate) rtt: Option<Duration>,
    /// Why the last dial failed, if it did.
    pub(crate) last_error: Option<String>,
    /// The features the link uses, when up (protocol.md 9.3): 0 with a node that
    /// predates them, which a rolling deploy shows until every node runs the new release.
    pub(crate) features: u64,
}

impl LinkState {
    /// `up`, `down` (failed, backing off) or `idle` (never dialled, or may be dialled now).
    pub(crate) fn name(&self) -> &'static str {
        if self.up {
            "up"
        } else if self.backing_off || self.last_error.is_some() {
            "down"
        } else {
            "idle"
        }
    }
}

/// Measurements of the outgoing links, read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct LinkMetrics {
    /// Handshakes of our own links that failed on authentication (the peer refused our
    /// proof, or its proof did not verify).
    pub(crate) handshakes_refused: AtomicU64,
    /// COPY or PROMOTE sent until its COPY_DATA came back: the network part of a move.
    pub(crate) move_seconds: LatencyHistogram,
    /// REPLICATE sent until a backup answered.
    pub(crate) replicate_seconds: LatencyHistogram,
    refused_log: RateLimit,
    backup_log: RateLimit,
}

/// What this node needs to dial and authenticate.
#[derive(Debug, Clone)]
pub(crate) struct LinkConfig {
    pub(crate) node_id: [u8; 16],
    pub(crate) advertise: SocketAddr,
    pub(crate) keys: Keyring,
    pub(crate) limits: Limits,
}

/// A network that carries a node's peer requests instead of TCP: the deterministic
/// simulation's (feature `testing`). `from` is the sending node (its id tells a restarted
/// node from the one before it).
#[cfg(feature = "testing")]
pub(crate) trait SimNet: Send + Sync {
    /// Delivers `msg` from `from` to `to` and returns the reply with the node id of the
    /// process that answered, or the failure the simulated network chose, by `deadline`.
    fn request(
        &self,
        from: sessync_proto::PeerIdentity,
        to: SocketAddr,
        msg: PeerMessage,
        deadline: Instant,
    ) -> futures_util::future::BoxFuture<'static, Result<(PeerMessage, [u8; 16]), LinkError>>;
}

/// All outgoing links of a node.
pub(crate) struct Peers {
    /// Set by the simulator: requests go there instead of over TCP.
    #[cfg(feature = "testing")]
    sim: std::sync::OnceLock<Arc<dyn SimNet>>,
    config: LinkConfig,
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    /// Replies that arrived after their request gave up (a late COPY_DATA must still be
    /// installed: the sender already handed the session to us).
    orphans: mpsc::Sender<(SocketAddr, PeerMessage)>,
    shutdown: CancellationToken,
    /// Peer TLS, when on: set once at start (before any link is dialled).
    tls: OnceLock<Arc<TlsState>>,
    /// Round trips, refused handshakes and backup failures.
    pub(crate) metrics: LinkMetrics,
    /// When these links were made: what [`Link::silent_since`] counts from.
    epoch: Instant,
    /// Which process answers at each address (restarts: `node/holder_restarts.rs`).
    pub(crate) processes: processes::Processes,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("advertise", &self.config.advertise)
            .finish()
    }
}

/// Records on `link` whether its peer answered this request ([`Peers::silent`]): one
/// relaxed load per answered request, a store when it changes. `epoch`: [`Peers::epoch`].
fn note_silence(epoch: Instant, link: &Link, r: &Result<PeerMessage, LinkError>) {
    match r {
        Err(LinkError::Lost) => {
            let since = epoch.elapsed().as_millis() as u64 + 1;
            link.silent_since.store(since, Ordering::Relaxed);
        }
        Ok(_) if link.silent_since.load(Ordering::Relaxed) != 0 => {
            link.silent_since.store(0, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections leaves plain data intact.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Peers {
    pub(crate) fn new(config: LinkConfig, orphans: mpsc::Sender<(SocketAddr, PeerMessage)>) -> Peers {
        Peers {
            #[cfg(feature = "testing")]
            sim: std::sync::OnceLock::new(),
            config,
            links: Mutex::new(HashMap::new()),
            orphans,
            shutdown: CancellationToken::new(),
            tls: OnceLock::new(),
            metrics: LinkMetrics::default(),
            epoch: Instant::now(),
            processes: processes::Processes::default(),
        }
    }

    /// Handshakes of this node's own links refused on authentication.
    pub(crate) fn handshakes_refused(&self) -> u64 {
        self.metrics.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Every link this node has (dialled or about to be), with its state. Never waits:
    /// a link being dialled right now shows as not up.
    pub(crate) fn link_states(&self) -> Vec<(SocketAddr, LinkState)> {
        let links: Vec<Arc<Link>> = lock(&self.links).values().cloned().collect();
        let mut v: Vec<(SocketAddr, LinkState)> = links
            .iter()
            .map(|l| {
                let (up, backing_off, features) = match l.state.try_lock() {
                    Ok(st) => {
                        let live = st.conn.as_ref().filter(|c| c.alive.load(Ordering::Acquire));
                        (
                            live.is_some(),
                            Instant::now() < st.next_dial,
                            live.map_or(0, |c| c.features),
                        )
                    }
                    Err(_) => (false, false, 0),
                };
                let rtt = match l.rtt_us.load(Ordering::Relaxed) {
                    0 => None,
                    us => Some(Duration::from_micros(us)),
                };
                let last_error = if up { None } else { lock(&l.last_error).clone() };
                (
                    l.addr,
                    LinkState {
                        up,
                        backing_off,
                        rtt,
                        last_error,
                        features,
                    },
                )
            })
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// PINGs `addr` (dialling it if needed, unless backing off) and records the round
    /// trip; `Err` says why it did not answer by `deadline`.
    pub(crate) async fn ping(&self, addr: SocketAddr, deadline: Instant) -> Result<Duration, String> {
        let started = Instant::now();
        match self.request(addr, PeerMessage::Ping(0), deadline).await {
            Ok(PeerMessage::Pong(_)) => Ok(started.elapsed()),
            Ok(other) => Err(format!("answered PING with {other:?}")),
            Err(LinkError::Unreachable(why)) => Err(why),
            Err(LinkError::Lost) => Err("no answer in time".into()),
        }
    }

    /// Dials every link over TLS from now on (called once, at start).
    pub(crate) fn set_tls(&self, tls: Arc<TlsState>) {
        let _ = self.tls.set(tls);
    }

    /// Sends this node's peer requests through the simulator's network from now on.
    #[cfg(feature = "testing")]
    pub(crate) fn use_sim(&self, net: Arc<dyn SimNet>) {
        let _ = self.sim.set(net);
    }

    /// The simulator's network and this node's identity on it, when simulated.
    #[cfg(feature = "testing")]
    fn sim(&self) -> Option<(&Arc<dyn SimNet>, sessync_proto::PeerIdentity)> {
        let me = sessync_proto::PeerIdentity {
            node_id: self.config.node_id,
            advertised: self.config.advertise,
        };
        self.sim.get().map(|net| (net, me))
    }

    /// Closes every link (at node shutdown).
    pub(crate) fn close_all(&self) {
        self.shutdown.cancel();
    }

    fn link(&self, addr: SocketAddr) -> Arc<Link> {
        lock(&self.links)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Link {
                    addr,
                    state: tokio::sync::Mutex::new(DialState {
                        conn: None,
                        next_dial: Instant::now(),
                        backoff: BACKOFF_MIN,
                    }),
                    rtt_us: AtomicU64::new(0),
                    was_up: AtomicBool::new(false),
                    last_error: Mutex::new(None),
                    silent_since: AtomicU64::new(0),
                    predates_features: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Sends `msg` to the peer at `addr` and waits for its reply until `deadline`.
    pub(crate) async fn request(
        &self,
        addr: SocketAddr,
        msg: PeerMessage,
        deadline: Instant,
    ) -> Result<PeerMessage, LinkError> {
        #[cfg(feature = "testing")]
        if let Some((net, me)) = self.sim() {
            let r = net
                .request(me, addr, msg, deadline)
                .await
                .map(|(reply, answerer)| {
                    self.processes.seen(addr, answerer);
                    reply
                });
            // The simulated network's word for a host where no process listens.
            if matches!(&r, Err(LinkError::Unreachable(why)) if why.ends_with(": connection refused")) {
                self.processes.gone(addr);
            }
            note_silence(self.epoch, &self.link(addr), &r);
            return r;
        }
        let started = Instant::now();
        let kind = match &msg {
            PeerMessage::Ping(_) => Kind::Ping,
            PeerMessage::Copy { .. } | PeerMessage::Promote { .. } => Kind::Move,
            PeerMessage::Replicate { .. } | PeerMessage::ReplicateClaim { .. } => Kind::Replicate,
            _ => Kind::Other,
        };
        let link = self.link(addr);
        let r = self.request_on(&link, msg, deadline).await;
        note_silence(self.epoch, &link, &r);
        let took = started.elapsed();
        let m = &self.metrics;
        match (kind, &r) {
            (Kind::Ping, Ok(PeerMessage::Pong(_))) => {
                link.rtt_us
                    .store((took.as_micros() as u64).max(1), Ordering::Relaxed);
            }
            (Kind::Move, Ok(PeerMessage::CopyData { .. })) => m.move_seconds.observe(took),
            (Kind::Replicate, Ok(PeerMessage::Ok | PeerMessage::Moved { .. })) => {
                m.replicate_seconds.observe(took)
            }
            (Kind::Replicate, other) => {
                if let Some(left_out) = m.backup_log.allow() {
                    tracing::info!(
                        backup = %addr,
                        left_out,
                        "backup failed: REPLICATE got {}",
                        describe(other)
                    );
                }
            }
            _ => {}
        }
        r
    }

    async fn request_on(
        &self,
        link: &Link,
        msg: PeerMessage,
        deadline: Instant,
    ) -> Result<PeerMessage, LinkError> {
        let conn = self.connection(link, deadline).await?;
        Self::ask(&conn, msg, deadline).await
    }

    /// Whether the peer at `addr` answers a PING on a connection dialled for the purpose,
    /// before `deadline`. The verdict of a failure detector must not depend on the state
    /// of the link we already have: after a partition heals, that link can sit in TCP
    /// retransmission for many seconds while the peer is fine. A probe that succeeds
    /// replaces the link (and clears its backoff), so requests that follow use a
    /// connection known to work.
    pub(crate) async fn probe(&self, addr: SocketAddr, deadline: Instant) -> bool {
        #[cfg(feature = "testing")]
        if let Some((net, me)) = self.sim() {
            let reply = net.request(me, addr, PeerMessage::Ping(0), deadline).await;
            if let Ok((_, answerer)) = &reply {
                self.processes.seen(addr, *answerer);
            }
            return matches!(reply, Ok((PeerMessage::Pong(_), _)));
        }
        let link = self.link(addr);
        let conn = match timeout_at(deadline, self.dial(&link)).await {
            Ok(Ok(c)) => c,
            _ => return false,
        };
        if !matches!(
            Self::ask(&conn, PeerMessage::Ping(0), deadline).await,
            Ok(PeerMessage::Pong(_))
        ) {
            conn.alive.store(false, Ordering::Release);
            return false;
        }
        if let Ok(mut state) = timeout_at(deadline, link.state.lock()).await {
            if let Some(old) = state.conn.replace(conn) {
                old.alive.store(false, Ordering::Release);
            }
            state.next_dial = Instant::now();
            state.backoff = BACKOFF_MIN;
        }
        true
    }

    /// Sends `msg` on `conn` and waits for its reply until `deadline`.
    /// The deadline is kept by the connection's sweeper ([`sweep_deadlines`]), which drops
    /// the reply's sender once it passes (or when the link ends).
    async fn ask(conn: &Conn, msg: PeerMessage, deadline: Instant) -> Result<PeerMessage, LinkError> {
        let (tx, rx) = oneshot::channel();
        let id = conn.register(Waiter::Caller(tx), deadline);
        // The queue has room nearly always: then no timer (see `connection`).
        let queued = match conn.tx.try_send((id, msg)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // Boxed for the size of the request's future (see `connection`).
            Err(mpsc::error::TrySendError::Full(m)) => Box::pin(timeout_at(deadline, conn.tx.send(m)))
                .await
                .is_ok_and(|r| r.is_ok()),
        };
        if !queued {
            conn.unregister(id);
            return Err(LinkError::Lost);
        }
        rx.await.map_err(|_| LinkError::Lost)
    }

    /// Sends `msg` to the peer at `addr` without waiting for its reply, up to `tries`
    /// times (each given `timeout`) until the peer answers OK, as a task running
    /// `for _ in 0..tries { if request(..) == OK { break } }` would, without a task: when
    /// the link is up, the request is queued on it at once and its reply checked there;
    /// only a failure (or a link not up) takes a task. For COPY_ACK (`node/install.rs`, `node/copy_acks.rs`).
    pub(crate) fn send_until_ok(
        self: &Arc<Self>,
        addr: SocketAddr,
        msg: PeerMessage,
        tries: u32,
        timeout: Duration,
    ) {
        if tries == 0 {
            return;
        }
        #[cfg(feature = "testing")]
        let simulated = self.sim.get().is_some();
        #[cfg(not(feature = "testing"))]
        let simulated = false;
        let conn = if simulated {
            None
        } else {
            let link = self.link(addr);
            let conn = match link.state.try_lock() {
                Ok(state) => state.conn.clone().filter(|c| c.alive.load(Ordering::Acquire)),
                Err(_) => None,
            };
            conn
        };
        let resend = Box::new(Resend {
            peers: Arc::downgrade(self),
            addr,
            msg,
            tries: tries - 1,
            timeout,
        });
        let Some(conn) = conn else {
            let peers = self.clone();
            // Not tracked by the shutdown tracker: bounded by `tries` peer timeouts.
            crate::clock::spawn_keeping_clock(tracing::Instrument::in_current_span(async move {
                resend_loop(&peers, addr, resend.msg, tries, timeout).await;
            }));
            return;
        };
        let msg = resend.msg.clone();
        let id = conn.register(Waiter::Unwatched(resend), Instant::now() + timeout);
        if conn.tx.try_send((id, msg)).is_err() {
            // The link's queue is full, or the link just ended: this try failed.
            if let Some(w) = conn.unregister(id) {
                w.lost();
            }
        }
    }

    /// Whether `addr` left a request of ours unanswered until its deadline within the last
    /// `within`, and has answered none since (a paused process, a cut link: its TCP
    /// connection may still look up). Never waits. A read's lease renewal does not wait
    /// for such a holder (`Node::renew_read_lease`); an older silence is tried again (the
    /// link may have healed with nothing sent over it since).
    pub(crate) fn silent(&self, addr: SocketAddr, within: Duration) -> bool {
        let since = lock(&self.links)
            .get(&addr)
            .map_or(0, |l| l.silent_since.load(Ordering::Relaxed));
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        since != 0 && now.saturating_sub(since) <= within.as_millis() as u64
    }

    /// Whether a request to `addr` may get through now: its link is up, or may be dialled
    /// (not backing off after a failure). Never waits.
    pub(crate) fn reachable(&self, addr: SocketAddr) -> bool {
        #[cfg(feature = "testing")]
        if self.sim.get().is_some() {
            return true;
        }
        let link = self.link(addr);
        let Ok(state) = link.state.try_lock() else {
            // Someone is dialling it right now.
            return true;
        };
        match &state.conn {
            Some(c) if c.alive.load(Ordering::Acquire) => true,
            _ => Instant::now() >= state.next_dial,
        }
    }

    async fn connection(&self, link: &Link, deadline: Instant) -> Result<Conn, LinkError> {
        // Not contended, and up, nearly always: then no timeout at all (a small saving:
        // tokio registers a timer only when it is first polled). The rest is boxed: every peer
        // request's future (and every deferred client request's, which holds one) would
        // otherwise carry its state (the dial's: TCP, TLS, the handshake), allocated and
        // copied per request.
        if let Ok(state) = link.state.try_lock() {
            if let Some(c) = state.conn.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
                return Ok(c.clone());
            }
        }
        Box::pin(self.connect(link, deadline)).await
    }

    /// [`Peers::connection`] when the link is not up (or someone else holds its state).
    async fn connect(&self, link: &Link, deadline: Instant) -> Result<Conn, LinkError> {
        let mut state = timeout_at(deadline, link.state.lock())
            .await
            .map_err(|_| LinkError::Lost)?;
        if let Some(c) = &state.conn {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
            // run_link logged the loss; a failing re-dial is then only debug.
            link.was_up.store(false, Ordering::Relaxed);
            *lock(&link.last_error) = Some("connection lost".into());
        }
        state.conn = None;
        if Instant::now() < state.next_dial {
            // Say why it failed, not only that it did (the status page and /readyz show it).
            let last = lock(&link.last_error).clone().unwrap_or_default();
            return Err(LinkError::Unreachable(format!(
                "{} failed recently ({last}); retrying after a backoff",
                link.addr
            )));
        }
        match timeout_at(deadline, self.dial(link)).await {
            Ok(Ok(conn)) => {
                state.backoff = BACKOFF_MIN;
                state.conn = Some(conn.clone());
                *lock(&link.last_error) = None;
                Ok(conn)
            }
            failed => {
                state.next_dial = Instant::now() + state.backoff;
                state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "connect or handshake timed out".to_string(),
                };
                if link.was_up.swap(false, Ordering::Relaxed) || lock(&link.last_error).is_none() {
                    // Once per change: a dead peer is re-dialled every few seconds.
                    tracing::info!(peer = %link.addr, "peer link down: {why}");
                } else {
                    tracing::debug!(peer = %link.addr, "peer link failed: {why}");
                }
                *lock(&link.last_error) = Some(why.clone());
                Err(LinkError::Unreachable(format!("{}: {why}", link.addr)))
            }
        }
    }
}

/// What a peer request was, for measuring it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Ping,
    Move,
    Replicate,
    Other,
}

/// A failed request's outcome in words, for the log.
fn describe(r: &Result<PeerMessage, LinkError>) -> String {
    match r {
        Ok(PeerMessage::Error(e)) => format!("ERROR {} {}", e.code, e.message),
        Ok(other) => format!("{other:?}"),
        Err(LinkError::Unreachable(why)) => format!("no link ({why})"),
        Err(LinkError::Lost) => "no answer in time".into(),
    }
}
