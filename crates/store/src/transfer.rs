//! One copy routine for every pair of places that hold images: the local store, OCI layout
//! directories, OCI archives, docker-archives (and, above this crate, registries).
//!
//! A [`Source`] resolves names and serves blobs by descriptor; a [`Target`] accepts blobs, which it
//! must verify, and names. [`copy`] moves an image or index children-first, skips what the target
//! has, filters platforms into a new consistent index, and runs blob transfers in parallel.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, ImageConfig, Index, Manifest, Matcher, Platform};

use crate::layout::Layout;
use crate::{Error, Result};

/// A place images are read from.
pub trait Source: Sync {
    /// What this is, for messages: `store /root/…`, `oci-archive image.tar`, a registry reference.
    fn describe(&self) -> String;
    /// The root descriptor a name (tag, reference or digest, as this place spells names) points at.
    fn resolve(&self, name: &str) -> Result<Descriptor>;
    /// A stream of the blob's bytes from `offset` on (uploads resume with it). Callers verify
    /// what they read.
    fn open_at(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send + '_>>;

    fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>> {
        self.open_at(desc, 0)
    }

    /// Where the blob's bytes lie in a local file, when they do: lets async consumers read them
    /// without borrowing this source.
    fn local_file(&self, _desc: &Descriptor) -> Option<FileRange> {
        None
    }

    /// Repositories (references such as `host/repo`) known to hold this blob too: a registry
    /// target on the same host mounts it from there instead of receiving its bytes.
    fn also_in(&self, _digest: &Digest) -> Vec<String> {
        Vec::new()
    }

    /// For adapters that recognize a source of their own kind (a registry copying to a registry
    /// mounts blobs instead of moving them).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// Every named root, for places that are read whole (archives); `None` as name when unnamed.
    fn entries(&self) -> Result<Vec<(Option<String>, Descriptor)>> {
        Err(Error::Unsupported(format!(
            "{} cannot list its images",
            self.describe()
        )))
    }

    /// A small blob, read whole and verified.
    fn read_verified(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(desc.size.min(1 << 24) as usize);
        oci::VerifyingReader::new(self.open(desc)?, desc.digest.clone(), Some(desc.size))
            .read_to_end(&mut buf)
            .map_err(|e| Error::from_read(e, &self.describe()))?;
        Ok(buf)
    }

    fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest> {
        Ok(Manifest::parse(
            self.read_verified(desc)?,
            Some(&desc.media_type),
        )?)
    }
}

/// A place images are written to.
pub trait Target: Sync {
    fn describe(&self) -> String;
    /// Is the blob already there (so the copy can skip it)?
    fn has(&self, desc: &Descriptor) -> Result<bool>;
    /// Writes a blob read from `src`, verifying its digest and size while streaming; nothing lands
    /// on a mismatch. The target opens the stream itself, so it can reopen it at an offset.
    fn put(&self, desc: &Descriptor, src: &dyn Source) -> Result<Put>;
    /// Names a root that was put before.
    fn set_name(&self, name: &str, desc: &Descriptor) -> Result<()>;
}

/// How a blob reached the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    /// Linked from another repository of the same registry, with no bytes sent.
    Mounted,
}

/// A byte range of a local file.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// A source whose blobs may also be in registry repositories (the base images of a build):
/// copying it to a registry mounts those blobs from there.
pub struct WithOrigins<'a> {
    pub inner: &'a dyn Source,
    /// Blob digest → references of repositories that hold it.
    pub origins: HashMap<Digest, Vec<String>>,
}

impl Source for WithOrigins<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn resolve(&self, name: &str) -> Result<Descriptor> {
        self.inner.resolve(name)
    }
    fn open_at(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send + '_>> {
        self.inner.open_at(desc, offset)
    }
    fn local_file(&self, desc: &Descriptor) -> Option<FileRange> {
        self.inner.local_file(desc)
    }
    fn also_in(&self, digest: &Digest) -> Vec<String> {
        let mut v = self.inner.also_in(digest);
        v.extend(self.origins.get(digest).cloned().unwrap_or_default());
        v
    }
    fn entries(&self) -> Result<Vec<(Option<String>, Descriptor)>> {
        self.inner.entries()
    }
}

/// Bytes we hold, as a source (indexes made by filtering platforms).
pub struct InMemory<'a> {
    pub desc: &'a Descriptor,
    pub bytes: &'a [u8],
}

impl Source for InMemory<'_> {
    fn describe(&self) -> String {
        format!("memory ({})", self.desc.digest)
    }
    fn resolve(&self, _name: &str) -> Result<Descriptor> {
        Ok(self.desc.clone())
    }
    fn open_at(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send + '_>> {
        if desc.digest != self.desc.digest {
            return Err(Error::BlobMissing {
                digest: desc.digest.clone(),
                place: self.describe(),
            });
        }
        let start = (offset as usize).min(self.bytes.len());
        Ok(Box::new(&self.bytes[start..]))
    }
}

