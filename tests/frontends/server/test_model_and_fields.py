"""Which `model` a request may name (served names, the command-line path; else 404 model_not_found),
request fields that would change the answer's meaning but are not supported (400 naming them), and
unknown fields (400 "unknown field"), with a short allow-list of harmless ones."""

from __future__ import annotations

import openai
import pytest

from mistralrs_cli.frontends.openai_types import IGNORED
from tests.frontends.server.conftest import LiveServer

MSG = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _error(e: openai.APIStatusError) -> dict:
    body = e.body if isinstance(e.body, dict) else {}
    return body.get("error", body)


def test_unknown_model_is_404_model_not_found(server: LiveServer):
    client = server.client()
    calls = [
        lambda: client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2),
        lambda: list(client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2, stream=True)),
        lambda: client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2),
        lambda: client.models.retrieve("gpt-4o"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        err = _error(e.value)
        assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error", err
        assert "'gpt-4o'" in err["message"] and "'tiny'" in err["message"]
    server.wait_idle()


def test_missing_or_empty_model_means_the_served_one(server: LiveServer):
    with server.http() as http:
        for body in ({"messages": MSG, "max_tokens": 2}, {"model": "", "messages": MSG, "max_tokens": 2}):
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["model"] == "tiny", r.text
        r = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "tiny", r.text


def test_served_names_and_the_command_line_path(fresh_server, tiny_loaded):
    live = fresh_server(served_names=("alpha", "beta"), model_aliases=("/models/tiny",))
    client = live.client()
    assert [m.id for m in client.models.list().data] == ["alpha", "beta"]
    assert client.models.retrieve("beta").id == "beta"
    for asked, reported in (("alpha", "alpha"), ("beta", "beta"), ("/models/tiny", "alpha"),
                            (tiny_loaded.name, "alpha")):
        r = client.chat.completions.create(model=asked, messages=MSG, max_tokens=2)
        assert r.model == reported, asked
        chunks = list(client.completions.create(model=asked, prompt="Hi", max_tokens=2, stream=True))
        assert {c.model for c in chunks} == {reported}, asked
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gamma", messages=MSG, max_tokens=2)


@pytest.mark.parametrize(("field", "value"), [
    ("functions", [TOOL["function"]]),
    ("function_call", "auto"),
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
])
def test_unsupported_chat_fields_are_400_naming_them(server: LiveServer, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body={field: value})
    err = _error(e.value)
    assert err["message"] == f"'{field}' is not supported yet" and err["param"] == field, err


@pytest.mark.parametrize(("field", "value"), [("suffix", " end."), ("best_of", 3)])
def test_unsupported_completion_fields_are_400_naming_them(server: LiveServer, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body={field: value})
    assert _error(e.value)["message"] == f"'{field}' is not supported yet"


@pytest.mark.parametrize("field", ["ignore_eos", "guided_decoding_backend", "chat_template_kwargs", "tools_typo"])
def test_unknown_fields_are_400_naming_them(server: LiveServer, field):
    client = server.client()
    for call in (lambda: client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body={field: 1}),
                 lambda: client.completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body={field: 1})):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        err = _error(e.value)
        assert err["message"] == f"unknown field '{field}'" and err["param"] == field, err
    with pytest.raises(openai.BadRequestError) as e:  # inside a message too
        client.chat.completions.create(model="tiny", messages=[{**MSG[0], "cache_control": {}}], max_tokens=2)
    assert _error(e.value)["param"] == "messages.cache_control"


def test_values_that_ask_for_nothing_and_harmless_fields_are_accepted(server: LiveServer):
    client = server.client()
    harmless = {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "functions": None,
                "user": "u", "metadata": {"k": "v"}, "store": False, "service_tier": "auto",
                "parallel_tool_calls": False, "prompt_cache_key": "k", "safety_identifier": "s",
                "stream_options": None}
    assert set(IGNORED) <= set(harmless)
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body=harmless)
    assert r.usage.completion_tokens == 2
    r = client.completions.create(model="tiny", prompt="Hi", max_tokens=2, n=2, extra_body={"best_of": 2})
    assert len(r.choices) == 2
