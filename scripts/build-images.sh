#!/usr/bin/env bash
# Build conveyor/busybox:local from Debian's busybox-static, without any registry.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${BUSYBOX_IMAGE:-conveyor/busybox:local}
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "error: Debian's busybox-static is not installed (apt-get install busybox-static)" >&2
  exit 1
fi
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "==> image $IMAGE is present"
  exit 0
fi
echo "==> building $IMAGE from Debian's busybox-static (FROM scratch, no pull)"
cp /bin/busybox images/busybox/busybox
docker build -q -t "$IMAGE" images/busybox >/dev/null
echo "==> built $IMAGE"
