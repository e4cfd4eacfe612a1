//! The VM peer: qemu `-M microvm` booting Debian's 6.12 kernel (the one vmtest/run.sh caches)
//! with a tiny initramfs whose `/init` is busybox running the workload, then powering off.
//!
//! The workload is chosen on the kernel command line (`strata_mode=...`, which the kernel hands to
//! /init as an environment variable): `/init` prints `STRATA-READY` on the serial console (the
//! workload's first byte), runs `/bin/true` and powers off, or sleeps for the memory and density
//! figures. KVM is used only when a probe boot under KVM works; the accelerator is written next to
//! every VM figure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{DensityFigure, DensityRow, MemRow, Options, Outcome, StartRow, StartStats, procmem, progress};

const READY: &str = "STRATA-READY";
/// Guest memory, MiB.
const GUEST_MEM_MIB: u64 = 128;
/// A boot that has not printed READY by then has hung (microvm under TCG does, now and then; a
/// good boot takes about 2 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for the density figure, where a hung boot's wait counts in the time to all ready: a
/// good boot takes about 2 s here with one VM per core, so one not ready after 12 s is hung.
const DENSITY_BOOT_TIMEOUT: Duration = Duration::from_secs(12);

const INIT: &str = r#"#!/bin/sh
if [ "$strata_mode" = http ]; then
    for m in virtio_mmio failover net_failover virtio_net; do insmod /lib/modules/$m.ko; done
    ifconfig lo 127.0.0.1 up
    n=0
    until ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up 2>/dev/null; do
        n=$((n + 1)); [ $n -lt 500 ] || break; usleep 10000
    done
    echo strata-http > /tmp/index.html
    httpd -p 80 -h /tmp
    echo STRATA-READY
    while :; do sleep 1000; done
fi
echo STRATA-READY
/bin/true
if [ "$strata_mode" = sleep ]; then
    while :; do sleep 1000; done
fi
poweroff -f
"#;

/// The host CPU's rate in kHz (`cpu MHz` of /proc/cpuinfo), which a TCG guest's TSC runs at.
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    (mhz >= 1.0).then_some((mhz * 1000.0) as u64)
}

/// Which accelerator VMs use and why.
#[derive(Debug, Clone)]
pub struct Accel {
    /// `kvm` or `tcg`.
    pub mode: String,
    /// How that was decided.
    pub reason: String,
}

impl Accel {
    fn args(&self) -> [&'static str; 4] {
        if self.mode == "kvm" { ["-accel", "kvm", "-cpu", "host"] } else { ["-accel", "tcg", "-cpu", "max"] }
    }

    /// The label next to a VM figure.
    pub fn label(&self) -> String {
        self.mode.to_uppercase()
    }
}

/// The kernel and the workload initramfs, or why there are none.
#[derive(Debug)]
pub struct VmEnv {
    ready: Result<(Kernel, tempfile::TempDir), String>,
}

/// A cached kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// e.g. linux-image-6.12.57+deb12-amd64.
    pub package: String,
    /// Uncompressed kernel (PVH entry for microvm).
    pub vmlinux: PathBuf,
    /// Compressed kernel, as it would sit in a VM disk's /boot.
    pub bzimage: PathBuf,
    /// The modules' directory name (kernel release).
    pub release: String,
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// vmtest's cache directory (same rules as vmtest/run.sh).
pub fn vmtest_cache() -> PathBuf {
    if let Some(c) = std::env::var_os("STRATA_VMTEST_CACHE") {
        return PathBuf::from(c);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&x).join("strata-vmtest");
    }
    repo_dir().join(".cache/vmtest")
}

fn find_kernel() -> Option<Kernel> {
    let dir = vmtest_cache().join("kernels");
    let mut pkgs: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("linux-image-6.12.") && n.ends_with("-amd64"))
        .filter(|n| dir.join(n).join("vmlinux").is_file())
        .collect();
    pkgs.sort();
    let package = pkgs.pop()?;
    let kdir = dir.join(&package);
    let release = std::fs::read_dir(kdir.join("modules")).ok()?.flatten().next()?.file_name().to_string_lossy().into();
    Some(Kernel { vmlinux: kdir.join("vmlinux"), bzimage: kdir.join("bzImage"), package, release })
}

