"""API keys and CORS settings, below HTTP (the end-to-end behaviour is in test_hardening.py)."""

from __future__ import annotations

import hmac

import pytest

from serve_app.http import access
from serve_app.http.access import access_middleware, bearer_token, key_matches
from serve_app.settings import AppSettings, AuthSettings, IngressSettings

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

KEYS = [b"alpha-key", b"beta-key", b"gamma-key"]


def test_every_configured_key_is_compared_whichever_matches(monkeypatch):
    calls, compare = [], hmac.compare_digest

    def counting_compare(a, b):
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting_compare)
    assert key_matches("alpha-key", KEYS)
    assert calls == KEYS, "no early exit on the first match: the time does not say which key matched"
    calls.clear()
    assert not key_matches("alpha-kez", KEYS)
    assert calls == KEYS


@pytest.mark.parametrize("header, token", [
    (b"Bearer abc", "abc"), (b"bearer  abc ", "abc"), (b"Basic abc", None), (b"abc", None),
])
def test_only_bearer_tokens_are_read(header, token):
    assert bearer_token({"headers": [(b"authorization", header)]}) == token
    assert bearer_token({"headers": []}) is None


def test_keys_come_from_the_environment_over_the_config(monkeypatch):
    args = {"auth": {"api_keys": ["from-config"]}}
    assert [k.get_secret_value() for k in AppSettings.from_args(args).auth.api_keys] == ["from-config"]
    monkeypatch.setenv("SERVE_APP_API_KEYS", " k1, k2 ,")
    settings = AppSettings.from_args(args)
    assert [k.get_secret_value() for k in settings.auth.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(settings) and "k1" not in str(settings.model_dump()), "keys never show in logs or dumps"


def test_no_keys_and_no_origins_add_no_middleware():
    assert access_middleware(IngressSettings(), AuthSettings()) == []
    with_both = access_middleware(IngressSettings(cors_allow_origins=["https://a.example"]), AuthSettings(api_keys=["k"]))
    assert [m.cls.__name__ for m in with_both] == ["CORSMiddleware", "ApiKeyMiddleware"]
