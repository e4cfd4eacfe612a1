//! OCI `LinuxResources` → cgroup v2 interface file writes.
//!
//! [`plan`] is a pure function from the OCI structure to the list of writes (and the device
//! rules), so the conversions are tested without a cgroup file system; [`crate::Cgroup::apply`]
//! carries the plan out.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use crate::error::{Error, Result};
use crate::values::{
    CpuMax, DeviceNumber, IoMax, Limit, RdmaMax, blkio_weight_to_io_weight, shares_to_weight, swap_to_v2,
};

/// One value to write. The first candidate whose file exists is written; when none exists the
/// write fails on the first candidate (naming the file) unless the write is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `(interface file, value)` in order of preference.
    pub candidates: Vec<(String, String)>,
    /// Skip silently when no candidate file exists.
    pub optional: bool,
}

impl Write {
    fn one(file: impl Into<String>, value: impl ToString) -> Write {
        Write { candidates: vec![(file.into(), value.to_string())], optional: false }
    }

    fn optional(file: impl Into<String>, value: impl ToString) -> Write {
        Write { optional: true, ..Write::one(file, value) }
    }

    /// The preferred file and value.
    pub fn first(&self) -> (&str, &str) {
        let (f, v) = &self.candidates[0];
        (f, v)
    }
}

/// What applying a `LinuxResources` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Interface file writes, in order.
    pub writes: Vec<Write>,
    /// A memory limit to check against memory.current first (OCI `checkBeforeUpdate`).
    pub check_memory_limit: Option<i64>,
    /// Device rules to compile into the eBPF device program, when the resources set any.
    pub devices: Option<Vec<LinuxDeviceCgroup>>,
}

/// Controllers a `unified` key may name, and the `&'static` names used in errors.
const KNOWN_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "io", "pids", "hugetlb", "rdma", "misc"];

/// `cgroup.*` files that belong to the runtime, not to the container's configuration.
const RESERVED_CORE_FILES: &[&str] =
    &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze", "cgroup.type"];

/// The controllers `resources` needs, with the OCI field that asks for each.
pub fn needed_controllers(r: &LinuxResources) -> Result<Vec<(&'static str, &'static str)>> {
    let mut out = Vec::new();
    if let Some(m) = r.memory()
        && (m.limit().is_some() || m.reservation().is_some() || m.swap().is_some())
    {
        out.push(("memory", "memory"));
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.idle().is_some()
            || c.burst().is_some()
        {
            out.push(("cpu", "cpu"));
        }
        if nonempty(c.cpus()) || nonempty(c.mems()) {
            out.push(("cpu.cpus", "cpuset"));
        }
    }
    if r.pids().is_some() {
        out.push(("pids", "pids"));
    }
    if let Some(b) = r.block_io() {
        let any = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
        if b.weight().is_some()
            || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
            || any(b.throttle_read_bps_device())
            || any(b.throttle_write_bps_device())
            || any(b.throttle_read_iops_device())
            || any(b.throttle_write_iops_device())
        {
            out.push(("blockIO", "io"));
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        out.push(("hugepageLimits", "hugetlb"));
    }
    if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
        out.push(("rdma", "rdma"));
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if let Some(c) = unified_controller(key)?
            && !out.iter().any(|(_, have)| *have == c)
        {
            out.push(("unified", c));
        }
    }
    Ok(out)
}

fn nonempty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// Validates a `unified` key and returns the controller it needs (`None` for `cgroup.*` files).
pub fn unified_controller(key: &str) -> Result<Option<&'static str>> {
    let refuse = |reason| Err(Error::InvalidUnifiedKey { key: key.to_string(), reason });
    if key.is_empty() || key.len() > 64 {
        return refuse("it must be an interface file name of 1 to 64 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        return refuse("only letters, digits, `_` and `.` may appear (no `/`, no path)");
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return refuse("it must have the form <controller>.<file>");
    }
    let Some((prefix, _)) = key.split_once('.') else {
        return refuse("it must have the form <controller>.<file>");
    };
    if prefix == "cgroup" {
        if RESERVED_CORE_FILES.contains(&key) {
            return refuse("this file is managed by the runtime");
        }
        return Ok(None);
    }
    match KNOWN_CONTROLLERS.iter().find(|c| **c == prefix) {
        Some(c) => Ok(Some(c)),
        None => refuse("its prefix is not a known cgroup v2 controller"),
    }
}

fn device(field: &'static str, major: i64, minor: i64) -> Result<DeviceNumber> {
    match (u64::try_from(major), u64::try_from(minor)) {
        (Ok(major), Ok(minor)) => Ok(DeviceNumber { major, minor }),
        _ => Err(Error::InvalidResource { field, reason: format!("device {major}:{minor} has a negative number") }),
    }
}

