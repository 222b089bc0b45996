//! `manifold build`: plan the Dockerfile for every platform, make sure base images are in the
//! store, run the plan with the build engine, then send the result where `--output` says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ::engine::cache_remote::Imported;
use ::engine::engine::{BuildOptions, Event};
use ::engine::export::{self, Exporter};
use ::engine::pipeline::{self, ImageSource, SourceImage};
use anyhow::{bail, Context, Result};
use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, ImageConfig, Manifest, Matcher, Platform, Reference};
use store::layout::REF_NAME;
use store::{CopyOptions, Layout, Platforms, Source, Target};
use transport::{Env, RegistryRepo};

use crate::global::{Cli, OutputFormat};
use crate::output::{human_size, say};
use crate::transfer::Origins;

/// What `manifold build` was asked, flags as buildx spells them: the one definition clap
/// parses and the handler reads.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Set by a builder node while the context is still arriving (never a flag).
    #[arg(skip)]
    pub context_gate: Option<::engine::context::ContextGate>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Target platforms, comma-separated (default: this machine's), e.g.
    /// linux/amd64,linux/arm64,linux/arm/v7.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Name and optionally tag the result (repeatable).
    #[arg(short, long = "tag")]
    pub tag: Vec<String>,
    /// KEY=VALUE build-time variables (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Parse, plan and lint the Dockerfile without building; exit 1 on findings.
    #[arg(long)]
    pub check: bool,
    /// Format of --check findings.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Push the result to the registry in each -t name (one index over per-platform images).
    #[arg(long)]
    pub push: bool,
    /// Put the result in the local store (the default when no other output is given).
    #[arg(long)]
    pub load: bool,
    /// type=registry[,push-by-digest=true,name=REPO] | type=oci,dest=FILE |
    /// type=docker,dest=FILE | type=local,dest=DIR | type=tar,dest=FILE (repeatable).
    #[arg(short, long = "output", value_name = "SPEC")]
    pub output: Vec<String>,
    /// Write the digests and descriptor of the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Run every step, ignoring the step cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Check the registry for newer base images even when the store has them; with --check,
    /// look bases up in their registries (manifests and configs only) for InvalidBaseImagePlatform.
    #[arg(long)]
    pub pull: bool,
    /// auto, tty, plain, rawjson (JSON lines for tools) or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tty", "plain", "rawjson", "quiet"])]
    pub progress: String,
    /// Stage instances run at once (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// id=ID,src=FILE (or env=VAR): a secret for RUN --mount=type=secret; never stored.
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,
    /// Write the digest of the result (the index, or the image) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// KEY=VALUE: a label on every image (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// [index:|manifest:|manifest-descriptor:]KEY=VALUE: an annotation on the index, on each
    /// platform's manifest (the default), or on each manifest's entry in the index (repeatable).
    #[arg(long, value_name = "[SCOPE:]KEY=VALUE")]
    pub annotation: Vec<String>,
    /// NAME:IP (or NAME=IP): an /etc/hosts entry for RUN steps (repeatable).
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Run this stage's steps even when cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// default|ID[=SOCKET|KEY[,KEY...]]: an SSH agent for RUN --mount=type=ssh (default:
    /// your SSH_AUTH_SOCK; key files are loaded into a private agent for the build).
    #[arg(long, value_name = "SPEC")]
    pub ssh: Vec<String>,
    /// The builder whose nodes build (default: MANIFOLD_BUILDER, else `builder use`'s).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Export the build cache: type=registry,ref=REG/REPO:TAG[,mode=min|max][,compression=…]
    /// | type=local,dest=DIR[,mode=…] | type=inline (repeatable).
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Import a build cache: type=registry,ref=REG/REPO:TAG | type=local,src=DIR (repeatable,
    /// tried in order; a missing cache is a warning).
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// RUN steps' network: default (private, outbound only), none, or host.
    #[arg(long, default_value = "default", value_parser = ["default", "none", "host"])]
    pub network: String,
    /// Grant an entitlement: network.host (needed for --network host and RUN --network=host).
    #[arg(long, value_name = "ENTITLEMENT", value_parser = ["network.host"])]
    pub allow: Vec<String>,
    /// A builder node writes the steps its build used here (JSON): the machine that asked
    /// exports them with its own in one `--cache-to`.
    #[arg(skip)]
    pub steps_file: Option<PathBuf>,
    /// NAME=DIR|docker-image://REF|oci-layout://DIR[:TAG|@DIGEST]: replaces a stage named
    /// NAME, FROM NAME, COPY --from=NAME and RUN --mount from=NAME (repeatable).
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_context: Vec<String>,
}

fn parse_build_contexts(a: &BuildArgs) -> Result<Vec<::engine::contexts::BuildContext>> {
    a.build_context
        .iter()
        .map(|s| ::engine::contexts::BuildContext::parse(s).map_err(anyhow::Error::msg))
        .collect()
}

/// `--secret id=ID,src=FILE` or `id=ID,env=VAR`, read into memory: the sandbox puts it on a
/// tmpfs private to the step, so it is never written to a disk.
fn parse_secrets(specs: &[String]) -> Result<BTreeMap<String, runtime::sandbox::SecretBytes>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let mut kv = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or(("id", part));
            kv.insert(k.trim(), v.trim().to_string());
        }
        let id = kv
            .get("id")
            .cloned()
            .with_context(|| format!("--secret {spec:?} needs id=ID"))?;
        let value = if let Some(src) = kv.get("src").or_else(|| kv.get("source")) {
            let p = PathBuf::from(src);
            if !p.is_file() {
                bail!("--secret {id}: {src} is not a file");
            }
            std::fs::read(&p).with_context(|| format!("--secret {id}: reading {src}"))?
        } else if let Some(var) = kv.get("env") {
            std::env::var_os(var)
                .with_context(|| format!("--secret {id}: ${var} is not set"))?
                .into_encoded_bytes()
        } else {
            bail!("--secret {spec:?} needs src=FILE or env=VAR");
        };
        out.insert(id, runtime::sandbox::SecretBytes(value));
    }
    Ok(out)
}

