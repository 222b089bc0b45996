//! Running one command in an isolated root filesystem, as a RUN step does.
//!
//! The process is started with [`std::process::Command`]; in its forked child (before exec) we
//! unshare new mount, PID, UTS, IPC and network namespaces (not the network one for
//! [`Network::Host`]; for [`Network::Default`] slirp4netns gives it outbound access, see
//! [`crate::network`]), fork once more so the command is PID 1 of its namespace, mount the
//! root (overlayfs over snapshots, or a plain directory), a minimal read-only /dev, /proc, /sys,
//! /etc/hosts and /etc/resolv.conf, make every mount but /dev `nodev`, pivot_root into it,
//! create and enter the workdir, mark inherited descriptors close-on-exec, drop capabilities to
//! docker's default set, load docker's seccomp profile ([`crate::seccomp`]) and switch to the
//! user; then std execs the argv. Both forked levels die with their parent (PDEATHSIG). Every
//! mount lives in the private mount namespace and vanishes with it.
//!
//! Mountpoints that had to be created in the root (`/proc`, `/dev`, `/etc/hosts`, ...) are
//! removed again afterwards when they are still empty stubs, so they never reach a layer.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::emulation::RunMode;
use crate::{io_err, Error, Result};

pub use crate::network::Network;

/// The root filesystem of a step.
#[derive(Clone, Debug)]
pub enum RootFs {
    /// overlayfs: `lowers` bottom first (the order of an image's layers), changes land in
    /// `upper`; `work` is overlayfs's scratch directory on the same filesystem as `upper`.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A directory used as the root as it is (a flattened copy when overlayfs is missing).
    Dir(PathBuf),
}

/// Which stream a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Both on one pipe ([`RunSpec::merge_output`]), in the order the command wrote them.
    Combined,
}

/// Receives output as it arrives, for progress display.
#[derive(Clone)]
pub struct OutputSink(pub Arc<OutputFn>);

pub type OutputFn = dyn Fn(Stream, &[u8]) + Send + Sync;

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSink")
    }
}

/// Something mounted into a step's root (RUN --mount). Targets are resolved inside the step's
/// root (its symlinks cannot point them at the host); those that had to be created are removed
/// again afterwards when still empty, so they never reach a layer.
#[derive(Clone, Debug)]
pub struct StepMount {
    pub source: MountSource,
    /// Absolute path inside the root; created when missing (a file when the source is one).
    pub target: String,
    pub readonly: bool,
}

/// Where the command's standard streams go.
#[derive(Clone, Debug, Default)]
pub enum StdioMode {
    /// stdin is /dev/null; stdout and stderr are captured (a build step).
    #[default]
    Capture,
    /// stdout and stderr are this process's; stdin too when `stdin` (`manifold run -i`).
    Inherit { stdin: bool },
    /// All three are this pseudo-terminal slave, which becomes the command's controlling
    /// terminal (`manifold run -t`).
    Tty(Arc<OwnedFd>),
}

/// Called with the PID of the sandbox's outer process as soon as it started (its only child
/// is the command, PID 1 of the new namespace), for forwarding signals.
#[derive(Clone)]
pub struct SpawnHook(pub Arc<dyn Fn(u32) + Send + Sync>);

impl std::fmt::Debug for SpawnHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnHook")
    }
}

/// Where a mount's content comes from.
#[derive(Clone, Debug)]
pub enum MountSource {
    /// An empty tmpfs.
    Tmpfs,
    /// `path` inside `root`, resolved as if `root` were `/` ([`crate::inroot::open_in_root`]):
    /// neither its symlinks nor `..` reach outside. Writable binds are copy-on-write: the step
    /// sees its writes, which are thrown away with the step (as BuildKit does).
    Bind { root: PathBuf, path: String },
    /// A directory kept across steps (a cache mount): writes stay unless `readonly`.
    Cache(PathBuf),
    /// A host file or directory the user named (`manifold run -v HOST:CTR`): trusted, bound as
    /// it is, writes stay unless `readonly`. Never for anything a Dockerfile names.
    Host(PathBuf),
    /// A file with these bytes, on a tmpfs private to the step: never written to a disk.
    Secret {
        data: SecretBytes,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Bytes that never appear in `Debug` output or logs.
#[derive(Clone, Default)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// One command to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub rootfs: RootFs,
    /// Mounted in order, after /dev, /proc and /etc, before the command starts.
    pub mounts: Vec<StepMount>,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; PATH gets docker's default and HOME the user's when missing.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved in the root's /etc/passwd and
    /// /etc/group; root when `None`.
    pub user: Option<String>,
    /// Absolute; created when missing, as docker does.
    pub workdir: String,
    pub network: Network,
    pub hostname: String,
    /// (host name, IP) lines added to the step's /etc/hosts (`--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// How many bytes of the combined output to keep for error messages.
    pub tail_bytes: usize,
    /// At most this many bytes of stdout and of stderr are kept (the rest is dropped).
    pub capture_limit: usize,
    /// The platform of the root filesystem: checked before anything runs (a platform this
    /// machine cannot execute fails at once, saying what to install) and reported back.
    pub platform: Option<oci::Platform>,
    /// Killed (the whole PID namespace) after this long.
    pub timeout: Option<Duration>,
    /// Killed (the whole PID namespace) soon after this is cancelled, from any thread.
    pub cancel: Option<Cancel>,
    pub on_output: Option<OutputSink>,
    /// stdout and stderr share one pipe, so output keeps the order it was written in (two pipes
    /// have none between them); it all lands in [`RunOutput::stdout`] as [`Stream::Combined`].
    pub merge_output: bool,
    pub stdio: StdioMode,
    /// Mount the root read-only (mounts inside it keep their own mode).
    pub readonly_root: bool,
    pub on_spawn: Option<SpawnHook>,
    /// The 32-bit personality (`uname -m` says i686 or armv8l), for a 32-bit platform run
    /// natively on its 64-bit sibling, as `linux32`/`setarch` do.
    pub linux32: bool,
}

/// Stops running commands from another thread (a build stopping at its first failure).
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl RunSpec {
    pub fn new(rootfs: RootFs, argv: &[&str]) -> Self {
        RunSpec {
            rootfs,
            mounts: Vec::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            user: None,
            workdir: "/".into(),
            network: Network::Default,
            hostname: "buildkitsandbox".into(),
            extra_hosts: Vec::new(),
            tail_bytes: 4096,
            capture_limit: 16 << 20,
            platform: None,
            timeout: None,
            cancel: None,
            on_output: None,
            merge_output: false,
            stdio: StdioMode::Capture,
            readonly_root: false,
            on_spawn: None,
            linux32: false,
        }
    }
}

/// What a command did.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The exit code, or 128 + the signal number when a signal ended it.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// At most `tail_bytes` of output for error messages: the end of stdout, then the end of
    /// stderr.
    pub tail: String,
    pub duration: Duration,
    /// Native, or through which QEMU handler (native when the spec named no platform).
    pub mode: RunMode,
    /// The timeout killed it.
    pub timed_out: bool,
    /// [`RunSpec::cancel`] killed it.
    pub cancelled: bool,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// `Err(StepFailed)` with the exit code and the tail of the output unless the code was 0.
    pub fn check(self, argv: &[String]) -> Result<RunOutput> {
        if self.success() {
            return Ok(self);
        }
        let what = if self.timed_out {
            format!("{argv:?} (killed by the timeout after {:?})", self.duration)
        } else if self.cancelled {
            format!("{argv:?} (cancelled)")
        } else {
            format!("{argv:?}")
        };
        Err(Error::StepFailed {
            argv: what,
            code: self.code,
            tail: self.tail,
        })
    }
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Does the kernel know overlayfs? Callers fall back to [`RootFs::Dir`] when not.
pub fn overlay_available() -> bool {
    let known = fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
        .unwrap_or(false);
    // Not listed until the module loads; modprobe may not exist, so also ask for the module dir.
    known || Path::new("/sys/module/overlay").exists()
}

/// Can an overlay with its upperdir under `dir` be mounted? Tried once per filesystem (an
/// upperdir on overlayfs itself, as in docker-in-docker, is refused by the kernel). The probe
/// mounts in a private mount namespace of a short-lived thread, so the host never sees it.
pub fn overlay_works(dir: &Path) -> bool {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static SEEN: OnceLock<Mutex<HashMap<u64, bool>>> = OnceLock::new();
    let Ok(dev) = fs::metadata(dir).map(|m| m.dev()) else {
        return false;
    };
    let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = seen.lock().ok().and_then(|m| m.get(&dev).copied()) {
        return v;
    }
    let ok = overlay_available() && probe_overlay(dir).is_ok();
    if let Ok(mut m) = seen.lock() {
        m.insert(dev, ok);
    }
    ok
}

fn probe_overlay(dir: &Path) -> Result<()> {
    let t = tempfile::Builder::new()
        .prefix(".overlay-probe-")
        .tempdir_in(dir)
        .map_err(io_err("creating a probe directory in", dir))?;
    for d in ["lower", "upper", "work", "merged"] {
        let p = t.path().join(d);
        fs::create_dir(&p).map_err(io_err("creating", &p))?;
    }
    let opts = overlay_options(
        &[t.path().join("lower")],
        &t.path().join("upper"),
        &t.path().join("work"),
    )?;
    let merged = t.path().join("merged");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            use nix::mount::{mount, MsFlags};
            // A mount namespace for this thread alone, gone when it ends.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| sandbox_err("probing overlayfs", e.to_string()))?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| sandbox_err("probing overlayfs", e.to_string()))?;
            let mut last = None;
            for o in &opts {
                match mount(
                    Some("overlay"),
                    &merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(o.as_c_str()),
                ) {
                    Ok(()) => {
                        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(sandbox_err(
                "probing overlayfs",
                last.map(|e| e.to_string()).unwrap_or_default(),
            ))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(sandbox_err(
                "probing overlayfs",
                "the probe thread panicked",
            ))
        })
    })
}

