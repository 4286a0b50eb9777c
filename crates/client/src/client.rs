//! The handle applications use: the typed API over one shared connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sessync_proto::{Attributes, Limits, MemberInfo, Message, Request, Response, SessionReply};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::conn::{CallError, Conn};
use crate::error::ClientError;
use crate::session::{CreateOptions, Session, Write};

/// A connection to one sessync node, shared by every clone.
///
/// Cheap to clone (one `Arc`), `Send + Sync`, and meant to be shared: every clone
/// multiplexes its requests onto the same TCP connection, each tagged with a request id,
/// so any number of tasks can have requests in flight at once and the node answers them
/// in whatever order it finishes.
///
/// # Reconnecting
/// When the connection dies, every request in flight fails with
/// [`ClientError::Disconnected`] (its effect on the node is unknown). The next call opens
/// a new connection (with a fresh HELLO) before sending, at most once per call. A request
/// is sent again on a new connection only if it provably never left this process; a
/// request that may have reached the node is never resent.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("connected", &self.inner.live().is_some())
            .finish()
    }
}

struct Inner {
    addr: SocketAddr,
    config: ClientConfig,
    /// Request ids for this client, over all its connections. Starts at 1: a node uses
    /// id 0 for errors that answer no particular request.
    next_id: AtomicU64,
    /// The current connection. A std mutex held only to clone or swap the `Arc`, never
    /// across an await, so the per-request cost is one uncontended lock.
    current: Mutex<Option<Arc<Conn>>>,
    /// Serialises reconnecting, so a burst of calls that find the connection dead opens
    /// one new connection, not one each.
    connecting: tokio::sync::Mutex<ConnectState>,
    /// Failed connection attempts so far; a caller that waited for `connecting` while an
    /// attempt failed reports that failure instead of trying again at once.
    failed_attempts: AtomicU64,
}

#[derive(Default)]
struct ConnectState {
    last_error: Option<ClientError>,
}

