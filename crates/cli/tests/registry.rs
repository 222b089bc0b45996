//! End-to-end: manifold against a real registry (Debian's docker-registry), with skopeo and the
//! docker CLI reading what manifold pushes and manifold pulling what skopeo pushes.

mod common;

use std::process::Command;

use common::*;

/// A store holding the two-platform busybox as `busybox:1`, and its index digest.
fn loaded() -> Option<(tempfile::TempDir, String)> {
    let (layout, digest) = busybox_layout(&["amd64", "arm64"])?;
    let root = tempfile::tempdir().unwrap();
    ok(root.path(), &["load", "-i", layout.to_str().unwrap()]);
    ok(
        root.path(),
        &["tag", "localhost/busybox-amd64-arm64:latest", "busybox:1"],
    );
    Some((root, digest))
}

fn skopeo_digest(reference: &str) -> String {
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]));
    oci::Digest::sha256_of(raw.as_bytes()).to_string()
}

fn platform_digest(index_json: &str, arch: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(index_json).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn push_then_skopeo_and_docker_read_it_and_pull_picks_platforms() {
    if !peer("skopeo") || !peer("docker") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((root, digest)) = loaded() else {
        return;
    };
    let r = root.path();
    let name = format!("{}/tools/busybox:1", reg.addr);
    ok(r, &["tag", "busybox:1", &name]);
    let out = ok(r, &["push", &name]);
    assert!(out.contains(&digest), "{out}");
    assert_eq!(skopeo_digest(&name), digest);

    let inspect = sh(Command::new("docker").args(["manifest", "inspect", "--insecure", &name]));
    let arm = platform_digest(&inspect, "arm64");
    let amd = platform_digest(&inspect, "amd64");

    // Pull one platform: the name holds that platform's manifest, a digest the registry has.
    let fresh = tempfile::tempdir().unwrap();
    let out = ok(fresh.path(), &["pull", "--platform", "linux/arm64", &name]);
    assert!(
        out.contains(&format!("index {digest}")) && out.contains(&arm),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(fresh.path(), &["images", "--format", "json"])).unwrap();
    assert_eq!(json[0]["digest"], arm.as_str());
    assert_eq!(json[0]["platforms"], serde_json::json!(["linux/arm64"]));

    // Without --platform: this machine's platform (amd64 here).
    let host = tempfile::tempdir().unwrap();
    ok(host.path(), &["pull", &name]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(host.path(), &["images", "--format", "json"])).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(json[0]["digest"], amd.as_str());
    }

    // Every platform: the index keeps its digest.
    ok(fresh.path(), &["pull", "--all-platforms", &name]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(fresh.path(), &["images", "--format", "json"])).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());
    assert!(ok(fresh.path(), &["fsck"]).contains("store is consistent"));
}

#[test]
fn pull_names_the_wanted_platform_and_what_the_index_offers() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((root, _)) = loaded() else { return };
    let name = format!("{}/bb:1", reg.addr);
    ok(root.path(), &["tag", "busybox:1", &name]);
    ok(root.path(), &["push", &name]);
    let fresh = tempfile::tempdir().unwrap();
    let err = fails(fresh.path(), &["pull", "--platform", "linux/s390x", &name]);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    assert_eq!(
        ok(fresh.path(), &["images", "--format", "json"]).trim(),
        "[]"
    );
    let err = fails(
        fresh.path(),
        &["pull", &format!("{}/nothing/here:1", reg.addr)],
    );
    assert!(
        err.contains("MANIFEST_UNKNOWN")
            || err.contains("NAME_UNKNOWN")
            || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn manifold_pulls_what_skopeo_pushes() {
    if !peer("skopeo") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, digest)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let name = format!("{}/from/skopeo:v1", reg.addr);
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{name}"),
    ]));
    let root = tempfile::tempdir().unwrap();
    ok(root.path(), &["pull", "--all-platforms", &name]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(root.path(), &["images", "--format", "json"])).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());
    // And skopeo's Docker-format push (it converts to schema 2) pulls too.
    let v2 = format!("{}/from/skopeo:v2s2", reg.addr);
    sh(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        "--override-arch",
        "arm64",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{v2}"),
    ]));
    ok(root.path(), &["pull", &v2]);
    let json: serde_json::Value = serde_json::from_str(&ok(
        root.path(),
        &[
            "images",
            &format!("{}/from/skopeo", reg.addr),
            "--format",
            "json",
        ],
    ))
    .unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "v2s2")
        .unwrap();
    assert_eq!(
        row["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(row["platforms"], serde_json::json!(["linux/arm64"]));
}

#[test]
fn cp_between_registries_keeps_the_index_digest_and_mounts_within_one() {
    if !peer("skopeo") {
        return;
    }
    let Some(a) = Registry::start(None) else {
        return;
    };
    let Some(b) = Registry::start(None) else {
        return;
    };
    let Some((root, digest)) = loaded() else {
        return;
    };
    let r = root.path();
    let src = format!("{}/app:1", a.addr);
    ok(r, &["tag", "busybox:1", &src]);
    ok(r, &["push", &src]);
    let dst = format!("{}/mirror/app:1", b.addr);
    let out = ok(r, &["cp", "--all", &src, &dst]);
    assert_eq!(out.trim(), digest);
    assert_eq!(skopeo_digest(&dst), digest);

    let same = format!("{}/other/app:2", a.addr);
    let out = run(r, &["cp", &src, &same]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("4 mounted from another repository"), "{said}");
    assert_eq!(skopeo_digest(&same), digest);

    // A filtered copy is a new, consistent index with only the wanted platform.
    let one = format!("{}/arm/app:1", b.addr);
    let out = ok(r, &["cp", "--platform", "linux/arm64", &src, &one]);
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{one}"),
    ]));
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(
        out.trim(),
        oci::Digest::sha256_of(raw.as_bytes()).to_string()
    );
    // skopeo can copy everything it references: no missing children.
    let t = tempfile::tempdir().unwrap();
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{one}"),
        &format!("oci:{}:x", t.path().display()),
    ]));
}

