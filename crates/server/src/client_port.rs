//! The client port: accepts application connections and serves their requests.
//!
//! Each connection is one task: it decodes every complete frame in its read buffer,
//! answers each in order into one output buffer, and writes that buffer before it reads
//! again. Pipelined requests therefore cost one read and one write per batch, and a client
//! that does not read its replies stops being read from (back-pressure): the output buffer
//! is flushed whenever it passes [`FLUSH_AT`], so it stays bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sessync_proto::{decode_frame, ErrorCode, ErrorReply, Message, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use tokio_util::task::TaskTracker;

use crate::listen::next_connection;
use crate::node::{After, SharedNode};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// Output bytes after which replies are written out before more requests are handled.
const FLUSH_AT: usize = 64 * 1024;
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
) {
    let permits = Arc::new(Semaphore::new(node.config.max_connections));
    loop {
        let Some((stream, addr)) = next_connection(&listener, &mut shutdown, "client").await else {
            return;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Stats::bump(&node.stats.connections_refused);
            tasks.spawn(refuse(stream));
            continue;
        };
        Stats::bump(&node.stats.connections_total);
        let node = node.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            node.stats
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = serve_connection(&node, stream, shutdown).await {
                tracing::debug!(%addr, "client connection ended: {e}");
            }
            node.stats
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn refuse(mut stream: TcpStream) {
    let mut out = BytesMut::new();
    Response::Error(ErrorReply::new(
        ErrorCode::TooManyConnections,
        "node is at its connection limit",
    ))
    .encode_frame(0, &mut out);
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, stream.write_all(&out)).await;
}

async fn write_final(stream: &mut TcpStream, out: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(FINAL_WRITE_TIMEOUT, stream.write_all(out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "final write timed out"))??;
    let _ = stream.shutdown().await;
    Ok(())
}

async fn serve_connection(
    node: &SharedNode,
    mut stream: TcpStream,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let cfg = &node.config;
    let mut input = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut authenticated = cfg.password.is_none();
    // The first frame must be complete within the frame timeout of connecting, and so
    // must every frame after its first byte arrives.
    let mut partial_since = Some(Instant::now());
    let mut got_frame = false;
    loop {
        loop {
            let frame = match decode_frame(&mut input, cfg.limits.max_frame_len) {
                Ok(Some(f)) => {
                    got_frame = true;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    Stats::bump(&node.stats.errors);
                    Response::Error(ErrorReply::new(e.code(), e.to_string())).encode_frame(0, &mut out);
                    return write_final(&mut stream, &out).await;
                }
            };
            let after = match Request::decode_frame(&frame, &cfg.limits) {
                Ok(req) => node.handle(frame.request_id, req, authenticated, &mut out).await,
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
                After::Continue => {}
                After::Authenticated => authenticated = true,
                After::Close => return write_final(&mut stream, &out).await,
            }
            if out.len() >= FLUSH_AT {
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if shutdown.is_shutting_down() {
            // Every complete request read so far has been answered; a partial one is dropped.
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
        let deadline = match partial_since {
            Some(since) => since + cfg.frame_timeout,
            None => Instant::now() + cfg.idle_timeout,
        };
        let n = tokio::select! {
            _ = shutdown.wait() => continue,
            r = timeout_at(deadline, stream.read_buf(&mut input)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    let what = if partial_since.is_some() { "no complete frame within the frame timeout" } else { "idle timeout" };
                    Stats::bump(&node.stats.errors);
                    Response::Error(ErrorReply::new(ErrorCode::Timeout, what)).encode_frame(0, &mut out);
                    return write_final(&mut stream, &out).await;
                }
            },
        };
        if n == 0 {
            return Ok(());
        }
    }
}
