//! Primitive encodings shared by every message body: big-endian integers,
//! length-prefixed strings and byte strings, socket addresses.
//!
//! Reading never panics and never allocates more than the input already holds:
//! every length is compared with both a configured limit and the bytes left
//! before anything is copied.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

use crate::error::DecodeError;

/// A cursor over a message body. Reads fail with [`DecodeError`] instead of panicking.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// The frame body the slice came from, so byte strings can be sliced without copying.
    whole: Option<&'a Bytes>,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from a plain slice; byte strings are copied out.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            whole: None,
            pos: 0,
        }
    }

    /// Reads from a shared buffer; byte strings are zero-copy slices of it.
    pub(crate) fn from_bytes(buf: &'a Bytes) -> Self {
        Reader {
            buf: &buf[..],
            whole: Some(buf),
            pos: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A bool encoded as one byte, 0 or 1; anything else is malformed.
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Invalid(format!("boolean byte {v}, expected 0 or 1"))),
        }
    }

    /// A count (u16) checked against `max` and against what the rest of the body
    /// could possibly hold (`min_item_len` bytes per item).
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::LimitExceeded { what, len: n, max });
        }
        if n.saturating_mul(min_item_len) > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(n)
    }

    /// A UTF-8 string with a u16 length prefix, at most `max` bytes.
    pub(crate) fn string(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::LimitExceeded { what, len: n, max });
        }
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Invalid(format!("{what} is not valid UTF-8")))
    }

    /// Like [`Reader::string`], borrowing the text instead of copying it.
    pub(crate) fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::LimitExceeded { what, len: n, max });
        }
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| DecodeError::Invalid(format!("{what} is not valid UTF-8")))
    }

    /// Checks and passes over a byte string as [`Reader::bytes`] reads it.
    pub(crate) fn skip_bytes(&mut self, what: &'static str, max: usize) -> Result<(), DecodeError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if n > max {
            return Err(DecodeError::LimitExceeded { what, len: n, max });
        }
        self.take(n).map(|_| ())
    }

    /// How many bytes have been read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The bytes read since position `start`.
    pub(crate) fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    /// A byte string with a u32 length prefix, at most `max` bytes.
    pub(crate) fn bytes(&mut self, what: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let n32 = self.u32()?;
        let n = usize::try_from(n32).unwrap_or(usize::MAX);
        if n > max {
            return Err(DecodeError::LimitExceeded { what, len: n, max });
        }
        let start = self.pos;
        let raw = self.take(n)?;
        Ok(match self.whole {
            Some(whole) => whole.slice(start..start + n),
            None => Bytes::copy_from_slice(raw),
        })
    }

    /// A socket address: family byte (4 or 6), the address, then a u16 port.
    pub(crate) fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            f => {
                return Err(DecodeError::Invalid(format!(
                    "address family {f}, expected 4 or 6"
                )))
            }
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// Fails unless every byte of the body was consumed: trailing bytes are malformed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Invalid(format!(
                "{n} trailing bytes after the message"
            ))),
        }
    }
}

/// Appends a u16-length-prefixed UTF-8 string. Callers keep strings within their limits;
/// longer ones are cut at the u16 maximum on a character boundary rather than panicking.
pub(crate) fn put_string(out: &mut impl BufMut, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

/// Appends a u32-length-prefixed byte string.
pub(crate) fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.put_u32(n);
    out.put_slice(&b[..n as usize]);
}

/// Appends a socket address in the layout [`Reader::addr`] reads (family byte 4 or 6,
/// the address, a u16 port): every message that names a node uses it.
pub fn put_addr(out: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

/// The longest address [`put_addr`] writes (IPv6).
pub(crate) const MAX_ADDR_LEN: usize = 1 + 16 + 2;

/// Encoded length of an address written by [`put_addr`].
pub(crate) fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}
