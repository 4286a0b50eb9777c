//! `/metrics`: every STATS counter, gauges for sessions and bytes, latency histograms and
//! per-peer link state, encoded by prometheus-client at each scrape.
//!
//! The counters live in the node's atomics (STATS reads the same ones), so a scrape reads
//! them through a [`Collector`] instead of keeping a second copy in registered metrics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{readiness, Health};
use crate::node::SharedNode;
use crate::shutdown::Shutdown;
use crate::stats::OPS;

/// STATS entries that are levels, not counts.
const GAUGES: [(&str, &str); 12] = [
    ("connections", "Client connections open now."),
    ("sessions", "Live sessions this node owns."),
    ("backups", "Backup copies this node holds for other owners."),
    ("tombstones", "Forwarding and destroy tombstones kept."),
    ("bytes", "Estimated bytes of sessions, backups and tombstones."),
    ("max_sessions", "The --max-sessions limit."),
    ("max_memory", "The --max-memory limit in bytes."),
    (
        "members_joining",
        "Members this node sees joining (itself, until a member answers).",
    ),
    ("members_alive", "Members this node sees alive, itself included."),
    ("members_leaving", "Members this node sees leaving (draining)."),
    (
        "members_dead",
        "Members this node saw declared dead in the last 2 minutes.",
    ),
    (
        "beyond_write_promise",
        "1 while this node knows of more than --replicas + 2 members: acknowledged writes can then be lost through partitions (protocol.md 12.6).",
    ),
];

/// Renders the metrics in the text exposition format.
pub(super) fn render(
    node: &SharedNode,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<String, std::fmt::Error> {
    let ready = readiness(node, health, shutdown).ready;
    let mut registry = Registry::with_prefix("sessync");
    registry.register_collector(Box::new(NodeCollector {
        node: node.clone(),
        ready,
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

struct NodeCollector {
    node: SharedNode,
    ready: bool,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        for (name, value) in node.stats_snapshot() {
            // Facts (`KEY=VALUE`) are shown as info and link metrics below.
            if name.contains('=') || name == "uptime_ms" {
                continue;
            }
            if let Some((_, help)) = GAUGES.iter().find(|(g, _)| *g == name) {
                gauge(&mut e, &name, help, i64::try_from(value).unwrap_or(i64::MAX))?;
            } else {
                // The encoder appends `_total`; `connections_total` must not get two.
                let metric = name.strip_suffix("_total").unwrap_or(&name);
                let c = ConstCounter::new(value);
                let help = format!("STATS counter {name}.");
                c.encode(e.encode_descriptor(metric, &help, None, c.metric_type())?)?;
            }
        }
        let about = node.stats.about.get();
        if let Some(a) = about {
            let g = ConstGauge::new(a.started.elapsed().as_secs_f64());
            g.encode(e.encode_descriptor(
                "uptime_seconds",
                "Seconds since the node started.",
                None,
                g.metric_type(),
            )?)?;
            let mut m = e.encode_descriptor("build_info", "Version and node id.", None, MetricType::Gauge)?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("node_id", a.node_id_hex()),
                ("advertise", a.advertise.to_string()),
            ];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        gauge(
            &mut e,
            "ready",
            "1 when /readyz answers 200.",
            i64::from(self.ready),
        )?;

        let mut m = e.encode_descriptor(
            "request_duration_seconds",
            "Client request latency by operation, from decoding to the reply being ready.",
            None,
            MetricType::Histogram,
        )?;
        for (i, op) in OPS.iter().enumerate() {
            if let Some(h) = node.stats.latency.0.get(i) {
                h.encode(m.encode_family(&[("op", *op)])?)?;
            }
        }
        let links = &node.peers.metrics;
        links.move_seconds.encode(e.encode_descriptor(
            "move_duration_seconds",
            "COPY or PROMOTE sent until the session arrived (COPY_DATA): the network part of a move.",
            None,
            MetricType::Histogram,
        )?)?;
        links.replicate_seconds.encode(e.encode_descriptor(
            "replicate_duration_seconds",
            "REPLICATE sent until the backup answered.",
            None,
            MetricType::Histogram,
        )?)?;

        if let Some(a) = about {
            let peers = a.peer_links();
            let mut m = e.encode_descriptor(
                "peer_link_up",
                "1 when this node's link to the peer is connected and authenticated.",
                None,
                MetricType::Gauge,
            )?;
            for (addr, s) in &peers {
                ConstGauge::new(i64::from(s.up)).encode(m.encode_family(&[("peer", addr.to_string())])?)?;
            }
            let mut m = e.encode_descriptor(
                "peer_rtt_seconds",
                "The last PING round trip to the peer.",
                None,
                MetricType::Gauge,
            )?;
            for (addr, s) in &peers {
                if let Some(rtt) = s.rtt {
                    ConstGauge::new(rtt.as_secs_f64())
                        .encode(m.encode_family(&[("peer", addr.to_string())])?)?;
                }
            }
            let mut m = e.encode_descriptor(
                "peer_link_features",
                "The protocol feature bits the link to the peer uses (protocol.md 9.3; 0: the base protocol), while it is up.",
                None,
                MetricType::Gauge,
            )?;
            for (addr, s) in peers.iter().filter(|(_, s)| s.up) {
                ConstGauge::new(s.features as i64).encode(m.encode_family(&[("peer", addr.to_string())])?)?;
            }
        }
        Ok(())
    }
}
