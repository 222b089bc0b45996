//! End-to-end: manifest lists against a real registry, read back by skopeo and the docker CLI;
//! inspect output against golden files; JSON parsed back.

mod common;

use std::process::Command;

use common::*;

struct Setup {
    reg: Registry,
    store: tempfile::TempDir,
    amd: String,
    arm: String,
}

/// Two single-platform images, pushed by tag into two repositories.
fn setup() -> Option<Setup> {
    let reg = Registry::start(None)?;
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("fixed");
    fixed_layout(&layout, &["amd64", "arm64"], "v1");
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let all = format!("{}/all/hello:1", reg.addr);
    ok(s, &["cp", &format!("oci:{}:v1", layout.display()), &all]);
    let amd = ok(s, &["-q", "digest", "--platform", "linux/amd64", &all])
        .trim()
        .to_string();
    let arm = ok(s, &["-q", "digest", "--platform", "linux/arm64", &all])
        .trim()
        .to_string();
    ok(
        s,
        &[
            "cp",
            &format!("{}/all/hello@{amd}", reg.addr),
            &format!("{}/team-a/hello:amd64", reg.addr),
        ],
    );
    ok(
        s,
        &[
            "cp",
            &format!("{}/all/hello@{arm}", reg.addr),
            &format!("{}/team-b/hello:arm64", reg.addr),
        ],
    );
    Some(Setup {
        reg,
        store,
        amd,
        arm,
    })
}

fn skopeo_raw(r: &str) -> serde_json::Value {
    serde_json::from_str(&sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{r}"),
    ])))
    .unwrap()
}

fn platforms_of(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect()
}

#[test]
fn manifest_create_annotate_push_read_by_skopeo_and_docker() {
    if !peer("skopeo") || !peer("docker") {
        return;
    }
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let list = format!("{a}/merged/hello:1");
    let out = ok(
        s,
        &[
            "manifest",
            "create",
            &list,
            &format!("{a}/team-a/hello:amd64"),
            &format!("{a}/team-b/hello:arm64"),
        ],
    );
    assert!(out.contains(&st.amd) && out.contains(&st.arm), "{out}");
    // Staging twice without --amend is refused; with it, fine.
    let err = fails(
        s,
        &[
            "manifest",
            "create",
            &list,
            &format!("{a}/team-a/hello:amd64"),
        ],
    );
    assert!(err.contains("--amend"), "{err}");
    ok(
        s,
        &[
            "manifest",
            "annotate",
            &list,
            &format!("{a}/team-b/hello:arm64"),
            "--arch",
            "arm64",
            "--variant",
            "v8",
            "--os-features",
            "sse4",
        ],
    );
    let staged: serde_json::Value =
        serde_json::from_str(&ok(s, &["manifest", "inspect", &list])).unwrap();
    assert_eq!(
        staged["manifests"][1]["platform"]["os.features"],
        serde_json::json!(["sse4"])
    );
    let digest = ok(s, &["manifest", "push", "--purge", &list])
        .trim()
        .to_string();

    let raw_text = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{list}"),
    ]));
    assert_eq!(
        oci::Digest::sha256_of(raw_text.as_bytes()).to_string(),
        digest,
        "the registry serves the bytes we pushed"
    );
    let raw = skopeo_raw(&list);
    // --variant v8 is kept as typed, as docker keeps it.
    assert_eq!(platforms_of(&raw), ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(raw["manifests"][0]["digest"], st.amd.as_str());
    assert_eq!(raw["manifests"][1]["digest"], st.arm.as_str());
    let docker: serde_json::Value = serde_json::from_str(&sh(Command::new("docker").args([
        "manifest",
        "inspect",
        "--insecure",
        &list,
    ])))
    .unwrap();
    assert_eq!(platforms_of(&docker), ["linux/amd64", "linux/arm64/v8"]);
    // Every entry's content was brought into the list's repository: skopeo copies it all.
    let t = tempfile::tempdir().unwrap();
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{list}"),
        &format!("oci:{}:x", t.path().display()),
    ]));
    // --purge removed the staged list.
    let err = fails(s, &["manifest", "push", &list]);
    assert!(err.contains("no list named"), "{err}");
}

