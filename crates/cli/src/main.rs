//! The `manifold` binary: commands, output formats, and the glue between the crates.

mod build;
mod cache;
mod lists;
mod local;
mod progress;
mod remote;

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
    /// 127.0.0.0/8 use plain HTTP already, as docker does; hosts in /etc/docker/daemon.json's
    /// insecure-registries are added.
    #[arg(
        long = "insecure-registry",
        global = true,
        value_name = "HOST",
        env = "MANIFOLD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,

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
        list: String,
        #[arg(required = true)]
        sources: Vec<String>,
        /// Add to a list that is already staged.
        #[arg(short, long)]
        amend: bool,
        /// Refuse sources that are lists instead of taking their platforms.
        #[arg(long)]
        no_flatten: bool,
        /// Reach the registries named here over plain HTTP or unverified TLS.
        #[arg(long)]
        insecure: bool,
        /// The list's type; by default Docker's when every source is a Docker v2 manifest, OCI
        /// otherwise.
        #[arg(long, value_enum)]
        format: Option<ListFormat>,
    },
    /// Set the platform of one entry of a staged list.
    Annotate {
        list: String,
        /// The entry, by the reference or digest it was added with.
        source: String,
        #[arg(long)]
        os: Option<String>,
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        variant: Option<String>,
        #[arg(long)]
        os_version: Option<String>,
        #[arg(long, value_delimiter = ',')]
        os_features: Vec<String>,
    },
    /// Show a staged list, or a list or manifest in a registry.
    Inspect {
        reference: String,
        /// Show every entry's manifest too.
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        insecure: bool,
    },
    /// Push a staged list: every entry's content is copied (or mounted) into the list's
    /// repository first, then the list is tagged. Prints the list's digest.
    Push {
        list: String,
        /// Remove the staged list after pushing.
        #[arg(short, long)]
        purge: bool,
        #[arg(long)]
        insecure: bool,
    },
    /// Remove staged lists.
    Rm {
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
        reference: String,
        /// Print the manifest or index exactly as stored.
        #[arg(long)]
        raw: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Merge images (tags or digests, from any repositories) into one index and push it to every
    /// -t tag, copying what each target repository lacks.
    Create {
        /// Where the index goes (repeatable).
        #[arg(short = 't', long = "tag", value_name = "REF")]
        tags: Vec<String>,
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
        #[arg(long, value_enum)]
        format: Option<ListFormat>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI archive (a tar of an OCI image layout), readable by skopeo, podman and docker 25+.
    Oci,
    /// A `docker save` archive for `docker load`: one entry per platform.
    Docker,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List images in the local store: name, tag, digest, platforms and size.
    #[command(visible_alias = "ls")]
    Images {
        /// Only images whose repository matches this name (e.g. busybox, localhost:5000/app).
        repository: Option<String>,
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
    Tag { source: String, target: String },
    /// Write images from the local store to an archive (OCI or docker-archive).
    Save {
        /// The file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = ArchiveKind::Oci)]
        format: ArchiveKind,
        /// Keep only these platforms (the best match for each); all when not given.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
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
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Push an image from the local store to the registry its name points at.
    Push {
        image: String,
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// List a repository's tags (all pages).
    Tags {
        repository: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// List a registry's repositories (all pages).
    Catalog {
        registry: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Delete a manifest from a registry. A tag is resolved first, and what it points at is
    /// deleted (with every tag on it): the command says which digest.
    Delete { image: String },
    /// Log in to a registry; writes docker's config.json (or its credential helper).
    Login {
        registry: String,
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
    Logout { registry: String },
    /// Build an image from a Dockerfile for one or more platforms, in parallel, natively or under
    /// QEMU emulation. The result goes to the local store unless --push or --output say otherwise.
    Build {
        /// The build context directory.
        #[arg(default_value = ".")]
        context: PathBuf,
        /// The Dockerfile (default: CONTEXT/Dockerfile).
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Target platforms, comma-separated (default: this machine's), e.g.
        /// linux/amd64,linux/arm64,linux/arm/v7.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Name and optionally tag the result (repeatable).
        #[arg(short, long = "tag")]
        tag: Vec<String>,
        /// KEY=VALUE build-time variables (repeatable).
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_arg: Vec<String>,
        /// The stage to build.
        #[arg(long)]
        target: Option<String>,
        /// Parse, plan and lint the Dockerfile without building; exit 1 on findings.
        #[arg(long)]
        check: bool,
        /// Format of --check findings.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Push the result to the registry in each -t name (one index over per-platform images).
        #[arg(long)]
        push: bool,
        /// Put the result in the local store (the default when no other output is given).
        #[arg(long)]
        load: bool,
        /// type=registry[,push-by-digest=true,name=REPO] | type=oci,dest=FILE |
        /// type=docker,dest=FILE | type=local,dest=DIR | type=tar,dest=FILE (repeatable).
        #[arg(short, long = "output", value_name = "SPEC")]
        output: Vec<String>,
        /// Write the digests and descriptor of the result as JSON to this file.
        #[arg(long, value_name = "FILE")]
        metadata_file: Option<PathBuf>,
        /// Run every step, ignoring the step cache.
        #[arg(long)]
        no_cache: bool,
        /// Check the registry for newer base images even when the store has them.
        #[arg(long)]
        pull: bool,
        /// auto, plain, tty, quiet or rawjson (JSON lines for tools).
        #[arg(long, default_value = "auto")]
        progress: String,
        /// Stage instances run at once (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// id=ID,src=FILE (or env=VAR): a secret for RUN --mount=type=secret; never stored.
        #[arg(long, value_name = "SPEC")]
        secret: Vec<String>,
        /// Export the build cache: type=registry,ref=REG/REPO:TAG[,mode=min|max][,compression=…]
        /// | type=local,dest=DIR[,mode=…] | type=inline (repeatable).
        #[arg(long = "cache-to", value_name = "SPEC")]
        cache_to: Vec<String>,
        /// Import a build cache: type=registry,ref=REG/REPO:TAG | type=local,src=DIR (repeatable,
        /// tried in order; a missing cache is a warning).
        #[arg(long = "cache-from", value_name = "SPEC")]
        cache_from: Vec<String>,
    },
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
        reference: String,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Copy an image between places: a registry reference, store:REF, oci:DIR[:NAME],
    /// oci-archive:FILE[:NAME], docker-archive:FILE[:NAME].
    Cp {
        source: String,
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
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Check every blob against its digest and every image for missing parts.
    Fsck {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
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

fn main() -> ExitCode {
    // Piped into `head`, a closed stdout ends us quietly, as it ends cat or grep, instead of a
    // panic from println!.
    // SAFETY: setting a signal disposition at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let root = cli.root.clone().unwrap_or_else(store::default_root);
    let mut insecure = cli.insecure_registries.clone();
    insecure.extend(insecure_from_flags(&cli.command));
    insecure.extend(insecure_from_daemon_json(std::path::Path::new(
        "/etc/docker/daemon.json",
    )));
    let options = registry::ClientOptions {
        insecure_registries: insecure,
        ..Default::default()
    };
    let env = transport::Env::new(root, options);
    match local::run(&cli, &env) {
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
}
