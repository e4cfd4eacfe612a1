#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/fuzz_targets for a bounded time each, from its checked-in
# corpus, and prints one line per target: runs, seconds, the corpus it ended with. A crash, a
# failed check or a leak of the fuzzer's limits fails the script and names the input it saved.
#
#   bash fuzz/run.sh 5          # 5 s per target (what .ci/run does; 15 s by default)
#   bash fuzz/run.sh 600        # the long campaign: 10 minutes per target
#   bash fuzz/run.sh 60 layer_stream image_json   # some targets only
#   bash fuzz/run.sh --build-only                  # only build them (CI builds beside its tests)
#
# Builds with nightly (rustup's), in development mode without a sanitizer: the fuzzed parsers are
# safe Rust, so what the fuzzer hunts is panics, failed checks, overflows (debug assertions are
# on) and runaway memory or time; the build then takes two minutes instead of six. The
# checked-in corpora are read, never written: new inputs go to a scratch directory, and an
# input that fails is kept under fuzz/artifacts/ for its regression test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

build_only=0
if [ "${1:-}" = --build-only ]; then build_only=1; shift; fi
seconds=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
rustup toolchain list | grep -q '^nightly' || { echo "fuzz/run.sh: rustup's nightly toolchain is needed" >&2; exit 2; }

flags=(--dev --sanitizer none)
cargo +nightly fuzz build "${flags[@]}"
[ $build_only = 0 ] || exit 0

scratch=$(mktemp -d /tmp/strata-fuzz-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p artifacts
# One target per host core at once (libFuzzer runs one thread); results print in target order.
parallel=${STRATA_FUZZ_JOBS:-$(nproc)}
fuzz_one() {
    local t=$1 log="$scratch/$1.log"
    mkdir -p "$scratch/$t" "artifacts/$t"
    # The scratch corpus comes first: libFuzzer writes new inputs to the first directory only.
    if cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        echo ok > "$scratch/$t.status"
    else
        echo failed > "$scratch/$t.status"
    fi
}
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
    fuzz_one "$t" &
done
wait
total_runs=0
failed=()
for t in "${targets[@]}"; do
    log="$scratch/$t.log"
    if [ "$(cat "$scratch/$t.status" 2>/dev/null)" = ok ]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        corpus=$(find "$scratch/$t" "corpus/$t" -type f | wc -l)
        printf 'fuzz %-20s %9s runs in %s s, corpus %s inputs\n' "$t" "${runs:-?}" "$seconds" "$corpus"
        total_runs=$((total_runs + ${runs:-0}))
    else
        failed+=("$t")
        echo "fuzz $t FAILED; the end of its log:"
        tail -40 "$log"
        ls -1 "artifacts/$t" | sed "s|^|  saved input: fuzz/artifacts/$t/|"
    fi
done
echo "fuzz: ${#targets[@]} targets, $total_runs inputs in all, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
