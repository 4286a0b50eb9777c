//! The node: owns the table and serves requests. Connection handling lives in
//! `client_port`; this module turns one decoded request into one reply frame.

mod backup;
mod copy_acks;
mod drain;
mod fetch;
mod holder_restarts;
mod install;
mod kept_copies;
mod lookup;
mod lost_failover;
mod memo;
mod read_lease;
/// The simulation's checker bounds stale reads by it (`testing::workload`).
#[cfg(feature = "testing")]
pub(crate) use read_lease::STALE_READ_LEASES;
mod rehand;
mod repair;
mod reply;
mod requests;
mod rival_claims;

pub use drain::{DrainReport, DEFAULT_DRAIN_TIMEOUT};
pub(crate) use repair::repair_loop;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sessync_proto::{
    encode_session_reply, Attributes, ErrorCode, ErrorReply, Message, PackedAttributes, PeerMessage, Request,
    Response, SessionId, SessionMeta, Token, TokenError, PROTOCOL_VERSION,
};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::{BackupPolicy, NodeConfig};
use crate::handover::{Fetch, FetchError, Step, NOT_YET_PAUSE};
use crate::peer_link::{LinkConfig, LinkError, Peers};
use crate::stats::Stats;
use crate::table::{Landing, Miss, OldBackups, Served, Table, TableConfig, TableStats};

/// Stripes of the replication lock: one session's REPLICATEs go out one at a time (each
/// carries the newest state), unrelated sessions rarely wait on each other.
const REPLICATION_STRIPES: usize = 256;

/// How many generations a failover's claim may climb past fences and kept copies that
/// name a node known not to own the session ([`Node::protect_and_install`]). Each failed
/// claim leaves at most one such fence per holder, so a few suffice; bounded so that a
/// holder that keeps refusing cannot make a claim loop.
const MAX_CLAIM_BUMPS: u32 = 3;

/// Where a fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// COPY from this node (the token's owner, or, when `true`, named by our own entry).
    Ask(SocketAddr, bool),
    /// The owner named by the token is this node and the session is not here (this node
    /// restarted): go straight to the backups.
    Failover(SocketAddr),
}

/// Where a copy that became this node's ended ([`Node::protect_and_install`]).
enum Landed {
    /// Installed as the live session, with these backups (`None` without replication).
    Owner(Option<Backups>),
    /// Not installed: this node already has this generation or a newer one.
    NotNewer,
    /// Not installed as the live session: kept below a newer owner, a tombstone here or
    /// at a holder, or a rival claim won here.
    Elsewhere,
    /// Not installed: the holder named keeps a newer backup copy of this address's
    /// earlier process (it names this node as the owner), which is to be taken over
    /// rather than climbed past. As `Elsewhere`, this node points at that holder meanwhile.
    EarlierProcess(SocketAddr),
    /// Not installed: the holder named is handing this node a copy of a newer generation
    /// than the claim's (the reply to this node's COPY was lost), which is to be fetched
    /// from it rather than climbed past. As `Elsewhere` meanwhile.
    HandingHere(SocketAddr),
}

/// How replicating a session's current state to its backups went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replication {
    /// The session is not live here any more (handed over, destroyed or expired
    /// meanwhile): whatever was written went with it.
    NotHere,
    /// Replicated as far as it went: see [`Backups`].
    Done(Backups),
    /// Live here, but under another generation than the write's
    /// ([`Node::replicate_write`]): the copy the write went into was replaced meanwhile
    /// (a newer copy installed over it, or it left and came back), and no round of this
    /// copy can say the write is protected.
    Replaced,
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
    /// Holders that answered this round VERSION_CONFLICT: each owns a rival claim of this
    /// generation that never acknowledged a write and yields to this copy once its own
    /// round is over (`rival_claims.rs`), so its copy met here is no rival to yield to.
    yielding: Box<[SocketAddr]>,
    /// How many nodes answered the round at all (any message): none means every holder
    /// and candidate was silent or unreachable (a read lease's renewal then tells nothing).
    heard_from: usize,
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
    /// `yielded`: `to` itself took this very copy in the same round, as a holder (it gave
    /// its own pending claim of this generation up to this one, 12.2), so what names it
    /// at another holder is that abandoned claim's copy, not a live owner's.
    /// `names_self`: the holder `to` named this node as the newer owner (a fence or kept
    /// copy of this node's own, left by an abandoned claim or an earlier process), so `to`
    /// is that holder, never this node.
    Superseded {
        to: SocketAddr,
        placed: Vec<SocketAddr>,
        yielded: bool,
        names_self: bool,
    },
    /// A node holds the session's tombstone: it was destroyed or rotated away there (by a
    /// later owner of this lineage), so the copy replicated is a stale one that must never
    /// be served. `placed` as for `Superseded`.
    Destroyed { placed: Vec<SocketAddr> },
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
type FetchResult = Result<Fetched, FetchError>;

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

