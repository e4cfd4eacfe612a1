//! REPORT.md: the tables, each system on its own row, measured figures with ratios to strata,
//! published figures labelled as such, and unavailable systems with their reason.

use std::fmt::Write;

use super::pods::PodRow;
use super::scale::ThroughputRow;
use super::{DensityRow, ImageRow, MemRow, Outcome, Report, Samples, StartRow};
use crate::soak::SoakReport;

/// Bytes as MiB with two decimals.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn kib_as_mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// `a / b` with two decimals, or `-` when it has no meaning.
pub fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if b > 0.0 && r.is_finite() { format!("{r:.2}") } else { "-".into() }
}

fn ms(v: f64) -> String {
    if v.is_finite() { format!("{v:.1}") } else { "-".into() }
}

fn dist(s: &Samples) -> String {
    if s.ms.is_empty() {
        return "-".into();
    }
    format!("{} ({}–{})", ms(s.median()), ms(s.min()), ms(s.max()))
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn not_measured<T>(o: &Outcome<T>, columns: usize) -> Option<String> {
    let text = match o {
        Outcome::Measured(_) => return None,
        Outcome::Published(t) => format!("published, not measured: {}", escape(t)),
        Outcome::Unavailable(r) => format!("unavailable: {}", escape(r)),
    };
    let mut cells = vec![text];
    cells.resize(columns, "-".into());
    Some(cells.join(" | "))
}

fn start_table(out: &mut String, rows: &[StartRow]) {
    let strata = rows.iter().find(|r| r.system == "strata (direct)").and_then(|r| r.outcome.measured());
    out.push_str(
        "| system | how | runs | `/bin/true` start → exit, ms: median (min–max) | `echo ready` start → first byte, ms | `echo ready` start → exit, ms | HTTP server start → first answer, ms | ratio system / strata (true → exit) | ratio system / strata (first byte) | ratio system / strata (HTTP answer) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = match not_measured(&r.outcome, 8) {
            Some(c) => c,
            None => {
                let Some(s) = r.outcome.measured() else { continue };
                let (rt, rf, rh) = match strata {
                    Some(st) => (
                        ratio(s.true_exit.median(), st.true_exit.median()),
                        ratio(s.first_byte.median(), st.first_byte.median()),
                        ratio(s.http_answer.median(), st.http_answer.median()),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                format!(
                    "{} | {} | {} | {} | {} | {rt} | {rf} | {rh}",
                    s.true_exit.ms.len(),
                    dist(&s.true_exit),
                    dist(&s.first_byte),
                    dist(&s.echo_exit),
                    dist(&s.http_answer)
                )
            }
        };
        let _ = writeln!(out, "| {} | {} | {cells} |", r.system, escape(&r.mode));
    }
}

fn memory_table(out: &mut String, rows: &[MemRow]) {
    let strata = rows.iter().find(|r| r.system == "strata (direct)").and_then(|r| r.outcome.measured()).copied();
    out.push_str("| system | what is counted | RSS | PSS | ratio PSS system / strata |\n|---|---|---|---|---|\n");
    for r in rows {
        let cells = match (not_measured(&r.outcome, 3), r.outcome.measured()) {
            (Some(c), _) => c,
            (None, Some(m)) => {
                let rt = strata.map_or_else(|| "-".into(), |s| ratio(m.pss_kib as f64, s.pss_kib as f64));
                format!("{} | {} | {rt}", kib_as_mib(m.rss_kib), kib_as_mib(m.pss_kib))
            }
            (None, None) => continue,
        };
        let _ = writeln!(out, "| {} | {} | {cells} |", r.system, escape(&r.note));
    }
}

fn density_table(out: &mut String, rows: &[DensityRow]) {
    let per = |d: &super::DensityFigure| d.total.pss_kib as f64 / d.ready.max(1) as f64;
    let strata = rows.iter().find(|r| r.system == "strata (direct)").and_then(|r| r.outcome.measured()).copied();
    out.push_str(
        "| system | what | started | ready | time to all ready, ms | total RSS | total PSS | PSS per instance | ratio per-instance PSS system / strata |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = match (not_measured(&r.outcome, 7), r.outcome.measured()) {
            (Some(c), _) => c,
            (None, Some(d)) => {
                let rt = strata.map_or_else(|| "-".into(), |s| ratio(per(d), per(&s)));
                format!(
                    "{} | {} | {} | {} | {} | {} | {rt}",
                    d.started,
                    d.ready,
                    ms(d.all_ready_ms),
                    kib_as_mib(d.total.rss_kib),
                    kib_as_mib(d.total.pss_kib),
                    kib_as_mib(per(d) as u64)
                )
            }
            (None, None) => continue,
        };
        let _ = writeln!(out, "| {} | {} | {cells} |", r.system, escape(&r.note));
    }
}

fn image_table(out: &mut String, rows: &[ImageRow]) {
    let strata =
        rows.iter().find(|r| r.system == super::images::SYSTEMS[1]).and_then(|r| r.outcome.measured()).copied();
    out.push_str(
        "| system | how | bytes on disk | bytes to transfer | nothing shared | ratio on disk system / strata (layer + file dedup) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = match (not_measured(&r.outcome, 4), r.outcome.measured()) {
            (Some(c), _) => c,
            (None, Some(f)) => {
                let rt = strata.map_or_else(|| "-".into(), |s| ratio(f.on_disk as f64, s.on_disk as f64));
                format!("{} | {} | {} | {rt}", mib(f.on_disk), mib(f.transfer), mib(f.logical))
            }
            (None, None) => continue,
        };
        let _ = writeln!(out, "| {} | {} | {cells} |", r.system, escape(&r.note));
    }
}

