//! Building on a builder's nodes. The local nodes' platforms are built in this process, exactly
//! as a plain `manifold build` builds them; each SSH node runs `manifold builder node-build`
//! over the system `ssh`, all at once. The conversation with an SSH node, on its standard input
//! and output (its progress lines come back on standard error, shown with the node's name):
//!
//! 1. here → node: a JSON line naming the context by digest (the tar `Context::write_tar` makes,
//!    after `.dockerignore`) and each `--build-context` directory or OCI layout the same way,
//!    with the lengths of what follows: the Dockerfile and the secrets (held in memory on the
//!    node, never written to its disk).
//! 2. node → here: `have` (it kept that one from an earlier build) or `need`, a line for the
//!    context and then one for each named context. The named contexts it needs follow, then the
//!    context; each is checked against its digest before the node keeps it. The node starts
//!    building once the named contexts are in, while the context still streams: a step that
//!    reads the context waits for it (`ContextGate`).
//! 3. The node builds into its own store, then sends a JSON line: the index and every blob it
//!    reaches (digest and size).
//! 4. here → node: the blobs this store lacks; the node sends them in that order, each one
//!    verified here against its digest (a node's answer is untrusted input).
//!
//! One index over every platform is then written here, in the order asked for: the same index a
//! single-machine build makes. A node keeps reading its standard input to the end: when this side
//! goes away (a failure elsewhere, Ctrl-C, a dropped connection), the node sees end-of-file and
//! kills its build, so no node's work outlives the build.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use ::engine::cache::CachedStep;
use ::engine::engine::Built;
use anyhow::{bail, Context as _, Result};
use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, Index, Platform};
use serde::{Deserialize, Serialize};
use store::Layout;

use crate::builder::{assign, Builder, Endpoint, NodeStatus};
use crate::transfer::Origins;

/// The longest JSON line either side accepts from the other.
pub(crate) const MAX_LINE: u64 = 64 << 20;

/// What every node is asked to build, besides its platforms.
pub struct Request<'a> {
    pub context: &'a Path,
    pub dockerfile: &'a Path,
    pub build_arg: &'a [String],
    pub target: Option<&'a str>,
    pub no_cache: bool,
    pub pull: bool,
    /// (id, value): sent inside the stream, never written to a disk on either side.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// `--ssh` agents (id → socket here): forwarded to SSH nodes with the ssh client's agent
    /// forwarding (the local node's build uses them directly).
    pub ssh: &'a BTreeMap<String, PathBuf>,
    /// `--network` and `--allow`, as the user gave them.
    pub network: &'a str,
    pub allow: &'a [String],
    pub quiet: bool,
    /// `--label`, `--annotation`, `--add-host`, `--no-cache-filter`, as given: each node
    /// applies them as a local build does (index-level annotations are applied here).
    pub labels: &'a [String],
    pub annotations: &'a [String],
    pub add_hosts: &'a [String],
    pub no_cache_filter: &'a [String],
    /// `--cache-from` specs of type=registry: each SSH node imports them itself.
    pub cache_from: &'a [String],
    /// `--build-context` specs: SSH nodes pull the images and get directories and OCI layouts
    /// in the stream, by digest, as the context.
    pub build_contexts: &'a [String],
    /// Bring back the steps each SSH node used and their layers (for `--cache-to`).
    pub steps: bool,
}

/// Should this builder's nodes do the work (rather than this process)? A builder of one local
/// node with no pinned platforms is this machine, as `default` is.
pub fn uses_nodes(b: &Builder) -> bool {
    !(b.nodes.len() == 1
        && b.nodes[0].platforms.is_empty()
        && Endpoint::parse(&b.nodes[0].endpoint).ok() == Some(Endpoint::Local))
}

/// Does the builder have a node other than this machine?
pub fn has_remote(b: &Builder) -> bool {
    b.nodes
        .iter()
        .any(|n| Endpoint::parse(&n.endpoint).ok() != Some(Endpoint::Local))
}

/// A build of some platforms on this machine, in this process, as the named local node (its
/// progress lines carry the name); `cancel` stops it when another node fails.
pub type LocalBuild<'a> =
    dyn Fn(&[Platform], &str, runtime::sandbox::Cancel) -> Result<(Built, Origins)> + Sync + 'a;

