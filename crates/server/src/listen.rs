//! Listening sockets, shared by the client and peer ports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;

use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// Binds a listener with SO_REUSEADDR (a restarted node must not wait out the old
/// sockets' TIME_WAIT) and a 1024-connection backlog.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The next accepted connection (with TCP_NODELAY set), or `None` once shutdown begins.
/// Accept errors (out of file descriptors and the like) are logged and backed off from
/// instead of spinning.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
    port: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return None,
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, addr));
                }
                Err(e) => {
                    tracing::warn!("{port} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// [`write_with_progress`] without a timer when none is needed: a socket with room takes
/// the whole buffer at once, and then no timeout is made (each `tokio::time::timeout` reads
/// the clock and clones the runtime's shared handle, two per write; one that has to wait
/// registers its timer under the timer driver's lock, and takes the lock again when
/// dropped). Only what the socket did not take at once is written under the timeout. A
/// `TimedOut` is counted in `timeouts`.
///
/// When the socket has room it completes on its first poll, so a caller that races it
/// against another future in a `biased` select, this one first, never polls the other.
pub(crate) async fn write_bounded<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    deadline: Duration,
    timeouts: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
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
    let r = write_with_progress(stream, buf, deadline).await;
    if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        timeouts.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Writes all of `buf`, failing with `TimedOut` once the socket has accepted no byte for
/// `deadline`. Progress, not the whole write, is timed: a slow reader of a large buffer is
/// served, a reader that stopped reading is cut off (both ports use it, so a client or a
/// peer that never reads gives its connection up instead of holding it forever).
/// Over TLS the last records are flushed under the same rule.
pub(crate) async fn write_with_progress<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    deadline: Duration,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    while !buf.is_empty() {
        let n = tokio::time::timeout(deadline, stream.write(buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the other side read nothing within the write timeout",
                )
            })??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    tokio::time::timeout(deadline, stream.flush())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the other side read nothing within the write timeout",
            )
        })?
}
