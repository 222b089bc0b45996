//! End-to-end: a build cache that travels between two CI runners (two separate store roots) through
//! a real registry or a directory: `--cache-to` on the first, `--cache-from` on the second.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const EPOCH: &str = "1700000000";
const PLATFORMS: &str = "linux/amd64,linux/arm64";

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64"])
}

/// Two stages: the build stage's layers differ per platform, the final stage reads it.
fn context(base: &str) -> tempfile::TempDir {
    context_on(base, base)
}

/// [`context`] with the build stage on `build_base` and the final stage on `base`.
fn context_on(build_base: &str, base: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let df = format!(
        "FROM {build_base} AS build\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt && uname -m >> /b.txt\n\n\
         FROM {base}\nCOPY --from=build /b.txt /b.txt\nCOPY c.txt /c.txt\nRUN cat /b.txt /c.txt > /out\n"
    );
    fs::write(t.path().join("Dockerfile"), df).unwrap();
    fs::write(t.path().join("a.txt"), "a\n").unwrap();
    fs::write(t.path().join("c.txt"), "c\n").unwrap();
    t
}

/// Runs a build with SOURCE_DATE_EPOCH; returns (stdout, stderr).
fn build(store: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let out = run_with(store, &[("SOURCE_DATE_EPOCH", EPOCH)], None, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "manifold {all:?} failed:\n{stderr}");
    (stdout, stderr)
}

/// Finished steps: a running step's start line (`... ...`) is not counted.
fn steps(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.starts_with('[') && l.contains('/') && !l.ends_with(" ..."))
        .collect()
}

fn cached(log: &str) -> usize {
    steps(log).iter().filter(|l| l.contains(" CACHED")).count()
}

/// (layers, bytes) from "cache: downloaded N layers, B bytes from imported caches".
fn downloaded(log: &str) -> (usize, u64) {
    let line = log
        .lines()
        .find(|l| l.starts_with("cache: downloaded "))
        .unwrap_or_else(|| panic!("no download count in:\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

fn root_digest(stdout: &str) -> String {
    stdout.split_whitespace().next().unwrap().to_string()
}

#[test]
fn registry_cache_travels_between_runners() {
    let Some((reg, base)) = base() else { return };
    if !peer("skopeo") {
        return;
    }
    let ctx = context(&base);
    let c = ctx.path().to_str().unwrap();
    let cache_ref = format!("{}/cache/app:buildcache", reg.addr);
    let runner1 = tempfile::tempdir().unwrap();
    let (out1, log1) = build(
        runner1.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &format!("{}/app/one:1", reg.addr),
            "--push",
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max,oci-mediatypes=true"),
            c,
        ],
    );
    assert_eq!(cached(&log1), 0, "{log1}");
    assert_eq!(steps(&log1).len(), 10, "{log1}");

    // The cache is an OCI artifact other tools read and copy.
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{cache_ref}"),
    ]));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(m["artifactType"], "application/vnd.manifold.cache.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.manifold.cache.records.v1+json"
    );
    // mode=max: the build stage's layers too. Unique blobs: COPY a.txt and COPY c.txt (one each,
    // the same on both platforms), RUN b.txt per platform (the COPY --from of /b.txt makes the
    // same blob), RUN /out per platform.
    assert_eq!(m["layers"].as_array().unwrap().len(), 6, "{raw}");
    let copied = format!("{}/cache/copied:bc", reg.addr);
    sh(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{cache_ref}"),
        &format!("docker://{copied}"),
    ]));
    let oci_dir = tempfile::tempdir().unwrap();
    sh(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{cache_ref}"),
        &format!("oci:{}:c", oci_dir.path().display()),
    ]));

    // Runner 2: an empty store, the cache skopeo copied. Every step CACHED, the same index, and
    // with --push to the same registry no layer is downloaded (mounted from the cache repo).
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build(
        runner2.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &format!("{}/app/two:1", reg.addr),
            "--push",
            "--cache-from",
            &format!("type=registry,ref={}/cache/missing:x", reg.addr),
            "--cache-from",
            &format!("type=registry,ref={copied}"),
            c,
        ],
    );
    assert!(
        log2.contains("warning: cache"),
        "a missing cache warns: {log2}"
    );
    assert_eq!(cached(&log2), 10, "{log2}");
    assert_eq!(root_digest(&out2), root_digest(&out1), "{log2}");
    assert_eq!(downloaded(&log2), (0, 0), "{log2}");
    assert!(log2.contains("mounted"), "{log2}");
    // What was pushed is complete.
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/app/two:1", reg.addr),
        &format!("oci:{}:two", oci_dir.path().display()),
    ]));

    // Runner 3: one file changed: only the steps after it run; the build stage and the COPY
    // before come from the cache, and only the layers the re-run RUN reads are fetched.
    fs::write(ctx.path().join("c.txt"), "changed\n").unwrap();
    let runner3 = tempfile::tempdir().unwrap();
    let (_, log3) = build(
        runner3.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &format!("{}/app/three:1", reg.addr),
            "--push",
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            c,
        ],
    );
    for l in steps(&log3) {
        let after = l.contains("COPY c.txt") || l.contains("RUN cat /b.txt /c.txt");
        assert_eq!(l.contains(" CACHED"), !after, "{l}\n{log3}");
    }
    // Each platform's RUN needs the COPY --from layer below it.
    assert_eq!(downloaded(&log3).0, 2, "{log3}");
}

