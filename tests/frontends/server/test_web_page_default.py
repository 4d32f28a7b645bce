"""The chat page end to end: `mistralrs serve` on the real default model, driven in headless Chromium.

Streamed text appears and finishes, Stop frees the server's sequence, a reload keeps the
conversation, and markup in a model answer is shown as text. The screenshot it takes is the one
in docs/server.md (set MISTRALRS_SCREENSHOTS=DIR to keep it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.frontends.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

ANSWER = "article[data-role=assistant]"
XSS = "<img src=x onerror=alert(1)>"

# Records every state the last answer passes through (its state and how much text it shows).
WATCH = """() => {
    window.seen = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll("article[data-role=assistant]");
        const last = answers[answers.length - 1];
        if (last) window.seen.push([last.dataset.state, last.querySelector(".content").textContent.length]);
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true,
                                                      attributes: true });
}"""


@pytest.fixture(scope="module")
def default_server(default_gguf):
    """`mistralrs serve` on the default model (eager decode: no background compile racing the test)."""
    server = ServerProcess(["serve", "--port", "0"], env={"MISTRALRS_COMPILE": "0"})
    server.wait_ready()
    yield server
    server.stop(signal.SIGTERM)


def running(server: ServerProcess) -> int:
    """The server's own count of sequences in its running batch (/metrics)."""
    text = httpx.get(server.url + "/metrics").text
    return int(re.search(r"^mistralrs_running_sequences (\d+)", text, re.M).group(1))


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.keyboard.press("Enter")


def test_chat_streams_stops_keeps_the_conversation_and_shows_markup_as_text(default_server, page, tmp_path):
    page.goto(default_server.url + "/")
    page.wait_for_selector("#send:not([disabled])")
    page.click("#settings summary")
    page.fill("#max-tokens", "300")  # a sampled answer that rambles still ends in seconds
    page.keyboard.press("Escape")
    page.evaluate(WATCH)

    # 1. A question: text appears while the answer streams, then it finishes with its figures.
    send(page, "List three large French cities as a Markdown bullet list, with one **bold** fact each.")
    page.wait_for_selector(f"{ANSWER}[data-state=done]", timeout=60_000)
    final = len(page.text_content(f"{ANSWER} .content"))
    streaming = [n for state, n in page.evaluate("window.seen") if state == "streaming"]
    assert final > 0 and any(0 < n < final for n in streaming), (final, streaming)
    stats = page.inner_text(f"{ANSWER} .stats")
    assert re.fullmatch(r"\d+ tokens · [\d.]+ tok/s · TTFT [\d.]+ s", stats), stats

    # 2. A long answer, stopped: the server's running batch empties.
    send(page, "Write a very long story about a dragon who learns to cook, in many chapters.")
    page.wait_for_function("() => { const a = document.querySelectorAll('article[data-role=assistant]')[1];"
                           " return a && a.dataset.state === 'streaming' && a.textContent.length > 80; }",
                           timeout=60_000)
    assert running(default_server) == 1
    page.click("#stop")
    page.wait_for_selector(f"{ANSWER}[data-state=stopped]")
    deadline = time.monotonic() + 10
    while running(default_server) != 0:
        assert time.monotonic() < deadline, "the stopped sequence is still running"
        time.sleep(0.05)
    shot = tmp_path / "web-chat.png"
    page.screenshot(path=shot)
    if os.environ.get("MISTRALRS_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["MISTRALRS_SCREENSHOTS"]) / shot.name)

    # 3. A reload finds the conversation as it was, the stopped answer marked.
    before = page.locator("article").all_text_contents()
    page.reload()
    page.wait_for_selector(f"{ANSWER}[data-state=stopped]")
    assert page.locator("article").all_text_contents() == before
    assert page.locator("#conversations li").count() == 1

    # 4. Markup in an answer is text: the model is made to answer with an <img> tag (the
    # request the page sends gets a regex constraint on its way to the real server).
    def constrain(route):
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "guided_regex": re.escape(XSS)}))

    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.route("**/v1/chat/completions", constrain)
    page.click("#new-chat")
    send(page, "Show me an HTML image tag.")
    page.wait_for_selector(f"{ANSWER}[data-state=done]", timeout=60_000)
    assert page.text_content(f"{ANSWER} .content") == XSS
    assert page.locator("#messages img").count() == 0 and dialogs == []
    assert page.locator("#conversations li").count() == 2
