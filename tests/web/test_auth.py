"""Bearer tokens: where they come from, how they are checked, and what a refused write answers."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify
from flask.testing import FlaskClient

from benchmarks.harness.records import sample
from benchmarks.harness.tokens import ADMIN_TOKEN, INGEST_TOKEN, create_schema
from overhead_service import create_app
from overhead_service.web import auth
from overhead_service.web.auth import TokenRegistry, TokenSource, parse_tokens, require_role

AppFactory = Callable[..., Flask]


def _tokens(*entries: tuple[str, str, str]) -> str:
    return json.dumps({"tokens": [{"name": n, "role": r, "token": t} for n, r, t in entries]})


def _with_admin_route(app: Flask) -> FlaskClient:
    """The app plus a route that needs role admin and echoes the actor."""

    @app.post("/test-admin")
    def admin_only() -> Response:
        return jsonify(actor=require_role("admin"))

    return app.test_client()


def _upload(client: FlaskClient, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/measurements", json={"records": [sample(1)]}, headers=headers or {})


def test_ingest_and_admin_tokens_may_upload(
    client: FlaskClient, ingest_auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    assert _upload(client, ingest_auth).get_json()["stored"] == 1
    assert _upload(client, admin_auth).get_json()["duplicates"] == 1
    items = client.get("/v1/measurements").get_json()["items"]
    assert [item["ingestedBy"] for item in items] == ["bench-ci"]


def test_only_admin_tokens_pass_require_role_admin(app: Flask) -> None:
    client = _with_admin_route(app)
    assert client.post("/test-admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json() == {
        "actor": "alice"
    }
    response = client.post("/test-admin", headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"] == "urn:overhead-service:problem:forbidden"
    assert body["detail"] == "token 'bench-ci' has role ingest; this operation needs role admin"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("header", "error", "detail"),
    [
        (None, None, "this operation needs a bearer token with role ingest"),
        ("", None, "this operation needs a bearer token with role ingest"),
        (f"Basic {INGEST_TOKEN}", "invalid_request", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer", "invalid_request", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer   ", "invalid_request", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer not-a-configured-token", "invalid_token", "the bearer token is not valid"),
        (f"Bearer {INGEST_TOKEN}x", "invalid_token", "the bearer token is not valid"),
        (f"Bearer {INGEST_TOKEN[:-1]}", "invalid_token", "the bearer token is not valid"),
    ],
)
def test_missing_or_bad_tokens_get_401(
    client: FlaskClient, header: str | None, error: str | None, detail: str
) -> None:
    response = _upload(client, {} if header is None else {"Authorization": header})
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    challenge = 'Bearer realm="overhead-service"' + (f', error="{error}"' if error else "")
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.get_json() == {
        "type": "urn:overhead-service:problem:unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
    }
    assert client.get("/v1/measurements").get_json()["items"] == []


def test_the_scheme_is_case_insensitive(client: FlaskClient) -> None:
    assert _upload(client, {"Authorization": f"bearer {INGEST_TOKEN}"}).status_code == 200


def test_without_configured_tokens_writes_are_refused(app_factory: AppFactory) -> None:
    client = app_factory(TOKENS=None).test_client()
    for headers in ({}, {"Authorization": f"Bearer {INGEST_TOKEN}"}):
        response = _upload(client, headers)
        assert response.status_code == 403
        body = response.get_json()
        assert body["type"] == "urn:overhead-service:problem:writes-disabled"
        assert "no API tokens are configured" in body["detail"]
        assert "OVERHEAD_TOKENS_FILE" in body["detail"]
    assert client.get("/v1/measurements").status_code == 200  # reads stay open
    assert client.get("/v1/measurements").get_json()["items"] == []


def test_the_body_is_not_read_before_the_token_is_checked(client: FlaskClient) -> None:
    response = client.post("/v1/measurements", data="{not json", content_type="application/json")
    assert response.status_code == 401


def test_tokens_from_a_file_and_inline_together(app_factory: AppFactory, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(_tokens(("from-file", "ingest", "f" * 16)))
    client = app_factory(TOKENS_FILE=str(path), TOKENS=_tokens(("inline", "admin", "i" * 16))).test_client()
    assert _upload(client, {"Authorization": "Bearer " + "f" * 16}).status_code == 200
    assert _upload(client, {"Authorization": "Bearer " + "i" * 16}).status_code == 200
    assert _upload(client, {"Authorization": f"Bearer {INGEST_TOKEN}"}).status_code == 401
    assert [item["ingestedBy"] for item in client.get("/v1/measurements").get_json()["items"]] == [
        "from-file"
    ]


def test_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(_tokens(("env-file", "ingest", "e" * 20)))
    monkeypatch.setenv("OVERHEAD_TOKENS_FILE", str(path))
    monkeypatch.setenv("OVERHEAD_TOKENS", _tokens(("env-inline", "ingest", "v" * 20)))
    url = f"sqlite:///{tmp_path / 'env.db'}"
    create_schema(url)
    app = create_app({"TESTING": True, "DATABASE_URL": url})  # no TOKENS key: the environment counts
    client = app.test_client()
    assert _upload(client, {"Authorization": "Bearer " + "e" * 20}).status_code == 200
    assert _upload(client, {"Authorization": "Bearer " + "v" * 20}).status_code == 200


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object with one member, a 'tokens' array"),
        ({"tokens": {}}, "must be a JSON object with one member, a 'tokens' array"),
        ({"tokens": [], "extra": 1}, "must be a JSON object with one member, a 'tokens' array"),
        ({"tokens": ["abc"]}, "tokens[0] must be an object with exactly name, role and token"),
        ({"tokens": [{"name": "a", "role": "ingest"}]}, "tokens[0] must be an object with exactly"),
        ({"tokens": [{"name": "", "role": "ingest", "token": "x" * 16}]}, "tokens[0].name must be"),
        (
            {"tokens": [{"name": "a", "role": "root", "token": "x" * 16}]},
            "tokens[0].role must be one of: ingest, admin",
        ),
        ({"tokens": [{"name": "a", "role": "ingest", "token": "x" * 15}]}, "at least 16 characters"),
        (
            {"tokens": [{"name": "a", "role": "ingest", "token": " " + "x" * 16}]},
            "without surrounding whitespace",
        ),
        (
            {"tokens": [{"name": "a", "role": "ingest", "token": 1234567890123456789}]},
            "at least 16 characters",
        ),
    ],
)
def test_malformed_token_documents(document: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_tokens(document, "TOKENS")
    assert str(caught.value).startswith("TOKENS: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TOKENS": "{not json"}, "TOKENS: not valid JSON"),
        ({"TOKENS_FILE": "/nonexistent/tokens.json"}, "TOKENS_FILE /nonexistent/tokens.json: cannot read it"),
        (
            {"TOKENS": _tokens(("a", "ingest", "s" * 16), ("b", "admin", "s" * 16))},
            "the same token value is configured twice",
        ),
    ],
)
def test_a_bad_token_setting_stops_the_app(
    app_factory: AppFactory, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        app_factory(**settings)


def test_one_name_may_have_several_tokens_for_rotation() -> None:
    registry = TokenRegistry(
        parse_tokens(json.loads(_tokens(("ci", "ingest", "o" * 16), ("ci", "ingest", "n" * 16))), "T")
    )
    old, new = registry.identify("o" * 16), registry.identify("n" * 16)
    assert old is not None and new is not None
    assert old.name == new.name == "ci"


def test_every_token_is_compared_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = TokenRegistry(
        parse_tokens(
            json.loads(
                _tokens(("a", "ingest", "a" * 16), ("b", "ingest", "b" * 16), ("c", "admin", "c" * 16))
            ),
            "T",
        )
    )
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module auth.py calls
    for secret, name in (("a" * 16, "a"), ("c" * 16, "c"), ("z" * 16, None)):
        calls.clear()
        token = registry.identify(secret)
        assert (token.name if token else None) == name
        assert len(calls) == 3  # no early exit, found or not
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths, nothing leaks


# --- rotation: TOKENS_FILE is read again when it changes ---------------------------------------------


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rotating_client(app: Flask, path: Path, clock: _Clock, inline: str | None = None) -> FlaskClient:
    """The app with its tokens read from ``path`` (and ``inline``) on ``clock``'s time."""
    inline_tokens = parse_tokens(json.loads(inline), "TOKENS") if inline else []
    app.extensions[auth.EXTENSION] = TokenSource(str(path), inline_tokens, clock=clock)
    return app.test_client()


