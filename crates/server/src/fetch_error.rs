//! Why a session could not be brought to this node: what happened to it, as far as the
//! cluster could tell. The COPY state machine (`handover.rs`) and the node's fetch,
//! failover and lookup (`node/`) branch on these; the client gets the error code and
//! message of [`FetchError::code`] and `Display`.

use std::net::SocketAddr;
use std::time::Duration;

use sessync_proto::ErrorCode;

/// What happened to a session a request needed from another node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The node asked has no entry for it: expired, destroyed, never existed, or that
    /// node restarted without it.
    #[error("no such session: {at} does not have it (expired, destroyed or never existed)")]
    NotAt {
        /// The node asked.
        at: SocketAddr,
    },
    /// It reached its deadline while it was handed over (clocks a little apart).
    #[error("no such session: it expired as it was handed over")]
    ExpiredInFlight,
    /// A node holds its tombstone: destroyed or rotated away.
    #[error("no such session: it was destroyed")]
    Destroyed,
    /// This node had it and lost it (a restart), and no backup has it.
    #[error("no such session here (this node lost it) and no backup has it")]
    LostHere,
    /// The forwarding pointers end at this node, which does not have it.
    #[error("no such session: its forwarding path ends here and it is not here")]
    PathEndsHere,
    /// It was handed on more times than the hop limit allows in one fetch.
    #[error("session moved more than the hop limit; last seen at {last}")]
    HopLimit {
        /// The last node it was seen at.
        last: SocketAddr,
    },
    /// Nodes keep taking it from each other (one user's requests sent to several servers
    /// at once), past the peer timeout.
    #[error("{0}")]
    KeepsMoving(String),
    /// The owner did not answer a COPY, asked twice.
    #[error("owner {owner} did not answer in time")]
    Silent {
        /// The node asked.
        owner: SocketAddr,
    },
    /// The owner did not answer within the peer timeout.
    #[error("owner {owner} did not answer within {within:?}")]
    SilentWithin {
        /// The node asked.
        owner: SocketAddr,
        /// The peer timeout.
        within: Duration,
    },
    /// The link to the owner could not be used (connect failed, backing off after a
    /// failure).
    #[error("{0}")]
    Unreachable(String),
    /// A node pointed at `at`, which still had nothing after a few short waits.
    #[error("{at} did not receive the session in time")]
    NotReceived {
        /// The node pointed at.
        at: SocketAddr,
    },
    /// The request waited on another request's fetch of the same session, which ended
    /// without a result.
    #[error("the fetch this request waited on was abandoned")]
    Abandoned,
    /// A lookup among the members could not settle where it is (`why`); a retry may.
    #[error("the session's owner does not have it, and {0}; try again")]
    Unsure(String),
    /// The owner answered with an error of its own.
    #[error("owner {owner} answered: {message}")]
    Refused {
        /// The node asked.
        owner: SocketAddr,
        /// The code the client gets (see [`FetchError::code`]).
        code: ErrorCode,
        /// The owner's message.
        message: String,
    },
    /// A peer broke the protocol (an unexpected reply, a copy with transfer id 0).
    #[error("{0}")]
    Protocol(String),
}

impl FetchError {
    /// The error code the client is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FetchError::NotAt { .. }
            | FetchError::ExpiredInFlight
            | FetchError::Destroyed
            | FetchError::LostHere
            | FetchError::PathEndsHere => ErrorCode::SessionNotFound,
            FetchError::HopLimit { .. } | FetchError::KeepsMoving(_) => ErrorCode::TooManyHops,
            FetchError::Silent { .. }
            | FetchError::SilentWithin { .. }
            | FetchError::Unreachable(_)
            | FetchError::NotReceived { .. }
            | FetchError::Abandoned
            | FetchError::Unsure(_) => ErrorCode::OwnerUnreachable,
            FetchError::Refused { code, .. } => *code,
            FetchError::Protocol(_) => ErrorCode::Internal,
        }
    }

    /// Whether the session was not found where it was looked for (it may be elsewhere:
    /// a failover or a lookup follows).
    pub fn not_found(&self) -> bool {
        self.code() == ErrorCode::SessionNotFound
    }

    /// Whether the node that should have it could not be reached.
    pub fn unreachable(&self) -> bool {
        self.code() == ErrorCode::OwnerUnreachable
    }

    /// Whether the session moved more often than one fetch follows.
    pub fn too_many_hops(&self) -> bool {
        self.code() == ErrorCode::TooManyHops
    }
}