impl VmEnv {
    /// Finds the kernel (running vmtest/run.sh once to fetch it if the cache is empty) and builds
    /// the initramfs.
    pub fn prepare() -> VmEnv {
        VmEnv { ready: Self::try_prepare() }
    }

    fn try_prepare() -> Result<(Kernel, tempfile::TempDir), String> {
        if which("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
        }
        let kernel = match find_kernel() {
            Some(k) => k,
            None => {
                progress("vm: no cached kernel; fetching it with vmtest/run.sh");
                let st = Command::new("bash")
                    .arg(repo_dir().join("vmtest/run.sh"))
                    .args(["--quiet", "--", "true"])
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| format!("vmtest/run.sh: {e}"))?;
                find_kernel().ok_or_else(|| format!("vmtest/run.sh did not cache a 6.12 kernel ({st})"))?
            }
        };
        let initrd = build_initramfs(&kernel)?;
        Ok((kernel, initrd))
    }

    /// The kernel, if any.
    pub fn kernel(&self) -> Option<&Kernel> {
        self.ready.as_ref().ok().map(|(k, _)| k)
    }

    /// The compressed kernel image, for the VM disks.
    pub fn kernel_image(&self) -> Option<&Path> {
        self.kernel().map(|k| k.bzimage.as_path())
    }

    fn parts(&self) -> Result<(&Kernel, PathBuf), String> {
        self.parts_for(false)
    }

    /// The kernel and the initramfs: with the network drivers for the HTTP workload, else the
    /// smallest one.
    fn parts_for(&self, net: bool) -> Result<(&Kernel, PathBuf), String> {
        let name = if net { "initramfs-net.cpio" } else { "initramfs.cpio" };
        match &self.ready {
            Ok((k, dir)) => Ok((k, dir.path().join(name))),
            Err(e) => Err(e.clone()),
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Modules the HTTP guest loads, in dependency order.
const NET_MODULES: [&str; 4] = ["virtio_mmio", "failover", "net_failover", "virtio_net"];

/// Two initramfs archives from one busybox root: `initramfs.cpio`, and `initramfs-net.cpio`
/// which adds the network drivers of `kernel` (decompressed) for the HTTP workload.
fn build_initramfs(kernel: &Kernel) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new().prefix("strata-report-vm-").tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    let applets = ["sh", "echo", "true", "sleep", "usleep", "poweroff", "mount", "insmod", "ifconfig", "httpd"];
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).map_err(|e| e.to_string())?;
    }
    std::fs::write(root.join("init"), INIT).map_err(|e| e.to_string())?;
    let cpio = |script: &str| -> Result<(), String> {
        let st = Command::new("sh")
            .args(["-c", script])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("building the initramfs: {e}"))?;
        if st.success() { Ok(()) } else { Err(format!("building the initramfs (needs cpio, xz and root): {st}")) }
    };
    cpio(
        "chmod 755 init && mknod -m 600 dev/console c 5 1 && mknod -m 666 dev/null c 1 3 \
          && find . | cpio -o -H newc --quiet > ../initramfs.cpio",
    )?;
    let moddir = kernel.vmlinux.with_file_name("modules").join(&kernel.release).join("kernel");
    std::fs::create_dir_all(root.join("lib/modules")).map_err(|e| e.to_string())?;
    for m in NET_MODULES {
        let found = ["drivers/virtio", "net/core", "drivers/net"]
            .iter()
            .flat_map(|d| [moddir.join(d).join(format!("{m}.ko.xz")), moddir.join(d).join(format!("{m}.ko"))])
            .find(|p| p.is_file())
            .ok_or_else(|| format!("module {m} not found under {}", moddir.display()))?;
        let dest = root.join("lib/modules").join(format!("{m}.ko"));
        if found.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&found).output().map_err(|e| format!("xz: {e}"))?;
            if !out.status.success() {
                return Err(format!("xz -dc {}: {}", found.display(), String::from_utf8_lossy(&out.stderr)));
            }
            std::fs::write(&dest, out.stdout).map_err(|e| e.to_string())?;
        } else {
            std::fs::copy(&found, &dest).map_err(|e| e.to_string())?;
        }
    }
    cpio("find . | cpio -o -H newc --quiet > ../initramfs-net.cpio")?;
    Ok(dir)
}

