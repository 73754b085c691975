"""schemathesis against the running service: every operation in /openapi.json, generated
valid and invalid requests (coverage, fuzzing and stateful phases), every response checked
with all of schemathesis' checks (status codes and bodies as documented, no 5xx, invalid
input refused, valid input accepted, ...).

Bounded: 25 examples per operation, deterministic generation (the same cases every run), so
the run is reproducible and takes ~10-20 s. Settings the schema cannot express are in
schemathesis.toml beside this file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.conftest import REPO
from tests.app.live_service import running_service

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = "tests.app.schemathesis_hooks"  # real images for binary fields and bodies
MAX_EXAMPLES = 25
# Far above the ~15 s a run takes here: a limit for a hung run, not a speed assertion.
RUN_TIMEOUT_S = 600


@pytest.mark.parametrize("api_key", [None, "conformance-key"], ids=["keys-off", "keys-on"])
def test_every_operation_conforms_to_the_openapi_schema(
    tiny_store_template: Path, tmp_path: Path, api_key: str | None
) -> None:
    """With keys on, the schema requires them (except on the open paths), schemathesis sends
    one, and its ignored_auth check also sends none and a wrong one, expecting 401."""
    store = tmp_path / "model_store"
    shutil.copytree(tiny_store_template, store)
    # An admin key: GET /v1/audit needs one; the others accept any role.
    env = {"LEUK_API_KEYS": f"conformance:admin:{api_key}"} if api_key else {}
    auth = ["--header", f"X-API-Key: {api_key}"] if api_key else []
    with running_service(store, **env) as url:
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli",
                "--config-file", str(CONFIG),
                "--no-color",
                "run", f"{url}/openapi.json",
                "--checks", "all",
                "--max-examples", str(MAX_EXAMPLES),
                "--generation-deterministic",
                "--workers", "1",
                "--continue-on-failure",
                "--request-timeout", "30",
                *auth,
            ],
            cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the repository
            env={**os.environ, "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": HOOKS},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
    report = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, report
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", run.stdout)
    assert selected and selected[1] == selected[2] and int(selected[1]) >= 12, report
    assert " passed" in run.stdout and "failed" not in run.stdout, report
