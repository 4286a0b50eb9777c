"""sessync: a pure-standard-library Python client for sessync nodes.

>>> from sessync import Client, SessionNotFound
>>> client = Client("127.0.0.1:7700", timeout=2.0)          # doctest: +SKIP
>>> s = client.create({"user": b"alice"})                    # doctest: +SKIP
>>> cookie = s.token            # store it; replace it whenever a reply carries a new one

Written from protocol.md (the normative wire spec). Framework adapters live in
:mod:`sessync.flask` and :mod:`sessync.django`; they import their framework only when
imported themselves.
"""

from .client import Client, Duration, PendingReply, Pipeline, Session, Value, __version__, tls_context
from .connection import Connection, ConnectionPool
from .errors import (
    AuthError,
    AuthFailed,
    AuthRequired,
    BackupUnavailable,
    Capacity,
    ClientSideError,
    ClusterError,
    ConnectionLost,
    FrameError,
    Indeterminate,
    Internal,
    InvalidRequest,
    InvalidToken,
    LimitExceeded,
    NodeError,
    NodeTimeout,
    OwnerUnreachable,
    PoolExhausted,
    ProtocolViolation,
    RequestTimeout,
    SessionError,
    SessionNotFound,
    SessyncError,
    ShuttingDown,
    TooManyConnections,
    TooManyHops,
    VersionConflict,
    error_from_code,
)
from .wire import Limits, SessionMeta

__all__ = [
    "Client",
    "tls_context",
    "Session",
    "SessionMeta",
    "Pipeline",
    "PendingReply",
    "Connection",
    "ConnectionPool",
    "Limits",
    "Value",
    "Duration",
    "SessyncError",
    "FrameError",
    "LimitExceeded",
    "InvalidRequest",
    "ProtocolViolation",
    "AuthError",
    "AuthRequired",
    "AuthFailed",
    "SessionError",
    "InvalidToken",
    "SessionNotFound",
    "VersionConflict",
    "ClusterError",
    "OwnerUnreachable",
    "TooManyHops",
    "Indeterminate",
    "BackupUnavailable",
    "NodeError",
    "Capacity",
    "ShuttingDown",
    "Internal",
    "NodeTimeout",
    "TooManyConnections",
    "ClientSideError",
    "ConnectionLost",
    "RequestTimeout",
    "PoolExhausted",
    "error_from_code",
    "__version__",
]
