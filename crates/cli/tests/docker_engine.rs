//! End-to-end with a real Docker engine (docker.io's dockerd, started here with its own data
//! root): it pulls a tag merged by `imagetools create` per platform and runs each, natively and
//! under QEMU emulation, and it loads manifold's docker-archive.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::dockerd::Dockerd;
use common::*;

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
            "--type",
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
    // loads and runs too. A test step that changes no file must be an empty history entry, or
    // docker refuses the pull ("too many non-empty layers in History section").
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {merged}\nRUN uname -m > /built-for\nRUN [\"/bin/sh\", \"-c\", \"test -s /built-for\"]\nCMD [\"cat\", \"/built-for\"]\n"),
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

/// `docker login` against htpasswd (Basic) and token modes, then push and pull as that user.
#[test]
fn docker_login_against_basic_and_token_modes() {
    if !peer("htpasswd") {
        return;
    }
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let htp = t.path().join("htpasswd");
    sh(Command::new("htpasswd").args(["-Bbc", htp.to_str().unwrap(), "alice", "secret"]));
    for mode in ["basic", "token"] {
        let store = tempfile::tempdir().unwrap();
        let s = store.path();
        let reg = t.path().join(mode);
        let srv = Server::start(
            s,
            &["--root", reg.to_str().unwrap()],
            &["--htpasswd", htp.to_str().unwrap(), "--auth", mode],
        );
        let cfg = t.path().join(format!("docker-config-{mode}"));
        let docker = |stdin: Option<&str>, args: &[&str]| {
            use std::io::Write as _;
            let mut c = Command::new("docker")
                .env("DOCKER_HOST", &dockerd.host)
                .env("DOCKER_CONFIG", &cfg)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(i) = stdin {
                c.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
            }
            drop(c.stdin.take());
            c.wait_with_output().unwrap()
        };
        let a = &srv.addr;
        let bad = docker(
            Some("nope\n"),
            &["login", "-u", "alice", "--password-stdin", a],
        );
        assert!(!bad.status.success(), "{mode}: a wrong password logged in");
        let good = docker(
            Some("secret\n"),
            &["login", "-u", "alice", "--password-stdin", a],
        );
        assert!(
            good.status.success(),
            "{mode}: docker login: {}",
            String::from_utf8_lossy(&good.stderr)
        );
        // manifold pushes with the same stored login; the engine pulls and runs it.
        let image = format!("{a}/private/busybox:1");
        let o = run_with(
            s,
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
            None,
            &["cp", &format!("oci:{}:latest", layout.display()), &image],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = docker(None, &["pull", "-q", &image]);
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let pushed = format!("{a}/private/again:1");
        assert!(docker(None, &["tag", &image, &pushed]).status.success());
        let o = docker(None, &["push", &pushed]);
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = dockerd.ok_env(
            &[("DOCKER_CONFIG", &cfg)],
            &["run", "--rm", "--network", "none", &pushed, "echo", "ok"],
        );
        assert_eq!(o.trim(), "ok", "{mode}");
        docker(None, &["rmi", &image, &pushed]);
        // Logged out, the engine is refused.
        assert!(docker(None, &["logout", a]).status.success());
        let o = docker(None, &["pull", "-q", &image]);
        assert!(!o.status.success(), "{mode}: pulled without a login");
    }
}

/// Removes a certs.d directory made for one test.
struct CertsD(PathBuf);
impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The engine pulls, runs and pushes over TLS from `--tls auto`, the CA placed as printed.
#[test]
fn docker_over_tls_with_the_auto_ca_in_certs_d() {
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let Some(dockerd) = Dockerd::start_with(false) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let reg = tempfile::tempdir().unwrap();
    let srv = Server::start(
        s,
        &["--root", reg.path().to_str().unwrap()],
        &["--tls", "auto"],
    );
    let a = &srv.addr;
    let image = format!("{a}/tls/busybox:1");
    // dockerd always counts 127.0.0.0/8 as insecure (TLS without verification), so the CA check
    // itself is proven by skopeo and manifold in tests/server.rs; here the engine talks HTTPS
    // (the port speaks nothing else) with no --insecure-registry of ours.
    // The line the server printed, done for the engine (and manifold, which reads certs.d too).
    let line = srv
        .log_text()
        .lines()
        .find(|l| l.contains("mkdir -p /etc/docker/certs.d/"))
        .unwrap()
        .trim()
        .to_string();
    let _certs = CertsD(PathBuf::from(format!("/etc/docker/certs.d/{a}")));
    sh(Command::new("sh").args(["-c", &line]));
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &image],
    );
    dockerd.ok(&["pull", "-q", &image]);
    let out = dockerd.ok(&["run", "--rm", "--network", "none", &image, "echo", "tls"]);
    assert_eq!(out.trim(), "tls");
    let pushed = format!("{a}/tls/pushed:1");
    dockerd.ok(&["tag", &image, &pushed]);
    dockerd.ok(&["push", &pushed]);
    assert!(ok(s, &["imagetools", "inspect", &pushed]).contains("linux/amd64"));
}

