//! `--build-context NAME=VALUE` (buildx's flag): a local directory, `docker-image://REF` or
//! `oci-layout://PATH[:TAG|@DIGEST]` replaces a stage named NAME, `FROM NAME`,
//! `COPY --from=NAME` and `RUN --mount from=NAME`. The plan reads each as an image reference
//! ([`dockerfile::plan::context_name`] matches names); [`WithContexts`] makes the ones that are
//! not in a registry ready in the store, so their content (layers) keys the steps that read them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dockerfile::plan::PlannedSource;
use oci::media_type::{self as mt, Compression};
use oci::{
    ContainerConfig, Descriptor, Digest, Document, ImageConfig, ImageManifest, Manifest, Matcher,
    Platform, Reference,
};
use store::{CopyOptions, Layout, Platforms, Source};

use crate::context::{copy_into, Context};
use crate::pipeline::{ImageSource, SourceImage};

const OCI_LAYOUT: &str = "oci-layout://";
const LOCAL: &str = "local-context://";

/// What a named context holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextSource {
    /// An image in a registry (or the local store), chosen per platform as FROM does.
    Image(Reference),
    /// An image in an OCI layout directory, by tag (default `latest`) or digest.
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
        digest: Option<Digest>,
    },
    /// A directory: a filesystem with no config, as BuildKit gives (its `.dockerignore` applies).
    Local(PathBuf),
}

/// One `--build-context NAME=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildContext {
    /// As [`dockerfile::plan::context_name`] compares names.
    pub name: String,
    pub source: ContextSource,
}

impl BuildContext {
    /// Parses `NAME=VALUE`; relative directories are taken from the current one.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let usage = "use NAME=DIR, NAME=docker-image://REF or NAME=oci-layout://DIR[:TAG|@DIGEST]";
        let (name, value) = spec
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| format!("--build-context {spec:?}: {usage}"))?;
        let fail = |why: String| format!("--build-context {name}: {why}");
        let source = if let Some(r) = value.strip_prefix("docker-image://") {
            ContextSource::Image(Reference::parse(r).map_err(|e| fail(e.to_string()))?)
        } else if let Some(rest) = value.strip_prefix(OCI_LAYOUT) {
            let (path, digest) = match rest.rsplit_once('@') {
                Some((p, d)) => (p, Some(Digest::parse(d).map_err(|e| fail(e.to_string()))?)),
                None => (rest, None),
            };
            // A tag follows the last ':' after the last '/'.
            let slash = path.rfind('/').map_or(0, |i| i + 1);
            let (path, tag) = match (digest.is_none(), path[slash..].rfind(':')) {
                (true, Some(i)) => (&path[..slash + i], Some(path[slash + i + 1..].to_string())),
                _ => (path, None),
            };
            let dir = canonical(path).map_err(&fail)?;
            if !dir.join("oci-layout").is_file() {
                return Err(fail(format!(
                    "{} is not an OCI layout (it has no oci-layout file)",
                    dir.display()
                )));
            }
            ContextSource::OciLayout { dir, tag, digest }
        } else if let Some((scheme, _)) = value.split_once("://") {
            return Err(fail(format!(
                "{scheme}:// contexts are not supported; {usage}"
            )));
        } else {
            let dir = canonical(value).map_err(&fail)?;
            if !dir.is_dir() {
                return Err(fail(format!("{} is not a directory", dir.display())));
            }
            ContextSource::Local(dir)
        };
        Ok(BuildContext {
            name: dockerfile::plan::context_name(name),
            source,
        })
    }

    /// The reference the plan reads in place of the name.
    pub fn reference(&self) -> String {
        match &self.source {
            ContextSource::Image(r) => r.to_string(),
            ContextSource::OciLayout { dir, tag, digest } => {
                let mut s = format!("{OCI_LAYOUT}{}", dir.display());
                match (digest, tag) {
                    (Some(d), _) => s.push_str(&format!("@{d}")),
                    (None, Some(t)) => s.push_str(&format!(":{t}")),
                    (None, None) => {}
                }
                s
            }
            ContextSource::Local(dir) => format!("{LOCAL}{}", dir.display()),
        }
    }
}

fn canonical(p: &str) -> Result<PathBuf, String> {
    Path::new(p).canonicalize().map_err(|e| format!("{p}: {e}"))
}

