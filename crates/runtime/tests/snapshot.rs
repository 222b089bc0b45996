//! Unpacking real and hand-made layers into snapshots.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use manifold_runtime::snapshot::{apply_layer, SnapshotCache, WhiteoutMode, OPAQUE_XATTR};

#[test]
fn unpacks_real_busybox_layers_for_three_arches() {
    let Some(dir) = common::busybox_layout() else {
        return;
    };
    let layout = store::Layout::open_existing(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::open(tmp.path()).unwrap();
    for (platform, machine) in [
        ("linux/amd64", 62u16),
        ("linux/arm64", 183),
        ("linux/arm/v7", 40),
    ] {
        let (m, c) = common::busybox_image(&layout, platform);
        let layer = &m.layers[0];
        let t = Instant::now();
        let blob = layout.open_blob(&layer.digest).unwrap();
        let (snap, fresh) = cache
            .unpack(
                blob,
                Some(&layer.media_type),
                Some(&c.rootfs.diff_ids[0]),
                "busybox",
            )
            .unwrap();
        eprintln!(
            "unpacked busybox {platform} ({} bytes gz) in {:?}",
            layer.size,
            t.elapsed()
        );
        assert!(fresh);
        let root = &snap.path;
        let bb = fs::read(root.join("bin/busybox")).unwrap();
        assert_eq!(
            u16::from_le_bytes([bb[18], bb[19]]),
            machine,
            "{platform} ELF machine"
        );
        let meta = fs::symlink_metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        assert_eq!(meta.mtime(), 0);
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let tmpdir = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmpdir.mode() & 0o7777, 0o1777);
        assert_eq!(
            tmpdir.mtime(),
            0,
            "directory times are set after their children"
        );
        assert!(fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("nobody"));
        // Cached: the second time nothing is unpacked.
        let blob = layout.open_blob(&layer.digest).unwrap();
        let (again, fresh) = cache
            .unpack(
                blob,
                Some(&layer.media_type),
                Some(&c.rootfs.diff_ids[0]),
                "busybox",
            )
            .unwrap();
        assert!(!fresh);
        assert_eq!(again, snap);
        assert_eq!(
            cache
                .unpack_blob(&layout, layer, &c.rootfs.diff_ids[0])
                .unwrap(),
            snap
        );
    }
    // Nothing left behind in the cache's temporary area.
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
}

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    fn dir(mut self, name: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, name, &[][..]).unwrap();
        self
    }
    fn file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn base_layer() -> Vec<u8> {
    Tar::new()
        .dir("a")
        .file("a/keep", b"k")
        .file("gone", b"g")
        .dir("c")
        .file("c/old1", b"1")
        .dir("c/sub")
        .file("c/sub/old2", b"2")
        .done()
}

fn upper_layer() -> Vec<u8> {
    Tar::new()
        .file(".wh.gone", b"")
        .dir("c")
        .file("c/.wh..wh..opq", b"")
        .file("c/new", b"n")
        .file("a/.wh.nothing-there", b"")
        .done()
}

