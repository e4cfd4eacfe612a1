#!/usr/bin/env bash
# Runs the CRI suite (vmtest/cri: containerd's CRI v1 driven as kubelet drives it) in one boot
# of run.sh's pure cgroup v2 VM, for containerd 1.7 (trixie) and 2.1 (forky), each with the
# runc handler (the reference) and the strata handler (containerd-shim-strata-v1), and on strata's
# snapshotter (`strata snapshotter`) for a few scenarios, and prints a
# table of scenario x combination. With --bench it runs the pod start/teardown bench
# (vmtest/cri/benches/pods.rs: strata against runc on one containerd per version) instead, with
# release builds.
#   vmtest/cri.sh [--bench] [run.sh OPTIONS]
# Environment:
#   STRATA_CRI_STRATA_MUST_PASS  0: strata failures are only reported (default 1: they fail
#                                the run, as runc's always do)
#   STRATA_CRI_SUITES            Debian suites of containerd (default "trixie forky")
#   STRATA_CRI_HANDLERS          handlers (default "runc strata")
#   STRATA_CRI_RUNC_SUITES       suites whose containerd runs the runc handler, the reference
#                                (default: every suite; CI: "forky", to keep within its time)
#   STRATA_CRI_SLOW_HANDLERS     handlers that run the slow scenarios (20x3 pods, containerd
#                                restart) (default "strata")
#   STRATA_CRI_SLOW_SUITES       suites whose containerd runs them (default "forky": once)
#   STRATA_CRI_SANDBOX_SUITES    suites (containerd 2.x) that also run the strata-sandbox handler:
#                                strata's shim makes the pods through containerd's sandbox API
#                                (sandboxer = shim) (default "forky"; "" for none)
#   STRATA_CRI_SNAPSHOTTER_RUNS  suite:handler pairs that also run with strata's snapshotter as
#                                every pod's snapshotter (`strata snapshotter`, a proxy plugin),
#                                the scenarios of SNAPSHOTTER_SCENARIOS below (default
#                                "trixie:strata forky:strata forky:runc"; "" for none)
#   STRATA_CRI_FILTER            scenario name filters passed to the suite (default: all)
#   STRATA_CRI_LOG_LEVEL         containerd's log level (default info)
#   STRATA_CRI_TARGET_DIR        cargo target directory (default <repo>/.cache/cri-target; with
#                                CI=true, containers.sh's <cache>/target)
#   STRATA_CRI_STRATA_REV        build strata and its shim from this git revision (exported with
#                                git archive) instead of the work tree, e.g. HEAD while the work
#                                tree is mid-change
# Results, containerd's logs and each combination's output stay in <cache>/cri-share/results.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${STRATA_VMTEST_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/strata-vmtest}}
cache=${cache:-$repo/.cache/vmtest}
# Its own target directory by default, so a developer's other builds are never blocked on
# its lock; in CI (run one after the other) containers.sh's, whose static strata it reuses.
if [ "${CI:-}" = true ]; then default_target=$cache/target; else default_target=$repo/.cache/cri-target; fi
target_dir=${STRATA_CRI_TARGET_DIR:-$default_target}
must_pass=${STRATA_CRI_STRATA_MUST_PASS:-1}
suites=${STRATA_CRI_SUITES:-trixie forky}
handlers=${STRATA_CRI_HANDLERS:-runc strata}
log() { echo "cri: $*" >&2; }
bench=0
if [ "${1:-}" = --bench ]; then bench=1; shift; fi
mkdir -p "$cache"
started=$(date +%s)

# ---- host packages: protoc (k8s-cri's build), the CNI plugins, runc and its libseccomp -------
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/runc ] || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- static builds ---------------------------------------------------------------------------
target=x86_64-unknown-linux-gnu
export RUSTFLAGS='-C target-feature=+crt-static'
export CARGO_PROFILE_DEV_DEBUG=0
if [ $bench = 1 ]; then
    profile=(--release) out=$target_dir/$target/release
    json=$(cd "$repo" && cargo bench -p strata-cri-tests --bench pods --no-run --locked \
        --target "$target" --target-dir "$target_dir" --message-format=json-render-diagnostics)
else
    profile=() out=$target_dir/$target/debug
    json=$(cd "$repo" && cargo test -p strata-cri-tests --test cri --no-run --locked \
        --target "$target" --target-dir "$target_dir" --message-format=json-render-diagnostics)
fi
(cd "$repo" && cargo build "${profile[@]}" -p strata-cri-tests --bin strata-pause --locked --target "$target" \
    --target-dir "$target_dir" -q)
