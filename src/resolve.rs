//! Host names wherever the node takes an address: `--client`, `--peer` and `--advertise`
//! are resolved once at start; seeds (`--join`, `--peers`) are resolved again and again
//! by the node's membership (and `--peers` once here, as the first backup candidates).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use sessync_server::Seed;

/// Resolves `host:port` (a name or an IP address) to its first address, preferring IPv4
/// when the name has both (the ports bind to it and tokens carry it).
pub(crate) async fn addr(flag: &str, s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let all: Vec<SocketAddr> = tokio::net::lookup_host(s)
        .await
        .with_context(|| format!("{flag} {s}: cannot resolve (expected host:port)"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .with_context(|| format!("{flag} {s}: the name resolves to no address"))
}

/// Every address the seeds stand for now; a seed that does not resolve is logged and
/// left out (membership keeps trying it).
pub(crate) async fn now(seeds: &[Seed]) -> Vec<SocketAddr> {
    let mut v = Vec::new();
    for s in seeds {
        match s.resolve().await {
            Ok(a) => v.extend(a),
            Err(e) => tracing::warn!("seed {s}: {e} (membership keeps trying it)"),
        }
    }
    v.sort();
    v.dedup();
    v
}