def _status(client: FlaskClient, secret: str) -> int:
    return int(_upload(client, {"Authorization": f"Bearer {secret}"}).status_code)


def test_a_rewritten_tokens_file_is_read_again_without_a_restart(app: Flask, tmp_path: Path) -> None:
    path, clock = tmp_path / "tokens.json", _Clock()
    old, new = "o" * 16, "n" * 20
    path.write_text(_tokens(("ci", "ingest", old)))
    client = _rotating_client(app, path, clock)
    assert _status(client, old) == 200
    path.write_text(_tokens(("ci", "ingest", new)))  # the old token is removed
    clock.now += auth.RELOAD_INTERVAL / 2
    assert _status(client, old) == 200  # not looked at yet: at most once per interval
    clock.now += auth.RELOAD_INTERVAL
    assert _status(client, old) == 401
    assert _status(client, new) == 200


def test_a_secret_volume_update_is_seen_through_the_symlinks(app: Flask, tmp_path: Path) -> None:
    """The kubelet writes a new timestamped directory and swaps the ``..data`` symlink; the file
    name the pod reads is a symlink through it. The new file has the same size here."""
    volume, clock = tmp_path / "volume", _Clock()
    first, second = "a" * 16, "b" * 16
    (volume / "..2026_11_26_v1").mkdir(parents=True)
    (volume / "..2026_11_26_v1" / "tokens.json").write_text(_tokens(("ci", "ingest", first)))
    (volume / "..data").symlink_to("..2026_11_26_v1")
    (volume / "tokens.json").symlink_to("..data/tokens.json")
    client = _rotating_client(app, volume / "tokens.json", clock)
    assert _status(client, first) == 200

    (volume / "..2026_11_26_v2").mkdir()
    (volume / "..2026_11_26_v2" / "tokens.json").write_text(_tokens(("ci", "ingest", second)))
    (volume / "..data_tmp").symlink_to("..2026_11_26_v2")
    (volume / "..data_tmp").replace(volume / "..data")  # atomic rename, as the kubelet does
    (volume / "..2026_11_26_v1" / "tokens.json").unlink()  # the old version goes
    (volume / "..2026_11_26_v1").rmdir()
    clock.now += auth.RELOAD_INTERVAL
    assert _status(client, first) == 401
    assert _status(client, second) == 200


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"tokens": [{"name": "x", "role": "root", "token": "r" * 16}]}), "role must be one of"),
        (None, "cannot read it"),  # the file is gone
    ],
)
def test_a_broken_tokens_file_keeps_the_tokens_in_force(
    app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture, breakage: str | None, message: str
) -> None:
    path, clock = tmp_path / "tokens.json", _Clock()
    kept, fixed = "k" * 16, "f" * 16
    path.write_text(_tokens(("ci", "ingest", kept)))
    client = _rotating_client(app, path, clock)
    if breakage is None:
        path.unlink()
    else:
        path.write_text(breakage)
    with caplog.at_level(logging.ERROR, logger="overhead_service.web.auth"):
        for _ in range(3):
            clock.now += auth.RELOAD_INTERVAL
            assert _status(client, kept) == 200
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once, not at every look
    assert message in errors[0].getMessage()
    assert "keeping the 1 tokens in force" in errors[0].getMessage()
    assert kept not in caplog.text  # never the secrets themselves

    path.write_text(_tokens(("ci", "ingest", fixed)))  # the fix is read at the next look
    clock.now += auth.RELOAD_INTERVAL
    assert _status(client, fixed) == 200
    assert _status(client, kept) == 401


