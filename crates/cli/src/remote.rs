//! Commands that talk to registries: pull, push, tags, catalog, delete, login, logout.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use oci::{Matcher, Reference};
use store::layout::REF_NAME;
use store::{Platforms, Source};
use transport::{Env, RegistryRepo};

use crate::global::{Cli, OutputFormat};
use crate::output::{familiar, human_size, say};
use crate::platforms::parse_platforms;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// The image, e.g. busybox:1.36 or localhost:5000/team/app@sha256:…
    pub image: String,
    /// The platforms to pull (best match each); this machine's platform when not given.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_platforms")]
    pub platform: Vec<String>,
    /// Pull every platform; the index keeps its digest.
    #[arg(long, short = 'a')]
    pub all_platforms: bool,
    /// Parallel blob transfers.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The image's name in the local store, which says where it goes.
    pub image: String,
    /// Parallel blob transfers.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(clap::Args, Debug)]
pub struct TagsArgs {
    /// The repository, e.g. localhost:5000/app.
    pub repository: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The manifest, by tag or digest.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
    /// The user name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// The password (prefer --password-stdin: this one lands in shell history).
    #[arg(short, long)]
    pub password: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
}

fn repo(env: &Env, r: &Reference) -> Result<RegistryRepo> {
    Ok(RegistryRepo::new(env.client()?, r, env.runtime()))
}

