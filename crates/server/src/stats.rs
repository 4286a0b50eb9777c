//! Node counters, reported by STATS and (with `--http`) `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use sessync_proto::Request;

use crate::peer_link::{LinkState, Peers};

/// Monotonic counters and gauges; relaxed atomics, read together only for reporting.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// When the node started, its bound addresses and its peer links: set once by
    /// [`crate::start`], read by STATS for uptime, addresses and link states.
    pub(crate) about: OnceLock<About>,
    /// Request latency by operation, measured at the client port.
    pub(crate) latency: RequestLatency,
    /// Limits the log lines of refused peer handshakes.
    pub(crate) handshake_log: crate::lograte::RateLimit,
    /// Limits the log lines of failed client authentication.
    pub(crate) auth_log: crate::lograte::RateLimit,
    /// Client connections open now.
    pub(crate) connections: AtomicU64,
    /// Client connections accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Client connections refused at `max_connections`.
    pub(crate) connections_refused: AtomicU64,
    /// Client connections closed because they did not read their replies in time.
    pub(crate) write_timeouts: AtomicU64,
    /// Peer connections refused at `max_peer_handshakes`, or whose handshake failed at
    /// this node's peer port (STATS adds the handshakes this node's own links had refused).
    pub(crate) peer_handshakes_refused: AtomicU64,
    /// Requests handled.
    pub(crate) requests: AtomicU64,
    /// Error replies sent.
    pub(crate) errors: AtomicU64,
    /// Sessions created.
    pub(crate) created: AtomicU64,
    /// Sessions destroyed.
    pub(crate) destroyed: AtomicU64,
    /// Sessions rotated.
    pub(crate) rotated: AtomicU64,
    /// Sessions this node handed to another (COPY served).
    pub(crate) copies_served: AtomicU64,
    /// Sessions this node took over from another (COPY received).
    pub(crate) copies_received: AtomicU64,
    /// COPY_ACKs this node received folded into COPY_ACKS frames (protocol.md 10).
    pub(crate) copy_acks_folded: AtomicU64,
    /// MOVED answers given to peers.
    pub(crate) moved: AtomicU64,
    /// Copies that failed (owner unreachable, too many hops, peer error).
    pub(crate) handover_failures: AtomicU64,
    /// Random pauses taken because two nodes kept taking a session from each other.
    pub(crate) contention_backoffs: AtomicU64,
    /// Requests whose token named a newer generation than the copy live here: the copy was
    /// superseded, so the session was fetched instead of served from it.
    pub(crate) superseded_copies_skipped: AtomicU64,
    /// Backup copies confirmed by backups (REPLICATE answered OK).
    pub(crate) replicated: AtomicU64,
    /// REPLICATE requests that failed (no answer, refused); the backup was replaced.
    pub(crate) replicate_failures: AtomicU64,
    /// Writes acknowledged or answered with fewer backups than `replicas`.
    pub(crate) under_replicated_writes: AtomicU64,
    /// Writes answered INDETERMINATE.
    pub(crate) indeterminate: AtomicU64,
    /// Reads that ran a replication round first: their lease had lapsed (protocol.md 12.5).
    pub(crate) read_lease_rounds: AtomicU64,
    /// Reads answered OWNER_UNREACHABLE because no node answered the renewal round of an
    /// old copy (protocol.md 12.5).
    pub(crate) read_lease_refusals: AtomicU64,
    /// Failover claims that waited for, or PROMOTEs refused until, the failed owner's read
    /// lease ended (protocol.md 12.3).
    pub(crate) claims_waited_for_lease: AtomicU64,
    /// Writes refused with BACKUP_UNAVAILABLE.
    pub(crate) backup_unavailable: AtomicU64,
    /// Sessions this node took over from a backup copy after their owner was gone.
    pub(crate) promotions: AtomicU64,
    /// Backup copies this node handed to a node that reported their owner gone.
    pub(crate) backups_promoted: AtomicU64,
    /// Client HELLOs refused for a wrong password.
    pub(crate) auth_failures: AtomicU64,
    /// Peer handshakes that failed authentication (wrong secret, unknown key id).
    pub(crate) peer_auth_failures: AtomicU64,
    /// Connections refused because their address held too many unauthenticated ones.
    pub(crate) unauthenticated_refused: AtomicU64,
    /// TLS handshakes that failed on a TLS port (plain-text client, certificate from
    /// another CA, expired or missing certificate, truncated handshake).
    pub(crate) tls_failures: AtomicU64,
    /// Connections that opened with a TLS ClientHello on a plain port.
    pub(crate) tls_on_plain_port: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as (name, value) pairs, for STATS; then, once the node has started,
    /// `uptime_ms` and the facts (`KEY=VALUE` names, see protocol.md STATS_REPLY).
    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let about = self.about.get();
        let dial_refused = about.map_or(0, |a| a.peers.handshakes_refused());
        let mut v: Vec<(String, u64)> = vec![
            ("connections".into(), g(&self.connections)),
            ("connections_total".into(), g(&self.connections_total)),
            ("connections_refused".into(), g(&self.connections_refused)),
            ("write_timeouts".into(), g(&self.write_timeouts)),
            (
                "peer_handshakes_refused".into(),
                g(&self.peer_handshakes_refused) + dial_refused,
            ),
            ("requests".into(), g(&self.requests)),
            ("errors".into(), g(&self.errors)),
            ("created".into(), g(&self.created)),
            ("destroyed".into(), g(&self.destroyed)),
            ("rotated".into(), g(&self.rotated)),
            ("copies_served".into(), g(&self.copies_served)),
            ("copies_received".into(), g(&self.copies_received)),
            ("copy_acks_folded".into(), g(&self.copy_acks_folded)),
            ("moved".into(), g(&self.moved)),
            ("handover_failures".into(), g(&self.handover_failures)),
            ("contention_backoffs".into(), g(&self.contention_backoffs)),
            (
                "superseded_copies_skipped".into(),
                g(&self.superseded_copies_skipped),
            ),
            ("replicated".into(), g(&self.replicated)),
            ("replicate_failures".into(), g(&self.replicate_failures)),
            ("under_replicated_writes".into(), g(&self.under_replicated_writes)),
            ("indeterminate".into(), g(&self.indeterminate)),
            ("read_lease_rounds".into(), g(&self.read_lease_rounds)),
            ("read_lease_refusals".into(), g(&self.read_lease_refusals)),
            ("claims_waited_for_lease".into(), g(&self.claims_waited_for_lease)),
            ("backup_unavailable".into(), g(&self.backup_unavailable)),
            ("promotions".into(), g(&self.promotions)),
            ("backups_promoted".into(), g(&self.backups_promoted)),
            ("auth_failures".into(), g(&self.auth_failures)),
            ("peer_auth_failures".into(), g(&self.peer_auth_failures)),
            ("unauthenticated_refused".into(), g(&self.unauthenticated_refused)),
            ("tls_failures".into(), g(&self.tls_failures)),
            ("tls_on_plain_port".into(), g(&self.tls_on_plain_port)),
        ];
        if let Some(m) = about.and_then(|a| a.membership.as_ref()) {
            v.extend(m.stats());
        }
        if let Some(a) = about {
            v.push(("uptime_ms".into(), a.started.elapsed().as_millis() as u64));
            v.extend(a.facts());
        }
        v
    }
}