src=$repo
if [ -n "${STRATA_CRI_STRATA_REV:-}" ]; then
    src=$cache/cri-src
    rm -rf "$src" && mkdir -p "$src"
    git -C "$repo" archive "$STRATA_CRI_STRATA_REV" | tar -x -C "$src"
    log "strata from $(git -C "$repo" rev-parse --short "$STRATA_CRI_STRATA_REV") ($STRATA_CRI_STRATA_REV)"
fi
(cd "$src" && cargo build "${profile[@]}" -p strata-shim --bin strata --bin containerd-shim-strata-v1 --locked \
    --target "$target" --target-dir "$target_dir" -q)
(cd "$src" && cargo build "${profile[@]}" -p strata-snapshotter --locked --target "$target" \
    --target-dir "$target_dir" -q)
log "static builds took $(( $(date +%s) - started ))s"
test_bin=$(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep -o '"executable":"[^"]*"' \
    | cut -d'"' -f4 | grep -E '/deps/(cri|pods)-' | head -1)
for f in "$test_bin" "$out/strata" "$out/containerd-shim-strata-v1" "$out/strata-snapshotter" "$out/strata-pause"; do
    file "$f" | grep -Eq 'static(-pie)? linked' || { log "$f is not statically linked"; exit 2; }
done

# ---- the share: binaries, glibc for containerd/runc/CNI (dynamic), images ---------------------
share=$cache/cri-share
rm -rf "$share"
mkdir -p "$share"/{bin,lib,opt/strata,opt/runc,opt/cni,images,results}
cp "$test_bin" "$share/bin/cri-tests"
cp "$out/strata" "$out/containerd-shim-strata-v1" "$out/strata-snapshotter" "$share/opt/strata/"
cp /usr/sbin/runc "$share/opt/runc/"
cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback "$share/opt/cni/"
cp -L /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libseccomp.so.2 "$share/lib/"
declare -A version=()
for s in $suites; do
    dir=$(sh "$repo/shim/tests/containerd/fetch-containerd.sh" "$s")
    mkdir -p "$share/opt/containerd-$s"
    cp "$dir/containerd" "$dir/ctr" "$dir/containerd-shim-runc-v2" "$share/opt/containerd-$s/"
    version[$s]=$("$dir/containerd" --version | awk '{print $3}' | cut -d. -f1,2)
done
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/pause/dev" "$rootfs/pause/proc" "$rootfs/pause/sys" "$rootfs/pause/etc"
cp "$out/strata-pause" "$rootfs/pause/pause"
sh "$here/cri/make-image.sh" "$share/images/pause.tar" docker.io/library/strata-pause:cri "$rootfs/pause" '["/pause"]'
mkdir -p "$rootfs/busybox"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$rootfs/busybox/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/busybox/bin/$applet" ] || ln -s busybox "$rootfs/busybox/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/busybox/etc/passwd"
echo 'root:x:0:' > "$rootfs/busybox/etc/group"
chmod 1777 "$rootfs/busybox/tmp"
sh "$here/cri/make-image.sh" "$share/images/busybox.tar" docker.io/library/strata-busybox:cri "$rootfs/busybox" '["sh"]'

