//! `manifold builder`: builders made of nodes, each node this machine (`local`) or a machine
//! reached over SSH that has manifold installed, and the platforms each node builds (natively
//! first, then under emulation). Builders live in `builders.json` in the user's config directory.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use oci::Platform;
use serde::{Deserialize, Serialize};

use crate::global::OutputFormat;

/// The name of the builder that always exists: one local node.
pub const DEFAULT: &str = "default";

#[derive(Subcommand, Debug)]
pub enum BuilderCmd {
    /// Create a builder, or add a node to one (--append).
    Create {
        /// local (this machine, the default) or ssh://[USER@]HOST[:PORT].
        endpoint: Option<String>,
        /// The builder's name (default: a generated one).
        #[arg(long)]
        name: Option<String>,
        /// The node's name (default: BUILDER0, BUILDER1, ...).
        #[arg(long)]
        node: Option<String>,
        /// Pin the platforms this node builds (comma-separated) instead of probing them.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Add the node to the existing builder NAME.
        #[arg(long)]
        append: bool,
        /// Make the builder the current one.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// List builders and their nodes; `*` marks the current builder.
    Ls {
        /// table, or json for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Show a builder's nodes: status, manifold version, native and emulated platforms.
    Inspect {
        /// The builder (default: the current one).
        name: Option<String>,
        /// Probe every node now (nodes are probed anyway; kept for buildx users' habits).
        #[arg(long)]
        bootstrap: bool,
        /// table, or json for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Make NAME the current builder (`MANIFOLD_BUILDER` overrides it per command).
    Use {
        /// The builder.
        name: String,
    },
    /// Remove a builder, or one node of it (--node).
    Rm {
        /// The builder.
        name: String,
        /// Remove only this node (the builder goes with its last node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Print what this machine can build, as JSON (run by other machines over SSH).
    #[command(hide = true)]
    Probe,
    /// Build for another machine: the conversation on standard input and output is described
    /// in nodes.rs (context by digest, result blobs on request); progress on standard error.
    #[command(hide = true)]
    NodeBuild(Box<NodeBuildArgs>),
}

/// What a node is asked to build; the same inputs the user gave `manifold build`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeBuildArgs {
    /// The platforms this node builds.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// KEY=VALUE build arguments, as the user gave them.
    #[arg(long = "build-arg")]
    pub build_arg: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Run every step.
    #[arg(long)]
    pub no_cache: bool,
    /// Check registries for newer base images.
    #[arg(long)]
    pub pull: bool,
    /// SOURCE_DATE_EPOCH of the user's build.
    #[arg(long)]
    pub source_date_epoch: Option<String>,
    /// --ssh specs (a remote node's agent is the forwarded one).
    #[arg(long)]
    pub ssh: Vec<String>,
    /// RUN steps' network.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Granted entitlements.
    #[arg(long)]
    pub allow: Vec<String>,
    /// Image labels.
    #[arg(long)]
    pub label: Vec<String>,
    /// Annotations.
    #[arg(long)]
    pub annotation: Vec<String>,
    /// /etc/hosts entries for RUN steps.
    #[arg(long)]
    pub add_host: Vec<String>,
    /// Stages whose steps run even when cached.
    #[arg(long)]
    pub no_cache_filter: Vec<String>,
    /// Registry caches to import (type=registry specs).
    #[arg(long)]
    pub cache_from: Vec<String>,
    /// Named contexts (docker-image:// specs).
    #[arg(long = "build-context")]
    pub build_context: Vec<String>,
}

/// One node of a builder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub name: String,
    /// `local` or `ssh://[USER@]HOST[:PORT]`.
    pub endpoint: String,
    /// Pinned with --platform; probed when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Builder {
    pub name: String,
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub builders: Vec<Builder>,
}

/// `$MANIFOLD_CONFIG`, else `$XDG_CONFIG_HOME/manifold`, else `~/.config/manifold`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MANIFOLD_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("manifold");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".config/manifold")
}

impl Config {
    fn path() -> PathBuf {
        config_dir().join("builders.json")
    }

