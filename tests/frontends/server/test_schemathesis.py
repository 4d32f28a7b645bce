"""Schemathesis against the served OpenAPI document: no 5xx, and responses as documented.

A bounded CLI run (a fixed seed, a few examples per operation, valid and invalid data)
so it fits the suite; docs/server.md shows a longer one with every check.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.frontends.server.conftest import LiveServer

pytest.importorskip("schemathesis")

# Every check that must hold for this API. Not included: positive_data_acceptance, which
# flags the 400s for rules a JSON schema cannot state (a prompt that fits the context).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_errors(server: LiveServer, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json", "--checks", CHECKS,
         "--max-examples", "15", "--seed", "1", "--workers", "1", "--no-color",
         # A request with no max_tokens generates to the context (with logprobs: seconds on a busy
         # machine); schemathesis' default 10 s read timeout then reports a network error.
         "--request-timeout", "120"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,  # cwd: its cache files stay in tmp
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " 0 passed" not in run.stdout
