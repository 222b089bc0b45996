//! A real Docker engine (docker.io's dockerd) with its own data root and socket, stopped on
//! drop: the peer of the end-to-end tests that pull, run and compare with what docker does.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::peer;

pub struct Dockerd {
    child: Child,
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    pub fn start() -> Option<Dockerd> {
        Self::start_with(true)
    }

    /// `insecure`: plain HTTP (and unverified TLS) to 127.0.0.0/8, as most tests want.
    pub fn start_with(insecure: bool) -> Option<Dockerd> {
        let insecure_args: &[&str] = if insecure {
            &["--insecure-registry", "127.0.0.0/8"]
        } else {
            &[]
        };
        Self::start_args(insecure_args)
    }

    pub fn start_args(extra: &[&str]) -> Option<Dockerd> {
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
            .args(extra)
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

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        self.docker_env(&[], args)
    }

    /// The docker CLI against this engine, with extra environment (e.g. DOCKER_CONFIG).
    pub fn docker_env(
        &self,
        env: &[(&str, &std::path::Path)],
        args: &[&str],
    ) -> std::process::Output {
        let once = || {
            let mut c = Command::new("docker");
            c.env("DOCKER_HOST", &self.host).args(args);
            for (k, v) in env {
                c.env(k, v);
            }
            c.output().unwrap()
        };
        let mut out = once();
        // Under load dockerd's overlay2 driver now and then hands runc a container root that is
        // not mounted yet: "Stat .../-init/merged/dev/pts: no such file or directory", or
        // `exec: "cat": executable file not found` in an image that has it. Nothing of the
        // container ran, and an image that really lacks the file fails every time, so `run` is
        // tried again.
        for attempt in 1..=3u64 {
            let err = String::from_utf8_lossy(&out.stderr);
            let engine_side = err.contains("Error response from daemon")
                && (err.contains("/overlay2/")
                    || err.contains("-init/merged")
                    || err.contains("executable file not found"));
            if out.status.success() || args.first() != Some(&"run") || !engine_side {
                break;
            }
            eprintln!(
                "docker {args:?}: the engine failed before the container ran, once more: {err}"
            );
            std::thread::sleep(Duration::from_secs(attempt));
            out = once();
        }
        out
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_env(&[], args)
    }

    pub fn ok_env(&self, env: &[(&str, &std::path::Path)], args: &[&str]) -> String {
        let out = self.docker_env(env, args);
        if !out.status.success() {
            let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "docker {args:?}: {}\n--- dockerd log (last 30 lines) ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            );
        }
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
