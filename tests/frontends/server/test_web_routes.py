"""The browser page's routes over HTTP: files, the login gate of --api-key, --no-ui, and X-LoRA's
scalings at the end of a stream (what the page's mixture view reads)."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import httpx

from mistralrs_cli.frontends.server_ui import COOKIE
from tests.frontends.server.conftest import API_KEY

WEB = files("mistralrs_cli.frontends.web")


def test_the_page_and_its_files_are_served_with_a_strict_policy(server):
    with server.http() as http:
        for path in ("/", "/ui"):
            page = http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'id="messages"' in page.text
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        # Every file the page names is served, with its type.
        names = re.findall(r'(?:src|href)="/ui/([\w.-]+)"', page.text)
        imported = re.findall(r'from "\./([\w.-]+)"', WEB.joinpath("app.js").read_text())
        assert {"app.js", "style.css", "icon.svg"} <= set(names) and "markdown.js" in imported
        for name in names + imported:
            answer = http.get(f"/ui/{name}")
            assert answer.status_code == 200, name
            assert answer.content == WEB.joinpath(name).read_bytes()
        assert http.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert http.head("/").status_code == 200
        assert http.get("/ui/nothing.js").status_code == 404
        assert http.get("/ui/__init__.py").status_code == 404  # only the page's own kinds of file
        config = http.get("/ui/config.json").json()
        assert config == {"status": "ok", "model": "tiny", "auth": False,
                          "max_model_len": server.state.engine.config.max_model_len, "adapters": []}


def test_no_script_of_the_page_writes_markup():
    """Model text reaches the page only as text: no HTML parsing entry point appears in the scripts."""
    for script in WEB.iterdir():
        if script.name.endswith(".js"):
            source = script.read_text()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
                assert sink not in source, f"{script.name} uses {sink}"


def test_with_an_api_key_only_the_login_page_is_served_without_it(auth_server):
    with auth_server.http() as http:
        page = http.get("/")
        assert page.status_code == 200 and 'id="api-key"' in page.text and 'id="messages"' not in page.text
        for name in ("app.js", "markdown.js", "config.json"):
            assert http.get(f"/ui/{name}").status_code == 401, name
        assert http.get("/ui/login.js").status_code == 200 and http.get("/ui/style.css").status_code == 200
        wrong = http.post("/ui/session", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
        assert http.get("/").text.count('id="api-key"') == 1
        right = http.post("/ui/session", headers={"Authorization": f"Bearer {API_KEY}"})
        assert right.status_code == 204
        cookie = right.cookies[COOKIE]
        assert API_KEY not in cookie and "httponly" in right.headers["set-cookie"].lower()
        assert 'id="messages"' in http.get("/").text  # the client keeps the cookie
        assert http.get("/ui/config.json").json()["auth"] is True
        # The cookie opens the page, never the API: /v1 still wants the Bearer key.
        assert http.get("/v1/models").status_code == 401
        http.delete("/ui/session")
        assert 'id="api-key"' in http.get("/").text
    with httpx.Client(base_url=auth_server.url, cookies={COOKIE: "0" * 64}) as forged:
        assert 'id="api-key"' in forged.get("/").text


def test_no_ui_serves_no_page(fresh_server):
    live = fresh_server(ui=False)
    with live.http() as http:
        assert http.get("/").status_code == 404 and http.get("/ui/app.js").status_code == 404
        assert http.get("/health").status_code == 200


def test_the_cli_takes_no_ui(tiny_mistral_dir, spawn):
    server = spawn(["serve", "--port", "0", "--no-ui", "mistral", "-m", str(tiny_mistral_dir)])
    assert httpx.get(server.url + "/").status_code == 404
    assert httpx.get(server.url + "/v1/models").status_code == 200


def _events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data: {")]


def test_a_streamed_xlora_answer_ends_with_its_scalings(xlora_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6,
            "temperature": 0, "xlora_scalings": True}
    with xlora_server.http() as http:
        assert http.get("/ui/config.json").json()["adapters"] == ["expert_0", "expert_1"]
        whole = http.post("/v1/chat/completions", json=body).json()
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True, "logprobs": True,
                                                               "stream_options": {"include_usage": True}}) as response:
            events = _events(response)
        with http.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": ["Hi", "Yo"], "max_tokens": 3,
                                                          "temperature": 0, "xlora_scalings": True,
                                                          "stream": True}) as response:
            completion_events = _events(response)
    (extra,) = [e for e in events if "xlora_scalings" in e]
    # After every choice ended, before the usage chunk; the same scalings as the whole answer's.
    assert events.index(extra) == len(events) - 2 and events[-1]["usage"]["completion_tokens"] == 6
    assert extra["choices"] == [] and extra["usage"] is None
    assert extra["xlora_scalings"] == whole["xlora_scalings"]
    pieces = [lp["token"] for e in events for c in e["choices"] for lp in (c.get("logprobs") or {}).get("content", [])]
    assert len(pieces) == len(extra["xlora_scalings"][0]["scalings"]) == 6
    (last,) = [e for e in completion_events if "xlora_scalings" in e]
    assert [c["index"] for c in last["xlora_scalings"]] == [0, 1]
    assert all(len(c["scalings"]) == 3 for c in last["xlora_scalings"])
