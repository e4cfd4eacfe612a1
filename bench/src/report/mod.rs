//! The containers-against-VMs report: start time, memory per instance, density and image size of
//! strata, runc, crun and a qemu microvm, and pod start through containerd's CRI (strata against
//! runc), measured side by side in one run and written as
//! `REPORT.md` plus SVG charts. `cargo run --release -p strata-bench --bin report` drives it.
//!
//! Every figure in the report comes from this run; what cannot be measured on the machine is kept
//! as a row marked `unavailable: <reason>`, never left out, so [`check::check_report`] can tell a
//! complete report from a broken one.

pub mod charts;
pub mod check;
pub mod containerd;
pub mod containers;
pub mod images;
pub mod machine;
pub mod markdown;
pub mod pods;
pub mod procmem;
pub mod scale;
pub mod vm;

use std::path::PathBuf;

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// The small run CI uses.
    pub short: bool,
    /// Where REPORT.md and the charts go.
    pub out: PathBuf,
}

impl Options {
    /// Interleaved rounds of each container start measurement.
    pub fn container_rounds(&self) -> usize {
        if self.short { 5 } else { 30 }
    }

    /// Interleaved rounds of each `ctr run` start measurement.
    pub fn containerd_rounds(&self) -> usize {
        if self.short { 3 } else { 20 }
    }

    /// VM boots per start measurement.
    pub fn vm_rounds(&self) -> usize {
        if self.short { 2 } else { 8 }
    }

    /// Containers started at once for the density figure.
    pub fn density_n(&self) -> usize {
        if self.short { 5 } else { 50 }
    }

    /// At most this many VMs boot at once: one per core (at most 4). Under TCG every VM keeps a
    /// core busy while it boots; 4 at once on 2 cores never became ready within a minute.
    pub fn vm_density_cap(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
    }

    /// Interleaved rounds of the pod start/teardown bench (full runs only).
    pub fn pod_rounds(&self) -> usize {
        10
    }

    /// Applications in the image-size set.
    pub fn apps(&self) -> usize {
        if self.short { 2 } else { 5 }
    }
}

/// A figure (or a set of figures) for one system: measured here, quoted from a publication, or
/// unavailable with the reason.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    /// Measured in this run.
    Measured(T),
    /// Quoted, not measured: the text says what and where from.
    Published(String),
    /// Not measured; the reason.
    Unavailable(String),
}

impl<T> Outcome<T> {
    /// The measured value, if any.
    pub fn measured(&self) -> Option<&T> {
        match self {
            Outcome::Measured(t) => Some(t),
            _ => None,
        }
    }
}

impl<T> From<Result<T, String>> for Outcome<T> {
    fn from(r: Result<T, String>) -> Self {
        match r {
            Ok(t) => Outcome::Measured(t),
            Err(e) => Outcome::Unavailable(e),
        }
    }
}

/// Samples in milliseconds with their summary.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Every sample, in the order measured.
    pub ms: Vec<f64>,
}

impl Samples {
    /// The median (0 when empty).
    pub fn median(&self) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.ms.iter().copied().fold(f64::INFINITY, f64::min).min(f64::MAX)
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }
}

/// Start time of one system.
#[derive(Debug, Clone)]
pub struct StartRow {
    /// System name as shown.
    pub system: String,
    /// How it ran (mode, accelerator).
    pub mode: String,
    /// The figures.
    pub outcome: Outcome<StartStats>,
}

/// Start-time samples of one system.
#[derive(Debug, Clone, Default)]
pub struct StartStats {
    /// `/bin/true`: start to exit.
    pub true_exit: Samples,
    /// `echo ready`: start to the first byte on the workload's stdout.
    pub first_byte: Samples,
    /// `echo ready`: start to exit.
    pub echo_exit: Samples,
    /// busybox httpd: start to the first HTTP answer received by the host.
    pub http_answer: Samples,
}

impl StartStats {
    /// Adds one round: `/bin/true` start to exit, `echo` first byte and exit, HTTP answer (ms).
    pub fn record(&mut self, (true_exit, first_byte, echo_exit, http_answer): (f64, f64, f64, f64)) {
        self.true_exit.ms.push(true_exit);
        self.first_byte.ms.push(first_byte);
        self.echo_exit.ms.push(echo_exit);
        self.http_answer.ms.push(http_answer);
    }
}

