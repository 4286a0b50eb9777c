//! The session as it crosses the wire: id, metadata and attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use rand::RngCore;

use crate::error::DecodeError;
use crate::limits::Limits;
use crate::wire::{put_bytes, put_string, Reader};

/// A session's attributes: UTF-8 name to opaque bytes. A map, so names are unique and the
/// encoding (sorted by name) is canonical.
pub type Attributes = BTreeMap<String, Bytes>;

/// A 128-bit session id drawn from the operating system's CSPRNG.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

/// Seeded ids for a deterministic simulation (feature `testing`): on a thread where
/// [`sim_ids::seed`] was called, [`SessionId::random`] draws from that seed instead of the
/// OS, so a simulation replays exactly. Never enabled in a node that serves anyone.
#[cfg(feature = "testing")]
pub mod sim_ids {
    use std::cell::RefCell;

    use rand::{RngCore, SeedableRng};

    thread_local! {
        static RNG: RefCell<Option<rand::rngs::StdRng>> = const { RefCell::new(None) };
    }

    /// Ids on this thread come from `seed` from now on.
    pub fn seed(seed: u64) {
        RNG.with(|r| *r.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
    }

    /// Back to the OS RNG on this thread.
    pub fn clear() {
        RNG.with(|r| *r.borrow_mut() = None);
    }

    pub(crate) fn fill(id: &mut [u8; 16]) -> bool {
        RNG.with(|r| match r.borrow_mut().as_mut() {
            Some(rng) => {
                rng.fill_bytes(id);
                true
            }
            None => false,
        })
    }
}

impl SessionId {
    /// A fresh id from the OS CSPRNG: unguessable, so knowing one id reveals no other.
    pub fn random() -> SessionId {
        let mut id = [0u8; 16];
        #[cfg(feature = "testing")]
        if sim_ids::fill(&mut id) {
            return SessionId(id);
        }
        rand::rngs::OsRng.fill_bytes(&mut id);
        SessionId(id)
    }

    /// The id as 32 lower-case hex digits (for logs; never a credential on its own).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Everything about a session except its attributes. Times are Unix milliseconds (wall
/// clock), so they mean the same on every node of a cluster whose clocks are in sync.
///
/// # Format
/// Five u64 big-endian, 40 bytes: version, created_ms, last_access_ms, idle_ttl_ms,
/// absolute_deadline_ms (0 = no absolute lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionMeta {
    /// Bumped by every change; the basis of compare-and-set.
    pub version: u64,
    /// When the session was created.
    pub created_ms: u64,
    /// When the session was last read or written; the idle deadline counts from here.
    pub last_access_ms: u64,
    /// Idle time to live: the session expires `idle_ttl_ms` after its last access.
    pub idle_ttl_ms: u64,
    /// When the session expires whatever its activity; 0 when it has no absolute lifetime.
    pub absolute_deadline_ms: u64,
}

impl SessionMeta {
    /// Encoded size in bytes.
    pub const LEN: usize = 40;

    /// When the session expires if nothing touches it again.
    pub fn expires_at_ms(&self) -> u64 {
        let idle = self.last_access_ms.saturating_add(self.idle_ttl_ms);
        match self.absolute_deadline_ms {
            0 => idle,
            abs => idle.min(abs),
        }
    }

    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.version);
        out.put_u64(self.created_ms);
        out.put_u64(self.last_access_ms);
        out.put_u64(self.idle_ttl_ms);
        out.put_u64(self.absolute_deadline_ms);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<SessionMeta, DecodeError> {
        Ok(SessionMeta {
            version: r.u64()?,
            created_ms: r.u64()?,
            last_access_ms: r.u64()?,
            idle_ttl_ms: r.u64()?,
            absolute_deadline_ms: r.u64()?,
        })
    }
}

/// Smallest encoding of one attribute: empty name (2-byte length) and empty value (4-byte length).
const MIN_ATTRIBUTE_LEN: usize = 6;
/// Smallest encoding of one name: the 2-byte length.
const MIN_NAME_LEN: usize = 2;

