//! Parsers and formatters for the cgroup v2 interface files.
//!
//! Every file the crate reads or writes goes through one of these types, so the text formats of
//! the kernel (see Documentation/admin-guide/cgroup-v2.rst, "Interface Files") live in one place
//! and are covered by round-trip property tests.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A value that is either a number or the keyword `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    /// A finite limit.
    Value(u64),
    /// No limit: the kernel's `max`.
    Max,
}

impl Limit {
    /// Converts an OCI value, where a negative number (conventionally `-1`) means unlimited.
    pub fn from_oci(v: i64) -> Limit {
        u64::try_from(v).map_or(Limit::Max, Limit::Value)
    }

    /// The finite value, or `None` for `max`.
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Value(v) => Some(v),
            Limit::Max => None,
        }
    }
}

/// An unset limit is no limit.
impl Default for Limit {
    fn default() -> Limit {
        Limit::Max
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Value(v) => write!(f, "{v}"),
            Limit::Max => f.write_str("max"),
        }
    }
}

impl FromStr for Limit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Limit> {
        match s.trim() {
            "max" => Ok(Limit::Max),
            t => t.parse().map(Limit::Value).map_err(|_| parse_error("limit", s)),
        }
    }
}

fn parse_error(what: &'static str, text: &str) -> Error {
    Error::Parse { what, text: text.chars().take(120).collect() }
}

/// The contents of `cpu.max`: `$QUOTA $PERIOD` in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Run time allowed per period, or `max`.
    pub quota: Limit,
    /// The period; `None` keeps the cgroup's current period when written.
    pub period: Option<u64>,
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period {
            Some(p) => write!(f, "{} {p}", self.quota),
            None => write!(f, "{}", self.quota),
        }
    }
}

impl FromStr for CpuMax {
    type Err = Error;

    fn from_str(s: &str) -> Result<CpuMax> {
        let mut words = s.split_whitespace();
        let quota = words.next().ok_or_else(|| parse_error("cpu.max", s))?.parse()?;
        let period = match words.next() {
            Some(p) => Some(p.parse().map_err(|_| parse_error("cpu.max", s))?),
            None => None,
        };
        if words.next().is_some() {
            return Err(parse_error("cpu.max", s));
        }
        Ok(CpuMax { quota, period })
    }
}

/// A block device number, as `major:minor` in the io.* files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceNumber {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DeviceNumber {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceNumber> {
        let (ma, mi) = s.split_once(':').ok_or_else(|| parse_error("device number", s))?;
        Ok(DeviceNumber {
            major: ma.parse().map_err(|_| parse_error("device number", s))?,
            minor: mi.parse().map_err(|_| parse_error("device number", s))?,
        })
    }
}

/// One line of `io.max`: the throttle limits of one device. `None` leaves a key unchanged when
/// written; the kernel reports unset keys as `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoMax {
    /// The device.
    pub device: Option<DeviceNumber>,
    /// Read bytes per second.
    pub rbps: Option<Limit>,
    /// Write bytes per second.
    pub wbps: Option<Limit>,
    /// Read operations per second.
    pub riops: Option<Limit>,
    /// Write operations per second.
    pub wiops: Option<Limit>,
}

impl fmt::Display for IoMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("0:0")?,
        }
        for (key, value) in [("rbps", self.rbps), ("wbps", self.wbps), ("riops", self.riops), ("wiops", self.wiops)] {
            if let Some(v) = value {
                write!(f, " {key}={v}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for IoMax {
    type Err = Error;

    fn from_str(s: &str) -> Result<IoMax> {
        let mut words = s.split_whitespace();
        let device = words.next().ok_or_else(|| parse_error("io.max", s))?.parse()?;
        let mut out = IoMax { device: Some(device), ..IoMax::default() };
        for word in words {
            let (k, v) = word.split_once('=').ok_or_else(|| parse_error("io.max", s))?;
            let v = Some(v.parse()?);
            match k {
                "rbps" => out.rbps = v,
                "wbps" => out.wbps = v,
                "riops" => out.riops = v,
                "wiops" => out.wiops = v,
                _ => return Err(parse_error("io.max", s)),
            }
        }
        Ok(out)
    }
}

/// One line of `rdma.max`: `$DEVICE hca_handle=N hca_object=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaMax {
    /// The RDMA device name (for example `mlx4_0`).
    pub device: String,
    /// Maximum HCA handles.
    pub hca_handle: Limit,
    /// Maximum HCA objects.
    pub hca_object: Limit,
}

impl fmt::Display for RdmaMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hca_handle={} hca_object={}", self.device, self.hca_handle, self.hca_object)
    }
}

