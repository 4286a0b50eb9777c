//! Turning outcomes into reply frames: tokens, session replies and error codes.

use std::sync::{Mutex, PoisonError};

use sessync_proto::{encode_session_reply_with, set_session_reply_token};

use super::*;

impl Node {
    /// A token naming this node as the owner of `id` under `generation`, with `backups`.
    pub(super) fn sign(&self, id: SessionId, generation: u64, backups: &[SocketAddr]) -> String {
        Token {
            session_id: id,
            generation,
            owner: self.advertise,
            backups: backups.to_vec(),
        }
        .sign(&self.config.keys)
    }

    /// The replacement token a reply carries, when the client's does not name this node,
    /// this generation and these backups.
    pub(super) fn fresh_token(
        &self,
        token: &Token,
        generation: u64,
        backups: &[SocketAddr],
    ) -> Option<String> {
        if token.owner == self.advertise && token.generation == generation && token.backups == backups {
            None
        } else {
            Some(self.sign(token.session_id, generation, backups))
        }
    }

    pub(super) fn error(
        &self,
        request_id: u64,
        code: ErrorCode,
        message: impl Into<String>,
        out: &mut BytesMut,
    ) -> After {
        Stats::bump(&self.stats.errors);
        Response::Error(ErrorReply::new(code, message)).encode_frame(request_id, out);
        if code.closes_connection() {
            After::Close
        } else {
            After::Continue
        }
    }

    pub(super) fn miss_error(&self, request_id: u64, miss: Miss, out: &mut BytesMut) -> After {
        match miss {
            Miss::NotFound | Miss::Absent => self.error(
                request_id,
                ErrorCode::SessionNotFound,
                "no such session (expired, destroyed or never existed)",
                out,
            ),
            Miss::Moved(to) => self.error(
                request_id,
                ErrorCode::OwnerUnreachable,
                format!("session moved to {to}, which this node cannot reach"),
                out,
            ),
            Miss::VersionConflict { current } => self.error(
                request_id,
                ErrorCode::VersionConflict,
                format!("session is at version {current}; nothing was changed"),
                out,
            ),
            Miss::TooManyAttributes => self.error(
                request_id,
                ErrorCode::LimitExceeded,
                format!(
                    "a session holds at most {} attributes",
                    self.config.limits.max_attributes
                ),
                out,
            ),
            Miss::TooLarge => self.error(
                request_id,
                ErrorCode::LimitExceeded,
                "the session would not fit in one frame; nothing was changed",
                out,
            ),
            Miss::Capacity => self.error(
                request_id,
                ErrorCode::Capacity,
                "node is at its session or memory limit",
                out,
            ),
        }
    }

    pub(super) fn session_failure(&self, request_id: u64, f: SessionFailure, out: &mut BytesMut) -> After {
        match f {
            SessionFailure::Token(e) => self.error(
                request_id,
                ErrorCode::InvalidToken,
                format!("invalid token: {e}"),
                out,
            ),
            SessionFailure::Miss(m) => self.miss_error(request_id, m, out),
            SessionFailure::Fetch(e) => self.error(request_id, e.code(), e.to_string(), out),
            SessionFailure::Defer => After::Defer,
        }
    }

    pub(super) fn reply_session(
        &self,
        request_id: u64,
        token: Option<&str>,
        meta: &SessionMeta,
        attrs: &PackedAttributes,
        out: &mut BytesMut,
    ) -> After {
        encode_session_reply(out, request_id, token, meta, attrs);
        After::Continue
    }

    /// GET, with its reply encoded under the session's read lock straight from the
    /// table's bytes (`Table::get_with`): one copy of the attributes into `out`, no
    /// allocation per request or attribute. The frame is written without a token; the
    /// token, when the client needs a fresh one (after a move), is put in afterwards.
    pub(super) async fn serve_get(
        &self,
        at: Reply,
        token: &str,
        names: &[String],
        out: &mut BytesMut,
    ) -> After {
        let request_id = at.request_id;
        let start = out.len();
        let mut checked = false;
        let found = loop {
            let found = {
                // `on_session` takes an `Fn` (it may run the read again after a fetch): the
                // output goes through an uncontended lock, which also keeps the future `Send`.
                let frame = Mutex::new(&mut *out);
                self.on_session(token, at.mode, |t, id, now| {
                    t.get_with(id, now, |view| {
                        let mut o = frame.lock().unwrap_or_else(PoisonError::into_inner);
                        o.truncate(start);
                        encode_session_reply_with(&mut o, request_id, &view.meta(), |b| {
                            view.write_attributes(names, b);
                        });
                        view.served()
                    })
                })
                .await
            };
            match self.read_lease_step(at.mode, &found, &mut checked).await {
                LeaseStep::Serve => break found,
                LeaseStep::Defer => {
                    out.truncate(start);
                    return After::Defer;
                }
                LeaseStep::ReadAgain => {}
                LeaseStep::Unconfirmed => {
                    out.truncate(start);
                    return self.unconfirmed_read(request_id, out);
                }
            }
        };
        match found {
            Ok(r) => {
                self.refresh_backups_if_stale(r.id, &r.value);
                if let Some(t) = self.fresh_token(&r.token, r.value.generation, &r.value.backups) {
                    set_session_reply_token(out, start, &t);
                }
                After::Continue
            }
            Err(f) => {
                out.truncate(start);
                self.session_failure(request_id, f, out)
            }
        }
    }

    pub(super) fn indeterminate(&self, request_id: u64, why: String, out: &mut BytesMut) -> After {
        Stats::bump(&self.stats.indeterminate);
        self.error(request_id, ErrorCode::Indeterminate, why, out)
    }
}
