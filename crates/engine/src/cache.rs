//! The step cache behind a trait, and the one place that knows its layout on disk.
//!
//! Under `<store root>/build`: `cache/` (one JSON file per step key: the step's layer),
//! `blobs/` (the compressed forms of a layer by (diffID, compression, level)), `snapshots/`
//! (unpacked layers by diffID), `cache-mounts/` (RUN --mount=type=cache) and `tmp/` (scratch for
//! running steps). A cached step's layer is a GC root of the store: `manifold prune` keeps it,
//! only `prune --cache` lets it go.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oci::media_type::Compression;
use oci::{Descriptor, Digest};
use serde::{Deserialize, Serialize};

use runtime::{io_err, Result};

/// What a step left: its layer (descriptor as first written, and diffID), or none.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedStep {
    pub layer: Option<(Descriptor, Digest)>,
    /// When the step first ran: a fully cached rebuild reproduces the image byte for byte.
    #[serde(default)]
    pub created: Option<i64>,
}

/// Where cached steps and compressed forms of layers are kept. The local directory today; a
/// registry-backed one can follow.
pub trait CacheStore: Sync {
    /// The step cached under `key`, if any (its layer may since have left the store: callers
    /// check).
    fn step(&self, key: &str) -> Option<CachedStep>;
    fn put_step(&self, key: &str, step: &CachedStep);
    /// The blob holding the layer `diff_id` compressed as asked, if one was made.
    fn blob(
        &self,
        diff_id: &Digest,
        compression: Compression,
        level: Option<u32>,
    ) -> Option<Descriptor>;
    fn put_blob(
        &self,
        diff_id: &Digest,
        compression: Compression,
        level: Option<u32>,
        blob: &Descriptor,
    );
}

/// The build cache in a directory (`<store root>/build`).
#[derive(Clone, Debug)]
pub struct LocalCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct BlobEntry {
    diff_id: Digest,
    blob: Descriptor,
}

/// Which cached steps `prune --cache` removes.
#[derive(Clone, Debug, Default)]
pub struct PruneFilter {
    /// Only steps not used for this long.
    pub until: Option<Duration>,
    /// Remove the least recently used steps until what the rest holds fits in this many bytes.
    pub keep_storage: Option<u64>,
}

/// Sizes of the build cache, for `manifold du`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub steps: usize,
    /// Bytes of the store's blobs that cached steps hold (compressed forms included).
    pub step_layers: u64,
    pub snapshots: u64,
    pub cache_mounts: u64,
    pub scratch: u64,
}

impl LocalCache {
    /// The cache of the store at `store_root`.
    pub fn new(store_root: &Path) -> Self {
        LocalCache {
            dir: store_root.join("build"),
        }
    }

    /// The cache in `dir` itself.
    pub fn at(dir: &Path) -> Self {
        LocalCache {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the directories a build writes into.
    pub fn create(&self) -> Result<()> {
        for p in [
            self.steps_dir(),
            self.blobs_dir(),
            self.snapshots_dir(),
            self.tmp_dir(),
        ] {
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn steps_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }
    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.dir.join("cache-mounts")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn step_path(&self, key: &str) -> PathBuf {
        self.steps_dir()
            .join(format!("{}.json", key.trim_start_matches("sha256:")))
    }

    fn blob_path(&self, diff_id: &Digest, compression: Compression, level: Option<u32>) -> PathBuf {
        let name = format!(
            "{}-{}-{}.json",
            diff_id.hex(),
            compression_name(compression),
            level.map_or_else(|| "default".to_string(), |l| l.to_string())
        );
        self.blobs_dir().join(name)
    }

    /// Every cached step with its file and last use.
    fn steps(&self) -> Vec<(PathBuf, SystemTime, CachedStep)> {
        let Ok(rd) = fs::read_dir(self.steps_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let p = e.path();
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                let step: CachedStep = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, used, step))
            })
            .collect()
    }