impl FromStr for RdmaMax {
    type Err = Error;

    fn from_str(s: &str) -> Result<RdmaMax> {
        let mut words = s.split_whitespace();
        let device = words.next().ok_or_else(|| parse_error("rdma.max", s))?.to_string();
        let (mut hca_handle, mut hca_object) = (Limit::Max, Limit::Max);
        for word in words {
            match word.split_once('=') {
                Some(("hca_handle", v)) => hca_handle = v.parse()?,
                Some(("hca_object", v)) => hca_object = v.parse()?,
                _ => return Err(parse_error("rdma.max", s)),
            }
        }
        Ok(RdmaMax { device, hca_handle, hca_object })
    }
}

/// Parses a flat keyed file (`memory.stat`, `cpu.stat`, `memory.events`): `KEY VALUE` lines.
/// Lines whose value is not an integer are skipped, so new kernel keys never break parsing.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (k, v) = (w.next()?, w.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Formats a flat keyed map the way the kernel prints it.
pub fn format_flat_keyed(map: &BTreeMap<String, u64>) -> String {
    map.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
}

/// Parses a nested keyed file (`io.stat`): `NAME KEY=VALUE ...` lines.
pub fn parse_nested_keyed(text: &str) -> Result<Vec<(String, BTreeMap<String, Limit>)>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let mut map = BTreeMap::new();
        for word in words {
            let (k, v) = word.split_once('=').ok_or_else(|| parse_error("nested keyed file", line))?;
            map.insert(k.to_string(), v.parse()?);
        }
        out.push((name.to_string(), map));
    }
    Ok(out)
}

/// One line of a pressure (PSI) file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PressureLine {
    /// Share of time stalled over the last 10 s, in percent.
    pub avg10: f64,
    /// Over the last 60 s.
    pub avg60: f64,
    /// Over the last 300 s.
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total: u64,
}

/// The contents of a `*.pressure` file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    /// Time some tasks were stalled.
    pub some: PressureLine,
    /// Time all non-idle tasks were stalled (absent for cpu on older kernels).
    pub full: Option<PressureLine>,
}

impl FromStr for Pressure {
    type Err = Error;

    fn from_str(s: &str) -> Result<Pressure> {
        let mut out = Pressure::default();
        let mut seen_some = false;
        for line in s.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let mut p = PressureLine::default();
            for word in words {
                let (k, v) = word.split_once('=').ok_or_else(|| parse_error("pressure", line))?;
                let bad = |_| parse_error("pressure", line);
                match k {
                    "avg10" => p.avg10 = v.parse().map_err(bad)?,
                    "avg60" => p.avg60 = v.parse().map_err(bad)?,
                    "avg300" => p.avg300 = v.parse().map_err(bad)?,
                    "total" => p.total = v.parse().map_err(|_| parse_error("pressure", line))?,
                    _ => {}
                }
            }
            match kind {
                "some" => {
                    out.some = p;
                    seen_some = true;
                }
                "full" => out.full = Some(p),
                _ => return Err(parse_error("pressure", line)),
            }
        }
        if !seen_some {
            return Err(parse_error("pressure", s));
        }
        Ok(out)
    }
}

