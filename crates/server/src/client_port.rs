//! The client port: accepts application connections and serves their requests.
//!
//! Each connection is one task: it decodes every complete frame in its read buffer,
//! answers each into one output buffer, and writes that buffer before it reads again.
//! Pipelined requests therefore cost one read and one write per batch, and a client that
//! does not read its replies stops being read from (back-pressure): the output buffer is
//! flushed whenever it passes [`FLUSH_AT`], so it stays bounded.
//!
//! A request this node can answer alone is answered in place. One that needs another node
//! (its session must be copied here) runs off the connection's task (alone, in a task of
//! its own; while others are out, in the connection's runner task, [`run_deferred`]) and
//! its reply is written when it is ready, out of order (replies are matched by request
//! id), late replies of one burst in one write: an SDK sends all of an
//! application's users over one connection, and one user's session on a slow or dead
//! node must not hold up everyone else's. At most [`MAX_DEFERRED`] such requests per
//! connection wait at once.
//!
//! Every write is bounded too: a connection whose socket accepts no byte of its replies for
//! `NodeConfig::write_timeout` is closed, so a client that never reads gives up its
//! connection slot (and its pending replies) instead of holding them for as long as it
//! likes.
//!
//! With `--client-tls-cert` the port speaks TLS 1.3 only (and, with `--client-tls-ca`,
//! requires a client certificate that chains to that CA). With a password, failed HELLOs
//! are throttled per source address (`throttle.rs`) and an address may hold at most
//! `max_unauthenticated_per_address` connections that have not authenticated.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sessync_proto::{check_frame, decode_frame, ErrorCode, ErrorReply, Message, Request, Response};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::listen::next_connection;
use crate::node::{After, Mode, SharedNode};
use crate::shutdown::Shutdown;
use crate::stats::{op_index, Stats};
use crate::throttle::Throttle;
use crate::tls::{looks_like_tls, RateLimitedWarn, Stream, TlsState};

static TLS_WARN: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
static PLAIN_WARN: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
static AUTH_WARN: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));

