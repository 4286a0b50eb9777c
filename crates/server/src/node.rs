//! The node: owns the table and serves requests. Connection handling lives in
//! `client_port`; this module turns one decoded request into one reply frame.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sessync_proto::{
    encode_session_reply, Attributes, ErrorCode, ErrorReply, Message, PackedAttributes, PeerMessage, Request,
    Response, SessionId, SessionMeta, Token, TokenError, PROTOCOL_VERSION,
};
use subtle::ConstantTimeEq;

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::{BackupPolicy, NodeConfig};
use crate::handover::{Fetch, Step, NOT_YET_PAUSE};
use crate::peer_link::{LinkConfig, LinkError, Peers};
use crate::stats::Stats;
use crate::table::{Landing, Miss, OldBackups, Served, Table, TableConfig, TableStats};

/// Stripes of the replication lock: one session's REPLICATEs go out one at a time (each
/// carries the newest state), unrelated sessions rarely wait on each other.
const REPLICATION_STRIPES: usize = 256;

/// Where a fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// COPY from this node (the token's owner, or, when `true`, named by our own entry).
    Ask(SocketAddr, bool),
    /// The owner named by the token is this node and the session is not here (this node
    /// restarted): go straight to the backups.
    Failover(SocketAddr),
}

/// How replicating a session's current state to its backups went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replication {
    /// The session is not live here any more (handed over, destroyed or expired
    /// meanwhile): whatever was written went with it.
    NotHere,
    /// Replicated as far as it went: see [`Backups`].
    Done(Backups),
    /// A backup knows a newer owner (it promoted its copy while this node seemed gone);
    /// the session was given up here.
    Lost(SocketAddr),
}

/// Which nodes hold a session's copies after a replication round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Backups {
    /// Those that confirmed this state (maybe fewer than `replicas`).
    confirmed: Box<[SocketAddr]>,
    /// Every node that may hold a copy of this owner's: the confirmed ones, and those that
    /// failed while they may hold an older copy (a current backup, or a candidate whose
    /// reply was lost). Such a node stays a backup until it confirms a later state:
    /// dropping it silently would leave a promotable stale copy behind (fencing).
    holders: Box<[SocketAddr]>,
}

impl Backups {
    /// Whether every holder has this state and there are at least `want` of them: the
    /// only condition under which a write may be acknowledged (policy refuse).
    fn complete(&self, want: usize) -> bool {
        self.confirmed.len() >= want && self.confirmed.len() == self.holders.len()
    }
}

/// How a REPLICATE round for one record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoundOutcome {
    /// See [`Backups`].
    Done(Backups),
    /// A node knows a newer owner of the session (`to`). `placed`: the nodes that may now
    /// hold this owner's copy of the session; they must be fenced (DROP) so that the
    /// abandoned copy can never be promoted over the newer owner's.
    Superseded { to: SocketAddr, placed: Vec<SocketAddr> },
}

/// A request's session, resolved: the operation's result, the id and the verified token.
struct Resolved<T> {
    value: T,
    id: SessionId,
    token: Token,
}

/// How a fetch ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// The session was copied here.
    Installed,
    /// The MOVED chain points back at this node.
    PointsHere,
}

/// The outcome of one fetch, shared with every request that waited on it.
type FetchResult = Result<Fetched, (ErrorCode, String)>;

/// What a connection must do after a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Keep reading.
    Continue,
    /// The client passed HELLO; keep reading.
    Authenticated,
    /// Flush and close (the reply was a connection-closing error).
    Close,
    /// Nothing was written: the request needs another node (a fetch). Run it again with
    /// [`Mode::Full`] off the connection's path, so it does not hold up the requests
    /// behind it.
    Defer,
}

/// How far [`Node::handle`] may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only what this node can answer by itself; never waits (the future completes on its
    /// first poll). A request that needs a peer returns [`After::Defer`].
    LocalOnly,
    /// Everything, including copying the session from another node.
    Full,
}

/// One node's state, shared by all its connections.
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) node_id: [u8; 16],
    pub(crate) advertise: SocketAddr,
    pub(crate) table: Table,
    pub(crate) stats: Stats,
    pub(crate) peers: Arc<Peers>,
    /// Fetches under way, so concurrent requests for one session send one COPY.
    inflight: DashMap<SessionId, watch::Receiver<Option<FetchResult>>>,
    /// See [`REPLICATION_STRIPES`].
    replication_locks: Box<[tokio::sync::Mutex<()>]>,
    /// The cluster's peer addresses (backup candidates): `config.peers` at start, replaced
    /// by [`Node::set_peers`]. Read on every write with replicas on; written rarely.
    cluster_peers: std::sync::RwLock<Arc<Vec<SocketAddr>>>,
    /// Sessions whose backups should get a newer access time (sent by reads, served by a
    /// background task so that reads never wait for it).
    refresh: tokio::sync::mpsc::Sender<SessionId>,
}

/// Removes a fetch from the in-flight map even if the fetching request is cancelled.
struct InflightGuard<'a> {
    map: &'a DashMap<SessionId, watch::Receiver<Option<FetchResult>>>,
    id: SessionId,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

