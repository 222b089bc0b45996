//! The `manifold` binary: commands, output formats, and the glue between the crates.

mod binfmt;
mod build;
mod builder;
mod buildview;
mod cache;
mod lists;
mod local;
mod nodes;
mod progress;
mod remote;
mod run;
mod serve;
mod ssh;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Build, ship and inspect multi-platform container images, with no daemon.
#[derive(Parser, Debug)]
#[command(name = "manifold", version, about, long_about = None)]
pub struct Cli {
    /// Where the local image store lives (an OCI image layout).
    #[arg(long, global = true, env = "MANIFOLD_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// Print less: only results and errors.
    #[arg(long, short, global = true)]
    quiet: bool,

    /// Reach this registry (HOST[:PORT]) over plain HTTP or unverified TLS. localhost and
    /// 127.0.0.0/8 are insecure already, as in docker; hosts in /etc/docker/daemon.json's
    /// insecure-registries are added.
    #[arg(
        long = "insecure-registry",
        global = true,
        value_name = "HOST",
        env = "MANIFOLD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,

    /// Per-registry settings in buildkitd.toml's shape (`[registry."docker.io"] mirrors = [...]`,
    /// `http`, `insecure`, `ca`, `keypair`). Default: registries.toml in manifold's config dir,
    /// when it exists.
    #[arg(
        long = "registry-config",
        global = true,
        env = "MANIFOLD_REGISTRY_CONFIG",
        value_name = "FILE"
    )]
    registry_config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The kind of list to write.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// An OCI image index.
    Oci,
    /// A Docker manifest list (only Docker v2 manifests, no annotations).
    Docker,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCmd {
    /// Stage a manifest list locally from images in any repository of any registry. A source that
    /// is itself a list contributes each of its platforms.
    Create {
        /// The list's name, e.g. localhost:5000/app:1.
        list: String,
        /// The images (tags or digests) whose platforms make the list.
        #[arg(required = true)]
        sources: Vec<String>,
        /// Add to a list that is already staged (may be repeated, as with docker).
        #[arg(short, long, overrides_with = "amend")]
        amend: bool,
        /// Refuse sources that are lists instead of taking their platforms.
        #[arg(long)]
        no_flatten: bool,
        /// Reach the registries named here over plain HTTP or unverified TLS.
        #[arg(long)]
        insecure: bool,
        /// The list's media type; by default Docker's when every source is a Docker v2 manifest,
        /// OCI otherwise.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        list_type: Option<ListFormat>,
    },
    /// Set the platform of one entry of a staged list.
    Annotate {
        /// The staged list.
        list: String,
        /// The entry: any reference `manifest create` took for it, or its digest (sha256:...).
        source: String,
        /// The entry's operating system, stored as typed.
        #[arg(long)]
        os: Option<String>,
        /// The entry's architecture, stored as typed.
        #[arg(long)]
        arch: Option<String>,
        /// The entry's architecture variant (v7, v8, ...), stored as typed.
        #[arg(long)]
        variant: Option<String>,
        /// The entry's OS version (Windows images).
        #[arg(long)]
        os_version: Option<String>,
        /// The entry's OS features, comma-separated.
        #[arg(long, value_delimiter = ',')]
        os_features: Vec<String>,
        /// Reach the registries named here over plain HTTP or unverified TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// Show a staged list, or a list or manifest in a registry.
    Inspect {
        /// A staged list, or a registry reference.
        reference: String,
        /// Show every entry's manifest too.
        #[arg(short, long)]
        verbose: bool,
        /// Reach the registry named here over plain HTTP or unverified TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// Push a staged list: every entry's content is copied (or mounted) into the list's
    /// repository first, then the list is tagged. Prints the list's digest.
    Push {
        /// The staged list; it is pushed to the name it was created with.
        list: String,
        /// Remove the staged list after pushing.
        #[arg(short, long)]
        purge: bool,
        /// Reach the registry named here over plain HTTP or unverified TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// Remove staged lists.
    Rm {
        /// The staged lists to remove.
        #[arg(required = true)]
        lists: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImagetoolsCmd {
    /// Show an image or index: the index digest, and per platform its manifest digest, size,
    /// creation time and layers; attestations apart. Takes a registry reference or any place
    /// (store:REF, oci:DIR:NAME, oci-archive:FILE, docker-archive:FILE).
    Inspect {
        /// A registry reference or a place (store:REF, oci:DIR:NAME, ...).
        reference: String,
        /// Print the manifest or index exactly as stored.
        #[arg(long)]
        raw: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Merge images (tags or digests, from any repositories) into one index and push it to every
    /// -t tag, copying what each target repository lacks.
    Create {
        /// Where the index goes (repeatable).
        #[arg(short = 't', long = "tag", value_name = "REF")]
        tags: Vec<String>,
        /// The images to merge: tags or digests, from any repositories.
        sources: Vec<String>,
        /// Keep the entries the first tag's index has now.
        #[arg(long)]
        append: bool,
        /// Take only these platforms from the sources.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// index:KEY=VALUE (or KEY=VALUE) annotations on the index.
        #[arg(long)]
        annotation: Vec<String>,
        /// Print the index instead of pushing it.
        #[arg(long)]
        dry_run: bool,
        /// The index's media type; by default Docker's when every source is a Docker v2
        /// manifest and there are no annotations, OCI otherwise.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        list_type: Option<ListFormat>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI archive (a tar of an OCI image layout), readable by skopeo, podman and docker 25+.
    Oci,
    /// A `docker save` archive for `docker load`: one entry per platform.
    Docker,
}

// Parsed once per run: the size of the build variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List images in the local store: name, tag, digest, platforms and size.
    #[command(visible_alias = "ls")]
    Images {
        /// Only images whose repository matches this name (e.g. busybox, localhost:5000/app).
        repository: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Show full digests.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Remove image names from the local store and reclaim what nothing else uses.
    #[command(visible_alias = "rmi")]
    Rm {
        /// Image names (busybox:latest) or digests (sha256:…).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image in the local store another name.
    Tag {
        /// The image's current name or digest.
        source: String,
        /// The new name.
        target: String,
    },
    /// Write images from the local store to an archive (OCI or docker-archive).
    Save {
        /// The file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The archive's kind.
        #[arg(long = "type", value_enum, value_name = "TYPE", default_value_t = ArchiveKind::Oci)]
        archive_type: ArchiveKind,
        /// Keep only these platforms (the best match for each); all when not given.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Write Docker manifests, lists and configs with OCI media types (digests change), for
        /// tools that read only OCI layouts.
        #[arg(long)]
        oci_mediatypes: bool,
        /// The images to write.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from an archive (OCI or docker-archive, plain or compressed) or an OCI layout
    /// directory into the local store.
    Load {
        /// The archive or directory to read; standard input when not given.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Only these platforms of each image.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
    },
    /// Pull an image from a registry into the local store.
    Pull {
        /// The image, e.g. busybox:1.36 or localhost:5000/team/app@sha256:…
        image: String,
        /// The platforms to pull (best match each); this machine's platform when not given.
        #[arg(long, value_delimiter = ',', conflicts_with = "all_platforms")]
        platform: Vec<String>,
        /// Pull every platform; the index keeps its digest.
        #[arg(long, short = 'a')]
        all_platforms: bool,
        /// Parallel blob transfers.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Push an image from the local store to the registry its name points at.
    Push {
        /// The image's name in the local store, which says where it goes.
        image: String,
        /// Parallel blob transfers.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// List a repository's tags (all pages).
    Tags {
        /// The repository, e.g. localhost:5000/app.
        repository: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// List a registry's repositories (all pages).
    Catalog {
        /// The registry, HOST[:PORT].
        registry: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Delete a manifest from a registry. A tag is resolved first, and what it points at is
    /// deleted (with every tag on it): the command says which digest.
    Delete {
        /// The manifest, by tag or digest.
        image: String,
    },
    /// Log in to a registry; writes docker's config.json (or its credential helper).
    Login {
        /// The registry, HOST[:PORT].
        registry: String,
        /// The user name.
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The password (prefer --password-stdin: this one lands in shell history).
        #[arg(short, long)]
        password: Option<String>,
    },
    /// Remove a registry's stored login.
    Logout {
        /// The registry, HOST[:PORT].
        registry: String,
    },
    /// Build an image from a Dockerfile for one or more platforms, in parallel, natively or under
    /// QEMU emulation. The result goes to the local store unless --push or --output say otherwise.
    Build(build::BuildArgs),
    /// Stage, annotate, inspect and push manifest lists (docker manifest, with no daemon).
    Manifest {
        #[command(subcommand)]
        command: ManifestCmd,
    },
    /// Inspect images and indexes, and merge images into an index (buildx imagetools).
    Imagetools {
        #[command(subcommand)]
        command: ImagetoolsCmd,
    },
    /// Print the digest to pin: the index digest, or with --platform that platform's manifest.
    Digest {
        /// A registry reference or a place (store:REF, oci:DIR:NAME, ...); with --which, the
        /// repository to search.
        reference: String,
        /// The platform whose manifest digest to print.
        #[arg(long, conflicts_with = "which")]
        platform: Option<String>,
        /// Say which tags of the repository hold this digest, and as which platform:
        /// `digest --which sha256:... localhost:5000/app`.
        #[arg(long, value_name = "DIGEST")]
        which: Option<String>,
        /// With --which: look at no more than this many tags.
        #[arg(long, requires = "which")]
        limit: Option<usize>,
    },
    /// Copy an image between places: a registry reference, store:REF, oci:DIR[:NAME],
    /// oci-archive:FILE[:NAME], docker-archive:FILE[:NAME].
    Cp {
        /// Where the image is.
        source: String,
        /// Where it goes.
        destination: String,
        /// Copy every platform (the default when no --platform is given).
        #[arg(long, conflicts_with = "platform")]
        all: bool,
        /// Keep only these platforms; the copy gets a new index listing just them.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Parallel blob transfers.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Copy Docker manifests, lists and configs with OCI media types (digests change), for
        /// tools that read only OCI layouts. The source must be in the store (store:REF).
        #[arg(long)]
        oci_mediatypes: bool,
    },
    /// Remove blobs that no image uses and leftovers of interrupted writes.
    Prune {
        /// Also drop the build cache: cached steps, RUN cache mounts, unpacked layer snapshots.
        /// Without it, layers that cached steps use are kept.
        #[arg(long)]
        cache: bool,
        /// With --cache: `until=DURATION` (24h, 90m) drops only steps unused for that long.
        #[arg(long, requires = "cache")]
        filter: Vec<String>,
        /// With --cache: drop the least recently used steps until the rest fits in SIZE
        /// (10GB, 512MB, 0).
        #[arg(long, requires = "cache")]
        keep_storage: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Disk usage: images in the store, the build cache, RUN cache mounts, unpacked snapshots.
    Du {
        /// One line per image, cache mount and snapshot too.
        #[arg(long, short)]
        verbose: bool,
        /// table, or json for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Manage builders: nodes on this machine or over SSH, each building the platforms it runs
    /// natively (buildx create/ls/inspect/use/rm).
    Builder {
        #[command(subcommand)]
        command: builder::BuilderCmd,
    },
    /// Run an OCI registry (serve, gc).
    Registry {
        #[command(subcommand)]
        command: serve::RegistryCmd,
    },
    /// Check every blob against its digest and every image for missing parts.
    Fsck {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Run a command in an image (from the store, else pulled), in the sandbox RUN steps use;
    /// other platforms under QEMU. Nothing outlives the command. Exits with its exit code.
    Run(run::RunArgs),
    /// Show, install and remove QEMU's binfmt_misc handlers for running other architectures.
    Binfmt(binfmt::BinfmtArgs),
}

/// `manifest ... --insecure` marks every registry the command names as insecure, as docker does.
fn insecure_from_flags(cmd: &Command) -> Vec<String> {
    let names: Vec<&String> = match cmd {
        Command::Manifest {
            command:
                ManifestCmd::Create {
                    insecure: true,
                    list,
                    sources,
                    ..
                },
        } => std::iter::once(list).chain(sources.iter()).collect(),
        Command::Manifest {
            command:
                ManifestCmd::Annotate {
                    insecure: true,
                    list,
                    source,
                    ..
                },
        } => vec![list, source],
        Command::Manifest {
            command:
                ManifestCmd::Inspect {
                    insecure: true,
                    reference,
                    ..
                },
        } => vec![reference],
        Command::Manifest {
            command:
                ManifestCmd::Push {
                    insecure: true,
                    list,
                    ..
                },
        } => vec![list],
        _ => Vec::new(),
    };
    names
        .into_iter()
        .filter_map(|n| oci::Reference::parse(n).ok())
        .map(|r| r.registry().to_string())
        .collect()
}

/// The `insecure-registries` docker users already keep in daemon.json (host entries; CIDRs other
/// than loopback's, which is plain HTTP anyway, are not host names and are skipped).
fn insecure_from_daemon_json(path: &std::path::Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        eprintln!(
            "warning: {} is not valid JSON; ignoring its insecure-registries",
            path.display()
        );
        return Vec::new();
    };
    v["insecure-registries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str())
                .filter(|e| !e.contains('/'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The registry config: `--registry-config FILE` (which must exist), else registries.toml in
/// the config dir when it exists, else nothing.
fn load_registry_config(
    flag: Option<&std::path::Path>,
) -> anyhow::Result<registry::RegistryConfig> {
    if let Some(p) = flag {
        return Ok(registry::RegistryConfig::load(p)?);
    }
    let p = builder::config_dir().join("registries.toml");
    if p.exists() {
        return Ok(registry::RegistryConfig::load(&p)?);
    }
    Ok(registry::RegistryConfig::default())
}

/// Which hosts served pulls from registries with mirrors, one line each.
fn mirror_lines(uses: &[registry::MirrorUse]) -> Vec<String> {
    let mut out = Vec::new();
    for u in uses {
        let what = format!("{} manifests, {} blobs", u.manifests, u.blobs);
        if u.manifests + u.blobs > 0 {
            if u.is_mirror {
                out.push(format!("mirror {} served {what} of {}", u.host, u.registry));
            } else {
                out.push(format!("{} itself served {what}", u.host));
            }
        }
        if let Some(first) = &u.first_failure {
            out.push(format!(
                "mirror {} of {} could not serve {} request(s), the next host was asked: {first}",
                u.host, u.registry, u.failures
            ));
        }
    }
    out
}

fn main() -> ExitCode {
    // Piped into `head`, a closed stdout ends us quietly, as it ends cat or grep, instead of a
    // panic from println!. SIGPIPE itself stays ignored: a peer closing a socket (a registry
    // refusing a TLS probe) must be an error to handle, not the end of the process.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    let root = cli.root.clone().unwrap_or_else(store::default_root);
    let mut insecure = cli.insecure_registries.clone();
    insecure.extend(insecure_from_flags(&cli.command));
    insecure.extend(insecure_from_daemon_json(std::path::Path::new(
        "/etc/docker/daemon.json",
    )));
    let registries = match load_registry_config(cli.registry_config.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut options = registry::ClientOptions {
        insecure_registries: insecure,
        registries,
        ..Default::default()
    };
    if let Some(secs) = std::env::var("MANIFOLD_STALL_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
    {
        options.stall_timeout = std::time::Duration::from_secs_f64(secs);
    }
    let env = transport::Env::new(root, options);
    let result = local::run(&cli, &env);
    if !cli.quiet {
        if let Some(c) = env.client_if_made() {
            for line in mirror_lines(&c.mirror_report()) {
                eprintln!("{line}");
            }
        }
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                let text = s.to_string();
                if !e.to_string().contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                src = s.source();
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_json_insecure_registries() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("daemon.json");
        std::fs::write(
            &p,
            r#"{"insecure-registries":["reg.lan:5000","10.0.0.0/8","myhost"],"debug":true}"#,
        )
        .unwrap();
        assert_eq!(insecure_from_daemon_json(&p), ["reg.lan:5000", "myhost"]);
        std::fs::write(&p, "{broken").unwrap();
        assert!(insecure_from_daemon_json(&p).is_empty());
        assert!(insecure_from_daemon_json(&t.path().join("missing")).is_empty());
    }

    /// Walks every command and fails on an option or argument without a help line.
    #[test]
    fn every_option_of_every_command_has_a_help_line() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "manifold", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }

    #[test]
    fn progress_takes_only_known_modes() {
        use clap::Parser;
        for ok in ["auto", "tty", "plain", "rawjson", "quiet"] {
            assert!(Cli::try_parse_from(["manifold", "build", "--progress", ok]).is_ok());
        }
        let err = Cli::try_parse_from(["manifold", "build", "--progress", "fancy"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fancy") && err.contains("auto, tty, plain, rawjson, quiet"),
            "{err}"
        );
    }

    #[test]
    fn amend_may_be_repeated_as_with_docker() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "manifold", "manifest", "create", "l:1", "--amend", "a:1", "--amend", "b:1", "--amend",
            "c:1",
        ])
        .unwrap();
        match cli.command {
            Command::Manifest {
                command: ManifestCmd::Create { amend, sources, .. },
            } => assert!(amend && sources == ["a:1", "b:1", "c:1"]),
            other => panic!("{other:?}"),
        }
    }
}