/// Output bytes after which replies are written out before more requests are handled.
const FLUSH_AT: usize = 64 * 1024;
/// Requests of one connection that may wait on other nodes at once; past it the
/// connection is not read until some are answered (back-pressure).
const MAX_DEFERRED: usize = 256;
/// How long a refusal or final error frame may take to write before the socket is dropped.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown. The semaphore is mini-redis's connection limit:
/// a permit per open connection, refused (not queued) when none is left, so a flood costs
/// one small write per extra connection and nothing else.
pub(crate) async fn accept_loop(
    node: SharedNode,
    listener: TcpListener,
    mut shutdown: Shutdown,
    tasks: TaskTracker,
    tls: Option<Arc<TlsState>>,
) {
    let permits = Arc::new(Semaphore::new(node.config.max_connections));
    let throttle = Throttle::new(
        node.config.auth_backoff_max,
        node.config.max_unauthenticated_per_address,
    );
    loop {
        let Some((stream, addr)) = next_connection(&listener, &mut shutdown, "client").await else {
            return;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Stats::bump(&node.stats.connections_refused);
            if tls.is_none() {
                tasks.spawn(refuse(stream, "node is at its connection limit"));
            }
            continue;
        };
        // With a password, a connection is unauthenticated until its HELLO succeeds.
        let unauthenticated = if node.config.password.is_some() {
            match throttle.enter(addr.ip()) {
                Some(u) => Some(u),
                None => {
                    Stats::bump(&node.stats.unauthenticated_refused);
                    if tls.is_none() {
                        tasks.spawn(refuse(
                            stream,
                            "too many unauthenticated connections from this address",
                        ));
                    }
                    continue;
                }
            }
        } else {
            None
        };
        let tls = tls.clone();
        let throttle = throttle.clone();
        Stats::bump(&node.stats.connections_total);
        let node = node.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            node.stats
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let auth = Auth {
                addr,
                throttle,
                unauthenticated,
            };
            if let Err(e) = accept(&node, stream, addr, tls, shutdown, auth).await {
                tracing::debug!(%addr, "client connection ended: {e}");
            }
            node.stats
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Whether `req` is a HELLO with a password sent to a node that has none: refused, as
/// Redis refuses AUTH without a configured password, since the client's configuration is
/// wrong (it may be talking to the wrong node).
fn unexpected_password(node: &SharedNode, req: &Request) -> bool {
    node.config.password.is_none()
        && matches!(
            req,
            Request::Hello {
                password: Some(_),
                ..
            }
        )
}

/// Counts a failed client authentication and logs it at INFO, at most once per
/// [`crate::lograte::RateLimit::EVERY`] (a client can fail at will).
fn auth_failed(node: &SharedNode, from: SocketAddr, why: &str) {
    Stats::bump(&node.stats.auth_failures);
    if let Some(left_out) = node.stats.auth_log.allow() {
        tracing::info!(%from, left_out, "client authentication failed: {why}");
    }
}

/// A connection's source address, its port's throttle, and the unauthenticated slot it
/// holds until its HELLO succeeds.
struct Auth {
    addr: SocketAddr,
    throttle: Arc<Throttle>,
    unauthenticated: Option<crate::throttle::Unauthenticated>,
}

/// Completes the TLS handshake when the port has TLS (within the frame timeout), then
/// serves the connection.
async fn accept(
    node: &SharedNode,
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<TlsState>>,
    shutdown: Shutdown,
    auth: Auth,
) -> std::io::Result<()> {
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            match tokio::time::timeout(node.config.frame_timeout, crate::tls::accept(&tls, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    Stats::bump(&node.stats.tls_failures);
                    TLS_WARN.warn(format_args!(
                        "client port: TLS handshake from {addr} refused: {e}"
                    ));
                    return Ok(());
                }
                Err(_) => {
                    Stats::bump(&node.stats.tls_failures);
                    TLS_WARN.warn(format_args!(
                        "client port: TLS handshake from {addr} not completed within the frame timeout"
                    ));
                    return Ok(());
                }
            }
        }
    };
    serve_connection(node, stream, shutdown, auth).await
}

async fn refuse(mut stream: TcpStream, why: &'static str) {
    let mut out = BytesMut::new();
    Response::Error(ErrorReply::new(ErrorCode::TooManyConnections, why)).encode_frame(0, &mut out);
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, stream.write_all(&out)).await;
}

