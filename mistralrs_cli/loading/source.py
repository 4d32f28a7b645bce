"""Resolving model sources: local folders or Hugging Face Hub ids (revision, token, offline cache)."""

from __future__ import annotations

import os
from pathlib import Path

from mistralrs_cli.errors import ModelSourceError


def hf_token(token_source: str = "cache") -> str | None:
    """The Hub token per `--token-source`: cache (HF_TOKEN, then the token file), env:NAME, literal:T, path:F, none."""
    kind, _, value = token_source.partition(":")
    if kind == "none":
        return None
    if kind == "literal":
        return value
    if kind == "env":
        return os.environ.get(value or "HF_TOKEN")
    if kind == "path":
        return _read_token(Path(value).expanduser())
    if kind == "cache":
        if os.environ.get("HF_TOKEN"):
            return os.environ["HF_TOKEN"]
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        return _read_token(home / "token")
    raise ModelSourceError(
        f"--token-source {token_source!r}: expected cache, none, env:NAME, literal:TOKEN or path:FILE"
    )


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ModelSource:
    """One model location: a local folder, or a Hub repo fetched file by file into the HF cache."""

    def __init__(self, model_id: str, revision: str = "main", token_source: str = "cache") -> None:
        self.model_id = model_id
        self.revision = revision
        self.token_source = token_source
        path = Path(model_id).expanduser()
        self.local: Path | None = path if path.is_dir() else None
        if self.local is None and path.exists():
            raise ModelSourceError(f"model {model_id!r}: not a folder")
        if self.local is None and model_id.startswith((".", "/", "~")):
            raise ModelSourceError(f"model {model_id!r}: no such folder")
        if self.local is None and not _looks_like_repo_id(model_id):
            raise ModelSourceError(f"model {model_id!r}: no such folder, and not a Hub id (owner/name)")

    def __repr__(self) -> str:
        return f"ModelSource({self.model_id!r})"

    def has(self, filename: str) -> bool:
        """Whether the source holds `filename` (checks the Hub listing or cache when remote)."""
        if self.local is not None:
            return (self.local / filename).is_file()
        try:
            self.get(filename)
            return True
        except ModelSourceError:
            return False

    def get(self, filename: str) -> Path:
        """A local path for `filename`, downloading it into the shared HF cache when needed."""
        if self.local is not None:
            path = self.local / filename
            if not path.is_file():
                raise ModelSourceError(f"{self.local}: missing {filename}")
            return path
        return self._download(filename)

    def list_files(self) -> list[str]:
        """Every file name in the source (relative paths)."""
        if self.local is not None:
            return sorted(str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file())
        try:
            if _offline():
                from huggingface_hub import snapshot_download

                root = Path(
                    snapshot_download(self.model_id, revision=self.revision, local_files_only=True)
                )
                return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            from huggingface_hub import list_repo_files

            return list_repo_files(self.model_id, revision=self.revision, token=hf_token(self.token_source))
        except Exception as e:
            raise ModelSourceError(f"{self.model_id}: cannot list files ({_short(e)})") from None

    def _download(self, filename: str) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    self.model_id,
                    filename,
                    revision=self.revision,
                    token=hf_token(self.token_source),
                    local_files_only=_offline(),
                )
            )
        except Exception as e:
            raise ModelSourceError(f"{self.model_id}@{self.revision}: cannot get {filename} ({_short(e)})") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and " " not in value


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
