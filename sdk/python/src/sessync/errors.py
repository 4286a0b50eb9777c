"""Errors: every failure is a :class:`SessyncError` carrying a numeric ``code`` and a ``name``.

Errors a node sends (ERROR frames, protocol.md section 7) keep the node's code and the
table's name. The class is chosen by the code: a specific subclass for codes an
application commonly acts on (:class:`SessionNotFound`, :class:`VersionConflict`,
:class:`OwnerUnreachable`, ...), else the class of the code's hundred
(:class:`FrameError` 1xx, :class:`AuthError` 2xx, :class:`SessionError` 3xx,
:class:`ClusterError` 4xx, :class:`NodeError` 5xx), which is how protocol.md says to treat
codes one does not know. Codes below 100 or above 599 are treated as 502 ``INTERNAL``.

Failures found by this client itself have ``code`` 0 (there was no ERROR frame), except
where the client refuses a request for the same reason the node would (over a limit:
105 ``LIMIT_EXCEEDED``; a SET that puts and deletes one name: 106 ``INVALID_REQUEST``), or
where the node broke the protocol (the 1xx code that describes what was wrong, raised as
:class:`ProtocolViolation`).
"""

from typing import Dict, Optional, Tuple, Type

__all__ = [
    "SessyncError",
    "FrameError",
    "LimitExceeded",
    "InvalidRequest",
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
    "ProtocolViolation",
    "ERROR_CODES",
    "CLOSING_CODES",
    "error_from_code",
]

#: protocol.md section 7: code -> (name, whether the sender closes the connection after it).
ERROR_CODES: Dict[int, Tuple[str, bool]] = {
    100: ("MALFORMED_FRAME", True),
    101: ("BAD_CRC", True),
    102: ("FRAME_TOO_LARGE", True),
    103: ("UNSUPPORTED_VERSION", True),
    104: ("UNKNOWN_OPCODE", True),
    105: ("LIMIT_EXCEEDED", False),
    106: ("INVALID_REQUEST", False),
    200: ("AUTH_REQUIRED", False),
    201: ("AUTH_FAILED", True),
    300: ("INVALID_TOKEN", False),
    301: ("SESSION_NOT_FOUND", False),
    302: ("VERSION_CONFLICT", False),
    400: ("OWNER_UNREACHABLE", False),
    401: ("TOO_MANY_HOPS", False),
    402: ("INDETERMINATE", False),
    403: ("MOVED", False),
    404: ("BACKUP_UNAVAILABLE", False),
    500: ("CAPACITY", False),
    501: ("SHUTTING_DOWN", False),
    502: ("INTERNAL", False),
    503: ("TIMEOUT", True),
    504: ("TOO_MANY_CONNECTIONS", True),
}

#: Codes after which the node closes the connection.
CLOSING_CODES = frozenset(c for c, (_, closes) in ERROR_CODES.items() if closes)


