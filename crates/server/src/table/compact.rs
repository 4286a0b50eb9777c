//! Packed attributes as a live node stores them: the wire encoding (a u16 count, then per
//! attribute a u16 name length, the name, a u32 value length and the value; protocol.md
//! section 4) with each length written as a LEB128 varint instead. Why: the fixed-width
//! lengths are 6 bytes per attribute, the varints 2-3 for typical names and values under
//! 16 KiB, and a node holds millions of sessions (issue 15: 25 bytes less per session of
//! 8 attributes of 128 bytes, 33 less with 12-byte values). A GET copies the attributes
//! out anyway; it writes the wire lengths back as it copies, straight into the reply frame
//! ([`write_wire`]).
//!
//! Both directions trust their input (it was built or checked by this process: a
//! [`PackedAttributes`] or a compact buffer made here) but never panic on a defect: they
//! stop at it.

use bytes::{BufMut, BytesMut};
use sessync_proto::PackedAttributes;

/// Writes into a buffer sized beforehand, front to back. A write past the end (a sizing
/// defect) is dropped instead of panicking; the tests check the sizes.
pub(super) struct SliceWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceWriter<'a> {
    /// A writer at the start of `out`.
    pub(super) fn new(out: &'a mut [u8]) -> Self {
        SliceWriter { out, pos: 0 }
    }

    /// Writes `bytes` next.
    pub(super) fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(at) = self.out.get_mut(self.pos..end) {
            at.copy_from_slice(bytes);
            self.pos = end;
        }
    }

    /// Writes `v` next as a LEB128 varint.
    fn put_varint(&mut self, mut v: u64) {
        if v < 0x80 {
            // Names and most lengths of a typical set: one byte.
            return self.put(&[v as u8]);
        }
        let mut buf = [0u8; 10];
        let mut n = 0;
        while v >= 0x80 {
            buf[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        buf[n] = v as u8;
        self.put(&buf[..=n]);
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> usize {
        self.pos
    }
}

/// The bytes `v` takes as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a varint at `*pos`.
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A fixed-width big-endian length at `*pos` (`N` = 2 or 4 bytes).
fn get_be<const N: usize>(buf: &[u8], pos: &mut usize) -> Option<usize> {
    let b = buf.get(*pos..*pos + N)?;
    *pos += N;
    Some(b.iter().fold(0usize, |v, &x| (v << 8) | usize::from(x)))
}

/// The attribute boundaries of a wire encoding: (name, value) byte ranges.
fn wire_parts(wire: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let mut pos = 0;
    let mut left = get_be::<2>(wire, &mut pos).unwrap_or(0);
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let n = get_be::<2>(wire, &mut pos)?;
        let name = wire.get(pos..pos + n)?;
        pos += n;
        let v = get_be::<4>(wire, &mut pos)?;
        let value = wire.get(pos..pos + v)?;
        pos += v;
        Some((name, value))
    })
}

/// The attribute boundaries of a compact encoding.
fn compact_parts(compact: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let mut pos = 0;
    let mut left = get_varint(compact, &mut pos).unwrap_or(0);
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let n = usize::try_from(get_varint(compact, &mut pos)?).ok()?;
        let name = compact.get(pos..pos.checked_add(n)?)?;
        pos += n;
        let v = usize::try_from(get_varint(compact, &mut pos)?).ok()?;
        let value = compact.get(pos..pos.checked_add(v)?)?;
        pos += v;
        Some((name, value))
    })
}

/// The compact form of packed attributes.
#[cfg(test)]
fn compact(attrs: &PackedAttributes) -> Vec<u8> {
    let mut out = vec![0; compact_len(attrs)];
    let mut w = SliceWriter::new(&mut out);
    compact_to(&mut w, attrs);
    assert_eq!(w.written(), out.len());
    out
}

/// The length of the compact form of packed attributes.
pub(super) fn compact_len(attrs: &PackedAttributes) -> usize {
    varint_len(attrs.count() as u64)
        + wire_parts(attrs.as_bytes())
            .map(|(n, v)| varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len())
            .sum::<usize>()
}

/// Writes the compact form of packed attributes ([`compact_len`] bytes).
pub(super) fn compact_to(out: &mut SliceWriter<'_>, attrs: &PackedAttributes) {
    out.put_varint(attrs.count() as u64);
    for (name, value) in wire_parts(attrs.as_bytes()) {
        out.put_varint(name.len() as u64);
        out.put(name);
        out.put_varint(value.len() as u64);
        out.put(value);
    }
}

/// The length of the wire form of a compact buffer (what the session is charged for).
pub(super) fn wire_len(compact: &[u8]) -> usize {
    2 + compact_parts(compact)
        .map(|(n, v)| 6 + n.len() + v.len())
        .sum::<usize>()
}