/// Parses a list of cpus or memory nodes (`0-3,7`), as in cpuset.cpus; returns the sorted ids.
pub fn parse_id_list(s: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = |_| parse_error("cpu or node list", s);
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().map_err(bad)?, b.parse().map_err(bad)?);
                if a > b || b - a > 65_536 {
                    return Err(parse_error("cpu or node list", s));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(bad)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Converts cgroup v1 `cpu.shares` (2..262144, default 1024) to cgroup v2 `cpu.weight`
/// (1..10000, default 100) with the conversion runc (since 1.3.2) and crun (since 1.23) use, so
/// that a config means the same under every runtime: in log2 of the shares, a quadratic through
/// the three points (2, 1), (1024, 100) and (262144, 10000), so that the defaults meet. The
/// linear conversion before it sent 1024 shares to weight 39: a container given the default share
/// got less than two fifths of a sibling with the default weight. 0 means unset: no weight.
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            // The result lies in (1, 10000]: the cast cannot truncate.
            10f64.powf(exponent).ceil() as u64
        }
    }
}

/// Converts a cgroup v1 `blkio.weight` (10..1000) to cgroup v2 `io.weight` (1..10000), as runc does.
pub fn blkio_weight_to_io_weight(weight: u64) -> u64 {
    let weight = weight.clamp(10, 1000);
    1 + (weight - 10) * 9999 / 990
}

