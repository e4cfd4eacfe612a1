//! Pulling images from a registry over the OCI distribution v2 API.
//!
//! The manifest is resolved first (an index or manifest list picks `linux/<host arch>`); then the config
//! and the layers not yet in the store are downloaded, a few at a time on std threads, each into
//! `ingest/pull-<alg>-<hex>.partial`. A download that breaks off leaves that file, and the next pull
//! resumes it with a `Range` request. A finished download goes through [`BlobStore::ingest`](crate::BlobStore),
//! so its digest is verified before it becomes visible, exactly as for an import; then the image is
//! unpacked by the import path. The whole pull holds the store's lock, like an import, and a failed
//! pull removes every blob it made visible.
//!
//! The HTTP client is `ureq` (blocking, rustls) rather than `oci-client`: the latter is built on tokio
//! and reqwest, which every build of the workspace would then compile, for a protocol that is a handful
//! of GETs.

mod client;
pub mod credentials;
pub mod hosts;
mod reference;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use oci_spec::image::{ImageIndex, ImageManifest};

use self::client::Client;
pub use self::client::{parse_challenge, parse_token_reply};
pub use self::reference::Reference;
use crate::fsutil::FileLock;
use crate::import::{Compression, LayerDesc, SourceImage, is_index, is_manifest, pick_platform};
use crate::store::{Created, ImageRecord, Store};
use crate::{Algorithm, Digest, Error, Ingested, Result};

/// The manifest media types a pull accepts.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `USER` and `PASS` for Basic auth or for the token service; when `None`, the auth files
    /// and credential helpers of [`credentials::CredentialSources`] are asked.
    pub credentials: Option<(String, String)>,
    /// Where to look for credentials (`None`: [`credentials::CredentialSources::from_env`]).
    pub credential_sources: Option<credentials::CredentialSources>,
    /// Plain HTTP even for a registry that is not on this host (`--plain-http`).
    pub plain_http: bool,
    /// HTTPS without verifying the registry's certificate (`--insecure-skip-tls-verify`).
    pub skip_tls_verify: bool,
    /// PEM files of CA certificates trusted besides the system's (`--ca-file`).
    pub ca_files: Vec<PathBuf>,
    /// Where mirrors are configured, containerd's way (`None`: [`hosts::DEFAULT_DIR`]).
    pub hosts_dir: Option<PathBuf>,
    /// Downloads at a time (0: 3).
    pub parallel: usize,
    /// The name to store the image under (default: the reference as given).
    pub name: Option<String>,
    /// Drop the compressed layer blobs once unpacked, as [`crate::ImportOptions::drop_layer_blobs`].
    pub drop_layer_blobs: bool,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The stored image.
    pub record: ImageRecord,
    /// Blobs downloaded (config and layers).
    pub blobs_fetched: usize,
    /// Bytes received for them.
    pub bytes_fetched: u64,
    /// Blobs skipped because the store had them.
    pub blobs_present: usize,
}

