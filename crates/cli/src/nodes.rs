//! Building on a builder's nodes. Each node gets the build context (after `.dockerignore`), the
//! Dockerfile and the secrets as one tar stream on the standard input of `manifold builder
//! node-build` (over the system `ssh` for remote nodes, a child process for `local` ones), builds
//! its platforms, and answers with an OCI archive on standard output while its progress lines
//! come back on standard error, shown with the node's name. The archives are loaded into the
//! local store and one index is written over every platform, in the order asked for: the same
//! index a single-machine build makes.
//!
//! A node keeps reading its standard input after the tar: when the local side goes away (a
//! failure elsewhere, Ctrl-C, a dropped connection), the node sees end-of-file and kills its
//! build, so no node's work outlives the build.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use oci::media_type as mt;
use oci::{Descriptor, Document, Index, Platform};
use store::{CopyOptions, Layout, Source, TarSource};

use crate::builder::{assign, Builder, Endpoint, NodeBuildArgs, NodeStatus};
use crate::Cli;

/// Entries under this directory of the tar stream are not part of the context.
const NODE_DIR: &str = ".manifold-node";

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
    /// forwarding, passed as they are to local ones.
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
}

/// Should this builder's nodes do the work (rather than this process)? A builder of one local
/// node with no pinned platforms is this machine, as `default` is.
pub fn uses_nodes(b: &Builder) -> bool {
    !(b.nodes.len() == 1
        && b.nodes[0].platforms.is_empty()
        && Endpoint::parse(&b.nodes[0].endpoint).ok() == Some(Endpoint::Local))
}

