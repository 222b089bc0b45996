//! `manifold build`: plan the Dockerfile for every platform, make sure base images are in the
//! store, run the plan with the build engine, then send the result where `--output` says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use ::engine::engine::{self, BaseResolver, BuildOptions, Event};
use ::engine::export::{self, Exporter};
use anyhow::{bail, Context, Result};
use oci::media_type as mt;
use oci::{Document, ImageConfig, ImageManifest, Manifest, Matcher, Platform, Reference};
use store::layout::REF_NAME;
use store::{CopyOptions, Layout, Platforms, Source};
use transport::{Env, RegistryRepo};

use crate::local::say;
use crate::{Cli, OutputFormat};

/// What `manifold build` was asked, flags as buildx spells them.
pub struct BuildArgs<'a> {
    pub context: &'a Path,
    pub file: Option<&'a Path>,
    pub platform: &'a [String],
    pub tags: &'a [String],
    pub build_arg: &'a [String],
    pub target: Option<&'a str>,
    pub check: bool,
    pub format: OutputFormat,
    pub push: bool,
    pub load: bool,
    pub outputs: &'a [String],
    pub metadata_file: Option<&'a Path>,
    pub no_cache: bool,
    pub pull: bool,
    pub progress: &'a str,
    pub jobs: Option<usize>,
    pub secrets: &'a [String],
    pub cache_to: &'a [String],
    pub cache_from: &'a [String],
}

/// `--secret id=ID,src=FILE` (or `env=VAR`, written to a private temporary file).
fn parse_secrets(specs: &[String]) -> Result<BTreeMap<String, PathBuf>> {
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
        let src = if let Some(src) = kv.get("src").or_else(|| kv.get("source")) {
            let p = PathBuf::from(src);
            if !p.is_file() {
                bail!("--secret {id}: {src} is not a file");
            }
            p
        } else if let Some(var) = kv.get("env") {
            let value =
                std::env::var(var).with_context(|| format!("--secret {id}: ${var} is not set"))?;
            let f = tempfile::Builder::new()
                .prefix("manifold-secret-")
                .tempfile()?;
            std::fs::write(f.path(), value)?;
            let (_, p) = f
                .keep()
                .map_err(|e| anyhow::anyhow!("keeping the secret file: {e}"))?;
            p
        } else {
            bail!("--secret {spec:?} needs src=FILE or env=VAR");
        };
        out.insert(id, src);
    }
    Ok(out)
}

/// Looks for base images in the store and pulls what is missing, only the platforms the build
/// needs. Every base is made ready before the build starts; the engine then only reads.
struct Bases<'a> {
    env: &'a Env,
    store: &'a Layout,
    /// Bases found, by (reference, platform): their manifest and config.
    found: Mutex<BTreeMap<(String, String), (ImageManifest, ImageConfig)>>,
}

