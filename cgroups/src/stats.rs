//! Resource usage of a cgroup in typed form, shaped so the shim can fill containerd's cgroups
//! v2 `Metrics` message from it. Every file is optional: a controller that is not enabled
//! leaves its part `None` or empty.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Result, io_err};
use crate::values::{DeviceNumber, Limit, Pressure, parse_flat_keyed, parse_nested_keyed};

/// Everything [`crate::Cgroup::stats`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// cpu.stat (always present in cgroup v2).
    pub cpu: CpuStats,
    /// memory.* files, when the memory controller is enabled.
    pub memory: Option<MemoryStats>,
    /// pids.* files, when the pids controller is enabled.
    pub pids: Option<PidsStats>,
    /// io.stat, one entry per device.
    pub io: Vec<IoStat>,
    /// `hugetlb.<size>.*` files, one entry per page size.
    pub hugetlb: Vec<HugetlbStats>,
    /// The pressure stall information files.
    pub pressure: PressureStats,
}

/// cpu.stat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time in microseconds.
    pub usage_usec: u64,
    /// User time.
    pub user_usec: u64,
    /// System time.
    pub system_usec: u64,
    /// Enforcement periods elapsed (cpu controller only).
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time spent throttled.
    pub throttled_usec: u64,
    /// Periods in which burst was used.
    pub nr_bursts: u64,
    /// Burst time used.
    pub burst_usec: u64,
}

/// memory.events: how often each memory event happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Reclaimed while under memory.low.
    pub low: u64,
    /// Throttled above memory.high.
    pub high: u64,
    /// Usage reached memory.max.
    pub max: u64,
    /// The OOM killer was invoked for the cgroup.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Whole-group OOM kills.
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// Parses the text of memory.events.
    pub fn parse(text: &str) -> MemoryEvents {
        let m = parse_flat_keyed(text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        MemoryEvents {
            low: get("low"),
            high: get("high"),
            max: get("max"),
            oom: get("oom"),
            oom_kill: get("oom_kill"),
            oom_group_kill: get("oom_group_kill"),
        }
    }
}

/// memory.* files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// memory.current.
    pub current: u64,
    /// memory.peak (kernel 5.19 and later).
    pub peak: Option<u64>,
    /// memory.max.
    pub max: Option<Limit>,
    /// memory.high.
    pub high: Option<Limit>,
    /// memory.low.
    pub low: Option<u64>,
    /// memory.swap.current.
    pub swap_current: Option<u64>,
    /// memory.swap.max.
    pub swap_max: Option<Limit>,
    /// memory.stat, every key the kernel reports (anon, file, kernel, sock, pgfault, ...).
    pub stat: BTreeMap<String, u64>,
    /// memory.events.
    pub events: MemoryEvents,
}

/// pids.* files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsStats {
    /// pids.current.
    pub current: u64,
    /// pids.max.
    pub max: Limit,
    /// Forks refused because of pids.max (pids.events `max`).
    pub refused_forks: u64,
}

/// One device's line of io.stat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStat {
    /// The device.
    pub device: Option<DeviceNumber>,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
    /// Bytes discarded.
    pub dbytes: u64,
    /// Discard operations.
    pub dios: u64,
}

/// `hugetlb.<size>.*` files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugetlbStats {
    /// The page size as in the file names, e.g. `2MB`.
    pub page_size: String,
    /// `hugetlb.<size>.current`.
    pub current: u64,
    /// `hugetlb.<size>.max`.
    pub max: Limit,
    /// Allocations refused because of the limit (`hugetlb.<size>.events` `max`).
    pub failcnt: u64,
}

/// cpu.pressure, memory.pressure, io.pressure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureStats {
    /// cpu.pressure.
    pub cpu: Option<Pressure>,
    /// memory.pressure.
    pub memory: Option<Pressure>,
    /// io.pressure.
    pub io: Option<Pressure>,
}

/// Reads a file, `None` if it does not exist.
fn read_opt(dir: &Path, file: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // Files of an absent or disabled controller may also refuse reads.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn parse_opt<T: std::str::FromStr<Err = crate::Error>>(text: Option<String>) -> Result<Option<T>> {
    text.map(|t| t.trim().parse()).transpose()
}

fn u64_opt(dir: &Path, file: &str) -> Result<Option<u64>> {
    Ok(parse_opt::<Limit>(read_opt(dir, file)?)?.and_then(Limit::value))
}

