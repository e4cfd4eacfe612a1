//! Rows for the runtimes as containerd drives them (`ctr run --rm`). They are measured only
//! where containerd and strata's shim both exist; otherwise each row says why it is missing.

use std::path::{Path, PathBuf};

use super::{Options, Outcome, StartRow};

/// The systems of this family, as the report names them.
pub const SYSTEMS: [&str; 3] = ["strata via containerd", "runc via containerd", "crun via containerd"];

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn shim_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_SHIM_BIN") {
        return Some(PathBuf::from(p));
    }
    which("containerd-shim-strata-v1").or_else(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/containerd-shim-strata-v1");
        p.is_file().then_some(p)
    })
}

/// Why the containerd rows cannot be measured here, or `None` when everything they need exists.
pub fn missing() -> Option<String> {
    if which("containerd").is_none() || which("ctr").is_none() {
        return Some("containerd and ctr are not installed".into());
    }
    if shim_binary().is_none() {
        return Some("containerd-shim-strata-v1 is not built or installed (another engineer's shim work)".into());
    }
    None
}

/// The containerd rows of the start-time table.
pub fn start_rows(_opts: &Options) -> Vec<StartRow> {
    let reason = missing().unwrap_or_else(|| {
        "containerd and containerd-shim-strata-v1 are present, but this report does not drive a private \
         containerd yet; `cargo bench -p strata-bench --bench shim` measures `ctr run --rm` for these"
            .into()
    });
    SYSTEMS
        .iter()
        .map(|s| StartRow {
            system: s.to_string(),
            mode: "`ctr run --rm`".into(),
            outcome: Outcome::Unavailable(reason.clone()),
        })
        .collect()
}
