//! `manifold build`: plan the Dockerfile for every platform, make sure base images are in the
//! store, run the plan with the build engine, then send the result where `--output` says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use ::engine::engine::{self, BaseResolver, BuildOptions, Event};
use anyhow::{bail, Context, Result};
use dockerfile::plan::{Base, Op, Origin};
use oci::media_type as mt;
use oci::{Document, ImageConfig, ImageManifest, Manifest, Matcher, Platform, Reference};
use store::layout::REF_NAME;
use store::{CopyOptions, Layout, Platforms, Source};
use transport::{Env, Place, RegistryRepo};

use crate::local::{human_size, say};
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
    /// `--ssh` specs.
    pub ssh: &'a [String],
    /// The builder's name; `None`: MANIFOLD_BUILDER or the current one.
    pub builder: Option<&'a str>,
    pub network: &'a str,
    pub allow: &'a [String],
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
    let secs = engine::rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// One `--output`.
#[derive(Debug, Clone, PartialEq)]
enum Output {
    Store,
    Registry {
        push_by_digest: bool,
        name: Option<String>,
    },
    Oci(PathBuf),
    Docker(PathBuf),
    Local(PathBuf),
    Tar(PathBuf),
}

fn parse_output(spec: &str) -> Result<Output> {
    let mut kv = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or(("type", part));
        kv.insert(k.trim().to_string(), v.trim().to_string());
    }
    let dest = || -> Result<PathBuf> {
        kv.get("dest")
            .map(PathBuf::from)
            .with_context(|| format!("--output {spec:?} needs dest=PATH"))
    };
    let truthy = |k: &str| kv.get(k).is_some_and(|v| v == "true" || v == "1");
    Ok(match kv.get("type").map(String::as_str) {
        Some("registry") => Output::Registry {
            push_by_digest: truthy("push-by-digest"),
            name: kv.get("name").cloned(),
        },
        Some("image") if truthy("push") => Output::Registry {
            push_by_digest: truthy("push-by-digest"),
            name: kv.get("name").cloned(),
        },
        Some("image") | Some("store") => Output::Store,
        Some("oci") => Output::Oci(dest()?),
        Some("docker") => Output::Docker(dest()?),
        Some("local") => Output::Local(dest()?),
        Some("tar") => Output::Tar(dest()?),
        Some(other) => {
            bail!("unknown output type {other:?}; use registry, image, oci, docker, local or tar")
        }
        None => bail!("--output {spec:?} needs type=…"),
    })
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

/// Looks for base images in the store and pulls what is missing, only the platforms the build
/// needs. Every base is made ready before the build starts; the engine then only reads.
pub(crate) struct Bases<'a> {
    env: &'a Env,
    store: &'a Layout,
    /// Bases found, by (reference, platform): their manifest and config.
    found: Mutex<BTreeMap<(String, String), (ImageManifest, ImageConfig)>>,
}