const PROXY_ARGS: [&str; 5] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// BuildKit's predefined proxy args, in either spelling docker accepts.
fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS
        .iter()
        .any(|p| name == *p || name == p.to_ascii_lowercase())
}

/// The `proxies.default` section of docker's config.json, as the docker CLI reads it: each
/// proxy set there becomes both spellings of its build arg, unless `--build-arg` set that one.
fn add_config_proxies(build_args: &mut BTreeMap<String, String>, env: &Env) {
    let Some(dir) = env
        .client_options
        .docker_config_dir
        .clone()
        .or_else(registry::auth::default_config_dir)
    else {
        return;
    };
    let Ok(text) = std::fs::read(dir.join("config.json")) else {
        return;
    };
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return;
    };
    let section = &cfg["proxies"]["default"];
    for (field, arg) in [
        ("httpProxy", "HTTP_PROXY"),
        ("httpsProxy", "HTTPS_PROXY"),
        ("ftpProxy", "FTP_PROXY"),
        ("noProxy", "NO_PROXY"),
        ("allProxy", "ALL_PROXY"),
    ] {
        let Some(v) = section[field].as_str().filter(|v| !v.is_empty()) else {
            continue;
        };
        for k in [arg.to_string(), arg.to_ascii_lowercase()] {
            build_args.entry(k).or_insert_with(|| v.to_string());
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, as BuildKit's progress timestamps.
fn timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = ::engine::engine::rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// InvalidBaseImagePlatform's lookup: the platform of the image a base resolves to in the local
/// store (a single-platform image, or an index without the wanted platform).
struct StorePlatforms<'a>(&'a Layout);

impl dockerfile::lint::BasePlatforms for StorePlatforms<'_> {
    fn platform_of(&self, reference: &str, wanted: &Platform) -> Option<Platform> {
        let root = self.0.lookup(reference).ok().flatten()?;
        let image = match self.0.read_manifest(&root).ok()? {
            Manifest::Image(doc) => doc.value().clone(),
            Manifest::Index(doc) => {
                let cands: Vec<Platform> = doc
                    .value()
                    .manifests
                    .iter()
                    .filter(|d| !d.is_attestation())
                    .filter_map(|d| d.platform.clone())
                    .collect();
                return match Matcher::new(wanted).best(&cands) {
                    Some(i) => cands.get(i).cloned(),
                    None => cands.into_iter().next(),
                };
            }
        };
        let bytes = self.0.read_blob(&image.config.digest).ok()?;
        let config = Document::<ImageConfig>::parse(bytes).ok()?;
        Some(config.value().platform())
    }
}

/// The CLI's image source: images from the store, else resolved in their registry by manifest
/// and config only (the platforms the build needs); their layers are pulled when a step needs
/// their files or an output their bytes, so a fully cached build downloads none.
pub(crate) struct Bases<'a> {
    cli: &'a Cli,
    env: &'a Env,
    store: &'a Layout,
    /// Images resolved in registries this build, by name.
    remote: Mutex<BTreeMap<String, Remote>>,
    /// Layer digest → a lock held while it downloads, so parallel steps fetch it once.
    inflight: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    pulled: AtomicUsize,
    pulled_bytes: AtomicU64,
    /// Where lines go while a live view owns the terminal.
    printer: Mutex<Option<Printer>>,
}

type Printer = Arc<dyn Fn(&str) + Send + Sync>;

/// A base resolved in its registry: the platforms asked for and their layers.
struct Remote {
    reference: Reference,
    platforms: Vec<Platform>,
    layers: Vec<Descriptor>,
}

impl<'a> Bases<'a> {
    pub(crate) fn new(cli: &'a Cli, env: &'a Env, store: &'a Layout) -> Self {
        Bases {
            cli,
            env,
            store,
            remote: Default::default(),
            inflight: Default::default(),
            pulled: AtomicUsize::new(0),
            pulled_bytes: AtomicU64::new(0),
            printer: Mutex::new(None),
        }
    }