/// Progress of the blob downloads, called from the download threads.
pub trait PullProgress: Sync {
    /// A download of `size` bytes starts, `resumed_at` of them already on disk.
    fn started(&self, _digest: &Digest, _size: u64, _resumed_at: u64) {}
    /// `bytes` more arrived.
    fn advanced(&self, _digest: &Digest, _bytes: u64) {}
    /// The blob is verified and stored (or failed).
    fn finished(&self, _digest: &Digest) {}
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {}

/// A blob to download.
#[derive(Clone)]
struct Wanted {
    digest: Digest,
    size: u64,
    what: String,
}

impl Store {
    /// Pulls `reference` (`host[:port]/repository[:tag][@digest]`) into the store.
    pub fn pull(&self, reference: &str, opts: &PullOptions, progress: &dyn PullProgress) -> Result<PullReport> {
        let parsed = Reference::parse(reference)?;
        let scheme = if opts.plain_http || parsed.is_local() { "http" } else { "https" };
        let upstream = format!("{scheme}://{}", parsed.registry);
        let hosts_dir = opts.hosts_dir.clone().unwrap_or_else(|| PathBuf::from(hosts::DEFAULT_DIR));
        let sources = opts.credential_sources.clone().unwrap_or_else(credentials::CredentialSources::from_env);
        let mut clients = Vec::new();
        for host in hosts::hosts_for(&parsed.registry, &hosts_dir, &upstream)? {
            let name = host.url.split_once("://").map_or(host.url.as_str(), |(_, h)| h);
            // --user is for the registry named; a mirror's come from the auth files
            let credentials = match &opts.credentials {
                Some(c) if host.url == upstream => Some(c.clone()),
                _ => credentials::lookup(name, &sources)?,
            };
            let ca: Vec<PathBuf> = opts.ca_files.iter().chain(&host.ca).cloned().collect();
            let client = Client::new(&parsed, &host.url, credentials, &ca, opts.skip_tls_verify || host.skip_verify)?;
            clients.push((client, host));
        }
        let resolvers: Vec<&Client> = clients.iter().filter(|(_, h)| h.resolve).map(|(c, _)| c).collect();
        let pullers: Vec<&Client> = clients.iter().filter(|(_, h)| h.pull).map(|(c, _)| c).collect();
        // No store lock while talking to the registry: runs, imports and other pulls go on. Each
        // blob downloads into its `.partial` file under a per-digest lease; the store lock is
        // taken for the commit only (ingest, unpack, the image record).
        let (manifest, manifest_digest) = first_that_works(&resolvers, |c| fetch_manifest(c, &parsed))?;
        let what = format!("manifest {manifest_digest}");
        let parsed_manifest: ImageManifest = serde_json::from_slice(&manifest).map_err(Error::json(&what))?;
        let config: Digest = parsed_manifest.config().digest().to_string().parse()?;
        let mut layers = Vec::new();
        let mut wanted = vec![Wanted {
            digest: config.clone(),
            size: parsed_manifest.config().size(),
            what: format!("config {config}"),
        }];
        for l in parsed_manifest.layers() {
            let digest: Digest = l.digest().to_string().parse()?;
            // An unknown layer type fails before anything is downloaded.
            Compression::of_media_type(l.media_type().as_ref(), &digest)?;
            layers.push(LayerDesc { digest: digest.clone(), media_type: l.media_type().to_string(), size: l.size() });
            wanted.push(Wanted { digest: digest.clone(), size: l.size(), what: format!("layer {digest}") });
        }
        let mut seen = std::collections::BTreeSet::new();
        wanted.retain(|w| seen.insert(w.digest.clone()));
        let all: Vec<(Digest, u64, String)> =
            wanted.iter().map(|w| (w.digest.clone(), w.size, w.what.clone())).collect();
        let total = wanted.len();
        let created = Mutex::new(Created::default());
        let bytes = AtomicU64::new(0);
        // A lean pull fetches no layer whose snapshot the store has with a tar split.
        let (unneeded, config_fetched) = if opts.drop_layer_blobs {
            self.layers_on_disk(&pullers, &wanted[0], &layers, progress, &bytes)?
        } else {
            (HashMap::new(), 0)
        };
        wanted.retain(|w| !self.blobs.contains(&w.digest) && !unneeded.contains_key(&w.digest));
        let blobs_present = total - wanted.len();
        let config_size = parsed_manifest.config().size();
        let image =
            SourceImage { name: None, manifest, manifest_digest, config, config_size, layers, files: Vec::new() };
        let name = opts.name.clone().unwrap_or_else(|| reference.to_string());

        let result = self.download_all(&pullers, wanted, opts.parallel, progress, &bytes).and_then(|n| {
            let _lock = self.lock(true)?;
            let mut created = created.lock().map_err(|_| poisoned())?;
            for (digest, size, what) in all {
                // still on disk now that gc cannot run (else fetched now)
                if unneeded.get(&digest).is_some_and(|chains| chains.iter().all(|c| self.has_split(c))) {
                    continue;
                }
                let w = Wanted { digest, size, what };
                if self.commit_blob(&pullers, &w, progress, &bytes)? == Ingested::Created {
                    created.blobs.push(w.digest.clone());
                }
            }
            let mut record = self.import_image(None, &image, Some(&name), opts.drop_layer_blobs, &mut created)?;
            record.layer_blobs_dropped = opts.drop_layer_blobs;
            self.write_record(&record)?;
            if opts.drop_layer_blobs {
                self.drop_unkept_layer_blobs(std::slice::from_ref(&record))?;
            }
            Ok((record, n + config_fetched))
        });
        match result {
            Ok((record, blobs_fetched)) => {
                Ok(PullReport { record, blobs_fetched, bytes_fetched: bytes.into_inner(), blobs_present })
            }
            Err(e) => {
                self.roll_back(created.into_inner().unwrap_or_default());
                Err(e)
            }
        }
    }