/// Builds `platforms` on the builder's nodes: the local nodes' platforms in this process through
/// `local`, the others on their SSH nodes, all at once. Returns each platform's manifest
/// descriptor (now in `store`) and the index over them, in the order of `platforms`.
pub fn build(
    store: &Layout,
    builder: &Builder,
    platforms: &[Platform],
    req: &Request<'_>,
    local: &LocalBuild<'_>,
) -> Result<(Built, Origins)> {
    // Nodes with pinned platforms need no probe: an unreachable one fails when it is started.
    let probed = crate::builder::probe_all(&[Builder {
        name: builder.name.clone(),
        nodes: builder
            .nodes
            .iter()
            .filter(|n| n.platforms.is_empty())
            .cloned()
            .collect(),
    }])
    .pop()
    .unwrap_or_default();
    let statuses: Vec<NodeStatus> = builder
        .nodes
        .iter()
        .map(|n| match probed.iter().find(|s| s.node.name == n.name) {
            Some(s) => s.clone(),
            None => NodeStatus {
                node: n.clone(),
                probe: Ok(crate::builder::Probe::default()),
            },
        })
        .collect();
    let assigned = assign(&statuses, platforms)?;
    // Node index → its platforms, in the order asked for.
    let mut jobs: Vec<(usize, Vec<Platform>)> = Vec::new();
    for (p, i) in &assigned {
        match jobs.iter_mut().find(|(n, _)| n == i) {
            Some((_, ps)) => ps.push(p.clone()),
            None => jobs.push((*i, vec![p.clone()])),
        }
    }
    for (i, ps) in &jobs {
        let status = &statuses[*i];
        if !req.quiet {
            eprintln!(
                "[{}] building {} on {}",
                status.node.name,
                shorts(ps),
                status.node.endpoint
            );
        }
    }
    // Local nodes make one build here (one engine, one step cache).
    let is_local =
        |i: &usize| Endpoint::parse(&statuses[*i].node.endpoint).ok() == Some(Endpoint::Local);
    let mut here: Option<(String, Vec<Platform>)> = None;
    for (i, ps) in jobs.iter().filter(|(i, _)| is_local(i)) {
        let (names, all) = here.get_or_insert_with(Default::default);
        if !names.is_empty() {
            names.push('+');
        }
        names.push_str(&statuses[*i].node.name);
        all.extend(ps.iter().cloned());
    }
    let remote: Vec<&(usize, Vec<Platform>)> = jobs.iter().filter(|(i, _)| !is_local(i)).collect();
    // Packed by the first session that needs it, while the ssh connections come up.
    let packed = LazyPacked {
        dir: req.context,
        cell: std::sync::OnceLock::new(),
    };
    let contexts = req
        .build_contexts
        .iter()
        .map(|spec| engine::contexts::BuildContext::parse(spec).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let named = NamedPacked::all(&contexts);
    let head = Head::new(req)?;
    let cancel = runtime::sandbox::Cancel::default();
    let (local_built, remote_roots) = std::thread::scope(|s| -> Result<_> {
        let mut running = Vec::new();
        for (i, ps) in &remote {
            match start(s, &statuses[*i], ps, req, &head, (&packed, &named), store) {
                Ok(r) => running.push(r),
                Err(e) => {
                    for r in &mut running {
                        r.cancel();
                    }
                    cancel.cancel();
                    return Err(e);
                }
            }
        }
        // This machine's platforms start once the SSH nodes are on their way.
        let local_job = here.as_ref().map(|(name, ps)| {
            let cancel = cancel.clone();
            (
                name.clone(),
                shorts(ps),
                s.spawn(move || local(ps, name, cancel)),
            )
        });
        let local_built = wait_all(&mut running, local_job, &cancel)?;
        let mut roots = Vec::new();
        for r in &mut running {
            let o = r.result.take().context("a node's result went missing")?;
            if !req.quiet {
                eprintln!("[{}] done: {}", r.node, o.stats);
            }
            roots.push((r.node.clone(), o.root, o.steps));
        }
        Ok((local_built, roots))
    })?;
    // Every node succeeded: each platform's image is in the store now.
    let mut found: Vec<(Platform, Descriptor)> = Vec::new();
    let mut own: Vec<(Platform, BTreeSet<Digest>)> = Vec::new();
    let (mut steps, origins) = match local_built {
        Some((b, o)) => {
            for i in b.images {
                own.push((i.platform.clone(), i.own_layers));
                found.push((i.platform, i.manifest));
            }
            (b.steps, o)
        }
        None => (Vec::new(), Origins::new()),
    };
    for (node, root, node_steps) in &remote_roots {
        steps.extend(node_steps.iter().cloned());
        let bytes = store.read_blob(&root.digest)?;
        let doc = Document::<Index>::parse(bytes)
            .with_context(|| format!("node {node} answered with something that is not an index"))?;
        for d in &doc.value().manifests {
            let p = d.platform.clone().with_context(|| {
                format!("node {node} answered with an index entry without a platform")
            })?;
            found.push((p, d.clone()));
        }
    }
    let mut images = Vec::new();
    for p in platforms {
        let d = found
            .iter()
            .find(|(q, _)| q.same_target(p))
            .map(|(_, d)| d.clone())
            .with_context(|| format!("no node sent an image for {}", p.short()))?;
        let config = match store.read_manifest(&d)? {
            oci::Manifest::Image(m) => m.value().config.digest.clone(),
            oci::Manifest::Index(_) => bail!("a node sent an index where an image belongs"),
        };
        let own_layers = match own.iter().find(|(q, _)| q.same_target(p)) {
            Some((_, o)) => o.clone(),
            // Which layers a remote node made is not sent: an output's compression= applies
            // to all of its layers.
            None => match store.read_blob(&config) {
                Ok(b) => Document::<oci::ImageConfig>::parse(b)
                    .map(|c| c.value().rootfs.diff_ids.iter().cloned().collect())
                    .unwrap_or_default(),
                Err(_) => Default::default(),
            },
        };
        images.push(::engine::engine::PlatformImage {
            platform: p.clone(),
            manifest: d,
            config,
            own_layers,
        });
    }
    // The same index the engine writes for a build on one machine.
    let mut index = Index::new(
        mt::OCI_INDEX,
        images.iter().map(|i| i.manifest.clone()).collect(),
    );
    for spec in req.annotations {
        use ::engine::engine::AnnotationScope;
        let (scope, k, v) = AnnotationScope::parse(spec).map_err(anyhow::Error::msg)?;
        match scope {
            AnnotationScope::Index => {
                index.annotations.insert(k, v);
            }
            AnnotationScope::ManifestDescriptor => {
                for d in &mut index.manifests {
                    d.annotations.insert(k.clone(), v.clone());
                }
            }
            AnnotationScope::Manifest => {}
        }
    }
    let index = Document::new(index);
    store.put_bytes(index.bytes())?;
    Ok((
        Built {
            images,
            index: index.descriptor(mt::OCI_INDEX),
            // Every node's steps (the SSH nodes' only when asked for, for --cache-to).
            steps,
        },
        origins,
    ))
}

fn shorts(ps: &[Platform]) -> String {
    ps.iter().map(|p| p.short()).collect::<Vec<_>>().join(", ")
}

type LocalJob<'s> = (
    String,
    String,
    ScopedJoinHandle<'s, Result<(Built, Origins)>>,
);

