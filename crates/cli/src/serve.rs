//! `manifold registry serve` and `manifold registry gc`: the embedded registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::global::{Cli, OutputFormat};

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum AuthMode {
    Basic,
    Token,
}

// Parsed once per run; the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum RegistryCmd {
    /// Serve an OCI registry (distribution spec v1.1): a registry directory of its own
    /// (`--root DIR`), or the local image store (`--store`), so what `manifold build` made is
    /// pullable at once.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: std::net::SocketAddr,
        /// Serve the local image store instead of a registry directory.
        #[arg(long)]
        store: bool,
        /// Run GC this often while serving (e.g. 1h, 30m); off when not given.
        #[arg(long, value_parser = parse_duration)]
        gc_every: Option<Duration>,
        /// Blobs younger than this are never collected (uploads waiting for their manifest).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        gc_grace: Duration,
        /// Require logins from this htpasswd file (bcrypt entries, `htpasswd -B`).
        #[arg(long, value_name = "FILE")]
        htpasswd: Option<PathBuf>,
        /// How clients log in: basic (HTTP Basic on every request) or token (Bearer tokens from
        /// the built-in endpoint /token, as Docker Hub does).
        #[arg(long, value_enum, default_value_t = AuthMode::Basic, requires = "htpasswd")]
        auth: AuthMode,
        /// USER:REPOSITORY:pull|push (repeatable). USER `*` is anyone logged in, `anonymous`
        /// anyone; REPOSITORY is a name, PREFIX/* or *. Without rules, users may push anywhere.
        #[arg(long = "allow", value_name = "RULE", requires = "htpasswd")]
        allow: Vec<server::auth::Rule>,
        /// Serve HTTPS with this certificate (PEM, chain included) ...
        #[arg(
            long,
            value_name = "FILE",
            requires = "tls_key",
            conflicts_with = "tls"
        )]
        tls_cert: Option<PathBuf>,
        /// ... and this private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// `auto`: make a private CA and a server certificate under the registry directory
        /// (kept and reused), and print where clients put the CA.
        #[arg(long, value_name = "auto", value_parser = ["auto"])]
        tls: Option<String>,
        /// More names for the --tls auto certificate (127.0.0.1, localhost and the --addr IP are
        /// in it already).
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// Be a pull-through mirror of this registry (e.g. https://registry-1.docker.io): serve
        /// what is stored, fetch and verify what is not. Pushes are refused.
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        /// Upstream login for --proxy.
        #[arg(long, requires = "proxy", env = "MANIFOLD_PROXY_USERNAME")]
        proxy_username: Option<String>,
        /// The upstream's password (prefer the environment variable).
        #[arg(
            long,
            requires = "proxy",
            env = "MANIFOLD_PROXY_PASSWORD",
            hide_env_values = true
        )]
        proxy_password: Option<String>,
        /// How long a mirrored tag is served before it is checked upstream again.
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        proxy_tag_ttl: Duration,
    },
    /// Delete blobs no manifest reaches (older than --grace), links to them and abandoned
    /// uploads. Safe while `serve` runs on the same directory.
    Gc {
        /// Collect in the local store (as `serve --store` serves it) instead of --root.
        #[arg(long)]
        store: bool,
        /// Blobs younger than this stay (uploads for manifests not yet pushed).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        grace: Duration,
        /// Upload sessions untouched this long are removed.
        #[arg(long, value_parser = parse_duration, default_value = "168h")]
        upload_ttl: Duration,
        /// Also drop manifests that only a digest names (no tag reaches them), as
        /// distribution's `garbage-collect --delete-untagged` does.
        #[arg(long)]
        delete_untagged: bool,
        /// table, or json for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n * mult))
}