#[test]
fn local_cache_travels_and_load_pulls_only_final_layers() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&base);
    let c = ctx.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let zstd_dir = dir.path().join("zstd");
    let runner1 = tempfile::tempdir().unwrap();
    let (out1, _) = build(
        runner1.path(),
        &[
            "--platform",
            PLATFORMS,
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache_dir.display()),
            c,
        ],
    );
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build(
        runner2.path(),
        &[
            "--platform",
            PLATFORMS,
            "--load",
            "-t",
            "app:2",
            "--cache-from",
            &format!("type=local,src={}", cache_dir.display()),
            "--cache-to",
            &format!("type=local,dest={},compression=zstd", zstd_dir.display()),
            c,
        ],
    );
    assert_eq!(cached(&log2), 10, "{log2}");
    // Re-exported with zstd layers (mode=min: only the final images' five).
    let zidx: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(zstd_dir.join("index.json")).unwrap()).unwrap();
    let zdig = zidx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let zm: serde_json::Value =
        serde_json::from_slice(&fs::read(zstd_dir.join("blobs/sha256").join(&zdig[7..])).unwrap())
            .unwrap();
    let zl = zm["layers"].as_array().unwrap();
    assert_eq!(zl.len(), 5, "{zm}");
    assert!(zl
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"));
    assert_eq!(root_digest(&out2), root_digest(&out1));
    // The final images' own layers: COPY --from and RUN differ per platform, COPY c.txt is one
    // blob; the build stage's three layers stay in the cache.
    assert_eq!(downloaded(&log2).0, 5, "{log2}");
    // The loaded image is whole.
    let fsck = ok(runner2.path(), &["fsck"]);
    assert!(!fsck.contains("missing"), "{fsck}");

    // A tampered blob in the directory: its records are refused with a warning, the steps run.
    let blobs = cache_dir.join("blobs/sha256");
    let idx: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(cache_dir.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&mdig[7..])).unwrap()).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let p = blobs.join(&l["digest"].as_str().unwrap()[7..]);
        fs::write(&p, b"not the layer").unwrap();
    }
    let runner3 = tempfile::tempdir().unwrap();
    let (out3, log3) = build(
        runner3.path(),
        &[
            "--platform",
            PLATFORMS,
            "--cache-from",
            &format!("type=local,src={}", cache_dir.display()),
            c,
        ],
    );
    assert!(log3.contains("records refused"), "{log3}");
    assert_eq!(cached(&log3), 0, "{log3}");
    assert_eq!(root_digest(&out3), root_digest(&out1));
}

