#!/usr/bin/env bash
# The reliability campaign in long mode, in one command (as root, after `bash .ci/run` has
# installed what the tests need):
#
#   bash bench/reliability.sh            # soak 1000/1000/1000 + 250 pods, every fault, fuzz 600 s a target
#   bash bench/reliability.sh 60         # the same with 60 s per fuzz target
#
# 1. the long soak (`strata-bench`'s `soak`: lifecycles through the CLI and through containerd,
#    execs, pods; a census of what was left behind);
# 2. the fault suites: kill -9 at each step of `create` (CLI, helper, stage 1, init), of the shim
#    at each call through containerd, of imports and pulls at nine moments; a full store during
#    import and pull; a read-only store; a full state root; containerd killed while a container
#    writes; the concurrency suite;
# 3. every fuzz target for the given time (`fuzz/run.sh`).
#
# It ends with one line per part and exits non-zero when any part failed; the whole output is
# also kept in target/reliability.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzz_seconds=${1:-600}
log=target/reliability.log
mkdir -p target
: >"$log"
if [ -z "${LIBSECCOMP_LIB_PATH:-}" ]; then
    # The seccomp differential tests link trixie's libseccomp 2.6 statically, as .ci/run does.
    libseccomp=$(sh .ci/debian-fetch.sh deb trixie libseccomp-dev libseccomp2) || exit 2
    archive=$(find "$libseccomp/root/usr/lib" -name libseccomp.a | head -1)
    export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="${archive%/*}"
fi

summary=()
failed=0
part() {
    local name=$1
    shift
    echo "==> $name: $*" | tee -a "$log"
    local start=$SECONDS
    if "$@" 2>&1 | tee -a "$log"; then
        summary+=("$name: passed in $((SECONDS - start)) s")
    else
        summary+=("$name: FAILED after $((SECONDS - start)) s (see $log)")
        failed=1
    fi
}

cargo build --release -p strata-shim >>"$log" 2>&1 || { echo "the release build failed: see $log" >&2; exit 2; }
part "soak" cargo run --release -p strata-bench --bin soak
part "faults and concurrency (CLI, helper, stage 1, init, import, pull, full or read-only store, full state root)" \
    cargo test --release -p strata-shim --test faults --test concurrency
part "faults through containerd (kill -9 of the shim at each call and of its helper at each step; containerd killed while a container writes)" \
    cargo test --release -p strata-shim --test containerd -- kill_9 killed_shim containerd_kill_9 restart
part "fuzzing ($fuzz_seconds s per target)" bash fuzz/run.sh "$fuzz_seconds"

echo
printf '%s\n' "${summary[@]}" | tee -a "$log"
grep -E '^soak: |^fuzz ' "$log" | sed 's/^/  /'
exit "$failed"
