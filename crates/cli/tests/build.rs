//! End-to-end: `manifold build` for several platforms from a real busybox base in a real
//! registry, RUN steps natively and under QEMU, outputs read back by skopeo; the step cache,
//! reproducibility, and bad input that changes nothing.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64", "armhf"])
}

#[test]
fn three_platforms_each_run_their_own_binaries_and_push_one_index() {
    if !peer("skopeo") {
        return;
    }
    let Some((reg, base)) = base() else { return };
    let df = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS prep\nARG TARGETARCH\nARG TARGETPLATFORM\nRUN uname -m > /built-on && echo \"$TARGETARCH\" > /target\n\nFROM {base}\nCOPY --from=prep /built-on /target /\nCOPY app.txt /app/\nWORKDIR /app\nRUN uname -m > arch\nCMD [\"cat\", \"/app/arch\"]\n"
    );
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "payload\n")]);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let tag = format!("{}/app/multi:1", reg.addr);
    let meta = out.path().join("meta.json");
    let res = run(
        store.path(),
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64,linux/arm/v7",
            "-t",
            &tag,
            "--push",
            "-o",
            &format!("type=local,dest={}", out.path().join("fs").display()),
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    // The prep stage runs natively, once per target; foreign RUN steps are marked.
    assert!(
        stderr.lines().any(|l| l.contains("linux/arm64 stage-1")
            && l.contains("RUN uname")
            && l.contains("EMULATED")),
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("prep") && l.contains("EMULATED")),
        "{stderr}"
    );

    for (dir, arch, target) in [
        ("linux_amd64", "x86_64", "amd64"),
        ("linux_arm64", "aarch64", "arm64"),
        ("linux_arm_v7", "armv7l", "arm"),
    ] {
        let root = out.path().join("fs").join(dir);
        assert_eq!(read(&root.join("app/arch")).trim(), arch, "{dir}");
        assert_eq!(
            read(&root.join("target")).trim(),
            target,
            "{dir}: TARGETARCH in the native stage"
        );
        assert_eq!(
            read(&root.join("built-on")).trim(),
            "x86_64",
            "{dir}: the prep stage ran natively"
        );
        assert_eq!(read(&root.join("app/app.txt")), "payload\n");
    }

    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{tag}"),
    ]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let plats: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            format!(
                "{}/{}{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                p["variant"]
                    .as_str()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(plats, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
    let m: serde_json::Value = serde_json::from_str(&read(&meta)).unwrap();
    assert_eq!(
        m["containerimage.digest"],
        oci::Digest::sha256_of(raw.as_bytes()).to_string()
    );
    assert_eq!(m["containerimage.platforms"].as_array().unwrap().len(), 3);
    // The pushed config carries the instructions.
    let cfg = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--config",
        "--override-arch",
        "arm64",
        &format!("docker://{tag}"),
    ]));
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["cat", "/app/arch"])
    );
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    assert_eq!(cfg["architecture"], "arm64");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);
}

