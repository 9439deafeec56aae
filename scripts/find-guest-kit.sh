#!/usr/bin/env bash
# Prints the folder of a guest kit (vmlinux + initramfs.cpio) for chv to boot:
# $CHV_GUEST_DIR, else ../shared/guest beside the repo, else target/guest-kit,
# which it builds from Debian packages when it is missing (about 15 minutes).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
for d in "${CHV_GUEST_DIR:-}" "$repo/../shared/guest" "$repo/target/guest-kit"; do
  if [ -n "$d" ] && [ -f "$d/vmlinux" ] && [ -f "$d/initramfs.cpio" ]; then
    (cd "$d" && pwd)
    exit 0
  fi
done
echo "no guest kit found; building one in $repo/target/guest-kit (about 15 minutes)" >&2
"$repo/scripts/guest-kit/build.sh" "$repo/target/guest-kit" >&2
echo "$repo/target/guest-kit"
