//! Builders and nodes against a real OpenSSH server on a loopback port standing for a node: its
//! own host key, an authorized key made by the test whose `environment=` gives the node its own
//! PATH (the manifold under test) and its own store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::SshNode;
use common::*;

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
        m(&[
            "builder",
            "create",
            "--name",
            "multi",
            "--node",
            "here",
            "--platform",
            "linux/amd64",
            "local",
        ]),
        "create",
    );
    ok_out(
        m(&[
            "builder",
            "create",
            "--name",
            "multi",
            "--append",
            "--node",
            "arm",
            "--platform",
            "linux/arm64",
            &node.endpoint(),
        ]),
        "create --append",
    );
    // A node that is only probed: the SSH node answers with what it runs.
    ok_out(
        m(&[
            "builder",
            "create",
            "--name",
            "probed",
            "--use",
            &node.endpoint(),
        ]),
        "create --use",
    );
    let ls = ok_out(m(&["builder", "ls"]), "builder ls");
    assert!(ls.contains("probed *"), "{ls}");
    assert!(
        ls.contains("\\_ arm") && ls.contains(&node.endpoint()),
        "{ls}"
    );
    assert!(
        ls.contains("linux/arm64*"),
        "pinned platforms are starred: {ls}"
    );
    assert!(!ls.contains("error"), "{ls}");

    let json = ok_out(
        m(&[
            "builder",
            "inspect",
            "--bootstrap",
            "probed",
            "--format",
            "json",
        ]),
        "inspect",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let n = &v["nodes"][0];
    assert_eq!(n["status"], "running", "{json}");
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{json}");
    assert_eq!(n["native"][0], host.as_str(), "{json}");
    // The node found its emulators by running probes there (qemu-user-static is installed).
    assert!(
        n["emulated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "linux/arm64"),
        "{json}"
    );
    let text = ok_out(m(&["builder", "inspect", "probed"]), "inspect");
    assert!(
        text.contains("Status:        running") && text.contains("Version:       manifold"),
        "{text}"
    );

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

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64", "armhf"])
}

fn digest_of(root: &Path, reference: &str) -> String {
    ok(root, &["digest", "-q", reference]).trim().to_string()
}

#[test]
fn a_split_build_gives_the_same_index_as_one_machine() {
    let Some(node) = SshNode::start() else {
        return;
    };
    let Some((reg, base)) = base() else { return };
    let t = tempfile::tempdir().unwrap();
    let (root, config) = (t.path().join("root"), t.path().join("config"));
    let ssh = node.ssh_command(true);
    let ctx = t.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY app.txt /app/\nRUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /app/token-len\nRUN uname -m > /app/arch && echo built > /app/done\n"
        ),
    )
    .unwrap();
    std::fs::write(ctx.join("app.txt"), "payload\n").unwrap();
    std::fs::write(ctx.join("ignored.bin"), "never sent\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "ignored.bin\n").unwrap();
    let token = t.path().join("token");
    std::fs::write(&token, "s3cret-value").unwrap();
    let epoch = ("SOURCE_DATE_EPOCH", "1700000000");
    let cfg = ("MANIFOLD_CONFIG", config.to_str().unwrap());
    let m = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = vec![cfg, ("MANIFOLD_SSH", ssh.as_str()), epoch];
        all.extend_from_slice(env);
        run_with(&root, &all, None, args)
    };
    let secret = format!("id=token,src={}", token.display());
    let build = |builder: &str, tag: &str| {
        m(
            &[],
            &[
                "build",
                "--builder",
                builder,
                "--platform",
                "linux/amd64,linux/arm64",
                "--secret",
                &secret,
                "-t",
                tag,
                "--push",
                ctx.to_str().unwrap(),
            ],
        )
    };
    // One machine.
    let one = format!("{}/app/one:1", reg.addr);
    ok_out(build("default", &one), "build on one machine");
    // This machine builds amd64, the SSH node arm64.
    ok_out(
        m(
            &[],
            &[
                "builder",
                "create",
                "--name",
                "split",
                "--node",
                "here",
                "--platform",
                "linux/amd64",
                "local",
            ],
        ),
        "create",
    );
    ok_out(
        m(
            &[],
            &[
                "builder",
                "create",
                "--name",
                "split",
                "--append",
                "--node",
                "arm",
                "--platform",
                "linux/arm64",
                &node.endpoint(),
            ],
        ),
        "append",
    );
    let split = format!("{}/app/split:1", reg.addr);
    let o = build("split", &split);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("[arm] building linux/arm64 on ssh://")
            && stderr.contains("[here] building linux/amd64 on local"),
        "{stderr}"
    );
    // A node that never saw the context gets it; its result comes back blob by blob.
    assert!(stderr.contains("[arm] done: context sent"), "{stderr}");
    // The local node builds in this process: no node-build child for it.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("[here] [linux/amd64 ") && l.contains("RUN uname")),
        "{stderr}"
    );
    // The node's own progress comes back under its name.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("[arm] ") && l.contains("RUN uname")),
        "{stderr}"
    );
    assert_eq!(
        digest_of(&root, &one),
        digest_of(&root, &split),
        "the split build's index differs from one machine's"
    );
    // The arm64 image was made on the node: its store holds the steps; the secret was never
    // written there, and the ignored file never sent.
    assert!(node.node_root().join("index.json").exists());
    let found = Command::new("grep")
        .args(["-r", "-l", "s3cret-value"])
        .arg(node.node_root())
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "the secret reached the node's disk"
    );
    // Each platform's image says where it ran and saw the secret.
    let fs_out = t.path().join("fs");
    let o = m(
        &[],
        &[
            "build",
            "--builder",
            "split",
            "--platform",
            "linux/amd64,linux/arm64",
            "--secret",
            &secret,
            "-o",
            &format!("type=local,dest={}", fs_out.display()),
            ctx.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build -o local: {stderr}");
    // The same context again: the node kept it, and this store has every blob of its result.
    let done = stderr
        .lines()
        .find(|l| l.starts_with("[arm] done:"))
        .unwrap_or_else(|| panic!("no done line: {stderr}"));
    assert!(
        done.contains("context kept on the node") && done.contains("(0 of "),
        "{done}"
    );
    for (p, arch) in [("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")] {
        let d = fs_out.join(p).join("app");
        assert_eq!(
            std::fs::read_to_string(d.join("arch")).unwrap().trim(),
            arch
        );
        assert_eq!(
            std::fs::read_to_string(d.join("token-len")).unwrap().trim(),
            "12"
        );
        assert!(!fs_out.join(p).join("ignored.bin").exists());
    }
}

#[test]
fn a_node_that_dies_fails_the_build_and_stops_the_others() {
    // A marker unique to this test names the sleeping steps.
    let Some(f) = Fixture::start("FROM {base}\nRUN echo started && sleep 4711\n") else {
        return;
    };
    let f = f.split();
    let (node, reg, root) = (&f.node, &f.reg, &f.root);
    let tag = format!("{}/app/killed:1", reg.addr);
    let mut child = f.spawn_split_push(&tag);
    // Wait until both platforms' steps sleep, then kill the node's manifold.
    let sleeping = || processes_with("sleep 4711");
    let node_builds = || node_builds_of(node);
    let start = Instant::now();
    while sleeping().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the steps never started"
        );
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the build ended early ({st}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let victims = node_builds();
    assert!(
        !victims.is_empty(),
        "no node-build process found on the node"
    );
    for pid in victims {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the build survived its node: {stderr}"
    );
    assert!(
        stderr.contains("node arm (ssh://") && stderr.contains("failed while building linux/arm64"),
        "{stderr}"
    );
    // Nothing was pushed, and no step of either platform is left running.
    let tags = run(root, &["tags", &format!("{}/app/killed", reg.addr)]);
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains('1'),
        "a tag was pushed: {}",
        String::from_utf8_lossy(&tags.stdout)
    );
    let start = Instant::now();
    while !sleeping().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "steps outlived the build: {:?}",
            sleeping()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_node_imports_a_registry_cache_and_one_cache_exports_them_all() {
    let Some(node) = SshNode::start() else {
        return;
    };
    let Some((reg, base)) = base() else { return };
    let t = tempfile::tempdir().unwrap();
    let config = t.path().join("config");
    let ssh = node.ssh_command(true);
    let ctx = t.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN uname -m > /arch\nRUN echo cached > /done\n"),
    )
    .unwrap();
    let env = [
        ("MANIFOLD_CONFIG", config.to_str().unwrap()),
        ("MANIFOLD_SSH", ssh.as_str()),
        ("SOURCE_DATE_EPOCH", "1700000000"),
    ];
    let cache = format!("type=registry,ref={}/cache/app:1", reg.addr);
    // One machine builds and exports the cache.
    let first = t.path().join("first");
    let one = format!("{}/app/one:1", reg.addr);
    ok_out(
        run_with(
            &first,
            &env,
            None,
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "--cache-to",
                &format!("{cache},mode=max"),
                "-t",
                &one,
                "--push",
                ctx.to_str().unwrap(),
            ],
        ),
        "build with --cache-to",
    );
    for (name, platform, endpoint) in [
        ("here", "linux/amd64", "local".to_string()),
        ("arm", "linux/arm64", node.endpoint()),
    ] {
        let mut args = vec!["builder", "create", "--name", "split"];
        if name == "arm" {
            args.push("--append");
        }
        args.extend(["--node", name, "--platform", platform, &endpoint]);
        ok_out(run_with(&first, &env, None, &args), "create");
    }
    // Empty stores here and on the node: both sides take every step from the cache.
    let second = t.path().join("second");
    let cache2 = format!("type=registry,ref={}/cache/split:1", reg.addr);
    let two = format!("{}/app/two:1", reg.addr);
    let o = run_with(
        &second,
        &env,
        None,
        &[
            "build",
            "--builder",
            "split",
            "--platform",
            "linux/amd64,linux/arm64",
            "--cache-from",
            &cache,
            "--cache-to",
            &format!("{cache2},mode=max"),
            "-t",
            &two,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    for (node, platform) in [("here", "linux/amd64"), ("arm", "linux/arm64")] {
        for step in ["RUN uname", "RUN echo cached"] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("[{node}] [{platform} "))
                        && l.contains(step)
                        && l.contains("CACHED")),
                "{node} did not take {step} from the cache: {stderr}"
            );
        }
    }
    assert!(!stderr.contains("warning: --cache"), "{stderr}");
    assert_eq!(digest_of(&second, &one), digest_of(&second, &two));
    // The split build's one cache holds both nodes' steps: a third machine takes every step of
    // both platforms from it.
    let third = t.path().join("third");
    let three = format!("{}/app/three:1", reg.addr);
    let o = run_with(
        &third,
        &env,
        None,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--cache-from",
            &cache2,
            "-t",
            &three,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    for platform in ["linux/amd64", "linux/arm64"] {
        for step in ["RUN uname", "RUN echo cached"] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("[{platform} "))
                        && l.contains(step)
                        && l.contains("CACHED")),
                "{platform} {step} was not in the split build's cache: {stderr}"
            );
        }
    }
    assert_eq!(digest_of(&third, &one), digest_of(&third, &three));
}

