//! End-to-end: the local store and archives against real peers (skopeo, umoci) and a real
//! two-platform busybox image made from Debian's packages.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn loaded_store() -> Option<(tempfile::TempDir, String)> {
    let (layout, digest) = busybox_layout(&["amd64", "arm64"])?;
    let root = tempfile::tempdir().unwrap();
    let out = ok(root.path(), &["load", "-i", layout.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: localhost/busybox-amd64-arm64:latest"),
        "{out}"
    );
    ok(
        root.path(),
        &["tag", "localhost/busybox-amd64-arm64:latest", "busybox:1"],
    );
    Some((root, digest))
}

#[test]
fn images_lists_index_digest_platforms_and_size() {
    let Some((root, digest)) = loaded_store() else {
        return;
    };
    let table = ok(root.path(), &["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{table}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("busybox "))
        .expect("busybox row");
    assert!(row.contains(&digest[..19]), "{row}");
    assert!(row.contains("linux/amd64,linux/arm64"), "{row}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(root.path(), &["images", "--format", "json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let bb = rows.iter().find(|r| r["repository"] == "busybox").unwrap();
    assert_eq!(bb["digest"], digest.as_str());
    assert_eq!(bb["name"], "docker.io/library/busybox:1");
    assert_eq!(
        bb["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert!(bb["size"].as_u64().unwrap() > 1_000_000);

    let filtered = ok(root.path(), &["images", "busybox", "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&filtered)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn skopeo_reads_the_store_and_every_archive_format() {
    if !peer("skopeo") {
        return;
    }
    let Some((root, digest)) = loaded_store() else {
        return;
    };
    let r = root.path();
    let store_ref = format!("oci:{}:docker.io/library/busybox:1", r.display());
    let raw = sh(Command::new("skopeo").args(["inspect", "--raw", &store_ref]));
    assert_eq!(
        format!("sha256:{}", sha256(raw.as_bytes())),
        digest,
        "the store serves the index bytes as they are"
    );

    let t = tempfile::tempdir().unwrap();
    let oci_tar = t.path().join("bb-oci.tar");
    ok(r, &["save", "-o", oci_tar.to_str().unwrap(), "busybox:1"]);
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!(
            "oci-archive:{}:docker.io/library/busybox:1",
            oci_tar.display()
        ),
    ]));
    assert_eq!(format!("sha256:{}", sha256(raw.as_bytes())), digest);

    let dock = t.path().join("bb-docker.tar");
    let out = run(
        r,
        &[
            "save",
            "--type",
            "docker",
            "-o",
            dock.to_str().unwrap(),
            "busybox:1",
        ],
    );
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("one per platform") && said.contains("busybox:1-linux-arm64"),
        "{said}"
    );
    for (tag, arch) in [
        ("busybox:1-linux-arm64", "arm64"),
        ("busybox:1-linux-amd64", "amd64"),
    ] {
        let info = sh(Command::new("skopeo").args([
            "inspect",
            &format!("docker-archive:{}:{tag}", dock.display()),
        ]));
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["Architecture"], arch, "{tag}");
    }

    // Copy out of a saved archive with skopeo into a fresh layout and compare the blobs.
    let back = t.path().join("back");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        &format!(
            "oci-archive:{}:docker.io/library/busybox:1",
            oci_tar.display()
        ),
        &format!("oci:{}:x", back.display()),
    ]));
    let raw =
        sh(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:x", back.display())]));
    assert_eq!(format!("sha256:{}", sha256(raw.as_bytes())), digest);
}

