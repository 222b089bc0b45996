//! Exporters: one per kind of `--output` (store, registry, oci, docker, local, tar). Each owns
//! its options (compression, `push-by-digest`, `name`, `dest`) and refuses keys it does not
//! know. Layers are kept by diffID in whatever form the build wrote them; an exporter that asks
//! for another compression gets the form made once for (diffID, compression, level) and cached.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci::media_type::{self as mt, layer_compression, Compression};
use oci::{Descriptor, Digest, Document, ImageConfig, ImageManifest, Index, Manifest, Reference};
use store::{CopyOptions, Layout, Platforms, Target};

use crate::cache::{CacheStore, LocalCache};
use crate::engine::{Built, PlatformImage};
use runtime::layer::{self, LayerOptions};
use runtime::{io_err, Error, Result};

/// Opens registry repositories as copy targets; the caller knows credentials and TLS.
pub trait Registries {
    fn target(&self, reference: &Reference) -> std::result::Result<Box<dyn Target>, String>;
}

/// What every exporter reads.
pub struct ExportContext<'a> {
    pub store: &'a Layout,
    pub built: &'a Built,
    /// The root to export: the index, or the image itself for a build of this machine's
    /// platform that named none.
    pub root: Descriptor,
    pub tags: &'a [Reference],
    pub cache: &'a LocalCache,
    /// Blob → repositories that hold it (where base images came from): registries mount them.
    pub origins: &'a HashMap<Digest, Vec<String>>,
    pub registries: &'a dyn Registries,
    /// The store, falling back to where blobs it lacks are (layers a build left in an imported
    /// cache or a base image's registry): what registry and archive outputs read.
    pub blobs: Option<&'a dyn store::Source>,
}

impl ExportContext<'_> {
    fn source(&self) -> &dyn store::Source {
        self.blobs.unwrap_or(self.store)
    }
}

pub trait Exporter {
    /// The `type=` of this output.
    fn kind(&self) -> &'static str;
    /// Does it need `-t` names (a registry output without `name=`)?
    fn needs_tags(&self) -> bool {
        false
    }
    /// Does it write to standard output (`dest=-`)? The build's digests go to stderr then.
    fn writes_stdout(&self) -> bool {
        false
    }
    /// Sends the result where this output says; returns lines worth telling the user.
    fn export(&self, cx: &ExportContext<'_>) -> Result<Vec<String>>;
}

/// `compression=`, `compression-level=`, `force-compression=` of an image output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerForm {
    pub compression: Option<Compression>,
    pub level: Option<u32>,
    /// Also recompress base image layers (buildx's `force-compression`).
    pub force: bool,
}

const LAYER_KEYS: [&str; 3] = ["compression", "compression-level", "force-compression"];

/// Parses one `--output` (`type=registry,name=...`, `type=oci,dest=...`, ...).
pub fn parse_output(spec: &str) -> Result<Box<dyn Exporter>> {
    let fail = |why: String| Error::Unsupported(format!("--output {spec:?}: {why}"));
    let mut kv = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or(("type", part));
        kv.insert(k.trim().to_string(), v.trim().to_string());
    }
    let kind = kv
        .get("type")
        .cloned()
        .ok_or_else(|| fail("needs type=…".into()))?;
    let truthy = |k: &str| kv.get(k).is_some_and(|v| v == "true" || v == "1");
    let push = truthy("push");
    let mut known: Vec<&str> = match kind.as_str() {
        "registry" => vec!["type", "name", "push-by-digest"],
        "image" => vec!["type", "name", "push", "push-by-digest"],
        "store" => vec!["type"],
        "oci" | "docker" => vec!["type", "dest"],
        "local" | "tar" => vec!["type", "dest"],
        other => {
            return Err(fail(format!(
                "unknown output type {other:?}; use registry, image, oci, docker, local or tar"
            )))
        }
    };
    if !matches!(kind.as_str(), "local" | "tar") {
        known.extend(LAYER_KEYS);
    }
    for k in kv.keys() {
        if !known.contains(&k.as_str()) {
            return Err(fail(format!(
                "unknown key {k:?}; this output takes {}",
                known.join(", ")
            )));
        }
    }
    let form = LayerForm {
        compression: match kv.get("compression").map(String::as_str) {
            None => None,
            Some("gzip") => Some(Compression::Gzip),
            Some("zstd") => Some(Compression::Zstd),
            Some("uncompressed") => Some(Compression::None),
            Some(other) => {
                return Err(fail(format!(
                    "compression={other}: use gzip, zstd or uncompressed"
                )))
            }
        },
        level: match kv.get("compression-level") {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| fail(format!("compression-level={v} is not a number")))?,
            ),
        },
        force: truthy("force-compression"),
    };
    let dest = || -> Result<PathBuf> {
        kv.get("dest")
            .map(PathBuf::from)
            .ok_or_else(|| fail("needs dest=PATH".into()))
    };
    Ok(match kind.as_str() {
        "registry" => Box::new(RegistryExporter {
            push_by_digest: truthy("push-by-digest"),
            name: kv.get("name").cloned(),
            form,
        }),
        "image" if push => Box::new(RegistryExporter {
            push_by_digest: truthy("push-by-digest"),
            name: kv.get("name").cloned(),
            form,
        }),
        "image" | "store" => Box::new(StoreExporter { form }),
        "oci" | "docker" => Box::new(ArchiveExporter {
            docker: kind == "docker",
            dest: dest()?,
            form,
        }),
        _ => Box::new(FilesystemExporter {
            tar: kind == "tar",
            dest: dest()?,
        }),
    })
}