/// A running qemu; killed on drop.
pub struct RunningVm {
    child: Child,
    started: Instant,
    ready_rx: mpsc::Receiver<Instant>,
}

impl RunningVm {
    /// Boots a VM running `mode` (`true` or `sleep`).
    pub fn boot(env: &VmEnv, accel: &Accel, mode: &str) -> Result<RunningVm, String> {
        Self::boot_with(env, accel, mode, None)
    }

    /// Boots a VM running `mode`; with `http_port`, the HTTP workload with that loopback port of
    /// the host forwarded to the guest's port 80.
    fn boot_with(env: &VmEnv, accel: &Accel, mode: &str, http_port: Option<u16>) -> Result<RunningVm, String> {
        let (kernel, initrd) = env.parts_for(http_port.is_some())?;
        let mut append = format!("console=ttyS0 quiet loglevel=2 panic=-1 reboot=t rdinit=/init strata_mode={mode}");
        // Under TCG a guest on a busy host can fail to calibrate its TSC against the PIT and stop
        // (the hung boots): given the host's rate it does not calibrate at all.
        if accel.mode != "kvm"
            && let Some(khz) = host_tsc_khz()
        {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-smp", "1", "-m"])
            .arg(GUEST_MEM_MIB.to_string())
            .args(["-serial", "stdio"])
            .args(accel.args())
            .args(["-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on", "-kernel"])
            .arg(&kernel.vmlinux)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(append);
        if let Some(port) = http_port {
            cmd.args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80")])
                .args(["-device", "virtio-net-device,netdev=n0"]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let mut out = child.stdout.take().ok_or("no qemu stdout")?;
        let (tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = false;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if !sent {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(READY.len()).any(|w| w == READY.as_bytes()) {
                        let _ = tx.send(Instant::now());
                        sent = true;
                    }
                }
            }
        });
        Ok(RunningVm { child, started, ready_rx })
    }

    /// Waits for the workload's first byte; returns ms since qemu was spawned.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<f64, String> {
        match self.ready_rx.recv_timeout(timeout) {
            Ok(t) => Ok((t - self.started).as_secs_f64() * 1e3),
            Err(_) => Err(format!("no {READY} within {}s", timeout.as_secs())),
        }
    }

