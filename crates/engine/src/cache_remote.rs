//! A build cache that travels (`--cache-to` / `--cache-from`): the cache artifact's format, its
//! export from a build's steps and its import as a read-only [`Imported`] cache whose layers are
//! fetched only when a step needs their files.
//!
//! The artifact is an OCI image manifest with `artifactType` [`ARTIFACT_TYPE`]; its config is a
//! records blob ([`RECORDS_MEDIA_TYPE`]: step key → layer descriptor, diffID, created) covering
//! every platform of the build, and its layers are the records' layer blobs, unchanged. Keys are
//! the engine's content keys, so a record is used only when every input of the step is the same.
//! Places are reached through [`CacheSource`] (a registry repository or an OCI layout directory,
//! wired by the caller): this module never knows registries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, ImageManifest, Manifest};
use serde::{Deserialize, Serialize};
use store::{Layout, Source, Target};

use crate::cache::CachedStep;
use runtime::{Error, Result};

/// `artifactType` of the cache manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.manifold.cache.v1+json";
/// Media type of the records blob (the manifest's config).
pub const RECORDS_MEDIA_TYPE: &str = "application/vnd.manifold.cache.records.v1+json";
/// Annotation of a pushed image's manifests or index carrying its records (`type=inline`).
pub const INLINE_ANNOTATION: &str = "io.manifold.cache.v1";
/// A records blob larger than this, or with more records, is refused.
pub const MAX_RECORDS_BYTES: u64 = 8 << 20;
pub const MAX_RECORDS: usize = 20_000;

/// The records blob.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Records {
    pub records: Vec<Record>,
}

/// One cached step: its content key and the layer it left (none for a step that wrote nothing).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "diffID")]
    pub diff_id: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Which steps go into an exported cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Steps whose layers are in the exported images (and steps that wrote no layer).
    #[default]
    Min,
    /// Every step of every stage.
    Max,
}

