"""One TCP connection to a node's client port, and the bounded pool that shares them.

A :class:`Connection` is used by one thread at a time (the pool hands it out); it sends a
batch of requests and reads their replies, matched by request id, in any order. Sending
and receiving are interleaved (a selector waits for either), so a batch larger than the
socket buffers cannot deadlock against a node that stops reading while its replies are
not read.

Every failure that leaves the stream in an unknown state (a frame error either way, an
ERROR that closes, a timeout with replies still owed, EOF) marks the connection
``broken``; the pool closes broken connections instead of reusing them.
"""

import selectors
import socket
import ssl
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import (
    CLOSING_CODES,
    ConnectionLost,
    LimitExceeded,
    PoolExhausted,
    ProtocolViolation,
    RequestTimeout,
    SessyncError,
    error_from_code,
)
from .wire import (
    PROTOCOL_VERSION,
    ErrorReply,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Op,
    Reply,
    Request,
    decode_reply,
    encode_frame,
    encode_request,
    split_frame,
)

__all__ = ["Connection", "ConnectionPool", "parse_address"]

#: Bytes asked of one ``recv``. The read buffer never holds more than one frame (whose
#: length was checked first) plus one such chunk.
_RECV_CHUNK = 64 * 1024

Outcome = Union[Reply, SessyncError]