    /// The layers (blob digest: the chain IDs it has in the image) whose snapshots the store has
    /// with tar splits, so that a pull that drops layer blobs need not fetch them; and whether the
    /// config was downloaded to learn its diff IDs (the store lacked it). A config that does not
    /// parse leaves every layer to fetch (the import reports it).
    fn layers_on_disk(
        &self,
        clients: &[&Client],
        config: &Wanted,
        layers: &[LayerDesc],
        progress: &dyn PullProgress,
        bytes: &AtomicU64,
    ) -> Result<(HashMap<Digest, Vec<Digest>>, usize)> {
        let (data, fetched) = if self.blobs.contains(&config.digest) {
            (self.blobs.read(&config.digest)?, 0)
        } else {
            let fetched = self.download_all(clients, vec![config.clone()], 1, progress, bytes)?;
            let partial = self.partial_path(&config.digest);
            match fs::read(&partial) {
                Ok(d) if Digest::of(config.digest.algorithm(), &d) == config.digest => (d, fetched),
                _ => return Ok((HashMap::new(), fetched)),
            }
        };
        #[derive(serde::Deserialize)]
        struct RootFs {
            diff_ids: Vec<Digest>,
        }
        #[derive(serde::Deserialize)]
        struct Config {
            rootfs: RootFs,
        }
        let diff_ids = match serde_json::from_slice::<Config>(&data) {
            Ok(c) if c.rootfs.diff_ids.len() == layers.len() => c.rootfs.diff_ids,
            _ => return Ok((HashMap::new(), fetched)),
        };
        let mut on_disk: HashMap<Digest, Vec<Digest>> = HashMap::new();
        let mut missing = std::collections::HashSet::new();
        for (layer, chain) in layers.iter().zip(crate::store::chain_ids(&diff_ids)) {
            if self.has_split(&chain) {
                on_disk.entry(layer.digest.clone()).or_default().push(chain);
            } else {
                missing.insert(layer.digest.clone());
            }
        }
        on_disk.retain(|d, _| !missing.contains(d));
        Ok((on_disk, fetched))
    }

