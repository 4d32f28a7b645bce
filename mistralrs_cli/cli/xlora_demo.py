"""`mistralrs x-lora-demo FOLDER`: write a small random X-LoRA for the default model, offline, and keep it.

FOLDER gets the X-LoRA model (experts expert0.., classifier, config), its ordering.json, and
base.gguf, a link to the base GGUF, so that the printed chat command works as written from the
current folder. The weights are random: it shows the mechanics, the scalings and the speed.
Register with `app.command("x-lora-demo", help=...)(x_lora_demo)`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from mistralrs_cli.cli.exit_codes import exit_on_user_error
from mistralrs_cli.errors import ConfigError, ModelSourceError

# NOTE: torch and the adapter modules are imported inside the function, so that registering
# this command keeps `mistralrs --help` fast.

__all__ = ["x_lora_demo", "build_demo", "next_steps"]

BASE_LINK = "base.gguf"
DEMO_MAX_TOKENS = 64


def x_lora_demo(
    folder: Annotated[str, typer.Argument(help="New (or empty) folder to write the X-LoRA model into; it is kept.")],
    gguf: Annotated[
        Path | None, typer.Option("--gguf", help="Base GGUF file (default: the embedded SmolLM2-135M-Instruct).")
    ] = None,
    adapters: Annotated[int, typer.Option("--adapters", min=1, help="Number of LoRA experts.")] = 3,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank of every expert.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random X-LoRA model for a GGUF base into FOLDER and print the command to chat with it."""
    with exit_on_user_error(folder):
        base, linked, n_layers = build_demo(Path(folder), gguf, adapters, rank, seed)
    typer.echo(f"wrote {folder}: {adapters} random LoRA experts (rank {rank}, all seven projections of "
               f"{n_layers} layers), a depth-2 classifier, ordering.json")
    typer.echo(f"base model: {base}" + (f" (linked as {os.path.join(folder, BASE_LINK)})" if linked else ""))
    typer.echo("The weights are random: replies show the mechanics, the scalings and the speed, not meaning.\n")
    typer.echo(next_steps(folder, os.path.join(folder, BASE_LINK) if linked else str(base)))


def build_demo(folder: Path, gguf: Path | None, n_adapters: int, rank: int, seed: int) -> tuple[Path, bool, int]:
    """Write the X-LoRA into `folder` and link the base GGUF there: (base GGUF, linked?, decoder layers)."""
    from mistralrs_cli.adapters.random_xlora import write_random_xlora
    from mistralrs_cli.loading.default_model import resolve_default_model
    from mistralrs_cli.loading.gguf_config import config_from_gguf
    from mistralrs_cli.loading.gguf_file import GGUFFile

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"x-lora-demo: {folder} already exists and is not an empty folder (pick a new one)")
    if gguf is None:
        gguf = resolve_default_model().gguf_path
    elif not gguf.is_file():
        raise ModelSourceError(f"x-lora-demo: --gguf {gguf}: no such file")
    base = gguf.resolve()
    cfg = config_from_gguf(GGUFFile(base))  # read before writing anything: a bad GGUF leaves no folder
    write_random_xlora(folder, cfg, n_adapters, rank, seed=seed)
    try:
        (folder / BASE_LINK).symlink_to(base)
        linked = True
    except OSError:  # e.g. Windows without the symlink privilege: the command names the file itself
        linked = False
    return base, linked, cfg.num_hidden_layers


def next_steps(folder: str, base: str) -> str:
    """The copy-pasteable commands to use the demo in `folder` over the GGUF `base`."""
    q = shlex.quote
    # Bounded replies: random experts can loop, and a reply may otherwise run to the context length.
    chat = f"mistralrs chat --max-tokens {DEMO_MAX_TOKENS}"
    xlora = (f"{chat} x-lora-gguf-mistral -f {q(base)} -x {q(folder)} "
             f"-o {q(os.path.join(folder, 'ordering.json'))}")
    lora = f"{chat} lora-gguf-mistral -f {q(base)} -a {q(os.path.join(folder, 'expert0'))}"
    return (f"Ask one question:\n  echo \"Hello\" | {xlora}\n"
            f"Chat (then /scalings shows which expert led each token):\n  {xlora}\n"
            f"One expert alone, as a plain LoRA:\n  echo \"Hello\" | {lora}")