/// Waits for every node; the first failure stops the others and is returned.
fn wait_all(
    running: &mut [Running<'_>],
    mut local: Option<LocalJob<'_>>,
    cancel: &runtime::sandbox::Cancel,
) -> Result<Option<(Built, Origins)>> {
    let mut failure: Option<anyhow::Error> = None;
    let mut local_built = None;
    let join_local = |local: &mut Option<LocalJob<'_>>, failure: &mut Option<anyhow::Error>| {
        let (name, ps, h) = local.take()?;
        match h.join() {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| {
                    e.context(format!(
                        "node {name} (local) failed while building {ps}; the other nodes were stopped and nothing was stored or pushed"
                    ))
                });
                None
            }
            Err(_) => {
                failure.get_or_insert_with(|| {
                    anyhow::anyhow!("node {name} (local): the build thread panicked")
                });
                None
            }
        }
    };
    let mut pending: Vec<usize> = (0..running.len()).collect();
    while !pending.is_empty() || local.is_some() {
        let mut still = Vec::new();
        for k in pending {
            let r = &mut running[k];
            match r.child.try_wait() {
                Ok(Some(st)) if st.success() => {
                    if let Err(e) = r.finish() {
                        failure.get_or_insert(e);
                    }
                }
                Ok(Some(st)) => {
                    let ours = r.join_session();
                    failure.get_or_insert_with(|| r.failed(&format!("{st}"), ours.as_ref()));
                }
                // Our side of the conversation failed (a bad answer, a blob that does not match
                // its digest) while the node still runs.
                Ok(None) if r.session.as_ref().is_some_and(|h| h.is_finished()) => {
                    match r.session.take().map(|h| h.join()) {
                        Some(Ok(Err(e))) => {
                            // A node that failed ends our side too: its own exit and last lines
                            // say more than the end of its output.
                            let mut exited = None;
                            for _ in 0..50 {
                                if let Ok(Some(st)) = r.child.try_wait() {
                                    exited = Some(st);
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            let e = match exited {
                                Some(st) if !st.success() => {
                                    let _ = r.finish();
                                    r.failed(&format!("{st}"), Some(&e))
                                }
                                _ => e.context(format!(
                                    "node {} ({}) building {}; the other nodes were stopped and nothing was stored or pushed",
                                    r.node, r.endpoint, r.platforms
                                )),
                            };
                            failure.get_or_insert(e);
                        }
                        Some(Ok(Ok(v))) => {
                            r.result = Some(v);
                            still.push(k);
                        }
                        _ => {
                            failure
                                .get_or_insert_with(|| r.failed("its I/O thread panicked", None));
                        }
                    }
                }
                Ok(None) => still.push(k),
                Err(e) => {
                    failure.get_or_insert_with(|| r.failed(&e.to_string(), None));
                }
            }
        }
        pending = still;
        if local.as_ref().is_some_and(|(_, _, h)| h.is_finished()) {
            local_built = join_local(&mut local, &mut failure);
        }
        if let Some(e) = failure {
            // The local build stops at once: its running steps are killed.
            cancel.cancel();
            for k in &pending {
                // Closing its input tells the node to kill its build; killing ssh ends the rest.
                running[*k].cancel();
            }
            let _ = join_local(&mut local, &mut None);
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(local_built)
}

/// What every SSH node is sent besides the context: the Dockerfile and the secrets.
struct Head {
    dockerfile: Vec<u8>,
    secrets: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn new(req: &Request<'_>) -> Result<Head> {
        Ok(Head {
            dockerfile: std::fs::read(req.dockerfile)
                .with_context(|| format!("reading the Dockerfile {}", req.dockerfile.display()))?,
            secrets: req.secrets.clone(),
        })
    }
}

/// The first line of the conversation (here → node).
#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) context: Digest,
    pub(crate) context_size: u64,
    pub(crate) dockerfile: u64,
    /// (id, length), the values following the Dockerfile in this order.
    pub(crate) secrets: Vec<(String, u64)>,
    /// `--build-context` directories and OCI layouts, sent as the context is (by digest).
    #[serde(default)]
    pub(crate) named: Vec<NamedContext>,
}

/// A named context's directory as the node receives it.
#[derive(Serialize, Deserialize)]
pub(crate) struct NamedContext {
    pub(crate) name: String,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// For an OCI layout: what follows its directory in the spec (`""`, `:TAG` or `@DIGEST`).
    pub(crate) layout: Option<String>,
}

/// The node's result (node → here): the index and every blob it reaches.
#[derive(Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) root: Descriptor,
    pub(crate) blobs: Vec<(Digest, u64)>,
    /// The steps the node's build used (by cache key), whose layers it can send too.
    #[serde(default)]
    pub(crate) steps: Vec<(String, CachedStep)>,
}

/// The blobs this side lacks (here → node).
#[derive(Serialize, Deserialize)]
pub(crate) struct Want {
    pub(crate) want: Vec<Digest>,
}

/// The context as every SSH node gets it: the tar `Context::write_tar` makes, known by its
/// digest so a node that kept it needs nothing sent.
struct Packed {
    dir: PathBuf,
    digest: Digest,
    size: u64,
}

impl Packed {
    fn new(dir: &Path) -> Result<Packed> {
        let mut w = oci::DigestWriter::new(std::io::sink(), oci::Algorithm::Sha256);
        Self::write(dir, &mut w)?;
        let (_, digest, size) = w.finish();
        Ok(Packed {
            dir: dir.to_path_buf(),
            digest,
            size,
        })
    }

    fn write(dir: &Path, w: &mut dyn Write) -> Result<()> {
        let ctx = engine::context::Context::open(dir)?;
        let mut b = tar::Builder::new(w);
        ctx.write_tar(&mut b)?;
        b.into_inner()?.flush()?;
        Ok(())
    }

    /// Sends the context again, checking it is still the one named by its digest.
    fn send(&self, w: &mut dyn Write) -> Result<()> {
        let mut d = oci::DigestWriter::new(
            Capped {
                inner: w,
                left: self.size,
            },
            oci::Algorithm::Sha256,
        );
        let r = Self::write(&self.dir, &mut d);
        let (_, digest, size) = d.finish();
        if r.is_err() || digest != self.digest || size != self.size {
            bail!(
                "the build context {} changed while it was sent; run the build again",
                self.dir.display()
            );
        }
        Ok(())
    }
}

/// The context, packed once by the first session that needs it.
struct LazyPacked<'a> {
    dir: &'a Path,
    cell: std::sync::OnceLock<std::result::Result<Packed, String>>,
}

