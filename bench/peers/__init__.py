"""Other serving frameworks ("peers") serving the same model for `python -m bench --peers`.

Each peer runs from its own virtual environment under bench/.venvs/<peer> (made by
`python -m bench.peers setup` from bench/peers/requirements-<peer>.txt); the benchmark starts
it with that venv's Python from the repository root. See bench/peers/README.md.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / "bench" / ".venvs"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Peer:
    """How to start one peer and how to talk to it."""

    name: str
    # (venv python, port, free_port) -> (command, extra environment)
    command: Callable[[Path, int, Callable[[], int]], tuple[list[str], dict[str, str]]]
    ready_path: str
    classify_path: str
    body_kind: str  # key of bench.load.make_bodies: the request body this peer takes

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def requirements(self) -> Path:
        return HERE / f"requirements-{self.name}.txt"

    def installed(self) -> bool:
        return self.python.exists() and (self.venv / ".bench-peer-ready").exists()


def _bentoml(
    python: Path, port: int, free_port: Callable[[], int]
) -> tuple[list[str], dict[str, str]]:
    command = [
        str(python.parent / "bentoml"), "serve", "bench.peers.bentoml_service:PeerClassifier",
        "--working-dir", str(REPO), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return command, {"BENTOML_DO_NOT_TRACK": "True"}


def _litserve(
    python: Path, port: int, free_port: Callable[[], int]
) -> tuple[list[str], dict[str, str]]:
    return [str(python), "-m", "bench.peers.litserve_server"], {"PEER_PORT": str(port)}


def _pytriton(
    python: Path, port: int, free_port: Callable[[], int]
) -> tuple[list[str], dict[str, str]]:
    # Triton runs the Python callable through its Python backend stub, which links
    # libpython3.11.so from the library path: without this it finds the system's 3.11.2 library
    # while the venv's standard library is that of the venv's Python (3.11.7 here), and the stub
    # fails in multiprocessing (RLock._recursion_count missing).
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {
        "LD_LIBRARY_PATH": libdir,
        "PEER_PORT": str(port),
        "PEER_GRPC_PORT": str(free_port()),
        "PEER_METRICS_PORT": str(free_port()),
    }
    return [str(python), "-m", "bench.peers.pytriton_server"], env


PEERS: dict[str, Peer] = {
    # BentoML and LitServe read a raw body as JSON: both take the image as a multipart part.
    "bentoml": Peer("bentoml", _bentoml, "/readyz", "/v1/classify", "multipart"),
    "litserve": Peer("litserve", _litserve, "/health", "/v1/classify", "multipart"),
    "pytriton": Peer(
        "pytriton",
        _pytriton,
        "/v2/models/classifier/ready",
        "/v2/models/classifier/infer",
        "kserve",
    ),
}
