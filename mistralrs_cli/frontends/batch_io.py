"""JSONL batch input: parsing both input forms, duplicate custom_ids, OpenAI Batch API output records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
DUPLICATE = "duplicate_custom_id"


@dataclass
class BatchRequest:
    """One valid input line: which endpoint and the request body."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass
class BatchLineError:
    """An input line that cannot run; it becomes an error record."""

    line: int
    custom_id: str
    code: str
    message: str


def parse_line(text: str, line: int) -> BatchRequest | BatchLineError:
    """Parse one JSONL line in the OpenAI Batch form or the short {prompt|messages} form."""
    fallback_id = f"line-{line}"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        return BatchLineError(line, fallback_id, "invalid_json", f"line {line}: invalid JSON ({e.msg})")
    if not isinstance(raw, dict):
        return BatchLineError(line, fallback_id, "invalid_request", f"line {line}: expected a JSON object")
    if "body" in raw or "url" in raw:
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return BatchLineError(line, fallback_id, "invalid_request", f"line {line}: missing custom_id")
        url, body = raw.get("url"), raw.get("body")
        if url not in ENDPOINTS:
            return BatchLineError(line, custom_id, "invalid_url",
                                  f"line {line}: url must be one of {', '.join(ENDPOINTS)}, got {url!r}")
        if raw.get("method", "POST") != "POST":
            return BatchLineError(line, custom_id, "invalid_request", f"line {line}: method must be POST")
        if not isinstance(body, dict):
            return BatchLineError(line, custom_id, "invalid_request", f"line {line}: body must be an object")
        return BatchRequest(line, custom_id, url, body)
    custom_id = raw.get("id", raw.get("custom_id", fallback_id))
    custom_id = str(custom_id)
    body = {k: v for k, v in raw.items() if k not in ("id", "custom_id")}
    if "messages" in body:
        return BatchRequest(line, custom_id, ENDPOINTS[0], body)
    if "prompt" in body:
        return BatchRequest(line, custom_id, ENDPOINTS[1], body)
    return BatchLineError(line, custom_id, "invalid_request", f"line {line}: needs 'prompt' or 'messages'")


def iter_input(path: Path) -> Iterator[BatchRequest | BatchLineError]:
    """Stream parsed lines (blank lines skipped) without loading the file."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, start=1):
            if text.strip():
                yield parse_line(text, n)


def find_duplicates(path: Path) -> dict[int, str]:
    """Line number -> message for every repeat of an earlier custom_id (one streaming pass)."""
    first_seen: dict[str, int] = {}
    dups: dict[int, str] = {}
    for item in iter_input(path):
        if item.custom_id in first_seen:
            dups[item.line] = (f"line {item.line}: duplicate custom_id {item.custom_id!r} "
                               f"(first on line {first_seen[item.custom_id]})")
        else:
            first_seen[item.custom_id] = item.line
    return dups


def success_record(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Batch API output line for a completed request."""
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex[:24]}", "body": body},
        "error": None,
    }


def error_record(custom_id: str, line: int, code: str, message: str) -> dict[str, Any]:
    """An OpenAI Batch API output line for a request that failed."""
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message, "line": line},
    }