/// Into the local store, named by the `-t` tags.
pub struct StoreExporter {
    pub form: LayerForm,
}

impl StoreExporter {
    pub fn new() -> Self {
        StoreExporter {
            form: LayerForm::default(),
        }
    }
}

impl Default for StoreExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter for StoreExporter {
    fn kind(&self) -> &'static str {
        "store"
    }
    fn export(&self, cx: &ExportContext<'_>) -> Result<Vec<String>> {
        let root = with_form(cx, &self.form)?;
        if cx.tags.is_empty() {
            cx.store.add_unnamed(&root)?;
            return Ok(Vec::new());
        }
        let names: Vec<(String, Descriptor)> = cx
            .tags
            .iter()
            .map(|t| (t.to_string(), root.clone()))
            .collect();
        cx.store.set_names(&names)?;
        Ok(vec![format!(
            "named {}",
            cx.tags
                .iter()
                .map(|t| t.familiar())
                .collect::<Vec<_>>()
                .join(", ")
        )])
    }
}

/// To registries: the `-t` tags, or `name=`; by digest only with `push-by-digest`.
pub struct RegistryExporter {
    pub push_by_digest: bool,
    pub name: Option<String>,
    pub form: LayerForm,
}

impl RegistryExporter {
    /// `--push`.
    pub fn new() -> Self {
        RegistryExporter {
            push_by_digest: false,
            name: None,
            form: LayerForm::default(),
        }
    }
}

impl Default for RegistryExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter for RegistryExporter {
    fn kind(&self) -> &'static str {
        "registry"
    }
    fn needs_tags(&self) -> bool {
        self.name.is_none()
    }
    fn export(&self, cx: &ExportContext<'_>) -> Result<Vec<String>> {
        let targets: Vec<Reference> = match &self.name {
            Some(n) => n
                .split(',')
                .map(|n| {
                    Reference::parse(n.trim())
                        .map_err(|e| Error::Unsupported(format!("--output name={n}: {e}")))
                })
                .collect::<Result<_>>()?,
            None => cx.tags.to_vec(),
        };
        let root = with_form(cx, &self.form)?;
        // Layers of base images may be in the target registry already, in the repository
        // they came from: mounted there, not uploaded again.
        let source = store::WithOrigins {
            inner: cx.source(),
            origins: cx.origins.clone(),
        };
        let mut lines = Vec::new();
        for t in &targets {
            let dst = cx
                .registries
                .target(t)
                .map_err(|e| Error::Unsupported(format!("pushing to {t}: {e}")))?;
            let report = store::copy(
                &source,
                dst.as_ref(),
                &root,
                &CopyOptions {
                    platforms: Platforms::All,
                    jobs: 4,
                    progress: None,
                },
            )?;
            if !self.push_by_digest {
                dst.set_name(&t.to_string(), &root)?;
            }
            lines.push(format!(
                "pushed {} ({} blobs, {}, {} mounted, {} already there)",
                if self.push_by_digest {
                    format!("{}@{}", t.repo_only(), root.digest)
                } else {
                    t.familiar()
                },
                report.blobs_copied,
                human_size(report.bytes_copied),
                report.blobs_mounted,
                report.blobs_skipped
            ));
        }
        Ok(lines)
    }
}

