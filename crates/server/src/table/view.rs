//! Reading a live session in place (issue 15): [`Table::get_with`] shows the session
//! under its inner read lock, so a GET reply is encoded straight from the table's compact
//! bytes (one copy into the reply frame, no allocation per request or per attribute)
//! instead of copying the attributes out into an owned set first.

use bytes::BytesMut;

use super::store::LiveNode;
use super::*;

/// A live session as [`Table::get_with`] shows it, under its inner read lock.
pub struct SessionView<'a> {
    node: &'a LiveNode,
}

impl SessionView<'_> {
    /// Version, times and deadlines (this read's access already recorded).
    pub fn meta(&self) -> SessionMeta {
        self.node.meta()
    }

    /// Appends the attributes (all of them, or only those named in `names` when it is
    /// not empty; absent names are skipped) in the wire layout of a SESSION reply or a
    /// record: the u16 count, then per attribute its u16 name length, name, u32 value
    /// length and value. Returns how many were written.
    pub fn write_attributes(&self, names: &[String], out: &mut BytesMut) -> u16 {
        self.node.write_attrs(names, out)
    }

    /// What the reply's token and the backup refresh need, without attributes.
    pub fn served(&self) -> Served {
        self.node.served(PackedAttributes::default())
    }
}

impl Table {
    /// A GET that does not copy the attributes out: if `id` is live here (not expired),
    /// records the access (the idle deadline moves, as [`Table::get`]) and runs `f` on the
    /// session under the inner read lock, returning what `f` returns; otherwise the same
    /// [`Miss`] as [`Table::get`]. `f` must be short: no I/O, no waiting and no other
    /// call into the table (the lock is not re-entrant once a writer waits).
    pub fn get_with<R>(
        &self,
        id: &SessionId,
        now: u64,
        f: impl FnOnce(&SessionView<'_>) -> R,
    ) -> Result<R, Miss> {
        let g = self.shard(id).map.read(id);
        let Some(node) = g.find_live(id) else {
            return Err(g.find_other(id).map_or(Miss::Absent, Self::miss_for));
        };
        if node.expired(now) {
            return Err(Miss::NotFound);
        }
        node.access(now);
        Ok(f(&SessionView { node }))
    }
}
