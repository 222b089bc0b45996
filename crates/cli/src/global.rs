//! What every command gets: the global options and the output formats several commands share.
//! A leaf: handlers import it, it imports no other module of the CLI.

use std::path::PathBuf;

use clap::ValueEnum;

/// The global options (`--root`, `--quiet`, `--insecure-registry`), given before or after the
/// subcommand.
#[derive(clap::Args, Debug)]
pub struct Cli {
    /// Where the local image store lives (an OCI image layout).
    #[arg(long, global = true, env = "MANIFOLD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Print less: only results and errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,

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
    pub insecure_registries: Vec<String>,

    /// Per-registry settings in buildkitd.toml's shape (`[registry."docker.io"] mirrors = [...]`,
    /// `http`, `insecure`, `ca`, `keypair`). Default: registries.toml in manifold's config dir,
    /// when it exists.
    #[arg(
        long = "registry-config",
        global = true,
        env = "MANIFOLD_REGISTRY_CONFIG",
        value_name = "FILE"
    )]
    pub registry_config: Option<PathBuf>,
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
