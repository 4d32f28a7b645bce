"""Resolving model sources: local folders or Hugging Face Hub ids (revision, token, offline cache)."""

from __future__ import annotations

import logging
import os
import re
from functools import cache
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


class NotCachedError(ModelSourceError):
    """A Hub file is not in the local HF cache and the Hub cannot be asked (offline or unreachable)."""


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
        except NotCachedError:
            if self._repo_cached():
                return False  # a cached snapshot without the file: treat it as absent
            raise
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
        from huggingface_hub.errors import LocalEntryNotFoundError

        why = _hub_unusable()
        try:
            if why:
                from huggingface_hub import snapshot_download

                root = Path(snapshot_download(self.model_id, revision=self.revision, local_files_only=True))
                return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            from huggingface_hub import list_repo_files

            return list_repo_files(self.model_id, revision=self.revision, token=hf_token(self.token_source))
        except Exception as e:
            if why and isinstance(e, LocalEntryNotFoundError):
                raise self._not_cached(None, why) from None
            raise ModelSourceError(f"{self.model_id}: cannot list files ({_short(e)})") from None

    def _download(self, filename: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        why = _hub_unusable()
        try:
            return Path(
                hf_hub_download(
                    self.model_id,
                    filename,
                    revision=self.revision,
                    token=hf_token(self.token_source),
                    local_files_only=bool(why),
                )
            )
        except Exception as e:
            if why and isinstance(e, LocalEntryNotFoundError):
                raise self._not_cached(filename, why) from None
            raise ModelSourceError(f"{self.model_id}@{self.revision}: cannot get {filename} ({_short(e)})") from None

    def _not_cached(self, filename: str | None, why: str) -> NotCachedError:
        """The one-line error for a Hub file (or the whole repo) missing from the cache while offline."""
        name = self.model_id if self.revision == "main" else f"{self.model_id}@{self.revision}"
        what = f"{name}: {filename}" if filename and self._repo_cached() else name
        return NotCachedError(f"{what} is not in the local Hugging Face cache and {why}")

    def _repo_cached(self) -> bool:
        """Whether a snapshot of this repo at this revision is in the local HF cache."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.model_id, repo_type="model")
        commit = self.revision
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            try:
                commit = (repo / "refs" / self.revision).read_text().strip()
            except OSError:
                return False
        return (repo / "snapshots" / commit).is_dir()


def _hub_unusable() -> str | None:
    """Why the Hub cannot be asked (None when it can): offline mode, or no answer from the endpoint."""
    from huggingface_hub import constants

    _quiet_hub_logging()
    if _offline():
        return f"{_offline()} is set"
    if not _reachable(constants.ENDPOINT):
        return "the Hub is unreachable (offline)"
    return None


@cache
def _reachable(endpoint: str) -> bool:
    """One short HEAD to the endpoint: huggingface_hub would otherwise retry for ~26 s per missing file."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=_PROBE_TIMEOUT_S)
        return True
    except Exception:  # any failure to get an HTTP answer means no file can be fetched either
        return False


def _quiet_hub_logging() -> None:
    """huggingface_hub adds its own stderr handler and also propagates: each warning printed twice."""
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler:
            hub_logger.removeHandler(handler)


_PROBE_TIMEOUT_S = 5.0


def _offline() -> str | None:
    """The env variable that turns the Hub off (huggingface_hub honours both), or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def _looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and " " not in value


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
