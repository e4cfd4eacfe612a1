//! Containers run directly by strata, crun and runc (no containerd): start time, memory of a
//! running instance and density, on the same busybox bundle for all.
//!
//! Every detached container is held by a [`Detached`] guard that kills and deletes it when
//! dropped, so an error half-way leaves no container, cgroup or process behind.

use crate::runtime_command;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{DensityFigure, DensityRow, MemRow, Options, Outcome, StartRow, StartStats, procmem, progress};
use crate::{BusyboxBundle, Runtime, runtimes};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(rt: &Runtime) -> String {
    format!("report-{}-{}-{}", rt.name, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Runs a runtime command to completion. Its stderr goes to a file, not a pipe: the container
/// that `create` leaves behind inherits it, and a pipe would never reach end-of-file.
fn run_checked(rt: &Runtime, mut cmd: Command, what: &str) -> Result<String, String> {
    let mut err = tempfile::tempfile().map_err(|e| format!("{} {what}: {e}", rt.name))?;
    let err_out = err.try_clone().map_err(|e| format!("{} {what}: {e}", rt.name))?;
    let out = cmd.stdin(Stdio::null()).stderr(err_out).output().map_err(|e| format!("{} {what}: {e}", rt.name))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        use std::io::Seek;
        let mut msg = String::new();
        let _ = err.seek(std::io::SeekFrom::Start(0)).and_then(|_| err.read_to_string(&mut msg));
        Err(format!("{} {what} failed ({}): {}", rt.name, out.status, msg.trim()))
    }
}

/// `run` of a bundle whose program writes to stdout: (start to first byte, start to exit), ms.
pub fn run_first_byte(rt: &Runtime, bundle: &Path, root: &Path) -> Result<(f64, f64), String> {
    let mut cmd = runtime_command(rt, root);
    cmd.args(["run", "--bundle"]).arg(bundle).arg(next_id(rt));
    cmd.stdin(Stdio::null());
    let (first, exit, out) = crate::time_first_byte(cmd).map_err(|e| format!("{}: {e}", rt.name))?;
    if !out.status.success() {
        return Err(format!("{} run failed: {}", rt.name, String::from_utf8_lossy(&out.stderr).trim()));
    }
    let first = first.ok_or_else(|| format!("{}: the workload wrote nothing", rt.name))?;
    Ok((first.as_secs_f64() * 1e3, exit.as_secs_f64() * 1e3))
}

/// `run --detach` of the HTTP workload on a fresh port: start to the first HTTP answer, ms. The
/// container is killed and deleted afterwards, also on error.
pub fn run_http(rt: &Runtime, bundle: &BusyboxBundle, root: &Path) -> Result<f64, String> {
    let port = crate::free_port()?;
    bundle.set_host_network_args(&crate::http_workload(&format!("127.0.0.1:{port}")))?;
    let guard = Detached { rt: rt.clone(), root: root.to_path_buf(), id: next_id(rt), pid: 0 };
    let mut err = tempfile::tempfile().map_err(|e| format!("{}: {e}", rt.name))?;
    let mut run = runtime_command(rt, root);
    run.args(["run", "--detach", "--bundle"]).arg(bundle.path()).arg(&guard.id);
    run.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err.try_clone().map_err(|e| e.to_string())?);
    let t = Instant::now();
    let mut child = run.spawn().map_err(|e| format!("{}: {e}", rt.name))?;
    let answered = crate::first_http_response(port, t, std::time::Duration::from_secs(20));
    let status = child.wait().map_err(|e| format!("{}: {e}", rt.name))?;
    match answered {
        Ok(d) if status.success() => Ok(d.as_secs_f64() * 1e3),
        other => {
            use std::io::Seek;
            let mut msg = String::new();
            let _ = err.seek(std::io::SeekFrom::Start(0)).and_then(|_| err.read_to_string(&mut msg));
            let why = other.err().unwrap_or_default();
            Err(format!("{} run --detach ({status}): {} {why}", rt.name, msg.trim()))
        }
    }
}