#[test]
fn inline_cache_rides_in_the_pushed_image() {
    let Some((reg, base)) = base() else { return };
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt && uname -m >> /b.txt\n"),
    )
    .unwrap();
    fs::write(t.path().join("a.txt"), "a\n").unwrap();
    let c = t.path().to_str().unwrap();
    let image = format!("{}/app/inline:1", reg.addr);
    let runner1 = tempfile::tempdir().unwrap();
    let (out1, _) = build(
        runner1.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &image,
            "--push",
            "--cache-to",
            "type=inline",
            c,
        ],
    );
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build(
        runner2.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &format!("{}/app/inline:2", reg.addr),
            "--push",
            "--cache-to",
            "type=inline",
            "--cache-from",
            &format!("type=registry,ref={image}"),
            c,
        ],
    );
    assert_eq!(cached(&log2), 4, "{log2}");
    assert_eq!(root_digest(&out2), root_digest(&out1));
    assert_eq!(downloaded(&log2), (0, 0), "{log2}");
}

#[test]
fn bad_cache_specs_are_refused_before_building() {
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let c = t.path().to_str().unwrap();
    let err = fails(
        t.path(),
        &["build", "--cache-to", "type=local,dest=/x,bogus=1", c],
    );
    assert!(err.contains("unknown key \"bogus\""), "{err}");
    let err = fails(t.path(), &["build", "--cache-from", "type=s3,ref=x", c]);
    assert!(err.contains("use registry or local"), "{err}");
}

#[test]
fn concurrent_writers_leave_one_whole_cache() {
    let Some((reg, base)) = base() else { return };
    if !peer("skopeo") {
        return;
    }
    let cache_ref = format!("{}/cache/shared:bc", reg.addr);
    let variants: Vec<tempfile::TempDir> = ["one\n", "two\n"]
        .iter()
        .map(|c| {
            let ctx = context(&base);
            fs::write(ctx.path().join("c.txt"), c).unwrap();
            ctx
        })
        .collect();
    std::thread::scope(|s| {
        for ctx in &variants {
            let cache_ref = &cache_ref;
            s.spawn(move || {
                let store = tempfile::tempdir().unwrap();
                build(
                    store.path(),
                    &[
                        "--platform",
                        PLATFORMS,
                        "--cache-to",
                        &format!("type=registry,ref={cache_ref},mode=max"),
                        ctx.path().to_str().unwrap(),
                    ],
                );
            });
        }
    });
    // Whatever won is complete: skopeo copies every blob it names.
    let out = tempfile::tempdir().unwrap();
    sh(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{cache_ref}"),
        &format!("oci:{}:c", out.path().display()),
    ]));
    // And it is one writer's cache whole: that writer's build is CACHED at every step.
    let whole = variants.iter().any(|ctx| {
        let store = tempfile::tempdir().unwrap();
        let (_, log) = build(
            store.path(),
            &[
                "--platform",
                PLATFORMS,
                "--cache-from",
                &format!("type=registry,ref={cache_ref}"),
                ctx.path().to_str().unwrap(),
            ],
        );
        cached(&log) == 10
    });
    assert!(whole, "neither writer's build is fully cached");
}

