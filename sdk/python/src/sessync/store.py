"""The framework-neutral core of the Flask and Django adapters.

Storage format (the same in every adapter, the Rust tower-sessions store included): one
sessync attribute per session key, named by the key, holding that key's value serialized
as UTF-8 JSON (the framework's JSON serializer). One attribute per key rather than one
attribute holding the whole dict because:

- a save writes only the keys that changed (puts) or went away (deletes), so two requests
  that change different keys of one session both keep their change, which a whole-blob
  write would silently lose (the complaint the product brief starts from);
- the node can answer a read of a few keys (``GET`` with names) and other services, in
  any language, can read a key without knowing the framework's envelope.

The price: a key must be a valid attribute name (at most 256 bytes of UTF-8) and a value
at most 1 MiB of JSON; violations raise :class:`~sessync.LimitExceeded` at save.

Conflict policy (compare-and-set on save). A save is ``SET if_version=<version loaded>``
with the diff against what was loaded. If another request wrote in between
(VERSION_CONFLICT), the session is read again: when none of the keys this request changed
was changed by the other writer, the diff is re-applied on the new version (up to
``MAX_MERGES`` times) -- a merge that cannot lose either request's change. When the other
writer changed one of the same keys to something else, :class:`SessionConflict` is raised
and this request's change is not written: last-writer-wins would be a silent lost update.
Flask turns the exception into a 500 response, Django into a 400 (its
``SessionInterrupted``, since :class:`sessync.django.SessionConflict` is an
``UpdateError``); the user's retry sees the other request's value.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .client import Client, Duration, Session
from .errors import InvalidToken, SessionNotFound, VersionConflict

__all__ = ["Snapshot", "SessionConflict", "load", "save", "diff", "MAX_MERGES"]

#: Times a save is merged onto a newer version before giving up.
MAX_MERGES = 3


class SessionConflict(VersionConflict):
    """Another request changed the same session key(s) since this request read the session;
    this request's change was not written (see the module's conflict policy)."""

    name = "VERSION_CONFLICT"


@dataclass
class Snapshot:
    """What the store knows about one session in one request."""

    #: The token to put in the cookie (the newest the node gave).
    token: str
    #: The version the raw attributes are at (for ``if_version``).
    version: int
    #: The serialized values as last read or written.
    raw: Dict[str, bytes] = field(default_factory=dict)
    #: Whether the token differs from the one the request came with.
    token_changed: bool = False


def load(client: Client, token: Optional[str]) -> Optional[Snapshot]:
    """Reads the session a cookie names; None when there is none (no cookie, expired,
    destroyed, forged): the framework then starts a fresh session."""
    if not token:
        return None
    try:
        s = client.get(token)
    except (SessionNotFound, InvalidToken):
        return None
    return Snapshot(s.token, s.version, dict(s.attributes), s.token_changed)


def diff(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> Tuple[Dict[str, bytes], List[str]]:
    puts = {k: v for k, v in new.items() if old.get(k) != v}
    deletes = [k for k in old if k not in new]
    return puts, deletes


def save(
    client: Client,
    snap: Optional[Snapshot],
    new: Mapping[str, bytes],
    idle_ttl: Optional[Duration] = None,
) -> Snapshot:
    """Writes ``new`` (serialized values by key). Creates the session when ``snap`` is None.
    Returns the snapshot after the write (its token may be new). Raises
    :class:`SessionConflict` per the conflict policy, and :class:`~sessync.SessionNotFound`
    when the session ended meanwhile (logged out elsewhere, expired)."""
    if snap is None:
        s = client.create(dict(new), idle_ttl=idle_ttl)
        return Snapshot(s.token, s.version, dict(new), True)
    puts, deletes = diff(snap.raw, new)
    if not puts and not deletes:
        return snap
    token, version, base = snap.token, snap.version, snap.raw
    changed = False
    for attempt in range(MAX_MERGES + 1):
        try:
            w: Session = client.set(token, puts, deletes, if_version=version)
        except VersionConflict:
            if attempt == MAX_MERGES:
                raise SessionConflict(f"session kept changing under {MAX_MERGES} merges") from None
            fresh = client.get(token)
            changed = changed or fresh.token_changed
            token = fresh.token
            mine = set(puts) | set(deletes)
            theirs = {k for k in mine if fresh.attributes.get(k) != base.get(k)}
            # A key the other writer set to exactly our value is no conflict.
            real = {k for k in theirs if fresh.attributes.get(k) != new.get(k)}
            if real:
                raise SessionConflict(
                    "another request changed " + ", ".join(sorted(repr(k) for k in real)) + " meanwhile"
                ) from None
            version, base = fresh.version, dict(fresh.attributes)
            puts = {k: new[k] for k in mine if k in new and base.get(k) != new[k]}
            deletes = [k for k in mine if k not in new and k in base]
            if not puts and not deletes:
                return Snapshot(token, version, base, snap.token_changed or changed)
            continue
        changed = changed or w.token_changed
        raw = dict(base)
        raw.update(puts)
        for k in deletes:
            raw.pop(k, None)
        return Snapshot(w.token, w.version, raw, snap.token_changed or changed)
    raise AssertionError("unreachable")


def serialize_all(data: Mapping[str, Any], dumps: Callable[[Any], bytes]) -> Dict[str, bytes]:
    return {k: dumps(v) for k, v in data.items()}
