//! How a tower-sessions [`Record`] is laid out in sessync attributes.

use sessync_client::{Attributes, Bytes};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::Error;

/// The attribute holding tower-sessions' id (its `Display` form).
pub(crate) const ID_ATTR: &str = "__tower_sessions.id";
/// The attribute holding the record's expiry, Unix seconds in decimal.
pub(crate) const EXPIRY_ATTR: &str = "__tower_sessions.expiry";
pub(crate) const RESERVED: &str = "__tower_sessions.";

/// The attributes for a record: the reserved id and expiry, then one JSON value per key.
pub(crate) fn encode(record: &Record) -> Result<Attributes, Error> {
    let mut attrs = Attributes::new();
    attrs.insert(ID_ATTR.to_string(), Bytes::from(record.id.to_string()));
    attrs.insert(
        EXPIRY_ATTR.to_string(),
        Bytes::from(record.expiry_date.unix_timestamp().to_string()),
    );
    for (key, value) in &record.data {
        if key.starts_with(RESERVED) {
            return Err(Error::Encode(format!(
                "session key {key:?} uses the reserved prefix {RESERVED:?}"
            )));
        }
        let json = serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?;
        attrs.insert(key.clone(), Bytes::from(json));
    }
    Ok(attrs)
}

/// The record stored in `attrs`, if it is the one with id `id`; `None` when the
/// attributes belong to another session (the two cookies do not match) or it expired.
pub(crate) fn decode(id: &Id, attrs: &Attributes, now: OffsetDateTime) -> Result<Option<Record>, Error> {
    let Some(stored) = attrs.get(ID_ATTR) else {
        return Ok(None);
    };
    if stored.as_ref() != id.to_string().as_bytes() {
        return Ok(None);
    }
    let expiry = attrs
        .get(EXPIRY_ATTR)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| Error::Decode("session has no valid expiry attribute".into()))?;
    if expiry <= now {
        return Ok(None);
    }
    let mut data = std::collections::HashMap::new();
    for (key, value) in attrs {
        if key.starts_with(RESERVED) {
            continue;
        }
        let v = serde_json::from_slice(value)
            .map_err(|e| Error::Decode(format!("session key {key:?} is not JSON: {e}")))?;
        data.insert(key.clone(), v);
    }
    Ok(Some(Record {
        id: *id,
        data,
        expiry_date: expiry,
    }))
}

/// What to write to turn `old` into `new`: changed or added attributes, and removed names.
pub(crate) fn diff(old: &Attributes, new: &Attributes) -> (Attributes, Vec<String>) {
    let puts = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    (puts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut data = std::collections::HashMap::new();
        data.insert("user".to_string(), serde_json::json!({"name": "alice", "id": 7}));
        Record {
            id: Id(42),
            data,
            expiry_date: OffsetDateTime::from_unix_timestamp(2_000_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn round_trip_and_id_check() {
        let r = record();
        let attrs = encode(&r).unwrap_or_default();
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let back = decode(&r.id, &attrs, now).ok().flatten();
        assert_eq!(
            back.map(|b| (b.id, b.data, b.expiry_date)),
            Some((r.id, r.data.clone(), r.expiry_date))
        );
        // Another id: not this session.
        assert!(matches!(decode(&Id(43), &attrs, now), Ok(None)));
        // Expired.
        let later = OffsetDateTime::from_unix_timestamp(2_000_000_001).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        assert!(matches!(decode(&r.id, &attrs, later), Ok(None)));
    }

    #[test]
    fn reserved_keys_are_refused() {
        let mut r = record();
        r.data.insert(ID_ATTR.into(), serde_json::json!(1));
        assert!(matches!(encode(&r), Err(Error::Encode(_))));
    }

    #[test]
    fn diff_is_minimal() {
        let mut a = Attributes::new();
        a.insert("same".into(), Bytes::from_static(b"1"));
        a.insert("gone".into(), Bytes::from_static(b"1"));
        a.insert("changed".into(), Bytes::from_static(b"1"));
        let mut b = Attributes::new();
        b.insert("same".into(), Bytes::from_static(b"1"));
        b.insert("changed".into(), Bytes::from_static(b"2"));
        b.insert("new".into(), Bytes::from_static(b"3"));
        let (puts, deletes) = diff(&a, &b);
        assert_eq!(puts.keys().collect::<Vec<_>>(), vec!["changed", "new"]);
        assert_eq!(deletes, vec!["gone".to_string()]);
    }
}
