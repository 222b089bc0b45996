//! The build as one pipeline: a parsed Dockerfile is planned, the plan lists its inputs
//! ([`dockerfile::BuildPlan::inputs`]), the images among them are resolved through an
//! [`ImageSource`] the caller supplies (the CLI: the store, then registries), the plan is made
//! again knowing the base images' configs, the engine solves it, and [`crate::export`] sends the
//! result to each output.

use std::collections::{BTreeMap, HashMap};

use dockerfile::{ast, BuildPlan, PlanOptions};
use oci::{Descriptor, Digest, ImageConfig, ImageManifest, Platform, Reference};
use store::Layout;

use crate::engine::{self, BaseResolver, BuildOptions, Built, Event};

/// One platform's image, ready in the store.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub manifest: ImageManifest,
    pub config: ImageConfig,
    /// The digest of the manifest.
    pub digest: Digest,
}

/// Where the images a plan reads come from.
pub trait ImageSource: Sync {
    /// Resolves `reference` for each of `platforms` (from what the store has, or again with
    /// `pull`); returns each platform's image, in order. Manifest and config are enough: a
    /// source may leave layers out of the store until [`ImageSource::layers`] asks for them.
    fn fetch(
        &self,
        reference: &str,
        platforms: &[Platform],
        pull: bool,
    ) -> Result<Vec<SourceImage>, String>;

    /// Puts the blobs of `layers` (layers of `reference` as `fetch` returned it) in the store:
    /// called when a step needs their files, so a fully cached build downloads no base layer.
    fn layers(&self, reference: &str, layers: &[Descriptor]) -> Result<(), String> {
        let _ = (reference, layers);
        Ok(())
    }
}

/// Why a build could not be prepared.
#[derive(Debug)]
pub enum PrepareError {
    /// The Dockerfile cannot be planned (its errors carry file, line and column).
    Plan(dockerfile::Error),
    /// An image the plan reads could not be made ready.
    Image { reference: String, reason: String },
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Plan(e) => write!(f, "{e}"),
            PrepareError::Image { reference, reason } => write!(f, "image {reference}: {reason}"),
        }
    }
}

impl std::error::Error for PrepareError {}

/// A plan whose every image input is resolved (layers may still be where `source` found them).
pub struct Prepared<'s> {
    pub plan: BuildPlan,
    /// (reference, platform) → the image.
    pub images: BTreeMap<(String, String), SourceImage>,
    source: &'s dyn ImageSource,
}

/// Plans `df`, makes every image the plan reads ready through `source`, and plans again with
/// their configs (ENV expands against the base image; ONBUILD triggers run), until the images
/// the plan names are all known.
pub fn prepare<'s>(
    df: &ast::Dockerfile,
    opts: &PlanOptions,
    source: &'s dyn ImageSource,
    pull: bool,
) -> Result<Prepared<'s>, PrepareError> {
    let mut opts = opts.clone();
    let mut images: BTreeMap<(String, String), SourceImage> = BTreeMap::new();
    // ONBUILD triggers of a base can name more images: a few rounds at most.
    for _ in 0..4 {
        let plan = dockerfile::plan(df, &opts).map_err(PrepareError::Plan)?;
        let mut fetched_any = false;
        for (reference, platforms) in plan.images() {
            let missing: Vec<Platform> = platforms
                .into_iter()
                .filter(|p| !images.contains_key(&(reference.clone(), p.to_string())))
                .collect();
            if missing.is_empty() {
                continue;
            }
            fetched_any = true;
            let got =
                source
                    .fetch(&reference, &missing, pull)
                    .map_err(|reason| PrepareError::Image {
                        reference: reference.clone(),
                        reason,
                    })?;
            for (p, found) in missing.iter().zip(got) {
                let cc = found.config.config.clone().unwrap_or_default();
                opts.base_configs.insert(
                    (reference.clone(), p.short()),
                    dockerfile::BaseConfig {
                        env: cc
                            .env
                            .iter()
                            .flatten()
                            .filter_map(|e| {
                                e.split_once('=')
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                            })
                            .collect(),
                        working_dir: cc.working_dir.clone().filter(|w| !w.is_empty()),
                        user: cc.user.clone().filter(|u| !u.is_empty()),
                        shell: cc.shell.clone().unwrap_or_default(),
                        on_build: cc.on_build.clone().unwrap_or_default(),
                    },
                );
                images.insert((reference.clone(), p.to_string()), found);
            }
        }
        if !fetched_any {
            return Ok(Prepared {
                plan,
                images,
                source,
            });
        }
    }
    let plan = dockerfile::plan(df, &opts).map_err(PrepareError::Plan)?;
    Ok(Prepared {
        plan,
        images,
        source,
    })
}

impl Prepared<'_> {
    /// Solves the plan: runs every step (or takes it from the cache) and writes one image per
    /// platform and an index over them into the store.
    pub fn solve(
        &self,
        store: &Layout,
        opts: &BuildOptions,
        progress: &(dyn Fn(Event) + Sync),
    ) -> crate::Result<Built> {
        engine::build(store, &self.plan, self, opts, progress)
    }

    /// Blob → the repositories (`host/repo`) of the images that hold it: a registry output
    /// mounts those blobs instead of uploading them.
    pub fn origins(&self) -> HashMap<Digest, Vec<String>> {
        let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
        for ((r, _), img) in &self.images {
            let Ok(r) = Reference::parse(r) else { continue };
            let repo = r.repo_only().to_string();
            for l in &img.manifest.layers {
                let v = out.entry(l.digest.clone()).or_default();
                if !v.contains(&repo) {
                    v.push(repo.clone());
                }
            }
        }
        out
    }
}

impl BaseResolver for Prepared<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(ImageManifest, ImageConfig), String> {
        self.images
            .get(&(reference.to_string(), platform.to_string()))
            .map(|i| (i.manifest.clone(), i.config.clone()))
            .ok_or_else(|| {
                format!("{reference} for {platform} was not made ready before the build")
            })
    }

    fn digest(&self, reference: &str, platform: &Platform) -> Option<Digest> {
        self.images
            .get(&(reference.to_string(), platform.to_string()))
            .map(|i| i.digest.clone())
    }

    fn layers(&self, layers: &[Descriptor]) -> Result<(), String> {
        // Grouped by the image that holds them, so a source fetches each image's in one go.
        let mut by_ref: BTreeMap<&str, Vec<Descriptor>> = BTreeMap::new();
        for l in layers {
            let holder = self
                .images
                .iter()
                .find(|(_, img)| img.manifest.layers.iter().any(|m| m.digest == l.digest));
            let Some(((reference, _), _)) = holder else {
                return Err(format!(
                    "layer {} belongs to no image the build resolved",
                    l.digest
                ));
            };
            let v = by_ref.entry(reference).or_default();
            if !v.iter().any(|d| d.digest == l.digest) {
                v.push(l.clone());
            }
        }
        for (reference, ls) in by_ref {
            self.source
                .layers(reference, &ls)
                .map_err(|e| format!("{reference}: {e}"))?;
        }
        Ok(())
    }
}