#[test]
fn imagetools_create_merges_digests_from_two_repositories() {
    if !peer("skopeo") || !peer("docker") {
        return;
    }
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let t1 = format!("{a}/final/hello:1");
    let t2 = format!("{a}/final/hello:latest");
    let dry = ok(
        s,
        &[
            "imagetools",
            "create",
            "--dry-run",
            "-t",
            &t1,
            &format!("{a}/team-a/hello@{}", st.amd),
            &format!("{a}/team-b/hello@{}", st.arm),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(platforms_of(&v), ["linux/amd64", "linux/arm64"]);
    let err = fails(s, &["-q", "digest", &t1]);
    assert!(
        err.contains("MANIFEST_UNKNOWN") || err.contains("not found") || err.contains("unknown"),
        "dry run pushed nothing: {err}"
    );

    let out = ok(
        s,
        &[
            "imagetools",
            "create",
            "-t",
            &t1,
            "-t",
            &t2,
            "--annotation",
            "index:org.opencontainers.image.source=https://example.com/hello",
            &format!("{a}/team-a/hello@{}", st.amd),
            &format!("{a}/team-b/hello@{}", st.arm),
        ],
    );
    let index_digest = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    for t in [&t1, &t2] {
        let raw = skopeo_raw(t);
        assert_eq!(platforms_of(&raw), ["linux/amd64", "linux/arm64"]);
        assert_eq!(
            raw["annotations"]["org.opencontainers.image.source"],
            "https://example.com/hello"
        );
        assert_eq!(ok(s, &["-q", "digest", t]).trim(), index_digest);
    }
    let docker: serde_json::Value = serde_json::from_str(&sh(Command::new("docker").args([
        "manifest",
        "inspect",
        "--insecure",
        &t2,
    ])))
    .unwrap();
    assert_eq!(platforms_of(&docker), ["linux/amd64", "linux/arm64"]);

    // --append adds to what the tag has; --platform picks from a multi-platform source.
    let out = ok(
        s,
        &[
            "imagetools",
            "create",
            "--append",
            "-t",
            &format!("{a}/team-a/hello:amd64"),
            "--platform",
            "linux/arm64",
            &format!("{a}/all/hello:1"),
        ],
    );
    assert!(out.contains(&st.amd) && out.contains(&st.arm), "{out}");

    // The digest you pin: index, or one platform's manifest.
    let d = ok(s, &["digest", &t1]);
    assert!(
        d.starts_with(&index_digest) && d.contains("index of 2 (linux/amd64, linux/arm64)"),
        "{d}"
    );
    let d = ok(s, &["digest", "--platform", "linux/arm64", &t1]);
    assert!(
        d.starts_with(&st.arm) && d.contains(&format!("in index {index_digest}")),
        "{d}"
    );
    let err = fails(s, &["digest", "--platform", "linux/s390x", &t1]);
    assert!(err.contains("linux/amd64, linux/arm64"), "{err}");
}

#[test]
fn inspect_output_matches_golden_files() {
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let subst = [(a.as_str(), "REGISTRY")];
    let idx = ok(s, &["imagetools", "inspect", &format!("{a}/all/hello:1")]);
    golden("imagetools-inspect-index.txt", &idx, &subst);
    let one = ok(
        s,
        &["imagetools", "inspect", &format!("{a}/team-a/hello:amd64")],
    );
    golden("imagetools-inspect-single.txt", &one, &subst);
    let json = ok(
        s,
        &[
            "imagetools",
            "inspect",
            "--format",
            "json",
            &format!("{a}/all/hello:1"),
        ],
    );
    golden("imagetools-inspect-index.json", &json, &subst);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "index");
    assert_eq!(v["platforms"][1]["digest"], st.arm.as_str());
    assert_eq!(v["platforms"][0]["layers"], 1);
    let raw = ok(
        s,
        &[
            "imagetools",
            "inspect",
            "--raw",
            &format!("{a}/all/hello:1"),
        ],
    );
    assert_eq!(
        oci::Digest::sha256_of(raw.as_bytes()).to_string(),
        v["digest"].as_str().unwrap()
    );
    // Local places too, with the same answer.
    ok(s, &["pull", "--all-platforms", &format!("{a}/all/hello:1")]);
    let local: serde_json::Value = serde_json::from_str(&ok(
        s,
        &[
            "imagetools",
            "inspect",
            "--format",
            "json",
            &format!("store:{a}/all/hello:1"),
        ],
    ))
    .unwrap();
    assert_eq!(local["digest"], v["digest"]);
    assert_eq!(local["platforms"], v["platforms"]);
    let images = ok(s, &["images"]);
    golden("images.txt", &images, &subst);
}

#[test]
fn no_flatten_refuses_lists_and_annotate_names_missing_entries() {
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let list = format!("{a}/x/y:1");
    let err = fails(
        s,
        &[
            "manifest",
            "create",
            "--no-flatten",
            &list,
            &format!("{a}/all/hello:1"),
        ],
    );
    assert!(
        err.contains("--no-flatten") && err.contains("2 entries"),
        "{err}"
    );
    ok(
        s,
        &[
            "manifest",
            "create",
            &list,
            &format!("{a}/team-a/hello:amd64"),
        ],
    );
    let err = fails(
        s,
        &[
            "manifest",
            "annotate",
            &list,
            &format!("{a}/team-b/hello:arm64"),
            "--arch",
            "arm",
        ],
    );
    assert!(err.contains("is not in list"), "{err}");
    ok(s, &["manifest", "rm", &list]);
    let err = fails(s, &["manifest", "rm", &list]);
    assert!(err.contains("no list named"), "{err}");
}

/// Puts a blob into an OCI layout; returns its descriptor fields.
fn put_blob(layout: &std::path::Path, b: &[u8]) -> (String, usize) {
    let d = oci::Digest::sha256_of(b);
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), b).unwrap();
    (d.to_string(), b.len())
}

