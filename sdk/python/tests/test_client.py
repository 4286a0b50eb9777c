"""The client against real nodes (the session-scoped ``cluster`` fixture) and against a
scripted fake node (for misbehaviour a real node never shows)."""

import socket
import threading
import time
from typing import Callable, Iterator, List, Optional

import pytest

from cluster import Cluster
from sessync import (
    AuthFailed,
    AuthRequired,
    Client,
    ConnectionLost,
    InvalidRequest,
    InvalidToken,
    LimitExceeded,
    OwnerUnreachable,
    PoolExhausted,
    ProtocolViolation,
    RequestTimeout,
    SessionNotFound,
    SessyncError,
    VersionConflict,
)
from sessync.wire import (
    ErrorReply,
    Frame,
    HelloOk,
    Op,
    SessionMeta,
    SessionReply,
    decode_request,
    encode_frame,
    encode_reply,
    split_frame,
)

# Real nodes ------------------------------------------------------------------------------


@pytest.fixture()
def client(cluster: Cluster) -> Iterator[Client]:
    c = Client(cluster.clients[0], timeout=5)
    yield c
    c.close()


def test_lifecycle(client: Client) -> None:
    before = int(time.time() * 1000)
    s = client.create({"user": "alice", "bin": b"\x00\xff"}, idle_ttl=60, max_lifetime=3600)
    assert s.token_changed and s.version == 1
    assert s.attributes == {"user": b"alice", "bin": b"\x00\xff"}
    assert s.idle_ttl_ms == 60_000
    assert before - 5000 <= s.created_ms <= before + 5000
    assert s.absolute_deadline_ms == s.created_ms + 3_600_000
    assert s.expires_at_ms == s.last_access_ms + 60_000

    g = client.get(s.token)
    assert not g.token_changed and g.token == s.token and g.version == 1
    only = client.get(s.token, names=["user", "missing"])
    assert only.attributes == {"user": b"alice"}

    w = client.set(s.token, {"cart": "1 book"}, deletes=["bin"], if_version=1)
    assert w.version == 2 and w.attributes == {}
    assert client.get(s.token).attributes == {"user": b"alice", "cart": b"1 book"}
    assert client.touch(s.token).version == 2

    r = client.rotate(s.token)
    assert r.token_changed and r.token != s.token and r.version == 3
    assert r.attributes == {"user": b"alice", "cart": b"1 book"}
    with pytest.raises(SessionNotFound) as e:
        client.get(s.token)
    assert (e.value.code, e.value.name) == (301, "SESSION_NOT_FOUND")

    client.destroy(r.token)
    with pytest.raises(SessionNotFound):
        client.get(r.token)
    with pytest.raises(SessionNotFound):
        client.destroy(r.token)
    client.destroy(r.token, missing_ok=True)


def test_endless_durations_saturate(client: Client) -> None:
    """protocol.md section 4: deadlines saturate at 2**64 - 1; an endless TTL or lifetime
    goes on the wire as that, and the session is served like any other."""
    top = 2**64 - 1
    s = client.create({"user": "alice"}, idle_ttl=float("inf"), max_lifetime=float("inf"))
    assert s.idle_ttl_ms == top and s.absolute_deadline_ms == top
    assert s.expires_at_ms == top
    assert client.get(s.token).attributes == {"user": b"alice"}
    s = client.create({}, idle_ttl=1e30)
    assert s.idle_ttl_ms == top and s.absolute_deadline_ms == 0 and s.expires_at_ms == top
    with pytest.raises(ValueError):
        client.create({}, idle_ttl=float("nan"))
    assert SessionMeta(1, 0, 5, top, 0).deadline_ms == top
    assert SessionMeta(1, 0, 5, top, 7).deadline_ms == 7

def test_compare_and_set(client: Client) -> None:
    s = client.create({"n": b"0"})
    client.set(s.token, {"n": b"1"}, if_version=1)
    with pytest.raises(VersionConflict) as e:
        client.set(s.token, {"n": b"stale"}, if_version=1)
    assert (e.value.code, e.value.name) == (302, "VERSION_CONFLICT")
    g = client.get(s.token)
    assert g.version == 2 and g.attributes == {"n": b"1"}
    # Unconditional writes and empty writes still bump the version.
    assert client.set(s.token).version == 3


def test_session_follows_to_another_node(cluster: Cluster) -> None:
    a, b, c = (Client(addr) for addr in cluster.clients)
    s = a.create({"user": b"bob"})
    at_b = b.get(s.token)
    assert at_b.token_changed and at_b.token != s.token
    assert at_b.attributes == {"user": b"bob"}
    w = b.set(at_b.token, {"step": b"2"}, if_version=at_b.version)
    assert not w.token_changed
    at_c = c.get(w.token)
    assert at_c.token_changed and at_c.attributes == {"user": b"bob", "step": b"2"}
    # The first token still finds the session: node a follows its forwarding entry and
    # copies it back. That token names a, but an older generation, so a sends a new one.
    back = a.get(s.token)
    assert back.attributes == {"user": b"bob", "step": b"2"}
    assert back.token_changed and back.token != s.token
    for x in (a, b, c):
        x.close()


