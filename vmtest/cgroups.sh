#!/usr/bin/env bash
# Builds the strata-cgroups tests as static binaries (in a target directory of their own, so
# other builds in the tree are not disturbed) and runs them as root inside the VM of run.sh,
# with STRATA_VMTEST=1 so the controller tests (memory, pids, cpu, io, update, stats) run on
# the pure cgroup2 there. Extra arguments go to run.sh (for example --machine q35).
#   vmtest/cgroups.sh [run.sh OPTIONS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${STRATA_VMTEST_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/strata-vmtest}}
cache=${cache:-$repo/.cache/vmtest}
mkdir -p "$cache"

target=x86_64-unknown-linux-gnu
build_started=$(date +%s)
# The unit tests (lib) and tests/live.rs; tests/fuzz_corpus.rs reads the repository's corpus and
# runs on the host with the rest of `cargo test`.
json=$(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' cargo test -p strata-cgroups --lib --test live --no-run \
    --target "$target" --target-dir "$cache/target" --message-format=json-render-diagnostics)
echo "vmtest: static test build took $(( $(date +%s) - build_started ))s" >&2

stage=$(mktemp -d "$cache/cgroups-bins.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cmds=()
# One executable per test target: the unit tests (lib) and tests/live.rs.
while read -r exe; do
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    [ "$name" = cgroups ] && name=cgroups-unit
    [ "$name" = live ] && name=cgroups-live
    cp "$exe" "$stage/$name"
    if ! file "$stage/$name" | grep -Eq 'static(-pie)? linked'; then
        echo "vmtest: $exe is not statically linked" >&2; exit 2
    fi
    cmds+=("$name --test-threads=2")
done < <(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
[ ${#cmds[@]} -gt 0 ] || { echo "vmtest: no test executables were built" >&2; exit 2; }

bins=()
for f in "$stage"/*; do bins+=(--bin "$f"); done
"$here/run.sh" "${bins[@]}" --env STRATA_VMTEST=1 "$@" -- "${cmds[@]}" \
    'if ls /sys/fs/cgroup | grep strata-test; then echo "test cgroups left behind"; exit 1; fi; echo "no test cgroup left"'
