//! End-to-end: the build pipeline's inputs and outputs. Every input of a step is in its cache
//! key (bind mounts from the context, stages and images), images named only by a mount are
//! fetched, cached steps survive `prune`, compression is chosen at export, and `--push` mounts
//! what the target registry already has instead of uploading it again.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64", "armhf"])
}

/// Runs a build, failing the test unless it succeeds; returns stderr (the step log).
fn build(store: &Path, args: &[&str]) -> String {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let out = run(store, &all);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "manifold {all:?} failed:\n{stderr}");
    stderr
}

fn cached_lines(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(needle) && l.contains("CACHED"))
        .count()
}

#[test]
fn bind_mount_sources_are_in_the_run_key() {
    let Some((_reg, base)) = base() else { return };
    let df = format!(
        "FROM {base} AS src\nCOPY s.txt /s.txt\n\n\
         FROM {base}\n\
         RUN --mount=type=bind,source=x.txt,target=/x cat /x > /out\n\
         RUN --mount=type=bind,from=src,source=/s.txt,target=/s cat /s > /out2\n"
    );
    let ctx = context(&[
        ("Dockerfile", &df),
        ("x.txt", "one\n"),
        ("s.txt", "first\n"),
    ]);
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let o = |n: &str| t.path().join(n);
    let dest = |n: &str| format!("type=local,dest={}", o(n).display());

    build(store.path(), &["-o", &dest("a"), c]);
    assert_eq!(read(&o("a").join("out")), "one\n");
    assert_eq!(read(&o("a").join("out2")), "first\n");

    // Nothing changed: both RUNs come from the cache.
    let log = build(store.path(), &["-o", &dest("b"), c]);
    assert_eq!(cached_lines(&log, "RUN --mount"), 2, "{log}");

    // The context file behind the bind changed: that RUN runs again.
    fs::write(ctx.path().join("x.txt"), "two\n").unwrap();
    let log = build(store.path(), &["-o", &dest("c"), c]);
    assert_eq!(read(&o("c").join("out")), "two\n", "{log}");

    // What the stage behind `from=` built changed: that RUN runs again.
    fs::write(ctx.path().join("s.txt"), "second\n").unwrap();
    let log = build(store.path(), &["-o", &dest("d"), c]);
    assert_eq!(read(&o("d").join("out2")), "second\n", "{log}");
}

#[test]
fn an_image_named_only_by_a_mount_is_fetched_and_keyed() {
    let Some((reg, base)) = base() else { return };
    // An image nothing but the mount names, with a marker file.
    let store = tempfile::tempdir().unwrap();
    let other = format!("{}/other/marker:1", reg.addr);
    let mk = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo v1 > /marker\n"),
    )]);
    build(
        store.path(),
        &[
            "--platform",
            "linux/arm64",
            "-t",
            &other,
            "--push",
            mk.path().to_str().unwrap(),
        ],
    );
    let df = format!(
        "FROM {base}\nRUN --mount=type=bind,from={other},source=/marker,target=/m cat /m > /seen\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let c = ctx.path().to_str().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    build(
        fresh.path(),
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={}", t.path().join("a").display()),
            c,
        ],
    );
    assert_eq!(read(&t.path().join("a/seen")), "v1\n");

    // The image behind the mount changes: with --pull the new one is fetched and the RUN reruns.
    fs::write(
        mk.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo v2 > /marker\n"),
    )
    .unwrap();
    build(
        store.path(),
        &[
            "--platform",
            "linux/arm64",
            "-t",
            &other,
            "--push",
            mk.path().to_str().unwrap(),
        ],
    );
    build(
        fresh.path(),
        &[
            "--platform",
            "linux/arm64",
            "--pull",
            "-o",
            &format!("type=local,dest={}", t.path().join("b").display()),
            c,
        ],
    );
    assert_eq!(read(&t.path().join("b/seen")), "v2\n");
}

