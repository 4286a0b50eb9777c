//! The node's HTTP port (`--http ADDR`, off by default): probes for load balancers and
//! Kubernetes, Prometheus metrics and a status page for people.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 when the node accepts client requests and enough backup peers answer for `--replicas`; 503 otherwise; a JSON body says why |
//! | `GET /metrics` | Prometheus text exposition (OpenMetrics) |
//! | `GET /status.json` | the node, its peers and its counters, for the status page |
//! | `GET /` | the status page (one embedded HTML file with its script) |
//!
//! Anything else gets 404 (405 for another method). The port faces operators' tools, not
//! the internet, but it is bounded like the others, since anything that can reach it can
//! send garbage: request heads are limited to [`MAX_HEAD`] bytes and 64 headers (hyper
//! answers 431 or closes past that), the head must arrive within [`HEAD_TIMEOUT`]
//! (slowloris), a connection lives at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once (further ones are closed at once, mini-redis's
//! semaphore, refused rather than queued). Request bodies are never read.

mod metrics;
mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::listen::next_connection;
use crate::node::SharedNode;
use crate::shutdown::Shutdown;

/// Most bytes of a request head (request line and headers); hyper's minimum is 8 KiB.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for a request head to arrive, counted from the connection's start or from
/// the end of the previous response.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, even if kept alive (a scraper reconnects).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Most HTTP connections at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// How often the peers are pinged for readiness, link state and round trip.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the prober last learned about one peer.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// Whether it answered the last PING.
    pub(crate) ok: bool,
    /// Why it did not answer.
    pub(crate) error: Option<String>,
}

/// Readiness state shared by the prober and the HTTP handlers.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The first round of peer probes has finished.
    probed: AtomicBool,
    /// The last probe of each peer.
    probes: Mutex<HashMap<SocketAddr, Probe>>,
}

impl Health {
    fn probes(&self) -> HashMap<SocketAddr, Probe> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Whether the node is ready, and why not.
#[derive(Debug, Clone)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) reason: Option<String>,
    pub(crate) answering: Vec<SocketAddr>,
    pub(crate) silent: Vec<(SocketAddr, String)>,
}

/// The other cluster members (from `--peers`), without this node.
fn others(node: &SharedNode) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = node
        .cluster_peers()
        .iter()
        .copied()
        .filter(|p| *p != node.advertise)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Ready = accepting client requests (not shutting down) and, with `--replicas r`, at
/// least r other members answered their last PING.
pub(crate) fn readiness(node: &SharedNode, health: &Health, shutdown: &Shutdown) -> Readiness {
    let probes = health.probes();
    let mut answering = Vec::new();
    let mut silent = Vec::new();
    for p in others(node) {
        match probes.get(&p) {
            Some(Probe { ok: true, .. }) => answering.push(p),
            Some(Probe { error, .. }) => silent.push((p, error.clone().unwrap_or_default())),
            None => silent.push((p, "not probed yet".into())),
        }
    }
    let want = usize::from(node.config.replicas);
    let reason = if shutdown.is_shutting_down() {
        Some("draining: the node is shutting down and accepts no new connections".to_string())
    } else if want > 0 && !health.probed.load(Ordering::Acquire) {
        Some("starting: checking that enough backup peers answer".to_string())
    } else if answering.len() < want {
        Some(format!(
            "short of backups: {} of the {want} backup peer(s) --replicas needs answer (writes get BACKUP_UNAVAILABLE or are under-replicated)",
            answering.len()
        ))
    } else {
        None
    };
    Readiness {
        ready: reason.is_none(),
        reason,
        answering,
        silent,
    }
}

/// Pings every other cluster member every [`PROBE_EVERY`], in parallel, until shutdown.
pub(crate) async fn prober(node: SharedNode, health: Arc<Health>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let peers = others(&node);
        let deadline = Instant::now() + node.config.peer_timeout;
        let results =
            futures_util::future::join_all(peers.iter().map(|&p| node.peers.ping(p, deadline))).await;
        {
            let mut probes = health.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.clear();
            for (p, r) in peers.into_iter().zip(results) {
                let probe = match r {
                    Ok(_) => Probe {
                        ok: true,
                        error: None,
                    },
                    Err(e) => Probe {
                        ok: false,
                        error: Some(e),
                    },
                };
                probes.insert(p, probe);
            }
        }
        health.probed.store(true, Ordering::Release);
    }
}

/// Serves the HTTP port until shutdown.
pub(crate) async fn accept_loop(
    node: SharedNode,
    health: Arc<Health>,
    listener: TcpListener,
    mut shutdown: Shutdown,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some((stream, _addr)) = next_connection(&listener, &mut shutdown, "http").await else {
            return;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Refused, not queued: closing costs nothing.
            drop(stream);
            continue;
        };
        let (node, health, mut shutdown) = (node.clone(), health.clone(), shutdown.clone());
        tasks.spawn(async move {
            let watch = shutdown.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = route(&node, &health, &watch, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .max_headers(64)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = &mut conn => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut conn).await;
                }
                _ = shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut conn).await;
                }
            }
            drop(permit);
        });
    }
}

/// The embedded status page.
const STATUS_PAGE: &str = include_str!("status.html");

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn route(
    node: &SharedNode,
    health: &Health,
    shutdown: &Shutdown,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let known = matches!(path, "/" | "/healthz" | "/readyz" | "/metrics" | "/status.json");
    if !known {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /, /healthz, /readyz, /metrics or /status.json\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match path {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            let r = readiness(node, health, shutdown);
            let body = serde_json::json!({
                "ready": r.ready,
                "reason": r.reason,
                "replicas": node.config.replicas,
                "answering_peers": r.answering.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "silent_peers": r.silent.iter().map(|(a, e)| serde_json::json!({"peer": a.to_string(), "error": e})).collect::<Vec<_>>(),
            });
            let code = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, JSON, format!("{body}\n"))
        }
        "/metrics" => match metrics::render(node, health, shutdown) {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "encoding failed\n"),
        },
        "/status.json" => reply(
            StatusCode::OK,
            JSON,
            status::json(node, health, shutdown).to_string(),
        ),
        _ => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
    }
}