#[test]
fn whiteouts_and_opaque_dirs_applied_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply_layer(root, &base_layer()[..], None, WhiteoutMode::Apply, "base").unwrap();
    assert!(root.join("c/sub/old2").is_file());
    apply_layer(root, &upper_layer()[..], None, WhiteoutMode::Apply, "upper").unwrap();
    assert!(!root.join("gone").exists());
    assert!(root.join("a/keep").is_file());
    let mut names: Vec<_> = fs::read_dir(root.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlay_markers() {
    if !common::is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::open(tmp.path()).unwrap();
    let (snap, _) = cache
        .unpack(&upper_layer()[..], None, None, "upper")
        .unwrap();
    let m = fs::symlink_metadata(snap.path.join("gone")).unwrap();
    assert!(
        m.file_type().is_char_device() && m.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        xattr::get(snap.path.join("c"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(snap.path.join("c/new").is_file());
    assert!(!snap.path.join("c/.wh..wh..opq").exists());
    // Flattening base + upper carries the markers out.
    let (base, _) = cache.unpack(&base_layer()[..], None, None, "base").unwrap();
    let flat = tmp.path().join("flat");
    manifold_runtime::snapshot::flatten(&[base.path.clone(), snap.path.clone()], &flat).unwrap();
    assert!(!flat.join("gone").exists());
    assert!(flat.join("a/keep").is_file());
    assert!(flat.join("c/new").is_file() && !flat.join("c/old1").exists());
}

#[test]
fn metadata_hardlinks_xattrs_and_compressions() {
    if !common::is_root() {
        return; // owners are only kept by root
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Tar::header(tar::EntryType::Regular, 0o4755, 3);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_234_567_890);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])])
        .unwrap();
    b.append_data(&mut h, "bin/tool", &b"abc"[..]).unwrap();
    let mut l = Tar::header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut l, "bin/tool2", "bin/tool").unwrap();
    let mut s = Tar::header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut s, "bin/t", "tool").unwrap();
    let long = format!("deep/{}/file", "x".repeat(150));
    let mut lh = Tar::header(tar::EntryType::Regular, 0o600, 1);
    b.append_data(&mut lh, &long, &b"L"[..]).unwrap();
    let plain = b.into_inner().unwrap();
    let want = oci::Digest::sha256_of(&plain);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for (what, bytes, mt) in [
        ("plain", &plain, None),
        ("gzip", &gz, Some(oci::media_type::OCI_LAYER_GZIP)),
        ("zstd", &zst, None),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let r = apply_layer(tmp.path(), &bytes[..], mt, WhiteoutMode::Apply, what).unwrap();
        assert_eq!(
            r.diff_id, want,
            "{what}: diffID is the digest of the plain tar"
        );
        let m = fs::metadata(tmp.path().join("bin/tool")).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o7777,
            0o4755,
            "{what}: setuid kept after chown"
        );
        assert_eq!((m.uid(), m.gid(), m.mtime()), (1234, 5678, 1_234_567_890));
        assert_eq!(m.nlink(), 2, "{what}: hardlink");
        assert_eq!(
            fs::metadata(tmp.path().join("bin/tool2")).unwrap().ino(),
            m.ino()
        );
        assert_eq!(
            xattr::get(tmp.path().join("bin/tool"), "user.note")
                .unwrap()
                .as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            fs::read_link(tmp.path().join("bin/t")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(fs::read(tmp.path().join(&long)).unwrap(), b"L");
    }
}

#[test]
fn wrong_diff_id_is_refused_and_nothing_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::open(tmp.path()).unwrap();
    let wrong = oci::Digest::sha256_of(b"not this");
    let err = cache
        .unpack(&base_layer()[..], None, Some(&wrong), "base")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image config says") && err.contains(&wrong.to_string()),
        "{err}"
    );
    assert!(cache.get(&wrong).is_none());
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(tmp.path().join("sha256")).unwrap().count(), 0);
}