/// A step's root filesystem, made the best way this machine allows.
#[derive(Clone, Debug)]
pub struct StepRoot {
    pub rootfs: RootFs,
    /// The snapshots it starts from (bottom first), for the walking differ.
    pub lowers: Vec<PathBuf>,
}

impl StepRoot {
    /// An overlay over `lowers` with its upperdir and workdir under `step_dir`, or, where
    /// overlayfs cannot be mounted there, a flattened copy of `lowers` in `step_dir/rootfs`.
    pub fn prepare(lowers: &[PathBuf], step_dir: &Path) -> Result<StepRoot> {
        fs::create_dir_all(step_dir).map_err(io_err("creating", step_dir))?;
        if !overlay_works(step_dir) {
            return Self::flattened(lowers, step_dir);
        }
        Ok(StepRoot {
            rootfs: RootFs::Overlay {
                lowers: lowers.to_vec(),
                upper: step_dir.join("upper"),
                work: step_dir.join("work"),
            },
            lowers: lowers.to_vec(),
        })
    }

    /// The fallback: a flattened copy of `lowers` in `step_dir/rootfs`, diffed by walking.
    pub fn flattened(lowers: &[PathBuf], step_dir: &Path) -> Result<StepRoot> {
        let root = step_dir.join("rootfs");
        crate::snapshot::flatten(lowers, &root)?;
        Ok(StepRoot {
            rootfs: RootFs::Dir(root),
            lowers: lowers.to_vec(),
        })
    }

    /// Where the step's changes are, for [`crate::layer::store_changes`].
    pub fn changes(&self) -> crate::layer::Changes<'_> {
        match &self.rootfs {
            RootFs::Overlay { upper, .. } => crate::layer::Changes::Upper(upper),
            RootFs::Dir(root) => crate::layer::Changes::Walk {
                root,
                lowers: &self.lowers,
            },
        }
    }
}

fn sandbox_err(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Sandbox {
        what: what.into(),
        reason: reason.into(),
    }
}

fn cstr(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref()).map_err(|_| sandbox_err(what, "contains a NUL byte"))
}

/// Everything the child needs, made before fork so the child allocates as little as it can.
struct Prepared {
    mounts: Vec<PreparedMount>,
    /// A directory of the state dir where the child mounts a tmpfs for copy-on-write uppers and
    /// secrets, when a mount needs one.
    scratch: Option<CString>,
    target: CString,
    root_mount: RootMount,
    hosts: CString,
    resolv: CString,
    hostname: CString,
    new_net: bool,
    /// The network helper's pipes: where to write our PID, where to wait for the network
    /// (-1: no helper).
    net_pid_w: i32,
    net_go_r: i32,
    /// The process that spawned the step: its death kills the step.
    parent_pid: i32,
    seccomp: &'static crate::seccomp::Bpf,
    /// `<target>/dev`, `<target>/dev/pts` and /proc's masked files, for [`seal_devices`].
    seal: (CString, CString, Vec<CString>),
    workdir: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
    tty: bool,
    readonly_root: bool,
    linux32: bool,
}

/// A [`StepMount`] ready for the child: the source opened (resolved inside its root), the
/// target split into the components the child resolves inside the step's root.
struct PreparedMount {
    /// `a`, `a/b`, `a/b/c`: each prefix of the target, relative to the root.
    prefixes: Vec<CString>,
    /// `a`, `b`, `c`: the last component of each prefix.
    names: Vec<CString>,
    target: String,
    file: bool,
    kind: PreparedKind,
}