    pub fn load() -> Result<Config> {
        let p = Self::path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is not a valid builders file; fix or remove it",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Written atomically: a temporary file renamed over the old one.
    fn save(&self) -> Result<()> {
        let p = Self::path();
        let dir = p.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut f = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("writing in {}", dir.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.as_file().sync_all()?;
        f.persist(&p)
            .with_context(|| format!("replacing {}", p.display()))?;
        Ok(())
    }

    /// Every builder, the implicit `default` (one local node) first unless redefined.
    pub fn all(&self) -> Vec<Builder> {
        let mut v = Vec::new();
        if !self.builders.iter().any(|b| b.name == DEFAULT) {
            v.push(Builder {
                name: DEFAULT.into(),
                nodes: vec![Node {
                    name: DEFAULT.into(),
                    endpoint: "local".into(),
                    platforms: Vec::new(),
                }],
            });
        }
        v.extend(self.builders.iter().cloned());
        v
    }

    /// `MANIFOLD_BUILDER`, else the one `builder use` chose, else `default`.
    pub fn current_name(&self) -> String {
        std::env::var("MANIFOLD_BUILDER")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.current.clone())
            .unwrap_or_else(|| DEFAULT.into())
    }

    pub fn find(&self, name: &str) -> Result<Builder> {
        let all = self.all();
        all.iter().find(|b| b.name == name).cloned().with_context(|| {
            format!(
                "no builder named {name:?}; builders: {} (create one with `manifold builder create --name {name} ENDPOINT`)",
                all.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Where a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Local,
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint> {
        if s == "local" || s.is_empty() {
            return Ok(Endpoint::Local);
        }
        let Some(rest) = s.strip_prefix("ssh://") else {
            bail!("endpoint {s:?}: use `local` or ssh://[USER@]HOST[:PORT]");
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("endpoint {s:?}: ssh://[USER@]HOST[:PORT] takes no path");
        }
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [v6addr]:port
            let (h, p) = h
                .split_once(']')
                .with_context(|| format!("endpoint {s:?}: unclosed ["))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            bail!("endpoint {s:?} names no host");
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .with_context(|| format!("endpoint {s:?}: port {p:?} is not a number"))?,
            ),
            None => None,
        };
        Ok(Endpoint::Ssh { user, host, port })
    }

    /// The ssh command line that runs `args` on the node (the system `ssh`, so users'
    /// ~/.ssh/config, agents and known_hosts apply; `MANIFOLD_SSH` replaces the program).
    pub fn ssh(&self, remote_args: &[String]) -> Option<Proc> {
        let Endpoint::Ssh { user, host, port } = self else {
            return None;
        };
        let program = std::env::var("MANIFOLD_SSH").unwrap_or_else(|_| "ssh".into());
        let mut words = program.split_whitespace();
        let mut cmd = Proc::new(words.next().unwrap_or("ssh"));
        cmd.args(words);
        cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
        if let Some(p) = port {
            cmd.args(["-p", &p.to_string()]);
        }
        if let Some(u) = user {
            cmd.args(["-l", u]);
        }
        cmd.arg("--").arg(host);
        // The remote side is a shell command line: quote each word.
        let line = remote_args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        cmd.arg(line);
        Some(cmd)
    }
}

pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What a node says it can build.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub version: String,
    /// Runs these natively.
    pub native: Vec<String>,
    /// Runs these through QEMU's binfmt_misc handlers.
    pub emulated: Vec<String>,
}

/// What this machine can build.
pub fn probe_local() -> Probe {
    let host = Platform::host();
    let mut native = vec![host.short()];
    let mut emulated = Vec::new();
    for (p, mode) in runtime::emulation::runnable() {
        let s = p.short();
        if native.contains(&s) {
            continue;
        }
        if mode.is_emulated() {
            emulated.push(s);
        } else {
            native.push(s);
        }
    }
    Probe {
        version: env!("CARGO_PKG_VERSION").into(),
        native,
        emulated,
    }
}

/// A node's state: what it can build, or why it cannot be reached.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node: Node,
    pub probe: Result<Probe, String>,
}

impl NodeStatus {
    /// The platforms the node builds, best first: pinned ones, else native then emulated.
    pub fn platforms(&self) -> Vec<String> {
        if !self.node.platforms.is_empty() {
            return self.node.platforms.clone();
        }
        match &self.probe {
            Ok(p) => p.native.iter().chain(&p.emulated).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Does the node run `platform` natively (pinned platforms count as native)?
    pub fn native(&self, platform: &Platform) -> bool {
        let list = if !self.node.platforms.is_empty() {
            &self.node.platforms
        } else {
            match &self.probe {
                Ok(p) => &p.native,
                Err(_) => return false,
            }
        };
        list.iter().any(|s| same_platform(s, platform))
    }

    pub fn can(&self, platform: &Platform) -> bool {
        self.platforms().iter().any(|s| same_platform(s, platform))
    }
}

fn same_platform(s: &str, p: &Platform) -> bool {
    Platform::parse(s).is_ok_and(|q| q.normalized().same_target(&p.clone().normalized()))
}

/// Asks a node what it can build: in-process for `local`, over SSH otherwise.
pub fn probe(node: &Node) -> NodeStatus {
    let probe = match Endpoint::parse(&node.endpoint) {
        Err(e) => Err(e.to_string()),
        Ok(Endpoint::Local) => Ok(probe_local()),
        Ok(ep) => probe_ssh(&ep),
    };
    NodeStatus {
        node: node.clone(),
        probe,
    }
}

fn probe_ssh(ep: &Endpoint) -> Result<Probe, String> {
    let mut cmd = ep
        .ssh(&["manifold".into(), "builder".into(), "probe".into()])
        .ok_or("not an ssh endpoint")?;
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    if !out.status.success() {
        return Err(ssh_failure(ep, &String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "the node answered something that is not a manifold probe ({e}); is manifold on the node's PATH and of a compatible version?"
        )
    })
}

/// Turns ssh's stderr into an error that says what to do.
pub fn ssh_failure(ep: &Endpoint, stderr: &str) -> String {
    let Endpoint::Ssh { host, port, .. } = ep else {
        return stderr.trim().to_string();
    };
    let text = stderr.trim();
    if text.contains("Host key verification failed") || text.contains("No ED25519 host key") {
        let scan = match port {
            Some(p) => format!("ssh-keyscan -p {p} {host} >> ~/.ssh/known_hosts"),
            None => format!("ssh-keyscan {host} >> ~/.ssh/known_hosts"),
        };
        return format!(
            "the host key of {host} is not known (ssh: {text}); check it and add it, for example with `{scan}`, or connect once with ssh"
        );
    }
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return format!(
            "the host key of {host} has changed since it was recorded in known_hosts: {text}"
        );
    }
    if text.contains("command not found") || text.contains("manifold: not found") {
        return format!(
            "manifold is not installed on {host} (or not on the PATH of its SSH sessions): {text}"
        );
    }
    if text.contains("Permission denied") {
        return format!("ssh to {host} was refused: {text}; check the user and that your key is in the node's authorized_keys (or loaded in your agent)");
    }
    format!("ssh to {host} failed: {text}")
}

pub fn run(cmd: &BuilderCmd) -> Result<ExitCode> {
    match cmd {
        // Dispatched to node_build.rs before this: that handler builds, which needs this module.
        BuilderCmd::NodeBuild(_) => bail!("builder node-build is dispatched by main.rs"),
        BuilderCmd::Probe => {
            println!("{}", serde_json::to_string(&probe_local())?);
            Ok(ExitCode::SUCCESS)
        }
        BuilderCmd::Create {
            endpoint,
            name,
            node,
            platform,
            append,
            use_it,
        } => create(
            endpoint.as_deref(),
            name.as_deref(),
            node.as_deref(),
            platform,
            *append,
            *use_it,
        ),
        BuilderCmd::Ls { format } => ls(*format),
        BuilderCmd::Inspect { name, format, .. } => inspect(name.as_deref(), *format),
        BuilderCmd::Use { name } => {
            let mut cfg = Config::load()?;
            cfg.find(name)?;
            cfg.current = Some(name.clone());
            cfg.save()?;
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        BuilderCmd::Rm { name, node } => rm(name, node.as_deref()),
    }
}

fn valid_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("{what} {s:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn create(
    endpoint: Option<&str>,
    name: Option<&str>,
    node: Option<&str>,
    platforms: &[String],
    append: bool,
    use_it: bool,
) -> Result<ExitCode> {
    let endpoint = endpoint.unwrap_or("local");
    Endpoint::parse(endpoint)?;
    let mut pinned = Vec::new();
    for p in platforms {
        let parsed = Platform::parse(p).with_context(|| format!("--platform {p:?}"))?;
        pinned.push(parsed.normalized().short());
    }
    let mut cfg = Config::load()?;
    let builder_name = match name {
        Some(n) => n.to_string(),
        None if append => bail!("--append needs --name BUILDER: which builder gets the node"),
        None => (0..)
            .map(|i| format!("builder{i}"))
            .find(|n| !cfg.all().iter().any(|b| &b.name == n))
            .unwrap_or_else(|| "builder".into()),
    };
    valid_name("builder name", &builder_name)?;
    if builder_name == DEFAULT {
        bail!("{DEFAULT:?} is the built-in builder of this machine; choose another name");
    }
    let existing = cfg.builders.iter().position(|b| b.name == builder_name);
    if existing.is_some() && !append {
        bail!("a builder named {builder_name:?} exists; use --append to add a node to it, or another --name");
    }
    if existing.is_none() && append {
        bail!("no builder named {builder_name:?} to append to; drop --append to create it");
    }
    let nodes_len = existing.map(|i| cfg.builders[i].nodes.len()).unwrap_or(0);
    let node_name = node
        .map(str::to_string)
        .unwrap_or_else(|| format!("{builder_name}{nodes_len}"));
    valid_name("node name", &node_name)?;
    let new = Node {
        name: node_name.clone(),
        endpoint: endpoint.to_string(),
        platforms: pinned,
    };
    match existing {
        Some(i) => {
            let b = &mut cfg.builders[i];
            if b.nodes.iter().any(|n| n.name == node_name) {
                bail!("builder {builder_name:?} already has a node named {node_name:?}; choose another --node");
            }
            b.nodes.push(new);
        }
        None => cfg.builders.push(Builder {
            name: builder_name.clone(),
            nodes: vec![new],
        }),
    }
    if use_it {
        cfg.current = Some(builder_name.clone());
    }
    cfg.save()?;
    println!("{builder_name}");
    Ok(ExitCode::SUCCESS)
}

fn rm(name: &str, node: Option<&str>) -> Result<ExitCode> {
    let mut cfg = Config::load()?;
    if name == DEFAULT && !cfg.builders.iter().any(|b| b.name == DEFAULT) {
        bail!("the built-in {DEFAULT:?} builder cannot be removed");
    }
    let i = cfg
        .builders
        .iter()
        .position(|b| b.name == name)
        .with_context(|| format!("no builder named {name:?}"))?;
    match node {
        Some(n) => {
            let b = &mut cfg.builders[i];
            let before = b.nodes.len();
            b.nodes.retain(|x| x.name != n);
            if b.nodes.len() == before {
                bail!(
                    "builder {name:?} has no node named {n:?}; it has {}",
                    b.nodes
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if b.nodes.is_empty() {
                cfg.builders.remove(i);
            }
        }
        None => {
            cfg.builders.remove(i);
        }
    }
    if cfg.current.as_deref() == Some(name) && !cfg.builders.iter().any(|b| b.name == name) {
        cfg.current = None;
    }
    cfg.save()?;
    Ok(ExitCode::SUCCESS)
}

/// Probes every node of `builders` at once (SSH round trips overlap).
pub fn probe_all(builders: &[Builder]) -> Vec<Vec<NodeStatus>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = builders
            .iter()
            .map(|b| b.nodes.iter().map(|n| s.spawn(move || probe(n))).collect())
            .collect();
        handles
            .into_iter()
            .zip(builders)
            .map(|(hs, b)| {
                hs.into_iter()
                    .zip(&b.nodes)
                    .map(|(h, n)| {
                        h.join().unwrap_or_else(|_| NodeStatus {
                            node: n.clone(),
                            probe: Err("the probe panicked".into()),
                        })
                    })
                    .collect()
            })
            .collect()
    })
}

fn status_word(s: &NodeStatus) -> &'static str {
    if s.probe.is_ok() {
        "running"
    } else {
        "error"
    }
}

#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    endpoint: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    /// Pinned with --platform.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pinned: &'a [String],
    native: Vec<String>,
    emulated: Vec<String>,
    platforms: Vec<String>,
}

fn node_json(s: &NodeStatus) -> NodeJson<'_> {
    let (native, emulated) = match &s.probe {
        Ok(p) => (p.native.clone(), p.emulated.clone()),
        Err(_) => (Vec::new(), Vec::new()),
    };
    NodeJson {
        name: &s.node.name,
        endpoint: &s.node.endpoint,
        status: status_word(s),
        error: s.probe.as_ref().err().map(String::as_str),
        version: s.probe.as_ref().ok().map(|p| p.version.as_str()),
        pinned: &s.node.platforms,
        native,
        emulated,
        platforms: s.platforms(),
    }
}

