#!/usr/bin/env bash
# Runs the engine's container tests that need real cgroup v2 controllers (shim/tests/vm.rs)
# inside the VM of run.sh: builds the static `strata` and `containerd-shim-strata-v1` binaries
# (the shim beside strata, for `strata shim run`) and the static test binary in the VM cache's
# target directory, then runs the tests with --include-ignored.
#   vmtest/containers.sh [run.sh OPTIONS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${STRATA_VMTEST_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/strata-vmtest}}
cache=${cache:-$repo/.cache/vmtest}
mkdir -p "$cache"

target=x86_64-unknown-linux-gnu
export RUSTFLAGS='-C target-feature=+crt-static'
export CARGO_PROFILE_DEV_DEBUG=0
started=$(date +%s)
json=$(cd "$repo" && cargo test -p strata-shim --test vm --no-run --locked \
    --target "$target" --target-dir "$cache/target" --message-format=json-render-diagnostics)
(cd "$repo" && cargo build -p strata-shim --bin strata --bin containerd-shim-strata-v1 --locked --target "$target" --target-dir "$cache/target" -q)
echo "vmtest: static builds took $(( $(date +%s) - started ))s" >&2

test_bin=$(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/vm-' | head -1)
strata_bin="$cache/target/$target/debug/strata"
shim_bin="$cache/target/$target/debug/containerd-shim-strata-v1"
for f in "$test_bin" "$strata_bin" "$shim_bin"; do
    if ! file "$f" | grep -Eq 'static(-pie)? linked'; then
        echo "vmtest: $f is not statically linked" >&2; exit 2
    fi
done
stage=$(mktemp -d "$cache/containers-bins.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$test_bin" "$stage/strata-vm-tests"
cp "$strata_bin" "$stage/strata"
cp "$shim_bin" "$stage/containerd-shim-strata-v1"

"$here/run.sh" --bin "$stage/strata-vm-tests" --bin "$stage/strata" --bin "$stage/containerd-shim-strata-v1" --env STRATA_BIN=/mnt/host/bin/strata "$@" -- \
    'strata-vm-tests --include-ignored --test-threads=1' \
    'if [ -n "$(ls -d /sys/fs/cgroup/strata/*/ 2>/dev/null)" ]; then echo "container cgroups left behind"; exit 1; fi; echo "no container cgroup left"'
