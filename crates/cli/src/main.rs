//! The `manifold` binary: commands, output formats, and the glue between the crates.

mod archive;
mod binfmt;
mod build;
mod builder;
mod buildview;
mod cache;
mod cp;
mod fsck;
mod global;
mod images;
mod lists;
mod node_build;
mod nodes;
mod output;
mod platforms;
mod progress;
mod prune;
mod remote;
mod run;
mod serve;
mod ssh;
mod stores;
mod transfer;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use transport::Env;

use builder::BuilderCmd;
use global::Cli;
use lists::{ImagetoolsCmd, ManifestCmd};

/// Build, ship and inspect multi-platform container images, with no daemon.
#[derive(Parser, Debug)]
#[command(name = "manifold", version, about, long_about = None)]
struct Manifold {
    #[command(flatten)]
    global: Cli,

    #[command(subcommand)]
    command: Command,
}

// Each variant holds its command's flags, an Args struct (or subcommand enum) in the module of
// the handler that takes it; the help line is the variant's.
// Parsed once per run: the size of the build variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List images in the local store: name, tag, digest, platforms and size.
    #[command(visible_alias = "ls")]
    Images(images::ImagesArgs),
    /// Remove image names from the local store and reclaim what nothing else uses.
    #[command(visible_alias = "rmi")]
    Rm(images::RmArgs),
    /// Give an image in the local store another name.
    Tag(images::TagArgs),
    /// Write images from the local store to an archive (OCI or docker-archive).
    Save(archive::SaveArgs),
    /// Load images from an archive (OCI or docker-archive, plain or compressed) or an OCI layout
    /// directory into the local store.
    Load(archive::LoadArgs),
    /// Pull an image from a registry into the local store.
    Pull(remote::PullArgs),
    /// Push an image from the local store to the registry its name points at.
    Push(remote::PushArgs),
    /// List a repository's tags (all pages).
    Tags(remote::TagsArgs),
    /// List a registry's repositories (all pages).
    Catalog(remote::CatalogArgs),
    /// Delete a manifest from a registry. A tag is resolved first, and what it points at is
    /// deleted (with every tag on it): the command says which digest.
    Delete(remote::DeleteArgs),
    /// Log in to a registry; writes docker's config.json (or its credential helper).
    Login(remote::LoginArgs),
    /// Remove a registry's stored login.
    Logout(remote::LogoutArgs),
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
    Digest(lists::DigestArgs),
    /// Copy an image between places: a registry reference, store:REF, oci:DIR[:NAME],
    /// oci-archive:FILE[:NAME], docker-archive:FILE[:NAME].
    Cp(cp::CpArgs),
    /// Remove blobs that no image uses and leftovers of interrupted writes.
    Prune(prune::PruneArgs),
    /// Disk usage: images in the store, the build cache, RUN cache mounts, unpacked snapshots.
    Du(prune::DuArgs),
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
    Fsck(fsck::FsckArgs),
    /// Run a command in an image (from the store, else pulled), in the sandbox RUN steps use;
    /// other platforms under QEMU. Nothing outlives the command. Exits with its exit code.
    Run(run::RunArgs),
    /// Show, install and remove QEMU's binfmt_misc handlers for running other architectures.
    Binfmt(binfmt::BinfmtArgs),
}

/// Runs the command with its handler; the global options go along.
fn dispatch(cli: &Cli, command: &Command, env: &Env) -> Result<ExitCode> {
    let root = env.store_root.as_path();
    match command {
        // node-build builds, so it lives apart from the builder configuration it uses.
        Command::Builder {
            command: BuilderCmd::NodeBuild(a),
        } => node_build::run(cli, env, a),
        Command::Builder { command } => builder::run(command),
        Command::Images(a) => images::images(root, a),
        Command::Rm(a) => images::rm(cli, root, a),
        Command::Tag(a) => images::tag(cli, root, a),
        Command::Save(a) => archive::save(cli, env, a),
        Command::Load(a) => archive::load(cli, root, a),
        Command::Cp(a) => cp::cp(cli, env, a),
        Command::Pull(a) => remote::pull(cli, env, a),
        Command::Push(a) => remote::push(cli, env, a),
        Command::Tags(a) => remote::tags(env, a),
        Command::Catalog(a) => remote::catalog(env, a),
        Command::Delete(a) => remote::delete(cli, env, a),
        Command::Login(a) => remote::login(env, a),
        Command::Logout(a) => remote::logout(env, a),
        Command::Registry { command } => serve::run(cli, root, command),
        Command::Manifest { command } => match command {
            ManifestCmd::Create(a) => lists::manifest_create(cli, env, a),
            ManifestCmd::Annotate(a) => lists::manifest_annotate(cli, env, a),
            ManifestCmd::Inspect(a) => lists::manifest_inspect(env, a),
            ManifestCmd::Push(a) => lists::manifest_push(cli, env, a),
            ManifestCmd::Rm(a) => lists::manifest_rm(env, a),
        },
        Command::Imagetools { command } => match command {
            ImagetoolsCmd::Inspect(a) => lists::imagetools_inspect(env, a),
            ImagetoolsCmd::Create(a) => lists::imagetools_create(cli, env, a),
        },
        Command::Build(args) => build::run(cli, env, args),
        Command::Digest(a) => lists::digest_cmd(cli, env, a),
        Command::Prune(a) => prune::prune(root, a),
        Command::Du(a) => prune::du(root, a),
        Command::Fsck(a) => fsck::fsck(root, a),
        Command::Run(a) => run::run(cli, env, a),
        Command::Binfmt(a) => binfmt::run(cli, a),
    }
}

/// `manifest ... --insecure` marks every registry the command names as insecure, as docker does.
fn insecure_from_flags(cmd: &Command) -> Vec<String> {
    let names: Vec<&String> = match cmd {
        Command::Manifest {
            command: ManifestCmd::Create(a),
        } if a.insecure => std::iter::once(&a.list).chain(a.sources.iter()).collect(),
        Command::Manifest {
            command: ManifestCmd::Annotate(a),
        } if a.insecure => vec![&a.list, &a.source],
        Command::Manifest {
            command: ManifestCmd::Inspect(a),
        } if a.insecure => vec![&a.reference],
        Command::Manifest {
            command: ManifestCmd::Push(a),
        } if a.insecure => vec![&a.list],
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
    let Manifold {
        global: cli,
        command,
    } = Manifold::parse();
    let root = cli.root.clone().unwrap_or_else(store::default_root);
    let mut insecure = cli.insecure_registries.clone();
    insecure.extend(insecure_from_flags(&command));
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
    let result = dispatch(&cli, &command, &env);
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
        walk(&Manifold::command(), "manifold", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }

    #[test]
    fn progress_takes_only_known_modes() {
        use clap::Parser;
        for ok in ["auto", "tty", "plain", "rawjson", "quiet"] {
            assert!(Manifold::try_parse_from(["manifold", "build", "--progress", ok]).is_ok());
        }
        let err = Manifold::try_parse_from(["manifold", "build", "--progress", "fancy"])
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
        let cli = Manifold::try_parse_from([
            "manifold", "manifest", "create", "l:1", "--amend", "a:1", "--amend", "b:1", "--amend",
            "c:1",
        ])
        .unwrap();
        match cli.command {
            Command::Manifest {
                command: ManifestCmd::Create(a),
            } => assert!(a.amend && a.sources == ["a:1", "b:1", "c:1"]),
            other => panic!("{other:?}"),
        }
    }
}
