//! `manifold build --check`: BuildKit's checks over a real context directory (no peers needed).

mod common;

use std::fs;

use common::run;

fn context(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        fs::write(t.path().join(name), body).expect("write");
    }
    t
}

#[test]
fn check_reports_findings_dockerignore_and_the_error_after_them() {
    let store = tempfile::tempdir().expect("tempdir");
    // Not UTF-8 (a Latin-1 comment), a .dockerignore'd COPY, then an unknown COPY --from stage.
    let ctx = context(&[
        (
            "Dockerfile",
            b"FROM alpine:3.19 AS build\n# caf\xe9\nCOPY secret.txt /s\nCMD echo hi\nCOPY --from=biuld /a /a\n",
        ),
        (".dockerignore", b"secret.txt\n"),
    ]);
    let dir = ctx.path().to_str().expect("utf-8 path");
    let out = run(
        store.path(),
        &["build", "--check", "--platform", "linux/amd64", dir],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains("CopyIgnoredFile: Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore"),
        "{stdout}"
    );
    assert!(stdout.contains("JSONArgsRecommended"), "{stdout}");
    assert!(stderr.contains("unknown stage \"biuld\""), "{stderr}");
}

#[test]
fn check_error_true_fails_a_build_before_it_starts() {
    let store = tempfile::tempdir().expect("tempdir");
    let ctx = context(&[(
        "Dockerfile",
        b"# check=error=true\nFROM scratch\nCOPY $NOPE /x\n",
    )]);
    let dir = ctx.path().to_str().expect("utf-8 path");
    let out = run(store.path(), &["build", "--platform", "linux/amd64", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("lint violation found for rules: UndefinedVar"),
        "{stderr}"
    );
    // Clean: the check passes.
    let ctx = context(&[("Dockerfile", b"FROM scratch\nCOPY Dockerfile /x\n")]);
    let dir = ctx.path().to_str().expect("utf-8 path");
    let out = run(store.path(), &["build", "--check", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Check complete, no warnings found."));
}

#[test]
fn invalid_base_image_platform_from_the_local_store() {
    let store = tempfile::tempdir().expect("tempdir");
    let t = tempfile::tempdir().expect("tempdir");
    let layout = t.path().join("fixed");
    common::fixed_layout(&layout, &["amd64"], "v1");
    common::ok(
        store.path(),
        &[
            "cp",
            &format!("oci:{}:v1", layout.display()),
            "store:localhost/amd64only:1",
        ],
    );
    let ctx = context(&[("Dockerfile", b"FROM localhost/amd64only:1\nCMD [\"x\"]\n")]);
    let dir = ctx.path().to_str().expect("utf-8 path");
    let out = run(
        store.path(),
        &["build", "--check", "--platform", "linux/arm64", dir],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("InvalidBaseImagePlatform: Base image localhost/amd64only:1 was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        store.path(),
        &["build", "--check", "--platform", "linux/amd64", dir],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_pull_asks_the_registry_for_the_base_platform() {
    let Some(reg) = common::Registry::start(None) else {
        return;
    };
    let t = tempfile::tempdir().expect("tempdir");
    let layout = t.path().join("fixed");
    common::fixed_layout(&layout, &["amd64"], "v1");
    let name = format!("{}/amd64only:1", reg.addr);
    common::ok(
        t.path().join("seed").as_path(),
        &["cp", &format!("oci:{}:v1", layout.display()), &name],
    );
    let df = format!("FROM {name}\nCMD [\"x\"]\n");
    let ctx = context(&[("Dockerfile", df.as_bytes())]);
    let dir = ctx.path().to_str().expect("utf-8 path");
    // An empty store: only --pull can know the base's platform, and nothing is pulled.
    let store = tempfile::tempdir().expect("tempdir");
    let args = ["build", "--check", "--platform", "linux/arm64", dir];
    let out = run(store.path(), &args);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("InvalidBaseImagePlatform"),
        "without --pull the base is unknown"
    );
    let out = run(
        store.path(),
        &[&args[..2], &["--pull"], &args[2..]].concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("InvalidBaseImagePlatform: Base image {name} was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build")),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = common::ok(store.path(), &["images"]);
    assert!(
        !images.contains("amd64only"),
        "--check pulled the image: {images}"
    );
}