fn pod_table(out: &mut String, rows: &[PodRow]) {
    out.push_str(
        "| system | rounds | pod start → running, ms (median) | pod teardown, ms (median) | ratio strata / runc (start) | ratio strata / runc (teardown) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = match not_measured(&r.outcome, 5) {
            Some(c) => c,
            None => {
                let Some(f) = r.outcome.measured() else { continue };
                // strata's row carries the ratio to runc on the same containerd.
                let runc = r
                    .system
                    .strip_prefix("strata ")
                    .and_then(|rest| rows.iter().find(|o| o.system == format!("runc {rest}")))
                    .and_then(|o| o.outcome.measured());
                let (rs, rt) = match runc {
                    Some(p) => (ratio(f.start_ms, p.start_ms), ratio(f.teardown_ms, p.teardown_ms)),
                    None => ("-".into(), "-".into()),
                };
                format!("{} | {} | {} | {rs} | {rt}", f.rounds, ms(f.start_ms), ms(f.teardown_ms))
            }
        };
        let _ = writeln!(out, "| {} | {cells} |", escape(&r.system));
    }
}

fn throughput_table(out: &mut String, rows: &[ThroughputRow]) {
    out.push_str(
        "| system | tasks | tasks/s | latency p50, ms | latency p99, ms | failed | CPU per task, ms: ctr / containerd / shim + runtime + kernel | ratio strata / runc (tasks/s) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = match not_measured(&r.outcome, 7) {
            Some(c) => c,
            None => {
                let Some(f) = r.outcome.measured() else { continue };
                let runc = rows
                    .iter()
                    .find(|o| o.peer == "runc" && o.clients == r.clients)
                    .and_then(|o| o.outcome.measured())
                    .filter(|_| r.peer == "strata");
                let rt = runc.map_or("-".into(), |p| format!("{:.2}", f.per_second / p.per_second.max(1e-9)));
                format!(
                    "{} | {:.1} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {rt}",
                    f.tasks,
                    f.per_second,
                    ms(f.p50_ms),
                    ms(f.p99_ms),
                    f.failed,
                    f.cpu_ms.0,
                    f.cpu_ms.1,
                    f.cpu_ms.2
                )
            }
        };
        let _ = writeln!(out, "| {} | {cells} |", escape(&r.system));
    }
}

