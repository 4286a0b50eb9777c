"""The client-port wire format of protocol.md, as plain functions over bytes (no sockets).

Frames (protocol.md section 2): ``u32 L`` then ``u8 version, u8 opcode, u16 flags, u64
request id``, the body, and a CRC-32 (``zlib.crc32``) over header and body. Every
integer is big-endian. :func:`split_frame` takes one frame off the front of a buffer,
telling "need more bytes" (``None``) apart from "these bytes are wrong"
(:class:`~sessync.errors.ProtocolViolation` carrying the protocol's code); every length
and count is checked against :class:`Limits` before anything is allocated for it.

Both directions of the client port are here, so the conformance tests can decode and
re-encode every example of protocol.md, and tests can play a node.
"""

import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import LimitExceeded, ProtocolViolation

__all__ = [
    "PROTOCOL_VERSION",
    "HEADER_LEN",
    "Limits",
    "Frame",
    "Op",
    "encode_frame",
    "split_frame",
    "Reader",
    "Writer",
    "SessionMeta",
    "Hello",
    "Ping",
    "Create",
    "Get",
    "Set",
    "Touch",
    "Rotate",
    "Destroy",
    "Stats",
    "HelloOk",
    "Pong",
    "SessionReply",
    "Done",
    "StatsReply",
    "ErrorReply",
    "Request",
    "Reply",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
]