impl<'a> Bases<'a> {
    pub(crate) fn new(env: &'a Env, store: &'a Layout) -> Self {
        Bases {
            env,
            store,
            found: Mutex::new(BTreeMap::new()),
        }
    }

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
                let cands: Vec<_> = doc
                    .value()
                    .manifests
                    .iter()
                    .filter(|d| !d.is_attestation())
                    .collect();
                let plats: Vec<Platform> = cands
                    .iter()
                    .map(|d| d.platform.clone().unwrap_or_default())
                    .collect();
                let Some(i) = Matcher::new(platform).best(&plats) else {
                    return Ok(None);
                };
                match self.store.read_manifest(cands[i]) {
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
    pub(crate) fn ensure(
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

pub fn run(cli: &Cli, env: &Env, a: &BuildArgs<'_>) -> Result<ExitCode> {
    let path: PathBuf = a
        .file
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
    add_config_proxies(&mut build_args, env);
    let proxies: BTreeMap<String, String> = build_args
        .iter()
        .filter(|(k, _)| is_proxy_arg(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opts = dockerfile::PlanOptions {
        target: a.target.map(str::to_string),
        platforms: platforms.clone(),
        build_platform: Platform::host(),
        build_args,
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
    let report = dockerfile::lint::check(
        &df,
        &dockerfile::lint::CheckOptions {
            plan: opts.clone(),
            dockerignore,
            base_platforms: lookup
                .as_ref()
                .map(|l| l as &dyn dockerfile::lint::BasePlatforms),
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

    let mut outputs: Vec<Output> = a
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_>>()?;
    if a.push {
        outputs.push(Output::Registry {
            push_by_digest: false,
            name: None,
        });
    }
    if a.load || outputs.is_empty() {
        outputs.push(Output::Store);
    }
    let tags: Vec<Reference> = a
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<_, _>>()?;
    if outputs
        .iter()
        .any(|o| matches!(o, Output::Registry { name: None, .. }))
        && tags.is_empty()
    {
        bail!("--push needs a name: add -t REGISTRY/REPO:TAG");
    }

    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let builders = crate::builder::Config::load()?;
    let builder = builders.find(
        &a.builder
            .map(str::to_string)
            .unwrap_or_else(|| builders.current_name()),
    )?;
    let built = if crate::nodes::uses_nodes(&builder) {
        let started = std::time::Instant::now();
        let agents = crate::ssh::Agents::from_specs(a.ssh)?;
        let built = crate::nodes::build(
            &store,
            &builder,
            &platforms,
            &crate::nodes::Request {
                context: a.context,
                dockerfile: &path,
                build_arg: a.build_arg,
                target: a.target,
                no_cache: a.no_cache,
                pull: a.pull,
                secrets: crate::nodes::read_secrets(a.secrets)?,
                ssh: &agents.sockets,
                network: a.network,
                allow: a.allow,
                quiet: cli.quiet || a.progress == "quiet",
            },
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
        match build_here(cli, env, a, &store, plan, opts, &df, &shown, proxies)? {
            Ok(b) => b,
            Err(code) => return Ok(code),
        }
    };
    export(cli, env, a, &store, &built, &outputs, &tags)
}

/// Runs the plan on this machine: bases ready first, then the engine.
#[allow(clippy::too_many_arguments)]
fn build_here(
    cli: &Cli,
    env: &Env,
    a: &BuildArgs<'_>,
    store: &Layout,
    plan: dockerfile::BuildPlan,
    mut opts: dockerfile::PlanOptions,
    df: &dockerfile::ast::Dockerfile,
    shown: &str,
    proxies: BTreeMap<String, String>,
) -> Result<std::result::Result<engine::Built, ExitCode>> {
    let store = store.clone();
    let bases = Bases {
        env,
        store: &store,
        found: Mutex::new(BTreeMap::new()),
    };

    // Bases (and COPY --from images) for every platform that uses them, ready before any step.
    let mut wanted: BTreeMap<String, Vec<Platform>> = BTreeMap::new();
    for s in &plan.stages {
        let mut refs = Vec::new();
        if let Base::Image { reference } = &s.body.base {
            refs.push(reference.clone());
        }
        for st in &s.body.steps {
            if let Op::Copy {
                from: Origin::Image { reference },
                ..
            } = &st.op
            {
                refs.push(reference.clone());
            }
        }
        for r in refs {
            let v = wanted.entry(r).or_default();
            if !v.iter().any(|p| p.same_target(&s.body.platform)) {
                v.push(s.body.platform.clone());
            }
        }
    }
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
        match dockerfile::plan(df, &opts) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Ok(Err(ExitCode::from(1)));
            }
        }
    };

    let quiet = cli.quiet || a.progress == "quiet";
    let rawjson = a.progress == "rawjson";
    let live = crate::buildview::mode(
        a.progress,
        cli.quiet,
        crate::buildview::stderr_is_terminal(),
    );
    let view = (live == crate::buildview::Mode::Tty).then(crate::buildview::LiveView::new);
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
                eprintln!("[{platform} {stage} {index}/{total}] {line}{marks} {seconds:.2}s");
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
                eprintln!("[{platform} {stage} {index}/{total}] {line} ...");
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
                    eprintln!("  {platform} {stage} {index}/{total} | {line}");
                }
            }
            Event::Failed { platform, error } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "error", "platform": platform, "error": error})
                    );
                } else {
                    eprintln!("[{platform}] ERROR {error}");
                }
            }
            Event::Cancelled { platform } => {
                if rawjson {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "cancelled", "platform": platform})
                    );
                } else {
                    eprintln!("[{platform}] CANCELED after the first failure");
                }
            }
        }
    };
    let work_dir = env.store_root.join("build");
    let mut layer_opts = runtime::LayerOptions::from_env();
    // compression=gzip|zstd|uncompressed and compression-level=N in any --output set how
    // layers are written.
    for spec in a.outputs {
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("compression", v)) => {
                    layer_opts.compression = match v {
                        "gzip" => oci::media_type::Compression::Gzip,
                        "zstd" => oci::media_type::Compression::Zstd,
                        "uncompressed" => oci::media_type::Compression::None,
                        other => {
                            bail!("--output compression={other}: use gzip, zstd or uncompressed")
                        }
                    }
                }
                Some(("compression-level", v)) => {
                    layer_opts.level = Some(
                        v.parse()
                            .with_context(|| format!("compression-level={v} is not a number"))?,
                    );
                }
                _ => {}
            }
        }
    }
    // Held until the build ends: a private agent for key files dies with it.
    let agents = crate::ssh::Agents::from_specs(a.ssh)?;
    let bopts = BuildOptions {
        context: a.context.to_path_buf(),
        dockerfile: shown.to_string(),
        work_dir,
        no_cache: a.no_cache,
        layer: layer_opts,
        jobs: a.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        secrets: parse_secrets(a.secrets)?,
        ssh: agents.sockets.clone(),
        proxies,
        network: runtime::network::for_step(None, a.network.parse()?, a.allow)?,
        allow: a.allow.to_vec(),
    };
    let started = std::time::Instant::now();
    let built = engine::build(&store, &plan, &bases, &bopts, &progress)?;
    say(
        cli,
        format!("built in {:.1}s", started.elapsed().as_secs_f64()),
    );
    Ok(Ok(built))
}