def test_errors_keep_the_connection(client: Client) -> None:
    with pytest.raises(InvalidToken) as e:
        client.get("not-a-token")
    assert e.value.code == 300
    with pytest.raises(InvalidRequest):
        client.set("x", {"a": b"1"}, deletes=["a"])
    with pytest.raises(LimitExceeded):
        client.create({"big": b"x" * (1024 * 1024 + 1)})
    with pytest.raises(LimitExceeded):
        client.create({"n" * 257: b""})
    # None of that cost the pooled connection.
    assert client.pool.size == 1
    assert client.ping(b"still here") >= 0


def test_node_side_invalid_request_does_not_close(cluster: Cluster) -> None:
    """protocol.md: a SET that puts and deletes one name gets INVALID_REQUEST (106) and the
    connection stays open. Sent raw, past the SDK's own check."""
    from sessync.connection import Connection, parse_address
    from sessync.wire import DEFAULT_LIMITS, Set

    c = Client(cluster.clients[0])
    token = c.create({"a": b"1"}).token
    conn = Connection(
        parse_address(cluster.clients[0]), connect_timeout=5, limits=DEFAULT_LIMITS, password=None, client_name="t"
    )
    (out,) = conn.exchange([Set(token, None, {"a": b"2"}, ["a"])], time.monotonic() + 5)
    assert isinstance(out, InvalidRequest) and out.code == 106
    assert not conn.broken
    conn.close()


def test_pipeline_matches_replies_by_id(client: Client) -> None:
    tokens = [client.create({"i": str(i)}).token for i in range(50)]
    with client.pipeline() as p:
        gets = [p.get(t) for t in tokens]
        bad = p.get("garbage")
        sets = [p.set(t, {"j": b"x"}, if_version=1) for t in tokens]
        stats = p.stats()
    for i, g in enumerate(gets):
        assert g.result().attributes == {"i": str(i).encode()}
    assert isinstance(bad.error(), InvalidToken)
    assert all(s.result().version == 2 for s in sets)
    assert stats.result()["requests"] > 0
    # execute() with raise_on_error raises the first failure after all replies are in.
    p = client.pipeline()
    ok = p.touch(tokens[0])
    p.set(tokens[1], {"j": b"y"}, if_version=1)
    with pytest.raises(VersionConflict):
        p.execute()
    assert ok.result().version == 2
    with pytest.raises(RuntimeError):
        p.execute()


def test_big_pipeline_does_not_deadlock(client: Client) -> None:
    token = client.create({"v": b"x" * 60_000}).token
    p = client.pipeline()
    for _ in range(300):  # ~18 MB of replies: far more than the socket buffers
        p.get(token)
    results = p.execute()
    assert len(results) == 300 and all(r.attributes["v"] == b"x" * 60_000 for r in results)


def test_pool_is_thread_safe_and_bounded(cluster: Cluster) -> None:
    c = Client(cluster.clients[1], pool_size=4)
    token = c.create({"n": b"0"}).token
    errors: List[BaseException] = []
    peak = [0]

    def work() -> None:
        try:
            for _ in range(40):
                assert c.get(token).attributes["n"] == b"0"
                peak[0] = max(peak[0], c.pool.size)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert 1 <= peak[0] <= 4 and c.pool.size <= 4
    c.close()


def test_pool_exhausted_is_bounded(cluster: Cluster) -> None:
    c = Client(cluster.clients[0], pool_size=1, timeout=0.3)
    held = c.pool.acquire(time.monotonic() + 5)
    start = time.monotonic()
    with pytest.raises(PoolExhausted):
        c.ping()
    assert time.monotonic() - start < 2
    c.pool.release(held)
    c.ping()
    c.close()


def test_password() -> None:
    node = Cluster(1, ["--password", "s3cret"])
    try:
        addr = node.clients[0]
        with pytest.raises(AuthRequired) as e:
            Client(addr).ping()
        assert e.value.code == 200
        with pytest.raises(AuthFailed) as e2:
            Client(addr, password="wrong").ping()
        assert e2.value.code == 201
        c = Client(addr, password="s3cret")
        assert c.create({"a": b"1"}).version == 1
        c.close()
    finally:
        node.stop()


def test_owner_unreachable_is_bounded() -> None:
    pair = Cluster(2)
    try:
        a, b = Client(pair.clients[0]), Client(pair.clients[1], timeout=10)
        token = a.create({"x": b"1"}).token
        a.close()
        pair.nodes[0].stop()
        start = time.monotonic()
        with pytest.raises(OwnerUnreachable) as e:
            b.get(token)
        assert e.value.code == 400 and e.value.retryable
        assert time.monotonic() - start < 5
        b.close()
    finally:
        pair.stop()


def test_connection_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionLost):
        Client(f"127.0.0.1:{port}", timeout=1).ping()


# A scripted fake node -----------------------------------------------------------------------

Script = Callable[[socket.socket, Callable[[], Frame]], None]


