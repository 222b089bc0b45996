//! Steps run in the sandbox on real busybox snapshots become layers in a real store.

mod common;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use manifold_runtime::layer::{self, LayerOptions};
use manifold_runtime::sandbox::{self, RootFs, RunSpec};
use manifold_runtime::snapshot::{self, SnapshotCache};
use oci::media_type::Compression;

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let base = common::repo_root().join("target/fixtures/steps");
        fs::create_dir_all(&base).unwrap();
        Scratch {
            dir: tempfile::tempdir_in(base).unwrap(),
        }
    }
    fn rootfs(&self, name: &str, lowers: &[PathBuf]) -> (RootFs, PathBuf) {
        let upper = self.dir.path().join(name).join("upper");
        (
            RootFs::Overlay {
                lowers: lowers.to_vec(),
                upper: upper.clone(),
                work: self.dir.path().join(name).join("work"),
            },
            upper,
        )
    }
}

fn run_ok(rootfs: RootFs, script: &str) -> sandbox::RunOutput {
    let out = sandbox::run(&RunSpec::new(rootfs, &["/bin/sh", "-c", script])).unwrap();
    assert!(out.success(), "{script}: exit {}: {}", out.code, out.tail);
    out
}

/// Entry names of a stored layer, and the diffID of its uncompressed stream.
fn layer_entries(layout: &store::Layout, w: &layer::WrittenLayer) -> (Vec<String>, oci::Digest) {
    let f = layout.open_blob(&w.descriptor.digest).unwrap();
    let mut plain = Vec::new();
    snapshot::decompress(f, Some(&w.descriptor.media_type))
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    let names = tar::Archive::new(&plain[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect();
    (names, oci::Digest::sha256_of(&plain))
}

const CHANGES: &str = "mkdir -p /app && echo hello > /app/greeting && rm /etc/group \
    && rm -rf /root && mkdir /root && echo new > /root/file";

#[test]
fn a_step_becomes_a_layer_with_whiteouts_and_opaque_dirs() {
    if !common::is_root() {
        return;
    }
    let Some(base) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    let (rootfs, upper) = scratch.rootfs("s1", &lowers);
    run_ok(rootfs, CHANGES);

    let store_dir = scratch.dir.path().join("store");
    let layout = store::Layout::open_or_create(&store_dir).unwrap();
    let _guard = layout.write_guard().unwrap();
    let w = layer::write_to_store(&upper, &layout, &LayerOptions::default()).unwrap();
    assert_eq!(w.descriptor.media_type, oci::media_type::OCI_LAYER_GZIP);
    assert_eq!(
        layout.blob_size(&w.descriptor.digest),
        Some(w.descriptor.size)
    );
    let (names, diff_id) = layer_entries(&layout, &w);
    assert_eq!(diff_id, w.diff_id, "diffID computed in the same pass");
    assert_eq!(
        names,
        [
            "app/",
            "app/greeting",
            "etc/",
            "etc/.wh.group",
            "root/",
            "root/.wh..wh..opq",
            "root/file"
        ]
    );

    // The layer, unpacked as a snapshot over the base, is what the step left.
    let cache = SnapshotCache::open(scratch.dir.path().join("snapshots")).unwrap();
    let snap = cache
        .unpack_blob(&layout, &w.descriptor, &w.diff_id)
        .unwrap();
    let mut lowers2 = lowers.clone();
    lowers2.push(snap.path.clone());
    let (rootfs, _) = scratch.rootfs("s2", &lowers2);
    let out = run_ok(
        rootfs,
        "cat /app/greeting; ls /root; test -e /etc/group || echo no-group; test -e /etc/passwd && echo passwd",
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "hello\nfile\nno-group\npasswd\n"
    );
}

#[test]
fn the_same_step_twice_gives_the_same_layer() {
    if !common::is_root() {
        return;
    }
    let Some(base) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    let layout = store::Layout::open_or_create(scratch.dir.path().join("store")).unwrap();
    let mut results = Vec::new();
    for (i, compression) in [
        Compression::Gzip,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let (rootfs, upper) = scratch.rootfs(&format!("run{i}"), &lowers);
        // Different wall-clock times each run; clamping makes them equal.
        run_ok(rootfs, &format!("{CHANGES} && seq 1 1000 > /app/numbers && ln /app/numbers /app/same && sleep 0.{i}"));
        let opts = LayerOptions {
            compression,
            source_date_epoch: Some(1_700_000_000),
            ..Default::default()
        };
        let w = layer::write_to_store(&upper, &layout, &opts).unwrap();
        results.push((w.descriptor.digest, w.diff_id));
    }
    assert_eq!(results[0], results[1], "gzip: same digest and diffID");
    assert_eq!(results[2], results[3], "zstd: same digest and diffID");
    assert_ne!(results[0].0, results[2].0);
    assert_eq!(
        results[0].1, results[2].1,
        "same diffID whatever the compression"
    );
}

#[test]
fn an_emulated_step_becomes_a_layer() {
    if !common::is_root() {
        return;
    }
    let p = oci::Platform::parse("linux/arm64").unwrap();
    let mode = match manifold_runtime::emulation::check(&p) {
        Ok(m) => m,
        Err(e) => return common::skip(&e.to_string()),
    };
    assert!(mode.is_emulated(), "{mode:?}");
    let Some(base) = common::busybox_snapshots("linux/arm64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    let (rootfs, upper) = scratch.rootfs("arm", &lowers);
    let t = Instant::now();
    let out = run_ok(
        rootfs,
        "uname -m > /arch && seq 1 20000 > /lines && wc -l < /lines",
    );
    eprintln!("emulated arm64 RUN (seq 20000 lines) in {:?}", t.elapsed());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20000");
    assert_eq!(fs::read_to_string(upper.join("arch")).unwrap(), "aarch64\n");
    let layout = store::Layout::open_or_create(scratch.dir.path().join("store")).unwrap();
    let w = layer::write_to_store(&upper, &layout, &LayerOptions::default()).unwrap();
    let (names, _) = layer_entries(&layout, &w);
    assert_eq!(names, ["arch", "lines"]);
}

#[test]
fn the_walking_differ_compares_a_plain_root_with_its_snapshots() {
    if !common::is_root() {
        return;
    }
    let Some(base) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    let flat = scratch.dir.path().join("flat");
    snapshot::flatten(&lowers, &flat).unwrap();
    let opts = LayerOptions {
        compression: Compression::None,
        source_date_epoch: Some(1_700_000_000),
        ..Default::default()
    };
    let changes = layer::Changes::Walk {
        root: &flat,
        lowers: &lowers,
    };
    // A step that changes nothing gives an empty layer: the sandbox's stubs leave no trace.
    run_ok(RootFs::Dir(flat.clone()), "true");
    let (bytes, d) = layer::write_changes(changes, Vec::new(), &opts).unwrap();
    assert_eq!(d.entries, 0, "{:?}", names_of(&bytes));

    run_ok(RootFs::Dir(flat.clone()), CHANGES);
    let (bytes, d) = layer::write_changes(changes, Vec::new(), &opts).unwrap();
    let names = names_of(&bytes);
    assert_eq!(
        names,
        [
            "app/",
            "app/greeting",
            "etc/",
            "etc/.wh.group",
            "root/",
            "root/file"
        ]
    );
    assert_eq!(d.entries, 6);
}

fn names_of(tar_bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(tar_bytes)
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

#[test]
fn renaming_a_base_directory_gives_a_whiteout_and_a_whole_copy() {
    if !common::is_root() {
        return;
    }
    let Some(base) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    let (rootfs, upper) = scratch.rootfs("mv", &lowers);
    // Overlayfs (redirect_dir=off) refuses to rename a base directory with EXDEV and mv
    // copies instead, so the layer can express it. (/etc cannot move: /etc/hosts is a mount,
    // as under docker.)
    run_ok(
        rootfs,
        "mkdir /root/sub && echo x > /root/sub/f && mv /root /root2 && mkdir /root && touch /root/x",
    );
    let opts = LayerOptions {
        compression: Compression::None,
        ..Default::default()
    };
    let (bytes, _) = layer::write_layer(&upper, Vec::new(), &opts).unwrap();
    assert_eq!(
        names_of(&bytes),
        [
            "root/",
            "root/.wh..wh..opq",
            "root/x",
            "root2/",
            "root2/sub/",
            "root2/sub/f"
        ]
    );
}

#[test]
fn an_upperdir_with_a_redirect_is_refused() {
    if !common::is_root() {
        return;
    }
    let t = tempfile::tempdir_in(common::repo_root().join("target")).unwrap();
    fs::create_dir(t.path().join("moved")).unwrap();
    xattr::set(t.path().join("moved"), "trusted.overlay.redirect", b"/orig").unwrap();
    let err = layer::write_layer(t.path(), Vec::new(), &LayerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("moved") && err.contains("redirect_dir=off"),
        "{err}"
    );
}

#[test]
fn a_prepared_step_root_runs_and_diffs_the_best_way_available() {
    if !common::is_root() {
        return;
    }
    let Some(base) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let lowers: Vec<PathBuf> = base.iter().map(|s| s.path.clone()).collect();
    let scratch = Scratch::new();
    assert!(
        sandbox::overlay_works(scratch.dir.path()),
        "ext4 under target/ takes overlays"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(".overlay-probe-"),
        "the probe mount never reaches the host"
    );
    let step = sandbox::StepRoot::prepare(&lowers, &scratch.dir.path().join("step")).unwrap();
    assert!(matches!(step.rootfs, RootFs::Overlay { .. }));
    run_ok(step.rootfs.clone(), "echo hi > /hi");
    let layout = store::Layout::open_or_create(scratch.dir.path().join("store")).unwrap();
    let w = layer::store_changes(step.changes(), &layout, &LayerOptions::default()).unwrap();
    assert_eq!(layer_entries(&layout, &w).0, ["hi"]);
    // Without overlayfs: a flattened copy, diffed by walking, gives the same layer.
    let flat = sandbox::StepRoot::flattened(&lowers, &scratch.dir.path().join("flat")).unwrap();
    run_ok(
        flat.rootfs.clone(),
        "echo hi > /hi && touch -d @1700000000 /hi",
    );
    let opts = LayerOptions {
        source_date_epoch: Some(0),
        ..Default::default()
    };
    let a = layer::store_changes(step.changes(), &layout, &opts).unwrap();
    let b = layer::store_changes(flat.changes(), &layout, &opts).unwrap();
    assert_eq!(layer_entries(&layout, &b).0, ["hi"]);
    assert_eq!(
        a.diff_id, b.diff_id,
        "same content, same clamped times, same layer"
    );
}
