"""Error shapes and status codes (400, 401, 404, 413, 429), and Bearer auth on /v1 only."""

from __future__ import annotations

import json

import openai
import pytest

from tests.frontends.server.conftest import API_KEY, LiveServer

MSG = [{"role": "user", "content": "Hi"}]


def _assert_error_shape(body: dict, param: str | None = "__any__") -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "__any__":
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": "hot"}, "temperature"),  # known field, wrong type
    ({"n": 0}, "n"),
    ({"max_tokens": 100_000}, "max_tokens"),  # longer than the context: the engine's check
    ({"stop": 5}, "stop"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
])
def test_bad_values_are_400_with_param(server: LiveServer, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="tiny", messages=MSG, extra_body=extra)
    assert e.value.status_code == 400
    err = _assert_error_shape(e.value.body if "error" in e.value.body else {"error": e.value.body}, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "fragment"), [
    ('{"messages": [{"role": "user", "content": "x"}', "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"model": "tiny"}', "messages"),
    ('{"messages": []}', "messages"),
    ('{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "text"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "finite"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
])
def test_malformed_bodies_are_400(server: LiveServer, body, fragment):
    with server.http() as http:
        r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in _assert_error_shape(r.json())["message"]


def test_completions_validation(server: LiveServer):
    client = server.client()
    for prompt in ([], [[]], [-1]):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny", prompt=prompt)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[1, 10_000])  # token id beyond the vocabulary
    assert "vocabulary" in e.value.message


def test_not_found_and_method_not_allowed(server: LiveServer):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().models.retrieve("no-such-model")
    assert _assert_error_shape(e.value.body if "error" in e.value.body else {"error": e.value.body})["code"] == "model_not_found"
    with server.http() as http:
        r = http.get("/v1/nothing-here")
        assert r.status_code == 404 and _assert_error_shape(r.json())["code"] == "not_found"
        r = http.get("/v1/chat/completions")
        assert r.status_code == 405 and _assert_error_shape(r.json())["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(server: LiveServer):
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    with server.http() as http:
        r = http.post("/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413 and _assert_error_shape(r.json())["code"] == "request_too_large"
        # the server is still fine afterwards
        assert http.get("/health").status_code == 200


def test_queue_full_is_429(server: LiveServer):
    state = server.state
    state.in_flight += state.config.max_queue  # as if the queue were full of other requests
    try:
        with pytest.raises(openai.RateLimitError) as e:
            server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1"
    finally:
        state.in_flight -= state.config.max_queue
    server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)


def test_auth_on_v1_only(auth_server: LiveServer):
    for key in ("none", API_KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as e:
            auth_server.client(api_key=key).chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with auth_server.http() as http:
        r = http.get("/v1/models")  # no header at all
        assert r.status_code == 401 and _assert_error_shape(r.json())["type"] == "invalid_request_error"
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
    ok = auth_server.client(api_key=API_KEY).chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                                                    temperature=0)
    assert ok.usage.completion_tokens == 2


def test_no_auth_when_no_key(server: LiveServer):
    # The shared server has no key: any bearer token (or none) works.
    assert server.client(api_key="whatever").models.list().data
    with server.http() as http:
        assert http.get("/v1/models").status_code == 200
