"""Run the README's curl examples against a running service and write their real output.

    make serve &                      # or a container on 127.0.0.1:8000
    python scripts/readme_examples.py [--base-url http://127.0.0.1:8000] [--check]

Replaces the block between ``<!-- CURL-EXAMPLES:BEGIN -->`` and ``<!-- CURL-EXAMPLES:END -->``
in README.md with each command and its (abridged) output, so the examples are what the
service really answers, with the committed model and real C-NMC images. ``--check`` only
runs them and fails if any answers with an unexpected status.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BEGIN, END = "<!-- CURL-EXAMPLES:BEGIN -->", "<!-- CURL-EXAMPLES:END -->"
URL = "127.0.0.1:8000"
MAX_LIST = 4
MAX_LINES = 40

# (title, curl arguments after `curl -s`, expected status, most output lines shown).
# {model} and {version} are filled from /health/ready; $BMP etc. are the README's variables.
EXAMPLES: list[tuple[str, str, int, int]] = [
    ("Liveness", "{url}/health/live", 200, MAX_LINES),
    ("Readiness (what orchestrators poll)", "{url}/health/ready", 200, MAX_LINES),
    ("Health summary", "{url}/health", 200, MAX_LINES),
    ("Classify one image, raw body (the format lab software sends)",
     "-X POST --data-binary @$BMP -H 'Content-Type: image/bmp' {url}/v1/classify", 200, MAX_LINES),
    ("Classify several images, multipart field `files`",
     "-F files=@$PNG_ALL -F files=@$PNG_HEM {url}/v1/classify", 200, MAX_LINES),
    ("Not a segmented single cell: flagged out of distribution",
     "-F files=@$OOD {url}/v1/classify", 200, MAX_LINES),
    ("Classify with a named model / one version",
     "-F files=@$PNG_HEM {url}/v1/models/{model}/versions/{version}/classify", 200, MAX_LINES),
    ("Errors have one shape and a stable code",
     "-X POST --data-binary 'not an image' -H 'Content-Type: image/bmp' {url}/v1/classify",
     422, MAX_LINES),
    ("The default model's card: labels, threshold, held-out metrics, data, hashes",
     "{url}/model-info", 200, 60),
    ("Every model and version in the store", "{url}/v1/models", 200, MAX_LINES),
    ("One model, one version", "{url}/v1/models/{model}/versions/{version}", 200, 12),
    ("Prometheus metrics", "{url}/metrics", 200, MAX_LINES),
]  # fmt: skip

FILES = {
    "$BMP": "tests/data/cnmc_bmp/UID_51_101_1_all.bmp",
    "$PNG_ALL": "tests/data/cnmc_real/training_data/fold_1/all/UID_46_10_1_all.png",
    "$PNG_HEM": "tests/data/cnmc_real/training_data/fold_1/hem/UID_H14_10_1_hem.png",
    "$OOD": "tests/data/ood/smear-fields/WBC-Benign-058.jpg",
}


def abridge(value: Any, depth: int = 0) -> Any:
    """Keep the shape readable: long lists and deep objects are cut, marked with '...'."""
    if isinstance(value, list):
        head = [abridge(v, depth + 1) for v in value[:MAX_LIST]]
        return head + (["..."] if len(value) > MAX_LIST else [])
    if isinstance(value, dict):
        if depth >= 4:
            return "{...}"
        return {k: abridge(v, depth + 1) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


def to_json(value: Any, indent: int = 0) -> str:
    """Indented JSON where objects and lists of plain values stay on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values()):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [f"{inner}{to_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)


def render_output(body: str, path: str, max_lines: int) -> str:
    if path.endswith("/metrics"):
        keep = [
            line
            for line in body.splitlines()
            if line.startswith(("leuk_images_classified_total", "leuk_http_requests_total"))
        ]
        return "\n".join(keep[:12] + (["..."] if len(keep) > 12 else []))
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body[:2000]
    text = to_json(abridge(data))
    lines = text.splitlines()
    return "\n".join(lines[:max_lines] + (["  ..."] if len(lines) > max_lines else []))


def run_curl(args: str) -> tuple[int, str]:
    for variable, path in FILES.items():
        args = args.replace(variable, str(REPO / path))
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *shlex.split(args)],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-url", default=f"http://{URL}")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    base = args.base_url.removeprefix("http://")
    _, ready_body = run_curl(f"{base}/health/ready")
    ready = json.loads(ready_body)
    blocks: list[str] = []
    failed = False
    for title, template, expected, max_lines in EXAMPLES:
        shown = template.format(url=URL, model=ready["model"], version=ready["version"])
        status, body = run_curl(shown.replace(URL, base))
        if status != expected:
            failed = True
            print(f"unexpected HTTP {status} (want {expected}): curl -s {shown}", file=sys.stderr)
        output = render_output(body, shown, max_lines)
        blocks.append(f"{title}:\n\n```sh\ncurl -s {shown}\n```\n```\n{output}\n```\n")
    if failed or args.check:
        return 1 if failed else 0
    readme = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(readme):
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    replacement = BEGIN + "\n" + "\n".join(blocks) + END
    README.write_text(pattern.sub(lambda _: replacement, readme), encoding="utf-8")
    print(f"README.md: {len(blocks)} examples written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