def parse_address(address: Union[str, Tuple[str, int]]) -> Tuple[str, int]:
    """``"127.0.0.1:7700"``, ``"[::1]:7700"``, ``"localhost:7700"`` or ``(host, port)``."""
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Connection:
    """One connection, HELLO done. Not thread-safe: one user at a time (see the pool)."""

    def __init__(
        self,
        address: Tuple[str, int],
        *,
        connect_timeout: float,
        limits: Limits,
        password: Optional[str],
        client_name: str,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> None:
        self.limits = limits
        self.broken = False
        self.server_name = ""
        #: The longest frame this connection may send: ours, lowered to the node's HELLO_OK.
        self.max_send_frame = limits.max_frame_len
        self.last_used = time.monotonic()
        self._next_id = 1
        self._buf = bytearray()
        try:
            self._sock = socket.create_connection(address, timeout=connect_timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {address[0]}:{address[1]}: {e}") from e
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            # The TLS handshake runs blocking, under the connect timeout; the node's
            # certificate is verified against the context's CAs and ``server_hostname``.
            try:
                self._sock = tls.wrap_socket(self._sock, server_hostname=server_hostname or address[0])
            except (OSError, ssl.SSLError) as e:
                self._sock.close()
                raise ConnectionLost(f"TLS handshake with {address[0]}:{address[1]} failed: {e}") from e
        self._sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ)
        try:
            (reply,) = self.exchange(
                [Hello(PROTOCOL_VERSION, PROTOCOL_VERSION, client_name, password)],
                time.monotonic() + connect_timeout,
            )
            if isinstance(reply, SessyncError):
                raise reply
            if not isinstance(reply, HelloOk):
                raise ProtocolViolation(f"HELLO answered with {type(reply).__name__}")
            if reply.version != PROTOCOL_VERSION:
                raise ProtocolViolation(
                    f"HELLO_OK chose version {reply.version}, outside [1, 1]", code=103, name="UNSUPPORTED_VERSION"
                )
            self.server_name = reply.server_name
            self.max_send_frame = min(self.max_send_frame, reply.max_frame_len)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------
    def close(self) -> None:
        self.broken = True
        try:
            self._sel.close()
        finally:
            self._sock.close()

    def looks_alive(self) -> bool:
        """For a connection with nothing outstanding: False if the node has closed it or sent
        something unasked (an ERROR with request id 0, e.g. its idle timeout)."""
        if self.broken:
            return False
        try:
            return not self._sel.select(timeout=0)
        except (OSError, ValueError):
            return False

    def exchange(self, requests: Sequence[Request], deadline: float) -> List[Outcome]:
        """Sends ``requests`` (as one pipelined batch) and returns, in the same order, each
        one's reply or the exception it failed with. Raises only for a request refused
        before anything was sent (over a limit), in which case nothing at all is sent."""
        if self.broken:
            raise ConnectionLost("connection already closed")
        frames: List[bytes] = []
        ids: List[int] = []
        for req in requests:
            op, body = encode_request(req, self.limits)
            rid = self._next_id
            self._next_id += 1
            frame = encode_frame(op, rid, body)
            if len(frame) - 4 > self.max_send_frame:
                raise LimitExceeded(
                    f"request frame of {len(frame) - 4} bytes exceeds the node's limit of {self.max_send_frame}"
                )
            frames.append(frame)
            ids.append(rid)
        results: Dict[int, Outcome] = {}
        failure = self._run(b"".join(frames), set(ids), results, deadline)
        self.last_used = time.monotonic()
        out: List[Outcome] = []
        for rid in ids:
            got = results.get(rid)
            if got is None:
                assert failure is not None
                got = failure
            out.append(got)
        return out

    def _fail(self, err: SessyncError) -> SessyncError:
        self.close()
        return err

    def _run(self, out: bytes, waiting: "set[int]", results: Dict[int, Outcome], deadline: float) -> Optional[SessyncError]:
        """The send/receive loop; returns the error for every request left without a reply."""
        view = memoryview(out)
        sent = 0
        if out:
            self._sel.modify(self._sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "no reply in time" if sent == len(out) else "could not send in time"
                    return self._fail(RequestTimeout(f"{what}; the request may or may not have been applied"))
                events = self._sel.select(timeout=remaining)
                for _, mask in events:
                    if mask & selectors.EVENT_WRITE and sent < len(out):
                        try:
                            sent += self._sock.send(view[sent:])
                        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                            pass
                        except OSError as e:
                            return self._fail(ConnectionLost(f"send failed: {e}"))
                        if sent == len(out):
                            self._sel.modify(self._sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = self._sock.recv(_RECV_CHUNK)
                            # TLS may hold decrypted bytes the selector cannot see.
                            while chunk and isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
                                chunk += self._sock.recv(self._sock.pending())
                        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            continue
                        except OSError as e:
                            return self._fail(ConnectionLost(f"receive failed: {e}"))
                        if not chunk:
                            return self._fail(ConnectionLost("the node closed the connection"))
                        self._buf += chunk
                        err = self._drain(waiting, results)
                        if err is not None:
                            return err
            return None
        finally:
            if not self.broken:
                self._sel.modify(self._sock, selectors.EVENT_READ)

    def _drain(self, waiting: "set[int]", results: Dict[int, Outcome]) -> Optional[SessyncError]:
        """Takes every complete frame from the buffer."""
        while True:
            try:
                got = split_frame(self._buf, self.limits.max_frame_len)
            except ProtocolViolation as e:
                return self._fail(e)
            if got is None:
                return None
            frame, used = got
            del self._buf[:used]
            err = self._handle(frame, waiting, results)
            if err is not None:
                return err

    def _handle(self, frame: Frame, waiting: "set[int]", results: Dict[int, Outcome]) -> Optional[SessyncError]:
        if frame.opcode == Op.ERROR and frame.request_id == 0:
            # About the connection as a whole (a framing error, idle timeout, too many
            # connections): the node closes it; every request still waiting fails with it.
            try:
                reply = decode_reply(frame, self.limits)
            except SessyncError as e:
                return self._fail(e)
            assert isinstance(reply, ErrorReply)
            return self._fail(error_from_code(reply.code, reply.message))
        if frame.request_id not in waiting:
            return self._fail(ProtocolViolation(f"reply for request id {frame.request_id}, which is not outstanding"))
        waiting.discard(frame.request_id)
        try:
            reply = decode_reply(frame, self.limits)
        except SessyncError as e:
            # The frame was intact but its body was not: the stream is still in step, but
            # a node that sends such bodies is not trusted further.
            results[frame.request_id] = e
            return self._fail(ProtocolViolation(f"an earlier reply was undecodable: {e}"))
        if isinstance(reply, ErrorReply):
            err = error_from_code(reply.code, reply.message)
            results[frame.request_id] = err
            if reply.code in CLOSING_CODES:
                if waiting:
                    return self._fail(ConnectionLost(f"the node closed the connection after {err.name}"))
                self.close()
            return None
        results[frame.request_id] = reply
        return None


class ConnectionPool:
    """A bounded, thread-safe pool of :class:`Connection`.

    At most ``max_size`` connections exist at once; a caller that finds all of them busy
    waits up to its timeout (then :class:`PoolExhausted`). Connections are opened on demand,
    reused last-in-first-out (so surplus ones age out), returned only when healthy, and
    checked before reuse: one idle longer than ``max_idle`` seconds, or that the node has
    closed or written to unasked (its idle timeout), is closed instead of handed out.
    """

    def __init__(self, factory: Callable[[], Connection], max_size: int, max_idle: float) -> None:
        if max_size < 1:
            raise ValueError("pool size must be at least 1")
        self._factory = factory
        self.max_size = max_size
        self.max_idle = max_idle
        self._idle: List[Connection] = []
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Connections open now (idle or in use)."""
        with self._cond:
            return self._size

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def acquire(self, deadline: float) -> Connection:
        stale: List[Connection] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise ConnectionLost("the client is closed")
                    while self._idle:
                        conn = self._idle.pop()
                        if time.monotonic() - conn.last_used > self.max_idle or not conn.looks_alive():
                            stale.append(conn)
                            self._size -= 1
                            continue
                        return conn
                    if self._size < self.max_size:
                        self._size += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolExhausted(f"all {self.max_size} connections stayed busy")
                    self._cond.wait(remaining)
        finally:
            for c in stale:
                c.close()
        try:
            return self._factory()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def release(self, conn: Connection) -> None:
        """Gives a connection back; a broken one (or any, once the pool is closed) is closed."""
        with self._cond:
            keep = not conn.broken and not self._closed
            if keep:
                self._idle.append(conn)
            else:
                self._size -= 1
            self._cond.notify()
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for c in idle:
            c.close()