impl LazyPacked<'_> {
    fn get(&self) -> Result<&Packed> {
        self.cell
            .get_or_init(|| Packed::new(self.dir).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("packing the build context: {e}"))
    }
}

/// A `--build-context` directory or OCI layout, packed once for every SSH node.
struct NamedPacked<'a> {
    name: String,
    layout: Option<String>,
    packed: LazyPacked<'a>,
}

impl<'a> NamedPacked<'a> {
    /// The named contexts an SSH node needs sent (images it pulls itself).
    fn all(contexts: &'a [engine::contexts::BuildContext]) -> Vec<NamedPacked<'a>> {
        use engine::contexts::ContextSource;
        contexts
            .iter()
            .filter_map(|c| {
                let (dir, layout) = match &c.source {
                    ContextSource::Local(dir) => (dir, None),
                    ContextSource::OciLayout { dir, tag, digest } => (
                        dir,
                        Some(match (tag, digest) {
                            (_, Some(d)) => format!("@{d}"),
                            (Some(t), None) => format!(":{t}"),
                            (None, None) => String::new(),
                        }),
                    ),
                    ContextSource::Image(_) => return None,
                };
                Some(NamedPacked {
                    name: c.name.clone(),
                    layout,
                    packed: LazyPacked {
                        dir,
                        cell: std::sync::OnceLock::new(),
                    },
                })
            })
            .collect()
    }
}

/// A writer that refuses to pass more than `left` bytes.
struct Capped<'a> {
    inner: &'a mut dyn Write,
    left: u64,
}

