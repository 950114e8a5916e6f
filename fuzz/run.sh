#!/usr/bin/env bash
# Run every fuzz target for SECONDS seconds each (default 60), starting from the committed
# seed corpus in fuzz/corpus/<target>/. Exits non-zero as soon as a target finds a crash; the
# failing input is kept in fuzz/artifacts/<target>/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> fuzz/artifacts/<target>/crash-...`).
#
# New inputs found during the run go to a scratch directory, not into the committed corpus,
# which stays small (the seeds from real captured traffic, URL examples and past crashes;
# regenerate it with fuzz/seed_corpus.py).
#
# Why RUSTC_BOOTSTRAP=1: cargo fuzz builds with nightly-only compiler flags
# (-Zsanitizer=address, the SanitizerCoverage -Cllvm-args and --cfg fuzzing under -Z options).
# Only a stable toolchain is installed here; RUSTC_BOOTSTRAP=1 lets stable rustc accept those
# flags (the AddressSanitizer runtime ships with the stable x86_64 Linux toolchain). It is set
# for the fuzz build only, never for the project's own build.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

TARGETS=(transport_url request_body reply_body)
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

start=$(date +%s)
cargo fuzz build -O
echo "build: $(( $(date +%s) - start )) s"

for target in "${TARGETS[@]}"; do
    mkdir -p "$SCRATCH/$target"
    echo "fuzzing $target for ${SECONDS_PER_TARGET} s"
    # -max_len bounds inputs (bodies up to 64 KiB); -timeout flags any input taking > 10 s.
    set +e
    cargo fuzz run -O "$target" "$SCRATCH/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -print_final_stats=1 >"$SCRATCH/$target.log" 2>&1
    status=$?
    set -e
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$SCRATCH/$target.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$SCRATCH/$target.log" >&2
        echo "fuzz target $target FAILED (exit $status); input in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
done
echo "all fuzz targets ran ${SECONDS_PER_TARGET} s each without a crash (total $(( $(date +%s) - start )) s)"
