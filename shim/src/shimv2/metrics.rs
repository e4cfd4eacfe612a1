//! The cgroups crate's typed statistics as containerd's `io.containerd.cgroups.v2.Metrics`.

use cgroups::Stats;
use cgroups::stats::{MemoryStats, PressureStats};
use cgroups::values::{Limit, Pressure};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PSIData, PSIStats, PidsStat,
};
use protobuf::MessageField;

/// The type URL containerd expects in a `StatsResponse`.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

fn limit(l: Option<Limit>) -> u64 {
    l.and_then(Limit::value).unwrap_or(u64::MAX)
}

fn psi(p: &Option<Pressure>) -> MessageField<PSIStats> {
    let Some(p) = p else { return MessageField::none() };
    let line = |l: &cgroups::values::PressureLine| PSIData {
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
        total: l.total,
        ..Default::default()
    };
    MessageField::some(PSIStats {
        some: MessageField::some(line(&p.some)),
        full: p.full.as_ref().map(line).into(),
        ..Default::default()
    })
}

fn memory(m: &MemoryStats, pressure: &PressureStats) -> MemoryStat {
    let g = |k: &str| m.stat.get(k).copied().unwrap_or(0);
    MemoryStat {
        anon: g("anon"),
        file: g("file"),
        kernel_stack: g("kernel_stack"),
        slab: g("slab"),
        sock: g("sock"),
        shmem: g("shmem"),
        file_mapped: g("file_mapped"),
        file_dirty: g("file_dirty"),
        file_writeback: g("file_writeback"),
        anon_thp: g("anon_thp"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        slab_reclaimable: g("slab_reclaimable"),
        slab_unreclaimable: g("slab_unreclaimable"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        workingset_refault: g("workingset_refault"),
        workingset_activate: g("workingset_activate"),
        workingset_nodereclaim: g("workingset_nodereclaim"),
        pgrefill: g("pgrefill"),
        pgscan: g("pgscan"),
        pgsteal: g("pgsteal"),
        pgactivate: g("pgactivate"),
        pgdeactivate: g("pgdeactivate"),
        pglazyfree: g("pglazyfree"),
        pglazyfreed: g("pglazyfreed"),
        thp_fault_alloc: g("thp_fault_alloc"),
        thp_collapse_alloc: g("thp_collapse_alloc"),
        usage: m.current,
        usage_limit: limit(m.max),
        swap_usage: m.swap_current.unwrap_or(0),
        swap_limit: limit(m.swap_max),
        max_usage: m.peak.unwrap_or(0),
        psi: psi(&pressure.memory),
        ..Default::default()
    }
}

/// Converts a cgroup's statistics.
pub fn to_metrics(s: &Stats) -> Metrics {
    let mut m = Metrics::new();
    m.cpu = MessageField::some(CPUStat {
        usage_usec: s.cpu.usage_usec,
        user_usec: s.cpu.user_usec,
        system_usec: s.cpu.system_usec,
        nr_periods: s.cpu.nr_periods,
        nr_throttled: s.cpu.nr_throttled,
        throttled_usec: s.cpu.throttled_usec,
        nr_bursts: s.cpu.nr_bursts,
        burst_usec: s.cpu.burst_usec,
        psi: psi(&s.pressure.cpu),
        ..Default::default()
    });
    if let Some(p) = &s.pids {
        m.pids = MessageField::some(PidsStat { current: p.current, limit: limit(Some(p.max)), ..Default::default() });
    }
    if let Some(mem) = &s.memory {
        m.memory = MessageField::some(memory(mem, &s.pressure));
        let e = mem.events;
        m.memory_events = MessageField::some(MemoryEvents {
            low: e.low,
            high: e.high,
            max: e.max,
            oom: e.oom,
            oom_kill: e.oom_kill,
            oom_group_kill: e.oom_group_kill,
            ..Default::default()
        });
    }
    if !s.io.is_empty() || s.pressure.io.is_some() {
        m.io = MessageField::some(IOStat {
            usage: s
                .io
                .iter()
                .map(|d| IOEntry {
                    major: d.device.map(|n| n.major).unwrap_or(0),
                    minor: d.device.map(|n| n.minor).unwrap_or(0),
                    rbytes: d.rbytes,
                    wbytes: d.wbytes,
                    rios: d.rios,
                    wios: d.wios,
                    ..Default::default()
                })
                .collect(),
            psi: psi(&s.pressure.io),
            ..Default::default()
        });
    }
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| HugeTlbStat {
            current: h.current,
            max: limit(Some(h.max)),
            pagesize: h.page_size.clone(),
            failcnt: h.failcnt,
            ..Default::default()
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_memory_map_to_the_message() {
        let mut s = Stats::default();
        s.cpu.usage_usec = 7;
        s.memory = Some(MemoryStats { current: 4096, max: Some(Limit::Max), ..Default::default() });
        let m = to_metrics(&s);
        assert_eq!(m.cpu.usage_usec, 7);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert!(m.pids.is_none());
    }
}
