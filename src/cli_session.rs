//! `sessync session ...`, `sessync stats` and `sessync ping`: a node's client protocol
//! from the shell. Failures are reported by [`crate::failure`].

use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::{Args, Subcommand};
use sessync_client::{Attributes, Bytes, Client, ClientConfig, ClientError, Session, TlsOptions, Write};

use crate::failure::Failure;

/// Where and how to connect.
#[derive(Args, Debug)]
pub(crate) struct Connection {
    /// The node's client address: host:port, the host a name or an IP address (resolved
    /// when connecting).
    #[arg(long, global = true, env = "SESSYNC_NODE", default_value = "127.0.0.1:7700")]
    node: String,
    /// The node's client password.
    #[arg(long, global = true, env = "SESSYNC_PASSWORD")]
    password: Option<String>,
    /// Print one JSON object instead of text (errors too).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Connect over TLS, trusting this CA (PEM) for the node's certificate.
    #[arg(long, global = true, env = "SESSYNC_NODE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present, for a node with --client-tls-ca.
    #[arg(long, global = true, env = "SESSYNC_NODE_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "SESSYNC_NODE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The name the node's certificate must carry (default: the --node IP address).
    #[arg(
        long,
        global = true,
        env = "SESSYNC_NODE_TLS_SERVER_NAME",
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,
}

/// `sessync session`.
#[derive(Args, Debug)]
pub(crate) struct SessionArgs {
    #[command(subcommand)]
    command: SessionCommand,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create a session with `key=value` attributes; prints its token.
    Create {
        /// Initial attributes, `key=value`.
        attrs: Vec<String>,
        /// Idle time to live (e.g. 30m); the node's default if absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        idle_ttl: Option<std::time::Duration>,
        /// Absolute lifetime (e.g. 12h); the node's default if absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_lifetime: Option<std::time::Duration>,
    },
    /// Read a session: every attribute, or the named ones.
    Get {
        /// The session's token.
        token: String,
        /// Attribute names; all when none are given.
        keys: Vec<String>,
    },
    /// Put and delete attributes in one atomic change.
    Set {
        /// The session's token.
        token: String,
        /// Attributes to put, `key=value`.
        attrs: Vec<String>,
        /// Attribute to delete (repeatable).
        #[arg(long = "delete")]
        deletes: Vec<String>,
        /// Apply only if the session is at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Push the idle deadline forward.
    Touch {
        /// The session's token.
        token: String,
    },
    /// Give the session a new id and token; the old token stops working.
    Rotate {
        /// The session's token.
        token: String,
    },
    /// End the session.
    Destroy {
        /// The session's token.
        token: String,
    },
}

/// `sessync stats`.
#[derive(Args, Debug)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
}

/// `sessync drain`.
#[derive(Args, Debug)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// How long to wait for the node to finish its drain (set it above the node's
    /// --drain-timeout).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) wait: std::time::Duration,
}

/// `sessync ping`.
#[derive(Args, Debug)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
}

impl SessionArgs {
    /// Whether `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.conn.json
    }
}

fn parse_pairs(pairs: &[String]) -> Result<Attributes, Failure> {
    let mut attrs = Attributes::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(Failure::usage(format!("expected key=value, got {p:?}")));
        };
        attrs.insert(k.to_string(), Bytes::copy_from_slice(v.as_bytes()));
    }
    Ok(attrs)
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))
}

async fn connect(conn: &Connection) -> Result<Client, Failure> {
    open(conn).await.map_err(|e| Failure::connecting(&conn.node, e))
}

async fn open(conn: &Connection) -> Result<Client, ClientError> {
    open_with(conn, None).await
}