/// An SSH node, the test registry with busybox (`base`), and a context whose Dockerfile is
/// `dockerfile` with `{base}` standing for that image.
struct Fixture {
    node: SshNode,
    reg: Registry,
    base: String,
    t: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    ssh: String,
    ctx: PathBuf,
}

impl Fixture {
    fn start(dockerfile: &str) -> Option<Fixture> {
        let node = SshNode::start()?;
        let (reg, base) = base()?;
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile.replace("{base}", &base)).unwrap();
        Some(Fixture {
            ssh: node.ssh_command(true),
            root: t.path().join("root"),
            config: t.path().join("config"),
            node,
            reg,
            base,
            t,
            ctx,
        })
    }

    /// [`Fixture::start`] with [`Fixture::remote_arm`], for tests that put a Python proxy in
    /// front of the node's manifold.
    fn remote_arm_for_a_proxy(dockerfile: &str) -> Option<Fixture> {
        if !peer("python3") {
            return None;
        }
        Some(Fixture::start(dockerfile)?.remote_arm())
    }

    /// With a builder `remote` of the SSH node alone, pinned to linux/arm64.
    fn remote_arm(self) -> Fixture {
        ok_out(
            self.m(&[
                "builder",
                "create",
                "--name",
                "remote",
                "--platform",
                "linux/arm64",
                &self.node.endpoint(),
            ]),
            "create",
        );
        self
    }

    /// With a builder `split`: node `here` (this machine) pinned to linux/amd64, node `arm` (the
    /// SSH node) pinned to linux/arm64.
    fn split(self) -> Fixture {
        for (append, node_name, platform, endpoint) in [
            (false, "here", "linux/amd64", "local".to_string()),
            (true, "arm", "linux/arm64", self.node.endpoint()),
        ] {
            let mut args = vec!["builder", "create", "--name", "split"];
            if append {
                args.push("--append");
            }
            args.extend(["--node", node_name, "--platform", platform, &endpoint]);
            ok_out(self.m(&args), "create");
        }
        self
    }

    fn m(&self, args: &[&str]) -> Output {
        mf(&self.root, &self.config, &self.ssh, args)
    }

    /// Starts a build of both platforms on builder `split`, pushed as `tag`.
    fn spawn_split_push(&self, tag: &str) -> Child {
        Command::new(manifold_bin())
            .env("MANIFOLD_ROOT", &self.root)
            .env("MANIFOLD_CONFIG", &self.config)
            .env("MANIFOLD_SSH", &self.ssh)
            .args([
                "build",
                "--builder",
                "split",
                "--platform",
                "linux/amd64,linux/arm64",
                "-t",
                tag,
                "--push",
            ])
            .arg(&self.ctx)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The `node-build` processes running with `node`'s store.
fn node_builds_of(node: &SshNode) -> Vec<u32> {
    let want = format!("MANIFOLD_ROOT={}", node.node_root().display());
    processes_with("node-build")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                String::from_utf8_lossy(&env)
                    .split('\0')
                    .any(|kv| kv == want)
            })
        })
        .collect()
}