impl Write for Capped<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.left {
            return Err(std::io::Error::other("more than announced"));
        }
        let n = self.inner.write(b)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Figures of one node's conversation, for its `done` line.
#[derive(Default)]
struct Stats {
    context_kept: bool,
    sent: u64,
    blobs: usize,
    blobs_sent: usize,
    received: u64,
    context_secs: f64,
    build_secs: f64,
    result_secs: f64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hs = crate::output::human_size;
        write!(
            f,
            "context {} ({} sent, {:.2}s), built in {:.2}s, received {} of results ({} of {} blobs, {:.2}s)",
            if self.context_kept { "kept on the node" } else { "sent" },
            hs(self.sent),
            self.context_secs,
            self.build_secs,
            hs(self.received),
            self.blobs_sent,
            self.blobs,
            self.result_secs
        )
    }
}

/// One SSH node at work.
struct Running<'s> {
    node: String,
    endpoint: String,
    platforms: String,
    child: Child,
    /// The conversation, then the result: the node's index (its blobs are in the store).
    session: Option<ScopedJoinHandle<'s, Result<Outcome>>>,
    result: Option<Outcome>,
    stderr: Option<ScopedJoinHandle<'s, std::io::Result<()>>>,
    /// The last lines the node printed, for the error.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Our end of its standard input, held open until it is done.
    stdin: Arc<Mutex<Option<std::process::ChildStdin>>>,
}

