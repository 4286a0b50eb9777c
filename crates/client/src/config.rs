//! Client settings.

use std::time::Duration;

use sessync_proto::Limits;

use crate::TlsOptions;

/// How a [`Client`](crate::Client) connects and how long it waits. [`Default`] gives a
/// client for a password-less node with the protocol's default limits.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long one request may take, from the call until its reply: waiting for room in
    /// the send queue, the write, the node's work and the reply (default 5 s). Past it
    /// the call fails with [`ClientError::Timeout`](crate::ClientError::Timeout).
    pub request_timeout: Duration,
    /// How long opening a connection may take: TCP connect, the TLS handshake, and the HELLO exchange
    /// (default 2 s). Applies to [`Client::connect`](crate::Client::connect) and to every
    /// transparent reconnect.
    pub connect_timeout: Duration,
    /// The node's client password, sent in HELLO; `None` for a node without one.
    pub password: Option<String>,
    /// Free text the node may log, e.g. `"checkout-service/1.4"`.
    pub client_name: String,
    /// Largest frame accepted from the node, checked on the length prefix before the body
    /// is buffered; a longer one ends the connection. Requests are also held to this and
    /// to the maximum the node announces in HELLO_OK, so an oversized request is refused
    /// locally instead of making the node close the shared connection.
    pub max_frame_len: u32,
    /// Limits for decoding replies and for checking requests before they are sent
    /// (attribute counts, name, value, token and text lengths). Its `max_frame_len` field
    /// is not used; [`ClientConfig::max_frame_len`] is.
    pub limits: Limits,
    /// TLS to the node's client port (for a node started with `--client-tls-cert`);
    /// `None` (the default) for plain TCP, which is meant for loopback.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            password: None,
            client_name: concat!("sessync-client-rust/", env!("CARGO_PKG_VERSION")).to_string(),
            max_frame_len: Limits::DEFAULT.max_frame_len,
            limits: Limits::DEFAULT,
            tls: None,
        }
    }
}
