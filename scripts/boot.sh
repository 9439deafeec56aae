#!/usr/bin/env bash
# Builds chv and boots the guest kit on the serial console.
# Usage: scripts/boot.sh [CPUS] [MEMORY] [-- guest command]
# e.g.   scripts/boot.sh 2 128M -- cat /proc/cpuinfo
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cpus=${1:-1}; mem=${2:-128M}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
cmd=${*:-}
cargo build --release --manifest-path "$repo/Cargo.toml" -p vmm --bin chv
kit=$("$repo/scripts/find-guest-kit.sh")
cmdline="console=ttyS0 quiet panic=-1"
[ -n "$cmd" ] && cmdline="$cmdline guest_cmd=\"$cmd\""
[ -z "$cmd" ] && cmdline="$cmdline guest_shell=1"
exec "$repo/target/release/chv" --kernel "$kit/vmlinux" --initramfs "$kit/initramfs.cpio" \
  --cmdline "$cmdline" --cpus boot="$cpus" --memory size="$mem" --serial tty --console off
