//! `build --cache-to` / `--cache-from` (buildx's syntax): parses the specs, opens the places
//! (registry repositories, OCI layout directories) for the engine's cache import, and sends an
//! exported cache where `--cache-to` says through the one copy routine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use ::engine::cache::LocalCache;
use ::engine::cache_remote::{self, CacheFrom, Imported, Mode, Records};
use ::engine::engine::{rfc3339, Built};
use ::engine::export;
use anyhow::{bail, Context, Result};
use oci::media_type::{self as mt, Compression};
use oci::{Descriptor, Digest, Document, ImageConfig, Index, Manifest, Reference};
use store::{CopyOptions, Layout, Source, Target};
use transport::{Env, RegistryRepo};

use crate::global::Cli;
use crate::output::say;

/// Name of the cache in a `type=local` directory.
const LOCAL_TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq)]
pub enum CacheTo {
    Registry {
        reference: Reference,
        mode: Mode,
        compression: Option<Compression>,
    },
    Local {
        dest: PathBuf,
        mode: Mode,
        compression: Option<Compression>,
    },
    Inline,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CacheFromSpec {
    Registry(Reference),
    Local(PathBuf),
}

fn kv(spec: &str, flag: &str, known: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        // buildx: a bare value is a registry ref.
        let (k, v) = part.split_once('=').unwrap_or(("ref", part));
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    if !out.contains_key("type") && out.contains_key("ref") {
        out.insert("type".into(), "registry".into());
    }
    let kind = out.get("type").map(String::as_str).unwrap_or("");
    for k in out.keys() {
        if !known.contains(&k.as_str()) {
            bail!(
                "{flag} {spec:?}: unknown key {k:?} for type={kind}; it takes {}",
                known.join(", ")
            );
        }
    }
    Ok(out)
}

pub fn parse_to(spec: &str) -> Result<CacheTo> {
    let kind = kv(
        spec,
        "--cache-to",
        &[
            "type",
            "ref",
            "dest",
            "mode",
            "compression",
            "compression-level",
            "oci-mediatypes",
            "ignore-error",
            "image-manifest",
        ],
    )?
    .get("type")
    .cloned()
    .unwrap_or_default();
    let known: &[&str] = match kind.as_str() {
        "registry" => &[
            "type",
            "ref",
            "mode",
            "compression",
            "oci-mediatypes",
            "ignore-error",
            "image-manifest",
        ],
        "local" => &[
            "type",
            "dest",
            "mode",
            "compression",
            "oci-mediatypes",
            "ignore-error",
            "image-manifest",
        ],
        "inline" => &["type"],
        other => {
            bail!("--cache-to {spec:?}: unknown type {other:?}; use registry, local or inline")
        }
    };
    let m = kv(spec, "--cache-to", known)?;
    let mode = match m.get("mode").map(String::as_str) {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(o) => bail!("--cache-to {spec:?}: mode={o}: use min or max"),
    };
    let compression = match m.get("compression").map(String::as_str) {
        None => None,
        Some("gzip") => Some(Compression::Gzip),
        Some("zstd") => Some(Compression::Zstd),
        Some("uncompressed") => Some(Compression::None),
        Some(o) => bail!("--cache-to {spec:?}: compression={o}: use gzip, zstd or uncompressed"),
    };
    if m.get("oci-mediatypes").is_some_and(|v| v == "false") {
        bail!("--cache-to {spec:?}: the cache is always an OCI artifact; oci-mediatypes=false is not supported");
    }
    Ok(match kind.as_str() {
        "registry" => CacheTo::Registry {
            reference: Reference::parse(
                m.get("ref")
                    .with_context(|| format!("--cache-to {spec:?} needs ref=REGISTRY/REPO:TAG"))?,
            )
            .with_context(|| format!("--cache-to {spec:?}"))?,
            mode,
            compression,
        },
        "local" => CacheTo::Local {
            dest: PathBuf::from(
                m.get("dest")
                    .with_context(|| format!("--cache-to {spec:?} needs dest=DIR"))?,
            ),
            mode,
            compression,
        },
        _ => CacheTo::Inline,
    })
}

pub fn parse_from(spec: &str) -> Result<CacheFromSpec> {
    let m = kv(
        spec,
        "--cache-from",
        &["type", "ref", "src", "digest", "tag"],
    )?;
    match m.get("type").map(String::as_str) {
        Some("registry") => {
            Ok(CacheFromSpec::Registry(
                Reference::parse(m.get("ref").with_context(|| {
                    format!("--cache-from {spec:?} needs ref=REGISTRY/REPO:TAG")
                })?)
                .with_context(|| format!("--cache-from {spec:?}"))?,
            ))
        }
        Some("local") => Ok(CacheFromSpec::Local(PathBuf::from(
            m.get("src")
                .with_context(|| format!("--cache-from {spec:?} needs src=DIR"))?,
        ))),
        other => bail!(
            "--cache-from {spec:?}: unknown type {:?}; use registry or local",
            other.unwrap_or("")
        ),
    }
}

/// Opens every `--cache-from` place and reads its records; what fails is a warning.
pub fn import(cli: &Cli, env: &Env, specs: &[CacheFromSpec]) -> Result<Option<Arc<Imported>>> {
    if specs.is_empty() {
        return Ok(None);
    }
    let mut places = Vec::new();
    for s in specs {
        match s {
            CacheFromSpec::Registry(r) => places.push(CacheFrom {
                place: Box::new(RegistryRepo::new(env.client()?, r, env.runtime())),
                name: r.to_string(),
                registry: true,
                repository: Some(r.repo_only().to_string()),
            }),
            CacheFromSpec::Local(dir) => match Layout::open_existing(dir) {
                Ok(l) => places.push(CacheFrom {
                    place: Box::new(l),
                    name: LOCAL_TAG.into(),
                    registry: false,
                    repository: None,
                }),
                Err(e) => say(
                    cli,
                    format!("warning: cache {} not used: {e}", dir.display()),
                ),
            },
        }
    }
    let quiet = cli.quiet;
    let imported = Imported::load(
        places,
        Box::new(move |w| {
            if !quiet {
                eprintln!("warning: {w}");
            }
        }),
    );
    say(cli, format!("cache: {} records imported", imported.len()));
    Ok(Some(Arc::new(imported)))
}

/// The store, falling back to the imported caches for layers a cache hit left there and to the
/// registries of base images resolved without their layers: reading such a layer fetches it
/// (counted); a registry target on the same host mounts it instead.
pub struct Lazy<'a> {
    pub store: &'a Layout,
    pub imported: Option<&'a Imported>,
    pub bases: Option<&'a (dyn BaseLayers + Sync)>,
    pub origins: HashMap<Digest, Vec<String>>,
}