/// The processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(marker)
        {
            v.push(pid);
        }
    }
    v
}

/// The node's manifold behind a proxy that flips one byte of the first blob it sends back, then
/// fails as a broken node would (its exit status must not hide what this side found: which of
/// the two is seen first is a race).
const CORRUPTING_PROXY: &str = r#"#!/usr/bin/env python3
import os, subprocess, sys, threading
p = subprocess.Popen([REAL] + sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def feed():
    while True:
        b = os.read(0, 65536)
        if not b:
            break
        p.stdin.write(b)
        p.stdin.flush()
    p.stdin.close()
threading.Thread(target=feed, daemon=True).start()
lines, flipped = 0, sys.argv[1:3] != ["builder", "node-build"]
while True:
    b = os.read(p.stdout.fileno(), 65536)
    if not b:
        break
    i = 0
    while not flipped and i < len(b):
        if lines == 2:
            b = b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
            flipped = True
        elif b[i] == 10:
            lines += 1
        i += 1
    try:
        sys.stdout.buffer.write(b)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        break
rc = p.wait()
sys.exit(rc or (120 if sys.argv[1:3] == ["builder", "node-build"] else 0))
"#;

#[test]
fn a_changed_context_is_sent_again_and_a_bad_blob_fails_the_build() {
    let Some(r) = Fixture::remote_arm_for_a_proxy(
        "FROM {base}\nCOPY app.txt /app.txt\nRUN cat /app.txt > /seen\n",
    ) else {
        return;
    };
    let (t, ctx, node, reg, root) = (&r.t, &r.ctx, &r.node, &r.reg, &r.root);
    let m = |args: &[&str]| r.m(args);
    let build = |tag: &str, out: &Path| {
        m(&[
            "build",
            "--builder",
            "remote",
            "--platform",
            "linux/arm64",
            "-t",
            tag,
            "--push",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ])
    };
    for (i, text) in ["one\n", "two\n"].iter().enumerate() {
        std::fs::write(ctx.join("app.txt"), text).unwrap();
        let out = t.path().join(format!("out{i}"));
        let o = build(&format!("{}/app/ok:{i}", reg.addr), &out);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("[remote0] done: context sent"), "{stderr}");
        assert_eq!(std::fs::read_to_string(out.join("seen")).unwrap(), *text);
    }
    // A node whose blob does not match its digest: nothing of it is kept, nothing pushed.
    node.replace_manifold(&CORRUPTING_PROXY.replace(
        "REAL",
        &format!("{:?}", manifold_bin().display().to_string()),
    ));
    std::fs::write(ctx.join("app.txt"), "three\n").unwrap();
    let o = build(&format!("{}/app/bad:1", reg.addr), &t.path().join("bad"));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "a corrupted blob was accepted: {stderr}"
    );
    assert!(
        stderr.contains("node remote0 (ssh://") && stderr.contains("receiving blob sha256:"),
        "{stderr}"
    );
    let tags = run(root, &["tags", &format!("{}/app/bad", reg.addr)]);
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains('1'),
        "a tag was pushed: {}",
        String::from_utf8_lossy(&tags.stdout)
    );
    assert!(!t.path().join("bad").exists());
}