/// `fd`s of sources are detached mount trees (open_tree): a mount of the parent's namespace
/// cannot be bound from inside the child's, but a detached one can be moved in.
enum PreparedKind {
    Tmpfs,
    Bind {
        fd: OwnedFd,
        readonly: bool,
    },
    /// An overlay on the target: the source bound read-only at `lower`, a throwaway upper; all
    /// under `dir` on the scratch tmpfs.
    Cow {
        fd: OwnedFd,
        dir: CString,
        lower: CString,
        upper: CString,
        work: CString,
        opts: CString,
    },
    /// A file `file` on the scratch tmpfs holding `data`.
    Secret {
        file: CString,
        data: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Opens every mount's source in the parent (inside its root), so the child mounts through
/// descriptors; `state` holds copies of writable file sources and the scratch mountpoint.
fn prepare_mounts(
    mounts: &[StepMount],
    state: &Path,
) -> Result<(Vec<PreparedMount>, Option<CString>)> {
    use crate::inroot::{open_in_root, Kind};
    let detach = |fd: &OwnedFd, what: &dyn std::fmt::Display| {
        use rustix::mount::OpenTreeFlags as F;
        rustix::mount::open_tree(
            fd,
            c"",
            F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC | F::AT_EMPTY_PATH,
        )
        .map_err(|e| sandbox_err(format!("cloning the mount of {what}"), e.to_string()))
    };
    let scratch = state.join("m");
    let mut needs_scratch = false;
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let rel = m.target.trim_start_matches('/').to_string();
        let parts: Vec<&str> = rel
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if parts.is_empty() || parts.contains(&"..") {
            return Err(sandbox_err(
                "mount",
                format!(
                    "target {:?} must be an absolute path inside the root",
                    m.target
                ),
            ));
        }
        let mut prefixes = Vec::new();
        let mut names = Vec::new();
        for n in 1..=parts.len() {
            prefixes.push(cstr(parts[..n].join("/"), "mount target")?);
            names.push(cstr(parts[n - 1], "mount target")?);
        }
        let dir = scratch.join(i.to_string());
        let (kind, file) = match &m.source {
            MountSource::Tmpfs => (PreparedKind::Tmpfs, false),
            MountSource::Cache(d) => {
                let fd = rustix::fs::open(
                    d,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| {
                    sandbox_err(format!("cache directory {}", d.display()), e.to_string())
                })?;
                let fd = detach(&fd, &d.display())?;
                (
                    PreparedKind::Bind {
                        fd,
                        readonly: m.readonly,
                    },
                    false,
                )
            }
            MountSource::Host(p) => {
                let fd = rustix::fs::open(
                    p,
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| sandbox_err(format!("host path {}", p.display()), e.to_string()))?;
                let is_file = !fs::metadata(p).map_err(io_err("mount source", p))?.is_dir();
                let fd = detach(&fd, &p.display())?;
                (
                    PreparedKind::Bind {
                        fd,
                        readonly: m.readonly,
                    },
                    is_file,
                )
            }
            MountSource::Bind { root, path } => {
                let r = open_in_root(root, path)?;
                let shown = format!("{path:?} in {}", root.display());
                let tree = || detach(&r.fd, &shown);
                match (r.kind, m.readonly) {
                    (kind, true) => (
                        PreparedKind::Bind {
                            fd: tree()?,
                            readonly: true,
                        },
                        kind == Kind::File,
                    ),
                    (Kind::Dir, false) => {
                        needs_scratch = true;
                        let sub = |n: &str| cstr(dir.join(n).as_os_str().as_bytes(), "state dir");
                        let (lower, upper, work) = (sub("lower")?, sub("upper")?, sub("work")?);
                        let opts = format!(
                            "lowerdir={},upperdir={},workdir={}",
                            lower.to_string_lossy(),
                            upper.to_string_lossy(),
                            work.to_string_lossy()
                        );
                        if dir
                            .as_os_str()
                            .as_bytes()
                            .iter()
                            .any(|b| b",:\\".contains(b))
                        {
                            return Err(sandbox_err(
                                format!("state directory {}", dir.display()),
                                "its path has a comma, colon or backslash, which overlayfs options cannot carry; set TMPDIR to a plainer path",
                            ));
                        }
                        (
                            PreparedKind::Cow {
                                fd: tree()?,
                                dir: cstr(dir.as_os_str().as_bytes(), "state dir")?,
                                lower,
                                upper,
                                work,
                                opts: cstr(opts, "overlay options")?,
                            },
                            false,
                        )
                    }
                    (Kind::File, false) => {
                        // A writable file: the step writes to a copy of it, thrown away after.
                        use std::os::fd::AsRawFd;
                        let from = PathBuf::from(format!("/proc/self/fd/{}", r.fd.as_raw_fd()));
                        let copy = state.join(format!("file-{i}"));
                        fs::copy(&from, &copy)
                            .map_err(io_err("copying a writable bind source to", &copy))?;
                        let r = open_in_root(state, &format!("file-{i}"))?;
                        (
                            PreparedKind::Bind {
                                fd: detach(&r.fd, &copy.display())?,
                                readonly: false,
                            },
                            true,
                        )
                    }
                }
            }
            MountSource::Secret {
                data,
                mode,
                uid,
                gid,
            } => {
                needs_scratch = true;
                (
                    PreparedKind::Secret {
                        file: cstr(dir.as_os_str().as_bytes(), "state dir")?,
                        data: data.0.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    },
                    true,
                )
            }
        };
        out.push(PreparedMount {
            prefixes,
            names,
            target: m.target.clone(),
            file,
            kind,
        });
    }
    let scratch = if needs_scratch {
        fs::create_dir(&scratch).map_err(io_err("creating", &scratch))?;
        Some(cstr(scratch.as_os_str().as_bytes(), "state dir")?)
    } else {
        None
    };
    Ok((out, scratch))
}

enum RootMount {
    Overlay {
        opts: Vec<CString>,
        /// Mount from this directory: the lowerdirs are relative names in it.
        chdir: Option<CString>,
    },
    Bind(CString),
}

/// Runs `spec` and waits for it. A command that runs and fails is `Ok` with its code; a
/// sandbox that cannot be set up, or an argv[0] that cannot be executed, is `Err`.
pub fn run(spec: &RunSpec) -> Result<RunOutput> {
    if spec.argv.is_empty() {
        return Err(sandbox_err("the command", "argv is empty"));
    }
    if !spec.workdir.starts_with('/') {
        return Err(sandbox_err(
            format!("workdir {:?}", spec.workdir),
            "must be an absolute path",
        ));
    }
    let mode = match &spec.platform {
        Some(p) => crate::emulation::check(p)?,
        None => RunMode::Native,
    };
    let state = tempfile::Builder::new()
        .prefix("manifold-run-")
        .tempdir()
        .map_err(io_err(
            "creating a state directory in",
            &std::env::temp_dir(),
        ))?;
    // So `manifold prune` can tell a killed build's leftovers from a running one's.
    crate::leftovers::mark(state.path()).map_err(io_err("marking", state.path()))?;
    let target = state.path().join("root");
    fs::create_dir(&target).map_err(io_err("creating", &target))?;

    // The view of the root before the run: upper (or the dir) first, then lowers top-down.
    let (view, root_mount) = match &spec.rootfs {
        RootFs::Overlay {
            lowers: lowers_in,
            upper,
            work,
        } => {
            for d in [upper, work] {
                fs::create_dir_all(d).map_err(io_err("creating", d))?;
            }
            // Top first. Two steps that made identical changes share one snapshot, and
            // overlayfs refuses a lower twice (ELOOP): the upper copy already shows everything
            // the lower one would, so only the topmost is kept.
            let mut lowers: Vec<PathBuf> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for l in lowers_in.iter().rev() {
                if seen.insert(fs::canonicalize(l).unwrap_or_else(|_| l.clone())) {
                    lowers.push(l.clone());
                }
            }
            if lowers.is_empty() {
                // FROM scratch: overlayfs wants a lowerdir.
                let empty = state.path().join("empty");
                fs::create_dir(&empty).map_err(io_err("creating", &empty))?;
                lowers.push(empty);
            }
            // The merged root takes the upper root's attributes: give it the image's.
            if let Ok(m) = fs::metadata(&lowers[0]) {
                if fs::read_dir(upper)
                    .map(|mut r| r.next().is_none())
                    .unwrap_or(false)
                {
                    let _ =
                        fs::set_permissions(upper, fs::Permissions::from_mode(m.mode() & 0o7777));
                    let _ = std::os::unix::fs::chown(upper, Some(m.uid()), Some(m.gid()));
                }
            }
            let (opts, chdir) = match overlay_options(&lowers, upper, work) {
                Ok(o) => (o, None),
                Err(_) => {
                    // Too many layers for a page of options: short names instead.
                    let short = state.path().join("l");
                    fs::create_dir(&short).map_err(io_err("creating", &short))?;
                    for (i, l) in lowers.iter().enumerate() {
                        let abs = fs::canonicalize(l).map_err(io_err("resolving", l))?;
                        let link = short.join(i.to_string());
                        std::os::unix::fs::symlink(&abs, &link)
                            .map_err(io_err("creating", &link))?;
                    }
                    let o = overlay_options_with(&lowers, upper, work, Some(&short))?;
                    (o, Some(cstr(short.as_os_str().as_bytes(), "state dir")?))
                }
            };
            let mut view = vec![upper.clone()];
            view.extend(lowers);
            (view, RootMount::Overlay { opts, chdir })
        }
        RootFs::Dir(dir) => (
            vec![dir.clone()],
            RootMount::Bind(cstr(dir.as_os_str().as_bytes(), "root directory")?),
        ),
    };
    let etc_before = etc_time(&spec.rootfs);
    let mut stubs_before: Vec<(String, bool)> = STUBS
        .iter()
        .map(|s| (s.to_string(), exists_in(&view, s)))
        .collect();

    let hosts = state.path().join("hosts");
    let resolv = state.path().join("resolv.conf");
    let mut hosts_text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        spec.hostname
    );
    for (name, ip) in &spec.extra_hosts {
        hosts_text.push_str(&format!("{ip}\t{name}\n"));
    }
    fs::write(&hosts, hosts_text).map_err(io_err("writing", &hosts))?;
    let resolv_text = crate::network::resolv_conf(
        spec.network,
        &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    fs::write(&resolv, resolv_text).map_err(io_err("writing", &resolv))?;

    let (uid, gid, groups, home) = resolve_user(&view, spec.user.as_deref())?;
    let (mounts, scratch) = prepare_mounts(&spec.mounts, state.path())?;
    // Mountpoints the mounts may create, parents first, with whether they were there before.
    for m in &mounts {
        for p in &m.prefixes {
            let rel = p.to_string_lossy().into_owned();
            if !stubs_before.iter().any(|(r, _)| *r == rel) {
                let existed = exists_in(&view, &rel);
                stubs_before.push((rel, existed));
            }
        }
    }
    let seccomp = crate::seccomp::docker_default()?;
    let mut helper = match spec.network {
        Network::Default => Some(crate::network::Helper::start()?),
        _ => None,
    };
    let (net_pid_w, net_go_r) = helper.as_ref().map_or((-1, -1), |h| h.child_fds());
    let prepared = Prepared {
        mounts,
        scratch,
        target: cstr(target.as_os_str().as_bytes(), "state dir")?,
        root_mount,
        hosts: cstr(hosts.as_os_str().as_bytes(), "state dir")?,
        resolv: cstr(resolv.as_os_str().as_bytes(), "state dir")?,
        hostname: cstr(&spec.hostname, "hostname")?,
        new_net: spec.network != Network::Host,
        net_pid_w,
        net_go_r,
        parent_pid: std::process::id() as i32,
        seccomp,
        seal: {
            let t = target.as_os_str().as_bytes();
            let at = |rel: &str| cstr([t, b"/", rel.as_bytes()].concat(), "state dir");
            (
                at("dev")?,
                at("dev/pts")?,
                PROC_MASKED_FILES
                    .iter()
                    .map(|f| at(&format!("proc/{f}")))
                    .collect::<Result<_>>()?,
            )
        },
        workdir: PathBuf::from(&spec.workdir),
        uid,
        gid,
        groups: groups.into_iter().map(nix::unistd::Gid::from_raw).collect(),
        tty: matches!(spec.stdio, StdioMode::Tty(_)),
        readonly_root: spec.readonly_root,
        linux32: spec.linux32,
    };

    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).env_clear();
    let mut merged = None;
    match &spec.stdio {
        StdioMode::Capture => {
            cmd.stdin(Stdio::null());
            if spec.merge_output {
                let (r, w) = pipe()?;
                let w2 = w
                    .try_clone()
                    .map_err(|e| sandbox_err("duplicating the output pipe", e.to_string()))?;
                cmd.stdout(Stdio::from(w)).stderr(Stdio::from(w2));
                merged = Some(r);
            } else {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        StdioMode::Inherit { stdin } => {
            cmd.stdin(if *stdin {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        }
        StdioMode::Tty(tty) => {
            let dup = |what| {
                tty.try_clone()
                    .map_err(|e| sandbox_err(what, e.to_string()))
            };
            cmd.stdin(Stdio::from(dup("the terminal")?))
                .stdout(Stdio::from(dup("the terminal")?))
                .stderr(Stdio::from(dup("the terminal")?));
        }
    }
    let mut has_path = false;
    let mut has_home = false;
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        has_path |= k == "PATH";
        has_home |= k == "HOME";
        cmd.env(k, v);
    }
    if !has_path {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if !has_home {
        cmd.env("HOME", home);
    }
    let (err_r, err_w) = pipe()?;
    let err_w_raw = err_w.as_raw_fd();
    // SAFETY: the closure runs in the forked child; it makes raw syscalls on data prepared
    // before fork and allocates only to format an error report (glibc's malloc is fork-safe).
    unsafe {
        cmd.pre_exec(move || child_setup(&prepared, err_w_raw));
    }
    let start = Instant::now();
    let spawned = cmd.spawn();
    // The command holds our copies of the merged pipe's write end: the reader sees its end
    // only once they are closed.
    drop(cmd);
    drop(err_w);
    if let Some(h) = helper.as_mut() {
        h.spawned();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = read_all(err_r);
            cleanup_stubs(&spec.rootfs, &view, &stubs_before, etc_before);
            // The child's own reason first: its failure is why the network helper failed too.
            let net = helper.map(|h| h.finish());
            if !msg.is_empty() {
                return Err(sandbox_err("setting up", msg));
            }
            if let Some(Err(net)) = net {
                return Err(sandbox_err("setting up the network", net));
            }
            let reason = if e.kind() == io::ErrorKind::NotFound {
                format!("{e}: not found in the root filesystem's PATH or at that path")
            } else {
                e.to_string()
            };
            return Err(sandbox_err(format!("starting {:?}", spec.argv[0]), reason));
        }
    };
    if let Some(hook) = &spec.on_spawn {
        (hook.0)(child.id());
    }
    // Closed at exec, or carries the reason the setup failed.
    let setup_error = read_all(err_r);

    let first = match merged {
        Some(r) => (
            Some(Box::new(fs::File::from(r)) as Box<dyn Read + Send>),
            Stream::Combined,
        ),
        None => (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Stream::Stdout,
        ),
    };
    let readers: Vec<_> = [
        first,
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Stream::Stderr,
        ),
    ]
    .into_iter()
    .map(|(r, which)| {
        let limit = spec.capture_limit;
        let tail_bytes = spec.tail_bytes;
        let sink = spec.on_output.clone();
        std::thread::spawn(move || capture(r, which, limit, tail_bytes, sink))
    })
    .collect();
    // The watchdog signals the parent of PID 1, which kills PID 1, and with it the whole
    // namespace. Returns (timed out, cancelled).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = (spec.timeout.is_some() || spec.cancel.is_some()).then(|| {
        let pid = child.id() as libc::pid_t;
        let (timeout, cancel) = (spec.timeout, spec.cancel.clone());
        std::thread::spawn(move || loop {
            let mut wait = timeout.map_or(Duration::MAX, |t| t.saturating_sub(start.elapsed()));
            if cancel.is_some() {
                wait = wait.min(Duration::from_millis(50));
            }
            if done_rx.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return (false, false);
            }
            let expired = timeout.is_some_and(|t| start.elapsed() >= t);
            let cancelled = cancel.as_ref().is_some_and(Cancel::is_cancelled);
            if expired || cancelled {
                // SAFETY: the pid is our unreaped child: it cannot have been reused. SIGTERM:
                // it kills PID 1 (and so the namespace), then exits.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                return (expired, !expired);
            }
        })
    });
    let status = child
        .wait()
        .map_err(|e| sandbox_err("waiting for the command", e.to_string()));
    drop(done_tx);
    let (timed_out, cancelled) = watchdog.map_or((false, false), |w| w.join().unwrap_or_default());
    let mut outs = readers.into_iter().map(|h| h.join().unwrap_or_default());
    let (stdout, out_tail) = outs.next().unwrap_or_default();
    let (stderr, err_tail) = outs.next().unwrap_or_default();
    let duration = start.elapsed();
    cleanup_stubs(&spec.rootfs, &view, &stubs_before, etc_before);
    let net = helper.map(|h| h.finish());
    let status = status?;
    if !setup_error.is_empty() {
        return Err(sandbox_err("setting up", setup_error));
    }
    if let Some(Err(net)) = net {
        return Err(sandbox_err("setting up the network", net));
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    let tail = compose_tail(out_tail, err_tail, spec.tail_bytes);
    Ok(RunOutput {
        code,
        stdout,
        stderr,
        tail,
        duration,
        mode,
        timed_out,
        cancelled,
    })
}