/// dockerd with `registry-mirrors` pointing at `registry serve --proxy`, pulling a Docker Hub
/// name that only the upstream (a second instance standing for Docker Hub) has.
#[test]
fn dockerd_pulls_docker_hub_names_through_the_mirror() {
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let t = tempfile::tempdir().unwrap();
    let mut hub = Server::start(s, &["--root", t.path().join("hub").to_str().unwrap()], &[]);
    ok(
        s,
        &[
            "cp",
            &format!("oci:{}:latest", layout.display()),
            &format!("{}/library/mirrored-busybox:1", hub.addr),
        ],
    );
    let mreg = t.path().join("mirror");
    let mirror = Server::start(
        s,
        &["--root", mreg.to_str().unwrap()],
        &["--proxy", &format!("http://{}", hub.addr)],
    );
    let Some(dockerd) = Dockerd::start_args(&[
        "--insecure-registry",
        "127.0.0.0/8",
        "--registry-mirror",
        &format!("http://{}", mirror.addr),
    ]) else {
        return;
    };
    dockerd.ok(&["pull", "-q", "mirrored-busybox:1"]);
    let out = dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "mirrored-busybox:1",
        "echo",
        "via mirror",
    ]);
    assert_eq!(out.trim(), "via mirror");
    assert!(
        mirror
            .log_text()
            .contains("/v2/library/mirrored-busybox/manifests/1 200"),
        "{}",
        mirror.log_text()
    );
    // With the upstream gone, the mirror alone serves it again.
    hub.stop();
    dockerd.ok(&["rmi", "mirrored-busybox:1"]);
    dockerd.ok(&["pull", "-q", "mirrored-busybox:1"]);
    // Only what was asked for is stored: the index, this platform's manifest, config, layer.
    let n = std::fs::read_dir(mreg.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(n, 4);
}

/// A build split over this machine (linux/amd64) and an SSH node (linux/arm64, under QEMU
/// there), pushed as one index: the Docker engine pulls and runs each platform.
#[test]
fn docker_runs_each_platform_of_a_build_split_over_nodes() {
    if !qemu_ready() {
        return;
    }
    let Some(node) = common::sshd::SshNode::start() else {
        return;
    };
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64", "armhf"]) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let base = format!("{}/base/busybox:1", reg.addr);
    ok(
        &root,
        &["cp", &format!("oci:{}:latest", layout.display()), &base],
    );
    let ctx = t.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN uname -m > /built-on\nCMD [\"cat\", \"/built-on\"]\n"),
    )
    .unwrap();
    let ssh = node.ssh_command(true);
    let config = t.path().join("config");
    let env = [
        ("MANIFOLD_CONFIG", config.to_str().unwrap()),
        ("MANIFOLD_SSH", ssh.as_str()),
    ];
    let must = |args: &[&str]| {
        let o = run_with(&root, &env, None, args);
        assert!(
            o.status.success(),
            "manifold {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    must(&[
        "builder",
        "create",
        "--name",
        "split",
        "--node",
        "here",
        "--platform",
        "linux/amd64",
        "local",
    ]);
    must(&[
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
    ]);
    let tag = format!("{}/app/split:1", reg.addr);
    let log = must(&[
        "build",
        "--builder",
        "split",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "--push",
        ctx.to_str().unwrap(),
    ]);
    assert!(log.contains("[arm] building linux/arm64"), "{log}");
    let Some(d) = Dockerd::start() else { return };
    for (platform, arch) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        d.ok(&["pull", "--platform", platform, &tag]);
        let out = d.ok(&["run", "--rm", "--platform", platform, &tag]);
        assert_eq!(out.trim(), arch, "{platform}");
    }
}
