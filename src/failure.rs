//! How the CLI fails: one message (or, under `--json`, one JSON object on stdout) and an
//! exit status from sysexits.h.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | `node` or `cluster` could not start or failed (a port in use, a bad secret file) |
//! | 2 | the node answered with an error (its stable name is printed) |
//! | 64 | usage: unknown flag, missing argument, `key=value` expected (EX_USAGE) |
//! | 69 | no sessync node answers at that address (EX_UNAVAILABLE) |

use std::process::ExitCode;

use sessync_client::{ClientError, ErrorCode};

/// The command was used wrongly.
pub(crate) const EX_USAGE: u8 = 64;
/// No node could be talked to.
pub(crate) const EX_UNAVAILABLE: u8 = 69;
/// The node answered with an error.
pub(crate) const EX_NODE_ERROR: u8 = 2;

/// One failure, ready to be reported.
#[derive(Debug)]
pub(crate) struct Failure {
    /// A stable name: the node's error name, `USAGE`, `CANNOT_CONNECT`, `NOT_A_CLIENT_PORT`...
    pub(crate) name: String,
    /// The node's numeric error code, for node errors.
    pub(crate) code: Option<u16>,
    /// What happened, in words.
    pub(crate) message: String,
    /// What to do about it, when we can tell.
    pub(crate) hint: Option<String>,
    /// The exit status.
    pub(crate) exit: u8,
}

impl Failure {
    /// A usage error (exit 64).
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            name: "USAGE".into(),
            code: None,
            message: message.into(),
            hint: None,
            exit: EX_USAGE,
        }
    }

    /// A failure to open a connection to `node` (and pass HELLO).
    pub(crate) fn connecting(node: &str, e: ClientError) -> Failure {
        let unavailable = |name: &str, message: String, hint: Option<&str>| Failure {
            name: name.into(),
            code: None,
            message,
            hint: hint.map(str::to_string),
            exit: EX_UNAVAILABLE,
        };
        match e {
            // The peer port answers anything that is not its handshake like this.
            ClientError::Server { code: ErrorCode::AuthFailed, message } if message.contains("peer port") => {
                unavailable(
                    "NOT_A_CLIENT_PORT",
                    format!("client port {node}: the node answered {message}"),
                    Some("this looks like a peer port: use the node's client port (its --client address, 7700 by default)"),
                )
            }
            e @ ClientError::Server { .. } => Failure::node(e),
            ClientError::Io(io) => unavailable(
                "CANNOT_CONNECT",
                format!("client port {node}: {}", io_words(&io)),
                Some("is a sessync node running there? (`sessync node`, or `sessync cluster` for a trial)"),
            ),
            ClientError::Protocol(m) => unavailable(
                "NOT_A_SESSYNC_NODE",
                format!("client port {node}: {m}"),
                Some("this does not look like a sessync node: something else answers at that address"),
            ),
            ClientError::Timeout | ClientError::Disconnected => unavailable(
                "CANNOT_CONNECT",
                format!("client port {node}: no answer to HELLO in time"),
                Some("this does not look like a sessync node's client port, or the node is overloaded"),
            ),
            other => unavailable("CANNOT_CONNECT", format!("client port {node}: {other}"), None),
        }
    }

    /// A request that failed after the connection was open.
    pub(crate) fn node(e: ClientError) -> Failure {
        match e.code() {
            Some(c) => Failure {
                name: c.name().to_string(),
                code: Some(c.as_u16()),
                message: e.to_string(),
                hint: match c {
                    ErrorCode::AuthRequired => Some("give the node's password with --password".into()),
                    ErrorCode::AuthFailed => Some(
                        "the password does not match the node's --password (or the node has none)".into(),
                    ),
                    _ => None,
                },
                exit: EX_NODE_ERROR,
            },
            None => Failure {
                name: match e {
                    ClientError::Timeout => "TIMEOUT",
                    ClientError::Disconnected => "DISCONNECTED",
                    ClientError::InvalidRequest(_) => "INVALID_REQUEST",
                    _ => "CLIENT_ERROR",
                }
                .into(),
                code: None,
                message: e.to_string(),
                hint: None,
                exit: if matches!(e, ClientError::InvalidRequest(_)) {
                    EX_USAGE
                } else {
                    EX_UNAVAILABLE
                },
            },
        }
    }

    /// Prints the failure (stderr as text, or stdout as one JSON object) and gives the
    /// exit status.
    pub(crate) fn report(&self, json: bool) -> ExitCode {
        if json {
            let mut o = serde_json::json!({
                "error": self.name,
                "code": self.code,
                "message": self.message,
                "exit": self.exit,
            });
            if let Some(h) = &self.hint {
                o["hint"] = serde_json::Value::from(h.as_str());
            }
            println!("{o}");
        } else {
            eprintln!("error: {}: {}", self.name, self.message);
            if let Some(h) = &self.hint {
                eprintln!("hint: {h}");
            }
        }
        ExitCode::from(self.exit)
    }
}

/// An I/O error in lower-case words, without the OS error number.
pub(crate) fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "timed out".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}