#[test]
fn manifold_loads_what_skopeo_writes() {
    if !peer("skopeo") {
        return;
    }
    let Some((layout, digest)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    // skopeo's OCI archive of the whole index: the index digest survives.
    let oci_tar = t.path().join("from-skopeo.tar");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        &format!("oci:{}:latest", layout.display()),
        &format!("oci-archive:{}:v1", oci_tar.display()),
    ]));
    let out = ok(&root, &["load", "-i", oci_tar.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: localhost/from-skopeo:v1"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&root, &["images", "--format", "json"])).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());

    // skopeo's docker-archive of the arm64 image (skopeo writes one platform).
    let dock = t.path().join("arm64.tar");
    sh(Command::new("skopeo").args([
        "copy",
        "--override-arch",
        "arm64",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker-archive:{}:example.com/team/bb:arm", dock.display()),
    ]));
    let out = ok(&root, &["load", "-i", dock.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: example.com/team/bb:arm"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(
        &root,
        &["images", "example.com/team/bb", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(json[0]["platforms"], serde_json::json!(["linux/arm64"]));
    // Compressed archives load too.
    let gz = t.path().join("arm64.tar.gz");
    sh(Command::new("sh").args([
        "-c",
        &format!("gzip -c {} > {}", dock.display(), gz.display()),
    ]));
    let root2 = t.path().join("store2");
    let out = ok(&root2, &["load", "-i", gz.to_str().unwrap()]);
    assert!(out.contains("example.com/team/bb:arm"), "{out}");
    assert!(ok(&root2, &["fsck"]).contains("store is consistent"));
}

#[test]
fn umoci_unpacks_our_layout_and_we_load_what_umoci_writes() {
    if !peer("umoci") {
        return;
    }
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let out = ok(
        root.path(),
        &[
            "cp",
            "--platform",
            "linux/arm64",
            "store:busybox:1",
            &format!("oci:{}:arm64", dir.display()),
        ],
    );
    let filtered = out.trim().to_string();
    let bundle = t.path().join("bundle");
    sh(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:arm64", dir.display()),
        bundle.to_str().unwrap(),
    ]));
    let bb = bundle.join("rootfs/bin/busybox");
    let head = fs::read(&bb).unwrap();
    // ELF, 64-bit, machine 0xb7 = aarch64: the arm64 image was selected, not the first entry.
    assert_eq!(&head[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 0xb7);
    assert!(bundle
        .join("rootfs/bin/sh")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());

    // The filtered copy is a new, consistent one-entry index.
    let l = store::Layout::open_existing(dir.clone()).unwrap();
    let desc = store::Source::resolve(&l, "arm64").unwrap();
    assert_eq!(desc.digest.to_string(), filtered);
    assert!(l.fsck().unwrap().problems.is_empty());

    // umoci changes the image (a new layer) and we load the result.
    fs::write(bundle.join("rootfs/hello.txt"), "from umoci\n").unwrap();
    sh(Command::new("umoci").args([
        "repack",
        "--image",
        &format!("{}:changed", dir.display()),
        bundle.to_str().unwrap(),
    ]));
    let out = ok(root.path(), &["load", "-i", dir.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: localhost/layout:changed"),
        "{out}"
    );
    assert!(ok(root.path(), &["fsck"]).contains("store is consistent"));
}

#[test]
fn platform_filter_names_what_the_index_offers() {
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let err = fails(
        root.path(),
        &[
            "save",
            "--platform",
            "linux/s390x",
            "-o",
            t.path().join("x.tar").to_str().unwrap(),
            "busybox:1",
        ],
    );
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    assert!(!t.path().join("x.tar").exists(), "no half-written archive");
    assert_eq!(
        fs::read_dir(t.path()).unwrap().count(),
        0,
        "no temporary left beside it"
    );
}

#[test]
fn rm_untags_and_reclaims() {
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let r = root.path();
    ok(r, &["rm", "busybox:1"]);
    assert!(ok(r, &["images"]).contains("localhost/busybox-amd64-arm64"));
    let err = fails(r, &["rm", "busybox:1"]);
    assert!(err.contains("no such image: busybox:1"), "{err}");
    ok(r, &["rm", "localhost/busybox-amd64-arm64:latest"]);
    let blobs = fs::read_dir(r.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "every blob was reclaimed");
}

#[test]
fn concurrent_processes_lose_no_tag() {
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let r = root.path().to_path_buf();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    ok(&r, &["tag", "busybox:1", &format!("w{w}/app:t{i}")]);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&r, &["images", "--format", "json"])).unwrap();
    assert_eq!(
        json.as_array().unwrap().len(),
        2 + 50,
        "every tag from both processes is there"
    );
}

#[test]
fn killed_import_leaves_a_clean_store() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    // A layout with one 400 MB layer, so the import is still running when it is killed.
    let layout = t.path().join("big");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut hasher = Sha256::default();
    let tmp = layout.join("layer");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&tmp).unwrap());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..400 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&buf);
            f.write_all(&buf).unwrap();
        }
    }
    let layer = hasher.hex();
    fs::rename(&tmp, layout.join("blobs/sha256").join(&layer)).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{layer}"]}}}}"#
    );
    let cfg = put(&layout, config.as_bytes());
    let man = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cfg}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":{}}}]}}"#,
        config.len(),
        400u64 << 20
    );
    let m = put(&layout, man.as_bytes());
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{m}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"example.com/big:1"}}}}]}}"#, man.len()),
    )
    .unwrap();

    let mut child = Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", &root)
        .args(["load", "-i", layout.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Kill it once it has started writing the big layer.
    let ingest = root.join("ingest");
    let start = Instant::now();
    loop {
        let writing = fs::read_dir(&ingest)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false))
            })
            .unwrap_or(false);
        if writing || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the import was interrupted, not finished"
    );

    let out = ok(&root, &["fsck"]);
    assert!(out.contains("store is consistent"), "{out}");
    assert!(
        out.contains("temporary files from interrupted writes"),
        "{out}"
    );
    assert!(
        ok(&root, &["images", "--format", "json"]).trim() == "[]",
        "nothing was named"
    );
    let pruned = ok(&root, &["prune"]);
    assert!(
        pruned.contains("removed 1 leftover temporary files"),
        "{pruned}"
    );
    assert_eq!(fs::read_dir(&ingest).unwrap().count(), 0);

    // And the same import, not interrupted, lands whole.
    ok(&root, &["load", "-i", layout.to_str().unwrap()]);
    assert!(ok(&root, &["images"]).contains("example.com/big"));
}

