"""A Django session engine backed by sessync.

settings.py::

    SESSION_ENGINE = "sessync.django"
    SESSYNC = {
        "ADDRESS": "127.0.0.1:7700",   # this app server's node
        "TIMEOUT": 2.0,                # seconds per request to the node
        "PASSWORD": None,
        "POOL_SIZE": 8,
        "IDLE_TTL": None,              # seconds; None: SESSION_COOKIE_AGE
    }

The session cookie holds the sessync token as the session key. Whenever a reply carries a
new token (the session moved to this app's node, ``cycle_key()`` at login, creation) the
session is marked modified so that Django's ``SessionMiddleware`` sends the cookie again.
``cycle_key()`` (called by ``django.contrib.auth.login``) is a sessync ROTATE: same data,
new token, and the old token dies at once.

Values are stored one attribute per key, each serialized with ``SESSION_SERIALIZER``
(JSON by default); see :mod:`sessync.store` for the format and the conflict policy.
Django saves only when the session is ``modified`` (or ``SESSION_SAVE_EVERY_REQUEST``); a
save writes only the keys that changed since the load, with compare-and-set. A change that
collides with another request's change of the same key raises :class:`SessionConflict`,
an ``UpdateError``: ``SessionMiddleware`` turns it into ``SessionInterrupted`` (HTTP 400)
and nothing of this request's change is written. A session destroyed meanwhile (a logout
in a concurrent request) does the same, as with Django's own backends.

sessync expires sessions itself (idle TTL, refreshed on every read), so
``clear_expired()`` has nothing to do.
"""

import threading
from typing import Any, Dict, Optional, Tuple

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError

from . import store
from .client import Client
from .errors import InvalidToken, SessionNotFound
from .store import Snapshot

__all__ = ["SessionStore", "SessionConflict", "get_client"]


class SessionConflict(store.SessionConflict, UpdateError):  # type: ignore[misc]
    """Another request changed the same key(s); see the module docs."""


_clients: Dict[Tuple[Any, ...], Client] = {}
_clients_lock = threading.Lock()


def _config() -> Dict[str, Any]:
    return dict(getattr(settings, "SESSYNC", {}) or {})


def get_client() -> Client:
    """The process-wide client for the current ``SESSYNC`` settings (one pool per address)."""
    cfg = _config()
    key = (
        cfg.get("ADDRESS", "127.0.0.1:7700"),
        float(cfg.get("TIMEOUT", 2.0)),
        cfg.get("PASSWORD"),
        int(cfg.get("POOL_SIZE", 8)),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = Client(key[0], timeout=key[1], password=key[2], pool_size=key[3])
            _clients[key] = client
        return client


class SessionStore(SessionBase):  # type: ignore[misc]
    """``request.session``: the session key is the sessync token."""

    def __init__(self, session_key: Optional[str] = None) -> None:
        super().__init__(session_key)
        self._snapshot: Optional[Snapshot] = None
        self._undecodable: Dict[str, bytes] = {}

    @property
    def client(self) -> Client:
        return get_client()

    def _dumps(self, value: Any) -> bytes:
        out = self.serializer().dumps(value)
        return out if isinstance(out, bytes) else out.encode("utf-8")

    def _loads(self, raw: bytes) -> Any:
        return self.serializer().loads(raw)

    def _set_key(self, key: Optional[str]) -> None:
        self._session_key = key  # SessionBase's validating property

    def _adopt(self, snap: Snapshot) -> None:
        self._snapshot = snap
        if snap.token != self.session_key:
            self._set_key(snap.token)
            # SessionMiddleware re-sends the cookie only for a modified session.
            self.modified = True

    # SessionBase's storage API ----------------------------------------------------------
    def load(self) -> Dict[str, Any]:
        snap = store.load(self.client, self.session_key)
        if snap is None:
            self._set_key(None)
            self._snapshot = None
            return {}
        self._adopt(snap)
        data: Dict[str, Any] = {}
        self._undecodable = {}
        for k, raw in snap.raw.items():
            try:
                data[k] = self._loads(raw)
            except ValueError:
                self._undecodable[k] = raw
        return data

    def exists(self, session_key: Optional[str]) -> bool:
        if not session_key:
            return False
        try:
            self.client.touch(session_key)
        except (SessionNotFound, InvalidToken):
            return False
        return True

    def create(self) -> None:
        data = self._session_cache if hasattr(self, "_session_cache") else {}
        serialized = {k: self._dumps(v) for k, v in data.items()}
        self._snapshot = store.save(self.client, None, serialized, idle_ttl=self._idle_ttl())
        self._set_key(self._snapshot.token)
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        if must_create or self.session_key is None:
            return self.create()
        data = self._get_session()
        if self.session_key is None:
            # The load found no live session under the cookie: start a new one.
            return self.create()
        if self._snapshot is None:
            # The data was set without a load (e.g. after clear()): diff against what is
            # stored, never overwrite blindly.
            snap = store.load(self.client, self.session_key)
            if snap is None:
                raise UpdateError("the session ended before this request saved it")
            self._adopt(snap)
        serialized = {k: self._dumps(v) for k, v in data.items()}
        serialized.update(self._undecodable)
        try:
            after = store.save(self.client, self._snapshot, serialized)
        except store.SessionConflict as e:
            raise SessionConflict(e.message) from None
        except SessionNotFound as e:
            raise UpdateError(str(e)) from None
        self._adopt(after)

    def delete(self, session_key: Optional[str] = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        self.client.destroy(session_key, missing_ok=True)
        if session_key == self.session_key:
            self._snapshot = None

    def cycle_key(self) -> None:
        """ROTATE: new token, same data; the old token stops working at once."""
        data = self._session
        if self.session_key is None or self._snapshot is None:
            self.create()
        else:
            r = self.client.rotate(self.session_key)
            self._adopt(Snapshot(r.token, r.version, dict(r.attributes), True))
        self._session_cache = data
        self.modified = True

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: nodes expire sessions themselves."""

    def _idle_ttl(self) -> float:
        ttl = _config().get("IDLE_TTL")
        return float(ttl) if ttl is not None else float(self.get_expiry_age())