impl Running<'_> {
    /// The node ended with `how`; `ours` is what our side of the conversation found, kept when
    /// it is a verdict on what the node sent (a blob that does not match its digest) rather than
    /// the end of its output. Which of the two is seen first is a race.
    fn failed(&self, how: &str, ours: Option<&anyhow::Error>) -> anyhow::Error {
        let tail: Vec<String> = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let found = match ours {
            Some(e) if !ended_early(e) => format!(": {e:#}"),
            _ => String::new(),
        };
        anyhow::anyhow!(
            "node {} ({}) failed while building {} ({how}){found}; the other nodes were stopped and nothing was stored or pushed. Its last lines:\n  {}",
            self.node,
            self.endpoint,
            self.platforms,
            tail.join("\n  ")
        )
    }

    /// After the node exited: our side's error, if it had one.
    fn join_session(&mut self) -> Option<anyhow::Error> {
        if let Ok(mut s) = self.stdin.lock() {
            s.take();
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        match self.session.take()?.join() {
            Ok(Ok(v)) => {
                self.result = Some(v);
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow::anyhow!("an I/O thread panicked")),
        }
    }

    /// After the node exited: the conversation's result.
    fn finish(&mut self) -> Result<()> {
        if let Some(e) = self.join_session() {
            return Err(e.context(format!("node {} ({})", self.node, self.endpoint)));
        }
        match self.result {
            Some(_) => Ok(()),
            None => bail!("node {} ended without sending its result", self.node),
        }
    }

    fn cancel(&mut self) {
        if let Ok(mut s) = self.stdin.lock() {
            s.take();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        if let Some(h) = self.session.take() {
            let _ = h.join();
        }
    }
}

fn node_args(ps: &[Platform], req: &Request<'_>) -> Vec<String> {
    let mut args = vec![
        "manifold".to_string(),
        "builder".into(),
        "node-build".into(),
        "--platform".into(),
        ps.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ];
    for a in req.build_arg {
        // A bare KEY takes its value here, where the user's environment is.
        let kv = if a.contains('=') {
            a.clone()
        } else {
            format!("{a}={}", std::env::var(a).unwrap_or_default())
        };
        args.extend(["--build-arg".into(), kv]);
    }
    if let Some(t) = req.target {
        args.extend(["--target".into(), t.into()]);
    }
    if req.no_cache {
        args.push("--no-cache".into());
    }
    if req.pull {
        args.push("--pull".into());
    }
    for (flag, values) in [
        ("--label", req.labels),
        ("--annotation", req.annotations),
        ("--add-host", req.add_hosts),
        ("--no-cache-filter", req.no_cache_filter),
        ("--cache-from", req.cache_from),
    ] {
        for v in values {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    // Images the node pulls itself; directories and layouts go in the stream.
    for spec in req.build_contexts {
        if engine::contexts::BuildContext::parse(spec)
            .is_ok_and(|c| matches!(c.source, engine::contexts::ContextSource::Image(_)))
        {
            args.extend(["--build-context".to_string(), spec.clone()]);
        }
    }
    if let Ok(e) = std::env::var("SOURCE_DATE_EPOCH") {
        args.extend(["--source-date-epoch".into(), e]);
    }
    if req.network != "default" {
        args.extend(["--network".into(), req.network.to_string()]);
    }
    for e in req.allow {
        args.extend(["--allow".into(), e.clone()]);
    }
    // The node sees the forwarded agent as its own SSH_AUTH_SOCK.
    for id in req.ssh.keys() {
        args.extend(["--ssh".into(), id.clone()]);
    }
    args
}

fn start<'s>(
    s: &'s Scope<'s, '_>,
    status: &NodeStatus,
    ps: &[Platform],
    req: &Request<'_>,
    head: &'s Head,
    (packed, named): (&'s LazyPacked<'s>, &'s [NamedPacked<'s>]),
    store: &'s Layout,
) -> Result<Running<'s>> {
    let endpoint = Endpoint::parse(&status.node.endpoint)?;
    // One agent can be forwarded over an SSH connection.
    let mut socks: Vec<&PathBuf> = req.ssh.values().collect();
    socks.dedup();
    if socks.len() > 1 {
        bail!(
            "node {}: --ssh names {} different agents, and one agent can be forwarded to an SSH node; use one agent for every id",
            status.node.name,
            socks.len()
        );
    }
    let Some(mut cmd) = endpoint.ssh(&node_args(ps, req)) else {
        bail!(
            "node {} is this machine: its platforms are built here, not over ssh",
            status.node.name
        );
    };
    if let Some(sock) = socks.first() {
        // The ssh client forwards the agent its SSH_AUTH_SOCK names (-A must come before the
        // host: it is inserted at the front of the arguments by a second command).
        let program = cmd.get_program().to_owned();
        let rest: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut with_a = std::process::Command::new(program);
        with_a.arg("-A").args(rest).env("SSH_AUTH_SOCK", sock);
        cmd = with_a;
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting node {} ({})",
                status.node.name, status.node.endpoint
            )
        })?;
    let stdin = Arc::new(Mutex::new(child.stdin.take()));
    let stdout = child.stdout.take().context("node stdout")?;
    let stderr = child.stderr.take().context("node stderr")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let session = {
        let stdin = stdin.clone();
        let with_steps = req.steps;
        s.spawn(move || session(&stdin, stdout, head, (packed, named), store, with_steps))
    };
    // Progress, with the node's name.
    let stderr = {
        let tail = tail.clone();
        let name = status.node.name.clone();
        let quiet = req.quiet;
        s.spawn(move || -> std::io::Result<()> {
            for line in BufReader::new(stderr).lines() {
                let line = line?;
                if !quiet {
                    eprintln!("[{name}] {line}");
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > 20 {
                        t.pop_front();
                    }
                }
            }
            Ok(())
        })
    };
    Ok(Running {
        node: status.node.name.clone(),
        endpoint: status.node.endpoint.clone(),
        platforms: shorts(ps),
        child,
        session: Some(session),
        result: None,
        stderr: Some(stderr),
        tail,
        stdin,
    })
}

