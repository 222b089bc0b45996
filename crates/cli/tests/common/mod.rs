//! Shared by the end-to-end tests: run the real `manifold` binary, find real peers, and build the
//! real two-platform busybox fixture from Debian's packages.
#![allow(dead_code)]

pub mod dockerd;
pub mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn manifold_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_manifold"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs manifold with a store at `root`; returns the output whatever the exit code.
pub fn run(root: &Path, args: &[&str]) -> Output {
    let out = Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", root)
        .args(args)
        .output()
        .expect("manifold runs");
    after_build(root, args, &out);
    out
}

/// Every image a test build leaves in the store passes [`check_empty_layers`].
fn after_build(root: &Path, args: &[&str], out: &Output) {
    if out.status.success() && args.contains(&"build") {
        check_empty_layers(root);
    }
}

/// Every image config in the store at `root`: its history entries without `empty_layer` are
/// exactly its layers, or `docker pull` refuses it ("too many non-empty layers in History
/// section"). Returns how many configs with a history were checked.
pub fn check_empty_layers(root: &Path) -> usize {
    let mut checked = 0;
    let Ok(dir) = std::fs::read_dir(root.join("blobs/sha256")) else {
        return 0;
    };
    for e in dir.flatten() {
        if !e.metadata().is_ok_and(|m| m.len() < 1 << 20) {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        if bytes.first() != Some(&b'{') {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let (Some(diff_ids), Some(history)) =
            (v["rootfs"]["diff_ids"].as_array(), v["history"].as_array())
        else {
            continue;
        };
        let non_empty = history
            .iter()
            .filter(|h| h["empty_layer"] != serde_json::Value::Bool(true))
            .count();
        assert_eq!(
            non_empty,
            diff_ids.len(),
            "image config {} has {} history entries without empty_layer but {} layers:\n{}",
            e.path().display(),
            non_empty,
            diff_ids.len(),
            serde_json::to_string_pretty(&v["history"]).unwrap_or_default()
        );
        checked += 1;
    }
    checked
}

/// Runs manifold and fails the test, showing stderr, unless it succeeds. Returns stdout.
pub fn ok(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert!(
        out.status.success(),
        "manifold {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs manifold expecting failure; returns stderr.
pub fn fails(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert!(
        !out.status.success(),
        "manifold {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Is a peer program present? Without it the test is skipped loudly, or fails when
/// MANIFOLD_REQUIRE_PEERS=1 (CI sets it, so no peer test skips there).
/// A build context directory holding `files` (path, content).
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (name, body) in files {
        let p = t.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    t
}

/// A file's text, or a panic naming it.
/// The JSON blob `digest` (`sha256:HEX`) of the OCI layout (or store) at `dir`.
pub fn layout_json(dir: &Path, digest: &str) -> serde_json::Value {
    let path = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Is QEMU registered for aarch64? A missing handler fails under MANIFOLD_REQUIRE_PEERS=1.
pub fn qemu_ready() -> bool {
    let ok = std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    if !ok {
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("no binfmt_misc handler for aarch64: run `manifold binfmt install arm64`");
        }
        eprintln!("SKIPPED: no binfmt_misc handler for aarch64 (`manifold binfmt install arm64`)");
    }
    ok
}

pub fn peer(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("peer {name} is missing and MANIFOLD_REQUIRE_PEERS=1: install it (see .ci/run)");
        }
        eprintln!(
            "SKIPPED: peer {name} is not installed (set MANIFOLD_REQUIRE_PEERS=1 to fail instead)"
        );
    }
    found
}

/// Runs a peer command and fails the test unless it succeeds. Returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The OCI layout of a busybox image for the given Debian architectures, named `latest`, built
/// once into target/fixtures and shared by every test process. Returns (layout dir, index digest).
pub fn busybox_layout(arches: &[&str]) -> Option<(PathBuf, String)> {
    for p in ["apt-get", "dpkg-deb", "busybox", "sha256sum"] {
        if !peer(p) {
            return None;
        }
    }
    let dir = repo_root()
        .join("target/fixtures")
        .join(format!("busybox-{}", arches.join("-")));
    let digest_file = dir.join("DIGEST");
    if let Ok(d) = std::fs::read_to_string(&digest_file) {
        return Some((dir, d.trim().to_string()));
    }
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let tmp = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    let out = sh(Command::new(repo_root().join("scripts/busybox-image.sh"))
        .arg(tmp.path())
        .args(arches));
    let digest = out.trim().to_string();
    std::fs::write(tmp.path().join("DIGEST"), &digest).unwrap();
    let built = tmp.keep();
    // Another test process may have won the race; either copy is the same bytes.
    if std::fs::rename(&built, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&built);
    }
    Some((dir, digest))
}

/// A docker-registry holding the busybox fixture for `arches` (Debian names) as
/// REG/base/busybox:1: the base image of the end-to-end build tests.
pub fn registry_with_busybox(arches: &[&str]) -> Option<(Registry, String)> {
    with_busybox(Registry::start(None)?, arches)
}

/// [`registry_with_busybox`] on a registry that keeps its access log ([`Registry::blob_gets`]).
pub fn logged_registry_with_busybox(arches: &[&str]) -> Option<(Registry, String)> {
    with_busybox(Registry::start_logged()?, arches)
}

fn with_busybox(reg: Registry, arches: &[&str]) -> Option<(Registry, String)> {
    let (layout, _) = busybox_layout(arches)?;
    let t = tempfile::tempdir().unwrap();
    let name = format!("{}/base/busybox:1", reg.addr);
    ok(
        t.path(),
        &["cp", &format!("oci:{}:latest", layout.display()), &name],
    );
    Some((reg, name))
}

/// Runs manifold with extra environment variables and optional standard input.
pub fn run_with(root: &Path, env: &[(&str, &str)], stdin: Option<&str>, args: &[&str]) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut cmd = Command::new(manifold_bin());
    cmd.env("MANIFOLD_ROOT", root).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("manifold runs");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    after_build(root, args, &out);
    out
}

/// Debian's docker-registry (distribution 2.8) on a free loopback port, killed on drop.
pub struct Registry {
    pub addr: String,
    _dir: tempfile::TempDir,
    child: std::process::Child,
    /// Distribution's access log (its standard output), when started with `start_logged`.
    access_log: Option<PathBuf>,
}

/// One blob GET the registry answered with content (200 or 206).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobGet {
    pub digest: String,
    pub bytes: u64,
}

impl Registry {
    /// None (after a loud skip) when docker-registry is not installed.
    pub fn start(htpasswd: Option<&Path>) -> Option<Registry> {
        Self::start_with(htpasswd, false)
    }

    /// A registry that logs every request, for tests that count what a client downloads.
    pub fn start_logged() -> Option<Registry> {
        Self::start_with(None, true)
    }

    /// Blob GETs answered with content, from the `from`-th line of the access log on
    /// ([`Registry::log_lines`] gives the mark). Panics on a registry started without a log.
    pub fn blob_gets(&self, from: usize) -> Vec<BlobGet> {
        let text = self.synced_log();
        text.lines()
            .skip(from)
            .filter_map(|l| {
                // Combined log format: "GET /v2/REPO/blobs/sha256:HEX HTTP/1.1" STATUS BYTES ...
                let (_, rest) = l.split_once("\"GET /v2/")?;
                let (path, rest) = rest.split_once(' ')?;
                let digest = path.split_once("/blobs/")?.1.to_string();
                let mut f = rest.split_once('"')?.1.split_whitespace();
                let status = f.next()?;
                let bytes = f.next()?.parse().ok()?;
                matches!(status, "200" | "206").then_some(BlobGet { digest, bytes })
            })
            .collect()
    }

    /// Lines of the access log so far: a mark for [`Registry::blob_gets`].
    pub fn log_lines(&self) -> usize {
        self.synced_log().lines().count()
    }

    /// The access log, once a request made now is in it: a line is written after its response,
    /// so this waits out requests a client has just finished.
    fn synced_log(&self) -> String {
        use std::io::{Read as _, Write as _};
        let log = self
            .access_log
            .as_ref()
            .expect("a registry started with start_logged");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mark = format!(
            "/v2/?sync={}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(c, "GET {mark} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
        // Hang guard only.
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(&mark) {
                return text;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the registry never logged {mark}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn start_with(htpasswd: Option<&Path>, logged: bool) -> Option<Registry> {
        if !peer("docker-registry") {
            return None;
        }
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut yaml = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                !logged,
                dir.path().join("data").display()
            );
            if let Some(h) = htpasswd {
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    h.display()
                ));
            }
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, yaml).unwrap();
            let access_log = logged.then(|| dir.path().join("access.log"));
            let stdout = match &access_log {
                Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
                None => std::process::Stdio::null(),
            };
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(stdout)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("docker-registry starts");
            let mut reg = Registry {
                addr: addr.clone(),
                _dir: dir,
                child,
                access_log,
            };
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(10) {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return Some(reg);
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break; // lost the port race; try another
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = reg.child.kill();
        }
        panic!("docker-registry did not start on a free port after 3 tries");
    }
}

