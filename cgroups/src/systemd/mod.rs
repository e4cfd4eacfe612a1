//! The systemd cgroup driver: a container's cgroup is a transient scope unit that systemd
//! creates (`StartTransientUnit` with `Delegate=yes`) and removes (`StopUnit`), as runc's
//! `--systemd-cgroup` does. `linux.cgroupsPath` then reads `slice:prefix:name`: the scope
//! `prefix-name.scope` in `slice` (`system.slice` when empty), whose cgroup is
//! `<mount>/<slice path>/<prefix-name.scope>` (a slice `a-b.slice` lives in `a.slice/a-b.slice`).
//!
//! The resources systemd has properties for (memory, swap, pids, CPU weight and quota, cpusets)
//! are given to it as unit properties, so that a `daemon-reload` re-applies the container's
//! values rather than systemd's defaults; every resource is then also written to the scope's
//! interface files, where systemd has no property for it (io, hugetlb, rdma, devices, unified).

pub mod dbus;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};
use dbus::{Connection, Value};

/// systemd's private socket, where root reaches the manager without a bus daemon.
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";
/// How long a start or stop job may take (runc waits as long).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// A parsed `slice:prefix:name` cgroups path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdPath {
    /// The parent slice, e.g. `system.slice` or `kubepods-besteffort-pod1.slice`.
    pub slice: String,
    /// The scope unit's name, e.g. `cri-containerd-abc.scope`.
    pub unit: String,
}

impl SystemdPath {
    /// Parses `slice:prefix:name`; an empty slice is `system.slice`, an empty prefix names the
    /// scope `name.scope`.
    pub fn parse(cgroups_path: &str) -> Result<SystemdPath> {
        let invalid =
            |reason: &str| Error::InvalidSystemdPath { path: cgroups_path.to_string(), reason: reason.into() };
        let parts: Vec<&str> = cgroups_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(invalid("it must have the form slice:prefix:name"));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        if name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        if name.ends_with(".slice") {
            return Err(invalid("strata puts each container in a scope; a name ending in .slice is not supported"));
        }
        let unit = if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") };
        for (what, s) in [("slice", slice), ("unit", unit.as_str())] {
            if s.len() > 255 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b)) {
                return Err(invalid(&format!(
                    "the {what} name {s:?} is not a valid systemd unit name (letters, digits, and :-_.\\@; at most 255)"
                )));
            }
        }
        expand_slice(slice).map_err(|reason| invalid(&reason))?;
        Ok(SystemdPath { slice: slice.to_string(), unit })
    }

    /// The scope's cgroup, relative to the cgroup2 mount.
    pub fn cgroup_rel(&self) -> PathBuf {
        // parse() checked the slice
        expand_slice(&self.slice).unwrap_or_default().join(&self.unit)
    }
}

/// The cgroup directory of slice `slice`: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`,
/// `-.slice` the root.
pub fn expand_slice(slice: &str) -> std::result::Result<PathBuf, String> {
    let name = slice.strip_suffix(".slice").ok_or_else(|| format!("the slice {slice:?} does not end in .slice"))?;
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") || name.contains('/') {
        return Err(format!("the slice {slice:?} is not a valid slice name"));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

fn prop(name: &str, v: Value) -> Value {
    Value::Struct(vec![Value::Str(name.into()), Value::Variant(Box::new(v))])
}

/// A limit as systemd takes it: `max` is infinity (`u64::MAX`).
fn limit(value: &str) -> Option<u64> {
    if value == "max" { Some(u64::MAX) } else { value.parse().ok() }
}

/// A cpuset list (`0-3,6`) as the little-endian bit mask systemd's `AllowedCPUs` takes.
fn cpu_mask(list: &str) -> Option<Vec<u8>> {
    let mut mask = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi >= 1 << 16 {
            return None;
        }
        for bit in lo..=hi {
            if mask.len() <= bit / 8 {
                mask.resize(bit / 8 + 1, 0);
            }
            mask[bit / 8] |= 1 << (bit % 8);
        }
    }
    Some(mask)
}

