"""Conformance with protocol.md, the shared vectors (protocol.md section 14).

Every ``<!-- example: KIND NAME -->`` block is decoded and re-encoded byte for byte: client
frames with the SDK's own codec (``sessync.wire``), peer frames with the small peer codec
below (the SDK does not speak the peer port), tokens with ``hmac``. The expected field
values are written here from the prose, independently of the document's bytes, the same
way crates/proto/tests/protocol_md.rs does it.
"""

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from sessync import errors
from sessync.wire import (
    Create,
    Destroy,
    Done,
    ErrorReply,
    Frame,
    Get,
    Hello,
    HelloOk,
    Ping,
    Pong,
    Reader,
    Rotate,
    SessionMeta,
    SessionReply,
    Set,
    Stats,
    StatsReply,
    Touch,
    Writer,
    decode_reply,
    decode_request,
    encode_frame,
    encode_reply,
    encode_request,
    split_frame,
)

DOC_PATH = Path(os.environ.get("SESSYNC_PROTOCOL_MD", Path(__file__).resolve().parents[3] / "protocol.md"))
MAX_FRAME = 4 * 1024 * 1024

SECRET = b"sessync-docs-example-secret-0001"
TOKEN = "AgAAESIzRFVmd4iZqrvM3e7_AAAAAAAAAAAECgAAARzpAJY_dtzQzhLirrcpiVPU3tc"
SESSION = bytes.fromhex("00112233445566778899aabbccddeeff")
SESSION_2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")
CREATED = 1_700_000_000_000
IDLE = 1_800_000
TRANSFER = 0x0123456789ABCDEF
NODE_A = b"\x11" * 16
NODE_B = b"\x22" * 16
NONCE_B = bytes(range(0x00, 0x20))
NONCE_A = bytes(range(0x20, 0x40))


def meta(version: int, last_access: int) -> SessionMeta:
    return SessionMeta(version, CREATED, last_access, IDLE, 0)


# Expected client-port messages: name -> (request id, message), from the prose.
CLIENT_REQUESTS = {
    "hello": (1, Hello(1, 1, "example-client/1.0", "hunter2")),
    "ping": (2, Ping(b"ping")),
    "create": (3, Create(1_800_000, 0, {"user": b"alice"})),
    "get": (4, Get(TOKEN, ["user"])),
    "get_all": (5, Get(TOKEN, [])),
    "set": (6, Set(TOKEN, 1, {"cart": b"1x book"}, ["csrf"])),
    "touch": (7, Touch(TOKEN)),
    "rotate": (8, Rotate(TOKEN)),
    "destroy": (9, Destroy(TOKEN)),
    "stats": (10, Stats()),
}
CLIENT_RESPONSES = {
    "hello_ok": (1, HelloOk(1, "sessync/0.1.0", 4194304)),
    "pong": (2, Pong(b"ping")),
    "session_created": (3, SessionReply(TOKEN, meta(1, CREATED), {"user": b"alice"})),
    "session_get": (4, SessionReply(None, meta(1, CREATED + 60_000), {"user": b"alice"})),
    "session_set": (6, SessionReply(None, meta(2, CREATED + 120_000), {})),
    "done": (9, Done()),
    "stats_reply": (10, StatsReply([("sessions", 1), ("copies_received", 0)])),
    "error_version_conflict": (6, ErrorReply(302, "expected version 1, session is at 2")),
    "error_bad_crc": (0, ErrorReply(101, "CRC32 mismatch")),
}
# Examples of messages this SDK does not speak: MEMBERS and DRAIN are operator requests (the CLI's
# `sessync members`, the Rust SDK); applications have no use for it. The Rust conformance
# test (crates/proto/tests/protocol_md.rs) decodes them.
NOT_SPOKEN = {("client-request", "members"), ("client-response", "members_reply"), ("client-request", "drain")} | {
    # The peer messages of leaving, lookup and repair (protocol.md 17.5): node to node only,
    # decoded field by field by the Rust conformance test.
    ("peer", n) for n in ['take', 'release', 'locate', 'epoch', 'ids', 'located', 'epoch_is']
}


# A small peer-port codec (protocol.md section 10), enough to decode and re-encode the
# examples. Messages are (opcode, dict of fields).
def _addr_read(r: Reader) -> Tuple[str, int]:
    fam = r.u8()
    if fam == 4:
        ip = str(ipaddress.IPv4Address(r.raw(4)))
    elif fam == 6:
        ip = str(ipaddress.IPv6Address(r.raw(16)))
    else:
        raise errors.ProtocolViolation(f"address family {fam}")
    return ip, r.u16()


