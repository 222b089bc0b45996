//! Unpacking OCI layers (plain, gzip or zstd tars) into directories, and a cache of unpacked
//! layers keyed by diffID so each base layer is unpacked once and reused as an overlay lowerdir.
//!
//! Every path is resolved component by component under the root, following symlinks only while
//! they stay inside it; an entry with `..`, an absolute name, or a path through a symlink that
//! leads above the root is refused, naming the entry, before anything is written for it.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci::media_type::{layer_compression, Compression};
use oci::{Descriptor, Digest, DigestReader};

use crate::{io_err, Error, Result};

/// How deletions in a layer are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// As overlayfs expects in a lowerdir: `.wh.NAME` becomes a 0/0 character device and
    /// `.wh..wh..opq` the xattr `trusted.overlay.opaque=y`. For a layer unpacked on its own.
    Overlay,
    /// Deletions are carried out: for a layer applied on top of its parents in one directory.
    Apply,
}

/// What applying one layer did.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    /// The digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub tar_size: u64,
    /// Entries applied (whiteouts included).
    pub entries: u64,
    /// Something was taken from the lower layers (see [`apply_layer_on`]).
    pub uses_lowers: bool,
}

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: u32 = 40;

/// Sniffs the compression of a layer stream by its magic bytes; the media type only decides
/// when the stream is too short to tell.
pub fn decompress<'a>(
    reader: impl Read + 'a,
    media_type: Option<&str>,
) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let head = r.fill_buf()?;
    let sniffed = if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.len() >= 4 {
        Some(Compression::None)
    } else {
        None
    };
    let c = sniffed
        .or_else(|| media_type.and_then(layer_compression))
        .unwrap_or(Compression::None);
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    })
}

/// Applies one layer stream onto `root` (which must exist). `layer` names the layer in errors.
pub fn apply_layer(
    root: &Path,
    reader: impl Read,
    media_type: Option<&str>,
    mode: WhiteoutMode,
    layer: &str,
) -> Result<ApplyReport> {
    apply_layer_on(root, &[], reader, media_type, mode, layer)
}

/// [`apply_layer`] for a layer unpacked on its own over `lowers` (its parents' snapshots, top
/// first): a directory the tar leaves implicit takes its attributes from below, a path through
/// a symlink of a lower layer follows it, and a hardlink to a lower file becomes a copy, as the
/// merged view needs. The report says whether the result depends on the lowers.
pub fn apply_layer_on(
    root: &Path,
    lowers: &[PathBuf],
    reader: impl Read,
    media_type: Option<&str>,
    mode: WhiteoutMode,
    layer: &str,
) -> Result<ApplyReport> {
    let bad = |reason: String| Error::BadLayer {
        layer: layer.to_string(),
        reason,
    };
    let inner = decompress(reader, media_type)
        .map_err(|e| bad(format!("cannot start decompressing: {e}")))?;
    let mut archive = tar::Archive::new(DigestReader::new(inner, oci::Algorithm::Sha256));
    let mut ap = Applier {
        root: root.to_path_buf(),
        mode,
        layer: layer.to_string(),
        written: HashSet::new(),
        dir_times: Vec::new(),
        entries: 0,
        // SAFETY: geteuid has no preconditions.
        root_user: unsafe { libc::geteuid() } == 0,
        lowers: lowers.to_vec(),
        uses_lowers: false,
    };
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("unreadable tar entry: {e}")))?;
        ap.apply(&mut entry)?;
        ap.entries += 1;
    }
    // Directory times last: creating children changes them.
    for (path, mtime) in ap.dir_times.iter().rev() {
        set_mtime(path, *mtime).map_err(io_err("setting the time of", path))?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| bad(format!("reading its end: {e}")))?;
    let (diff_id, tar_size) = rest.finish();
    Ok(ApplyReport {
        diff_id,
        tar_size,
        entries: ap.entries,
        uses_lowers: ap.uses_lowers,
    })
}

struct Applier {
    root: PathBuf,
    mode: WhiteoutMode,
    layer: String,
    written: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, i64)>,
    entries: u64,
    root_user: bool,
    /// The parents' snapshots, top first (overlay mode only).
    lowers: Vec<PathBuf>,
    uses_lowers: bool,
}

