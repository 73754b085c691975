"""`python -m app` as a real process on a free 127.0.0.1 port, for tests that need a socket
(a browser, schemathesis over HTTP, the process's memory), and Debian's Chromium to drive."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.app.conftest import REPO

# Generous: TensorFlow imports and the warm-up on a busy 2-core machine.
READY_DEADLINE_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    """Until /health/ready answers 200; fails if the process exits or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(base_url=url, timeout=10) as http:
        while True:
            assert process.poll() is None, "server exited"
            try:
                if http.get("/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)


@contextmanager
def running_process(model_store: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Base URL and process of the service once /health/ready answers 200; stopped (SIGTERM)
    after. ``env``: extra ``LEUK_*`` settings, e.g. ``LEUK_API_KEYS="k"``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env={
            **os.environ,
            "LEUK_MODEL_STORE": str(model_store),
            "LEUK_PORT": str(port),
            "LEUK_WARMUP_BATCH_SIZES": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        yield url, process
    finally:
        process.terminate()
        process.communicate(timeout=60)


@contextmanager
def running_service(model_store: Path, **env: str) -> Iterator[str]:
    """Base URL of the service once /health/ready answers 200 (see ``running_process``)."""
    with running_process(model_store, **env) as (url, _):
        yield url


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAS_CHROMIUM = CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium_driver(window_size: str, page_load_timeout_s: float) -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver (Selenium Manager never runs, so
    nothing is downloaded), with the flags this closed network needs, in a fresh profile."""
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="leuk-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={window_size}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(page_load_timeout_s)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
