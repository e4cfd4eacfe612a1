#!/bin/sh
# /init of the strata test VM (busybox). Stage 1 copies the initramfs into a tmpfs and
# switch_roots there, because pivot_root(2) fails with EINVAL while the root is the initramfs
# itself and container runtimes need it. Stage 2 mounts the kernel file systems, loads the
# modules, mounts a pure cgroup2 with every controller and the host's share over 9p, runs the
# commands the host put in .vmtest/, prints one VMTEST-RESULT line per command and a final
# VMTEST-EXIT line on the serial console, and powers off. With `vmtest.systemd` on the kernel
# command line, stage 2 hands PID 1 to systemd instead, whose vmtest.service runs the commands
# (`/init --commands`) and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

run_commands() {
    export HOME=/root PATH=/mnt/host/bin:$PATH
    [ -f /mnt/host/.vmtest/env ] && . /mnt/host/.vmtest/env
    cd /mnt/host
    status=0
    n=0
    while [ -f "/mnt/host/.vmtest/cmd.$n" ]; do
        echo "VMTEST-RUN $n $(sed -n 2p /mnt/host/.vmtest/cmd.$n | head -c 200)"
        start=$(cut -d' ' -f1 /proc/uptime)
        sh "/mnt/host/.vmtest/cmd.$n" </dev/null 2>&1 | tee "/mnt/host/.vmtest/out.$n"
        rc=$(cat "/mnt/host/.vmtest/rc.$n" 2>/dev/null || echo 126)
        end=$(cut -d' ' -f1 /proc/uptime)
        echo "VMTEST-RESULT $n $rc start=$start end=$end"
        [ "$rc" = 0 ] || status=1
        n=$((n + 1))
    done
    sync
    echo "VMTEST-EXIT $status"
    poweroff -f
}

if [ "${1:-}" = --commands ]; then
    echo VMTEST-BOOTED
    run_commands
fi

if [ ! -e /.stage2 ]; then
    mount -t proc proc /proc
    mount -t tmpfs -o mode=0755 tmpfs /newroot
    for d in bin sbin lib lib64 etc init usr; do
        [ -e "/$d" ] && cp -a "/$d" /newroot/
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run /newroot/mnt/host /newroot/root
    touch /newroot/.stage2
    umount /proc
    exec switch_root /newroot /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo VMTEST-STAGE2

for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "VMTEST-WARN insmod $m failed"
done

mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in $controllers; do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control; done
echo "VMTEST-CGROUP2 $(cat /sys/fs/cgroup/cgroup.subtree_control)"

# virtio-mmio devices can appear a moment after the module loads.
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 50 ]; then
        echo "VMTEST-EXIT 125 (cannot mount the 9p share host0)"
        poweroff -f
    fi
    sleep 0.1
done
if grep -qw vmtest.systemd /proc/cmdline; then
    mkdir -p /etc/systemd/system
    cat > /etc/systemd/system/vmtest.service <<'UNIT'
[Unit]
Description=strata vmtest commands
DefaultDependencies=no
[Service]
Type=oneshot
ExecStart=/bin/sh /init --commands
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
UNIT
    echo "VMTEST-SYSTEMD starting $(/lib/systemd/systemd --version | head -1)"
    exec /lib/systemd/systemd
fi
echo VMTEST-BOOTED
run_commands
