//! Tar splits: what rebuilds a layer's uncompressed tar, bit for bit, from its snapshot.
//!
//! While a layer is unpacked, every byte of its tar stream that is not the content of a regular
//! file (headers, PAX and GNU records, padding, the end-of-archive blocks and whatever trails them)
//! is recorded in order, and each regular file's content is recorded as a reference to the file
//! the unpacker wrote: its path in the snapshot and its size. The snapshot holds that content
//! anyway, so the split costs a few bytes per entry (zstd compresses the zero-padded headers well:
//! about 1% of the layer), and with it the compressed layer blob need not be kept for `export`: the
//! tar rebuilt from the split hashes to the layer's diff ID, and is compressed again.
//!
//! A split is only exact when the content at each recorded path is still the entry's: a layer in
//! which a later entry replaced an earlier one (tar's last-entry-wins rule) gets none
//! ([`Recorder::exact`]), and its blob is kept.
//!
//! Format (a zstd stream): the magic line, then records: `R` u32 length, raw bytes (at most
//! [`MAX_RAW`]); `F` u16 length, a relative path, u64 size; `E` u64 total length of the tar.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};

use crate::{Error, Result};

/// The first bytes of a split.
const MAGIC: &[u8] = b"strata-tar-split 1\n";
/// The longest raw record: longer runs are cut in several.
pub(crate) const MAX_RAW: usize = 1 << 20;
/// The longest path of a file record.
const MAX_PATH: usize = 64 * 1024 - 1;

/// Records a split while the tar stream is read (through [`Recording`]).
pub(crate) struct Recorder {
    path: PathBuf,
    out: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    raw: Vec<u8>,
    /// Bytes of the current file's content still to come (not recorded).
    content: u64,
    /// Bytes of the tar seen.
    total: u64,
    /// Whether each recorded path still holds its entry's content.
    exact: bool,
    /// The first write error (reported by [`Recorder::finish`]).
    error: Option<io::Error>,
}

impl Recorder {
    /// Starts a split at `path` (a new file).
    pub(crate) fn create(path: &Path) -> Result<Recorder> {
        let file = File::create_new(path).map_err(Error::io("create", path))?;
        let mut out = zstd::stream::write::Encoder::new(BufWriter::new(file), 3).map_err(Error::io("create", path))?;
        out.write_all(MAGIC).map_err(Error::io("write", path))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            out: Some(out),
            raw: Vec::new(),
            content: 0,
            total: 0,
            exact: true,
            error: None,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.write_all(bytes)
        {
            self.error = Some(e);
        }
    }

    fn flush_raw(&mut self) {
        if self.raw.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut self.raw);
        let mut head = vec![b'R'];
        head.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        self.write(&head);
        self.write(&raw);
        self.raw = raw;
        self.raw.clear();
    }

    /// Bytes read from the tar stream.
    fn saw(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let content = (self.content.min(bytes.len() as u64)) as usize;
        self.content -= content as u64;
        bytes = &bytes[content..];
        while !bytes.is_empty() {
            let n = bytes.len().min(MAX_RAW - self.raw.len());
            self.raw.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.raw.len() == MAX_RAW {
                self.flush_raw();
            }
        }
    }

    /// The next `size` bytes are the content of the regular file unpacked at `path` (relative to the
    /// snapshot's tree, `/`-separated).
    pub(crate) fn file(&mut self, path: &[u8], size: u64) {
        if path.len() > MAX_PATH {
            self.exact = false;
        }
        self.flush_raw();
        let mut rec = vec![b'F'];
        rec.extend_from_slice(&(path.len().min(MAX_PATH) as u16).to_le_bytes());
        rec.extend_from_slice(&path[..path.len().min(MAX_PATH)]);
        rec.extend_from_slice(&size.to_le_bytes());
        self.write(&rec);
        self.content = size;
    }

    /// An entry replaced what an earlier one unpacked: a recorded path may no longer hold its content.
    pub(crate) fn overwritten(&mut self) {
        self.exact = false;
    }

    /// Whether the split rebuilds the tar (so far).
    pub(crate) fn exact(&self) -> bool {
        self.exact && self.content == 0 && self.error.is_none()
    }

    /// Ends the split once the whole stream was read. Returns whether it is exact; an inexact
    /// split's file is removed.
    pub(crate) fn finish(mut self) -> Result<bool> {
        self.flush_raw();
        let mut end = vec![b'E'];
        end.extend_from_slice(&self.total.to_le_bytes());
        self.write(&end);
        let exact = self.exact();
        let result = match (self.error.take(), self.out.take()) {
            (Some(e), _) => Err(e),
            (None, Some(out)) => out.finish().and_then(|w| w.into_inner().map_err(|e| e.into_error())).map(drop),
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            let _ = std::fs::remove_file(&self.path);
            return Err(Error::io("write", &self.path)(e));
        }
        if !exact {
            std::fs::remove_file(&self.path).map_err(Error::io("remove", &self.path))?;
        }
        Ok(exact)
    }
}

