"""Run the image exactly as deploy/'s rendered Deployment declares it, through Docker.

    python -m scripts.k8s_container_test [--overlay production] [--image TAG] [--results F]

No cluster is needed: the container spec of `kubectl kustomize deploy/overlays/<overlay>`
is translated into `docker run` flags, so the image is proven to work under the manifest's
own settings:

- securityContext: --user runAsUser:runAsGroup (+ --group-add fsGroup), --read-only for
  readOnlyRootFilesystem, --cap-drop for capabilities.drop, no-new-privileges for
  allowPrivilegeEscalation: false; resources.limits: --cpus and --memory (no swap);
- environment: the ConfigMap's data (envFrom) and env; only LEUK_HOST and LEUK_PORT are
  overridden, to 127.0.0.1 and a free port, because the container shares the host network;
- volumes: an emptyDir becomes a tmpfs of its sizeLimit, the model-store claim a read-only
  bind of the committed model_store/, the API-key Secret a read-only bind of a file holding
  a generated key (mode defaultMode, group fsGroup). Any other kind of volume fails the test;
- the audit database: this runs one replica, so instead of the Secret's shared PostgreSQL
  URL (there is no database here) the audit trail uses its SQLite file in LEUK_DATA_DIR set
  to a tmpfs, as an in-memory emptyDir would be (the root stays read-only). One
  pod on SQLite is what the manifests' shared-audit rule allows; any other Secret-sourced
  variable fails the test.

Checks (any failure exits non-zero): the startup probe answers within its
periodSeconds x failureThreshold, then the readiness and liveness probes; uid and read-only
root inside; a request without the key gets 401 in the service's error shape and a real
C-NMC BMP with it is classified and its audit records written; a short load (peak RSS
recorded, against the memory limit); then termination as the kubelet does it: preStop sleep
while requests keep arriving, SIGTERM, and every request started before SIGTERM answered
200, exit code 0, all within terminationGracePeriodSeconds.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.container_smoke_test import (
    BMP,
    HOST,
    SmokeTestFailure,
    check,
    check_classification,
    container_logs,
    docker,
    free_port,
    multipart,
    report,
    request,
)
from scripts.k8s_manifests import (
    AUDIT_URL,
    REPO,
    Manifest,
    audit_database_problems,
    container_environment,
    only,
    port_number,
    render,
    secret_environment,
)

# Where this test puts the audit trail's SQLite file. Not the image's LEUK_DATA_DIR
# (/srv/data): it is a VOLUME in the Dockerfile, and Docker 20.10 mounts a tmpfs there as
# root-owned 0755 whatever its mode option says, which uid 10001 cannot write.
AUDIT_DATA_DIR = "/srv/audit-data"
AUDIT_TMPFS_BYTES = 64 * 2**20
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    check(match is not None, f"unsupported memory quantity {quantity}")
    assert match is not None
    return int(match[1]) * MEMORY_UNITS.get(match[2] or "", 1)


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class DockerRun:
    """`docker run` arguments for one container of a rendered Deployment."""

    flags: list[str]
    environment: dict[str, str]
    api_key: str
    port: int
    declared_port: int


def security_flags(pod: Manifest, container: Manifest) -> list[str]:
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    check("runAsUser" in security, "no runAsUser: the manifest must fix the user")
    flags = ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    if "fsGroup" in security:
        flags += ["--group-add", str(security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    capabilities = security.get("capabilities", {})
    flags += [arg for cap in capabilities.get("drop", []) for arg in ("--cap-drop", cap)]
    flags += [arg for cap in capabilities.get("add", []) for arg in ("--cap-add", cap)]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    check(not security.get("privileged"), "privileged container")
    return flags


def resource_flags(container: Manifest) -> list[str]:
    limits = container.get("resources", {}).get("limits", {})
    flags: list[str] = []
    if "cpu" in limits:
        flags += ["--cpus", str(cpu_cores(limits["cpu"]))]
    if "memory" in limits:
        memory = str(memory_bytes(limits["memory"]))
        flags += ["--memory", memory, "--memory-swap", memory]  # no swap, as on a node
    return flags


def secret_directory(volume: Manifest, fs_group: int | None, api_key: str, root: Path) -> Path:
    """A folder standing in for a Secret volume: each item a file, as the kubelet writes it."""
    secret = volume["secret"]
    folder = root / str(volume["name"])
    folder.mkdir()
    folder.chmod(0o755)
    for item in secret["items"]:
        check(item["key"] == "api_keys", f"unknown Secret key {item['key']}")
        path = folder / item["path"]
        path.write_text(f"# generated for this test\n{api_key}\n", encoding="utf-8")
        path.chmod(item.get("mode", secret.get("defaultMode", 0o644)))
        if fs_group is not None:
            shutil.chown(path, user=0, group=fs_group)
    return folder


def volume_flags(
    pod: Manifest, container: Manifest, model_store: Path, api_key: str, root: Path
) -> list[str]:
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    flags: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume, target = volumes[mount["name"]], mount["mountPath"]
        read_only = ",readonly" if mount.get("readOnly") else ""
        if "emptyDir" in volume:
            size = memory_bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
            flags += ["--tmpfs", f"{target}:rw,size={size},mode=1777"]
        elif "persistentVolumeClaim" in volume:
            check(target == "/srv/model_store", f"unexpected claim mounted at {target}")
            flags += ["--mount", f"type=bind,source={model_store},target={target}{read_only}"]
        elif "secret" in volume:
            source = secret_directory(volume, fs_group, api_key, root)
            flags += ["--mount", f"type=bind,source={source},target={target}{read_only}"]
        else:
            raise SmokeTestFailure(f"volume {mount['name']}: kind not translated to docker")
    return flags


def docker_run(
    documents: list[Manifest], model_store: Path, root: Path, numbers: dict[str, Any]
) -> DockerRun:
    pod = only(documents, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    check(
        "command" not in container and "args" not in container,
        "command/args: not translated to docker",
    )
    environment = container_environment(documents, container)
    declared_port = int(environment["LEUK_PORT"])
    port = free_port()
    # Host networking on a shared machine: bind the loopback address on a free port.
    overrides = {"LEUK_HOST": HOST, "LEUK_PORT": str(port)}
    numbers["env_overridden"] = {name: environment.get(name) for name in overrides}
    environment.update(overrides)
    api_key = secrets.token_urlsafe(24)
    from_secrets = secret_environment(container)
    check(set(from_secrets) <= {AUDIT_URL}, f"Secret variables not translated: {from_secrets}")
    audit_flags: list[str] = []
    if AUDIT_URL in from_secrets:
        # One replica, no database here: the audit trail on SQLite in a writable data dir.
        data_dir = environment["LEUK_DATA_DIR"] = AUDIT_DATA_DIR
        audit_flags = ["--tmpfs", f"{data_dir}:rw,size={AUDIT_TMPFS_BYTES},mode=1777"]
        numbers["audit_database"] = f"sqlite under {data_dir} (tmpfs) instead of the Secret's URL"
    flags = [
        "--network=host",
        "--stop-timeout",
        str(pod["terminationGracePeriodSeconds"]),
        *security_flags(pod, container),
        *resource_flags(container),
        *volume_flags(pod, container, model_store, api_key, root),
        *audit_flags,
        *(arg for name, value in environment.items() for arg in ("--env", f"{name}={value}")),
    ]
    return DockerRun(flags, environment, api_key, port, declared_port)


def probe_ok(port: int, probe: Manifest) -> bool:
    try:
        response = request(port, probe["httpGet"]["path"], timeout=probe.get("timeoutSeconds", 1))
    except (urllib.error.URLError, OSError):
        return False
    return 200 <= response.status < 400  # the kubelet's rule for HTTP probes


def wait_probe(name: str, port: int, probe: Manifest, deadline: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if probe_ok(port, probe):
            return time.monotonic() - started
        if docker("inspect", "-f", "{{.State.Running}}", name) != "true":
            raise SmokeTestFailure(f"container exited before its {what} probe succeeded")
        time.sleep(0.2)
    raise SmokeTestFailure(f"{what} probe {probe['httpGet']['path']} failed for {deadline:.0f}s")


def probe_checks(name: str, container: Manifest, run: DockerRun, numbers: dict[str, Any]) -> None:
    started = time.monotonic()
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    for probe in probes.values():
        declared = port_number(container, probe["httpGet"]["port"])
        # The probe asks the service's declared port inside the pod; here, the free host port.
        check(declared == run.declared_port, f"probe port {declared}, service {run.declared_port}")
    startup = probes["startup"]
    budget = startup.get("initialDelaySeconds", 0) + (
        startup["periodSeconds"] * startup["failureThreshold"]
    )
    live = wait_probe(name, run.port, startup, budget, "startup")
    numbers["start_to_live_seconds"] = round(live, 2)
    ready = wait_probe(name, run.port, probes["readiness"], 180, "readiness") + live
    numbers["start_to_ready_seconds"] = round(time.monotonic() - started, 2)
    check(probe_ok(run.port, probes["liveness"]), "liveness probe failed once ready")
    report(
        f"probes: startup {startup['httpGet']['path']} after {live:.1f}s (budget {budget}s), "
        f"readiness {probes['readiness']['httpGet']['path']} after {ready:.1f}s, liveness ok"
    )


def inside_checks(name: str, pod: Manifest) -> None:
    uid = docker("exec", name, "id", "-u")
    check(uid == str(pod["securityContext"]["runAsUser"]), f"runs as uid {uid}")
    write_root = subprocess.run(
        ["docker", "exec", name, "python", "-c", "open('/srv/written', 'w')"],
        capture_output=True,
        check=False,
    )
    check(write_root.returncode != 0, "the root filesystem is writable")
    write_tmp = subprocess.run(
        ["docker", "exec", name, "python", "-c", "open('/tmp/written', 'w').write('x')"],
        capture_output=True,
        check=False,
    )
    check(write_tmp.returncode == 0, "the emptyDir /tmp is not writable")
    report(f"uid {uid}; root filesystem read-only, /tmp (emptyDir) writable")


def audit_records(name: str, run: DockerRun) -> int:
    """Rows in the SQLite audit trail."""
    path = Path(run.environment["LEUK_DATA_DIR"]) / "audit.sqlite3"
    query = "select count(*) from audit_record"
    code = f"import sqlite3; print(sqlite3.connect({str(path)!r}).execute({query!r}).fetchone()[0])"
    return int(docker("exec", name, "python", "-c", code))


def classify_with_key(name: str, run: DockerRun, numbers: dict[str, Any]) -> None:
    bmp = BMP.read_bytes()
    anonymous = request(run.port, "/v1/classify", bmp, "image/bmp")
    check(anonymous.status == 401, f"without a key: HTTP {anonymous.status}, expected 401")
    check("code" in anonymous.json().get("error", {}), "401 without the error shape")
    keyed = request(run.port, "/v1/classify", bmp, "image/bmp", headers=key_header(run))
    check(keyed.status == 200, f"with the Secret's key: HTTP {keyed.status} {keyed.body[:200]!r}")
    result = keyed.json()["results"][0]
    check_classification(result)
    numbers["bmp_label"] = result["label"]
    numbers["audit_records"] = audit_records(name, run)
    # Committed before its response: the classified request's record and its image's.
    check(numbers["audit_records"] >= 2, f"audit records: {numbers['audit_records']}, not 2")
    report(
        f"no key: 401 {anonymous.json()['error']['code']}; with the Secret's key: "
        f"{BMP.name} label={result['label']} P(all)={result['blast_probability']:.3f}"
    )


def key_header(run: DockerRun) -> dict[str, str]:
    return {"X-API-Key": run.api_key}


def peak_rss_mib(name: str) -> float:
    """VmHWM of the container's main process (the service runs in it; see entrypoint.py)."""
    pid = docker("inspect", "-f", "{{.State.Pid}}", name)
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    check(match is not None, "no VmHWM")
    assert match is not None
    return int(match[1]) / 1024