/// # Format
/// u16 count, then per attribute (sorted by name): name (u16 length + UTF-8),
/// value (u32 length + bytes). Names are unique.
pub(crate) fn encode_attributes(out: &mut impl BufMut, attrs: &Attributes) {
    out.put_u16(attrs.len().min(usize::from(u16::MAX)) as u16);
    for (name, value) in attrs.iter().take(usize::from(u16::MAX)) {
        put_string(out, name);
        put_bytes(out, value);
    }
}

pub(crate) fn decode_attributes(r: &mut Reader<'_>, limits: &Limits) -> Result<Attributes, DecodeError> {
    let n = r.count("attribute count", limits.max_attributes, MIN_ATTRIBUTE_LEN)?;
    let mut attrs = Attributes::new();
    for _ in 0..n {
        let name = r.string("attribute name", limits.max_name_len)?;
        let value = r.bytes("attribute value", limits.max_value_len)?;
        // Strictly increasing names (sorted, unique): the one encoding the writer produces.
        if attrs.last_key_value().is_some_and(|(last, _)| *last >= name) {
            return Err(DecodeError::Invalid(
                "attribute names not sorted and unique".into(),
            ));
        }
        attrs.insert(name, value);
    }
    Ok(attrs)
}

/// # Format
/// u16 count, then each name as u16 length + UTF-8.
pub(crate) fn encode_names(out: &mut impl BufMut, names: &[String]) {
    out.put_u16(names.len().min(usize::from(u16::MAX)) as u16);
    for name in names.iter().take(usize::from(u16::MAX)) {
        put_string(out, name);
    }
}

pub(crate) fn decode_names(r: &mut Reader<'_>, limits: &Limits) -> Result<Vec<String>, DecodeError> {
    let n = r.count("name count", limits.max_attributes, MIN_NAME_LEN)?;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(r.string("attribute name", limits.max_name_len)?);
    }
    Ok(names)
}

/// A whole session as it moves between nodes (COPY replies, REPLICATE).
///
/// # Format
/// id (16 bytes), [`SessionMeta`] (40 bytes), attributes.
///
/// The attributes travel in their packed form, which is their wire encoding: a node sends
/// the bytes it stores and the receiver stores the bytes it got (after checking them as
/// strictly as [`Attributes`] decoding does), with no map built on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id.
    pub id: SessionId,
    /// Version, times and deadlines.
    pub meta: SessionMeta,
    /// The data.
    pub attributes: PackedAttributes,
}

impl SessionRecord {
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.id.0);
        self.meta.encode(out);
        out.put_slice(self.attributes.as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<SessionRecord, DecodeError> {
        Ok(SessionRecord {
            id: SessionId(r.array()?),
            meta: SessionMeta::decode(r)?,
            attributes: PackedAttributes::decode(r, limits)?,
        })
    }
}

/// Attributes kept in their wire encoding (u16 count, then sorted unique pairs): one
/// allocation per session, copied into replies as is. This is how a node stores them.
///
/// Why `Option<Arc<[u8]>>` and not `Bytes`: 16 bytes in the table's slot instead of 32,
/// the reference count lives in the same allocation as the data, and a clone never
/// allocates (a `Bytes` made from a `Vec` allocates a separate shared header on its first
/// clone, which every session served once would carry). `None` is the empty set.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PackedAttributes(Option<Arc<[u8]>>);

/// The encoding of no attributes: a zero count.
const EMPTY: [u8; 2] = [0, 0];

impl std::fmt::Debug for PackedAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PackedAttributes {
    /// Takes an encoded buffer (the caller built it with the sorted, unique layout).
    fn from_encoded(out: Vec<u8>) -> PackedAttributes {
        if out[..] == EMPTY {
            PackedAttributes(None)
        } else {
            PackedAttributes(Some(Arc::from(out)))
        }
    }

    /// A copy of attributes that are packed already: `bytes` must be the
    /// [`PackedAttributes::as_bytes`] of a set this process built or checked (a node's
    /// table keeps each session's attributes that way, in one allocation with its
    /// metadata, and copies them out with this). One allocation of exactly their size.
    /// Bytes from anywhere else must go through the checked decode: nothing here checks
    /// them (a defect only stops iteration early; nothing reads out of bounds).
    pub fn copy_of_packed(bytes: &[u8]) -> PackedAttributes {
        PackedAttributes::packed_with(bytes.len(), |out| out.copy_from_slice(bytes))
    }