impl Node {
    pub(crate) fn new(
        config: NodeConfig,
        advertise: SocketAddr,
        orphans: tokio::sync::mpsc::Sender<(SocketAddr, sessync_proto::PeerMessage)>,
        refresh: tokio::sync::mpsc::Sender<SessionId>,
    ) -> Node {
        let table = Table::new(TableConfig {
            max_sessions: config.max_sessions,
            max_memory: config.max_memory,
            max_attributes: config.limits.max_attributes,
            // Room for the reply's header, token and metadata in the same frame.
            max_session_bytes: (config.limits.max_frame_len as usize).saturating_sub(1024),
            evict: config.evict,
        });
        // A fresh id per process start: a restarted node is a different peer.
        let node_id = SessionId::random().0;
        let peers = Arc::new(Peers::new(
            LinkConfig {
                node_id,
                advertise,
                keys: config.keys.clone(),
                limits: config.limits.clone(),
            },
            orphans,
        ));
        let cluster_peers = std::sync::RwLock::new(Arc::new(config.peers.clone()));
        Node {
            config,
            node_id,
            advertise,
            table,
            stats: Stats::default(),
            peers,
            inflight: DashMap::new(),
            cluster_peers,
            replication_locks: (0..REPLICATION_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            refresh,
        }
    }

    /// The cluster's peer addresses now (where backups may go).
    pub fn cluster_peers(&self) -> Arc<Vec<SocketAddr>> {
        self.cluster_peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the cluster's peer addresses (a node joined or left). Sessions keep the
    /// backups they have until a write finds one gone.
    pub fn set_peers(&self, peers: Vec<SocketAddr>) {
        *self.cluster_peers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(peers);
    }

    /// The address this node writes into tokens.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// Table counters.
    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// The counters STATS reports.
    pub fn stats_snapshot(&self) -> Vec<(String, u64)> {
        let t = self.table.stats();
        let mut s = vec![
            ("sessions".to_string(), t.sessions as u64),
            ("backups".to_string(), t.backups as u64),
            ("tombstones".to_string(), t.tombstones as u64),
            ("bytes".to_string(), t.bytes as u64),
            ("evicted".to_string(), t.evicted),
            ("reclaimed".to_string(), t.reclaimed),
            ("max_sessions".to_string(), self.config.max_sessions as u64),
            ("max_memory".to_string(), self.config.max_memory as u64),
        ];
        s.extend(self.stats.snapshot());
        s
    }

    /// This node as peers know it (for table entries that name a receiver).
    fn identity(&self) -> sessync_proto::PeerIdentity {
        sessync_proto::PeerIdentity {
            node_id: self.node_id,
            advertised: self.advertise,
        }
    }

    fn sign(&self, id: SessionId, backups: &[SocketAddr]) -> String {
        Token {
            session_id: id,
            owner: self.advertise,
            backups: backups.to_vec(),
        }
        .sign(&self.config.keys)
    }

    /// The replacement token a reply carries, when the client's does not name this node
    /// and these backups.
    fn fresh_token(&self, token: &Token, backups: &[SocketAddr]) -> Option<String> {
        if token.owner == self.advertise && token.backups == backups {
            None
        } else {
            Some(self.sign(token.session_id, backups))
        }
    }

    fn error(
        &self,
        request_id: u64,
        code: ErrorCode,
        message: impl Into<String>,
        out: &mut BytesMut,
    ) -> After {
        Stats::bump(&self.stats.errors);
        Response::Error(ErrorReply::new(code, message)).encode_frame(request_id, out);
        if code.closes_connection() {
            After::Close
        } else {
            After::Continue
        }
    }

    fn miss_error(&self, request_id: u64, miss: Miss, out: &mut BytesMut) -> After {
        match miss {
            Miss::NotFound | Miss::Absent => self.error(
                request_id,
                ErrorCode::SessionNotFound,
                "no such session (expired, destroyed or never existed)",
                out,
            ),
            Miss::Moved(to) => self.error(
                request_id,
                ErrorCode::OwnerUnreachable,
                format!("session moved to {to}, which this node cannot reach"),
                out,
            ),
            Miss::VersionConflict { current } => self.error(
                request_id,
                ErrorCode::VersionConflict,
                format!("session is at version {current}; nothing was changed"),
                out,
            ),
            Miss::TooManyAttributes => self.error(
                request_id,
                ErrorCode::LimitExceeded,
                format!(
                    "a session holds at most {} attributes",
                    self.config.limits.max_attributes
                ),
                out,
            ),
            Miss::TooLarge => self.error(
                request_id,
                ErrorCode::LimitExceeded,
                "the session would not fit in one frame; nothing was changed",
                out,
            ),
            Miss::Capacity => self.error(
                request_id,
                ErrorCode::Capacity,
                "node is at its session or memory limit",
                out,
            ),
        }
    }

    /// Verifies a token and runs `op` on the session it names, copying the session here
    /// first when another node holds it (instant copy), or taking it over from a backup
    /// when its owner is gone.
    async fn on_session<T>(
        &self,
        token: &str,
        mode: Mode,
        op: impl Fn(&Table, &SessionId, u64) -> Result<T, Miss>,
    ) -> Result<Resolved<T>, SessionFailure> {
        let token = Token::verify(token, &self.config.keys).map_err(SessionFailure::Token)?;
        let id = token.session_id;
        let mut fetches = 0;
        let mut first_fetch: Option<Instant> = None;
        loop {
            let start = match op(&self.table, &id, now_ms()) {
                Ok(value) => return Ok(Resolved { value, id, token }),
                // We handed it on (or hold a backup): follow it. Never here: ask the owner
                // the token names (its MAC verified, so the address is one a node of ours
                // wrote).
                Err(Miss::Moved(to)) => Start::Ask(to, true),
                Err(Miss::Absent) if token.owner != self.advertise => Start::Ask(token.owner, false),
                // The token names this node, which does not have the session: it lost it
                // (a restart). Its backups may have it.
                Err(Miss::Absent) if !token.backups.is_empty() => Start::Failover(self.advertise),
                Err(m) => return Err(SessionFailure::Miss(m)),
            };
            if mode == Mode::LocalOnly {
                return Err(SessionFailure::Defer);
            }
            // A session snatched away between our install and our op is followed again,
            // within the hop limit. Past it (or past the hop limit of one MOVED chain), the
            // session is moving faster than we follow it: nodes are taking it from each
            // other (an application sending one user's requests to several servers at
            // once). Back off a random moment, so that one of them gets to serve, and try
            // again while the peer timeout lasts.
            let first = *first_fetch.get_or_insert_with(Instant::now);
            if fetches >= self.config.max_hops {
                self.back_off(first, "session keeps moving").await?;
                fetches = self.config.max_hops - 1;
                continue;
            }
            fetches += 1;
            let fetched = match self.fetch(id, start, &token.backups).await {
                Ok(f) => f,
                Err((ErrorCode::TooManyHops, message)) => {
                    self.back_off(first, &message).await?;
                    continue;
                }
                Err((c, m)) => return Err(SessionFailure::Fetch(c, m)),
            };
            if fetched == Fetched::PointsHere {
                // The owners' chain ends here: if the table has moved on (another request
                // handed it away meanwhile), the loop follows it; if it has nothing, the
                // session is gone.
                match op(&self.table, &id, now_ms()) {
                    Ok(value) => return Ok(Resolved { value, id, token }),
                    Err(Miss::Moved(_)) => continue,
                    Err(Miss::Absent) => {
                        return Err(SessionFailure::Fetch(
                            ErrorCode::SessionNotFound,
                            "no such session: its forwarding path ends here and it is not here".into(),
                        ))
                    }
                    Err(m) => return Err(SessionFailure::Miss(m)),
                }
            }
        }
    }

    /// Sleeps a random 2-25 ms before a request chases a session that keeps moving again,
    /// or fails it with TOO_MANY_HOPS when that would pass the peer timeout counted from
    /// `first` (its first fetch).
    async fn back_off(&self, first: Instant, why: &str) -> Result<(), SessionFailure> {
        let pause = std::time::Duration::from_millis(2 + u64::from(SessionId::random().0[0] % 24));
        if first.elapsed() + pause >= self.config.peer_timeout {
            return Err(SessionFailure::Fetch(ErrorCode::TooManyHops, why.to_string()));
        }
        Stats::bump(&self.stats.contention_backoffs);
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// Copies session `id` here (following MOVED, and falling back on `backups` when the
    /// owner is gone). Concurrent callers for the same id share one fetch.
    async fn fetch(&self, id: SessionId, start: Start, backups: &[SocketAddr]) -> FetchResult {
        let leader = match self.inflight.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(o) => Err(o.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(None);
                v.insert(rx);
                Ok(tx)
            }
        };
        match leader {
            Ok(tx) => {
                let _guard = InflightGuard {
                    map: &self.inflight,
                    id,
                };
                let result = self.fetch_from_peers(id, start, backups).await;
                let _ = tx.send(Some(result.clone()));
                result
            }
            Err(mut rx) => match rx.wait_for(|r| r.is_some()).await {
                Ok(r) => r
                    .clone()
                    .unwrap_or(Err((ErrorCode::Internal, "fetch ended without a result".into()))),
                Err(_) => Err((
                    ErrorCode::OwnerUnreachable,
                    "the fetch this request waited on was abandoned".into(),
                )),
            },
        }
    }

    async fn fetch_from_peers(&self, id: SessionId, start: Start, backups: &[SocketAddr]) -> FetchResult {
        let (result, chain) = match start {
            Start::Ask(owner, forwarded) => self.copy_chain(id, owner, forwarded, backups).await,
            Start::Failover(me) => (
                Err((
                    ErrorCode::SessionNotFound,
                    "no such session here (this node lost it) and no backup has it".into(),
                )),
                vec![me],
            ),
        };
        let (result, chain) = match (result, chain.last().copied()) {
            // Our link said the owner is unreachable. Before anyone takes its sessions
            // over, make sure it is not just our link (backing off after an old failure,
            // say, while the owner restarted): dial it afresh and PING it. If it answers,
            // it is alive: ask it again, and never fail over from a live owner.
            (Err((ErrorCode::OwnerUnreachable, _)), Some(f))
                if f != self.advertise && self.alive(f).await =>
            {
                self.copy_chain(id, f, true, backups).await
            }
            (result, _) => (result, chain),
        };
        let result = match (result, chain.split_last()) {
            // The owner is gone (unreachable, or restarted without it): the nodes that
            // pointed to it (it may have made its giver its backup, or never taken the
            // session over) and then its backups may hold the session.
            (Err((code, message)), Some((&failed, before)))
                if matches!(code, ErrorCode::OwnerUnreachable | ErrorCode::SessionNotFound) =>
            {
                let mut candidates: Vec<SocketAddr> = before.iter().rev().copied().collect();
                candidates.extend(backups.iter().filter(|b| !before.contains(b)));
                match self.failover(id, failed, &candidates).await {
                    Some(r) => r,
                    None => Err((code, message)),
                }
            }
            (r, _) => r,
        };
        if result.is_err() {
            Stats::bump(&self.stats.handover_failures);
        }
        result
    }

    /// Whether `peer` answers a PING over a freshly dialled (or live) link within the peer
    /// timeout.
    async fn alive(&self, peer: SocketAddr) -> bool {
        // A fresh connection with its own deadline: the link we have may be stuck in TCP
        // retransmission after a partition healed (it would look dead for as long as its
        // silence timer runs), or backing off after the peer restarted.
        self.peers
            .probe(peer, Instant::now() + self.config.peer_timeout)
            .await
    }

    /// The COPY chain from `owner`, following MOVED. Returns the outcome and the nodes
    /// asked, in order (when it failed, the last is the node it failed at).
    async fn copy_chain(
        &self,
        id: SessionId,
        owner: SocketAddr,
        forwarded: bool,
        prefer: &[SocketAddr],
    ) -> (FetchResult, Vec<SocketAddr>) {
        let deadline = Instant::now() + self.config.peer_timeout;
        let (mut fetch, mut step) = Fetch::new(id, self.advertise, owner, forwarded, self.config.max_hops);
        let mut chain: Vec<SocketAddr> = Vec::new();
        loop {
            step = match step {
                Step::Ask(to) => {
                    if chain.last() != Some(&to) {
                        chain.push(to);
                    }
                    match self
                        .peers
                        .request(
                            to,
                            PeerMessage::Copy {
                                session_id: id,
                                last_transfer: self.table.last_received(&id),
                            },
                            deadline,
                        )
                        .await
                    {
                        Ok(reply) => fetch.handle_reply(to, reply),
                        Err(LinkError::Unreachable(why)) => Step::Fail(ErrorCode::OwnerUnreachable, why),
                        Err(LinkError::Lost) if Instant::now() >= deadline => Step::Fail(
                            ErrorCode::OwnerUnreachable,
                            format!("owner {to} did not answer within {:?}", self.config.peer_timeout),
                        ),
                        Err(LinkError::Lost) => fetch.handle_lost(to),
                    }
                }
                Step::AskLater(to) => {
                    if Instant::now() + NOT_YET_PAUSE >= deadline {
                        Step::Fail(
                            ErrorCode::OwnerUnreachable,
                            format!("{to} did not receive the session in time"),
                        )
                    } else {
                        tokio::time::sleep(NOT_YET_PAUSE).await;
                        Step::Ask(to)
                    }
                }
                Step::Install {
                    from,
                    transfer,
                    record,
                } => {
                    self.install_copy(from, transfer, &record, prefer).await;
                    return (Ok(Fetched::Installed), chain);
                }
                Step::Local => return (Ok(Fetched::PointsHere), chain),
                Step::Fail(code, message) => return (Err((code, message)), chain),
            };
        }
    }

    /// Takes session `id` over from a backup copy: `failed` (the owner) is gone. Tries a
    /// copy held here first, then each backup in the token's order with PROMOTE. `None`
    /// when no backup had it. A backup hands its copy over once (under its entry lock), so
    /// two nodes racing to promote end with one owner.
    async fn failover(
        &self,
        id: SessionId,
        failed: SocketAddr,
        backups: &[SocketAddr],
    ) -> Option<FetchResult> {
        tracing::debug!(session = %id, %failed, ?backups, "owner gone; trying its backups");
        if let Some(claim) = self.table.promote_local(&id, failed, self.identity(), now_ms()) {
            Stats::bump(&self.stats.promotions);
            let mut holders = claim.holders.to_vec();
            holders.extend(backups.iter().filter(|b| !claim.holders.contains(b)));
            self.protect_and_install(claim.generation, &claim.record, None, &holders, &[])
                .await;
            return Some(Ok(Fetched::Installed));
        }
        for &b in backups {
            if b == self.advertise || b == failed {
                continue;
            }
            let mut attempts = 0;
            let reply = loop {
                attempts += 1;
                let ask = PeerMessage::Promote {
                    session_id: id,
                    last_transfer: self.table.last_received(&id),
                    failed_owner: failed,
                };
                match self
                    .peers
                    .request(b, ask, Instant::now() + self.config.peer_timeout)
                    .await
                {
                    // A lost reply is asked again: a backup that handed its copy to us
                    // sends the same copy again.
                    Err(LinkError::Lost) if attempts < 2 => continue,
                    r => break r,
                }
            };
            match reply {
                Ok(PeerMessage::CopyData { transfer, record }) if record.id == id => {
                    tracing::info!(session = %id, %failed, backup = %b, "took the session over from a backup");
                    Stats::bump(&self.stats.promotions);
                    self.install_copy(b, transfer, &record, backups).await;
                    return Some(Ok(Fetched::Installed));
                }
                Ok(PeerMessage::Moved { owner, .. }) if owner == self.advertise => {
                    return Some(Ok(Fetched::PointsHere))
                }
                // The backup knows a newer owner: the session lives on there.
                Ok(PeerMessage::Moved { owner, .. }) if owner != failed => {
                    return Some(self.copy_chain(id, owner, true, backups).await.0)
                }
                other => {
                    tracing::debug!(session = %id, backup = %b, "backup did not hand the session over: {other:?}")
                }
            }
        }
        None
    }

    /// Installs a session handed over by `from`, gives it backups (preferring `prefer`,
    /// the previous owner's), and acknowledges it, so `from` can drop its copy and tell
    /// its backups to drop theirs. Also used for a COPY_DATA that arrived after its
    /// request gave up: the sender handed the session to us, so it must be installed.
    pub(crate) async fn install_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
        prefer: &[SocketAddr],
    ) {
        // The giver first: it is alive (it just answered), and as our backup it is where
        // anyone who finds us gone looks first (it named us in MOVED).
        let mut first = vec![from];
        first.extend_from_slice(prefer);
        // The giver and the nodes the client's token named (the previous owner's holders,
        // as of the client's latest reply) all take the new copy, or stay holders: each
        // may hold an older copy that a failover could otherwise promote (fencing).
        let giver_holds_a_copy = match self
            .protect_and_install(transfer, record, Some(from), &first, &[])
            .await
        {
            Some(backups) => backups.confirmed.contains(&from),
            None => true,
        };
        // The ACK is sent even when the install was refused (a destroyed tombstone here):
        // the sender must not keep offering the data. It goes after the backups have the
        // copy: the sender then drops its own backups.
        let ack = PeerMessage::CopyAck {
            session_id: record.id,
            transfer,
        };
        let timeout = self.config.peer_timeout;
        let peers = self.peers.clone();
        let send = async move {
            for _ in 0..3 {
                if let Ok(PeerMessage::Ok) = peers.request(from, ack.clone(), Instant::now() + timeout).await
                {
                    return;
                }
            }
        };
        if giver_holds_a_copy {
            // Not tracked by the shutdown tracker: it is bounded (3 x peer timeout), and a
            // lost ACK only leaves the giver answering MOVED to us until it expires.
            tokio::spawn(send);
        } else {
            // The giver is not our backup, so until it hears our ACK it would hand its
            // (older) copy on to anyone who reports us gone: it must hear it before we
            // serve anything from this session.
            send.await;
        }
    }

    /// Makes a session that becomes ours under `generation` safe, then installs it: with
    /// replicas, its copy goes to backups (preferring `prefer`) *before* it is installed,
    /// so no request is served from it unprotected and every reply's token names its
    /// backups; a node that answers with a newer owner makes it a forwarding tombstone
    /// instead. Returns the backups (`None`: no replication, or not installed).
    /// `current` are nodes that must take the copy (they hold older ones of this lineage).
    async fn protect_and_install(
        &self,
        generation: u64,
        record: &sessync_proto::SessionRecord,
        giver: Option<SocketAddr>,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
    ) -> Option<Backups> {
        let id = record.id;
        let (landing_backups, superseded) = if self.config.replicas == 0 {
            (None, None)
        } else {
            let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
            let _one_at_a_time = self.replication_locks[stripe].lock().await;
            match self
                .replicate_round(id, generation, record, current, prefer)
                .await
            {
                RoundOutcome::Done(b) => {
                    if !b.complete(usize::from(self.config.replicas)) {
                        tracing::warn!(session = %id, backups = b.confirmed.len(), "session taken over with fewer backups than wanted");
                    }
                    (Some(b), None)
                }
                RoundOutcome::Superseded { to, placed } => {
                    self.spawn_fence(id, generation, placed);
                    (None, Some(to))
                }
            }
        };
        let landing = match (&landing_backups, superseded) {
            (_, Some(to)) => Landing::Superseded(to),
            (Some(b), None) => Landing::Owner(&b.holders),
            (None, None) => Landing::Owner(&[]),
        };
        match self
            .table
            .install_as(record, generation, giver, landing, now_ms())
        {
            Ok(true) if superseded.is_none() => {
                Stats::bump(&self.stats.copies_received);
                landing_backups
            }
            _ => None,
        }
    }

    /// The nodes that may hold `id`'s backups, best first: its current backups, then
    /// `prefer`, then (with `ranked`) the cluster's peers in rendezvous order of the id (so
    /// every owner of a session tends to pick the same backups, and load spreads evenly).
    /// Never this node. The ranking hashes and sorts every peer, so a write whose current
    /// backups suffice asks for it only when one of them fails.
    fn backup_candidates(
        &self,
        id: &SessionId,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
        ranked: bool,
    ) -> Vec<SocketAddr> {
        use std::hash::{Hash, Hasher};
        let mut order: Vec<(u64, SocketAddr)> = Vec::new();
        if ranked {
            order = self
                .cluster_peers()
                .iter()
                .map(|p| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    id.0.hash(&mut h);
                    p.hash(&mut h);
                    (h.finish(), *p)
                })
                .collect();
            order.sort_by_key(|r| std::cmp::Reverse(r.0));
        }
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in current
            .iter()
            .chain(prefer)
            .copied()
            .chain(order.into_iter().map(|(_, a)| a))
        {
            if a != self.advertise && !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Whether enough backup nodes look reachable for a write (links up, or not backing
    /// off after a failure). Checked before a write under [`BackupPolicy::Refuse`].
    fn enough_backups(&self) -> bool {
        let want = usize::from(self.config.replicas);
        want == 0
            || self
                .cluster_peers()
                .iter()
                .filter(|p| **p != self.advertise && self.peers.reachable(**p))
                .count()
                >= want
    }

    /// Sends the session's current state to its backups (and, if they are fewer than
    /// `replicas`, to new ones) and waits for them. Bounded by two peer timeouts.
    async fn replicate(&self, id: SessionId, prefer: &[SocketAddr]) -> Replication {
        let stripe = usize::from(id.0[1]) % REPLICATION_STRIPES;
        let _one_at_a_time = self.replication_locks[stripe].lock().await;
        let Some(snap) = self.table.snapshot(&id, now_ms()) else {
            return Replication::NotHere;
        };
        if self.config.replicas == 0 {
            return Replication::Done(Backups {
                confirmed: snap.backups.clone(),
                holders: snap.backups,
            });
        }
        // A backup the operator removed from the cluster (no longer among its peers) is
        // taken to be gone for good: the one way a node that never answers again stops
        // holding a session's writes up (membership will say so too).
        let cluster = self.cluster_peers();
        let current: Vec<SocketAddr> = if cluster.is_empty() {
            snap.backups.to_vec()
        } else {
            snap.backups
                .iter()
                .copied()
                .filter(|b| cluster.contains(b))
                .collect()
        };
        match self
            .replicate_round(id, snap.generation, &snap.record, &current, prefer)
            .await
        {
            RoundOutcome::Done(b) => {
                tracing::debug!(session = %id, generation = snap.generation, version = snap.record.meta.version, confirmed = ?b.confirmed, holders = ?b.holders, "replicated");
                self.table.set_backups(&id, snap.generation, &b.holders);
                Replication::Done(b)
            }
            // Still ours here: a backup promoted it meanwhile (or another node claimed
            // it), so we give it up. Not ours any more: we handed it on after the write
            // (which went with it), and the backup has heard from the new owner already.
            RoundOutcome::Superseded {
                to: owner,
                mut placed,
            } => {
                for b in current.iter() {
                    if !placed.contains(b) {
                        placed.push(*b);
                    }
                }
                self.spawn_fence(id, snap.generation, placed);
                if self.table.lose_ownership(&id, snap.generation, owner, now_ms()) {
                    Replication::Lost(owner)
                } else {
                    Replication::NotHere
                }
            }
        }
    }

    /// One REPLICATE round of `record` (owned here under `generation`): every node in
    /// `current` gets it (they may hold older copies of ours), then new candidates until
    /// `replicas` confirmed. The caller holds the session's replication stripe.
    ///
    /// Fencing (protocol.md 12.2): a node in `current` that fails stays a holder, so the
    /// write cannot be acknowledged until it confirms a later state; a new candidate that
    /// failed is a holder only when it may have stored the copy (its reply was lost).
    /// A node that answers MOVED knows a newer owner: the round ends there.
    async fn replicate_round(
        &self,
        id: SessionId,
        generation: u64,
        record: &sessync_proto::SessionRecord,
        current: &[SocketAddr],
        prefer: &[SocketAddr],
    ) -> RoundOutcome {
        let want = usize::from(self.config.replicas);
        let overall = Instant::now() + self.config.peer_timeout * 2;
        let mut confirmed: Vec<SocketAddr> = Vec::new();
        let mut holders: Vec<SocketAddr> = Vec::new();
        let mut batch: Vec<SocketAddr> = Vec::with_capacity(current.len());
        for &a in current {
            if a != self.advertise && !batch.contains(&a) {
                batch.push(a);
            }
        }
        let mut candidates = self.backup_candidates(&id, current, prefer, false);
        let mut ranked = false;
        let mut next = batch.len().min(candidates.len());
        let mut first_round = true;
        loop {
            if !first_round {
                if confirmed.len() >= want || Instant::now() >= overall {
                    break;
                }
                if next >= candidates.len() {
                    if ranked {
                        break;
                    }
                    // The current and preferred backups are used up: the rest of the
                    // cluster, in rendezvous order (those already asked are skipped).
                    candidates = self.backup_candidates(&id, current, prefer, true);
                    ranked = true;
                    continue;
                }
                let take = (want - confirmed.len()).min(candidates.len() - next);
                batch = candidates[next..next + take]
                    .iter()
                    .copied()
                    .filter(|c| !holders.contains(c))
                    .collect();
                next += take;
            }
            let is_current = first_round;
            first_round = false;
            if batch.is_empty() {
                continue;
            }
            let deadline = (Instant::now() + self.config.peer_timeout).min(overall);
            let replies = futures_util::future::join_all(batch.iter().map(|&b| {
                let msg = PeerMessage::Replicate {
                    generation,
                    record: record.clone(),
                };
                self.peers.request(b, msg, deadline)
            }))
            .await;
            let mut superseded = None;
            for (&b, reply) in batch.iter().zip(replies) {
                match reply {
                    Ok(PeerMessage::Ok) => {
                        Stats::bump(&self.stats.replicated);
                        confirmed.push(b);
                        holders.push(b);
                    }
                    // A newer owner is known. (A pointer back at this node would mean our
                    // copy is older than one handed to us and not installed yet: the
                    // newest is then where that handover waits, which the sender says by
                    // naming itself; a pointer to ourselves is never followed.)
                    Ok(PeerMessage::Moved { owner, .. }) => {
                        superseded = Some(if owner != self.advertise { owner } else { b });
                    }
                    other => {
                        Stats::bump(&self.stats.replicate_failures);
                        tracing::debug!(session = %id, backup = %b, "REPLICATE failed: {other:?}");
                        let may_hold = is_current || matches!(other, Err(LinkError::Lost));
                        if may_hold {
                            holders.push(b);
                        }
                    }
                }
            }
            if let Some(to) = superseded {
                return RoundOutcome::Superseded { to, placed: holders };
            }
        }
        RoundOutcome::Done(Backups {
            confirmed: confirmed.into(),
            holders: holders.into(),
        })
    }

    /// After a write applied here: replicates it, and says what the reply may claim.
    /// `Ok(backups)`: acknowledge, with a token naming these backups; `Err(message)`: the
    /// write is applied here but not protected as configured: INDETERMINATE.
    async fn replicate_write(
        &self,
        id: SessionId,
        served: &[SocketAddr],
    ) -> Result<Box<[SocketAddr]>, String> {
        let want = usize::from(self.config.replicas);
        if want == 0 {
            return Ok(served.into());
        }
        match self.replicate(id, &[]).await {
            // Handed over (or gone) meanwhile: the write was applied before, so it is in
            // the copy the next owner got, and that owner replicates before it serves.
            Replication::NotHere => Ok(served.into()),
            Replication::Done(b) if b.complete(want) => Ok(b.holders),
            Replication::Done(b) => {
                Stats::bump(&self.stats.under_replicated_writes);
                if self.config.backup_policy == BackupPolicy::Degrade {
                    Ok(b.holders)
                } else {
                    Err(format!(
                        "the write is applied at this node, but only {} of the {} backups it needs confirmed it: it is lost if this node dies",
                        b.confirmed.len(),
                        want.max(b.holders.len())
                    ))
                }
            }
            Replication::Lost(to) => Err(format!(
                "another node ({to}) took the session over while this write was being replicated; the write may be lost"
            )),
        }
    }

    /// Tells `backups` to drop their copies of `id` (those of `generation` or older);
    /// returns how many could not be told.
    async fn drop_backups(&self, id: SessionId, old: &OldBackups) -> usize {
        let deadline = Instant::now() + self.config.peer_timeout;
        let replies = futures_util::future::join_all(old.backups.iter().map(|&b| {
            self.peers.request(
                b,
                PeerMessage::Drop {
                    session_id: id,
                    generation: old.generation,
                },
                deadline,
            )
        }))
        .await;
        replies
            .into_iter()
            .filter(|r| !matches!(r, Ok(PeerMessage::Ok)))
            .count()
    }

    /// Sends a read's newer access time to the session's backups in the background, when
    /// theirs lags by more than a quarter of the idle TTL (so a backup promoted after its
    /// owner died does not expire an active session early by more than that).
    fn refresh_backups_if_stale(&self, id: SessionId, s: &Served) {
        if self.config.replicas > 0
            && !s.backups.is_empty()
            && s.meta.last_access_ms.saturating_sub(s.replicated_access_ms) > s.meta.idle_ttl_ms / 4
        {
            let _ = self.refresh.try_send(id);
        }
    }

    /// Serves the background refreshes of [`Node::refresh_backups_if_stale`].
    pub(crate) fn refresh_backups(self: &Arc<Self>, id: SessionId) {
        let node = self.clone();
        tokio::spawn(async move {
            let _ = node.replicate(id, &[]).await;
        });
    }

    /// Fences an abandoned copy: tells the nodes that may hold this node's copy of `id`
    /// under `generation` to drop it (they keep a fence), in the background. Why: this node
    /// learned that another owner is newer, so its copy (which may carry writes it never
    /// acknowledged, and lack the newer owner's) must never be promoted by a failover.
    /// A node that cannot be told keeps its copy until it expires or a newer owner's
    /// REPLICATE replaces it.
    fn spawn_fence(&self, id: SessionId, generation: u64, nodes: Vec<SocketAddr>) {
        if nodes.is_empty() {
            return;
        }
        let (peers, timeout) = (self.peers.clone(), self.config.peer_timeout);
        // Not tracked by the shutdown tracker: bounded by the peer timeout.
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            futures_util::future::join_all(nodes.into_iter().map(|b| {
                peers.request(
                    b,
                    PeerMessage::Drop {
                        session_id: id,
                        generation,
                    },
                    deadline,
                )
            }))
            .await;
        });
    }

    /// Tells a handed-over session's old backups to drop their copies, in the background
    /// (leftovers expire on their own).
    pub(crate) fn spawn_drop_backups(self: &Arc<Self>, id: SessionId, old: OldBackups) {
        if old.backups.is_empty() {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.drop_backups(id, &old).await;
        });
    }

