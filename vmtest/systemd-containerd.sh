#!/bin/sh
# Runs inside the systemd VM of vmtest/systemd.sh: containerd with strata's shim and the shim
# option SystemdCgroup = true puts a container in a transient scope that systemd reports as
# delegated and active while it runs, with the limit containerd gave it, and removes it with the
# container. Needs containerd, ctr, containerd-shim-strata-v1, strata and the image archive
# strata-busybox-image.tar in /mnt/host/bin.
set -eu
bin=/mnt/host/bin
dir=$(mktemp -d /tmp/ctd.XXXXXX)
image=docker.io/library/strata-busybox:test
unit=ctr-sd1.scope
fail() { echo "FAIL: $*"; [ -f "$dir/containerd.log" ] && tail -20 "$dir/containerd.log"; exit 1; }

cat > "$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/c.sock"
EOF
containerd --config "$dir/config.toml" > "$dir/containerd.log" 2>&1 &
ctd=$!
cleanup() {
    ctr --address "$dir/c.sock" task kill -s KILL sd1 2>/dev/null || true
    ctr --address "$dir/c.sock" container rm sd1 2>/dev/null || true
    kill "$ctd" 2>/dev/null || true
    wait "$ctd" 2>/dev/null || true
    umount -R "$dir" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
c() { ctr --address "$dir/c.sock" "$@"; }
i=0
until c version >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "containerd did not come up"; sleep 0.1
done
echo "containerd $(c version | awk '/Version/ {print $2; exit}')"
c images import "$bin/strata-busybox-image.tar" >/dev/null

echo 'SystemdCgroup = true' > "$dir/strata.toml"
c run -d --runtime io.containerd.strata.v1 --runtime-config-path "$dir/strata.toml" \
    --cgroup stratatest.slice:ctr:sd1 --memory-limit 67108864 "$image" sd1 sh -c 'sleep 60' \
    || fail "ctr run with SystemdCgroup = true"
state=$(systemctl show -p ActiveState --value "$unit")
delegate=$(systemctl show -p Delegate --value "$unit")
slice=$(systemctl show -p Slice --value "$unit")
memory=$(systemctl show -p MemoryMax --value "$unit")
echo "$unit: ActiveState=$state Delegate=$delegate Slice=$slice MemoryMax=$memory"
[ "$state" = active ] || fail "the scope is $state"
[ "$delegate" = yes ] || fail "the scope is not delegated"
[ "$slice" = stratatest.slice ] || fail "the scope is in $slice"
[ "$memory" = 67108864 ] || fail "MemoryMax is $memory"
pid=$(c task ls | awk '$1 == "sd1" {print $2}')
grep -qx "$pid" "/sys/fs/cgroup/stratatest.slice/$unit/cgroup.procs" || fail "the task $pid is not in the scope"
[ "$(cat "/sys/fs/cgroup/stratatest.slice/$unit/memory.max")" = 67108864 ] || fail "memory.max"

c task kill -s KILL sd1
i=0
while c task ls | grep -q '^sd1 .*RUNNING'; do i=$((i + 1)); [ $i -lt 100 ] || fail "the task did not stop"; sleep 0.1; done
c task rm sd1 >/dev/null 2>&1 || true
c container rm sd1
load=$(systemctl show -p LoadState --value "$unit")
[ "$load" = not-found ] || fail "the scope is still known to systemd ($load)"
[ ! -e "/sys/fs/cgroup/stratatest.slice/$unit" ] || fail "the scope's cgroup is left"
echo "ok: containerd with SystemdCgroup = true ran the task in $unit and removed it"