/// A writer on the node's standard input that does not keep it open: `cancel` closes the
/// original, and the node sees end-of-file once this one is dropped too.
fn input(stdin: &Mutex<Option<std::process::ChildStdin>>) -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let g = stdin
        .lock()
        .map_err(|_| anyhow::anyhow!("the node's input lock is poisoned"))?;
    match g.as_ref() {
        Some(s) => Ok(std::fs::File::from(s.as_fd().try_clone_to_owned()?)),
        None => bail!("the build was cancelled"),
    }
}

/// The other side closed the conversation before it was over.
#[derive(Debug)]
pub(crate) struct Ended(String);

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the other side ended before {}", self.0)
    }
}

impl std::error::Error for Ended {}

/// Whether `e` only says that the other side went away (its own exit says why).
fn ended_early(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    e.chain().any(|c| {
        c.is::<Ended>()
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof))
    })
}

/// One line from the other side, without its newline; end-of-file is an error.
pub(crate) fn read_line(r: &mut impl BufRead, what: &str) -> Result<String> {
    let mut line = String::new();
    r.take(MAX_LINE)
        .read_line(&mut line)
        .with_context(|| format!("reading {what}"))?;
    if !line.ends_with('\n') {
        return Err(Ended(what.to_string()).into());
    }
    line.pop();
    Ok(line)
}