impl Inner {
    fn live(&self) -> Option<Arc<Conn>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().filter(|c| c.is_open()).cloned()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a connection within the connect timeout.
    async fn open(&self) -> Result<Arc<Conn>, ClientError> {
        let hello_id = self.next_id();
        match tokio::time::timeout(
            self.config.connect_timeout,
            Conn::open(self.addr, &self.config, hello_id),
        )
        .await
        {
            Ok(r) => r.map(Arc::new),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The live connection, opening a new one if there is none.
    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let failures_seen = self.failed_attempts.load(Ordering::Acquire);
        let mut state = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        if self.failed_attempts.load(Ordering::Acquire) != failures_seen {
            // Someone else just tried while this call waited, and failed: share the outcome
            // rather than queueing one more connect timeout behind theirs.
            if let Some(e) = &state.last_error {
                return Err(e.duplicate());
            }
        }
        match self.open().await {
            Ok(conn) => {
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
                state.last_error = None;
                Ok(conn)
            }
            Err(e) => {
                state.last_error = Some(e.duplicate());
                self.failed_attempts.fetch_add(1, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl Client {
    /// Connects to a node named `host:port`, where host is a name or an IP address
    /// (`[v6]:port` for IPv6), resolved now (at connect time, not when the program
    /// started): each address the name has is tried in turn until one connects. Fails
    /// with [`ClientError::Io`] when the name resolves to nothing or no address connects
    /// (the last address's error), and otherwise as [`Client::connect`].
    pub async fn connect_host(target: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| ClientError::Io(std::io::Error::new(e.kind(), format!("{target}: {e}"))))?
            .collect();
        let mut last = ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{target}: the name resolves to no address"),
        ));
        for addr in addrs {
            match Client::connect(addr, config.clone()).await {
                Ok(c) => return Ok(c),
                Err(e @ ClientError::Io(_)) | Err(e @ ClientError::Timeout) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Connects to the node at `addr` and completes HELLO (protocol version, client name,
    /// password) within `config.connect_timeout`.
    ///
    /// Fails with [`ClientError::Server`] carrying [`ErrorCode::AuthFailed`] or
    /// [`ErrorCode::AuthRequired`] for a wrong or missing password,
    /// [`ClientError::Timeout`] when the node does not complete HELLO in time, and
    /// [`ClientError::Io`] when the connection cannot be made.
    ///
    /// [`ErrorCode::AuthFailed`]: sessync_proto::ErrorCode::AuthFailed
    /// [`ErrorCode::AuthRequired`]: sessync_proto::ErrorCode::AuthRequired
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<Client, ClientError> {
        check_text("client name", &config.client_name, &config.limits)?;
        if let Some(p) = &config.password {
            check_text("password", p, &config.limits)?;
        }
        let inner = Arc::new(Inner {
            addr,
            config,
            next_id: AtomicU64::new(1),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(ConnectState::default()),
            failed_attempts: AtomicU64::new(0),
        });
        let conn = inner.open().await?;
        *inner.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        Ok(Client { inner })
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Sends one request and returns the node's reply, within the request timeout.
    /// Error replies become [`ClientError::Server`].
    async fn request(&self, req: Request) -> Result<Response, ClientError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.request_timeout;
        let id = inner.next_id();
        let mut buf = BytesMut::new();
        req.encode_frame(id, &mut buf);
        let frame: Bytes = buf.freeze();
        let within = |deadline| async move {
            match tokio::time::timeout_at(deadline, inner.connection()).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout),
            }
        };
        // At most one new connection per call: when the current one is found dead, or when
        // it ends before this request was queued.
        let (mut conn, mut reconnected) = match inner.live() {
            Some(c) => (c, false),
            None => (within(deadline).await?, true),
        };
        loop {
            match conn.call(id, frame.clone(), deadline).await {
                Ok(reply) => {
                    return match Response::decode_frame(&reply, &inner.config.limits) {
                        Ok(Response::Error(e)) => Err(ClientError::Server {
                            code: e.code,
                            message: e.message,
                        }),
                        Ok(resp) => Ok(resp),
                        Err(e) => Err(ClientError::Protocol(format!("undecodable reply: {e}"))),
                    };
                }
                // The connection ended before the frame was queued: nothing was sent, so
                // it may go out on a new connection.
                Err(CallError::NotSent) if !reconnected => {
                    reconnected = true;
                    conn = within(deadline).await?;
                }
                Err(CallError::NotSent) => return Err(ClientError::Disconnected),
                Err(CallError::Failed(e)) => return Err(e),
            }
        }
    }

    /// A request whose reply must be SESSION.
    async fn session_request(&self, req: Request, old_token: Option<&str>) -> Result<Session, ClientError> {
        match self.request(req).await? {
            Response::Session(reply) => session_from(reply, old_token),
            other => Err(unexpected("SESSION", &other)),
        }
    }

    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// Creates a session with these attributes and the node's default deadlines.
    /// The returned [`Session::token`] is the new session's token.
    pub async fn create(&self, attrs: Attributes) -> Result<Session, ClientError> {
        self.create_with(attrs, CreateOptions::default()).await
    }

    /// Creates a session with these attributes and deadlines. Fails with
    /// [`ErrorCode::Capacity`](sessync_proto::ErrorCode::Capacity) when the node is full
    /// and does not evict.
    pub async fn create_with(
        &self,
        attrs: Attributes,
        options: CreateOptions,
    ) -> Result<Session, ClientError> {
        check_attributes(&attrs, self.limits())?;
        let req = Request::Create {
            idle_ttl_ms: CreateOptions::wire_ms(options.idle_ttl),
            max_lifetime_ms: CreateOptions::wire_ms(options.max_lifetime),
            attributes: attrs,
        };
        self.session_request(req, None).await
    }

    /// Reads the whole session and refreshes its idle deadline.
    pub async fn get(&self, token: &str) -> Result<Session, ClientError> {
        self.get_names(token, Vec::new()).await
    }

    /// Reads only the named attributes (absent ones are left out of the reply) and
    /// refreshes the idle deadline. An empty `names` reads everything, like [`Client::get`].
    pub async fn get_only(&self, token: &str, names: &[&str]) -> Result<Session, ClientError> {
        self.get_names(token, names.iter().map(|n| n.to_string()).collect())
            .await
    }

    async fn get_names(&self, token: &str, names: Vec<String>) -> Result<Session, ClientError> {
        check_token(token, self.limits())?;
        check_names("names", &names, self.limits())?;
        let req = Request::Get {
            token: token.to_string(),
            names,
        };
        self.session_request(req, Some(token)).await
    }

    /// Starts a write to the session: chain [`SetRequest::put`], [`SetRequest::delete`]
    /// and [`SetRequest::if_version`], then [`SetRequest::send`]:
    ///
    /// ```no_run
    /// # async fn f(client: sessync_client::Client, token: &str) -> Result<(), sessync_client::ClientError> {
    /// let s = client.set(token).put("cart", "3 items").delete("coupon").if_version(4).send().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// All puts and deletes apply atomically and bump the version by one. The reply
    /// carries no attributes.
    pub fn set(&self, token: &str) -> SetRequest<'_> {
        SetRequest {
            client: self,
            token: token.to_string(),
            write: Write::new(),
        }
    }

    /// Sends a prepared [`Write`] (the same request as [`Client::set`]). Refused locally
    /// with [`ClientError::InvalidRequest`] if a name is both put and deleted.
    pub async fn write(&self, token: &str, write: Write) -> Result<Session, ClientError> {
        check_token(token, self.limits())?;
        check_attributes(&write.puts, self.limits())?;
        check_names("deletes", &write.deletes, self.limits())?;
        if let Some(both) = write.deletes.iter().find(|d| write.puts.contains_key(*d)) {
            // The node would refuse it with INVALID_REQUEST and change nothing; refusing
            // here saves the round trip.
            return Err(ClientError::InvalidRequest(format!(
                "attribute {both:?} is both put and deleted"
            )));
        }
        let req = Request::Set {
            token: token.to_string(),
            if_version: write.if_version,
            puts: write.puts,
            deletes: write.deletes,
        };
        self.session_request(req, Some(token)).await
    }

    /// Refreshes the idle deadline without reading attributes.
    pub async fn touch(&self, token: &str) -> Result<Session, ClientError> {
        check_token(token, self.limits())?;
        let req = Request::Touch {
            token: token.to_string(),
        };
        self.session_request(req, Some(token)).await
    }

    /// Gives the session a new id and token, keeping its data, and bumps its version; the
    /// old token stops working at once. Do this at login (session-fixation defence) and
    /// store the returned [`Session::token`].
    pub async fn rotate(&self, token: &str) -> Result<Session, ClientError> {
        check_token(token, self.limits())?;
        let req = Request::Rotate {
            token: token.to_string(),
        };
        self.session_request(req, Some(token)).await
    }

    /// Ends the session. The node keeps a tombstone for as long as the session could have
    /// lived, so a slow write still in flight cannot bring it back.
    pub async fn destroy(&self, token: &str) -> Result<(), ClientError> {
        check_token(token, self.limits())?;
        let req = Request::Destroy {
            token: token.to_string(),
        };
        match self.request(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("DONE", &other)),
        }
    }

    /// The node's counters (sessions, connections, requests, ...) as name/value pairs.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        match self.request(Request::Stats).await? {
            Response::Stats(counters) => Ok(counters),
            other => Err(unexpected("STATS_REPLY", &other)),
        }
    }

    /// The node's view of the cluster's members (itself first): node id, incarnation,
    /// state, peer and client addresses.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, ClientError> {
        match self.request(Request::Members).await? {
            Response::Members(members) => Ok(members),
            other => Err(unexpected("MEMBERS_REPLY", &other)),
        }
    }

