#!/usr/bin/env bash
# Start a Docker engine for this machine if none answers, and wait until it does.
#
# For machines like this project's CI: root, no engine running, no bridge networking wanted.
# The engine is started with no default bridge and no iptables rules, so containers run
# with --network=host and every connection stays on 127.0.0.1.
#
# Prints the engine's pid file when it started one (empty when an engine was already up),
# so the caller can stop exactly what it started:  kill "$(cat "$pid_file")"
#
# Environment: DOCKERD_LOG (default /var/tmp/dockerd.log), DOCKERD_PID_FILE
# (default /var/tmp/dockerd.pid), DOCKERD_TIMEOUT seconds (default 60).
set -euo pipefail

log_file=${DOCKERD_LOG:-/var/tmp/dockerd.log}
pid_file=${DOCKERD_PID_FILE:-/var/tmp/dockerd.pid}
timeout=${DOCKERD_TIMEOUT:-60}

if docker info >/dev/null 2>&1; then
    echo "[dockerd] an engine is already running" >&2
    exit 0
fi
command -v dockerd >/dev/null || { echo "[dockerd] dockerd not installed" >&2; exit 2; }

echo "[dockerd] starting (log: $log_file)" >&2
# setsid: the engine must not share the caller's process group (a Ctrl-C there).
setsid dockerd --bridge=none --iptables=false --ip6tables=false \
    --pidfile "$pid_file.engine" >"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"

for _ in $(seq 1 "$timeout"); do
    if docker info >/dev/null 2>&1; then
        echo "[dockerd] ready (pid $(cat "$pid_file"))" >&2
        echo "$pid_file"
        exit 0
    fi
    if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        echo "[dockerd] engine exited:" >&2
        tail -n 20 "$log_file" >&2
        exit 1
    fi
    sleep 1
done
echo "[dockerd] not ready after ${timeout}s:" >&2
tail -n 20 "$log_file" >&2
exit 1