/// Builds `platforms` on the builder's nodes; returns each platform's manifest descriptor (now in
/// `store`) and the index over them, in the order of `platforms`.
pub fn build(
    store: &Layout,
    builder: &Builder,
    platforms: &[Platform],
    req: &Request<'_>,
) -> Result<::engine::engine::Built> {
    let statuses = crate::builder::probe_all(std::slice::from_ref(builder))
        .pop()
        .unwrap_or_default();
    let assigned = assign(&statuses, platforms)?;
    // Node index → its platforms, in the order asked for.
    let mut jobs: Vec<(usize, Vec<Platform>)> = Vec::new();
    for (p, i) in &assigned {
        match jobs.iter_mut().find(|(n, _)| n == i) {
            Some((_, ps)) => ps.push(p.clone()),
            None => jobs.push((*i, vec![p.clone()])),
        }
    }
    // Named and marked as the sandbox's state directories are, so `prune` removes it when a
    // killed build leaves it behind.
    let scratch = tempfile::Builder::new()
        .prefix("manifold-run-nodes-")
        .tempdir()
        .context("creating a scratch directory")?;
    let _ = runtime::leftovers::mark(scratch.path());
    let mut running = Vec::new();
    for (k, (i, ps)) in jobs.iter().enumerate() {
        let status = &statuses[*i];
        if !req.quiet {
            eprintln!(
                "[{}] building {} on {}",
                status.node.name,
                ps.iter().map(|p| p.short()).collect::<Vec<_>>().join(", "),
                status.node.endpoint
            );
        }
        running.push(start(
            status,
            ps,
            req,
            &scratch.path().join(format!("{k}.tar")),
        )?);
    }
    // Wait for all; the first failure cancels the rest.
    let mut failure: Option<anyhow::Error> = None;
    let mut pending: Vec<usize> = (0..running.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for k in pending {
            let r = &mut running[k];
            match r.child.try_wait() {
                Ok(Some(st)) if st.success() => r.finish_io()?,
                Ok(Some(st)) => {
                    let _ = r.finish_io();
                    failure.get_or_insert_with(|| r.failed(&format!("{st}")));
                }
                Ok(None) => still.push(k),
                Err(e) => {
                    failure.get_or_insert_with(|| r.failed(&e.to_string()));
                }
            }
        }
        pending = still;
        if failure.is_some() {
            for k in &pending {
                // Closing its input tells the node to kill its build; killing ssh ends the rest.
                running[*k].cancel();
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Every node succeeded: load the archives, then write the index.
    let mut found: Vec<(Platform, Descriptor)> = Vec::new();
    for r in &running {
        if !req.quiet {
            use std::sync::atomic::Ordering::Relaxed;
            eprintln!(
                "[{}] done: sent {} of context, received {} of results",
                r.node,
                crate::local::human_size(r.sent.load(Relaxed)),
                crate::local::human_size(r.received.load(Relaxed))
            );
        }
        let src = TarSource::open(&r.archive)
            .with_context(|| format!("reading the result of node {}", r.node))?;
        let root = src
            .entries()?
            .into_iter()
            .next()
            .map(|(_, d)| d)
            .with_context(|| format!("node {} sent an archive with no image", r.node))?;
        store::copy(&src, store, &root, &CopyOptions::default())
            .with_context(|| format!("loading the result of node {}", r.node))?;
        let bytes = store.read_blob(&root.digest)?;
        let doc = Document::<Index>::parse(bytes).with_context(|| {
            format!(
                "node {} answered with something that is not an index",
                r.node
            )
        })?;
        for d in &doc.value().manifests {
            let p = d.platform.clone().with_context(|| {
                format!(
                    "node {} answered with an index entry without a platform",
                    r.node
                )
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
        // Which layers the node made is not sent: an output's compression= applies to all.
        let own_layers = match store.read_blob(&config) {
            Ok(b) => Document::<oci::ImageConfig>::parse(b)
                .map(|c| c.value().rootfs.diff_ids.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Default::default(),
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
    Ok(::engine::engine::Built {
        images,
        index: index.descriptor(mt::OCI_INDEX),
        // The nodes' steps stay in their own caches.
        steps: Vec::new(),
    })
}

/// One node at work.
struct Running {
    node: String,
    endpoint: String,
    platforms: String,
    child: Child,
    archive: PathBuf,
    io: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The last lines the node printed, for the error.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Our end of its standard input, held open until it is done.
    stdin: Arc<Mutex<Option<std::process::ChildStdin>>>,
    /// Bytes of context sent, bytes of result received.
    sent: Arc<std::sync::atomic::AtomicU64>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

impl Running {
    fn failed(&self, how: &str) -> anyhow::Error {
        let tail: Vec<String> = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        anyhow::anyhow!(
            "node {} ({}) failed while building {} ({how}); the other nodes were stopped and nothing was stored or pushed. Its last lines:\n  {}",
            self.node,
            self.endpoint,
            self.platforms,
            tail.join("\n  ")
        )
    }

    fn finish_io(&mut self) -> Result<()> {
        if let Ok(mut s) = self.stdin.lock() {
            s.take();
        }
        for h in self.io.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(e)) => bail!("node {}: {e}", self.node),
                Err(_) => bail!("node {}: an I/O thread panicked", self.node),
            }
        }
        Ok(())
    }

    fn cancel(&mut self) {
        if let Ok(mut s) = self.stdin.lock() {
            s.take();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.finish_io();
    }
}

fn node_args(ps: &[Platform], req: &Request<'_>, remote: bool) -> Vec<String> {
    let mut args = vec![
        "builder".to_string(),
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
    ] {
        for v in values {
            args.extend([flag.to_string(), v.clone()]);
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
    for (id, sock) in req.ssh {
        // A remote node sees the forwarded agent as its own SSH_AUTH_SOCK.
        let spec = if remote {
            id.clone()
        } else {
            format!("{id}={}", sock.display())
        };
        args.extend(["--ssh".into(), spec]);
    }
    args
}

fn start(
    status: &NodeStatus,
    ps: &[Platform],
    req: &Request<'_>,
    archive: &Path,
) -> Result<Running> {
    let endpoint = Endpoint::parse(&status.node.endpoint)?;
    let remote = endpoint != Endpoint::Local;
    let args = node_args(ps, req, remote);
    // One agent can be forwarded over an SSH connection.
    let forward: Option<&PathBuf> = if remote {
        let mut socks: Vec<&PathBuf> = req.ssh.values().collect();
        socks.dedup();
        if socks.len() > 1 {
            bail!(
                "node {}: --ssh names {} different agents, and one agent can be forwarded to an SSH node; use one agent for every id",
                status.node.name,
                socks.len()
            );
        }
        socks.first().copied()
    } else {
        None
    };
    let mut cmd = match endpoint.ssh(
        &std::iter::once("manifold".to_string())
            .chain(args.clone())
            .collect::<Vec<_>>(),
    ) {
        Some(c) => c,
        None => {
            use std::os::unix::process::CommandExt;
            let mut c = Proc::new(std::env::current_exe().context("finding manifold itself")?);
            // Its own process group: a cancelled node kills its group, not us.
            c.args(&args).process_group(0);
            c
        }
    };
    if let Some(sock) = forward {
        // The ssh client forwards the agent its SSH_AUTH_SOCK names (-A must come before the
        // host: it is inserted at the front of the arguments by a second command).
        let program = cmd.get_program().to_owned();
        let rest: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut with_a = Proc::new(program);
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
    let mut stdout = child.stdout.take().context("node stdout")?;
    let stderr = child.stderr.take().context("node stderr")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut io = Vec::new();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The context stream.
    {
        let stdin = stdin.clone();
        let sent2 = sent.clone();
        let context = req.context.to_path_buf();
        let dockerfile = std::fs::read(req.dockerfile)
            .with_context(|| format!("reading the Dockerfile {}", req.dockerfile.display()))?;
        let secrets = req.secrets.clone();
        io.push(std::thread::spawn(move || -> std::io::Result<()> {
            let w = {
                let mut g = stdin.lock().map_err(|_| std::io::Error::other("lock"))?;
                match g.as_mut() {
                    // Writing through a clone of the descriptor lets the holder close ours.
                    Some(s) => {
                        use std::os::fd::AsFd;
                        std::fs::File::from(s.as_fd().try_clone_to_owned()?)
                    }
                    None => return Ok(()),
                }
            };
            let mut b = tar::Builder::new(std::io::BufWriter::new(Counting(w, sent2)));
            let mut put = |name: &str, data: &[u8], mode: u32| -> std::io::Result<()> {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(mode);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("{NODE_DIR}/{name}"), data)
            };
            put("Dockerfile", &dockerfile, 0o644)?;
            for (id, v) in &secrets {
                put(&format!("secrets/{id}"), v, 0o600)?;
            }
            let ctx = engine::context::Context::open(&context)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            ctx.write_tar(&mut b)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            b.into_inner()?.flush()?;
            // The clone closes here; the Arc'd original stays open until the node is done.
            Ok(())
        }));
    }
    // The result archive.
    {
        let path = archive.to_path_buf();
        let received = received.clone();
        io.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            let n = std::io::copy(&mut stdout, &mut f)?;
            received.store(n, std::sync::atomic::Ordering::Relaxed);
            f.sync_all()
        }));
    }
    // Progress, with the node's name.
    {
        let tail = tail.clone();
        let name = status.node.name.clone();
        let quiet = req.quiet;
        io.push(std::thread::spawn(move || -> std::io::Result<()> {
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
        }));
    }
    Ok(Running {
        node: status.node.name.clone(),
        endpoint: status.node.endpoint.clone(),
        platforms: ps.iter().map(|p| p.short()).collect::<Vec<_>>().join(", "),
        child,
        archive: archive.to_path_buf(),
        io,
        tail,
        stdin,
        sent,
        received,
    })
}

/// A writer that counts what passes.
struct Counting<W>(W, Arc<std::sync::atomic::AtomicU64>);

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The node side of `build`: read the stream, build, answer with an OCI archive.
pub fn node_build(cli: &Cli, env: &transport::Env, a: &NodeBuildArgs) -> Result<ExitCode> {
    let work = tempfile::Builder::new()
        .prefix("manifold-run-node-")
        .tempdir()
        .context("creating a scratch directory")?;
    // A cancelled node kills itself: `prune` removes what it leaves by this mark.
    let _ = runtime::leftovers::mark(work.path());
    let ctx = work.path().join("context");
    std::fs::create_dir(&ctx)?;
    let dockerfile = work.path().join("Dockerfile");
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let mut input = std::io::stdin();
    {
        let mut ar = tar::Archive::new(&mut input);
        ar.set_preserve_permissions(true);
        ar.set_preserve_mtime(true);
        for entry in ar.entries().context("reading the context stream")? {
            let mut e = entry.context("reading the context stream")?;
            let path = e.path()?.to_string_lossy().into_owned();
            if let Some(rest) = path.strip_prefix(&format!("{NODE_DIR}/")) {
                let mut v = Vec::new();
                e.read_to_end(&mut v)?;
                if rest == "Dockerfile" {
                    std::fs::write(&dockerfile, v)?;
                } else if let Some(id) = rest.strip_prefix("secrets/") {
                    secrets.push((id.to_string(), v));
                }
                continue;
            }
            if !e
                .unpack_in(&ctx)
                .with_context(|| format!("unpacking {path}"))?
            {
                bail!("the context stream has an entry outside the context: {path:?}");
            }
        }
    }
    // Secrets and the epoch reach the build through this process's environment (no thread runs
    // yet), never through a file on this machine's disk.
    let mut secret_specs = Vec::new();
    for (i, (id, v)) in secrets.iter().enumerate() {
        let var = format!("MANIFOLD_NODE_SECRET_{i}");
        std::env::set_var(&var, OsStr::from_bytes(v));
        secret_specs.push(format!("id={id},env={var}"));
    }
    if let Some(e) = &a.source_date_epoch {
        std::env::set_var("SOURCE_DATE_EPOCH", e);
    }
    // The other side closing our input means the build is cancelled: stop everything.
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // SAFETY: signalling our own process group; nothing is shared afterwards.
                    unsafe { libc::kill(0, libc::SIGKILL) };
                    std::process::exit(130);
                }
                Ok(_) => {}
            }
        }
    });
    let result = work.path().join("result.tar");
    let outputs = vec![format!("type=oci,dest={}", result.display())];
    // The build prints digests on standard output: keep that stream for the archive alone.
    let saved = dup_stdout_to_stderr()?;
    let code = crate::build::run(
        cli,
        env,
        &crate::build::BuildArgs {
            context: ctx.clone(),
            file: Some(dockerfile.clone()),
            platform: a.platform.clone(),
            tag: Vec::new(),
            build_arg: a.build_arg.clone(),
            target: a.target.clone(),
            check: false,
            format: crate::OutputFormat::Table,
            push: false,
            load: false,
            output: outputs,
            metadata_file: None,
            no_cache: a.no_cache,
            pull: a.pull,
            progress: "plain".into(),
            jobs: None,
            secret: secret_specs,
            iidfile: None,
            label: a.label.clone(),
            annotation: a.annotation.clone(),
            add_host: a.add_host.clone(),
            no_cache_filter: a.no_cache_filter.clone(),
            ssh: a.ssh.clone(),
            builder: Some(crate::builder::DEFAULT.into()),
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            network: a.network.clone(),
            allow: a.allow.clone(),
            build_context: Vec::new(),
        },
    );
    let mut out = restore_stdout(saved)?;
    let code = code?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let mut f = std::fs::File::open(&result).context("opening the result archive")?;
    std::io::copy(&mut f, &mut out).context("sending the result")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Points descriptor 1 at standard error; returns the original standard output.
fn dup_stdout_to_stderr() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup and dup2 on the process's own standard descriptors.
    unsafe {
        let saved = libc::dup(1);
        if saved < 0 || libc::dup2(2, 1) < 0 {
            bail!(
                "redirecting standard output: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(saved))
    }
}

fn restore_stdout(saved: std::os::fd::OwnedFd) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::io::stdout().flush()?;
    // SAFETY: dup2 of a descriptor we own onto standard output.
    if unsafe { libc::dup2(saved.as_raw_fd(), 1) } < 0 {
        bail!(
            "restoring standard output: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(std::fs::File::from(saved))
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
