//! `/status.json`: what the status page draws, read once a second.

use serde_json::{json, Map, Value};

use super::{readiness, Health};
use crate::node::SharedNode;
use crate::shutdown::Shutdown;

/// The node, its readiness, every peer it knows with its link and last probe, and every
/// STATS counter.
pub(super) fn json(node: &SharedNode, health: &Health, shutdown: &Shutdown) -> Value {
    let r = readiness(node, health, shutdown);
    let counters: Map<String, Value> = node
        .stats_snapshot()
        .into_iter()
        .filter(|(k, _)| !k.contains('='))
        .map(|(k, v)| (k, Value::from(v)))
        .collect();
    let probes = health.probes();
    let about = node.stats.about.get();
    let peers: Vec<Value> = about
        .map(|a| a.peer_links())
        .unwrap_or_default()
        .into_iter()
        .map(|(addr, s)| {
            let probe = probes.get(&addr);
            json!({
                "addr": addr.to_string(),
                "link": s.name(),
                "rtt_ms": s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                // The feature bits the link uses (protocol.md 9.3), when up.
                "features": s.up.then_some(s.features),
                "answers_ping": probe.map(|p| p.ok),
                // The link's own last failure says why (a probe during a backoff only
                // says that it is backing off).
                "error": s.last_error.or_else(|| probe.and_then(|p| p.error.clone())),
            })
        })
        .collect();
    json!({
        "time_ms": crate::clock::now_ms(),
        "node": {
            "version": env!("CARGO_PKG_VERSION"),
            "node_id": about.map(|a| a.node_id_hex()),
            "client": about.map(|a| a.client.to_string()),
            "peer": about.map(|a| a.peer.to_string()),
            "advertise": node.advertise.to_string(),
            "http": about.and_then(|a| a.http).map(|h| h.to_string()),
            "uptime_s": about.map(|a| a.started.elapsed().as_secs_f64()),
            "replicas": node.config.replicas,
        },
        "ready": r.ready,
        "reason": r.reason,
        "peers": peers,
        "counters": counters,
    })
}