    /// Waits for qemu to exit; returns ms since it was spawned.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<f64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                let ms = self.started.elapsed().as_secs_f64() * 1e3;
                return if st.success() { Ok(ms) } else { Err(format!("qemu exited with {st}")) };
            }
            if Instant::now() > deadline {
                return Err(format!("qemu still running after {}s", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// qemu's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots until READY, retrying a boot that hangs (up to 3 attempts); returns the VM, the time
/// to READY and the number of hung boots.
fn boot_ready(env: &VmEnv, accel: &Accel, mode: &str) -> Result<(RunningVm, f64, usize), String> {
    boot_ready_with(env, accel, mode, None)
}

fn boot_ready_with(
    env: &VmEnv,
    accel: &Accel,
    mode: &str,
    http_port: Option<u16>,
) -> Result<(RunningVm, f64, usize), String> {
    let mut hung = 0;
    loop {
        let mut vm = RunningVm::boot_with(env, accel, mode, http_port)?;
        match vm.wait_ready(BOOT_TIMEOUT) {
            Ok(ms) => return Ok((vm, ms, hung)),
            Err(e) if hung < 2 => {
                progress(format_args!("vm: boot hung ({e}); retrying"));
                hung += 1;
            }
            Err(e) => return Err(format!("{} boots in a row hung: {e}", hung + 1)),
        }
    }
}

/// Decides between KVM and TCG: TCG unless /dev/kvm is usable and a probe boot under KVM reaches
/// the workload (vmtest's cached probe for this host and kernel is reused when present).
pub fn detect_accel(env: &VmEnv) -> Accel {
    let tcg = |reason: String| Accel { mode: "tcg".into(), reason };
    let kvm_ok = nix::unistd::access("/dev/kvm", nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK);
    if kvm_ok.is_err() {
        return tcg("/dev/kvm is missing or not accessible".into());
    }
    let Some(kernel) = env.kernel() else { return tcg("no kernel to probe KVM with".into()) };
    let host = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let cached = vmtest_cache().join(format!("kvm-probe-{host}-{}", kernel.release));
    if let Ok(v) = std::fs::read_to_string(&cached) {
        let v = v.trim();
        if v == "kvm" {
            return Accel { mode: "kvm".into(), reason: format!("vmtest's cached probe boot ({})", cached.display()) };
        }
        return tcg(format!(
            "/dev/kvm exists but a probe boot under KVM failed (vmtest's cached probe {}; on these machines /dev/kvm is a PVM module)",
            cached.display()
        ));
    }
    progress("vm: probing KVM with one boot (20 s limit)");
    let probe = Accel { mode: "kvm".into(), reason: String::new() };
    let worked = RunningVm::boot(env, &probe, "true").and_then(|mut vm| vm.wait_ready(Duration::from_secs(20))).is_ok();
    let _ = std::fs::write(&cached, if worked { "kvm\n" } else { "tcg\n" });
    if worked {
        Accel { mode: "kvm".into(), reason: "a probe boot under KVM reached the workload".into() }
    } else {
        tcg("/dev/kvm exists but a probe boot under KVM did not reach the workload within 20 s".into())
    }
}

fn vm_name(accel: &Accel) -> String {
    format!("qemu microvm ({})", accel.label())
}

/// Start to READY and start to exit of VMs, plus Firecracker's published figure.
pub fn start_rows(opts: &Options, env: &VmEnv, accel: &Accel) -> Vec<StartRow> {
    let rounds = opts.vm_rounds();
    let r = (|| {
        let (kernel, _) = env.parts()?;
        let mut s = StartStats::default();
        let mut hung_total = 0;
        for round in 0..rounds {
            progress(format_args!("start: VM boot {}/{rounds} ({})", round + 1, accel.label()));
            let (mut vm, ready, hung) = boot_ready(env, accel, "true")?;
            hung_total += hung;
            let exit = vm.wait_exit(Duration::from_secs(60))?;
            s.first_byte.ms.push(ready);
            s.true_exit.ms.push(exit);
            s.echo_exit.ms.push(exit);
            drop(vm);
            // The HTTP workload: READY says httpd listens; the host then asks for the page
            // through qemu's port forward (asking earlier only queues SYNs in qemu's user
            // network, whose retransmission backoff would be measured instead of the guest).
            let port = crate::free_port()?;
            let (vm, _, hung) = boot_ready_with(env, accel, "http", Some(port))?;
            hung_total += hung;
            let answer = crate::first_http_response(port, vm.started, Duration::from_secs(90))?;
            s.http_answer.ms.push(answer.as_secs_f64() * 1e3);
        }
        let mode = format!(
            "{}, 1 vCPU, {GUEST_MEM_MIB} MiB, {}; /init echoes then runs /bin/true, poweroff -f (HTTP: /init loads \
             virtio-net, starts httpd, qemu user network forwards a host port); {hung_total} hung boot(s) retried",
            accel.label(),
            kernel.package
        );
        Ok::<_, String>((s, mode))
    })();
    let (outcome, mode) = match r {
        Ok((s, mode)) => (Outcome::Measured(s), mode),
        Err(e) => (Outcome::Unavailable(e), accel.label()),
    };
    vec![
        StartRow { system: vm_name(accel), mode, outcome },
        StartRow {
            system: "Firecracker".into(),
            mode: "KVM".into(),
            outcome: Outcome::Published(
                "≤ 125 ms from API call to guest /sbin/init (Firecracker's published boot figure)".into(),
            ),
        },
    ]
}

/// qemu's own memory while the guest sleeps.
pub fn memory_rows(env: &VmEnv, accel: &Accel) -> Vec<MemRow> {
    progress(format_args!("memory: qemu microvm ({})", accel.label()));
    let r = (|| {
        let (vm, _, _) = boot_ready(env, accel, "sleep")?;
        std::thread::sleep(Duration::from_secs(1));
        procmem::process_memory(vm.pid())
    })();
    vec![MemRow {
        system: vm_name(accel),
        note: format!("the qemu process, guest {GUEST_MEM_MIB} MiB, 1 vCPU, guest sleeping after boot"),
        outcome: r.into(),
    }]
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// As many VMs as the cap allows, booted at once. A VM whose boot hangs (microvm under TCG does,
/// now and then) is killed and booted again, up to twice; the time to all ready includes that.
pub fn density_rows(opts: &Options, env: &VmEnv, accel: &Accel) -> Vec<DensityRow> {
    let wanted = opts.density_n();
    let by_memory = (mem_available_mib() / 2 / (GUEST_MEM_MIB + 64)) as usize;
    let n = wanted.min(opts.vm_density_cap()).min(by_memory).max(1);
    let mut note = format!(
        "{n} of N = {wanted} VMs booted at once (capped at one per core, {}, as each TCG boot keeps a core busy, and by \
         half the available memory); {GUEST_MEM_MIB} MiB, 1 vCPU each; a VM not ready within {} s is killed and booted \
         again (up to twice), the wait counted in the time to all ready",
        cpus_label(),
        DENSITY_BOOT_TIMEOUT.as_secs(),
    );
    progress(format_args!("density: booting {n} VMs at once ({})", accel.label()));
    let r = (|| {
        env.parts()?;
        let t = Instant::now();
        let mut vms = Vec::with_capacity(n);
        for _ in 0..n {
            vms.push(RunningVm::boot(env, accel, "sleep")?);
        }
        let mut ready = 0;
        let mut hung = 0;
        for vm in vms.iter_mut() {
            let mut attempts = 0;
            loop {
                match vm.wait_ready(DENSITY_BOOT_TIMEOUT) {
                    Ok(_) => {
                        ready += 1;
                        break;
                    }
                    Err(e) if attempts < 2 => {
                        progress(format_args!("density: a VM boot hung ({e}); booting it again"));
                        attempts += 1;
                        hung += 1;
                        // Replacing the VM drops (kills) the hung one.
                        *vm = RunningVm::boot(env, accel, "sleep")?;
                    }
                    Err(_) => break,
                }
            }
        }
        if ready == 0 {
            return Err(format!("no VM became ready ({hung} hung boots retried)"));
        }
        let all_ready_ms = t.elapsed().as_secs_f64() * 1e3;
        std::thread::sleep(Duration::from_secs(1));
        let pids: Vec<u32> = vms.iter().map(RunningVm::pid).collect();
        let total = procmem::sum_memory(&pids)?;
        Ok::<_, String>((DensityFigure { started: n, ready, all_ready_ms, total }, hung))
    })();
    let outcome = match r {
        Ok((figure, hung)) => {
            note.push_str(&format!("; {hung} hung boot(s) killed and retried"));
            Outcome::Measured(figure)
        }
        Err(e) => Outcome::Unavailable(e),
    };
    vec![DensityRow { system: vm_name(accel), note, outcome }]
}

fn cpus_label() -> String {
    format!("{} cores", std::thread::available_parallelism().map_or(1, |n| n.get()))
}