#[test]
fn rebuilds_hit_the_cache_and_cold_builds_are_reproducible() {
    let Some((_reg, base)) = base() else { return };
    let df = format!("FROM {base}\nCOPY data.txt /data.txt\nRUN sed s/a/b/ /data.txt > /out.txt\n");
    let ctx = context(&[("Dockerfile", &df), ("data.txt", "aaa\n")]);
    let c = ctx.path().to_str().unwrap();
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let build = |root: &Path, extra: &[&str]| -> (String, String) {
        let mut args = vec![
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "localhost/repro:1",
        ];
        args.extend_from_slice(extra);
        args.push(c);
        let out = run_with(root, &env, None, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (first, _) = build(s1.path(), &[]);
    let (cached, log) = build(s1.path(), &[]);
    assert_eq!(first, cached);
    assert!(
        log.lines()
            .filter(|l| l.contains("RUN sed") && l.contains("CACHED"))
            .count()
            == 2,
        "{log}"
    );
    // Another store, no cache at all: the same digests, file times newer than the epoch clamped.
    fs::write(ctx.path().join("data.txt"), "aaa\n").unwrap();
    let (cold, log) = build(s2.path(), &["--no-cache"]);
    assert!(!log.contains("CACHED"), "{log}");
    assert_eq!(
        first, cold,
        "two cold builds with one SOURCE_DATE_EPOCH give one index digest"
    );
    // A changed input changes the result.
    fs::write(ctx.path().join("data.txt"), "abc\n").unwrap();
    let (changed, _) = build(s1.path(), &[]);
    assert_ne!(first, changed);
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    // Something in the store first, so "unchanged" means something.
    let ok_ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    ok(
        s,
        &[
            "build",
            "-t",
            "localhost/keep:1",
            ok_ctx.path().to_str().unwrap(),
        ],
    );
    let before = fs::read(s.join("index.json")).unwrap();

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("FROM {base}\nRUN echo going wrong && exit 3\n"),
            vec!["exited with code 3", "going wrong", "Dockerfile:2:1"],
        ),
        (
            format!("FROM {base}\nCOPY missing.txt /x\n"),
            vec!["\"missing.txt\" is not in the build context"],
        ),
        (
            format!("FROM {base}\nCOPY --from=nope /x /x\n"),
            vec!["nope"],
        ),
        (
            format!("FROM {base}\nRUNN true\n"),
            vec!["Dockerfile:2:1", "did you mean RUN"],
        ),
        (
            format!("FROM {base}\nCOPY link /x\n"),
            vec!["outside the build context"],
        ),
    ];
    for (i, (df, wants)) in cases.into_iter().enumerate() {
        let ctx = context(&[]);
        fs::write(ctx.path().join("Dockerfile"), &df).unwrap();
        if df.contains("COPY link") {
            std::os::unix::fs::symlink("/etc/shadow", ctx.path().join("link")).unwrap();
        }
        let err = fails(
            s,
            &[
                "build",
                "-t",
                &format!("localhost/bad:{i}"),
                ctx.path().to_str().unwrap(),
            ],
        );
        for w in wants {
            assert!(err.contains(w), "case {i}: wanted {w:?} in:\n{err}");
        }
        assert_eq!(
            fs::read(s.join("index.json")).unwrap(),
            before,
            "case {i} changed the store's names"
        );
    }
    // A base without the wanted platform names the base, the platform and what it offers.
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    let err = fails(
        s,
        &[
            "build",
            "--platform",
            "linux/s390x",
            "-t",
            "localhost/bad:s390x",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("linux/s390x")
            && err.contains("linux/amd64, linux/arm64, linux/arm/v7")
            && err.contains("base/busybox"),
        "{err}"
    );
    assert_eq!(fs::read(s.join("index.json")).unwrap(), before);
    assert!(ok(s, &["fsck"]).contains("store is consistent"));
}

#[test]
fn add_unpacks_local_archives_and_copies_other_files() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&[
        (
            "Dockerfile",
            &format!("FROM {base}\nADD app.tar.gz /opt/\nADD notes.txt /opt/notes.txt\n"),
        ),
        ("notes.txt", "plain\n"),
        ("src/dir/x.txt", "inside the archive\n"),
    ]);
    sh(Command::new("tar")
        .args(["-czf", "app.tar.gz", "-C", "src", "dir"])
        .current_dir(ctx.path()));
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(
        store.path(),
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        read(&out.path().join("opt/dir/x.txt")),
        "inside the archive\n"
    );
    assert_eq!(read(&out.path().join("opt/notes.txt")), "plain\n");
    assert!(
        !out.path().join("opt/app.tar.gz").exists(),
        "the archive was unpacked, not copied"
    );
}