    /// Attributes that are packed already, written by `fill` straight into their one
    /// allocation of `len` bytes (zeroed first). The same contract as
    /// [`PackedAttributes::copy_of_packed`]: what `fill` writes must be the
    /// [`PackedAttributes::as_bytes`] form of a set this process built or checked. Why: a
    /// node expanding its compact table form (issue 15's move path) would otherwise build
    /// the bytes in a buffer and copy them into the shared allocation: one large
    /// allocation and copy more per session handed over.
    pub fn packed_with(len: usize, fill: impl FnOnce(&mut [u8])) -> PackedAttributes {
        // A `TrustedLen` iterator: `Arc<[u8]>` is allocated once, at its exact size.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
        match Arc::get_mut(&mut bytes) {
            Some(out) => fill(out),
            // Never: the Arc was made here and is not shared. Built aside and copied.
            None => {
                let mut out = vec![0u8; len];
                fill(&mut out);
                bytes = Arc::from(out);
            }
        }
        if bytes.len() < EMPTY.len() || bytes[..] == EMPTY {
            PackedAttributes(None)
        } else {
            PackedAttributes(Some(bytes))
        }
    }

    /// Packs a map.
    pub fn pack(attrs: &Attributes) -> PackedAttributes {
        let len = 2 + attrs.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        encode_attributes(&mut out, attrs);
        PackedAttributes::from_encoded(out)
    }

    /// Reads an encoded attribute set, checked exactly as a decoded [`Attributes`] map
    /// is (limits, UTF-8 names, strictly increasing names), and keeps its bytes as they
    /// are: one allocation of exactly their size, never a slice of the frame.
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<PackedAttributes, DecodeError> {
        let start = r.position();
        let n = r.count("attribute count", limits.max_attributes, MIN_ATTRIBUTE_LEN)?;
        let mut last: Option<&str> = None;
        for _ in 0..n {
            let name = r.str("attribute name", limits.max_name_len)?;
            r.skip_bytes("attribute value", limits.max_value_len)?;
            if last.is_some_and(|last| last >= name) {
                return Err(DecodeError::Invalid(
                    "attribute names not sorted and unique".into(),
                ));
            }
            last = Some(name);
        }
        if n == 0 {
            return Ok(PackedAttributes(None));
        }
        Ok(PackedAttributes(Some(Arc::from(r.since(start)))))
    }

    /// Unpacks into a map (for clients and tests; nodes keep the packed form).
    pub fn unpack(&self) -> Attributes {
        self.iter()
            .map(|(k, v)| (k.to_owned(), Bytes::copy_from_slice(v)))
            .collect()
    }