/// Converts OCI `memory.swap` (the v1 memory+swap limit) to cgroup v2 `memory.swap.max` (swap
/// alone), following runc: `-1` is unlimited; otherwise swap must be at least the memory limit.
pub fn swap_to_v2(swap: i64, memory_limit: Option<i64>) -> Result<Limit> {
    if swap < 0 {
        return Ok(Limit::Max);
    }
    match memory_limit {
        Some(l) if l >= 0 && swap >= l => Ok(Limit::Value((swap - l) as u64)),
        Some(l) if l >= 0 => Err(Error::InvalidResource {
            field: "memory.swap",
            reason: format!("memory+swap limit {swap} is below the memory limit {l}; it must be at least as large"),
        }),
        _ => Err(Error::InvalidResource {
            field: "memory.swap",
            reason: "a swap limit needs a finite memory.limit; set memory.limit as well".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limit() -> impl Strategy<Value = Limit> {
        prop_oneof![Just(Limit::Max), any::<u64>().prop_map(Limit::Value)]
    }

    fn opt_limit() -> impl Strategy<Value = Option<Limit>> {
        proptest::option::of(limit())
    }

    #[test]
    fn limit_parses_max_and_numbers() {
        assert_eq!("max\n".parse::<Limit>().unwrap(), Limit::Max);
        assert_eq!("4096".parse::<Limit>().unwrap(), Limit::Value(4096));
        assert!("-1".parse::<Limit>().is_err());
        assert!("".parse::<Limit>().is_err());
        assert_eq!(Limit::from_oci(-1), Limit::Max);
        assert_eq!(Limit::from_oci(0), Limit::Value(0));
    }

    #[test]
    fn cpu_max_keeps_period_optional() {
        let c: CpuMax = "max 100000\n".parse().unwrap();
        assert_eq!(c, CpuMax { quota: Limit::Max, period: Some(100_000) });
        assert_eq!(CpuMax { quota: Limit::Value(5000), period: None }.to_string(), "5000");
        assert!("1 2 3".parse::<CpuMax>().is_err());
    }

    #[test]
    fn swap_follows_runc() {
        assert_eq!(swap_to_v2(-1, None).unwrap(), Limit::Max);
        assert_eq!(swap_to_v2(300, Some(100)).unwrap(), Limit::Value(200));
        assert_eq!(swap_to_v2(100, Some(100)).unwrap(), Limit::Value(0));
        assert!(swap_to_v2(50, Some(100)).is_err());
        assert!(swap_to_v2(50, None).is_err());
        assert!(swap_to_v2(50, Some(-1)).is_err());
    }

    #[test]
    fn pressure_parses_kernel_text() {
        let p: Pressure =
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
                .parse()
                .unwrap();
        assert_eq!(p.some.total, 1234);
        assert!((p.some.avg10 - 1.5).abs() < f64::EPSILON);
        assert_eq!(p.full.map(|f| f.total), Some(7));
        assert!("".parse::<Pressure>().is_err());
    }

    #[test]
    fn nested_keyed_parses_io_stat() {
        let v = parse_nested_keyed("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n").unwrap();
        assert_eq!(v[0].0, "8:0");
        assert_eq!(v[0].1["wios"], Limit::Value(4));
    }

    #[test]
    fn id_list_expands_ranges() {
        assert_eq!(parse_id_list("0-2,5,1\n").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_id_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_id_list("3-1").is_err());
        assert!(parse_id_list("a").is_err());
    }

    #[test]
    fn weight_conversions_hit_the_ends() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(0), 0);
        // Points of the conversion runc 1.3.2 and crun 1.23 publish (2 → 1 and 262144 → 10000
        // above, the default 1024 → 100), and values between them.
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
        assert_eq!(shares_to_weight(3), 2);
        assert_eq!(shares_to_weight(262_143), 10_000);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }

    proptest! {
        #[test]
        fn limit_round_trips(l in limit()) {
            prop_assert_eq!(l.to_string().parse::<Limit>().unwrap(), l);
        }

        #[test]
        fn limit_from_oci_is_max_exactly_for_negatives(v in any::<i64>()) {
            prop_assert_eq!(Limit::from_oci(v) == Limit::Max, v < 0);
        }

        #[test]
        fn cpu_max_round_trips(q in limit(), p in proptest::option::of(any::<u64>())) {
            let c = CpuMax { quota: q, period: p };
            prop_assert_eq!(c.to_string().parse::<CpuMax>().unwrap(), c);
        }

        #[test]
        fn io_max_round_trips(ma in 0u64..4096, mi in 0u64..1 << 20, r in opt_limit(), w in opt_limit(), ri in opt_limit(), wi in opt_limit()) {
            let m = IoMax { device: Some(DeviceNumber { major: ma, minor: mi }), rbps: r, wbps: w, riops: ri, wiops: wi };
            prop_assert_eq!(m.to_string().parse::<IoMax>().unwrap(), m);
        }

        #[test]
        fn rdma_max_round_trips(dev in "[a-z][a-z0-9_]{0,12}", h in limit(), o in limit()) {
            let m = RdmaMax { device: dev, hca_handle: h, hca_object: o };
            prop_assert_eq!(m.to_string().parse::<RdmaMax>().unwrap(), m);
        }

        #[test]
        fn flat_keyed_round_trips(map in proptest::collection::btree_map("[a-z_]{1,20}", any::<u64>(), 0..20)) {
            prop_assert_eq!(parse_flat_keyed(&format_flat_keyed(&map)), map);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,64}") {
            let _ = s.parse::<Limit>();
            let _ = s.parse::<CpuMax>();
            let _ = s.parse::<IoMax>();
            let _ = s.parse::<RdmaMax>();
            let _ = s.parse::<Pressure>();
            let _ = parse_nested_keyed(&s);
            let _ = parse_id_list(&s);
            let _ = parse_flat_keyed(&s);
        }

        #[test]
        fn weight_is_in_range_and_monotonic(a in 0u64..=1 << 20, b in 0u64..=1 << 20) {
            let (wa, wb) = (shares_to_weight(a.max(2)), shares_to_weight(b.max(2)));
            prop_assert!((1..=10_000).contains(&wa));
            prop_assert!(a.max(2) > b.max(2) || wa <= wb);
            let (ia, ib) = (blkio_weight_to_io_weight(a), blkio_weight_to_io_weight(b));
            prop_assert!((1..=10_000).contains(&ia));
            prop_assert!(a > b || ia <= ib);
        }

        #[test]
        fn swap_is_difference_or_refused(swap in -1i64..1 << 40, limit in proptest::option::of(-1i64..1 << 40)) {
            match swap_to_v2(swap, limit) {
                Ok(Limit::Max) => prop_assert_eq!(swap, -1),
                Ok(Limit::Value(v)) => prop_assert_eq!(Some(v as i64 + limit.unwrap_or(0)), Some(swap)),
                Err(_) => prop_assert!(swap >= 0 && limit.is_none_or(|l| l < 0 || swap < l)),
            }
        }
    }
}
