//! Turning what a step changed (an overlayfs upperdir) into an OCI layer: a sorted PAX tar with
//! whiteouts for deletions, opaque markers for replaced directories, xattrs and hardlinks,
//! compressed with gzip or zstd and streamed into the store while both the compressed digest
//! and the diffID are computed, in bounded memory.
//!
//! Deterministic: the same tree (and SOURCE_DATE_EPOCH) gives the same bytes. Entries are
//! ordered depth first by name, owners are kept as numbers without names, and mtimes newer than
//! SOURCE_DATE_EPOCH are clamped to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use oci::media_type::{self as mt, Compression};
use oci::{Descriptor, Digest, DigestWriter};

use crate::snapshot::OPAQUE_XATTR;
use crate::{io_err, Error, Result};

/// How to write a layer.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    pub compression: Compression,
    /// gzip 0..=9 (default 6), zstd 1..=19 (default 3).
    pub level: Option<u32>,
    /// Clamp every mtime newer than this (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
    /// Threads compressing gzip layers (0: one per core, at most 8). The bytes do not depend
    /// on it: layers past 1 MiB are cut in 1 MiB gzip members either way.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            source_date_epoch: None,
            threads: 0,
        }
    }
}

impl LayerOptions {
    /// Reads SOURCE_DATE_EPOCH from the environment (ignored when not a number).
    pub fn from_env() -> Self {
        LayerOptions {
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            ..Default::default()
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::Gzip => mt::OCI_LAYER_GZIP,
            Compression::Zstd => mt::OCI_LAYER_ZSTD,
            Compression::None => mt::OCI_LAYER_TAR,
        }
    }
}

/// A layer written to the store.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    /// Media type, compressed digest and size.
    pub descriptor: Descriptor,
    /// The digest of the uncompressed tar, for the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// Tar entries written (whiteouts and opaque markers included).
    pub entries: u64,
}

/// Where a step's changes are read from.
#[derive(Clone, Copy, Debug)]
pub enum Changes<'a> {
    /// An overlayfs upperdir: whiteouts and opaque directories as overlayfs writes them.
    Upper(&'a Path),
    /// A whole root filesystem (a flattened copy the step ran in), compared with the snapshots
    /// it started from (bottom first): the walking differ, for when there is no overlay.
    Walk {
        root: &'a Path,
        lowers: &'a [PathBuf],
    },
}

impl Changes<'_> {
    fn dir(&self) -> &Path {
        match self {
            Changes::Upper(p) => p,
            Changes::Walk { root, .. } => root,
        }
    }
}

/// What [`write_layer`] produced into a writer.
#[derive(Clone, Debug)]
pub struct LayerDigests {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// Writes the layer of an overlay upperdir into `out`, compressed as `opts` says.
pub fn write_layer<W: Write>(
    upper: &Path,
    out: W,
    opts: &LayerOptions,
) -> Result<(W, LayerDigests)> {
    write_changes(Changes::Upper(upper), out, opts)
}

/// Writes the layer of a step's changes into `out`, compressed as `opts` says.
pub fn write_changes<W: Write>(
    changes: Changes,
    out: W,
    opts: &LayerOptions,
) -> Result<(W, LayerDigests)> {
    let upper = changes.dir();
    let compressed = DigestWriter::new(out, oci::Algorithm::Sha256);
    let werr = |e: io::Error| io_err("writing the layer of", upper)(e);
    let (compressed, diff, entries) = match opts.compression {
        Compression::Gzip => {
            let level = flate2::Compression::new(opts.level.unwrap_or(6).min(9));
            let threads = match opts.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                n => n,
            };
            let enc = crate::pargz::ParGz::new(compressed, level, threads);
            let (enc, diff, entries) = write_tar(changes, enc, opts)?;
            (enc.finish().map_err(werr)?, diff, entries)
        }
        Compression::Zstd => {
            let level = opts.level.unwrap_or(3).clamp(1, 19) as i32;
            let enc = zstd::stream::write::Encoder::new(compressed, level).map_err(werr)?;
            let (enc, diff, entries) = write_tar(changes, enc, opts)?;
            (enc.finish().map_err(werr)?, diff, entries)
        }
        Compression::None => write_tar(changes, compressed, opts)?,
    };
    let (out, digest, size) = compressed.finish();
    Ok((
        out,
        LayerDigests {
            digest,
            size,
            diff_id: diff.0,
            uncompressed_size: diff.1,
            entries,
        },
    ))
}

