//! One method per client request, called from [`Node::handle`]'s one-line dispatch
//! (mini-redis's `Command::apply`). Each says what its request does to the session and
//! what it answers; the cross-node work is in fetch.rs, install.rs and backup.rs.

use super::*;

impl Node {
    /// HELLO: the version is checked before the password (protocol.md 5).
    pub(super) fn hello(
        &self,
        at: Reply,
        (min_version, max_version): (u8, u8),
        password: Option<&str>,
        out: &mut BytesMut,
    ) -> After {
        let request_id = at.request_id;
        if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
            return self.error(
                request_id,
                ErrorCode::UnsupportedVersion,
                format!("this node speaks protocol version {PROTOCOL_VERSION} only"),
                out,
            );
        }
        if let Some(expected) = &self.config.password {
            let Some(given) = password else {
                return self.error(
                    request_id,
                    ErrorCode::AuthRequired,
                    "this node requires a password",
                    out,
                );
            };
            if !crate::throttle::password_matches(given, expected) {
                return self.error(request_id, ErrorCode::AuthFailed, "wrong password", out);
            }
        }
        Response::HelloOk {
            version: PROTOCOL_VERSION,
            server_name: concat!("sessync/", env!("CARGO_PKG_VERSION")).into(),
            max_frame_len: self.config.limits.max_frame_len,
        }
        .encode_frame(request_id, out);
        After::Authenticated
    }

    /// PING: the payload back.
    pub(super) fn ping(&self, at: Reply, payload: &bytes::Bytes, out: &mut BytesMut) -> After {
        Response::Pong(payload.clone()).encode_frame(at.request_id, out);
        After::Continue
    }

    /// STATS: the node's counters.
    pub(super) fn stats_reply(&self, at: Reply, out: &mut BytesMut) -> After {
        Response::Stats(self.stats_snapshot()).encode_frame(at.request_id, out);
        After::Continue
    }

    /// GET: served where the session is (copied here first if another node has it); the
    /// backups get a newer access time in the background when theirs lags. The reply is
    /// encoded straight from the table (reply.rs).
    pub(super) async fn get(&self, at: Reply, token: &str, names: &[String], out: &mut BytesMut) -> After {
        self.serve_get(at, token, names, out).await
    }

    /// TOUCH: like GET without the attributes.
    pub(super) async fn touch(&self, at: Reply, token: &str, out: &mut BytesMut) -> After {
        let mut checked = false;
        let found = loop {
            let found = self
                .on_session(token, at.mode, |t, id, now| t.touch(id, now))
                .await;
            match self.read_lease_step(at.mode, &found, &mut checked).await {
                LeaseStep::Serve => break found,
                LeaseStep::Defer => return After::Defer,
                LeaseStep::ReadAgain => {}
                LeaseStep::Unconfirmed => return self.unconfirmed_read(at.request_id, out),
            }
        };
        match found {
            Ok(r) => {
                self.refresh_backups_if_stale(r.id, &r.value);
                let fresh = self.fresh_token(&r.token, r.value.generation, &r.value.backups);
                self.reply_session(
                    at.request_id,
                    fresh.as_deref(),
                    &r.value.meta,
                    &r.value.attrs,
                    out,
                )
            }
            Err(f) => self.session_failure(at.request_id, f, out),
        }
    }

    /// SET: applied under the entry lock (compare-and-set on `if_version`), then
    /// acknowledged only once every holder has it (protocol.md 12.2).
    pub(super) async fn set(
        &self,
        at: Reply,
        token: &str,
        if_version: Option<u64>,
        (puts, deletes): (&Attributes, &[String]),
        out: &mut BytesMut,
    ) -> After {
        let request_id = at.request_id;
        if let Some(both) = deletes.iter().find(|d| puts.contains_key(*d)) {
            return self.error(
                request_id,
                ErrorCode::InvalidRequest,
                format!("attribute {both:?} is both put and deleted; nothing was changed"),
                out,
            );
        }
        if let Some(after) = self.before_write(request_id, at.mode, out) {
            return after;
        }
        match self
            .on_session(token, at.mode, |t, id, now| {
                t.set(id, if_version, puts, deletes, now)
            })
            .await
        {
            Ok(r) => match self
                .replicate_write(r.id, r.value.generation, &r.value.backups)
                .await
            {
                Ok(backups) => {
                    let fresh = self.fresh_token(&r.token, r.value.generation, &backups);
                    self.reply_session(request_id, fresh.as_deref(), &r.value.meta, &r.value.attrs, out)
                }
                Err(why) => self.indeterminate(request_id, why, out),
            },
            Err(f) => self.session_failure(request_id, f, out),
        }
    }

    /// The step before a request that ends a session's id here (DESTROY, ROTATE): a
    /// session owned here whose holders are not settled (a claim they have not confirmed,
    /// or one with a holder that restarted, [`Node::holders_unsettled`]) is settled first,
    /// by the round and survey a write would run. A rival copy of its generation, or a
    /// newer one, then takes the session from this copy, and the request follows it there.
    /// Ended at once, a claim that had acknowledged nothing retired the session while the
    /// rival's copy lived on and was read back after the heal (simulation seed 10227 with
    /// crashes: the DESTROY's own fetch made that claim). So a session not live here is
    /// fetched first (touched, not changed), then checked; while the members cannot settle
    /// it, nothing is ended (`INDETERMINATE`). `Some`: the request's reply is written.
    async fn settle_before_ending(
        &self,
        request_id: u64,
        mode: Mode,
        token: &str,
        ended: &str,
        out: &mut BytesMut,
    ) -> Option<After> {
        let id = sessync_proto::Token::verify(token, &self.config.keys)
            .ok()?
            .session_id;
        if self.config.replicas == 0 {
            return None;
        }
        if self.table.live_generation(&id, now_ms()).is_none() {
            if let Err(f) = self.on_session(token, mode, |t, id, now| t.touch(id, now)).await {
                return Some(self.session_failure(request_id, f, out));
            }
        }
        if !self.holders_unsettled(&id) {
            return None;
        }
        let _ = self.replicate(id, &[]).await;
        if !self.holders_unsettled(&id) {
            return None;
        }
        Some(self.indeterminate(
            request_id,
            format!("not {ended}: this node's copy is not confirmed by the other members yet; try again"),
            out,
        ))
    }

    /// ROTATE: a new id for the same data; the old id is destroyed here and its holders
    /// told to DROP it (their answers prove this node still owned it), the new id gets
    /// holders of its own.
    pub(super) async fn rotate(&self, at: Reply, token: &str, out: &mut BytesMut) -> After {
        let request_id = at.request_id;
        if let Some(after) = self.before_write(request_id, at.mode, out) {
            return after;
        }
        if let Some(after) = self
            .settle_before_ending(request_id, at.mode, token, "rotated", out)
            .await
        {
            return after;
        }
        match self
            .on_session(token, at.mode, |t, id, now| t.rotate(id, now))
            .await
        {
            Ok(r) => {
                let (new_id, s) = r.value;
                Stats::bump(&self.stats.rotated);
                let dropped = self.retire_id(r.id, &s).await;
                match self.replicate_write(new_id, 0, &[]).await {
                    Ok(backups) if dropped == 0 || self.config.backup_policy == BackupPolicy::Degrade => {
                        let token = self.sign(new_id, 0, &backups);
                        self.reply_session(request_id, Some(&token), &s.meta, &s.attrs, out)
                    }
                    Ok(_) => self.indeterminate(
                        request_id,
                        format!(
                            "rotated here, but {dropped} backup(s) could not be told to forget the old id"
                        ),
                        out,
                    ),
                    Err(why) => self.indeterminate(request_id, why, out),
                }
            }
            Err(f) => self.session_failure(request_id, f, out),
        }
    }

    /// DESTROY: a tombstone here, and DROP to the holders (fencing: their answers prove
    /// this node still owned the session, so too few of them is as bad as a failed one).
    pub(super) async fn destroy(&self, at: Reply, token: &str, out: &mut BytesMut) -> After {
        let request_id = at.request_id;
        if let Some(after) = self.before_write(request_id, at.mode, out) {
            return after;
        }
        if let Some(after) = self
            .settle_before_ending(request_id, at.mode, token, "destroyed", out)
            .await
        {
            return after;
        }
        match self
            .on_session(token, at.mode, |t, id, now| t.destroy(id, now))
            .await
        {
            Ok(r) => {
                Stats::bump(&self.stats.destroyed);
                let failed = self.retire_id(r.id, &r.value).await;
                if failed > 0 && self.config.backup_policy == BackupPolicy::Refuse {
                    return self.indeterminate(
                        request_id,
                        format!("destroyed here, but {failed} backup(s) could not be told; if this node dies before their copies expire, the session may come back"),
                        out,
                    );
                }
                Response::Done.encode_frame(request_id, out);
                After::Continue
            }
            Err(f) => self.session_failure(request_id, f, out),
        }
    }

    /// CREATE: a fresh id, replicated before its token is handed out; a CREATE that cannot
    /// get its backups is taken back (no token was given) and refused.
    pub(super) async fn create(
        &self,
        at: Reply,
        (idle_ttl_ms, max_lifetime_ms): (u64, u64),
        attrs: &Attributes,
        out: &mut BytesMut,
    ) -> After {
        let request_id = at.request_id;
        if let Some(after) = self.before_write(request_id, at.mode, out) {
            return after;
        }
        let now = now_ms();
        let idle = if idle_ttl_ms == 0 {
            self.config.idle_ttl.as_millis() as u64
        } else {
            idle_ttl_ms
        };
        let lifetime = match (max_lifetime_ms, self.config.max_lifetime) {
            (0, None) => 0,
            (0, Some(d)) => d.as_millis() as u64,
            (ms, _) => ms,
        };
        let deadline = if lifetime == 0 {
            0
        } else {
            now.saturating_add(lifetime)
        };
        let (id, Served { meta, attrs, .. }) = match self.table.create(attrs, idle, deadline, now) {
            Ok(created) => created,
            Err(m) => return self.miss_error(request_id, m, out),
        };
        match self.replicate_write(id, 0, &[]).await {
            Ok(backups) => {
                Stats::bump(&self.stats.created);
                let token = self.sign(id, 0, &backups);
                self.reply_session(request_id, Some(&token), &meta, &attrs, out)
            }
            Err(_) => {
                // No token was handed out, so the session can simply be taken back: the
                // CREATE did not happen.
                if let Ok(s) = self.table.destroy(&id, now_ms()) {
                    let old = OldBackups {
                        backups: s.backups,
                        generation: s.generation,
                    };
                    self.drop_backups(id, &old).await;
                }
                Stats::bump(&self.stats.backup_unavailable);
                self.error(
                    request_id,
                    ErrorCode::BackupUnavailable,
                    format!(
                        "too few of the {} backup node(s) this session needs confirmed it; nothing was created",
                        self.config.replicas
                    ),
                    out,
                )
            }
        }
    }

    /// Writes that must reach backups before they are acknowledged: never answered in
    /// [`Mode::LocalOnly`] (that mode may not wait, and must not apply a write it cannot
    /// finish), and refused up front when too few backup nodes are reachable.
    pub(super) fn before_write(&self, request_id: u64, mode: Mode, out: &mut BytesMut) -> Option<After> {
        if self.config.replicas == 0 {
            return None;
        }
        if mode == Mode::LocalOnly {
            return Some(After::Defer);
        }
        if self.config.backup_policy == BackupPolicy::Refuse && !self.enough_backups() {
            Stats::bump(&self.stats.backup_unavailable);
            return Some(self.error(
                request_id,
                ErrorCode::BackupUnavailable,
                format!(
                    "this write needs {} backup node(s) and too few are reachable; nothing was changed",
                    self.config.replicas
                ),
                out,
            ));
        }
        None
    }

    /// Tells the holders of an id that is gone here (destroyed, or rotated away) to DROP
    /// it; returns how many did not confirm, counting missing holders too (fencing: the
    /// holders' answers are what proves this node still owned the session, so too few of
    /// them is as bad as a failed one).
    async fn retire_id(&self, id: SessionId, last: &Served) -> usize {
        let old = OldBackups {
            backups: last.backups.clone(),
            generation: last.generation,
        };
        let missing = usize::from(self.config.replicas).saturating_sub(old.backups.len());
        // A giver whose COPY_ACK was held back still keeps its copy: it must hear the ACK
        // (and point here, where the id is gone) or it could hand that copy on again.
        let giver_unsure = usize::from(!self.release_held_ack_now(id).await);
        self.retire_backups(id, &old).await + missing + giver_unsure
    }
}