/// Which platforms of an index to copy.
#[derive(Clone, Debug, Default)]
pub enum Platforms {
    /// Everything, attestations included; the index keeps its digest.
    #[default]
    All,
    /// The best match for each wanted platform (containerd's ranking); a new index when that is
    /// fewer entries than the source has.
    Best(Vec<Matcher>),
}

impl Platforms {
    pub fn of(list: &[Platform]) -> Self {
        if list.is_empty() {
            Platforms::All
        } else {
            Platforms::Best(list.iter().map(Matcher::new).collect())
        }
    }
}

#[derive(Debug)]
pub struct CopyReport {
    /// What the target now holds: the source root, or a new index when platforms were filtered.
    pub root: Descriptor,
    /// The image manifests copied, with their platforms when known.
    pub images: Vec<(Option<Platform>, Descriptor)>,
    pub blobs_copied: usize,
    pub bytes_copied: u64,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
}

/// What happened to one blob, for progress displays.
pub enum Event<'a> {
    /// A transfer begins (the target lacks the blob).
    Started(&'a Descriptor),
    Copied(&'a Descriptor),
    Skipped(&'a Descriptor),
    Mounted(&'a Descriptor),
}

pub struct CopyOptions<'a> {
    pub platforms: Platforms,
    pub jobs: usize,
    pub progress: Option<&'a (dyn Fn(Event<'_>) + Sync)>,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            platforms: Platforms::All,
            jobs: 4,
            progress: None,
        }
    }
}

