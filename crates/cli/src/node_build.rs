//! `builder node-build`: the node side of a build on a builder's nodes (nodes.rs is the other
//! side, which `build` uses; this one builds with `build`'s handler, so it lives apart and
//! neither imports the other). It reads the build's inputs, answers whether it kept the context
//! (by digest), builds into this machine's store, and sends back the blobs the other side lacks.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ::engine::cache::CachedStep;
use anyhow::{bail, Context as _, Result};
use oci::media_type as mt;
use oci::{Descriptor, Digest};

use crate::builder::NodeBuildArgs;
use crate::global::Cli;
use crate::nodes::{read_line, Answer, Hello, Want, MAX_LINE};

/// The node side of `build` (see the module's comment).
pub fn run(cli: &Cli, env: &transport::Env, a: &NodeBuildArgs) -> Result<ExitCode> {
    let store = transport::open_store(&env.store_root)?;
    // Held until the result is sent: `prune` waits, the kept context and result stay.
    let _guard = store.write_guard()?;
    let work = tempfile::Builder::new()
        .prefix("manifold-run-node-")
        .tempdir()
        .context("creating a scratch directory")?;
    // A cancelled node kills itself: `prune` removes what it leaves by this mark.
    let _ = runtime::leftovers::mark(work.path());
    let mut input = {
        use std::os::fd::AsFd;
        BufReader::with_capacity(
            1 << 20,
            std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?),
        )
    };
    let hello: Hello = serde_json::from_str(&read_line(&mut input, "the build's inputs")?)
        .context("the build's inputs are not the expected JSON; is the other side running the same manifold version?")?;
    let mut read_exact = |len: u64, what: &str| -> Result<Vec<u8>> {
        if len > MAX_LINE {
            bail!("{what} is too large ({len} bytes)");
        }
        let mut v = vec![0u8; len as usize];
        input
            .read_exact(&mut v)
            .with_context(|| format!("reading {what}"))?;
        Ok(v)
    };
    let dockerfile = work.path().join("Dockerfile");
    std::fs::write(&dockerfile, read_exact(hello.dockerfile, "the Dockerfile")?)?;
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (id, len) in &hello.secrets {
        secrets.push((id.clone(), read_exact(*len, "a secret")?));
    }
    let contexts = Contexts::open(&env.store_root)?;
    let kept = contexts.take(&hello.context)?;
    let mut named_kept = Vec::new();
    for n in &hello.named {
        named_kept.push(contexts.take(&n.digest)?);
    }
    {
        let mut out = std::io::stdout().lock();
        for k in std::iter::once(kept.is_some()).chain(named_kept.iter().map(Option::is_some)) {
            out.write_all(if k { b"have\n" } else { b"need\n" })?;
        }
        out.flush()?;
    }
    let limits = (
        KEEP_CONTEXTS,
        std::env::var("MANIFOLD_NODE_CONTEXT_CACHE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(KEEP_BYTES),
    );
    // The named contexts the other side sends come first, whole, before the build starts.
    let mut named_specs = a.build_context.clone();
    let mut named_held = Vec::new();
    for (n, held) in hello.named.iter().zip(named_kept) {
        let held = match held {
            Some(h) => h,
            None => {
                let arriving = contexts.arriving(&env.store_root)?;
                unpack(&arriving.dir, &n.digest, n.size, &mut input)
                    .with_context(|| format!("receiving --build-context {}", n.name))?;
                contexts
                    .keep(arriving, &n.digest, limits)
                    .with_context(|| format!("keeping --build-context {}", n.name))?
            }
        };
        let dir = held.0.display();
        named_specs.push(match &n.layout {
            None => format!("{}={dir}", n.name),
            Some(rest) => format!("{}=oci-layout://{dir}{rest}", n.name),
        });
        named_held.push(held);
    }
    // A context not kept here streams in while the build starts: the steps before the first one
    // that reads it (the base pulled, packages installed) run meanwhile.
    let context = match kept {
        Some(held) => Source::Kept(held),
        None => Source::Arriving(contexts.arriving(&env.store_root)?),
    };
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
    // The context (when it is not kept here), then lines from the other side for the main
    // thread; the end of the input means the build is cancelled.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // Set when the build failed first: the context that was still arriving no longer matters.
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over_here = over.clone();
    let receiving = match &context {
        Source::Arriving(a) => Some((
            a.dir.clone(),
            a.gate.clone(),
            hello.context.clone(),
            hello.context_size,
        )),
        Source::Kept(_) => None,
    };
    std::thread::spawn(move || {
        if let Some((dir, gate, digest, size)) = receiving {
            let got = unpack(&dir, &digest, size, &mut input).map_err(|e| format!("{e:#}"));
            gate.open(got.clone());
            if over_here.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Err(e) = got {
                // The conversation is out of step: nothing after the context can be read.
                eprintln!("error: receiving the build context: {e}");
                // SAFETY: signalling our own process group; nothing is shared afterwards.
                unsafe { libc::kill(0, libc::SIGKILL) };
            }
        }
        loop {
            let mut line = String::new();
            match (&mut input).take(MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => {
                    // SAFETY: as above.
                    unsafe { libc::kill(0, libc::SIGKILL) };
                    std::process::exit(130);
                }
                Ok(_) => {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let (context_dir, context_gate) = match &context {
        Source::Kept(h) => (h.0.clone(), None),
        Source::Arriving(a) => (a.dir.clone(), Some(a.gate.clone())),
    };
    let iid = work.path().join("iid");
    let steps_file = work.path().join("steps.json");
    // Named in the node's store, so it stays until the next build of these platforms.
    let name = format!(
        "manifold-node/result:{}",
        a.platform.join("_").replace('/', "-")
    );
    // The build prints digests on standard output: keep that stream for the conversation.
    let saved = dup_stdout_to_stderr()?;
    let code = crate::build::run(
        cli,
        env,
        &crate::build::BuildArgs {
            context: context_dir,
            context_gate,
            file: Some(dockerfile.clone()),
            platform: a.platform.clone(),
            tag: vec![name],
            build_arg: a.build_arg.clone(),
            target: a.target.clone(),
            check: false,
            format: crate::global::OutputFormat::Table,
            push: false,
            load: false,
            output: Vec::new(),
            metadata_file: None,
            no_cache: a.no_cache,
            pull: a.pull,
            progress: "plain".into(),
            jobs: None,
            secret: secret_specs,
            iidfile: Some(iid.clone()),
            label: a.label.clone(),
            annotation: a.annotation.clone(),
            add_host: a.add_host.clone(),
            no_cache_filter: a.no_cache_filter.clone(),
            ssh: a.ssh.clone(),
            builder: Some(crate::builder::DEFAULT.into()),
            cache_to: Vec::new(),
            cache_from: a.cache_from.clone(),
            network: a.network.clone(),
            allow: a.allow.clone(),
            steps_file: Some(steps_file.clone()),
            build_context: named_specs,
        },
    );
    if !matches!(&code, Ok(c) if *c == ExitCode::SUCCESS) {
        // The build's own error says why: a context still arriving is no one's concern now
        // (its scratch directory goes away under the unpacking).
        over.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let out = restore_stdout(saved)?;
    let code = code?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    match context {
        Source::Kept(held) => drop(held),
        Source::Arriving(a) => {
            // A build that never read the context finishes before it has all arrived.
            if a.gate.wait(|| false).is_ok() {
                if let Err(e) = contexts.keep(a, &hello.context, limits) {
                    eprintln!("warning: {e:#}; the next build sends the context again");
                }
            }
        }
    }
    drop(named_held);
    let digest = Digest::parse(std::fs::read_to_string(&iid)?.trim())?;
    let size = store
        .blob_size(&digest)
        .context("the built index is not in the store")?;
    let root = Descriptor::new(mt::OCI_INDEX, digest, size);
    let mut seen = BTreeMap::new();
    let mut missing = Vec::new();
    store.walk(&root, &mut seen, &mut missing)?;
    if !missing.is_empty() {
        bail!("the built image is incomplete in this store: run `manifold fsck`");
    }
    // The steps whose layers this store holds: the other side may ask for those layers too.
    let steps: Vec<(String, CachedStep)> = std::fs::read(&steps_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let steps: Vec<(String, CachedStep)> = steps
        .into_iter()
        .filter(|(_, s)| {
            s.layer
                .as_ref()
                .is_none_or(|(l, _)| store.blob_size(&l.digest) == Some(l.size))
        })
        .collect();
    let mut sendable = seen.clone();
    for (_, s) in &steps {
        if let Some((l, _)) = &s.layer {
            sendable.insert(l.digest.clone(), l.size);
        }
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    serde_json::to_writer(
        &mut out,
        &Answer {
            root,
            blobs: seen.iter().map(|(d, s)| (d.clone(), *s)).collect(),
            steps,
        },
    )?;
    out.write_all(b"\n")?;
    out.flush()?;
    let line = rx
        .recv()
        .context("the other side went away before asking for blobs")?;
    let want: Want = serde_json::from_str(line.trim_end())
        .context("the list of blobs wanted is not the expected JSON")?;
    for d in &want.want {
        let size = *sendable
            .get(d)
            .with_context(|| format!("blob {d} was asked for, but it is not part of the result"))?;
        let f = store.open_blob(d)?;
        let n = std::io::copy(&mut f.take(size), &mut out)?;
        if n != size {
            bail!(
                "blob {d} in this store is shorter than its descriptor says: run `manifold fsck`"
            );
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Contexts a node keeps by digest (`build/contexts/HEX` under its store), so the next build of
/// the same context sends and unpacks nothing. In use, a context is held by a shared lock on
/// its directory; the least recently used ones beyond the limits go when a new one comes.
struct Contexts {
    dir: PathBuf,
}

/// A kept context, held until dropped.
struct Held(PathBuf, #[allow(dead_code)] std::fs::File);

/// At most this many contexts, and (`MANIFOLD_NODE_CONTEXT_CACHE`, bytes) this much.
const KEEP_CONTEXTS: usize = 16;
const KEEP_BYTES: u64 = 2 << 30;

impl Contexts {
    fn open(store_root: &Path) -> Result<Contexts> {
        let dir = store_root.join("build").join("contexts");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Contexts { dir })
    }

    fn take(&self, d: &Digest) -> Result<Option<Held>> {
        use std::os::unix::fs::MetadataExt;
        let p = self.dir.join(d.hex());
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
        };
        f.lock_shared()
            .with_context(|| format!("locking {}", p.display()))?;
        // Evicted between the open and the lock.
        match std::fs::metadata(&p) {
            Ok(m) if m.ino() == f.metadata()?.ino() => {}
            _ => return Ok(None),
        }
        // Least recently used goes first.
        let _ = f.set_modified(std::time::SystemTime::now());
        Ok(Some(Held(p, f)))
    }

    /// A scratch directory for a context that is about to arrive.
    fn arriving(&self, store_root: &Path) -> Result<Arriving> {
        // In the build cache's tmp, marked: `prune` sweeps what a killed node leaves.
        let tmp_parent = ::engine::cache::LocalCache::new(store_root).tmp_dir();
        std::fs::create_dir_all(&tmp_parent)?;
        let tmp = tempfile::Builder::new()
            .prefix("manifold-run-context-")
            .tempdir_in(&tmp_parent)
            .with_context(|| format!("creating a directory in {}", tmp_parent.display()))?;
        let _ = runtime::leftovers::mark(tmp.path());
        let dir = tmp.path().join("context");
        std::fs::create_dir(&dir)?;
        Ok(Arriving {
            dir,
            gate: Default::default(),
            _tmp: tmp,
        })
    }

    /// Keeps a context that arrived whole, for the next build of the same digest, and holds it.
    fn keep(&self, a: Arriving, d: &Digest, limits: (usize, u64)) -> Result<Held> {
        let dest = self.dir.join(d.hex());
        // Another build may have kept the same one meanwhile: either copy serves.
        if std::fs::rename(&a.dir, &dest).is_err() && !dest.is_dir() {
            bail!("the context could not be kept in {}", dest.display());
        }
        // Held before the eviction, which leaves held contexts alone.
        let held = self
            .take(d)?
            .with_context(|| format!("the context kept in {} went away", dest.display()))?;
        self.evict(limits);
        Ok(held)
    }

    /// Removes the least recently used contexts beyond (count, bytes); those in use stay.
    fn evict(&self, (count, bytes): (usize, u64)) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                if !m.is_dir() || e.file_name().len() != 64 {
                    return None;
                }
                Some((m.modified().ok()?, e.path()))
            })
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut total = 0u64;
        for (n, (_, p)) in all.iter().enumerate() {
            total += ::engine::cache::dir_size(p);
            if n < count && total <= bytes {
                continue;
            }
            let Ok(f) = std::fs::File::open(p) else {
                continue;
            };
            if f.try_lock().is_err() {
                continue;
            }
            // Renamed first, so no one takes it half removed.
            let gone = self.dir.join(format!(".gone-{}-{n}", std::process::id()));
            if std::fs::rename(p, &gone).is_ok() {
                let _ = std::fs::remove_dir_all(&gone);
            }
        }
    }
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

/// A context streaming in: its directory, and the gate the build's steps wait at.
struct Arriving {
    dir: PathBuf,
    gate: ::engine::context::ContextGate,
    _tmp: tempfile::TempDir,
}

/// Where a build's context comes from on this node.
enum Source {
    Kept(Held),
    Arriving(Arriving),
}

/// Unpacks `size` bytes of context tar from `input` into `dir`; fails unless they match `d`.
fn unpack(dir: &Path, d: &Digest, size: u64, input: &mut impl Read) -> Result<()> {
    let mut r = oci::DigestReader::new(input.take(size), d.algorithm());
    {
        let mut ar = tar::Archive::new(&mut r);
        ar.set_preserve_permissions(true);
        ar.set_preserve_mtime(true);
        for entry in ar.entries().context("reading the context stream")? {
            let mut e = entry.context("reading the context stream")?;
            let path = e.path()?.to_string_lossy().into_owned();
            if !e
                .unpack_in(dir)
                .with_context(|| format!("unpacking {path}"))?
            {
                bail!("the context stream has an entry outside the context: {path:?}");
            }
        }
    }
    // The tar's padding counts in the digest.
    std::io::copy(&mut r, &mut std::io::sink())?;
    let (got, n) = r.finish();
    if n != size {
        bail!("the context stream ended after {n} of {size} bytes");
    }
    if &got != d {
        bail!("the context received is {got}, not {d} as announced; it changed while it was sent: run the build again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node does with a context it lacks: unpack, check, keep; then the kept copy.
    fn receive(
        c: &Contexts,
        root: &Path,
        d: &Digest,
        size: u64,
        input: &mut impl Read,
        limits: (usize, u64),
    ) -> Result<Held> {
        let a = c.arriving(root)?;
        unpack(&a.dir, d, size, input)?;
        c.keep(a, d, limits)
    }

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1);
            b.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn contexts_are_kept_by_digest_checked_and_evicted_least_recent_first() {
        let root = tempfile::tempdir().unwrap();
        let c = Contexts::open(root.path()).unwrap();
        let keep = |t: &[u8], limits| {
            let d = Digest::sha256_of(t);
            receive(&c, root.path(), &d, t.len() as u64, &mut &t[..], limits).unwrap()
        };
        let a = tar_of(&[("a.txt", "one")]);
        let da = Digest::sha256_of(&a);
        assert!(c.take(&da).unwrap().is_none());
        // A stream that is not what was announced is refused and not kept.
        let wrong = Digest::sha256_of(b"another context");
        let e = receive(
            &c,
            root.path(),
            &wrong,
            a.len() as u64,
            &mut &a[..],
            (16, u64::MAX),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("not sha256:"), "{e}");
        assert!(c.take(&wrong).unwrap().is_none());
        let e = receive(
            &c,
            root.path(),
            &da,
            a.len() as u64 + 1,
            &mut &a[..],
            (16, u64::MAX),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("ended after"), "{e}");
        // Kept, then found again by digest.
        let held_a = keep(&a, (16, u64::MAX));
        assert_eq!(
            std::fs::read_to_string(held_a.0.join("a.txt")).unwrap(),
            "one"
        );
        assert!(c.take(&da).unwrap().is_some());
        // Beyond the limit the least recently used go, but not one in use.
        let b = tar_of(&[("b.txt", "two")]);
        drop(keep(&b, (1, u64::MAX)));
        assert!(
            c.take(&da).unwrap().is_some(),
            "a context in use was removed"
        );
        drop(held_a);
        let cc = tar_of(&[("c.txt", "three")]);
        let held_c = keep(&cc, (1, u64::MAX));
        assert!(c.take(&da).unwrap().is_none());
        assert!(c.take(&Digest::sha256_of(&b)).unwrap().is_none());
        assert!(held_c.0.join("c.txt").exists());
        // Nothing is left in the build cache's tmp.
        let tmp = ::engine::cache::LocalCache::new(root.path()).tmp_dir();
        assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    }
}
