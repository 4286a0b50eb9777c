//! The stable error code table and the decoder's error types.

use std::fmt;

/// A stable numeric error code carried in ERROR frames.
///
/// Codes are grouped by hundreds: 1xx the frame or message was bad (the connection is
/// closed after the error frame), 2xx authentication, 3xx the session or token, 4xx the
/// cluster, 5xx the node itself. Numbers never change meaning; new codes get new numbers.
/// A receiver that meets a code it does not know treats it by its hundred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or message body does not follow protocol.md. Connection closed.
    MalformedFrame,
    /// The CRC32 over header and body does not match. Connection closed.
    BadCrc,
    /// The length prefix exceeds the receiver's maximum frame size. Connection closed.
    FrameTooLarge,
    /// The header's protocol version is not one the receiver speaks. Connection closed.
    UnsupportedVersion,
    /// The opcode is unknown, or not valid on this port or in this direction. Connection closed.
    UnknownOpcode,
    /// A count, string or value inside the message exceeds a configured limit.
    LimitExceeded,
    /// The message is well formed but its fields contradict each other (e.g. a SET that
    /// puts and deletes the same attribute). Nothing changed; the connection stays open.
    InvalidRequest,
    /// The node requires HELLO (with a password) before any other request.
    AuthRequired,
    /// Wrong password, or a peer handshake proof that does not verify. Connection closed.
    AuthFailed,
    /// The token does not decode or its MAC does not verify; nothing in it was used.
    InvalidToken,
    /// No live session under that id: never existed, expired, destroyed or rotated.
    SessionNotFound,
    /// A conditional write's expected version is not the session's version; nothing changed.
    VersionConflict,
    /// The node holding the session could not be reached within the peer timeout.
    OwnerUnreachable,
    /// MOVED answers were followed more times than the hop limit allows.
    TooManyHops,
    /// The write may or may not have been applied (the owner died mid-write).
    Indeterminate,
    /// A peer reports the session is now owned elsewhere (peer traffic only).
    Moved,
    /// The write needs backup copies and too few backup nodes can be reached; nothing
    /// changed.
    BackupUnavailable,
    /// The node is at its session or memory limit and does not evict.
    Capacity,
    /// The node is shutting down and takes no new requests.
    ShuttingDown,
    /// A bug or an unexpected condition in the node; the request may be retried.
    Internal,
    /// The connection sent nothing (or no complete frame) in time and is closed.
    Timeout,
    /// The node has too many connections; this one is closed.
    TooManyConnections,
    /// A code this library does not know, kept as received.
    Other(u16),
}

impl ErrorCode {
    /// Every code this library knows, in table order (used by protocol.md's test).
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::MalformedFrame,
        ErrorCode::BadCrc,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOpcode,
        ErrorCode::LimitExceeded,
        ErrorCode::InvalidRequest,
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::InvalidToken,
        ErrorCode::SessionNotFound,
        ErrorCode::VersionConflict,
        ErrorCode::OwnerUnreachable,
        ErrorCode::TooManyHops,
        ErrorCode::Indeterminate,
        ErrorCode::Moved,
        ErrorCode::BackupUnavailable,
        ErrorCode::Capacity,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::Timeout,
        ErrorCode::TooManyConnections,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame => 100,
            ErrorCode::BadCrc => 101,
            ErrorCode::FrameTooLarge => 102,
            ErrorCode::UnsupportedVersion => 103,
            ErrorCode::UnknownOpcode => 104,
            ErrorCode::LimitExceeded => 105,
            ErrorCode::InvalidRequest => 106,
            ErrorCode::AuthRequired => 200,
            ErrorCode::AuthFailed => 201,
            ErrorCode::InvalidToken => 300,
            ErrorCode::SessionNotFound => 301,
            ErrorCode::VersionConflict => 302,
            ErrorCode::OwnerUnreachable => 400,
            ErrorCode::TooManyHops => 401,
            ErrorCode::Indeterminate => 402,
            ErrorCode::Moved => 403,
            ErrorCode::BackupUnavailable => 404,
            ErrorCode::Capacity => 500,
            ErrorCode::ShuttingDown => 501,
            ErrorCode::Internal => 502,
            ErrorCode::Timeout => 503,
            ErrorCode::TooManyConnections => 504,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a number read from the wire; unknown numbers are kept as [`ErrorCode::Other`].
    pub fn from_u16(n: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_u16() == n)
            .unwrap_or(ErrorCode::Other(n))
    }

    /// The stable upper-case name used in logs, the CLI and SDK exceptions.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::BadCrc => "BAD_CRC",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownOpcode => "UNKNOWN_OPCODE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::AuthRequired => "AUTH_REQUIRED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::InvalidToken => "INVALID_TOKEN",
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::VersionConflict => "VERSION_CONFLICT",
            ErrorCode::OwnerUnreachable => "OWNER_UNREACHABLE",
            ErrorCode::TooManyHops => "TOO_MANY_HOPS",
            ErrorCode::Indeterminate => "INDETERMINATE",
            ErrorCode::BackupUnavailable => "BACKUP_UNAVAILABLE",
            ErrorCode::Moved => "MOVED",
            ErrorCode::Capacity => "CAPACITY",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::Other(_) => "UNKNOWN_ERROR",
        }
    }

    /// Whether the sender closes the connection after an error frame with this code.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame
                | ErrorCode::BadCrc
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion
                | ErrorCode::UnknownOpcode
                | ErrorCode::AuthFailed
                | ErrorCode::Timeout
                | ErrorCode::TooManyConnections
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Why a message body could not be decoded. The frame around it was intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body ended in the middle of a field.
    #[error("message body ends in the middle of a field")]
    UnexpectedEnd,
    /// A length or count is larger than the configured limit; nothing was allocated for it.
    #[error("{what} has length {len}, over the limit of {max}")]
    LimitExceeded {
        /// Which field.
        what: &'static str,
        /// The length or count read from the wire.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The opcode is not one this side accepts.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// A field holds a value the protocol does not allow.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// The error code a node answers this decode failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            DecodeError::UnexpectedEnd | DecodeError::Invalid(_) => ErrorCode::MalformedFrame,
        }
    }
}

/// Why bytes on a connection are not a valid frame. Every variant is fatal for the
/// connection: the receiver answers with an ERROR frame of [`FrameError::code`] and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is over the receiver's maximum; the body was never buffered.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length prefix read.
        len: u64,
        /// The receiver's configured maximum.
        max: u32,
    },
    /// The length prefix is smaller than a header plus CRC.
    #[error("frame length {0} is shorter than the 16-byte minimum")]
    TooShort(u32),
    /// The CRC32 over header and body does not match the trailer.
    #[error("CRC32 mismatch: frame says {expected:08x}, computed {actual:08x}")]
    BadCrc {
        /// The CRC in the frame trailer.
        expected: u32,
        /// The CRC computed over header and body.
        actual: u32,
    },
    /// The header's protocol version is not supported.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Reserved header flags were set.
    #[error("reserved flags 0x{0:04x} are set")]
    ReservedFlags(u16),
}

impl FrameError {
    /// The error code a node answers this framing failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::BadCrc { .. } => ErrorCode::BadCrc,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::TooShort(_) | FrameError::ReservedFlags(_) => ErrorCode::MalformedFrame,
        }
    }
}
