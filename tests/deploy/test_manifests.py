"""deploy/: every overlay renders, every document is valid for the Kubernetes API, and the
Deployment keeps the rules the service relies on (non-root, read-only root, probes on the
health endpoints, a grace period longer than the service's own shutdown grace, ...)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import ValidationError

from app.settings import Settings
from scripts.k8s_manifests import (
    KUBERNETES_VERSION,
    Manifest,
    container_environment,
    named,
    only,
    overlay_names,
    port_number,
    render,
)

OVERLAYS = overlay_names()
REQUIRED_KINDS = {
    "Namespace",
    "ConfigMap",
    "Service",
    "PersistentVolumeClaim",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


def _pod(documents: list[Manifest]) -> Manifest:
    spec: Manifest = only(documents, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(documents: list[Manifest]) -> Manifest:
    containers: list[Manifest] = _pod(documents)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_there_are_overlays_to_check() -> None:
    assert {"staging", "production"} <= set(OVERLAYS)


def test_every_document_is_valid_for_the_kubernetes_api(rendered: list[Manifest]) -> None:
    assert {doc["kind"] for doc in rendered} >= REQUIRED_KINDS
    for doc in rendered:
        # strict: an unknown or misspelt field is an error, not silently dropped.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field(rendered: list[Manifest]) -> None:
    deployment: dict[str, Any] = only(rendered, "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_pod_runs_non_root_read_only_without_capabilities(rendered: list[Manifest]) -> None:
    pod, container = _pod(rendered), _container(rendered)
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001  # the image's user; fixed so volumes can rely on it
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    namespace = only(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_only_writable_mounts_are_declared_memory_volumes(rendered: list[Manifest]) -> None:
    pod, container = _pod(rendered), _container(rendered)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if mount.get("readOnly") is not True:
            assert "emptyDir" in volume, f"{mount['mountPath']} is writable but not an emptyDir"
            assert volume["emptyDir"]["sizeLimit"]
    store = next(m for m in container["volumeMounts"] if m["mountPath"] == "/srv/model_store")
    assert store["readOnly"] is True
    assert volumes[store["name"]]["persistentVolumeClaim"]["readOnly"] is True


def test_probes_ask_the_health_endpoints(rendered: list[Manifest]) -> None:
    container = _container(rendered)
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {
        "startupProbe": "/health/live",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    environment = container_environment(rendered, container)
    for probe in paths:
        assert port_number(container, container[probe]["httpGet"]["port"]) == int(
            environment["LEUK_PORT"]
        )
    startup = container["startupProbe"]
    # Start-up (TensorFlow import, hash checks, load, warm-up) takes 4-17 s here; give a
    # slow node 120 s like the image's HEALTHCHECK start period.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_termination_grace_outlasts_pre_stop_and_the_service_shutdown(
    rendered: list[Manifest],
) -> None:
    pod, container = _pod(rendered), _container(rendered)
    environment = container_environment(rendered, container)
    shutdown_grace = int(environment["LEUK_SHUTDOWN_GRACE_SECONDS"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + shutdown_grace + 5


def test_the_settings_are_valid_for_the_service(rendered: list[Manifest]) -> None:
    environment = container_environment(rendered, _container(rendered))
    assert all(name.startswith("LEUK_") or name == "KERAS_HOME" for name in environment)
    fields = {f"LEUK_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in environment if name.startswith("LEUK_")} <= fields
    settings = Settings.model_validate(
        {name.removeprefix("LEUK_").lower(): value for name, value in environment.items()}
    )
    assert settings.host == "0.0.0.0"
    assert settings.api_keys_file is not None


def test_api_keys_come_only_from_a_secret(rendered: list[Manifest]) -> None:
    pod, container = _pod(rendered), _container(rendered)
    environment = container_environment(rendered, container)
    assert "LEUK_API_KEYS" not in environment
    keys_file = environment["LEUK_API_KEYS_FILE"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"]))
    secret = volumes[mount["name"]]["secret"]
    assert secret.get("optional") is not True  # no Secret, no pod: never an open service
    assert secret["defaultMode"] & 0o007 == 0  # not world-readable
    assert not [doc for doc in rendered if doc["kind"] == "Secret"], "keys committed to git"


def test_resources_are_requested_and_limited(rendered: list[Manifest]) -> None:
    resources = _container(rendered)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    environment = container_environment(rendered, _container(rendered))
    # TensorFlow sizes its thread pools from the node's cores unless told: match the limit.
    assert environment["LEUK_TF_INTRA_OP_THREADS"] == str(resources["limits"]["cpu"])


def test_autoscaler_budget_and_policy_select_the_deployment(rendered: list[Manifest]) -> None:
    deployment = only(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = only(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # one pod down (drain, rollout) must not be an outage
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": named(rendered, "Service", deployment["metadata"]["name"])["spec"]["selector"],
        "PodDisruptionBudget": only(rendered, "PodDisruptionBudget")["spec"]["selector"][
            "matchLabels"
        ],
        "NetworkPolicy": only(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), kind
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert only(rendered, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    policy = only(rendered, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []
