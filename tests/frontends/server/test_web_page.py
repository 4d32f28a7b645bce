"""The chat page in a real headless Chromium over the tiny model: the Markdown renderer, the
keyboard, settings, regenerate, the --api-key login and the X-LoRA mixture view."""

from __future__ import annotations

import json

import pytest

from tests.frontends.server.conftest import API_KEY, slow_down

DONE = "article[data-role=assistant][data-state=done]"
LINK = 'rel="noopener noreferrer nofollow" target="_blank"'

# (Markdown, the HTML the renderer builds): model text becomes text, never markup.
MARKDOWN = [
    ("Hello **world** and *you*, ~~no~~ `code`",
     "<p>Hello <strong>world</strong> and <em>you</em>, <del>no</del> <code>code</code></p>"),
    ("<img src=x onerror=alert(1)> and <script>alert(2)</script>",
     "<p>&lt;img src=x onerror=alert(1)&gt; and &lt;script&gt;alert(2)&lt;/script&gt;</p>"),
    ("```python\nprint('<b>')\n```\nafter",
     "<pre data-language=\"python\"><code data-language=\"python\">print('&lt;b&gt;')</code></pre><p>after</p>"),
    ("[x](javascript:alert(1)) [y](data:text/html,hi) [z](/relative)",
     "<p>[x](javascript:alert(1)) [y](data:text/html,hi) [z](/relative)</p>"),
    ("[site](https://example.com) <https://a.org/x> see https://b.org/y.",
     f'<p><a href="https://example.com" {LINK}>site</a> <a href="https://a.org/x" {LINK}>https://a.org/x</a> '
     f'see <a href="https://b.org/y" {LINK}>https://b.org/y</a>.</p>'),
    ("![cat](https://e.com/c.png)", f'<p><a href="https://e.com/c.png" {LINK}>cat</a></p>'),  # no image is loaded
    ("- a\n- b\n  - c\n  - d\n- e\n\n1. x\n2. y",
     "<ul><li>a</li><li>b<ul><li>c</li><li>d</li></ul></li><li>e</li></ul><ol><li>x</li><li>y</li></ol>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("| a | b |\n|---|--:|\n| 1 | 2 |\n| <i>x</i> | \\| |",
     '<div class="table-wrap"><table><thead><tr><th>a</th><th style="text-align: right;">b</th></tr></thead>'
     '<tbody><tr><td>1</td><td style="text-align: right;">2</td></tr><tr><td>&lt;i&gt;x&lt;/i&gt;</td>'
     '<td style="text-align: right;">|</td></tr></tbody></table></div>'),
    ("# Title\n\ntext\nmore text\n\n---\n> quote *em*\n> more",
     "<h1>Title</h1><p>text<br>more text</p><hr><blockquote><p>quote <em>em</em><br>more</p></blockquote>"),
    ("```\ncode so far <x>", "<pre><code>code so far &lt;x&gt;</code></pre>"),  # a fence still streaming
    ("snake_case_word and __bold__ and _it_ and **unclosed",
     "<p>snake_case_word and <strong>bold</strong> and <em>it</em> and **unclosed</p>"),
    ("\\*not em\\* and a\\_b", "<p>*not em* and a_b</p>"),
]


def test_markdown_is_rendered_as_text_and_safe_elements(server, page):
    page.goto(server.url + "/")
    rendered = page.evaluate("""async (cases) => {
        const { renderMarkdown } = await import("/ui/markdown.js");
        return cases.map((text) => { const div = document.createElement("div"); renderMarkdown(text, div);
                                     return div.innerHTML; });
    }""", [text for text, _ in MARKDOWN])
    for (text, expected), got in zip(MARKDOWN, rendered, strict=True):
        assert got == expected, text


def _open(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#send:not([disabled])")


def _without_eos(page) -> None:
    """The page's requests forbid the tiny model's end-of-sequence token, so an answer runs to max_tokens."""
    def add_bias(route) -> None:
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "logit_bias": {"2": -100}}))

    page.route("**/v1/chat/completions", add_bias)


def _settings(page, **values: str) -> None:
    """Open the settings and type into them (field id: value)."""
    if not page.evaluate("document.getElementById('settings').open"):
        page.click("#settings summary")
    for field, value in values.items():
        page.fill(f"#{field.replace('_', '-')}", value)
    page.keyboard.press("Escape")  # closes the panel (it lies over the conversation)
    assert not page.evaluate("document.getElementById('settings').open")