pub fn pull(cli: &Cli, env: &Env, a: &PullArgs) -> Result<ExitCode> {
    let (image, platform, all, jobs) = (a.image.as_str(), &a.platform, a.all_platforms, a.jobs);
    let r = Reference::parse(image)?;
    let src = repo(env, &r)?;
    let root = src.resolve(&r.to_string())?;
    let is_index = oci::media_type::is_index(&root.media_type);
    let platforms = if all || (platform.is_empty() && !is_index) {
        // A single-platform image without --platform is pulled as it is, as docker does.
        Platforms::All
    } else if platform.is_empty() {
        Platforms::Best(vec![Matcher::host()])
    } else {
        Platforms::of(&parse_platforms(platform)?)
    };
    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let bp = crate::progress::BlobProgress::new(cli.quiet, "pulled");
    let show = |e: store::Event<'_>| bp.event(e);
    let opts = store::CopyOptions {
        platforms: platforms.clone(),
        jobs,
        progress: if cli.quiet { None } else { Some(&show) },
    };
    let report = store::copy(&src, &store, &root, &opts)?;
    // One platform of an index: keep that platform's manifest under the name, so the digest shown
    // is one the registry has, not a local one-entry index.
    let mut named = match (&platforms, report.images.as_slice()) {
        (Platforms::Best(m), [(_, one)]) if m.len() == 1 && is_index => one.clone(),
        _ => report.root.clone(),
    };
    named.annotations.remove(REF_NAME);
    store.set_name(&r.to_string(), &named)?;
    say(
        cli,
        format!(
            "{} blobs pulled ({}), {} already present",
            report.blobs_copied,
            human_size(report.bytes_copied),
            report.blobs_skipped
        ),
    );
    if is_index {
        println!("{}: index {}", familiar(&r.to_string()), root.digest);
        for (p, d) in &report.images {
            let p = p.as_ref().map_or("?".to_string(), |p| p.to_string());
            println!("  {p:<16} {}", d.digest);
        }
        if named.digest != root.digest {
            println!(
                "stored: {} (the platform manifest; pin it to get exactly this image)",
                named.digest
            );
        }
    } else {
        println!("{}: {}", familiar(&r.to_string()), root.digest);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(cli: &Cli, env: &Env, a: &PushArgs) -> Result<ExitCode> {
    let (image, jobs) = (a.image.as_str(), a.jobs);
    let r = Reference::parse(image)?;
    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let name = r.to_string();
    let root = Source::resolve(&store, &name).with_context(|| {
        format!(
            "{} is not in the local store (see manifold images)",
            familiar(&name)
        )
    })?;
    // Registries get compressed layers (a docker-archive's are stored uncompressed).
    let how = store::rewrite::Rewrite {
        compress: true,
        oci_media_types: false,
    };
    let root = crate::transfer::rewrite_for(cli, &store, &root, how)?;
    let dst = repo(env, &r)?;
    let report = crate::transfer::progress_copy(cli, &store, &dst, &root, &[], jobs)?;
    store::Target::set_name(&dst, &name, &report.root)?;
    println!(
        "{}: digest {} size {}",
        familiar(&name),
        report.root.digest,
        report.root.size
    );
    Ok(ExitCode::SUCCESS)
}

pub fn tags(env: &Env, a: &TagsArgs) -> Result<ExitCode> {
    let (repository, format) = (a.repository.as_str(), a.format);
    let r = Reference::parse_bare(repository)?;
    let client = env.client()?;
    let mut tags = env.runtime().block_on(client.tags(&r))?;
    tags.sort();
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&tags)?);
    } else {
        for t in tags {
            println!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn catalog(env: &Env, a: &CatalogArgs) -> Result<ExitCode> {
    let (registry, format) = (a.registry.as_str(), a.format);
    let client = env.client()?;
    let mut repos = env.runtime().block_on(client.catalog(registry))?;
    repos.sort();
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&repos)?);
    } else {
        for r in repos {
            println!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(cli: &Cli, env: &Env, a: &DeleteArgs) -> Result<ExitCode> {
    let image = a.image.as_str();
    let r = Reference::parse(image)?;
    let client = env.client()?;
    let rt = env.runtime();
    let digest = match r.digest() {
        Some(d) => d.clone(),
        None => {
            let desc = rt
                .block_on(client.head_manifest(&r))?
                .with_context(|| format!("{r}: no such manifest"))?;
            say(
                cli,
                format!(
                    "{} points at {}; deleting that manifest removes every tag on it",
                    familiar(&r.to_string()),
                    desc.digest
                ),
            );
            desc.digest
        }
    };
    rt.block_on(client.delete_manifest(&r.repo_only().with_digest(digest.clone())))?;
    println!("Deleted: {}@{}", r.repo_only(), digest);
    Ok(ExitCode::SUCCESS)
}

pub fn login(env: &Env, a: &LoginArgs) -> Result<ExitCode> {
    let (registry, username, password_stdin, password) = (
        a.registry.as_str(),
        a.username.as_deref(),
        a.password_stdin,
        a.password.as_deref(),
    );
    let Some(username) = username else {
        bail!("give a user name with -u USER (and the password with --password-stdin)");
    };
    let password = match (password_stdin, password) {
        (true, _) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (false, Some(p)) => {
            eprintln!("warning: --password is visible in the process list and shell history; prefer --password-stdin");
            p.to_string()
        }
        (false, None) => bail!("give the password on standard input with --password-stdin"),
    };
    let client = env.client()?;
    let cred = registry::Credential::Basic {
        username: username.to_string(),
        password,
    };
    let stored = env.runtime().block_on(client.login(registry, cred))?;
    let place = match &stored {
        registry::Stored::File(p) => format!("credentials stored in {}", p.display()),
        registry::Stored::Helper(h) => {
            format!("credentials stored by the credential helper docker-credential-{h}")
        }
    };
    println!("Login Succeeded ({place})");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(env: &Env, a: &LogoutArgs) -> Result<ExitCode> {
    let registry = a.registry.as_str();
    let client = env.client()?;
    if env.runtime().block_on(client.logout(registry))? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The platform to build for when no --platform was given and the target stage's base (through
/// its stage chain) is a single-platform image of a platform this machine is not: docker builds
/// for the base's platform then, with a warning. `None` in every other case (and on any error:
/// the build itself reports those).
pub fn implicit_platform(
    cli: &Cli,
    env: &Env,
    plan: &dockerfile::BuildPlan,
) -> Option<oci::Platform> {
    use dockerfile::plan::Base;
    let pp = plan.platforms.first()?;
    let mut stage = plan.stage(&pp.target)?;
    let reference = loop {
        match &stage.body.base {
            Base::Image { reference } => break reference.clone(),
            Base::Stage { key, .. } => stage = plan.stage(key)?,
            Base::Scratch => return None,
        }
    };
    let r = Reference::parse(&reference).ok()?;
    let name = r.to_string();
    // The store first, as the build looks there first; then the registry.
    let from_store = transport::open_store(&env.store_root).ok().and_then(|s| {
        let root = s.lookup(&name).ok()??;
        single_platform(&s, &root)
    });
    let own = match from_store {
        Some(p) => p,
        None => {
            let src = repo(env, &r).ok()?;
            let root = src.resolve(&name).ok()?;
            single_platform(&src, &root)?
        }
    };
    if Matcher::new(&pp.platform).matches(&own) {
        return None;
    }
    say(
        cli,
        format!(
            "warning: base image {} is only for {own}, and no --platform was given: building for \
             {own} (emulated where this machine cannot run it), as docker does; pass --platform \
             to choose",
            r.familiar()
        ),
    );
    Some(own)
}

/// The platform of a single image manifest (from its config); `None` for an index.
fn single_platform(src: &dyn Source, root: &oci::Descriptor) -> Option<oci::Platform> {
    let oci::Manifest::Image(doc) = src.read_manifest(root).ok()? else {
        return None;
    };
    let cfg = src.read_verified(&doc.value().config).ok()?;
    let p = oci::Document::<oci::ImageConfig>::parse(cfg)
        .ok()?
        .value()
        .platform();
    (!p.os.is_empty() && !p.architecture.is_empty()).then_some(p)
}

/// InvalidBaseImagePlatform's lookup for `build --check --pull`: a base's platform as its
/// registry has it, from manifests and configs only (no layer is pulled). With an index, the
/// entry that best runs `wanted`, else its first platform.
pub struct RegistryPlatforms<'a> {
    pub env: &'a Env,
}

impl dockerfile::lint::BasePlatforms for RegistryPlatforms<'_> {
    fn platform_of(&self, reference: &str, wanted: &oci::Platform) -> Option<oci::Platform> {
        let r = Reference::parse(reference).ok()?;
        let src = repo(self.env, &r).ok()?;
        let root = src.resolve(&r.to_string()).ok()?;
        match src.read_manifest(&root).ok()? {
            oci::Manifest::Index(doc) => {
                let cands: Vec<oci::Platform> = doc
                    .value()
                    .manifests
                    .iter()
                    .filter(|d| !d.is_attestation())
                    .filter_map(|d| d.platform.clone())
                    .collect();
                match Matcher::new(wanted).best(&cands) {
                    Some(i) => cands.get(i).cloned(),
                    None => cands.into_iter().next(),
                }
            }
            oci::Manifest::Image(_) => single_platform(&src, &root),
        }
    }
}
