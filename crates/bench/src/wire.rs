//! The three wire formats the load generator speaks, each reduced to what a tight
//! pipelined loop needs: encode a request into a buffer, and take one reply off the front
//! of a buffer, saying whether it was a success (and, for sessync, the replacement token).
//!
//! Every client does the same amount of reply work: find the reply's boundary, check it is
//! not an error, pick out the one field it needs. None of them builds a map of the
//! attributes, so the client's own CPU use (which shares this machine's two cores with the
//! server) is as small and as equal as possible.

use bytes::{Buf, BufMut, BytesMut};
use sessync_proto::{client_op, decode_frame, write_frame, ErrorCode, PackedAttributes, OP_ERROR};

/// Largest reply frame the bench accepts (the node's default limit).
pub(crate) const MAX_FRAME: u32 = 4 * 1024 * 1024;

/// What one reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served; for sessync, the replacement token when the node issued one.
    Ok(Option<String>),
    /// Failed; the error's name (sessync code name, or Redis's error text).
    Err(String),
}

// ---- sessync ----------------------------------------------------------------------

/// A string as protocol.md encodes it: u16 length, UTF-8.
fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// GET `token`, all attributes.
pub(crate) fn sessync_get(out: &mut BytesMut, rid: u64, token: &str) {
    write_frame(out, client_op::GET, rid, |b| {
        put_str(b, token);
        b.put_u16(0);
    });
}

/// SET `token`: put one attribute, unconditionally, delete nothing.
pub(crate) fn sessync_set(out: &mut BytesMut, rid: u64, token: &str, name: &str, value: &[u8]) {
    write_frame(out, client_op::SET, rid, |b| {
        put_str(b, token);
        b.put_u8(0);
        b.put_u16(1);
        put_str(b, name);
        b.put_u32(value.len() as u32);
        b.put_slice(value);
        b.put_u16(0);
    });
}

/// CREATE with the node's default lifetimes and these (already encoded) attributes.
pub(crate) fn sessync_create(out: &mut BytesMut, rid: u64, attrs: &PackedAttributes) {
    write_frame(out, client_op::CREATE, rid, |b| {
        b.put_u64(0);
        b.put_u64(0);
        b.put_slice(attrs.as_bytes());
    });
}

/// STATS.
pub(crate) fn sessync_stats(out: &mut BytesMut, rid: u64) {
    write_frame(out, client_op::STATS, rid, |_| {});
}

/// Takes one reply frame off `buf`. `Ok(None)`: need more bytes.
pub(crate) fn sessync_reply(buf: &mut BytesMut) -> anyhow::Result<Option<Outcome>> {
    Ok(sessync_reply_with_id(buf)?.map(|(_, o)| o))
}

/// [`sessync_reply`], with the request id the reply answers: a node answers a request
/// that needs another node when it is ready, after requests sent later (protocol.md:
/// replies are matched by request id), so a pipelining client must match them by id.
pub(crate) fn sessync_reply_with_id(buf: &mut BytesMut) -> anyhow::Result<Option<(u64, Outcome)>> {
    let Some(frame) = decode_frame(buf, MAX_FRAME)? else {
        return Ok(None);
    };
    let mut body = &frame.body[..];
    Ok(Some((
        frame.request_id,
        match frame.opcode {
            client_op::SESSION => {
                anyhow::ensure!(!body.is_empty(), "empty SESSION reply");
                if body.get_u8() == 1 {
                    anyhow::ensure!(body.len() >= 2, "short SESSION reply");
                    let n = usize::from(body.get_u16());
                    anyhow::ensure!(body.len() >= n, "short SESSION token");
                    Outcome::Ok(Some(String::from_utf8(body[..n].to_vec())?))
                } else {
                    Outcome::Ok(None)
                }
            }
            client_op::DONE | client_op::PONG | client_op::STATS_REPLY => Outcome::Ok(None),
            OP_ERROR => {
                anyhow::ensure!(body.len() >= 2, "short ERROR reply");
                Outcome::Err(ErrorCode::from_u16(body.get_u16()).name().to_string())
            }
            other => anyhow::bail!("unexpected reply opcode {other:#04x}"),
        },
    )))
}