/// Writes the uncompressed tar of a step's changes into `out`; returns `out`, (diffID, size)
/// and the number of entries.
pub fn write_tar<W: Write>(
    changes: Changes,
    out: W,
    opts: &LayerOptions,
) -> Result<(W, (Digest, u64), u64)> {
    let upper = changes.dir();
    let mut w = TarWriter {
        b: tar::Builder::new(DigestWriter::new(out, oci::Algorithm::Sha256)),
        epoch: opts.source_date_epoch,
        links: HashMap::new(),
        entries: 0,
        upper: upper.to_path_buf(),
    };
    match changes {
        Changes::Upper(u) => w.walk(u, &mut Vec::new())?,
        Changes::Walk { root, lowers } => {
            let lowers: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
            w.walk_diff(root, &lowers, &mut Vec::new())?
        }
    }
    let inner =
        w.b.into_inner()
            .map_err(io_err("finishing the tar of", upper))?;
    let (out, diff_id, size) = inner.finish();
    Ok((out, (diff_id, size), w.entries))
}

struct TarWriter<W: Write> {
    b: tar::Builder<DigestWriter<W>>,
    epoch: Option<i64>,
    /// (dev, ino) of files with several links → the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    upper: std::path::PathBuf,
}

impl<W: Write> TarWriter<W> {
    fn clamp(&self, t: i64) -> u64 {
        let t = match self.epoch {
            Some(e) if t > e => e,
            _ => t,
        };
        t.max(0) as u64
    }