#[test]
fn prune_keeps_cached_steps_and_prune_cache_drops_them() {
    let Some((reg, base)) = base() else { return };
    let df = format!("FROM {base}\nRUN echo hi > /hi\nCOPY f.txt /f.txt\n");
    let ctx = context(&[("Dockerfile", &df), ("f.txt", "f\n")]);
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let tag = format!("{}/app/pruned:1", reg.addr);
    let push = |s: &Path| build(s, &["-t", &tag, "--push", c]);
    push(store.path());
    // Only the registry holds the image; the store holds the layers only the cache uses.
    ok(store.path(), &["prune"]);
    let log = push(store.path());
    assert_eq!(cached_lines(&log, "RUN echo hi"), 1, "{log}");
    assert_eq!(cached_lines(&log, "COPY f.txt"), 1, "{log}");

    // An age filter that matches nothing keeps the cache.
    ok(store.path(), &["prune", "--cache", "--filter", "until=24h"]);
    let log = push(store.path());
    assert_eq!(cached_lines(&log, "RUN echo hi"), 1, "{log}");

    // A storage budget of zero drops every cached step.
    ok(store.path(), &["prune", "--cache", "--keep-storage", "0"]);
    let log = push(store.path());
    assert_eq!(cached_lines(&log, "RUN echo hi"), 0, "{log}");

    ok(store.path(), &["prune", "--cache"]);
    let log = push(store.path());
    assert!(!log.contains("CACHED"), "{log}");
}

#[test]
fn switching_compression_reruns_nothing() {
    let Some((_reg, base)) = base() else { return };
    let df = format!("FROM {base}\nRUN echo hi > /hi\nCOPY f.txt /f.txt\n");
    let ctx = context(&[("Dockerfile", &df), ("f.txt", "f\n")]);
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    build(store.path(), &[c]);
    let layer_types = |archive: &Path| -> Vec<String> {
        let x = tempfile::tempdir().unwrap();
        sh(Command::new("tar").args([
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            x.path().to_str().unwrap(),
        ]));
        let blob = |d: &str| layout_json(x.path(), d);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(x.path().join("index.json")).unwrap()).unwrap();
        let root = blob(index["manifests"][0]["digest"].as_str().unwrap());
        let manifest = if root["manifests"].is_array() {
            blob(root["manifests"][0]["digest"].as_str().unwrap())
        } else {
            root
        };
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    };
    for (i, opts) in ["compression=zstd", "compression=zstd,compression-level=9"]
        .iter()
        .enumerate()
    {
        let archive = t.path().join(format!("{i}.tar"));
        let log = build(
            store.path(),
            &[
                "-o",
                &format!("type=oci,dest={},{opts}", archive.display()),
                c,
            ],
        );
        assert_eq!(cached_lines(&log, "RUN echo hi"), 1, "{opts}: {log}");
        assert_eq!(cached_lines(&log, "COPY f.txt"), 1, "{opts}: {log}");
        let types = layer_types(&archive);
        assert_eq!(
            &types[types.len() - 2..],
            [
                "application/vnd.oci.image.layer.v1.tar+zstd",
                "application/vnd.oci.image.layer.v1.tar+zstd"
            ],
            "{opts}: {types:?}"
        );
    }
}

