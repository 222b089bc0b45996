//! End-to-end with a real Docker engine (docker.io's dockerd, started here with its own data
//! root): it pulls a tag merged by `imagetools create` per platform and runs each, natively and
//! under QEMU emulation, and it loads manifold's docker-archive.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Dockerd {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Option<Dockerd> {
        if !peer("dockerd") || !peer("docker") {
            return None;
        }
        // Short path: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("mf-dk")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = dir.path().join("d.sock");
        let host = format!("unix://{}", sock.display());
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .args([
                "-H",
                &host,
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .args(["--insecure-registry", "127.0.0.0/8"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("dockerd starts");
        let d = Dockerd {
            child,
            host,
            _dir: dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if d.docker(&["info"]).status.success() {
                return Some(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(d._dir.path().join("log")).unwrap_or_default();
        panic!("dockerd did not come up in 60 s:\n{log}");
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd and unmount.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_ready() -> bool {
    let ok = PathBuf::from("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    if !ok {
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!(
                "no binfmt_misc handler for aarch64: install qemu-user-static and binfmt-support"
            );
        }
        eprintln!("SKIPPED: no binfmt_misc handler for aarch64 (qemu-user-static)");
    }
    ok
}

#[test]
fn docker_pulls_and_runs_each_platform_of_a_merged_tag_and_loads_our_archive() {
    if !qemu_ready() {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let a = &reg.addr;

    // Split runners: each pushes one platform by digest into its own repository; a final job merges.
    let all = format!("{a}/src/busybox:1");
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &all],
    );
    let amd = ok(s, &["-q", "digest", "--platform", "linux/amd64", &all])
        .trim()
        .to_string();
    let arm = ok(s, &["-q", "digest", "--platform", "linux/arm64", &all])
        .trim()
        .to_string();
    ok(
        s,
        &[
            "cp",
            &format!("{a}/src/busybox@{amd}"),
            &format!("{a}/runner-amd64/busybox@{amd}"),
        ],
    );
    ok(
        s,
        &[
            "cp",
            &format!("{a}/src/busybox@{arm}"),
            &format!("{a}/runner-arm64/busybox@{arm}"),
        ],
    );
    let merged = format!("{a}/app/busybox:1");
    ok(
        s,
        &[
            "imagetools",
            "create",
            "-t",
            &merged,
            &format!("{a}/runner-amd64/busybox@{amd}"),
            &format!("{a}/runner-arm64/busybox@{arm}"),
        ],
    );

    for (platform, want) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        dockerd.ok(&["pull", "-q", "--platform", platform, &merged]);
        let out = dockerd.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            platform,
            &merged,
            "uname",
            "-m",
        ]);
        assert_eq!(out.trim(), want, "{platform}");
    }

    // docker load of a multi-platform docker-archive: one image per platform.
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("bb.tar");
    ok(s, &["pull", "--all-platforms", &merged]);
    ok(s, &["tag", &merged, "example.com/tools/busybox:1"]);
    ok(
        s,
        &[
            "save",
            "--format",
            "docker",
            "-o",
            archive.to_str().unwrap(),
            "example.com/tools/busybox:1",
        ],
    );
    let loaded = dockerd.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        loaded.contains("example.com/tools/busybox:1-linux-arm64"),
        "{loaded}"
    );
    let out = dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "example.com/tools/busybox:1-linux-arm64",
        "uname",
        "-m",
    ]);
    assert_eq!(out.trim(), "aarch64");
    let out = dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "example.com/tools/busybox:1",
        "uname",
        "-m",
    ]);
    assert_eq!(
        out.trim(),
        if cfg!(target_arch = "x86_64") {
            "x86_64"
        } else {
            "aarch64"
        }
    );

    // What `manifold build --push` makes, docker pulls and runs per platform; its docker output
    // loads and runs too.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {merged}\nRUN uname -m > /built-for\nCMD [\"cat\", \"/built-for\"]\n"),
    )
    .unwrap();
    let app = format!("{a}/app/built:1");
    let docker_tar = t.path().join("built.tar");
    ok(
        s,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &app,
            "--push",
            "-o",
            &format!("type=docker,dest={}", docker_tar.display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    for (platform, want) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        dockerd.ok(&["pull", "-q", "--platform", platform, &app]);
        let out = dockerd.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            platform,
            &app,
        ]);
        assert_eq!(out.trim(), want, "built image for {platform}");
    }
    let loaded = dockerd.ok(&["load", "-i", docker_tar.to_str().unwrap()]);
    assert!(loaded.contains("app/built:1-linux-arm64"), "{loaded}");
    let out = dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &format!("{a}/app/built:1-linux-arm64"),
    ]);
    assert_eq!(out.trim(), "aarch64");
}

/// The Docker engine pulls, runs and pushes through `manifold registry serve`.
#[test]
fn docker_pulls_runs_and_pushes_through_manifold_registry_serve() {
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let reg = tempfile::tempdir().unwrap();
    let srv = Server::start(s, &["--root", reg.path().to_str().unwrap()], &[]);
    let image = format!("{}/tools/busybox:1", srv.addr);
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &image],
    );
    dockerd.ok(&["pull", "-q", &image]);
    let out = dockerd.ok(&["run", "--rm", "--network", "none", &image, "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    // docker push: Docker v2 schema 2 content, its blobs mounted or uploaded.
    let pushed = format!("{}/pushed/busybox:2", srv.addr);
    dockerd.ok(&["tag", &image, &pushed]);
    dockerd.ok(&["push", &pushed]);
    let raw = ok(s, &["imagetools", "inspect", "--raw", &pushed]);
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    dockerd.ok(&["rmi", &image, &pushed]);
    dockerd.ok(&["pull", "-q", &pushed]);
    let out = dockerd.ok(&["run", "--rm", "--network", "none", &pushed, "echo", "again"]);
    assert_eq!(out.trim(), "again");
}
