"""Server fixtures: a real uvicorn server on a loopback port, in a thread, over the tiny model;
and `mistralrs serve` as a real process (ServerProcess, the `spawn` fixture)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import httpx
import openai
import pytest
import uvicorn

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import Engine, EngineConfig
from mistralrs_cli.frontends.options import ServeOptions
from mistralrs_cli.frontends.server import DrainingServer, bind_socket, create_app
from mistralrs_cli.frontends.server_state import ServerState

API_KEY = "test-key-123"


class LiveServer:
    """A server started in a background thread; `url` is http://127.0.0.1:PORT."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.app = create_app(state)
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=int(state.config.drain_timeout) + 5)
        self.server = DrainingServer(config, state)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def client(self, api_key: str = "none", **kwargs) -> openai.OpenAI:
        """The official SDK pointed at this server (no retries: tests want the first answer)."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def http(self) -> httpx.Client:
        """A plain HTTP client for what the SDK cannot send (bad JSON, huge bodies)."""
        return httpx.Client(base_url=self.url, timeout=60)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no request is in flight and the engine holds no KV blocks."""
        deadline = time.monotonic() + timeout
        while True:
            engine = self.state.engine
            stats = engine.stats() if engine else None
            if self.state.in_flight == 0 and stats is not None and stats.kv_blocks_used == 0 and not stats.running:
                return
            assert time.monotonic() < deadline, f"not idle: in_flight={self.state.in_flight} stats={stats}"
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut down as on SIGTERM (drain, then abort) and wait for the thread."""
        self.server.handle_exit(15, None)
        self.thread.join(30)
        self.state.close()
        assert not self.thread.is_alive(), "server did not stop"


def start_server(loaded, config: ServeOptions | None = None,
                 load: Callable[[], Engine] | None = None, engine_config: EngineConfig | None = None) -> LiveServer:
    """A LiveServer whose engine loads via `load` (default: an Engine over `loaded`); waits until ready.

    Unless `config` names them, the served model name is "tiny" (what the tests send as `model`).
    No access log: a thread's late line would land in another test's output (test_cli_serve_names
    checks it on a real process).
    """
    config = config or ServeOptions(host="127.0.0.1", port=0)
    state = ServerState(replace(config, served_names=config.served_names or ("tiny",), access_log=False,
                                model_name="tiny"))
    live = LiveServer(state)
    state.start_loading(load or (lambda: Engine(loaded, engine_config or EngineConfig(max_seqs=8))))
    if load is None:
        deadline = time.monotonic() + 30
        while state.engine is None:
            assert time.monotonic() < deadline, "engine did not start"
            time.sleep(0.01)
    return live


@pytest.fixture(scope="session")
def tiny_loaded(tiny_mistral_dir):
    """The tiny Mistral, loaded once; each server builds its own Engine over it."""
    return build_model(model_spec("mistral", model_id=str(tiny_mistral_dir), device="cpu"))


@pytest.fixture(scope="session")
def request_log(tmp_path_factory):
    """Where the shared server writes its --log lines."""
    return tmp_path_factory.mktemp("server-log") / "requests.jsonl"


@pytest.fixture(scope="session")
def server(tiny_loaded, request_log) -> Iterator[LiveServer]:
    """The shared server: no auth, 1 MiB body limit, a request log."""
    live = start_server(tiny_loaded, ServeOptions(host="127.0.0.1", port=0, log_file=request_log,
                                                  max_body_bytes=1 << 20))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def auth_server(tiny_loaded) -> Iterator[LiveServer]:
    """A server that requires API_KEY."""
    live = start_server(tiny_loaded, ServeOptions(host="127.0.0.1", port=0, api_key=API_KEY))
    yield live
    live.stop()


@pytest.fixture
def fresh_server(tiny_loaded) -> Iterator[Callable[..., LiveServer]]:
    """Factory for a server a test may break or shut down; all are stopped at the end."""
    started: list[LiveServer] = []

    def make(**overrides) -> LiveServer:
        engine_config = overrides.pop("engine_config", None)
        load = overrides.pop("load", None)
        config = replace(ServeOptions(host="127.0.0.1", port=0), **overrides)
        live = start_server(tiny_loaded, config, load=load, engine_config=engine_config)
        started.append(live)
        return live

    yield make
    for live in started:
        if live.thread.is_alive():
            live.stop()
        else:
            live.state.close()


class ServerProcess:
    """`python -m mistralrs_cli ARGS` on a free loopback port, its URL read from stderr."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mistralrs_cli", *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []

    def wait_ready(self) -> None:
        """Read the URL from stderr, then wait until /health says the model is loaded."""
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                self.url = found.group(1)
                break
        else:
            pytest.fail("server did not start:\n" + "".join(self.lines))
        # Keep draining stderr so the child never blocks on a full pipe.
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 60
        while httpx.get(self.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "model did not load:\n" + "".join(self.lines)
            time.sleep(0.1)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first stderr line (read so far or arriving within `timeout`) matching `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            assert time.monotonic() < deadline, f"no line matches {pattern!r}:\n" + "".join(self.lines)
            time.sleep(0.05)

    def client(self, api_key: str = "none") -> openai.OpenAI:
        """The SDK for this server."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def stop(self, sig: int) -> int:
        """Send `sig` and return the exit code (killing the process if it hangs); all of stderr is then read."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(10)
        return code


@pytest.fixture
def spawn():
    """Start ServerProcesses; any still running at the end of the test is killed."""
    procs: list[ServerProcess] = []

    def make(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args, env)
        procs.append(server)
        server.wait_ready()
        return server

    yield make
    for server in procs:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def slow_down(live: LiveServer, seconds: float) -> None:
    """Make every engine step take at least `seconds`, so requests are reliably still running."""
    runner = live.state.engine.core.runner
    run = runner.run

    def slow_run(*args, **kwargs):
        time.sleep(seconds)
        return run(*args, **kwargs)

    runner.run = slow_run


@pytest.fixture(scope="module")
def xlora_server(tmp_path_factory, tiny_mistral_dir) -> Iterator[LiveServer]:
    """A server over a tiny X-LoRA model (two adapters mixed by a global classifier)."""
    from tests.adapters.helpers import write_adapter
    from tests.adapters.test_xlora_oracle import build

    root = tmp_path_factory.mktemp("web-xlora")
    adapters = [write_adapter(root / f"a{i}", seed=1 + i, r=4, alpha=8) for i in range(3)]
    xdir, ordering, *_ = build(root, adapters, "depth1-global-2ad")
    loaded = build_model(model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir),
                                    order=ordering, dtype="f32", device="cpu"))
    live = start_server(loaded, ServeOptions(host="127.0.0.1", port=0))
    yield live
    live.stop()


# As the machine's own probe starts it: headless, and no calls home (this network refuses them).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's chromium (what .ci/run installs); playwright's own browser downloads cannot work here."""
    return os.environ.get("MISTRALRS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by playwright (one per module: its event loop must not outlive the module)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine: the browser tests need Debian's chromium package "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (its own localStorage and cookies) and page; page errors fail the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert not errors, errors