/// [`open`], with a request timeout other than the SDK's default when given.
async fn open_with(
    conn: &Connection,
    request_timeout: Option<std::time::Duration>,
) -> Result<Client, ClientError> {
    let tls = match &conn.tls_ca {
        None => None,
        Some(ca) => {
            let ca = read(ca)?;
            let cert = match (&conn.tls_cert, &conn.tls_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            let name = conn
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host_of(&conn.node));
            let cert = cert.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
            Some(TlsOptions::from_pem(&ca, cert, &name)?)
        }
    };
    let defaults = ClientConfig::default();
    let config = ClientConfig {
        request_timeout: request_timeout.unwrap_or(defaults.request_timeout),
        password: conn.password.clone(),
        client_name: concat!("sessync-cli/", env!("CARGO_PKG_VERSION")).into(),
        tls,
        ..defaults
    };
    Client::connect_host(&conn.node, config).await
}

/// The host part of `host:port` (an IP address without its brackets, or a name).
fn host_of(node: &str) -> String {
    match node.parse::<SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => node.rsplit_once(':').map_or(node, |(h, _)| h).to_string(),
    }
}

/// Connects as the other commands do (`sessync members` uses it).
pub(crate) async fn connect_with(conn: &Connection) -> Result<Client, Failure> {
    connect(conn).await
}

/// A value as JSON: the UTF-8 string where valid, else `{"base64": "..."}`.
fn json_value(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "base64": STANDARD.encode(v) }),
    }
}

fn print_session(s: &Session, json: bool, always_token: bool) {
    if json {
        let attrs: serde_json::Map<String, serde_json::Value> = s
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect();
        let out = serde_json::json!({
            "token": s.token,
            "token_changed": s.token_changed,
            "version": s.meta.version,
            "expires_at_ms": s.meta.expires_at_ms(),
            "attributes": attrs,
        });
        println!("{out}");
        return;
    }
    if always_token {
        println!("{}", s.token);
        return;
    }
    if s.token_changed {
        println!("token {}", s.token);
    }
    println!("version {}", s.meta.version);
    for (k, v) in &s.attributes {
        match std::str::from_utf8(v) {
            Ok(text) => println!("{k}={text}"),
            Err(_) => println!("{k}=base64:{}", STANDARD.encode(v)),
        }
    }
}

/// Runs `sessync session ...`.
pub(crate) async fn run_session(args: SessionArgs) -> Result<(), Failure> {
    let json = args.conn.json;
    // Usage errors first: nothing is sent to a node for a malformed command.
    if let SessionCommand::Create { attrs, .. } | SessionCommand::Set { attrs, .. } = &args.command {
        parse_pairs(attrs)?;
    }
    let client = connect(&args.conn).await?;
    let result = match args.command {
        SessionCommand::Create {
            attrs,
            idle_ttl,
            max_lifetime,
        } => {
            let opts = sessync_client::CreateOptions {
                idle_ttl,
                max_lifetime,
            };
            client
                .create_with(parse_pairs(&attrs)?, opts)
                .await
                .map(|s| print_session(&s, json, true))
        }
        SessionCommand::Get { token, keys } => {
            let r = if keys.is_empty() {
                client.get(&token).await
            } else {
                let names: Vec<&str> = keys.iter().map(String::as_str).collect();
                client.get_only(&token, &names).await
            };
            r.map(|s| print_session(&s, json, false))
        }
        SessionCommand::Set {
            token,
            attrs,
            deletes,
            if_version,
        } => {
            let mut w = Write::new();
            for (k, v) in parse_pairs(&attrs)? {
                w = w.put(k, v);
            }
            for d in deletes {
                w = w.delete(d);
            }
            if let Some(v) = if_version {
                w = w.if_version(v);
            }
            client
                .write(&token, w)
                .await
                .map(|s| print_session(&s, json, false))
        }
        SessionCommand::Touch { token } => client.touch(&token).await.map(|s| print_session(&s, json, false)),
        SessionCommand::Rotate { token } => {
            client.rotate(&token).await.map(|s| print_session(&s, json, true))
        }
        SessionCommand::Destroy { token } => client.destroy(&token).await.map(|_| {
            if json {
                println!("{}", serde_json::json!({ "destroyed": true }));
            }
        }),
    };
    result.map_err(Failure::node)
}