/// The tail for error messages: the end of stdout, then the end of stderr (where errors
/// usually are). Two pipes have no reliable order between them, so none is pretended; a
/// stream that printed nothing leaves all the room to the other.
fn compose_tail(out: VecDeque<u8>, err: VecDeque<u8>, budget: usize) -> String {
    let take = |v: VecDeque<u8>, n: usize| -> Vec<u8> {
        let skip = v.len().saturating_sub(n);
        let mut b: Vec<u8> = v.into_iter().skip(skip).collect();
        // Start at a line boundary when the cut fell inside a line.
        if skip > 0 {
            if let Some(i) = b.iter().position(|c| *c == b'\n') {
                b.drain(..=i);
            }
        }
        b
    };
    let (o, e) = match (out.is_empty(), err.is_empty()) {
        (_, true) => (take(out, budget), Vec::new()),
        (true, false) => (Vec::new(), take(err, budget)),
        (false, false) => (take(out, budget / 2), take(err, budget / 2)),
    };
    let mut all = o;
    all.extend(e);
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads one stream to its end: what fits in `limit`, and the last `tail_bytes`.
fn capture(
    r: Option<Box<dyn Read + Send>>,
    which: Stream,
    limit: usize,
    tail_bytes: usize,
    sink: Option<OutputSink>,
) -> (Vec<u8>, VecDeque<u8>) {
    let mut out = Vec::new();
    let mut tail = VecDeque::with_capacity(tail_bytes);
    let Some(mut r) = r else {
        return (out, tail);
    };
    let mut buf = [0u8; 16384];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if let Some(s) = &sink {
            (s.0)(which, chunk);
        }
        if out.len() < limit {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..room.min(n)]);
        }
        tail.extend(chunk);
        let excess = tail.len().saturating_sub(tail_bytes);
        tail.drain(..excess);
    }
    (out, tail)
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sandbox_err(
            "creating a pipe",
            io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = fs::File::from(fd).read_to_string(&mut s);
    s
}

