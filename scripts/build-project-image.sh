#!/usr/bin/env bash
# Build the Conveyor image (conveyor:local) on a machine without any image registry.
#
#   1. rootfs image   debootstrap --variant=minbase bookworm  ->  docker import
#   2. base image     rootfs + python3 python3-venv python3-pip ca-certificates (apt),
#                     plus this host's extra CA certificates (pip sits behind a TLS proxy)
#   3. project image  ./Dockerfile with BASE_IMAGE=<base image>, GIT_COMMIT, VERSION
#
# Idempotent: each image carries the sha256 of its inputs in the label
# io.conveyor.inputs-hash; an image whose label matches is not rebuilt, so a second run
# with unchanged inputs takes seconds. FORCE=1 rebuilds the base and project images
# (the rootfs only when it is missing or REBUILD_ROOTFS=1).
#
# Environment (all optional):
#   IMAGE            project image tag          (default conveyor:local)
#   BASE_IMAGE       Python base image tag      (default conveyor/python-base:bookworm)
#   ROOTFS_IMAGE     debootstrap rootfs tag     (default conveyor/debian-rootfs:bookworm)
#   DEBIAN_MIRROR    mirror for debootstrap     (default http://deb.debian.org/debian)
#   EXTRA_CA_DIR     host CA certificates       (default /usr/local/share/ca-certificates)
#   FORCE=1, REBUILD_ROOTFS=1
#
# Needs: root (debootstrap), a running Docker engine, git.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-conveyor:local}"
BASE_IMAGE="${BASE_IMAGE:-conveyor/python-base:bookworm}"
ROOTFS_IMAGE="${ROOTFS_IMAGE:-conveyor/debian-rootfs:bookworm}"
SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
FORCE="${FORCE:-0}"
REBUILD_ROOTFS="${REBUILD_ROOTFS:-0}"
HASH_LABEL=io.conveyor.inputs-hash

# The paths the project image is built from: the allow-list in .dockerignore plus the
# Dockerfile itself. Keep in step with .dockerignore.
PROJECT_INPUTS=(Dockerfile .dockerignore pyproject.toml README.md LICENSE MANIFEST.in scheduler runner schemas)

