//! The node: owns the table and serves requests. Connection handling lives in
//! `client_port`; this module turns one decoded request into one reply frame.

mod backup;
mod fetch;
mod reply;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sessync_proto::{
    encode_session_reply, Attributes, ErrorCode, ErrorReply, Message, PackedAttributes, PeerMessage, Request,
    Response, SessionId, SessionMeta, Token, TokenError, PROTOCOL_VERSION,
};

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
                    if !crate::throttle::password_matches(given, expected) {
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
