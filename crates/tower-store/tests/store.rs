//! The store under tower-sessions and axum, against in-process sessync nodes over real
//! sockets: two app instances, each with its own node, sharing the user's cookies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use sessync_client::{Client, ClientConfig, ErrorCode};
use sessync_proto::Keyring;
use sessync_server::{NodeConfig, NodeHandle};
use sessync_tower_sessions::{SessyncLayer, SessyncStore};
use tower::ServiceExt;
use tower_sessions::{Session, SessionManagerLayer};

const STEP: Duration = Duration::from_secs(10);

async fn start_node(keys: &Keyring) -> NodeHandle {
    let any = "127.0.0.1:0".parse().unwrap();
    tokio::time::timeout(
        STEP,
        sessync_server::start(NodeConfig::new(any, any, keys.clone())),
    )
    .await
    .unwrap()
    .unwrap()
}

async fn connect(node: &NodeHandle) -> Client {
    Client::connect(node.client_addr(), ClientConfig::default())
        .await
        .unwrap()
}

async fn login(session: Session, Path(user): Path<String>) -> &'static str {
    session.cycle_id().await.unwrap();
    session.insert("user", user).await.unwrap();
    "ok"
}

async fn me(session: Session) -> Result<String, StatusCode> {
    session
        .get::<String>("user")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn visit(session: Session) -> String {
    let n: u64 = session.get("visits").await.unwrap().unwrap_or(0) + 1;
    session.insert("visits", n).await.unwrap();
    n.to_string()
}

async fn logout(session: Session) -> &'static str {
    session.flush().await.unwrap();
    "bye"
}

fn app(client: Client) -> Router {
    Router::new()
        .route("/login/{user}", get(login))
        .route("/me", get(me))
        .route("/visit", get(visit))
        .route("/logout", get(logout))
        .layer(SessionManagerLayer::new(SessyncStore::new(client)).with_secure(false))
        .layer(SessyncLayer::new())
}

/// One user's cookies.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    async fn get(&mut self, app: &Router, uri: &str) -> (StatusCode, String, Vec<String>) {
        let cookie = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = Request::get(uri)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        let res = tokio::time::timeout(STEP, app.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let status = res.status();
        let mut set = Vec::new();
        for v in res.headers().get_all(header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (name, rest) = v.split_once('=').unwrap();
            let value = rest.split(';').next().unwrap_or("");
            set.push(name.to_string());
            if value.is_empty() || v.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), set)
    }

    fn token(&self) -> Option<String> {
        self.0.get("sessync").cloned()
    }
}

#[tokio::test]
async fn login_follows_the_user_across_nodes() {
    let keys = Keyring::single(&[7u8; 32]).unwrap();
    let (na, nb) = (start_node(&keys).await, start_node(&keys).await);
    let (ca, cb) = (connect(&na).await, connect(&nb).await);
    let (a, b) = (app(ca.clone()), app(cb.clone()));
    let mut user = Jar::default();

    assert_eq!(user.get(&a, "/me").await.0, StatusCode::UNAUTHORIZED);
    let (status, _, set) = user.get(&a, "/login/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert!(set.contains(&"sessync".to_string()) && set.contains(&"id".to_string()));
    let at_a = user.token().unwrap();
    let id = user.0.get("id").cloned().unwrap();

    // The next request lands on the other instance: the session is copied to its node and
    // only the sessync cookie changes; tower-sessions' id stays.
    let (status, body, set) = user.get(&b, "/me").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    assert_eq!(set, vec!["sessync".to_string()]);
    let at_b = user.token().unwrap();
    assert_ne!(at_a, at_b);
    assert_eq!(user.0.get("id"), Some(&id));

    // Writes on either side, each seeing the other's.
    assert_eq!(user.get(&a, "/visit").await.1, "1");
    assert_eq!(user.get(&b, "/visit").await.1, "2");
    assert_eq!(user.get(&a, "/visit").await.1, "3");

    // The node's view: one JSON attribute per key, plus the reserved id and expiry.
    let s = ca.get(&user.token().unwrap()).await.unwrap();
    assert_eq!(s.get("user").map(|b| b.as_ref()), Some(&b"\"alice\""[..]));
    assert_eq!(s.get("visits").map(|b| b.as_ref()), Some(&b"3"[..]));
    assert!(s.get("__tower_sessions.id").is_some());

    // Logout ends the session everywhere and removes both cookies.
    let token = user.token().unwrap();
    user.get(&b, "/logout").await;
    assert!(user.token().is_none() && !user.0.contains_key("id"));
    let gone = ca.get(&token).await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::SessionNotFound));
    assert_eq!(user.get(&a, "/me").await.0, StatusCode::UNAUTHORIZED);

    na.shutdown(STEP).await;
    nb.shutdown(STEP).await;
}