/// An OCI archive, or a docker-archive for `docker load`.
pub struct ArchiveExporter {
    pub docker: bool,
    pub dest: PathBuf,
    pub form: LayerForm,
}

impl Exporter for ArchiveExporter {
    fn kind(&self) -> &'static str {
        if self.docker {
            "docker"
        } else {
            "oci"
        }
    }
    fn writes_stdout(&self) -> bool {
        store::archive::is_stdout(&self.dest)
    }
    fn export(&self, cx: &ExportContext<'_>) -> Result<Vec<String>> {
        let root = with_form(cx, &self.form)?;
        let names: Vec<String> = if cx.tags.is_empty() {
            vec![format!(
                "localhost/manifold-build:{}",
                &root.digest.hex()[..12]
            )]
        } else {
            cx.tags.iter().map(|t| t.to_string()).collect()
        };
        let mut lines = Vec::new();
        if self.docker {
            let t = store::DockerArchiveTarget::create(&self.dest)?;
            store::copy(cx.source(), &t, &root, &CopyOptions::default())?;
            for n in &names {
                t.set_name(n, &root)?;
            }
            let entries = t.finish()?;
            if entries.len() > 1 {
                lines.push(format!(
                    "docker-archive holds {} images, one per platform (docker load cannot hold an index):",
                    entries.len()
                ));
            }
            for e in entries {
                lines.push(format!(
                    "  {}{}",
                    e.tags.join(", "),
                    e.platform.map(|p| format!("  ({p})")).unwrap_or_default()
                ));
            }
        } else {
            let t = store::OciArchiveTarget::create(&self.dest)?;
            store::copy(cx.source(), &t, &root, &CopyOptions::default())?;
            for n in &names {
                t.set_name(n, &root)?;
            }
            t.finish()?;
        }
        lines.push(format!("wrote {}", self.dest.display()));
        Ok(lines)
    }
}

/// Each platform's root filesystem: a directory (`local`) or a tar (`tar`), in `os_arch`
/// subdirectories when there are several platforms.
pub struct FilesystemExporter {
    pub tar: bool,
    pub dest: PathBuf,
}

impl Exporter for FilesystemExporter {
    fn kind(&self) -> &'static str {
        if self.tar {
            "tar"
        } else {
            "local"
        }
    }
    fn writes_stdout(&self) -> bool {
        self.tar && store::archive::is_stdout(&self.dest)
    }
    fn export(&self, cx: &ExportContext<'_>) -> Result<Vec<String>> {
        export_filesystem(cx.store, &cx.built.images, &self.dest, self.tar)?;
        Ok(vec![format!("wrote {}", self.dest.display())])
    }
}

fn export_filesystem(
    store: &Layout,
    images: &[PlatformImage],
    dest: &Path,
    tar: bool,
) -> Result<()> {
    let work = tempfile::tempdir().map_err(io_err(
        "creating a temporary directory in",
        Path::new("/tmp"),
    ))?;
    let base = if tar {
        work.path().join("fs")
    } else {
        dest.to_path_buf()
    };
    let several = images.len() > 1;
    for i in images {
        let dir = if several {
            base.join(i.platform.slug('_'))
        } else {
            base.clone()
        };
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let m = match store.read_manifest(&i.manifest)? {
            Manifest::Image(doc) => doc.value().clone(),
            Manifest::Index(_) => {
                return Err(Error::Unsupported(format!(
                    "{} is an index, not an image",
                    i.manifest.digest
                )))
            }
        };
        for l in &m.layers {
            let f = store.open_blob(&l.digest)?;
            runtime::snapshot::apply_layer(
                &dir,
                f,
                Some(&l.media_type),
                runtime::WhiteoutMode::Apply,
                &l.digest.to_string(),
            )?;
        }
    }
    if tar {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(parent)
            .map_err(io_err("creating a file in", parent))?;
        store::follow_umask(tmp.as_file(), tmp.path())?;
        {
            let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
            b.follow_symlinks(false);
            b.append_dir_all(".", &base)
                .map_err(io_err("writing", dest))?;
            b.into_inner().map_err(io_err("writing", dest))?;
        }
        if store::archive::is_stdout(dest) {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                return Err(Error::Unsupported(
                    "refusing to write a tar to a terminal (dest `-` is standard output); redirect it"
                        .into(),
                ));
            }
            let mut f = tmp.reopen().map_err(io_err("reading", tmp.path()))?;
            std::io::copy(&mut f, &mut std::io::stdout().lock())
                .map_err(io_err("writing", dest))?;
            return Ok(());
        }
        tmp.persist(dest)
            .map_err(|e| io_err("writing", dest)(e.error))?;
    }
    Ok(())
}