PROTOCOL_VERSION = 1
#: version, opcode, flags, request id.
HEADER_LEN = 12
_LEN = struct.Struct(">I")
_HEADER = struct.Struct(">BBHQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Limits:
    """Sizes and counts a receiver accepts (protocol.md section 2.2, with its defaults)."""

    max_frame_len: int = 4 * 1024 * 1024
    max_attributes: int = 1024
    max_name_len: int = 256
    max_value_len: int = 1024 * 1024
    max_token_len: int = 256
    max_text_len: int = 1024


DEFAULT_LIMITS = Limits()


class Op:
    """Opcodes of the client port (protocol.md section 5)."""

    HELLO = 0x01
    PING = 0x02
    CREATE = 0x03
    GET = 0x04
    SET = 0x05
    TOUCH = 0x06
    ROTATE = 0x07
    DESTROY = 0x08
    STATS = 0x09
    HELLO_OK = 0x81
    PONG = 0x82
    SESSION = 0x83
    DONE = 0x84
    STATS_REPLY = 0x85
    ERROR = 0xFF


@dataclass(frozen=True)
class Frame:
    """One frame whose length, CRC, version and flags have been checked."""

    version: int
    opcode: int
    request_id: int
    body: bytes


def encode_frame(opcode: int, request_id: int, body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes of one frame: length prefix, header, body, CRC."""
    header = _HEADER.pack(version, opcode, 0, request_id)
    crc = zlib.crc32(body, zlib.crc32(header)) & 0xFFFFFFFF
    return _LEN.pack(HEADER_LEN + len(body) + 4) + header + body + _U32.pack(crc)


def split_frame(buf: Union[bytes, bytearray, memoryview], max_frame_len: int) -> Optional[Tuple[Frame, int]]:
    """Takes one frame from the front of ``buf``: ``(frame, bytes used)``, or ``None`` when
    ``buf`` holds only part of a frame. Raises :class:`ProtocolViolation` (code 102, 100,
    101 or 103, in protocol.md 2.3's order) for a frame that is wrong; the length prefix is
    judged before any of the body is waited for."""
    if len(buf) < 4:
        return None
    (length,) = _LEN.unpack_from(buf, 0)
    if length > max_frame_len:
        raise ProtocolViolation(
            f"frame length {length} exceeds the limit of {max_frame_len}", code=102, name="FRAME_TOO_LARGE"
        )
    if length < HEADER_LEN + 4:
        raise ProtocolViolation(f"frame length {length} is below 16", code=100, name="MALFORMED_FRAME")
    if len(buf) < 4 + length:
        return None
    content = bytes(buf[4 : length])  # header and body
    (crc,) = _U32.unpack_from(buf, length)
    if zlib.crc32(content) & 0xFFFFFFFF != crc:
        raise ProtocolViolation("CRC32 mismatch", code=101, name="BAD_CRC")
    version, opcode, flags, request_id = _HEADER.unpack_from(content, 0)
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(f"protocol version {version}", code=103, name="UNSUPPORTED_VERSION")
    if flags != 0:
        raise ProtocolViolation(f"reserved flags {flags:#06x} set", code=100, name="MALFORMED_FRAME")
    return Frame(version, opcode, request_id, content[HEADER_LEN:]), 4 + length


def _malformed(what: str) -> ProtocolViolation:
    return ProtocolViolation(what, code=100, name="MALFORMED_FRAME")


def _over(what: str, n: int, limit: int) -> LimitExceeded:
    return LimitExceeded(f"{what} is {n}, over the limit of {limit}")


class Reader:
    """Reads one body field by field. A truncated field, a value the layout does not allow or
    bytes left over raise MALFORMED_FRAME (100); a length or count over a limit raises
    LIMIT_EXCEEDED (105), judged from the length field before the bytes are read."""

    def __init__(self, body: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
        self._b = body
        self._pos = 0
        self.limits = limits

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._b):
            raise _malformed("body ends in the middle of a field")
        out = self._b[self._pos : end]
        self._pos = end
        return out

    def remaining(self) -> int:
        return len(self._b) - self._pos

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def boolean(self) -> bool:
        b = self.u8()
        if b > 1:
            raise _malformed(f"boolean byte {b}")
        return b == 1

    def present(self) -> bool:
        b = self.u8()
        if b > 1:
            raise _malformed(f"option presence byte {b}")
        return b == 1

    def string(self, limit: int, what: str = "string") -> str:
        n = self.u16()
        if n > limit:
            raise _over(f"{what} length", n, limit)
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(f"{what} is not UTF-8") from None

    def blob(self, what: str = "value") -> bytes:
        n = self.u32()
        if n > self.limits.max_value_len:
            raise _over(f"{what} length", n, self.limits.max_value_len)
        return self._take(n)

    def attributes(self) -> Dict[str, bytes]:
        n = self.u16()
        if n > self.limits.max_attributes:
            raise _over("attribute count", n, self.limits.max_attributes)
        out: Dict[str, bytes] = {}
        prev: Optional[bytes] = None
        for _ in range(n):
            name = self.string(self.limits.max_name_len, "attribute name")
            key = name.encode("utf-8")
            if prev is not None and key <= prev:
                raise _malformed("attribute names out of order or repeated")
            prev = key
            out[name] = self.blob()
        return out

    def names(self) -> List[str]:
        n = self.u16()
        if n > self.limits.max_attributes:
            raise _over("name count", n, self.limits.max_attributes)
        return [self.string(self.limits.max_name_len, "attribute name") for _ in range(n)]

    def meta(self) -> "SessionMeta":
        return SessionMeta(self.u64(), self.u64(), self.u64(), self.u64(), self.u64())

    def end(self) -> None:
        if self._pos != len(self._b):
            raise _malformed(f"{len(self._b) - self._pos} bytes left over after the body")


class Writer:
    """Builds one body. Every length is checked against the limits before it is written, so
    nothing is ever cut to fit a u16 or u32 field (a cut name would mean another name)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._parts: List[bytes] = []
        self.limits = limits

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def u8(self, v: int) -> None:
        self._parts.append(bytes((v,)))

    def u16(self, v: int) -> None:
        self._parts.append(_U16.pack(v))

    def u32(self, v: int) -> None:
        self._parts.append(_U32.pack(v))

    def u64(self, v: int) -> None:
        if not 0 <= v < 1 << 64:
            raise LimitExceeded(f"{v} does not fit in a u64")
        self._parts.append(_U64.pack(v))

    def raw(self, b: bytes) -> None:
        self._parts.append(bytes(b))

    def string(self, s: str, limit: int, what: str = "string") -> None:
        b = s.encode("utf-8")
        limit = min(limit, 0xFFFF)
        if len(b) > limit:
            raise _over(f"{what} length", len(b), limit)
        self.u16(len(b))
        self._parts.append(b)

    def blob(self, b: bytes, what: str = "value") -> None:
        limit = min(self.limits.max_value_len, 0xFFFFFFFF)
        if len(b) > limit:
            raise _over(f"{what} length", len(b), limit)
        self.u32(len(b))
        self._parts.append(bytes(b))

    def attributes(self, attrs: Mapping[str, bytes]) -> None:
        if len(attrs) > min(self.limits.max_attributes, 0xFFFF):
            raise _over("attribute count", len(attrs), self.limits.max_attributes)
        # The one canonical order: by the names' UTF-8 bytes.
        items = sorted(((k.encode("utf-8"), k, v) for k, v in attrs.items()), key=lambda t: t[0])
        self.u16(len(items))
        for _, name, value in items:
            self.string(name, self.limits.max_name_len, "attribute name")
            self.blob(value)

    def names(self, names: Sequence[str]) -> None:
        if len(names) > min(self.limits.max_attributes, 0xFFFF):
            raise _over("name count", len(names), self.limits.max_attributes)
        self.u16(len(names))
        for n in names:
            self.string(n, self.limits.max_name_len, "attribute name")

    def meta(self, m: "SessionMeta") -> None:
        for v in (m.version, m.created_ms, m.last_access_ms, m.idle_ttl_ms, m.absolute_deadline_ms):
            self.u64(v)


# Messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionMeta:
    """protocol.md section 4: 40 bytes of version and times (Unix milliseconds)."""

    version: int
    created_ms: int
    last_access_ms: int
    idle_ttl_ms: int
    absolute_deadline_ms: int

    @property
    def deadline_ms(self) -> int:
        """When the session expires: idle deadline, capped by the absolute one if any. The
        sum saturates at 2**64 - 1 like every deadline of protocol.md section 4."""
        idle = min(self.last_access_ms + self.idle_ttl_ms, 0xFFFF_FFFF_FFFF_FFFF)
        if self.absolute_deadline_ms:
            return min(idle, self.absolute_deadline_ms)
        return idle


@dataclass(frozen=True)
class Hello:
    min_version: int
    max_version: int
    client_name: str
    password: Optional[str] = None


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Create:
    idle_ttl_ms: int
    max_lifetime_ms: int
    attributes: Dict[str, bytes]


@dataclass(frozen=True)
class Get:
    token: str
    names: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Set:
    token: str
    if_version: Optional[int]
    puts: Dict[str, bytes]
    deletes: List[str]


@dataclass(frozen=True)
class Touch:
    token: str


@dataclass(frozen=True)
class Rotate:
    token: str


@dataclass(frozen=True)
class Destroy:
    token: str


@dataclass(frozen=True)
class Stats:
    pass


@dataclass(frozen=True)
class HelloOk:
    version: int
    server_name: str
    max_frame_len: int


@dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclass(frozen=True)
class SessionReply:
    token: Optional[str]
    meta: SessionMeta
    attributes: Dict[str, bytes]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class StatsReply:
    #: In wire order (a list, so re-encoding reproduces the bytes).
    counters: List[Tuple[str, int]]


@dataclass(frozen=True)
class ErrorReply:
    code: int
    message: str


Request = Union[Hello, Ping, Create, Get, Set, Touch, Rotate, Destroy, Stats]
Reply = Union[HelloOk, Pong, SessionReply, Done, StatsReply, ErrorReply]

_TOKEN_OPS: Dict[int, Callable[[str], Request]] = {Op.TOUCH: Touch, Op.ROTATE: Rotate, Op.DESTROY: Destroy}


def encode_request(req: Request, limits: Limits = DEFAULT_LIMITS) -> Tuple[int, bytes]:
    """``(opcode, body)`` of a request; raises :class:`LimitExceeded` for anything over a
    limit (nothing is cut)."""
    w = Writer(limits)
    if isinstance(req, Hello):
        w.u8(req.min_version)
        w.u8(req.max_version)
        w.string(req.client_name, limits.max_text_len, "client name")
        if req.password is None:
            w.u8(0)
        else:
            w.u8(1)
            w.string(req.password, limits.max_text_len, "password")
        return Op.HELLO, w.getvalue()
    if isinstance(req, Ping):
        w.blob(req.payload, "ping payload")
        return Op.PING, w.getvalue()
    if isinstance(req, Create):
        w.u64(req.idle_ttl_ms)
        w.u64(req.max_lifetime_ms)
        w.attributes(req.attributes)
        return Op.CREATE, w.getvalue()
    if isinstance(req, Get):
        w.string(req.token, limits.max_token_len, "token")
        w.names(req.names)
        return Op.GET, w.getvalue()
    if isinstance(req, Set):
        w.string(req.token, limits.max_token_len, "token")
        if req.if_version is None:
            w.u8(0)
        else:
            w.u8(1)
            w.u64(req.if_version)
        w.attributes(req.puts)
        w.names(req.deletes)
        return Op.SET, w.getvalue()
    if isinstance(req, (Touch, Rotate, Destroy)):
        w.string(req.token, limits.max_token_len, "token")
        op = {Touch: Op.TOUCH, Rotate: Op.ROTATE, Destroy: Op.DESTROY}[type(req)]
        return op, w.getvalue()
    if isinstance(req, Stats):
        return Op.STATS, b""
    raise TypeError(f"not a request: {req!r}")


def decode_request(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> Request:
    """The request a frame carries; raises UNKNOWN_OPCODE (104) for an opcode that is not a
    client request, MALFORMED_FRAME (100) or LIMIT_EXCEEDED (105) for a bad body."""
    r = Reader(frame.body, limits)
    op = frame.opcode
    req: Request
    if op == Op.HELLO:
        lo, hi = r.u8(), r.u8()
        name = r.string(limits.max_text_len, "client name")
        pw = r.string(limits.max_text_len, "password") if r.present() else None
        req = Hello(lo, hi, name, pw)
    elif op == Op.PING:
        req = Ping(r.blob("ping payload"))
    elif op == Op.CREATE:
        req = Create(r.u64(), r.u64(), r.attributes())
    elif op == Op.GET:
        req = Get(r.string(limits.max_token_len, "token"), r.names())
    elif op == Op.SET:
        token = r.string(limits.max_token_len, "token")
        if_version = r.u64() if r.present() else None
        req = Set(token, if_version, r.attributes(), r.names())
    elif op in _TOKEN_OPS:
        req = _TOKEN_OPS[op](r.string(limits.max_token_len, "token"))
    elif op == Op.STATS:
        req = Stats()
    else:
        raise ProtocolViolation(f"opcode {op:#04x} is not a client request", code=104, name="UNKNOWN_OPCODE")
    r.end()
    return req


def encode_reply(reply: Reply, limits: Limits = DEFAULT_LIMITS) -> Tuple[int, bytes]:
    """``(opcode, body)`` of a reply."""
    w = Writer(limits)
    if isinstance(reply, HelloOk):
        w.u8(reply.version)
        w.string(reply.server_name, limits.max_text_len, "server name")
        w.u32(reply.max_frame_len)
        return Op.HELLO_OK, w.getvalue()
    if isinstance(reply, Pong):
        w.blob(reply.payload, "ping payload")
        return Op.PONG, w.getvalue()
    if isinstance(reply, SessionReply):
        if reply.token is None:
            w.u8(0)
        else:
            w.u8(1)
            w.string(reply.token, limits.max_token_len, "token")
        w.meta(reply.meta)
        w.attributes(reply.attributes)
        return Op.SESSION, w.getvalue()
    if isinstance(reply, Done):
        return Op.DONE, b""
    if isinstance(reply, StatsReply):
        w.u16(len(reply.counters))
        for name, value in reply.counters:
            w.string(name, limits.max_text_len, "stat name")
            w.u64(value)
        return Op.STATS_REPLY, w.getvalue()
    if isinstance(reply, ErrorReply):
        w.u16(reply.code)
        w.string(reply.message, limits.max_text_len, "error message")
        return Op.ERROR, w.getvalue()
    raise TypeError(f"not a reply: {reply!r}")


def decode_reply(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> Reply:
    """The reply a frame carries; the same errors as :func:`decode_request`."""
    r = Reader(frame.body, limits)
    op = frame.opcode
    reply: Reply
    if op == Op.HELLO_OK:
        reply = HelloOk(r.u8(), r.string(limits.max_text_len, "server name"), r.u32())
    elif op == Op.PONG:
        reply = Pong(r.blob("ping payload"))
    elif op == Op.SESSION:
        token = r.string(limits.max_token_len, "token") if r.present() else None
        reply = SessionReply(token, r.meta(), r.attributes())
    elif op == Op.DONE:
        reply = Done()
    elif op == Op.STATS_REPLY:
        n = r.u16()
        # protocol.md gives no limit for the counter count; an entry takes at least 10
        # bytes, so a count the body cannot hold is refused before the list is built.
        if n * 10 > r.remaining():
            raise _malformed(f"stats count {n} does not fit in the body")
        counters = [(r.string(limits.max_text_len, "stat name"), r.u64()) for _ in range(n)]
        reply = StatsReply(counters)
    elif op == Op.ERROR:
        reply = ErrorReply(r.u16(), r.string(limits.max_text_len, "error message"))
    else:
        raise ProtocolViolation(f"opcode {op:#04x} is not a client reply", code=104, name="UNKNOWN_OPCODE")
    r.end()
    return reply