/// Writes all of `buf`, failing with `TimedOut` once the socket has accepted no byte for
/// the node's write timeout. Progress, not the whole write, is timed: a slow reader of a
/// large reply is served, a client that stopped reading is cut off.
async fn write_bounded(node: &SharedNode, stream: &mut Stream, mut buf: &[u8]) -> std::io::Result<()> {
    // A socket with room takes the whole buffer at once: then no timeout is made. (That
    // saves little: tokio 1.54 registers a `Sleep` only when it is first polled, so a
    // timeout whose write completes at once never takes the timer driver's lock; measured
    // in BENCHMARKS.md, "Peer port I/O without timers".)
    while !buf.is_empty() {
        match stream.write(buf).now_or_never() {
            Some(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => buf = &buf[n..],
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    if buf.is_empty() {
        if let Some(r) = stream.flush().now_or_never() {
            return r;
        }
    }
    let r = crate::listen::write_with_progress(stream, buf, node.config.write_timeout).await;
    if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        Stats::bump(&node.stats.write_timeouts);
    }
    r
}

async fn write_final(stream: &mut Stream, out: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "final write timed out"))??;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Whether a HELLO that was not accepted failed on its password (a version outside the
/// node's, or no password at all, is not a guess).
fn wrong_password(req: &Request) -> bool {
    match req {
        Request::Hello {
            min_version,
            max_version,
            password,
            ..
        } => password.is_some() && (*min_version..=*max_version).contains(&sessync_proto::PROTOCOL_VERSION),
        _ => false,
    }
}

async fn serve_connection(
    node: &SharedNode,
    mut stream: Stream,
    mut shutdown: Shutdown,
    mut auth: Auth,
) -> std::io::Result<()> {
    let cfg = &node.config;
    let mut input = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut authenticated = cfg.password.is_none();
    // Replies of requests that needed another node, computed off this task.
    let (late_tx, mut late_rx) = mpsc::channel::<BytesMut>(MAX_DEFERRED);
    // Their buffers, once copied out, for the next ones.
    let pool = ReplyPool::default();
    // The task that runs them, started on the first one.
    let mut runner: Option<mpsc::UnboundedSender<Deferred>> = None;
    let mut deferred = 0usize;
    // The first frame must be complete within the frame timeout of connecting, and so
    // must every frame after its first byte arrives.
    let mut partial_since = Some(Instant::now());
    let mut got_frame = false;
    let mut reading = true;
    // Whether a deferred request's reply woke this task.
    let mut late_arrived = false;
    // The read's deadline: the frame timeout's or the idle timeout's (set in the loop).
    let idle = tokio::time::sleep_until(Instant::now() + cfg.idle_timeout);
    tokio::pin!(idle);
    loop {
        // Decode and answer what is buffered, unless too many requests wait on peers.
        while deferred < MAX_DEFERRED {
            let frame = match decode_frame(&mut input, cfg.limits.max_frame_len) {
                Ok(Some(f)) => {
                    got_frame = true;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    Stats::bump(&node.stats.errors);
                    if !got_frame && matches!(stream, Stream::Plain(_)) && looks_like_tls(&input) {
                        Stats::bump(&node.stats.tls_on_plain_port);
                        PLAIN_WARN.warn(format_args!(
                            "client port: {} opened with a TLS ClientHello, but this port is plain text (--client-tls-cert is not set)",
                            auth.addr
                        ));
                    }
                    Response::Error(ErrorReply::new(e.code(), e.to_string())).encode_frame(0, &mut out);
                    return write_final(&mut stream, &out).await;
                }
            };
            let after = match Request::decode_frame(&frame, &cfg.limits) {
                Ok(req) if unexpected_password(node, &req) => {
                    auth_failed(node, auth.addr, "HELLO with a password, and this node has none");
                    Stats::bump(&node.stats.requests);
                    Stats::bump(&node.stats.errors);
                    Response::Error(ErrorReply::new(
                        ErrorCode::AuthFailed,
                        "HELLO carried a password, but this node has none configured (--password)",
                    ))
                    .encode_frame(frame.request_id, &mut out);
                    After::Close
                }
                Ok(req @ Request::Hello { .. }) if cfg.password.is_some() => {
                    // A failed password makes this address's next attempt wait its turn.
                    // Replies so far are written first: the wait must not hold them.
                    if !out.is_empty() {
                        write_bounded(node, &mut stream, &out).await?;
                        out.clear();
                    }
                    let ip = auth.addr.ip();
                    tokio::select! {
                        _ = auth.throttle.wait_turn(ip) => {}
                        _ = shutdown.wait() => return Ok(()),
                    }
                    let after = node
                        .handle(frame.request_id, &req, authenticated, Mode::LocalOnly, &mut out)
                        .now_or_never()
                        .unwrap_or(After::Close);
                    if let After::Authenticated = after {
                        auth.throttle.success(ip);
                        auth.unauthenticated = None;
                    } else if wrong_password(&req) {
                        Stats::bump(&node.stats.auth_failures);
                        let (n, delay) = auth.throttle.failure(ip);
                        AUTH_WARN.warn(format_args!(
                            "client {} sent a wrong password in HELLO ({n} in a row; its next attempt waits {delay:?})",
                            auth.addr
                        ));
                    }
                    after
                }
                Ok(req) => {
                    let started = std::time::Instant::now();
                    let op = op_index(&req);
                    // LocalOnly never waits, so one poll completes it.
                    let local = node.handle(frame.request_id, &req, authenticated, Mode::LocalOnly, &mut out);
                    match local.now_or_never().unwrap_or(After::Defer) {
                        After::Defer => {
                            deferred += 1;
                            let d = Deferred {
                                id: frame.request_id,
                                req,
                                op,
                                started,
                            };
                            // Alone, a request gets a task of its own (the shortest path
                            // for a single move); with others out, it joins the runner.
                            let d = if deferred == 1 {
                                Err(d)
                            } else {
                                let runner = runner.get_or_insert_with(|| {
                                    let (tx, rx) = mpsc::unbounded_channel();
                                    // Not tracked: it ends with the connection's sender,
                                    // and the shutdown waits for the connection's
                                    // requests in flight through `late_tx`.
                                    tokio::spawn(run_deferred(
                                        node.clone(),
                                        rx,
                                        late_tx.clone(),
                                        pool.clone(),
                                    ));
                                    tx
                                });
                                // An error is not expected (the runner lives while this
                                // sender does); the request is answered all the same.
                                runner.send(d).map_err(|mpsc::error::SendError(d)| d)
                            };
                            if let Err(d) = d {
                                let (tx, node) = (late_tx.clone(), node.clone());
                                let buf = pool.take();
                                // Not tracked: as the runner above (one request,
                                // bounded by the peer timeouts of its fetch).
                                tokio::spawn(async move {
                                    let _ = tx.send(answer(node, d, buf).await).await;
                                });
                            }
                            After::Continue
                        }
                        after => {
                            node.stats.latency.observe(op, started.elapsed());
                            after
                        }
                    }
                }
                Err(e) => {
                    Stats::bump(&node.stats.errors);
                    let code = e.code();
                    Response::Error(ErrorReply::new(code, e.to_string()))
                        .encode_frame(frame.request_id, &mut out);
                    if code.closes_connection() {
                        After::Close
                    } else {
                        After::Continue
                    }
                }
            };
            match after {
                After::Continue | After::Defer => {}
                After::Authenticated => authenticated = true,
                After::Close => return write_final(&mut stream, &out).await,
            }
            if out.len() >= FLUSH_AT {
                write_bounded(node, &mut stream, &out).await?;
                out.clear();
            }
        }
        while let Ok(reply) = late_rx.try_recv() {
            deferred -= 1;
            out.extend_from_slice(&reply);
            pool.give_back(reply);
        }
        if late_arrived && deferred > 0 {
            // Late replies come in bursts: the peer answers a batch of COPYs in one write,
            // and each completes a deferred request. Let the rest of the burst run first
            // (the task runs again once its worker has nothing else ready), so that the
            // burst goes out in one write instead of one write per reply.
            tokio::task::yield_now().await;
            while let Ok(reply) = late_rx.try_recv() {
                deferred -= 1;
                out.extend_from_slice(&reply);
                pool.give_back(reply);
            }
        }
        late_arrived = false;
        if !out.is_empty() {
            write_bounded(node, &mut stream, &out).await?;
            out.clear();
        }
        let frame_waiting = matches!(check_frame(&input, cfg.limits.max_frame_len), Ok(Some(_)));
        if shutdown.is_shutting_down() || (!reading && !frame_waiting) {
            // Every complete request read so far gets its answer, late ones included; a
            // partial frame is dropped.
            while deferred > 0 {
                let Some(reply) = late_rx.recv().await else { break };
                deferred -= 1;
                write_bounded(node, &mut stream, &reply).await?;
            }
            let _ = stream.shutdown().await;
            return Ok(());
        }
        partial_since = match (input.is_empty(), partial_since) {
            // Before the first frame, the clock started at connect keeps running.
            (true, since) if !got_frame => since,
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        // While requests wait on peers, the client is not idle: only a started frame's
        // timeout applies.
        let deadline = match partial_since {
            Some(since) => since + cfg.frame_timeout,
            None if deferred > 0 => Instant::now() + cfg.idle_timeout.max(cfg.peer_timeout * 4),
            None => Instant::now() + cfg.idle_timeout,
        };
        // Moved forward without the timer driver's lock (a timer made per read took it
        // twice); only an earlier deadline (a partial frame's) re-registers it.
        if idle.deadline() != deadline {
            idle.as_mut().reset(deadline);
        }
        let can_read = deferred < MAX_DEFERRED;
        tokio::select! {
            _ = shutdown.wait() => continue,
            Some(reply) = late_rx.recv(), if deferred > 0 => {
                deferred -= 1;
                out.extend_from_slice(&reply);
                pool.give_back(reply);
                late_arrived = true;
            }
            r = async {
                // As `timeout_at(deadline, read)`, with one timer for the connection.
                tokio::select! {
                    biased;
                    r = stream.read_buf(&mut input) => Ok(r),
                    () = idle.as_mut() => Err(()),
                }
            }, if can_read && reading => match r {
                Ok(r) => {
                    if r? == 0 {
                        // The client finished sending; answer what it sent, then close.
                        reading = false;
                    }
                }
                Err(_) => {
                    let what = if partial_since.is_some() {
                        "no complete frame within the frame timeout"
                    } else {
                        "idle timeout"
                    };
                    Stats::bump(&node.stats.errors);
                    Response::Error(ErrorReply::new(ErrorCode::Timeout, what)).encode_frame(0, &mut out);
                    return write_final(&mut stream, &out).await;
                }
            },
        }
    }
}

/// A request that needs another node, handed to its connection's runner.
struct Deferred {
    id: u64,
    req: Request,
    op: usize,
    started: std::time::Instant,
}

/// Bytes reserved for a deferred request's reply: a 1 KiB session's SESSION reply with a
/// new token (~1.3 KiB) fits without growing the buffer.
const DEFERRED_REPLY_CAPACITY: usize = 2048;

/// Buffers of a connection's deferred replies, kept for its next ones once their bytes
/// are copied to the connection's output: a reply buffer (2 KiB, above glibc's per-thread
/// cache of small chunks) was a malloc and a free on the allocator's slow path per move.
/// At most [`REPLY_POOL`] are kept.
#[derive(Clone, Default)]
struct ReplyPool(Arc<std::sync::Mutex<Vec<BytesMut>>>);

/// Reply buffers a connection keeps at most (32 KiB): a pipeline's burst of moves.
const REPLY_POOL: usize = 16;

impl ReplyPool {
    /// A buffer for a deferred reply: a kept one, or a new one.
    fn take(&self) -> BytesMut {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| BytesMut::with_capacity(DEFERRED_REPLY_CAPACITY))
    }

    /// Keeps `buf` (its bytes were copied out) for another reply, unless enough are kept
    /// or it grew past the usual size (a large session's reply).
    fn give_back(&self, mut buf: BytesMut) {
        if buf.capacity() > DEFERRED_REPLY_CAPACITY * 2 {
            return;
        }
        buf.clear();
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < REPLY_POOL {
            kept.push(buf);
        }
    }
}

/// Answers one deferred request (copying its session here first, or whatever else it
/// needs from other nodes) into `reply` (empty).
async fn answer(node: SharedNode, d: Deferred, mut reply: BytesMut) -> BytesMut {
    node.handle(d.id, &d.req, true, Mode::Full, &mut reply).await;
    node.stats.latency.observe(d.op, d.started.elapsed());
    reply
}

/// Runs one connection's deferred requests, all at once and each at its own pace, and
/// sends each reply back as it is ready: one task per connection instead of one per
/// request, woken once for every batch of peer replies, whose requests it then all
/// completes in that one run. It is not the connection's task, so a client that does not
/// read its replies holds up none of the handovers its requests are part of. Ends when the
/// connection is gone and every request it took is answered.
async fn run_deferred(
    node: SharedNode,
    mut requests: mpsc::UnboundedReceiver<Deferred>,
    replies: mpsc::Sender<BytesMut>,
    pool: ReplyPool,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            Some(reply) = running.next(), if !running.is_empty() => {
                // Never full: the connection has at most MAX_DEFERRED requests out, and
                // the channel holds MAX_DEFERRED replies. When the connection is gone
                // the reply has no one to go to.
                let _ = replies.try_send(reply);
            }
            r = requests.recv(), if open => match r {
                Some(d) => running.push(answer(node.clone(), d, pool.take())),
                None => open = false,
            },
            else => return,
        }
    }
}
