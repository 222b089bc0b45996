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
    assert_eq!(platforms_of(&raw), ["linux/amd64", "linux/arm64"]);
    assert_eq!(raw["manifests"][0]["digest"], st.amd.as_str());
    assert_eq!(raw["manifests"][1]["digest"], st.arm.as_str());
    let docker: serde_json::Value = serde_json::from_str(&sh(Command::new("docker").args([
        "manifest",
        "inspect",
        "--insecure",
        &list,
    ])))
    .unwrap();
    assert_eq!(platforms_of(&docker), ["linux/amd64", "linux/arm64"]);
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