#[test]
fn bad_archives_are_refused_and_change_nothing() {
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let r = root.path();
    let before = fs::read(r.join("index.json")).unwrap();
    let t = tempfile::tempdir().unwrap();

    // A docker-archive whose layer does not match the config's diff ID.
    let good = t.path().join("good.tar");
    ok(
        r,
        &[
            "save",
            "--type",
            "docker",
            "--platform",
            "linux/amd64",
            "-o",
            good.to_str().unwrap(),
            "busybox:1",
        ],
    );
    let x = t.path().join("x");
    fs::create_dir_all(&x).unwrap();
    sh(Command::new("tar").args(["-xf", good.to_str().unwrap(), "-C", x.to_str().unwrap()]));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let layer = x.join(manifest[0]["Layers"][0].as_str().unwrap());
    let mut bytes = fs::read(&layer).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&layer, bytes).unwrap();
    let bad = t.path().join("bad.tar");
    sh(Command::new("tar").args(["-cf", bad.to_str().unwrap(), "-C", x.to_str().unwrap(), "."]));
    let err = fails(r, &["load", "-i", bad.to_str().unwrap()]);
    assert!(
        err.contains("diff ID") && err.contains("config expects"),
        "{err}"
    );

    // An OCI layout whose blob was tampered with.
    let lay = t.path().join("lay");
    ok(
        r,
        &["cp", "store:busybox:1", &format!("oci:{}:t", lay.display())],
    );
    let cfgs: Vec<_> = fs::read_dir(lay.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().unwrap().len() > 100_000)
        .collect();
    let victim = cfgs[0].path();
    let mut b = fs::read(&victim).unwrap();
    b[100] ^= 1;
    fs::write(&victim, b).unwrap();
    // Into a fresh store: the loaded one already holds that blob and would rightly skip it.
    let fresh = t.path().join("fresh");
    let err = fails(&fresh, &["load", "-i", lay.to_str().unwrap()]);
    assert!(ok(&fresh, &["images", "--format", "json"]).trim() == "[]");
    assert!(ok(&fresh, &["fsck"]).contains("store is consistent"));
    assert!(
        err.contains("does not match its digest")
            && err.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
        "{err}"
    );

    // Not an archive at all.
    let junk = t.path().join("junk.tar");
    fs::write(&junk, b"hello").unwrap();
    let err = fails(r, &["load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");

    assert_eq!(
        fs::read(r.join("index.json")).unwrap(),
        before,
        "no name changed"
    );
    assert!(ok(r, &["fsck"]).contains("store is consistent"));
}