/// Start times of `/bin/true`, `echo ready` and the HTTP server for every runtime found, in
/// interleaved rounds.
pub fn start_times(opts: &Options) -> Vec<StartRow> {
    let rts = match runtimes() {
        Ok(r) => r,
        Err(e) => {
            return vec![unavailable_start("strata", &e), unavailable_start("crun", &e), unavailable_start("runc", &e)];
        }
    };
    let bundles = (
        BusyboxBundle::new(&["/bin/true"]),
        BusyboxBundle::new(&["/bin/echo", "ready"]),
        BusyboxBundle::new(&["/bin/true"]),
    );
    let (Ok(true_bundle), Ok(echo_bundle), Ok(http_bundle)) = bundles else {
        let e = "cannot build the busybox bundle (install busybox-static)".to_string();
        return rts.iter().map(|rt| unavailable_start(rt.name, &e)).collect();
    };
    let state = match tempfile::Builder::new().prefix("strata-report-state-").tempdir() {
        Ok(s) => s,
        Err(e) => return rts.iter().map(|rt| unavailable_start(rt.name, &e.to_string())).collect(),
    };
    let mut usable: Vec<(Runtime, Result<StartStats, String>)> = Vec::new();
    for rt in rts {
        // A warm-up run that also tells whether the runtime works here.
        let probe = crate::run_once(&rt, true_bundle.path(), state.path(), &next_id(&rt))
            .and_then(|_| run_first_byte(&rt, echo_bundle.path(), state.path()))
            .and_then(|_| run_http(&rt, &http_bundle, state.path()));
        usable.push((rt, probe.map(|_| StartStats::default())));
    }
    // The floor: the same namespaces, chroot and exec without a runtime, in the same rounds.
    let flags = crate::unshare_flags(true_bundle.path());
    let rootfs = true_bundle.path().join("rootfs");
    let floor_round = || -> Result<(f64, f64, f64), String> {
        let t = Instant::now();
        let status = crate::floor_command(&flags, &rootfs, &["/bin/true"])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("unshare: {e}"))?;
        if !status.success() {
            return Err(format!("unshare ... chroot ... /bin/true: {status}"));
        }
        let true_exit = t.elapsed().as_secs_f64() * 1e3;
        let mut echo = crate::floor_command(&flags, &rootfs, &["/bin/echo", "ready"]);
        echo.stdin(Stdio::null());
        let (first, exit, out) = crate::time_first_byte(echo).map_err(|e| format!("unshare: {e}"))?;
        let first = first.filter(|_| out.status.success()).ok_or_else(|| {
            format!("unshare ... chroot ... /bin/echo: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())
        })?;
        Ok((true_exit, first.as_secs_f64() * 1e3, exit.as_secs_f64() * 1e3))
    };
    let mut floor: Result<StartStats, String> = floor_round().map(|_| StartStats::default());
    let rounds = opts.container_rounds();
    for round in 0..rounds {
        progress(format_args!("start: container round {}/{rounds}", round + 1));
        if let Ok(s) = &mut floor {
            match floor_round() {
                Ok((true_exit, first, exit)) => {
                    s.true_exit.ms.push(true_exit);
                    s.first_byte.ms.push(first);
                    s.echo_exit.ms.push(exit);
                }
                Err(e) => floor = Err(format!("failed in round {}: {e}", round + 1)),
            }
        }
        for (rt, stats) in usable.iter_mut() {
            let Ok(s) = stats else { continue };
            let r = crate::run_once(rt, true_bundle.path(), state.path(), &next_id(rt)).and_then(|t| {
                let (first, exit) = run_first_byte(rt, echo_bundle.path(), state.path())?;
                let http = run_http(rt, &http_bundle, state.path())?;
                Ok((t.as_secs_f64() * 1e3, first, exit, http))
            });
            match r {
                Ok(round) => s.record(round),
                Err(e) => *stats = Err(format!("failed in round {}: {e}", round + 1)),
            }
        }
    }
    let mut rows: Vec<StartRow> = usable
        .into_iter()
        .map(|(rt, stats)| StartRow { system: system_name(&rt), mode: mode_of(&rt), outcome: stats.into() })
        .collect();
    for name in ["strata", "crun", "runc"] {
        if !rows.iter().any(|r| r.system.starts_with(name)) {
            rows.push(unavailable_start(name, &format!("`{name}` is not installed")));
        }
    }
    rows.push(StartRow {
        system: FLOOR.into(),
        mode: format!(
            "`unshare {} --fork chroot ROOTFS` + exec: the same namespaces, no runtime (no mounts, cgroup, capabilities, seccomp)",
            flags.join(" ")
        ),
        outcome: floor.into(),
    });
    rows
}

/// The start-time floor's row in the start table.
pub const FLOOR: &str = "kernel floor (no runtime)";

fn unavailable_start(name: &str, reason: &str) -> StartRow {
    StartRow { system: format!("{name} (direct)"), mode: "-".into(), outcome: Outcome::Unavailable(reason.into()) }
}

fn system_name(rt: &Runtime) -> String {
    format!("{} (direct)", rt.name)
}

fn mode_of(rt: &Runtime) -> String {
    if rt.hide_hybrid_cgroup2 {
        "`run`, private mount ns, tmpfs over /sys/fs/cgroup/unified".into()
    } else {
        "`run`".into()
    }
}

/// A created and started container, killed and deleted on drop.
pub struct Detached {
    rt: Runtime,
    root: PathBuf,
    id: String,
    /// The container's init, as the runtime's `state` reports it.
    pub pid: u32,
}

