//! Shared by the build crate's tests: the real busybox base image (amd64, arm64, arm/v7) made
//! from Debian's packages, unpacked into a snapshot cache, and the peer checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use manifold_runtime::snapshot::{Snapshot, SnapshotCache};
use oci::{Document, ImageConfig, ImageManifest, Index, Platform};

pub const ARCHES: &[&str] = &["amd64", "arm64", "armhf"];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn require_peers() -> bool {
    std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// Skips loudly, or fails when MANIFOLD_REQUIRE_PEERS=1 (CI sets it).
pub fn skip(why: &str) {
    if require_peers() {
        panic!("{why}, and MANIFOLD_REQUIRE_PEERS=1: install it (scripts/install-deps.sh)");
    }
    eprintln!("SKIPPED: {why} (set MANIFOLD_REQUIRE_PEERS=1 to fail instead)");
}

pub fn peer(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        skip(&format!("peer {name} is not installed"));
    }
    found
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("not running as root (the sandbox needs it)");
    }
    root
}

/// The OCI layout of the busybox image for ARCHES, built once into target/fixtures and shared
/// by every test process (same place and name as the CLI's tests use).
pub fn busybox_layout() -> Option<PathBuf> {
    for p in ["apt-get", "dpkg-deb", "busybox", "sha256sum"] {
        if !peer(p) {
            return None;
        }
    }
    let dir = repo_root()
        .join("target/fixtures")
        .join(format!("busybox-{}", ARCHES.join("-")));
    if dir.join("DIGEST").is_file() {
        return Some(dir);
    }
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let tmp = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    let out = Command::new(repo_root().join("scripts/busybox-image.sh"))
        .arg(tmp.path())
        .args(ARCHES)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "busybox-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(tmp.path().join("DIGEST"), &out.stdout).unwrap();
    let built = tmp.keep();
    if std::fs::rename(&built, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&built);
    }
    Some(dir)
}

/// The manifest and config of the busybox image for `platform`.
pub fn busybox_image(layout: &store::Layout, platform: &str) -> (ImageManifest, ImageConfig) {
    let want = Platform::parse(platform).unwrap();
    let top = layout.index().unwrap().manifests[0].clone();
    let idx = Document::<Index>::parse(layout.read_blob(&top.digest).unwrap()).unwrap();
    let desc = idx
        .value()
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.same_target(&want)))
        .unwrap_or_else(|| panic!("busybox fixture has no {platform}"))
        .clone();
    let m = Document::<ImageManifest>::parse(layout.read_blob(&desc.digest).unwrap())
        .unwrap()
        .value()
        .clone();
    let c = Document::<ImageConfig>::parse(layout.read_blob(&m.config.digest).unwrap())
        .unwrap()
        .value()
        .clone();
    (m, c)
}

/// The busybox snapshots for `platform`, unpacked (once) into a cache under target/.
pub fn busybox_snapshots(platform: &str) -> Option<Vec<Snapshot>> {
    let dir = busybox_layout()?;
    let layout = store::Layout::open_existing(&dir).unwrap();
    let (m, c) = busybox_image(&layout, platform);
    let cache = SnapshotCache::open(repo_root().join("target/fixtures/snapshots")).unwrap();
    Some(
        cache
            .unpack_image(&layout, &m.layers, &c.rootfs.diff_ids)
            .unwrap(),
    )
}