    fn walk(&mut self, dir: &Path, rel: &mut Vec<u8>) -> Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(io_err("listing", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("listing", dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let path = dir.join(&n);
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(n.as_bytes());
            let m = fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
            self.entry(&path, rel, &m)?;
            if m.is_dir() {
                self.walk(&path, rel)?;
            }
            rel.truncate(len);
        }
        Ok(())
    }

    /// Compares `dir` with the same directory in `lowers` (top first, each already known to be
    /// a directory there, cut below the first opaque one) and writes what differs.
    fn walk_diff(&mut self, dir: &Path, lowers: &[PathBuf], rel: &mut Vec<u8>) -> Result<()> {
        let mut names: BTreeSet<Vec<u8>> = list(dir)?.into_iter().collect();
        // The merged lower view of this directory: a name's top-most occurrence decides.
        let mut lower: BTreeMap<Vec<u8>, (PathBuf, fs::Metadata)> = BTreeMap::new();
        let mut hidden: BTreeSet<Vec<u8>> = BTreeSet::new();
        for l in lowers {
            for n in list(l)? {
                if lower.contains_key(&n) || hidden.contains(&n) {
                    continue;
                }
                let p = l.join(OsStr::from_bytes(&n));
                let m = fs::symlink_metadata(&p).map_err(io_err("inspecting", &p))?;
                if m.file_type().is_char_device() && m.rdev() == 0 {
                    hidden.insert(n);
                } else {
                    lower.insert(n, (p, m));
                }
            }
        }
        names.extend(lower.keys().cloned());
        for n in names {
            let path = dir.join(OsStr::from_bytes(&n));
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&n);
            let new = match fs::symlink_metadata(&path) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("inspecting", &path)(e)),
            };
            match (new, lower.get(&n)) {
                (None, Some(_)) => {
                    let (parent, base) = split(rel);
                    let mut name = parent.to_vec();
                    name.extend_from_slice(b".wh.");
                    name.extend_from_slice(base);
                    let mtime = self.clamp(0);
                    self.marker(&name, mtime)?;
                }
                (Some(m), None) => {
                    self.entry(&path, rel, &m)?;
                    if m.is_dir() {
                        self.walk(&path, rel)?;
                    }
                }
                (Some(m), Some((lp, lm))) => {
                    if m.is_dir() && lm.is_dir() {
                        if differs(&path, &m, lp, lm) {
                            self.entry(&path, rel, &m)?;
                        }
                        let mut below = Vec::new();
                        for l in lowers {
                            let p = l.join(OsStr::from_bytes(&n));
                            match fs::symlink_metadata(&p) {
                                Ok(pm) if pm.is_dir() => {
                                    let opaque =
                                        xattr::get(&p, OPAQUE_XATTR).ok().flatten().as_deref()
                                            == Some(b"y");
                                    below.push(p);
                                    if opaque {
                                        break;
                                    }
                                }
                                // A file or whiteout here hides everything further down.
                                Ok(_) => break,
                                Err(_) => {}
                            }
                        }
                        self.walk_diff(&path, &below, rel)?;
                    } else if differs(&path, &m, lp, lm) {
                        self.entry(&path, rel, &m)?;
                        if m.is_dir() {
                            self.walk(&path, rel)?;
                        }
                    }
                }
                (None, None) => {}
            }
            rel.truncate(len);
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &[u8], m: &fs::Metadata) -> Result<()> {
        let ft = m.file_type();
        let mtime = self.clamp(m.mtime());
        if ft.is_char_device() && m.rdev() == 0 {
            // An overlay whiteout: the file was deleted.
            let (parent, base) = split(rel);
            let mut name = parent.to_vec();
            name.extend_from_slice(b".wh.");
            name.extend_from_slice(base);
            return self.marker(&name, mtime);
        }
        let mut h = tar::Header::new_ustar();
        h.set_mtime(mtime);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mode(m.mode() & 0o7777);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name = rel.to_vec();
        let mut link: Option<Vec<u8>> = None;
        let mut data: Option<File> = None;
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            name.push(b'/');
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let t = fs::read_link(path).map_err(io_err("reading symlink", path))?;
            link = Some(t.as_os_str().as_bytes().to_vec());
        } else if ft.is_file() {
            let key = (m.dev(), m.ino());
            match self.links.get(&key) {
                Some(first) if m.nlink() > 1 => {
                    h.set_entry_type(tar::EntryType::Link);
                    link = Some(first.clone());
                }
                _ => {
                    if m.nlink() > 1 {
                        self.links.insert(key, rel.to_vec());
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(m.len());
                    if m.len() >= 0o77777777777 {
                        pax.push(("size".into(), m.len().to_string().into_bytes()));
                    }
                    data = Some(File::open(path).map_err(io_err("opening", path))?);
                }
            }
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
            h.set_device_major(major)
                .and_then(|_| h.set_device_minor(minor))
                .map_err(io_err("recording the device numbers of", path))?;
        } else {
            // Sockets cannot be in a layer; docker skips them too.
            return Ok(());
        }
        for (id, key) in [(m.uid(), "uid"), (m.gid(), "gid")] {
            if id > 0o7777777 {
                pax.push((key.into(), id.to_string().into_bytes()));
            }
        }
        if set_name(&mut h, &name, false).is_err() {
            pax.push(("path".into(), name.clone()));
        }
        if let Some(l) = &link {
            if set_name(&mut h, l, true).is_err() {
                pax.push(("linkpath".into(), l.clone()));
            }
        }
        // A renamed directory (redirect_dir) or a metadata-only copy-up (metacopy) does not
        // hold what a layer needs; the sandbox mounts with both off, so this means an upperdir
        // written by some other overlay mount.
        for (key, what) in [
            (
                "trusted.overlay.redirect",
                "a renamed directory (overlay redirect_dir)",
            ),
            (
                "trusted.overlay.metacopy",
                "a metadata-only copy-up (overlay metacopy)",
            ),
        ] {
            if xattr::get(path, key).ok().flatten().is_some() {
                return Err(Error::BadLayer {
                    layer: self.upper.display().to_string(),
                    reason: format!(
                        "{} is {what}, which a layer cannot express; mount the overlay with redirect_dir=off,metacopy=off",
                        path.display()
                    ),
                });
            }
        }
        let mut xattrs = xattrs_of(path)?;
        xattrs.sort();
        let opaque =
            ft.is_dir() && xattr::get(path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y");
        for (k, v) in xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v));
        }
        if !pax.is_empty() {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io_err("writing the layer of", &self.upper))?;
        }
        h.set_cksum();
        let res = match data {
            Some(f) => {
                // A file that changes size while we read it would corrupt the tar: take exactly
                // the size in the header and fail when it shrank.
                let mut r = f.take(m.len());
                let mut counted = CountingReader {
                    inner: &mut r,
                    n: 0,
                };
                let res = self.b.append(&h, &mut counted);
                if res.is_ok() && counted.n != m.len() {
                    return Err(Error::BadLayer {
                        layer: self.upper.display().to_string(),
                        reason: format!("{} changed size while being archived", path.display()),
                    });
                }
                res
            }
            None => self.b.append(&h, io::empty()),
        };
        res.map_err(io_err("writing the layer entry for", path))?;
        self.entries += 1;
        if opaque {
            let mut marker = rel.to_vec();
            marker.extend_from_slice(b"/.wh..wh..opq");
            self.marker(&marker, mtime)?;
        }
        Ok(())
    }

    /// An empty regular file: a whiteout or an opaque-directory marker.
    fn marker(&mut self, name: &[u8], mtime: u64) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        h.set_size(0);
        if set_name(&mut h, name, false).is_err() {
            self.b
                .append_pax_extensions([("path", name)])
                .map_err(io_err("writing the layer of", &self.upper))?;
        }
        h.set_cksum();
        self.b
            .append(&h, io::empty())
            .map_err(io_err("writing the layer of", &self.upper))?;
        self.entries += 1;
        Ok(())
    }
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn list(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect::<io::Result<_>>()
        .map_err(io_err("listing", dir))?;
    v.sort();
    Ok(v)
}