/// Our side of the conversation with one SSH node (see the module's comment).
fn session(
    stdin: &Mutex<Option<std::process::ChildStdin>>,
    stdout: ChildStdout,
    head: &Head,
    (packed, named): (&LazyPacked<'_>, &[NamedPacked<'_>]),
    store: &Layout,
    with_steps: bool,
) -> Result<Outcome> {
    let mut stats = Stats::default();
    let started = Instant::now();
    let packed = packed.get()?;
    let named_packed = named
        .iter()
        .map(|n| {
            n.packed
                .get()
                .with_context(|| format!("--build-context {}", n.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut from = BufReader::with_capacity(1 << 20, stdout);
    {
        let sent = AtomicU64::new(0);
        let mut w = std::io::BufWriter::with_capacity(1 << 20, Counting(input(stdin)?, &sent));
        let hello = Hello {
            context: packed.digest.clone(),
            context_size: packed.size,
            dockerfile: head.dockerfile.len() as u64,
            secrets: head
                .secrets
                .iter()
                .map(|(id, v)| (id.clone(), v.len() as u64))
                .collect(),
            named: named
                .iter()
                .zip(&named_packed)
                .map(|(n, p)| NamedContext {
                    name: n.name.clone(),
                    digest: p.digest.clone(),
                    size: p.size,
                    layout: n.layout.clone(),
                })
                .collect(),
        };
        serde_json::to_writer(&mut w, &hello)?;
        w.write_all(b"\n")?;
        w.write_all(&head.dockerfile)?;
        for (_, v) in &head.secrets {
            w.write_all(v)?;
        }
        w.flush()?;
        // One answer for the context, then one for each named context; the named ones it
        // lacks go first (the node reads them before it starts), then the context.
        let mut needs = Vec::new();
        for what in std::iter::once("the context".to_string())
            .chain(named.iter().map(|n| format!("--build-context {}", n.name)))
        {
            needs.push(match read_line(&mut from, &format!("the node's answer about {what}"))?.as_str() {
                "have" => false,
                "need" => true,
                other => bail!("the node answered {other:?} where have or need belongs; is it running the same manifold version as this machine?"),
            });
        }
        for (p, _) in named_packed.iter().zip(&needs[1..]).filter(|(_, n)| **n) {
            p.send(&mut w)?;
        }
        stats.context_kept = !needs[0];
        if needs[0] {
            packed.send(&mut w)?;
        }
        w.flush()?;
        // Dropping our copy leaves the node's input open only through `stdin`.
        drop(w);
        stats.sent = sent.load(Relaxed);
    }
    stats.context_secs = started.elapsed().as_secs_f64();
    let line = read_line(&mut from, "the node's result")?;
    stats.build_secs = started.elapsed().as_secs_f64() - stats.context_secs;
    let got = Instant::now();
    let answer: Answer =
        serde_json::from_str(&line).context("the node's result is not the expected JSON")?;
    let root = answer.root;
    if !mt::is_index(&root.media_type) || !answer.blobs.contains(&(root.digest.clone(), root.size))
    {
        bail!("the node's result names no index among its blobs");
    }
    let mut wanted: BTreeSet<(Digest, u64)> = answer.blobs.iter().cloned().collect();
    if with_steps {
        for (_, step) in &answer.steps {
            if let Some((l, _)) = &step.layer {
                wanted.insert((l.digest.clone(), l.size));
            }
        }
    }
    let want: Vec<(Digest, u64)> = wanted
        .into_iter()
        .filter(|(d, size)| store.blob_size(d) != Some(*size))
        .collect();
    {
        let mut w = input(stdin)?;
        serde_json::to_writer(
            &mut w,
            &Want {
                want: want.iter().map(|(d, _)| d.clone()).collect(),
            },
        )?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    for (d, size) in &want {
        let mut r = (&mut from).take(*size);
        store
            .ingest(&mut r, Some((d, Some(*size))))
            .with_context(|| format!("receiving blob {d} from the node"))?;
        // Made here meanwhile (ingest skips what is there): the node's copy still has to pass.
        std::io::copy(&mut r, &mut std::io::sink())?;
        stats.received += size;
    }
    stats.blobs = answer.blobs.len();
    stats.blobs_sent = want.len();
    // Everything the index reaches is here now.
    let mut seen = BTreeMap::new();
    let mut missing = Vec::new();
    store.walk(&root, &mut seen, &mut missing)?;
    if !store.has_blob(&root.digest) || !missing.is_empty() {
        bail!(
            "the node's result is incomplete: {} blobs its index reaches were not sent",
            missing.len().max(1)
        );
    }
    stats.result_secs = got.elapsed().as_secs_f64();
    // Steps whose layer is not here (the node no longer had it) are not exported.
    let steps = match with_steps {
        true => answer
            .steps
            .into_iter()
            .filter(|(_, s)| {
                s.layer
                    .as_ref()
                    .is_none_or(|(l, _)| store.blob_size(&l.digest) == Some(l.size))
            })
            .collect(),
        false => Vec::new(),
    };
    Ok(Outcome { root, steps, stats })
}

/// What an SSH node's conversation brought: its index, the steps it used (when asked for), and
/// its figures.
struct Outcome {
    root: Descriptor,
    steps: Vec<(String, CachedStep)>,
    stats: Stats,
}

/// A writer that counts what passes.
struct Counting<'a, W>(W, &'a AtomicU64);

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Reads `--secret` specs into memory for the nodes (src=FILE or env=VAR).
pub fn read_secrets(specs: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for spec in specs {
        let mut id = None;
        let mut value = None;
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or(("id", part));
            match k.trim() {
                "id" => id = Some(v.trim().to_string()),
                "src" | "source" => {
                    value = Some(
                        std::fs::read(v.trim())
                            .with_context(|| format!("--secret {spec:?}: reading {v}"))?,
                    )
                }
                "env" => {
                    value = Some(
                        std::env::var_os(v.trim())
                            .with_context(|| format!("--secret {spec:?}: ${v} is not set"))?
                            .as_bytes()
                            .to_vec(),
                    )
                }
                _ => {}
            }
        }
        let id = id.with_context(|| format!("--secret {spec:?} needs id=ID"))?;
        if id.contains('/') || id.is_empty() {
            bail!("--secret id {id:?} must be a plain name");
        }
        let value =
            value.with_context(|| format!("--secret {spec:?} needs src=FILE or env=VAR"))?;
        out.push((id, value));
    }
    Ok(out)
}