    fn blob_entries(&self) -> Vec<(PathBuf, BlobEntry)> {
        let Ok(rd) = fs::read_dir(self.blobs_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let p = e.path();
                let b: BlobEntry = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, b))
            })
            .collect()
    }

    /// Blobs of the store the cache holds: garbage collection keeps them.
    pub fn roots(&self) -> BTreeSet<Digest> {
        let mut out = BTreeSet::new();
        let mut diffs = BTreeSet::new();
        for (_, _, s) in self.steps() {
            if let Some((d, diff)) = s.layer {
                out.insert(d.digest);
                diffs.insert(diff);
            }
        }
        for (_, b) in self.blob_entries() {
            if diffs.contains(&b.diff_id) {
                out.insert(b.blob.digest);
            }
        }
        out
    }

    /// Removes cached steps (all of them without a filter, with the snapshots, cache mounts and
    /// scratch space); returns how many steps went. The store's blobs they held become garbage
    /// for the store's GC. Call under the store's GC lock, so no build uses what goes.
    pub fn prune(&self, filter: &PruneFilter, blob_size: &dyn Fn(&Digest) -> u64) -> Result<usize> {
        if filter.until.is_none() && filter.keep_storage.is_none() {
            let n = self.steps().len();
            for p in [
                self.steps_dir(),
                self.blobs_dir(),
                self.cache_mounts_dir(),
                self.snapshots_dir(),
                self.tmp_dir(),
            ] {
                if p.exists() {
                    fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
                }
            }
            return Ok(n);
        }
        let now = SystemTime::now();
        let mut steps = self.steps();
        // Most recently used first.
        steps.sort_by_key(|s| std::cmp::Reverse(s.1));
        let mut keep_bytes = 0u64;
        let mut counted: BTreeSet<Digest> = BTreeSet::new();
        let mut removed = 0;
        let mut kept_diffs = BTreeSet::new();
        for (path, used, step) in steps {
            let old = filter
                .until
                .is_none_or(|u| now.duration_since(used).unwrap_or_default() >= u);
            let size = match &step.layer {
                Some((d, _)) if !counted.contains(&d.digest) => blob_size(&d.digest),
                _ => 0,
            };
            let over = filter.keep_storage.is_some_and(|k| keep_bytes + size > k);
            if old && (filter.keep_storage.is_none() || over) {
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                removed += 1;
                continue;
            }
            keep_bytes += size;
            if let Some((d, diff)) = step.layer {
                counted.insert(d.digest);
                kept_diffs.insert(diff);
            }
        }
        for (p, b) in self.blob_entries() {
            if !kept_diffs.contains(&b.diff_id) {
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
            }
        }
        Ok(removed)
    }

    /// Sizes of what the cache holds.
    pub fn usage(&self, blob_size: &dyn Fn(&Digest) -> u64) -> Usage {
        let steps = self.steps();
        let roots = self.roots();
        Usage {
            steps: steps.len(),
            step_layers: roots.iter().map(blob_size).sum(),
            snapshots: dir_size(&self.snapshots_dir()),
            cache_mounts: dir_size(&self.cache_mounts_dir()),
            scratch: dir_size(&self.tmp_dir()),
        }
    }
}

impl CacheStore for LocalCache {
    fn step(&self, key: &str) -> Option<CachedStep> {
        let p = self.step_path(key);
        let step = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
        // The file's time is its last use, for `prune --cache --filter until=…`.
        if let Ok(f) = fs::File::options().write(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(step)
    }

    fn put_step(&self, key: &str, step: &CachedStep) {
        if let Ok(bytes) = serde_json::to_vec(step) {
            let _ = store::layout::write_atomic(&self.step_path(key), &bytes);
        }
    }

    fn blob(
        &self,
        diff_id: &Digest,
        compression: Compression,
        level: Option<u32>,
    ) -> Option<Descriptor> {
        let p = self.blob_path(diff_id, compression, level);
        let b: BlobEntry = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
        Some(b.blob)
    }

    fn put_blob(
        &self,
        diff_id: &Digest,
        compression: Compression,
        level: Option<u32>,
        blob: &Descriptor,
    ) {
        let entry = BlobEntry {
            diff_id: diff_id.clone(),
            blob: blob.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            let _ =
                store::layout::write_atomic(&self.blob_path(diff_id, compression, level), &bytes);
        }
    }
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "uncompressed",
    }
}

/// Bytes under `p` (files and symlinks; directories count nothing).
pub fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u8) -> (Descriptor, Digest) {
        let d = Digest::sha256_of(&[n]);
        (
            Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", d.clone(), 10),
            Digest::sha256_of(&[n, n]),
        )
    }

    #[test]
    fn roots_prune_and_budget() {
        let t = tempfile::tempdir().unwrap();
        let c = LocalCache::new(t.path());
        c.create().unwrap();
        for i in 0..3u8 {
            c.put_step(
                &format!("sha256:{i}"),
                &CachedStep {
                    layer: Some(desc(i)),
                    created: None,
                },
            );
        }
        let z = Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Digest::sha256_of(b"z"),
            5,
        );
        c.put_blob(&desc(0).1, Compression::Zstd, None, &z);
        assert_eq!(c.blob(&desc(0).1, Compression::Zstd, None), Some(z.clone()));
        assert_eq!(c.blob(&desc(0).1, Compression::Zstd, Some(9)), None);
        let roots = c.roots();
        assert_eq!(roots.len(), 4);
        assert!(roots.contains(&z.digest));
        let size = |_: &Digest| 10u64;
        let n = c
            .prune(
                &PruneFilter {
                    until: Some(Duration::from_secs(3600)),
                    ..Default::default()
                },
                &size,
            )
            .unwrap();
        assert_eq!(n, 0, "nothing is an hour old");
        let n = c
            .prune(
                &PruneFilter {
                    keep_storage: Some(15),
                    ..Default::default()
                },
                &size,
            )
            .unwrap();
        assert_eq!(n, 2, "one 10-byte layer fits in 15 bytes");
        assert_eq!(c.usage(&size).steps, 1);
        c.prune(&PruneFilter::default(), &size).unwrap();
        assert!(c.roots().is_empty());
    }
}
