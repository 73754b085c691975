"""Docker HEALTHCHECK: exit 0 only when the service reports ready.

Asks /health/ready on the loopback address inside the container (or the host, under host
networking), so it needs no curl in the image. The port comes from the same environment
variable the service reads.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORT_VARIABLE = "LEUK_PORT"
DEFAULT_PORT = 8000
TIMEOUT_SECONDS = 2.0


def main() -> int:
    port = int(os.environ.get(PORT_VARIABLE, DEFAULT_PORT))
    url = f"http://127.0.0.1:{port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"not ready: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
