//! A step's network: its own network namespace with outbound access through `slirp4netns`
//! (user-mode TCP/IP, host loopback switched off) by default, only loopback, or the host's.
//!
//! The step's first child writes its PID once it has unshared the network namespace; a helper
//! thread here starts `slirp4netns` on that namespace, waits until the tap device is configured
//! and then lets the step exec. The helper dies with the step (exit-fd) and with this process
//! (parent-death signal on the thread that started it, which lives as long as the step).

use std::fs;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::{Error, Result};

/// The network a step sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own with outbound access through slirp4netns and no route
    /// to the host's loopback (docker's bridge, without a daemon).
    #[default]
    Default,
    /// A network namespace with only loopback, up.
    None,
    /// The host's network namespace. Callers must ask the user first (`--allow network.host`).
    Host,
}

impl Network {
    /// The buildx entitlement a user must grant for this mode, if any.
    pub fn entitlement(self) -> Option<&'static str> {
        match self {
            Network::Host => Some("network.host"),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" | "sandbox" | "" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(Error::Unsupported(format!(
                "network mode {other:?}: use default, none or host"
            ))),
        }
    }
}

/// Checks that `network` is allowed by the granted entitlements (`network.host`, ...), with
/// the error buildx users know.
pub fn check_entitlement(network: Network, allowed: &[String]) -> Result<()> {
    match network.entitlement() {
        Some(e) if !allowed.iter().any(|a| a == e) => Err(Error::Unsupported(format!(
            "network mode host is not allowed: it gives RUN steps the host's network, including services on its 127.0.0.1; pass --allow {e} to grant it"
        ))),
        _ => Ok(()),
    }
}

/// The network of one RUN step: its `--network` flag (`default` means the build's), checked
/// against the granted entitlements.
pub fn for_step(step: Option<&str>, build: Network, allowed: &[String]) -> Result<Network> {
    let net = match step {
        None | Some("default") => build,
        Some(s) => s.parse()?,
    };
    check_entitlement(net, allowed)?;
    Ok(net)
}

/// slirp4netns's built-in DNS forwarder, reachable from inside the namespace.
pub const SLIRP_DNS: &str = "10.0.2.3";

/// The step's /etc/resolv.conf for `network`, from the host's `host` text.
pub fn resolv_conf(network: Network, host: &str) -> String {
    match network {
        Network::Host => host.to_string(),
        Network::None => String::new(),
        Network::Default => {
            let loopback = |l: &str| {
                l.split_whitespace().nth(1).is_some_and(|a| {
                    a.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                })
            };
            let servers: Vec<&str> = host
                .lines()
                .filter(|l| l.trim_start().starts_with("nameserver"))
                .collect();
            if servers.is_empty() || servers.iter().any(|l| loopback(l)) {
                // A host resolver on 127.0.0.53 cannot be reached from inside: slirp4netns
                // forwards 10.0.2.3 to the host's resolver instead.
                let mut out: String = host
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("nameserver"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                out.push_str(&format!("nameserver {SLIRP_DNS}\n"));
                out
            } else {
                host.to_string()
            }
        }
    }
}

/// Is slirp4netns installed? The error says what to do when not.
pub fn slirp_path() -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("slirp4netns"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Sandbox {
            what: "the default network".into(),
            reason: "slirp4netns is not installed (apt-get install slirp4netns); or choose --network none, or --network host with --allow network.host".into(),
        })
}

/// The parent's side of one step's slirp4netns.
pub(crate) struct Helper {
    /// Written by the child after unshare: its PID (4 bytes, native order).
    pub pid_w: Option<OwnedFd>,
    /// Read by the step before exec: one byte when the network is up, EOF when not.
    pub go_r: Option<OwnedFd>,
    done: mpsc::Sender<()>,
    thread: JoinHandle<std::result::Result<(), String>>,
}

