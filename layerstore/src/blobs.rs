//! The blob store: immutable files named by the digest of their content.
//!
//! A blob is written to `ingest/` (never read from there), fsynced, hashed while written, and renamed to
//! `blobs/<alg>/<hex>` only when its digest is right; a crash at any point leaves at most a stray temp file
//! that gc and fsck remove. Writers of the same digest serialize on a `flock` of `ingest/<alg>-<hex>.lock`,
//! so the second one finds the blob present and does no work.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{FileLock, mkdir_p, sync_dir, unique_name};
use crate::{Algorithm, Digest, Error, Hasher, Result};

/// Blobs under `<root>/blobs`, with their temp files under `<root>/ingest`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// Whether [`BlobStore::ingest`] wrote the blob or found it present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// This call made the blob visible.
    Created,
    /// The blob was already there; nothing was written.
    Present,
}

impl BlobStore {
    /// Opens (creating the directories of) the blob store under `root`.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let store = BlobStore { blobs: root.join("blobs"), ingest: root.join("ingest") };
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            mkdir_p(&store.blobs.join(alg.name()))?;
        }
        mkdir_p(&store.ingest)?;
        Ok(store)
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.algorithm().name()).join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Opens the blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob { digest: digest.clone(), referenced_by: "the store".into() }
            } else {
                Error::io("open", path)(e)
            }
        })
    }

    /// Reads a whole (small) blob, such as a manifest or config.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut data).map_err(Error::io("read", self.path(digest)))?;
        Ok(data)
    }

    /// Writes the content of `reader` as a blob. With `expected`, the content must hash to it (else
    /// [`Error::DigestMismatch`] and nothing is stored) and a present blob is not read again; without,
    /// the blob is named by its SHA-256. `what` names the source in errors.
    pub fn ingest(&self, reader: impl Read, expected: Option<&Digest>, what: &str) -> Result<(Digest, Ingested)> {
        let lock = match expected {
            Some(d) => {
                if self.contains(d) {
                    return Ok((d.clone(), Ingested::Present));
                }
                let lock =
                    FileLock::acquire(&self.ingest.join(format!("{}-{}.lock", d.algorithm().name(), d.hex())), true)?;
                // Another writer may have finished while we waited for its lock.
                if self.contains(d) {
                    return Ok((d.clone(), Ingested::Present));
                }
                Some(lock)
            }
            None => None,
        };
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let tmp = self.ingest.join(unique_name("blob-"));
        let result = self.write_temp(reader, &tmp, algorithm);
        let digest = match result {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Some(want) = expected
            && *want != digest
        {
            let _ = fs::remove_file(&tmp);
            return Err(Error::DigestMismatch { what: what.to_string(), expected: want.clone(), actual: digest });
        }
        let dest = self.path(&digest);
        if dest.exists() {
            let _ = fs::remove_file(&tmp);
            return Ok((digest, Ingested::Present));
        }
        fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        if let Some(lock) = &lock {
            let _ = fs::remove_file(&lock.path);
        }
        Ok((digest, Ingested::Created))
    }

    /// Ingests an in-memory document.
    pub fn ingest_bytes(&self, data: &[u8], what: &str) -> Result<(Digest, Ingested)> {
        let digest = Digest::of(Algorithm::Sha256, data);
        self.ingest(data, Some(&digest), what)
    }

    fn write_temp(&self, mut reader: impl Read, tmp: &Path, algorithm: Algorithm) -> Result<Digest> {
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(0o444).open(tmp).map_err(Error::io("create", tmp))?;
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read source of", tmp)(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(Error::io("write", tmp))?;
        }
        file.sync_all().map_err(Error::io("fsync", tmp))?;
        Ok(hasher.finish())
    }

    /// Removes a blob (gc and fsck repair only).
    pub(crate) fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob present, with names that are not digests skipped.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.blobs.join(alg.name());
            for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
                let entry = entry.map_err(Error::io("read directory", &dir))?;
                if let Ok(d) = format!("{}:{}", alg.name(), entry.file_name().to_string_lossy()).parse() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes temp files left by crashed writers, and lock files. Only safe while no writer runs (the
    /// store's exclusive lock); a lock file removed under a waiter costs at most a second copy of the same
    /// blob, renamed atomically over the first.
    pub(crate) fn clear_ingest(&self) -> Result<usize> {
        /// How long an interrupted pull's download waits to be resumed.
        const PARTIAL_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
        let mut n = 0;
        for entry in fs::read_dir(&self.ingest).map_err(Error::io("read directory", &self.ingest))? {
            let entry = entry.map_err(Error::io("read directory", &self.ingest))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A pull's `.partial` download is kept for the next pull to resume, until it is
            // a day old: an abandoned pull's then goes (and so does a lease nothing uses).
            let stale = (name.ends_with(".partial")
                || (name.ends_with(".lease") && !self.ingest.join(name.replace(".lease", ".partial")).exists()))
                && entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > PARTIAL_KEPT_FOR);
            if name.starts_with("blob-") || (stale && name.ends_with(".partial")) {
                n += 1;
            }
            // A pull's lease on a blob goes once the blob is stored and nothing of its download
            // is left (a pull that then finds the lease gone also finds the blob stored).
            let done_lease = name
                .strip_suffix(".lease")
                .and_then(|n| n.strip_prefix("pull-"))
                .and_then(|n| n.replacen('-', ":", 1).parse::<Digest>().ok())
                .is_some_and(|d| {
                    self.contains(&d) && !self.ingest.join(format!("{}.partial", &name[..name.len() - 6])).exists()
                });
            if name.starts_with("blob-") || name.ends_with(".lock") || stale || done_lease {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(n)
    }

    /// Re-hashes a blob; `Ok(None)` when it is intact.
    pub fn verify(&self, digest: &Digest) -> Result<Option<Digest>> {
        let path = self.path(digest);
        let mut file = File::open(&path).map_err(Error::io("open", &path))?;
        let mut hasher = Hasher::new(digest.algorithm());
        io::copy(&mut file, &mut hasher).map_err(Error::io("read", &path))?;
        let actual = hasher.finish();
        Ok((actual != *digest).then_some(actual))
    }
}