def _addr_write(w: Writer, addr: Tuple[str, int]) -> None:
    ip = ipaddress.ip_address(addr[0])
    w.u8(4 if ip.version == 4 else 6)
    w.raw(ip.packed)
    w.u16(addr[1])


def _addrs_read(r: Reader) -> List[Tuple[str, int]]:
    n = r.u8()
    if n > 8:
        raise errors.ProtocolViolation(f"{n} holders", code=100)
    return [_addr_read(r) for _ in range(n)]


def _addrs_write(w: Writer, addrs: List[Tuple[str, int]]) -> None:
    assert len(addrs) <= 8
    w.u8(len(addrs))
    for a in addrs:
        _addr_write(w, a)


def _acks_read(r: Reader) -> List[Tuple[bytes, int]]:
    n = r.u16()
    if n == 0:
        raise errors.ProtocolViolation("COPY_ACKS acknowledges nothing", code=100)
    if n > 4096:
        raise errors.ProtocolViolation(f"{n} acknowledgements", code=105)
    return [(r.raw(16), r.u64()) for _ in range(n)]


def _acks_write(w: Writer, acks: List[Tuple[bytes, int]]) -> None:
    assert 1 <= len(acks) <= 4096
    w.u16(len(acks))
    for session_id, transfer in acks:
        w.raw(session_id)
        w.u64(transfer)


def _record_read(r: Reader) -> dict:
    return {"id": r.raw(16), "meta": r.meta(), "attributes": r.attributes()}


def _record_write(w: Writer, rec: dict) -> None:
    w.raw(rec["id"])
    w.meta(rec["meta"])
    w.attributes(rec["attributes"])


PEER_LAYOUTS = {
    0x40: ("auth_hello", [("node_id", 16), ("key_id", "u8"), ("nonce", 32), ("advertised", "addr")]),
    0xC0: ("auth_challenge", [("node_id", 16), ("nonce", 32), ("proof", 32), ("advertised", "addr")]),
    0x41: ("auth_proof", [("proof", 32)]),
    0xC1: ("auth_ok", []),
    0x42: ("ping", [("payload", "u64")]),
    0xC2: ("pong", [("payload", "u64")]),
    0x43: ("copy", [("session_id", 16), ("last_transfer", "u64")]),
    0xC3: ("copy_data", [("transfer", "u64"), ("holders", "addrs"), ("record", "record")]),
    0xC4: ("moved", [("session_id", 16), ("owner", "addr")]),
    0xC5: ("not_found", [("session_id", 16)]),
    0x44: ("copy_ack", [("session_id", 16), ("transfer", "u64")]),
    0xC6: ("ok", []),
    0x45: ("replicate", [("generation", "u64"), ("record", "record")]),
    0x46: ("drop", [("session_id", 16), ("generation", "u64")]),
    0x4C: ("retire", [("session_id", 16), ("generation", "u64")]),
    0x4D: ("copy_refused", [("session_id", 16), ("transfer", "u64")]),
    0x47: ("promote", [("session_id", 16), ("last_transfer", "u64"), ("failed_owner", "addr")]),
    0x4E: ("features", [("features", "u64")]),
    0xCA: ("features_are", [("features", "u64")]),
    0x4F: ("copy_acks", [("acks", "acks")]),
    0x50: (
        "replicate_claim",
        [
            ("generation", "u64"),
            ("base_owner", "addr"),
            ("base_generation", "u64"),
            ("base_writer", "u32"),
            ("record", "record"),
        ],
    ),
    0xFF: ("error", [("code", "u16"), ("message", "text")]),
}


def peer_decode(frame: Frame) -> Tuple[str, dict]:
    if frame.opcode not in PEER_LAYOUTS:
        raise errors.ProtocolViolation("unknown peer opcode", code=104)
    name, layout = PEER_LAYOUTS[frame.opcode]
    r = Reader(frame.body)
    out: dict = {}
    for fname, kind in layout:
        if isinstance(kind, int):
            out[fname] = r.raw(kind)
        elif kind == "u8":
            out[fname] = r.u8()
        elif kind == "u16":
            out[fname] = r.u16()
        elif kind == "u32":
            out[fname] = r.u32()
        elif kind == "u64":
            out[fname] = r.u64()
        elif kind == "addr":
            out[fname] = _addr_read(r)
        elif kind == "addrs":
            out[fname] = _addrs_read(r)
        elif kind == "acks":
            out[fname] = _acks_read(r)
        elif kind == "record":
            out[fname] = _record_read(r)
        elif kind == "text":
            out[fname] = r.string(1024)
    r.end()
    return name, out


