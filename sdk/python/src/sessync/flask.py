"""Flask sessions stored in sessync.

::

    from flask import Flask
    from sessync import Client
    from sessync.flask import SessyncSessionInterface

    app = Flask(__name__)
    app.session_interface = SessyncSessionInterface(Client("127.0.0.1:7700"))

The session cookie (``SESSION_COOKIE_NAME``, default ``session``) holds the sessync token:
opaque, signed by the cluster, and no secret of the app is needed. Whenever a reply
carries a new token (after the session moved to this app's node, at ``rotate()``, or at
creation) the cookie is re-sent with it. Values are stored one attribute per key, as
Flask's tagged JSON (so ``bytes``, tuples, ``datetime``, ``UUID`` and ``Markup`` survive);
see :mod:`sessync.store` for the format and for the conflict policy:

- concurrent requests that change different keys both keep their change (merged);
- a request whose change collides with another request's change of the same key raises
  :class:`~sessync.store.SessionConflict` at the end of the request; Flask answers 500
  and nothing of this request's session change is written.

Changes are detected by comparing serialized values, so mutating a nested value
(``session["cart"].append(...)``) is saved without setting ``session.modified``.
An emptied session (``session.clear()``) is destroyed on the node and its cookie removed.
"""

from typing import Any, Dict, Optional

from flask import Flask, Request, Response
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from . import store
from .client import Client, Duration
from .store import SessionConflict, Snapshot

__all__ = ["SessyncSession", "SessyncSessionInterface", "SessionConflict"]


class SessyncSession(CallbackDict, SessionMixin):  # type: ignore[type-arg]
    """The ``flask.session`` object: a dict plus what the store needs to save it."""

    def __init__(self, initial: Optional[Dict[str, Any]] = None, snapshot: Optional[Snapshot] = None) -> None:
        def on_update(self: "SessyncSession") -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.snapshot = snapshot
        self.new = snapshot is None
        self.modified = False
        self._rotate = False
        #: Stored values this app could not decode (another writer's format), kept as is.
        self.undecodable: Dict[str, bytes] = {}

    @property
    def token(self) -> Optional[str]:
        """The sessync token the cookie will carry (None for a session not yet saved)."""
        return self.snapshot.token if self.snapshot else None

    def rotate(self) -> None:
        """Give the session a new token at the end of this request, keeping its data; the old
        token stops working. Call it at login (session fixation)."""
        self._rotate = True
        self.modified = True


class SessyncSessionInterface(SessionInterface):
    """A Flask session interface backed by a :class:`~sessync.Client`.

    ``idle_ttl`` (seconds or ``timedelta``) is the idle time to live of new sessions;
    ``None`` uses ``PERMANENT_SESSION_LIFETIME`` for permanent sessions and the node's
    default (30 minutes) otherwise.
    """

    serializer = TaggedJSONSerializer()
    session_class = SessyncSession

    def __init__(self, client: Client, idle_ttl: Optional[Duration] = None) -> None:
        self.client = client
        self.idle_ttl = idle_ttl

    def _dumps(self, value: Any) -> bytes:
        return self.serializer.dumps(value).encode("utf-8")

    def open_session(self, app: Flask, request: Request) -> SessyncSession:
        token = request.cookies.get(self.get_cookie_name(app))
        snap = store.load(self.client, token)
        if snap is None:
            return self.session_class()
        data: Dict[str, Any] = {}
        for k, raw in snap.raw.items():
            try:
                data[k] = self.serializer.loads(raw.decode("utf-8"))
            except ValueError:
                app.logger.warning("sessync: session key %r is not tagged JSON; left out", k)
        session = self.session_class(data, snap)
        # Keys left out are written back as they were, never deleted by the save.
        session.undecodable = {k: v for k, v in snap.raw.items() if k not in data}
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, SessyncSession):
            # open_session failed (the node was down: Flask answers with the error) or Flask
            # made a null session: there is nothing of ours to save.
            return
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        secure = self.get_cookie_secure(app)
        samesite = self.get_cookie_samesite(app)
        httponly = self.get_cookie_httponly(app)
        snap = session.snapshot

        if not session:
            if snap is not None:
                self.client.destroy(snap.token, missing_ok=True)
                response.delete_cookie(
                    name, domain=domain, path=path, secure=secure, samesite=samesite, httponly=httponly
                )
            return

        new = {k: self._dumps(v) for k, v in session.items()}
        new.update(session.undecodable)
        if snap is not None and session._rotate:
            r = self.client.rotate(snap.token)
            snap = Snapshot(r.token, r.version, dict(r.attributes), True)
        ttl = self.idle_ttl
        if ttl is None and session.permanent:
            ttl = app.permanent_session_lifetime
        after = store.save(self.client, snap, new, idle_ttl=ttl)
        session.snapshot = after
        if after.token_changed or self.should_set_cookie(app, session):
            response.set_cookie(
                name,
                after.token,
                expires=self.get_expiration_time(app, session),
                httponly=httponly,
                domain=domain,
                path=path,
                secure=secure,
                samesite=samesite,
            )
        response.vary.add("Cookie")
