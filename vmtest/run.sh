#!/usr/bin/env bash
# Boots Debian's linux-image-6.12 kernel in qemu with a busybox initramfs and a pure cgroup2,
# shares a directory over 9p, runs the given commands inside as root, and exits 0 only if every
# command did. Generic: the strata engine's VM tests use it the same way the cgroups tests do.
#
#   vmtest/run.sh [OPTIONS] [--] COMMAND...
#
# Each COMMAND is a shell command line run in the VM in order, with the share as working
# directory (/mnt/host) and /mnt/host/bin first on PATH. Binaries must be statically linked.
#   --bin FILE       copy FILE into the share's bin/ (repeatable)
#   --share DIR      share DIR (default: a fresh directory under the cache, removed afterwards)
#   --env K=V        export K=V inside the VM (repeatable)
#   --timeout S      seconds per boot attempt before the VM is killed (default 900)
#   --boot-timeout S seconds for the VM to reach the commands, else it is killed (default 45)
#   --retries N      boot attempts when the VM hangs before the commands, or its kernel crashes (default 3)
#   --mem MB         guest memory (default 2048)      --cpus N   guest vCPUs (default 2)
#   --modules "M..." more kernel modules to load in the guest (with their dependencies)
#   --machine M      microvm (default; uncompressed vmlinux, PVH) or q35 (bzImage)
#   --accel A        auto (default: KVM if a probe boot works, cached), kvm or tcg
#   --systemd        boot systemd (the host's, with its libraries) as PID 1; the commands run
#                    in a service once it is up (for the systemd cgroup driver's tests)
#   --quiet          do not echo the serial console (it is always kept in the run log)
# Environment: STRATA_VMTEST_CACHE (default $XDG_CACHE_HOME/strata-vmtest, else
# <repo>/.cache/vmtest), STRATA_VMTEST_KERNEL (a linux-image-6.12.*-amd64 package name).
# Output: the serial log path, one line per command, and "N passed, M failed".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${STRATA_VMTEST_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/strata-vmtest}}
cache=${cache:-$repo/.cache/vmtest}

bins=() envs=() share="" timeout=900 boot_timeout=45 retries=3 mem=2048 cpus=2 machine=microvm accel=auto quiet=0
extra_modules="" systemd=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bins+=("$2"); shift 2 ;;
        --share) share=$2; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --boot-timeout) boot_timeout=$2; shift 2 ;;
        --retries) retries=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --modules) extra_modules="$extra_modules $2"; shift 2 ;;
        --machine) machine=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --quiet) quiet=1; shift ;;
        --systemd) systemd=1; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "vmtest: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "vmtest: no command to run (see --help)" >&2; exit 2; }

log() { echo "vmtest: $*" >&2; }

# ---- host tools -------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx switch_root || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
if [ $systemd = 1 ]; then [ -x /lib/systemd/systemd ] || need_pkgs+=(systemd); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' && ! ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; then
    log "/bin/busybox is not static: install busybox-static"; exit 2
fi

# ---- kernel: fetched once with apt-get download, cached ----------------------------------
mkdir -p "$cache"
kpkg=${STRATA_VMTEST_KERNEL:-}
if [ -z "$kpkg" ]; then
    kpkg=$(ls "$cache"/kernels 2>/dev/null | grep -E '^linux-image-6\.12\..*-amd64$' | sort -V | tail -1 || true)
fi
if [ -z "$kpkg" ]; then
    kpkg=$(apt-cache depends linux-image-6.12-amd64 2>/dev/null | awk '/Depends: linux-image-6\.12\..*-amd64$/ {print $2; exit}')
    if [ -z "$kpkg" ]; then
        apt-get update -qq >/dev/null
        kpkg=$(apt-cache depends linux-image-6.12-amd64 | awk '/Depends: linux-image-6\.12\..*-amd64$/ {print $2; exit}')
    fi
