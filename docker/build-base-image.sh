#!/usr/bin/env bash
# Build a local stand-in for the Dockerfiles' base image from Debian packages.
#
# Why: hospital networks (and this project's CI) often cannot reach Docker Hub, so
# `FROM python:3.11.14-slim-bookworm` cannot be pulled. This script debootstraps a Debian
# bookworm root with Python 3.11 from a Debian mirror, makes it look like the official image
# where the Dockerfiles depend on it (/usr/local/bin/python3, a working `python3 -m venv`),
# trusts the CA certificates this build host trusts, and `docker import`s it under the very
# name the Dockerfiles' FROM uses. `docker build` and `docker compose up` then work offline.
#
# An image of that name that this script did not make (a real pull) is never replaced.
#
# Environment (all optional):
#   BASE_IMAGE       tag to create (default: the ARG BASE_IMAGE default in ./Dockerfile)
#   DEBIAN_MIRROR    bookworm mirror (default: the host's apt mirror, else deb.debian.org)
#   SECURITY_MIRROR  bookworm-security mirror (default: host's, else deb.debian.org)
#   EXTRA_CA_DIR     extra CA certificates (*.crt) to trust inside the image
#                    (default: /usr/local/share/ca-certificates, Debian's place for them)
#   REBUILD=1        rebuild even if this script's stand-in already exists
#   WORK_DIR         where to debootstrap (default: a temporary folder under /var/tmp)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stand_in_label="org.leukaemia-cell-service.base-stand-in"

log() { printf '[base-image] %s\n' "$*" >&2; }

default_base_image() {
    sed -n 's/^ARG BASE_IMAGE=\(.*\)$/\1/p' "$repo_root/Dockerfile" | head -n 1
}

# First apt source of the host whose path ends in the given component (e.g. /debian).
host_mirror() {
    local suffix=$1
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null \
        | grep -oE '(https?|file)://[^ ]+' \
        | grep -E "${suffix}/?$" \
        | head -n 1 || true
}

BASE_IMAGE=${BASE_IMAGE:-$(default_base_image)}
if [[ -z "$BASE_IMAGE" ]]; then
    log "cannot find 'ARG BASE_IMAGE=' in $repo_root/Dockerfile; set BASE_IMAGE"
    exit 2
fi
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(host_mirror /debian)}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirror /debian-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    made_here=$(docker image inspect --format "{{ index .Config.Labels \"$stand_in_label\" }}" \
        "$BASE_IMAGE" 2>/dev/null || true)
    if [[ -z "$made_here" || "$made_here" == "<no value>" ]]; then
        log "$BASE_IMAGE exists and was not made by this script (a real pull?): keeping it"
        exit 0
    fi
    if [[ "${REBUILD:-0}" != "1" ]]; then
        log "$BASE_IMAGE stand-in already present (built $made_here); REBUILD=1 to redo"
        exit 0
    fi
fi

for tool in debootstrap docker tar chroot; do
    command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 2; }
done
if [[ $(id -u) -ne 0 ]]; then
    log "debootstrap needs root"
    exit 2
fi

work_dir=${WORK_DIR:-$(mktemp -d /var/tmp/base-image.XXXXXX)}
rootfs="$work_dir/rootfs"
cleanup() {
    # Never leave bind mounts behind, then drop the tree.
    umount "$rootfs/proc" 2>/dev/null || true
    if [[ -z "${WORK_DIR:-}" ]]; then rm -rf "$work_dir"; fi
}
trap cleanup EXIT

started=$(date +%s)
log "debootstrap bookworm from $DEBIAN_MIRROR into $rootfs"
debootstrap --variant=minbase --components=main \
    --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work_dir/debootstrap.log" 2>&1 || {
    tail -n 30 "$work_dir/debootstrap.log" >&2
    exit 1
}

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

log "applying bookworm-updates and bookworm-security"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount -t proc proc "$rootfs/proc"
if ! { in_root apt-get -qq update && in_root apt-get -qq -y upgrade; } >"$work_dir/apt.log" 2>&1
then
    tail -n 30 "$work_dir/apt.log" >&2
    exit 1
fi
umount "$rootfs/proc"

log "trusting the build host's extra CA certificates from $EXTRA_CA_DIR"
shopt -s nullglob
extra_cas=("$EXTRA_CA_DIR"/*.crt)
shopt -u nullglob
if ((${#extra_cas[@]})); then
    cp "${extra_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
fi
in_root update-ca-certificates >"$work_dir/ca.log" 2>&1 || { cat "$work_dir/ca.log" >&2; exit 1; }
log "  ${#extra_cas[@]} extra certificate(s) added"

# Where the official python image keeps its interpreter: Dockerfiles that call
# /usr/local/bin/python3 (and venvs made from it) work on both images.
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
# pip (in venvs too) reads this: trust the system store, which now holds the extra CAs.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"

# Slim it the way the official -slim images are slim.
in_root apt-get -qq clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
: >"$rootfs/etc/resolv.conf"

built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "importing as $BASE_IMAGE"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $stand_in_label=$built_at" \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null

docker run --rm --network=host "$BASE_IMAGE" python3 -c \
    'import ssl, sys, venv; print("stand-in python", sys.version.split()[0])' >&2
log "done in $(($(date +%s) - started)) s: $BASE_IMAGE ($(docker image inspect \
    --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