    /// Asks the node to leave the cluster gracefully (hand every session and backup copy
    /// over, then exit): `Ok` when everything was handed over; an error (SHUTTING_DOWN)
    /// saying what was left otherwise. The answer comes when the drain has ended, so give
    /// the client a request timeout longer than the node's `--drain-timeout`.
    pub async fn drain(&self) -> Result<(), ClientError> {
        match self.request(Request::Drain).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("DONE", &other)),
        }
    }

    /// Checks that the node answers; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let payload = Bytes::from(self.inner.next_id().to_be_bytes().to_vec());
        let start = Instant::now();
        match self.request(Request::Ping(payload.clone())).await? {
            Response::Pong(echo) if echo == payload => Ok(start.elapsed()),
            Response::Pong(_) => Err(ClientError::Protocol(
                "PONG does not echo the PING payload".into(),
            )),
            other => Err(unexpected("PONG", &other)),
        }
    }
}

/// A write being built by [`Client::set`]; nothing is sent until [`SetRequest::send`].
#[derive(Debug)]
#[must_use = "a SetRequest does nothing until .send().await"]
pub struct SetRequest<'a> {
    client: &'a Client,
    token: String,
    write: Write,
}

impl SetRequest<'_> {
    /// Adds or replaces `name` (cancels an earlier `delete` of it). `value` is anything
    /// that converts into [`Bytes`]: `Vec<u8>`, `String`, `&'static str`, `Bytes`.
    pub fn put(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.write = self.write.put(name, value);
        self
    }

    /// Removes `name` (cancels an earlier `put` of it).
    pub fn delete(mut self, name: impl Into<String>) -> Self {
        self.write = self.write.delete(name);
        self
    }

    /// Applies the write only if the session is at `version`; otherwise the call fails with
    /// [`ErrorCode::VersionConflict`](sessync_proto::ErrorCode::VersionConflict) and
    /// nothing changes.
    pub fn if_version(mut self, version: u64) -> Self {
        self.write = self.write.if_version(version);
        self
    }

    /// Sends the write. The returned session has the new version and no attributes.
    pub async fn send(self) -> Result<Session, ClientError> {
        self.client.write(&self.token, self.write).await
    }
}