/// Over this, lowerdirs are passed as short relative names (symlinks in the state dir, the
/// child mounting from there): the kernel takes at most a page of mount options.
const OPTIONS_LIMIT: usize = 3500;

fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<Vec<CString>> {
    overlay_options_with(lowers, upper, work, None)
}

/// With `short` (a directory of symlinks named 0, 1, ... to the lowers), lowerdirs are those
/// names, relative to it.
fn overlay_options_with(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    short: Option<&Path>,
) -> Result<Vec<CString>> {
    let check = |p: &Path| -> Result<String> {
        let abs = fs::canonicalize(p).map_err(io_err("resolving", p))?;
        let s = abs.to_string_lossy().into_owned();
        if s.contains([',', ':', '\\', '\n']) || s != abs.as_os_str().to_string_lossy() {
            return Err(sandbox_err(
                format!("overlay directory {}", abs.display()),
                "its path has a comma, colon or backslash, which overlayfs options cannot carry; use a cache directory without them",
            ));
        }
        Ok(s)
    };
    let lower = match short {
        Some(_) => (0..lowers.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(":"),
        None => lowers
            .iter()
            .map(|p| check(p))
            .collect::<Result<Vec<_>>>()?
            .join(":"),
    };
    let base = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        check(upper)?,
        check(work)?
    );
    if base.len() > OPTIONS_LIMIT {
        return Err(sandbox_err(
            "mounting overlayfs",
            format!(
                "{} layers make mount options of {} bytes, over the kernel's page-size limit; put the step directory in a shorter path",
                lowers.len(),
                base.len()
            ),
        ));
    }
    // Without redirect_dir and metacopy every change in the upperdir is a whole file or a whole
    // directory, which is what a layer can express; older kernels do not know the options.
    let strict = format!("{base},redirect_dir=off,metacopy=off,index=off");
    Ok(vec![
        cstr(strict, "overlay options")?,
        cstr(base, "overlay options")?,
    ])
}

/// Paths the sandbox may create as mountpoints, parents before children.
const STUBS: &[&str] = &["proc", "dev", "sys", "etc", "etc/hosts", "etc/resolv.conf"];

/// Does `rel` exist in the merged view of `layers` (top first)? Whiteouts hide.
fn exists_in(layers: &[PathBuf], rel: &str) -> bool {
    for l in layers {
        if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
            return !(m.file_type().is_char_device() && m.rdev() == 0);
        }
    }
    false
}

/// In a plain directory, making and removing /etc/hosts changes /etc's time, which the
/// walking differ would report: remember it (and what /etc held) to put it back when only our
/// stubs touched it.
fn etc_time(rootfs: &RootFs) -> Option<(i64, i64, Vec<std::ffi::OsString>)> {
    match rootfs {
        RootFs::Dir(d) => fs::symlink_metadata(d.join("etc"))
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| (m.mtime(), m.mtime_nsec(), dir_names(&d.join("etc")))),
        RootFs::Overlay { .. } => None,
    }
}

fn dir_names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn cleanup_stubs(
    rootfs: &RootFs,
    view: &[PathBuf],
    before: &[(String, bool)],
    etc_time: Option<(i64, i64, Vec<std::ffi::OsString>)>,
) {
    let top = &view[0];
    let etc = top.join("etc");
    let ours_in_etc = before
        .iter()
        .any(|(rel, existed)| rel.starts_with("etc/") && !existed);
    // Children before parents; nothing through a symlink the step made.
    let mut order: Vec<&(String, bool)> = before.iter().collect();
    order.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.matches('/').count()));
    for (rel, existed) in order {
        let parent_is_plain = {
            let mut cur = top.clone();
            let parts: Vec<&str> = rel.split('/').collect();
            parts[..parts.len() - 1].iter().all(|c| {
                cur.push(c);
                fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir())
            })
        };
        if !parent_is_plain {
            continue;
        }
        let p = top.join(rel);
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let empty = if m.is_dir() {
            fs::read_dir(&p)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false)
        } else {
            m.is_file() && m.len() == 0
        };
        if !empty {
            continue;
        }
        let removable = if !existed {
            true
        } else if let (RootFs::Overlay { .. }, true) = (rootfs, m.is_dir()) {
            // A directory copied up only because a stub was made in it: same owner and mode
            // as below, not opaque.
            let lower = view[1..]
                .iter()
                .find_map(|l| fs::symlink_metadata(l.join(rel)).ok());
            let opaque = xattr::get(&p, crate::snapshot::OPAQUE_XATTR)
                .ok()
                .flatten()
                .is_some();
            lower.is_some_and(|l| {
                l.is_dir() && l.mode() == m.mode() && l.uid() == m.uid() && l.gid() == m.gid()
            }) && !opaque
        } else {
            false
        };
        if removable {
            crate::inroot::remove_empty(top, rel);
        }
    }
    if let (Some((s, ns, names)), true) = (etc_time, ours_in_etc) {
        if dir_names(&etc) == names {
            let _ = crate::snapshot::set_times(&etc, s, ns);
        }
    }
}