/// The records of `steps` (as a build used them) for `mode`; `final_layers` are the diffIDs in
/// the exported images. Sorted by key, so the same build gives the same bytes. A record's
/// `created` is when its step first ran (an importing build keeps that time, so its image is the
/// same), else `created`; with `fixed` (SOURCE_DATE_EPOCH) always `created`.
pub fn records(
    steps: &[(String, CachedStep)],
    final_layers: &BTreeSet<Digest>,
    mode: Mode,
    created: &str,
    fixed: bool,
) -> Records {
    let mut by_key: BTreeMap<&str, Record> = BTreeMap::new();
    for (key, step) in steps {
        if mode == Mode::Min {
            if let Some((_, diff)) = &step.layer {
                if !final_layers.contains(diff) {
                    continue;
                }
            }
        }
        by_key.entry(key).or_insert_with(|| Record {
            key: key.clone(),
            layer: step.layer.as_ref().map(|(d, _)| plain(d)),
            diff_id: step.layer.as_ref().map(|(_, diff)| diff.clone()),
            created: Some(match step.created {
                Some(t) if !fixed => crate::engine::rfc3339(t),
                _ => created.to_string(),
            }),
        });
    }
    Records {
        records: by_key.into_values().collect(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (as [`crate::engine::rfc3339`] writes it) in seconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// A layer descriptor with only what identifies the blob.
fn plain(d: &Descriptor) -> Descriptor {
    Descriptor::new(d.media_type.clone(), d.digest.clone(), d.size)
}

/// Writes the cache manifest for `records` (records blob and manifest) into `store`; returns the
/// manifest's descriptor. Layer blobs are not touched: they are in the store or in the imported
/// caches they came from.
pub fn write_manifest(store: &Layout, records: &Records) -> Result<Descriptor> {
    let bytes = serde_json::to_vec(records)
        .map_err(|e| Error::Unsupported(format!("writing cache records: {e}")))?;
    let digest = store.put_bytes(&bytes)?;
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &records.records {
        if let Some(l) = &r.layer {
            if seen.insert(l.digest.clone()) {
                layers.push(l.clone());
            }
        }
    }
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor::new(RECORDS_MEDIA_TYPE, digest, bytes.len() as u64),
        layers,
        subject: None,
        annotations: Default::default(),
        extra: Default::default(),
    };
    let doc = Document::new(m);
    store.put_bytes(doc.bytes())?;
    let mut d = doc.descriptor(mt::OCI_MANIFEST);
    d.artifact_type = Some(ARTIFACT_TYPE.into());
    Ok(d)
}

/// A place a cache is read from: a registry repository or an OCI layout directory.
pub trait CacheSource: Source + Target + Send {}
impl<T: Source + Target + Send> CacheSource for T {}

/// One `--cache-from`: where, the name of the cache there, and whether it sits in a registry
/// (its blobs are then content-checked by the registry; a local directory's are hashed on import).
pub struct CacheFrom {
    pub place: Box<dyn CacheSource>,
    pub name: String,
    pub registry: bool,
    /// `host/repo` of a registry cache: pushes to that registry mount its blobs from there.
    pub repository: Option<String>,
}

struct Hit {
    step: CachedStep,
    from: usize,
}

/// Caches imported from `--cache-from`, tried in order (the first that has a key wins).
pub struct Imported {
    places: Vec<CacheFrom>,
    hits: HashMap<String, Hit>,
    /// Blobs checked present in their place, or known missing.
    present: Mutex<HashMap<Digest, bool>>,
    warn: Box<dyn Fn(String) + Send + Sync>,
    fetched_bytes: AtomicU64,
    fetched_blobs: AtomicUsize,
}

impl Imported {
    /// Reads the records of every place; what cannot be read or is not sound is a warning
    /// (through `warn`), never an error.
    pub fn load(places: Vec<CacheFrom>, warn: Box<dyn Fn(String) + Send + Sync>) -> Self {
        let mut hits = HashMap::new();
        for (i, p) in places.iter().enumerate() {
            match read_records(p) {
                Ok((records, skipped)) => {
                    if skipped > 0 {
                        warn(format!(
                            "cache {}: {skipped} records refused (a layer not in the cache manifest, a missing diffID, or a blob that is missing or has the wrong digest)",
                            p.name
                        ));
                    }
                    for r in records {
                        let step = CachedStep {
                            created: r.created.as_deref().and_then(parse_rfc3339),
                            layer: r.layer.zip(r.diff_id),
                        };
                        hits.entry(r.key).or_insert(Hit { step, from: i });
                    }
                }
                Err(e) => warn(format!("cache {} not used: {e}", p.name)),
            }
        }
        Imported {
            places,
            hits,
            present: Mutex::new(HashMap::new()),
            warn,
            fetched_bytes: AtomicU64::new(0),
            fetched_blobs: AtomicUsize::new(0),
        }
    }

    /// How many records were imported.
    pub fn len(&self) -> usize {
        self.hits.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// The step cached under `key`, if an imported cache has it and its layer is still there.
    pub fn step(&self, key: &str) -> Option<CachedStep> {
        let hit = self.hits.get(key)?;
        if let Some((d, _)) = &hit.step.layer {
            if !self.is_present(hit.from, d) {
                return None;
            }
        }
        Some(hit.step.clone())
    }

    fn is_present(&self, from: usize, d: &Descriptor) -> bool {
        if let Some(&p) = self
            .present
            .lock()
            .ok()
            .and_then(|m| m.get(&d.digest).copied())
            .as_ref()
        {
            return p;
        }
        let p = self.places[from].place.has(d).unwrap_or(false);
        if !p {
            (self.warn)(format!(
                "cache {}: layer {} is missing there; the step runs",
                self.places[from].name, d.digest
            ));
        }
        if let Ok(mut m) = self.present.lock() {
            m.insert(d.digest.clone(), p);
        }
        p
    }

    /// The place holding the imported layer `digest`.
    fn place_of(&self, digest: &Digest) -> Option<&CacheFrom> {
        self.hits
            .values()
            .find(|h| {
                h.step
                    .layer
                    .as_ref()
                    .is_some_and(|(d, _)| &d.digest == digest)
            })
            .map(|h| &self.places[h.from])
    }

    /// Copies the imported layer `d` into `store` (verified while streaming), unless it is there.
    pub fn fetch(&self, store: &Layout, d: &Descriptor) -> Result<()> {
        if store.blob_size(&d.digest) == Some(d.size) {
            return Ok(());
        }
        let place = self.place_of(&d.digest).ok_or_else(|| {
            Error::Unsupported(format!(
                "layer {} is neither in the store nor in an imported cache",
                d.digest
            ))
        })?;
        let src: &dyn Source = place.place.as_ref();
        store.put(d, src).map_err(|e| {
            Error::Unsupported(format!(
                "fetching layer {} from cache {}: {e}",
                d.digest, place.name
            ))
        })?;
        self.fetched_bytes.fetch_add(d.size, Ordering::SeqCst);
        self.fetched_blobs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Blob → registry repositories of the imported caches that hold it: a push to the same
    /// registry mounts it from there.
    pub fn origins(&self) -> HashMap<Digest, Vec<String>> {
        let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
        for h in self.hits.values() {
            if let (Some((d, _)), Some(repo)) = (&h.step.layer, &self.places[h.from].repository) {
                let v = out.entry(d.digest.clone()).or_default();
                if !v.contains(repo) {
                    v.push(repo.clone());
                }
            }
        }
        out
    }

    /// Is `digest` an imported layer (possibly not in the store)?
    pub fn holds(&self, digest: &Digest) -> bool {
        self.place_of(digest).is_some()
    }

    /// (blobs, bytes) of layers fetched from imported caches so far.
    pub fn fetched(&self) -> (usize, u64) {
        (
            self.fetched_blobs.load(Ordering::SeqCst),
            self.fetched_bytes.load(Ordering::SeqCst),
        )
    }
}

/// The sound records of one place, and how many were refused.
fn read_records(p: &CacheFrom) -> std::result::Result<(Vec<Record>, usize), String> {
    let src: &dyn Source = p.place.as_ref();
    let root = src.resolve(&p.name).map_err(|e| e.to_string())?;
    let (records, layers) = match src.read_manifest(&root).map_err(|e| e.to_string())? {
        Manifest::Image(doc) => {
            let m = doc.value();
            if m.config.media_type != RECORDS_MEDIA_TYPE {
                return Err(format!(
                    "it is not a manifold cache (config media type {}, want {RECORDS_MEDIA_TYPE})",
                    m.config.media_type
                ));
            }
            if m.config.size > MAX_RECORDS_BYTES {
                return Err(format!(
                    "its records blob is {} bytes, more than the {MAX_RECORDS_BYTES} allowed",
                    m.config.size
                ));
            }
            let bytes = src.read_verified(&m.config).map_err(|e| e.to_string())?;
            let records: Records = serde_json::from_slice(&bytes)
                .map_err(|e| format!("its records blob is not valid: {e}"))?;
            (records, m.layers.clone())
        }
        // An image pushed with `--cache-to type=inline`: records in its index's annotation.
        Manifest::Index(doc) => {
            let text = doc
                .value()
                .annotations
                .get(INLINE_ANNOTATION)
                .ok_or_else(|| {
                    format!(
                        "it is an image index without inline cache records ({INLINE_ANNOTATION})"
                    )
                })?;
            if text.len() as u64 > MAX_RECORDS_BYTES {
                return Err("its inline records are too large".into());
            }
            let records: Records = serde_json::from_str(text)
                .map_err(|e| format!("its inline records are not valid: {e}"))?;
            let mut layers = Vec::new();
            for child in &doc.value().manifests {
                if let Ok(Manifest::Image(m)) = src.read_manifest(child) {
                    layers.extend(m.value().layers.iter().cloned());
                }
            }
            (records, layers)
        }
    };
    if records.records.len() > MAX_RECORDS {
        return Err(format!(
            "it holds {} records, more than the {MAX_RECORDS} allowed",
            records.records.len()
        ));
    }
    let listed: HashMap<&Digest, &Descriptor> = layers.iter().map(|l| (&l.digest, l)).collect();
    let mut checked: HashMap<Digest, bool> = HashMap::new();
    let mut ok = Vec::new();
    let mut skipped = 0;
    for r in records.records {
        let sound = match (&r.layer, &r.diff_id) {
            (None, None) => true,
            (Some(l), Some(_)) => {
                listed
                    .get(&l.digest)
                    .is_some_and(|d| d.size == l.size && d.media_type == l.media_type)
                    && (p.registry
                        || *checked
                            .entry(l.digest.clone())
                            .or_insert_with(|| hashes_right(src, l)))
            }
            _ => false,
        };
        if sound && r.key.starts_with("sha256:") {
            ok.push(r);
        } else {
            skipped += 1;
        }
    }
    Ok((ok, skipped))
}

/// Does the blob hash to its digest (a directory can hold anything)?
fn hashes_right(src: &dyn Source, d: &Descriptor) -> bool {
    let Ok(r) = src.open(d) else { return false };
    let mut v = oci::VerifyingReader::new(r, d.digest.clone(), Some(d.size));
    std::io::copy(&mut v, &mut std::io::sink()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u8) -> (String, CachedStep) {
        let d = Digest::sha256_of(&[n]);
        (
            format!("sha256:{n:064}"),
            CachedStep {
                layer: Some((
                    Descriptor::new(mt::OCI_LAYER_GZIP, d, 10),
                    Digest::sha256_of(&[n, n]),
                )),
                created: Some(1_700_000_000 + i64::from(n)),
            },
        )
    }

    #[test]
    fn min_keeps_final_layers_max_keeps_all() {
        let steps = vec![
            step(2),
            step(1),
            step(2),
            (
                "sha256:e".into(),
                CachedStep {
                    layer: None,
                    created: None,
                },
            ),
        ];
        let fin: BTreeSet<Digest> = [Digest::sha256_of(&[1, 1])].into();
        let max = records(&steps, &fin, Mode::Max, "t", false);
        assert_eq!(max.records.len(), 3);
        assert!(max.records.windows(2).all(|w| w[0].key < w[1].key));
        let min = records(&steps, &fin, Mode::Min, "t", false);
        assert_eq!(min.records.len(), 2);
        // Each step's first run time travels; a step without one gets the export's.
        let created: Vec<_> = max.records.iter().map(|r| r.created.clone()).collect();
        assert!(created.contains(&Some(crate::engine::rfc3339(1_700_000_001))));
        assert!(created.contains(&Some("t".to_string())));
        // SOURCE_DATE_EPOCH: the export's time for every record.
        let fixed = records(&steps, &fin, Mode::Max, "t", true);
        assert!(fixed
            .records
            .iter()
            .all(|r| r.created.as_deref() == Some("t")));
    }

    #[test]
    fn created_times_round_trip() {
        for t in [0, 951_782_400, 1_700_000_001, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&crate::engine::rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("t"), None);
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
    }

    /// A cache directory holding `records` and the given layer blobs (listed in the manifest).
    fn place(
        records: &Records,
        layers: &[(&[u8], bool)],
        registry: bool,
    ) -> (tempfile::TempDir, Imported, Vec<String>) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(t.path().join("c")).unwrap();
        let mut recs = records.clone();
        for (bytes, stored) in layers {
            let d = Descriptor::new(
                mt::OCI_LAYER_GZIP,
                Digest::sha256_of(bytes),
                bytes.len() as u64,
            );
            if *stored {
                l.put_bytes(bytes).unwrap();
            }
            recs.records.push(Record {
                key: format!("sha256:{}", d.digest.hex()),
                layer: Some(d.clone()),
                diff_id: Some(d.digest.clone()),
                created: None,
            });
        }
        let m = write_manifest(&l, &recs).unwrap();
        Target::set_name(&l, "latest", &m).unwrap();
        let warnings = std::sync::Arc::new(Mutex::new(Vec::new()));
        let w = warnings.clone();
        let imp = Imported::load(
            vec![CacheFrom {
                place: Box::new(Layout::open_existing(t.path().join("c")).unwrap()),
                name: "latest".into(),
                registry,
                repository: None,
            }],
            Box::new(move |s| w.lock().unwrap().push(s)),
        );
        let keys: Vec<String> = recs.records.iter().map(|r| r.key.clone()).collect();
        // Ask for every key, so lazy checks run.
        for k in &keys {
            imp.step(k);
        }
        let got = warnings.lock().unwrap().clone();
        (t, imp, got)
    }

    #[test]
    fn hostile_caches_are_refused_with_warnings() {
        // Sound: one layer, present.
        let (_t, imp, w) = place(&Records::default(), &[(b"one", true)], false);
        assert_eq!(imp.len(), 1);
        assert!(w.is_empty(), "{w:?}");

        // A record whose layer the manifest does not list.
        let stray = Records {
            records: vec![Record {
                key: "sha256:x".into(),
                layer: Some(Descriptor::new(
                    mt::OCI_LAYER_GZIP,
                    Digest::sha256_of(b"elsewhere"),
                    9,
                )),
                diff_id: Some(Digest::sha256_of(b"d")),
                created: None,
            }],
        };
        let (_t, imp, w) = place(&stray, &[(b"one", true)], false);
        assert_eq!(imp.len(), 1);
        assert!(w.iter().any(|w| w.contains("1 records refused")), "{w:?}");

        // A listed blob that is missing: refused on import from a directory, and at first use
        // from a registry (which is trusted for digests but may have lost the blob).
        let (_t, imp, w) = place(&Records::default(), &[(b"gone", false)], false);
        assert_eq!(imp.len(), 0, "{w:?}");
        let (_t, imp, w) = place(&Records::default(), &[(b"gone", false)], true);
        assert_eq!(imp.len(), 1);
        assert!(imp
            .step(&format!("sha256:{}", Digest::sha256_of(b"gone").hex()))
            .is_none());
        assert!(w.iter().any(|w| w.contains("missing")), "{w:?}");

        // A huge record list: the whole cache is refused.
        let huge = Records {
            records: (0..=MAX_RECORDS)
                .map(|i| Record {
                    key: format!("sha256:{i}"),
                    layer: None,
                    diff_id: None,
                    created: None,
                })
                .collect(),
        };
        let (_t, imp, w) = place(&huge, &[], false);
        assert_eq!(imp.len(), 0);
        assert!(w.iter().any(|w| w.contains("more than the")), "{w:?}");
    }
}