/// A reader that shows every byte it passes to a [`Recorder`].
pub(crate) struct Recording<'a, R> {
    pub(crate) inner: R,
    pub(crate) recorder: &'a RefCell<Option<Recorder>>,
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(r) = self.recorder.borrow_mut().as_mut() {
            r.saw(&buf[..n]);
        }
        Ok(n)
    }
}

/// Writes the tar that the split `split` of the snapshot tree `tree` records to `out`, and returns
/// its length. The files are opened beneath `tree` without following symlinks, and each must have
/// the recorded size; the caller checks the diff ID of what was written.
pub(crate) fn rebuild(tree: &Path, split: &Path, out: &mut dyn Write) -> Result<u64> {
    let bad = |reason: String| Error::BadSplit { split: split.to_path_buf(), reason };
    let file = File::open(split).map_err(Error::io("open", split))?;
    let mut r = zstd::stream::read::Decoder::new(file).map_err(Error::io("read", split))?;
    let read_err = |e: io::Error| bad(format!("unreadable: {e}"));
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(read_err)?;
    if magic != MAGIC {
        return Err(bad("not a tar split".into()));
    }
    let root = rustix::fs::open(tree, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open", tree)(e.into()))?;
    let mut written = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(read_err)?;
        match tag[0] {
            b'R' => {
                let mut len = [0u8; 4];
                r.read_exact(&mut len).map_err(read_err)?;
                let len = u32::from_le_bytes(len) as usize;
                if len > MAX_RAW {
                    return Err(bad(format!("a raw record of {len} bytes")));
                }
                let mut raw = vec![0u8; len];
                r.read_exact(&mut raw).map_err(read_err)?;
                out.write_all(&raw).map_err(Error::io("write", "the rebuilt tar"))?;
                written += len as u64;
            }
            b'F' => {
                let mut len = [0u8; 2];
                r.read_exact(&mut len).map_err(read_err)?;
                let mut path = vec![0u8; u16::from_le_bytes(len) as usize];
                r.read_exact(&mut path).map_err(read_err)?;
                let mut size = [0u8; 8];
                r.read_exact(&mut size).map_err(read_err)?;
                let size = u64::from_le_bytes(size);
                let shown = tree.join(OsStr::from_bytes(&path));
                let fd = openat2(
                    &root,
                    OsStr::from_bytes(&path),
                    // non-blocking: a FIFO put there must not hang the rebuild
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| Error::io("open", &shown)(e.into()))?;
                let f = File::from(fd);
                let meta = f.metadata().map_err(Error::io("stat", &shown))?;
                if !meta.is_file() {
                    return Err(bad(format!("{} is no longer a regular file", shown.display())));
                }
                let len = meta.len();
                if len != size {
                    return Err(bad(format!("{}: {len} bytes, but its layer entry held {size}", shown.display())));
                }
                let copied = io::copy(&mut (&f).take(size), out).map_err(Error::io("copy", &shown))?;
                if copied != size {
                    return Err(bad(format!("{}: shrank while it was read", shown.display())));
                }
                written += size;
            }
            b'E' => {
                let mut total = [0u8; 8];
                r.read_exact(&mut total).map_err(read_err)?;
                let total = u64::from_le_bytes(total);
                if total != written {
                    return Err(bad(format!("records {total} bytes of tar, rebuilt {written}")));
                }
                return Ok(written);
            }
            other => return Err(bad(format!("unknown record {other:#04x}"))),
        }
    }
}