# ---- the VM's commands: setup, then one per combination ---------------------------------------
setup='set -e
mkdir -p /lib64 /lib/x86_64-linux-gnu /var/lib /opt
cp lib/ld-linux-x86-64.so.2 /lib64/
cp lib/libc.so.6 lib/libseccomp.so.2 /lib/x86_64-linux-gnu/
cp -a opt/. /opt/
[ -e /var/run ] || ln -s /run /var/run
: > /etc/resolv.conf
echo "127.0.0.1 localhost" > /etc/hosts
hostname cri-vm
ip link set lo up
for d in /opt/containerd-*; do $d/containerd --version; done
/opt/runc/runc --version | head -1'
cmds=("$setup")
combos=()
# What each combination took in CI's guests (TCG, one vCPU), in seconds: the guests are
# balanced by it (longest first, each to the least loaded guest).
costs=()
if [ $bench = 1 ]; then
    for s in $suites; do
        v=${version[$s]}
        cmds+=("mkdir -p results/bench-$v
STRATA_CRI=1 STRATA_CRI_CONTAINERD=/opt/containerd-$s/containerd STRATA_CRI_HANDLER=strata \\
STRATA_CRI_DIR=/run/cri-bench-$v STRATA_CRI_PATH=/opt/containerd-$s:/opt/strata:/opt/runc:/bin \\
STRATA_CRI_CNI_BIN=/opt/cni STRATA_CRI_IMAGES=/mnt/host/images STRATA_CRI_LOG=/mnt/host/results/bench-$v/containerd.log \\
STRATA_BENCH_ROUNDS=${STRATA_BENCH_ROUNDS:-15} STRATA_CRI_BENCH_HANDLERS='${STRATA_CRI_BENCH_HANDLERS:-strata runc}' \\
cri-tests > results/bench-$v/out 2>&1
rc=\$?
grep -E '^pods:' results/bench-$v/out | cut -c1-300
exit \$rc")
    done
    vm_rc=0
    "$here/run.sh" --share "$share" --cpus 1 --mem 3072 --modules "bridge veth" --timeout 1500 "$@" -- "${cmds[@]}" \
        || vm_rc=$?
    echo
    cat "$share"/results/bench-*/out 2>/dev/null | grep -E '^(pods|POD-BENCH)' || true
    echo "results and containerd's logs: $share/results (total $(( $(date +%s) - started ))s)"
    exit $vm_rc
fi
for s in $suites; do
    hs=$handlers
    case " ${STRATA_CRI_RUNC_SUITES-$suites} " in *" $s "*) ;; *) hs=${hs//runc/} ;; esac
    case " $handlers " in *" strata "*)
        case " ${STRATA_CRI_SANDBOX_SUITES-forky} " in *" $s "*) hs="$hs strata-sandbox" ;; esac ;;
    esac
    for h in $hs; do
        combo=${version[$s]}-$h
        combos+=("$combo")
        tolerate=0 slow=0
        case " ${STRATA_CRI_SLOW_HANDLERS-strata} " in *" $h "*)
            case " ${STRATA_CRI_SLOW_SUITES-forky} " in *" $s "*) slow=1 ;; esac ;;
        esac
        case $h in strata*) [ "$must_pass" != 1 ] && tolerate=1 ;; esac
        case $h in runc) cost=190 ;; strata-sandbox) cost=100 ;; *) cost=85 ;; esac
        costs+=($(( cost + slow * 170 )))
        cmds+=("mkdir -p results/$combo
STRATA_CRI=1 STRATA_CRI_CONTAINERD=/opt/containerd-$s/containerd STRATA_CRI_HANDLER=$h \\
STRATA_CRI_DIR=/run/cri-$combo STRATA_CRI_PATH=/opt/containerd-$s:/opt/strata:/opt/runc:/bin \\
STRATA_CRI_CNI_BIN=/opt/cni STRATA_CRI_IMAGES=/mnt/host/images STRATA_CRI_LOG=/mnt/host/results/$combo/containerd.log \\
STRATA_CRI_SLOW=$slow STRATA_CRI_LOG_LEVEL=${STRATA_CRI_LOG_LEVEL:-info} \\
cri-tests ${STRATA_CRI_FILTER:-} > results/$combo/out 2>&1
rc=\$?
echo \$rc > results/$combo/rc
grep -E '^(CRI-RESULT|cri:)' results/$combo/out | cut -c1-300
[ \$rc = 0 ] || [ $tolerate = 1 ]")
    done
done
# The same node with strata's snapshotter under every pod: the scenarios that make pods and
# containers, the snapshotter's own (the root an overlay of its store, the files pooled), and
# the leak check (which lists its snapshots).
snapshotter_scenarios="a_sandbox_lifecycle c_exit_codes e_exec_sync f_logs n_strata_snapshotter m_no_leaks"
for run in ${STRATA_CRI_SNAPSHOTTER_RUNS-trixie:strata forky:strata forky:runc}; do
    s=${run%%:*} h=${run#*:}
    case " $suites " in *" $s "*) ;; *) continue ;; esac
    case " $handlers " in *" $h "*) ;; *) continue ;; esac
    combo=${version[$s]}-$h-snap
    combos+=("$combo")
    tolerate=0
    [ "$must_pass" != 1 ] && tolerate=1
    case $h in runc) costs+=(110) ;; *) costs+=(50) ;; esac
    cmds+=("mkdir -p results/$combo
STRATA_CRI=1 STRATA_CRI_CONTAINERD=/opt/containerd-$s/containerd STRATA_CRI_HANDLER=$h STRATA_CRI_SNAPSHOTTER=strata \\
STRATA_CRI_DIR=/run/cri-$combo STRATA_CRI_PATH=/opt/containerd-$s:/opt/strata:/opt/runc:/bin \\
STRATA_CRI_CNI_BIN=/opt/cni STRATA_CRI_IMAGES=/mnt/host/images STRATA_CRI_LOG=/mnt/host/results/$combo/containerd.log \\
STRATA_CRI_SLOW=0 STRATA_CRI_LOG_LEVEL=${STRATA_CRI_LOG_LEVEL:-info} \\
cri-tests ${STRATA_CRI_FILTER:-$snapshotter_scenarios} > results/$combo/out 2>&1
rc=\$?
echo \$rc > results/$combo/rc
grep -E '^(CRI-RESULT|cri:)' results/$combo/out | cut -c1-300
[ \$rc = 0 ] || [ $tolerate = 1 ]")
done

# The combinations run in STRATA_CRI_VMS guests at once (default 2, one per host core), each
# with one vCPU (see run.sh: a multi-vCPU TCG guest either runs on one host thread or risks
# an int3 oops at boot), the longest first, each to the guest with the least work so far. Each
# guest has its own share (hard links of this one) and writes its results back here.
nvm=${STRATA_CRI_VMS:-2}
[ "$nvm" -ge 1 ] || nvm=1
[ "$nvm" -le ${#combos[@]} ] || nvm=${#combos[@]}
load=() guest=()
for v in $(seq 0 $((nvm - 1))); do load[v]=0; done
for k in $(for i in "${!costs[@]}"; do echo "${costs[$i]} $i"; done | sort -k1,1rn -k2,2n | cut -d' ' -f2); do
    best=0
    for v in $(seq 1 $((nvm - 1))); do
        if [ "${load[v]}" -lt "${load[best]}" ]; then best=$v; fi
    done
    guest[k]=$best
    load[best]=$(( load[best] + costs[k] ))
done
vm_rc=0
pids=()
for v in $(seq 0 $((nvm - 1))); do
    vshare=$cache/cri-share-vm$v
    rm -rf "$vshare" && mkdir -p "$vshare"
    cp -al "$share"/. "$vshare"/
    vcmds=("${cmds[0]}")
    for k in "${!combos[@]}"; do
        [ "${guest[k]}" = "$v" ] && vcmds+=("${cmds[$((k + 1))]}")
    done
    echo "cri: guest $v: about ${load[v]} s of combinations" >&2
    "$here/run.sh" --share "$vshare" --cpus 1 --mem 3072 --modules "bridge veth" --timeout 1500 "$@" \
        -- "${vcmds[@]}" > "$cache/cri-vm$v.log" 2>&1 &
    pids+=($!)
done
for v in $(seq 0 $((nvm - 1))); do
    wait "${pids[$v]}" || vm_rc=$?
    sed "s/^/[vm$v] /" "$cache/cri-vm$v.log"
    cp -r "$cache/cri-share-vm$v/results/." "$share/results/"
    rm -rf "$cache/cri-share-vm$v"
done

# ---- the report -------------------------------------------------------------------------------
echo
printf '%-24s' scenario
for c in "${combos[@]}"; do printf '%-22s' "$c"; done
echo
scenarios=$(cat "$share"/results/*/out 2>/dev/null | awk '$1 == "CRI-RESULT" {print $2}' | sort -u)
for sc in $scenarios; do
    printf '%-24s' "$sc"
    for c in "${combos[@]}"; do
        r=$(awk -v s="$sc" '$1 == "CRI-RESULT" && $2 == s {print $3 " " $4}' "$share/results/$c/out" 2>/dev/null)
        printf '%-22s' "${r:--}"
    done
    echo
done
status=0
for c in "${combos[@]}"; do
    rc=$(cat "$share/results/$c/rc" 2>/dev/null || echo none)
    summary=$(grep -E '^cri: [0-9]+ passed' "$share/results/$c/out" 2>/dev/null | sed 's/^cri: //' || true)
    echo "$c: exit $rc${summary:+, $summary}"
    grep -E '^CRI-RESULT .* FAILED' "$share/results/$c/out" 2>/dev/null | cut -d' ' -f2,5- | cut -c1-400 | sed 's/^/    /' || true
    grep -E '^cri: cannot run' "$share/results/$c/out" 2>/dev/null | sed 's/^/    /' || true
    if [ "$rc" != 0 ]; then
        case "$c" in
            *-strata|*-strata-sandbox|*-snap) [ "$must_pass" = 1 ] && status=1 ;;
            *) status=1 ;;
        esac
    fi
done
echo "results and containerd's logs: $share/results (total $(( $(date +%s) - started ))s)"
[ $vm_rc = 0 ] || [ $status != 0 ] || { log "the VM run failed (run.sh exit $vm_rc)"; status=1; }
exit $status