// Small helpers with no extra dependency: sha256 through the oci crate.
#[derive(Default)]
struct Sha256(Option<oci::Hasher>);
impl Sha256 {
    fn update(&mut self, b: &[u8]) {
        self.0
            .get_or_insert_with(|| oci::Algorithm::Sha256.hasher())
            .update(b)
    }
    fn hex(self) -> String {
        self.0
            .unwrap_or_else(|| oci::Algorithm::Sha256.hasher())
            .finish()
            .hex()
            .to_string()
    }
}
fn sha256(b: &[u8]) -> String {
    oci::Digest::sha256_of(b).hex().to_string()
}
fn put(layout: &Path, b: &[u8]) -> String {
    let h = sha256(b);
    fs::write(layout.join("blobs/sha256").join(&h), b).unwrap();
    h
}

/// Modes of every file under `dir`, by path relative to it.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string() + "/",
                    fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                ));
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn exports_follow_the_umask_and_hold_only_the_layout() {
    let Some((root, digest)) = loaded_store() else {
        return;
    };
    let r = root.path();
    let t = tempfile::tempdir().unwrap();
    let tar = t.path().join("bb.tar");
    let dock = t.path().join("bb-docker.tar");
    let lay = t.path().join("layout");
    ok(r, &["save", "-o", tar.to_str().unwrap(), "busybox:1"]);
    ok(
        r,
        &[
            "save",
            "--type",
            "docker",
            "-o",
            dock.to_str().unwrap(),
            "busybox:1",
        ],
    );
    ok(
        r,
        &[
            "cp",
            "store:busybox:1",
            &format!("oci:{}:bb", lay.display()),
        ],
    );
    // The test process's umask (022 unless the caller set another) decides, as for cp or tar.
    let mask = {
        let s = fs::read_to_string("/proc/self/status").unwrap();
        let v = s.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
        u32::from_str_radix(v.trim(), 8).unwrap()
    };
    use std::os::unix::fs::PermissionsExt;
    for f in [&tar, &dock] {
        let m = fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o666 & !mask, "{}", f.display());
    }
    let files = modes(&lay);
    for (p, m) in &files {
        let want = if p.ends_with('/') {
            0o777 & !mask
        } else {
            0o666 & !mask
        };
        assert_eq!(*m, want, "{p}");
    }
    let names: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| *p == "blobs/sha256/" || !p.starts_with("blobs/sha256/"))
        .collect();
    assert_eq!(
        names,
        ["blobs/", "blobs/sha256/", "index.json", "oci-layout"]
    );
    // umoci (which checks a layout strictly) reads it; so does skopeo.
    if peer("skopeo") {
        let raw = sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            &format!("oci:{}:bb", lay.display()),
        ]));
        assert_eq!(format!("sha256:{}", sha256(raw.as_bytes())), digest);
    }
}

