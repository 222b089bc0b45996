//! `--ssh`: SSH agents a build forwards into `RUN --mount=type=ssh`, as buildx does. `default`
//! is the user's `SSH_AUTH_SOCK`; `ID=SOCKET` names an agent socket; `ID=KEY[,KEY]` loads key
//! files into a private `ssh-agent` that lives as long as the build.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The agents of one build: id → socket, and the private agents to stop at the end.
#[derive(Default)]
pub struct Agents {
    pub sockets: BTreeMap<String, PathBuf>,
    private: Vec<(Child, tempfile::TempDir)>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (child, _) in &mut self.private {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Agents {
    pub fn from_specs(specs: &[String]) -> Result<Agents> {
        let mut out = Agents::default();
        for spec in specs {
            let (id, paths) = match spec.split_once('=') {
                Some((id, p)) => (id.trim(), p.split(',').map(str::trim).collect::<Vec<_>>()),
                None => (spec.trim(), Vec::new()),
            };
            if id.is_empty() {
                bail!("--ssh {spec:?}: use default, ID, ID=SOCKET or ID=KEY[,KEY]");
            }
            let socket = if paths.is_empty() {
                let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).with_context(|| {
                    format!("--ssh {id}: SSH_AUTH_SOCK is not set; start an agent (eval $(ssh-agent); ssh-add) or name a socket or key with --ssh {id}=PATH")
                })?;
                PathBuf::from(sock)
            } else if paths.len() == 1 && is_socket(paths[0]) {
                PathBuf::from(paths[0])
            } else {
                out.private_agent(id, &paths)?
            };
            if !is_socket(&socket.to_string_lossy()) {
                bail!("--ssh {id}: {} is not an agent socket", socket.display());
            }
            out.sockets.insert(id.to_string(), socket);
        }
        Ok(out)
    }

    /// Starts `ssh-agent` on a private socket and adds the keys to it.
    fn private_agent(&mut self, id: &str, keys: &[&str]) -> Result<PathBuf> {
        let dir = tempfile::Builder::new()
            .prefix("manifold-ssh-")
            .tempdir()
            .context("creating a directory for the agent")?;
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("--ssh {id}: starting ssh-agent (install openssh-client)"))?;
        self.private.push((child, dir));
        // The socket file appears at bind(); the agent answers after listen().
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for key in keys {
            let out = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &sock)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("--ssh {id}: running ssh-add"))?;
            if !out.status.success() {
                bail!(
                    "--ssh {id}: {key} could not be loaded into an agent: {} (keys with a passphrase need an agent of your own: --ssh {id}=$SSH_AUTH_SOCK)",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(sock)
    }
}

fn is_socket(p: &str) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}