/// Did a file change between the lower view and the new tree? By metadata, as docker's naive
/// differ judges: type, mode, owner, size, mtime, link target, device and xattrs.
fn differs(new: &Path, nm: &fs::Metadata, old: &Path, om: &fs::Metadata) -> bool {
    if nm.mode() != om.mode()
        || nm.uid() != om.uid()
        || nm.gid() != om.gid()
        || nm.rdev() != om.rdev()
        || nm.mtime() != om.mtime()
        || nm.mtime_nsec() != om.mtime_nsec()
        || (!nm.is_dir() && nm.size() != om.size())
    {
        return true;
    }
    if nm.file_type().is_symlink() && fs::read_link(new).ok() != fs::read_link(old).ok() {
        return true;
    }
    let xa = |p: &Path| {
        xattrs_of(p).map(|mut v| {
            v.sort();
            v
        })
    };
    xa(new).ok() != xa(old).ok()
}

fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// Puts a name (or link name) into the ustar header when it fits; Err when it needs PAX.
fn set_name(h: &mut tar::Header, name: &[u8], is_link: bool) -> std::result::Result<(), ()> {
    let ascii = name.iter().all(|b| b.is_ascii() && *b != 0);
    if is_link {
        if !ascii || name.len() > 100 {
            let cut = &name[..name.len().min(99)];
            h.as_ustar_mut().ok_or(())?.linkname[..cut.len()].copy_from_slice(cut);
            return Err(());
        }
        let u = h.as_ustar_mut().ok_or(())?;
        u.linkname = [0; 100];
        u.linkname[..name.len()].copy_from_slice(name);
        return Ok(());
    }
    let u = h.as_ustar_mut().ok_or(())?;
    u.name = [0; 100];
    u.prefix = [0; 155];
    if ascii && name.len() <= 100 {
        u.name[..name.len()].copy_from_slice(name);
        return Ok(());
    }
    // ustar's prefix/name split, at a slash, before falling back to PAX.
    if ascii && name.len() <= 256 {
        let trimmed = name.strip_suffix(b"/").unwrap_or(name);
        for (i, b) in trimmed.iter().enumerate() {
            if *b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0 {
                u.prefix[..i].copy_from_slice(&name[..i]);
                let rest = &name[i + 1..];
                u.name[..rest.len()].copy_from_slice(rest);
                return Ok(());
            }
        }
    }
    let cut = &name[..name.len().min(100)];
    u.name[..cut.len()].copy_from_slice(cut);
    Err(())
}