/// Reads a file of the merged view (top layer first), for /etc/passwd and /etc/group.
/// A symlink on the way (a step may make `/etc` point at the host's) reads as nothing.
pub fn read_view(layers: &[PathBuf], rel: &str) -> String {
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for l in layers {
        let mut dir = l.clone();
        for c in &parts[..parts.len().saturating_sub(1)] {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return String::new(),
                Err(_) => break,
            }
        }
        let p = l.join(rel);
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.is_file() {
                return fs::read_to_string(&p).unwrap_or_default();
            }
            return String::new();
        }
    }
    String::new()
}

/// (uid, gid, supplementary gids, home) for a docker `USER` value.
fn resolve_user(view: &[PathBuf], user: Option<&str>) -> Result<(u32, u32, Vec<u32>, String)> {
    let user = user.unwrap_or("").trim();
    let user = if user.is_empty() { "0" } else { user };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_view(view, "etc/passwd");
    let group = read_view(view, "etc/group");
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                sandbox_err(
                    format!("user {u:?}"),
                    "not found in the root filesystem's /etc/passwd; use a numeric uid or add the user",
                )
            })?,
    };
    let name = entry.as_ref().map(|f| f[0].to_string());
    let home = entry
        .as_ref()
        .and_then(|f| f.get(5).map(|h| h.to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    sandbox_err(
                        format!("group {g:?}"),
                        "not found in the root filesystem's /etc/group; use a numeric gid",
                    )
                })?,
        },
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let mut groups = vec![gid];
    if g.is_none() {
        if let Some(n) = &name {
            for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
                if f.len() >= 4 && f[3].split(',').any(|m| m == n) {
                    if let Ok(id) = f[2].parse::<u32>() {
                        if !groups.contains(&id) {
                            groups.push(id);
                        }
                    }
                }
            }
        }
    }
    Ok((uid, gid, groups, home))
}

// ---- In the forked child: raw syscalls only, on prepared data. ----

fn errno_str() -> String {
    io::Error::last_os_error().to_string()
}

fn fail(err_fd: i32, what: &str, why: &str) -> ! {
    let msg = format!("{what}: {why}");
    // SAFETY: writing a buffer we own to a pipe fd, then exiting without unwinding.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(125)
    }
}

fn child_setup(p: &Prepared, err_fd: i32) -> io::Result<()> {
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // This process (the parent of the step's PID 1) dies with the thread that spawned it.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid().as_raw() != p.parent_pid
    {
        fail(
            err_fd,
            "parent-death signal",
            "manifold exited while the step started",
        );
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if p.new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(err_fd, "unshare (namespaces need root)", &e.to_string());
    }
    if p.net_pid_w >= 0 {
        // The network helper configures this process's (new) network namespace.
        // SAFETY: getpid and a 4-byte write from a local buffer to a pipe we hold.
        let ok = unsafe {
            let pid = libc::getpid().to_ne_bytes();
            libc::write(p.net_pid_w, pid.as_ptr().cast(), 4) == 4
        };
        if !ok {
            fail(
                err_fd,
                "handing the network namespace to slirp4netns",
                &errno_str(),
            );
        }
    }
    // SAFETY: this process is the single-threaded child std forked; both sides only make
    // syscalls before exec or _exit.
    match unsafe { fork() } {
        Err(e) => fail(err_fd, "fork", &e.to_string()),
        Ok(ForkResult::Parent { child }) => {
            // The parent of PID 1: hold no copy of std's exec-error pipe or ours, wait, and
            // pass the status on. When manifold dies (parent-death signal) or the timeout
            // fires, SIGTERM arrives here and PID 1 is killed, and with it the namespace; this
            // does not depend on PID 1 keeping its own parent-death signal, which the kernel
            // clears when a step execs a set-user-ID binary.
            use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
            // SAFETY: closing fds this process does not use; _exit skips Rust's unwinding.
            unsafe { libc::close_range(3, u32::MAX, 0) };
            let mut set = SigSet::empty();
            set.add(Signal::SIGCHLD);
            set.add(Signal::SIGTERM);
            let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
            if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err()
                || nix::unistd::getppid().as_raw() != p.parent_pid
            {
                let _ = kill(child, Signal::SIGKILL);
            }
            let code = loop {
                match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break 125,
                }
                // SIGCHLD (look again) or SIGTERM (kill PID 1, then reap it).
                if let Ok(Signal::SIGTERM) = set.wait() {
                    let _ = kill(child, Signal::SIGKILL);
                }
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Child) => {}
    }
    // PID 1 dies with its parent, which the timeout kills.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if p.linux32 {
        // SAFETY: personality with a constant; inherited across exec.
        // PER_LINUX32 from <linux/personality.h>; the libc crate does not name it.
        unsafe { libc::personality(0x0008) };
    }
    if p.tty {
        // A session of its own with the terminal (already on fds 0-2) as its controlling one.
        if let Err(e) = nix::unistd::setsid() {
            fail(err_fd, "setsid", &e.to_string());
        }
        // SAFETY: an ioctl on fd 0 with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            fail(
                err_fd,
                "making the terminal the controlling one",
                &errno_str(),
            );
        }
    }
    setup_root(p, err_fd);
    Ok(())
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn mount_or_fail(
    err_fd: i32,
    src: &str,
    target: &CString,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) {
    let flags = nix::mount::MsFlags::from_bits_truncate(flags);
    let data = (!data.is_empty()).then_some(data);
    if let Err(e) = nix::mount::mount(Some(src), target.as_c_str(), Some(fstype), flags, data) {
        fail(
            err_fd,
            &format!("mounting {fstype} at {}", target.to_string_lossy()),
            &e.to_string(),
        );
    }
}

fn join(root: &CString, rel: &str) -> CString {
    let mut v = root.as_bytes().to_vec();
    v.push(b'/');
    v.extend_from_slice(rel.as_bytes());
    CString::new(v).unwrap_or_default()
}

fn mkdir_p(err_fd: i32, path: &CString, mode: u32) {
    // SAFETY: valid C string; lstat into a zeroed stat.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::lstat(path.as_ptr(), &mut st) == 0 {
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                fail(
                    err_fd,
                    &format!("{} is in the way of a mountpoint", path.to_string_lossy()),
                    "not a directory",
                );
            }
            return;
        }
        if libc::mkdir(path.as_ptr(), mode) != 0 && *libc::__errno_location() != libc::EEXIST {
            fail(
                err_fd,
                &format!("creating {}", path.to_string_lossy()),
                &errno_str(),
            );
        }
    }
}

