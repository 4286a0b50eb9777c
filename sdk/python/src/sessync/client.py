"""The typed API: :class:`Client`, :class:`Session` and :class:`Pipeline`."""

import datetime
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .connection import Connection, ConnectionPool, Outcome, parse_address
from .errors import InvalidRequest, ProtocolViolation, SessionNotFound, SessyncError
from .wire import (
    DEFAULT_LIMITS,
    Create,
    Destroy,
    Done,
    Get,
    Limits,
    Ping,
    Pong,
    Reply,
    Request,
    Rotate,
    SessionMeta,
    SessionReply,
    Set,
    Stats,
    StatsReply,
    Touch,
)

__all__ = ["Client", "Session", "Pipeline", "PendingReply", "Value", "Duration"]

__version__ = "0.1.0"

#: An attribute value: bytes as they are, ``str`` as UTF-8.
Value = Union[bytes, bytearray, memoryview, str]
#: Seconds (``int``/``float``) or a ``datetime.timedelta``.
Duration = Union[int, float, datetime.timedelta]


@dataclass(frozen=True)
class Session:
    """A session as the node served it.

    The one rule of the token: after every call, store ``token`` (in the user's cookie) in
    place of the one you passed. It differs (``token_changed``) after ``create`` and
    ``rotate`` and whenever the session moved to the node that served the request.

    An error carries no token: keep the one you have, even if the failed call moved the
    session (nodes follow stale tokens). With several calls for one session in flight (a
    pipeline, threads), each may return a different token; every one of them works, and
    the one returned last is the one to keep (protocol.md section 5).
    """

    #: The token to keep from now on.
    token: str
    #: Whether ``token`` differs from the token passed in (always True after ``create``).
    token_changed: bool
    #: Version and times after the request.
    meta: SessionMeta
    #: The attributes the reply carried: all for ``create``, ``rotate`` and ``get`` without
    #: names; the named ones that exist for ``get(names=...)``; none for ``set`` and ``touch``.
    attributes: Dict[str, bytes] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """The version after this request: what to pass as ``if_version``."""
        return self.meta.version

    @property
    def created_ms(self) -> int:
        return self.meta.created_ms

    @property
    def last_access_ms(self) -> int:
        return self.meta.last_access_ms

    @property
    def idle_ttl_ms(self) -> int:
        return self.meta.idle_ttl_ms

    @property
    def absolute_deadline_ms(self) -> int:
        """0 when the session has no absolute lifetime."""
        return self.meta.absolute_deadline_ms

    @property
    def expires_at_ms(self) -> int:
        """When the session ends unless it is used again (Unix milliseconds)."""
        return self.meta.deadline_ms


def _ms(d: Optional[Duration]) -> int:
    """Milliseconds for the wire: 0 = the node's default, else at least 1, at most 2**64 - 1
    (a longer duration means "never", as the node's saturating deadlines do)."""
    if d is None:
        return 0
    seconds = d.total_seconds() if isinstance(d, datetime.timedelta) else float(d)
    if seconds != seconds or seconds < 0:
        raise ValueError("durations must be numbers, not negative")
    if seconds * 1000 >= 0xFFFF_FFFF_FFFF_FFFF:
        return 0xFFFF_FFFF_FFFF_FFFF
    return max(1, int(round(seconds * 1000)))


def _value(v: Value) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"attribute values are bytes or str, not {type(v).__name__}")


def _attrs(attrs: Optional[Mapping[str, Value]]) -> Dict[str, bytes]:
    if not attrs:
        return {}
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str):
            raise TypeError(f"attribute names are str, not {type(k).__name__}")
        out[k] = _value(v)
    return out


# How each kind of request turns its reply into a result; a wrong reply kind is the node's
# protocol violation.
Convert = Callable[[Reply], Any]


def _session(old_token: Optional[str]) -> Convert:
    def convert(reply: Reply) -> Session:
        if not isinstance(reply, SessionReply):
            raise ProtocolViolation(f"expected SESSION, got {type(reply).__name__}")
        if reply.token is not None:
            return Session(reply.token, reply.token != old_token, reply.meta, reply.attributes)
        if old_token is None:
            raise ProtocolViolation("the reply to CREATE or ROTATE carries no token")
        return Session(old_token, False, reply.meta, reply.attributes)

    return convert