fn soak_table(out: &mut String, soak: Option<&Outcome<SoakReport>>) {
    out.push_str(
        "| system | CLI lifecycles | containerd lifecycles | execs into one container | pods (containers) | failed | left behind | that shim's RSS, KiB (after a tenth → end) |\n|---|---|---|---|---|---|---|---|\n",
    );
    let cells = match soak {
        None => "unavailable: not run | - | - | - | - | - | -".to_string(),
        Some(o) => match not_measured(o, 7) {
            Some(c) => c,
            None => match o.measured() {
                Some(s) => format!(
                    "{} | {} | {} | {} ({}) | {} | {} | {} → {}",
                    s.cli,
                    s.containerd,
                    s.execs,
                    s.pods,
                    s.pod_containers,
                    s.failures.len(),
                    if s.leaks.is_empty() {
                        "0".to_string()
                    } else {
                        format!("{}: {}", s.leaks.len(), escape(&s.leaks.join("; ")))
                    },
                    s.shim_rss_kib.0,
                    s.shim_rss_kib.1
                ),
                None => return,
            },
        },
    };
    let _ = writeln!(out, "| strata soak | {cells} |");
}

fn faults_table(out: &mut String, faults: Option<&Outcome<Vec<crate::faults::FaultRow>>>) {
    out.push_str(
        "\n| system | faults injected | kind | lost (left behind or broken after cleanup) |\n|---|---|---|---|\n",
    );
    let labels = ["strata faults, CLI", "strata faults, containerd"];
    let rows = match faults {
        None => vec![None; 2],
        Some(o) => match o.measured() {
            Some(rows) => rows.iter().map(Some).collect(),
            None => {
                let cells = not_measured(o, 3).unwrap_or_default();
                for label in labels {
                    let _ = writeln!(out, "| {label} | {cells} |");
                }
                return;
            }
        },
    };
    for (label, row) in labels.iter().zip(rows) {
        match row {
            None => {
                let _ = writeln!(out, "| {label} | unavailable: not run | - | - |");
            }
            Some(r) => {
                let lost = if r.lost.is_empty() {
                    "0".to_string()
                } else {
                    format!("{}: {}", r.lost.len(), escape(&r.lost.join("; ")))
                };
                let _ = writeln!(out, "| {label} | {} | {} | {lost} |", r.injected, escape(&r.kind));
            }
        }
    }
}

fn fuzz_table(out: &mut String, fuzz: Option<&Outcome<super::scale::FuzzSummary>>) {
    out.push_str("\n| system | targets | seconds each | inputs run | failed |\n|---|---|---|---|---|\n");
    let cells = match fuzz {
        None => "unavailable: not run | - | - | -".to_string(),
        Some(o) => match not_measured(o, 4) {
            Some(c) => c,
            None => match o.measured() {
                Some(f) => format!(
                    "{} | {} | {} | {}",
                    f.targets,
                    f.seconds,
                    f.inputs,
                    if f.failed.is_empty() { "0".to_string() } else { f.failed.join(", ") }
                ),
                None => return,
            },
        },
    };
    let _ = writeln!(out, "| strata fuzzing | {cells} |");
}