/// The packed attributes (wire form) of a compact buffer, written straight into their
/// one allocation (no buffer built aside and copied: issue 15's move path).
pub(super) fn expand(compact: &[u8]) -> PackedAttributes {
    PackedAttributes::packed_with(wire_len(compact), |out| {
        let mut w = SliceWriter::new(out);
        w.put(&[0, 0]);
        let mut count = 0u16;
        for (name, value) in compact_parts(compact) {
            w.put(&(name.len() as u16).to_be_bytes());
            w.put(name);
            w.put(&(value.len() as u32).to_be_bytes());
            w.put(value);
            count += 1;
        }
        debug_assert_eq!(w.written(), out.len(), "expanded attributes are sized exactly");
        if let Some(head) = out.get_mut(..2) {
            head.copy_from_slice(&count.to_be_bytes());
        }
    })
}

/// Appends the wire form of a compact buffer's attributes (all of them, or only those
/// named in `names` when it is not empty, as `PackedAttributes::select`) to `out`: the
/// u16 count, then per attribute its u16 name length, name, u32 value length and value.
/// What a reply carries, written straight from the table's bytes (no allocation beyond
/// `out`'s own growth). Returns the count written.
pub(super) fn write_wire(compact: &[u8], names: &[String], out: &mut BytesMut) -> u16 {
    // Each length grows by at most 1 (name) and 3 (value) bytes in wire form: one
    // reservation covers the whole set.
    let listed = get_varint(compact, &mut 0).unwrap_or(0);
    let listed = usize::try_from(listed).unwrap_or(0).min(compact.len());
    out.reserve(2 + compact.len() + 4 * listed);
    let at = out.len();
    out.put_u16(0);
    let mut count = 0u16;
    for (name, value) in compact_parts(compact) {
        if !names.is_empty() && !names.iter().any(|n| n.as_bytes() == name) {
            continue;
        }
        out.put_u16(name.len() as u16);
        out.put_slice(name);
        out.put_u32(value.len() as u32);
        out.put_slice(value);
        count += 1;
    }
    out[at..at + 2].copy_from_slice(&count.to_be_bytes());
    count
}

/// Bytes the compact form saves on a set (for the test): the fixed-width lengths minus
/// the varints.
#[cfg(test)]
fn saved(attrs: &PackedAttributes) -> usize {
    let varints: usize = attrs
        .iter()
        .map(|(n, v)| varint_len(n.len() as u64) + varint_len(v.len() as u64))
        .sum();
    2 + 6 * attrs.count() - varint_len(attrs.count() as u64) - varints
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sessync_proto::Attributes;

    #[test]
    fn compact_round_trips_and_is_smaller() {
        let mut a = Attributes::new();
        a.insert(String::new(), Bytes::new());
        a.insert("user".into(), Bytes::from_static(b"alice"));
        a.insert("big".into(), Bytes::from(vec![7u8; 200_000]));
        a.insert("x".repeat(300), Bytes::from(vec![1u8; 128]));
        let p = PackedAttributes::pack(&a);
        let c = compact(&p);
        assert_eq!(expand(&c), p);
        assert_eq!(compact_len(&p), c.len());
        assert_eq!(wire_len(&c), p.encoded_len());
        assert_eq!(p.encoded_len() - c.len(), saved(&p));
        // 8 attributes of 128 bytes under short names: 25 bytes saved.
        let a: Attributes = (0..8)
            .map(|i| (format!("attr{i}"), Bytes::from(vec![b'v'; 128])))
            .collect();
        let p = PackedAttributes::pack(&a);
        assert_eq!(p.encoded_len() - compact(&p).len(), 25);
        // Written straight to wire form: all, or a selection, as PackedAttributes does.
        let c = compact(&p);
        let mut out = BytesMut::new();
        assert_eq!(write_wire(&c, &[], &mut out), 8);
        assert_eq!(&out[..], p.as_bytes());
        let names = vec!["attr3".to_string(), "nope".into(), "attr0".into()];
        out.clear();
        assert_eq!(write_wire(&c, &names, &mut out), 2);
        assert_eq!(&out[..], p.select(&names).as_bytes());
        // No attributes.
        let none = PackedAttributes::default();
        assert_eq!(compact(&none), vec![0]);
        assert_eq!(expand(&compact(&none)), none);
        assert_eq!(wire_len(&[0]), 2);
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX)] {
            let mut b = [0u8; 10];
            let mut w = SliceWriter::new(&mut b);
            w.put_varint(v);
            let n = w.written();
            assert_eq!(n, varint_len(v));
            assert_eq!(get_varint(&b[..n], &mut 0), Some(v));
        }
        // A truncated buffer stops, never panics.
        let c = compact(&p);
        for cut in 0..c.len() {
            let _ = expand(&c[..cut]);
            let _ = write_wire(&c[..cut], &[], &mut BytesMut::new());
            let _ = wire_len(&c[..cut]);
        }
    }
}
