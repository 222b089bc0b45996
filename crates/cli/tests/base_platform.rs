//! End-to-end: `build` with no --platform over a per-architecture base (`FROM ${ARCH}busybox`
//! with `--build-arg ARCH=arm64v8/`, the habit of docker's official-images seeds) builds for the
//! base's platform under QEMU, as docker does, instead of failing.

mod common;

use common::*;

#[test]
fn a_single_platform_base_of_another_platform_sets_the_build_platform() {
    if !qemu_ready() {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    // REG/arm64v8/busybox: one arm64 manifest, no index (as Docker Hub's arm64v8/ repositories).
    let all = format!("{}/library/busybox:latest", reg.addr);
    ok(
        s,
        &["cp", &format!("oci:{}:latest", layout.display()), &all],
    );
    let arm = ok(s, &["-q", "digest", "--platform", "linux/arm64", &all])
        .trim()
        .to_string();
    ok(
        s,
        &[
            "cp",
            &format!("{}/library/busybox@{arm}", reg.addr),
            &format!("{}/arm64v8/busybox:latest", reg.addr),
        ],
    );
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "ARG ARCH=\nFROM ${ARCH}busybox:latest\nRUN uname -m > /arch\n",
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("fs");
    let res = run(
        s,
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            &format!("ARCH={}/arm64v8/", reg.addr),
            "-t",
            "seed:arm",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            "--load",
            ctx.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(
        err.contains("is only for linux/arm64") && err.contains("no --platform"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("arch")).unwrap().trim(),
        "aarch64"
    );
    let d = ok(s, &["digest", "store:seed:arm"]);
    assert!(d.contains("linux/arm64"), "{d}");

    // A multi-platform base still builds for this machine.
    let res = run(
        s,
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            &format!("ARCH={}/library/", reg.addr),
            "-o",
            &format!("type=local,dest={}", out_dir.path().join("host").display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(!String::from_utf8_lossy(&res.stderr).contains("is only for"));
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("host/arch"))
            .unwrap()
            .trim(),
        "x86_64"
    );
}
