#!/usr/bin/env bash
# aarch64 boot benchmark: chv against the kit's anchor VMM (QEMU -accel kvm)
# in the same arm64 L1 machine and the same run. Builds chv for aarch64
# (release, static, no LTO so the build stays short), boots L1 with the
# kit's QEMU (run-l1.sh --qemu), where scripts/aarch64/l1-bench.sh boots the
# kit's small L2 kernel to power-off with each VMM in turn, N times each;
# prints every run, the medians and the chv/QEMU ratio. Absolute times mean
# little under TCG: compare the ratio.
#
# Usage: scripts/bench/aarch64_boot.sh [N]   (default 5)
# Environment: AARCH64_KIT (default ../shared/aarch64), DEBIAN_MIRROR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
N=${1:-5}
KIT=${AARCH64_KIT:-$(realpath "$repo/../shared/aarch64")}
[ -x "$KIT/run-l1.sh" ] || { echo "aarch64_boot: no kit at $KIT" >&2; exit 1; }
export DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CARGO_TERM_PROGRESS_WHEN=never

RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    "$KIT/cross-env.sh" cargo build --release --bin chv
share=$repo/target/aarch64-bench-share
rm -rf "$share" && mkdir -p "$share"
cp target/aarch64-chroot/aarch64-unknown-linux-gnu/release/chv scripts/aarch64/l1-bench.sh "$share/"
xz -dc "$KIT/l2-Image.xz" > "$share/l2-Image"
cp "$KIT/l2-initramfs.cpio" "$share/"

log=$repo/target/aarch64-bench.log
"$KIT/run-l1.sh" --qemu --share "$share" --cmd "sh /mnt/host/l1-bench.sh $N" \
    < /dev/null > "$log" 2>&1
tr -d '\r' < "$log" | grep '^BENCH ' | tee "$log.runs"
grep -q 'no GUEST-POWEROFF' "$log.runs" && { echo "aarch64_boot: a run failed; see $log" >&2; exit 1; }
median() { grep "^BENCH $1 " "$log.runs" | awk '{print $3}' | sort -n |
    awk '{v[NR] = $1} END {if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
c=$(median chv) && q=$(median qemu) || { echo "aarch64_boot: no runs; see $log" >&2; exit 1; }
echo "aarch64 boot to power-off in L1 (median of $N): chv $c s, QEMU $q s," \
    "chv/QEMU $(awk -v c="$c" -v q="$q" 'BEGIN {printf "%.2f", c / q}')"
