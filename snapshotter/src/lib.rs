//! strata's snapshotter: containerd's snapshots API, served as a proxy snapshot plugin from the
//! layer store, so that what containerd unpacks shares files with everything else in the store.
//!
//! containerd unpacks each layer into an active snapshot (a directory, or an overlay upper layer
//! above the committed parents) and commits it; once the commit is answered, strata adopts the
//! layer's files into the store's content pool (see [`layerstore::Store::adopt_tree`]), so
//! identical files — of rebuilt base layers, of different images, of strata's own imports — keep
//! one inode. On the same socket, a differ (a proxy diff plugin, see [`differ`]) unpacks the
//! layers containerd applies into these snapshots itself.

pub mod differ;
pub mod service;
pub mod snapshots;

/// The wire types and the service, generated from `proto/` (modules nested as the proto
/// packages are, which the generated code's paths assume).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod api {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
            pub mod diff {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.diff.v1");
                }
            }
        }
    }
    pub use containerd::services::diff::v1 as diff;
    pub use containerd::services::snapshots::v1::*;
    pub use containerd::types;
}

use std::path::Path;

pub use service::Service;
pub use snapshots::{Error, Snapshots};

/// Serves the snapshots of the store at `root`, and the differ that unpacks layers into them
/// (reading blobs from the content store of the containerd whose root is `containerd`), on the
/// unix socket `address` until SIGTERM or SIGINT; removes the socket on the way out.
pub async fn serve(
    root: &Path,
    address: &Path,
    containerd: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let snapshots = Snapshots::open(root)?;
    // A read lease of the early hashing (see `service`) is broken by SIGIO, whose default action
    // ends the process; the lease holder needs no notice (it finishes its one file either way).
    // SAFETY: sets a signal's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create directory {}: {e}", dir.display()))?;
    }
    // A socket left by a daemon that died: this one holds the store's lock, so none serves it.
    match std::fs::symlink_metadata(address) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(address).map_err(|e| format!("remove stale socket {}: {e}", address.display()))?
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", address.display()).into()),
        Err(_) => {}
    }
    let listener =
        tokio::net::UnixListener::bind(address).map_err(|e| format!("listen on {}: {e}", address.display()))?;
    std::fs::set_permissions(address, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod 0600 {}: {e}", address.display()))?;
    eprintln!("strata-snapshotter: serving {} on {}", root.display(), address.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let service = Service::new(snapshots);
    let differ = differ::Differ::new(service.snapshots(), containerd);
    let served = tonic::transport::Server::builder()
        .add_service(api::snapshots_server::SnapshotsServer::new(service.clone()))
        .add_service(api::diff::diff_server::DiffServer::new(differ))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), stop)
        .await;
    let _ = std::fs::remove_file(address);
    // What follows the last answers (the last commit's adoption, its pool links): a tree left out
    // is only not deduplicated, but there is no reason to leave it so.
    service.settle().await;
    served?;
    Ok(())
}
