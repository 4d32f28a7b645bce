"""The published OpenAPI schema and the server agree: what the schema allows is served, what it refuses gets 400."""

from __future__ import annotations

import jsonschema_rs
import pytest

from mistralrs_cli.engine import EngineConfig
from mistralrs_cli.frontends.openai_types import with_server_bounds

MSG = [{"role": "user", "content": "Hi"}]
MAX_SEQS = 4


@pytest.fixture(scope="module")
def live(tiny_loaded):
    from tests.frontends.server.conftest import start_server

    server = start_server(tiny_loaded, engine_config=EngineConfig(max_seqs=MAX_SEQS))
    yield server
    server.stop()


def _validator(doc: dict, name: str):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def _agree(live, doc: dict, path: str, name: str, body: dict) -> bool:
    """Whether the schema accepts `body`; asserts the server answers 200 exactly when it does."""
    valid = _validator(doc, name).is_valid(body)
    with live.http() as http:
        r = http.post(path, json=body)
    assert r.status_code == (200 if valid else 400), (body, valid, r.text)
    return valid


@pytest.mark.parametrize(("extra", "valid"), [
    ({"top_logprobs": 2}, False),
    ({"top_logprobs": 2, "logprobs": False}, False),
    ({"top_logprobs": 2, "logprobs": True}, True),
    ({"top_logprobs": 0}, True),
    ({"logprobs": True}, True),
])
def test_top_logprobs_needs_logprobs_in_schema_and_server(live, extra, valid):
    with live.http() as http:
        doc = http.get("/openapi.json").json()
    body = {"messages": MSG, "max_tokens": 1, **extra}
    assert _agree(live, doc, "/v1/chat/completions", "ChatCompletionRequest", body) is valid


@pytest.mark.parametrize(("path", "name", "body"), [
    ("/v1/chat/completions", "ChatCompletionRequest", {"messages": MSG}),
    ("/v1/completions", "CompletionRequest", {"prompt": "Hi"}),
])
def test_published_n_bound_is_max_seqs(live, path, name, body):
    with live.http() as http:
        doc = http.get("/openapi.json").json()  # the served document carries the bound itself
    n_schema = doc["components"]["schemas"][name]["properties"]["n"]["anyOf"][0]
    assert n_schema["maximum"] == MAX_SEQS
    assert _agree(live, doc, path, name, {**body, "max_tokens": 1, "n": MAX_SEQS})
    assert not _agree(live, doc, path, name, {**body, "max_tokens": 1, "n": MAX_SEQS + 1})


def test_bound_never_exceeds_what_the_engine_accepts():
    doc = {"components": {"schemas": {"CompletionRequest": {"properties": {"n": {"type": "integer", "maximum": 128}}}}}}
    assert with_server_bounds(doc, 1000)["components"]["schemas"]["CompletionRequest"]["properties"]["n"]["maximum"] == 128