    fn set_printer(&self, p: Option<Printer>) {
        if let Ok(mut g) = self.printer.lock() {
            *g = p;
        }
    }

    fn tell(&self, line: String) {
        let p = self.printer.lock().ok().and_then(|g| g.clone());
        match p {
            Some(p) if !self.cli.quiet => p(&line),
            _ => say(self.cli, line),
        }
    }

    /// `r`'s repository and what its reference resolves to there.
    fn open_remote(&self, r: &Reference) -> Result<(RegistryRepo, Descriptor)> {
        let src = RegistryRepo::new(self.env.client()?, r, self.env.runtime());
        let root = src.resolve(&r.to_string()).with_context(|| {
            format!(
                "base image {} is not in the local store and could not be pulled",
                r.familiar()
            )
        })?;
        Ok((src, root))
    }

    /// Resolves `r` for each of `platforms` in its registry: index, manifest and config, no layer.
    fn resolve_remote(&self, r: &Reference, platforms: &[Platform]) -> Result<Vec<SourceImage>> {
        let name = r.to_string();
        let (src, root) = self.open_remote(r)?;
        let top = src.read_manifest(&root)?;
        let mut out = Vec::new();
        for p in platforms {
            let (desc, manifest) = match &top {
                Manifest::Image(_) => (root.clone(), top.clone()),
                Manifest::Index(doc) => {
                    let entry =
                        doc.value()
                            .select(p)
                            .map_err(|e| store::Error::NoMatchingPlatform {
                                source_name: Source::describe(&src),
                                wanted: e.wanted.to_string(),
                                available: e.available.iter().map(|p| p.to_string()).collect(),
                            })?;
                    (entry.clone(), src.read_manifest(entry)?)
                }
            };
            let Manifest::Image(doc) = manifest else {
                bail!(
                    "{}: the entry for {p} is an index, not an image",
                    r.familiar()
                );
            };
            let image = doc.value().clone();
            let config = Document::<ImageConfig>::parse(src.read_verified(&image.config)?)?
                .value()
                .clone();
            if !Matcher::new(p).matches(&config.platform()) {
                bail!("it has no image for {p}");
            }
            out.push(SourceImage {
                manifest: image,
                config,
                digest: desc.digest.clone(),
            });
        }
        say(
            self.cli,
            format!(
                "resolved {} for {}: {} (layers are pulled when a step or an output needs them)",
                r.familiar(),
                platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                root.digest
            ),
        );
        let mut remote = self
            .remote
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let entry = remote.entry(name).or_insert_with(|| Remote {
            reference: r.clone(),
            platforms: Vec::new(),
            layers: Vec::new(),
        });
        for (p, img) in platforms.iter().zip(&out) {
            entry.platforms.push(p.clone());
            entry.layers.extend(img.manifest.layers.iter().cloned());
        }
        Ok(out)
    }