/// Without SOURCE_DATE_EPOCH each step keeps the time it first ran, and that time travels in the
/// cache: a fully cached build on a second runner gives the first runner's image.
#[test]
fn step_times_travel_with_the_cache() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&base);
    let c = ctx.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let build_at = |store: &Path, cache: &str| {
        let all = ["build", "--platform", "linux/amd64", cache, c];
        let out = run_with(store, &[], None, &all);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "manifold {all:?} failed:\n{stderr}");
        (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
    };
    let runner1 = tempfile::tempdir().unwrap();
    let (out1, log1) = build_at(
        runner1.path(),
        &format!(
            "--cache-to=type=local,dest={},mode=max",
            cache_dir.display()
        ),
    );
    assert_eq!(cached(&log1), 0, "{log1}");
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build_at(
        runner2.path(),
        &format!("--cache-from=type=local,src={}", cache_dir.display()),
    );
    assert_eq!(cached(&log2), 5, "{log2}");
    assert_eq!(root_digest(&out2), root_digest(&out1), "{log2}");
}

/// (digest, size) of every layer of `reference` in the registry (every platform of an index), as
/// skopeo reads them.
fn registry_layers(reference: &str) -> Vec<(String, u64)> {
    let raw = |r: &str| -> serde_json::Value {
        let out = sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}"),
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let root = raw(reference);
    let repo = reference
        .rsplit_once(':')
        .filter(|(r, _)| r.contains('/'))
        .map_or(reference, |(r, _)| r);
    let manifests = match root["manifests"].as_array() {
        Some(children) => children
            .iter()
            .map(|c| raw(&format!("{repo}@{}", c["digest"].as_str().unwrap())))
            .collect(),
        None => vec![root],
    };
    manifests
        .iter()
        .flat_map(|m| m["layers"].as_array().unwrap().clone())
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The second runner of a CI pipeline downloads no layer it does not need. Counted by the
/// registry itself (its access log), not by manifold: with `--push` to the registry that holds
/// the cache and the bases, no layer at all (base layers are mounted, as cache layers are);
/// with `--load`, exactly the final images' layers, each once. The build stage sits on a base of
/// its own, which a fully cached build never needs.
#[test]
fn second_runner_downloads_only_the_layers_it_needs() {
    let Some((reg, base)) = logged_registry_with_busybox(&["amd64", "arm64"]) else {
        return;
    };
    if !peer("skopeo") {
        return;
    }
    let tools = format!("{}/base/tools:1", reg.addr);
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo tools > /tools.txt\n"),
    )
    .unwrap();
    let seed = tempfile::tempdir().unwrap();
    build(
        seed.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &tools,
            "--push",
            t.path().to_str().unwrap(),
        ],
    );
    let ctx = context_on(&tools, &base);
    let c = ctx.path().to_str().unwrap();
    let cache_ref = format!("{}/cache/lazy:bc", reg.addr);
    let runner1 = tempfile::tempdir().unwrap();
    let image1 = format!("{}/app/lazy:1", reg.addr);
    let (out1, _) = build(
        runner1.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &image1,
            "--push",
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
            c,
        ],
    );
    let mut layers: std::collections::BTreeSet<String> = Default::default();
    for r in [&base, &tools, &cache_ref, &image1] {
        layers.extend(registry_layers(r).into_iter().map(|(d, _)| d));
    }
    let layer_gets = |from: usize| -> Vec<BlobGet> {
        reg.blob_gets(from)
            .into_iter()
            .filter(|g| layers.contains(&g.digest))
            .collect()
    };

    // --push to the same registry: every step CACHED and not one layer byte downloaded.
    let mark = reg.log_lines();
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build(
        runner2.path(),
        &[
            "--platform",
            PLATFORMS,
            "-t",
            &format!("{}/app/lazy:2", reg.addr),
            "--push",
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            c,
        ],
    );
    assert!(!steps(&log2).is_empty(), "{log2}");
    assert_eq!(cached(&log2), steps(&log2).len(), "{log2}");
    assert_eq!(root_digest(&out2), root_digest(&out1), "{log2}");
    let got = layer_gets(mark);
    assert!(got.is_empty(), "layers downloaded: {got:?}\n{log2}");
    // What was pushed is whole.
    let copy = tempfile::tempdir().unwrap();
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/app/lazy:2", reg.addr),
        &format!("oci:{}:two", copy.path().display()),
    ]));

    // --load: exactly the final images' layers (bases' and the build's), each once; neither
    // the tools base nor the build stage's layers.
    let mark = reg.log_lines();
    let runner3 = tempfile::tempdir().unwrap();
    let (out3, log3) = build(
        runner3.path(),
        &[
            "--platform",
            PLATFORMS,
            "--load",
            "-t",
            "app:3",
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            c,
        ],
    );
    assert_eq!(cached(&log3), steps(&log3).len(), "{log3}");
    assert_eq!(root_digest(&out3), root_digest(&out1), "{log3}");
    let final_layers: std::collections::BTreeMap<String, u64> =
        registry_layers(&image1).into_iter().collect();
    let got = layer_gets(mark);
    let mut fetched: Vec<String> = got.iter().map(|g| g.digest.clone()).collect();
    fetched.sort();
    assert_eq!(
        fetched,
        final_layers.keys().cloned().collect::<Vec<_>>(),
        "layers downloaded: {got:?}\n{log3}"
    );
    assert_eq!(
        got.iter().map(|g| g.bytes).sum::<u64>(),
        final_layers.values().sum::<u64>(),
        "{got:?}"
    );
    let fsck = ok(runner3.path(), &["fsck"]);
    assert!(!fsck.contains("missing"), "{fsck}");
    // A base whose layers all came is named in the store, as a pulled one; the other is not.
    let images = ok(runner3.path(), &["images"]);
    assert!(images.contains("base/busybox"), "{images}");
    assert!(!images.contains("base/tools"), "{images}");
}

