//! Seeds: where a node looks for the cluster. `host:port` or `dns:NAME:PORT`, resolved to
//! every address the name has, again and again (the Kubernetes headless-Service pattern:
//! one DNS name whose A/AAAA records are the live pods).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// One seed, as given to `--join` (or `--peers`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seed {
    /// `host:port`: an IP address, or a host name resolved to all its addresses.
    Host {
        /// The IP address or host name.
        host: String,
        /// The peer port.
        port: u16,
    },
    /// `dns:NAME:PORT`: every A and AAAA record of NAME, at PORT.
    Dns {
        /// The DNS name.
        name: String,
        /// The peer port.
        port: u16,
    },
}

/// Why a seed could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// No `:PORT` at the end.
    #[error("seed {0:?}: expected host:port or dns:NAME:PORT")]
    Form(String),
    /// The port is not a number from 1 to 65535.
    #[error("seed {0:?}: the port must be a number from 1 to 65535")]
    Port(String),
}

impl Seed {
    /// Parses `host:port`, `[v6]:port` or `dns:NAME:PORT`.
    pub fn parse(s: &str) -> Result<Seed, SeedError> {
        let s = s.trim();
        let (dns, rest) = match s.strip_prefix("dns:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| SeedError::Form(s.to_string()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| SeedError::Port(s.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(SeedError::Form(s.to_string()));
        }
        let host = host.to_string();
        Ok(if dns {
            Seed::Dns { name: host, port }
        } else {
            Seed::Host { host, port }
        })
    }

    /// Every address the seed stands for now (empty when the name resolves to nothing).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let (host, port) = match self {
            Seed::Host { host, port } | Seed::Dns { name: host, port } => (host.as_str(), *port),
        };
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut v: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}

impl std::fmt::Display for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (prefix, host, port) = match self {
            Seed::Host { host, port } => ("", host, port),
            Seed::Dns { name, port } => ("dns:", name, port),
        };
        if host.contains(':') {
            write!(f, "{prefix}[{host}]:{port}")
        } else {
            write!(f, "{prefix}{host}:{port}")
        }
    }
}

/// How long one resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves every seed now and then every `every`, publishing the union of their addresses.
/// A seed that fails or resolves to nothing is logged (at WARN the first time and when it
/// changes, at DEBUG after) and tried again; never fatal. Runs in its own task so that a slow
/// resolver never delays the failure detector.
pub(crate) async fn resolve_loop(
    seeds: Vec<Seed>,
    every: Duration,
    out: watch::Sender<Vec<SocketAddr>>,
    mut shutdown: Shutdown,
) {
    let mut failing: Vec<Option<String>> = vec![None; seeds.len()];
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let mut all = Vec::new();
        for (seed, failed) in seeds.iter().zip(failing.iter_mut()) {
            let why = match tokio::time::timeout(RESOLVE_TIMEOUT, seed.resolve()).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => {
                    all.extend(addrs);
                    None
                }
                Ok(Ok(_)) => Some("resolves to no address".to_string()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {RESOLVE_TIMEOUT:?}")),
            };
            match (&why, failed.as_ref()) {
                (Some(w), prev) if prev != Some(w) => {
                    tracing::warn!("membership: seed {seed}: {w} (trying again every {every:?})")
                }
                (Some(w), _) => tracing::debug!("membership: seed {seed}: {w}"),
                (None, Some(_)) => tracing::info!("membership: seed {seed} resolves again"),
                (None, None) => {}
            }
            *failed = why;
        }
        all.sort();
        all.dedup();
        out.send_if_modified(|v| {
            if *v == all {
                false
            } else {
                *v = all;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            Seed::parse("10.0.0.1:7800"),
            Ok(Seed::Host {
                host: "10.0.0.1".into(),
                port: 7800
            })
        );
        assert_eq!(
            Seed::parse("[fd00::1]:7800"),
            Ok(Seed::Host {
                host: "fd00::1".into(),
                port: 7800
            })
        );
        assert_eq!(
            Seed::parse("dns:sessync.default.svc.cluster.local:7800"),
            Ok(Seed::Dns {
                name: "sessync.default.svc.cluster.local".into(),
                port: 7800
            })
        );
        assert_eq!(
            Seed::parse("node-1:7800").map(|s| s.to_string()),
            Ok("node-1:7800".into())
        );
        assert_eq!(
            Seed::parse("[fd00::1]:7800").map(|s| s.to_string()),
            Ok("[fd00::1]:7800".into())
        );
        assert!(matches!(Seed::parse("nohost"), Err(SeedError::Form(_))));
        assert!(matches!(Seed::parse("dns::7800"), Err(SeedError::Form(_))));
        assert!(matches!(Seed::parse("a:0"), Err(SeedError::Port(_))));
        assert!(matches!(Seed::parse("a:99999"), Err(SeedError::Port(_))));
        assert!(matches!(Seed::parse("dns:a:b"), Err(SeedError::Port(_))));
    }

    #[tokio::test]
    async fn dns_seed_resolves_localhost() {
        let seed = Seed::parse("dns:localhost:7800").unwrap_or_else(|e| panic!("{e}"));
        let addrs = seed.resolve().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            addrs.iter().all(|a| a.port() == 7800 && a.ip().is_loopback()),
            "{addrs:?}"
        );
        assert!(
            addrs.iter().any(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn a_seed_that_resolves_to_nothing_is_retried_not_fatal() {
        let seeds = vec![
            Seed::parse("dns:no-such-host.invalid:7800").unwrap_or_else(|e| panic!("{e}")),
            Seed::parse("127.0.0.1:7801").unwrap_or_else(|e| panic!("{e}")),
        ];
        let (tx, mut rx) = watch::channel(Vec::new());
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(resolve_loop(seeds, Duration::from_millis(100), tx, shutdown));
        let want = vec!["127.0.0.1:7801".parse().unwrap_or_else(|_| unreachable!())];
        let got = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|v| *v == want)).await;
        assert!(matches!(got, Ok(Ok(_))), "the good seed was never published");
        let _ = trigger.send(true);
        assert!(tokio::time::timeout(Duration::from_secs(10), task).await.is_ok());
    }
}