    /// The encoded bytes, ready to be appended to a SESSION reply or a record.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Some(b) => b,
            None => &EMPTY,
        }
    }

    /// How many attributes.
    pub fn count(&self) -> usize {
        let b = self.as_bytes();
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Bytes held, including the encoding's length fields.
    pub fn encoded_len(&self) -> usize {
        self.as_bytes().len()
    }

    /// The pairs in name order. The buffer was built by [`PackedAttributes::pack`],
    /// [`PackedAttributes::apply`] or a checked decode, so it is well formed; iteration
    /// stops at any defect.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let buf = self.as_bytes();
        let mut pos = 2usize;
        let mut left = self.count();
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let nlen = usize::from(u16::from_be_bytes([*buf.get(pos)?, *buf.get(pos + 1)?]));
            let name = std::str::from_utf8(buf.get(pos + 2..pos + 2 + nlen)?).ok()?;
            pos += 2 + nlen;
            let vb = buf.get(pos..pos + 4)?;
            let vlen = u32::from_be_bytes([vb[0], vb[1], vb[2], vb[3]]) as usize;
            let value = buf.get(pos + 4..pos + 4 + vlen)?;
            pos += 4 + vlen;
            Some((name, value))
        })
    }

    /// Only the named attributes (absent names are skipped).
    pub fn select(&self, names: &[String]) -> PackedAttributes {
        let mut out = Vec::new();
        let picked: Vec<(&str, &[u8])> = self
            .iter()
            .filter(|(k, _)| names.iter().any(|n| n == k))
            .collect();
        out.put_u16(picked.len() as u16);
        for (k, v) in picked {
            put_string(&mut out, k);
            put_bytes(&mut out, v);
        }
        PackedAttributes::from_encoded(out)
    }

    /// A new packed set: these attributes with `puts` added or replaced and `deletes`
    /// removed, merged in one pass (both sides are sorted). Returns `None` when the result
    /// would hold more than `max_attributes`.
    pub fn apply(
        &self,
        puts: &Attributes,
        deletes: &[String],
        max_attributes: usize,
    ) -> Option<PackedAttributes> {
        let mut merged: Vec<(&str, &[u8])> = Vec::with_capacity(self.count() + puts.len());
        let mut old = self.iter().peekable();
        let mut new = puts.iter().peekable();
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ok, _)), Some((nk, _))) => match (*ok).cmp(nk.as_str()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        old.next();
                        false
                    }
                },
            };
            if take_old {
                if let Some((k, v)) = old.next() {
                    if !deletes.iter().any(|d| d == k) {
                        merged.push((k, v));
                    }
                }
            } else if let Some((k, v)) = new.next() {
                merged.push((k.as_str(), &v[..]));
            }
        }
        if merged.len() > max_attributes || merged.len() > usize::from(u16::MAX) {
            return None;
        }
        let len = 2 + merged.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.put_u16(merged.len() as u16);
        for (k, v) in merged {
            put_string(&mut out, k);
            put_bytes(&mut out, v);
        }
        Some(PackedAttributes::from_encoded(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn packed_round_trip_select_and_apply() {
        let a = attrs(&[("b", "2"), ("a", "1"), ("c", "3")]);
        let p = PackedAttributes::pack(&a);
        assert_eq!(p.unpack(), a);
        assert_eq!(p.count(), 3);
        assert_eq!(
            p.select(&["c".into(), "zz".into()]).unpack(),
            attrs(&[("c", "3")])
        );
        let applied = p
            .apply(
                &attrs(&[("a", "9"), ("d", "4")]),
                &["b".into(), "nope".into()],
                10,
            )
            .unwrap();
        assert_eq!(applied.unpack(), attrs(&[("a", "9"), ("c", "3"), ("d", "4")]));
        assert!(p.apply(&attrs(&[("d", "4")]), &[], 3).is_none());
        // The packed form is exactly the wire encoding of the map.
        let mut wire = Vec::new();
        encode_attributes(&mut wire, &a);
        assert_eq!(p.as_bytes(), &wire[..]);
        assert_eq!(PackedAttributes::default().as_bytes(), &[0, 0]);
        assert_eq!(
            PackedAttributes::pack(&Attributes::new()),
            PackedAttributes::default()
        );
    }

    #[test]
    fn packed_decode_checks_like_the_map_decode() {
        let limits = Limits::default();
        let wire = PackedAttributes::pack(&attrs(&[("a", "1"), ("b", "")]))
            .as_bytes()
            .to_vec();
        let mut r = Reader::new(&wire);
        let p = PackedAttributes::decode(&mut r, &limits).unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(p.as_bytes(), &wire[..]);
        assert_eq!(
            p.unpack(),
            decode_attributes(&mut Reader::new(&wire), &limits).unwrap()
        );
        // Unsorted, duplicate, non-UTF-8 names and over-limit counts fail as the map
        // decode fails.
        let bad: [&[u8]; 4] = [
            &[0, 2, 0, 1, b'b', 0, 0, 0, 0, 0, 1, b'a', 0, 0, 0, 0],
            &[0, 2, 0, 1, b'a', 0, 0, 0, 0, 0, 1, b'a', 0, 0, 0, 0],
            &[0, 1, 0, 1, 0xff, 0, 0, 0, 0],
            &[0xff, 0xff, 0, 0],
        ];
        for b in bad {
            let packed = PackedAttributes::decode(&mut Reader::new(b), &limits);
            let map = decode_attributes(&mut Reader::new(b), &limits);
            assert!(packed.is_err() && map.is_err(), "{b:?}");
            assert_eq!(packed.unwrap_err().to_string(), map.unwrap_err().to_string());
        }
    }
}