fn session_from(reply: SessionReply, old_token: Option<&str>) -> Result<Session, ClientError> {
    let (token, token_changed) = match (reply.token, old_token) {
        (Some(new), old) => {
            let changed = old != Some(new.as_str());
            (new, changed)
        }
        (None, Some(old)) => (old.to_string(), false),
        (None, None) => return Err(ClientError::Protocol("CREATE reply carries no token".into())),
    };
    Ok(Session {
        token,
        token_changed,
        meta: reply.meta,
        attributes: reply.attributes,
    })
}

fn unexpected(expected: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!(
        "expected {expected}, got a reply with opcode 0x{:02x}",
        got.opcode()
    ))
}

/// The wire writes string lengths as u16 and counts as u16, and the encoder cuts anything
/// longer rather than fail, so everything is checked here first: a cut name or token would
/// silently mean something else.
fn too_long(what: &str, len: usize, max: usize) -> Result<(), ClientError> {
    let max = max.min(usize::from(u16::MAX));
    if len > max {
        return Err(ClientError::InvalidRequest(format!(
            "{what} is {len} long, over the limit of {max}"
        )));
    }
    Ok(())
}

fn check_text(what: &str, s: &str, limits: &Limits) -> Result<(), ClientError> {
    too_long(what, s.len(), limits.max_text_len)
}

fn check_token(token: &str, limits: &Limits) -> Result<(), ClientError> {
    too_long("token", token.len(), limits.max_token_len)
}

fn check_names(what: &str, names: &[String], limits: &Limits) -> Result<(), ClientError> {
    too_long(what, names.len(), limits.max_attributes)?;
    for n in names {
        too_long("attribute name", n.len(), limits.max_name_len)?;
    }
    Ok(())
}

fn check_attributes(attrs: &Attributes, limits: &Limits) -> Result<(), ClientError> {
    too_long("attribute count", attrs.len(), limits.max_attributes)?;
    for (name, value) in attrs {
        too_long("attribute name", name.len(), limits.max_name_len)?;
        let max_value = limits.max_value_len.min(u32::MAX as usize);
        if value.len() > max_value {
            return Err(ClientError::InvalidRequest(format!(
                "attribute {name:?} has a value of {} bytes, over the limit of {max_value}",
                value.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessync_proto::SessionMeta;

    #[test]
    fn token_bookkeeping() {
        let reply = |token: Option<&str>| SessionReply {
            token: token.map(str::to_string),
            meta: SessionMeta::default(),
            attributes: Attributes::new(),
        };
        let s = session_from(reply(None), Some("old")).unwrap();
        assert_eq!((s.token.as_str(), s.token_changed), ("old", false));
        let s = session_from(reply(Some("new")), Some("old")).unwrap();
        assert_eq!((s.token.as_str(), s.token_changed), ("new", true));
        let s = session_from(reply(Some("old")), Some("old")).unwrap();
        assert_eq!((s.token.as_str(), s.token_changed), ("old", false));
        let s = session_from(reply(Some("t")), None).unwrap();
        assert!(s.token_changed);
        assert!(matches!(
            session_from(reply(None), None),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn limits_are_checked_before_encoding() {
        let limits = Limits::DEFAULT;
        assert!(check_token(&"t".repeat(limits.max_token_len), &limits).is_ok());
        assert!(matches!(
            check_token(&"t".repeat(limits.max_token_len + 1), &limits),
            Err(ClientError::InvalidRequest(_))
        ));
        let mut attrs = Attributes::new();
        attrs.insert("n".repeat(limits.max_name_len + 1), Bytes::new());
        assert!(check_attributes(&attrs, &limits).is_err());
        let mut attrs = Attributes::new();
        attrs.insert("n".into(), Bytes::from(vec![0u8; limits.max_value_len + 1]));
        assert!(check_attributes(&attrs, &limits).is_err());
        // Even with limits raised past the wire's u16 fields, nothing is cut silently.
        let huge = Limits {
            max_name_len: usize::MAX,
            ..Limits::DEFAULT
        };
        let names = vec!["x".repeat(70_000)];
        assert!(check_names("names", &names, &huge).is_err());
    }
}
