//! `manifold run`: one command in an image's root filesystem, in the same sandbox as RUN steps,
//! natively or under QEMU. Nothing outlives the command: the root is an overlay over the
//! image's snapshots with a throwaway upper directory, removed when the command ends.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use engine::pipeline::ImageSource;
use oci::{Manifest, Platform};
use runtime::sandbox::{self, MountSource, SpawnHook, StdioMode, StepMount};
use runtime::snapshot::SnapshotCache;
use runtime::{Network, RunSpec, StepRoot};
use transport::Env;

use crate::global::Cli;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum NetworkMode {
    /// What build steps get by default.
    Default,
    /// Only loopback.
    None,
    /// The host's network (needs --allow network.host).
    Host,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pass standard input to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a pseudo-terminal (with -i: an interactive session).
    #[arg(short, long)]
    tty: bool,
    /// KEY=VALUE to set, or KEY to take from this environment (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A file of KEY=VALUE lines (# comments), as docker reads it (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// The working directory inside the container (created when missing).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// USER[:GROUP], names or ids; names come from the image's /etc/passwd and /etc/group.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Replace the image's ENTRYPOINT ("" clears it; the image's CMD is dropped too).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Bind a host directory or file: /host/path:/container/path[:ro] (repeatable).
    #[arg(short, long = "volume", value_name = "HOST:CTR[:ro]")]
    volume: Vec<String>,
    /// type=bind,source=HOST,target=CTR[,readonly] or type=tmpfs,target=CTR (repeatable).
    #[arg(long = "mount", value_name = "SPEC")]
    mount: Vec<String>,
    /// default (private, outbound only), none, or host (needs --allow network.host).
    #[arg(long, value_enum, default_value_t = NetworkMode::Default)]
    network: NetworkMode,
    /// Entitlements, as for builds: network.host.
    #[arg(long, value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// Mount the image's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Accepted for docker's sake: nothing outlives the command anyway.
    #[arg(long)]
    rm: bool,
    /// The container's hostname.
    #[arg(long)]
    name: Option<String>,
    /// Which platform of the image to run (default: this machine's); foreign ones run under QEMU.
    #[arg(long)]
    platform: Option<String>,
    /// The image (a name in the local store, else pulled: only the platform needed), then the
    /// command and its arguments (default: the image's ENTRYPOINT and CMD). Everything after
    /// the image is the command's, `-e` included, as with docker run.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        trailing_var_arg = true
    )]
    image_and_command: Vec<String>,
}

impl RunArgs {
    fn image(&self) -> &str {
        self.image_and_command.first().map_or("", String::as_str)
    }

    fn command(&self) -> &[String] {
        self.image_and_command.get(1..).unwrap_or_default()
    }
}

/// docker's exit codes for what went wrong before the command ran.
const CODE_SETUP: u8 = 125;
const CODE_NOT_FOUND: u8 = 127;