    /// Pulls the blobs of `layers` of the resolved image `reference` into the store, up to four
    /// at a time; each is fetched once however many steps ask.
    fn pull_layers(&self, reference: &str, layers: &[Descriptor]) -> Result<()> {
        let r = Reference::parse(reference)?;
        let missing: Vec<&Descriptor> = layers
            .iter()
            .filter(|l| !self.store.has_blob(&l.digest))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let src = RegistryRepo::new(self.env.client()?, &r, self.env.runtime());
        let next = AtomicUsize::new(0);
        let got = AtomicU64::new(0);
        let n = AtomicUsize::new(0);
        let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..missing.len().min(4) {
                s.spawn(|| loop {
                    let Some(l) = missing.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        return;
                    };
                    let lock = self
                        .inflight
                        .lock()
                        .map(|mut m| m.entry(l.digest.clone()).or_default().clone());
                    let Ok(lock) = lock else { return };
                    let _held = lock.lock();
                    if self.store.has_blob(&l.digest) {
                        continue;
                    }
                    match Target::put(self.store, l, &src) {
                        Ok(_) => {
                            got.fetch_add(l.size, Ordering::SeqCst);
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            if let Ok(mut v) = errors.lock() {
                                v.push(anyhow::Error::new(e).context(format!(
                                    "pulling layer {} of {}",
                                    l.digest,
                                    r.familiar()
                                )));
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = errors.into_inner().ok().and_then(|mut v| v.pop()) {
            return Err(e);
        }
        let (n, got) = (n.into_inner(), got.into_inner());
        self.pulled.fetch_add(n, Ordering::SeqCst);
        self.pulled_bytes.fetch_add(got, Ordering::SeqCst);
        if n > 0 {
            self.tell(format!(
                "pulled {} ({n} {}, {})",
                r.familiar(),
                if n == 1 { "layer" } else { "layers" },
                human_size(got)
            ));
        }
        Ok(())
    }

    /// Pulls `layer` into the store if it is a layer of a resolved base; false when it is not.
    pub(crate) fn pull_blob(&self, layer: &Descriptor) -> Result<bool> {
        let holder = self.remote.lock().ok().and_then(|remote| {
            remote
                .iter()
                .find(|(_, rb)| rb.layers.iter().any(|l| l.digest == layer.digest))
                .map(|(name, _)| name.clone())
        });
        match holder {
            Some(name) => self
                .pull_layers(&name, std::slice::from_ref(layer))
                .map(|_| true),
            None => Ok(false),
        }
    }

    /// Names each resolved base in the store whose layers all came (steps or outputs needed
    /// them), so later builds and `manifold run` find it there; the others stay unnamed.
    pub(crate) fn finish(&self) {
        let Ok(remote) = self.remote.lock() else {
            return;
        };
        for rb in remote.values() {
            if rb.layers.iter().all(|l| self.store.has_blob(&l.digest)) {
                // Every blob is here: this copies manifests and configs only.
                if let Err(e) = self.pull(&rb.reference, &rb.platforms, false) {
                    say(
                        self.cli,
                        format!(
                            "warning: base image {} was not named in the store: {e:#}",
                            rb.reference.familiar()
                        ),
                    );
                }
            }
        }
    }

    /// The line users and tests read, when a base was resolved in a registry.
    pub(crate) fn report(&self) {
        if self.remote.lock().is_ok_and(|r| r.is_empty()) {
            return;
        }
        say(
            self.cli,
            format!(
                "base images: downloaded {} layers, {} bytes",
                self.pulled.load(Ordering::SeqCst),
                self.pulled_bytes.load(Ordering::SeqCst)
            ),
        );
    }

    /// The image for `platform` under `name` in the store, if every part of it is there.
    fn lookup(&self, name: &str, platform: &Platform) -> Result<Option<SourceImage>> {
        let Some(root) = self.store.lookup(name)? else {
            return Ok(None);
        };
        let m = match self.store.read_manifest(&root) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        let (image, digest) = match m {
            Manifest::Image(doc) => (doc.value().clone(), doc.digest().clone()),
            Manifest::Index(doc) => {
                let Ok(entry) = doc.value().select(platform) else {
                    return Ok(None);
                };
                match self.store.read_manifest(entry) {
                    Ok(Manifest::Image(doc)) => (doc.value().clone(), doc.digest().clone()),
                    _ => return Ok(None),
                }
            }
        };
        let Ok(cfg_bytes) = self.store.read_blob(&image.config.digest) else {
            return Ok(None);
        };
        let config = Document::<ImageConfig>::parse(cfg_bytes)?.value().clone();
        if !Matcher::new(platform).matches(&config.platform()) {
            return Ok(None);
        }
        if image.layers.iter().any(|l| !self.store.has_blob(&l.digest)) {
            return Ok(None);
        }
        Ok(Some(SourceImage {
            manifest: image,
            config,
            digest,
        }))
    }

    /// Makes `reference` ready for every platform in `platforms`: from the store, else pulled.
    pub(crate) fn ensure(
        &self,
        reference: &str,
        platforms: &[Platform],
        force_pull: bool,
    ) -> Result<()> {
        let cli = self.cli;
        let r = Reference::parse(reference).with_context(|| format!("base image {reference:?}"))?;
        let name = r.to_string();
        let mut missing = Vec::new();
        for p in platforms {
            match (force_pull, self.lookup(&name, p)?) {
                (false, Some(_)) => {}
                _ => missing.push(p.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        say(
            cli,
            format!(
                "pulling {} for {}",
                r.familiar(),
                missing
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        self.pull(&r, &missing, true)
    }

    /// Copies `r` for `missing` platforms into the store (keeping the platforms its name has
    /// there already) and names it; blobs the store has are not downloaded again.
    fn pull(&self, r: &Reference, missing: &[Platform], tell: bool) -> Result<()> {
        let cli = self.cli;
        let name = r.to_string();
        let (src, root) = self.open_remote(r)?;
        // Keep the platforms already here, so one name serves every build.
        let mut want: Vec<Platform> = missing.to_vec();
        if let Some(existing) = self.store.lookup(&name)? {
            if let Ok(Manifest::Index(doc)) = self.store.read_manifest(&existing) {
                want.extend(
                    doc.value()
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.clone())
                        .filter(|p| !p.is_unknown()),
                );
            }
        }
        let platforms = if mt::is_index(&root.media_type) {
            Platforms::Best(want.iter().map(Matcher::new).collect())
        } else {
            Platforms::All
        };
        let report = store::copy(
            &src,
            self.store,
            &root,
            &CopyOptions {
                platforms,
                jobs: 4,
                progress: None,
            },
        )?;
        let mut d = report.root.clone();
        d.annotations.remove(REF_NAME);
        self.store.set_name(&name, &d)?;
        if !tell {
            return Ok(());
        }
        say(
            cli,
            format!(
                "pulled {} for {} ({} blobs, {})",
                r.familiar(),
                missing
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                report.blobs_copied,
                human_size(report.bytes_copied)
            ),
        );
        Ok(())
    }
}

impl crate::cache::BaseLayers for Bases<'_> {
    fn pull_blob(&self, layer: &Descriptor) -> Result<bool> {
        Bases::pull_blob(self, layer)
    }
}

impl ImageSource for Bases<'_> {
    fn fetch(
        &self,
        reference: &str,
        platforms: &[Platform],
        pull: bool,
    ) -> std::result::Result<Vec<SourceImage>, String> {
        let r = Reference::parse(reference)
            .with_context(|| format!("base image {reference:?}"))
            .map_err(|e| format!("{e:#}"))?;
        let name = r.to_string();
        let mut found: Vec<Option<SourceImage>> = Vec::new();
        let mut missing = Vec::new();
        for p in platforms {
            let here = match pull {
                true => None,
                false => self.lookup(&name, p).map_err(|e| format!("{e:#}"))?,
            };
            if here.is_none() {
                missing.push(p.clone());
            }
            found.push(here);
        }
        let mut resolved = match missing.is_empty() {
            true => Vec::new(),
            false => self
                .resolve_remote(&r, &missing)
                .map_err(|e| format!("{e:#}"))?,
        }
        .into_iter();
        found
            .into_iter()
            .map(|f| {
                f.or_else(|| resolved.next())
                    .ok_or_else(|| "it resolved to fewer images than platforms asked".to_string())
            })
            .collect()
    }

    fn layers(&self, reference: &str, layers: &[Descriptor]) -> std::result::Result<(), String> {
        let name = Reference::parse(reference)
            .map_err(|e| e.to_string())?
            .to_string();
        self.pull_layers(&name, layers)
            .map_err(|e| format!("{e:#}"))
    }
}

/// Registry repositories for the registry exporter, with this command's credentials and TLS.
struct Registries<'a>(&'a Env);

impl export::Registries for Registries<'_> {
    fn target(&self, r: &Reference) -> std::result::Result<Box<dyn store::Target>, String> {
        let client = self.0.client().map_err(|e| e.to_string())?;
        Ok(Box::new(RegistryRepo::new(client, r, self.0.runtime())))
    }
}

pub fn run(cli: &Cli, env: &Env, a: &BuildArgs) -> Result<ExitCode> {
    let path: PathBuf = a
        .file
        .as_deref()
        .map_or_else(|| a.context.join("Dockerfile"), Path::to_path_buf);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the Dockerfile {}", path.display()))?;
    let shown = path.display().to_string();
    // Bytes, not text: BuildKit accepts files that are not valid UTF-8.
    let df = match dockerfile::parse_bytes(bytes, &shown) {
        Ok(df) => df,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut platforms = crate::platforms::dedup_platform_args(&a.platform)?
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    let mut build_args = BTreeMap::new();
    for arg in &a.build_arg {
        match arg.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // docker takes the value from the environment for a bare KEY.
            None => build_args.insert(arg.clone(), std::env::var(arg).unwrap_or_default()),
        };
    }
    add_config_proxies(&mut build_args, env);
    let proxies: BTreeMap<String, String> = build_args
        .iter()
        .filter(|(k, _)| is_proxy_arg(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let contexts = parse_build_contexts(a)?;
    let mut opts = dockerfile::PlanOptions {
        target: a.target.clone(),
        platforms: platforms.clone(),
        build_platform: Platform::host(),
        build_args,
        contexts: ::engine::contexts::plan_contexts(&contexts),
        ..Default::default()
    };
    // The checks come first: BuildKit reports the warnings found before an error too.
    let dockerignore = std::fs::read_to_string(a.context.join(".dockerignore")).ok();
    // Bases already in the local store tell InvalidBaseImagePlatform their platform.
    let local = match env.store_root.exists() {
        true => transport::open_store(&env.store_root).ok(),
        false => None,
    };
    let lookup = local.as_ref().map(StorePlatforms);
    // With --pull, `--check` asks the registries (manifests and configs, no layers).
    let remote = crate::remote::RegistryPlatforms { env };
    let base_platforms: Option<&dyn dockerfile::lint::BasePlatforms> = if a.check && a.pull {
        Some(&remote)
    } else {
        lookup
            .as_ref()
            .map(|l| l as &dyn dockerfile::lint::BasePlatforms)
    };
    let report = dockerfile::lint::check(
        &df,
        &dockerfile::lint::CheckOptions {
            plan: opts.clone(),
            dockerignore,
            base_platforms,
        },
    );
    if let Some(e) = &report.config_error {
        eprintln!("{shown}: {e}");
        return Ok(ExitCode::from(1));
    }
    if a.check {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        let findings = &report.findings;
        if a.format == OutputFormat::Json {
            println!("{}", dockerfile::render_json(findings));
        } else if findings.is_empty() {
            println!("Check complete, no warnings found.");
        } else {
            print!("{}", dockerfile::render_text(findings));
            println!("Check complete, {} warnings found.", findings.len());
        }
        if let Some(e) = &report.error {
            eprintln!("{e}");
        }
        return Ok(if findings.is_empty() && report.error.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    // `# check=error=true`: findings fail the build, as in BuildKit.
    if let Some(msg) = report.lint_error() {
        eprint!("{}", dockerfile::render_text(&report.findings));
        eprintln!("{msg}");
        return Ok(ExitCode::from(1));
    }
    let mut plan = match dockerfile::plan(&df, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    // No --platform, and the target's base is one image for another platform: build for that.
    if a.platform.is_empty() {
        if let Some(p) = crate::remote::implicit_platform(cli, env, &plan) {
            opts.platforms = vec![p.clone()];
            platforms = vec![p];
            plan = dockerfile::plan(&df, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    for w in &plan.warnings {
        say(cli, format!("warning: {w}"));
    }

    let mut exporters: Vec<Box<dyn Exporter>> = a
        .output
        .iter()
        .map(|o| export::parse_output(o))
        .collect::<Result<_, _>>()?;
    if a.push {
        exporters.push(Box::new(export::RegistryExporter::new()));
    }
    if a.load || exporters.is_empty() {
        exporters.push(Box::new(export::StoreExporter::new()));
    }
    let tags: Vec<Reference> = a
        .tag
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<_, _>>()?;
    if exporters.iter().any(|e| e.needs_tags()) && tags.is_empty() {
        bail!("--push needs a name: add -t REGISTRY/REPO:TAG");
    }

    // --cache-to / --cache-from: specs checked before any work.
    let cache_to: Vec<crate::cache::CacheTo> = a
        .cache_to
        .iter()
        .map(|s| crate::cache::parse_to(s))
        .collect::<Result<_>>()?;
    let cache_from: Vec<crate::cache::CacheFromSpec> = a
        .cache_from
        .iter()
        .map(|s| crate::cache::parse_from(s))
        .collect::<Result<_>>()?;

    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let builders = crate::builder::Config::load()?;
    let builder = builders.find(&a.builder.clone().unwrap_or_else(|| builders.current_name()))?;
    let nodes = crate::nodes::uses_nodes(&builder);
    // SSH nodes import registry caches themselves (local directories stay here).
    let remote = nodes && crate::nodes::has_remote(&builder);
    let node_cache_from: Vec<String> = a
        .cache_from
        .iter()
        .zip(&cache_from)
        .filter(|(_, c)| matches!(c, crate::cache::CacheFromSpec::Registry(_)))
        .map(|(s, _)| s.clone())
        .collect();
    if remote && node_cache_from.len() < cache_from.len() {
        say(
            cli,
            format!(
                "warning: --cache-from type=local applies to the platforms built on this machine; builder {}'s SSH nodes import only registry caches",
                builder.name
            ),
        );
    }
    let imported = crate::cache::import(cli, env, &cache_from)?;
    let bases = Bases::new(cli, env, &store);
    let (built, origins) = if nodes {
        let started = std::time::Instant::now();
        let agents = crate::ssh::Agents::from_specs(&a.ssh)?;
        // The builder's local nodes build here, in this process, as a plain build does.
        let local = |ps: &[Platform], name: &str, cancel: runtime::sandbox::Cancel| {
            let mut o = opts.clone();
            o.platforms = ps.to_vec();
            let node = Some((name, cancel));
            match build_here(
                cli,
                env,
                a,
                &store,
                &bases,
                &df,
                &o,
                &shown,
                proxies.clone(),
                imported.clone(),
                node,
            )? {
                Ok(b) => Ok(b),
                Err(_) => bail!("the build could not be planned for node {name} (see above)"),
            }
        };
        let built = crate::nodes::build(
            &store,
            &builder,
            &platforms,
            &crate::nodes::Request {
                context: &a.context,
                dockerfile: &path,
                build_arg: &a.build_arg,
                target: a.target.as_deref(),
                no_cache: a.no_cache,
                pull: a.pull,
                secrets: crate::nodes::read_secrets(&a.secret)?,
                ssh: &agents.sockets,
                network: &a.network,
                allow: &a.allow,
                quiet: cli.quiet || a.progress == "quiet",
                labels: &a.label,
                annotations: &a.annotation,
                add_hosts: &a.add_host,
                no_cache_filter: &a.no_cache_filter,
                cache_from: &node_cache_from,
                build_contexts: &a.build_context,
                // With --cache-to, the nodes' steps and their layers come back too.
                steps: !cache_to.is_empty(),
            },
            &local,
        )?;
        say(
            cli,
            format!(
                "built on builder {} in {:.1}s",
                builder.name,
                started.elapsed().as_secs_f64()
            ),
        );
        built
    } else {
        match build_here(
            cli,
            env,
            a,
            &store,
            &bases,
            &df,
            &opts,
            &shown,
            proxies,
            imported.clone(),
            None,
        )? {
            Ok(b) => b,
            Err(code) => return Ok(code),
        }
    };
    export(
        cli,
        env,
        a,
        &store,
        &built,
        origins,
        imported.as_deref(),
        &bases,
        &exporters,
        &cache_to,
        &tags,
    )
}

/// Runs the plan on this machine through the engine's pipeline: every image the plan reads
/// (FROM, COPY --from, RUN --mount from=) made ready through the store and registries, then
/// planned again with their configs and solved.
#[allow(clippy::too_many_arguments)]
fn build_here(
    cli: &Cli,
    env: &Env,
    a: &BuildArgs,
    store: &Layout,
    bases: &Bases<'_>,
    df: &dockerfile::ast::Dockerfile,
    opts: &dockerfile::PlanOptions,
    shown: &str,
    proxies: BTreeMap<String, String>,
    imported: Option<Arc<Imported>>,
    node: Option<(&str, runtime::sandbox::Cancel)>,
) -> Result<std::result::Result<(::engine::engine::Built, Origins), ExitCode>> {
    let contexts = parse_build_contexts(a)?;
    let sources = ::engine::contexts::WithContexts::new(bases, store, &contexts);
    let prepared = match pipeline::prepare(df, opts, &sources, a.pull) {
        Ok(p) => p,
        Err(pipeline::PrepareError::Plan(e)) => {
            eprintln!("{e}");
            return Ok(Err(ExitCode::from(1)));
        }
        Err(e) => return Err(e.into()),
    };

    let quiet = cli.quiet || a.progress == "quiet";
    let rawjson = a.progress == "rawjson";
    let live = crate::buildview::mode(
        &a.progress,
        cli.quiet,
        crate::buildview::stderr_is_terminal(),
    );
    // As a builder's local node, lines carry the node's name and interleave with other nodes'.
    let pre = node
        .as_ref()
        .map(|(n, _)| format!("[{n}] "))
        .unwrap_or_default();
    let view = (live == crate::buildview::Mode::Tty && node.is_none())
        .then(|| Arc::new(crate::buildview::LiveView::new()));
    // Bases pulled while steps run are told above the live view, not through it.
    if let Some(v) = &view {
        let v = v.clone();
        bases.set_printer(Some(Arc::new(move |l: &str| v.println(l))));
    }
    let progress = |e: Event| {
        if quiet {
            return;
        }
        if let Some(v) = &view {
            return v.event(&e);
        }
        match e {
            Event::Step {
                platform,
                stage,
                index,
                total,
                text,
                emulated,
                cached,
                seconds,
            } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "done", "platform": platform, "stage": stage, "step": index, "total": total,
                            "instruction": text, "emulated": emulated, "cached": cached, "seconds": seconds})
                    );
                    return;
                }
                let mut marks = String::new();
                if cached {
                    marks.push_str(" CACHED");
                }
                if emulated {
                    marks.push_str(" EMULATED");
                }
                let line = text.lines().next().unwrap_or("");
                eprintln!("{pre}[{platform} {stage} {index}/{total}] {line}{marks} {seconds:.2}s");
            }
            Event::StepStart {
                platform,
                stage,
                index,
                total,
                text,
                time,
            } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "start", "platform": platform, "stage": stage,
                            "step": index, "total": total, "instruction": text,
                            "timestamp": timestamp(time)})
                    );
                    return;
                }
                let line = text.lines().next().unwrap_or("");
                eprintln!("{pre}[{platform} {stage} {index}/{total}] {line} ...");
            }
            Event::Output {
                platform,
                stage,
                index,
                total,
                stream,
                time,
                line,
            } => {
                if rawjson {
                    let stream = match stream {
                        runtime::sandbox::Stream::Stdout => "stdout",
                        runtime::sandbox::Stream::Stderr => "stderr",
                        runtime::sandbox::Stream::Combined => "combined",
                    };
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "output", "platform": platform, "stage": stage,
                            "step": index, "stream": stream, "timestamp": timestamp(time),
                            "line": line})
                    );
                } else {
                    eprintln!("{pre}  {platform} {stage} {index}/{total} | {line}");
                }
            }
            Event::Failed { platform, error } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "error", "platform": platform, "error": error})
                    );
                } else {
                    eprintln!("{pre}[{platform}] ERROR {error}");
                }
            }
            Event::Cancelled { platform } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "cancelled", "platform": platform})
                    );
                } else {
                    eprintln!("{pre}[{platform}] CANCELED after the first failure");
                }
            }
        }
    };
    let work_dir = env.store_root.join("build");
    // Compression belongs to each output (exporters), not to the build or its cache keys.
    let layer_opts = runtime::LayerOptions::from_env();
    // Held until the build ends: a private agent for key files dies with it.
    let agents = crate::ssh::Agents::from_specs(&a.ssh)?;
    let bopts = BuildOptions {
        context: a.context.clone(),
        context_gate: a.context_gate.clone(),
        dockerfile: shown.to_string(),
        work_dir,
        no_cache: a.no_cache,
        no_cache_filter: a.no_cache_filter.clone(),
        extra_hosts: a
            .add_host
            .iter()
            .map(|h| {
                // NAME:IP as docker writes it; IPv6 addresses hold colons, so split at the first.
                h.split_once(['=', ':'])
                    .filter(|(n, ip)| !n.is_empty() && ip.parse::<std::net::IpAddr>().is_ok())
                    .map(|(n, ip)| (n.to_string(), ip.to_string()))
                    .with_context(|| format!("--add-host {h:?}: use NAME:IP, as in db:10.0.0.5"))
            })
            .collect::<Result<_>>()?,
        annotations: a
            .annotation
            .iter()
            .map(|s| ::engine::engine::AnnotationScope::parse(s).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
        labels: a
            .label
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--label {l:?}: use KEY=VALUE"))
            })
            .collect::<Result<_>>()?,
        layer: layer_opts,
        jobs: a.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        secrets: parse_secrets(&a.secret)?,
        ssh: agents.sockets.clone(),
        proxies,
        imported,
        network: runtime::network::for_step(None, a.network.parse()?, &a.allow)?,
        allow: a.allow.clone(),
        cancel: node.map(|(_, c)| c).unwrap_or_default(),
    };
    let started = std::time::Instant::now();
    let built = prepared.solve(store, &bopts, &progress);
    bases.set_printer(None);
    let built = built?;
    say(
        cli,
        format!("built in {:.1}s", started.elapsed().as_secs_f64()),
    );
    Ok(Ok((built, prepared.origins())))
}

