//! Real peers for registry tests: Debian's `docker-registry` (distribution 2.8) on a free loopback
//! port, configured per test, killed on drop; and a fault-injecting HTTP proxy.
//!
//! Self-contained on purpose, so other crates' tests can copy this file.

#![allow(dead_code)]

pub mod proxy;
pub mod token;

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The peer binary, or `None` after a loud skip message. With `MANIFOLD_REQUIRE_PEERS=1` (CI), a
/// missing peer fails the test instead.
pub fn peer(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{name} is required (MANIFOLD_REQUIRE_PEERS=1) but not on PATH; apt-get install the package that has it");
        }
        eprintln!(
            "\n!!!!!!!!!! SKIPPED: {name} is not installed; this test did not run !!!!!!!!!!\n"
        );
    }
    found
}

/// Returns from the test (after a loud message) when a peer is missing.
#[macro_export]
macro_rules! require_peer {
    ($name:expr) => {
        if $crate::common::peer($name).is_none() {
            return;
        }
    };
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// How to configure a registry.
#[derive(Default, Clone)]
pub struct Config {
    /// An htpasswd file (bcrypt entries) for Basic auth.
    pub htpasswd: Option<PathBuf>,
    /// Certificate and key for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Token auth: (realm, service, issuer, rootcertbundle).
    pub token: Option<(String, String, String, PathBuf)>,
    /// With `tls`: require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start(cfg: Config) -> Registry {
        let bin = PathBuf::from("docker-registry");
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut yaml = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: manifold-test-secret\n",
                dir.path().join("storage").display()
            );
            if let Some((crt, key)) = &cfg.tls {
                yaml += &format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    crt.display(),
                    key.display()
                );
                if let Some(ca) = &cfg.client_ca {
                    yaml += &format!("    clientcas:\n      - {}\n", ca.display());
                }
            }
            if let Some(h) = &cfg.htpasswd {
                yaml += &format!(
                    "auth:\n  htpasswd:\n    realm: manifold-test\n    path: {}\n",
                    h.display()
                );
            }
            if let Some((realm, service, issuer, bundle)) = &cfg.token {
                yaml += &format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    bundle.display()
                );
            }
            let conf = dir.path().join("config.yml");
            std::fs::write(&conf, yaml).expect("writing registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawning docker-registry");
            let mut reg = Registry { addr, dir, child };
            if reg.wait_ready(Duration::from_secs(15)) {
                return reg;
            }
            eprintln!(
                "docker-registry did not come up on attempt {attempt}; log:\n{}",
                reg.log()
            );
        }
        panic!("docker-registry did not start after 3 attempts");
    }

    /// Ready when this process says it listens on our address (so a port another test's
    /// registry took in the meantime is not mistaken for ours) and the port accepts.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        let want = format!("listening on {}", self.addr);
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.log().contains(&want) && TcpStream::connect(&self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where distribution keeps a blob's bytes.
    pub fn blob_path(&self, digest: &oci::Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage()
            .join("docker/registry/v2/blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `htpasswd -Bbn user pass` into `dir/htpasswd`.
pub fn htpasswd(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .expect("running htpasswd (apache2-utils)");
    assert!(out.status.success(), "htpasswd failed");
    let p = dir.join("htpasswd");
    std::fs::write(&p, out.stdout).expect("writing htpasswd");
    p
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, made with openssl.
pub struct TestCa {
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
}

pub fn make_ca(dir: &Path, ca_name: &str) -> TestCa {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN={ca_name}")])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,IP:0.0.0.0,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    TestCa {
        ca_crt: p("ca.crt"),
        ca_key: p("ca.key"),
        server_crt: p("server.crt"),
        server_key: p("server.key"),
    }
}

/// A client certificate (`client.cert`, `client.key` in `out`) signed by `ca`.
pub fn make_client_cert(dir: &Path, ca: &TestCa, out: &Path) {
    std::fs::create_dir_all(out).expect("client cert dir");
    let key = out.join("client.key");
    let csr = dir.join("client.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=manifold-client",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("client-ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext file");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca.ca_crt)
        .arg("-CAkey")
        .arg(&ca.ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(out.join("client.cert")));
}

/// Options for tests: no real docker config or certs.d, small backoffs.
pub fn options(config_dir: &Path) -> manifold_registry::ClientOptions {
    manifold_registry::ClientOptions {
        docker_config_dir: Some(config_dir.to_path_buf()),
        certs_dirs: vec![config_dir.join("certs.d")],
        max_retries: 4,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        retry_after_max: Duration::from_secs(2),
        ..manifold_registry::ClientOptions::default()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so large blobs need no fixtures on disk.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `path` in pieces, returning their sha256 digest.
pub fn write_random_file(path: &Path, seed: u64, len: u64) -> oci::Digest {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create blob file"));
    let mut h = oci::Algorithm::Sha256.hasher();
    let mut left = len;
    let mut s = seed;
    while left > 0 {
        let n = left.min(4 << 20) as usize;
        let piece = pseudo_random(s, n);
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h.update(&piece);
        f.write_all(&piece).expect("write blob file");
        left -= n as u64;
    }
    f.flush().expect("flush blob file");
    h.finish()
}

/// A small real image: a gzip tar layer (made with tar and gzip), a config and a manifest.
pub struct TinyImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn tiny_image(dir: &Path, content: &str) -> TinyImage {
    let root = dir.join(format!(
        "rootfs-{}",
        oci::Digest::sha256_of(content.as_bytes()).short()
    ));
    std::fs::create_dir_all(&root).expect("rootfs dir");
    std::fs::write(root.join("hello.txt"), content).expect("rootfs file");
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - -C {} . | gzip -n",
        root.display()
    )));
    let layer = out.stdout;
    let diff_out = run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - -C {} . | sha256sum",
        root.display()
    )));
    let diff_id = String::from_utf8_lossy(&diff_out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        oci::Digest::sha256_of(&config),
        config.len(),
        oci::Digest::sha256_of(&layer),
        layer.len()
    )
    .into_bytes();
    TinyImage {
        layer,
        config,
        manifest,
    }
}