/// The counters of a STATS reply, by name.
pub(crate) fn sessync_stats_reply(buf: &mut BytesMut) -> anyhow::Result<Option<Vec<(String, u64)>>> {
    use sessync_proto::{Limits, Message, Response};
    let Some(frame) = decode_frame(buf, MAX_FRAME)? else {
        return Ok(None);
    };
    match Response::decode_frame(&frame, &Limits::DEFAULT)? {
        Response::Stats(c) => Ok(Some(c)),
        other => anyhow::bail!("expected STATS_REPLY, got {other:?}"),
    }
}

// ---- Redis (RESP2) ----------------------------------------------------------------

/// One command as a RESP array of bulk strings.
pub(crate) fn resp_cmd(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    put_decimal(out, args.len());
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        put_decimal(out, a.len());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// What a RESP value was, as far as a session store cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    /// Anything that is not an error or an empty result.
    Value,
    /// A null bulk string or array, or an empty array: the key is missing.
    Missing,
    /// An error reply.
    Error,
}

/// Parses one RESP value starting at `pos`; returns where it ends. `Ok(None)`: need more.
fn resp_value(buf: &[u8], pos: usize) -> anyhow::Result<Option<(usize, Resp)>> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + eol];
    let next = pos + eol + 2;
    let int = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(line)?.parse::<i64>()?) };
    Ok(match kind {
        b'+' | b':' => Some((next, Resp::Value)),
        b'-' => Some((next, Resp::Error)),
        b'$' => match int()? {
            -1 => Some((next, Resp::Missing)),
            n if n >= 0 => {
                let end = next + n as usize + 2;
                (buf.len() >= end).then_some((end, Resp::Value))
            }
            n => anyhow::bail!("bad RESP bulk length {n}"),
        },
        b'*' => match int()? {
            -1 | 0 => Some((next, Resp::Missing)),
            n if n > 0 => {
                let mut at = next;
                for _ in 0..n {
                    match resp_value(buf, at)? {
                        Some((end, _)) => at = end,
                        None => return Ok(None),
                    }
                }
                Some((at, Resp::Value))
            }
            n => anyhow::bail!("bad RESP array length {n}"),
        },
        other => anyhow::bail!("unexpected RESP type byte {other:#04x}"),
    })
}

/// Takes one RESP reply off `buf`. A missing key counts as an error: every key the bench
/// reads was written first.
pub(crate) fn resp_reply(buf: &mut BytesMut) -> anyhow::Result<Option<Outcome>> {
    let Some((end, kind)) = resp_value(buf, 0)? else {
        return Ok(None);
    };
    let outcome = match kind {
        Resp::Value => Outcome::Ok(None),
        Resp::Missing => Outcome::Err("missing key".into()),
        Resp::Error => {
            let text = String::from_utf8_lossy(&buf[1..end - 2]);
            Outcome::Err(text.split(' ').next().unwrap_or("ERR").to_string())
        }
    };
    buf.advance(end);
    Ok(Some(outcome))
}