/// `PlanOptions::contexts` for these contexts.
pub fn plan_contexts(contexts: &[BuildContext]) -> BTreeMap<String, String> {
    contexts
        .iter()
        .map(|c| (c.name.clone(), c.reference()))
        .collect()
}

/// An image source that answers the references of OCI-layout and directory contexts itself and
/// passes every other one on.
pub struct WithContexts<'a> {
    inner: &'a dyn ImageSource,
    store: &'a Layout,
    by_reference: HashMap<String, ContextSource>,
    /// A directory's layer, made once for every platform.
    dir_layers: Mutex<HashMap<PathBuf, (Descriptor, Digest)>>,
}

impl<'a> WithContexts<'a> {
    pub fn new(inner: &'a dyn ImageSource, store: &'a Layout, contexts: &[BuildContext]) -> Self {
        WithContexts {
            inner,
            store,
            by_reference: contexts
                .iter()
                .map(|c| (c.reference(), c.source.clone()))
                .collect(),
            dir_layers: Mutex::new(HashMap::new()),
        }
    }

    fn layout_images(
        &self,
        dir: &Path,
        tag: Option<&str>,
        digest: Option<&Digest>,
        platforms: &[Platform],
    ) -> Result<Vec<SourceImage>, String> {
        let src = Layout::open_existing(dir).map_err(|e| e.to_string())?;
        let root = match digest {
            Some(d) => src
                .resolve(&d.to_string())
                .or_else(|_| descriptor_of_blob(&src, d))
                .map_err(|e| e.to_string())?,
            None => src
                .resolve(tag.unwrap_or("latest"))
                .map_err(|e| e.to_string())?,
        };
        let manifest = src.read_manifest(&root).map_err(|e| e.to_string())?;
        platforms
            .iter()
            .map(|p| {
                let desc = match &manifest {
                    Manifest::Image(_) => root.clone(),
                    Manifest::Index(doc) => {
                        doc.value().select(p).map_err(|e| e.to_string())?.clone()
                    }
                };
                store::copy(
                    &src,
                    self.store,
                    &desc,
                    &CopyOptions {
                        platforms: Platforms::All,
                        jobs: 2,
                        progress: None,
                    },
                )
                .map_err(|e| e.to_string())?;
                let image = match self.store.read_manifest(&desc).map_err(|e| e.to_string())? {
                    Manifest::Image(doc) => doc,
                    Manifest::Index(_) => {
                        return Err(format!("{} is a nested index, not an image", desc.digest))
                    }
                };
                let cfg = self
                    .store
                    .read_blob(&image.value().config.digest)
                    .map_err(|e| e.to_string())?;
                let config = Document::<ImageConfig>::parse(cfg)
                    .map_err(|e| e.to_string())?
                    .value()
                    .clone();
                if !Matcher::new(p).matches(&config.platform()) {
                    return Err(format!("its image is for {}, not {p}", config.platform()));
                }
                Ok(SourceImage {
                    manifest: image.value().clone(),
                    config,
                    digest: image.digest().clone(),
                })
            })
            .collect()
    }