    /// Downloads `wanted` on up to `parallel` threads; stops starting new ones after the first error.
    fn download_all(
        &self,
        clients: &[&Client],
        wanted: Vec<Wanted>,
        parallel: usize,
        progress: &dyn PullProgress,
        bytes: &AtomicU64,
    ) -> Result<usize> {
        let threads = if parallel == 0 { 3 } else { parallel }.min(wanted.len()).max(1);
        let queue = Mutex::new(wanted.into_iter().collect::<VecDeque<_>>());
        let failed = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let fetched = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while !failed.load(Ordering::SeqCst) {
                        let Some(w) = queue.lock().ok().and_then(|mut q| q.pop_front()) else { break };
                        let result = first_that_works(clients, |c| self.download_blob(c, &w, progress, bytes));
                        progress.finished(&w.digest);
                        match result {
                            Ok(true) => {
                                fetched.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(false) => {}
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                if let Ok(mut slot) = first_error.lock() {
                                    slot.get_or_insert(e);
                                }
                            }
                        }
                    }
                });
            }
        });
        match first_error.into_inner().map_err(|_| poisoned())? {
            Some(e) => Err(e),
            None => Ok(fetched.into_inner()),
        }
    }

    /// Stores a downloaded blob from its `.partial` file (its digest verified), under the store
    /// lock; one that is neither stored nor downloaded (gc removed it meanwhile) is downloaded now.
    fn commit_blob(
        &self,
        clients: &[&Client],
        w: &Wanted,
        progress: &dyn PullProgress,
        bytes: &AtomicU64,
    ) -> Result<Ingested> {
        if self.blobs.contains(&w.digest) {
            return Ok(Ingested::Present);
        }
        let partial = self.partial_path(&w.digest);
        if fs::metadata(&partial).map(|m| m.len()).ok() != Some(w.size) {
            first_that_works(clients, |c| self.download_blob(c, w, progress, bytes))?;
        }
        let file = File::open(&partial).map_err(Error::io("open", &partial))?;
        let result = self.blobs.ingest(file, Some(&w.digest), &format!("{} of the pull", w.what));
        // Verified and stored, or wrong: either way the partial file has served its purpose.
        let _ = fs::remove_file(&partial);
        result.map(|(_, how)| how)
    }

    /// Downloads one blob into its `.partial` file (resuming what is there), under the blob's
    /// lease, so that two pulls of it download it once: the second finds it downloaded (or
    /// stored) when the lease is its. Whether it downloaded anything.
    fn download_blob(
        &self,
        client: &Client,
        w: &Wanted,
        progress: &dyn PullProgress,
        bytes: &AtomicU64,
    ) -> Result<bool> {
        let _lease = FileLock::acquire(&self.lease_path(&w.digest), true)?;
        let partial = self.partial_path(&w.digest);
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if self.blobs.contains(&w.digest) || (have == w.size && w.size > 0) {
            return Ok(false);
        }
        if have > w.size {
            fs::remove_file(&partial).map_err(Error::io("remove", &partial))?;
            have = 0;
        }
        let url = client.url(&format!("blobs/{}", w.digest));
        progress.started(&w.digest, w.size, have);
        if have < w.size || w.size == 0 {
            let mut reply = client.get(&url, None, (have > 0).then_some(have))?;
            let status = reply.status().as_u16();
            let (mut file, mut written) = match status {
                206 => (OpenOptions::new().append(true).open(&partial).map_err(Error::io("open", &partial))?, have),
                200 => (File::create(&partial).map_err(Error::io("create", &partial))?, 0),
                416 => {
                    // What we have is no prefix the registry recognizes: start over on the next pull.
                    let _ = fs::remove_file(&partial);
                    return Err(client.error(&url, Some(status), "range not satisfiable; pull again"));
                }
                404 => {
                    return Err(client.error(
                        &url,
                        Some(status),
                        format!("blob unknown: the registry lacks {}", w.what),
                    ));
                }
                _ => return Err(client.error(&url, Some(status), format!("fetching {} failed", w.what))),
            };
            // The descriptor's size bounds the body: a registry that sends more (an endless
            // body) is cut off at the first byte too many, and nothing of it is kept.
            let mut body = reply.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 128 * 1024];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = file.sync_all();
                        return Err(client.error(
                            &url,
                            Some(status),
                            format!("{} broke off: {e}; pull again to resume", w.what),
                        ));
                    }
                };
                written += n as u64;
                if written > w.size {
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(client.error(
                        &url,
                        Some(status),
                        format!("the registry sent more than the {} bytes the descriptor of {} gives", w.size, w.what),
                    ));
                }
                if let Err(e) = file.write_all(&buf[..n]) {
                    // A local failure (a full or read-only store) keeps nothing: what was written
                    // would only hold the room the store lacks. A broken connection, above, keeps
                    // the download for the next pull to resume.
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(Error::io("write", &partial)(e));
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                progress.advanced(&w.digest, n as u64);
            }
            if let Err(e) = file.sync_all() {
                drop(file);
                let _ = fs::remove_file(&partial);
                return Err(Error::io("fsync", &partial)(e));
            }
            if written < w.size {
                return Err(client.error(
                    &url,
                    Some(status),
                    format!("{} ended after {written} of {} bytes; pull again to resume", w.what, w.size),
                ));
            }
        }
        Ok(true)
    }

    pub(crate) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!("pull-{}-{}.partial", digest.algorithm().name(), digest.hex()))
    }

    /// The lock file a download of `digest` holds (kept: removing a lock file under a holder
    /// would let a second download write the same `.partial`).
    pub(crate) fn lease_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!("pull-{}-{}.lease", digest.algorithm().name(), digest.hex()))
    }
}