/// A one-manifest OCI layout named `name`, with this config and artifactType.
fn one_manifest_layout(
    dir: &std::path::Path,
    config_type: &str,
    config: &[u8],
    artifact: Option<&str>,
) {
    let (cd, cs) = put_blob(dir, config);
    let (ld, ls) = put_blob(dir, b"some file\n");
    let at = artifact.map_or(String::new(), |a| format!(r#""artifactType":"{a}","#));
    let man = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",{at}"config":{{"mediaType":"{config_type}","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"text/plain","digest":"{ld}","size":{ls}}}]}}"#
    );
    let (md, ms) = put_blob(dir, man.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"x"}}}}]}}"#
        ),
    )
    .unwrap();
}

#[test]
fn annotate_keeps_what_is_typed_and_finds_every_entry_create_took() {
    if !peer("docker") {
        return;
    }
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    // A one-entry index, which create flattens into its one entry.
    ok(
        s,
        &[
            "cp",
            "--platform",
            "linux/arm64",
            &format!("{a}/all/hello:1"),
            &format!("{a}/one/hello:arm"),
        ],
    );
    let list = format!("{a}/typed/hello:1");
    let one = format!("{a}/one/hello:arm");
    // --amend repeated, as guides copy it from docker.
    ok(
        s,
        &[
            "manifest",
            "create",
            &list,
            "--amend",
            &format!("{a}/team-a/hello:amd64"),
            "--amend",
            &one,
            "--amend",
            &format!("{a}/team-b/hello:arm64"),
        ],
    );
    ok(s, &["manifest", "annotate", &list, &one, "--variant", "v8"]);
    // A bare digest names the entry with that digest (not a Docker Hub image).
    ok(
        s,
        &[
            "manifest",
            "annotate",
            &list,
            &st.amd,
            "--os-features",
            "sse4",
        ],
    );
    let staged: serde_json::Value =
        serde_json::from_str(&ok(s, &["manifest", "inspect", &list])).unwrap();
    assert_eq!(platforms_of(&staged), ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(
        staged["manifests"][0]["platform"]["os.features"],
        serde_json::json!(["sse4"])
    );

    // docker stores the same for the same command.
    let cfg = tempfile::tempdir().unwrap();
    let docker = |args: &[&str]| {
        sh(Command::new("docker")
            .env("DOCKER_CONFIG", cfg.path())
            .args(args))
    };
    let dlist = format!("{a}/typed/docker:1");
    docker(&[
        "manifest",
        "create",
        "--insecure",
        &dlist,
        &format!("{a}/team-a/hello:amd64"),
        &format!("{a}/team-b/hello:arm64"),
    ]);
    docker(&[
        "manifest",
        "annotate",
        &dlist,
        &format!("{a}/team-b/hello:arm64"),
        "--variant",
        "v8",
    ]);
    let theirs: serde_json::Value =
        serde_json::from_str(&docker(&["manifest", "inspect", &dlist])).unwrap();
    assert_eq!(
        theirs["manifests"][1]["platform"],
        staged["manifests"][1]["platform"]
    );

    // An architecture docker would refuse is kept as typed, with a note on how it matches.
    let out = run(
        s,
        &[
            "manifest",
            "annotate",
            &list,
            &one,
            "--arch",
            "aarch64",
            "--variant",
            "8",
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clients match it as linux/arm64"), "{err}");
    let staged: serde_json::Value =
        serde_json::from_str(&ok(s, &["manifest", "inspect", &list])).unwrap();
    assert_eq!(platforms_of(&staged), ["linux/amd64", "linux/aarch64/8"]);

    // A Docker list of OCI manifests is refused, with the reason.
    let err = fails(
        s,
        &[
            "manifest",
            "create",
            "--type",
            "docker",
            &format!("{a}/x/docker:1"),
            &one,
        ],
    );
    assert!(
        err.contains("only Docker v2 manifests") && err.contains("--type oci"),
        "{err}"
    );

    // Entries known by name need no registry: annotate works with the registry gone.
    let Setup { reg, store, .. } = st;
    drop(reg);
    ok(
        store.path(),
        &[
            "manifest",
            "annotate",
            &list,
            &one,
            "--arch",
            "arm64",
            "--variant",
            "v8",
            "--insecure",
        ],
    );
    let err = fails(
        store.path(),
        &[
            "manifest",
            "annotate",
            &list,
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "--os",
            "linux",
        ],
    );
    assert!(
        err.contains("is not in list") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

#[test]
fn artifacts_and_configless_images_are_no_platform_entries() {
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let t = tempfile::tempdir().unwrap();
    // An oras-style artifact: artifactType, empty config.
    let art = t.path().join("artifact");
    one_manifest_layout(
        &art,
        "application/vnd.oci.empty.v1+json",
        b"{}",
        Some("application/vnd.example.sbom.v1+json"),
    );
    // A crane-style scratch image: an image config that names no platform.
    let bare = t.path().join("configless");
    one_manifest_layout(
        &bare,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        None,
    );
    let art_ref = format!("{a}/things/sbom:1");
    let bare_ref = format!("{a}/things/scratch:1");
    ok(s, &["cp", &format!("oci:{}:x", art.display()), &art_ref]);
    ok(s, &["cp", &format!("oci:{}:x", bare.display()), &bare_ref]);
    let list = format!("{a}/things/list:1");
    let err = fails(
        s,
        &[
            "manifest",
            "create",
            &list,
            &format!("{a}/team-a/hello:amd64"),
            &art_ref,
        ],
    );
    assert!(
        err.contains("OCI artifact")
            && err.contains("application/vnd.example.sbom.v1+json")
            && err.contains("cannot be a platform entry"),
        "{err}"
    );
    let err = fails(
        s,
        &["imagetools", "create", "--dry-run", "-t", &list, &bare_ref],
    );
    assert!(
        err.contains("names no platform") && err.contains("cannot be a platform entry"),
        "{err}"
    );
    // Nothing was staged by the failed create.
    let err = fails(s, &["manifest", "push", &list]);
    assert!(err.contains("no list named"), "{err}");

    let shown = ok(s, &["imagetools", "inspect", &art_ref]);
    assert!(
        shown.contains("ArtifactType: application/vnd.example.sbom.v1+json")
            && shown.contains("OCI artifact, not an image")
            && !shown.contains("single-platform image"),
        "{shown}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(
        s,
        &["imagetools", "inspect", "--format", "json", &art_ref],
    ))
    .unwrap();
    assert_eq!(v["kind"], "artifact");
    assert_eq!(v["artifactType"], "application/vnd.example.sbom.v1+json");
}

#[test]
fn digest_which_names_the_tags_and_platform_of_a_bare_digest() {
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    ok(
        s,
        &[
            "cp",
            &format!("{a}/all/hello:1"),
            &format!("{a}/all/hello:1.2"),
        ],
    );
    ok(
        s,
        &[
            "cp",
            &format!("{a}/all/hello@{}", st.arm),
            &format!("{a}/all/hello:arm-only"),
        ],
    );
    let index = ok(s, &["-q", "digest", &format!("{a}/all/hello:1")])
        .trim()
        .to_string();
    let out = ok(
        s,
        &["digest", "--which", &st.arm, &format!("{a}/all/hello")],
    );
    let short = format!("{a}/all/hello");
    assert_eq!(
        out,
        format!(
            "linux/arm64 entry of {short}:1 (index {index})\nlinux/arm64 entry of {short}:1.2 (index {index})\nmanifest {short}:arm-only points at\n"
        )
    );
    // --limit bounds the search and says so.
    let err = fails(s, &["digest", "--which", &st.arm, "--limit", "0", &short]);
    assert!(
        err.contains("first 0 of 3 tags") && err.contains("--limit"),
        "{err}"
    );
    let err = fails(
        s,
        &[
            "digest",
            "--which",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &short,
        ],
    );
    assert!(err.contains("any of its 3 tags"), "{err}");
    // imagetools inspect of the platform manifest by digest says the same.
    let shown = ok(
        s,
        &["imagetools", "inspect", &format!("{short}@{}", st.arm)],
    );
    assert!(
        shown.contains(&format!(
            "It is the linux/arm64 entry of {short}:1 (index {index})"
        )),
        "{shown}"
    );
}

#[test]
fn a_name_only_in_the_store_is_shown_in_its_store_form() {
    let Some(st) = setup() else { return };
    let s = st.store.path();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("fixed");
    fixed_layout(&layout, &["amd64"], "v1");
    ok(
        s,
        &["cp", &format!("oci:{}:v1", layout.display()), "store:app:1"],
    );
    // app:1 means docker.io/library/app:1, which this machine cannot reach (or has no such image).
    let err = fails(s, &["imagetools", "inspect", "app:1"]);
    assert!(err.contains("store:app:1"), "{err}");
    let err = fails(s, &["digest", "app:1"]);
    assert!(err.contains("store:app:1"), "{err}");
    assert!(ok(s, &["digest", "store:app:1"]).contains("index of 1"));
}

#[test]
fn duplicate_platforms_after_normalization_are_merged_with_a_note() {
    let Some(st) = setup() else { return };
    let (s, a) = (st.store.path(), &st.reg.addr);
    let t = tempfile::tempdir().unwrap();
    let out = run(
        s,
        &[
            "cp",
            "--platform",
            "linux/arm64,linux/arm64/v8",
            &format!("{a}/all/hello:1"),
            &format!("oci:{}:x", t.path().join("l").display()),
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linux/arm64/v8 is linux/arm64 after normalization"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(
        s,
        &[
            "imagetools",
            "inspect",
            "--format",
            "json",
            &format!("oci:{}:x", t.path().join("l").display()),
        ],
    ))
    .unwrap();
    assert_eq!(v["platforms"].as_array().unwrap().len(), 1);

    // A build for both names builds once.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    std::fs::write(ctx.path().join("f"), "x").unwrap();
    let tar = t.path().join("b.tar");
    let out = run(
        s,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/arm64,linux/arm64/v8",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("after normalization"));
    let v: serde_json::Value = serde_json::from_str(&ok(
        s,
        &[
            "imagetools",
            "inspect",
            "--format",
            "json",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap();
    assert_eq!(v["platforms"].as_array().unwrap().len(), 1, "{v}");
}
