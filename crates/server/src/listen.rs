//! Listening sockets, shared by the client and peer ports.

use std::net::SocketAddr;
use std::time::Duration;

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