#[test]
fn push_mounts_base_layers_the_registry_already_has() {
    let Some((reg, base)) = base() else { return };
    let df = format!("FROM {base}\nRUN echo new > /new\n");
    let ctx = context(&[("Dockerfile", &df)]);
    let store = tempfile::tempdir().unwrap();
    let tag = format!("{}/app/mounted:1", reg.addr);
    let log = build(
        store.path(),
        &[
            "--platform",
            "linux/amd64",
            "-t",
            &tag,
            "--push",
            ctx.path().to_str().unwrap(),
        ],
    );
    // The new layer and the config are uploaded; the base layer is mounted from its repository.
    let line = log
        .lines()
        .find(|l| l.starts_with("pushed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("(2 blobs,"), "{line}");
    assert!(line.contains("1 mounted"), "{line}");
    // What landed is complete: skopeo reads it back.
    if peer("skopeo") {
        sh(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{tag}"),
        ]));
    }
}

#[test]
fn copy_from_a_stage_reads_paths_through_its_layers() {
    let Some((_reg, base)) = base() else { return };
    let df = format!(
        "FROM {base} AS big\n\
         RUN mkdir -p /data/sub /data/other && echo one > /data/sub/a && echo gone > /data/sub/b \
             && echo x > /data/other/x && ln -s data /alias\n\
         RUN rm /data/sub/b && echo two > /data/sub/c\n\n\
         FROM {base}\n\
         COPY --from=big /alias/sub/ /got/\n\
         COPY --from=big /data/sub/a /single\n\
         COPY --from=big /data/s* /glob/\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    build(
        store.path(),
        &[
            "-o",
            &format!("type=local,dest={}", t.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    let r = t.path();
    assert_eq!(read(&r.join("got/a")), "one\n");
    assert_eq!(read(&r.join("got/c")), "two\n");
    assert!(!r.join("got/b").exists(), "a file deleted in a later layer");
    assert_eq!(read(&r.join("single")), "one\n");
    assert_eq!(read(&r.join("glob/a")), "one\n");
    assert!(!r.join("glob/x").exists());
}

#[test]
fn unknown_output_keys_are_refused_with_the_known_ones() {
    let ctx = context(&[("Dockerfile", "FROM scratch\n")]);
    let store = tempfile::tempdir().unwrap();
    let err = fails(
        store.path(),
        &[
            "build",
            "-o",
            "type=local,dest=/tmp/x,bogus-key=1",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(err.contains("bogus-key") && err.contains("dest"), "{err}");
}

#[test]
fn iidfile_labels_and_no_cache_filter() {
    let Some((_reg, base)) = base() else { return };
    let df = format!(
        "FROM {base} AS tools\nRUN echo t > /t\n\nFROM {base}\nRUN echo app > /app\nCOPY --from=tools /t /t\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let iid = t.path().join("iid");
    build(
        store.path(),
        &[
            "--iidfile",
            iid.to_str().unwrap(),
            "--label",
            "org.example.team=build",
            "-t",
            "localhost/labelled:1",
            c,
        ],
    );
    let digest = read(&iid);
    let blob = |d: &str| layout_json(store.path(), d);
    let manifest = blob(&digest);
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        config["config"]["Labels"]["org.example.team"], "build",
        "{config}"
    );
    // Only the named stage runs again.
    let log = build(store.path(), &["--no-cache-filter", "tools", c]);
    assert_eq!(cached_lines(&log, "RUN echo t"), 0, "{log}");
    assert_eq!(cached_lines(&log, "RUN echo app"), 1, "{log}");
}

#[test]
fn du_shows_images_build_cache_and_snapshots() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN --mount=type=cache,target=/c echo x > /c/x && echo hi > /hi\n"),
    )]);
    let store = tempfile::tempdir().unwrap();
    build(
        store.path(),
        &["-t", "localhost/du:1", ctx.path().to_str().unwrap()],
    );
    let out = ok(store.path(), &["du", "--verbose", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["entries"].as_array().unwrap();
    let size = |kind: &str| -> u64 {
        rows.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["size"].as_u64().unwrap())
            .sum()
    };
    assert!(size("images") > 0, "{out}");
    assert!(size("snapshots") > 0, "{out}");
    assert!(size("cache mounts") > 0, "{out}");
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "image" && r["name"] == "localhost/du:1"),
        "{out}"
    );
    assert!(v["total"].as_u64().unwrap() >= size("images"));
    let table = ok(store.path(), &["du"]);
    assert!(
        table.contains("build cache") && table.contains("total"),
        "{table}"
    );
}

#[test]
fn annotations_by_scope_and_the_base_image_on_each_manifest() {
    let Some((_reg, base)) = base() else { return };
    let df = format!("FROM {base} AS b\nRUN echo x > /x\n\nFROM b\nLABEL k=v\n");
    let ctx = context(&[("Dockerfile", &df)]);
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let iid = t.path().join("iid");
    build(
        store.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--iidfile",
            iid.to_str().unwrap(),
            "--annotation",
            "index:org.example.i=1",
            "--annotation",
            "manifest-descriptor:org.example.d=2",
            "--annotation",
            "org.example.m=3",
            ctx.path().to_str().unwrap(),
        ],
    );
    let blob = |d: &str| layout_json(store.path(), d);
    let index = blob(&read(&iid));
    assert_eq!(index["annotations"]["org.example.i"], "1", "{index}");
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(e["annotations"]["org.example.d"], "2", "{e}");
        let m = blob(e["digest"].as_str().unwrap());
        let a = &m["annotations"];
        assert_eq!(a["org.example.m"], "3", "{m}");
        assert_eq!(
            a["org.opencontainers.image.base.name"],
            base.as_str(),
            "{m}"
        );
        assert!(
            a["org.opencontainers.image.base.digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{m}"
        );
    }
    let bad = fails(
        store.path(),
        &[
            "build",
            "--annotation",
            "novalue",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(bad.contains("KEY=VALUE"), "{bad}");
}

#[test]
fn add_host_reaches_run_steps_and_their_key() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN grep db.internal /etc/hosts > /seen || true\n"),
    )]);
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let out = |n: &str| format!("type=local,dest={}", t.path().join(n).display());
    build(
        store.path(),
        &["--add-host", "db.internal:10.1.2.3", "-o", &out("a"), c],
    );
    assert_eq!(
        read(&t.path().join("a/seen")).trim(),
        "10.1.2.3\tdb.internal"
    );
    let log = build(
        store.path(),
        &["--add-host", "db.internal:10.9.9.9", "-o", &out("b"), c],
    );
    assert_eq!(cached_lines(&log, "RUN grep"), 0, "{log}");
    assert_eq!(
        read(&t.path().join("b/seen")).trim(),
        "10.9.9.9\tdb.internal"
    );
    let err = fails(store.path(), &["build", "--add-host", "nocolon", c]);
    assert!(err.contains("NAME:IP"), "{err}");
}

