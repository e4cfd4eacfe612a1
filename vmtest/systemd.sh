#!/usr/bin/env bash
# Runs the systemd cgroup driver's tests in the VM of run.sh booted with systemd as PID 1
# (run.sh --systemd): the CLI's (shim/tests/systemd.rs, with --include-ignored) and containerd's
# with the shim option SystemdCgroup = true (vmtest/systemd-containerd.sh, containerd 1.7 from
# Debian trixie); then checks that no scope of theirs is left. Builds the static `strata`, shim
# and test binaries in the VM cache's target directory.
#   vmtest/systemd.sh [run.sh OPTIONS]
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
json=$(cd "$repo" && cargo test -p strata-shim --test systemd --no-run --locked \
    --target "$target" --target-dir "$cache/target" --message-format=json-render-diagnostics)
(cd "$repo" && cargo build -p strata-shim --bin strata --bin containerd-shim-strata-v1 --locked --target "$target" --target-dir "$cache/target" -q)
echo "vmtest: static builds took $(( $(date +%s) - started ))s" >&2

test_bin=$(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/systemd-' | head -1)
strata_bin="$cache/target/$target/debug/strata"
shim_bin="$cache/target/$target/debug/containerd-shim-strata-v1"
for f in "$test_bin" "$strata_bin" "$shim_bin"; do
    if ! file "$f" | grep -Eq 'static(-pie)? linked'; then
        echo "vmtest: $f is not statically linked" >&2; exit 2
    fi
done
stage=$(mktemp -d "$cache/systemd-bins.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$test_bin" "$stage/strata-systemd-tests"
cp "$strata_bin" "$stage/strata"
cp "$shim_bin" "$stage/containerd-shim-strata-v1"
ctd=$(sh "$repo/shim/tests/containerd/fetch-containerd.sh" trixie)
cp "$ctd/containerd" "$ctd/ctr" "$stage/"
sh "$repo/shim/tests/containerd/make-image.sh" "$stage/strata-busybox-image.tar" docker.io/library/strata-busybox:test
cp "$here/systemd-containerd.sh" "$stage/systemd-containerd.sh"

bins=()
for f in "$stage"/*; do bins+=(--bin "$f"); done
"$here/run.sh" --systemd "${bins[@]}" --env STRATA_BIN=/mnt/host/bin/strata "$@" -- \
    'strata-systemd-tests --include-ignored --test-threads=1' \
    'sh /mnt/host/bin/systemd-containerd.sh' \
    'left=$(systemctl list-units --all --no-legend "strata-*.scope" "ctr-*.scope" | grep . || true); [ -z "$left" ] || { echo "scopes left: $left"; exit 1; }; [ -z "$(ls -d /sys/fs/cgroup/system.slice/strata-*.scope /sys/fs/cgroup/stratatest.slice/*.scope 2>/dev/null)" ] || { echo "scope cgroups left"; exit 1; }; echo "no scope left"'
