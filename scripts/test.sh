#!/usr/bin/env bash
# Runs every test: unit tests, the tiny test guest under real KVM, and the
# real Linux boots of the guest kit (found or built by find-guest-kit.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CHV_GUEST_DIR=${CHV_GUEST_DIR:-$(scripts/find-guest-kit.sh)}
cargo build -p vmm --bin chv
export CHV_BIN="$repo/target/debug/chv"
cargo test --workspace --no-fail-fast -- --test-threads="${CHV_TEST_THREADS:-2}"
# The benchmark scripts' own parsing and bookkeeping (no VM, a second).
python3 scripts/bench/test_bench.py
# Density guard rail: ten clones of one snapshot started at once must each
# answer their first serial line, and no chv may die or panic. No timing
# asserts (about a minute: one template boot, then the clones).
python3 scripts/bench/density.py --quick --timeout 180 --json target/density-quick.json