/// The value of `field` in an `INFO` reply (a bulk string of `name:value` lines).
pub(crate) fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Takes one bulk-string reply off `buf` and returns its text.
pub(crate) fn resp_bulk_text(buf: &mut BytesMut) -> anyhow::Result<Option<String>> {
    let Some((end, kind)) = resp_value(buf, 0)? else {
        return Ok(None);
    };
    let raw = buf.split_to(end);
    anyhow::ensure!(
        kind == Resp::Value,
        "unexpected reply: {}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8_lossy(&raw).into_owned();
    // Strip the `$n\r\n` header and the trailing CRLF when it is a bulk string.
    Ok(Some(match text.split_once("\r\n") {
        Some((head, rest)) if head.starts_with('$') => rest.trim_end_matches("\r\n").to_string(),
        _ => text,
    }))
}

// ---- echo baseline ----------------------------------------------------------------

/// An echo request of `len` bytes in all (at least 8) asking for a reply of `reply_len`
/// bytes in all: a u32 length prefix, then the reply length wanted, then padding.
pub(crate) fn echo_request(out: &mut BytesMut, len: usize, reply_len: usize) {
    let len = len.max(8);
    out.put_u32((len - 4) as u32);
    out.put_u32(reply_len.max(4) as u32);
    out.put_bytes(0, len - 8);
}

/// Takes one echo reply (u32 length prefix and that many bytes) off `buf`.
pub(crate) fn echo_reply(buf: &mut BytesMut) -> anyhow::Result<Option<Outcome>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + n {
        return Ok(None);
    }
    buf.advance(4 + n);
    Ok(Some(Outcome::Ok(None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sessync_proto::{Attributes, Message, Request};

    #[test]
    fn sessync_requests_match_the_proto_encoder() {
        let mut ours = BytesMut::new();
        let mut theirs = BytesMut::new();
        sessync_get(&mut ours, 7, "tok");
        Request::Get {
            token: "tok".into(),
            names: vec![],
        }
        .encode_frame(7, &mut theirs);
        assert_eq!(ours, theirs);

        ours.clear();
        theirs.clear();
        sessync_set(&mut ours, 8, "tok", "a1", b"v");
        let mut puts = Attributes::new();
        puts.insert("a1".into(), Bytes::from_static(b"v"));
        Request::Set {
            token: "tok".into(),
            if_version: None,
            puts,
            deletes: vec![],
        }
        .encode_frame(8, &mut theirs);
        assert_eq!(ours, theirs);

        ours.clear();
        theirs.clear();
        let mut attrs = Attributes::new();
        attrs.insert("x".into(), Bytes::from_static(b"yz"));
        sessync_create(&mut ours, 9, &PackedAttributes::pack(&attrs));
        Request::Create {
            idle_ttl_ms: 0,
            max_lifetime_ms: 0,
            attributes: attrs,
        }
        .encode_frame(9, &mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn resp_replies_split_at_their_boundaries() {
        let mut out = BytesMut::new();
        resp_cmd(&mut out, &[b"HGETALL", b"k"]);
        assert_eq!(&out[..], b"*2\r\n$7\r\nHGETALL\r\n$1\r\nk\r\n");

        let mut buf = BytesMut::from(
            &b"*4\r\n$1\r\na\r\n$2\r\nbb\r\n$1\r\nc\r\n$0\r\n\r\n:1\r\n*0\r\n-ERR no\r\n$-1\r\n+OK"[..],
        );
        assert_eq!(resp_reply(&mut buf).unwrap(), Some(Outcome::Ok(None)));
        assert_eq!(resp_reply(&mut buf).unwrap(), Some(Outcome::Ok(None)));
        assert_eq!(
            resp_reply(&mut buf).unwrap(),
            Some(Outcome::Err("missing key".into()))
        );
        assert_eq!(resp_reply(&mut buf).unwrap(), Some(Outcome::Err("ERR".into())));
        assert_eq!(
            resp_reply(&mut buf).unwrap(),
            Some(Outcome::Err("missing key".into()))
        );
        assert_eq!(
            resp_reply(&mut buf).unwrap(),
            None,
            "+OK without CRLF is incomplete"
        );
        let mut partial = BytesMut::from(&b"$5\r\nabc"[..]);
        assert_eq!(resp_reply(&mut partial).unwrap(), None);
        assert_eq!(partial.len(), 7, "nothing consumed");
        assert_eq!(
            info_field("# Memory\r\nused_memory:123\r\n", "used_memory"),
            Some(123)
        );
    }

    #[test]
    fn echo_frames_round_trip() {
        let mut out = BytesMut::new();
        echo_request(&mut out, 100, 1200);
        assert_eq!(out.len(), 100);
        assert_eq!(u32::from_be_bytes([out[4], out[5], out[6], out[7]]), 1200);
        let mut reply = BytesMut::new();
        reply.put_u32(3);
        reply.put_slice(b"abcX");
        assert_eq!(echo_reply(&mut reply).unwrap(), Some(Outcome::Ok(None)));
        assert_eq!(&reply[..], b"X");
    }
}
