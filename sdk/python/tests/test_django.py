"""The Django session engine with Django's test client against real nodes. "Two app
instances" are the same views served with ``SESSYNC`` pointing at different nodes, the
user's cookie carried from one to the other."""

import json
from contextlib import contextmanager
from typing import Iterator, Optional

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="sessync.django",
        SESSYNC={"ADDRESS": "127.0.0.1:1"},
        USE_TZ=True,
    )
    django.setup()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from cluster import Cluster  # noqa: E402
from sessync import Client, SessionNotFound  # noqa: E402
from sessync.django import SessionConflict, SessionStore  # noqa: E402


def login(request: HttpRequest, user: str) -> HttpResponse:
    request.session.cycle_key()  # what django.contrib.auth.login does: ROTATE
    request.session["user"] = user
    return HttpResponse("ok")


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.session.get("user", "anonymous"))


def incr(request: HttpRequest, key: str) -> HttpResponse:
    request.session[key] = request.session.get(key, 0) + 1
    return HttpResponse(str(request.session[key]))


def race(request: HttpRequest) -> HttpResponse:
    # Another request changes "a" between this request's read and its save.
    request.session.get("a")
    Client(settings.SESSYNC["ADDRESS"]).set(request.session.session_key, {"a": b'"theirs"'})
    request.session["a"] = "mine"
    return HttpResponse("written?")


def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("bye")


urlpatterns = [
    path("login/<str:user>", login),
    path("whoami", whoami),
    path("incr/<str:key>", incr),
    path("race", race),
    path("logout", logout),
]


@contextmanager
def instance(node: str) -> Iterator[None]:
    """Serve the next requests as the app instance beside ``node``."""
    with override_settings(SESSYNC={"ADDRESS": node, "TIMEOUT": 5}):
        yield


class Browser:
    def __init__(self) -> None:
        self.http = DjangoClient()
        self.set_cookies: list = []

    @property
    def token(self) -> Optional[str]:
        c = self.http.cookies.get(settings.SESSION_COOKIE_NAME)
        return c.value if c is not None and c.value else None

    def get(self, node: str, url: str, status: int = 200) -> str:
        with instance(node):
            r = self.http.get(url)
        assert r.status_code == status, r.content
        self.set_cookies.append(settings.SESSION_COOKIE_NAME in r.cookies)
        return r.content.decode()


def test_session_follows_the_user_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.clients
    user = Browser()
    assert user.get(a, "/login/alice") == "ok"
    t1 = user.token
    assert t1
    assert user.get(b, "/whoami") == "alice"
    assert user.set_cookies[-1], "the moved session's new token is sent"
    assert user.token and user.token != t1
    assert user.get(c, "/incr/n") == "1"
    assert user.get(a, "/incr/n") == "2"
    assert user.get(b, "/whoami") == "alice"
    s = Client(a).get(user.token)
    assert json.loads(s.attributes["user"]) == "alice" and json.loads(s.attributes["n"]) == 2


def test_login_rotates_logout_destroys(cluster: Cluster) -> None:
    a, b, _ = cluster.clients
    raw = Client(a)
    user = Browser()
    user.get(a, "/incr/visits")
    anonymous = user.token
    assert anonymous
    user.get(b, "/login/carol")
    assert user.token and user.token != anonymous
    with pytest.raises(SessionNotFound):
        raw.get(anonymous)
    assert user.get(a, "/incr/visits") == "2"
    logged_in = user.token
    assert logged_in
    user.get(b, "/logout")
    assert user.token is None
    with pytest.raises(SessionNotFound):
        raw.get(logged_in)
    assert user.get(a, "/whoami") == "anonymous"


def test_conflicts_merge_or_interrupt(cluster: Cluster) -> None:
    a = cluster.clients[0]
    with instance(a):
        first = SessionStore()
        first["a"] = 0
        first["b"] = 0
        first.save()
        key = first.session_key
        assert key

        # Different keys changed by two requests: both kept.
        r1, r2 = SessionStore(key), SessionStore(key)
        r1["a"] = 1
        r2["b"] = 2
        r1.save()
        r2.save()
        assert (SessionStore(key)["a"], SessionStore(key)["b"]) == (1, 2)

        # The same key changed by both: the second save raises (an UpdateError).
        r1, r2 = SessionStore(key), SessionStore(key)
        r1["a"] = "first"
        r2["a"] = "second"
        r1.save()
        with pytest.raises(SessionConflict):
            r2.save()
        assert SessionStore(key)["a"] == "first"

    # Through the middleware: SessionInterrupted, a 400, and nothing written.
    user = Browser()
    user.http.cookies[settings.SESSION_COOKIE_NAME] = key
    user.get(a, "/race", status=400)
    with instance(a):
        assert SessionStore(key)["a"] == "theirs"


def test_forged_cookie_starts_fresh(cluster: Cluster) -> None:
    user = Browser()
    user.http.cookies[settings.SESSION_COOKIE_NAME] = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B"
    assert user.get(cluster.clients[0], "/whoami") == "anonymous"
    assert user.get(cluster.clients[0], "/incr/n") == "1"
    assert user.token and user.token.startswith("Ag") and len(user.token) > 40


def test_exists_and_delete(cluster: Cluster) -> None:
    with instance(cluster.clients[1]):
        s = SessionStore()
        s["x"] = [1, 2]
        s.save()
        key = s.session_key
        assert s.exists(key) and not s.exists("garbage-token") and not s.exists(None)
        s.delete()
        assert not s.exists(key)
        SessionStore.clear_expired()
