//! `manifold build`: plan the Dockerfile for every platform, make sure base images are in the
//! store, run the plan with the build engine, then send the result where `--output` says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ::engine::engine::{BuildOptions, Event};
use ::engine::export::{self, Exporter};
use ::engine::pipeline::{self, ImageSource, SourceImage};
use anyhow::{bail, Context, Result};
use oci::media_type as mt;
use oci::{Document, ImageConfig, Manifest, Matcher, Platform, Reference};
use store::layout::REF_NAME;
use store::{CopyOptions, Layout, Platforms, Source};
use transport::{Env, RegistryRepo};

use crate::local::say;
use crate::{Cli, OutputFormat};

/// What `manifold build` was asked, flags as buildx spells them: the one definition clap
/// parses and the handler reads.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
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
    /// Check the registry for newer base images even when the store has them.
    #[arg(long)]
    pub pull: bool,
    /// auto, plain, tty, quiet or rawjson (JSON lines for tools).
    #[arg(long, default_value = "auto")]
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

/// The CLI's image source: images from the store, else pulled from their registry (only the
/// platforms the build needs).
struct Bases<'a> {
    cli: &'a Cli,
    env: &'a Env,
    store: &'a Layout,
}

impl Bases<'_> {
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
    fn ensure(&self, reference: &str, platforms: &[Platform], force_pull: bool) -> Result<()> {
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
        Ok(())
    }
}

impl ImageSource for Bases<'_> {
    fn fetch(
        &self,
        reference: &str,
        platforms: &[Platform],
        pull: bool,
    ) -> std::result::Result<Vec<SourceImage>, String> {
        self.ensure(reference, platforms, pull)
            .map_err(|e| format!("{e:#}"))?;
        let name = Reference::parse(reference)
            .map_err(|e| e.to_string())?
            .to_string();
        platforms
            .iter()
            .map(|p| {
                self.lookup(&name, p)
                    .map_err(|e| format!("{e:#}"))?
                    .ok_or_else(|| format!("it has no image for {p}"))
            })
            .collect()
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
    for arg in &a.build_arg {
        match arg.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // docker takes the value from the environment for a bare KEY.
            None => build_args.insert(arg.clone(), std::env::var(arg).unwrap_or_default()),
        };
    }
    let opts = dockerfile::PlanOptions {
        target: a.target.clone(),
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

    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let bases = Bases {
        cli,
        env,
        store: &store,
    };
    // The engine's pipeline: every image the plan reads (FROM, COPY --from, RUN --mount
    // from=) made ready through `bases`, then planned again with their configs.
    let prepared = match pipeline::prepare(&df, &opts, &bases, a.pull) {
        Ok(p) => p,
        Err(pipeline::PrepareError::Plan(e)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
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
        context: a.context.clone(),
        dockerfile: shown.clone(),
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
    };
    let started = std::time::Instant::now();
    let built = prepared.solve(&store, &bopts, &progress)?;
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

    let origins = prepared.origins();
    let cache = ::engine::cache::LocalCache::at(&bopts.work_dir);
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

    if let Some(f) = a.iidfile.as_deref() {
        store::layout::write_atomic(f, root.digest.to_string().as_bytes())?;
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
