"""The Flask adapter with Flask's test client against real nodes: two app instances, each
beside its own node, sharing the user's cookie."""

import json
from http.cookies import SimpleCookie
from typing import Dict, Optional, Tuple

import pytest

flask = pytest.importorskip("flask")

from cluster import Cluster  # noqa: E402
from sessync import Client, SessionNotFound  # noqa: E402
from sessync.flask import SessionConflict, SessyncSessionInterface  # noqa: E402


def make_app(node: str) -> flask.Flask:
    app = flask.Flask(f"app-{node}")
    app.session_interface = SessyncSessionInterface(Client(node, timeout=5))
    session = flask.session

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        session.rotate()  # against session fixation
        return "ok"

    @app.get("/whoami")
    def whoami() -> str:
        return session.get("user", "anonymous")

    @app.get("/incr/<key>")
    def incr(key: str) -> str:
        session[key] = session.get(key, 0) + 1
        return str(session[key])

    @app.get("/cart/<item>")
    def cart(item: str) -> str:
        session.setdefault("cart", []).append(item)  # a nested change, no `modified`
        return ",".join(session["cart"])

    @app.get("/race")
    def race() -> str:
        # Another request changes "a" between this request's read and its save.
        token = session.snapshot.token  # type: ignore[attr-defined]
        flask.current_app.session_interface.client.set(token, {"a": b'"theirs"'})  # type: ignore[attr-defined]
        session["a"] = "mine"
        return "written?"

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "bye"

    return app


class Browser:
    """One user's cookie, carried to whichever app instance serves the next request."""

    def __init__(self) -> None:
        self.token: Optional[str] = None

    def get(self, app: flask.Flask, path: str) -> Tuple[str, Optional[str]]:
        headers = {"Cookie": f"session={self.token}"} if self.token else {}
        r = app.test_client(use_cookies=False).get(path, headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        new = None
        for h in r.headers.getlist("Set-Cookie"):
            c: SimpleCookie = SimpleCookie(h)
            if "session" in c:
                new = c["session"].value
                self.token = new or None
        return r.get_data(as_text=True), new


@pytest.fixture(scope="module")
def apps(cluster: Cluster) -> Tuple[flask.Flask, flask.Flask]:
    return make_app(cluster.clients[0]), make_app(cluster.clients[1])


def test_session_follows_the_user_across_nodes(apps: Tuple[flask.Flask, flask.Flask], cluster: Cluster) -> None:
    a, b = apps
    user = Browser()
    body, cookie = user.get(a, "/login/alice")
    assert cookie, "login sets the cookie"
    t1 = user.token

    # The next request lands on the other instance: its node copies the session over and
    # the response carries the new token.
    body, cookie = user.get(b, "/whoami")
    assert body == "alice"
    assert cookie and cookie != t1

    assert user.get(a, "/incr/n")[0] == "1"
    assert user.get(b, "/incr/n")[0] == "2"
    assert user.get(a, "/whoami")[0] == "alice"

    # What the node holds: one attribute per key, JSON.
    assert user.token
    s = Client(cluster.clients[2]).get(user.token)
    assert json.loads(s.attributes["user"]) == "alice" and json.loads(s.attributes["n"]) == 2


def test_a_read_that_moves_the_session_updates_the_cookie(apps: Tuple[flask.Flask, flask.Flask]) -> None:
    a, b = apps
    user = Browser()
    user.get(a, "/incr/x")
    before = user.token
    _, cookie = user.get(b, "/whoami")  # nothing written, but the token changed
    assert cookie and cookie != before
    _, cookie = user.get(b, "/whoami")  # same node again: no new cookie needed
    assert cookie is None


def test_login_rotates_and_logout_destroys(apps: Tuple[flask.Flask, flask.Flask], cluster: Cluster) -> None:
    a, b = apps
    raw = Client(cluster.clients[0])
    user = Browser()
    user.get(a, "/incr/visits")
    anonymous = user.token
    assert anonymous
    user.get(b, "/login/bob")
    assert user.token != anonymous
    with pytest.raises(SessionNotFound):
        raw.get(anonymous)  # the pre-login token is dead (fixation)
    assert user.get(a, "/whoami")[0] == "bob"
    assert user.get(a, "/incr/visits")[0] == "2", "data survives the rotation"
    logged_in = user.token
    assert logged_in
    _, cookie = user.get(b, "/logout")
    assert cookie == "" and user.token is None
    with pytest.raises(SessionNotFound):
        raw.get(logged_in)
    assert user.get(a, "/whoami")[0] == "anonymous"


def test_nested_changes_are_saved(apps: Tuple[flask.Flask, flask.Flask]) -> None:
    a, b = apps
    user = Browser()
    user.get(a, "/cart/book")
    assert user.get(b, "/cart/pen")[0] == "book,pen"
    assert user.get(a, "/cart/ink")[0] == "book,pen,ink"


def test_concurrent_requests_merge_or_conflict(cluster: Cluster) -> None:
    app = make_app(cluster.clients[0])
    iface: SessyncSessionInterface = app.session_interface  # type: ignore[assignment]
    token = iface.client.create({"a": b"0", "b": b"0"}).token

    def open_(tok: str):  # type: ignore[no-untyped-def]
        with app.test_request_context(headers={"Cookie": f"session={tok}"}):
            return iface.open_session(app, flask.request)

    def save(sess) -> Dict[str, str]:  # type: ignore[no-untyped-def]
        resp = app.response_class()
        iface.save_session(app, sess, resp)
        return dict(resp.headers)

    # Two requests read version 1; they change different keys: both changes are kept.
    r1, r2 = open_(token), open_(token)
    r1["a"] = 1
    r2["b"] = 2
    save(r1)
    save(r2)
    s = iface.client.get(token)
    assert (json.loads(s.attributes["a"]), json.loads(s.attributes["b"])) == (1, 2)

    # Two requests change the same key to different values: the later save fails loudly
    # instead of silently overwriting.
    r1, r2 = open_(token), open_(token)
    r1["a"] = "first"
    r2["a"] = "second"
    save(r1)
    with pytest.raises(SessionConflict) as e:
        save(r2)
    assert e.value.code == 302
    assert json.loads(iface.client.get(token).attributes["a"]) == "first"

    # Through Flask the conflict is a 500 and nothing of the request is written.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    r = app.test_client(use_cookies=False).get("/race", headers={"Cookie": f"session={token}"})
    assert r.status_code == 500
    assert json.loads(iface.client.get(token).attributes["a"]) == "theirs"


def test_unknown_or_forged_cookie_starts_fresh(apps: Tuple[flask.Flask, flask.Flask]) -> None:
    a, _ = apps
    user = Browser()
    user.token = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B"  # another cluster's
    assert user.get(a, "/whoami")[0] == "anonymous"
    body, cookie = user.get(a, "/incr/n")
    assert body == "1" and cookie and cookie != "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B"


def test_a_node_that_is_down_gives_a_500_not_an_assertion(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on this port: the node is down.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % s.getsockname()[1]
    app = flask.Flask("app-down")
    app.session_interface = SessyncSessionInterface(Client(addr, timeout=1))

    @app.get("/whoami")
    def whoami() -> str:
        return flask.session.get("user", "anonymous")

    client = app.test_client()
    client.set_cookie("session", "some-token")
    with caplog.at_level("ERROR"):
        r = client.get("/whoami")
    assert r.status_code == 500
    assert "AssertionError" not in caplog.text, caplog.text
    assert "finalizing failed" not in caplog.text, caplog.text
