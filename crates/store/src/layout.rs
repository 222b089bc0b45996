//! An OCI image layout on disk: content-addressed blobs, `index.json` naming roots, atomic ingest,
//! locking between processes, garbage collection and fsck.
//!
//! Locks: writers hold `gc.lock` shared for as long as they may leave unnamed blobs behind, and
//! `index.lock` exclusively while they rewrite `index.json`; GC holds `gc.lock` exclusively, so it
//! never sweeps a blob that a running import is about to name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, Index, Manifest, VerifyingReader};

use crate::{follow_umask, io_err, Error, Result};

pub const REF_NAME: &str = oci::manifest::ANNOTATION_REF_NAME;
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const INGEST_DIR: &str = "ingest";

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// Held while a writer may have blobs that no name reaches yet; blocks GC.
#[must_use]
pub struct WriteGuard {
    _file: File,
}

impl Layout {
    /// Opens the layout at `root`, creating an empty one when the directory is missing or empty.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs/sha256")).map_err(|e| io_err(&root, e))?;
        fs::create_dir_all(root.join(INGEST_DIR)).map_err(|e| io_err(&root, e))?;
        let layout_file = root.join("oci-layout");
        if !layout_file.exists() {
            write_atomic(&layout_file, LAYOUT_VERSION.as_bytes())?;
        }
        let l = Layout { root };
        if !l.index_path().exists() {
            let _g = l.lock_index()?;
            if !l.index_path().exists() {
                l.write_index(&Index::new(mt::OCI_INDEX, Vec::new()))?;
            }
        }
        Ok(l)
    }

    /// Opens an existing layout for reading; fails when `root` holds none.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let lf = root.join("oci-layout");
        let text = fs::read_to_string(&lf).map_err(|_| Error::NotALayout {
            path: root.clone(),
            reason: "it has no oci-layout file".into(),
        })?;
        if !text.contains("imageLayoutVersion") {
            return Err(Error::NotALayout {
                path: root,
                reason: "its oci-layout file has no imageLayoutVersion".into(),
            });
        }
        if !root.join("index.json").is_file() {
            return Err(Error::NotALayout {
                path: root,
                reason: "it has no index.json".into(),
            });
        }
        Ok(Layout { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Size of a present blob.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobMissing {
                    digest: d.clone(),
                    place: self.root.display().to_string(),
                }
            } else {
                io_err(&p, e)
            }
        })
    }

    /// Reads a small blob whole and checks it against its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let p = self.blob_path(d);
        VerifyingReader::new(self.open_blob(d)?, d.clone(), None)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(&p, e))?;
        Ok(buf)
    }

    pub fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest> {
        let bytes = self.read_blob(&desc.digest)?;
        Ok(Manifest::parse(bytes, Some(&desc.media_type))?)
    }

    /// Takes the GC lock shared: GC waits until the guard drops.
    pub fn write_guard(&self) -> Result<WriteGuard> {
        let f = self.lock_file("gc.lock")?;
        f.lock_shared()
            .map_err(|e| io_err(&self.root.join("gc.lock"), e))?;
        Ok(WriteGuard { _file: f })
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let p = self.root.join(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| io_err(&p, e))
    }

    fn lock_index(&self) -> Result<File> {
        let f = self.lock_file("index.lock")?;
        f.lock()
            .map_err(|e| io_err(&self.root.join("index.lock"), e))?;
        Ok(f)
    }

    /// Streams `reader` into the layout: hashed and counted on the way, verified against
    /// `expected` (digest and size) when given, fsynced, then renamed into place. On any error
    /// nothing but a temporary file (swept by GC) is left.
    pub fn ingest(
        &self,
        reader: &mut dyn Read,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64)> {
        if let Some((d, Some(size))) = expected {
            if self.blob_size(d) == Some(size) {
                return Ok((d.clone(), size));
            }
        }
        let dir = self.root.join(INGEST_DIR);
        let mut tmp = tempfile::Builder::new()
            .prefix("ingest-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| io_err(&dir, e))?;
        follow_umask(tmp.as_file(), tmp.path())?;
        let alg = expected.map_or(oci::Algorithm::Sha256, |(d, _)| d.algorithm());
        let tmp_path = tmp.path().to_path_buf();
        let mut w = oci::DigestWriter::new(
            io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
            alg,
        );
        io::copy(reader, &mut w).map_err(|e| io_err(&tmp_path, e))?;
        let (mut bw, digest, size) = w.finish();
        bw.flush().map_err(|e| io_err(&tmp_path, e))?;
        drop(bw);
        if let Some((want, want_size)) = expected {
            if let Some(ws) = want_size {
                if ws != size {
                    return Err(oci::Error::SizeMismatch {
                        digest: want.clone(),
                        expected: ws,
                        actual: size,
                    }
                    .into());
                }
            }
            if &digest != want {
                return Err(oci::Error::DigestMismatch {
                    expected: want.clone(),
                    actual: digest,
                }
                .into());
            }
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| io_err(tmp.path(), e))?;
        let dest = self.blob_path(&digest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        tmp.persist(&dest).map_err(|e| io_err(&dest, e.error))?;
        sync_dir(dest.parent().unwrap_or(&self.root));
        Ok((digest, size))
    }

    /// Stores bytes we hold in memory (manifests, configs).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(bytes);
        if self.blob_size(&d) != Some(bytes.len() as u64) {
            self.ingest(&mut &bytes[..], Some((&d, Some(bytes.len() as u64))))?;
        }
        Ok(d)
    }

    /// The entries of `index.json`, as they are.
    pub fn index(&self) -> Result<Index> {
        let p = self.index_path();
        let bytes = fs::read(&p).map_err(|e| io_err(&p, e))?;
        let doc = Document::<Index>::parse(bytes).map_err(|e| Error::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Ok(doc.value().clone())
    }

    fn write_index(&self, idx: &Index) -> Result<()> {
        let bytes = serde_json::to_vec(idx).map_err(|e| Error::Corrupt {
            path: self.index_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Changes `index.json` under the index lock; `f` sees the current entries.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut Vec<Descriptor>) -> Result<T>) -> Result<T> {
        let _lock = self.lock_index()?;
        let mut idx = self.index()?;
        let out = f(&mut idx.manifests)?;
        self.write_index(&idx)?;
        Ok(out)
    }

    /// Names `desc` as `name` (replacing what had that name). The blob must be present.
    pub fn set_name(&self, name: &str, desc: &Descriptor) -> Result<()> {
        self.set_names(&[(name.to_string(), desc.clone())])
    }

    /// Names several roots in one atomic update of `index.json`.
    pub fn set_names(&self, names: &[(String, Descriptor)]) -> Result<()> {
        for (_, d) in names {
            if !self.has_blob(&d.digest) {
                return Err(Error::BlobMissing {
                    digest: d.digest.clone(),
                    place: self.root.display().to_string(),
                });
            }
        }
        self.update_index(|entries| {
            for (name, desc) in names {
                entries.retain(|e| e.annotations.get(REF_NAME) != Some(name));
                let mut d = desc.clone();
                d.annotations.insert(REF_NAME.to_string(), name.clone());
                entries.push(d);
            }
            Ok(())
        })
    }

    /// Adds an entry with no name (kept by GC, shown as `<none>`), unless one has that digest.
    pub fn add_unnamed(&self, desc: &Descriptor) -> Result<()> {
        self.update_index(|entries| {
            if !entries.iter().any(|e| e.digest == desc.digest) {
                let mut d = desc.clone();
                d.annotations.remove(REF_NAME);
                entries.push(d);
            }
            Ok(())
        })
    }

    /// The entry named `name`.
    pub fn lookup(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|e| e.annotations.get(REF_NAME).map(String::as_str) == Some(name)))
    }

    /// Removes the entries whose name is in `names`; returns what was removed.
    pub fn remove_names(&self, names: &[String]) -> Result<Vec<Descriptor>> {
        self.update_index(|entries| {
            let (gone, keep): (Vec<_>, Vec<_>) = entries.drain(..).partition(|e| {
                e.annotations
                    .get(REF_NAME)
                    .is_some_and(|n| names.contains(n))
            });
            *entries = keep;
            Ok(gone)
        })
    }

    /// Removes unnamed entries and every name of a digest.
    pub fn remove_digest(&self, d: &Digest) -> Result<Vec<Descriptor>> {
        self.update_index(|entries| {
            let (gone, keep): (Vec<_>, Vec<_>) = entries.drain(..).partition(|e| &e.digest == d);
            *entries = keep;
            Ok(gone)
        })
    }

    /// Every blob reachable from `desc`, `desc` included (manifests are read to find children).
    /// Missing children are listed in `missing` rather than failing.
    pub fn walk(
        &self,
        desc: &Descriptor,
        seen: &mut BTreeMap<Digest, u64>,
        missing: &mut Vec<(Digest, Digest)>,
    ) -> Result<()> {
        if seen.contains_key(&desc.digest) {
            return Ok(());
        }
        seen.insert(desc.digest.clone(), desc.size);
        if !mt::is_manifest_like(&desc.media_type) {
            return Ok(());
        }
        if !self.has_blob(&desc.digest) {
            return Ok(());
        }
        let m = self.read_manifest(desc)?;
        for child in m.children() {
            if !self.has_blob(&child.digest) && !mt::is_non_distributable(&child.media_type) {
                missing.push((desc.digest.clone(), child.digest.clone()));
            }
            self.walk(&child, seen, missing)?;
        }
        Ok(())
    }

    /// Takes the GC lock exclusively: waits for running writers and keeps new ones out until
    /// the guard drops.
    pub fn gc_lock(&self) -> Result<File> {
        let f = self.lock_file("gc.lock")?;
        f.lock()
            .map_err(|e| io_err(&self.root.join("gc.lock"), e))?;
        Ok(f)
    }

    /// Removes blobs no entry reaches and stale temporary files. Waits for running writers.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_keeping(&Default::default())
    }

    /// [`Layout::gc`], also keeping the blobs in `roots` (layers: nothing below them): what holders
    /// outside the index, such as the build cache, still use.
    pub fn gc_keeping(&self, roots: &std::collections::BTreeSet<Digest>) -> Result<GcReport> {
        let _gc_lock = self.gc_lock()?;
        let mut seen = BTreeMap::new();
        for d in roots {
            seen.insert(d.clone(), 0);
        }
        let mut missing = Vec::new();
        for e in self.index()?.manifests {
            self.walk(&e, &mut seen, &mut missing)?;
        }
        // Compressed forms of live layers stay (the next push needs them); the rest go.
        for (from, to, path) in crate::rewrite::all_remembered(self) {
            if seen.contains_key(&from) {
                seen.entry(to).or_insert(0);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        let mut report = GcReport::default();
        for (digest, path) in self.all_blobs()? {
            if !seen.contains_key(&digest) {
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                report.blobs_removed += 1;
                report.bytes_freed += len;
            }
        }
        report.temporaries_removed = self.sweep_temporaries(Duration::ZERO)?;
        Ok(report)
    }

    fn sweep_temporaries(&self, older_than: Duration) -> Result<usize> {
        let dir = self.root.join(INGEST_DIR);
        let mut n = 0;
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let now = SystemTime::now();
        for ent in rd.flatten() {
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= older_than)
                .unwrap_or(true);
            if old && fs::remove_file(ent.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn all_blobs(&self) -> Result<Vec<(Digest, PathBuf)>> {
        let mut out = Vec::new();
        let blobs = self.root.join("blobs");
        for alg in fs::read_dir(&blobs)
            .map_err(|e| io_err(&blobs, e))?
            .flatten()
        {
            let alg_name = alg.file_name().to_string_lossy().to_string();
            let Ok(rd) = fs::read_dir(alg.path()) else {
                continue;
            };
            for f in rd.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                match Digest::parse(&format!("{alg_name}:{name}")) {
                    Ok(d) => out.push((d, f.path())),
                    Err(_) => out.push((Digest::sha256_of(name.as_bytes()), f.path())),
                }
            }
        }
        Ok(out)
    }

    /// For a layout written as an export (not the store): removes the lock files and the empty
    /// ingest directory, so only the layout itself remains. Skipped while another writer holds it.
    pub fn tidy_export(&self) -> Result<()> {
        let f = self.lock_file("gc.lock")?;
        if f.try_lock().is_err() {
            return Ok(());
        }
        let _ = fs::remove_dir(self.root.join(INGEST_DIR));
        for name in ["index.lock", "gc.lock"] {
            let p = self.root.join(name);
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Re-hashes every blob and checks that every entry's children are present.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        for (digest, path) in self.all_blobs()? {
            report.blobs_checked += 1;
            let name_ok = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == digest.hex());
            if !name_ok {
                report.problems.push(format!(
                    "{}: file name is not a digest; remove it",
                    path.display()
                ));
                continue;
            }
            let f = File::open(&path).map_err(|e| io_err(&path, e))?;
            let mut r = oci::DigestReader::new(
                io::BufReader::with_capacity(1 << 20, f),
                digest.algorithm(),
            );
            io::copy(&mut r, &mut io::sink()).map_err(|e| io_err(&path, e))?;
            let (actual, size) = r.finish();
            report.bytes_checked += size;
            if actual != digest {
                report.problems.push(format!(
                    "{}: content hashes to {actual}, not {digest}; remove it and pull or load the image again",
                    path.display()
                ));
            }
        }
        let mut seen = BTreeMap::new();
        let mut missing = Vec::new();
        for e in self.index()?.manifests {
            let name = e
                .annotations
                .get(REF_NAME)
                .cloned()
                .unwrap_or_else(|| "<none>".into());
            if !self.has_blob(&e.digest) {
                report
                    .problems
                    .push(format!("{name}: its root {} is missing", e.digest));
                continue;
            }
            if let Err(err) = self.walk(&e, &mut seen, &mut missing) {
                report.problems.push(format!("{name}: {err}"));
            }
        }
        let missing: BTreeSet<_> = missing.into_iter().collect();
        for (parent, child) in missing {
            report
                .problems
                .push(format!("{parent} refers to {child}, which is missing"));
        }
        report.temporaries = fs::read_dir(self.root.join(INGEST_DIR))
            .map(|rd| rd.count())
            .unwrap_or(0);
        Ok(report)
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub temporaries_removed: usize,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub problems: Vec<String>,
    /// Left by interrupted writes; harmless, removed by the next GC.
    pub temporaries: usize,
}

/// Writes a file atomically: temporary file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    follow_umask(tmp.as_file(), tmp.path())?;
    tmp.write_all(bytes).map_err(|e| io_err(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_leaves_nothing_on_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(t.path()).unwrap();
        let good = Digest::sha256_of(b"hello");
        let (d, n) = l
            .ingest(&mut &b"hello"[..], Some((&good, Some(5))))
            .unwrap();
        assert_eq!((d.clone(), n), (good.clone(), 5));
        assert_eq!(l.read_blob(&good).unwrap(), b"hello");

        let other = Digest::sha256_of(b"other");
        let err = l
            .ingest(&mut &b"wrong"[..], Some((&other, Some(5))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&other.to_string())
                && err.contains(&Digest::sha256_of(b"wrong").to_string()),
            "{err}"
        );
        assert!(!l.has_blob(&other));
        assert!(!l.has_blob(&Digest::sha256_of(b"wrong")));
        assert_eq!(fs::read_dir(t.path().join(INGEST_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn names_gc_and_fsck() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(t.path()).unwrap();
        let layer = l.put_bytes(b"layer").unwrap();
        let config = l.put_bytes(b"{}").unwrap();
        let orphan = l.put_bytes(b"orphan").unwrap();
        let man = oci::ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(mt::OCI_CONFIG, config.clone(), 2),
            layers: vec![Descriptor::new(mt::OCI_LAYER_GZIP, layer.clone(), 5)],
            subject: None,
            annotations: Default::default(),
            extra: Default::default(),
        };
        let doc = Document::new(man);
        l.put_bytes(doc.bytes()).unwrap();
        let desc = doc.descriptor(mt::OCI_MANIFEST);
        l.set_name("a:1", &desc).unwrap();
        l.set_name("a:2", &desc).unwrap();
        l.set_name("a:1", &desc).unwrap();
        assert_eq!(l.index().unwrap().manifests.len(), 2);
        assert_eq!(l.lookup("a:2").unwrap().unwrap().digest, desc.digest);

        let report = l.gc().unwrap();
        assert_eq!(report.blobs_removed, 1);
        assert!(!l.has_blob(&orphan) && l.has_blob(&layer) && l.has_blob(&config));
        assert!(l.fsck().unwrap().problems.is_empty());

        // Corrupt a blob and remove another: fsck names both.
        fs::write(l.blob_path(&layer), b"LAYER").unwrap();
        fs::remove_file(l.blob_path(&config)).unwrap();
        let f = l.fsck().unwrap();
        assert_eq!(f.problems.len(), 2, "{:?}", f.problems);
        assert!(f.problems.iter().any(|p| p.contains("hashes to")));
        assert!(f
            .problems
            .iter()
            .any(|p| p.contains(&config.to_string()) && p.contains("missing")));

        l.remove_names(&["a:1".into(), "a:2".into()]).unwrap();
        l.gc().unwrap();
        assert!(!l.has_blob(&doc.digest().clone()));
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_layout() {
        let t = tempfile::tempdir().unwrap();
        let err = Layout::open_existing(t.path()).unwrap_err().to_string();
        assert!(err.contains("oci-layout"), "{err}");
    }
}
