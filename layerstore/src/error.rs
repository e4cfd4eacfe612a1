//! The one error type of the layer store; each variant names the digest, file or field at fault.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Result with the layer store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the layer store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string that is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits> or sha512:<128 hex digits>")]
    InvalidDigest(String),
    /// A system call on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `read`, `rename`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
    /// Content did not hash to the digest that names it.
    #[error("{what}: content is {actual}, expected {expected}; the source is corrupt or truncated")]
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest the content should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// Every host of a registry (its mirrors, then itself) failed; each one's error, in order.
    #[error("every host failed: {0}")]
    EveryHostFailed(String),
    /// A blob whose size is not the one its descriptor gives.
    #[error("{what}: {actual} bytes, but its descriptor says {expected}; the source is corrupt or hostile")]
    SizeMismatch {
        /// The blob, e.g. `layer sha256:…`.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What the source holds.
        actual: u64,
    },
    /// A layer above the store's limits (uncompressed bytes or entries): a bomb, or a layer
    /// larger than this store accepts.
    #[error(
        "layer {layer}: more than {limit} {what} uncompressed; the store's limit (raise it with {option}) stops it, and nothing of it is kept"
    )]
    LayerLimit {
        /// The layer blob.
        layer: Digest,
        /// `bytes` or `entries`.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// How to raise it.
        option: &'static str,
    },
    /// A blob that a manifest or index names is neither in the source nor in the store.
    #[error("blob {digest} named by {referenced_by} is missing from the image")]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
        /// What names it (`manifest sha256:...`, `index.json`).
        referenced_by: String,
    },
    /// A layer or manifest with a media type the store cannot read.
    #[error("{digest}: unknown media type {media_type:?}; supported: tar, tar+gzip, tar+zstd")]
    UnknownMediaType {
        /// The blob.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// A JSON document (manifest, config, index, record) that does not parse.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A document that parses but lacks or misuses a field.
    #[error("{what}: {field}: {reason}")]
    BadField {
        /// Which document.
        what: String,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer tar that is truncated or corrupt.
    #[error("layer {layer}: corrupt or truncated archive{}: {reason}", entry.as_ref().map(|e| format!(" at {e:?}")).unwrap_or_default())]
    BadArchive {
        /// The layer blob.
        layer: Digest,
        /// The entry being read, if any.
        entry: Option<String>,
        /// What the reader said.
        reason: String,
    },
    /// A tar entry that would write outside the snapshot.
    #[error("layer {layer}: entry {entry:?} escapes the root: {reason}")]
    Escape {
        /// The layer blob.
        layer: Digest,
        /// The offending entry.
        entry: String,
        /// Why (`..` component, absolute path, symlinked parent, hardlink out of the root).
        reason: &'static str,
    },
    /// A tar entry of a type the store does not unpack.
    #[error("layer {layer}: entry {entry:?} has unsupported type {kind}")]
    UnsupportedEntry {
        /// The layer blob.
        layer: Digest,
        /// The entry.
        entry: String,
        /// Its tar type.
        kind: String,
    },
    /// The path is not an OCI layout, OCI archive or `docker save` archive.
    #[error("{path}: not an image: {reason}")]
    NotAnImage {
        /// The source.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An index lists no manifest for this host's platform.
    #[error("{index}: no manifest for linux/{arch}; platforms offered: {offered}")]
    NoPlatform {
        /// The index.
        index: String,
        /// The host architecture (OCI spelling).
        arch: String,
        /// What the index offers.
        offered: String,
    },
    /// No image of that name is in the store.
    #[error("image {0:?} not found; `strata image ls` lists the images")]
    ImageNotFound(String),
    /// No container of that id has a root file system in the store.
    #[error("container {0:?} has no root file system in the store")]
    ContainerNotFound(String),
    /// An image, container or name that already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// A name or id with characters the store cannot use as a file name.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// `container id`, `image name`.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// An image that cannot be written out.
    #[error("cannot export image {image:?}: {reason}")]
    CannotExport {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// A snapshot's tar split that does not rebuild its layer (the snapshot or the split changed).
    #[error("{split}: cannot rebuild the layer's tar: {reason}", split = split.display())]
    BadSplit {
        /// The split file.
        split: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Something in use cannot be removed.
    #[error("{what} is in use by {by}; remove those first")]
    InUse {
        /// What was to be removed.
        what: String,
        /// What uses it.
        by: String,
    },
    /// An image reference that does not parse (`registry/repository[:tag][@digest]`).
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A registry request that failed or was refused.
    #[error("pull {reference}: {url}: {}{reason}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
    Registry {
        /// The image reference being pulled.
        reference: String,
        /// The request (`GET <url>`).
        url: String,
        /// The HTTP status, when the registry answered.
        status: Option<u16>,
        /// What went wrong and what the user can do.
        reason: String,
    },
    /// Mounting the overlay root file system failed.
    #[error("mount overlay at {target}: {step}: {source}")]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// Which step of the mount API failed.
        step: &'static str,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// An [`Error::Json`] for the document `what`.
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let what = what.into();
        move |source| Error::Json { what, source }
    }
}
