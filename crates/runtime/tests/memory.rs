//! A layer of any size passes through in bounded memory. Alone in its test binary so the
//! process's peak RSS is this test's.

use std::fs;
use std::io::Write;

use manifold_runtime::layer::{self, LayerOptions};

fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_big_layer_streams_into_the_store_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    // 64 MiB: each MiB is 64 KiB of xorshift noise and then text, so gzip has real work but
    // debug builds still finish in seconds.
    let mut f = fs::File::create(upper.join("big")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..64u32 {
        for chunk in buf[..64 << 10].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let line = format!("line {i} of a layer that must stream through in bounded memory\n");
        for (j, b) in buf[64 << 10..].iter_mut().enumerate() {
            *b = line.as_bytes()[j % line.len()];
        }
        f.write_all(&buf).unwrap();
    }
    drop(f);
    drop(buf);
    let layout = store::Layout::open_or_create(tmp.path().join("store")).unwrap();
    let before = peak_rss_kib();
    let t = std::time::Instant::now();
    let opts = LayerOptions {
        threads: 2,
        level: Some(1),
        ..Default::default()
    };
    let w = layer::write_to_store(&upper, &layout, &opts).unwrap();
    let grew = peak_rss_kib().saturating_sub(before);
    eprintln!(
        "64 MiB layer: {} bytes gzip -1 in {:?}, peak RSS grew {grew} KiB",
        w.descriptor.size,
        t.elapsed()
    );
    assert!(w.uncompressed_size > 64 << 20);
    assert!(
        grew < 32 * 1024,
        "peak RSS grew {grew} KiB writing a 64 MiB layer (2 gzip threads)"
    );
    assert_eq!(
        layout.blob_size(&w.descriptor.digest),
        Some(w.descriptor.size)
    );
}

#[test]
fn a_failing_walk_leaves_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = store::Layout::open_or_create(tmp.path().join("store")).unwrap();
    let missing = tmp.path().join("no-such-upper");
    let err = layer::write_to_store(&missing, &layout, &LayerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-upper"), "{err}");
    assert_eq!(
        fs::read_dir(tmp.path().join("store/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}
