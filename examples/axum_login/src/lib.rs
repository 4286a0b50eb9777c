//! The axum login demo: three app instances, each beside its own in-process sessync node,
//! behind a tiny round-robin TCP balancer. Log in through the balancer and every next
//! request lands on another instance; the session follows (instant copy between the
//! nodes), and the `sessync` cookie is updated whenever the session moved.
//!
//! Run it: `cargo run -p sessync-example-axum-login -- 127.0.0.1:8080`, then
//! ```text
//! curl -c jar -b jar 'http://127.0.0.1:8080/login?user=alice'
//! curl -c jar -b jar http://127.0.0.1:8080/me      # again and again: instance 0, 1, 2, ...
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use rand::RngCore;
use serde::Deserialize;
use sessync_client::{Client, ClientConfig};
use sessync_proto::Keyring;
use sessync_server::{NodeConfig, NodeHandle};
use sessync_tower_sessions::{SessyncLayer, SessyncStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The running demo.
pub struct Demo {
    /// Where users connect: the round-robin balancer.
    pub balancer: SocketAddr,
    /// The app instances behind it, in balancing order.
    pub instances: Vec<SocketAddr>,
    nodes: Vec<NodeHandle>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts `n` sessync nodes (one cluster, a fresh random secret), an app instance beside
/// each, and the balancer on `listen` (port 0 for any).
pub async fn start(n: usize, listen: SocketAddr) -> anyhow::Result<Demo> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let keys = Keyring::single(&secret).context("cluster secret")?;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let (mut nodes, mut instances, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let node = sessync_server::start(NodeConfig::new(any, any, keys.clone()))
            .await
            .with_context(|| format!("starting node {i}"))?;
        let client = Client::connect(node.client_addr(), ClientConfig::default())
            .await
            .with_context(|| format!("connecting to node {i}"))?;
        let listener = TcpListener::bind(any).await?;
        instances.push(listener.local_addr()?);
        let router = app(i, client);
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
        nodes.push(node);
    }
    let listener = TcpListener::bind(listen).await.context("binding the balancer")?;
    let balancer = listener.local_addr()?;
    tasks.push(tokio::spawn(balance(listener, instances.clone())));
    Ok(Demo {
        balancer,
        instances,
        nodes,
        tasks,
    })
}

impl Demo {
    /// Stops the balancer, the apps and the nodes.
    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
        for n in self.nodes {
            n.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// One app instance: `/login?user=NAME`, `/me`, `/logout`.
pub fn app(instance: usize, client: Client) -> Router {
    let sessions = SessionManagerLayer::new(SessyncStore::new(client))
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time_minutes(30)));
    Router::new()
        .route("/login", get(login))
        .route("/me", get(me))
        .route("/logout", get(logout))
        .with_state(instance)
        .layer(sessions)
        // Outside the session layer: carries the sessync token cookie.
        .layer(SessyncLayer::new())
}

fn time_minutes(m: i64) -> tower_sessions::cookie::time::Duration {
    tower_sessions::cookie::time::Duration::minutes(m)
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
}

async fn login(
    State(instance): State<usize>,
    session: Session,
    Query(form): Query<LoginForm>,
) -> Result<String, StatusCode> {
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    // A new session id at login: a session fixed before login is worth nothing.
    session.cycle_id().await.map_err(fail)?;
    session.insert("user", &form.user).await.map_err(fail)?;
    Ok(format!("instance {instance}: welcome {}\n", form.user))
}

async fn me(State(instance): State<usize>, session: Session) -> (StatusCode, String) {
    match session.get::<String>("user").await {
        Ok(Some(user)) => (StatusCode::OK, format!("{user} via instance {instance}\n")),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            format!("instance {instance}: not logged in\n"),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn logout(State(instance): State<usize>, session: Session) -> Result<String, StatusCode> {
    session
        .flush()
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("instance {instance}: bye\n"))
}

/// The balancer: each TCP connection goes to the next backend in turn and is relayed
/// byte for byte (so a client that opens one connection per request visits every backend).
async fn balance(listener: TcpListener, backends: Vec<SocketAddr>) {
    let next = Arc::new(AtomicUsize::new(0));
    while let Ok((mut inbound, _)) = listener.accept().await {
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(backend).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