fn setup_root(p: &Prepared, err_fd: i32) {
    let t = &p.target;
    let none = c("none");
    // SAFETY: raw syscalls with valid C strings, in the child.
    unsafe {
        if libc::mount(
            none.as_ptr(),
            c("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(err_fd, "making mounts private", &errno_str());
        }
        match &p.root_mount {
            RootMount::Overlay { opts, chdir } => {
                if let Some(d) = chdir {
                    if let Err(e) = nix::unistd::chdir(d.as_c_str()) {
                        fail(err_fd, "entering the lowerdir names", &e.to_string());
                    }
                }
                let ovl = c("overlay");
                let mut last = String::new();
                let mut ok = false;
                for o in opts {
                    if libc::mount(ovl.as_ptr(), t.as_ptr(), ovl.as_ptr(), 0, o.as_ptr().cast())
                        == 0
                    {
                        ok = true;
                        break;
                    }
                    last = errno_str();
                }
                if !ok {
                    fail(
                        err_fd,
                        "mounting overlayfs",
                        &format!("{last} (options {:?}); is the upperdir on a filesystem that supports overlay upper layers, and is overlayfs available? Without it use a flattened RootFs::Dir", opts.last().map(|o| o.to_string_lossy().into_owned()).unwrap_or_default()),
                    );
                }
            }
            RootMount::Bind(dir) => {
                if libc::mount(
                    dir.as_ptr(),
                    t.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    fail(
                        err_fd,
                        &format!("bind-mounting {}", dir.to_string_lossy()),
                        &errno_str(),
                    );
                }
            }
        }
    }
    let proc_ = join(t, "proc");
    mkdir_p(err_fd, &proc_, 0o555);
    mount_or_fail(
        err_fd,
        "proc",
        &proc_,
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    let dev = join(t, "dev");
    mkdir_p(err_fd, &dev, 0o755);
    mount_or_fail(
        err_fd,
        "tmpfs",
        &dev,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        "mode=755,size=65536k",
    );
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = join(&dev, name);
        // SAFETY: valid C string.
        unsafe {
            if libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            ) != 0
            {
                fail(err_fd, &format!("creating /dev/{name}"), &errno_str());
            }
            libc::chmod(path.as_ptr(), 0o666);
        }
    }
    let pts = join(&dev, "pts");
    mkdir_p(err_fd, &pts, 0o755);
    mount_or_fail(
        err_fd,
        "devpts",
        &pts,
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    );
    let shm = join(&dev, "shm");
    mkdir_p(err_fd, &shm, 0o1777);
    mount_or_fail(
        err_fd,
        "shm",
        &shm,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "mode=1777,size=65536k",
    );
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let (l, to) = (join(&dev, link), c(to));
        // SAFETY: valid C strings.
        unsafe { libc::symlink(to.as_ptr(), l.as_ptr()) };
    }
    harden_proc(err_fd, &proc_, &join(&dev, "null"));
    let sys = join(t, "sys");
    mkdir_p(err_fd, &sys, 0o555);
    let (sysfs, ro) = (
        c("sysfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    );
    // SAFETY: valid C strings. A missing /sys is survivable, as in buildah's chroot isolation.
    unsafe {
        libc::mount(
            sysfs.as_ptr(),
            sys.as_ptr(),
            sysfs.as_ptr(),
            ro,
            std::ptr::null(),
        )
    };
    let etc = join(t, "etc");
    mkdir_p(err_fd, &etc, 0o755);
    for (name, src) in [("hosts", &p.hosts), ("resolv.conf", &p.resolv)] {
        let dst = join(&etc, name);
        // SAFETY: valid C strings and a zeroed stat.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(dst.as_ptr(), &mut st) == 0 {
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    // A symlink (maybe out of the root) or something odd: leave it alone.
                    continue;
                }
            } else {
                let fd = libc::open(
                    dst.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    fail(err_fd, &format!("creating /etc/{name}"), &errno_str());
                }
                libc::close(fd);
            }
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                fail(err_fd, &format!("bind-mounting /etc/{name}"), &errno_str());
            }
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            );
        }
    }
    mount_steps(p, err_fd);
    seal_devices(p, err_fd);
    use nix::mount::{umount2, MntFlags};
    use nix::unistd::{chdir, pivot_root, sethostname};
    if let Err(e) = sethostname(std::ffi::OsStr::from_bytes(p.hostname.as_bytes())) {
        fail(err_fd, "sethostname", &e.to_string());
    }
    if p.new_net {
        // SAFETY: a socket and two ioctls, in the child.
        unsafe { loopback_up(err_fd) };
    }
    if p.readonly_root {
        // Only the root mount: /dev, /proc, tmpfs and bind mounts keep their own mode.
        if let Err(e) = nix::mount::mount(
            None::<&str>,
            t.as_c_str(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        ) {
            fail(err_fd, "making the root read-only", &e.to_string());
        }
    }
    if let Err(e) = chdir(t.as_c_str()) {
        fail(err_fd, "chdir to the new root", &e.to_string());
    }
    // pivot_root(".", "."): the old root ends up stacked under the new one at "."; detach it.
    if let Err(e) = pivot_root(".", ".") {
        fail(err_fd, "pivot_root", &e.to_string());
    }
    if let Err(e) = umount2(".", MntFlags::MNT_DETACH) {
        fail(err_fd, "detaching the old root", &e.to_string());
    }
    if let Err(e) = chdir("/") {
        fail(err_fd, "chdir /", &e.to_string());
    }
    // Workdir: created as root, like docker, then entered.
    let mut cur = Vec::new();
    for comp in p
        .workdir
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
    {
        cur.push(b'/');
        cur.extend_from_slice(comp);
        let path = CString::new(cur.clone()).unwrap_or_default();
        // SAFETY: valid C string.
        unsafe {
            if libc::mkdir(path.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                fail(
                    err_fd,
                    &format!("creating workdir {}", p.workdir.display()),
                    &errno_str(),
                );
            }
        }
    }
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    if let Err(e) = chdir(p.workdir.as_path()) {
        fail(
            err_fd,
            &format!("entering workdir {}", p.workdir.display()),
            &e.to_string(),
        );
    }
    wait_for_network(p, err_fd);
    // No descriptor but 0-2 survives exec: std's and ours are close-on-exec already, and
    // anything inherited from whoever started manifold becomes so here.
    // SAFETY: close_range with integer arguments closes nothing now.
    if unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) } != 0 {
        fail(
            err_fd,
            "marking inherited descriptors close-on-exec",
            &errno_str(),
        );
    }
    // SAFETY: prctl calls with integer arguments.
    unsafe { drop_capabilities() };
    // Loaded while CAP_SYS_ADMIN is still effective, so without no_new_privs, as docker does;
    // the profile allows what remains (setgroups, setgid, setuid, prctl, execve).
    if let Err(e) = p.seccomp.install() {
        fail(err_fd, "loading the seccomp filter", &e.to_string());
    }
    if let Err(e) = setgroups(&p.groups) {
        fail(err_fd, "setgroups", &e.to_string());
    }
    if let Err(e) = setgid(Gid::from_raw(p.gid)) {
        fail(err_fd, &format!("setgid {}", p.gid), &e.to_string());
    }
    if let Err(e) = setuid(Uid::from_raw(p.uid)) {
        fail(err_fd, &format!("setuid {}", p.uid), &e.to_string());
    }
    // A change of uid or gid clears the parent-death signal: set it again.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
}