def load_checks(name: str, run: DockerRun, container: Manifest, numbers: dict[str, Any]) -> None:
    form, content_type = multipart([(f"{i}.bmp", BMP.read_bytes(), "image/bmp") for i in range(16)])
    statuses: list[int] = []
    rss_after_start = peak_rss_mib(name)

    def send(count: int) -> None:
        for _ in range(count):
            response = request(run.port, "/v1/classify", form, content_type, 120, key_header(run))
            statuses.append(response.status)

    senders = [threading.Thread(target=send, args=(10,)) for _ in range(4)]
    started = time.monotonic()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    seconds = time.monotonic() - started
    peak = peak_rss_mib(name)
    limit_mib = memory_bytes(container["resources"]["limits"]["memory"]) / 2**20
    numbers.update(
        rss_after_start_mib=round(rss_after_start),
        peak_rss_under_load_mib=round(peak),
        memory_limit_mib=round(limit_mib),
        load_images_per_second=round(16 * len(statuses) / seconds, 1),
    )
    check(statuses == [200] * 40, f"load: statuses {sorted(set(statuses))}")
    check(peak < limit_mib, f"peak RSS {peak:.0f} MiB reaches the limit {limit_mib:.0f} MiB")
    report(
        f"load: 40 x 16-image requests, 4 at a time: all 200, "
        f"{16 * 40 / seconds:.0f} images/s; RSS {rss_after_start:.0f} MiB after start, "
        f"peak {peak:.0f} MiB under load (limit {limit_mib:.0f} MiB)"
    )


