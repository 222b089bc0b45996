//! A large blob (generated, 128 MiB by default; `MANIFOLD_LARGE_MB` to change) pushed in chunks
//! through a proxy that drops the connection mid-chunk, then pulled back verified, with the
//! process's peak memory checked. Its own test binary, so the peak is this test's alone.

mod common;

use std::time::Instant;

use futures_util::StreamExt;
use manifold_registry::{BlobPush, Client, ClientOptions, FileSource};
use oci::{Descriptor, Reference};

use common::proxy::{Fault, Proxy, Rule};
use common::{options, Registry};

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn large_chunked_upload_resumes_from_registry_range_after_drop() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let mb: u64 = std::env::var("MANIFOLD_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let size: u64 = mb << 20;
    let chunk: u64 = 32 << 20;
    let path = dir.path().join("big.blob");
    let digest = common::write_random_file(&path, 7, size);
    let desc = Descriptor::new(oci::media_type::OCI_LAYER_GZIP, digest.clone(), size);
    let rss_before = peak_rss();

    // The second PATCH is cut 5 MiB in, before the registry sees any of it.
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "PATCH",
            path_contains: "/blobs/uploads/".into(),
            skip: 1,
            times: 1,
            fault: Fault::CutRequest {
                after: 5 << 20,
                forward: false,
            },
        }],
    )
    .await;
    let client = Client::new(ClientOptions {
        monolithic_max: 1 << 20,
        chunk_size: chunk,
        ..options(dir.path())
    })
    .unwrap();
    let r = Reference::parse(&format!("{}/big/blob:latest", proxy.addr)).unwrap();
    let start = Instant::now();
    let outcome = client
        .put_blob(&r, &desc, &FileSource::new(&path))
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "pushed {mb} MiB through the proxy in {secs:.2}s ({:.0} MiB/s), {outcome:?}",
        mb as f64 / secs
    );
    assert_eq!(proxy.faults_fired(), 1);
    assert_eq!(
        outcome,
        BlobPush::Uploaded {
            resumes: 1,
            restarts: 0
        }
    );
    // Resumed, not restarted: the registry got each byte once.
    assert_eq!(proxy.body_bytes_up(), size);
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|q| q.starts_with("GET ") && q.contains("/blobs/uploads/")),
        "no upload status query in {reqs:?}"
    );

    // Read it back directly, verified while streaming.
    let direct = Client::new(options(dir.path())).unwrap();
    let r = Reference::parse(&format!("{}/big/blob:latest", reg.addr)).unwrap();
    let mut s = direct.get_blob(&r, &desc).await.unwrap();
    let mut n = 0u64;
    let start = Instant::now();
    while let Some(c) = s.next().await {
        n += c.unwrap().len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "pulled {} MiB in {secs:.2}s ({:.0} MiB/s)",
        n >> 20,
        mb as f64 / secs
    );
    assert_eq!(n, size);

    // Streams, not buffers: the transfers add far less than the blob to the peak.
    if let (Some(before), Some(after)) = (rss_before, peak_rss()) {
        eprintln!(
            "peak RSS {} MiB before the transfers, {} MiB after",
            before >> 20,
            after >> 20
        );
        assert!(
            after < before + (48 << 20),
            "peak RSS grew from {} to {} MiB moving a {mb} MiB blob",
            before >> 20,
            after >> 20
        );
    }
}
