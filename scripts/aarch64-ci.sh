#!/usr/bin/env bash
# aarch64 part of CI, on the x86_64 host with the kit in ../shared/aarch64
# (cross toolchain chroot, qemu-user, an arm64 QEMU TCG machine "L1" whose
# Linux has a working /dev/kvm, and the small L2 kernel and initramfs):
#
#   1. sets up the cross toolchain (the kit's cross-env.sh setup; idempotent);
#   2. clippy of the whole workspace for aarch64-unknown-linux-gnu, -D warnings;
#   3. unit tests of virtio-devices under qemu-user (without the vhost-user
#      ones: their backends, virtiofsd and qemu-storage-daemon, are host
#      x86_64 programs);
#   4. one L1 boot that runs the unit tests of arch, devices and vmm on a
#      real aarch64 kernel (seccomp and KVM do not work under qemu-user), then
#      boots the L2 kernel with chv on L1's KVM (scripts/aarch64/l1-tests.sh)
#      and checks every case's marker: devices (2 vCPUs, blk, net, rng,
#      console, PL031), the MSI-frame fallback of a GIC without ITS (blk,
#      net, snapshot/restore), the API with disk hot-add, vsock both ways,
#      snapshot/restore, PSCI reset, and live migration between two chv.
#
# Environment: AARCH64_KIT (default ../shared/aarch64), DEBIAN_MIRROR (default
# the host's apt mirror, else deb.debian.org), L1_TIMEOUT (default 900 s).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
KIT=${AARCH64_KIT:-$(realpath "$repo/../shared/aarch64")}
[ -x "$KIT/cross-env.sh" ] || { echo "aarch64-ci: no kit at $KIT" >&2; exit 1; }
# cross-env.sh needs a mirror even when the chroot exists: it exits (status
# 2, silently) when the host has no /etc/apt/sources.list to read one from.
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR=$(grep -h -o -E 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/* 2>/dev/null | head -n 1 | tr -d ' ' | sed 's:/$::' || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
export DEBIAN_MIRROR
export CARGO_TERM_PROGRESS_WHEN=never
X() { "$KIT/cross-env.sh" "$@"; }
t0=$SECONDS
step() { echo "aarch64-ci: $1 (at $((SECONDS - t0)) s)"; }

X setup
step "toolchain ready"

X cargo clippy --workspace --all-targets -- -D warnings
step "clippy clean"

X cargo test -p virtio-devices --lib -- --test-threads=2 --skip vhost_user
step "virtio-devices unit tests passed under qemu-user"

# What L1 sees as /mnt/host: chv, chv-remote, the L2 files, the test
# binaries and the case script.
share=$repo/target/aarch64-l1-share
rm -rf "$share" && mkdir -p "$share/unit"
X cargo build --bin chv --bin chv-remote
no_run=$(X cargo test -p arch -p devices -p vmm --lib --no-run 2>&1) || { echo "$no_run" >&2; exit 1; }
echo "$no_run"
built=$(echo "$no_run" | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p')
for t in $built; do
    name=$(basename "$t"); cp "$t" "$share/unit/${name%%-*}"
done
[ "$(ls "$share/unit" | wc -l)" = 3 ] || { echo "aarch64-ci: test binaries not found" >&2; exit 1; }
out=target/aarch64-chroot/aarch64-unknown-linux-gnu/debug
cp "$out/chv" "$out/chv-remote" scripts/aarch64/l1-tests.sh "$share/"
xz -dc "$KIT/l2-Image.xz" > "$share/l2-Image"
cp "$KIT/l2-initramfs.cpio" "$share/"
# The AF_VSOCK tool of the Linux tests, static for aarch64: the L2 guest
# gets it as a second initramfs archive (/vsock), L1 runs it as the host
# side of the hybrid vsock socket.
X run aarch64-linux-gnu-gcc -static -O2 -pthread -o "$share/vsock" tests/guest-linux/vsock.c
cpio_dir=$(mktemp -d)
cp "$share/vsock" "$cpio_dir/"
(cd "$cpio_dir" && echo vsock | cpio -o -H newc --quiet) > "$share/vsock.cpio"
rm -rf "$cpio_dir"
step "binaries built"

log=$repo/target/aarch64-l1.log
set +e
timeout "${L1_TIMEOUT:-900}" "$KIT/run-l1.sh" --share "$share" \
    --cmd "sh /mnt/host/l1-tests.sh" < /dev/null > "$log" 2>&1
rc=$?
set -e
tr -d '\r' < "$log" | grep -E '^(ARM-|test result|GUEST-CMD-EXIT=)' || true
if [ $rc != 0 ] || ! tr -d '\r' < "$log" | grep -qx 'ARM-TESTS PASS'; then
    echo "aarch64-ci: FAIL (L1 rc=$rc); full log in $log" >&2
    tail -n 80 "$log" >&2
    exit 1
fi
step "L1 unit tests and chv boots passed"
