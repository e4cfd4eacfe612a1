//! The containerd shim (runtime v2, task API v2 over ttrpc) on the engine: what
//! `containerd-shim-strata-v1` runs.
//!
//! - [`StrataShim`] is the shim's life: `start` spawns the daemon and prints its address,
//!   `delete` cleans up after a dead daemon, and the daemon serves [`service::Service`] (its
//!   process table and exits in `service`, the task API's calls in `task_api`).
//! - The daemon never forks a container itself: [`helper`] explains why and how a fresh
//!   single-threaded helper process does it.
//! - [`stdio`] connects a process to containerd's FIFOs (or a [`binary_log`] logger program);
//!   [`metrics`] converts cgroup statistics.

pub mod binary_log;
pub mod helper;
pub mod metrics;
pub mod options;
pub mod service;
pub mod stdio;
mod task_api;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.strata.v1";

/// The annotation that groups a pod's containers into one shim.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The shim's configuration for the containerd-shim crate: its own reaper and subreaper are
/// used (the helper's orphans, the containers' processes, come back to the daemon).
pub fn config() -> Config {
    Config::default()
}

/// The configuration for one invocation: `start` only spawns the daemon and prints its address,
/// so it neither reaps children nor becomes a subreaper. Registering the crate's SIGCHLD handler
/// there served no purpose and once left a `start` spinning while its handler state was torn
/// down (seen with containerd 2.1 in the pod test); without it `start` has nothing to race.
pub fn config_for(args: &[String]) -> Config {
    let mut c = config();
    if args.len() > 1 && args.last().is_some_and(|a| a == "start") {
        c.no_reaper = true;
        c.no_sub_reaper = true;
    }
    c
}

/// The shim: one per container, or per pod when grouped.
pub struct StrataShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

/// The directory of shim sockets, `/run/containerd/s`, made root-only: a path socket there
/// cannot be reached from a container's network namespace (unlike an abstract socket, the
/// CVE-2020-15257 class) nor by other users of the host.
fn secure_socket_dir() -> containerd_shim::Result<()> {
    let dir = PathBuf::from(containerd_shim::SOCKET_ROOT).join("s");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| containerd_shim::Error::Other(format!("creating {}: {e}", dir.display())))?;
    let md = std::fs::metadata(&dir).map_err(|e| containerd_shim::Error::Other(format!("{}: {e}", dir.display())))?;
    if md.uid() != 0 || md.mode() & 0o077 != 0 {
        std::os::unix::fs::chown(&dir, Some(0), Some(0))
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| containerd_shim::Error::Other(format!("making {} root-only: {e}", dir.display())))?;
    }
    Ok(())
}

/// The shim group of a container: its pod's sandbox id when it has one, else its own id.
fn grouping(id: &str) -> String {
    let spec = std::fs::read("config.json").ok().and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
    spec.as_ref()
        .and_then(|s| s.pointer(&format!("/annotations/{}", SANDBOX_ANNOTATION.replace('/', "~1"))))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string())
}

/// Cleans up after a dead shim (`delete`): kills what is left of container `id`, removes its
/// cgroup and state, and unmounts its rootfs. Returns the exit status containerd records.
pub fn cleanup(namespace: &str, id: &str, bundle: &std::path::Path) -> DeleteResponse {
    if let Ok(root) = crate::state::StateRoot::new(service::task_state_root(bundle, namespace)) {
        let _ = crate::container::delete(&root, id, true);
    }
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    // The dead daemon's socket (its path is in the bundle's `address` file).
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = PathBuf::from(address.trim().trim_start_matches("unix://"));
        if path.starts_with(containerd_shim::SOCKET_ROOT)
            && std::fs::symlink_metadata(&path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&path);
        }
    }
    DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(containerd_shim::util::timestamp().unwrap_or_default()),
        ..Default::default()
    }
}

impl containerd_shim::Shim for StrataShim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        StrataShim { namespace: args.namespace.clone(), id: args.id.clone(), bundle, exit: Arc::default() }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        secure_socket_dir()?;
        let group = grouping(&opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        Ok(cleanup(&self.namespace, &self.id, &self.bundle))
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        match service::Service::new(&self.namespace, publisher, self.exit.clone()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("starting the task service: {e}");
                eprintln!("containerd-shim-strata-v1: starting the task service: {e}");
                std::process::exit(1);
            }
        }
    }
}