fn xattrs_of(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattrs (and symlinks on some) have none to carry.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(io_err("listing the xattrs of", path)(e)),
    };
    for n in names {
        let key = n.to_string_lossy();
        if key.starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(v) = xattr::get(path, &n).map_err(io_err("reading the xattrs of", path))? {
            out.push((key.into_owned(), v));
        }
    }
    Ok(out)
}

/// Chunks passed from the tar writer to the store's ingest; an error poisons the stream so
/// a half-written layer never becomes a blob.
enum Chunk {
    Data(Vec<u8>),
    Failed(String),
}

struct ChannelWriter {
    tx: mpsc::SyncSender<Chunk>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(Chunk::Data(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped reading"))
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Chunk::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Chunk::Failed(why)) => return Err(io::Error::other(why)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes the layer of an overlay upperdir into the store; see [`store_changes`].
pub fn write_to_store(
    upper: &Path,
    layout: &store::Layout,
    opts: &LayerOptions,
) -> Result<WrittenLayer> {
    store_changes(Changes::Upper(upper), layout, opts)
}

/// Writes the layer of a step's changes into the store, streaming (at most a few MiB in
/// flight). The blob is named by nothing yet: hold `layout.write_guard()` until an image names it.
pub fn store_changes(
    changes: Changes,
    layout: &store::Layout,
    opts: &LayerOptions,
) -> Result<WrittenLayer> {
    let upper = changes.dir();
    let what = upper.display().to_string();
    let (d, _, _) = ingest_written(layout, &what, |w| {
        let (mut w, d) = write_changes(changes, w, opts)?;
        w.flush().map_err(io_err("writing the layer of", upper))?;
        let (digest, size) = (d.digest.clone(), d.size);
        Ok((d, digest, size))
    })?;
    Ok(WrittenLayer {
        descriptor: Descriptor::new(opts.media_type(), d.digest, d.size),
        diff_id: d.diff_id,
        uncompressed_size: d.uncompressed_size,
        entries: d.entries,
    })
}

/// Streams what `write` writes into the store's ingest (on another thread) and checks that the
/// store received the blob `write` reports (its digest and size).
fn ingest_written<T>(
    layout: &store::Layout,
    what: &str,
    write: impl FnOnce(ChannelWriter) -> Result<(T, Digest, u64)>,
) -> Result<(T, Digest, u64)> {
    let (tx, rx) = mpsc::sync_channel::<Chunk>(8);
    std::thread::scope(|s| {
        let ingest = s.spawn(move || {
            let mut r = ChannelReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            layout.ingest(&mut r, None)
        });
        let w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let written = write(w);
        if let Err(e) = &written {
            let _ = tx.send(Chunk::Failed(e.to_string()));
        }
        drop(tx);
        let stored = ingest.join().map_err(|_| Error::BadLayer {
            layer: what.to_string(),
            reason: "the store's ingest thread panicked".into(),
        })?;
        let (t, digest, size) = written?;
        let (got, got_size) = stored?;
        if got != digest || got_size != size {
            return Err(Error::BadLayer {
                layer: what.to_string(),
                reason: format!(
                    "the store received {got} ({got_size} bytes) but {digest} ({size} bytes) was written"
                ),
            });
        }
        Ok((t, digest, size))
    })
}

/// Writes a layer blob of the store again with another compression (the same tar, so the same
/// diffID); returns the new blob's descriptor. Exporters use it: steps keep one form of their
/// layers, and the compression an output asks for is made when it is exported.
pub fn recompress_in_store(
    layout: &store::Layout,
    blob: &Descriptor,
    opts: &LayerOptions,
) -> Result<Descriptor> {
    let what = blob.digest.to_string();
    let f = layout.open_blob(&blob.digest)?;
    let mut tar = crate::snapshot::decompress(f, Some(&blob.media_type))
        .map_err(io_err("decompressing layer", Path::new(&what)))?;
    let (_, digest, size) = ingest_written(layout, &what, |w| {
        let werr = |e: io::Error| io_err("recompressing layer", Path::new(&what))(e);
        let out = DigestWriter::new(w, oci::Algorithm::Sha256);
        let out = match opts.compression {
            Compression::Gzip => {
                let level = flate2::Compression::new(opts.level.unwrap_or(6).min(9));
                let threads = match opts.threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                    n => n,
                };
                let mut enc = crate::pargz::ParGz::new(out, level, threads);
                io::copy(&mut tar, &mut enc).map_err(werr)?;
                enc.finish().map_err(werr)?
            }
            Compression::Zstd => {
                let level = opts.level.unwrap_or(3).clamp(1, 19) as i32;
                let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(werr)?;
                io::copy(&mut tar, &mut enc).map_err(werr)?;
                enc.finish().map_err(werr)?
            }
            Compression::None => {
                let mut out = out;
                io::copy(&mut tar, &mut out).map_err(werr)?;
                out
            }
        };
        let (mut w, digest, size) = out.finish();
        w.flush().map_err(werr)?;
        Ok(((), digest, size))
    })?;
    Ok(Descriptor::new(opts.media_type(), digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    type Entry = (String, tar::EntryType, u64, Vec<(String, Vec<u8>)>);

    fn entries(tar_bytes: &[u8]) -> Vec<Entry> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let mut xs = Vec::new();
                if let Some(p) = e.pax_extensions().unwrap() {
                    for x in p {
                        let x = x.unwrap();
                        if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                            xs.push((k.to_string(), x.value_bytes().to_vec()));
                        }
                    }
                }
                (
                    name,
                    e.header().entry_type(),
                    e.header().mtime().unwrap(),
                    xs,
                )
            })
            .collect()
    }