fn valid_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && matches!(unit, "KB" | "MB" | "GB")
}

/// Converts `r` into interface file writes, refusing values cgroup v2 cannot express.
pub fn plan(r: &LinuxResources) -> Result<Plan> {
    if let Some(devices) = r.devices() {
        // Refuse bad device rules here, before anything is created, not at attach time.
        crate::devices::program::rules_from_oci(devices)?;
    }
    let mut p = Plan { devices: r.devices().clone(), ..Plan::default() };
    let w = &mut p.writes;

    if let Some(m) = r.memory() {
        let limit = m.limit().filter(|l| *l != 0);
        if let Some(l) = limit {
            if l < -1 {
                return Err(Error::InvalidResource {
                    field: "memory.limit",
                    reason: format!("{l} is neither a byte count nor -1 (unlimited)"),
                });
            }
            w.push(Write::one("memory.max", Limit::from_oci(l)));
            if m.check_before_update() == Some(true) && l > 0 {
                p.check_memory_limit = Some(l);
            }
        }
        if let Some(res) = m.reservation().filter(|v| *v != 0) {
            w.push(Write::one("memory.low", Limit::from_oci(res)));
        }
        match m.swap().filter(|s| *s != 0) {
            Some(s) => w.push(Write::one("memory.swap.max", swap_to_v2(s, limit)?)),
            // runc: an unlimited memory with swap unset means unlimited swap too.
            None if limit == Some(-1) => w.push(Write::optional("memory.swap.max", Limit::Max)),
            None => {}
        }
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            tracing::warn!("linux.resources.memory.kernel/kernelTCP have no cgroup v2 equivalent; ignored");
        }
        if m.swappiness().is_some() || m.disable_oom_killer().is_some() {
            tracing::warn!("linux.resources.memory.swappiness/disableOOMKiller have no cgroup v2 equivalent; ignored");
        }
    }

    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            w.push(Write::one("cpu.weight", shares_to_weight(s)));
        }
        let quota = c.quota().filter(|q| *q != 0);
        let period = c.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
            let quota = quota.map_or(Limit::Max, Limit::from_oci);
            w.push(Write::one("cpu.max", CpuMax { quota, period }));
        }
        if let Some(b) = c.burst() {
            w.push(Write::one("cpu.max.burst", b));
        }
        if let Some(i) = c.idle() {
            if !(0..=1).contains(&i) {
                return Err(Error::InvalidResource { field: "cpu.idle", reason: format!("{i} must be 0 or 1") });
            }
            w.push(Write::one("cpu.idle", i));
        }
        if c.realtime_runtime().is_some_and(|v| v != 0) || c.realtime_period().is_some_and(|v| v != 0) {
            return Err(Error::Unsupported("cpu.realtimeRuntime/realtimePeriod (cgroup v2 has no rt bandwidth files)"));
        }
        // cpuset.mems is written first so a cpus list is never checked against stale mems.
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.trim().is_empty()) {
            crate::values::parse_id_list(mems)?;
            w.push(Write::one("cpuset.mems", mems.trim()));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
            crate::values::parse_id_list(cpus)?;
            w.push(Write::one("cpuset.cpus", cpus.trim()));
        }
    }

    if let Some(pids) = r.pids() {
        let limit = pids.limit();
        w.push(Write::one("pids.max", if limit <= 0 { Limit::Max } else { Limit::from_oci(limit) }));
    }

    if let Some(b) = r.block_io() {
        if let Some(weight) = b.weight().filter(|v| *v != 0) {
            w.push(Write {
                candidates: vec![
                    ("io.bfq.weight".into(), weight.to_string()),
                    ("io.weight".into(), format!("default {}", blkio_weight_to_io_weight(weight.into()))),
                ],
                optional: false,
            });
        }
        for wd in b.weight_device().iter().flatten() {
            let dev = device("blockIO.weightDevice", wd.major(), wd.minor())?;
            if let Some(weight) = wd.weight().filter(|v| *v != 0) {
                w.push(Write {
                    candidates: vec![
                        ("io.bfq.weight".into(), format!("{dev} {weight}")),
                        ("io.weight".into(), format!("{dev} {}", blkio_weight_to_io_weight(weight.into()))),
                    ],
                    optional: false,
                });
            }
        }
        let mut lines: Vec<IoMax> = Vec::new();
        let throttles = [
            (b.throttle_read_bps_device(), 0),
            (b.throttle_write_bps_device(), 1),
            (b.throttle_read_iops_device(), 2),
            (b.throttle_write_iops_device(), 3),
        ];
        for (list, which) in throttles {
            for t in list.iter().flatten() {
                let dev = device("blockIO.throttle", t.major(), t.minor())?;
                let idx = match lines.iter().position(|l| l.device == Some(dev)) {
                    Some(i) => i,
                    None => {
                        lines.push(IoMax { device: Some(dev), ..IoMax::default() });
                        lines.len() - 1
                    }
                };
                let rate = if t.rate() == 0 { Limit::Max } else { Limit::Value(t.rate()) };
                let line = &mut lines[idx];
                match which {
                    0 => line.rbps = Some(rate),
                    1 => line.wbps = Some(rate),
                    2 => line.riops = Some(rate),
                    _ => line.wiops = Some(rate),
                }
            }
        }
        w.extend(lines.into_iter().map(|l| Write::one("io.max", l)));
    }

    for h in r.hugepage_limits().iter().flatten() {
        if !valid_page_size(h.page_size()) {
            return Err(Error::InvalidResource {
                field: "hugepageLimits.pageSize",
                reason: format!("{:?} is not a page size like 2MB or 1GB", h.page_size()),
            });
        }
        let limit = Limit::from_oci(h.limit());
        w.push(Write::one(format!("hugetlb.{}.max", h.page_size()), limit));
        w.push(Write::optional(format!("hugetlb.{}.rsvd.max", h.page_size()), limit));
    }

    if let Some(rdma) = r.rdma() {
        let mut devices: Vec<_> = rdma.iter().collect();
        devices.sort_by(|a, b| a.0.cmp(b.0));
        for (dev, limits) in devices {
            if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                return Err(Error::InvalidResource {
                    field: "rdma",
                    reason: format!("{dev:?} is not an RDMA device name"),
                });
            }
            let to_limit = |v: Option<u32>| v.map_or(Limit::Max, |v| Limit::Value(v.into()));
            w.push(Write::one(
                "rdma.max",
                RdmaMax {
                    device: dev.clone(),
                    hca_handle: to_limit(limits.hca_handles()),
                    hca_object: to_limit(limits.hca_objects()),
                },
            ));
        }
    }

    if let Some(n) = r.network()
        && (n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()))
    {
        return Err(Error::Unsupported("network (net_cls and net_prio exist only in cgroup v1)"));
    }

    if let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (k, v) in keys {
            unified_controller(k)?;
            w.push(Write::one(k.as_str(), v));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn firsts(p: &Plan) -> Vec<(String, String)> {
        p.writes.iter().map(|w| (w.first().0.to_string(), w.first().1.to_string())).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn memory_fields_map_to_v2_files() {
        let p =
            plan(&res(r#"{"memory":{"limit":1048576,"reservation":524288,"swap":3145728,"checkBeforeUpdate":true}}"#))
                .unwrap();
        assert_eq!(
            firsts(&p),
            pairs(&[("memory.max", "1048576"), ("memory.low", "524288"), ("memory.swap.max", "2097152")])
        );
        assert_eq!(p.check_memory_limit, Some(1_048_576));
        let p = plan(&res(r#"{"memory":{"limit":-1}}"#)).unwrap();
        assert_eq!(firsts(&p), pairs(&[("memory.max", "max"), ("memory.swap.max", "max")]));
        assert!(p.writes[1].optional);
        assert!(plan(&res(r#"{"memory":{"swap":100}}"#)).is_err());
        assert!(plan(&res(r#"{"memory":{"limit":-5}}"#)).is_err());
    }

    #[test]
    fn cpu_fields_map_to_v2_files() {
        let p = plan(&res(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"burst":1000,"idle":1,"cpus":"0-1","mems":"0"}}"#,
        ))
        .unwrap();
        assert_eq!(
            firsts(&p),
            pairs(&[
                ("cpu.weight", "100"),
                ("cpu.max", "50000 100000"),
                ("cpu.max.burst", "1000"),
                ("cpu.idle", "1"),
                ("cpuset.mems", "0"),
                ("cpuset.cpus", "0-1"),
            ])
        );
        assert_eq!(firsts(&plan(&res(r#"{"cpu":{"quota":-1}}"#)).unwrap()), pairs(&[("cpu.max", "max")]));
        assert_eq!(firsts(&plan(&res(r#"{"cpu":{"period":20000}}"#)).unwrap()), pairs(&[("cpu.max", "max 20000")]));
        assert!(plan(&res(r#"{"cpu":{"idle":2}}"#)).is_err());
        assert!(plan(&res(r#"{"cpu":{"realtimeRuntime":5}}"#)).is_err());
        assert!(plan(&res(r#"{"cpu":{"cpus":"1-x"}}"#)).is_err());
    }

    #[test]
    fn pids_zero_or_negative_is_max() {
        assert_eq!(firsts(&plan(&res(r#"{"pids":{"limit":0}}"#)).unwrap()), pairs(&[("pids.max", "max")]));
        assert_eq!(firsts(&plan(&res(r#"{"pids":{"limit":-1}}"#)).unwrap()), pairs(&[("pids.max", "max")]));
        assert_eq!(firsts(&plan(&res(r#"{"pids":{"limit":32}}"#)).unwrap()), pairs(&[("pids.max", "32")]));
    }

    #[test]
    fn block_io_merges_throttles_per_device() {
        let p = plan(&res(r#"{"blockIO":{"weight":500,"weightDevice":[{"major":8,"minor":0,"weight":100}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1000}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":10},{"major":253,"minor":1,"rate":0}]}}"#))
        .unwrap();
        assert_eq!(p.writes[0].candidates[1], ("io.weight".into(), "default 4950".into()));
        assert_eq!(p.writes[1].candidates[0], ("io.bfq.weight".into(), "8:0 100".into()));
        assert_eq!(p.writes[2].first(), ("io.max", "8:0 rbps=1000 wiops=10"));
        assert_eq!(p.writes[3].first(), ("io.max", "253:1 wiops=max"));
        assert!(plan(&res(r#"{"blockIO":{"throttleReadBpsDevice":[{"major":-1,"minor":0,"rate":1}]}}"#)).is_err());
    }

    #[test]
    fn hugetlb_and_rdma() {
        let p =
            plan(&res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}],"rdma":{"mlx5_1":{"hcaHandles":3}}}"#))
                .unwrap();
        assert_eq!(
            firsts(&p),
            pairs(&[
                ("hugetlb.2MB.max", "4194304"),
                ("hugetlb.2MB.rsvd.max", "4194304"),
                ("rdma.max", "mlx5_1 hca_handle=3 hca_object=max"),
            ])
        );
        assert!(plan(&res(r#"{"hugepageLimits":[{"pageSize":"../2MB","limit":1}]}"#)).is_err());
        assert!(plan(&res(r#"{"rdma":{"a b":{}}}"#)).is_err());
    }

    #[test]
    fn unified_keys_are_validated() {
        let p = plan(&res(r#"{"unified":{"memory.high":"1000000","cgroup.max.depth":"3"}}"#)).unwrap();
        assert_eq!(firsts(&p), pairs(&[("cgroup.max.depth", "3"), ("memory.high", "1000000")]));
        for bad in [
            "../memory.max",
            "memory/../x",
            "memory",
            ".memory.max",
            "memory..max",
            "cgroup.procs",
            "cgroup.subtree_control",
            "foo.bar",
            "memory.max\n",
        ] {
            let r = res(&format!(r#"{{"unified":{{{}:"1"}}}}"#, serde_json::to_string(bad).unwrap()));
            assert!(plan(&r).is_err(), "{bad} accepted");
        }
        let need = needed_controllers(&res(r#"{"unified":{"pids.max":"5","cgroup.max.depth":"2"}}"#)).unwrap();
        assert_eq!(need, vec![("unified", "pids")]);
    }

    #[test]
    fn devices_are_carried_to_the_plan_and_need_no_controller() {
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#);
        assert_eq!(plan(&r).unwrap().devices.map(|d| d.len()), Some(1));
        assert!(needed_controllers(&r).unwrap().is_empty());
        assert!(plan(&res(r#"{"devices":[{"allow":true,"access":"x"}]}"#)).is_err());
    }

    proptest! {
        #[test]
        fn unified_accepted_keys_never_leave_the_cgroup(key in "[a-z./_]{0,20}") {
            if unified_controller(&key).is_ok() {
                prop_assert!(!key.contains('/') && !key.contains("..") && !key.starts_with('.'));
                prop_assert!(key.contains('.'));
            }
        }

        #[test]
        fn memory_limit_plans_exact_bytes_or_max(limit in -1i64..1 << 50) {
            let r = res(&format!(r#"{{"memory":{{"limit":{limit}}}}}"#));
            let p = plan(&r).unwrap();
            match limit {
                0 => prop_assert!(p.writes.is_empty()),
                -1 => prop_assert_eq!(p.writes[0].first(), ("memory.max", "max")),
                l => prop_assert_eq!(p.writes[0].first().1.parse::<u64>().ok(), Some(l as u64)),
            }
        }
    }
}