impl Helper {
    pub fn start() -> Result<Helper> {
        let slirp = slirp_path()?;
        let (pid_r, pid_w) = crate::sandbox::pipe()?;
        let (go_r, go_w) = crate::sandbox::pipe()?;
        let (done, done_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("slirp4netns".into())
            .spawn(move || serve(&slirp, pid_r, go_w, done_rx))
            .map_err(|e| Error::Sandbox {
                what: "starting the network helper thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Helper {
            pid_w: Some(pid_w),
            go_r: Some(go_r),
            done,
            thread,
        })
    }

    /// The raw descriptors the child uses (valid until [`Helper::spawned`]).
    pub fn child_fds(&self) -> (RawFd, RawFd) {
        (
            self.pid_w.as_ref().map_or(-1, |f| f.as_raw_fd()),
            self.go_r.as_ref().map_or(-1, |f| f.as_raw_fd()),
        )
    }

    /// The child exists (or failed to): drop the parent's copies of its ends.
    pub fn spawned(&mut self) {
        self.pid_w = None;
        self.go_r = None;
    }

    /// The step ended: stops slirp4netns; says why the network could not be set up, if so.
    pub fn finish(mut self) -> std::result::Result<(), String> {
        self.spawned();
        let _ = self.done.send(());
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the network helper thread panicked".into()))
    }
}

fn serve(
    slirp: &std::path::Path,
    pid_r: OwnedFd,
    go_w: OwnedFd,
    done: mpsc::Receiver<()>,
) -> std::result::Result<(), String> {
    let mut buf = [0u8; 4];
    let mut pid_r = fs::File::from(pid_r);
    if pid_r.read_exact(&mut buf).is_err() {
        // The child failed before it had a namespace; it reports why.
        return Ok(());
    }
    let pid = i32::from_ne_bytes(buf);
    let (ready_r, ready_w) = crate::sandbox::pipe().map_err(|e| e.to_string())?;
    let (exit_r, exit_w) = crate::sandbox::pipe().map_err(|e| e.to_string())?;
    let mut log = tempfile::tempfile().map_err(|e| format!("a temporary file: {e}"))?;
    let log_w = log.try_clone().map_err(|e| e.to_string())?;
    let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    let mut cmd = Command::new(slirp);
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--ready-fd=3",
        "--exit-fd=4",
    ])
    .arg(pid.to_string())
    .arg("tap0")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(log_w));
    // SAFETY: in the forked child: prctl, fcntl, dup2 and close_range on descriptors this
    // process owns; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // Dies with the thread that started it, which lives until the step ends.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Moved out of the way first, so neither lands on the other's target.
            let (a, b) = (
                libc::fcntl(rw, libc::F_DUPFD_CLOEXEC, 10),
                libc::fcntl(er, libc::F_DUPFD_CLOEXEC, 10),
            );
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else, inherited or ours, reaches the helper.
            if libc::close_range(5, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(ready_w);
    drop(exit_r);
    let mut child = spawned.map_err(|e| format!("starting {}: {e}", slirp.display()))?;
    let mut ready = [0u8; 1];
    let up = fs::File::from(ready_r).read_exact(&mut ready).is_ok();
    let result = if up {
        // Tell the step to go on.
        // SAFETY: writing one byte from a local buffer to a pipe we own.
        let n = unsafe { libc::write(go_w.as_raw_fd(), ready.as_ptr().cast(), 1) };
        drop(go_w);
        if n == 1 {
            let _ = done.recv();
        }
        // Otherwise the step failed before it waited, and says why itself.
        Ok(())
    } else {
        drop(go_w);
        let _ = child.wait();
        let mut msg = String::new();
        let _ = log.rewind();
        let _ = log.read_to_string(&mut msg);
        Err(format!(
            "slirp4netns could not configure the step's network namespace: {}",
            msg.trim()
        ))
    };
    drop(exit_w);
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_past_a_loopback_resolver() {
        let host = "search example.org\nnameserver 127.0.0.53\noptions edns0\n";
        let r = resolv_conf(Network::Default, host);
        assert!(
            r.contains("nameserver 10.0.2.3") && !r.contains("127.0.0.53"),
            "{r}"
        );
        assert!(r.contains("search example.org") && r.contains("options edns0"));
        let host = "nameserver 10.255.255.53\n";
        assert_eq!(resolv_conf(Network::Default, host), host);
        assert_eq!(resolv_conf(Network::Host, host), host);
        assert_eq!(resolv_conf(Network::None, host), "");
        assert!(resolv_conf(Network::Default, "").contains("10.0.2.3"));
    }

    #[test]
    fn host_network_needs_the_entitlement() {
        assert!(check_entitlement(Network::Default, &[]).is_ok());
        assert!(check_entitlement(Network::None, &[]).is_ok());
        let e = check_entitlement(Network::Host, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow network.host"), "{e}");
        assert!(check_entitlement(Network::Host, &["network.host".into()]).is_ok());
        assert_eq!("none".parse::<Network>().unwrap(), Network::None);
        assert_eq!(for_step(None, Network::None, &[]).unwrap(), Network::None);
        assert_eq!(
            for_step(Some("default"), Network::Default, &[]).unwrap(),
            Network::Default
        );
        assert!(for_step(Some("host"), Network::Default, &[]).is_err());
        let granted = ["network.host".to_string()];
        assert_eq!(
            for_step(Some("host"), Network::None, &granted).unwrap(),
            Network::Host
        );
        assert!("bridge".parse::<Network>().is_err());
    }
}