#[test]
fn tags_catalog_and_delete() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((root, digest)) = loaded() else {
        return;
    };
    let r = root.path();
    for t in ["a", "b", "c", "d", "e"] {
        let n = format!("{}/tagged:{t}", reg.addr);
        ok(r, &["tag", "busybox:1", &n]);
        ok(r, &["push", "-q", &n]);
    }
    let tags = ok(r, &["tags", &format!("{}/tagged", reg.addr)]);
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
    let json: Vec<String> = serde_json::from_str(&ok(
        r,
        &["tags", "--format", "json", &format!("{}/tagged", reg.addr)],
    ))
    .unwrap();
    assert_eq!(json.len(), 5);
    assert!(ok(r, &["catalog", &reg.addr])
        .lines()
        .any(|l| l == "tagged"));

    let out = run(r, &["delete", &format!("{}/tagged:c", reg.addr)]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&digest) && said.contains("every tag"),
        "{said}"
    );
    // Every tag pointed at that manifest, so every tag is gone.
    assert_eq!(ok(r, &["tags", &format!("{}/tagged", reg.addr)]).trim(), "");
}

#[test]
fn basic_auth_login_push_logout() {
    if !peer("htpasswd") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let hp = t.path().join("htpasswd");
    let line = sh(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"]));
    std::fs::write(&hp, line).unwrap();
    let Some(reg) = Registry::start(Some(&hp)) else {
        return;
    };
    let Some((root, _)) = loaded() else { return };
    let r = root.path();
    let cfg = t.path().join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    let env = [("DOCKER_CONFIG", cfg.to_str().unwrap())];
    let name = format!("{}/private/bb:1", reg.addr);
    ok(r, &["tag", "busybox:1", &name]);

    let out = run_with(r, &env, None, &["push", &name]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("manifold login"), "{err}");

    let out = run_with(
        r,
        &env,
        Some("not-the-pass\n"),
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
    );
    assert!(!out.status.success(), "a wrong password is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not-the-pass"), "the secret is never printed");
    assert!(
        err.contains("unauthorized: wrong username or password") && !err.contains("stored"),
        "{err}"
    );

    let out = run_with(
        r,
        &env,
        Some("s3cret\n"),
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        format!(
            "Login Succeeded (credentials stored in {})",
            cfg.join("config.json").display()
        )
    );
    let conf = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
    use base64_engine::decode;
    assert_eq!(
        decode(v["auths"][&reg.addr]["auth"].as_str().unwrap()),
        "alice:s3cret"
    );

    let out = run_with(r, &env, None, &["push", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = tempfile::tempdir().unwrap();
    let out = run_with(
        fresh.path(),
        &env,
        None,
        &["pull", "--all-platforms", &name],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run_with(r, &env, None, &["logout", &reg.addr]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removing login credentials"));
    let conf = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(
        !conf.contains("alice") && !conf.contains(&reg.addr),
        "{conf}"
    );
}

/// Base64 decoding for one assertion, without another dependency.
mod base64_engine {
    pub fn decode(s: &str) -> String {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = alphabet.iter().position(|&a| a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}

#[test]
fn a_registry_serving_corrupt_bytes_is_refused_and_nothing_lands() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((root, _)) = loaded() else { return };
    let name = format!("{}/corrupt/bb:1", reg.addr);
    ok(root.path(), &["tag", "busybox:1", &name]);
    ok(root.path(), &["push", &name]);
    // Flip bytes of the largest blob on the registry's disk: it serves them as they are.
    let blobs = reg.data_dir().join("docker/registry/v2/blobs/sha256");
    let mut largest: Option<(u64, std::path::PathBuf)> = None;
    for prefix in std::fs::read_dir(&blobs).unwrap().flatten() {
        for b in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = b.path().join("data");
            let len = std::fs::metadata(&data).unwrap().len();
            if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                largest = Some((len, data));
            }
        }
    }
    let (_, data) = largest.unwrap();
    let digest = format!(
        "sha256:{}",
        data.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let err = fails(fresh.path(), &["pull", "--all-platforms", &name]);
    assert!(err.contains(&digest), "names the expected digest: {err}");
    assert!(
        err.contains(&oci::Digest::sha256_of(&bytes).to_string()),
        "and the one received: {err}"
    );
    assert_eq!(
        ok(fresh.path(), &["images", "--format", "json"]).trim(),
        "[]"
    );
    let blob_files = std::fs::read_dir(fresh.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() == digest.trim_start_matches("sha256:"))
        .count();
    assert_eq!(blob_files, 0, "the corrupt blob did not land");
    assert!(ok(fresh.path(), &["fsck"]).contains("store is consistent"));
}

/// Debian's docker-registry serving TLS (a self-signed certificate made with openssl) on a free
/// loopback port, killed on drop.
struct TlsRegistry {
    addr: String,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_registry() -> Option<TlsRegistry> {
    if !peer("docker-registry") || !peer("openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("crt.pem"), dir.path().join("key.pem"));
    sh(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
    ]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.path().join("data").display(),
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry starts");
    let reg = TlsRegistry {
        addr: addr.clone(),
        _dir: dir,
        child,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Some(reg);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the TLS registry did not start on {addr}");
}

#[test]
fn loopback_registries_are_reached_over_tls_or_plain_http() {
    if !peer("skopeo") {
        return;
    }
    let Some(tls) = tls_registry() else { return };
    let Some(plain) = Registry::start(None) else {
        return;
    };
    let Some((root, digest)) = loaded() else {
        return;
    };
    let r = root.path();
    // TLS with a certificate nobody vouches for, on 127.0.0.1 and localhost: as docker, loopback
    // is an insecure registry, so HTTPS is tried first and its certificate not checked.
    let port = tls.addr.rsplit(':').next().unwrap();
    for host in [tls.addr.clone(), format!("localhost:{port}")] {
        let name = format!("{host}/tls/bb:1");
        ok(r, &["tag", "busybox:1", &name]);
        let out = ok(r, &["push", &name]);
        assert!(out.contains(&digest), "{out}");
        assert_eq!(skopeo_digest(&name), digest);
        let fresh = tempfile::tempdir().unwrap();
        assert!(ok(fresh.path(), &["digest", &name]).starts_with(&digest));
    }
    // Plain HTTP on loopback, as before.
    let name = format!("{}/plain/bb:1", plain.addr);
    ok(r, &["tag", "busybox:1", &name]);
    ok(r, &["push", &name]);

    // A host that is not loopback by name (0.0.0.0 connects to this machine) and speaks plain
    // HTTP: HTTPS fails at once, naming the flag; with the flag it works.
    let port = plain.addr.rsplit(':').next().unwrap();
    let other = format!("0.0.0.0:{port}");
    let err = fails(r, &["tags", &format!("{other}/plain/bb")]);
    assert!(
        err.contains("answers plain HTTP") && err.contains(&format!("--insecure-registry {other}")),
        "{err}"
    );
    assert!(!err.contains("attempt"), "no retries: {err}");
    let tags = ok(
        r,
        &[
            "--insecure-registry",
            &other,
            "tags",
            &format!("{other}/plain/bb"),
        ],
    );
    assert_eq!(tags.trim(), "1");
}

/// A `docker save`-style archive: Docker media types, one uncompressed layer of `size` bytes.
fn docker_save_archive(path: &std::path::Path, tag: &str, size: usize) -> String {
    let content: String = (0..)
        .map(|i| format!("line {i} of a file that compresses well\n"))
        .take_while({
            let mut n = 0;
            move |l: &String| {
                n += l.len();
                n <= size
            }
        })
        .collect();
    let mut lb = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("data.txt").unwrap();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    lb.append(&h, content.as_bytes()).unwrap();
    let layer = lb.into_inner().unwrap();
    let diff_id = oci::Digest::sha256_of(&layer).to_string();
    let cfg = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let cfg_name = format!("{}.json", oci::Digest::sha256_of(cfg.as_bytes()).hex());
    let manifest =
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":["{tag}"],"Layers":["l1/layer.tar"]}}]"#);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in [
        (cfg_name.as_str(), cfg.as_bytes()),
        ("l1/layer.tar", &layer[..]),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.finish().unwrap();
    diff_id
}

#[test]
fn uncompressed_layers_are_compressed_on_push_once() {
    if !peer("skopeo") || !peer("umoci") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("saved.tar");
    let diff_id = docker_save_archive(&archive, "app:1", 400_000);
    ok(r, &["load", "-i", archive.to_str().unwrap()]);
    let local = ok(r, &["-q", "digest", "store:app:1"]).trim().to_string();
    let name = format!("{}/app/one:1", reg.addr);
    ok(r, &["tag", "app:1", &name]);
    let out = run(r, &["push", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("compressed 1 layer(s)") && said.contains(&local),
        "{said}"
    );

    // What the registry holds: a gzip layer, much smaller, whose content is the original layer.
    let raw: serde_json::Value = serde_json::from_str(&sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{name}"),
    ])))
    .unwrap();
    let layer = &raw["layers"][0];
    // load keeps a docker-archive's layers as they are (uncompressed) under OCI media types.
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let pushed = layer["size"].as_u64().unwrap();
    assert!(pushed * 10 < 400_000, "compressed to {pushed} bytes");
    let dir = t.path().join("dir");
    sh(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("dir:{}", dir.display()),
    ]));
    let blob = std::fs::read(
        dir.join(
            layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    )
    .unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut plain).unwrap();
    assert_eq!(oci::Digest::sha256_of(&plain).to_string(), diff_id);
    // umoci checks every layer against the config's diff_ids.
    let lay = t.path().join("oci");
    sh(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:x", lay.display()),
    ]));
    sh(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:x", lay.display()),
        t.path().join("bundle").to_str().unwrap(),
    ]));

    // The second push compresses nothing and sends nothing, even after a prune; the store's
    // image keeps its digest.
    ok(r, &["prune"]);
    let out = run(r, &["push", &name]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1 remembered from before") && said.contains("copied 0 blobs"),
        "{said}"
    );
    assert_eq!(ok(r, &["-q", "digest", "store:app:1"]).trim(), local);
    // Another repository of the same registry gets it by mount, still compressed.
    let other = format!("{}/app/two:1", reg.addr);
    let out = run(r, &["cp", "store:app:1", &other]);
    assert!(out.status.success());
    assert_eq!(
        ok(r, &["-q", "digest", &other]).trim(),
        ok(r, &["-q", "digest", &name]).trim()
    );
}

