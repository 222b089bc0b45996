//! End-to-end: `manifold run` on a real busybox image from Debian for seven platforms, natively
//! and under the host's QEMU handlers: the image's config, docker's flags, exit codes, stdin, a
//! session on a real pseudo-terminal, forwarded signals, and pulling what is missing.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

/// Debian architecture, OCI platform, what `uname -m` says there.
const PLATFORMS: &[(&str, &str, &str)] = &[
    ("amd64", "linux/amd64", "x86_64"),
    ("arm64", "linux/arm64", "aarch64"),
    ("armhf", "linux/arm/v7", "armv7l"),
    ("i386", "linux/386", "i686"),
    ("ppc64el", "linux/ppc64le", "ppc64le"),
    ("s390x", "linux/s390x", "s390x"),
    // A mips64el kernel (and QEMU) says mips64.
    ("mips64el", "linux/mips64le", "mips64"),
];

/// The multi-platform busybox layout for every platform above.
fn layout() -> Option<PathBuf> {
    let arches: Vec<&str> = PLATFORMS.iter().map(|p| p.0).collect();
    busybox_layout(&arches).map(|(dir, _)| dir)
}

/// A store holding that image as `bb:latest`.
fn store() -> Option<tempfile::TempDir> {
    if !peer("qemu-aarch64-static") {
        return None;
    }
    let layout = layout()?;
    let t = tempfile::tempdir().unwrap();
    ok(
        t.path(),
        &[
            "cp",
            &format!("oci:{}:latest", layout.display()),
            "store:bb:latest",
        ],
    );
    Some(t)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn every_platform_prints_its_own_machine() {
    let Some(s) = store() else { return };
    for (_, platform, machine) in PLATFORMS {
        let out = ok(
            s.path(),
            &["run", "--platform", platform, "bb", "uname", "-m"],
        );
        assert_eq!(out.trim(), *machine, "{platform}");
    }
}

/// An OCI layout `DIR:latest` for linux/riscv64 holding one program, `/uname-m`, as its Cmd.
fn riscv64_layout(dir: &std::path::Path) {
    let bin = fs::read(repo_root().join("crates/cli/tests/fixtures/uname-m.riscv64")).unwrap();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let d = oci::Digest::sha256_of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        (d.to_string(), b.len())
    };
    let mut header = tar::Header::new_gnu();
    header.set_path("uname-m").unwrap();
    header.set_size(bin.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, bin.as_slice()).unwrap();
    let (ld, ls) = put(&b.into_inner().unwrap());
    let (cd, cs) = put(format!(r#"{{"architecture":"riscv64","os":"linux","config":{{"Cmd":["/uname-m"]}},"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#).as_bytes());
    let (md, ms) = put(format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#).as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"platform":{{"architecture":"riscv64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#),
    )
    .unwrap();
}

#[test]
fn riscv64_prints_its_own_machine() {
    // Debian 12 has no riscv64 port (no busybox): a riscv64 program of our own instead.
    if !peer("qemu-riscv64-static") {
        return;
    }
    let s = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    riscv64_layout(layout.path());
    ok(
        s.path(),
        &[
            "cp",
            &format!("oci:{}:latest", layout.path().display()),
            "store:rv:1",
        ],
    );
    let out = ok(s.path(), &["run", "--platform", "linux/riscv64", "rv:1"]);
    assert_eq!(out, "riscv64\n");
}

#[test]
fn exit_codes_propagate() {
    let Some(s) = store() else { return };
    let out = run(s.path(), &["run", "bb", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = run(
        s.path(),
        &[
            "run",
            "--platform",
            "linux/arm64",
            "bb",
            "sh",
            "-c",
            "exit 9",
        ],
    );
    assert_eq!(out.status.code(), Some(9));
    // docker's code for a command that is not there.
    let out = run(s.path(), &["run", "bb", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no-such-command"));
}

#[test]
fn env_workdir_user_and_the_images_config() {
    let Some(s) = store() else { return };
    let f = s.path().join("vars.env");
    fs::write(&f, "# a comment\nFROM_FILE=file value\nSHARED=from-file\n").unwrap();
    let out = ok(
        s.path(),
        &[
            "run",
            "--env-file",
            f.to_str().unwrap(),
            "-e",
            "SHARED=from-flag",
            "-e",
            "FOO=bar",
            "-w",
            "/work/dir",
            "-u",
            "nobody",
            "bb",
            "sh",
            "-c",
            "echo \"$FOO|$FROM_FILE|$SHARED|$PATH\"; pwd; id -u; id -g; id -un",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "bar|file value|from-flag|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/work/dir",
            "65534",
            "65534",
            "nobody"
        ]
    );
    // USER:GROUP by names from the image's /etc/passwd and /etc/group.
    let out = ok(s.path(), &["run", "-u", "nobody:root", "bb", "id"]);
    assert_eq!(out.trim(), "uid=65534(nobody) gid=0(root) groups=0(root)");
    // No command: the image's Cmd (sh), reading the script from stdin.
    let out = run_with(
        s.path(),
        &[],
        Some("echo from-cmd $((6*7))\n"),
        &["run", "-i", "bb"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "from-cmd 42");
    let err = fails(s.path(), &["run", "-u", "nosuchuser", "bb", "true"]);
    assert!(err.contains("nosuchuser"), "{err}");
}

#[test]
fn entrypoint_replaces_the_images() {
    let Some(s) = store() else { return };
    let out = ok(
        s.path(),
        &["run", "--entrypoint", "echo", "bb", "hi", "-n", "there"],
    );
    assert_eq!(out, "hi -n there\n");
    let out = ok(
        s.path(),
        &["run", "--entrypoint", "pwd", "-w", "/tmp", "bb"],
    );
    assert_eq!(out.trim(), "/tmp");
}

#[test]
fn stdin_only_with_interactive() {
    let Some(s) = store() else { return };
    let out = run_with(
        s.path(),
        &[],
        Some("hello\nworld\n"),
        &["run", "-i", "bb", "tr", "a-z", "A-Z"],
    );
    assert_eq!(text(&out.stdout), "HELLO\nWORLD\n");
    let out = run_with(
        s.path(),
        &[],
        Some("hello\n"),
        &["run", "-i", "--platform", "linux/s390x", "bb", "wc", "-c"],
    );
    assert_eq!(text(&out.stdout).trim(), "6");
    // Without -i the command reads nothing.
    let out = run_with(s.path(), &[], Some("hello\n"), &["run", "bb", "wc", "-c"]);
    assert_eq!(text(&out.stdout).trim(), "0");
}

#[test]
fn volumes_mounts_and_a_read_only_root() {
    let Some(s) = store() else { return };
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("in"), "from the host\n").unwrap();
    let h = host.path().to_str().unwrap();
    // Read-only: readable, not writable.
    let out = run(
        s.path(),
        &[
            "run",
            "-v",
            &format!("{h}:/data:ro"),
            "bb",
            "sh",
            "-c",
            "cat /data/in; touch /data/new",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "from the host\n");
    assert!(text(&out.stderr).contains("Read-only file system"));
    assert!(!host.path().join("new").exists());
    // Read-write: the file lands on the host.
    ok(
        s.path(),
        &[
            "run",
            "-v",
            &format!("{h}:/data"),
            "--platform",
            "linux/arm64",
            "bb",
            "sh",
            "-c",
            "uname -m > /data/out",
        ],
    );
    assert_eq!(
        fs::read_to_string(host.path().join("out")).unwrap(),
        "aarch64\n"
    );
    // --mount bind (readonly) and tmpfs, on a read-only root.
    let out = run(
        s.path(),
        &[
            "run",
            "--read-only",
            "--mount",
            &format!("type=bind,source={h},target=/m,readonly"),
            "--mount",
            "type=tmpfs,target=/scratch",
            "bb",
            "sh",
            "-c",
            "cat /m/in && touch /scratch/ok && echo tmpfs-ok; touch /rootfile || echo root-ro; touch /m/x || echo bind-ro",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "from the host\ntmpfs-ok\nroot-ro\nbind-ro\n",
        "{}",
        text(&out.stderr)
    );
    // Nothing outlives the command: a file written in the root is gone next time.
    ok(s.path(), &["run", "bb", "touch", "/left-behind"]);
    let out = run(s.path(), &["run", "bb", "ls", "/left-behind"]);
    assert!(!out.status.success());
}

#[test]
fn network_none_has_only_loopback_and_host_needs_the_entitlement() {
    let Some(s) = store() else { return };
    let out = ok(
        s.path(),
        &["run", "--network", "none", "bb", "cat", "/proc/net/dev"],
    );
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"]);
    let err = fails(s.path(), &["run", "--network", "host", "bb", "true"]);
    assert!(err.contains("--allow network.host"), "{err}");
    ok(
        s.path(),
        &[
            "run",
            "--network",
            "host",
            "--allow",
            "network.host",
            "bb",
            "true",
        ],
    );
    let out = ok(s.path(), &["run", "--name", "web-1", "bb", "hostname"]);
    assert_eq!(out.trim(), "web-1");
}

#[test]
fn a_platform_that_cannot_run_or_is_missing_fails_before_anything_runs() {
    let Some(s) = store() else { return };
    let err = fails(
        s.path(),
        &["run", "--platform", "linux/sparc64", "bb", "true"],
    );
    assert!(err.contains("cannot run linux/sparc64"), "{err}");
    assert!(err.contains("manifold binfmt"), "{err}");
}

#[test]
fn signals_reach_the_command() {
    let Some(s) = store() else { return };
    let mut child = Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", s.path())
        .args([
            "run",
            "bb",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got TERM\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

/// Reads the pseudo-terminal's master side until `want` shows up (or the terminal closes).
fn read_until(master: &mut fs::File, seen: &mut Vec<u8>, want: &str) -> bool {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[test]
fn a_tty_session_on_a_real_pseudo_terminal() {
    let Some(s) = store() else { return };
    let winsize = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).unwrap();
    let slave = fs::File::from(pty.slave);
    let mut child = Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", s.path())
        .args(["run", "-it", "--platform", "linux/arm64", "bb", "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = fs::File::from(pty.master);
    let mut seen = Vec::new();
    // busybox sh's prompt for root.
    assert!(
        read_until(&mut master, &mut seen, "/ # "),
        "{}",
        text(&seen)
    );
    master
        .write_all(b"uname -m; stty size; echo $((6*7))\r")
        .unwrap();
    assert!(
        read_until(&mut master, &mut seen, "42\r\n"),
        "{}",
        text(&seen)
    );
    // Ctrl-C goes through the terminal to the foreground job, as with docker run -it. (Sent
    // once the job printed, so it is the terminal's foreground process group by then.)
    master
        .write_all(b"sh -c 'echo started; exec sleep 100000'\r")
        .unwrap();
    assert!(
        read_until(&mut master, &mut seen, "started\r\n"),
        "{}",
        text(&seen)
    );
    master.write_all(b"\x03").unwrap();
    assert!(
        read_until(&mut master, &mut seen, "^C\r\n/ # "),
        "{}",
        text(&seen)
    );
    master.write_all(b"echo rc=$?\r").unwrap();
    assert!(
        read_until(&mut master, &mut seen, "rc=130\r\n"),
        "{}",
        text(&seen)
    );
    master.write_all(b"exit 3\r").unwrap();
    let status = child.wait().unwrap();
    let _ = read_until(&mut master, &mut seen, "\u{0}never");
    let shown = text(&seen);
    assert!(shown.contains("aarch64\r\n"), "{shown}");
    // The window size of our terminal reached the container's.
    assert!(shown.contains("33 101\r\n"), "{shown}");
    assert_eq!(status.code(), Some(3), "{shown}");
}

#[test]
fn a_missing_image_is_pulled_for_the_wanted_platform_only() {
    let Some(layout) = layout() else { return };
    if !peer("qemu-aarch64-static") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let name = format!("{}/base/busybox:1", reg.addr);
    let t = tempfile::tempdir().unwrap();
    ok(
        t.path(),
        &["cp", &format!("oci:{}:latest", layout.display()), &name],
    );
    let s = tempfile::tempdir().unwrap();
    let out = ok(
        s.path(),
        &["run", "--platform", "linux/arm64", &name, "uname", "-m"],
    );
    assert_eq!(out.trim(), "aarch64");
    let images = ok(s.path(), &["images", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&images).unwrap();
    assert_eq!(
        v[0]["platforms"],
        serde_json::json!(["linux/arm64"]),
        "{images}"
    );
    // Second run: from the store (the registry is gone).
    drop(reg);
    let out = ok(
        s.path(),
        &["run", "--platform", "linux/arm64", &name, "uname", "-m"],
    );
    assert_eq!(out.trim(), "aarch64");
    // A platform the image does not have: named, with what it offers.
    let err = fails(
        s.path(),
        &["run", "--platform", "linux/riscv64", &name, "true"],
    );
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/arm64"),
        "{err}"
    );
}