/// The unit properties for `resources`: the interface-file values of [`crate::resources::plan`]
/// that systemd has a property for, converted to its units.
pub fn resource_properties(resources: &LinuxResources) -> Result<Vec<Value>> {
    let plan = crate::resources::plan(resources)?;
    let mut props = Vec::new();
    for write in &plan.writes {
        let Some((file, value)) = write.candidates.first() else { continue };
        let v = value.as_str();
        let p = match file.as_str() {
            "memory.max" => limit(v).map(|l| prop("MemoryMax", Value::U64(l))),
            "memory.low" => limit(v).map(|l| prop("MemoryLow", Value::U64(l))),
            "memory.high" => limit(v).map(|l| prop("MemoryHigh", Value::U64(l))),
            "memory.swap.max" => limit(v).map(|l| prop("MemorySwapMax", Value::U64(l))),
            "pids.max" => limit(v).map(|l| prop("TasksMax", Value::U64(l))),
            "cpu.weight" => v.parse().ok().map(|w| prop("CPUWeight", Value::U64(w))),
            "cpu.max" => {
                let (quota, period) = v.split_once(' ').unwrap_or((v, "100000"));
                let period: u64 = period.parse().unwrap_or(100_000);
                let per_sec = match limit(quota) {
                    Some(u64::MAX) | None => u64::MAX,
                    Some(q) => q.saturating_mul(1_000_000) / period.max(1),
                };
                props.push(prop("CPUQuotaPeriodUSec", Value::U64(period)));
                Some(prop("CPUQuotaPerSecUSec", Value::U64(per_sec)))
            }
            "cpuset.cpus" => cpu_mask(v).map(|m| prop("AllowedCPUs", bytes(m))),
            "cpuset.mems" => cpu_mask(v).map(|m| prop("AllowedMemoryNodes", bytes(m))),
            _ => None,
        };
        props.extend(p);
    }
    Ok(props)
}

fn bytes(b: Vec<u8>) -> Value {
    Value::Array("y".into(), b.into_iter().map(Value::Byte).collect())
}

/// A connection to systemd's manager.
pub struct Manager {
    conn: Connection,
}

impl Manager {
    /// Connects to systemd's private socket.
    pub fn connect() -> Result<Manager> {
        Manager::connect_to(Path::new(PRIVATE_SOCKET))
    }

    /// Connects to the manager listening at `socket`.
    pub fn connect_to(socket: &Path) -> Result<Manager> {
        let conn = Connection::connect(socket, JOB_TIMEOUT).map_err(|e| Error::Systemd {
            unit: String::new(),
            action: "connecting to systemd",
            message: format!("{}: {e} (is systemd PID 1 on this host?)", socket.display()),
        })?;
        Ok(Manager { conn })
    }

    fn call(&mut self, unit: &str, action: &'static str, member: &str, body: &[Value]) -> Result<Vec<Value>> {
        self.call_on(MANAGER_PATH, MANAGER, unit, action, member, body)
    }

    fn call_on(
        &mut self,
        path: &str,
        interface: &str,
        unit: &str,
        action: &'static str,
        member: &str,
        body: &[Value],
    ) -> Result<Vec<Value>> {
        let err = |message: String| Error::Systemd { unit: unit.to_string(), action, message };
        match self.conn.call(path, interface, member, body).map_err(|e| err(e.to_string()))? {
            Ok(reply) => Ok(reply),
            Err(e) => Err(err(format!("{}: {}", e.name, e.message))),
        }
    }