def test_keyboard_enter_sends_shift_enter_breaks_esc_stops(fresh_server, page):
    live = fresh_server()
    slow_down(live, 0.05)  # the answer is still running when Esc is pressed
    _without_eos(page)
    _open(page, live.url)
    _settings(page, max_tokens="200")  # the tiny model's context is 256
    page.focus("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    page.keyboard.press("Enter")
    assert page.inner_text("article[data-role=user] .content") == "first line\nsecond line"
    assert page.input_value("#prompt") == ""
    page.wait_for_function("() => document.querySelector('article[data-role=assistant] .content').textContent.length > 0")
    assert page.is_visible("#stop") and not page.is_visible("#send")
    assert live.state.engine.stats().running == 1
    page.keyboard.press("Escape")
    page.wait_for_selector("article[data-role=assistant][data-state=stopped]")
    live.wait_idle()  # the server saw the client leave and freed the sequence
    assert page.is_visible("#send")


def test_settings_go_into_the_request_and_are_kept(server, page):
    _open(page, server.url)
    _settings(page, system_prompt="Answer in French.", temperature="0", max_tokens="5")
    with page.expect_request("**/v1/chat/completions") as request:
        page.fill("#prompt", "Hello")
        page.click("#send")
    body = json.loads(request.value.post_data)
    assert body["messages"] == [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]
    assert body["temperature"] == 0 and body["max_tokens"] == 5 and body["stream"] is True
    page.wait_for_selector(DONE)
    stats = page.inner_text(f"{DONE} .stats")
    assert stats.startswith("5 tokens · ") and "tok/s" in stats and "TTFT" in stats
    page.reload()
    page.wait_for_selector(DONE)
    assert page.input_value("#max-tokens") == "5" and page.input_value("#system-prompt") == "Answer in French."


def test_regenerate_replaces_the_last_answer_and_copy_copies_it(server, page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _open(page, server.url)
    _settings(page, max_tokens="4")
    page.fill("#prompt", "Hi")
    page.keyboard.press("Enter")
    page.wait_for_selector(DONE)
    kept = page.evaluate("JSON.parse(localStorage.getItem('mistralrs.conversations'))[0].messages")
    assert [m["role"] for m in kept] == ["user", "assistant"] and kept[1]["state"] == "done"
    page.click("button[aria-label='Copy this answer']")
    assert page.evaluate("navigator.clipboard.readText()") == kept[1]["content"]  # the raw answer
    with page.expect_request("**/v1/chat/completions") as request:
        page.click("button:has-text('Regenerate')")
    # The question is asked again, without the answer it replaces.
    assert [m["role"] for m in json.loads(request.value.post_data)["messages"]] == ["user"]
    page.wait_for_selector(DONE)
    assert page.locator("article[data-role=assistant]").count() == 1
    assert page.locator("#conversations li").count() == 1


def test_with_an_api_key_the_page_asks_for_it_then_chats(auth_server, page):
    page.goto(auth_server.url + "/")
    assert page.is_visible("#api-key") and page.locator("#messages, #prompt").count() == 0
    page.fill("#api-key", "wrong")
    page.keyboard.press("Enter")
    page.wait_for_selector("#login-error:has-text('not this server')")
    page.fill("#api-key", API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#send:not([disabled])")
    _settings(page, max_tokens="5")
    with page.expect_request("**/v1/chat/completions") as request:
        page.fill("#prompt", "Hi")
        page.keyboard.press("Enter")
    assert request.value.headers["authorization"] == f"Bearer {API_KEY}"
    page.wait_for_selector(DONE)
    page.reload()  # asked once: the key and the cookie are kept
    page.wait_for_selector(DONE)
    page.click("#log-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("localStorage.getItem('mistralrs.apiKey')") is None
    # The cookie without the key (the site's storage cleared): back to the login page, not a dead chat.
    page.fill("#api-key", API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#send:not([disabled])")
    page.evaluate("localStorage.removeItem('mistralrs.apiKey')")
    page.reload()
    page.wait_for_selector("#api-key")


@pytest.mark.parametrize("xlora", [False, True])
def test_the_xlora_mixture_is_shown_per_token(xlora, server, xlora_server, page):
    live = xlora_server if xlora else server
    _open(page, live.url)
    assert page.is_visible("#mixture-row") is False  # behind the closed settings, or absent
    page.click("#settings summary")
    assert page.is_visible("#mixture-row") is xlora
    if not xlora:
        return
    page.check("#show-mixture")
    _settings(page, max_tokens="6")
    _without_eos(page)  # six tokens, whatever the sampler draws
    page.fill("#prompt", "Hello")
    page.keyboard.press("Enter")
    page.wait_for_selector(DONE)
    tokens = page.locator(f"{DONE} .mixture-token")
    assert tokens.count() == 6
    assert page.inner_text(f"{DONE} .mixture-legend") == "Dominant adapter per token: expert_0 expert_1"
    colours = {tokens.nth(i).evaluate("t => getComputedStyle(t).borderBottomColor") for i in range(6)}
    assert colours <= {"rgb(37, 99, 235)", "rgb(217, 119, 6)"}  # the colours of expert_0 and expert_1
    assert "expert_0: " in tokens.first.get_attribute("title")
    page.click("#settings summary")
    page.uncheck("#show-mixture")
    assert page.locator(".mixture-token").count() == 0


# WCAG 2 contrast of two computed colours (the page's colours are opaque "rgb(r, g, b)").
CONTRAST = """([a, b]) => {
    const lum = (c) => {
        const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map((v) => {
            const s = Number(v) / 255;
            return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_is_readable_in_light_and_dark(scheme, server, browser):
    context = browser.new_context(color_scheme=scheme)
    page = context.new_page()
    try:
        _open(page, server.url)
        _settings(page, max_tokens="3")
        page.fill("#prompt", "Hi")
        page.keyboard.press("Enter")
        page.wait_for_selector(DONE)
        page.hover("body")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") is (scheme == "light")
        # (element, its text colour against the background it sits on)
        pairs = {
            "body": ("body", "body"),
            "stats": (f"{DONE} .stats", "body"),
            "who": (f"{DONE} .who", "body"),
            "user message": ("article[data-role=user] .content", "article[data-role=user] .content"),
            "send button": ("#send", "#send"),
            "new chat": ("#new-chat", "#new-chat"),
            "conversation": ("#conversations .conversation", ".sidebar"),
            "prompt": ("#prompt", "#prompt"),
        }
        for name, (fg, bg) in pairs.items():
            colour = page.eval_on_selector(fg, "e => getComputedStyle(e).color")
            behind = page.eval_on_selector(bg, "e => getComputedStyle(e).backgroundColor")
            if behind == "rgba(0, 0, 0, 0)":
                behind = background
            ratio = page.evaluate(CONTRAST, [colour, behind])
            assert ratio >= 4.5, f"{scheme}: {name} {colour} on {behind} has contrast {ratio:.2f}"
    finally:
        context.close()


def test_a_reload_mid_answer_keeps_what_had_come_and_frees_the_sequence(fresh_server, page):
    live = fresh_server()
    slow_down(live, 0.05)
    _without_eos(page)
    _open(page, live.url)
    _settings(page, max_tokens="200")
    page.fill("#prompt", "Hi")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('article[data-role=assistant] .content').textContent.length > 0")
    page.wait_for_timeout(1500)  # past the page's once-a-second save
    assert page.get_attribute("article[data-role=assistant]", "data-state") == "streaming"
    page.reload()
    page.wait_for_selector("article[data-role=assistant][data-state=stopped]")
    kept = page.evaluate("JSON.parse(localStorage.getItem('mistralrs.conversations'))[0].messages[1]")
    assert kept["content"] and kept["state"] == "streaming"  # marked stopped when read back
    live.wait_idle()


def test_on_a_narrow_screen_the_conversations_open_from_a_button(server, browser):
    context = browser.new_context(viewport={"width": 400, "height": 760})
    page = context.new_page()
    try:
        _open(page, server.url)
        _settings(page, max_tokens="2")
        assert not page.is_visible("#sidebar")
        for text in ("one", "two"):
            page.fill("#prompt", text)
            page.keyboard.press("Enter")
            page.wait_for_selector(DONE)
            if text == "one":
                page.click("#toggle-sidebar")
                assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "true"
                page.click("#new-chat")
                assert not page.is_visible("#sidebar")
        page.click("#toggle-sidebar")
        page.click("#conversations .conversation >> text=one")
        assert not page.is_visible("#sidebar")
        assert page.inner_text("article[data-role=user] .content") == "one"
    finally:
        context.close()