def test_inline_tokens_survive_a_reload_and_a_clash_with_them_is_refused(
    app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "tokens.json", _Clock()
    inline, in_file = "i" * 16, "f" * 16
    path.write_text(_tokens(("file", "ingest", in_file)))
    client = _rotating_client(app, path, clock, inline=_tokens(("inline", "admin", inline)))
    path.write_text(_tokens(("file", "ingest", inline)))  # the inline token's value again
    clock.now += auth.RELOAD_INTERVAL
    with caplog.at_level(logging.ERROR, logger="overhead_service.web.auth"):
        assert _status(client, in_file) == 200  # the clash is refused: the old set stays
    assert "the same token value is configured twice" in caplog.text
    path.write_text(_tokens(("file", "ingest", "g" * 16)))
    clock.now += auth.RELOAD_INTERVAL
    assert _status(client, "g" * 16) == 200
    assert _status(client, inline) == 200
    assert _status(client, in_file) == 401


def test_the_file_is_looked_at_once_per_interval(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, clock = tmp_path / "tokens.json", _Clock()
    path.write_text(_tokens(("ci", "ingest", "s" * 16)))
    client = _rotating_client(app, path, clock)
    looks: list[str] = []
    real = auth._signature

    def counting(name: str) -> tuple[int, int, int, int]:
        looks.append(name)
        return real(name)

    monkeypatch.setattr(auth, "_signature", counting)
    for _ in range(20):
        assert _status(client, "s" * 16) == 200
    assert looks == []
    clock.now += auth.RELOAD_INTERVAL
    for _ in range(20):
        assert _status(client, "s" * 16) == 200
    assert looks == [str(path)]


def test_create_app_reads_tokens_file_changes(app_factory: AppFactory, tmp_path: Path) -> None:
    """The wiring: create_app's token source is a reloading one on TOKENS_FILE."""
    path = tmp_path / "tokens.json"
    path.write_text(_tokens(("ci", "ingest", "c" * 16)))
    app = app_factory(TOKENS=None, TOKENS_FILE=str(path))
    source = app.extensions[auth.EXTENSION]
    assert isinstance(source, TokenSource) and source.path == str(path)
    assert len(source.current()) == 1