/// The whole REPORT.md.
pub fn render(r: &Report, command: &str) -> String {
    let mut out = String::new();
    let date = r.machine.iter().find(|(k, _)| k == "date (UTC)").map_or("-", |(_, v)| v.as_str());
    let _ = writeln!(out, "# strata: containers against VMs\n");
    let _ = writeln!(
        out,
        "Generated by `{command}` ({} mode) on {date} UTC; the run took {:.0} s. Every figure below was measured in \
         this run unless it is labelled *published, not measured*; systems that could not be measured are listed as \
         *unavailable* with the reason. Ratios are system / strata (below 1: smaller or faster than strata).\n",
        if r.short { "short" } else { "full" },
        r.elapsed_s
    );
    out.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in &r.machine {
        let _ = writeln!(out, "| {k} | {} |", escape(v));
    }
    out.push_str(
        "\n## 1. Start time\n\n\
         The same workloads everywhere: `/bin/true`; `echo ready`, whose first byte on its stdout marks the \
         workload's first instruction; and a small HTTP server, busybox `httpd` serving one page, timed from the start \
         until the host has the page back (the host asks again at once while the connection is refused). The HTTP \
         containers share the host's network namespace and listen on a fresh loopback port each run (`run --detach`, \
         resp. `ctr run --detach --net-host`), and are killed and deleted after the answer. The HTTP VM boots with the \
         virtio-net drivers in its initramfs; its /init brings up the address of qemu's user network, starts httpd and \
         prints `STRATA-READY`, after which the host asks through qemu's forward of a loopback port (asking before that \
         would only measure the retransmission backoff of qemu's user network). Containers: a busybox-static bundle with strata's default config (default \
         namespaces including network, default capabilities, masked paths, Docker's default seccomp profile), `run` \
         (create + start + wait + delete) timed from spawning the runtime to the first byte on the pipe and to the \
         runtime's exit; strata, crun and runc interleaved round by round. The kernel floor runs in the same \
         rounds: util-linux `unshare` of the bundle's namespaces, `chroot` into its root file system and exec of the \
         workload, timed the same way: what a start costs without a runtime (its ratio, floor / strata, is the \
         inverse of strata / floor). Through containerd: a private containerd \
         (own root, state and socket, CRI disabled, strata's shim first on its PATH) with the same busybox as a \
         one-layer OCI image imported from an archive built here; `ctr run --rm` timed from spawning `ctr` to the \
         first byte on its stdout and to its exit; strata's shim, runc's v2 shim, and crun through the runc v2 shim \
         interleaved round by round. VM: qemu `-M microvm` from spawning qemu to \
         `STRATA-READY` on the serial console (printed by /init, a busybox script, as its first command) and to qemu's \
         exit after /init ran `/bin/true` and `poweroff -f`; the accelerator is in the *how* column.\n\n![start time](start.svg)\n\n",
    );
    start_table(&mut out, &r.start);
    out.push_str(
        "\n## 2. Memory per running instance\n\n\
         A container running `sleep` (busybox), created and started detached: RSS and PSS summed from \
         `/proc/<pid>/smaps_rollup` over the container's processes. strata keeps no resident supervisor for a detached \
         container (nor do runc and crun without a shim): the *what is counted* column says whether any process of the \
         runtime was still alive. Through containerd (`ctr run --detach`): the shim process and the container's \
         processes under it, as containerd keeps them while the container runs. VM: the qemu process's RSS and PSS \
         once the guest sleeps.\n\n![memory](memory.svg)\n\n",
    );
    memory_table(&mut out, &r.memory);
    out.push_str(
        "\n## 3. Density\n\n\
         N sleeping instances at once: time from the first start until all are running (containers: `start` returned; \
         VMs: `STRATA-READY` seen), and their total memory. Everything is killed and deleted afterwards, also on error.\n\n![density](density.svg)\n\n",
    );
    density_table(&mut out, &r.density);
    out.push_str(
        "\n## 4. Image size\n\n\
         One application set built here: a base layer (Debian bookworm minbase from debootstrap in a full run, \
         busybox-static in a short one; the first row says which), a runtime layer every application shares, and per \
         application a layer with its script, its own data and a helper file identical across applications (contents \
         pseudo-random, so compression does not hide them). *Bytes to transfer* is what a machine holding none of it \
         fetches: the distinct compressed blobs for the store, the qcow2 files for VMs.\n\n![image size](images.svg)\n\n",
    );
    image_table(&mut out, &r.images);
    out.push_str(
        "\n## 4b. Image size: rebuilt bases\n\n\
         The same applications, each on its own rebuild of the base layer: the same files, with new mtimes on \
         its directories and on the files a rebuild regenerates, so every base layer has a digest of its own and \
         layer dedup shares nothing of it; only file dedup (strata's store, and containerd with strata's \
         snapshotter) can.\n\n",
    );
    image_table(&mut out, &r.images_rebuilt);
    out.push_str(
        "\n## 5. Pods through CRI\n\n\
         A pod as kubelet starts one through containerd's CRI: RunPodSandbox (the pause container, the CNI \
         bridge network), CreateContainer and StartContainer of one busybox container, until ContainerStatus says it \
         runs; then its teardown, StopPodSandbox and RemovePodSandbox. strata's handler (`io.containerd.strata.v1`) \
         and runc's (`io.containerd.runc.v2`, Debian's runc) alternate round by round on one containerd per version, \
         inside the project's pure cgroup v2 VM (one vCPU, TCG: absolute times are the emulator's, the ratio is the \
         figure), release builds (`vmtest/cri.sh --bench`).\n\n",
    );
    pod_table(&mut out, &r.pods);
    out.push_str(
        "\n## 6. Creation throughput through containerd\n\n\
         Containers of `/bin/true` started and removed by N concurrent `ctr run --rm` clients on one private \
         containerd (CRI disabled), strata's shim and runc's v2 shim alternating which goes first; tasks per second \
         over the whole batch, latency of each `ctr run`, and the CPU each task cost the machine, split into the \
         `ctr` clients, containerd, and the rest (the shim, the runtime and the kernel's work for them). The \
         `ctr` client and containerd cost both runtimes about the same, which caps the ratio: the last CPU column \
         is what the runtimes themselves cost, read from the whole machine's CPU time, so it holds only on an otherwise idle machine (`cargo bench -p strata-bench --bench throughput` prints the same).\n\n",
    );
    throughput_table(&mut out, &r.throughput);
    out.push_str(
        "\n## 7. Reliability\n\n\
         The soak (`strata-bench`'s `soak`): container lifecycles through the strata CLI (create, start, exec, \
         SIGKILL, delete; every other one with a terminal through a console socket) and `ctr run --rm` lifecycles \
         through containerd with strata's shim (4 clients), then execs into one long-lived container; before and \
         after, a census of host mounts, cgroups, strata and shim processes, state directories, containerd's \
         containers and active snapshots, containerd's and that shim's descriptors. *Left behind* is everything the \
         census found new (the goal is nothing); pods are a sandbox container and three containers run in it, \
         all served by one shim. Faults (`bench/src/faults.rs`): SIGKILL through the runtime's test hook \
         `STRATA_FAULT` at each step of `strata create` (the CLI, stage 1, the init), and through containerd at \
         each call strata's shim serves (on receipt; create and start also just before they answer) and at each \
         step of the create its helper runs; after each, the user's own commands clean up (`strata delete \
         --force`; `ctr task delete -f`, `ctr containers rm`) and *lost* counts whatever remains: state, \
         containerd's tasks and containers, shims, processes, cgroups, mounts, or an id that cannot run again. The \
         short run takes four points of each. CI also kills imports and pulls at nine moments, fills the store \
         during both, makes it read-only, fills the state root and kills containerd while a container writes \
         (`shim/tests/faults.rs`, the containerd suite); `bash bench/reliability.sh` runs all of it long. \
         Fuzzing: every cargo-fuzz target for a bounded time from its corpus (`fuzz/run.sh`).\n\n",
    );
    soak_table(&mut out, r.soak.as_ref());
    faults_table(&mut out, r.faults.as_ref());
    fuzz_table(&mut out, r.fuzz.as_ref());
    for n in &r.notes {
        let _ = writeln!(out, "\n{n}");
    }
    out
}
