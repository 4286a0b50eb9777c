//! One multiplexed connection to a node: the HELLO exchange, a writer task, a reader task
//! and the table of requests waiting for their replies.
//!
//! Calling order: [`Conn::open`] (connects and completes HELLO inline, before any task
//! exists), then any number of concurrent [`Conn::call`]s. The connection ends when either
//! task fails or the last `Arc<Conn>` is dropped; at that moment every waiting call fails
//! and [`Conn::is_open`] turns false, so the owner knows to open a new one.
//!
//! Why two tasks and a bounded queue: the writer drains everything queued since its last
//! write into one buffer, so N concurrent callers cost about one `write` syscall per batch
//! rather than N; the reader routes each reply by request id, so replies may arrive in any
//! order. The queue bound (see [`QUEUE_DEPTH`]) is the back-pressure: when the node (or
//! the network) is slower than the callers, callers wait for room instead of buffering
//! without limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use sessync_proto::{client_op, decode_frame, Frame, Message, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::error::ClientError;

/// Encoded requests that may wait for the writer. 1024 frames is far more than one batch
/// (so the writer never starves) yet bounds the queue's memory.
pub(crate) const QUEUE_DEPTH: usize = 1024;
/// The writer stops adding queued frames to a batch past this many bytes, writes, and
/// goes on; it keeps one write from growing without bound.
const MAX_BATCH: usize = 256 * 1024;
/// A write buffer that grew past this (for one huge frame) is released after the write.
const KEEP_BUFFER: usize = 1024 * 1024;
/// Read buffer headroom asked for before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Requests waiting for replies, by request id. `open` turns false exactly once, when the
/// connection ends; a closed table accepts no new waiters, so no call can register after
/// the final sweep and then wait forever.
#[derive(Default)]
struct Pending {
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Frame>>,
}

impl Pending {
    /// A poisoned lock only means another thread panicked while holding it; the map itself
    /// is always consistent (single inserts and removes), so keep using it.
    fn lock(&self) -> MutexGuard<'_, PendingInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a waiter; `None` when the connection has already ended.
    fn register(&self, id: u64) -> Option<oneshot::Receiver<Frame>> {
        let mut p = self.lock();
        if p.closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        p.waiters.insert(id, tx);
        Some(rx)
    }

    fn remove(&self, id: u64) {
        self.lock().waiters.remove(&id);
    }

    /// Hands a reply to its waiter. A reply nobody waits for (the call timed out or was
    /// dropped, or a connection-level error with request id 0) is discarded.
    fn complete(&self, frame: Frame) {
        let waiter = self.lock().waiters.remove(&frame.request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(frame);
        }
    }

    /// Ends the table: every waiter's channel is dropped, so each fails with Disconnected.
    fn close(&self) {
        let waiters = {
            let mut p = self.lock();
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        drop(waiters);
    }
}

/// Removes a call's waiter when the call ends for any reason (reply, timeout, the caller
/// dropping the future), so the table never keeps entries nobody waits for.
struct WaiterGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.pending.remove(self.id);
    }
}

/// How a call failed, from the point of view of "may the caller retry on a new connection?".
pub(crate) enum CallError {
    /// The request never left this process (the connection had already ended): safe to
    /// send on a new connection.
    NotSent,
    /// The request failed after it was handed to the writer (or for a reason a new
    /// connection would not change).
    Failed(ClientError),
}