def _rotated(old_token: str) -> Convert:
    inner = _session(None)

    def convert(reply: Reply) -> Session:
        s: Session = inner(reply)
        return Session(s.token, s.token != old_token, s.meta, s.attributes)

    return convert


def _done(reply: Reply) -> None:
    if not isinstance(reply, Done):
        raise ProtocolViolation(f"expected DONE, got {type(reply).__name__}")


def _stats(reply: Reply) -> Dict[str, int]:
    if not isinstance(reply, StatsReply):
        raise ProtocolViolation(f"expected STATS_REPLY, got {type(reply).__name__}")
    return dict(reply.counters)


def _pong(payload: bytes) -> Convert:
    def convert(reply: Reply) -> bytes:
        if not isinstance(reply, Pong) or reply.payload != payload:
            raise ProtocolViolation("PING not answered by a PONG with the same payload")
        return reply.payload

    return convert


class _Calls:
    """Builds the request and the reply converter of each API call (shared by the client
    and the pipeline, so both check arguments the same way before anything is sent)."""

    limits: Limits

    def _create(
        self, attrs: Optional[Mapping[str, Value]], idle_ttl: Optional[Duration], max_lifetime: Optional[Duration]
    ) -> Tuple[Request, Convert]:
        return Create(_ms(idle_ttl), _ms(max_lifetime), _attrs(attrs)), _session(None)

    def _get(self, token: str, names: Optional[Iterable[str]]) -> Tuple[Request, Convert]:
        return Get(token, list(names or ())), _session(token)

    def _set(
        self,
        token: str,
        puts: Optional[Mapping[str, Value]],
        deletes: Iterable[str],
        if_version: Optional[int],
    ) -> Tuple[Request, Convert]:
        p = _attrs(puts)
        d = list(dict.fromkeys(deletes))
        both = [n for n in d if n in p]
        if both:
            # The node would answer INVALID_REQUEST; refuse without a round trip.
            raise InvalidRequest(f"attribute {both[0]!r} is both put and deleted")
        return Set(token, if_version, p, d), _session(token)

    def _token_op(self, kind: type, token: str) -> Tuple[Request, Convert]:
        if kind is Rotate:
            return Rotate(token), _rotated(token)
        if kind is Destroy:
            return Destroy(token), _done
        return Touch(token), _session(token)