    fn dir_images(&self, dir: &Path, platforms: &[Platform]) -> Result<Vec<SourceImage>, String> {
        let (layer, diff_id) = self.dir_layer(dir).map_err(|e| e.to_string())?;
        platforms
            .iter()
            .map(|p| {
                let config = ImageConfig {
                    architecture: p.architecture.clone(),
                    os: p.os.clone(),
                    variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
                    config: Some(ContainerConfig {
                        env: Some(vec![format!("PATH={}", runtime::sandbox::DEFAULT_PATH)]),
                        ..Default::default()
                    }),
                    rootfs: oci::manifest::RootFs {
                        kind: "layers".into(),
                        diff_ids: vec![diff_id.clone()],
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let cfg = Document::new(config.clone());
                self.store
                    .put_bytes(cfg.bytes())
                    .map_err(|e| e.to_string())?;
                let manifest = ImageManifest {
                    schema_version: 2,
                    media_type: Some(mt::OCI_MANIFEST.into()),
                    artifact_type: None,
                    config: cfg.descriptor(mt::OCI_CONFIG),
                    layers: vec![layer.clone()],
                    subject: None,
                    annotations: Default::default(),
                    extra: Default::default(),
                };
                let doc = Document::new(manifest.clone());
                self.store
                    .put_bytes(doc.bytes())
                    .map_err(|e| e.to_string())?;
                Ok(SourceImage {
                    manifest,
                    config,
                    digest: doc.digest().clone(),
                })
            })
            .collect()
    }

    /// The directory as one uncompressed layer (after its `.dockerignore`), owned by root as
    /// `COPY . /` would write it.
    fn dir_layer(&self, dir: &Path) -> crate::Result<(Descriptor, Digest)> {
        if let Some(l) = self
            .dir_layers
            .lock()
            .ok()
            .and_then(|m| m.get(dir).cloned())
        {
            return Ok(l);
        }
        let ctx = Context::open(dir)?;
        let tmp = tempfile::tempdir()
            .map_err(runtime::io_err("creating a temporary directory for", dir))?;
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(&upper).map_err(runtime::io_err("creating", &upper))?;
        copy_into(
            &ctx,
            &[PlannedSource::Path { path: ".".into() }],
            "/",
            "/",
            &upper,
            None,
            None,
            &[],
        )?;
        let mut opts = runtime::layer::LayerOptions::from_env();
        opts.compression = Compression::None;
        let w = runtime::layer::write_to_store(&upper, self.store, &opts)?;
        let l = (w.descriptor, w.diff_id);
        if let Ok(mut m) = self.dir_layers.lock() {
            m.insert(dir.to_path_buf(), l.clone());
        }
        Ok(l)
    }
}

/// A manifest or index that is in the layout's blobs but not named in its index.json.
fn descriptor_of_blob(src: &Layout, d: &Digest) -> store::Result<Descriptor> {
    let bytes = src.read_blob(d)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| mt::OCI_MANIFEST.to_string());
    Ok(Descriptor::new(&media_type, d.clone(), bytes.len() as u64))
}

impl ImageSource for WithContexts<'_> {
    fn fetch(
        &self,
        reference: &str,
        platforms: &[Platform],
        pull: bool,
    ) -> Result<Vec<SourceImage>, String> {
        match self.by_reference.get(reference) {
            Some(ContextSource::OciLayout { dir, tag, digest }) => {
                self.layout_images(dir, tag.as_deref(), digest.as_ref(), platforms)
            }
            Some(ContextSource::Local(dir)) => self.dir_images(dir, platforms),
            _ => self.inner.fetch(reference, platforms, pull),
        }
    }

    /// Layouts and directories are in the store once fetched; images are the inner source's.
    fn layers(&self, reference: &str, layers: &[Descriptor]) -> Result<(), String> {
        match self.by_reference.get(reference) {
            Some(ContextSource::OciLayout { .. } | ContextSource::Local(_)) => Ok(()),
            _ => self.inner.layers(reference, layers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().canonicalize().unwrap();
        let c = BuildContext::parse("Alpine=docker-image://alpine:3.19").unwrap();
        assert_eq!(c.name, "alpine");
        assert_eq!(c.reference(), "docker.io/library/alpine:3.19");
        let c = BuildContext::parse(&format!("src={}", d.display())).unwrap();
        assert_eq!(c.source, ContextSource::Local(d.clone()));
        std::fs::write(d.join("oci-layout"), "{}").unwrap();
        let c = BuildContext::parse(&format!("b=oci-layout://{}:v1", d.display())).unwrap();
        assert_eq!(
            c.source,
            ContextSource::OciLayout {
                dir: d.clone(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        assert_eq!(c.reference(), format!("oci-layout://{}:v1", d.display()));
        let dg = format!("sha256:{}", "a".repeat(64));
        let c = BuildContext::parse(&format!("b=oci-layout://{}@{dg}", d.display())).unwrap();
        assert!(matches!(
            c.source,
            ContextSource::OciLayout {
                digest: Some(_),
                tag: None,
                ..
            }
        ));
        for bad in [
            "noequals",
            "=x",
            "a=",
            "a=git://example.com/r.git",
            "a=/definitely/not/here",
        ] {
            assert!(BuildContext::parse(bad).is_err(), "{bad}");
        }
        let err = BuildContext::parse(&format!("a=oci-layout://{}", t.path().join("x").display()))
            .unwrap_err();
        assert!(err.contains("--build-context a"), "{err}");
    }
}
