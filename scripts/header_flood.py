"""Resident memory of a running server while clients send request heads that never end.

    .venv/bin/python -m scripts.header_flood --port 8000 --pid PID [--mb 80] [--connections 4]

Each connection sends ``GET /health/live HTTP/1.1\\r\\nHost: x\\r\\nX: `` and then ``--mb``
MB without a CRLF, stopping early if the server closes it; prints the server's VmRSS before
and after and the first answer. A measurement of the HTTP edge, not a test.
"""

from __future__ import annotations

import argparse
import socket
import time


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def flood(port: int, megabytes: int) -> tuple[socket.socket, int, bytes]:
    """One connection's unterminated head: (socket, MB written, the server's answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX: ")
    chunk, sent = b"a" * (1 << 20), 0
    try:
        for _ in range(megabytes):
            sock.sendall(chunk)
            sent += 1
    except OSError:
        pass  # the server closed the connection
    try:
        answer = sock.recv(400)
    except OSError as exc:
        answer = repr(exc).encode()
    return sock, sent, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--mb", type=int, default=80)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    before = rss_mib(args.pid)
    results = [flood(args.port, args.mb) for _ in range(args.connections)]
    time.sleep(1)
    after = rss_mib(args.pid)
    print(f"RSS {before} -> {after} MiB after {args.connections} x {args.mb} MB heads")
    _, sent, answer = results[0]
    print(f"first connection: {sent} MB written, answer {answer!r}")
    for sock, _, _ in results:
        sock.close()


if __name__ == "__main__":
    main()