    /// The unit's `ActiveState`, or `None` when systemd has no such unit (any more).
    fn active_state(&mut self, unit: &str, action: &'static str) -> Result<Option<String>> {
        let reply = match self.call(unit, action, "GetUnit", &[Value::Str(unit.into())]) {
            Ok(reply) => reply,
            Err(Error::Systemd { message, .. }) if message.starts_with(NO_SUCH_UNIT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let path = reply.first().and_then(Value::as_str).unwrap_or_default().to_string();
        let body = [Value::Str("org.freedesktop.systemd1.Unit".into()), Value::Str("ActiveState".into())];
        let reply = match self.call_on(&path, "org.freedesktop.DBus.Properties", unit, action, "Get", &body) {
            Ok(reply) => reply,
            // collected between the two calls
            Err(Error::Systemd { message, .. }) if message.starts_with("org.freedesktop.DBus.Error.UnknownObject") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(match reply.first() {
            Some(Value::Variant(v)) => v.as_str().map(str::to_string),
            _ => None,
        })
    }

    /// Polls the unit's state until `done` decides (`Some`), or the job timeout passes. The
    /// state, not the `JobRemoved` signal, is what counts: a job systemd finds redundant (the
    /// stop of a scope that emptied and stopped by itself) ends without one.
    fn wait_state(
        &mut self,
        unit: &str,
        action: &'static str,
        mut done: impl FnMut(Option<&str>) -> Option<std::result::Result<(), String>>,
    ) -> Result<()> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            let state = self.active_state(unit, action)?;
            if let Some(outcome) = done(state.as_deref()) {
                return outcome.map_err(|message| Error::Systemd { unit: unit.to_string(), action, message });
            }
            if Instant::now() > deadline {
                return Err(Error::Systemd {
                    unit: unit.to_string(),
                    action,
                    message: format!(
                        "still {} after {}s",
                        state.as_deref().unwrap_or("unknown"),
                        JOB_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Starts the transient scope `path.unit` in `path.slice` holding `pid`, delegated, with
    /// `properties` (from [`resource_properties`]); returns when systemd has moved `pid` in.
    pub fn start_scope(
        &mut self,
        path: &SystemdPath,
        pid: i32,
        description: &str,
        properties: Vec<Value>,
    ) -> Result<()> {
        let pid = u32::try_from(pid).map_err(|_| Error::Systemd {
            unit: path.unit.clone(),
            action: "starting the scope",
            message: format!("invalid pid {pid}"),
        })?;
        let mut props = vec![
            prop("Description", Value::Str(description.into())),
            prop("Slice", Value::Str(path.slice.clone())),
            prop("Delegate", Value::Bool(true)),
            prop("PIDs", Value::Array("u".into(), vec![Value::U32(pid)])),
            prop("DefaultDependencies", Value::Bool(false)),
            // a scope that failed to start is forgotten, so the same name can be used again
            prop("CollectMode", Value::Str("inactive-or-failed".into())),
            prop("MemoryAccounting", Value::Bool(true)),
            prop("CPUAccounting", Value::Bool(true)),
            prop("IOAccounting", Value::Bool(true)),
            prop("TasksAccounting", Value::Bool(true)),
        ];
        props.extend(properties);
        let body = [
            Value::Str(path.unit.clone()),
            Value::Str("replace".into()),
            Value::Array("(sv)".into(), props),
            Value::Array("(sa(sv))".into(), vec![]),
        ];
        self.call(&path.unit, "starting the scope", "StartTransientUnit", &body)?;
        let unit = path.unit.clone();
        self.wait_state(&path.unit, "starting the scope", |state| match state {
            Some("active") => Some(Ok(())),
            Some("failed") | None => Some(Err(format!("systemd could not start it (see `journalctl -u {unit}`)"))),
            _ => None,
        })
    }

    /// Sets `properties` on `unit` for as long as it runs (`update`).
    pub fn set_properties(&mut self, unit: &str, properties: Vec<Value>) -> Result<()> {
        if properties.is_empty() {
            return Ok(());
        }
        let body = [Value::Str(unit.into()), Value::Bool(true), Value::Array("(sv)".into(), properties)];
        self.call(unit, "setting properties", "SetUnitProperties", &body).map(|_| ())
    }

    /// Stops `unit` and waits until it is gone; a unit systemd no longer has (a scope stops by
    /// itself once its last process exits) is not an error.
    pub fn stop_unit(&mut self, unit: &str) -> Result<()> {
        let body = [Value::Str(unit.into()), Value::Str("replace".into())];
        match self.call(unit, "stopping the scope", "StopUnit", &body) {
            Ok(_) => {}
            Err(Error::Systemd { message, .. }) if message.starts_with(NO_SUCH_UNIT) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.wait_state(unit, "stopping the scope", |state| match state {
            None | Some("inactive" | "failed") => Some(Ok(())),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_as_runc_reads_them() {
        let p = SystemdPath::parse("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap();
        assert_eq!(p.unit, "cri-containerd-abc.scope");
        assert_eq!(
            p.cgroup_rel(),
            Path::new(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        let p = SystemdPath::parse(":strata:c1").unwrap();
        assert_eq!((p.slice.as_str(), p.unit.as_str()), ("system.slice", "strata-c1.scope"));
        assert_eq!(p.cgroup_rel(), Path::new("system.slice/strata-c1.scope"));
        assert_eq!(SystemdPath::parse("-.slice::c").unwrap().cgroup_rel(), Path::new("c.scope"));
        for bad in ["/a/b", "a:b", "system.slice:x:", "sys:x:y", "a--b.slice:x:y", "s.slice:x:y/z", "s.slice:x:n.slice"]
        {
            let e = SystemdPath::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn resources_become_unit_properties() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 67108864, "swap": 134217728, "reservation": 1048576},
            "pids": {"limit": 50},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"}
        }))
        .unwrap();
        let props = resource_properties(&r).unwrap();
        let get = |name: &str| {
            props.iter().find_map(|p| match p {
                Value::Struct(f) if f[0] == Value::Str(name.into()) => match &f[1] {
                    Value::Variant(v) => Some((**v).clone()),
                    _ => None,
                },
                _ => None,
            })
        };
        assert_eq!(get("MemoryMax"), Some(Value::U64(67108864)));
        assert_eq!(get("MemorySwapMax"), Some(Value::U64(67108864)));
        assert_eq!(get("MemoryLow"), Some(Value::U64(1048576)));
        assert_eq!(get("TasksMax"), Some(Value::U64(50)));
        assert_eq!(get("CPUWeight"), Some(Value::U64(100)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Value::U64(500_000)));
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(Value::U64(100_000)));
        assert_eq!(get("AllowedCPUs"), Some(bytes(vec![0b1011])));
        assert_eq!(get("AllowedMemoryNodes"), Some(bytes(vec![1])));
        let unlimited: LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": -1}, "pids": {"limit": -1}})).unwrap();
        let props = resource_properties(&unlimited).unwrap();
        assert!(props.contains(&prop("MemoryMax", Value::U64(u64::MAX))), "{props:?}");
        assert!(props.contains(&prop("TasksMax", Value::U64(u64::MAX))), "{props:?}");
    }
}