pub fn run(cli: &Cli, env: &Env, a: &RunArgs) -> Result<ExitCode> {
    let platform = match &a.platform {
        Some(p) => Platform::parse(p)
            .with_context(|| format!("--platform {p}"))?
            .normalized(),
        None => Platform::host(),
    };
    // Before anything is pulled or unpacked: can this machine run that platform at all?
    runtime::emulation::check(&platform)?;
    let network = match a.network {
        NetworkMode::Default => Network::default(),
        NetworkMode::None => Network::None,
        NetworkMode::Host => {
            if !a.allow.iter().any(|e| e == "network.host") {
                bail!("--network host gives the command this machine's network, including services on 127.0.0.1; allow it explicitly with --allow network.host");
            }
            Network::Host
        }
    };
    let mounts = parse_mounts(&a.volume, &a.mount)?;

    let store = transport::open_store(&env.store_root)?;
    let bases = crate::build::Bases::new(cli, env, &store);
    if let Err(e) = bases.ensure(a.image(), std::slice::from_ref(&platform), false) {
        return Err(match offered(&store, a.image()) {
            Some(list) => e.context(format!(
                "no image of {} for {platform}; the local store has {list}",
                a.image()
            )),
            None => e,
        });
    }
    let found = ImageSource::fetch(&bases, a.image(), std::slice::from_ref(&platform), false)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .next()
        .with_context(|| format!("no image of {} for {platform}", a.image()))?;
    let (manifest, config) = (found.manifest, found.config);
    let work = env.store_root.join("build");
    let snapshots = SnapshotCache::open(work.join("snapshots"))?;
    let lowers: Vec<PathBuf> = snapshots
        .unpack_image(&store, &manifest.layers, &config.rootfs.diff_ids)?
        .into_iter()
        .map(|s| s.path)
        .collect();
    let tmp = work.join("tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a directory in {}", tmp.display()))?;
    let root = StepRoot::prepare(&lowers, scratch.path())?;

    let cc = config.config.clone().unwrap_or_default();
    let entrypoint: Vec<String> = match &a.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => cc.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !a.command().is_empty() {
        a.command().to_vec()
    } else if a.entrypoint.is_some() {
        Vec::new()
    } else {
        cc.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        bail!(
            "{} has no ENTRYPOINT or CMD: name a command after the image",
            a.image()
        );
    }
    let mut vars = cc.env.clone().unwrap_or_default();
    for f in &a.env_file {
        let text =
            fs::read_to_string(f).with_context(|| format!("reading --env-file {}", f.display()))?;
        for line in text.lines() {
            let line = line.trim_start();
            if !line.is_empty() && !line.starts_with('#') {
                set_var(&mut vars, line);
            }
        }
    }
    for e in &a.env {
        set_var(&mut vars, e);
    }
    let workdir = a
        .workdir
        .clone()
        .or(cc.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !workdir.starts_with('/') {
        bail!("--workdir {workdir:?} must be an absolute path");
    }
    let user = a.user.clone().or(cc.user.clone()).filter(|u| !u.is_empty());

    let mut spec = RunSpec::new(root.rootfs.clone(), &[]);
    spec.argv = argv;
    spec.env = vars;
    spec.user = user;
    spec.workdir = workdir;
    spec.network = network;
    spec.hostname = a.name.clone().unwrap_or_else(random_hostname);
    spec.mounts = mounts;
    let host = Platform::host();
    spec.linux32 = (platform.architecture == "386" && host.architecture == "amd64")
        || (platform.architecture == "arm" && host.architecture == "arm64");
    spec.platform = Some(platform);
    spec.readonly_root = a.read_only;
    let outer = Arc::new(AtomicU32::new(0));
    let slot = outer.clone();
    spec.on_spawn = Some(SpawnHook(Arc::new(move |pid| {
        slot.store(pid, Ordering::SeqCst)
    })));

    let tty = if a.tty { Some(Tty::open()?) } else { None };
    spec.stdio = match &tty {
        Some(t) => match &t.slave {
            Some(s) => StdioMode::Tty(s.clone()),
            None => bail!("the pseudo-terminal is gone"),
        },
        None => StdioMode::Inherit {
            stdin: a.interactive,
        },
    };
    let master = tty.as_ref().map(|t| t.master.as_raw_fd());
    let forwarder = forward_signals(outer, master)?;
    let copier = match &tty {
        Some(t) => Some(t.start_copying(a.interactive)?),
        None => None,
    };
    let result = sandbox::run(&spec);
    // The spec holds a copy of the terminal: the output copier ends once every copy is closed.
    drop(spec);
    forwarder.close();
    if let Some(t) = tty {
        t.finish(copier);
    }
    drop(scratch);
    match result {
        Ok(out) => Ok(ExitCode::from(u8::try_from(out.code).unwrap_or(255))),
        Err(e) => {
            let text = e.to_string();
            eprintln!("error: {text}");
            Ok(ExitCode::from(
                if text.contains("not found in the root filesystem") {
                    CODE_NOT_FOUND
                } else {
                    CODE_SETUP
                },
            ))
        }
    }
}