impl Detached {
    /// Creates and starts a container of `bundle` (its program must keep running).
    pub fn start(rt: &Runtime, bundle: &Path, root: &Path) -> Result<Detached, String> {
        let id = next_id(rt);
        let mut create = runtime_command(rt, root);
        create.args(["create", "--bundle"]).arg(bundle).arg(&id).stdout(Stdio::null());
        run_checked(rt, create, "create")?;
        // From here on the guard deletes the container whatever happens.
        let mut guard = Detached { rt: rt.clone(), root: root.to_path_buf(), id, pid: 0 };
        let mut start = runtime_command(rt, root);
        start.arg("start").arg(&guard.id).stdout(Stdio::null());
        run_checked(rt, start, "start")?;
        let mut state = runtime_command(rt, root);
        state.arg("state").arg(&guard.id);
        let json = run_checked(rt, state, "state")?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("{} state: {e}", rt.name))?;
        guard.pid = v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{} state: no pid in {json}", rt.name))?;
        Ok(guard)
    }

    /// The container's processes.
    pub fn pids(&self) -> Vec<u32> {
        procmem::tree(self.pid)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let mut kill = runtime_command(&self.rt, &self.root);
        kill.args(["kill", &self.id, "KILL"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let _ = kill.status();
        let mut delete = runtime_command(&self.rt, &self.root);
        delete.args(["delete", "--force", &self.id]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let _ = delete.status();
    }
}

/// Memory of one sleeping busybox container per runtime, and whether any process of the runtime
/// stays resident once `start` has returned.
pub fn memory_rows() -> Vec<MemRow> {
    let rts = runtimes().unwrap_or_default();
    let mut rows = Vec::new();
    for name in ["strata", "crun", "runc"] {
        let Some(rt) = rts.iter().find(|r| r.name == name) else {
            rows.push(MemRow {
                system: format!("{name} (direct)"),
                note: "-".into(),
                outcome: Outcome::Unavailable(format!("`{name}` is not installed or not built")),
            });
            continue;
        };
        progress(format_args!("memory: {name}"));
        let r = (|| {
            let bundle = BusyboxBundle::new(&["/bin/sleep", "100000"])?;
            let state = tempfile::Builder::new().prefix("strata-report-mem-").tempdir().map_err(|e| e.to_string())?;
            let c = Detached::start(rt, bundle.path(), state.path())?;
            std::thread::sleep(std::time::Duration::from_millis(300));
            let pids = c.pids();
            let mem = procmem::sum_memory(&pids)?;
            let state_str = state.path().to_string_lossy().into_owned();
            let resident: Vec<u32> =
                procmem::processes_mentioning(&state_str).into_iter().filter(|p| !pids.contains(p)).collect();
            let note = if resident.is_empty() {
                format!("{} container process(es); no {name} process stays resident after `start`", pids.len())
            } else {
                format!(
                    "{} container process(es); {} {name} process(es) stay resident (not counted)",
                    pids.len(),
                    resident.len()
                )
            };
            drop(c);
            Ok::<_, String>((mem, note))
        })();
        rows.push(match r {
            Ok((mem, note)) => MemRow { system: format!("{name} (direct)"), note, outcome: Outcome::Measured(mem) },
            Err(e) => MemRow { system: format!("{name} (direct)"), note: "-".into(), outcome: Outcome::Unavailable(e) },
        });
    }
    rows
}

/// N sleeping strata containers: time until all have started, and their total memory.
pub fn density_rows(opts: &Options) -> Vec<DensityRow> {
    let n = opts.density_n();
    let system = "strata (direct)".to_string();
    let note = format!("N = {n} sleeping busybox containers, `create` + `start` one after another");
    let r = (|| {
        let rts = runtimes()?;
        let rt = rts.into_iter().find(|r| r.name == "strata").ok_or("strata is not built")?;
        let bundle = BusyboxBundle::new(&["/bin/sleep", "100000"])?;
        let state = tempfile::Builder::new().prefix("strata-report-density-").tempdir().map_err(|e| e.to_string())?;
        let mut running = Vec::with_capacity(n);
        let t = Instant::now();
        for i in 0..n {
            running.push(Detached::start(&rt, bundle.path(), state.path())?);
            if (i + 1) % 10 == 0 || i + 1 == n {
                progress(format_args!("density: {} / {n} strata containers running", i + 1));
            }
        }
        let all_ready_ms = t.elapsed().as_secs_f64() * 1e3;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pids: Vec<u32> = running.iter().flat_map(|c| c.pids()).collect();
        let total = procmem::sum_memory(&pids)?;
        progress(format_args!("density: removing {n} strata containers"));
        drop(running);
        let left = procmem::processes_mentioning(&state.path().to_string_lossy());
        if !left.is_empty() {
            return Err(format!("{} processes left after cleanup: {left:?}", left.len()));
        }
        Ok::<_, String>(DensityFigure { started: n, ready: n, all_ready_ms, total })
    })();
    vec![DensityRow { system, note, outcome: r.into() }]
}
