//! End-to-end: RUN steps' network modes and the `network.host` entitlement.

mod common;

use std::fs;

use common::*;

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64", "armhf"])
}

fn build(store: &std::path::Path, df: &str, extra: &[&str]) -> (bool, String, tempfile::TempDir) {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("Dockerfile"), df).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let mut args = vec!["build", "-o", &dest];
    args.extend_from_slice(extra);
    args.push(ctx.path().to_str().unwrap());
    let res = run(store, &args);
    (
        res.status.success(),
        String::from_utf8_lossy(&res.stderr).into_owned(),
        out,
    )
}

#[test]
fn network_modes_and_the_host_entitlement() {
    if !peer("slirp4netns") {
        return;
    }
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    // Default: a private namespace (loopback and slirp4netns's tap), none: loopback only.
    let df = format!(
        "FROM {base}\nRUN ls /sys/class/net | tr '\\n' ' ' > /default\nRUN --network=none ls /sys/class/net > /none\n"
    );
    let (okay, err, out) = build(s, &df, &[]);
    assert!(okay, "{err}");
    assert_eq!(
        fs::read_to_string(out.path().join("default")).unwrap(),
        "lo tap0 "
    );
    assert_eq!(fs::read_to_string(out.path().join("none")).unwrap(), "lo\n");
    // --network none for the whole build.
    let df2 = format!("FROM {base}\nRUN ls /sys/class/net > /n\n");
    let (okay, err, out) = build(s, &df2, &["--network", "none"]);
    assert!(okay, "{err}");
    assert_eq!(fs::read_to_string(out.path().join("n")).unwrap(), "lo\n");
    // Host needs the entitlement, in the Dockerfile and on the command line.
    let host = format!("FROM {base}\nRUN --network=host ls /sys/class/net > /h\n");
    let (okay, err, _) = build(s, &host, &[]);
    assert!(!okay);
    assert!(err.contains("--allow network.host"), "{err}");
    let (okay, err, _) = build(s, &df2, &["--network", "host", "--no-cache"]);
    assert!(!okay);
    assert!(err.contains("--allow network.host"), "{err}");
    let (okay, err, out) = build(s, &host, &["--allow", "network.host"]);
    assert!(okay, "{err}");
    let nets = fs::read_to_string(out.path().join("h")).unwrap();
    assert!(
        !nets.contains("tap0") && nets.lines().count() >= 1,
        "{nets}"
    );
    // Cached now, and still refused without the grant.
    let (okay, err, _) = build(s, &host, &[]);
    assert!(!okay);
    assert!(err.contains("--allow network.host"), "{err}");
}
