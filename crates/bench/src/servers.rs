//! Servers the bench runs in its own process, each on a runtime of its own so that they
//! do not share the client's scheduler: the loopback echo baseline, and (with `--spawn`)
//! sessync nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use sessync_proto::Keyring;
use sessync_server::{NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// A multi-threaded runtime with `threads` workers, named for `perf` and `top`.
pub(crate) fn runtime(name: &str, threads: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// The physical limit of this machine's TCP path as a tokio server sees it: for every
/// length-prefixed frame it reads, it writes back a frame of the size the request asks for
/// (see `wire::echo_request`), batching replies exactly as the sessync client port does
/// (decode everything buffered, one write). No parsing beyond the length, no CRC, no state.
pub(crate) struct Echo {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    _rt: Runtime,
}

impl Echo {
    /// Starts the echo server on 127.0.0.1, on an OS-chosen port.
    pub(crate) fn start(threads: usize) -> anyhow::Result<Echo> {
        let rt = runtime("echo", threads)?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo_connection(stream));
            }
        });
        Ok(Echo { addr, _rt: rt })
    }
}

async fn echo_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(8 * 1024);
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        while input.len() >= 4 {
            let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
            if input.len() < 4 + len {
                break;
            }
            let frame = input.split_to(4 + len);
            let want = if len >= 4 {
                u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize
            } else {
                4
            };
            let want = want.clamp(4, 1 << 20);
            out.put_u32((want - 4) as u32);
            out.put_bytes(0, want - 4);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

/// The secret in-process nodes share.
const SPAWN_SECRET: &[u8] = b"sessync-bench-in-process-secret!";

/// Sessync nodes started in this process (`--spawn N`), on a runtime of their own.
pub(crate) struct InProcessCluster {
    /// Each node's client address.
    pub(crate) client_addrs: Vec<SocketAddr>,
    handles: Vec<NodeHandle>,
    rt: Runtime,
}

impl InProcessCluster {
    /// Starts `n` nodes on 127.0.0.1 with OS-chosen ports, room for `max_sessions`
    /// sessions each and no memory limit to speak of.
    pub(crate) fn start(n: usize, threads: usize, max_sessions: usize) -> anyhow::Result<InProcessCluster> {
        let rt = runtime("node", threads)?;
        let keys = Keyring::single(SPAWN_SECRET)?;
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let handles = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..n {
                let mut config = NodeConfig::new(any, any, keys.clone());
                config.max_sessions = max_sessions;
                config.max_memory = usize::MAX / 2;
                v.push(sessync_server::start(config).await?);
            }
            anyhow::Ok(v)
        })?;
        let client_addrs = handles.iter().map(NodeHandle::client_addr).collect();
        Ok(InProcessCluster {
            client_addrs,
            handles,
            rt,
        })
    }

    /// Shuts every node down.
    pub(crate) fn stop(self) {
        let InProcessCluster { handles, rt, .. } = self;
        rt.block_on(async {
            for h in handles {
                h.shutdown(Duration::from_secs(5)).await;
            }
        });
    }
}
