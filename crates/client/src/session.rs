//! What the typed API takes and returns.

use std::time::Duration;

use bytes::Bytes;
use sessync_proto::{Attributes, SessionMeta};

/// A session as the node served it.
///
/// The one rule of the token: after every call, store [`Session::token`] (in the user's
/// cookie) in place of the token you passed. It is the same string unless the node issued
/// a replacement ([`Session::token_changed`]): after CREATE and ROTATE, and whenever the
/// session moved to the node that served the request.
///
/// An error carries no token: keep the one you have, even if the failed call moved the
/// session (nodes follow stale tokens). With several calls for one session in flight,
/// each may return a different token; every one of them works, and the one returned last
/// is the one to keep (protocol.md section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token to keep from now on: the node's replacement if it sent one, else the
    /// token passed in.
    pub token: String,
    /// Whether [`Session::token`] differs from the token passed in (always true after
    /// CREATE, which has no token to pass in).
    pub token_changed: bool,
    /// Version, creation and access times, deadlines, as of this reply.
    pub meta: SessionMeta,
    /// The attributes the reply carried: all of them for CREATE, ROTATE and
    /// [`Client::get`](crate::Client::get); the named ones for
    /// [`Client::get_only`](crate::Client::get_only); none for SET and TOUCH.
    pub attributes: Attributes,
}

impl Session {
    /// The session's version after this request; the value to pass as `if_version` for a
    /// compare-and-set write.
    pub fn version(&self) -> u64 {
        self.meta.version
    }

    /// One attribute of this reply, if present.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.attributes.get(name)
    }
}

/// Per-session deadlines for [`Client::create_with`](crate::Client::create_with).
/// `None` takes the node's default (30 min idle, no absolute lifetime, unless the node is
/// configured otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The session expires this long after its last access. Sent in whole milliseconds;
    /// anything under 1 ms is sent as 1 ms (0 would mean "the node's default").
    pub idle_ttl: Option<Duration>,
    /// The session expires this long after creation, however active it is. Rounded like
    /// `idle_ttl`.
    pub max_lifetime: Option<Duration>,
}

impl CreateOptions {
    /// Milliseconds for the wire: 0 for "node default", else at least 1.
    pub(crate) fn wire_ms(d: Option<Duration>) -> u64 {
        match d {
            None => 0,
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }
}

/// One atomic change to a session's attributes: puts, deletes, and an optional
/// compare-and-set version. Built by [`SetRequest`](crate::SetRequest) (or filled in directly and sent with
/// [`Client::write`](crate::Client::write)).
///
/// A name is never both put and deleted: [`Write::put`] and [`Write::delete`] keep the
/// last instruction for a name, and [`Client::write`](crate::Client::write) refuses a
/// `Write` whose fields were filled in with such a conflict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Write {
    /// Attributes to add or replace.
    pub puts: Attributes,
    /// Attributes to remove (names that do not exist are ignored by the node).
    pub deletes: Vec<String>,
    /// Apply only if the session is at this version; otherwise the node answers
    /// VERSION_CONFLICT and changes nothing.
    pub if_version: Option<u64>,
}

impl Write {
    /// An empty change (sending it still bumps the version and refreshes the idle deadline).
    pub fn new() -> Write {
        Write::default()
    }

    /// Adds or replaces `name`; cancels an earlier `delete` of the same name.
    pub fn put(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Write {
        let name = name.into();
        self.deletes.retain(|d| *d != name);
        self.puts.insert(name, value.into());
        self
    }

    /// Removes `name`; cancels an earlier `put` of the same name.
    pub fn delete(mut self, name: impl Into<String>) -> Write {
        let name = name.into();
        self.puts.remove(&name);
        if !self.deletes.contains(&name) {
            self.deletes.push(name);
        }
        self
    }

    /// Makes the change conditional on the session being at `version`.
    pub fn if_version(mut self, version: u64) -> Write {
        self.if_version = Some(version);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_instruction_for_a_name_wins() {
        let w = Write::new()
            .put("a", "1")
            .delete("a")
            .delete("b")
            .delete("b")
            .put("b", "2")
            .if_version(7);
        assert!(!w.puts.contains_key("a"));
        assert_eq!(w.deletes, vec!["a".to_string()]);
        assert_eq!(w.puts.get("b"), Some(&Bytes::from_static(b"2")));
        assert_eq!(w.if_version, Some(7));
    }

    #[test]
    fn durations_never_become_the_default_marker() {
        assert_eq!(CreateOptions::wire_ms(None), 0);
        assert_eq!(CreateOptions::wire_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(CreateOptions::wire_ms(Some(Duration::from_millis(300))), 300);
    }
}