#[derive(Serialize)]
struct BuilderJson<'a> {
    name: &'a str,
    current: bool,
    nodes: Vec<NodeJson<'a>>,
}

/// Platforms for display: pinned ones marked `*` as buildx does.
fn platforms_text(s: &NodeStatus) -> String {
    let ps = s.platforms();
    let pinned: BTreeSet<&String> = s.node.platforms.iter().collect();
    ps.iter()
        .map(|p| {
            if pinned.contains(p) {
                format!("{p}*")
            } else {
                p.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ls(format: OutputFormat) -> Result<ExitCode> {
    let cfg = Config::load()?;
    let current = cfg.current_name();
    let builders = cfg.all();
    let statuses = probe_all(&builders);
    if format == OutputFormat::Json {
        let v: Vec<BuilderJson> = builders
            .iter()
            .zip(&statuses)
            .map(|(b, ss)| BuilderJson {
                name: &b.name,
                current: b.name == current,
                nodes: ss.iter().map(node_json).collect(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "NAME/NODE".to_string(),
        "ENDPOINT".into(),
        "STATUS".into(),
        "PLATFORMS".into(),
    ]];
    for (b, ss) in builders.iter().zip(&statuses) {
        let mark = if b.name == current { " *" } else { "" };
        rows.push([
            format!("{}{mark}", b.name),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for s in ss {
            rows.push([
                format!("  \\_ {}", s.node.name),
                s.node.endpoint.clone(),
                status_word(s).into(),
                platforms_text(s),
            ]);
        }
    }
    print_table(&rows);
    for ss in &statuses {
        for s in ss {
            if let Err(e) = &s.probe {
                eprintln!("warning: node {}: {e}", s.node.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[[String; 4]]) {
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line = (0..4)
            .map(|i| format!("{:w$}", r[i], w = widths[i]))
            .collect::<Vec<_>>()
            .join("   ");
        println!("{}", line.trim_end());
    }
}

fn inspect(name: Option<&str>, format: OutputFormat) -> Result<ExitCode> {
    let cfg = Config::load()?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| cfg.current_name());
    let b = cfg.find(&name)?;
    let statuses = probe_all(std::slice::from_ref(&b))
        .pop()
        .unwrap_or_default();
    if format == OutputFormat::Json {
        let v = BuilderJson {
            name: &b.name,
            current: b.name == cfg.current_name(),
            nodes: statuses.iter().map(node_json).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Name:          {}", b.name);
    for s in &statuses {
        println!();
        println!("Name:          {}", s.node.name);
        println!("Endpoint:      {}", s.node.endpoint);
        println!("Status:        {}", status_word(s));
        match &s.probe {
            Ok(p) => {
                println!("Version:       manifold {}", p.version);
                println!("Native:        {}", p.native.join(", "));
                println!("Emulated:      {}", p.emulated.join(", "));
            }
            Err(e) => println!("Error:         {e}"),
        }
        if !s.node.platforms.is_empty() {
            println!("Pinned:        {}", s.node.platforms.join(", "));
        }
        println!("Platforms:     {}", platforms_text(s));
    }
    let failed = statuses.iter().any(|s| s.probe.is_err());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Which node builds each platform: a node that runs it natively (pinned counts as native),
/// else one that emulates it, preferring the local node. Fails before any step when a platform
/// has no node, listing what each node builds.
pub fn assign(statuses: &[NodeStatus], platforms: &[Platform]) -> Result<Vec<(Platform, usize)>> {
    let mut out = Vec::new();
    for p in platforms {
        let local_first = |i: &usize| {
            (
                Endpoint::parse(&statuses[*i].node.endpoint).ok() != Some(Endpoint::Local),
                *i,
            )
        };
        let mut native: Vec<usize> = (0..statuses.len())
            .filter(|i| statuses[*i].native(p))
            .collect();
        native.sort_by_key(local_first);
        let mut any: Vec<usize> = (0..statuses.len())
            .filter(|i| statuses[*i].can(p))
            .collect();
        any.sort_by_key(local_first);
        match native.first().or(any.first()) {
            Some(i) => out.push((p.clone(), *i)),
            None => {
                let lines: Vec<String> = statuses
                    .iter()
                    .map(|s| match &s.probe {
                        Err(e) if s.node.platforms.is_empty() => {
                            format!("{} ({}): unreachable: {e}", s.node.name, s.node.endpoint)
                        }
                        _ => format!(
                            "{} ({}): {}",
                            s.node.name,
                            s.node.endpoint,
                            s.platforms().join(", ")
                        ),
                    })
                    .collect();
                bail!(
                    "no node of this builder can build {}; its nodes build:\n  {}",
                    p.short(),
                    lines.join("\n  ")
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("local").unwrap(), Endpoint::Local);
        assert_eq!(
            Endpoint::parse("ssh://bob@arm.example:2222").unwrap(),
            Endpoint::Ssh {
                user: Some("bob".into()),
                host: "arm.example".into(),
                port: Some(2222)
            }
        );
        assert_eq!(
            Endpoint::parse("ssh://[::1]:22").unwrap(),
            Endpoint::Ssh {
                user: None,
                host: "::1".into(),
                port: Some(22)
            }
        );
        assert!(Endpoint::parse("tcp://x").is_err());
        assert!(Endpoint::parse("ssh://h:port").is_err());
        assert!(Endpoint::parse("ssh://").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("linux/arm64"), "linux/arm64");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    fn status(name: &str, endpoint: &str, native: &[&str], emulated: &[&str]) -> NodeStatus {
        NodeStatus {
            node: Node {
                name: name.into(),
                endpoint: endpoint.into(),
                platforms: Vec::new(),
            },
            probe: Ok(Probe {
                version: "0".into(),
                native: native.iter().map(|s| s.to_string()).collect(),
                emulated: emulated.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn native_nodes_win_then_local_emulation() {
        let nodes = vec![
            status(
                "here",
                "local",
                &["linux/amd64"],
                &["linux/arm64", "linux/riscv64"],
            ),
            status("pi", "ssh://pi", &["linux/arm64", "linux/arm/v7"], &[]),
        ];
        let p = |s: &str| Platform::parse(s).unwrap();
        let a = assign(
            &nodes,
            &[
                p("linux/amd64"),
                p("linux/arm64"),
                p("linux/riscv64"),
                p("linux/arm/v7"),
            ],
        )
        .unwrap();
        let names: Vec<_> = a
            .iter()
            .map(|(_, i)| nodes[*i].node.name.as_str())
            .collect();
        assert_eq!(names, ["here", "pi", "here", "pi"]);
        let err = assign(&nodes, &[p("linux/s390x")]).unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("pi (ssh://pi): linux/arm64"),
            "{err}"
        );
    }
}