/// The platforms `image` offers in the store, for the error when the wanted one is missing.
fn offered(store: &store::Layout, image: &str) -> Option<String> {
    let r = oci::Reference::parse(image).ok()?;
    let d = store.lookup(&r.to_string()).ok()??;
    match store.read_manifest(&d).ok()? {
        Manifest::Index(doc) => Some(
            doc.value()
                .manifests
                .iter()
                .filter(|m| !m.is_attestation())
                .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Manifest::Image(doc) => {
            let cfg = store.read_blob(&doc.value().config.digest).ok()?;
            let cfg = oci::Document::<oci::ImageConfig>::parse(cfg).ok()?;
            Some(cfg.value().platform().to_string())
        }
    }
}

/// docker's -e and --env-file: KEY=VALUE sets, a bare KEY copies this environment's value (or
/// nothing when unset); a later value for a key replaces the earlier one.
fn set_var(vars: &mut Vec<String>, entry: &str) {
    let kv = match entry.split_once('=') {
        Some(_) => entry.to_string(),
        None => match std::env::var(entry) {
            Ok(v) => format!("{entry}={v}"),
            Err(_) => return,
        },
    };
    let key = kv.split('=').next().unwrap_or("").to_string();
    vars.retain(|e| e.split('=').next() != Some(key.as_str()));
    vars.push(kv);
}

fn random_hostname() -> String {
    let seed = format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
    );
    oci::Digest::sha256_of(seed.as_bytes()).hex()[..12].to_string()
}

/// -v HOST:CTR[:ro|rw] and --mount type=bind|tmpfs,... as the sandbox's mounts.
fn parse_mounts(volumes: &[String], specs: &[String]) -> Result<Vec<StepMount>> {
    let mut out = Vec::new();
    for v in volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, target, opts) = match parts.as_slice() {
            [h, t] => (*h, *t, ""),
            [h, t, o] => (*h, *t, *o),
            _ => bail!("-v {v:?}: use /host/path:/container/path[:ro]"),
        };
        if !host.starts_with('/') {
            bail!("-v {v:?}: the host side must be an absolute path (named volumes need a daemon to keep them; there is none)");
        }
        let mut readonly = false;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" | "readonly" => readonly = true,
                "rw" => readonly = false,
                other => bail!("-v {v:?}: unknown option {other:?}; use ro or rw"),
            }
        }
        // docker creates a missing host directory for -v.
        if !Path::new(host).exists() {
            fs::create_dir_all(host).with_context(|| format!("-v {v:?}: creating {host}"))?;
        }
        out.push(bind(host, target, readonly, &format!("-v {v:?}"))?);
    }
    for s in specs {
        let mut kind = "volume";
        let (mut source, mut target, mut readonly) = (None, None, false);
        for part in s.split(',') {
            let (k, val) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "type" => kind = val,
                "source" | "src" => source = Some(val),
                "target" | "destination" | "dst" => target = Some(val),
                "readonly" | "ro" => readonly = val.is_empty() || val == "true" || val == "1",
                other => bail!(
                    "--mount {s:?}: unknown key {other:?}; use type, source, target, readonly"
                ),
            }
        }
        let target =
            target.with_context(|| format!("--mount {s:?} needs target=/container/path"))?;
        match kind {
            "bind" => {
                let src =
                    source.with_context(|| format!("--mount {s:?} needs source=/host/path"))?;
                if !Path::new(src).exists() {
                    bail!("--mount {s:?}: the source {src} does not exist");
                }
                out.push(bind(src, target, readonly, &format!("--mount {s:?}"))?);
            }
            "tmpfs" => out.push(StepMount {
                source: MountSource::Tmpfs,
                target: check_target(target, s)?,
                readonly: false,
            }),
            other => bail!("--mount {s:?}: type {other:?} is not supported; use bind or tmpfs"),
        }
    }
    Ok(out)
}

fn check_target(t: &str, what: &str) -> Result<String> {
    if !t.starts_with('/') || t.split('/').any(|c| c == "..") {
        bail!("{what}: the container path {t:?} must be absolute, without ..");
    }
    Ok(t.to_string())
}

fn bind(host: &str, target: &str, readonly: bool, what: &str) -> Result<StepMount> {
    let source = fs::canonicalize(host).with_context(|| format!("{what}: resolving {host}"))?;
    Ok(StepMount {
        source: MountSource::Host(source),
        target: check_target(target, what)?,
        readonly,
    })
}