#[test]
fn copy_from_follows_absolute_symlinks_inside_the_stage_root() {
    let Some((_reg, base)) = base() else { return };
    // A file with this name exists on the host too: a link that escaped the stage would read it.
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("canary"), "host\n").unwrap();
    let h = host.path().display();
    let df = format!(
        "FROM {base} AS s\n\
         RUN mkdir -p /data/sub {h} && echo one > /data/sub/a && echo stage > {h}/canary \
             && ln -s /data/sub/a /link && ln -s /data /abs && ln -s /abs/sub/a /chain \
             && ln -s /../../../../..{h}/canary /esc && ln -s / /hostroot\n\n\
         FROM {base}\n\
         COPY --from=s /link /got/link\n\
         COPY --from=s /abs/sub/a /got/via-dir\n\
         COPY --from=s /chain /got/chain\n\
         COPY --from=s /abs/s* /got/glob/\n\
         COPY --from=s /esc /got/esc\n\
         COPY --from=s /hostroot{h}/canary /got/hostroot\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    build(
        store.path(),
        &[
            "-o",
            &format!("type=local,dest={}", t.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    let r = t.path().join("got");
    // The source link is followed: its target's content lands under the link's name.
    assert_eq!(read(&r.join("link")), "one\n");
    assert!(!fs::symlink_metadata(r.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read(&r.join("via-dir")), "one\n");
    assert_eq!(read(&r.join("chain")), "one\n");
    assert_eq!(read(&r.join("glob/a")), "one\n");
    // `..` above the stage's root stays at its root; `/` is the stage's, not the host's.
    assert_eq!(read(&r.join("esc")), "stage\n");
    assert_eq!(read(&r.join("hostroot")), "stage\n");
}

#[test]
fn base_annotations_name_the_full_reference_and_the_platform_manifest() {
    let Some((reg, base)) = base() else { return };
    if !peer("skopeo") {
        return;
    }
    // The same base without a tag: its name in the annotation is the full reference.
    let untagged = format!("{}/base/busybox", reg.addr);
    let store = tempfile::tempdir().unwrap();
    ok(store.path(), &["cp", "--all", &base, &untagged]);
    let ctx = context(&[("Dockerfile", &format!("FROM {untagged}\nLABEL k=v\n"))]);
    let t = tempfile::tempdir().unwrap();
    let iid = t.path().join("iid");
    build(
        store.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    );
    // What the registry holds, read by skopeo: the platform manifests' digests.
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{untagged}:latest"),
    ]));
    let reg_index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let reg_digest = |arch: &str| -> String {
        reg_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("{arch} in {raw}"))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let blob = |d: &str| layout_json(store.path(), d);
    let index = blob(&read(&iid));
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    for e in entries {
        let arch = e["platform"]["architecture"].as_str().unwrap();
        let m = blob(e["digest"].as_str().unwrap());
        let a = &m["annotations"];
        assert_eq!(
            a["org.opencontainers.image.base.name"],
            format!("{untagged}:latest"),
            "{m}"
        );
        assert_eq!(
            a["org.opencontainers.image.base.digest"],
            reg_digest(arch),
            "{arch}: {m}"
        );
    }
}