/// The registries of the base images resolved without their layers (the build's `Bases`).
pub trait BaseLayers {
    /// Pulls `layer` into the store if it is a layer of a resolved base; false when it is not.
    fn pull_blob(&self, layer: &Descriptor) -> Result<bool>;
}

impl Lazy<'_> {
    /// Puts the blob in the store from wherever it is, if the store lacks it.
    pub fn fetch(&self, desc: &Descriptor) -> store::Result<()> {
        if self.store.has_blob(&desc.digest) {
            return Ok(());
        }
        if let Some(imp) = self.imported.filter(|i| i.holds(&desc.digest)) {
            imp.fetch(self.store, desc)
                .map_err(|e| store::Error::Unsupported(e.to_string()))?;
        } else if let Some(b) = self.bases {
            b.pull_blob(desc)
                .map_err(|e| store::Error::Unsupported(format!("{e:#}")))?;
        }
        Ok(())
    }
}

impl Source for Lazy<'_> {
    fn describe(&self) -> String {
        Source::describe(self.store)
    }
    fn resolve(&self, name: &str) -> store::Result<Descriptor> {
        self.store.resolve(name)
    }
    fn open_at(&self, desc: &Descriptor, offset: u64) -> store::Result<Box<dyn Read + Send + '_>> {
        self.fetch(desc)?;
        self.store.open_at(desc, offset)
    }
    fn also_in(&self, digest: &Digest) -> Vec<String> {
        self.origins.get(digest).cloned().unwrap_or_default()
    }
}

/// Fetches the layers of the exported images that are not in the store (left in imported caches
/// by cache hits, or in the registries of bases no step needed), unless every output is a push
/// to a registry that can mount them from there. `origins`: blob → repositories holding it.
pub fn prepare_outputs(
    store: &Layout,
    built: &Built,
    lazy: &Lazy<'_>,
    push_only_to: Option<&[Reference]>,
) -> Result<()> {
    let origins = &lazy.origins;
    for img in &built.images {
        let Ok(Manifest::Image(m)) = store.read_manifest(&img.manifest) else {
            continue;
        };
        for l in &m.value().layers {
            if store.has_blob(&l.digest) {
                continue;
            }
            let mountable = push_only_to.is_some_and(|tags| {
                tags.iter().all(|t| {
                    origins.get(&l.digest).is_some_and(|repos| {
                        repos.iter().any(|r| {
                            Reference::parse(r).is_ok_and(|r| r.registry() == t.registry())
                        })
                    })
                })
            });
            if !mountable {
                lazy.fetch(l)?;
            }
        }
    }
    Ok(())
}

/// Every diffID of the built images.
fn final_layers(store: &Layout, built: &Built) -> Result<BTreeSet<Digest>> {
    let mut out = BTreeSet::new();
    for img in &built.images {
        let cfg = Document::<ImageConfig>::parse(store.read_blob(&img.config)?)?;
        out.extend(cfg.value().rootfs.diff_ids.iter().cloned());
    }
    Ok(out)
}

fn created(layer: &runtime::LayerOptions) -> String {
    rfc3339(layer.source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }))
}

