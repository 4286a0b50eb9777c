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

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes `v` takes as a varint.
#[cfg(test)]
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
    let mut out = Vec::with_capacity(attrs.encoded_len());
    compact_into(&mut out, attrs);
    out
}

/// Appends the compact form of packed attributes.
pub(super) fn compact_into(out: &mut Vec<u8>, attrs: &PackedAttributes) {
    let wire = attrs.as_bytes();
    let count = attrs.count();
    put_varint(out, count as u64);
    for (name, value) in wire_parts(wire) {
        put_varint(out, name.len() as u64);
        out.extend_from_slice(name);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// The length of the wire form of a compact buffer (what the session is charged for).
pub(super) fn wire_len(compact: &[u8]) -> usize {
    2 + compact_parts(compact)
        .map(|(n, v)| 6 + n.len() + v.len())
        .sum::<usize>()
}

/// The packed attributes (wire form) of a compact buffer.
pub(super) fn expand(compact: &[u8]) -> PackedAttributes {
    let mut out = Vec::with_capacity(wire_len(compact));
    let mut count = 0u16;
    out.extend_from_slice(&[0, 0]);
    for (name, value) in compact_parts(compact) {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
        count += 1;
    }
    out[..2].copy_from_slice(&count.to_be_bytes());
    PackedAttributes::copy_of_packed(&out)
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
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b, &mut 0), Some(v));
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