/// Sends what was built (here or on nodes) through every exporter.
#[allow(clippy::too_many_arguments)]
fn export(
    cli: &Cli,
    env: &Env,
    a: &BuildArgs,
    store: &Layout,
    built: &::engine::engine::Built,
    origins: Origins,
    imported: Option<&Imported>,
    bases: &Bases<'_>,
    exporters: &[Box<dyn Exporter>],
    cache_to: &[crate::cache::CacheTo],
    tags: &[Reference],
) -> Result<ExitCode> {
    // One platform without a list asked for: the image itself, as docker build gives.
    let root = if built.images.len() == 1 && a.platform.is_empty() {
        let mut d = built.images[0].manifest.clone();
        d.platform = None;
        d
    } else {
        built.index.clone()
    };

    let cache = ::engine::cache::LocalCache::new(&env.store_root);
    // Layers left in imported caches (cache hits) or in base images' registries (bases no step
    // needed): mounted by a push to the same registry, else fetched now (only the exported
    // images' layers).
    let mut origins = origins;
    if let Some(imp) = imported {
        for (d, v) in imp.origins() {
            origins.entry(d).or_default().extend(v);
        }
    }
    let lazy = crate::cache::Lazy {
        store,
        imported,
        bases: Some(bases),
        origins: origins.clone(),
    };
    let push_only = (a.output.is_empty() && a.push && !a.load).then_some(tags);
    crate::cache::prepare_outputs(store, built, &lazy, push_only)?;
    let layer_opts = runtime::LayerOptions::from_env();
    let root = if cache_to.contains(&crate::cache::CacheTo::Inline) {
        crate::cache::inline(store, built, root, &layer_opts)?
    } else {
        root
    };
    let cx = export::ExportContext {
        store,
        built,
        root: root.clone(),
        tags,
        cache: &cache,
        origins: &origins,
        registries: &Registries(env),
        blobs: Some(&lazy),
    };
    for e in exporters {
        for line in e
            .export(&cx)
            .with_context(|| format!("exporting to the {} output", e.kind()))?
        {
            say(cli, line);
        }
    }
    for (to, spec) in cache_to.iter().zip(&a.cache_to) {
        let r = crate::cache::export(cli, env, store, &cache, built, to, &lazy, &layer_opts);
        match r {
            // buildx: a failed cache export fails the build unless ignore-error=true.
            Err(e) if spec.contains("ignore-error=true") => say(
                cli,
                format!("warning: the build cache was not exported: {e:#}"),
            ),
            r => r.with_context(|| format!("--cache-to {spec}"))?,
        }
    }
    crate::cache::report(cli, imported);
    bases.report();
    bases.finish();

    if let Some(f) = a.iidfile.as_deref() {
        store::layout::write_atomic(f, root.digest.to_string().as_bytes())?;
    }
    if let Some(f) = a.steps_file.as_deref() {
        store::layout::write_atomic(f, &serde_json::to_vec(&built.steps)?)?;
    }
    if let Some(mf) = a.metadata_file.as_deref() {
        let meta = serde_json::json!({
            "containerimage.digest": root.digest.to_string(),
            "containerimage.descriptor": {"mediaType": root.media_type, "digest": root.digest.to_string(), "size": root.size},
            "image.name": tags.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
            "containerimage.platforms": built.images.iter().map(|i| serde_json::json!({
                "platform": i.platform.to_string(), "digest": i.manifest.digest.to_string(), "config": i.config.to_string()
            })).collect::<Vec<_>>(),
        });
        store::layout::write_atomic(mf, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    }

    // An archive on standard output (dest=-) owns it: the digests go to stderr then.
    let piped = exporters.iter().any(|e| e.writes_stdout());
    let line = |s: String| {
        if piped {
            eprintln!("{s}")
        } else {
            println!("{s}")
        }
    };
    if mt::is_index(&root.media_type) {
        line(format!("{}  index", root.digest));
    } else {
        line(format!("{}  image", root.digest));
    }
    for i in &built.images {
        line(format!("{}  {}", i.manifest.digest, i.platform));
    }
    Ok(ExitCode::SUCCESS)
}