/// Forwards SIGINT, SIGTERM and SIGHUP to the command (PID 1 of the sandbox: the only child of
/// its outer process), and on SIGWINCH passes this terminal's size on to the container's.
fn forward_signals(
    outer: Arc<AtomicU32>,
    master: Option<i32>,
) -> Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGWINCH])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let closed = handle.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGWINCH {
                if let Some(m) = master {
                    copy_window_size(m);
                }
                continue;
            }
            // The command may run (and be signalled) before the sandbox has told us its outer
            // process: wait for it rather than drop the signal, until the run is over.
            let mut pid1 = None;
            for _ in 0..3000 {
                let pid = outer.load(Ordering::SeqCst);
                if pid != 0 {
                    pid1 = only_child(pid);
                }
                if pid1.is_some() || closed.is_closed() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Some(pid1) = pid1 {
                // SAFETY: kill with a pid read from /proc and a valid signal number.
                unsafe { libc::kill(pid1 as libc::pid_t, sig) };
            }
        }
    });
    Ok(handle)
}

/// The child of `pid` (the sandbox's outer process has exactly one).
fn only_child(pid: u32) -> Option<u32> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    list.split_whitespace().next()?.parse().ok()
}

/// The window size of our terminal (stdin), on `fd`.
fn copy_window_size(fd: i32) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a zeroed winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(fd, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// A pseudo-terminal for the command, and this terminal in raw mode meanwhile (restored on
/// drop), so keys like Ctrl-C reach the container's terminal, as with docker run -t.
struct Tty {
    master: OwnedFd,
    /// Ours until the command ends; the output copier stops once no slave is open.
    slave: Option<Arc<OwnedFd>>,
    saved: Option<nix::sys::termios::Termios>,
}

impl Tty {
    fn open() -> Result<Tty> {
        use nix::sys::termios;
        let pty = nix::pty::openpty(None, None).context("opening a pseudo-terminal")?;
        for fd in [&pty.master, &pty.slave] {
            // Not inherited by the command: it gets the slave as fds 0-2 only.
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .context("setting close-on-exec on the pseudo-terminal")?;
        }
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if saved.is_some() {
            copy_window_size(pty.master.as_raw_fd());
        }
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
                .context("putting the terminal in raw mode")?;
        }
        Ok(Tty {
            master: pty.master,
            slave: Some(Arc::new(pty.slave)),
            saved,
        })
    }

    /// Copies the container's output to stdout until the terminal closes, and (with -i) stdin
    /// to the container. Returns the output copier.
    fn start_copying(&self, stdin: bool) -> Result<std::thread::JoinHandle<()>> {
        if stdin {
            let mut to = fs::File::from(self.master.try_clone()?);
            // Never joined: it blocks on our stdin, and ends with the process.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut input = std::io::stdin().lock();
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        let mut from = fs::File::from(self.master.try_clone()?);
        Ok(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut out = std::io::stdout();
            loop {
                match from.read(&mut buf) {
                    // EIO: every slave descriptor is closed, the session is over.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        }))
    }

    /// Closes our copy of the slave, waits for the last output; dropping restores the terminal.
    fn finish(mut self, copier: Option<std::thread::JoinHandle<()>>) {
        self.slave = None;
        if let Some(c) = copier {
            let _ = c.join();
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries_replace_by_key() {
        let mut v = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        set_var(&mut v, "A=2");
        set_var(&mut v, "B=x=y");
        set_var(&mut v, "MANIFOLD_SURELY_UNSET_VARIABLE");
        assert_eq!(v, ["PATH=/bin", "A=2", "B=x=y"]);
    }

    #[test]
    fn volumes_and_mounts() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().to_str().unwrap();
        let m = parse_mounts(
            &[format!("{h}:/data:ro"), format!("{h}:/rw")],
            &[
                "type=tmpfs,target=/scratch".into(),
                format!("type=bind,src={h},dst=/b,readonly"),
            ],
        )
        .unwrap();
        assert_eq!(m.len(), 4);
        assert!(m[0].readonly && !m[1].readonly && m[3].readonly);
        assert!(matches!(m[2].source, MountSource::Tmpfs));
        assert!(parse_mounts(&["data:/x".into()], &[]).is_err());
        assert!(parse_mounts(&[format!("{h}:/x:zz")], &[]).is_err());
        assert!(parse_mounts(&[], &["type=volume,target=/x".into()]).is_err());
        assert!(parse_mounts(&[format!("{h}:x")], &[]).is_err());
    }
}
