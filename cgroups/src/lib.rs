//! cgroups v2 for strata: find the unified hierarchy, create a container's cgroup, apply OCI
//! resources (including device rules as an eBPF program), freeze, kill, read statistics, watch
//! memory events and remove it.
//!
//! strata manages cgroup v2 only. On a hybrid host (v1 controllers plus a cgroup2 mount at
//! `/sys/fs/cgroup/unified`) the v2 tree exists but offers few controllers; a request for a
//! controller the host does not offer is refused by [`Hierarchy::check_resources`] before
//! anything is created.
//!
//! Modules, in the order a container meets them: [`hierarchy`] (where cgroup2 is, what it
//! offers), [`resources`] (OCI fields → interface file writes), [`values`] (the interface file
//! formats), [`devices`] (the eBPF device program), [`cgroup`] (one cgroup's life), [`stats`]
//! and [`events`]; [`systemd`] is the systemd cgroup driver (a transient scope per container).

pub mod cgroup;
pub mod devices;
pub mod error;
pub mod events;
pub mod hierarchy;
pub mod resources;
pub mod stats;
pub mod systemd;
pub mod values;

pub use cgroup::Cgroup;
pub use error::{Error, Result};
pub use events::{MemoryEventStream, MemoryEventUpdate};
pub use hierarchy::{Hierarchy, Layout};
pub use stats::{CpuStats, HugetlbStats, IoStat, MemoryEvents, MemoryStats, PidsStats, PressureStats, Stats};
pub use values::{Limit, shares_to_weight};

#[cfg(test)]
mod tests;