/// `mode=min` exports only the final stage's steps. A later build of the same inputs takes them
/// from the cache by definition (the copied-from stage by its base, files and instructions, not
/// by what it built), so the build stage never runs; a change to that stage's own input makes
/// it run again, and the steps reading it too.
#[test]
fn mode_min_does_not_rerun_a_stage_only_copied_from() {
    let Some((reg, base)) = base() else { return };
    let ctx = context(&base);
    let c = ctx.path().to_str().unwrap();
    let cache_ref = format!("{}/cache/min:bc", reg.addr);
    let runner1 = tempfile::tempdir().unwrap();
    let (out1, log1) = build(
        runner1.path(),
        &[
            "--platform",
            PLATFORMS,
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=min"),
            c,
        ],
    );
    assert_eq!(cached(&log1), 0, "{log1}");
    let from = format!("type=registry,ref={cache_ref}");
    let runner2 = tempfile::tempdir().unwrap();
    let (out2, log2) = build(
        runner2.path(),
        &["--platform", PLATFORMS, "--cache-from", &from, c],
    );
    // The final stage's three steps per platform, all CACHED; nothing started.
    assert_eq!(steps(&log2).len(), 6, "{log2}");
    assert_eq!(cached(&log2), 6, "{log2}");
    assert!(
        !log2
            .lines()
            .any(|l| l.starts_with('[') && l.ends_with(" ...")),
        "a step ran:\n{log2}"
    );
    assert_eq!(root_digest(&out2), root_digest(&out1), "{log2}");

    fs::write(ctx.path().join("a.txt"), "changed\n").unwrap();
    let runner3 = tempfile::tempdir().unwrap();
    let (out3, log3) = build(
        runner3.path(),
        &["--platform", PLATFORMS, "--cache-from", &from, c],
    );
    let ran: Vec<&str> = steps(&log3)
        .into_iter()
        .filter(|l| !l.contains(" CACHED"))
        .collect();
    for want in [
        " build 1/2] COPY a.txt",
        " build 2/2] RUN",
        "COPY --from=build",
    ] {
        assert_eq!(
            ran.iter().filter(|l| l.contains(want)).count(),
            2,
            "{want} on both platforms:\n{log3}"
        );
    }
    assert_ne!(root_digest(&out3), root_digest(&out1));
}
