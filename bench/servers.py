"""Start a server under test as a subprocess on 127.0.0.1; read its CPU and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"  # the only address the benchmark ever sends traffic to


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _parent_pids() -> dict[int, int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn --workers forks one process per worker)."""
    parents = _parent_pids()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            # Fields after the ")" of the command name: utime and stime are 14th and 15th overall.
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
    return total / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class ServerProcess:
    """A server under test: its command, environment, log file and the port it listens on."""

    name: str
    command: list[str]
    env: Mapping[str, str]
    port: int
    log_path: Path
    ready_path: str = "/health/ready"
    classify_path: str = "/v1/classify"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 300.0) -> float:
        """Start and wait until the readiness path answers 200; return seconds it took."""
        t0 = time.monotonic()
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
        )
        while time.monotonic() - t0 < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            if self._ready():
                return time.monotonic() - t0
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def get_text(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return str(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def wait_idle(
        self, timeout_s: float = 90.0, window_s: float = 0.5, cores: float = 0.2
    ) -> float:
        """Wait until the server has finished work left over from a previous load.

        When wrk stops, requests it had sent are still queued in the server (a server that
        handles one request at a time can hold a backlog of many seconds); measuring the next
        point before they drain would charge that backlog to it. Returns the seconds waited.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            before = self.cpu_seconds()
            time.sleep(window_s)
            if (self.cpu_seconds() - before) / window_s < cores:
                break
        return time.monotonic() - t0

    def memory(self) -> dict[str, int]:
        """Peak (VmHWM) and current (VmRSS) resident memory, summed over the process tree."""
        pids = self.pids()
        return {
            "vm_hwm_kib": sum(status_kib(p, "VmHWM") for p in pids),
            "vm_rss_kib": sum(status_kib(p, "VmRSS") for p in pids),
            "processes": len(pids),
            "threads": sum(len(list(Path(f"/proc/{p}/task").glob("*"))) for p in pids),
        }

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Children a framework started (workers, Triton's server binary) must not outlive the
        # run and take CPU from the next server, even when their parent does not stop them.
        children = self.pids()[1:]
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        for pid in filter(_alive, children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Still running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        server.stop()
