"""The server driven by the official openai SDK: chat and completions, streamed and not, n, stop, seed, logprobs."""

from __future__ import annotations

import json
import time

import pytest

from tests.frontends.server.conftest import LiveServer

MSG = [{"role": "user", "content": "Hello there"}]


def _greedy_chat(client, max_tokens: int = 12, **kw) -> str:
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=max_tokens, temperature=0, **kw)
    return r.choices[0].message.content


def test_models_health_and_openapi(server: LiveServer):
    client = server.client()
    models = client.models.list()
    name = server.state.model_name
    assert [m.id for m in models.data] == [name]
    assert client.models.retrieve(name).id == name
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        doc = http.get("/openapi.json").json()
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics"} <= set(doc["paths"])
    chat_schema = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat_schema["required"] and chat_schema["properties"]["n"]["anyOf"][0]["maximum"] == min(
        128, server.state.engine.config.max_seqs)


def test_chat_plain_response_shape(server: LiveServer):
    r = server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0,
                                                 user="u1", metadata={"ignored": "yes"})
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.created > 0
    assert r.model == "tiny"
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "length"
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_chat_stream_equals_plain_and_reports_usage(server: LiveServer):
    client = server.client()
    expected = _greedy_chat(client)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, stream=True,
                                                  stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_content_part_arrays_equal_strings(server: LiveServer):
    client = server.client()
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    r = client.chat.completions.create(model="tiny", messages=parts, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == _greedy_chat(client)


def test_n2_plain_and_streamed(server: LiveServer):
    client = server.client()
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, n=2, seed=3, temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1] and r.usage.completion_tokens == 10
    texts: dict[int, str] = {0: "", 1: ""}
    for chunk in client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, n=2, seed=3,
                                                temperature=1.0, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == {c.index: c.message.content for c in r.choices}  # same seed: same choices


def test_seed_makes_sampling_reproducible(server: LiveServer):
    client = server.client()

    def sample(seed: int) -> str:
        return client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=1.0,
                                              seed=seed).choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_stop_string_ends_the_choice(server: LiveServer):
    client = server.client()
    full = _greedy_chat(client, max_tokens=16)
    stop = next(full[i:i + 2] for i in range(2, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.find(stop)]


def test_chat_logprobs(server: LiveServer):
    r = server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0,
                                                 logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)


def test_completions_plain_stream_logprobs_echo(server: LiveServer):
    client = server.client()
    r = client.completions.create(model="tiny", prompt=["Hello", "world"], max_tokens=4, temperature=0, logprobs=2)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    assert all(len(c.logprobs.tokens) == 4 and len(c.logprobs.top_logprobs[0]) <= 2 for c in r.choices)
    assert r.usage.completion_tokens == 8
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(model="tiny", prompt=["Hello", "world"], max_tokens=4, temperature=0,
                                           stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == {c.index: c.text for c in r.choices}
    echoed = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "Hello" + r.choices[0].text
    ids = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3 and ids.choices[0].finish_reason == "length"


def test_completions_default_to_16_tokens(server: LiveServer):
    r = server.client().completions.create(model="tiny", prompt="Hi", temperature=0, logit_bias={"2": -100})
    assert r.usage.completion_tokens == 16


def test_request_log_has_one_line_per_request(server: LiveServer, request_log):
    client = server.client()
    client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, temperature=0, user="log-probe")
    list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, temperature=0,
                                        user="log-probe-stream", stream=True))
    plain = _logged(request_log, "log-probe")
    assert plain["status"] == 200 and plain["path"] == "/v1/chat/completions" and plain["duration_s"] > 0
    assert plain["response"]["usage"]["completion_tokens"] == 2
    streamed = _logged(request_log, "log-probe-stream")
    assert streamed["response"]["usage"]["completion_tokens"] == 2 and not streamed["response"]["aborted"]
    assert streamed["response"]["choices"][0]["finish_reason"] == "length"


def _logged(path, user: str) -> dict:
    """The log record of the request sent with `user` (written just after the response ends)."""
    deadline = time.monotonic() + 5
    while True:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if isinstance(record["request"], dict) and record["request"].get("user") == user:
                return record
        assert time.monotonic() < deadline, f"no log record for {user}"
        time.sleep(0.02)
