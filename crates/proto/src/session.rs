//! The session as it crosses the wire: id, metadata and attributes.

use std::collections::BTreeMap;
use std::fmt;

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

impl SessionId {
    /// A fresh id from the OS CSPRNG: unguessable, so knowing one id reveals no other.
    pub fn random() -> SessionId {
        let mut id = [0u8; 16];
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
        if attrs.insert(name, value).is_some() {
            return Err(DecodeError::Invalid("duplicate attribute name".into()));
        }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id.
    pub id: SessionId,
    /// Version, times and deadlines.
    pub meta: SessionMeta,
    /// The data.
    pub attributes: Attributes,
}

impl SessionRecord {
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.id.0);
        self.meta.encode(out);
        encode_attributes(out, &self.attributes);
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<SessionRecord, DecodeError> {
        Ok(SessionRecord {
            id: SessionId(r.array()?),
            meta: SessionMeta::decode(r)?,
            attributes: decode_attributes(r, limits)?,
        })
    }
}