def peer_encode(opcode: int, fields: dict) -> bytes:
    _, layout = PEER_LAYOUTS[opcode]
    w = Writer()
    for fname, kind in layout:
        v = fields[fname]
        if isinstance(kind, int):
            assert len(v) == kind
            w.raw(v)
        elif kind == "u8":
            w.u8(v)
        elif kind == "u16":
            w.u16(v)
        elif kind == "u32":
            w.u32(v)
        elif kind == "u64":
            w.u64(v)
        elif kind == "addr":
            _addr_write(w, v)
        elif kind == "addrs":
            _addrs_write(w, v)
        elif kind == "acks":
            _acks_write(w, v)
        elif kind == "record":
            _record_write(w, v)
        elif kind == "text":
            w.string(v, 1024)
    return w.getvalue()


def proof(role: int) -> bytes:
    data = b"sessync-peer-auth" + bytes([role, 1, 0]) + NONCE_B + NONCE_A + NODE_B + NODE_A
    return hmac.new(SECRET, data, hashlib.sha256).digest()


RECORD = {"id": SESSION, "meta": meta(1, CREATED), "attributes": {"user": b"alice"}}
PEER = {
    "auth_hello": (
        1,
        0x40,
        {"node_id": NODE_B, "key_id": 0, "nonce": NONCE_B, "advertised": ("10.0.0.2", 7401)},
    ),
    "auth_challenge": (
        1,
        0xC0,
        {"node_id": NODE_A, "nonce": NONCE_A, "proof": proof(2), "advertised": ("10.0.0.1", 7401)},
    ),
    "auth_proof": (2, 0x41, {"proof": proof(1)}),
    "auth_ok": (2, 0xC1, {}),
    "peer_ping": (3, 0x42, {"payload": 1}),
    "peer_pong": (3, 0xC2, {"payload": 1}),
    "copy": (4, 0x43, {"session_id": SESSION, "last_transfer": 0}),
    "copy_data": (4, 0xC3, {"transfer": TRANSFER, "holders": [("10.0.0.2", 7800)], "record": RECORD}),
    "moved": (6, 0xC4, {"session_id": SESSION, "owner": ("10.0.0.2", 7401)}),
    "moved_v6": (7, 0xC4, {"session_id": SESSION, "owner": ("fd00::3", 7401)}),
    "not_found": (8, 0xC5, {"session_id": SESSION}),
    "copy_ack": (5, 0x44, {"session_id": SESSION, "transfer": TRANSFER}),
    "ok": (5, 0xC6, {}),
    "replicate": (9, 0x45, {"generation": 1, "record": RECORD}),
    "replicate_claim": (
        9,
        0x50,
        {
            "generation": 3,
            "base_owner": ("10.0.0.2", 7400),
            "base_generation": 2,
            "base_writer": 0x12345679,
            "record": RECORD,
        },
    ),
    "drop": (10, 0x46, {"session_id": SESSION, "generation": 1}),
    "retire": (12, 0x4C, {"session_id": SESSION, "generation": 3}),
    "copy_refused": (13, 0x4D, {"session_id": SESSION, "transfer": TRANSFER}),
    "features": (3, 0x4E, {"features": 1}),
    "features_are": (3, 0xCA, {"features": 1}),
    "copy_acks": (14, 0x4F, {"acks": [(SESSION, TRANSFER), (SESSION_2, 2)]}),
    "promote": (11, 0x47, {"session_id": SESSION, "last_transfer": 0, "failed_owner": ("10.0.0.1", 7401)}),
    "peer_error": (2, 0xFF, {"code": 201, "message": "peer proof does not verify"}),
}

# Token examples (version 2, protocol.md 8.1): name -> (key id, session id, generation,
# owner, backups).
TOKEN_VERSION = 2
MAX_TOKEN_STR_LEN = 134
TOKENS = {
    "basic": (0, SESSION, 0, ("10.0.0.1", 7401), []),
    "backups": (1, SESSION_2, 5, ("fd00::1", 7401), [("10.0.0.2", 7401), ("10.0.0.3", 7401)]),
}