#[test]
fn chmod_is_typed_symbolic_modes_apply_and_equal_modes_share_a_key() {
    let Some((_reg, base)) = base() else { return };
    let df = |chmod: &str| {
        format!(
            "FROM {base}\nCOPY --chmod={chmod} f.txt /f.txt\n\
             COPY --chmod=u+x,go-w g.txt /g.txt\nCOPY --chmod=a=rX d/ /d/\n"
        )
    };
    let ctx = context(&[
        ("Dockerfile", &df("755")),
        ("f.txt", "f\n"),
        ("g.txt", "g\n"),
        ("d/plain", "p\n"),
        ("d/sub/x", "x\n"),
    ]);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(ctx.path().join("g.txt"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(
        ctx.path().join("d/plain"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let c = ctx.path().to_str().unwrap();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let out = |n: &str| format!("type=local,dest={}", t.path().join(n).display());
    build(store.path(), &["-o", &out("a"), c]);
    let mode = |p: &str| {
        fs::symlink_metadata(t.path().join("a").join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("f.txt"), 0o755);
    // Symbolic modes apply to each file's own mode, as BuildKit does.
    assert_eq!(mode("g.txt"), 0o744);
    assert_eq!(mode("d/plain"), 0o444);
    assert_eq!(mode("d/sub"), 0o555);
    // The same mode written another way is the same step.
    fs::write(ctx.path().join("Dockerfile"), df("0755")).unwrap();
    let log = build(store.path(), &["-o", &out("b"), c]);
    assert_eq!(cached_lines(&log, "COPY --chmod=0755"), 1, "{log}");
}

#[test]
fn bad_flag_values_fail_at_their_line_before_any_step() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    for (line3, needle) in [
        ("COPY --chown=app:staff:x f.txt /f.txt", "--chown"),
        ("COPY --chmod=u+z f.txt /f.txt", "invalid chmod parameter"),
        (
            "RUN --mount=type=cache,target=/c,uid=${UID} true",
            "invalid value 12x for uid",
        ),
        ("HEALTHCHECK --interval=100us CMD true", "less than 1ms"),
    ] {
        let ctx = context(&[
            (
                "Dockerfile",
                &format!("FROM {base}\nARG UID=12x\nRUN echo started-a-step\n{line3}\n"),
            ),
            ("f.txt", "f\n"),
        ]);
        let err = fails(
            store.path(),
            &["build", "--progress", "plain", ctx.path().to_str().unwrap()],
        );
        assert!(err.contains("Dockerfile:4:"), "{line3}: {err}");
        assert!(err.contains(needle), "{line3}: {err}");
        assert!(err.contains(&format!("4 | {line3}")), "{line3}: {err}");
        assert!(!err.contains("started-a-step\n"), "a step ran: {err}");
    }
}

#[test]
fn build_contexts_replace_stages_images_and_from_flags() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let two = "linux/amd64,linux/arm64";
    // An OCI layout (written by `cp`, read as skopeo and umoci read one) holding /e.txt.
    let e_ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY e.txt /e.txt\n"),
        ("e.txt", "from the layout\n"),
    ]);
    build(
        store.path(),
        &[
            "--platform",
            two,
            "-t",
            "localhost/extra:1",
            e_ctx.path().to_str().unwrap(),
        ],
    );
    let layout = t.path().join("layout");
    ok(
        store.path(),
        &[
            "cp",
            "--all",
            "store:localhost/extra:1",
            &format!("oci:{}:v1", layout.display()),
        ],
    );
    let tools = context(&[("tool.txt", "from the tools context\n")]);
    let mnt = context(&[("m.txt", "mounted\n"), (".dockerignore", "ignored.txt\n")]);
    fs::write(mnt.path().join("ignored.txt"), "x").unwrap();
    let df = "FROM scratch AS tools\nCOPY tool.txt /tool.txt\n\n\
              FROM nothing.invalid/base:1\n\
              RUN uname -m > /arch\n\
              COPY --from=tools /tool.txt /got-tool\n\
              COPY --from=extra /e.txt /got-extra\n\
              RUN --mount=type=bind,from=mnt,target=/m cat /m/m.txt > /got-mount \
                  && ls /m > /mount-list\n";
    let ctx = context(&[("Dockerfile", df), ("tool.txt", "from the main context\n")]);
    let args = |dest: &str| -> Vec<String> {
        vec![
            "--platform".into(),
            two.into(),
            "--build-context".into(),
            format!("nothing.invalid/base:1=docker-image://{base}"),
            "--build-context".into(),
            format!("tools={}", tools.path().display()),
            "--build-context".into(),
            format!("extra=oci-layout://{}:v1", layout.display()),
            "--build-context".into(),
            format!("mnt={}", mnt.path().display()),
            "-o".into(),
            format!("type=local,dest={}", t.path().join(dest).display()),
            ctx.path().to_str().unwrap().into(),
        ]
    };
    let run_build = |dest: &str| {
        let a = args(dest);
        build(
            store.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    run_build("a");
    for (p, arch) in [("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")] {
        let r = t.path().join("a").join(p);
        // The image context is chosen per platform, as FROM chooses.
        assert_eq!(read(&r.join("arch")).trim(), arch);
        // The stage named `tools` is replaced by the directory, not built.
        assert_eq!(read(&r.join("got-tool")), "from the tools context\n");
        assert_eq!(read(&r.join("got-extra")), "from the layout\n");
        assert_eq!(read(&r.join("got-mount")), "mounted\n");
        assert_eq!(
            read(&r.join("mount-list")),
            "m.txt\n",
            "its .dockerignore applies"
        );
    }
    // What the directories hold is in the keys of the steps that read them.
    fs::write(tools.path().join("tool.txt"), "changed tool\n").unwrap();
    fs::write(mnt.path().join("m.txt"), "changed mount\n").unwrap();
    let log = run_build("b");
    assert_eq!(cached_lines(&log, "RUN uname"), 2, "{log}");
    assert_eq!(cached_lines(&log, "COPY --from=tools"), 0, "{log}");
    assert_eq!(cached_lines(&log, "RUN --mount"), 0, "{log}");
    let r = t.path().join("b/linux_arm64");
    assert_eq!(read(&r.join("got-tool")), "changed tool\n");
    assert_eq!(read(&r.join("got-mount")), "changed mount\n");
    let bad = fails(
        store.path(),
        &[
            "build",
            "--build-context",
            "x=git://example.com/r.git",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        bad.contains("--build-context x") && bad.contains("not supported"),
        "{bad}"
    );
}
