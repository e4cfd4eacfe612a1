//! Many `ctr run --rm` at once: `tasks` containers of `/bin/true` through one containerd, started
//! by `clients` concurrent clients, as a busy node starts them. Used by the throughput bench and
//! the soak.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, Peer};

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Load {
    /// Tasks asked for.
    pub tasks: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// From the first start to the last exit.
    pub wall: Duration,
    /// Each successful `ctr run --rm`, start to exit, sorted.
    pub latencies: Vec<Duration>,
    /// Each failure, with ctr's error.
    pub failures: Vec<String>,
    /// CPU time used meanwhile, by whom.
    pub cpu: CpuSplit,
}

/// CPU time (user + system) used during a load run: by the `ctr` clients, by containerd, and by
/// everything else on the machine (the shims, the runtime they run, the kernel's threads).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuSplit {
    /// The `ctr` processes (this process's reaped children).
    pub clients: Duration,
    /// The containerd daemon.
    pub containerd: Duration,
    /// The whole machine, all CPUs.
    pub total: Duration,
}

impl CpuSplit {
    /// What neither the clients nor containerd used: the shims, the runtime, the kernel.
    pub fn rest(&self) -> Duration {
        self.total.saturating_sub(self.clients + self.containerd)
    }
}

fn ticks(t: u64) -> Duration {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(t * 1_000_000_000 / hz)
}

/// (children's CPU of this process, containerd's CPU, the machine's busy CPU) now.
fn cpu_now(containerd: u32) -> (Duration, Duration, Duration) {
    // SAFETY: getrusage writes only into the struct it is given.
    let children = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    let stat = std::fs::read_to_string(format!("/proc/{containerd}/stat")).unwrap_or_default();
    // Every field keeps its place (the state letter reads as 0).
    let fields: Vec<u64> =
        stat.rsplit_once(") ").map(|(_, r)| r.split(' ').map(|f| f.parse().unwrap_or(0)).collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state.
    let daemon = ticks(fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0));
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        all.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = cpu.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    (children, daemon, ticks(busy))
}

impl Load {
    /// Completed tasks per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.5, 0.99), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// Runs `tasks` containers of `/bin/true` with `peer`, `clients` at a time; ids are
/// `<prefix>-<n>`. Every container is removed (`--rm`; a failed one by `ctr containers rm`).
pub fn run_load(ctd: &Containerd, peer: &Peer, tasks: usize, clients: usize, prefix: &str) -> Load {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(tasks));
    let failures = Mutex::new(Vec::new());
    let cpu_before = cpu_now(ctd.pid());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients.max(1) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= tasks {
                        break;
                    }
                    let id = format!("{prefix}-{n}");
                    match ctd.run(peer, &["--rm"], &id, &["/bin/true"]) {
                        Ok(t) => latencies.lock().unwrap_or_else(|e| e.into_inner()).push(t),
                        Err(e) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{id}: {e}")),
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    let cpu_after = cpu_now(ctd.pid());
    let cpu = CpuSplit {
        clients: cpu_after.0.saturating_sub(cpu_before.0),
        containerd: cpu_after.1.saturating_sub(cpu_before.1),
        total: cpu_after.2.saturating_sub(cpu_before.2),
    };
    let mut latencies = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    latencies.sort();
    Load { tasks, clients, wall, latencies, failures: failures.into_inner().unwrap_or_else(|e| e.into_inner()), cpu }
}