@dataclass
class Outcome:
    started: float
    ended: float
    result: str


def terminate_like_the_kubelet(
    name: str, run: DockerRun, pod: Manifest, container: Manifest, numbers: dict[str, Any]
) -> None:
    """preStop sleep while requests keep coming, then SIGTERM; the grace period bounds it all."""
    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    form, content_type = multipart([(f"{i}.bmp", BMP.read_bytes(), "image/bmp") for i in range(32)])
    outcomes: list[Outcome] = []
    sigterm_sent = threading.Event()

    def send() -> None:
        while not sigterm_sent.is_set():
            started = time.monotonic()
            try:
                status = request(run.port, "/v1/classify", form, content_type, 120, key_header(run))
                result = str(status.status)
            except urllib.error.URLError as error:
                refused = isinstance(error.reason, ConnectionRefusedError)
                result = "refused" if refused else f"broken: {error.reason}"
            except OSError as error:
                result = f"broken: {error}"
            outcomes.append(Outcome(started, time.monotonic(), result))

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    deletion = time.monotonic()  # the pod is deleted: the kubelet runs preStop first
    time.sleep(pre_stop)
    sigterm = time.monotonic()
    docker("kill", "--signal", "TERM", name)
    sigterm_sent.set()
    left = grace - (time.monotonic() - deletion)
    try:
        exit_code = subprocess.run(
            ["docker", "wait", name], capture_output=True, text=True, timeout=left, check=True
        ).stdout.strip()
    except subprocess.TimeoutExpired as timeout:
        raise SmokeTestFailure(f"still running {grace}s after deletion: SIGKILL") from timeout
    stopped = time.monotonic()
    for sender in senders:
        sender.join(timeout=120)
    in_flight = [o for o in outcomes if o.started < sigterm < o.ended]
    lost = [o.result for o in outcomes if o.started < sigterm and o.result != "200"]
    numbers.update(
        pre_stop_seconds=pre_stop,
        sigterm_to_exit_seconds=round(stopped - sigterm, 2),
        deletion_to_exit_seconds=round(stopped - deletion, 2),
        termination_grace_seconds=grace,
        requests_during_termination=len(outcomes),
        in_flight_at_sigterm=len(in_flight),
    )
    report(
        f"termination: preStop {pre_stop}s, SIGTERM -> exit {stopped - sigterm:.1f}s "
        f"(deletion -> exit {stopped - deletion:.1f}s of {grace}s), exit code {exit_code}; "
        f"{len(outcomes)} requests, {len(in_flight)} in flight at SIGTERM, "
        f"outcomes {sorted({o.result for o in outcomes})}"
    )
    check(exit_code == "0", f"exit code {exit_code} after SIGTERM, expected 0")
    check(not lost, f"requests sent before SIGTERM lost: {lost}")
    check(bool(in_flight), "no request was in flight at SIGTERM; nothing was shown")


