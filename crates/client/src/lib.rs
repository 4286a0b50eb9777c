//! The async Rust SDK for sessync: talk to your local node over its client port.
//!
//! ```no_run
//! use sessync_client::{Attributes, Client, ClientConfig, ErrorCode};
//!
//! # async fn example() -> Result<(), sessync_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7400".parse().unwrap(), ClientConfig::default()).await?;
//!
//! // Login: make a session, keep its token in the user's cookie.
//! let mut attrs = Attributes::new();
//! attrs.insert("user".into(), "alice".into());
//! let session = client.create(attrs).await?;
//! let mut cookie = session.token;
//!
//! // Later requests, on any node: read, write, and always store the token you get back.
//! let s = client.get(&cookie).await?;
//! cookie = s.token.clone();
//! let s = client.set(&cookie).put("cart", "3 items").if_version(s.version()).send().await?;
//! cookie = s.token;
//!
//! match client.get(&cookie).await {
//!     Ok(s) => println!("user is {:?}", s.get("user")),
//!     Err(e) if e.code() == Some(ErrorCode::SessionNotFound) => println!("logged out or expired"),
//!     Err(e) => return Err(e),
//! }
//! client.destroy(&cookie).await?;
//! # Ok(()) }
//! ```
//!
//! # Tokens
//! Treat a token as an opaque string. Every call that takes one returns a [`Session`]
//! whose [`Session::token`] you store in its place; the node replaces tokens after CREATE
//! and ROTATE and when the session moves to another node ([`Session::token_changed`]).
//!
//! # One connection, many requests
//! A [`Client`] holds a single TCP connection and is cloned freely into every task that
//! needs it. Requests from all clones are pipelined over that connection: a writer task
//! sends whatever has been queued since its last write in one `write` call, a reader task
//! routes each reply to its caller by request id, and replies may come in any order.
//!
//! There is deliberately no connection pool. The protocol tags every request with an id
//! and the node answers pipelined requests in batches (one read and one write per batch on
//! its side too), so one busy connection carries more requests per second than several
//! half-idle ones, and costs the node one connection slot per application process rather
//! than one per pooled socket. A pool would only help if a slow request blocked the ones
//! behind it, which request ids rule out; a caller that still wants more connections can
//! create several `Client`s.
//!
//! # Failures
//! Every call is bounded by [`ClientConfig::request_timeout`] and opening a connection by
//! [`ClientConfig::connect_timeout`]. [`ClientError`] says, per variant, what is known
//! about the request's effect: in particular a write that fails with
//! [`ClientError::Timeout`] or [`ClientError::Disconnected`] may or may not have been
//! applied, and the client never resends it by itself. After the connection is lost, the
//! next call reconnects transparently (once per call). Use `if_version`
//! (compare-and-set) to make a retried write safe.

mod client;
mod config;
mod conn;
mod error;
mod session;
mod tls;

pub use bytes::Bytes;
pub use client::{Client, SetRequest};
pub use config::ClientConfig;
pub use error::ClientError;
pub use session::{CreateOptions, Session, Write};
pub use sessync_proto::{Attributes, ErrorCode, Limits, MemberInfo, MemberState, SessionMeta};
pub use tls::TlsOptions;