/// Reads every statistic of the cgroup at `dir`.
pub fn read(dir: &Path) -> Result<Stats> {
    let mut s = Stats::default();
    if let Some(text) = read_opt(dir, "cpu.stat")? {
        let m = parse_flat_keyed(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        s.cpu = CpuStats {
            usage_usec: get("usage_usec"),
            user_usec: get("user_usec"),
            system_usec: get("system_usec"),
            nr_periods: get("nr_periods"),
            nr_throttled: get("nr_throttled"),
            throttled_usec: get("throttled_usec"),
            nr_bursts: get("nr_bursts"),
            burst_usec: get("burst_usec"),
        };
    }
    if let Some(current) = u64_opt(dir, "memory.current")? {
        s.memory = Some(MemoryStats {
            current,
            peak: u64_opt(dir, "memory.peak")?,
            max: parse_opt(read_opt(dir, "memory.max")?)?,
            high: parse_opt(read_opt(dir, "memory.high")?)?,
            low: u64_opt(dir, "memory.low")?,
            swap_current: u64_opt(dir, "memory.swap.current")?,
            swap_max: parse_opt(read_opt(dir, "memory.swap.max")?)?,
            stat: read_opt(dir, "memory.stat")?.map(|t| parse_flat_keyed(&t)).unwrap_or_default(),
            events: read_opt(dir, "memory.events")?.map(|t| MemoryEvents::parse(&t)).unwrap_or_default(),
        });
    }
    if let Some(current) = u64_opt(dir, "pids.current")? {
        s.pids = Some(PidsStats {
            current,
            max: parse_opt(read_opt(dir, "pids.max")?)?.unwrap_or(Limit::Max),
            refused_forks: read_opt(dir, "pids.events")?
                .and_then(|t| parse_flat_keyed(&t).get("max").copied())
                .unwrap_or(0),
        });
    }
    if let Some(text) = read_opt(dir, "io.stat")? {
        for (dev, m) in parse_nested_keyed(&text)? {
            let get = |k: &str| m.get(k).and_then(|v| v.value()).unwrap_or(0);
            s.io.push(IoStat {
                device: dev.parse().ok(),
                rbytes: get("rbytes"),
                wbytes: get("wbytes"),
                rios: get("rios"),
                wios: get("wios"),
                dbytes: get("dbytes"),
                dios: get("dios"),
            });
        }
    }
    s.hugetlb = read_hugetlb(dir)?;
    s.pressure = PressureStats {
        cpu: parse_opt(read_opt(dir, "cpu.pressure")?)?,
        memory: parse_opt(read_opt(dir, "memory.pressure")?)?,
        io: parse_opt(read_opt(dir, "io.pressure")?)?,
    };
    Ok(s)
}

fn read_hugetlb(dir: &Path) -> Result<Vec<HugetlbStats>> {
    let mut sizes: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_prefix("hugetlb.")?.strip_suffix(".current")?.to_string())
        })
        .filter(|size| !size.contains('.'))
        .collect();
    sizes.sort();
    let mut out = Vec::new();
    for size in sizes {
        out.push(HugetlbStats {
            current: u64_opt(dir, &format!("hugetlb.{size}.current"))?.unwrap_or(0),
            max: parse_opt(read_opt(dir, &format!("hugetlb.{size}.max"))?)?.unwrap_or(Limit::Max),
            failcnt: read_opt(dir, &format!("hugetlb.{size}.events"))?
                .and_then(|t| parse_flat_keyed(&t).get("max").copied())
                .unwrap_or(0),
            page_size: size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "cpu.stat",
                "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 5\nnr_throttled 2\nthrottled_usec 9\n",
            ),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1\nfile 2\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            ("pids.current", "3\n"),
            ("pids.max", "10\n"),
            ("pids.events", "max 4\n"),
            ("io.stat", "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n"),
            ("hugetlb.2MB.current", "0\n"),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.rsvd.current", "0\n"),
            ("hugetlb.2MB.events", "max 7\n"),
            (
                "cpu.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
        ];
        for (f, t) in files {
            fs::write(dir.path().join(f), t).unwrap();
        }
        let s = read(dir.path()).unwrap();
        assert_eq!(s.cpu.nr_throttled, 2);
        let m = s.memory.unwrap();
        assert_eq!((m.current, m.peak, m.max), (4096, Some(8192), Some(Limit::Max)));
        assert_eq!(m.events.oom_kill, 1);
        assert_eq!(m.stat["file"], 2);
        assert_eq!(s.pids, Some(PidsStats { current: 3, max: Limit::Value(10), refused_forks: 4 }));
        assert_eq!(s.io[0].dios, 6);
        assert_eq!(s.hugetlb.len(), 1);
        assert_eq!(s.hugetlb[0].failcnt, 7);
        assert_eq!(s.pressure.cpu.map(|p| p.some.total), Some(5));
        assert!(s.pressure.io.is_none());
    }

    #[test]
    fn empty_cgroup_gives_empty_stats() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Stats::default());
    }
}