# Parsing protocol.md ------------------------------------------------------------------
EXAMPLE = re.compile(r"<!-- example: ([a-z-]+) ([a-z0-9_]+) -->\s*```(hex|text)\n(.*?)```", re.S)


def load_examples() -> Dict[Tuple[str, str], str]:
    doc = DOC_PATH.read_text(encoding="utf-8")
    found: Dict[Tuple[str, str], str] = {}
    for kind, name, lang, content in EXAMPLE.findall(doc):
        assert (kind, name) not in found, f"example {kind} {name} appears twice"
        assert name not in {n for _, n in found}, f"example name {name} is not unique"
        assert lang == ("text" if kind == "token" else "hex"), f"{kind} {name}: wrong block language {lang}"
        found[(kind, name)] = content
    # Every marker must have been followed by its block.
    markers = re.findall(r"<!-- example: ([a-z-]+) ([a-z0-9_]+) -->", doc)
    assert len(markers) == len(found), "an example marker is not followed by a fenced block"
    return found


EXAMPLES = load_examples()


def frame_bytes(kind: str, name: str) -> bytes:
    return bytes.fromhex("".join(EXAMPLES[(kind, name)].split()))


def whole_frame(raw: bytes) -> Frame:
    got = split_frame(raw, MAX_FRAME)
    assert got is not None, "example frame is incomplete"
    frame, used = got
    assert used == len(raw), "bytes after the example frame"
    return frame


def test_every_example_is_known_to_this_test() -> None:
    kinds = {
        "client-request": set(CLIENT_REQUESTS),
        "client-response": set(CLIENT_RESPONSES),
        "peer": set(PEER),
        "token": set(TOKENS),
    }
    for kind, name in EXAMPLES:
        if (kind, name) in NOT_SPOKEN:
            continue
        assert kind in kinds, f"unknown example kind {kind}"
        assert name in kinds[kind], f"example {kind} {name} has no expected value in this test"
    for kind, names in kinds.items():
        for name in names:
            assert (kind, name) in EXAMPLES, f"protocol.md lost the example {kind} {name}"


@pytest.mark.parametrize("name", sorted(CLIENT_REQUESTS))
def test_client_request_examples(name: str) -> None:
    raw = frame_bytes("client-request", name)
    frame = whole_frame(raw)
    rid, expected = CLIENT_REQUESTS[name]
    assert frame.request_id == rid
    assert decode_request(frame) == expected
    op, body = encode_request(expected)
    assert op == frame.opcode
    assert encode_frame(op, rid, body) == raw


@pytest.mark.parametrize("name", sorted(CLIENT_RESPONSES))
def test_client_response_examples(name: str) -> None:
    raw = frame_bytes("client-response", name)
    frame = whole_frame(raw)
    rid, expected = CLIENT_RESPONSES[name]
    assert frame.request_id == rid
    assert decode_reply(frame) == expected
    op, body = encode_reply(expected)
    assert op == frame.opcode
    assert encode_frame(op, rid, body) == raw


@pytest.mark.parametrize("name", sorted(PEER))
def test_peer_examples(name: str) -> None:
    raw = frame_bytes("peer", name)
    frame = whole_frame(raw)
    rid, opcode, fields = PEER[name]
    assert (frame.request_id, frame.opcode) == (rid, opcode)
    _, decoded = peer_decode(frame)
    assert decoded == fields
    assert encode_frame(opcode, rid, peer_encode(opcode, fields)) == raw


def test_every_opcode_has_an_example() -> None:
    client_ops = {
        whole_frame(frame_bytes(k, n)).opcode
        for k, n in EXAMPLES
        if k.startswith("client") and (k, n) not in NOT_SPOKEN
    }
    assert client_ops == set(range(0x01, 0x0A)) | set(range(0x81, 0x86)) | {0xFF}
    peer_ops = {whole_frame(frame_bytes("peer", n)).opcode for k, n in EXAMPLES if k == "peer" and (k, n) not in NOT_SPOKEN}
    assert peer_ops == set(PEER_LAYOUTS)


