"""deploy/: every overlay renders, every document is valid for the Kubernetes API, and the
Deployment keeps the rules the service relies on (non-root, read-only root, probes on the
health endpoints, a grace period longer than the service's own shutdown grace, ...)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import ValidationError

from app.settings import Settings
from scripts.k8s_manifests import (
    AUDIT_URL,
    KSERVE,
    KUBERNETES_VERSION,
    Manifest,
    audit_database_problems,
    container_environment,
    named,
    only,
    overlay_names,
    port_number,
    render,
    render_directory,
    secret_environment,
    validate,
    validate_inference_service,
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


def test_the_audit_database_url_comes_from_a_required_secret(rendered: list[Manifest]) -> None:
    container = _container(rendered)
    assert AUDIT_URL not in container_environment(rendered, container)
    reference = secret_environment(container)[AUDIT_URL]
    assert reference["name"] == "leukaemia-cell-service-audit-database"
    assert reference.get("optional") is not True
    assert audit_database_problems(rendered) == []


def _without_audit_url(documents: list[Manifest]) -> list[Manifest]:
    mutated = copy.deepcopy(documents)
    container = _container(mutated)
    container["env"] = [v for v in container["env"] if v["name"] != AUDIT_URL]
    return mutated


def test_several_replicas_on_per_pod_sqlite_do_not_validate(rendered: list[Manifest]) -> None:
    mutated = _without_audit_url(rendered)
    (problem,) = audit_database_problems(mutated)
    assert "each pod would write its own SQLite file" in problem
    with pytest.raises(ValueError, match=AUDIT_URL):
        validate(mutated)
    # The URL as a literal (a password in git) is refused too.
    container = _container(mutated)
    container["env"].append({"name": AUDIT_URL, "value": "postgresql+psycopg://u:p@db/audit"})
    assert audit_database_problems(mutated)
    # Through the HPA: a Deployment with replicas: 1 whose autoscaler may add more.
    only(mutated, "Deployment")["spec"]["replicas"] = 1
    container["env"].pop()
    assert audit_database_problems(mutated)


def test_one_replica_or_the_audit_off_may_use_sqlite(rendered: list[Manifest]) -> None:
    single = _without_audit_url(rendered)
    only(single, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] = 1
    assert audit_database_problems(single) == []
    unaudited = _without_audit_url(rendered)
    _container(unaudited)["env"].append({"name": "LEUK_AUDIT_ENABLED", "value": "false"})
    assert audit_database_problems(unaudited) == []


def test_egress_reaches_only_postgresql_and_dns(rendered: list[Manifest]) -> None:
    egress = only(rendered, "NetworkPolicy")["spec"]["egress"]
    ports = sorted((port["protocol"], port["port"]) for rule in egress for port in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 5432), ("UDP", 53)]
    for rule in egress:
        for peer in rule["to"]:  # never "anywhere": each peer names namespaces and pods
            assert peer["namespaceSelector"]["matchLabels"]
            assert len(peer["podSelector"]["matchExpressions"]) == 1
            assert "matchLabels" not in peer["podSelector"]  # kustomize would add ours to it
    database = next(rule for rule in egress if rule["ports"][0]["port"] == 5432)
    (peer,) = database["to"]
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": "leukaemia-cell-service/audit-database", "operator": "In", "values": ["true"]}
    ]


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


# --- deploy/kserve: the same image as a KServe InferenceService (Open Inference Protocol) ---


@pytest.fixture(scope="module")
def kserve() -> list[Manifest]:
    return render_directory(KSERVE)


def _predictor(documents: list[Manifest]) -> Manifest:
    predictor: Manifest = only(documents, "InferenceService")["spec"]["predictor"]
    return predictor


def test_the_inference_service_validates(kserve: list[Manifest]) -> None:
    validate(kserve)  # the KServe schema, the predictor's pod as a core Pod, the audit rule
    kinds = {doc["kind"] for doc in kserve}
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "InferenceService",
    }  # KServe makes the Deployment, Service and HPA; the base's are not rendered


@pytest.mark.parametrize(
    "mutate",
    [
        # KServe's predictor has no protocolVersion (only its model-format specs do).
        lambda isvc: isvc["spec"]["predictor"].update(protocolVersion="v2"),
        lambda isvc: isvc["spec"]["predictor"].update(scaleMetric="gpu"),
        lambda isvc: isvc["spec"].update(predicter={}),
        # A misspelt field inside the pod: caught by the Kubernetes Pod schema.
        lambda isvc: isvc["spec"]["predictor"]["containers"][0]["readinessProbe"].update(
            httpGett={}
        ),
        lambda isvc: isvc["spec"]["predictor"].update(terminationGracePeriod=35),
    ],
    ids=["protocolVersion", "scaleMetric", "predicter", "probe-field", "pod-field"],
)
def test_the_kserve_validation_refuses_wrong_fields(kserve: list[Manifest], mutate: Any) -> None:
    broken = copy.deepcopy(only(kserve, "InferenceService"))
    mutate(broken)
    with pytest.raises((ValidationError, jsonschema.ValidationError)):
        validate_inference_service(broken)


def test_the_inference_service_keeps_the_deployments_pod(
    kserve: list[Manifest], rendered: list[Manifest]
) -> None:
    predictor, deployment_pod = _predictor(kserve), _pod(rendered)
    (container,) = predictor["containers"]
    (deployed,) = deployment_pod["containers"]
    assert container["name"] == "kserve-container"
    same = ("image", "ports", "env", "resources", "securityContext", "lifecycle", "volumeMounts")
    for field in same:
        assert container[field] == deployed[field], field
    for field in ("securityContext", "volumes", "terminationGracePeriodSeconds"):
        assert predictor[field] == deployment_pod[field], field
    assert predictor["automountServiceAccountToken"] is False
    assert predictor["enableServiceLinks"] is False
    assert {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    } == {
        "startupProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        timing = {k: v for k, v in container[probe].items() if k != "httpGet"}
        assert timing == {k: v for k, v in deployed[probe].items() if k != "httpGet"}
    # The NetworkPolicy and PDB rendered beside it select the predictor's pods.
    labels = predictor["labels"]
    policy = only(kserve, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    budget = only(kserve, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert policy.items() <= labels.items() and budget.items() <= labels.items()
    assert predictor["minReplicas"] >= 2
    environment = container_environment(kserve, container)
    assert environment["LEUK_API_KEYS_FILE"] and AUDIT_URL not in environment
    isvc = only(kserve, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_an_inference_service_on_per_pod_sqlite_does_not_validate(
    kserve: list[Manifest],
) -> None:
    mutated = copy.deepcopy(kserve)
    (container,) = _predictor(mutated)["containers"]
    container["env"] = [v for v in container["env"] if v["name"] != AUDIT_URL]
    assert audit_database_problems(mutated)
    del _predictor(mutated)["maxReplicas"]  # KServe: no bound
    assert "unbounded" in audit_database_problems(mutated)[0]
    _predictor(mutated).update(minReplicas=1, maxReplicas=1)
    assert audit_database_problems(mutated) == []