#[test]
fn oci_mediatypes_makes_layouts_umoci_can_read() {
    if !peer("umoci") || !peer("skopeo") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let t = tempfile::tempdir().unwrap();
    // An image with Docker media types, as most registries serve them.
    let v2 = format!("{}/docker/types:1", reg.addr);
    sh(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{v2}"),
    ]));
    ok(r, &["pull", &v2]);
    ok(r, &["tag", &v2, "app:1"]);
    // Kept with Docker media types, umoci refuses it.
    let plain = t.path().join("plain");
    ok(
        r,
        &["cp", "store:app:1", &format!("oci:{}:app", plain.display())],
    );
    let out = Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:app", plain.display()),
        ])
        .arg(t.path().join("b1"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "umoci reads only OCI media types");
    let lay = t.path().join("lay");
    let out = run(
        r,
        &[
            "cp",
            "--oci-mediatypes",
            "store:app:1",
            &format!("oci:{}:app", lay.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("converted 1 Docker manifest"));
    sh(Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:app", lay.display()),
        ])
        .arg(t.path().join("b2")));
    let tar = t.path().join("app.tar");
    ok(
        r,
        &[
            "save",
            "--oci-mediatypes",
            "-o",
            tar.to_str().unwrap(),
            "app:1",
        ],
    );
    let raw: serde_json::Value = serde_json::from_str(&sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}", tar.display()),
    ])))
    .unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let err = fails(
        r,
        &[
            "cp",
            "--oci-mediatypes",
            &format!("oci:{}:app", plain.display()),
            &format!("oci:{}:x", t.path().join("x").display()),
        ],
    );
    assert!(err.contains("from the local store"), "{err}");
}