/// One live connection. Dropping the last `Arc<Conn>` closes the socket.
pub(crate) struct Conn {
    tx: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    closed: CancellationToken,
    /// Longest request frame (length prefix value) this connection will send: the smaller
    /// of the client's own maximum and the node's announced one.
    max_send: u32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Conn {
    /// Connects, sends HELLO with request id `hello_id`, checks HELLO_OK and starts the
    /// reader and writer tasks. The caller bounds the time this takes.
    pub(crate) async fn open(
        addr: SocketAddr,
        config: &ClientConfig,
        hello_id: u64,
    ) -> Result<Conn, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        // Requests are small and latency-bound; batching is done by the writer task.
        tcp.set_nodelay(true)?;
        match &config.tls {
            None => {
                let mut tcp = tcp;
                let (input, node_max) = Self::hello(&mut tcp, config, hello_id).await?;
                // Plain TCP splits without a lock between the halves.
                let (r, w) = tcp.into_split();
                Ok(Self::spawn(r, w, input, node_max, config))
            }
            Some(tls) => {
                let mut stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), tcp)
                    .await?;
                let (input, node_max) = Self::hello(&mut stream, config, hello_id).await?;
                let (r, w) = tokio::io::split(stream);
                Ok(Self::spawn(r, w, input, node_max, config))
            }
        }
    }

    /// The HELLO exchange; returns what was read past HELLO_OK and the node's frame limit.
    async fn hello<S>(
        stream: &mut S,
        config: &ClientConfig,
        hello_id: u64,
    ) -> Result<(BytesMut, u32), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let hello = Request::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: config.client_name.clone(),
            password: config.password.clone(),
        };
        let mut out = BytesMut::new();
        hello.encode_frame(hello_id, &mut out);
        stream.write_all(&out).await?;
        stream.flush().await?;

        let mut input = BytesMut::with_capacity(READ_CHUNK);
        let frame = loop {
            match decode_frame(&mut input, config.max_frame_len) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(format!("bad frame from the node: {e}"))),
            }
            input.reserve(READ_CHUNK);
            if stream.read_buf(&mut input).await? == 0 {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the node closed the connection during HELLO",
                )));
            }
        };
        let reply = Response::decode_frame(&frame, &config.limits)
            .map_err(|e| ClientError::Protocol(format!("undecodable HELLO reply: {e}")))?;
        let node_max = match reply {
            // An error may come with request id 0 (e.g. TOO_MANY_CONNECTIONS is sent before
            // the node reads anything); it answers the HELLO either way.
            Response::Error(e) => {
                return Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                })
            }
            Response::HelloOk { .. } if frame.request_id != hello_id => {
                return Err(ClientError::Protocol(format!(
                    "HELLO_OK for request id {}, expected {hello_id}",
                    frame.request_id
                )))
            }
            Response::HelloOk {
                version,
                max_frame_len,
                ..
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "node chose protocol version {version}, this client speaks {PROTOCOL_VERSION}"
                    )));
                }
                max_frame_len
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected HELLO_OK (0x{:02x}), got opcode 0x{:02x}",
                    client_op::HELLO_OK,
                    other.opcode()
                )))
            }
        };

        Ok((input, node_max))
    }

    fn spawn<R, W>(read_half: R, write_half: W, input: BytesMut, node_max: u32, config: &ClientConfig) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let pending = Arc::new(Pending::default());
        let closed = CancellationToken::new();
        tokio::spawn(read_loop(
            read_half,
            input,
            config.max_frame_len,
            pending.clone(),
            closed.clone(),
        ));
        tokio::spawn(write_loop(write_half, rx, pending.clone(), closed.clone()));
        Conn {
            tx,
            pending,
            closed,
            max_send: config.max_frame_len.min(node_max),
        }
    }

    /// Whether the connection can still carry requests.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed.is_cancelled()
    }

    /// Sends one encoded request frame (whose header carries `id`) and waits for the frame
    /// that answers it, until `deadline`.
    pub(crate) async fn call(&self, id: u64, frame: Bytes, deadline: Instant) -> Result<Frame, CallError> {
        let len = frame.len().saturating_sub(sessync_proto::LENGTH_PREFIX_LEN);
        if len > self.max_send as usize {
            return Err(CallError::Failed(ClientError::InvalidRequest(format!(
                "request frame of {len} bytes exceeds the maximum of {} bytes",
                self.max_send
            ))));
        }
        // Registered before the frame is queued, so even an instant reply finds its waiter.
        let rx = self.pending.register(id).ok_or(CallError::NotSent)?;
        let _guard = WaiterGuard {
            pending: &self.pending,
            id,
        };
        match timeout_at(deadline, self.tx.send(frame)).await {
            Ok(Ok(())) => {}
            // The writer is gone, so the frame was never queued, let alone written.
            Ok(Err(_)) => return Err(CallError::NotSent),
            Err(_) => return Err(CallError::Failed(ClientError::Timeout)),
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(CallError::Failed(ClientError::Disconnected)),
            Err(_) => Err(CallError::Failed(ClientError::Timeout)),
        }
    }
}

/// Writes queued frames, batching everything already queued into one write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Bytes>,
    pending: Arc<Pending>,
    closed: CancellationToken,
) {
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let written = match rx.try_recv() {
            // The common case under light load: one frame, written as is without a copy.
            Err(_) => {
                tokio::select! {
                    _ = closed.cancelled() => break,
                    r = w.write_all(&first) => r,
                }
            }
            Ok(second) => {
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.extend_from_slice(&m),
                        Err(_) => break,
                    }
                }
                let r = tokio::select! {
                    _ = closed.cancelled() => break,
                    r = w.write_all(&batch) => r,
                };
                if batch.capacity() > KEEP_BUFFER {
                    batch = BytesMut::new();
                } else {
                    batch.clear();
                }
                r
            }
        };
        // Over TLS the last records may still be buffered; plain TCP's flush is a no-op.
        let flushed = tokio::select! {
            _ = closed.cancelled() => break,
            r = w.flush() => r,
        };
        if written.is_err() || flushed.is_err() {
            break;
        }
    }
    closed.cancel();
    pending.close();
}

/// Reads frames and hands each to the call waiting for its request id.
async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    mut input: BytesMut,
    max_frame_len: u32,
    pending: Arc<Pending>,
    closed: CancellationToken,
) {
    'conn: loop {
        loop {
            match decode_frame(&mut input, max_frame_len) {
                Ok(Some(frame)) => pending.complete(frame),
                Ok(None) => break,
                // Bad bytes from the node (oversized, bad CRC): the stream cannot be
                // resynchronised, so the connection ends.
                Err(_) => break 'conn,
            }
        }
        input.reserve(READ_CHUNK);
        let n = tokio::select! {
            _ = closed.cancelled() => break,
            n = r.read_buf(&mut input) => n,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    closed.cancel();
    pending.close();
}
