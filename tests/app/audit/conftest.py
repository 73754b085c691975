"""A real PostgreSQL server for the audit tests (Debian's ``postgresql`` package).

The session fixture runs ``initdb`` in a temp folder (as the ``postgres`` user when the tests
run as root, since PostgreSQL refuses to run as root) and ``pg_ctl start`` on a free
127.0.0.1 port, and stops it at the end. Without the binaries the PostgreSQL tests are
skipped with the reason (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.postgres import PostgresServer, pg_bin


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install -y postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # postgres.
    root = Path(tempfile.mkdtemp(prefix="leuk-audit-pg-"))
    server = PostgresServer(bin_dir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()  # already stopped when a test left it so
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty audit database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