    fn session_failure(&self, request_id: u64, f: SessionFailure, out: &mut BytesMut) -> After {
        match f {
            SessionFailure::Token(e) => self.error(
                request_id,
                ErrorCode::InvalidToken,
                format!("invalid token: {e}"),
                out,
            ),
            SessionFailure::Miss(m) => self.miss_error(request_id, m, out),
            SessionFailure::Fetch(code, message) => self.error(request_id, code, message, out),
            SessionFailure::Defer => After::Defer,
        }
    }

    fn reply_session(
        &self,
        request_id: u64,
        token: Option<&str>,
        meta: &SessionMeta,
        attrs: &PackedAttributes,
        out: &mut BytesMut,
    ) -> After {
        encode_session_reply(out, request_id, token, meta, attrs);
        After::Continue
    }

    /// Handles one request of an authenticated (or password-less) connection and appends
    /// the reply frame to `out`.
    pub(crate) async fn handle(
        &self,
        request_id: u64,
        req: &Request,
        authenticated: bool,
        mode: Mode,
        out: &mut BytesMut,
    ) -> After {
        // Counted once: every client request passes here first with LocalOnly.
        if mode == Mode::LocalOnly {
            Stats::bump(&self.stats.requests);
        }
        if !authenticated && !matches!(req, Request::Hello { .. }) {
            return self.error(
                request_id,
                ErrorCode::AuthRequired,
                "this node requires HELLO with a password first",
                out,
            );
        }
        match req {
            Request::Hello {
                min_version,
                max_version,
                password,
                ..
            } => {
                if !(*min_version..=*max_version).contains(&PROTOCOL_VERSION) {
                    return self.error(
                        request_id,
                        ErrorCode::UnsupportedVersion,
                        format!("this node speaks protocol version {PROTOCOL_VERSION} only"),
                        out,
                    );
                }
                if let Some(expected) = &self.config.password {
                    let Some(given) = password else {
                        return self.error(
                            request_id,
                            ErrorCode::AuthRequired,
                            "this node requires a password",
                            out,
                        );
                    };
                    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                        return self.error(request_id, ErrorCode::AuthFailed, "wrong password", out);
                    }
                }
                Response::HelloOk {
                    version: PROTOCOL_VERSION,
                    server_name: concat!("sessync/", env!("CARGO_PKG_VERSION")).into(),
                    max_frame_len: self.config.limits.max_frame_len,
                }
                .encode_frame(request_id, out);
                After::Authenticated
            }
            Request::Ping(payload) => {
                Response::Pong(payload.clone()).encode_frame(request_id, out);
                After::Continue
            }
            Request::Stats => {
                Response::Stats(self.stats_snapshot()).encode_frame(request_id, out);
                After::Continue
            }
            Request::Create {
                idle_ttl_ms,
                max_lifetime_ms,
                attributes,
            } => {
                if let Some(after) = self.before_write(request_id, mode, out) {
                    return after;
                }
                self.create(request_id, *idle_ttl_ms, *max_lifetime_ms, attributes, out)
                    .await
            }
            Request::Get { token, names } => match self
                .on_session(token, mode, |t, id, now| t.get(id, names, now))
                .await
            {
                Ok(r) => {
                    self.refresh_backups_if_stale(r.id, &r.value);
                    let fresh = self.fresh_token(&r.token, &r.value.backups);
                    self.reply_session(request_id, fresh.as_deref(), &r.value.meta, &r.value.attrs, out)
                }
                Err(f) => self.session_failure(request_id, f, out),
            },
            Request::Set {
                token,
                if_version,
                puts,
                deletes,
            } => {
                if let Some(both) = deletes.iter().find(|d| puts.contains_key(*d)) {
                    return self.error(
                        request_id,
                        ErrorCode::InvalidRequest,
                        format!("attribute {both:?} is both put and deleted; nothing was changed"),
                        out,
                    );
                }
                if let Some(after) = self.before_write(request_id, mode, out) {
                    return after;
                }
                match self
                    .on_session(token, mode, |t, id, now| {
                        t.set(id, *if_version, puts, deletes, now)
                    })
                    .await
                {
                    Ok(r) => match self.replicate_write(r.id, &r.value.backups).await {
                        Ok(backups) => {
                            let fresh = self.fresh_token(&r.token, &backups);
                            self.reply_session(
                                request_id,
                                fresh.as_deref(),
                                &r.value.meta,
                                &r.value.attrs,
                                out,
                            )
                        }
                        Err(why) => self.indeterminate(request_id, why, out),
                    },
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
            Request::Touch { token } => {
                match self.on_session(token, mode, |t, id, now| t.touch(id, now)).await {
                    Ok(r) => {
                        self.refresh_backups_if_stale(r.id, &r.value);
                        let fresh = self.fresh_token(&r.token, &r.value.backups);
                        self.reply_session(request_id, fresh.as_deref(), &r.value.meta, &r.value.attrs, out)
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
            Request::Rotate { token } => {
                if let Some(after) = self.before_write(request_id, mode, out) {
                    return after;
                }
                match self.on_session(token, mode, |t, id, now| t.rotate(id, now)).await {
                    Ok(r) => {
                        let (new_id, s) = r.value;
                        Stats::bump(&self.stats.rotated);
                        // The old id's backups must forget it (it is destroyed), the new
                        // id gets backups of its own.
                        let old = OldBackups {
                            backups: s.backups.clone(),
                            generation: s.generation,
                        };
                        let missing = usize::from(self.config.replicas).saturating_sub(old.backups.len());
                        let dropped = self.drop_backups(r.id, &old).await + missing;
                        match self.replicate_write(new_id, &[]).await {
                            Ok(backups) if dropped == 0 || self.config.backup_policy == BackupPolicy::Degrade => {
                                let token = self.sign(new_id, &backups);
                                self.reply_session(request_id, Some(&token), &s.meta, &s.attrs, out)
                            }
                            Ok(_) => self.indeterminate(
                                request_id,
                                format!("rotated here, but {dropped} backup(s) could not be told to forget the old id"),
                                out,
                            ),
                            Err(why) => self.indeterminate(request_id, why, out),
                        }
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
            Request::Destroy { token } => {
                if let Some(after) = self.before_write(request_id, mode, out) {
                    return after;
                }
                match self
                    .on_session(token, mode, |t, id, now| t.destroy(id, now))
                    .await
                {
                    Ok(r) => {
                        Stats::bump(&self.stats.destroyed);
                        let old = OldBackups {
                            backups: r.value.backups.clone(),
                            generation: r.value.generation,
                        };
                        // Fencing: the backups' answers are what proves this node still
                        // owned the session (a newer owner's backup answers MOVED), so too
                        // few of them is as bad as a failed one.
                        let missing = usize::from(self.config.replicas).saturating_sub(old.backups.len());
                        let failed = self.drop_backups(r.id, &old).await + missing;
                        if failed > 0 && self.config.backup_policy == BackupPolicy::Refuse {
                            return self.indeterminate(
                                request_id,
                                format!("destroyed here, but {failed} backup(s) could not be told; if this node dies before their copies expire, the session may come back"),
                                out,
                            );
                        }
                        Response::Done.encode_frame(request_id, out);
                        After::Continue
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
        }
    }

    /// Writes that must reach backups before they are acknowledged: never answered in
    /// [`Mode::LocalOnly`] (that mode may not wait, and must not apply a write it cannot
    /// finish), and refused up front when too few backup nodes are reachable.
    fn before_write(&self, request_id: u64, mode: Mode, out: &mut BytesMut) -> Option<After> {
        if self.config.replicas == 0 {
            return None;
        }
        if mode == Mode::LocalOnly {
            return Some(After::Defer);
        }
        if self.config.backup_policy == BackupPolicy::Refuse && !self.enough_backups() {
            Stats::bump(&self.stats.backup_unavailable);
            return Some(self.error(
                request_id,
                ErrorCode::BackupUnavailable,
                format!(
                    "this write needs {} backup node(s) and too few are reachable; nothing was changed",
                    self.config.replicas
                ),
                out,
            ));
        }
        None
    }

    fn indeterminate(&self, request_id: u64, why: String, out: &mut BytesMut) -> After {
        Stats::bump(&self.stats.indeterminate);
        self.error(request_id, ErrorCode::Indeterminate, why, out)
    }

    async fn create(
        &self,
        request_id: u64,
        idle_ttl_ms: u64,
        max_lifetime_ms: u64,
        attrs: &Attributes,
        out: &mut BytesMut,
    ) -> After {
        let now = now_ms();
        let idle = if idle_ttl_ms == 0 {
            self.config.idle_ttl.as_millis() as u64
        } else {
            idle_ttl_ms
        };
        let lifetime = match (max_lifetime_ms, self.config.max_lifetime) {
            (0, None) => 0,
            (0, Some(d)) => d.as_millis() as u64,
            (ms, _) => ms,
        };
        let deadline = if lifetime == 0 {
            0
        } else {
            now.saturating_add(lifetime)
        };
        let (id, Served { meta, attrs, .. }) = match self.table.create(attrs, idle, deadline, now) {
            Ok(created) => created,
            Err(m) => return self.miss_error(request_id, m, out),
        };
        match self.replicate_write(id, &[]).await {
            Ok(backups) => {
                Stats::bump(&self.stats.created);
                let token = self.sign(id, &backups);
                self.reply_session(request_id, Some(&token), &meta, &attrs, out)
            }
            Err(_) => {
                // No token was handed out, so the session can simply be taken back: the
                // CREATE did not happen.
                if let Ok(s) = self.table.destroy(&id, now_ms()) {
                    let old = OldBackups {
                        backups: s.backups,
                        generation: s.generation,
                    };
                    self.drop_backups(id, &old).await;
                }
                Stats::bump(&self.stats.backup_unavailable);
                self.error(
                    request_id,
                    ErrorCode::BackupUnavailable,
                    format!(
                        "too few of the {} backup node(s) this session needs confirmed it; nothing was created",
                        self.config.replicas
                    ),
                    out,
                )
            }
        }
    }
}

/// Why a token-bearing request could not be served.
enum SessionFailure {
    Token(TokenError),
    Miss(Miss),
    Fetch(ErrorCode, String),
    /// Needs a fetch, and the caller asked for local work only.
    Defer,
}

/// Shared handle type for connection tasks.
pub(crate) type SharedNode = Arc<Node>;
