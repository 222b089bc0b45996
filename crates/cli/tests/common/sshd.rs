//! An OpenSSH server on a loopback port standing for a build node: its own host key, an
//! authorized key made here whose `environment=` gives the node its own PATH (the manifold under
//! test) and its own store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{manifold_bin, peer, sh};

/// sshd on 127.0.0.1:PORT, killed on drop, plus a client config that trusts its host key.
pub struct SshNode {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl SshNode {
    pub fn start() -> Option<SshNode> {
        if !peer("ssh") || !peer("ssh-keygen") {
            return None;
        }
        if !Path::new("/usr/sbin/sshd").exists() {
            if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("/usr/sbin/sshd is missing and MANIFOLD_REQUIRE_PEERS=1: apt-get install openssh-server");
            }
            eprintln!("SKIPPED: /usr/sbin/sshd is not installed (openssh-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keygen = |file: &Path| {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(file));
        };
        keygen(&d.join("host_key"));
        keygen(&d.join("id"));
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(manifold_bin(), bin.join("manifold")).unwrap();
        let node_root = d.join("node-root");
        let pubkey = std::fs::read_to_string(d.join("id.pub")).unwrap();
        std::fs::write(
            d.join("authorized_keys"),
            format!(
                "environment=\"PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",environment=\"MANIFOLD_ROOT={}\" {}",
                bin.display(),
                node_root.display(),
                pubkey
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            std::fs::write(
                d.join("sshd_config"),
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\nPermitUserEnvironment yes\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n",
                    hk = d.join("host_key").display(),
                    ak = d.join("authorized_keys").display(),
                    pid = d.join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
            std::fs::write(
                d.join("known_hosts"),
                format!("[127.0.0.1]:{port} {host_pub}"),
            )
            .unwrap();
            std::fs::write(d.join("empty_known_hosts"), "").unwrap();
            for (name, known) in [
                ("ssh_config", "known_hosts"),
                ("ssh_config_unknown", "empty_known_hosts"),
            ] {
                std::fs::write(
                    d.join(name),
                    format!(
                        "Host *\n  IdentityFile {id}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                        id = d.join("id").display(),
                        kh = d.join(known).display(),
                    ),
                )
                .unwrap();
            }
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd starts");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(SshNode { dir, port, child });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start on a free port after 3 tries");
    }

    pub fn endpoint(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// `MANIFOLD_SSH` for a client that knows (or does not know) the node's host key.
    pub fn ssh_command(&self, known: bool) -> String {
        let cfg = if known {
            "ssh_config"
        } else {
            "ssh_config_unknown"
        };
        format!("ssh -F {}", self.dir.path().join(cfg).display())
    }

    /// Puts `program` (an executable script) first in the node's PATH as `manifold`, in place
    /// of the manifold under test, for fault injection.
    pub fn replace_manifold(&self, program: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join("bin/manifold");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, program).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn node_root(&self) -> PathBuf {
        self.dir.path().join("node-root")
    }
}

impl Drop for SshNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