impl Registry {
    /// Where this registry keeps its content (distribution's filesystem driver layout).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small image with fixed bytes (uncompressed layers, fixed times), so digests and sizes never
/// change: for golden output. One manifest per architecture and an index over them, named `name`.
pub fn fixed_layout(dir: &Path, arches: &[&str], name: &str) -> String {
    use std::fs;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let d = oci::Digest::sha256_of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        (d.to_string(), b.len())
    };
    let mut entries = Vec::new();
    for arch in arches {
        let content = format!("hello from {arch}\n");
        let mut header = tar::Header::new_ustar();
        header.set_path(format!("hello-{arch}.txt")).unwrap();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header, content.as_bytes()).unwrap();
        let layer = b.into_inner().unwrap();
        let (ld, ls) = put(&layer);
        let cfg = format!(
            r#"{{"created":"2024-01-02T03:04:05Z","architecture":"{arch}","os":"linux","config":{{"Cmd":["/hello"]}},"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        );
        let (cd, cs) = put(cfg.as_bytes());
        let man = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#
        );
        let (md, ms) = put(man.as_bytes());
        entries.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#
        ));
    }
    let idx = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    let (id, is) = put(idx.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{id}","size":{is},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}]}}"#
        ),
    )
    .unwrap();
    id
}

/// Compares `actual` with the golden file `tests/golden/NAME`, after replacing `subst` pairs.
/// With UPDATE_GOLDEN=1 it writes the file instead.
pub fn golden(name: &str, actual: &str, subst: &[(&str, &str)]) {
    let mut text = actual.to_string();
    for (from, to) in subst {
        text = text.replace(from, to);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "golden file {} is missing; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(text, want, "output differs from {}", path.display());
}

/// `manifold registry serve` on a free loopback port, stopped (SIGTERM) on drop. `args` go before
/// `registry serve` (e.g. `--root DIR`); `serve_args` after it.
pub struct Server {
    pub addr: String,
    pub log: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(store: &Path, args: &[&str], serve_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let child = Command::new(manifold_bin())
            .env("MANIFOLD_ROOT", store)
            .args(args)
            .args(["registry", "serve", "--addr", "127.0.0.1:0"])
            .args(serve_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("manifold registry serve starts");
        let mut s = Server {
            addr: String::new(),
            log,
            child,
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(30) {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            if let Some(rest) = text
                .split(" on http://")
                .nth(1)
                .or_else(|| text.split(" on https://").nth(1))
            {
                s.addr = rest.split('/').next().unwrap().to_string();
                return s;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("registry serve exited ({st}):\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("registry serve did not start in 30 s");
    }

    /// The server's log so far (one line per request).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