/// `type=inline`: the records of the exported images' steps in an annotation of the root (index
/// or manifest); returns the new root.
pub fn inline(
    store: &Layout,
    built: &Built,
    root: Descriptor,
    layer: &runtime::LayerOptions,
) -> Result<Descriptor> {
    let fin = final_layers(store, built)?;
    let records = cache_remote::records(
        &built.steps,
        &fin,
        Mode::Min,
        &created(layer),
        layer.source_date_epoch.is_some(),
    );
    let text = serde_json::to_string(&records)?;
    match store.read_manifest(&root)? {
        Manifest::Index(doc) => {
            let mut idx: Index = doc.value().clone();
            idx.annotations
                .insert(cache_remote::INLINE_ANNOTATION.into(), text);
            let d = Document::new(idx);
            store.put_bytes(d.bytes())?;
            Ok(d.descriptor(&root.media_type))
        }
        Manifest::Image(doc) => {
            let mut m = doc.value().clone();
            m.annotations
                .insert(cache_remote::INLINE_ANNOTATION.into(), text);
            let d = Document::new(m);
            store.put_bytes(d.bytes())?;
            let mut desc = d.descriptor(&root.media_type);
            desc.platform = root.platform.clone();
            Ok(desc)
        }
    }
}

/// Writes the cache for one `--cache-to` (not inline) and sends it there, the manifest last.
#[allow(clippy::too_many_arguments)]
pub fn export(
    cli: &Cli,
    env: &Env,
    store: &Layout,
    cache: &LocalCache,
    built: &Built,
    to: &CacheTo,
    lazy: &Lazy<'_>,
    layer: &runtime::LayerOptions,
) -> Result<()> {
    let (mode, compression) = match to {
        CacheTo::Registry {
            mode, compression, ..
        }
        | CacheTo::Local {
            mode, compression, ..
        } => (*mode, *compression),
        CacheTo::Inline => return Ok(()),
    };
    let fin = final_layers(store, built)?;
    let mut records: Records = cache_remote::records(
        &built.steps,
        &fin,
        mode,
        &created(layer),
        layer.source_date_epoch.is_some(),
    );
    if let Some(c) = compression {
        let opts = runtime::LayerOptions {
            compression: c,
            ..Default::default()
        };
        for r in &mut records.records {
            let (Some(l), Some(diff)) = (&r.layer, &r.diff_id) else {
                continue;
            };
            if mt::layer_compression(&l.media_type) == Some(c) {
                continue;
            }
            lazy.fetch(l)?;
            r.layer = Some(export::layer_form(store, cache, l, diff, &opts)?);
        }
    }
    let root = cache_remote::write_manifest(store, &records)?;
    let copts = CopyOptions::default();
    let (place, report) = match to {
        CacheTo::Registry { reference, .. } => {
            let dst = RegistryRepo::new(env.client()?, reference, env.runtime());
            let report = store::copy(lazy, &dst, &root, &copts)
                .with_context(|| format!("exporting the build cache to {reference}"))?;
            dst.set_name(&reference.to_string(), &root)?;
            (reference.to_string(), report)
        }
        CacheTo::Local { dest, .. } => {
            let dst = Layout::open_or_create(dest)
                .with_context(|| format!("opening the cache directory {}", dest.display()))?;
            let report = store::copy(lazy, &dst, &root, &copts)
                .with_context(|| format!("exporting the build cache to {}", dest.display()))?;
            Target::set_name(&dst, LOCAL_TAG, &root)?;
            (dest.display().to_string(), report)
        }
        CacheTo::Inline => return Ok(()),
    };
    say(
        cli,
        format!(
            "cache: exported {} records to {place} ({} blobs, {} bytes sent, {} mounted, {} already there) {}",
            records.records.len(),
            report.blobs_copied,
            report.bytes_copied,
            report.blobs_mounted,
            report.blobs_skipped,
            root.digest
        ),
    );
    Ok(())
}

/// The line tests and users read: layer bytes fetched from imported caches.
pub fn report(cli: &Cli, imported: Option<&Imported>) {
    if let Some(imp) = imported {
        let (n, bytes) = imp.fetched();
        say(
            cli,
            format!("cache: downloaded {n} layers, {bytes} bytes from imported caches"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let t = parse_to("type=registry,ref=r.io/a/b:cache,mode=max,oci-mediatypes=true").unwrap();
        assert!(matches!(
            t,
            CacheTo::Registry {
                mode: Mode::Max,
                ..
            }
        ));
        assert_eq!(
            parse_to("type=local,dest=/x").unwrap(),
            CacheTo::Local {
                dest: "/x".into(),
                mode: Mode::Min,
                compression: None
            }
        );
        assert_eq!(parse_to("type=inline").unwrap(), CacheTo::Inline);
        assert!(parse_to("type=local,dest=/x,bogus=1").is_err());
        assert!(parse_to("type=registry,ref=r/a,mode=mid").is_err());
        assert!(parse_to("type=s3").is_err());
        assert!(matches!(
            parse_from("r.io/a/b:cache").unwrap(),
            CacheFromSpec::Registry(_)
        ));
        assert_eq!(
            parse_from("type=local,src=/y").unwrap(),
            CacheFromSpec::Local("/y".into())
        );
        assert!(parse_from("type=local").is_err());
    }
}
