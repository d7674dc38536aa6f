#!/usr/bin/env bash
# Builds the connector image with podman on a machine without a Docker engine or an image registry: podman
# builds the Dockerfile on a Python base image made from Debian packages. Idempotent; needs root on Debian
# bookworm (apt-get, debootstrap, rootful podman):
#   1. installs podman, runc and debootstrap from Debian if any is missing;
#   2. makes the base image localhost/debian-python:3.11 (Debian's Python 3.11, by debootstrap) if it is missing;
#   3. builds localhost/destination-heap-analytics:dev from this repo's Dockerfile (layer cache: fast when
#      nothing changed).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), BASE_IMAGE, IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-python:3.11}"
IMAGE="${IMAGE:-localhost/destination-heap-analytics:dev}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup-container: $*" >&2; }
elapsed() { echo "$(($(date +%s) - $1)) s"; }

# One run at a time: the test files that need the image (the container tests, the CDK's standard image tests)
# may start this at once in two pytest-xdist workers, and two apt-get installs or builds of one tag collide.
exec 9>"${TMPDIR:-/tmp}/destination-heap-analytics-setup-container.lock"
flock 9

missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install ${missing[*]}: needs root and apt-get" >&2
    exit 2
  fi
  started=$(date +%s)
  say "installing ${missing[*]} from Debian"
  # An unrelated third-party source that cannot be reached must not stop the install: apt-get install
  # below fails loudly if Debian's own lists are not there.
  apt-get update -qq || say "apt-get update reported errors (continuing with the lists it got)"
  apt-get install -y -qq podman runc debootstrap >/dev/null
  say "installed in $(elapsed "$started")"
fi

if ! podman image exists "$BASE_IMAGE"; then
  started=$(date +%s)
  say "building the base image $BASE_IMAGE with debootstrap (Debian bookworm, python3)"
  work=$(mktemp -d /var/tmp/debian-python.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/log/*
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
  say "base image built in $(elapsed "$started")"
fi

started=$(date +%s)
say "building $IMAGE"
# chroot isolation: the default OCI runtime cannot create cgroups here. The host's CA bundle is mounted so pip
# inside the build reaches the package index the same way the host does.
podman build --quiet --isolation=chroot --network=host -v /etc/ssl/certs:/etc/ssl/certs:ro \
  --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >/dev/null
say "image built in $(elapsed "$started")"