#[test]
fn dash_is_standard_output_and_never_a_terminal() {
    let Some((root, digest)) = loaded_store() else {
        return;
    };
    let r = root.path();
    let t = tempfile::tempdir().unwrap();
    // save -o - and cp to oci-archive:- write the archive to stdout, and no file named "-".
    let out = Command::new(manifold_bin())
        .current_dir(t.path())
        .env("MANIFOLD_ROOT", r)
        .args(["save", "-o", "-", "busybox:1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = t.path().join("piped.tar");
    fs::write(&tar, &out.stdout).unwrap();
    let loaded = tempfile::tempdir().unwrap();
    ok(loaded.path(), &["load", "-i", tar.to_str().unwrap()]);
    assert!(ok(loaded.path(), &["images", "--no-trunc"]).contains(&digest));
    let out = Command::new(manifold_bin())
        .current_dir(t.path())
        .env("MANIFOLD_ROOT", r)
        .args(["cp", "store:busybox:1", "oci-archive:-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = fs::read(&tar).unwrap();
    assert!(
        out.stdout.len() == file.len() && tar_entries(&out.stdout) == tar_entries(&file),
        "the same archive, and only it"
    );
    assert!(!t.path().join("-").exists());

    // A terminal on stdout is refused (script(1) gives the command a real pseudo-terminal).
    if !peer("script") {
        return;
    }
    let cmd = format!(
        "MANIFOLD_ROOT={} {} save -o - busybox:1; echo rc=$?",
        r.display(),
        manifold_bin().display()
    );
    let out = sh(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    assert!(
        out.contains("refusing to write an archive to a terminal") && out.contains("rc=1"),
        "{out}"
    );
}

#[test]
fn rm_changes_nothing_on_error_and_removes_many_names_at_once() {
    let Some((root, _)) = loaded_store() else {
        return;
    };
    let r = root.path();
    let before = fs::read(r.join("index.json")).unwrap();
    let blobs = fs::read_dir(r.join("blobs/sha256")).unwrap().count();
    // An unnamed orphan blob that a GC would sweep: an error must not sweep it.
    let orphan = put(r, b"orphan");
    let out = run(r, &["rm", "busybox:1", "nonexistent:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no such image: nonexistent:1")
            && err.contains("nothing was removed")
            && !err.contains("Deleted"),
        "{err}"
    );
    assert_eq!(fs::read(r.join("index.json")).unwrap(), before);
    assert!(r
        .join("blobs/sha256")
        .join(orphan.trim_start_matches("sha256:"))
        .exists());
    assert_eq!(
        fs::read_dir(r.join("blobs/sha256")).unwrap().count(),
        blobs + 1
    );

    // 3,000 names go in one index update and one GC.
    let names: Vec<(String, oci::Descriptor)> = {
        let idx: serde_json::Value = serde_json::from_slice(&before).unwrap();
        let d: oci::Descriptor = serde_json::from_value(idx["manifests"][0].clone()).unwrap();
        (0..3000)
            .map(|i| (format!("docker.io/library/many:{i}"), d.clone()))
            .collect()
    };
    store::Layout::open_existing(r)
        .unwrap()
        .set_names(&names)
        .unwrap();
    let mut args = vec!["rm".to_string()];
    args.extend((0..3000).map(|i| format!("many:{i}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(r, &args);
    assert_eq!(out.lines().count(), 3000);
    let left = ok(r, &["images", "--format", "json"]);
    assert!(!left.contains("many"), "{left}");
}

#[test]
fn load_never_echoes_its_input() {
    let root = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("secrets");
    fs::write(
        &f,
        "root:x:0:0:root:/root:/bin/bash\nTOKEN=hunter2-very-secret\n",
    )
    .unwrap();
    let err = fails(root.path(), &["load", "-i", f.to_str().unwrap()]);
    assert!(err.contains("not a tar archive"), "{err}");
    assert!(
        !err.contains("hunter2") && !err.contains("/bin/bash"),
        "{err}"
    );
    let out = run_with(
        root.path(),
        &[],
        Some("TOKEN=hunter2-very-secret\n"),
        &["load"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("standard input: not a tar archive") && !err.contains("hunter2"),
        "{err}"
    );
    let err = fails(root.path(), &["cp", "store:x:1", "oci:"]);
    assert!(err.contains("names no path"), "{err}");
}

#[test]
fn build_outputs_follow_the_umask_and_take_dash_for_stdout() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    fs::write(ctx.path().join("f"), "hello\n").unwrap();
    let t = tempfile::tempdir().unwrap();
    let mask = {
        let s = fs::read_to_string("/proc/self/status").unwrap();
        let v = s.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
        u32::from_str_radix(v.trim(), 8).unwrap()
    };
    for kind in ["oci", "docker", "tar"] {
        let dest = t.path().join(format!("out-{kind}.tar"));
        let out = run_with(
            r,
            &[("SOURCE_DATE_EPOCH", "0")],
            None,
            &[
                "build",
                "--progress",
                "quiet",
                "-o",
                &format!("type={kind},dest={}", dest.display()),
                ctx.path().to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o666 & !mask, "type={kind}");
        // dest=- is standard output: the same bytes, and no file named "-".
        let out = Command::new(manifold_bin())
            .current_dir(t.path())
            .env("MANIFOLD_ROOT", r)
            .env("SOURCE_DATE_EPOCH", "0")
            .args([
                "build",
                "--progress",
                "quiet",
                "-o",
                &format!("type={kind},dest=-"),
                ctx.path().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same entries (parallel transfers may order them differently), and nothing else.
        let file = fs::read(&dest).unwrap();
        assert!(
            out.stdout.len() == file.len() && tar_entries(&out.stdout) == tar_entries(&file),
            "type={kind}: standard output holds the same archive, and only it"
        );
        assert!(!t.path().join("-").exists());
    }
}

/// A tar's entries by path; panics unless `bytes` is a tar and nothing follows it.
fn tar_entries(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut a = tar::Archive::new(bytes);
    let mut out = std::collections::BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.insert(e.path().unwrap().display().to_string(), b);
    }
    assert!(!out.is_empty());
    out
}