/// The directory to serve and how names map: `--store` serves the store, otherwise `--root DIR`
/// names a registry directory and must be given on the command line.
fn target(cli: &Cli, store_root: &Path, store: bool) -> Result<(PathBuf, server::Naming)> {
    if store {
        return Ok((store_root.to_path_buf(), server::Naming::Store));
    }
    let from_env = std::env::var_os("MANIFOLD_ROOT").map(PathBuf::from);
    match &cli.root {
        Some(r) if Some(r) != from_env.as_ref() => Ok((r.clone(), server::Naming::Raw)),
        _ => bail!(
            "say what to serve: --root DIR for a registry directory of its own, or --store for the \
             local image store"
        ),
    }
}

pub fn run(cli: &Cli, store_root: &Path, cmd: &RegistryCmd) -> Result<ExitCode> {
    match cmd {
        RegistryCmd::Serve {
            addr,
            store,
            gc_every,
            gc_grace,
            htpasswd,
            auth,
            allow,
            tls_cert,
            tls_key,
            tls,
            tls_names,
            proxy,
            proxy_username,
            proxy_password,
            proxy_tag_ttl,
        } => {
            let (root, naming) = target(cli, store_root, *store)?;
            let tls = match (tls_cert, tls_key, tls) {
                (Some(cert), Some(key), _) => Some(server::tls::TlsConfig::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (_, _, Some(_)) => {
                    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
                    if !addr.ip().is_unspecified() {
                        names.push(addr.ip().to_string());
                    }
                    names.extend(tls_names.iter().cloned());
                    Some(server::tls::TlsConfig::Auto { names })
                }
                _ => None,
            };
            let config = server::Config {
                addr: *addr,
                root: root.clone(),
                naming,
                gc_every: *gc_every,
                gc_grace: *gc_grace,
                auth: htpasswd.as_ref().map(|h| server::auth::AuthConfig {
                    htpasswd: h.clone(),
                    mode: match auth {
                        AuthMode::Basic => server::auth::Mode::Basic,
                        AuthMode::Token => server::auth::Mode::Token,
                    },
                    rules: allow.clone(),
                }),
                tls,
                proxy: proxy.as_ref().map(|url| server::proxy::ProxyConfig {
                    url: url.clone(),
                    username: proxy_username.clone(),
                    password: proxy_password.clone(),
                    tag_ttl: *proxy_tag_ttl,
                }),
            };
            server::serve(config, |r| {
                if let Some(ca) = &r.ca {
                    let host = if r.addr.ip().is_unspecified() {
                        format!("HOST:{}", r.addr.port())
                    } else {
                        r.addr.to_string()
                    };
                    eprintln!(
                        "TLS with a private CA ({}); give it to clients (docker, containerd, manifold read this path):\n  \
                         mkdir -p /etc/docker/certs.d/{host} && cp {} /etc/docker/certs.d/{host}/ca.crt",
                        ca.display(),
                        ca.display()
                    );
                }
                if let Some(p) = proxy {
                    eprintln!("mirroring {p} (tags re-checked after {}s)", proxy_tag_ttl.as_secs());
                }
                eprintln!(
                    "serving {} ({}) on {}://{}/v2/",
                    root.display(),
                    if naming == server::Naming::Store {
                        "the local image store"
                    } else {
                        "registry directory"
                    },
                    if r.tls { "https" } else { "http" },
                    r.addr
                );
            })
            .with_context(|| format!("registry on {addr} failed"))?;
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Gc {
            store,
            grace,
            upload_ttl,
            delete_untagged,
            format,
        } => {
            let (root, naming) = target(cli, store_root, *store)?;
            let s = server::Storage::open(&root, naming)
                .with_context(|| format!("cannot open {}", root.display()))?;
            let r = s
                .gc(*grace, *upload_ttl, *delete_untagged)
                .map_err(|e| anyhow::anyhow!("gc of {} failed: {}", root.display(), e.message))?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string(&r)?),
                OutputFormat::Table => println!(
                    "untagged {} manifests; removed {} blobs ({} bytes), {} stale links, {} abandoned uploads; kept {} blobs younger than {}s",
                    r.manifests_untagged,
                    r.blobs_removed,
                    r.bytes_freed,
                    r.links_removed,
                    r.uploads_removed,
                    r.blobs_kept_young,
                    grace.as_secs()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