/// Where a reply goes: the request's id, and how far its handling may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    request_id: u64,
    mode: Mode,
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

/// What a read does after one pass, under the read lease ([`Node::read_lease_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseStep {
    /// Serve what the pass found.
    Serve,
    /// Answer nothing yet: the request is run again in [`Mode::Full`].
    Defer,
    /// The copy here was given up: read again.
    ReadAgain,
    /// No node answered an old copy's renewal round: answered `OWNER_UNREACHABLE`.
    Unconfirmed,
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
    inflight: DashMap<SessionId, Arc<Inflight>>,
    /// Copies handed over here that are being placed on their holders, not yet installed
    /// (`install.rs`), with their transfer ids: LOCATE answers for them as their owner.
    receiving: DashMap<SessionId, u64>,
    /// See [`REPLICATION_STRIPES`].
    replication_locks: Box<[tokio::sync::Mutex<()>]>,
    /// The cluster's peer addresses (backup candidates): `config.peers` at start, replaced
    /// by [`Node::set_peers`]. Read on every write with replicas on; written rarely.
    cluster_peers: std::sync::RwLock<Arc<Vec<SocketAddr>>>,
    /// Sessions whose backups should get a newer access time (sent by reads, served by a
    /// background task so that reads never wait for it).
    refresh: tokio::sync::mpsc::Sender<SessionId>,
    /// Leaving, lookups and repair (drain.rs).
    pub(crate) elastic: drain::Elastic,
    /// The owners that REPLICATE here, by address: which process, since when and until
    /// when: a backup does not promote a copy for an owner it heard from lately.
    owners_heard: std::sync::Mutex<std::collections::HashMap<SocketAddr, OwnerHeard>>,
    /// When each failed owner was last probed by [`Node::probe_failed_owner`] (Unix ms).
    owner_probes: std::sync::Mutex<std::collections::HashMap<SocketAddr, u64>>,
    /// COPYs that got no reply in time, by session ([`Node::install_late_copy`]).
    unanswered_copies: memo::SessionMemo<UnansweredCopy>,
    /// COPY_ACKs held back until the copy installed here has its backups
    /// ([`Node::release_held_ack`]).
    held_acks: memo::SessionMemo<HeldAck>,
    /// What failed owners said of sessions whose kept copy is here (`kept_copies.rs`).
    kept_copy_checks: memo::SessionMemo<kept_copies::KeptCopyCheck>,
    /// What receivers of handovers under way here said before a re-hand (`rehand.rs`).
    rehand_checks: memo::SessionMemo<rehand::RehandCheck>,
    /// Sessions with a copy at a holder that restarted since (`holder_restarts.rs`).
    unsure_holders: holder_restarts::UnsureHolders,
    /// Claims installed here without the confirmations they need, which have acknowledged
    /// no write since, with their generation and the backup copy claimed
    /// (`rival_claims.rs`). Forgetting one is safe:
    /// the copy then counts as one that may have acknowledged.
    never_acknowledged: memo::SessionMemo<(u64, Option<sessync_proto::ClaimBase>)>,
    /// Moved copies installed here without the confirmations they need, which have
    /// acknowledged no write since, with their generation (`rival_claims.rs`): unlike
    /// claims, they never yield to a rival, but a sibling branch's copy may replace them.
    moves_never_acknowledged: memo::SessionMemo<u64>,
}

/// A COPY or PROMOTE whose reply did not come in time: a late COPY_DATA may still follow.
#[derive(Clone)]
struct UnansweredCopy {
    /// The node asked.
    giver: SocketAddr,
    /// The generation of this node's entry when it asked (`last_transfer`).
    had: u64,
    /// When the ask went unanswered (milliseconds, [`now_ms`]).
    asked_ms: u64,
    /// For a PROMOTE: its late COPY_DATA is a claim, installed as the answered one is.
    promote: Option<UnansweredPromote>,
}