class SessyncError(Exception):
    """Base of every sessync failure.

    ``code`` is the protocol's numeric code (0 for failures found by this client with no
    protocol code), ``name`` its name (e.g. ``"VERSION_CONFLICT"``), ``message`` the human
    text (the node's, or this client's). Act on ``code`` or the class, never the message.
    """

    code: int = 0
    name: str = "ERROR"

    def __init__(self, message: str = "", code: Optional[int] = None, name: Optional[str] = None) -> None:
        if code is not None:
            self.code = code
        if name is not None:
            self.name = name
        self.message = message
        super().__init__(f"{self.name} ({self.code}): {message}" if message else f"{self.name} ({self.code})")

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later unchanged (4xx and 5xx: the cluster or
        the node was unavailable). A write that failed with :class:`Indeterminate` or a
        client-side :class:`ConnectionLost`/:class:`RequestTimeout` may have been applied:
        re-read (or use ``if_version``) before repeating it."""
        return 400 <= self.code < 600 and self.code != 402


# 1xx -----------------------------------------------------------------------------------
class FrameError(SessyncError):
    """1xx: a frame or message was bad. A bug on one side; do not resend the same bytes."""

    code = 100
    name = "MALFORMED_FRAME"


class LimitExceeded(FrameError):
    """105: a count, string or value exceeds a limit (raised locally before sending, or by
    the node). Nothing changed; the connection stays usable."""

    code = 105
    name = "LIMIT_EXCEEDED"


class InvalidRequest(FrameError):
    """106: the request's fields contradict each other (a SET that puts and deletes the same
    name). Nothing changed."""

    code = 106
    name = "INVALID_REQUEST"


class ProtocolViolation(FrameError):
    """The node sent something that breaks protocol.md (bad CRC, truncated body, a reply to
    no request, ...). The connection is closed and every request waiting on it fails; the
    failed requests may or may not have been applied."""


# 2xx -----------------------------------------------------------------------------------
class AuthError(SessyncError):
    """2xx: authentication. Fix the credentials; retrying as is fails again."""

    code = 200
    name = "AUTH_REQUIRED"


class AuthRequired(AuthError):
    """200: the node requires a password (``Client(..., password=...)``)."""


class AuthFailed(AuthError):
    """201: wrong password; the node closed the connection."""

    code = 201
    name = "AUTH_FAILED"


# 3xx -----------------------------------------------------------------------------------
class SessionError(SessyncError):
    """3xx: the request failed for this session or token; retrying as is fails again."""

    code = 300
    name = "INVALID_TOKEN"


class InvalidToken(SessionError):
    """300: the token is malformed or not signed by this cluster. Treat as logged out."""


class SessionNotFound(SessionError):
    """301: no live session: never existed, expired, evicted, destroyed or rotated."""

    code = 301
    name = "SESSION_NOT_FOUND"


class VersionConflict(SessionError):
    """302: SET's ``if_version`` is not the session's version; nothing changed."""

    code = 302
    name = "VERSION_CONFLICT"


# 4xx -----------------------------------------------------------------------------------
class ClusterError(SessyncError):
    """4xx: the session is unavailable for now; retrying later may succeed."""

    code = 400
    name = "OWNER_UNREACHABLE"


class OwnerUnreachable(ClusterError):
    """400: the node holding the session did not answer within the peer timeout."""


class TooManyHops(ClusterError):
    """401: the session kept moving; more MOVED answers than the hop limit."""

    code = 401
    name = "TOO_MANY_HOPS"


class Indeterminate(ClusterError):
    """402: the write is applied at the node that answered, but no backup confirmed it (or
    another node took the session over meanwhile): it may or may not survive."""

    code = 402
    name = "INDETERMINATE"


class BackupUnavailable(ClusterError):
    """404: the write needs backup copies and too few backup nodes are reachable; nothing
    changed. Retry later."""

    code = 404
    name = "BACKUP_UNAVAILABLE"


# 5xx -----------------------------------------------------------------------------------
class NodeError(SessyncError):
    """5xx: the node itself; retry later, possibly at another node."""

    code = 502
    name = "INTERNAL"


class Capacity(NodeError):
    """500: the node is full and does not evict."""

    code = 500
    name = "CAPACITY"


class ShuttingDown(NodeError):
    """501: the node is shutting down."""

    code = 501
    name = "SHUTTING_DOWN"


class Internal(NodeError):
    """502: a bug or unexpected condition in the node; the request may be retried."""


class NodeTimeout(NodeError):
    """503: the node closed the connection because it sent nothing (or no complete frame)
    in time."""

    code = 503
    name = "TIMEOUT"


class TooManyConnections(NodeError):
    """504: the node is at its connection limit and closed this connection."""

    code = 504
    name = "TOO_MANY_CONNECTIONS"


# client side -------------------------------------------------------------------------
class ClientSideError(SessyncError):
    """A failure found by this client, with no protocol code (``code`` 0)."""

    code = 0
    name = "CLIENT_ERROR"


class ConnectionLost(ClientSideError):
    """The connection failed (refused, reset, closed) before the reply came. If the request
    was sent, it may or may not have been applied; the client never resends it."""

    name = "CONNECTION_LOST"


class RequestTimeout(ClientSideError):
    """No reply within the client's timeout. The request may or may not have been applied;
    the connection is discarded (a late reply must not be taken for another request's)."""

    name = "CLIENT_TIMEOUT"


class PoolExhausted(ClientSideError):
    """Every pooled connection stayed busy for the whole timeout. Nothing was sent."""

    name = "POOL_EXHAUSTED"


_SPECIFIC: Dict[int, Type[SessyncError]] = {
    105: LimitExceeded,
    106: InvalidRequest,
    200: AuthRequired,
    201: AuthFailed,
    300: InvalidToken,
    301: SessionNotFound,
    302: VersionConflict,
    400: OwnerUnreachable,
    401: TooManyHops,
    402: Indeterminate,
    404: BackupUnavailable,
    500: Capacity,
    501: ShuttingDown,
    502: Internal,
    503: NodeTimeout,
    504: TooManyConnections,
}

_BY_HUNDRED: Dict[int, Type[SessyncError]] = {
    1: FrameError,
    2: AuthError,
    3: SessionError,
    4: ClusterError,
    5: NodeError,
}


def error_from_code(code: int, message: str) -> SessyncError:
    """The exception for an ERROR frame with this code and message (protocol.md section 7:
    unknown codes by their hundred; codes outside 100..599 as 502 INTERNAL)."""
    known = ERROR_CODES.get(code)
    if known is not None:
        cls = _SPECIFIC.get(code, _BY_HUNDRED[code // 100])
        return cls(message, code=code, name=known[0])
    if 100 <= code <= 599:
        return _BY_HUNDRED[code // 100](message, code=code, name=f"UNKNOWN_{code}")
    return Internal(message, code=code, name="INTERNAL")