def tls_context(
    cafile: str,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
) -> ssl.SSLContext:
    """A TLS 1.3 context for :class:`Client` that trusts ``cafile`` (the CA that signed the
    node's certificate) and verifies the node's name; with ``certfile``/``keyfile`` it
    presents a client certificate (for a node started with ``--client-tls-ca``)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


class Client(_Calls):
    """A client of one sessync node (normally the one beside this application server).

    Thread-safe: every call borrows a connection from a bounded pool (``pool_size``) and
    gives it back when the reply is in. ``timeout`` bounds each call (waiting for a pooled
    connection, opening one, sending, and the reply); ``connect_timeout`` (default:
    ``timeout``) bounds opening a connection and its HELLO. A call that times out or loses
    its connection raises :class:`~sessync.RequestTimeout` / :class:`~sessync.ConnectionLost`:
    the request may or may not have been applied, and it is never resent by the client.

    ``tls`` (an :class:`ssl.SSLContext`, e.g. from :func:`sessync.tls_context`) connects
    over TLS to a node started with ``--client-tls-cert``; the node's certificate is
    verified and must name ``server_hostname`` (default: the address's host).

    >>> c = Client("127.0.0.1:7700")                      # doctest: +SKIP
    >>> s = c.create({"user": b"alice"})                  # doctest: +SKIP
    >>> s = c.set(s.token, {"cart": b"1 book"}, if_version=s.version)  # doctest: +SKIP
    """

    def __init__(
        self,
        address: Union[str, Tuple[str, int]] = "127.0.0.1:7700",
        timeout: float = 5.0,
        password: Optional[str] = None,
        *,
        pool_size: int = 8,
        connect_timeout: Optional[float] = None,
        max_idle: float = 60.0,
        client_name: str = f"sessync-python/{__version__}",
        limits: Limits = DEFAULT_LIMITS,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> None:
        self.address = parse_address(address)
        self.timeout = float(timeout)
        self.limits = limits
        connect_timeout = self.timeout if connect_timeout is None else float(connect_timeout)

        def factory() -> Connection:
            return Connection(
                self.address,
                connect_timeout=connect_timeout,
                limits=limits,
                password=password,
                client_name=client_name,
                tls=tls,
                server_hostname=server_hostname,
            )

        self.pool = ConnectionPool(factory, pool_size, max_idle)

    def __repr__(self) -> str:
        return f"Client({self.address[0]}:{self.address[1]}, pool {self.pool.size}/{self.pool.max_size})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes every idle connection; connections in use close when they come back."""
        self.pool.close()

    # ------------------------------------------------------------------------------------
    def _run(self, calls: Sequence[Tuple[Request, Convert]]) -> List[Union[Any, SessyncError]]:
        """Sends a batch on one pooled connection; each result or the exception it failed with."""
        deadline = time.monotonic() + self.timeout
        conn = self.pool.acquire(deadline)
        try:
            outcomes: List[Outcome] = conn.exchange([req for req, _ in calls], deadline)
            results: List[Union[Any, SessyncError]] = []
            for (_, convert), outcome in zip(calls, outcomes):
                if isinstance(outcome, SessyncError):
                    results.append(outcome)
                    continue
                try:
                    results.append(convert(outcome))
                except ProtocolViolation as e:
                    conn.close()
                    results.append(e)
            return results
        finally:
            self.pool.release(conn)

    def _one(self, call: Tuple[Request, Convert]) -> Any:
        (result,) = self._run([call])
        if isinstance(result, SessyncError):
            raise result
        return result

    # ------------------------------------------------------------------------------------
    def create(
        self,
        attrs: Optional[Mapping[str, Value]] = None,
        idle_ttl: Optional[Duration] = None,
        max_lifetime: Optional[Duration] = None,
    ) -> Session:
        """Creates a session owned by this node. ``idle_ttl``/``max_lifetime`` in seconds or as
        a ``timedelta``; ``None`` takes the node's default (30 min idle, no lifetime)."""
        result: Session = self._one(self._create(attrs, idle_ttl, max_lifetime))
        return result

    def get(self, token: str, names: Optional[Iterable[str]] = None) -> Session:
        """Reads the session (all attributes, or only ``names`` that exist) and refreshes
        its idle deadline. Raises :class:`~sessync.SessionNotFound` when it is gone."""
        result: Session = self._one(self._get(token, names))
        return result

    def set(
        self,
        token: str,
        puts: Optional[Mapping[str, Value]] = None,
        deletes: Iterable[str] = (),
        if_version: Optional[int] = None,
    ) -> Session:
        """One atomic change: ``puts`` added or replaced, ``deletes`` removed, the version
        bumped by one. With ``if_version`` it applies only at that version, else raises
        :class:`~sessync.VersionConflict` and changes nothing. The reply has no attributes."""
        result: Session = self._one(self._set(token, puts, deletes, if_version))
        return result

    def touch(self, token: str) -> Session:
        """Refreshes the idle deadline without reading the data."""
        result: Session = self._one(self._token_op(Touch, token))
        return result

    def rotate(self, token: str) -> Session:
        """A new id and token for the same data (version + 1); the old token stops working.
        Call it at login, against session fixation."""
        result: Session = self._one(self._token_op(Rotate, token))
        return result

    def destroy(self, token: str, missing_ok: bool = False) -> None:
        """Ends the session wherever it lives. With ``missing_ok`` a session already gone is
        not an error (a logout)."""
        try:
            self._one(self._token_op(Destroy, token))
        except SessionNotFound:
            if not missing_ok:
                raise

    def stats(self) -> Dict[str, int]:
        """The node's counters (names are not part of the protocol)."""
        result: Dict[str, int] = self._one((Stats(), _stats))
        return result

    def ping(self, payload: bytes = b"") -> float:
        """A round trip to the node; returns its duration in seconds."""
        start = time.monotonic()
        self._one((Ping(bytes(payload)), _pong(bytes(payload))))
        return time.monotonic() - start

    def pipeline(self) -> "Pipeline":
        """Queues requests and sends them together on one connection::

            with client.pipeline() as p:
                a = p.get(token_a)
                b = p.set(token_b, {"n": b"1"})
            a.result(), b.result()

        Replies are matched by request id (the node may answer in any order). The block's
        end sends the batch (``execute``); no request waits for another's reply, so use
        separate calls when one must see the effect of another.
        """
        return Pipeline(self)


class PendingReply:
    """The outcome of one pipelined request, known after the pipeline ran."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: Optional[SessyncError] = None

    @property
    def done(self) -> bool:
        return self._done

    def _set(self, outcome: Union[Any, SessyncError]) -> None:
        self._done = True
        if isinstance(outcome, SessyncError):
            self._error = outcome
        else:
            self._value = outcome

    def error(self) -> Optional[SessyncError]:
        """The exception this request failed with, or None."""
        if not self._done:
            raise RuntimeError("the pipeline has not run yet")
        return self._error

    def result(self) -> Any:
        """The request's result (a :class:`Session`, None, counters, ...); raises its error."""
        if not self._done:
            raise RuntimeError("the pipeline has not run yet")
        if self._error is not None:
            raise self._error
        return self._value


class Pipeline(_Calls):
    """Requests queued for one batch; see :meth:`Client.pipeline`. Each method checks its
    arguments at once (raising as the client would) and returns a :class:`PendingReply`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.limits = client.limits
        self._calls: List[Tuple[Request, Convert]] = []
        self._pending: List[PendingReply] = []
        self._ran = False

    def __len__(self) -> int:
        return len(self._calls)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type: Optional[type], *rest: object) -> None:
        if exc_type is None and not self._ran:
            self.execute(raise_on_error=False)

    def _queue(self, call: Tuple[Request, Convert]) -> PendingReply:
        if self._ran:
            raise RuntimeError("this pipeline has already run; start a new one")
        p = PendingReply()
        self._calls.append(call)
        self._pending.append(p)
        return p

    def create(
        self,
        attrs: Optional[Mapping[str, Value]] = None,
        idle_ttl: Optional[Duration] = None,
        max_lifetime: Optional[Duration] = None,
    ) -> PendingReply:
        return self._queue(self._create(attrs, idle_ttl, max_lifetime))

    def get(self, token: str, names: Optional[Iterable[str]] = None) -> PendingReply:
        return self._queue(self._get(token, names))

    def set(
        self,
        token: str,
        puts: Optional[Mapping[str, Value]] = None,
        deletes: Iterable[str] = (),
        if_version: Optional[int] = None,
    ) -> PendingReply:
        return self._queue(self._set(token, puts, deletes, if_version))

    def touch(self, token: str) -> PendingReply:
        return self._queue(self._token_op(Touch, token))

    def rotate(self, token: str) -> PendingReply:
        return self._queue(self._token_op(Rotate, token))

    def destroy(self, token: str) -> PendingReply:
        return self._queue(self._token_op(Destroy, token))

    def stats(self) -> PendingReply:
        return self._queue((Stats(), _stats))

    def ping(self, payload: bytes = b"") -> PendingReply:
        return self._queue((Ping(bytes(payload)), _pong(bytes(payload))))

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Sends every queued request and waits for all replies (one timeout for the batch).
        Returns the results in queue order, failed ones as their exception objects; with
        ``raise_on_error`` the first failure is raised after every reply is in."""
        if self._ran:
            raise RuntimeError("this pipeline has already run; start a new one")
        self._ran = True
        results = self._client._run(self._calls) if self._calls else []
        for p, r in zip(self._pending, results):
            p._set(r)
        if raise_on_error:
            for r in results:
                if isinstance(r, SessyncError):
                    raise r
        return results
