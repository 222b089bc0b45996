//! End-to-end: a RUN step's identity (capabilities, seccomp, no_new_privs, descriptors, /dev)
//! compared with what a real Docker engine gives a container from the same image, natively and
//! under QEMU; and `kill -9` of `manifold build` leaves no step running.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dockerd::Dockerd;
use common::*;

const PROBE: &str = "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; echo @; ls /proc/self/fd | tr '\\n' ' '; echo; echo @; ls /dev | tr '\\n' ' '";

fn fields(text: &str) -> (Vec<String>, String, Vec<String>) {
    let mut parts = text.split("@\n");
    let status = parts
        .next()
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let fds = parts.next().unwrap_or_default().trim().to_string();
    let devs = parts
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    (status, fds, devs)
}

#[test]
fn a_run_step_has_the_identity_of_a_docker_container() {
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
    let image = format!("{}/base/busybox:1", reg.addr);
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &image],
    );
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {image}\nRUN ({PROBE}) > /probe\n"),
    )
    .unwrap();
    for platform in ["linux/amd64", "linux/arm64"] {
        let out = tempfile::tempdir().unwrap();
        ok(
            s,
            &[
                "build",
                "--platform",
                platform,
                "-o",
                &format!("type=local,dest={}", out.path().display()),
                ctx.path().to_str().unwrap(),
            ],
        );
        let ours = fs::read_to_string(out.path().join("probe")).unwrap();
        let pulled = dockerd.docker(&["pull", "-q", "--platform", platform, &image]);
        assert!(pulled.status.success(), "{pulled:?}");
        let theirs = dockerd.docker(&[
            "run",
            "--rm",
            "--platform",
            platform,
            &image,
            "sh",
            "-c",
            PROBE,
        ]);
        assert!(theirs.status.success(), "{theirs:?}");
        let theirs = String::from_utf8_lossy(&theirs.stdout).into_owned();
        eprintln!("{platform}\nmanifold:\n{ours}\ndocker:\n{theirs}");
        let (our_status, our_fds, our_devs) = fields(&ours);
        let (their_status, their_fds, their_devs) = fields(&theirs);
        assert_eq!(
            our_status, their_status,
            "{platform}: capabilities, seccomp, no_new_privs"
        );
        assert_eq!(our_fds, their_fds, "{platform}: open descriptors");
        for d in &our_devs {
            assert!(
                their_devs.contains(d),
                "{platform}: /dev/{d} is not in docker's /dev {their_devs:?}"
            );
        }
    }
}

/// (pid, ppid, cmdline) of every live process.
fn processes() -> Vec<(u32, u32, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            if stat[stat.rfind(')')? + 2..].starts_with('Z') {
                return None;
            }
            let ppid = stat[stat.rfind(')')? + 4..]
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let c = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, ppid, String::from_utf8_lossy(&c).replace('\0', " ")))
        })
        .collect()
}

#[test]
fn kill_9_of_manifold_build_kills_its_steps() {
    if !peer("slirp4netns") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let image = format!("{}/base/busybox:1", reg.addr);
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &image],
    );
    let token = 800000 + std::process::id() % 100000;
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {image}\nRUN sleep {token}\n"),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut build = Command::new(manifold_bin())
        .args([
            "--root",
            s.to_str().unwrap(),
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
        ])
        .arg(ctx.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let needle = format!("sleep {token}");
    // Both steps (native and under QEMU) and their network helpers are running.
    let deadline = Instant::now() + Duration::from_secs(180);
    let running = loop {
        let all = processes();
        let mut tree = vec![build.id()];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
            i += 1;
        }
        let procs: Vec<(u32, String)> = all
            .into_iter()
            .filter(|p| tree[1..].contains(&p.0))
            .map(|p| (p.0, p.2))
            .collect();
        let steps = procs.iter().filter(|(_, c)| c.contains(&needle)).count();
        let helpers = procs
            .iter()
            .filter(|(_, c)| c.contains("slirp4netns"))
            .count();
        if steps == 2 && helpers == 2 {
            break procs;
        }
        assert!(
            Instant::now() < deadline,
            "the steps never started: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("running: {running:?}");
    // SAFETY: kill on our own unreaped child.
    unsafe { libc::kill(build.id() as i32, libc::SIGKILL) };
    build.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive: Vec<(u32, String)> = processes()
            .into_iter()
            .map(|p| (p.0, p.2))
            .filter(|p| running.contains(p))
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after kill -9: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
