#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/, replays the saved regression
# inputs (fuzz/regressions/<target>/) and the seeds (fuzz/seeds/<target>/),
# then fuzzes each target for a few seconds. Exits non-zero on any build
# failure or crash. Needs nightly Rust; installs cargo-fuzz if missing.
#
# Usage: scripts/fuzz-smoke.sh [seconds-per-target]   (default 5)
set -euo pipefail

secs="${1:-5}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
cd "$fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

echo "fuzz-smoke: building targets"
cargo +nightly fuzz build

targets="$(cargo +nightly fuzz list)"
# Corpora of this run live in a throw-away directory, not fuzz/corpus.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Scratch files of the targets go there too (a killed run leaves them).
export CHV_FUZZ_SCRATCH="$work"

fail=0
for t in $targets; do
    # Replay known crashers and seeds: each must run cleanly. libFuzzer
    # takes either files or corpus dirs, so copy them into one dir.
    replay="$work/replay-$t"
    mkdir -p "$replay"
    for d in "regressions/$t" "seeds/$t"; do
        if [ -d "$d" ]; then
            find "$d" -maxdepth 1 -type f -exec cp {} "$replay/" \;
        fi
    done
    if [ -n "$(ls -A "$replay")" ]; then
        echo "fuzz-smoke: $t: replaying $(ls "$replay" | wc -l) saved inputs"
        if ! cargo +nightly fuzz run "$t" "$replay" -- -runs=0 -timeout=20 \
            -rss_limit_mb=2048 -artifact_prefix="$work/"; then
            echo "fuzz-smoke: $t: a saved input crashes" >&2
            trap - EXIT
            fail=1
            continue
        fi
    fi
    echo "fuzz-smoke: $t: fuzzing for ${secs}s"
    mkdir -p "$work/$t"
    seeds=()
    if [ -d "seeds/$t" ]; then
        seeds+=("seeds/$t")
    fi
    if ! cargo +nightly fuzz run "$t" "$work/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$work/"; then
        echo "fuzz-smoke: $t: crash found; inputs in $work (kept)" >&2
        trap - EXIT
        fail=1
    fi
done

if [ "$fail" -ne 0 ]; then
    echo "fuzz-smoke: FAILED" >&2
    exit 1
fi
echo "fuzz-smoke: all targets ok"