    #[test]
    fn sorted_pax_hardlinks_xattrs_long_names_and_clamping() {
        let t = tempfile::tempdir().unwrap();
        let u = t.path();
        fs::create_dir_all(u.join("b/dir")).unwrap();
        fs::write(u.join("b/dir/f"), b"data").unwrap();
        fs::hard_link(u.join("b/dir/f"), u.join("a-link")).unwrap();
        std::os::unix::fs::symlink("b/dir/f", u.join("c-sym")).unwrap();
        let long = "n".repeat(120);
        fs::write(u.join(&long), b"").unwrap();
        fs::set_permissions(u.join("b/dir/f"), fs::Permissions::from_mode(0o4711)).unwrap();
        xattr::set(u.join("b/dir/f"), "user.k", b"v").unwrap();
        let opts = LayerOptions {
            compression: Compression::None,
            source_date_epoch: Some(100),
            ..Default::default()
        };
        let (bytes, d) = write_layer(u, Vec::new(), &opts).unwrap();
        assert_eq!(d.diff_id, d.digest, "uncompressed: digest is the diffID");
        assert_eq!(Digest::sha256_of(&bytes), d.diff_id);
        let es = entries(&bytes);
        let names: Vec<_> = es.iter().map(|e| e.0.as_str()).collect();
        // The first path of a hardlinked inode carries the data; later ones link to it.
        assert_eq!(
            names,
            ["a-link", "b/", "b/dir/", "b/dir/f", "c-sym", long.as_str()]
        );
        assert_eq!(es[0].1, tar::EntryType::Regular);
        assert_eq!(es[3].1, tar::EntryType::Link);
        assert_eq!(es[4].1, tar::EntryType::Symlink);
        assert!(
            es.iter().all(|e| e.2 == 100),
            "mtimes clamped to SOURCE_DATE_EPOCH"
        );
        assert_eq!(es[0].3, [("user.k".to_string(), b"v".to_vec())]);
        // Same tree, same bytes; gzip and zstd carry the same diffID.
        let (again, _) = write_layer(u, Vec::new(), &opts).unwrap();
        assert_eq!(again, bytes);
        for c in [Compression::Gzip, Compression::Zstd] {
            let o = LayerOptions {
                compression: c,
                ..opts.clone()
            };
            let (z, dz) = write_layer(u, Vec::new(), &o).unwrap();
            assert_eq!(dz.diff_id, d.diff_id);
            assert_eq!(Digest::sha256_of(&z), dz.digest);
            assert_eq!(dz.size, z.len() as u64);
        }
    }
}
