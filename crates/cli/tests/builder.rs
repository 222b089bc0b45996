//! Builders and nodes against a real OpenSSH server on a loopback port standing for a node: its
//! own host key, an authorized key made by the test whose `environment=` gives the node its own
//! PATH (the manifold under test) and its own store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// sshd on 127.0.0.1:PORT, killed on drop, plus a client config that trusts its host key.
struct SshNode {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl SshNode {
    fn start() -> Option<SshNode> {
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
            for (name, known) in [("ssh_config", "known_hosts"), ("ssh_config_unknown", "empty_known_hosts")] {
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

    fn endpoint(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// `MANIFOLD_SSH` for a client that knows (or does not know) the node's host key.
    fn ssh_command(&self, known: bool) -> String {
        let cfg = if known { "ssh_config" } else { "ssh_config_unknown" };
        format!("ssh -F {}", self.dir.path().join(cfg).display())
    }

    fn node_root(&self) -> PathBuf {
        self.dir.path().join("node-root")
    }
}

impl Drop for SshNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// manifold with its own config dir (builders.json) and the node's ssh settings.
fn mf(root: &Path, config: &Path, ssh: &str, args: &[&str]) -> Output {
    run_with(
        root,
        &[
            ("MANIFOLD_CONFIG", config.to_str().unwrap()),
            ("MANIFOLD_SSH", ssh),
        ],
        None,
        args,
    )
}

fn ok_out(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn create_ls_inspect_use_rm_with_an_ssh_node() {
    let Some(node) = SshNode::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (root, config) = (t.path().join("root"), t.path().join("config"));
    let ssh = node.ssh_command(true);
    let m = |args: &[&str]| mf(&root, &config, &ssh, args);

    // Before any builder exists, `default` (this machine) is current.
    let ls = ok_out(m(&["builder", "ls"]), "builder ls");
    assert!(ls.contains("default *"), "{ls}");
    let host = oci::Platform::host().short();
    assert!(ls.contains(&host), "{ls}");

    ok_out(
        m(&["builder", "create", "--name", "multi", "--node", "here", "--platform", "linux/amd64", "local"]),
        "create",
    );
    ok_out(
        m(&["builder", "create", "--name", "multi", "--append", "--node", "arm", "--platform", "linux/arm64", &node.endpoint()]),
        "create --append",
    );
    // A node that is only probed: the SSH node answers with what it runs.
    ok_out(
        m(&["builder", "create", "--name", "probed", "--use", &node.endpoint()]),
        "create --use",
    );
    let ls = ok_out(m(&["builder", "ls"]), "builder ls");
    assert!(ls.contains("probed *"), "{ls}");
    assert!(ls.contains("\\_ arm") && ls.contains(&node.endpoint()), "{ls}");
    assert!(ls.contains("linux/arm64*"), "pinned platforms are starred: {ls}");
    assert!(!ls.contains("error"), "{ls}");

    let json = ok_out(
        m(&["builder", "inspect", "--bootstrap", "probed", "--format", "json"]),
        "inspect",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let n = &v["nodes"][0];
    assert_eq!(n["status"], "running", "{json}");
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{json}");
    assert_eq!(n["native"][0], host.as_str(), "{json}");
    // The node found its emulators by running probes there (qemu-user-static is installed).
    assert!(
        n["emulated"].as_array().unwrap().iter().any(|p| p == "linux/arm64"),
        "{json}"
    );
    let text = ok_out(m(&["builder", "inspect", "probed"]), "inspect");
    assert!(text.contains("Status:        running") && text.contains("Version:       manifold"), "{text}");

    // MANIFOLD_BUILDER wins over `use`.
    let o = run_with(
        &root,
        &[
            ("MANIFOLD_CONFIG", config.to_str().unwrap()),
            ("MANIFOLD_SSH", &ssh),
            ("MANIFOLD_BUILDER", "multi"),
        ],
        None,
        &["builder", "ls"],
    );
    let ls = ok_out(o, "ls");
    assert!(ls.contains("multi *") && !ls.contains("probed *"), "{ls}");

    ok_out(m(&["builder", "use", "multi"]), "use");
    ok_out(m(&["builder", "rm", "multi", "--node", "arm"]), "rm --node");
    let ls = ok_out(m(&["builder", "ls"]), "ls");
    assert!(ls.contains("multi *") && !ls.contains("\\_ arm"), "{ls}");
    ok_out(m(&["builder", "rm", "multi"]), "rm");
    let ls = ok_out(m(&["builder", "ls"]), "ls");
    assert!(!ls.contains("multi") && ls.contains("default *"), "{ls}");

    // Mistakes are refused with what to do.
    let e = m(&["builder", "use", "nope"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("no builder named \"nope\""));
    let e = m(&["builder", "create", "--name", "probed", "local"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--append"));
    let e = m(&["builder", "rm", "default"]);
    assert!(!e.status.success());
    let e = m(&["builder", "create", "tcp://x:1"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("ssh://[USER@]HOST[:PORT]"));
    // Nothing was written on the node's disk by probing.
    assert!(!node.node_root().exists());
}

#[test]
fn an_unknown_host_key_is_a_clear_error() {
    let Some(node) = SshNode::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (root, config) = (t.path().join("root"), t.path().join("config"));
    let ssh = node.ssh_command(false);
    let m = |args: &[&str]| mf(&root, &config, &ssh, args);
    ok_out(
        m(&["builder", "create", "--name", "stranger", &node.endpoint()]),
        "create",
    );
    let o = m(&["builder", "inspect", "stranger"]);
    assert!(!o.status.success(), "an unreachable node fails inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Status:        error")
            && text.contains("host key of 127.0.0.1 is not known")
            && text.contains(&format!("ssh-keyscan -p {} 127.0.0.1", node.port)),
        "{text}"
    );
}
