"""`mistralrs x-lora-demo`: a random X-LoRA kept in a folder the user names, loadable, runnable from the docs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from tests.oracles.gguf_files import write_gguf_from_hf
from tests.oracles.tiny_models import tiny_hf_model

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
DOCS = Path(__file__).resolve().parents[2] / "docs" / "x-lora.md"
EXPECTED = ["base.gguf", "expert0", "expert1", "ordering.json", "xlora_classifier.safetensors", "xlora_config.json"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_mistral_dir, tmp_path_factory) -> Path:
    """The tiny Mistral as a Q4_1 GGUF file (llama architecture)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf"
    return write_gguf_from_hf(tiny_hf_model("mistral"), tiny_mistral_dir, path, gguf.GGMLQuantizationType.Q4_1)


def _logits(loaded) -> torch.Tensor:
    seq = [1, 5, 9, 23, 7, 42, 3]
    with torch.no_grad():
        return loaded.model(torch.tensor([seq]), torch.arange(len(seq))[None])[0]


def test_demo_writes_a_kept_folder_that_loads_as_xlora_and_lora(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["x-lora-demo", "./demo", "--gguf", str(tiny_gguf), "--adapters", "2", "--rank", "4"])
    assert res.exit_code == 0, res.output
    root = tmp_path / "demo"
    assert sorted(p.name for p in root.iterdir()) == EXPECTED
    assert (root / "base.gguf").resolve() == tiny_gguf.resolve()
    # The printed commands name the folder as the user typed it, so they run from here as written.
    assert ("mistralrs chat --max-tokens 64 x-lora-gguf-mistral -f ./demo/base.gguf -x ./demo -o ./demo/ordering.json"
            in res.output)
    assert "mistralrs chat --max-tokens 64 lora-gguf-mistral -f ./demo/base.gguf -a ./demo/expert0" in res.output
    common = dict(quantized_filename="./demo/base.gguf", dtype="f32", device="cpu")
    xlora = build_model(model_spec("x-lora-gguf-mistral", xlora_model_id="./demo",
                                   order=Path("./demo/ordering.json"), **common))
    lora = build_model(model_spec("lora-gguf-mistral", adapter=("./demo/expert0",), **common))
    base = build_model(model_spec("gguf-mistral", **common))
    assert xlora.model.adapter_names == ("expert0", "expert1")
    want = _logits(base)
    assert (_logits(xlora) - want).abs().max().item() > 1e-4  # the experts change the output
    assert (_logits(lora) - want).abs().max().item() > 1e-4


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_demo_never_writes_into_something_that_exists(existing, tiny_gguf, tmp_path):
    target = tmp_path / "taken"
    if existing == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["x-lora-demo", str(target), "--gguf", str(tiny_gguf)])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    assert "already exists" in res.output
    kept = target.read_text() if existing == "file" else sorted(p.name for p in target.iterdir())
    assert kept == ("mine" if existing == "file" else ["notes.txt"])


def test_demo_with_a_missing_gguf_is_one_line_and_writes_nothing(tmp_path):
    res = runner.invoke(app, ["x-lora-demo", str(tmp_path / "demo"), "--gguf", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def _docs_lines() -> list[str]:
    """The commands of the first example of docs/x-lora.md (its first bash block), comments left out."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
def test_docs_first_example_runs_as_written_on_the_default_model(tmp_path, monkeypatch):
    """The docs' demo command, then its one-shot X-LoRA and LoRA chats, exactly as printed and documented."""
    lines = _docs_lines()
    assert lines[0] == "mistralrs x-lora-demo ./my-xlora"
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, shlex.split(lines[0])[1:])
    assert res.exit_code == 0, res.output
    one_shots = [line for line in lines if line.startswith('echo "Hello" | mistralrs chat ')]
    assert len(one_shots) == 2 and all(line in res.output for line in one_shots)  # docs == what it prints
    # The venv's `mistralrs` first on PATH, as after `activate`.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in one_shots:
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip(), run.stderr[-2000:]
    root = tmp_path / "my-xlora"
    assert sorted(p.name for p in root.iterdir()) == [*EXPECTED[:3], "expert2", *EXPECTED[3:]]
    assert (root / "base.gguf").is_file()  # the link still resolves


def test_bench_xlora_builds_the_same_model_and_prints_no_internal_target(tiny_gguf):
    """benchmarks/bench_xlora.py on the shared builder: it runs, and reports figures without a target."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_xlora.py"
    run = subprocess.run([sys.executable, str(script), "--gguf", str(tiny_gguf), "--adapters", "2", "--rank", "2",
                          "--tokens", "4", "--concurrency", "2"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 adapters, rank 2, every projection of 2 layers" in run.stdout
    assert "slowdown:" in run.stdout and "target" not in run.stdout
