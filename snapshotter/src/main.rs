//! `strata-snapshotter`: the daemon containerd reaches as `[proxy_plugins.strata]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serves containerd's snapshots API from strata's layer store (a proxy snapshot plugin).
#[derive(Debug, Parser)]
#[command(name = "strata-snapshotter", version)]
struct Args {
    /// The unix socket containerd's `proxy_plugins.strata.address` names.
    #[arg(long, default_value = "/run/strata/snapshotter.sock")]
    address: PathBuf,
    /// The image store (`strata image --store`) whose content pool the snapshots share; they
    /// live in its `containerd/` directory.
    #[arg(long, env = "STRATA_STORE", default_value = "/var/lib/strata")]
    store: PathBuf,
    /// containerd's root directory (its `root` setting), whose content store holds the layer
    /// blobs strata's differ (containerd's `proxy_plugins.strata-diff`) unpacks.
    #[arg(long, default_value = "/var/lib/containerd")]
    containerd_root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata-snapshotter: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(strata_snapshotter::serve(&args.store, &args.address, &args.containerd_root)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-snapshotter: {e}");
            ExitCode::FAILURE
        }
    }
}