#[tokio::test]
async fn login_cycles_the_id_and_kills_the_old_token() {
    let keys = Keyring::single(&[8u8; 32]).unwrap();
    let node = start_node(&keys).await;
    let client = connect(&node).await;
    let a = app(client.clone());
    let mut user = Jar::default();
    user.get(&a, "/visit").await;
    let (before_id, before_token) = (user.0.get("id").cloned(), user.token().unwrap());
    user.get(&a, "/login/bob").await;
    assert_ne!(user.0.get("id").cloned(), before_id);
    assert_ne!(user.token().unwrap(), before_token);
    let err = client.get(&before_token).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionNotFound));
    // The data survived the new id.
    assert_eq!(user.get(&a, "/visit").await.1, "2");
    node.shutdown(STEP).await;
}

#[tokio::test]
async fn mismatched_or_forged_cookies_start_fresh() {
    let keys = Keyring::single(&[9u8; 32]).unwrap();
    let node = start_node(&keys).await;
    let a = app(connect(&node).await);
    let mut alice = Jar::default();
    alice.get(&a, "/login/alice").await;
    let mut mallory = Jar::default();
    mallory.get(&a, "/login/mallory").await;
    // Mallory pairs her id cookie with Alice's token (or the reverse): not served.
    let mut mixed = Jar::default();
    mixed.0.insert("id".into(), mallory.0["id"].clone());
    mixed.0.insert("sessync".into(), alice.token().unwrap());
    assert_eq!(mixed.get(&a, "/me").await.0, StatusCode::UNAUTHORIZED);
    let mut forged = Jar::default();
    forged.0.insert("id".into(), alice.0["id"].clone());
    forged.0.insert(
        "sessync".into(),
        "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B".into(),
    );
    assert_eq!(forged.get(&a, "/me").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(alice.get(&a, "/me").await.1, "alice");
    node.shutdown(STEP).await;
}

/// Loads the session, then lets "another request" write `visits` (a new value) through the
/// node before this one saves `key`.
async fn race(
    session: Session,
    Path(key): Path<String>,
    headers: http::HeaderMap,
    axum::extract::State(client): axum::extract::State<Client>,
) -> &'static str {
    let visits: u64 = session.get("visits").await.unwrap().unwrap_or(0);
    let cookies = headers.get(header::COOKIE).unwrap().to_str().unwrap();
    let token = cookies
        .split("; ")
        .find_map(|c| c.strip_prefix("sessync="))
        .unwrap();
    let theirs = (visits + 1000).to_string();
    client.set(token).put("visits", theirs).send().await.unwrap();
    session.insert(&key, 1).await.unwrap();
    "saved?"
}

#[tokio::test]
async fn concurrent_writes_merge_or_fail_loudly() {
    let keys = Keyring::single(&[11u8; 32]).unwrap();
    let node = start_node(&keys).await;
    let client = connect(&node).await;
    let a = Router::new()
        .route("/visit", get(visit))
        .route("/race/{key}", get(race))
        .with_state(client.clone())
        .layer(SessionManagerLayer::new(SessyncStore::new(client.clone())).with_secure(false))
        .layer(SessyncLayer::new());
    let mut user = Jar::default();
    user.get(&a, "/visit").await;
    // Another key than the racing writer's: merged, both kept.
    assert_eq!(user.get(&a, "/race/coupons").await.0, StatusCode::OK);
    let s = client.get(&user.token().unwrap()).await.unwrap();
    assert_eq!(s.get("visits").map(|b| b.as_ref()), Some(&b"1001"[..]));
    assert_eq!(s.get("coupons").map(|b| b.as_ref()), Some(&b"1"[..]));
    // The same key: a 500, and the other writer's value stands.
    assert_eq!(
        user.get(&a, "/race/visits").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let s = client.get(&user.token().unwrap()).await.unwrap();
    assert_eq!(s.get("visits").map(|b| b.as_ref()), Some(&b"2001"[..]));
    node.shutdown(STEP).await;
}

#[tokio::test]
async fn store_outside_the_layer_is_an_error_not_a_silent_loss() {
    let keys = Keyring::single(&[10u8; 32]).unwrap();
    let node = start_node(&keys).await;
    let client = connect(&node).await;
    let bare = Router::new()
        .route("/visit", get(visit))
        .layer(SessionManagerLayer::new(SessyncStore::new(client)).with_secure(false));
    let mut user = Jar::default();
    assert_eq!(
        user.get(&bare, "/visit").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    node.shutdown(STEP).await;
}
