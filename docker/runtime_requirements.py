"""Print the service's runtime requirements, read from pyproject.toml, one per line.

The Docker images install exactly the pins `[project].dependencies` lists (what CI tested),
never the training or dev extras. The GPU image swaps the CPU-only TensorFlow wheel for
another TensorFlow requirement at the same version, e.g. ``tensorflow[and-cuda]==2.21.0``.

    python runtime_requirements.py pyproject.toml [--tensorflow 'tensorflow[and-cuda]==2.21.0']
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_CPU_TENSORFLOW = "tensorflow-cpu"


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def runtime_requirements(pyproject: Path, tensorflow: str | None) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements: list[str] = list(project["dependencies"])
    unpinned = [r for r in requirements if "==" not in r]
    if unpinned:
        raise ValueError(f"runtime dependencies must be pinned with ==: {unpinned}")
    if tensorflow is None:
        return requirements
    names = [_name(r) for r in requirements]
    if _CPU_TENSORFLOW not in names:
        raise ValueError(f"{_CPU_TENSORFLOW} is not a runtime dependency; cannot swap it")
    pairs = zip(names, requirements, strict=True)
    return [tensorflow if name == _CPU_TENSORFLOW else req for name, req in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--tensorflow", help=f"requirement that replaces {_CPU_TENSORFLOW}")
    args = parser.parse_args(argv)
    for requirement in runtime_requirements(args.pyproject, args.tensorflow):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
