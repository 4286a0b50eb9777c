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
use crate::config::NodeConfig;
use crate::handover::{Fetch, Step, NOT_YET_PAUSE};
use crate::peer_link::{LinkConfig, LinkError, Peers};
use crate::stats::Stats;
use crate::table::{Miss, Served, Table, TableConfig, TableStats};

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
        Node {
            config,
            node_id,
            advertise,
            table,
            stats: Stats::default(),
            peers,
            inflight: DashMap::new(),
        }
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

    fn sign(&self, id: SessionId) -> String {
        Token {
            session_id: id,
            owner: self.advertise,
            backups: Vec::new(),
        }
        .sign(&self.config.keys)
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
    /// first when another node holds it (instant copy). Returns the result and the
    /// replacement token to send when the client's token does not name this node.
    async fn on_session<T>(
        &self,
        token: &str,
        mode: Mode,
        op: impl Fn(&Table, &SessionId, u64) -> Result<T, Miss>,
    ) -> Result<(T, Option<String>), SessionFailure> {
        let token = Token::verify(token, &self.config.keys).map_err(SessionFailure::Token)?;
        let id = token.session_id;
        let fresh = || {
            if token.owner == self.advertise && token.backups.is_empty() {
                None
            } else {
                Some(self.sign(id))
            }
        };
        let mut fetches = 0;
        loop {
            let ask = match op(&self.table, &id, now_ms()) {
                Ok(t) => return Ok((t, fresh())),
                // We handed it on: follow it. Never here: ask the owner the token names
                // (its MAC verified, so the address is one a node of ours wrote).
                Err(Miss::Moved(to)) => (to, true),
                Err(Miss::Absent) if token.owner != self.advertise => (token.owner, false),
                Err(m) => return Err(SessionFailure::Miss(m)),
            };
            if mode == Mode::LocalOnly {
                return Err(SessionFailure::Defer);
            }
            // A session snatched away between our install and our op is followed again,
            // within the hop limit.
            if fetches >= self.config.max_hops {
                return Err(SessionFailure::Fetch(
                    ErrorCode::TooManyHops,
                    "session keeps moving".into(),
                ));
            }
            fetches += 1;
            let fetched = self
                .fetch(id, ask.0, ask.1)
                .await
                .map_err(|(c, m)| SessionFailure::Fetch(c, m))?;
            if fetched == Fetched::PointsHere {
                // The owners' chain ends here: if the table has moved on (another request
                // handed it away meanwhile), the loop follows it; if it has nothing, the
                // session is gone.
                match op(&self.table, &id, now_ms()) {
                    Ok(t) => return Ok((t, fresh())),
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

    /// Copies session `id` here from `owner` (following MOVED). Concurrent callers for the
    /// same id share one fetch.
    async fn fetch(&self, id: SessionId, owner: SocketAddr, forwarded: bool) -> FetchResult {
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
                let result = self.fetch_from_peers(id, owner, forwarded).await;
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

    async fn fetch_from_peers(&self, id: SessionId, owner: SocketAddr, forwarded: bool) -> FetchResult {
        let deadline = Instant::now() + self.config.peer_timeout;
        let (mut fetch, mut step) = Fetch::new(id, self.advertise, owner, forwarded, self.config.max_hops);
        loop {
            step = match step {
                Step::Ask(to) => match self
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
                },
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
                    self.install_copy(from, transfer, &record);
                    return Ok(Fetched::Installed);
                }
                Step::Local => return Ok(Fetched::PointsHere),
                Step::Fail(code, message) => {
                    Stats::bump(&self.stats.handover_failures);
                    return Err((code, message));
                }
            };
        }
    }

    /// Installs a session handed over by `from` and acknowledges it, so `from` can drop
    /// its copy. Also used for a COPY_DATA that arrived after its request gave up: the
    /// sender handed the session to us, so it must be installed, not ignored.
    pub(crate) fn install_copy(
        &self,
        from: SocketAddr,
        transfer: u64,
        record: &sessync_proto::SessionRecord,
    ) {
        if self.table.install(record, transfer, now_ms()).is_ok() {
            Stats::bump(&self.stats.copies_received);
        }
        // The ACK is sent even when the install was refused (a destroyed tombstone here):
        // the sender must not keep offering the data.
        let ack = PeerMessage::CopyAck {
            session_id: record.id,
            transfer,
        };
        let timeout = self.config.peer_timeout;
        let peers = self.peers.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                if let Ok(PeerMessage::Ok) = peers.request(from, ack.clone(), Instant::now() + timeout).await
                {
                    return;
                }
            }
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
            } => self.create(request_id, *idle_ttl_ms, *max_lifetime_ms, attributes, out),
            Request::Get { token, names } => match self
                .on_session(token, mode, |t, id, now| t.get(id, names, now))
                .await
            {
                Ok((s, fresh)) => self.reply_session(request_id, fresh.as_deref(), &s.meta, &s.attrs, out),
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
                match self
                    .on_session(token, mode, |t, id, now| {
                        t.set(id, *if_version, puts, deletes, now)
                    })
                    .await
                {
                    Ok((s, fresh)) => {
                        self.reply_session(request_id, fresh.as_deref(), &s.meta, &s.attrs, out)
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
            Request::Touch { token } => match self
                .on_session(token, mode, |t, id, now| t.touch(id, now))
                .await
            {
                Ok((s, fresh)) => self.reply_session(request_id, fresh.as_deref(), &s.meta, &s.attrs, out),
                Err(f) => self.session_failure(request_id, f, out),
            },
            Request::Rotate { token } => {
                match self.on_session(token, mode, |t, id, now| t.rotate(id, now)).await {
                    Ok(((new_id, s), _)) => {
                        Stats::bump(&self.stats.rotated);
                        let token = self.sign(new_id);
                        self.reply_session(request_id, Some(&token), &s.meta, &s.attrs, out)
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
            Request::Destroy { token } => {
                match self
                    .on_session(token, mode, |t, id, now| t.destroy(id, now))
                    .await
                {
                    Ok((_, _)) => {
                        Stats::bump(&self.stats.destroyed);
                        Response::Done.encode_frame(request_id, out);
                        After::Continue
                    }
                    Err(f) => self.session_failure(request_id, f, out),
                }
            }
        }
    }

    fn create(
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
        match self.table.create(attrs, idle, deadline, now) {
            Ok((id, Served { meta, attrs })) => {
                Stats::bump(&self.stats.created);
                let token = self.sign(id);
                self.reply_session(request_id, Some(&token), &meta, &attrs, out)
            }
            Err(m) => self.miss_error(request_id, m, out),
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