/// The node's manifold behind a proxy that holds the build context back, once the node has
/// asked for it, until the node reports its `RUN date` step done (at most 60 s), then one second
/// more. It writes the second it let the context through to RELEASED.
const SLOW_CONTEXT_PROXY: &str = r#"#!/usr/bin/env python3
import os, subprocess, sys, threading, time
p = subprocess.Popen([REAL] + sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
asked, ran = threading.Event(), threading.Event()
def progress():
    for line in p.stderr:
        text = line.decode(errors="replace").rstrip()
        if "RUN date" in text and not text.endswith("..."):
            ran.set()
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
threading.Thread(target=progress, daemon=True).start()
def feed():
    held = False
    while True:
        b = os.read(0, 65536)
        if not b:
            break
        if asked.is_set() and not held:
            held = True
            ran.wait(60)
            time.sleep(1.1)
            with open(RELEASED, "w") as f:
                f.write(str(int(time.time())))
        p.stdin.write(b)
        p.stdin.flush()
    p.stdin.close()
threading.Thread(target=feed, daemon=True).start()
seen = b""
while True:
    b = os.read(p.stdout.fileno(), 65536)
    if not b:
        break
    if not asked.is_set():
        seen += b
        if sys.argv[1:3] == ["builder", "node-build"] and b"need\n" in seen:
            asked.set()
    sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()
sys.exit(p.wait())
"#;

#[test]
fn a_node_runs_the_steps_before_the_first_copy_while_the_context_arrives() {
    let Some(r) = Fixture::remote_arm_for_a_proxy(
        "FROM {base}\nRUN date +%s > /ran\nCOPY app.txt /app.txt\n",
    ) else {
        return;
    };
    let (t, ctx, node) = (&r.t, &r.ctx, &r.node);
    std::fs::write(ctx.join("app.txt"), "late\n").unwrap();
    let m = |args: &[&str]| r.m(args);
    let released = t.path().join("released");
    node.replace_manifold(
        &SLOW_CONTEXT_PROXY
            .replace(
                "REAL",
                &format!("{:?}", manifold_bin().display().to_string()),
            )
            .replace("RELEASED", &format!("{:?}", released.display().to_string())),
    );
    let out = t.path().join("out");
    let o = m(&[
        "build",
        "--builder",
        "remote",
        "--platform",
        "linux/arm64",
        "-o",
        &format!("type=local,dest={}", out.display()),
        ctx.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let second = |p: &Path| -> u64 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}\n{stderr}", p.display()))
            .trim()
            .parse()
            .unwrap()
    };
    let (ran, arrived) = (second(&out.join("ran")), second(&released));
    assert!(
        ran < arrived,
        "the RUN before the COPY waited for the context (ran at {ran}, context let through at {arrived}):\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("app.txt")).unwrap(),
        "late\n"
    );
}

#[test]
fn build_contexts_reach_every_node_images_directories_and_oci_layouts() {
    // `mybase` and `notes` are nothing anywhere: only the named contexts make them.
    let Some(f) =
        Fixture::start("FROM mybase\nCOPY --from=notes . /notes/\nRUN uname -m > /arch\n")
    else {
        return;
    };
    let f = f.split();
    let (t, root, ctx, base) = (&f.t, &f.root, &f.ctx, &f.base);
    let notes = t.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("note.txt"), "first\n").unwrap();
    std::fs::write(notes.join("secret.txt"), "never sent\n").unwrap();
    std::fs::write(notes.join(".dockerignore"), "secret.txt\n").unwrap();
    let layout = t.path().join("layout");
    ok_out(
        run(root, &["cp", base, &format!("oci:{}:v1", layout.display())]),
        "cp to an OCI layout",
    );
    let m = |args: &[&str]| f.m(args);
    let notes_spec = format!("notes={}", notes.display());
    let build = |base_spec: &str, out: &Path| {
        let o = m(&[
            "build",
            "--builder",
            "split",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-context",
            base_spec,
            "--build-context",
            &notes_spec,
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        assert!(
            stderr.contains("[arm] building linux/arm64 on ssh://"),
            "{stderr}"
        );
        stderr
    };
    let check = |out: &Path, note: &str, stderr: &str| {
        for (p, arch) in [("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")] {
            let r = out.join(p);
            assert_eq!(
                std::fs::read_to_string(r.join("arch")).unwrap().trim(),
                arch,
                "{stderr}"
            );
            assert_eq!(
                std::fs::read_to_string(r.join("notes/note.txt")).unwrap(),
                note,
                "{p}: {stderr}"
            );
            assert!(!r.join("notes/secret.txt").exists(), "{p}: {stderr}");
        }
    };
    // An image and a directory.
    let out = t.path().join("out1");
    let stderr = build(&format!("mybase=docker-image://{base}"), &out);
    check(&out, "first\n", &stderr);
    // An OCI layout here, and the directory changed: the node gets the new one.
    std::fs::write(notes.join("note.txt"), "second\n").unwrap();
    let out = t.path().join("out2");
    let stderr = build(
        &format!("mybase=oci-layout://{}:v1", layout.display()),
        &out,
    );
    check(&out, "second\n", &stderr);
}

#[test]
fn a_local_node_that_fails_stops_the_ssh_nodes() {
    // amd64 (here) waits for the test's go-ahead, then fails; arm64 (the SSH node) sleeps.
    let Some(f) = Fixture::start(
        "FROM {base}\nRUN --mount=type=bind,target=/ctx if [ \"$(uname -m)\" = x86_64 ]; then while [ ! -e /ctx/go ]; do sleep 0.1; done; exit 7; fi; sleep 4713\n",
    ) else {
        return;
    };
    let f = f.split();
    let tag = format!("{}/app/stopped:1", f.reg.addr);
    let child = f.spawn_split_push(&tag);
    let start = Instant::now();
    while processes_with("sleep 4713").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the SSH node's step never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(f.ctx.join("go"), "").unwrap();
    let failed_at = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if failed_at.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the build waited for the SSH node's step: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("node here (local) failed while building linux/amd64"),
        "{stderr}"
    );
    // The node's step and its manifold are gone, and nothing was pushed.
    let start = Instant::now();
    while !processes_with("sleep 4713").is_empty() || !node_builds_of(&f.node).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the SSH node's build outlived the failure: {:?} {:?}",
            processes_with("sleep 4713"),
            node_builds_of(&f.node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tags = run(&f.root, &["tags", &format!("{}/app/stopped", f.reg.addr)]);
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains('1'),
        "a tag was pushed: {}",
        String::from_utf8_lossy(&tags.stdout)
    );
}

/// An ssh-agent holding one fresh key, killed on drop.
struct Agent {
    dir: tempfile::TempDir,
    child: Child,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent starts");
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "ssh-agent did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path().join("key")));
        sh(Command::new("ssh-add")
            .arg(dir.path().join("key"))
            .env("SSH_AUTH_SOCK", &sock));
        Agent { dir, child }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_mount_ssh_reaches_the_agent_here_and_on_a_node() {
    if !peer("gcc") || !peer("ssh-agent") {
        return;
    }
    let Some(node) = SshNode::start() else {
        return;
    };
    let Some((_reg, base)) = base() else { return };
    let t = tempfile::tempdir().unwrap();
    let (root, config) = (t.path().join("root"), t.path().join("config"));
    let ctx = t.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    sh(Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(ctx.join("agentq"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agentq.c")));
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY agentq /agentq\nRUN --mount=type=ssh /agentq > /agent.txt\nRUN --mount=type=ssh,id=deploy,target=/tmp/deploy.sock SSH_AUTH_SOCK=/tmp/deploy.sock /agentq > /deploy.txt\n"),
    )
    .unwrap();
    let agent = Agent::start();
    let ssh = node.ssh_command(true);
    let sock = agent.sock();
    let env = [
        ("MANIFOLD_CONFIG", config.to_str().unwrap()),
        ("MANIFOLD_SSH", ssh.as_str()),
        ("SSH_AUTH_SOCK", sock.to_str().unwrap()),
    ];
    ok_out(
        run_with(
            &root,
            &env,
            None,
            &[
                "builder",
                "create",
                "--name",
                "remote",
                "--platform",
                "linux/amd64",
                &node.endpoint(),
            ],
        ),
        "create",
    );
    let key = agent.dir.path().join("key");
    for builder in ["default", "remote"] {
        let out = t.path().join(format!("out-{builder}"));
        let o = run_with(
            &root,
            &env,
            None,
            &[
                "build",
                "--builder",
                builder,
                "--no-cache",
                "--ssh",
                "default",
                "--ssh",
                &format!(
                    "deploy={}",
                    if builder == "default" {
                        key.display().to_string()
                    } else {
                        sock.display().to_string()
                    }
                ),
                "-o",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        );
        ok_out(o, &format!("build with --ssh on {builder}"));
        for f in ["agent.txt", "deploy.txt"] {
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            assert!(
                text.contains("answered type 12 with 1 keys"),
                "{builder} {f}: {text}"
            );
        }
        assert!(
            std::fs::read_to_string(out.join("agent.txt"))
                .unwrap()
                .contains("/run/buildkit/ssh_agent.0"),
            "SSH_AUTH_SOCK names the mount"
        );
        // The mount point leaves nothing in the image.
        assert!(!out.join("run/buildkit/ssh_agent.0").exists(), "{builder}");
    }
    // A required agent that was not forwarded is a clear error.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN --mount=type=ssh,id=missing,required=true true\n"),
    )
    .unwrap();
    let o = run_with(&root, &env, None, &["build", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--ssh missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