/// Memory of one running instance.
#[derive(Debug, Clone)]
pub struct MemRow {
    /// System name as shown.
    pub system: String,
    /// What was counted.
    pub note: String,
    /// RSS and PSS in KiB.
    pub outcome: Outcome<MemFigure>,
}

/// Resident and proportional set size, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemFigure {
    /// Resident set size.
    pub rss_kib: u64,
    /// Proportional set size.
    pub pss_kib: u64,
}

/// Density of one system.
#[derive(Debug, Clone)]
pub struct DensityRow {
    /// System name as shown.
    pub system: String,
    /// How many were asked for and why (caps).
    pub note: String,
    /// The figures.
    pub outcome: Outcome<DensityFigure>,
}

/// N instances at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct DensityFigure {
    /// Instances started.
    pub started: usize,
    /// Instances that became ready.
    pub ready: usize,
    /// From the first start to the last ready, ms.
    pub all_ready_ms: f64,
    /// Sum over the instances.
    pub total: MemFigure,
}

/// Bytes of one way of storing the app set.
#[derive(Debug, Clone)]
pub struct ImageRow {
    /// System name as shown.
    pub system: String,
    /// How it was stored.
    pub note: String,
    /// The figures.
    pub outcome: Outcome<ImageFigure>,
}

/// Bytes on disk and to transfer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageFigure {
    /// Allocated on disk.
    pub on_disk: u64,
    /// What a machine without any of it downloads.
    pub transfer: u64,
    /// The same set with nothing shared (for the store: logical size).
    pub logical: u64,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Short or full run.
    pub short: bool,
    /// Machine and versions, as (label, value).
    pub machine: Vec<(String, String)>,
    /// Start time.
    pub start: Vec<StartRow>,
    /// Memory per instance.
    pub memory: Vec<MemRow>,
    /// Density.
    pub density: Vec<DensityRow>,
    /// Image size: five applications on one base.
    pub images: Vec<ImageRow>,
    /// Image size: five applications, each on its own rebuild of the base.
    pub images_rebuilt: Vec<ImageRow>,
    /// Pods through CRI.
    pub pods: Vec<pods::PodRow>,
    /// Creation throughput through containerd.
    pub throughput: Vec<scale::ThroughputRow>,
    /// The soak (None when not run).
    pub soak: Option<Outcome<crate::soak::SoakReport>>,
    /// Faults injected, by kind (None when not run).
    pub faults: Option<Outcome<Vec<crate::faults::FaultRow>>>,
    /// The fuzz targets' run (None when not run).
    pub fuzz: Option<Outcome<scale::FuzzSummary>>,
    /// Free-form notes per section (method), in order.
    pub notes: Vec<String>,
    /// Wall time of the whole run, s.
    pub elapsed_s: f64,
}

/// Prints a progress line on stderr.
pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("report: {msg}");
}

/// Runs the whole suite and returns what was measured. Failures of one system never stop the
/// others: they become `unavailable` rows.
pub fn run_suite(opts: &Options) -> Report {
    let t0 = std::time::Instant::now();
    let mut report = Report { short: opts.short, ..Report::default() };
    progress("machine and versions");
    let vm_env = vm::VmEnv::prepare();
    let accel = vm::detect_accel(&vm_env);
    report.machine = machine::describe(&accel, vm_env.kernel());

    progress("start time");
    report.start = containers::start_times(opts);
    report.start.extend(containerd::start_rows(opts));
    report.start.extend(vm::start_rows(opts, &vm_env, &accel));

    progress("memory per instance");
    report.memory = containers::memory_rows();
    report.memory.extend(containerd::memory_rows());
    report.memory.extend(vm::memory_rows(&vm_env, &accel));

    progress("density");
    report.density = containers::density_rows(opts);
    report.density.extend(vm::density_rows(opts, &vm_env, &accel));

    progress("image size");
    (report.images, report.images_rebuilt) = images::image_rows(opts, vm_env.kernel_image());

    progress("pods through CRI");
    report.pods = pods::rows(opts);

    progress("creation throughput through containerd");
    report.throughput = scale::throughput_rows(opts);

    progress("reliability: the soak");
    report.soak = Some(scale::soak_row(opts));
    report.faults = Some(scale::fault_rows(opts));
    report.fuzz = Some(scale::fuzz_row(opts));

    report.elapsed_s = t0.elapsed().as_secs_f64();
    report
}