#[test]
fn run_mounts_cache_secret_tmpfs_and_bind() {
    let Some((_reg, base)) = base() else { return };
    let df = format!(
        "FROM {base}\n\
         RUN --mount=type=cache,target=/var/cache/app sh -c 'echo x >> /var/cache/app/runs; wc -l < /var/cache/app/runs > /runs-seen'\n\
         RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /token-length\n\
         RUN --mount=type=tmpfs,target=/scratch sh -c 'echo tmp > /scratch/x && cat /scratch/x > /tmpfs-worked'\n\
         RUN --mount=type=bind,source=input.txt,target=/in.txt cat /in.txt > /bound\n"
    );
    let ctx = context(&[("Dockerfile", &df), ("input.txt", "from the context\n")]);
    let t = tempfile::tempdir().unwrap();
    let secret = t.path().join("token");
    fs::write(&secret, "s3cr3t-value").unwrap();
    let store = tempfile::tempdir().unwrap();
    let build = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "build",
            "--secret",
            &format!("id=token,src={}", secret.display()),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("-o".into());
        args.push(format!("type=local,dest={}", out.display()));
        args.push(ctx.path().to_str().unwrap().into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(store.path(), &refs);
    };
    let o1 = t.path().join("o1");
    build(&o1, &[]);
    assert_eq!(read(&o1.join("runs-seen")).trim(), "1");
    assert!(
        !o1.join("var/cache/app/runs").exists(),
        "cache contents stay out of the image"
    );
    assert_eq!(read(&o1.join("token-length")).trim(), "12");
    assert!(
        !o1.join("run/secrets/token").exists() || read(&o1.join("run/secrets/token")).is_empty(),
        "the secret is not in the image"
    );
    assert_eq!(read(&o1.join("tmpfs-worked")).trim(), "tmp");
    assert!(
        !o1.join("scratch/x").exists(),
        "tmpfs contents are not kept"
    );
    assert_eq!(read(&o1.join("bound")), "from the context\n");
    // The cache persists: a rebuild without the step cache sees the earlier run.
    let o2 = t.path().join("o2");
    build(&o2, &["--no-cache"]);
    assert_eq!(read(&o2.join("runs-seen")).trim(), "2");
    // Configs, manifests and history are stored uncompressed: the secret appears in none of them
    // (the layers were checked through the exported filesystem above).
    let secret_in_store = fs::read_dir(store.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .any(|e| {
            fs::read(e.path())
                .map(|b| b.windows(12).any(|w| w == b"s3cr3t-value"))
                .unwrap_or(false)
        });
    assert!(
        !secret_in_store,
        "the secret's bytes are in no stored document"
    );
}

#[test]
fn zstd_output_writes_zstd_layers_even_after_a_gzip_build() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN echo hi > /hi\n"))]);
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    ok(store.path(), &["build", ctx.path().to_str().unwrap()]);
    let archive = t.path().join("z.tar");
    ok(
        store.path(),
        &[
            "build",
            "-o",
            &format!("type=oci,dest={},compression=zstd", archive.display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    let x = t.path().join("x");
    fs::create_dir_all(&x).unwrap();
    sh(Command::new("tar").args(["-xf", archive.to_str().unwrap(), "-C", x.to_str().unwrap()]));
    let blob = |d: &str| layout_json(&x, d);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("index.json")).unwrap()).unwrap();
    let root = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let manifest = if root["manifests"].is_array() {
        blob(root["manifests"][0]["digest"].as_str().unwrap())
    } else {
        root
    };
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types.last().copied(),
        Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
}

/// A static HTTP server on a free loopback port for ADD of URLs; killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> Option<HttpServer> {
        if !peer("python3") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed().as_secs() < 10, "http.server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(HttpServer { child, port })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_fetches_urls_and_checks_checksums() {
    let Some((_reg, base)) = base() else { return };
    let served = tempfile::tempdir().unwrap();
    fs::write(served.path().join("data.txt"), "served over http\n").unwrap();
    let Some(http) = HttpServer::start(served.path()) else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/data.txt", http.port);
    let sum = oci::Digest::sha256_of(b"served over http\n");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nADD {url} /fetched/\nADD --checksum={sum} {url} /checked.txt\n"),
    )]);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(
        store.path(),
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        read(&out.path().join("fetched/data.txt")),
        "served over http\n"
    );
    assert_eq!(read(&out.path().join("checked.txt")), "served over http\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(out.path().join("checked.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let wrong = oci::Digest::sha256_of(b"something else");
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nADD --checksum={wrong} {url} /x\n"),
    )
    .unwrap();
    let err = fails(store.path(), &["build", ctx.path().to_str().unwrap()]);
    assert!(
        err.contains(&sum.to_string()) && err.contains(&wrong.to_string()),
        "{err}"
    );
    fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {base}\nADD http://127.0.0.1:{}/missing.txt /x\n",
            http.port
        ),
    )
    .unwrap();
    let err = fails(store.path(), &["build", ctx.path().to_str().unwrap()]);
    assert!(err.contains("missing.txt") && err.contains("404"), "{err}");
}

#[test]
fn copy_chown_by_name_uses_the_images_own_users() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&[
        ("Dockerfile", &format!("FROM {base}\nCOPY --chown=nobody:nogroup --chmod=640 f.txt /f.txt\nCOPY --chown=nobody g.txt /g.txt\n")),
        ("f.txt", "f\n"),
        ("g.txt", "g\n"),
    ]);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(
        store.path(),
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    use std::os::unix::fs::MetadataExt;
    let f = fs::metadata(out.path().join("f.txt")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o777), (65534, 65534, 0o640));
    let g = fs::metadata(out.path().join("g.txt")).unwrap();
    assert_eq!(
        (g.uid(), g.gid()),
        (65534, 65534),
        "a user alone gives its id as the group"
    );
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY --chown=ghost f.txt /f.txt\n"),
    )
    .unwrap();
    let err = fails(store.path(), &["build", ctx.path().to_str().unwrap()]);
    assert!(err.contains("no user \"ghost\""), "{err}");
}