fn poisoned() -> Error {
    Error::Io {
        op: "lock",
        path: PathBuf::from("pull state"),
        source: std::io::Error::other("a download thread panicked"),
    }
}

/// GETs and verifies the manifest of `reference`, resolving an index to `linux/<host arch>`.
/// `f` on each host in turn until one works; the last host's error when none does. A mirror
/// that lacks something, answers badly or is down makes way for the next host.
fn first_that_works<T>(clients: &[&Client], mut f: impl FnMut(&Client) -> Result<T>) -> Result<T> {
    let mut errors = Vec::new();
    for c in clients {
        match f(c) {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::debug!("pull: {e}; trying the next host");
                errors.push(e);
            }
        }
    }
    match errors.len() {
        0 => Err(Error::BadField {
            what: "hosts.toml".into(),
            field: "capabilities".into(),
            reason: "no host may be pulled from or resolve tags".into(),
        }),
        // one host: its own error, as it is
        1 => Err(errors.remove(0)),
        _ => Err(Error::EveryHostFailed(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; then "))),
    }
}

fn fetch_manifest(client: &Client, reference: &Reference) -> Result<(Vec<u8>, Digest)> {
    let (data, media_type, digest) =
        get_manifest(client, reference, &reference.manifest_ref(), reference.digest.as_ref())?;
    if is_manifest(&media_type) {
        return Ok((data, digest));
    }
    if !is_index(&media_type) {
        return Err(Error::UnknownMediaType { digest, media_type });
    }
    let what = format!("index {digest} of {reference}");
    let index: ImageIndex = serde_json::from_slice(&data).map_err(Error::json(&what))?;
    let picked = pick_platform(&index, &what)?;
    let (data, media_type, digest) = get_manifest(client, reference, &picked.to_string(), Some(&picked))?;
    if !is_manifest(&media_type) {
        return Err(Error::UnknownMediaType { digest, media_type });
    }
    Ok((data, digest))
}

/// One manifest GET: its bytes, media type and digest (checked against `expected`, else against the
/// registry's `Docker-Content-Digest`).
fn get_manifest(
    client: &Client,
    reference: &Reference,
    what: &str,
    expected: Option<&Digest>,
) -> Result<(Vec<u8>, String, Digest)> {
    let url = client.url(&format!("manifests/{what}"));
    let mut reply = client.get(&url, Some(ACCEPT), None)?;
    let status = reply.status().as_u16();
    if status == 404 {
        return Err(client.error(
            &url,
            Some(status),
            format!("manifest unknown: {reference} has no tag or digest {what}"),
        ));
    }
    if status != 200 {
        return Err(client.error(&url, Some(status), format!("fetching the manifest of {reference} failed")));
    }
    let header = |name: &str| reply.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type");
    let registry_digest = header("docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
    let data = reply
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| client.error(&url, Some(status), e.to_string()))?;
    let want = expected.cloned().or(registry_digest);
    let digest = Digest::of(want.as_ref().map_or(Algorithm::Sha256, Digest::algorithm), &data);
    if let Some(want) = want
        && want != digest
    {
        return Err(Error::DigestMismatch { what: format!("manifest from {url}"), expected: want, actual: digest });
    }
    let media_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
        .filter(|c| is_manifest(c) || is_index(c))
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
            let declared = v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string);
            declared.or_else(|| {
                Some(
                    if v.get("manifests").is_some() {
                        "application/vnd.oci.image.index.v1+json"
                    } else {
                        "application/vnd.oci.image.manifest.v1+json"
                    }
                    .into(),
                )
            })
        })
        .unwrap_or_default();
    Ok((data, media_type, digest))
}
