//! What can go wrong with a request, and what that means for the request.

use sessync_proto::ErrorCode;

/// Why a request (or [`Client::connect`](crate::Client::connect)) failed.
///
/// Each variant says what is known about the request's effect on the node. The rule that
/// matters for writes (SET, ROTATE, DESTROY, CREATE): after [`ClientError::Timeout`] or
/// [`ClientError::Disconnected`] the client does not know whether the node applied the
/// request, and it never resends it on its own. Read the session again (or use
/// `if_version`) before deciding to repeat a write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with an error frame. The request was received and refused:
    /// nothing was changed (the codes in the 3xx range say why the session could not be
    /// used, e.g. [`ErrorCode::SessionNotFound`], [`ErrorCode::VersionConflict`]). The one
    /// exception is [`ErrorCode::Indeterminate`], which the node uses for a write whose
    /// outcome it does not know itself.
    #[error("node answered {code}: {message}")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The node's human-readable explanation.
        message: String,
    },
    /// No reply within [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout)
    /// (or, for connecting, [`ClientConfig::connect_timeout`](crate::ClientConfig::connect_timeout)).
    /// The request may or may not have reached the node and may or may not have been
    /// applied; a reply that arrives later is discarded. The connection stays open.
    #[error("no reply from the node in time; the request may or may not have been applied")]
    Timeout,
    /// The connection was lost (or found lost) while the request was queued or in flight.
    /// The request may or may not have been applied. The next request on this client
    /// opens a new connection.
    #[error("connection to the node was lost; the request may or may not have been applied")]
    Disconnected,
    /// Opening a connection failed (connection refused, unreachable, reset during HELLO).
    /// Nothing was sent on the new connection; the request was not applied.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The node sent something this client cannot understand (an undecodable body, a reply
    /// of the wrong kind, a HELLO_OK for another version). The request may or may not have
    /// been applied.
    #[error("protocol violation by the node: {0}")]
    Protocol(String),
    /// The request breaks a limit of this client or of the node (frame size, attribute
    /// count, name, value, token or text length) and was never sent: nothing was applied,
    /// and the connection (shared with other requests) is unaffected.
    #[error("request not sent: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The node's error code, for [`ClientError::Server`]; `None` for local failures.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A copy for a second caller that shares one failed connection attempt. `io::Error`
    /// is not `Clone`, so its kind and message are carried over.
    pub(crate) fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Server { code, message } => ClientError::Server {
                code: *code,
                message: message.clone(),
            },
            ClientError::Timeout => ClientError::Timeout,
            ClientError::Disconnected => ClientError::Disconnected,
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
            ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
            ClientError::InvalidRequest(m) => ClientError::InvalidRequest(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_only_for_server_errors() {
        let e = ClientError::Server {
            code: ErrorCode::VersionConflict,
            message: "x".into(),
        };
        assert_eq!(e.code(), Some(ErrorCode::VersionConflict));
        assert!(e.to_string().contains("VERSION_CONFLICT"));
        assert_eq!(ClientError::Timeout.code(), None);
        assert_eq!(ClientError::Disconnected.code(), None);
        let io = ClientError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert!(
            matches!(io.duplicate(), ClientError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        );
    }
}