/// What STATS says about the node itself, beyond counters.
#[derive(Debug)]
pub(crate) struct About {
    /// When [`crate::start`] ran.
    pub(crate) started: Instant,
    /// This process's node id.
    pub(crate) node_id: [u8; 16],
    /// The bound client address.
    pub(crate) client: SocketAddr,
    /// The bound peer address.
    pub(crate) peer: SocketAddr,
    /// The peer address written into tokens.
    pub(crate) advertise: SocketAddr,
    /// The bound HTTP address, when `--http` is on.
    pub(crate) http: Option<SocketAddr>,
    /// The node's outgoing links (their states and refused handshakes).
    pub(crate) peers: Arc<Peers>,
    /// The node, for its cluster peers (weak: the node owns these stats).
    pub(crate) node: std::sync::Weak<crate::Node>,
    /// Cluster membership, unless it is off.
    pub(crate) membership: Option<crate::membership::Membership>,
}

impl About {
    /// The node id as 32 lower-case hex digits.
    pub(crate) fn node_id_hex(&self) -> String {
        self.node_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every peer this node knows (the cluster's, then any other it has a link to), with
    /// its link's state; this node's own address is left out.
    pub(crate) fn peer_links(&self) -> Vec<(SocketAddr, LinkState)> {
        let mut known: Vec<SocketAddr> = self
            .node
            .upgrade()
            .map(|n| n.cluster_peers().to_vec())
            .unwrap_or_default();
        let states = self.peers.link_states();
        for (addr, _) in &states {
            if !known.contains(addr) {
                known.push(*addr);
            }
        }
        known.retain(|a| *a != self.advertise);
        known
            .into_iter()
            .map(|a| {
                let s = states
                    .iter()
                    .find(|(b, _)| *b == a)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                (a, s)
            })
            .collect()
    }

    /// The `KEY=VALUE` facts of STATS: a value of 1 unless said otherwise.
    fn facts(&self) -> Vec<(String, u64)> {
        let mut v = vec![
            (format!("version={}", env!("CARGO_PKG_VERSION")), 1),
            (format!("node_id={}", self.node_id_hex()), 1),
            (format!("client_addr={}", self.client), 1),
            (format!("peer_addr={}", self.peer), 1),
            (format!("advertise={}", self.advertise), 1),
        ];
        if let Some(h) = self.http {
            v.push((format!("http_addr={h}"), 1));
        }
        for (addr, s) in self.peer_links() {
            // Value: 1 when the link is up, 0 otherwise; the round trip in microseconds.
            v.push((format!("peer_link={addr}"), u64::from(s.up)));
            if let Some(rtt) = s.rtt {
                v.push((format!("peer_rtt_us={addr}"), rtt.as_micros() as u64));
            }
            if s.up {
                v.push((format!("peer_features={addr}"), s.features));
            }
        }
        v
    }
}

/// The operations whose latency is measured, in the order of [`RequestLatency`]'s slots.
pub(crate) const OPS: [&str; 10] = [
    "hello", "ping", "create", "get", "set", "touch", "rotate", "destroy", "stats", "members",
];

/// The slot of a request in [`OPS`].
pub(crate) fn op_index(req: &Request) -> usize {
    match req {
        Request::Hello { .. } => 0,
        Request::Ping(_) => 1,
        Request::Create { .. } => 2,
        Request::Get { .. } => 3,
        Request::Set { .. } => 4,
        Request::Touch { .. } => 5,
        Request::Rotate { .. } => 6,
        Request::Destroy { .. } => 7,
        Request::Stats | Request::Drain => 8,
        Request::Members => 9,
    }
}

/// Finite buckets of a [`LatencyHistogram`]: 25 µs doubling to about 3.3 s.
const BUCKETS: usize = 18;
/// The first bucket's upper bound in nanoseconds.
const FIRST_BUCKET_NS: u64 = 25_000;

/// A latency histogram of relaxed atomics, encoded by prometheus-client at a scrape.
///
/// Why not prometheus-client's `Histogram`: it takes a write lock per observation, and
/// every request of one operation records into the same histogram, so all connections
/// would contend on one lock on the request path. Here an observation is two relaxed
/// atomic adds, and its bucket is found with one `leading_zeros` (the bounds double). A
/// scrape reads the buckets one by one, so it may see an observation in `count` and not
/// yet in its bucket; Prometheus tolerates that skew.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS + 1],
    /// Sum of the observations in nanoseconds.
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// The bucket of an observation of `ns` nanoseconds: bucket i holds (b(i-1), b(i)]
    /// where b(i) = 25 µs * 2^i.
    fn bucket(ns: u64) -> usize {
        let q = ns.saturating_sub(1) / FIRST_BUCKET_NS;
        let i = if q == 0 {
            0
        } else {
            (64 - q.leading_zeros()) as usize
        };
        i.min(BUCKETS)
    }

    /// Records one observation.
    pub(crate) fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = if i == BUCKETS {
                    f64::MAX // encoded as +Inf
                } else {
                    (FIRST_BUCKET_NS << i) as f64 / 1e9
                };
                (bound, c.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One latency histogram per client operation, from the request's decoding to its reply
/// being ready (a request that waits on another node is measured until its reply is).
#[derive(Debug, Default)]
pub(crate) struct RequestLatency(pub(crate) [LatencyHistogram; OPS.len()]);

impl RequestLatency {
    /// Records one request of operation slot `op`.
    pub(crate) fn observe(&self, op: usize, took: Duration) {
        if let Some(h) = self.0.get(op) {
            h.observe(took);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LatencyHistogram, BUCKETS};
    use std::time::Duration;

    #[test]
    fn buckets_double_from_25_microseconds_with_inclusive_upper_bounds() {
        let b = |us: u64| LatencyHistogram::bucket(us * 1000);
        assert_eq!(LatencyHistogram::bucket(0), 0);
        assert_eq!(b(25), 0);
        assert_eq!(LatencyHistogram::bucket(25_001), 1);
        assert_eq!(b(50), 1);
        assert_eq!(b(100), 2);
        assert_eq!(b(101), 3);
        assert_eq!(b(25 << 17), 17);
        assert_eq!(b((25 << 17) + 1), BUCKETS);
        assert_eq!(LatencyHistogram::bucket(u64::MAX), BUCKETS);
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.count(), 2);
    }
}