/// Sends what was built where `--output` says.
fn export(
    cli: &Cli,
    env: &Env,
    a: &BuildArgs<'_>,
    store: &Layout,
    built: &engine::Built,
    outputs: &[Output],
    tags: &[Reference],
) -> Result<ExitCode> {
    let store = store.clone();
    // One platform without a list asked for: the image itself, as docker build gives.
    let root = if built.images.len() == 1 && a.platform.is_empty() {
        let mut d = built.images[0].manifest.clone();
        d.platform = None;
        d
    } else {
        built.index.clone()
    };

    let mut names_done = Vec::new();
    for out in outputs {
        match out {
            Output::Store => {
                let names: Vec<(String, oci::Descriptor)> =
                    tags.iter().map(|t| (t.to_string(), root.clone())).collect();
                if names.is_empty() {
                    store.add_unnamed(&root)?;
                } else {
                    store.set_names(&names)?;
                    names_done.extend(tags.iter().map(|t| t.familiar()));
                }
            }
            Output::Registry {
                push_by_digest,
                name,
            } => {
                let targets: Vec<Reference> = match name {
                    Some(n) => n
                        .split(',')
                        .map(|n| Reference::parse(n.trim()))
                        .collect::<Result<_, _>>()?,
                    None => tags.to_vec(),
                };
                for t in &targets {
                    let dst = RegistryRepo::new(env.client()?, t, env.runtime());
                    let report = store::copy(
                        &store,
                        &dst,
                        &root,
                        &CopyOptions {
                            platforms: Platforms::All,
                            jobs: 4,
                            progress: None,
                        },
                    )?;
                    if !push_by_digest {
                        store::Target::set_name(&dst, &t.to_string(), &root)?;
                    }
                    say(
                        cli,
                        format!(
                            "pushed {} ({} blobs, {}, {} already there)",
                            if *push_by_digest {
                                format!("{}@{}", t.repo_only(), root.digest)
                            } else {
                                t.familiar()
                            },
                            report.blobs_copied,
                            human_size(report.bytes_copied),
                            report.blobs_skipped
                        ),
                    );
                }
            }
            Output::Oci(dest) | Output::Docker(dest) => {
                let place = if matches!(out, Output::Oci(_)) {
                    Place::OciArchive(dest.clone(), None)
                } else {
                    Place::DockerArchive(dest.clone(), None)
                };
                let target = transport::OpenTarget::open(&place, env)?;
                store::copy(&store, target.target(), &root, &CopyOptions::default())?;
                let names: Vec<String> = if tags.is_empty() {
                    vec![format!(
                        "localhost/manifold-build:{}",
                        &root.digest.hex()[..12]
                    )]
                } else {
                    tags.iter().map(|t| t.to_string()).collect()
                };
                for n in &names {
                    target.target().set_name(n, &root)?;
                }
                for line in target.finish()? {
                    say(cli, line);
                }
                say(cli, format!("wrote {}", dest.display()));
            }
            Output::Local(dest) | Output::Tar(dest) => {
                export_filesystem(&store, &built.images, dest, matches!(out, Output::Tar(_)))?;
                say(cli, format!("wrote {}", dest.display()));
            }
        }
    }

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

    // An archive on standard output (dest=-) owns it: the digests go to stderr then.
    let piped = a.outputs.iter().filter_map(|o| parse_output(o).ok()).any(|o| {
        matches!(&o, Output::Oci(d) | Output::Docker(d) | Output::Tar(d) if store::archive::is_stdout(d))
    });
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
    if !names_done.is_empty() {
        say(cli, format!("named {}", names_done.join(", ")));
    }
    Ok(ExitCode::SUCCESS)
}

/// `type=local` / `type=tar`: each platform's root filesystem, in `platform` subdirectories when
/// there are several.
fn export_filesystem(
    store: &Layout,
    images: &[engine::PlatformImage],
    dest: &Path,
    tar: bool,
) -> Result<()> {
    let work = tempfile::tempdir()?;
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
        std::fs::create_dir_all(&dir)?;
        let m = match store.read_manifest(&i.manifest)? {
            Manifest::Image(doc) => doc.value().clone(),
            Manifest::Index(_) => bail!("{} is an index, not an image", i.manifest.digest),
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
        let tmp = tempfile::NamedTempFile::new_in(
            dest.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        store::follow_umask(tmp.as_file(), tmp.path())?;
        {
            let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
            b.follow_symlinks(false);
            b.append_dir_all(".", &base)?;
            b.into_inner()?;
        }
        if store::archive::is_stdout(dest) {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a tar to a terminal (dest `-` is standard output); redirect it");
            }
            std::io::copy(&mut tmp.reopen()?, &mut std::io::stdout().lock())?;
            return Ok(());
        }
        tmp.persist(dest)?;
    }
    Ok(())
}
