//! `strata events`: a container's events as runc prints them, one JSON object a line —
//! `{"type":"stats","id":…,"data":{…}}` every interval (or once with `--stats`) and
//! `{"type":"oom","id":…}` when the OOM killer strikes in its cgroup — until its last process
//! is gone.

use crate::container;
use crate::error::{Error, Result};
use crate::state::{StateRoot, Status};
use cgroups::{Cgroup, Limit, MemoryEventStream, Stats};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One event, its fields in runc's order.
#[derive(Debug, serde::Serialize)]
pub struct Event<'a> {
    /// `stats` or `oom`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The container.
    pub id: &'a str,
    /// The statistics of a `stats` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

fn limit(l: Option<Limit>) -> u64 {
    match l {
        Some(Limit::Value(v)) => v,
        _ => u64::MAX,
    }
}

/// runc's stats data (its cgroup v2 shape) from a cgroup's statistics.
pub fn stats_data(s: &Stats) -> Value {
    let ns = |usec: u64| usec.saturating_mul(1000);
    let mut data = json!({
        "cpu": {
            "usage": {"total": ns(s.cpu.usage_usec), "kernel": ns(s.cpu.system_usec), "user": ns(s.cpu.user_usec)},
            "throttling": {
                "periods": s.cpu.nr_periods,
                "throttledPeriods": s.cpu.nr_throttled,
                "throttledTime": ns(s.cpu.throttled_usec)
            }
        },
        "memory": {},
        "pids": {},
        "blkio": {},
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": null
    });
    if let Some(m) = &s.memory {
        let max_limit = limit(m.max);
        data["memory"] = json!({
            "cache": m.stat.get("file").copied().unwrap_or(0),
            "usage": {"limit": max_limit, "usage": m.current, "max": m.peak.unwrap_or(0), "failcnt": m.events.max},
            "swap": {
                "limit": limit(m.swap_max).saturating_add(if max_limit == u64::MAX { 0 } else { max_limit }),
                "usage": m.swap_current.unwrap_or(0) + m.current,
                "max": 0,
                "failcnt": 0
            },
            "kernel": {"limit": 0, "failcnt": 0},
            "kernelTCP": {"limit": 0, "failcnt": 0},
            "raw": m.stat,
        });
    }
    if let Some(p) = &s.pids {
        data["pids"] = json!({"current": p.current, "limit": p.max.value().unwrap_or(0)});
    }
    let (mut bytes, mut ops) = (Vec::new(), Vec::new());
    for io in &s.io {
        let Some(d) = io.device else { continue };
        for (op, b, n) in [("Read", io.rbytes, io.rios), ("Write", io.wbytes, io.wios)] {
            bytes.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": b}));
            ops.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": n}));
        }
    }
    data["blkio"] = json!({"ioServiceBytesRecursive": bytes, "ioServicedRecursive": ops});
    for h in &s.hugetlb {
        data["hugetlb"][&h.page_size] = json!({"usage": h.current, "failcnt": h.failcnt});
    }
    data
}

/// Streams the events of container `id` to `emit`: statistics every `interval` (once, with
/// `stats_only`) and OOM kills as they happen, until the container's last process is gone.
pub fn watch(
    root: &StateRoot,
    id: &str,
    interval: Duration,
    stats_only: bool,
    mut emit: impl FnMut(&Event<'_>) -> Result<()>,
) -> Result<()> {
    if interval.is_zero() {
        return Err(Error::Invalid("--interval must be greater than 0".into()));
    }
    let st = root.load(id)?;
    if container::status(&st) == Status::Stopped {
        return Err(Error::WrongState { id: id.into(), status: "stopped".into(), action: "watch its events" });
    }
    let cg = Cgroup::open(st.cgroup_path.clone());
    let stats =
        |cg: &Cgroup| -> Result<Event<'_>> { Ok(Event { kind: "stats", id, data: Some(stats_data(&cg.stats()?)) }) };
    if stats_only {
        return emit(&stats(&cg)?);
    }
    // Without the memory controller there are no OOM events to watch, only statistics.
    let mut memory = MemoryEventStream::open(cg.path()).ok();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            if !cg.is_populated().unwrap_or(false) {
                return Ok(());
            }
            match stats(&cg) {
                Ok(v) => emit(&v)?,
                Err(e) => tracing::warn!("reading the statistics of {id}: {e}"),
            }
            next = Instant::now() + interval;
        }
        let wait = next.saturating_duration_since(Instant::now());
        match memory.as_mut() {
            Some(m) if !m.gone() => {
                if let Some(u) = m.wait(Some(wait))?
                    && u.new_oom_kills() > 0
                {
                    emit(&Event { kind: "oom", id, data: None })?;
                }
            }
            _ => std::thread::sleep(wait),
        }
        if !cg.path().exists() {
            return Ok(());
        }
    }
}