/// Copies the image or index `root` from `src` to `dst`, children first. Returns the root the
/// target now holds; the caller names it.
pub fn copy(
    src: &dyn Source,
    dst: &dyn Target,
    root: &Descriptor,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport> {
    let manifest = src.read_manifest(root)?;
    let mut report = CopyReport {
        root: root.clone(),
        images: Vec::new(),
        blobs_copied: 0,
        bytes_copied: 0,
        blobs_skipped: 0,
        blobs_mounted: 0,
    };
    match &manifest {
        Manifest::Index(doc) => {
            let (index_bytes, index_desc, children) = select(src, root, doc, &opts.platforms)?;
            for child in &children {
                if mt::is_manifest_like(&child.media_type) {
                    let m = src.read_manifest(child)?;
                    copy_image(src, dst, child, &m, opts, &mut report)?;
                    if !child.is_attestation() {
                        report.images.push((child.platform.clone(), child.clone()));
                    }
                } else {
                    copy_blobs(src, dst, std::slice::from_ref(child), opts, &mut report)?;
                }
            }
            put_bytes(dst, &index_desc, &index_bytes)?;
            report.root = index_desc;
        }
        Manifest::Image(doc) => {
            if let Platforms::Best(matchers) = &opts.platforms {
                let cfg = src.read_verified(&doc.value().config)?;
                let plat = Document::<ImageConfig>::parse(cfg)
                    .map(|c| c.value().platform())
                    .ok();
                if let Some(p) = &plat {
                    if !matchers.iter().any(|m| m.matches(p)) {
                        return Err(Error::NoMatchingPlatform {
                            source_name: src.describe(),
                            wanted: wanted_list(matchers),
                            available: vec![p.to_string()],
                        });
                    }
                }
            }
            copy_image(src, dst, root, &manifest, opts, &mut report)?;
            report.images.push((root.platform.clone(), root.clone()));
            report.root = root.clone();
        }
    }
    Ok(report)
}

fn wanted_list(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(|m| m.wanted().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The index to write and the children to copy, after platform selection.
fn select(
    src: &dyn Source,
    root: &Descriptor,
    doc: &Document<Index>,
    platforms: &Platforms,
) -> Result<(Vec<u8>, Descriptor, Vec<Descriptor>)> {
    let all = &doc.value().manifests;
    let matchers = match platforms {
        Platforms::All => return Ok((doc.bytes().to_vec(), root.clone(), all.clone())),
        Platforms::Best(m) => m,
    };
    let mut keep = BTreeSet::new();
    for m in matchers {
        match doc.value().select_with(m) {
            Ok(d) => {
                keep.insert(d.digest.clone());
            }
            Err(e) => {
                return Err(Error::NoMatchingPlatform {
                    source_name: src.describe(),
                    wanted: e.wanted.to_string(),
                    available: e.available.iter().map(|p| p.to_string()).collect(),
                })
            }
        }
    }
    // Attestations go along with the images they describe.
    let kept: Vec<Descriptor> = all
        .iter()
        .filter(|d| {
            keep.contains(&d.digest)
                || (d.is_attestation()
                    && d.annotations
                        .get(oci::manifest::ANNOTATION_DOCKER_REFERENCE_DIGEST)
                        .and_then(|s| Digest::parse(s).ok())
                        .is_some_and(|r| keep.contains(&r)))
        })
        .cloned()
        .collect();
    if kept.len() == all.len() {
        return Ok((doc.bytes().to_vec(), root.clone(), kept));
    }
    let mut idx = doc.value().clone();
    idx.manifests = kept.clone();
    let new = Document::new(idx);
    let mut desc = new.descriptor(&root.media_type);
    desc.annotations = root.annotations.clone();
    Ok((new.into_bytes(), desc, kept))
}

fn copy_image(
    src: &dyn Source,
    dst: &dyn Target,
    desc: &Descriptor,
    manifest: &Manifest,
    opts: &CopyOptions<'_>,
    report: &mut CopyReport,
) -> Result<()> {
    if let Manifest::Index(_) = manifest {
        // A nested index: copy it whole.
        let sub = copy(
            src,
            dst,
            desc,
            &CopyOptions {
                platforms: Platforms::All,
                jobs: opts.jobs,
                progress: opts.progress,
            },
        )?;
        report.blobs_copied += sub.blobs_copied;
        report.bytes_copied += sub.bytes_copied;
        report.blobs_skipped += sub.blobs_skipped;
        report.blobs_mounted += sub.blobs_mounted;
        return Ok(());
    }
    let children: Vec<Descriptor> = manifest
        .children()
        .into_iter()
        .filter(|c| !mt::is_non_distributable(&c.media_type) || c.urls.is_empty())
        .collect();
    copy_blobs(src, dst, &children, opts, report)?;
    put_bytes(dst, desc, manifest.bytes())
}

/// Puts a document we hold (and have verified) in memory.
fn put_bytes(dst: &dyn Target, desc: &Descriptor, bytes: &[u8]) -> Result<()> {
    if !dst.has(desc)? {
        dst.put(desc, &InMemory { desc, bytes })?;
    }
    Ok(())
}

/// Copies blobs with up to `jobs` transfers at a time, stopping at the first error.
fn copy_blobs(
    src: &dyn Source,
    dst: &dyn Target,
    blobs: &[Descriptor],
    opts: &CopyOptions<'_>,
    report: &mut CopyReport,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let copied = AtomicUsize::new(0);
    let skipped = AtomicUsize::new(0);
    let mounted = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = opts.jobs.clamp(1, blobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if first_err.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(desc) = blobs.get(i) else { return };
                let res = (|| -> Result<Option<Put>> {
                    if dst.has(desc)? {
                        return Ok(None);
                    }
                    if let Some(p) = opts.progress {
                        p(Event::Started(desc));
                    }
                    Ok(Some(dst.put(desc, src)?))
                })();
                match res {
                    Ok(Some(Put::Mounted)) => {
                        mounted.fetch_add(1, Ordering::SeqCst);
                        if let Some(p) = opts.progress {
                            p(Event::Mounted(desc));
                        }
                    }
                    Ok(Some(Put::Written)) => {
                        copied.fetch_add(1, Ordering::SeqCst);
                        bytes.fetch_add(desc.size, Ordering::SeqCst);
                        if let Some(p) = opts.progress {
                            p(Event::Copied(desc));
                        }
                    }
                    Ok(None) => {
                        skipped.fetch_add(1, Ordering::SeqCst);
                        if let Some(p) = opts.progress {
                            p(Event::Skipped(desc));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = first_err.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    report.blobs_copied += copied.into_inner();
    report.blobs_skipped += skipped.into_inner();
    report.blobs_mounted += mounted.into_inner();
    report.bytes_copied += bytes.into_inner();
    Ok(())
}

/// The local store, or any OCI layout directory, as a source.
impl Source for Layout {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root().display())
    }

    fn resolve(&self, name: &str) -> Result<Descriptor> {
        if let Some(d) = self.lookup(name)? {
            return Ok(d);
        }
        if let Ok(d) = Digest::parse(name) {
            if let Some(e) = self.index()?.manifests.into_iter().find(|e| e.digest == d) {
                return Ok(e);
            }
        }
        let names: Vec<String> = self
            .index()?
            .manifests
            .iter()
            .filter_map(|e| e.annotations.get(crate::layout::REF_NAME).cloned())
            .collect();
        Err(Error::NotFound {
            name: name.to_string(),
            place: Source::describe(self),
            known: names,
        })
    }

    fn open_at(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send + '_>> {
        let mut f = self.open_blob(&desc.digest)?;
        if offset > 0 {
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset))
                .map_err(|e| crate::io_err(&self.blob_path(&desc.digest), e))?;
        }
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn local_file(&self, desc: &Descriptor) -> Option<FileRange> {
        let len = self.blob_size(&desc.digest)?;
        Some(FileRange {
            path: self.blob_path(&desc.digest),
            offset: 0,
            len,
        })
    }

    fn entries(&self) -> Result<Vec<(Option<String>, Descriptor)>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .map(|e| (e.annotations.get(crate::layout::REF_NAME).cloned(), e))
            .collect())
    }
}

impl Target for Layout {
    fn describe(&self) -> String {
        Source::describe(self)
    }

    fn has(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.blob_size(&desc.digest) == Some(desc.size))
    }

    fn put(&self, desc: &Descriptor, src: &dyn Source) -> Result<Put> {
        let mut r = src.open(desc)?;
        self.ingest(&mut r, Some((&desc.digest, Some(desc.size))))?;
        Ok(Put::Written)
    }

    fn set_name(&self, name: &str, desc: &Descriptor) -> Result<()> {
        Layout::set_name(self, name, desc)
    }
}
