//! Turning outcomes into reply frames: tokens, session replies and error codes.

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
            SessionFailure::Fetch(code, message) => self.error(request_id, code, message, out),
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

    pub(super) fn indeterminate(&self, request_id: u64, why: String, out: &mut BytesMut) -> After {
        Stats::bump(&self.stats.indeterminate);
        self.error(request_id, ErrorCode::Indeterminate, why, out)
    }
}
