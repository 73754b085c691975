"""What each answer format costs: the same image through the native JSON, FHIR, HL7 v2 and
the Open Inference Protocol, one service process, one run, wrk at the same concurrency.

    python -m bench.formats                 # c=32, 3 rounds of 3 s per format, committed store
    python -m bench.formats --concurrency 32 --duration 3 --rounds 3 --out /tmp/formats.json

Each measured run follows 1 s of unmeasured load and a drain; the formats take turns, and
each one's median round is reported. Also reports the size of the FHIR bundle and the HL7
message answering a 64-image request.
"""

from __future__ import annotations

import argparse
import itertools
import json
import struct
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.load import RequestBody, run_wrk, summarise
from bench.run import DEFAULT_IMAGE, REPO, service_server
from bench.servers import running

SIZE_IMAGES = sorted((REPO / "tests" / "data" / "cnmc_real").rglob("*.png"))
FORMATS = {
    "json": ("/v1/classify", ()),
    "fhir": ("/v1/classify", (("Accept", "application/fhir+json"),)),
    "hl7v2": ("/v1/classify", (("Accept", "application/hl7-v2"),)),
    "oip": ("/v2/models/{model}/infer", ()),
}


def oip_body(image: bytes) -> tuple[bytes, int]:
    """A binary-tensor-data infer request with one BYTES element (as tritonclient sends)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_file",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + struct.pack("<I", len(image)) + image, len(header)


def bodies(image: Path, workdir: Path) -> dict[str, RequestBody]:
    data = image.read_bytes()
    raw = workdir / "body.bmp"
    raw.write_bytes(data)
    oip, header_length = oip_body(data)
    oip_path = workdir / "body.oip"
    oip_path.write_bytes(oip)
    found = {
        name: RequestBody("raw", raw, "image/bmp", headers)
        for name, (_, headers) in FORMATS.items()
        if name != "oip"
    }
    found["oip"] = RequestBody(
        "raw",
        oip_path,
        "application/octet-stream",
        (("Inference-Header-Content-Length", str(header_length)),),
    )
    return found


def report_sizes(base_url: str, count: int = 64) -> dict[str, int]:
    """Bytes of the FHIR bundle and the HL7 message answering one ``count``-image request
    (the committed C-NMC PNGs in turn: 64 BMPs would pass the upload limit)."""
    boundary = "formats" + uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        'filename="cell.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    images = itertools.islice(itertools.cycle(SIZE_IMAGES), count)
    body = b"".join(head + image.read_bytes() + b"\r\n" for image in images)
    body += f"--{boundary}--\r\n".encode()
    sizes = {}
    for name, accept in (("fhir", "application/fhir+json"), ("hl7v2", "application/hl7-v2")):
        request = urllib.request.Request(
            base_url + "/v1/classify",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": accept},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            sizes[f"{name}_{count}_images_bytes"] = len(response.read())
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds each")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per format")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = service_server(workdir, args.model_store.resolve())
        server.start()
        with running(server):
            model = json.loads(server.get_text("/health/ready") or "{}")["model"]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FORMATS}
            # Formats take turns, round after round, so a change in the machine's other load
            # hits them all alike; each format's median round is reported.
            for _ in range(args.rounds):
                for name, body in bodies(args.image, workdir).items():
                    url = server.base_url + FORMATS[name][0].format(model=model)
                    run_wrk(url, body, args.concurrency, 1.0, 0)  # warm-up, not measured
                    server.wait_idle()
                    cpu_before = server.cpu_seconds()
                    summary = summarise(
                        run_wrk(url, body, args.concurrency, args.duration, 0), args.concurrency
                    )
                    cpu = server.cpu_seconds() - cpu_before  # during the measured window
                    server.wait_idle()  # the requests still queued when wrk stopped
                    summary["cpu_ms_per_image"] = 1000 * cpu / max(1, summary["ok"])
                    runs[name].append(summary)
                    print(
                        f"{name} {summary['images_per_s']:.1f} images/s, "
                        f"{summary['cpu_ms_per_image']:.2f} server CPU ms/image",
                        flush=True,
                    )
            for name, summaries in runs.items():
                ranked = sorted(summaries, key=lambda s: s["images_per_s"])
                median = ranked[len(ranked) // 2]
                cpu_ranked = sorted(s["cpu_ms_per_image"] for s in summaries)
                results[name] = {
                    "images_per_s": round(median["images_per_s"], 1),
                    # Server CPU during the window per image answered in it: much less
                    # sensitive than images/s to how busy the rest of the machine is.
                    "cpu_ms_per_image": round(cpu_ranked[len(cpu_ranked) // 2], 2),
                    "rounds_images_per_s": [round(s["images_per_s"], 1) for s in summaries],
                    "p50_ms": round(median["latency_ms"]["p50"], 1),
                    "p99_ms": round(median["latency_ms"]["p99"], 1),
                    "errors": sum(s["errors"] for s in summaries),
                }
            results.update(report_sizes(server.base_url))
    native = results["json"]["images_per_s"]
    for name in FORMATS:
        share = results[name]["images_per_s"] / native if native else 0.0
        results[name]["vs_json"] = round(share, 3)
        row = results[name]
        print(
            f"{name:6s} {row['images_per_s']:7.1f} images/s  {share:6.1%} of JSON  "
            f"CPU {row['cpu_ms_per_image']:5.2f} ms/image  "
            f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}"
        )
    for key, value in results.items():
        if key.endswith("_bytes"):
            print(f"{key}: {value}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
