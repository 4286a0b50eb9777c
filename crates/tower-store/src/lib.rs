//! A [`tower-sessions`](https://docs.rs/tower-sessions) [`SessionStore`] backed by sessync:
//! sessions live in the memory of the sessync node beside each app server, and follow the
//! user to whichever server the load balancer picks next.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use sessync_client::{Client, ClientConfig};
//! use sessync_tower_sessions::{SessyncLayer, SessyncStore};
//! use tower_sessions::SessionManagerLayer;
//!
//! # async fn app() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("127.0.0.1:7700".parse()?, ClientConfig::default()).await?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(SessionManagerLayer::new(SessyncStore::new(client)))
//!     // Outside the session layer (axum: the later `.layer`), so the store sees the token.
//!     .layer(SessyncLayer::new());
//! # Ok(()) }
//! ```
//!
//! # Two cookies, and why
//! tower-sessions owns its cookie: its value is the session [`Id`], 128 random bits the
//! framework generates and the store cannot choose or extend. A sessync session is named by
//! a *token* instead: a signed string that also names the node holding the session. The
//! token cannot fit in an `Id` (it carries an address and a MAC), and an `Id` alone cannot
//! find a session on another node (a node reads the owner from the token; there is no
//! cluster-wide directory, by design). A token<->id map kept by each app instance would not
//! help either: the next request lands on another instance, which has never seen the map.
//!
//! So the token travels in a second cookie (`sessync` by default), managed by
//! [`SessyncLayer`]: it reads the cookie into a per-request slot (a task-local) that
//! [`SessyncStore`] uses, and when the response is ready it sends the cookie again if the
//! node handed out a new token, or removes it if the session was deleted. The store keeps
//! tower-sessions' `Id` inside the session (attribute `__tower_sessions.id`) and only
//! serves a session whose stored id equals the id in tower-sessions' cookie: both cookies
//! must belong together.
//!
//! # What "follows the user" means here
//! - The tower-sessions `Id` (its cookie) stays the same for the life of the session,
//!   whichever app instance serves the user, until the application cycles it
//!   (`Session::cycle_id`, at login), which here also ends the old sessync session.
//! - The sessync token (the `sessync` cookie) changes whenever the session moves: the
//!   first request that lands on another instance makes that instance's node copy the
//!   session over ("instant copy"), and the response carries the new token. A request with
//!   a stale token still finds the session (nodes follow their forwarding entries), for as
//!   long as the session lives.
//! - Writes are atomic per request and compare-and-set: see [`SessyncStore`] for the
//!   conflict policy.
//!
//! # Storage format
//! One sessync attribute per key of the session's data, named by the key, holding the
//! value as JSON; the same format as the Python SDK's Flask and Django adapters, so other
//! services can read a key. Two reserved attributes hold the tower-sessions id and expiry
//! (`__tower_sessions.id`, `__tower_sessions.expiry`, Unix seconds); keys starting with
//! `__tower_sessions.` are refused.
//!
//! # Limits
//! The store only works inside [`SessyncLayer`] and on the request's own task: a handler
//! that moves its `Session` into a `tokio::spawn`ed task and loads or saves it there gets a
//! store error (the task-local slot is not inherited).
//!
//! [`SessionStore`]: tower_sessions_core::SessionStore
//! [`Id`]: tower_sessions_core::session::Id

mod format;
mod layer;
mod store;

pub use layer::{SessyncLayer, SessyncService, DEFAULT_COOKIE_NAME};
pub use store::{SessyncStore, MAX_MERGES};