/// Blocks until the network helper has configured the namespace (a byte), or fails (EOF).
fn wait_for_network(p: &Prepared, err_fd: i32) {
    if p.net_go_r < 0 {
        return;
    }
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading into a local buffer from a pipe this process holds.
        let n = unsafe { libc::read(p.net_go_r, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return;
        }
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        fail(err_fd, "the default network", "slirp4netns did not come up");
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `mount_setattr(2)` on `path` (and every mount below it with `recursive`).
fn set_mount_attr(path: &CString, recursive: bool, set: u64, clr: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_SYMLINK_NOFOLLOW | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: a valid C string and a mount_attr of the size passed, both outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Only the minimal /dev may hold devices: every other mount of the root becomes `nodev`
/// (so a device node a step makes with CAP_MKNOD cannot be opened), and /dev itself is
/// read-only once populated, so nothing new appears there. /dev/shm stays nodev.
fn seal_devices(p: &Prepared, err_fd: i32) {
    if let Err(e) = set_mount_attr(&p.target, true, MOUNT_ATTR_NODEV, 0) {
        fail(
            err_fd,
            "making the root filesystem nodev (mount_setattr needs Linux 5.12 or later)",
            &e.to_string(),
        );
    }
    let (dev, pts, masked) = &p.seal;
    for (path, set) in [(dev, MOUNT_ATTR_RDONLY), (pts, 0)] {
        if let Err(e) = set_mount_attr(path, false, set, MOUNT_ATTR_NODEV) {
            fail(err_fd, "sealing /dev", &e.to_string());
        }
    }
    // /proc's masked files are /dev/null bound over them: they must still open (empty).
    for path in masked {
        let _ = set_mount_attr(path, false, 0, MOUNT_ATTR_NODEV);
    }
}

/// RUN --mount, in the child: each target resolved (and made) inside the root, each source
/// reached through the descriptor the parent opened, so neither side can be a symlink to the
/// host; binds are not recursive, read-only ones really so, writable ones copy-on-write.
fn mount_steps(p: &Prepared, err_fd: i32) {
    use crate::inroot::{make_target, FdPath};
    use nix::mount::{mount, MsFlags};
    use std::os::fd::AsFd;
    if p.mounts.is_empty() {
        return;
    }
    let root = match rustix::fs::open(
        p.target.as_c_str(),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => fail(err_fd, "opening the step's root", &e.to_string()),
    };
    if let Some(scratch) = &p.scratch {
        if let Err(e) = mount(
            Some("tmpfs"),
            scratch.as_c_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=700"),
        ) {
            fail(err_fd, "mounting the mounts' scratch tmpfs", &e.to_string());
        }
    }
    let none = None::<&str>;
    for m in &p.mounts {
        let what = |verb: &str| format!("{verb} {}", m.target);
        let target = match make_target(root.as_fd(), &m.prefixes, &m.names, m.file) {
            Ok(fd) => fd,
            Err((at, e)) => fail(
                err_fd,
                &format!(
                    "making the mountpoint {} (at /{})",
                    m.target,
                    at.to_string_lossy()
                ),
                &if e == rustix::io::Errno::EXIST {
                    "a symlink there points at a path missing inside the root (symlinks resolve inside the step's root, never on the host); create that directory first".to_string()
                } else {
                    e.to_string()
                },
            ),
        };
        let dst = FdPath::new(target.as_raw_fd());
        let dst = dst.as_cstr();
        // Made read-only through the mount now on the target, reached again inside the root.
        let seal = |extra: MsFlags| {
            let last = m.prefixes.last().map(|c| c.as_c_str()).unwrap_or(c"/");
            let on = match rustix::fs::openat2(
                &root,
                last,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                crate::inroot::IN_ROOT,
            ) {
                Ok(fd) => fd,
                Err(e) => fail(err_fd, &what("reopening"), &e.to_string()),
            };
            let path = FdPath::new(on.as_raw_fd());
            if let Err(e) = mount(
                none,
                path.as_cstr(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                none,
            ) {
                fail(err_fd, &what("making read-only"), &e.to_string());
            }
        };
        let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        match &m.kind {
            PreparedKind::Tmpfs => {
                if let Err(e) = mount(Some("tmpfs"), dst, Some("tmpfs"), locked, Some("mode=1777"))
                {
                    fail(err_fd, &what("mounting a tmpfs at"), &e.to_string());
                }
            }
            PreparedKind::Bind { fd, readonly } => {
                use rustix::mount::MoveMountFlags as F;
                if let Err(e) = rustix::mount::move_mount(
                    fd,
                    c"",
                    &target,
                    c"",
                    F::MOVE_MOUNT_F_EMPTY_PATH | F::MOVE_MOUNT_T_EMPTY_PATH,
                ) {
                    fail(err_fd, &what("bind-mounting"), &e.to_string());
                }
                let ro = if *readonly {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                seal(locked | ro);
            }
            PreparedKind::Cow {
                fd,
                dir,
                lower,
                upper,
                work,
                opts,
            } => {
                for d in [dir, lower, upper, work] {
                    // SAFETY: valid C strings, on the scratch tmpfs.
                    if unsafe { libc::mkdir(d.as_ptr(), 0o755) } != 0 {
                        fail(
                            err_fd,
                            &format!("creating {}", d.to_string_lossy()),
                            &errno_str(),
                        );
                    }
                }
                use rustix::mount::MoveMountFlags as F;
                if let Err(e) = rustix::mount::move_mount(
                    fd,
                    c"",
                    rustix::fs::CWD,
                    lower.as_c_str(),
                    F::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error()))
                .and_then(|()| {
                    mount(
                        none,
                        lower.as_c_str(),
                        none,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
                        none,
                    )
                }) {
                    fail(err_fd, &what("binding the source of"), &e.to_string());
                }
                if let Err(e) = mount(
                    Some("overlay"),
                    dst,
                    Some("overlay"),
                    locked,
                    Some(opts.as_c_str()),
                ) {
                    fail(
                        err_fd,
                        &what("mounting copy-on-write"),
                        &format!("{e} ({})", opts.to_string_lossy()),
                    );
                }
            }
            PreparedKind::Secret {
                file,
                data,
                mode,
                uid,
                gid,
            } => {
                use rustix::fs::{Mode, OFlags};
                let f = match rustix::fs::open(
                    file.as_c_str(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                ) {
                    Ok(f) => f,
                    Err(e) => fail(err_fd, &what("writing the secret for"), &e.to_string()),
                };
                let mut rest: &[u8] = data;
                while !rest.is_empty() {
                    match rustix::io::write(&f, rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => fail(err_fd, &what("writing the secret for"), &e.to_string()),
                    }
                }
                let owned = rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )
                .and_then(|()| rustix::fs::fchmod(&f, Mode::from_raw_mode(*mode & 0o7777)));
                if let Err(e) = owned {
                    fail(
                        err_fd,
                        &what("setting the owner and mode of the secret for"),
                        &e.to_string(),
                    );
                }
                drop(f);
                if let Err(e) = mount(Some(file.as_c_str()), dst, none, MsFlags::MS_BIND, none) {
                    fail(err_fd, &what("bind-mounting the secret at"), &e.to_string());
                }
                seal(locked | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY);
            }
        }
    }
}

/// What docker (runc) makes read-only or masks in /proc: euid 0 may write most sysctls without
/// any capability, and some files leak host secrets.
const PROC_READONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
];
const PROC_MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

fn harden_proc(err_fd: i32, proc_: &CString, null: &CString) {
    let tmpfs = c("tmpfs");
    let ro_opts = c("size=0,mode=555");
    // SAFETY: raw mount calls with valid C strings; paths this kernel lacks are skipped.
    unsafe {
        let exists = |p: &CString| {
            let mut st: libc::stat = std::mem::zeroed();
            libc::lstat(p.as_ptr(), &mut st) == 0
        };
        for rel in PROC_READONLY {
            let p = join(proc_, rel);
            if !exists(&p) {
                continue;
            }
            if libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    std::ptr::null(),
                    p.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
            {
                fail(
                    err_fd,
                    &format!("making /proc/{rel} read-only"),
                    &errno_str(),
                );
            }
        }
        for rel in PROC_MASKED_FILES {
            let p = join(proc_, rel);
            if exists(&p)
                && libc::mount(
                    null.as_ptr(),
                    p.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                fail(err_fd, &format!("masking /proc/{rel}"), &errno_str());
            }
        }
        for rel in PROC_MASKED_DIRS {
            let p = join(proc_, rel);
            if exists(&p)
                && libc::mount(
                    tmpfs.as_ptr(),
                    p.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY,
                    ro_opts.as_ptr().cast(),
                ) != 0
            {
                fail(err_fd, &format!("masking /proc/{rel}"), &errno_str());
            }
        }
    }
}

/// Docker's default capability set; the rest leave the bounding set, so root in the step
/// cannot mount, load modules or change the clock.
const KEEP_CAPS: &[i32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

unsafe fn drop_capabilities() {
    for cap in 0..64 {
        if KEEP_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL past the kernel's last capability.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            break;
        }
    }
}

unsafe fn loopback_up(err_fd: i32) {
    // SAFETY: a socket and two ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail(err_fd, "socket for loopback", &errno_str());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            fail(err_fd, "reading loopback flags", &errno_str());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) != 0 {
            fail(err_fd, "bringing loopback up", &errno_str());
        }
        libc::close(fd);
    }
}