fi
[ -n "$kpkg" ] || { log "no linux-image-6.12.*-amd64 package found (needs bookworm-security or backports in apt sources)"; exit 2; }
kdir=$cache/kernels/$kpkg
# Guests booted at once on a cold cache (vmtest/cri.sh) fetch it once: the others wait for it
# (two fetches into one $kdir.tmp lost each other's files).
mkdir -p "$cache/kernels"
exec {kernel_lock}>"$cache/kernels/.lock"
flock "$kernel_lock"
if [ ! -f "$kdir/vmlinux" ]; then
    log "fetching $kpkg"
    rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp/deb"
    (cd "$kdir.tmp/deb" && apt-get download "$kpkg" >/dev/null 2>&1 || apt-get download "$kpkg")
    dpkg-deb -x "$kdir.tmp"/deb/*.deb "$kdir.tmp/root"
    cp "$kdir.tmp"/root/boot/vmlinuz-* "$kdir.tmp/bzImage"
    # Extract the uncompressed vmlinux (PVH entry for microvm) from the zstd payload.
    for pos in $(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$kdir.tmp/bzImage" | cut -d: -f1); do
        tail -c +$((pos + 1)) "$kdir.tmp/bzImage" | zstd -dcq 2>/dev/null > "$kdir.tmp/vmlinux" || true
        [ "$(head -c 4 "$kdir.tmp/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] && break
        rm -f "$kdir.tmp/vmlinux"
    done
    [ -f "$kdir.tmp/vmlinux" ] || { log "could not extract vmlinux from $kpkg"; exit 2; }
    mkdir -p "$kdir.tmp/modules"
    mv "$kdir.tmp"/root/lib/modules/* "$kdir.tmp/modules/"
    rm -rf "$kdir.tmp/root" "$kdir.tmp/deb"
    rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
fi
exec {kernel_lock}>&-
kver=$(ls "$kdir/modules")
moddir=$kdir/modules/$kver/kernel

# ---- initramfs: busybox, init, decompressed modules in dependency order ------------------
wanted_modules="virtio_mmio netfs 9pnet 9pnet_virtio 9p overlay loop$extra_modules"
initrd=$cache/initramfs-$kver-$( (cat "$here/init.sh" "$0"; echo "$wanted_modules systemd=$systemd") | md5sum | cut -c1-12).cpio
# Guests booted at once (vmtest/cri.sh) build it once: the lock makes the others wait for it.
exec {initrd_lock}>"$cache/initramfs.lock"
flock "$initrd_lock"
if [ ! -f "$initrd" ]; then
    log "building $initrd"
    # Keep the two newest images (suites with different modules alternate).
    { ls -t "$cache"/initramfs-*.cpio 2>/dev/null || true; } | tail -n +3 | xargs -r rm -f
    work=$(mktemp -d "$cache/initramfs.XXXXXX")
    mkdir -p "$work"/{bin,sbin,etc,lib/modules,proc,sys,dev,tmp,run,newroot,mnt/host,usr/bin,usr/sbin,sys/fs/cgroup,root}
    cp /bin/busybox "$work/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$work/bin/$applet" ] || ln -s busybox "$work/bin/$applet"
    done
    cp "$here/init.sh" "$work/init" && chmod 755 "$work/init"
    echo 'root:x:0:0:root:/root:/bin/sh' > "$work/etc/passwd"
    echo 'root:x:0:' > "$work/etc/group"
    mknod -m 600 "$work/dev/console" c 5 1
    mknod -m 666 "$work/dev/null" c 1 3
    declare -A done_mod=()
    order=()
    add_module() {
        local m=$1 f deps d
        [ -n "${done_mod[$m]:-}" ] && return 0
        done_mod[$m]=1
        f=$(find "$moddir" -name "$m.ko.xz" -o -name "$m.ko" | head -1)
        [ -n "$f" ] || { log "module $m not found (built in?)"; return 0; }
        xz -dc "$f" > "$work/lib/modules/$m.ko" 2>/dev/null || cp "$f" "$work/lib/modules/$m.ko"
        deps=$(tr '\0' '\n' < "$work/lib/modules/$m.ko" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')
        for d in $deps; do add_module "$d"; done
        order+=("$m")
    }
    for m in $wanted_modules; do add_module "$m"; done
    printf '%s\n' "${order[@]}" > "$work/lib/modules/order"
    if [ $systemd = 1 ]; then
        # The host's systemd and systemctl with every library they load (at the paths the
        # loader and their RUNPATH look in: /usr/lib is a link to /lib here).
        mkdir -p "$work/lib/systemd" "$work/lib64"
        ln -s ../lib "$work/usr/lib"
        cp /lib/systemd/systemd "$work/lib/systemd/systemd"
        cp /bin/systemctl "$work/usr/bin/systemctl"
        for lib in $(ldd /lib/systemd/systemd /bin/systemctl | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib64\// {print $1}' | sort -u); do
            dest=$work/${lib#/usr}
            mkdir -p "${dest%/*}"
            cp -L "$lib" "$dest"
        done
        cp /etc/os-release "$work/etc/os-release" 2>/dev/null || true
    fi
    (cd "$work" && find . | cpio -o -H newc --quiet > "$initrd.tmp")
    mv "$initrd.tmp" "$initrd"
    rm -rf "$work"
fi
exec {initrd_lock}>&-

# ---- the share -------------------------------------------------------------------------
own_share=0
if [ -z "$share" ]; then
    mkdir -p "$cache/runs"
    share=$(mktemp -d "$cache/runs/run.XXXXXX")
    own_share=1
fi
share=$(cd "$share" && pwd)
rm -rf "$share/.vmtest" && mkdir -p "$share/.vmtest" "$share/bin"
for b in "${bins[@]+"${bins[@]}"}"; do cp "$b" "$share/bin/"; done
: > "$share/.vmtest/env"
for e in "${envs[@]+"${envs[@]}"}"; do printf 'export %q\n' "$e" >> "$share/.vmtest/env"; done
i=0
for c in "$@"; do
    # The wrapper records the command's own status (a pipe to tee would hide it).
    printf '(\n%s\n)\necho $? > /mnt/host/.vmtest/rc.%d\n' "$c" "$i" > "$share/.vmtest/cmd.$i"
    i=$((i + 1))
done
ncmds=$i

# ---- qemu ------------------------------------------------------------------------------
qemu_cmd() { # accel timeout-log
    local a=$1
    local cmd=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
        -m "$mem" -smp "$cpus" -serial stdio)
    # Several vCPUs under TCG run on one host thread (thread=single), not one thread each: with
    # multi-threaded TCG a vCPU can execute a stale translation of kernel text another vCPU has
    # just patched (the kernel's int3-based live patching of static keys) and the guest dies
    # with "Oops: int3" at boot. One thread executes one vCPU at a time, so every vCPU sees
    # the patched text; a guest that needs the host's two cores is better run as two 1-vCPU
    # guests (vmtest/cri.sh does).
    if [ "$a" = kvm ]; then
        cmd+=(-accel kvm -cpu host)
    elif [ "$cpus" -gt 1 ]; then
        cmd+=(-accel tcg,thread=single -cpu max)
    else
        cmd+=(-accel tcg -cpu max)
    fi
    local append="console=ttyS0 quiet loglevel=2 panic=-1 reboot=t rdinit=/init"
    if [ $systemd = 1 ]; then append="$append vmtest.systemd systemd.unit=vmtest.service systemd.show_status=0"; fi
    # Under TCG on a busy host the guest can fail to calibrate its TSC against the PIT and
    # hang at boot; giving it the host's rate skips the calibration (20 of 20 boots under load,
    # where 6 of 10 had hung).
    if [ "$a" = tcg ] && [ -n "$tsc_khz" ]; then append="$append tsc_early_khz=$tsc_khz"; fi
    if [ "$machine" = microvm ]; then
        cmd+=(-M microvm,x-option-roms=off,rtc=on,isa-serial=on -kernel "$kdir/vmlinux"
            -fsdev "local,id=fs0,path=$share,security_model=none"
            -device virtio-9p-device,fsdev=fs0,mount_tag=host0)
    else
        cmd+=(-M q35 -kernel "$kdir/bzImage" -virtfs "local,path=$share,mount_tag=host0,security_model=none")
    fi
    cmd+=(-initrd "$initrd" -append "$append")
    printf '%q ' "${cmd[@]}"
}

boot() { # accel timeout logfile -> 0 if VMTEST-EXIT seen
    local a=$1 t=$2 logf=$3 cmd pid tailpid="" booted=0 start=$SECONDS
    cmd=$(qemu_cmd "$a")
    : > "$logf"
    exec 3>&2
    # stderr of the monitoring block is dropped so bash's "Killed" job notice does not appear;
    # messages go to fd 3, the real stderr.
    {
        eval "exec $cmd" < /dev/null > "$logf" 2>&1 &
        pid=$!
        if [ "$quiet" = 0 ]; then
            tail -s 0.2 -n +1 -f --pid="$pid" "$logf" | tr -d '\r' >&3 &
            tailpid=$!
        fi
        # A boot that has not reached the commands within $boot_timeout seconds has hung
        # (microvm under TCG does, now and then): kill it early instead of waiting for the
        # whole timeout.
        while kill -0 "$pid" 2>/dev/null; do
            if [ $booted = 0 ] && grep -q '^VMTEST-BOOTED' "$logf"; then booted=1; fi
            if [ $booted = 0 ] && [ $((SECONDS - start)) -ge "$boot_timeout" ]; then
                log "no VMTEST-BOOTED within ${boot_timeout}s: killing the VM" 2>&3
                kill -KILL "$pid" 2>/dev/null || true
            elif [ $((SECONDS - start)) -ge "$t" ]; then
                log "the VM ran past ${t}s: killing it" 2>&3
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
        wait "$pid" || true
        [ -z "$tailpid" ] || wait "$tailpid" || true
    } 2>/dev/null
    exec 3>&-
    grep -q '^VMTEST-EXIT' <(tr -d '\r' < "$logf")
}

if [ "$accel" = auto ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        probe=$cache/kvm-probe-$(uname -r)-$kver
        if [ ! -f "$probe" ]; then
            log "probing KVM with a short boot (cached in $probe)"
            pshare=$(mktemp -d "$cache/probe.XXXXXX"); mkdir -p "$pshare/.vmtest"
            : > "$pshare/.vmtest/env"
            printf 'echo 0 > /mnt/host/.vmtest/rc.0\n' > "$pshare/.vmtest/cmd.0"
            if (share=$pshare quiet=1 boot_timeout=30; boot kvm 30 "$pshare/log"); then echo kvm > "$probe"; else echo tcg > "$probe"; fi
            rm -rf "$pshare"
        fi
        accel=$(cat "$probe")
    fi
fi

# The host's TSC rate in kHz (from its CPU MHz), for the guest's command line.
tsc_khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo 2>/dev/null || true)

runlog=$share/.vmtest/serial.log
started=$(date +%s.%N)
ok=0
for attempt in $(seq 1 "$retries"); do
    log "boot $attempt/$retries: $machine, $accel, $cpus vCPU, ${mem} MiB, kernel $kver"
    rm -f "$share"/.vmtest/rc.* "$share"/.vmtest/out.*
    if boot "$accel" "$timeout" "$runlog"; then ok=1; break; fi
    # A guest kernel that oopses or panics is a fault of the kernel or of the emulator (under
    # TCG a CPU can hit the int3 of another CPU's live text patching), not a result of the
    # commands: boot again. The serial log of every attempt is kept.
    crash=$(tr -d '\r' < "$runlog" | grep -m1 -E 'Oops: |Kernel panic - not syncing|BUG: unable to handle' || true)
    if [ -n "$crash" ]; then
        cp "$runlog" "$cache/last-crash.log"
        log "the guest kernel crashed (${crash#*] }); its log is kept as $cache/last-crash.log; booting again"
        continue
    fi
    if tr -d '\r' < "$runlog" | grep -q '^VMTEST-BOOTED'; then
        log "the VM booted but stopped without reporting every command (timeout ${timeout}s): not retrying"; break
    fi
    log "the VM hung or died before running the commands; retrying"
done
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')

passed=0 failed=0
for i in $(seq 0 $((ncmds - 1))); do
    rc=$(tr -d '\r' < "$runlog" | awk -v n="$i" '$1 == "VMTEST-RESULT" && $2 == n {print $3}')
    if [ "$rc" = 0 ]; then passed=$((passed + 1)); verdict=ok; else failed=$((failed + 1)); verdict="FAILED (${rc:-no result})"; fi
    log "command $i: $verdict: $(head -c 120 "$share/.vmtest/cmd.$i" | sed -n 2p)"
done
log "serial log: $runlog (VM run took ${elapsed}s)"
if [ "$quiet" = 1 ] && { [ $ok != 1 ] || [ $failed != 0 ]; }; then
    # (the console was not echoed: what the failed commands printed is shown here)
    log "the serial log of this run:"
    tr -d '\r' < "$runlog" >&2
fi
if [ $own_share = 1 ]; then
    # (one name per run: two VMs run at once in CI, and each keeps its own log)
    keep=$cache/last-run-$$.log
    find "$cache" -maxdepth 1 -name 'last-run*.log' -mmin +120 -delete
    cp "$runlog" "$keep" && log "kept as $keep"
    rm -rf "$share"
fi
echo "$passed passed, $failed failed"
[ $ok = 1 ] && [ $failed = 0 ]