class FakeNode:
    """Accepts connections and runs ``script(sock, next_frame)`` on each, after answering
    HELLO. Counts connections."""

    def __init__(self, script: Script) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(10)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.script = script
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        buf = bytearray()

        def next_frame() -> Frame:
            while True:
                got = split_frame(buf, 1 << 22)
                if got:
                    del buf[: got[1]]
                    return got[0]
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError
                buf.extend(chunk)

        try:
            hello = next_frame()
            assert hello.opcode == Op.HELLO
            sock.sendall(reply_frame(hello.request_id, HelloOk(1, "fake", 1 << 22)))
            self.script(sock, next_frame)
        except (EOFError, OSError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def reply_frame(rid: int, reply: object) -> bytes:
    op, body = encode_reply(reply)  # type: ignore[arg-type]
    return encode_frame(op, rid, body)


META = SessionMeta(1, 1, 1, 1000, 0)


def test_replies_in_any_order() -> None:
    def script(sock: socket.socket, nxt: Callable[[], Frame]) -> None:
        while True:
            frames = [nxt() for _ in range(3)]
            for f in reversed(frames):
                req = decode_request(f)
                sock.sendall(reply_frame(f.request_id, SessionReply(None, META, {"t": req.token.encode()})))  # type: ignore[union-attr]

    node = FakeNode(script)
    c = Client(node.addr, timeout=3)
    with c.pipeline() as p:
        r = [p.get(t) for t in ("a", "b", "c")]
    assert [x.result().attributes["t"] for x in r] == [b"a", b"b", b"c"]
    assert [x.result().token for x in r] == ["a", "b", "c"]
    c.close()
    node.close()


@pytest.mark.parametrize(
    "bad",
    [
        "bad_crc",
        "unknown_id",
        "too_large",
        "truncated_body",
        "wrong_kind",
    ],
)
def test_a_broken_connection_is_never_reused(bad: str) -> None:
    def script(sock: socket.socket, nxt: Callable[[], Frame]) -> None:
        f = nxt()
        good = reply_frame(f.request_id, SessionReply(None, META, {}))
        if bad == "bad_crc":
            sock.sendall(good[:-1] + bytes([good[-1] ^ 0xFF]))
        elif bad == "unknown_id":
            sock.sendall(reply_frame(f.request_id + 1000, SessionReply(None, META, {})))
        elif bad == "too_large":
            sock.sendall(b"\x7f\xff\xff\xff")
        elif bad == "truncated_body":
            op, body = encode_reply(SessionReply(None, META, {}))
            sock.sendall(encode_frame(op, f.request_id, body[:-1]))
        elif bad == "wrong_kind":
            sock.sendall(reply_frame(f.request_id, HelloOk(1, "x", 1)))
        # Then behave: a later connection that gets a good reply proves a new one was used.
        while True:
            f = nxt()
            sock.sendall(reply_frame(f.request_id, SessionReply(None, META, {})))

    node = FakeNode(script)
    c = Client(node.addr, timeout=3)
    with pytest.raises(ProtocolViolation):
        c.get("tok")
    assert c.pool.size == 0 and c.pool.idle == 0
    with pytest.raises(ProtocolViolation):
        c.get("tok")  # a fresh connection, with the same misbehaviour
    assert node.connections == 2
    c.close()
    node.close()


def test_timeout_discards_the_connection() -> None:
    def script(sock: socket.socket, nxt: Callable[[], Frame]) -> None:
        f = nxt()
        time.sleep(1.0)  # too late
        sock.sendall(reply_frame(f.request_id, SessionReply(None, META, {})))
        while True:
            f = nxt()
            sock.sendall(reply_frame(f.request_id, SessionReply(None, META, {})))

    node = FakeNode(script)
    c = Client(node.addr, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(RequestTimeout):
        c.get("tok")
    assert time.monotonic() - start < 1.0
    assert c.pool.size == 0
    c.close()
    node.close()


def test_connection_error_frame_fails_all_waiting_and_closes() -> None:
    def script(sock: socket.socket, nxt: Callable[[], Frame]) -> None:
        nxt()
        nxt()
        sock.sendall(reply_frame(0, ErrorReply(503, "idle")))

    node = FakeNode(script)
    c = Client(node.addr, timeout=3)
    p = c.pipeline()
    a, b = p.get("x"), p.get("y")
    p.execute(raise_on_error=False)
    for x in (a, b):
        err: Optional[SessyncError] = x.error()
        assert err is not None and err.code == 503 and err.name == "TIMEOUT"
    assert c.pool.size == 0
    c.close()
    node.close()


def test_idle_connection_closed_by_node_is_not_handed_out() -> None:
    def script(sock: socket.socket, nxt: Callable[[], Frame]) -> None:
        f = nxt()
        sock.sendall(reply_frame(f.request_id, SessionReply(None, META, {})))
        # then the node closes it (e.g. its idle timeout)

    node = FakeNode(script)
    c = Client(node.addr, timeout=3)
    c.get("tok")
    time.sleep(0.2)
    c.get("tok")  # must not fail with ConnectionLost: the dead idle connection is skipped
    assert node.connections == 2
    c.close()
    node.close()