/// Header fields, with PAX records taking precedence (large ids, long names, xattrs).
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Applier {
    fn refuse(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.layer.clone(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn apply<R: Read>(&mut self, e: &mut tar::Entry<R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).to_string();
        let meta = self.meta(e, &name)?;
        let kind = e.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = self.components(&raw, &name)?;
        let Some((base, parents)) = comps.split_last() else {
            // "./": the root itself.
            if kind.is_dir() {
                self.set_meta(&self.root.clone(), &meta, false)?;
                self.dir_times.push((self.root.clone(), meta.mtime));
            }
            return Ok(());
        };
        let base_bytes = base.as_bytes();
        if base_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = self.resolve_dir(parents, &name)?;
            return self.opaque(&dir);
        }
        if let Some(hidden) = base_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.refuse(&name, "a whiteout must name a file"));
            }
            let dir = self.resolve_dir(parents, &name)?;
            return self.whiteout(&dir.join(OsStr::from_bytes(hidden)));
        }
        let dir = self.resolve_dir(parents, &name)?;
        let dest = dir.join(base);
        let existing = fs::symlink_metadata(&dest).ok();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&dest, existing.as_ref())?;
                    fs::create_dir(&dest).map_err(io_err("creating directory", &dest))?;
                }
                self.set_meta(&dest, &meta, false)?;
                self.dir_times.push((dest.clone(), meta.mtime));
            }
            T::Regular | T::Continuous => {
                remove_any(&dest, existing.as_ref())?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io_err("creating file", &dest))?;
                io::copy(e, &mut f).map_err(|err| Error::BadLayer {
                    layer: self.layer.clone(),
                    reason: format!("reading the content of {name:?}: {err}"),
                })?;
                drop(f);
                self.set_meta(&dest, &meta, false)?;
                set_mtime(&dest, meta.mtime).map_err(io_err("setting the time of", &dest))?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&name, "a symlink without a target"))?
                    .into_owned();
                remove_any(&dest, existing.as_ref())?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)
                    .map_err(io_err("creating symlink", &dest))?;
                self.set_meta(&dest, &meta, true)?;
                set_mtime(&dest, meta.mtime).map_err(io_err("setting the time of", &dest))?;
            }
            T::Link => {
                let target_raw = e
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&name, "a hardlink without a target"))?
                    .into_owned();
                let tcomps = self.components(&target_raw, &name)?;
                let Some((tbase, tparents)) = tcomps.split_last() else {
                    return Err(self.refuse(&name, "a hardlink to the root"));
                };
                let tdir = self.resolve_dir(tparents, &name)?;
                let target = tdir.join(tbase);
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.refuse(&name, "a hardlink to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let rel = target
                            .strip_prefix(&self.root)
                            .unwrap_or(&target)
                            .to_path_buf();
                        match self.lower_entry(&rel) {
                            // A link to a file of a lower layer: layers cannot share inodes,
                            // so it becomes a copy (as overlayfs would show it after a copy-up).
                            Some((lp, lm)) if lm.is_file() => {
                                self.uses_lowers = true;
                                remove_any(&dest, existing.as_ref())?;
                                fs::copy(&lp, &dest).map_err(io_err("copying to", &dest))?;
                                copy_meta(&lp, &dest, &lm)?;
                                self.written.insert(dest);
                                return Ok(());
                            }
                            _ => {
                                return Err(self.refuse(
                                    &name,
                                    format!(
                                        "its hardlink target {:?} is neither in this layer nor a file of the layers below",
                                        String::from_utf8_lossy(&target_raw)
                                    ),
                                ))
                            }
                        }
                    }
                }
                if target != dest {
                    remove_any(&dest, existing.as_ref())?;
                    fs::hard_link(&target, &dest).map_err(io_err("creating hardlink", &dest))?;
                }
            }
            T::Char | T::Block | T::Fifo => {
                remove_any(&dest, existing.as_ref())?;
                let kind_bits = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let h = e.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                mknod(&dest, kind_bits | (meta.mode & 0o7777), major, minor)
                    .map_err(io_err("creating device node", &dest))?;
                self.set_meta(&dest, &meta, false)?;
                set_mtime(&dest, meta.mtime).map_err(io_err("setting the time of", &dest))?;
            }
            other => {
                return Err(self.refuse(&name, format!("unsupported tar entry type {other:?}")))
            }
        }
        self.written.insert(dest);
        Ok(())
    }

    fn meta<R: Read>(&self, e: &mut tar::Entry<R>, name: &str) -> Result<Meta> {
        let h = e.header();
        let bad = |what: &str, err: io::Error| Error::BadLayer {
            layer: self.layer.clone(),
            reason: format!("entry {name:?}: unreadable {what}: {err}"),
        };
        let mut m = Meta {
            mode: h.mode().map_err(|err| bad("mode", err))?,
            uid: h.uid().map_err(|err| bad("uid", err))? as u32,
            gid: h.gid().map_err(|err| bad("gid", err))? as u32,
            mtime: h.mtime().map_err(|err| bad("mtime", err))? as i64,
            xattrs: Vec::new(),
        };
        if let Some(pax) = e.pax_extensions().map_err(|err| bad("PAX header", err))? {
            for ext in pax {
                let ext = ext.map_err(|err| bad("PAX record", err))?;
                let Ok(key) = ext.key() else { continue };
                let num = || std::str::from_utf8(ext.value_bytes()).ok();
                match key {
                    "uid" => m.uid = num().and_then(|v| v.parse().ok()).unwrap_or(m.uid),
                    "gid" => m.gid = num().and_then(|v| v.parse().ok()).unwrap_or(m.gid),
                    "mtime" => {
                        if let Some(v) = num().and_then(|v| v.split('.').next()?.parse().ok()) {
                            m.mtime = v
                        }
                    }
                    k => {
                        if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                            m.xattrs.push((x.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// The entry's path as clean components; refuses absolute paths and `..`.
    fn components(&self, raw: &[u8], name: &str) -> Result<Vec<OsString>> {
        if raw.first() == Some(&b'/') {
            return Err(self.refuse(name, "an absolute path; layer entries must be relative"));
        }
        let mut out = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(self.refuse(name, "its path has a `..` component")),
                c => out.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(out)
    }

    /// Resolves a directory path under the root without leaving it: symlinks are followed as if
    /// the root were `/`, one leading above the root is refused, missing directories are created.
    fn resolve_dir(&mut self, comps: &[OsString], name: &str) -> Result<PathBuf> {
        let mut stack: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            let cb = c.as_bytes();
            if cb.is_empty() || cb == b"." {
                continue;
            }
            if cb == b".." {
                if stack.pop().is_none() {
                    return Err(self.refuse(name, "a symlink on its path leads outside the root"));
                }
                continue;
            }
            let mut p = self.root.clone();
            p.extend(&stack);
            p.push(&c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(self.refuse(name, "too many levels of symlinks on its path"));
                    }
                    let target = fs::read_link(&p).map_err(io_err("reading symlink", &p))?;
                    let tb = target.as_os_str().as_bytes();
                    if tb.first() == Some(&b'/') {
                        stack.clear();
                    }
                    for t in tb.split(|b| *b == b'/').rev() {
                        queue.push_front(OsStr::from_bytes(t).to_os_string());
                    }
                }
                Ok(m) if m.is_dir() => stack.push(c),
                Ok(_) => {
                    let rel: PathBuf = stack.iter().chain([&c]).collect();
                    return Err(self.refuse(
                        name,
                        format!("{} on its path is not a directory", rel.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let rel: PathBuf = stack.iter().chain([&c]).collect();
                    match self.lower_entry(&rel) {
                        Some((lp, lm)) if lm.file_type().is_symlink() => {
                            // The merged view goes through the lower symlink: so do we.
                            self.uses_lowers = true;
                            hops += 1;
                            if hops > MAX_SYMLINK_HOPS {
                                return Err(
                                    self.refuse(name, "too many levels of symlinks on its path")
                                );
                            }
                            let target =
                                fs::read_link(&lp).map_err(io_err("reading symlink", &lp))?;
                            let tb = target.as_os_str().as_bytes();
                            if tb.first() == Some(&b'/') {
                                stack.clear();
                            }
                            for t in tb.split(|b| *b == b'/').rev() {
                                queue.push_front(OsStr::from_bytes(t).to_os_string());
                            }
                        }
                        Some((_, lm)) if lm.is_dir() => {
                            // Implicit here, real below: keep the lower's owner, mode and time,
                            // or this layer would mask them.
                            self.uses_lowers = true;
                            fs::create_dir(&p).map_err(io_err("creating directory", &p))?;
                            let meta = Meta {
                                mode: lm.mode(),
                                uid: lm.uid(),
                                gid: lm.gid(),
                                mtime: lm.mtime(),
                                xattrs: Vec::new(),
                            };
                            self.set_meta(&p, &meta, false)?;
                            self.dir_times.push((p, lm.mtime()));
                            stack.push(c);
                        }
                        _ => {
                            fs::create_dir(&p).map_err(io_err("creating directory", &p))?;
                            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                                .map_err(io_err("setting the mode of", &p))?;
                            stack.push(c);
                        }
                    }
                }
                Err(e) => return Err(io_err("inspecting", &p)(e)),
            }
        }
        let mut p = self.root.clone();
        p.extend(&stack);
        Ok(p)
    }

    /// `rel` in the merged view of the lowers (top first); a whiteout hides it.
    fn lower_entry(&self, rel: &Path) -> Option<(PathBuf, fs::Metadata)> {
        for l in &self.lowers {
            let p = l.join(rel);
            if let Ok(m) = fs::symlink_metadata(&p) {
                if is_whiteout(&m) {
                    return None;
                }
                return Some((p, m));
            }
        }
        None
    }

    fn whiteout(&mut self, path: &Path) -> Result<()> {
        let existing = fs::symlink_metadata(path).ok();
        remove_any(path, existing.as_ref())?;
        if self.mode == WhiteoutMode::Overlay {
            mknod(path, libc::S_IFCHR, 0, 0).map_err(io_err("creating whiteout", path))?;
            self.written.insert(path.to_path_buf());
        }
        Ok(())
    }

    fn opaque(&mut self, dir: &Path) -> Result<()> {
        match self.mode {
            WhiteoutMode::Overlay => xattr::set(dir, OPAQUE_XATTR, b"y").map_err(io_err(
                "marking opaque (needs root for trusted.* xattrs)",
                dir,
            )),
            WhiteoutMode::Apply => {
                // Keep what this layer already wrote there; drop what the parents had.
                let rd = fs::read_dir(dir).map_err(io_err("listing", dir))?;
                for ent in rd {
                    let ent = ent.map_err(io_err("listing", dir))?;
                    let p = ent.path();
                    if !self.written.contains(&p) {
                        let m = fs::symlink_metadata(&p).ok();
                        remove_any(&p, m.as_ref())?;
                    }
                }
                Ok(())
            }
        }
    }

    fn set_meta(&self, path: &Path, m: &Meta, is_link: bool) -> Result<()> {
        // Without root, owners and privileged xattrs cannot be kept (as `tar` does for users);
        // everything else still is.
        let tolerate =
            |e: &io::Error| !self.root_user && e.kind() == io::ErrorKind::PermissionDenied;
        if let Err(e) = std::os::unix::fs::lchown(path, Some(m.uid), Some(m.gid)) {
            if !tolerate(&e) {
                return Err(io_err("changing the owner of", path)(e));
            }
        }
        // After chown, which clears setuid bits.
        if !is_link {
            fs::set_permissions(path, fs::Permissions::from_mode(m.mode & 0o7777))
                .map_err(io_err("setting the mode of", path))?;
        }
        for (k, v) in &m.xattrs {
            if let Err(e) = xattr::set(path, k, v) {
                if !tolerate(&e) {
                    return Err(io_err("setting an xattr on", path)(e));
                }
            }
        }
        Ok(())
    }
}

fn remove_any(path: &Path, existing: Option<&fs::Metadata>) -> Result<()> {
    match existing {
        None => Ok(()),
        Some(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(io_err("removing directory", path))
        }
        Some(_) => fs::remove_file(path).map_err(io_err("removing", path)),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub(crate) fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets atime and mtime of `path` itself (not a symlink's target).
pub(crate) fn set_mtime(path: &Path, secs: i64) -> io::Result<()> {
    set_times(path, secs, 0)
}

pub(crate) fn set_times(path: &Path, secs: i64, nsec: i64) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid path and two timespecs, as utimensat wants.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An unpacked layer: a directory holding the layer's files, with overlay-style whiteouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub diff_id: Digest,
    pub path: PathBuf,
}

/// Unpacked layers under one directory, keyed by diffID: `DIR/sha256/<hex>/` (or, for the rare
/// layer that needs its parents to be unpacked right, by chain ID: `DIR/chain/<hex>/`). Each is unpacked
/// into `DIR/tmp/` first and renamed into place, so a snapshot that exists is complete; two
/// processes unpacking the same layer both succeed and one copy is kept.
#[derive(Clone, Debug)]
pub struct SnapshotCache {
    dir: PathBuf,
}

impl SnapshotCache {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["sha256", "chain", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating the snapshot cache", &p))?;
        }
        Ok(SnapshotCache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, diff_id: &Digest) -> PathBuf {
        self.dir
            .join(diff_id.algorithm().as_str())
            .join(diff_id.hex())
    }

    /// Takes `dir` (a step's overlay upperdir or COPY staging directory, already in the
    /// snapshot format: overlay whiteouts, opaque xattrs) as the snapshot of the layer made from
    /// it, with a rename, instead of unpacking that layer again. When the snapshot exists, `dir`
    /// is left alone.
    pub fn adopt(&self, dir: &Path, diff_id: &Digest) -> Result<Snapshot> {
        if let Some(s) = self.get(diff_id) {
            return Ok(s);
        }
        let dest = self.path_for(diff_id);
        if let Err(e) = fs::rename(dir, &dest) {
            if !dest.is_dir() {
                return Err(io_err("moving a snapshot into", &dest)(e));
            }
        }
        Ok(Snapshot {
            diff_id: diff_id.clone(),
            path: dest,
        })
    }

    /// The snapshot of `diff_id`, when it was unpacked before.
    pub fn get(&self, diff_id: &Digest) -> Option<Snapshot> {
        let path = self.path_for(diff_id);
        path.is_dir().then(|| Snapshot {
            diff_id: diff_id.clone(),
            path,
        })
    }

    /// Unpacks a layer stream unless its snapshot exists. With `expected` (the image config's
    /// diffID) a stream whose uncompressed digest differs is refused and nothing is kept.
    /// Returns the snapshot and whether it was unpacked now.
    pub fn unpack(
        &self,
        reader: impl Read,
        media_type: Option<&str>,
        expected: Option<&Digest>,
        layer: &str,
    ) -> Result<(Snapshot, bool)> {
        self.unpack_on(&[], reader, media_type, expected, layer)
    }

    fn chain_path(&self, parents: &[Snapshot], diff_id: &Digest) -> Option<PathBuf> {
        let mut ids: Vec<Digest> = parents.iter().map(|s| s.diff_id.clone()).collect();
        ids.push(diff_id.clone());
        let chain = chain_id(&ids)?;
        Some(self.dir.join("chain").join(chain.hex()))
    }

    /// The snapshot of `diff_id` over `parents` (bottom first): the shared one, or the one
    /// made for this chain when the layer needed its parents (see [`apply_layer_on`]).
    pub fn get_on(&self, parents: &[Snapshot], diff_id: &Digest) -> Option<Snapshot> {
        if let Some(s) = self.get(diff_id) {
            return Some(s);
        }
        let path = self.chain_path(parents, diff_id).filter(|p| p.is_dir())?;
        Some(Snapshot {
            diff_id: diff_id.clone(),
            path,
        })
    }

    /// [`SnapshotCache::unpack`] over the snapshots of the layers below (bottom first). A layer
    /// that stands on its own is kept by diffID and shared by every image; one that needed its
    /// parents (implicit directories, paths through their symlinks, hardlinks to their files)
    /// is kept by chain ID.
    pub fn unpack_on(
        &self,
        parents: &[Snapshot],
        reader: impl Read,
        media_type: Option<&str>,
        expected: Option<&Digest>,
        layer: &str,
    ) -> Result<(Snapshot, bool)> {
        if let Some(s) = expected.and_then(|d| self.get_on(parents, d)) {
            return Ok((s, false));
        }
        let tmp_parent = self.dir.join("tmp");
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&tmp_parent)
            .map_err(io_err("creating a directory in", &tmp_parent))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting the mode of", tmp.path()))?;
        let lowers: Vec<PathBuf> = parents.iter().rev().map(|s| s.path.clone()).collect();
        let report = apply_layer_on(
            tmp.path(),
            &lowers,
            reader,
            media_type,
            WhiteoutMode::Overlay,
            layer,
        )?;
        if let Some(want) = expected {
            if &report.diff_id != want {
                return Err(Error::BadLayer {
                    layer: layer.to_string(),
                    reason: format!(
                        "its uncompressed content has diffID {}, but the image config says {want}",
                        report.diff_id
                    ),
                });
            }
        }
        let dest = match (
            report.uses_lowers,
            self.chain_path(parents, &report.diff_id),
        ) {
            (true, Some(p)) => p,
            _ => self.path_for(&report.diff_id),
        };
        let snap = Snapshot {
            diff_id: report.diff_id,
            path: dest.clone(),
        };
        if dest.is_dir() {
            return Ok((snap, false));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let kept = tmp.keep();
        if let Err(e) = fs::rename(&kept, &dest) {
            let _ = fs::remove_dir_all(&kept);
            if !dest.is_dir() {
                return Err(io_err("moving a snapshot into", &dest)(e));
            }
            return Ok((snap, false));
        }
        Ok((snap, true))
    }

    /// The diffIDs of every snapshot in the cache.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let dir = self.dir.join("sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            if let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a snapshot: renamed away first, so a reader never sees half of one. The caller
    /// makes sure no running step uses it as a lowerdir.
    pub fn remove(&self, diff_id: &Digest) -> Result<bool> {
        let path = self.path_for(diff_id);
        let tmp_parent = self.dir.join("tmp");
        let doomed = tmp_parent.join(format!("remove-{}-{}", diff_id.hex(), std::process::id()));
        match fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("removing snapshot", &path)(e)),
        }
        fs::remove_dir_all(&doomed).map_err(io_err("removing snapshot", &doomed))?;
        Ok(true)
    }

    /// Unpacks a layer blob of `layout` (unless cached), checked against its diffID.
    pub fn unpack_blob(
        &self,
        layout: &store::Layout,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<Snapshot> {
        if let Some(s) = self.get(diff_id) {
            return Ok(s);
        }
        let f = layout.open_blob(&layer.digest)?;
        let verified = oci::VerifyingReader::new(f, layer.digest.clone(), Some(layer.size));
        let (s, _) = self.unpack(
            verified,
            Some(&layer.media_type),
            Some(diff_id),
            &layer.digest.to_string(),
        )?;
        Ok(s)
    }

    /// [`SnapshotCache::unpack_blob`] over the snapshots of the layers below (bottom first).
    pub fn unpack_blob_on(
        &self,
        layout: &store::Layout,
        parents: &[Snapshot],
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<Snapshot> {
        if let Some(s) = self.get_on(parents, diff_id) {
            return Ok(s);
        }
        let f = layout.open_blob(&layer.digest)?;
        let verified = oci::VerifyingReader::new(f, layer.digest.clone(), Some(layer.size));
        let (s, _) = self.unpack_on(
            parents,
            verified,
            Some(&layer.media_type),
            Some(diff_id),
            &layer.digest.to_string(),
        )?;
        Ok(s)
    }

    /// Unpacks every layer of an image (bottom first), returning the snapshots in that order.
    pub fn unpack_image(
        &self,
        layout: &store::Layout,
        layers: &[Descriptor],
        diff_ids: &[Digest],
    ) -> Result<Vec<Snapshot>> {
        if layers.len() != diff_ids.len() {
            return Err(Error::BadLayer {
                layer: "image".into(),
                reason: format!(
                    "the manifest has {} layers but the config lists {} diff_ids",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let mut out: Vec<Snapshot> = Vec::with_capacity(layers.len());
        for (l, d) in layers.iter().zip(diff_ids) {
            let s = self.unpack_blob_on(layout, &out, l, d)?;
            out.push(s);
        }
        Ok(out)
    }
}

/// The chain ID of a stack of diffIDs (bottom first), as the OCI image spec defines it.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut it = diff_ids.iter();
    let mut acc = it.next()?.clone();
    for d in it {
        acc = Digest::sha256_of(format!("{acc} {d}").as_bytes());
    }
    Some(acc)
}

/// Copies snapshots (bottom first) into one directory, carrying out their overlay whiteouts and
/// opaque directories: the root filesystem for when overlayfs is not available.
pub fn flatten(snapshots: &[PathBuf], dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).map_err(io_err("creating", dest))?;
    for s in snapshots {
        copy_layer_dir(s, dest)?;
    }
    Ok(())
}

/// Copies only `paths` (relative, without glob characters) of the merged view of `snapshots`
/// (bottom first) into `dest`: a lookup through the layers, honouring whiteouts and opaque
/// directories, following symlinks along each path (they are recreated in `dest`, so the same
/// path resolves there). What COPY --from needs, without copying the rest of a large stage.
/// Missing paths are skipped: the caller reports them as its own error.
pub fn flatten_paths(snapshots: &[PathBuf], dest: &Path, paths: &[String]) -> Result<()> {
    fs::create_dir_all(dest).map_err(io_err("creating", dest))?;
    let top_first: Vec<&PathBuf> = snapshots.iter().rev().collect();
    for p in paths {
        let mut queue: VecDeque<String> = components_of(p).into();
        let mut cur: Vec<String> = Vec::new();
        // Layers (indexes into top_first) that make up the directory `cur` in the merged view.
        let mut layers: Vec<usize> = (0..top_first.len()).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                cur.pop();
                layers = merged_dir(&top_first, &cur);
                continue;
            }
            let mut rel = cur.clone();
            rel.push(c);
            let rel_path: PathBuf = rel.iter().collect();
            // The top-most layer holding the name decides what it is.
            let mut found: Option<(usize, fs::Metadata)> = None;
            for &i in &layers {
                match fs::symlink_metadata(top_first[i].join(&rel_path)) {
                    Ok(m) if is_whiteout(&m) => break,
                    Ok(m) => {
                        found = Some((i, m));
                        break;
                    }
                    Err(_) => {}
                }
            }
            let Some((i, m)) = found else { break };
            let out = dest.join(&rel_path);
            if m.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    break;
                }
                let src = top_first[i].join(&rel_path);
                let target = fs::read_link(&src).map_err(io_err("reading symlink", &src))?;
                if fs::symlink_metadata(&out).is_err() {
                    std::os::unix::fs::symlink(&target, &out)
                        .map_err(io_err("creating symlink", &out))?;
                }
                let mut rest: Vec<String> = components_of(&target.to_string_lossy());
                if target.is_absolute() {
                    cur.clear();
                }
                rest.extend(queue.drain(..));
                queue = rest.into();
                layers = merged_dir(&top_first, &cur);
                continue;
            }
            if queue.is_empty() {
                // The path itself: the whole merged subtree (bottom first) or one entry.
                if m.is_dir() {
                    let mut dirs = merged_dir(&top_first, &rel);
                    dirs.reverse();
                    if let Some(e) = fs::symlink_metadata(&out).ok().filter(|e| !e.is_dir()) {
                        remove_any(&out, Some(&e))?;
                    }
                    fs::create_dir_all(&out).map_err(io_err("creating", &out))?;
                    for d in dirs {
                        copy_layer_dir(&top_first[d].join(&rel_path), &out)?;
                    }
                } else {
                    let src = top_first[i].join(&rel_path);
                    remove_any(&out, fs::symlink_metadata(&out).ok().as_ref())?;
                    if m.is_file() {
                        fs::copy(&src, &out).map_err(io_err("copying to", &out))?;
                    } else {
                        mknod(&out, m.mode(), libc::major(m.rdev()), libc::minor(m.rdev()))
                            .map_err(io_err("creating device node", &out))?;
                    }
                    copy_meta(&src, &out, &m)?;
                }
                break;
            }
            if !m.is_dir() {
                break;
            }
            if fs::symlink_metadata(&out).is_err() {
                fs::create_dir(&out).map_err(io_err("creating directory", &out))?;
                copy_meta(&top_first[i].join(&rel_path), &out, &m)?;
            }
            cur = rel;
            layers = merged_dir(&top_first, &cur);
        }
    }
    Ok(())
}

/// The layers (indexes into `top_first`) whose directory `rel` makes up the merged directory:
/// from the top down to the first layer where it is opaque, or where a whiteout or a non-directory
/// hides what is below.
fn merged_dir(top_first: &[&PathBuf], rel: &[String]) -> Vec<usize> {
    let rel_path: PathBuf = rel.iter().collect();
    let mut out = Vec::new();
    for (i, l) in top_first.iter().enumerate() {
        // A whiteout or a non-directory at any ancestor in this layer hides the lower ones.
        let mut hidden = false;
        let mut p = l.to_path_buf();
        for c in rel {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    hidden = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if hidden {
            break;
        }
        let d = l.join(&rel_path);
        if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            out.push(i);
            if xattr::get(&d, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y") {
                break;
            }
        }
        // An opaque ancestor in this layer also hides everything below it.
        let mut a = l.to_path_buf();
        let mut opaque_above = false;
        for c in rel.iter().take(rel.len().saturating_sub(1)) {
            a.push(c);
            if xattr::get(&a, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y") {
                opaque_above = true;
                break;
            }
        }
        if opaque_above {
            break;
        }
    }
    out
}

fn components_of(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn copy_layer_dir(src: &Path, dest: &Path) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)
        .map_err(io_err("listing", src))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err("listing", src))?;
    names.sort();
    for n in names {
        let s = src.join(&n);
        let d = dest.join(&n);
        let m = fs::symlink_metadata(&s).map_err(io_err("inspecting", &s))?;
        let existing = fs::symlink_metadata(&d).ok();
        if is_whiteout(&m) {
            remove_any(&d, existing.as_ref())?;
            continue;
        }
        if m.is_dir() {
            let opaque = xattr::get(&s, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y");
            if opaque || !existing.as_ref().is_some_and(|e| e.is_dir()) {
                remove_any(&d, existing.as_ref())?;
                fs::create_dir(&d).map_err(io_err("creating directory", &d))?;
            }
            copy_layer_dir(&s, &d)?;
        } else {
            remove_any(&d, existing.as_ref())?;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&s).map_err(io_err("reading symlink", &s))?;
                std::os::unix::fs::symlink(t, &d).map_err(io_err("creating symlink", &d))?;
            } else if m.is_file() {
                fs::copy(&s, &d).map_err(io_err("copying to", &d))?;
            } else {
                mknod(&d, m.mode(), libc::major(m.rdev()), libc::minor(m.rdev()))
                    .map_err(io_err("creating device node", &d))?;
            }
        }
        copy_meta(&s, &d, &m)?;
    }
    let m = fs::symlink_metadata(src).map_err(io_err("inspecting", src))?;
    copy_meta(src, dest, &m)
}

fn copy_meta(src: &Path, dest: &Path, m: &fs::Metadata) -> Result<()> {
    let link = m.file_type().is_symlink();
    std::os::unix::fs::lchown(dest, Some(m.uid()), Some(m.gid()))
        .map_err(io_err("changing the owner of", dest))?;
    if !link {
        fs::set_permissions(dest, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("setting the mode of", dest))?;
    }
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if n.as_bytes().starts_with(b"trusted.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n) {
                xattr::set(dest, &n, &v).map_err(io_err("setting an xattr on", dest))?;
            }
        }
    }
    set_mtime(dest, m.mtime()).map_err(io_err("setting the time of", dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_paths_reads_only_what_is_named_through_the_layers() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, l3) = (t.path().join("1"), t.path().join("2"), t.path().join("3"));
        // Bottom: a big tree and a file later deleted; a symlinked directory.
        fs::create_dir_all(l1.join("big/deep")).unwrap();
        fs::write(l1.join("big/deep/f"), b"big").unwrap();
        fs::create_dir_all(l1.join("data/sub")).unwrap();
        fs::write(l1.join("data/sub/a"), b"a1").unwrap();
        fs::write(l1.join("data/sub/gone"), b"x").unwrap();
        std::os::unix::fs::symlink("data", l1.join("alias")).unwrap();
        fs::create_dir_all(l1.join("opq")).unwrap();
        fs::write(l1.join("opq/old"), b"old").unwrap();
        // Middle: a whiteout and a newer version of a file.
        fs::create_dir_all(l2.join("data/sub")).unwrap();
        mknod(&l2.join("data/sub/gone"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
        fs::write(l2.join("data/sub/a"), b"a2").unwrap();
        // Top: an opaque directory hides what was below it.
        fs::create_dir_all(l3.join("opq")).unwrap();
        xattr::set(l3.join("opq"), OPAQUE_XATTR, b"y").unwrap();
        fs::write(l3.join("opq/new"), b"new").unwrap();
        let dest = t.path().join("out");
        flatten_paths(
            &[l1, l2, l3],
            &dest,
            &["alias/sub".into(), "opq".into(), "missing/x".into()],
        )
        .unwrap();
        assert_eq!(fs::read(dest.join("data/sub/a")).unwrap(), b"a2");
        assert!(
            !dest.join("data/sub/gone").exists(),
            "deleted in a later layer"
        );
        assert!(fs::symlink_metadata(dest.join("alias"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(dest.join("alias/sub/a")).unwrap(), b"a2");
        assert_eq!(fs::read(dest.join("opq/new")).unwrap(), b"new");
        assert!(
            !dest.join("opq/old").exists(),
            "hidden by the opaque directory"
        );
        assert!(
            !dest.join("big").exists(),
            "paths not asked for are not read"
        );
        assert!(!dest.join("missing").exists());
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1000);
            h.set_uid(0);
            h.set_gid(0);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // Bypass the builder's path checks: hostile names are the point.
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn refuses_escapes_and_writes_nothing_outside() {
        use tar::EntryType as T;
        type Entry<'a> = (&'a str, T, &'a [u8], &'a str);
        let cases: &[(&[Entry], &str, &str)] = &[
            (&[("../evil", T::Regular, b"x", "")], "../evil", "`..`"),
            (&[("/abs", T::Regular, b"x", "")], "/abs", "absolute"),
            (
                &[
                    ("up", T::Symlink, b"", "../.."),
                    ("up/evil", T::Regular, b"x", ""),
                ],
                "up/evil",
                "outside the root",
            ),
            (
                &[("ok/../../evil", T::Regular, b"x", "")],
                "ok/../../evil",
                "`..`",
            ),
            (&[("h", T::Link, b"", "../outside")], "h", "`..`"),
        ];
        for (entries, entry, why) in cases {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = apply_layer(&root, &tar_of(entries)[..], None, WhiteoutMode::Apply, "t")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{entry:?}")) && err.contains(why),
                "{err}"
            );
            assert!(!outer.path().join("evil").exists());
        }
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        use tar::EntryType as T;
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_of(&[
            ("etc", T::Directory, b"", ""),
            ("lnk", T::Symlink, b"", "/etc"),
            ("lnk/f", T::Regular, b"inside", ""),
        ]);
        apply_layer(&root, &t[..], None, WhiteoutMode::Apply, "t").unwrap();
        assert_eq!(fs::read(root.join("etc/f")).unwrap(), b"inside");
    }
}