/// Runs `sessync stats`: the counters, then what the node says about itself (uptime,
/// version, node id, addresses, peer links: STATS names of the form `KEY=VALUE`).
pub(crate) async fn run_stats(args: StatsArgs) -> Result<(), Failure> {
    let json = args.conn.json;
    let counters = connect(&args.conn).await?.stats().await.map_err(Failure::node)?;
    let mut facts: Vec<(String, String)> = Vec::new();
    let mut links: Vec<(String, bool, Option<u64>)> = Vec::new();
    let mut numbers: Vec<(String, u64)> = Vec::new();
    for (k, v) in &counters {
        match k.split_once('=') {
            Some(("peer_link", addr)) => {
                let rtt = counters
                    .iter()
                    .find(|(n, _)| n.strip_prefix("peer_rtt_us=") == Some(addr))
                    .map(|(_, us)| *us);
                links.push((addr.to_string(), *v == 1, rtt));
            }
            Some(("peer_rtt_us", _)) => {}
            Some((key, value)) => facts.push((key.to_string(), value.to_string())),
            None => numbers.push((k.clone(), *v)),
        }
    }
    if json {
        let mut map: serde_json::Map<String, serde_json::Value> = numbers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        for (k, v) in facts {
            map.insert(k, serde_json::Value::from(v));
        }
        let links: Vec<serde_json::Value> = links
            .into_iter()
            .map(|(peer, up, rtt)| serde_json::json!({ "peer": peer, "up": up, "rtt_us": rtt }))
            .collect();
        map.insert("peer_links".into(), serde_json::Value::from(links));
        println!("{}", serde_json::Value::Object(map));
    } else {
        for (k, v) in facts {
            println!("{k} {v}");
        }
        if let Some((_, ms)) = numbers.iter().find(|(k, _)| k == "uptime_ms") {
            println!(
                "uptime {}",
                humantime::format_duration(std::time::Duration::from_secs(ms / 1000))
            );
        }
        for (peer, up, rtt) in links {
            let state = if up { "up" } else { "down" };
            match rtt {
                Some(us) => println!("peer_link {peer} {state} rtt {:.2}ms", us as f64 / 1000.0),
                None => println!("peer_link {peer} {state}"),
            }
        }
        for (k, v) in numbers {
            println!("{k} {v}");
        }
    }
    Ok(())
}

/// Runs `sessync ping`: connects, sends PING, exits 0 when the node answers (for exec
/// probes and scripts).
pub(crate) async fn run_ping(args: PingArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let client = connect(&args.conn).await?;
    client.ping().await.map_err(Failure::node)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if args.conn.json {
        println!(
            "{}",
            serde_json::json!({ "pong": true, "node": args.conn.node, "ms": ms })
        );
    } else {
        println!("PONG from {} in {ms:.2} ms", args.conn.node);
    }
    Ok(())
}

/// Runs `sessync drain`: asks the node to hand everything over and leave (DRAIN), and
/// waits for its answer: exit 0 when everything was handed over, 2 (SHUTTING_DOWN, with
/// what was left) when the drain could not finish within the node's --drain-timeout.
pub(crate) async fn run_drain(args: DrainArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let client = open_with(&args.conn, Some(args.wait))
        .await
        .map_err(|e| Failure::connecting(&args.conn.node, e))?;
    client.drain().await.map_err(Failure::node)?;
    let secs = started.elapsed().as_secs_f64();
    if args.conn.json {
        println!(
            "{}",
            serde_json::json!({ "drained": true, "node": args.conn.node.to_string(), "seconds": secs })
        );
    } else {
        println!(
            "{} drained in {secs:.2} s: every session and backup copy is with another member",
            args.conn.node
        );
    }
    Ok(())
}