def run(args: argparse.Namespace) -> dict[str, Any]:
    documents = render(args.overlay)
    problems = audit_database_problems(documents)
    check(not problems, f"the manifests break the shared-audit rule: {problems}")
    pod = only(documents, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = args.image or container["image"]
    numbers: dict[str, Any] = {"overlay": args.overlay, "image": image}
    name = f"leuk-k8s-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="leuk-k8s-") as scratch:
        root = Path(scratch)
        root.chmod(0o755)
        spec = docker_run(documents, args.model_store.resolve(), root, numbers)
        report(f"docker run {' '.join(spec.flags)} {image}")  # the key itself is in a file
        docker("run", "--detach", "--name", name, *spec.flags, image)
        try:
            probe_checks(name, container, spec, numbers)
            inside_checks(name, pod)
            classify_with_key(name, spec, numbers)
            load_checks(name, spec, container, numbers)
            terminate_like_the_kubelet(name, spec, pod, container, numbers)
        except SmokeTestFailure:
            print("\n".join(container_logs(name)[-40:]), file=sys.stderr)
            raise
        finally:
            docker("rm", "--force", name, check_rc=False)
    numbers["summary"] = (
        "start-to-ready {start_to_ready_seconds} s, peak RSS {peak_rss_under_load_mib} MiB of "
        "{memory_limit_mib} MiB, deletion-to-exit {deletion_to_exit_seconds} s of "
        "{termination_grace_seconds} s, nothing lost".format(**numbers)
    )
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", default="production")
    parser.add_argument("--image", help="image to run (default: the Deployment's)")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--results", type=Path, help="write the measured numbers here (JSON)")
    args = parser.parse_args(argv)
    try:
        numbers = run(args)
    except SmokeTestFailure as failure:
        report(f"FAILED: {failure}")
        return 1
    if args.results:
        args.results.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    report("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
