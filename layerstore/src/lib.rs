//! Content-addressed image store: verified blobs, images imported from OCI layouts and archives,
//! layers unpacked once into snapshots keyed by chain ID, files deduplicated into a content pool,
//! overlay root file systems for containers, reference-counted garbage collection and fsck.
//!
//! On-disk layout under the store root (every step that makes something visible is a rename):
//!
//! ```text
//! lock                      flock: shared for container refs, exclusive for import and gc
//! blobs/<alg>/<hex>         verified blobs (manifests, configs, compressed layers), read-only
//! ingest/                   temp files of blobs being written; never read (`*.partial`: resumable pulls)
//! snapshots/<chain hex>/fs  one unpacked layer (overlayfs form), renamed into place when complete
//! snapshots/<chain hex>/tar-split.zst  what rebuilds the layer's tar from fs/ (see `split`)
//! pool/<key>                content pool: one inode per (sha256, mode, uid, gid, mtime)
//! images/<hex(name)>.json   image records: name -> manifest, config, layers, chain IDs
//! containers/<id>/          ref.json (which image), upper/, work/, rootfs/ (the overlay mount)
//! tmp/                      snapshots being unpacked and archives being read; cleared by gc and fsck
//! containerd/               strata's containerd snapshotter (`strata-snapshotter`): its snapshots,
//!                           whose committed files are linked into pool/ too (counted by du, checked by fsck)
//! ```

mod adopt;
mod blobs;
mod digest;
mod error;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod import;
mod lower;
mod maintain;
mod mount;
mod pull;
mod split;
mod store;
mod unpack;

pub use adopt::{
    AdoptStats, ContentIndex, DataLayer, DeferredLinks, PassStats, Prehashed, STUB_MIN, clear_adoption_leftovers,
};
pub use blobs::{BlobStore, Ingested};
pub use digest::{Algorithm, Digest, Hasher, HashingReader, HashingWriter};
pub use error::{Error, Result};
pub use import::{check_layer_media_type, host_arch, layer_stream};
pub use maintain::{DiskUsage, FsckProblem, FsckReport, GcReport};
pub use pull::{
    NoProgress, PullOptions, PullProgress, PullReport, Reference, credentials, hosts, parse_challenge,
    parse_token_reply,
};
pub use store::{ContainerRef, ImageRecord, ImportOptions, Store};
pub use unpack::{LayerLimits, UnpackOptions, UnpackStats, unpack_layer};