label_of() {  # label_of IMAGE LABEL -> value, or nothing when the image is missing
  docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

start=$(date +%s)

# --- preconditions -----------------------------------------------------------------------
command -v docker >/dev/null || die "docker CLI not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers (start dockerd first)"
command -v git >/dev/null || die "git not found"

# --- 1. rootfs image -----------------------------------------------------------------------
if [[ -n "$(image_id "$ROOTFS_IMAGE")" && "$REBUILD_ROOTFS" != 1 ]]; then
  log "rootfs: $ROOTFS_IMAGE exists, keeping it (REBUILD_ROOTFS=1 to redo debootstrap)"
else
  [[ $(id -u) == 0 ]] || die "debootstrap needs root"
  if ! command -v debootstrap >/dev/null; then
    log "rootfs: debootstrap is missing, installing it with apt-get"
    aptlog="$(mktemp)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends debootstrap; } >"$aptlog" 2>&1 \
      || { tail -n 20 "$aptlog" >&2; die "apt-get install debootstrap failed"; }
    rm -f "$aptlog"
  fi
  rootfs="$(mktemp -d /var/tmp/conveyor-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "rootfs: debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR (about a minute)"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  # Trim what a container never needs before the import.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  log "rootfs: docker import -> $ROOTFS_IMAGE"
  tar -C "$rootfs" -c . | docker import \
      --change 'CMD ["/bin/bash"]' \
      --change "LABEL io.conveyor.debootstrap-suite=$SUITE io.conveyor.debootstrap-mirror=$DEBIAN_MIRROR" \
      - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# --- 2. Python base image ------------------------------------------------------------------
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/certs"
ncerts=0
if [[ -d "$EXTRA_CA_DIR" ]]; then
  while IFS= read -r -d '' crt; do
    cp "$crt" "$ctx/certs/"
    ncerts=$((ncerts + 1))
  done < <(find "$EXTRA_CA_DIR" -type f -name '*.crt' -print0 | sort -z)
fi
cat >"$ctx/Dockerfile" <<EOF
FROM $ROOTFS_IMAGE
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# Extra CA certificates of the build host: pip in the image goes through a TLS proxy.
COPY certs/ /usr/local/share/ca-certificates/
RUN printf '%s\n' \\
      'deb $DEBIAN_MIRROR $SUITE main' \\
      'deb $DEBIAN_MIRROR $SUITE-updates main' \\
      'deb http://deb.debian.org/debian-security $SUITE-security main' \\
      > /etc/apt/sources.list \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \\
 && update-ca-certificates \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
ENV PIP_DEFAULT_TIMEOUT=20 PIP_RETRIES=10
CMD ["python3"]
EOF
base_hash="$( { cat "$ctx/Dockerfile"; image_id "$ROOTFS_IMAGE"; \
               find "$ctx/certs" -type f -print0 | sort -z | xargs -0r sha256sum | sed "s|$ctx/||"; } \
             | sha256sum | cut -c1-64)"
if [[ "$FORCE" != 1 && "$(label_of "$BASE_IMAGE" "$HASH_LABEL")" == "$base_hash" ]]; then
  log "base: $BASE_IMAGE is up to date (inputs ${base_hash:0:12})"
else
  log "base: building $BASE_IMAGE (apt: python3 python3-venv python3-pip ca-certificates; $ncerts extra CA cert(s) from $EXTRA_CA_DIR)"
  echo "LABEL $HASH_LABEL=$base_hash" >>"$ctx/Dockerfile"
  buildlog="$(mktemp)"
  if ! docker build --tag "$BASE_IMAGE" "$ctx" >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "base image build failed (full log: $buildlog)"
  fi
  rm -f "$buildlog"
  log "base: $(docker run --rm --network none "$BASE_IMAGE" python3 --version)"
fi
rm -rf "$ctx"
trap - EXIT

# --- 3. project image ----------------------------------------------------------------------
cd "$REPO_ROOT"
git_commit="$(git rev-parse HEAD)"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)"
[[ -n "$version" ]] || die "no version in pyproject.toml"
existing=()
for p in "${PROJECT_INPUTS[@]}"; do [[ -e "$p" ]] && existing+=("$p"); done
project_hash="$( { printf 'base=%s commit=%s version=%s\n' "$(image_id "$BASE_IMAGE")" "$git_commit" "$version"; \
                  find "${existing[@]}" -type f \
                       -not -path '*/__pycache__/*' -not -name '*.py[co]' -not -path '*.egg-info/*' \
                       -print0 | sort -z | xargs -0r sha256sum; } \
                | sha256sum | cut -c1-64)"
if [[ "$FORCE" != 1 && "$(label_of "$IMAGE" "$HASH_LABEL")" == "$project_hash" ]]; then
  log "project: $IMAGE is up to date (commit ${git_commit:0:12}, inputs ${project_hash:0:12})"
else
  log "project: building $IMAGE from ./Dockerfile (BASE_IMAGE=$BASE_IMAGE GIT_COMMIT=${git_commit:0:12} VERSION=$version)"
  if [[ -n "$(git status --porcelain -- "${existing[@]}" 2>/dev/null)" ]]; then
    log "project: note: the work tree differs from $git_commit; the image holds the work tree"
  fi
  buildlog="$(mktemp)"
  if ! docker build \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "GIT_COMMIT=$git_commit" \
        --build-arg "VERSION=$version" \
        --build-arg "INPUTS_HASH=$project_hash" \
        --tag "$IMAGE" . >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "project image build failed (full log: $buildlog)"
  fi
  rm -f "$buildlog"
fi

log "done in $(( $(date +%s) - start ))s: $IMAGE ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
log "run it: docker run --rm $IMAGE --help"