/// What a late answer to a PROMOTE is installed with ([`Node::install_late_copy`]).
#[derive(Clone)]
struct UnansweredPromote {
    /// The owner the PROMOTE named as failed.
    failed: SocketAddr,
    /// The failed owner's lineage: holders the claim is placed on besides the copy's own.
    lineage: Box<[SocketAddr]>,
    /// The version of the live copy here when the PROMOTE went out (`None`: none was
    /// live). A write acknowledged here since bumps it, and the backup's copy lacks that
    /// write ([`Node::lost_failover_from`]).
    live_version: Option<u64>,
}

/// A COPY_ACK not sent yet: the copy was installed here while no backup took it.
#[derive(Clone, Copy)]
struct HeldAck {
    /// The node that handed the copy here (it keeps it, handing over, until it hears).
    giver: SocketAddr,
    /// The handover's transfer id.
    transfer: u64,
    /// Whether what is held is a COPY_REFUSED (the copy was not installed: this node's own
    /// claim of the generation was, with too few backups) rather than a COPY_ACK.
    refused: bool,
}

/// What a backup knows of an owner that REPLICATEs to it ([`Node::owner_wrote_lately`]).
struct OwnerHeard {
    /// The owner's process (its node id: a restart makes a new one).
    process: [u8; 16],
    /// Its first REPLICATE here (Unix ms): copies written since are that process's.
    since_ms: u64,
    /// Its latest REPLICATE here.
    last_ms: u64,
    /// Whether its connection here is still open.
    connected: bool,
}

/// A fetch under way, shared by the requests that wait for it. Not a `watch` channel:
/// tokio's `watch` spreads its waiters over notifiers picked at random, so the order in
/// which they wake (and so which request runs first) would differ between two runs of one
/// simulated seed; `Notify` wakes them in the order they came.
#[derive(Default)]
struct Inflight {
    /// `None` while the fetch runs; then `Some(Some(result))`, or `Some(None)` when the
    /// fetching request was cancelled before it had one.
    outcome: std::sync::Mutex<Option<Option<FetchResult>>>,
    done: tokio::sync::Notify,
    /// The newest generation the waiting requests' tokens name: a client was given a
    /// state of at least that generation, so a copy older than it is not the session's
    /// newest (PROMOTE says so, see [`Node::token_generation_fetching`]).
    token_generation: std::sync::atomic::AtomicU64,
}

impl Inflight {
    /// Notes a waiting request's token generation.
    fn saw_token(&self, generation: u64) {
        self.token_generation
            .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(&self, result: Option<FetchResult>) {
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.is_none() {
            *outcome = Some(result);
        }
        drop(outcome);
        self.done.notify_waiters();
    }

    /// The fetch's result, once the fetching request has it (`None`: it was cancelled).
    async fn wait(&self) -> Option<FetchResult> {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if let Some(outcome) = self.outcome.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return outcome;
            }
            done.await;
        }
    }
}

/// Removes a fetch from the in-flight map, and releases its waiters, even if the fetching
/// request is cancelled.
struct InflightGuard<'a> {
    map: &'a DashMap<SessionId, Arc<Inflight>>,
    id: SessionId,
    fetch: Arc<Inflight>,
}

impl InflightGuard<'_> {
    /// Hands `result` to the requests waiting for this fetch.
    fn finish(self, result: FetchResult) {
        self.fetch.finish(Some(result));
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.id);
        self.fetch.finish(None);
    }
}

