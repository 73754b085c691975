"""`python -m bench.peers setup [PEER ...]`: one virtual environment per peer, pinned.

Each venv is bench/.venvs/<peer> (gitignored), made with the running Python's `venv` module and
filled with `pip install -r bench/peers/requirements-<peer>.txt` (exact pins). A venv counts as
ready only after its install succeeded and its framework and TensorFlow import.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.peers import PEERS, Peer

IMPORT_CHECK = {
    "bentoml": "import bentoml, tensorflow",
    "litserve": "import litserve, tensorflow",
    "pytriton": "import pytriton.triton, tensorflow",
}


def setup(peer: Peer) -> None:
    marker = peer.venv / ".bench-peer-ready"
    marker.unlink(missing_ok=True)
    if not peer.python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True)
    pip = [str(peer.python), "-m", "pip"]
    subprocess.run([*pip, "install", "--quiet", "-r", str(peer.requirements)], check=True)
    subprocess.run([*pip, "check"], check=True)
    subprocess.run([str(peer.python), "-c", IMPORT_CHECK[peer.name]], check=True)
    marker.write_text("ok\n")
    print(f"{peer.name}: ready in {peer.venv}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Set up the peer frameworks' venvs.")
    parser.add_argument("command", choices=["setup"])
    parser.add_argument("peers", nargs="*", help=f"some of {', '.join(PEERS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    failed = []
    for name in args.peers or list(PEERS):
        try:
            setup(PEERS[name])
        except subprocess.CalledProcessError as exc:
            print(f"{name}: setup FAILED ({exc})", flush=True)
            failed.append(name)
    if failed:
        raise SystemExit(f"setup failed for: {', '.join(failed)}")


if __name__ == "__main__":
    main()