impl Bases<'_> {
    /// The image for `platform` under `name` in the store, if every part of it is there.
    fn lookup(
        &self,
        name: &str,
        platform: &Platform,
    ) -> Result<Option<(ImageManifest, ImageConfig)>> {
        let Some(root) = self.store.lookup(name)? else {
            return Ok(None);
        };
        let m = match self.store.read_manifest(&root) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        let image = match m {
            Manifest::Image(doc) => doc.value().clone(),
            Manifest::Index(doc) => {
                let Ok(entry) = doc.value().select(platform) else {
                    return Ok(None);
                };
                match self.store.read_manifest(entry) {
                    Ok(Manifest::Image(doc)) => doc.value().clone(),
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
        Ok(Some((image, config)))
    }

    /// Makes `reference` ready for every platform in `platforms`: from the store, else pulled.
    fn ensure(
        &self,
        cli: &Cli,
        reference: &str,
        platforms: &[Platform],
        force_pull: bool,
    ) -> Result<()> {
        let r = Reference::parse(reference).with_context(|| format!("base image {reference:?}"))?;
        let name = r.to_string();
        let mut missing = Vec::new();
        for p in platforms {
            match (force_pull, self.lookup(&name, p)?) {
                (false, Some(found)) => {
                    self.found
                        .lock()
                        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                        .insert((reference.to_string(), p.to_string()), found);
                }
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
        let src = RegistryRepo::new(self.env.client()?, &r, self.env.runtime());
        let root = src.resolve(&name).with_context(|| {
            format!(
                "base image {} is not in the local store and could not be pulled",
                r.familiar()
            )
        })?;
        // Keep the platforms already here, so one name serves every build.
        let mut want: Vec<Platform> = missing.clone();
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
        for p in &missing {
            let found = self
                .lookup(&name, p)?
                .with_context(|| format!("base image {} has no image for {p}", r.familiar()))?;
            self.found
                .lock()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .insert((reference.to_string(), p.to_string()), found);
        }
        Ok(())
    }
}

impl BaseResolver for Bases<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> std::result::Result<(ImageManifest, ImageConfig), String> {
        self.found
            .lock()
            .map_err(|_| "lock poisoned".to_string())?
            .get(&(reference.to_string(), platform.to_string()))
            .cloned()
            .ok_or_else(|| {
                format!("{reference} for {platform} was not made ready before the build")
            })
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

pub fn run(cli: &Cli, env: &Env, a: &BuildArgs<'_>) -> Result<ExitCode> {
    let path: PathBuf = a
        .file
        .map_or_else(|| a.context.join("Dockerfile"), Path::to_path_buf);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the Dockerfile {}", path.display()))?;
    let shown = path.display().to_string();
    let df = match dockerfile::parse(&text, &shown) {
        Ok(df) => df,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut platforms = a
        .platform
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    let mut build_args = BTreeMap::new();
    for arg in a.build_arg {
        match arg.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // docker takes the value from the environment for a bare KEY.
            None => build_args.insert(arg.clone(), std::env::var(arg).unwrap_or_default()),
        };
    }
    let mut opts = dockerfile::PlanOptions {
        target: a.target.map(str::to_string),
        platforms: platforms.clone(),
        build_platform: Platform::host(),
        build_args,
        ..Default::default()
    };
    let plan = match dockerfile::plan(&df, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    if a.check {
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        let findings = dockerfile::lint(&df);
        if a.format == OutputFormat::Json {
            println!("{}", dockerfile::render_json(&findings));
        } else if findings.is_empty() {
            println!("Check complete, no warnings found.");
        } else {
            print!("{}", dockerfile::render_text(&findings));
            println!("Check complete, {} warnings found.", findings.len());
        }
        return Ok(if findings.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    for w in &plan.warnings {
        say(cli, format!("warning: {w}"));
    }

    let mut exporters: Vec<Box<dyn Exporter>> = a
        .outputs
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
        .tags
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
    let bases = Bases {
        env,
        store: &store,
        found: Mutex::new(BTreeMap::new()),
    };

    // Every image the plan reads (FROM, COPY --from, RUN --mount from=), for every platform
    // that reads it, ready before any step.
    let wanted = plan.images();
    for (r, ps) in &wanted {
        bases.ensure(cli, r, ps, a.pull)?;
    }
    // Plan again knowing the bases' configs: ENV PATH=/x:$PATH expands against the image, and
    // ONBUILD triggers run.
    if !wanted.is_empty() {
        let found = bases
            .found
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?;
        for ((r, p), (_, cfg)) in found.iter() {
            let cc = cfg.config.clone().unwrap_or_default();
            let env_map = cc
                .env
                .iter()
                .flatten()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            let platform_short = Platform::parse(p)
                .map(|p| p.short())
                .unwrap_or_else(|_| p.clone());
            opts.base_configs.insert(
                (r.clone(), platform_short),
                dockerfile::BaseConfig {
                    env: env_map,
                    working_dir: cc.working_dir.clone().filter(|w| !w.is_empty()),
                    user: cc.user.clone().filter(|u| !u.is_empty()),
                    shell: cc.shell.clone().unwrap_or_default(),
                    on_build: cc.on_build.clone().unwrap_or_default(),
                },
            );
        }
    }
    let plan = if wanted.is_empty() {
        plan
    } else {
        match dockerfile::plan(&df, &opts) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(1));
            }
        }
    };

    let quiet = cli.quiet || a.progress == "quiet";
    let rawjson = a.progress == "rawjson";
    let progress = |e: Event| {
        if quiet {
            return;
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
                        serde_json::json!({"platform": platform, "stage": stage, "step": index, "total": total,
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
                eprintln!("[{platform} {stage} {index}/{total}] {line}{marks} {seconds:.2}s");
            }
            Event::Output { platform, line } => {
                if !rawjson {
                    eprintln!("  {platform} | {line}");
                }
            }
        }
    };
    let work_dir = env.store_root.join("build");
    // Compression belongs to each output (exporters), not to the build or its cache keys.
    let layer_opts = runtime::LayerOptions::from_env();
    let bopts = BuildOptions {
        context: a.context.to_path_buf(),
        dockerfile: shown.clone(),
        work_dir,
        no_cache: a.no_cache,
        layer: layer_opts,
        jobs: a.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        secrets: parse_secrets(a.secrets)?,
        imported: crate::cache::import(cli, env, &cache_from)?,
    };
    let started = std::time::Instant::now();
    let built = engine::build(&store, &plan, &bases, &bopts, &progress)?;
    // One platform without a list asked for: the image itself, as docker build gives.
    let root = if built.images.len() == 1 && a.platform.is_empty() {
        let mut d = built.images[0].manifest.clone();
        d.platform = None;
        d
    } else {
        built.index.clone()
    };
    say(
        cli,
        format!("built in {:.1}s", started.elapsed().as_secs_f64()),
    );

    let mut origins: HashMap<oci::Digest, Vec<String>> = HashMap::new();
    for ((r, _), (m, _)) in bases
        .found
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .iter()
    {
        let Ok(r) = Reference::parse(r) else { continue };
        for l in &m.layers {
            origins
                .entry(l.digest.clone())
                .or_default()
                .push(r.repo_only().to_string());
        }
    }
    let cache = ::engine::cache::LocalCache::at(&bopts.work_dir);
    // Cache hits from imported caches: their layers are mounted by a push to the same registry,
    // else fetched now (only the exported images' layers).
    let imported = bopts.imported.as_deref();
    let base_origins = origins.clone();
    if let Some(imp) = imported {
        for (d, v) in imp.origins() {
            origins.entry(d).or_default().extend(v);
        }
    }
    let push_only = (a.outputs.is_empty() && a.push && !a.load).then_some(tags.as_slice());
    crate::cache::prepare_outputs(&store, &built, imported, push_only)?;
    let root = if cache_to.contains(&crate::cache::CacheTo::Inline) {
        crate::cache::inline(&store, &built, root, &bopts.layer)?
    } else {
        root
    };
    let cx = export::ExportContext {
        store: &store,
        built: &built,
        root: root.clone(),
        tags: &tags,
        cache: &cache,
        origins: &origins,
        registries: &Registries(env),
    };
    for e in &exporters {
        for line in e
            .export(&cx)
            .with_context(|| format!("exporting to the {} output", e.kind()))?
        {
            say(cli, line);
        }
    }
    for (to, spec) in cache_to.iter().zip(a.cache_to) {
        let r = crate::cache::export(
            cli,
            env,
            &store,
            &cache,
            &built,
            to,
            imported,
            &base_origins,
            &bopts.layer,
        );
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

    if let Some(mf) = a.metadata_file {
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

    if mt::is_index(&root.media_type) {
        println!("{}  index", root.digest);
    } else {
        println!("{}  image", root.digest);
    }
    for i in &built.images {
        println!("{}  {}", i.manifest.digest, i.platform);
    }
    Ok(ExitCode::SUCCESS)
}