impl Node {
    /// The newest generation of `id` that the tokens of the requests fetching it name (0
    /// when none is fetching it). A PROMOTE says it as its last transfer when this node's
    /// own entry knows less (a new process knows nothing of its earlier one): a giver must
    /// not re-hand a copy older than a state a client was given (protocol.md 12.4;
    /// simulation seed 33331 with crashes).
    fn token_generation_fetching(&self, id: &SessionId) -> u64 {
        self.inflight.get(id).map_or(0, |f| {
            f.token_generation.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// What a PROMOTE for `id` says as its last transfer: `had` (this node's entry's
    /// generation) while the session is live here, so that a backup's copy handed over
    /// under `had + 1` is known to be no newer than that live copy (protocol.md 12.3 step
    /// 2); otherwise the newer of `had` and [`Node::token_generation_fetching`].
    pub(super) fn promote_last_transfer(&self, id: &SessionId, had: u64) -> u64 {
        if self.table.live_generation(id, now_ms()).is_some() {
            had
        } else {
            had.max(self.token_generation_fetching(id))
        }
    }

    /// Notes a REPLICATE from `owner` (it is alive and acting as an owner now).
    pub(crate) fn heard_from_owner(&self, owner: &sessync_proto::PeerIdentity, now: u64) {
        let mut heard = self.owners_heard.lock().unwrap_or_else(|e| e.into_inner());
        let h = heard.entry(owner.advertised).or_insert(OwnerHeard {
            process: owner.node_id,
            since_ms: now,
            last_ms: now,
            connected: true,
        });
        if h.process != owner.node_id {
            // A new process at that address (it restarted): its copies start now.
            h.process = owner.node_id;
            h.since_ms = now;
            // The earlier process is gone (a failover need not wait out its read lease):
            // recorded as the link's handshake records it, once per new process, not again
            // when this table learns it later. A second "gone" here, after the handshake
            // had already shown the new process, dated the restart after a handover that
            // the new process itself had asked for, and the giver re-handed a copy that
            // process held (simulation seed 3771 with crashes and skewed clocks: two
            // lineages of one generation, an acknowledged append lost).
            self.peers.processes.seen(owner.advertised, owner.node_id);
        }
        h.last_ms = now;
        h.connected = true;
    }

    /// `owner`'s connection here closed (it shut down or died, or the link broke).
    pub(crate) fn forget_owner_heard(&self, owner: SocketAddr) {
        if let Some(h) = self
            .owners_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&owner)
        {
            h.connected = false;
        }
    }

    /// Whether `owner`'s process that wrote the copy of `id` held here is still writing
    /// to this node: it REPLICATEd (any session) within the peer timeout over a connection
    /// still open, and the copy came from that same process (written since it first
    /// REPLICATEd here). A PROMOTE that names it failed comes from a node that cannot
    /// reach it, not from its death, and is refused (protocol.md 12.3 step 2). An owner
    /// that restarted empty is alive too, but the copy is from its earlier process: that
    /// one is gone, and the copy is handed over.
    pub(crate) fn owner_wrote_lately(&self, id: &SessionId, owner: SocketAddr, now: u64) -> bool {
        let window = self.config.peer_timeout.as_millis() as u64;
        let since = match self
            .owners_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&owner)
        {
            Some(h) if h.connected && now.saturating_sub(h.last_ms) < window => h.since_ms,
            _ => return false,
        };
        self.table.backup_written_since(id, owner, since)
    }

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
        warn_if_beyond_the_promise(config.replicas, member_count(advertise, &config.peers));
        let cluster_peers = std::sync::RwLock::new(Arc::new(config.peers.clone()));
        Node {
            config,
            node_id,
            advertise,
            table,
            stats: Stats::default(),
            peers,
            inflight: DashMap::new(),
            receiving: DashMap::new(),
            cluster_peers,
            replication_locks: (0..REPLICATION_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            refresh,
            elastic: drain::Elastic::default(),
            owners_heard: Default::default(),
            owner_probes: Default::default(),
            // A late COPY_DATA comes within a few peer timeouts of its COPY.
            unanswered_copies: memo::SessionMemo::new(60_000),
            // Forgotten, an ACK is never sent: the giver keeps its copy until the session
            // expires, answering MOVED to this node (and re-hands it if this node restarts
            // empty). Kept long, so that the ACK still goes once backups come back.
            held_acks: memo::SessionMemo::new(3_600_000),
            kept_copy_checks: memo::SessionMemo::new(60_000),
            rehand_checks: memo::SessionMemo::new(60_000),
            never_acknowledged: memo::SessionMemo::new(3_600_000),
            moves_never_acknowledged: memo::SessionMemo::new(3_600_000),
            unsure_holders: Default::default(),
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
        warn_if_beyond_the_promise(self.config.replicas, member_count(self.advertise, &peers));
        *self.cluster_peers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(peers);
    }

    /// Whether enough backup nodes look reachable for a write now (links up, or not backing
    /// off after a failed dial): what a write under `--on-no-backup refuse` checks first.
    /// `sessync cluster` waits for it before it prints its nodes.
    pub fn can_meet_replicas(&self) -> bool {
        self.enough_backups()
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
        s.extend(self.elastic_stats());
        s.push((
            "beyond_write_promise".to_string(),
            u64::from(self.beyond_write_promise()),
        ));
        // Facts (`KEY=VALUE`) after every counter, as protocol.md's STATS_REPLY says (a
        // stable sort: each group keeps its order).
        s.sort_by_key(|(name, _)| name.contains('='));
        s
    }

    /// Whether this node knows of more members than the write promise is measured for
    /// (`--replicas` + 2, protocol.md 12.6): STATS and `/metrics` carry it, so that an
    /// operator's alert sees it, not only the log line of [`warn_if_beyond_the_promise`].
    fn beyond_write_promise(&self) -> bool {
        beyond_the_promise(
            self.config.replicas,
            member_count(self.advertise, &self.cluster_peers()),
        )
    }

    /// This node as peers know it (for table entries that name a receiver).
    fn identity(&self) -> sessync_proto::PeerIdentity {
        sessync_proto::PeerIdentity {
            node_id: self.node_id,
            advertised: self.advertise,
        }
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
        // One line per request (mini-redis's `Command::apply`); each lives in requests.rs.
        if let Some(refused) = self.drain_gate(request_id, req, mode, out) {
            return refused;
        }
        let at = Reply { request_id, mode };
        match req {
            Request::Hello {
                min_version,
                max_version,
                password,
                ..
            } => self.hello(at, (*min_version, *max_version), password.as_deref(), out),
            Request::Ping(payload) => self.ping(at, payload, out),
            Request::Stats => self.stats_reply(at, out),
            Request::Members => self.members_reply(request_id, out),
            Request::Create {
                idle_ttl_ms,
                max_lifetime_ms,
                attributes,
            } => {
                self.create(at, (*idle_ttl_ms, *max_lifetime_ms), attributes, out)
                    .await
            }
            Request::Get { token, names } => self.get(at, token, names, out).await,
            Request::Set {
                token,
                if_version,
                puts,
                deletes,
            } => self.set(at, token, *if_version, (puts, deletes), out).await,
            Request::Touch { token } => self.touch(at, token, out).await,
            // Boxed: rarer than GET and SET, and larger, so that the future of every
            // request (allocated per deferred request) is not its size (BENCHMARKS.md).
            Request::Rotate { token } => Box::pin(self.rotate(at, token, out)).await,
            Request::Destroy { token } => self.destroy(at, token, out).await,
            Request::Drain => self.drain_request(at, out).await,
        }
    }
}

/// Why a token-bearing request could not be served.
enum SessionFailure {
    Token(TokenError),
    Miss(Miss),
    Fetch(FetchError),
    /// Needs a fetch, and the caller asked for local work only.
    Defer,
}

/// Shared handle type for connection tasks.
pub(crate) type SharedNode = Arc<Node>;

/// Warns once per process when a cluster with backups has more than `replicas + 2`
/// members: the write promise through partitions and pauses is measured and kept only up
/// to that size (protocol.md 12.6, ARCHITECTURE.md item 43: then the only node outside a
/// session's owner and holders is the one that claims it, so every claim meets the
/// holders' fences; with more, a superseded owner's lineage can go on among nodes that
/// never fenced it). An operator who did not read protocol.md learns it from the log, not
/// from a lost write.
fn warn_if_beyond_the_promise(replicas: u8, members: usize) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let promised = promised_members(replicas);
    if beyond_the_promise(replicas, members) && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let remedy = match members.saturating_sub(2) {
            keeps if keeps <= sessync_proto::MAX_BACKUPS => format!("--replicas {keeps} keeps them"),
            _ => format!(
                "no --replicas keeps them at this size (at most {}: clusters of at most {} members)",
                sessync_proto::MAX_BACKUPS,
                sessync_proto::MAX_BACKUPS + 2
            ),
        };
        tracing::warn!(
            members,
            replicas,
            "this cluster has more than --replicas + 2 = {promised} members: acknowledged writes can be lost through network partitions and long pauses (measured, not yet fixed: protocol.md 12.6); {remedy}"
        );
    }
}

/// Whether a cluster of `members` nodes keeping `replicas` backups is larger than the
/// write promise is measured for (protocol.md 12.6).
fn beyond_the_promise(replicas: u8, members: usize) -> bool {
    replicas > 0 && members > promised_members(replicas)
}

/// The most members a cluster keeping `replicas` backups keeps the write promise with
/// (`replicas` + 2: then the only node outside a session's owner and holders claims it).
fn promised_members(replicas: u8) -> usize {
    usize::from(replicas) + 2
}

/// How many members a node with these `peers` counts: itself and every other address.
/// `--peers` may or may not list the node itself, and the membership's alive list never
/// does; counted as the list's length, a four-node cluster whose nodes each listed the
/// three others was taken for three (session 51's warning missed it).
fn member_count(advertise: SocketAddr, peers: &[SocketAddr]) -> usize {
    let others: std::collections::BTreeSet<&SocketAddr> = peers.iter().filter(|p| **p != advertise).collect();
    others.len() + 1
}