def _b64url_decode_strict(s: str) -> bytes:
    assert re.fullmatch(r"[A-Za-z0-9_-]*", s), "not base64url without padding"
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    # Unused low bits of the last character are zero: the encoding is canonical.
    assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == s
    return raw


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_token_examples(name: str) -> None:
    text = EXAMPLES[("token", name)].strip()
    key_id, sid, generation, owner, backups = TOKENS[name]
    assert len(text) <= MAX_TOKEN_STR_LEN
    raw = _b64url_decode_strict(text)
    assert 50 <= len(raw) <= 100
    assert raw[0] == TOKEN_VERSION and raw[1] == key_id
    body, tag = raw[:-16], raw[-16:]
    assert hmac.compare_digest(tag, hmac.new(SECRET, body, hashlib.sha256).digest()[:16])
    r = Reader(body)
    r.raw(2)
    assert r.raw(16) == sid
    assert r.u64() == generation
    assert _addr_read(r) == owner
    n = r.u8()
    assert [_addr_read(r) for _ in range(n)] == backups
    r.end()
    # Re-signing the stated fields gives the same string.
    w = Writer()
    w.raw(bytes([TOKEN_VERSION, key_id]) + sid)
    w.u64(generation)
    _addr_write(w, owner)
    w.u8(len(backups))
    for b in backups:
        _addr_write(w, b)
    signed = w.getvalue()
    signed += hmac.new(SECRET, signed, hashlib.sha256).digest()[:16]
    assert base64.urlsafe_b64encode(signed).rstrip(b"=").decode() == text


def test_token_basic_is_the_token_of_the_request_examples() -> None:
    assert EXAMPLES[("token", "basic")].strip() == TOKEN


def test_token_length_bounds() -> None:
    # 8.1: the shortest token (IPv4 owner, no backups) and the longest (IPv6 owner, two
    # IPv6 backups) are 50 and 100 bytes, 67 and MAX_TOKEN_STR_LEN characters.
    fixed = 2 + 16 + 8 + 1 + 16
    shortest, longest = fixed + 7, fixed + 3 * 19
    assert (shortest, longest) == (50, 100)
    assert len(base64.urlsafe_b64encode(bytes(shortest)).rstrip(b"=")) == 67
    assert len(base64.urlsafe_b64encode(bytes(longest)).rstrip(b"=")) == MAX_TOKEN_STR_LEN
    doc = DOC_PATH.read_text(encoding="utf-8")
    assert f"a token string 67 to **{MAX_TOKEN_STR_LEN} characters**" in doc
    assert f"at most {MAX_TOKEN_STR_LEN} characters long" in doc


def test_stated_crc_and_byte_strings_in_prose() -> None:
    # 2.1: AUTH_OK with request id 2 and its CRC; 3 and 4: an address and an attribute map.
    assert encode_frame(0xC1, 2, b"") == bytes.fromhex("00000010" "01c10000000000000000 0002".replace(" ", "") + "6e59189c")
    w = Writer()
    _addr_write(w, ("10.0.0.2", 7401))
    assert w.getvalue() == bytes.fromhex("040a0000021ce9")
    w = Writer()
    _addr_write(w, ("fd00::3", 7401))
    assert w.getvalue() == bytes.fromhex("06fd000000000000000000000000000003 1ce9".replace(" ", ""))
    w = Writer()
    w.attributes({"user": b"alice"})
    assert w.getvalue() == bytes.fromhex("0001" "00047573 6572" "00000005616c696365".replace(" ", ""))
    assert struct.pack(">Q", IDLE) == bytes.fromhex("00000000001b7740")


def test_error_table_matches_the_sdk() -> None:
    doc = DOC_PATH.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d{3}) \| ([A-Z_]+) \| (yes|no) \|", doc, re.M)
    table = {int(code): (name, closes == "yes") for code, name, closes in rows}
    assert table == errors.ERROR_CODES


def test_limits_table_matches_the_sdk() -> None:
    from sessync.wire import DEFAULT_LIMITS

    doc = DOC_PATH.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(max_[a-z_]+)` \| (\d+) \|", doc, re.M))
    assert {k: int(v) for k, v in rows.items()} == DEFAULT_LIMITS.__dict__


def test_handshake_example_proofs_are_real() -> None:
    # protocol.md 9.2 gives the proofs in hex prose too.
    assert proof(2).hex() == "a096d322dd620ee0c6e6aeb19d0d74f7978947a3ccb54b677f54c05e5717122b"
    assert proof(1).hex() == "40faec9aec5879442f0f8e9764dc8d17117b327db5aafaa3b57693cec96ba7cd"


def all_example_frames() -> List[bytes]:
    return [frame_bytes(k, n) for k, n in EXAMPLES if k != "token"]
