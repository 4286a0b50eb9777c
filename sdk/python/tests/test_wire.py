"""The codec without sockets: "need more bytes" versus "these bytes are wrong", and every
length checked against its limit before anything is allocated for it."""

import struct
import zlib

import pytest

from sessync import LimitExceeded, ProtocolViolation
from sessync.wire import (
    Create,
    Frame,
    Get,
    Limits,
    Op,
    Reader,
    SessionReply,
    Set,
    decode_reply,
    decode_request,
    encode_frame,
    encode_request,
    split_frame,
)
from test_protocol_md import all_example_frames

MAX = 4 * 1024 * 1024


def test_every_prefix_of_a_frame_is_need_more() -> None:
    for raw in all_example_frames():
        for cut in range(len(raw)):
            assert split_frame(raw[:cut], MAX) is None
        frame, used = split_frame(raw + b"\x00\x00", MAX)  # type: ignore[misc]
        assert used == len(raw)


def test_length_is_judged_before_the_body_arrives() -> None:
    with pytest.raises(ProtocolViolation) as e:
        split_frame(struct.pack(">I", MAX + 1), MAX)
    assert e.value.code == 102
    with pytest.raises(ProtocolViolation) as e:
        split_frame(struct.pack(">I", 15), MAX)
    assert e.value.code == 100


def test_crc_then_version_then_flags() -> None:
    good = encode_frame(Op.STATS, 7, b"")
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProtocolViolation) as e:
        split_frame(bad_crc, MAX)
    assert e.value.code == 101

    def reframe(version: int, flags: int) -> bytes:
        header = struct.pack(">BBHQ", version, Op.STATS, flags, 7)
        return struct.pack(">I", 16) + header + struct.pack(">I", zlib.crc32(header))

    with pytest.raises(ProtocolViolation) as e:
        split_frame(reframe(2, 0), MAX)
    assert e.value.code == 103
    with pytest.raises(ProtocolViolation) as e:
        split_frame(reframe(1, 1), MAX)
    assert e.value.code == 100


def _frame(op: int, body: bytes) -> Frame:
    return Frame(1, op, 1, body)


def test_bodies_are_consumed_exactly() -> None:
    op, body = encode_request(Get("t", ["a"]))
    with pytest.raises(ProtocolViolation):
        decode_request(_frame(op, body + b"\x00"))
    with pytest.raises(ProtocolViolation):
        decode_request(_frame(op, body[:-1]))
    # Option presence byte 2.
    op, body = encode_request(Set("t", None, {}, []))
    bad = body[:3] + b"\x02" + body[4:]
    with pytest.raises(ProtocolViolation):
        decode_request(_frame(op, bad))


def test_attribute_names_must_be_in_order() -> None:
    # Two attributes, "b" then "a".
    body = b"\x00" + bytes(40) + b"\x00\x02" + b"\x00\x01b\x00\x00\x00\x00" + b"\x00\x01a\x00\x00\x00\x00"
    with pytest.raises(ProtocolViolation) as e:
        decode_reply(_frame(Op.SESSION, body))
    assert e.value.code == 100
    # The encoder writes the canonical order whatever the dict's order.
    op, body = encode_request(Create(0, 0, {"é": b"", "z": b"", "A": b""}))
    r = Reader(body)
    r.u64(), r.u64()
    assert list(r.attributes()) == ["A", "z", "é"]


def test_limits_are_checked_from_the_length_field() -> None:
    small = Limits(max_attributes=2, max_name_len=3, max_value_len=4, max_token_len=5)
    # A value length of 2**32-1 with no bytes behind it: refused as over the limit, not
    # awaited or allocated.
    body = b"\x00" + bytes(40) + b"\x00\x01" + b"\x00\x01a" + b"\xff\xff\xff\xff"
    with pytest.raises(LimitExceeded):
        decode_reply(_frame(Op.SESSION, body), small)
    with pytest.raises(LimitExceeded):
        decode_reply(_frame(Op.SESSION, b"\x00" + bytes(40) + b"\xff\xff"), small)
    with pytest.raises(LimitExceeded):
        decode_reply(_frame(Op.SESSION, b"\x01\x00\x06tokens" + bytes(40) + b"\x00\x00"), small)
    # A stats count the body cannot hold.
    with pytest.raises(ProtocolViolation):
        decode_reply(_frame(Op.STATS_REPLY, b"\xff\xff"))


def test_encoder_never_cuts() -> None:
    small = Limits(max_attributes=1, max_name_len=3, max_value_len=4, max_token_len=5)
    with pytest.raises(LimitExceeded):
        encode_request(Get("toolong", []), small)
    with pytest.raises(LimitExceeded):
        encode_request(Create(0, 0, {"abcd": b""}), small)
    with pytest.raises(LimitExceeded):
        encode_request(Create(0, 0, {"a": b"12345"}), small)
    with pytest.raises(LimitExceeded):
        encode_request(Create(0, 0, {"a": b"", "b": b""}), small)
    with pytest.raises(LimitExceeded):
        encode_request(Get("t", ["x" * 70000]), Limits(max_name_len=10**6))


def test_session_reply_roundtrip_with_unicode_and_binary() -> None:
    from sessync.wire import SessionMeta, encode_reply

    reply = SessionReply("tok", SessionMeta(3, 1, 2, 3, 4), {"": b"\x00\xff", "ü": b"x"})
    op, body = encode_reply(reply)
    assert decode_reply(_frame(op, body)) == reply