#[test]
fn symlink_out_of_the_root_is_refused_and_nothing_written_outside() {
    let outer = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::open(outer.path().join("cache")).unwrap();
    let victim = outer.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut s = Tar::header(tar::EntryType::Symlink, 0o777, 0);
    // Deep enough to leave the cache directory for `victim`.
    b.append_link(
        &mut s,
        "escape",
        "../../../../../../../../../../../../../../../../victim",
    )
    .unwrap();
    let mut f = Tar::header(tar::EntryType::Regular, 0o644, 4);
    b.append_data(&mut f, "escape/pwned", &b"evil"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    let err = cache
        .unpack(&evil[..], None, None, "evil")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"escape/pwned\"") && err.contains("outside the root"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(outer.path().join("cache/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(outer.path().join("cache/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn concurrent_unpacks_of_one_layer_keep_one_complete_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::open(tmp.path()).unwrap();
    let layer = base_layer();
    let want = oci::Digest::sha256_of(&layer);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| cache.unpack(&layer[..], None, Some(&want), "base").unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|(s, _)| s.path == results[0].0.path));
    assert!(results[0].0.path.join("c/sub/old2").is_file());
    assert_eq!(fs::read_dir(tmp.path().join("sha256")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(cache.list().unwrap(), std::slice::from_ref(&want));
    assert!(cache.remove(&want).unwrap());
    assert!(!cache.remove(&want).unwrap());
    assert!(cache.get(&want).is_none() && cache.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_kept() {
    let Some(dir) = common::busybox_layout() else {
        return;
    };
    let src = store::Layout::open_existing(&dir).unwrap();
    let (m, c) = common::busybox_image(&src, "linux/amd64");
    let layer = &m.layers[0];
    // A copy of the store whose layer blob has one byte flipped in the middle.
    let tmp = tempfile::tempdir().unwrap();
    let layout = store::Layout::open_or_create(tmp.path().join("store")).unwrap();
    let mut bytes = fs::read(src.blob_path(&layer.digest)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let p = layout.blob_path(&layer.digest);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, &bytes).unwrap();
    let cache = SnapshotCache::open(tmp.path().join("snapshots")).unwrap();
    let err = cache
        .unpack_blob(&layout, layer, &c.rootfs.diff_ids[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&layer.digest.to_string()), "{err}");
    assert!(cache.get(&c.rootfs.diff_ids[0]).is_none());
    assert_eq!(
        fs::read_dir(tmp.path().join("snapshots/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_layer_leaning_on_its_parents_is_unpacked_over_them_and_kept_by_chain() {
    if !common::is_root() {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut d = Tar::header(tar::EntryType::Directory, 0o700, 0);
    d.set_uid(1000);
    b.append_data(&mut d, "opt/", &[][..]).unwrap();
    for dir in ["usr/", "usr/lib/", "data/"] {
        let mut h = Tar::header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, dir, &[][..]).unwrap();
    }
    let mut f = Tar::header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut f, "usr/lib/a.so", &b"a"[..]).unwrap();
    let mut f = Tar::header(tar::EntryType::Regular, 0o640, 4);
    b.append_data(&mut f, "data/f", &b"base"[..]).unwrap();
    let mut l = Tar::header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut l, "lib", "usr/lib").unwrap();
    let base = b.into_inner().unwrap();
    // Hand-made, as some tools write them: no parent entries, a path through a lower
    // symlink, a hardlink to a lower file.
    let mut b = tar::Builder::new(Vec::new());
    let mut f = Tar::header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut f, "opt/new", &b"n"[..]).unwrap();
    let mut f = Tar::header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut f, "lib/b.so", &b"b"[..]).unwrap();
    let mut h = Tar::header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "data/g", "data/f").unwrap();
    let upper = b.into_inner().unwrap();

    let tmp = tempfile::tempdir_in(common::repo_root().join("target")).unwrap();
    let cache = SnapshotCache::open(tmp.path().join("cache")).unwrap();
    let (s0, _) = cache.unpack_on(&[], &base[..], None, None, "base").unwrap();
    assert!(
        s0.path.starts_with(tmp.path().join("cache/sha256")),
        "stands alone: by diffID"
    );
    let (s1, fresh) = cache
        .unpack_on(std::slice::from_ref(&s0), &upper[..], None, None, "upper")
        .unwrap();
    assert!(fresh);
    assert!(
        s1.path.starts_with(tmp.path().join("cache/chain")),
        "{:?}",
        s1.path
    );
    assert_eq!(
        cache.get_on(std::slice::from_ref(&s0), &s1.diff_id),
        Some(s1.clone())
    );
    assert!(
        cache.get(&s1.diff_id).is_none(),
        "not shared with other parents"
    );
    let opt = fs::metadata(s1.path.join("opt")).unwrap();
    assert_eq!(
        (opt.mode() & 0o7777, opt.uid()),
        (0o700, 1000),
        "implicit dir keeps the lower's"
    );
    assert!(s1.path.join("usr/lib/b.so").is_file() && !s1.path.join("lib").exists());
    assert_eq!(fs::read(s1.path.join("data/g")).unwrap(), b"base");

    let Some(busybox) = common::busybox_snapshots("linux/amd64") else {
        return;
    };
    let steps = common::repo_root().join("target/fixtures/steps");
    fs::create_dir_all(&steps).unwrap();
    let step = tempfile::tempdir_in(steps).unwrap();
    // The merged view: /lib still the symlink, both libraries there, /opt still private.
    let mut lowers = busybox.into_iter().map(|s| s.path).collect::<Vec<_>>();
    lowers.extend([s0.path.clone(), s1.path.clone()]);
    let rootfs = manifold_runtime::RootFs::Overlay {
        lowers,
        upper: step.path().join("upper"),
        work: step.path().join("work"),
    };
    let out = manifold_runtime::sandbox::run(&manifold_runtime::RunSpec::new(
        rootfs,
        &["sh", "-c", "ls /lib/; stat -c %a /opt; readlink /lib"],
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "a.so\nb.so\n700\nusr/lib\n",
        "{}",
        out.tail
    );
}