/// The root to export with its layers in `form`: the build's own as they are when the form
/// asks nothing new; else new manifests (the configs stay: diffIDs do not change) and index.
fn with_form(cx: &ExportContext<'_>, form: &LayerForm) -> Result<Descriptor> {
    let Some(c) = form.compression else {
        return Ok(cx.root.clone());
    };
    let opts = LayerOptions {
        compression: c,
        level: form.level,
        ..Default::default()
    };
    let mut entries = Vec::new();
    let mut changed = false;
    for img in &cx.built.images {
        let m: ImageManifest = match cx.store.read_manifest(&img.manifest)? {
            Manifest::Image(doc) => doc.value().clone(),
            Manifest::Index(_) => return Ok(cx.root.clone()),
        };
        let cfg =
            Document::<ImageConfig>::parse(cx.store.read_blob(&m.config.digest)?).map_err(|e| {
                Error::Unsupported(format!("the config of {}: {e}", img.manifest.digest))
            })?;
        let diffs = &cfg.value().rootfs.diff_ids;
        let mut layers = Vec::new();
        for (l, diff) in m.layers.iter().zip(diffs) {
            let ours = form.force || img.own_layers.contains(diff);
            let same = layer_compression(&l.media_type) == Some(c) && form.level.is_none();
            if !ours || same {
                layers.push(l.clone());
                continue;
            }
            layers.push(layer_form(cx.store, cx.cache, l, diff, &opts)?);
        }
        if layers == m.layers {
            entries.push(img.manifest.clone());
            continue;
        }
        changed = true;
        let mut m2 = m.clone();
        m2.layers = layers;
        let doc = Document::new(m2);
        cx.store.put_bytes(doc.bytes())?;
        let mut d = doc.descriptor(mt::OCI_MANIFEST);
        d.platform = img.manifest.platform.clone();
        entries.push(d);
    }
    if !changed {
        return Ok(cx.root.clone());
    }
    if !mt::is_index(&cx.root.media_type) {
        let mut d = entries.remove(0);
        d.platform = None;
        return Ok(d);
    }
    let index = Document::new(Index::new(mt::OCI_INDEX, entries));
    cx.store.put_bytes(index.bytes())?;
    Ok(index.descriptor(mt::OCI_INDEX))
}

/// The blob of layer `diff` in `opts`' form: made once, then found in the cache.
pub fn layer_form(
    store: &Layout,
    cache: &dyn CacheStore,
    layer_blob: &Descriptor,
    diff: &Digest,
    opts: &LayerOptions,
) -> Result<Descriptor> {
    if let Some(b) = cache.blob(diff, opts.compression, opts.level) {
        if store.blob_size(&b.digest) == Some(b.size) {
            return Ok(b);
        }
    }
    let b = layer::recompress_in_store(store, layer_blob, opts)?;
    cache.put_blob(diff, opts.compression, opts.level, &b);
    Ok(b)
}

/// docker's sizes: 4.261MB.
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}{}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_know_their_keys() {
        assert_eq!(parse_output("type=local,dest=x").unwrap().kind(), "local");
        assert_eq!(
            parse_output("type=image,push=true,name=r/x")
                .unwrap()
                .kind(),
            "registry"
        );
        assert_eq!(
            parse_output("type=oci,dest=a.tar,compression=zstd")
                .unwrap()
                .kind(),
            "oci"
        );
        let err = parse_output("type=local,dest=x,bogus-key=1")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("unknown key \"bogus-key\"") && err.contains("dest"),
            "{err}"
        );
        let err = parse_output("type=local,dest=x,compression=zstd")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("compression"), "{err}");
        assert!(parse_output("type=oci").is_err());
        assert!(parse_output("type=nope").is_err());
        assert!(parse_output("type=oci,dest=x,compression=lz4").is_err());
        assert!(parse_output("type=registry").unwrap().needs_tags());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_234), "4.261MB");
    }
}
