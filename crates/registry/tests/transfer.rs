//! Blob and manifest transfer against a real distribution registry over plain HTTP, with faults
//! injected by a proxy, and interop with skopeo.

mod common;

use std::process::Command;

use bytes::Bytes;
use manifold_registry::{BlobPush, Client, ClientOptions, FileSource};
use oci::{Descriptor, Digest, Reference};
use tokio::io::AsyncReadExt;

use common::proxy::{Fault, Proxy, Rule};
use common::{options, Registry};

fn reference(addr: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{addr}/{rest}")).expect("test reference")
}

async fn push_image(client: &Client, r: &Reference, img: &common::TinyImage) -> Digest {
    for (bytes, mt) in [
        (&img.config, oci::media_type::OCI_CONFIG),
        (&img.layer, oci::media_type::OCI_LAYER_GZIP),
    ] {
        let desc = Descriptor::new(mt, Digest::sha256_of(bytes), bytes.len() as u64);
        client
            .put_blob(r, &desc, &Bytes::from(bytes.clone()))
            .await
            .expect("push blob");
    }
    client
        .put_manifest(r, &img.manifest, oci::media_type::OCI_MANIFEST)
        .await
        .expect("push manifest")
}

async fn read_all(mut s: manifold_registry::BlobStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn plain_http_push_pull_tags_catalog_delete_mount() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let cfg = tempfile::tempdir().unwrap();
    let client = Client::new(options(cfg.path())).unwrap();
    client.ping(&reg.addr).await.expect("ping");
    let img = common::tiny_image(cfg.path(), "hello from manifold");
    let r = reference(&reg.addr, "test/app:v1");

    // Blobs: first upload sends, second finds it present.
    let layer = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&img.layer),
        img.layer.len() as u64,
    );
    assert_eq!(client.blob_exists(&r, &layer.digest).await.unwrap(), None);
    let first = client
        .put_blob(&r, &layer, &Bytes::from(img.layer.clone()))
        .await
        .unwrap();
    assert!(matches!(first, BlobPush::Uploaded { .. }), "{first:?}");
    let again = client
        .put_blob(&r, &layer, &Bytes::from(img.layer.clone()))
        .await
        .unwrap();
    assert_eq!(again, BlobPush::AlreadyPresent);
    assert_eq!(
        client.blob_exists(&r, &layer.digest).await.unwrap(),
        Some(img.layer.len() as u64)
    );

    let digest = push_image(&client, &r, &img).await;
    assert_eq!(digest, Digest::sha256_of(&img.manifest));

    let m = client.get_manifest(&r).await.unwrap();
    assert_eq!(m.bytes(), img.manifest.as_slice());
    assert_eq!(m.media_type(), oci::media_type::OCI_MANIFEST);
    let by_digest = client
        .get_manifest(&r.with_digest(digest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest.digest(), &digest);
    let head = client
        .head_manifest(&r)
        .await
        .unwrap()
        .expect("head finds it");
    assert_eq!(
        (head.digest.clone(), head.size),
        (digest.clone(), img.manifest.len() as u64)
    );

    let got = read_all(client.get_blob(&r, &layer).await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, img.layer);

    // Tags, five of them, read in pages of two through a counting proxy.
    for t in ["v2", "v3", "v4", "v5"] {
        client
            .put_manifest(
                &r.with_tag(t).unwrap(),
                &img.manifest,
                oci::media_type::OCI_MANIFEST,
            )
            .await
            .unwrap();
    }
    let proxy = Proxy::start(&reg.addr, vec![]).await;
    let paged = Client::new(ClientOptions {
        page_size: Some(2),
        ..options(cfg.path())
    })
    .unwrap();
    let mut tags = paged
        .tags(&reference(&proxy.addr, "test/app"))
        .await
        .unwrap();
    tags.sort(); // distribution 2.8 answers in storage order
    assert_eq!(tags, ["v1", "v2", "v3", "v4", "v5"]);
    // Catalog, mount, and a second repository.
    let other = reference(&reg.addr, "other/mounted:latest");
    assert!(client.mount_blob(&other, &r, &layer.digest).await.unwrap());
    assert_eq!(
        client.blob_exists(&other, &layer.digest).await.unwrap(),
        Some(img.layer.len() as u64)
    );
    let unknown = Digest::sha256_of(b"never pushed");
    assert!(!client.mount_blob(&other, &r, &unknown).await.unwrap());
    push_image(&client, &other, &img).await;
    for extra in ["z/one", "z/two", "z/three"] {
        push_image(&client, &reference(&reg.addr, &format!("{extra}:v1")), &img).await;
    }
    let repos = paged.catalog(&proxy.addr).await.unwrap();
    assert_eq!(
        repos,
        ["other/mounted", "test/app", "z/one", "z/three", "z/two"]
    );
    let pages = proxy
        .requests()
        .iter()
        .filter(|r| r.contains("/_catalog"))
        .count();
    assert!(
        pages >= 3,
        "expected pages of 2, saw {:?}",
        proxy.requests()
    );

    // Delete by digest; a tag alone is refused before any request.
    let err = client.delete_manifest(&r).await.unwrap_err();
    assert!(err.to_string().contains("by digest"), "{err}");
    client
        .delete_manifest(&r.with_digest(digest.clone()))
        .await
        .unwrap();
    assert_eq!(client.head_manifest(&r).await.unwrap(), None);
    let err = client.get_manifest(&r).await.unwrap_err();
    let msg = err.to_string();
    assert!(err.is_not_found(), "{msg}");
    assert!(msg.contains("MANIFEST_UNKNOWN"), "{msg}");
    assert!(
        msg.contains(&reg.addr) && msg.contains("test/app:v1"),
        "{msg}"
    );
}

#[tokio::test]
async fn upload_starts_over_when_registry_lost_the_session() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 24 << 20;
    let path = dir.path().join("blob");
    let digest = common::write_random_file(&path, 11, size);
    let desc = Descriptor::new(oci::media_type::OCI_LAYER_GZIP, digest, size);
    // Half a chunk reaches the registry, then the connection drops: distribution then refuses
    // to resume that session (its recorded offset no longer matches), so the client starts over.
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "PATCH",
            path_contains: "/blobs/uploads/".into(),
            skip: 1,
            times: 1,
            fault: Fault::CutRequest {
                after: 4 << 20,
                forward: true,
            },
        }],
    )
    .await;
    let client = Client::new(ClientOptions {
        monolithic_max: 1 << 20,
        chunk_size: 8 << 20,
        ..options(dir.path())
    })
    .unwrap();
    let r = reference(&proxy.addr, "restart/blob:latest");
    let outcome = client
        .put_blob(&r, &desc, &FileSource::new(&path))
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    assert_eq!(proxy.faults_fired(), 1);
    match outcome {
        BlobPush::Uploaded { restarts, .. } => assert!(restarts >= 1, "{outcome:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let got = read_all(client.get_blob(&r, &desc).await.unwrap())
        .await
        .unwrap();
    assert_eq!(Digest::sha256_of(&got), desc.digest);
}

#[tokio::test]
async fn download_resumes_with_range_after_dropped_connection() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(3, 12 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let client = Client::new(options(dir.path())).unwrap();
    client
        .put_blob(
            &reference(&reg.addr, "dl/blob:latest"),
            &desc,
            &Bytes::from(data.clone()),
        )
        .await
        .unwrap();
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            skip: 0,
            times: 1,
            fault: Fault::CutResponse { after: 3 << 20 },
        }],
    )
    .await;
    let s = client
        .get_blob(&reference(&proxy.addr, "dl/blob:latest"), &desc)
        .await
        .unwrap();
    let mut s = s;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("resumed download");
    assert_eq!(s.resumes(), 1);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "resumed download differs from the blob");
    let gets = proxy
        .requests()
        .iter()
        .filter(|q| q.starts_with("GET ") && q.contains("/blobs/sha256:"))
        .count();
    assert_eq!(gets, 2, "{:?}", proxy.requests());
}

#[tokio::test]
async fn stalled_download_times_out_and_resumes() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(4, 4 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let client = Client::new(ClientOptions {
        read_timeout: std::time::Duration::from_millis(500),
        ..options(dir.path())
    })
    .unwrap();
    client
        .put_blob(
            &reference(&reg.addr, "stall/blob:latest"),
            &desc,
            &Bytes::from(data.clone()),
        )
        .await
        .unwrap();
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            skip: 0,
            times: 1,
            fault: Fault::StallResponse { after: 1 << 20 },
        }],
    )
    .await;
    let start = std::time::Instant::now();
    let mut s = client
        .get_blob(&reference(&proxy.addr, "stall/blob:latest"), &desc)
        .await
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .await
        .expect("resumed after the stall");
    assert!(got == data);
    assert_eq!(s.resumes(), 1);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn service_unavailable_once_is_retried_and_named_when_it_persists() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let img = common::tiny_image(dir.path(), "retry me");
    let client = Client::new(options(dir.path())).unwrap();
    push_image(&client, &reference(&reg.addr, "retry/app:v1"), &img).await;

    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/v1".into(),
            skip: 0,
            times: 1,
            fault: Fault::ServiceUnavailable,
        }],
    )
    .await;
    let m = client
        .get_manifest(&reference(&proxy.addr, "retry/app:v1"))
        .await
        .expect("retried after one 503");
    assert_eq!(m.bytes(), img.manifest.as_slice());
    assert_eq!(proxy.faults_fired(), 1);
    let gets = proxy
        .requests()
        .iter()
        .filter(|q| q.starts_with("GET ") && q.contains("/manifests/v1"))
        .count();
    assert_eq!(gets, 2);

    // 429 with Retry-After: the client waits as long as it is told.
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/v1".into(),
            skip: 0,
            times: 1,
            fault: Fault::TooManyRequests { retry_after: 1 },
        }],
    )
    .await;
    let start = std::time::Instant::now();
    client
        .get_manifest(&reference(&proxy.addr, "retry/app:v1"))
        .await
        .expect("retried after 429");
    let waited = start.elapsed();
    assert_eq!(proxy.faults_fired(), 1);
    assert!(
        waited >= std::time::Duration::from_secs(1),
        "Retry-After: 1 not honored, retried after {waited:?}"
    );

    // Without retries the refusal names the registry's code and message.
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/manifests/v1".into(),
            skip: 0,
            times: 1,
            fault: Fault::ServiceUnavailable,
        }],
    )
    .await;
    let strict = Client::new(ClientOptions {
        max_retries: 0,
        ..options(dir.path())
    })
    .unwrap();
    let err = strict
        .get_manifest(&reference(&proxy.addr, "retry/app:v1"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.status(), Some(503), "{msg}");
    assert!(
        msg.contains("UNAVAILABLE: injected by the test proxy") && msg.contains("retry later"),
        "{msg}"
    );
}

#[tokio::test]
async fn blob_that_does_not_match_its_digest_is_refused_naming_both() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(5, 3 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let client = Client::new(options(dir.path())).unwrap();
    let r = reference(&reg.addr, "bad/blob:latest");
    client
        .put_blob(&r, &desc, &Bytes::from(data.clone()))
        .await
        .unwrap();
    // The registry's storage goes bad: same size, other bytes.
    let mut evil = data.clone();
    evil[1 << 20] ^= 0xff;
    let bad = Digest::sha256_of(&evil);
    std::fs::write(reg.blob_path(&desc.digest), &evil).unwrap();

    let s = client.get_blob(&r, &desc).await.unwrap();
    let err = read_all(s).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains(&desc.digest.to_string()), "{msg}");
    assert!(msg.contains(&bad.to_string()), "{msg}");
    assert!(msg.contains(&reg.addr), "{msg}");

    let err = client
        .get_blob_bytes(&r, &desc, 16 << 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&bad.to_string()), "{err}");
}

#[tokio::test]
async fn skopeo_reads_what_we_push_and_we_read_what_skopeo_copies() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let img = common::tiny_image(dir.path(), "interop");
    let client = Client::new(options(dir.path())).unwrap();
    let src = reference(&reg.addr, "interop/src:v1");
    let digest = push_image(&client, &src, &img).await;

    let out = common::run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/interop/src:v1", reg.addr)),
    );
    assert_eq!(out.stdout, img.manifest, "skopeo saw other bytes");

    common::run(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("docker://{}/interop/src:v1", reg.addr))
            .arg(format!("docker://{}/interop/dst:v1", reg.addr)),
    );
    let copied = client
        .get_manifest(&reference(&reg.addr, "interop/dst:v1"))
        .await
        .unwrap();
    assert_eq!(copied.digest(), &digest);
    for child in copied.children() {
        let bytes = client
            .get_blob_bytes(&reference(&reg.addr, "interop/dst:v1"), &child, 1 << 20)
            .await
            .unwrap();
        assert_eq!(Digest::sha256_of(&bytes), child.digest);
    }
}

#[tokio::test]
async fn upload_refuses_a_source_that_is_not_the_blob() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(ClientOptions {
        monolithic_max: 1 << 20,
        chunk_size: 1 << 20,
        ..options(dir.path())
    })
    .unwrap();
    let r = reference(&reg.addr, "bad/upload:latest");

    // A file shorter than its descriptor: named as a source problem, not retried forever.
    let data = common::pseudo_random(9, 3 << 20);
    let path = dir.path().join("short");
    std::fs::write(&path, &data[..2 << 20]).unwrap();
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let err = client
        .put_blob(&r, &desc, &FileSource::new(&path))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, manifold_registry::Error::Source { .. }),
        "{msg}"
    );
    assert!(msg.contains("ended after"), "{msg}");

    // Bytes that do not hash to the descriptor's digest: the registry's DIGEST_INVALID is named.
    let other = common::pseudo_random(10, 3 << 20);
    let err = client
        .put_blob(&r, &desc, &Bytes::from(other))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(err.codes().contains(&"DIGEST_INVALID"), "{msg}");
    assert!(msg.contains(&desc.digest.to_string()), "{msg}");
    assert_eq!(client.blob_exists(&r, &desc.digest).await.unwrap(), None);
}

#[tokio::test]
async fn index_is_pushed_children_first_and_reads_back_as_an_index() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(options(dir.path())).unwrap();
    let r = reference(&reg.addr, "multi/app:v1");
    let mut entries = Vec::new();
    for (arch, text) in [("amd64", "x86"), ("arm64", "arm")] {
        let img = common::tiny_image(dir.path(), text);
        let d = push_image(
            &client,
            &r.repo_only().with_digest(Digest::sha256_of(&img.manifest)),
            &img,
        )
        .await;
        entries.push(format!(
            r#"{{"mediaType":"{}","digest":"{d}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
            oci::media_type::OCI_MANIFEST,
            img.manifest.len()
        ));
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        oci::media_type::OCI_INDEX,
        entries.join(",")
    );
    let d = client
        .put_manifest(&r, index.as_bytes(), oci::media_type::OCI_INDEX)
        .await
        .unwrap();
    let head = client.head_manifest(&r).await.unwrap().unwrap();
    assert_eq!(head.media_type, oci::media_type::OCI_INDEX);
    assert_eq!(head.digest, d);
    let m = client.get_manifest(&r).await.unwrap();
    assert!(matches!(m, oci::Manifest::Index(_)));
    assert_eq!(m.bytes(), index.as_bytes());
    assert_eq!(m.children().len(), 2);
    for c in m.children() {
        let child = client
            .get_manifest(&r.repo_only().with_digest(c.digest.clone()))
            .await
            .unwrap();
        assert!(matches!(child, oci::Manifest::Image(_)));
    }
    // A digest reference is checked against the bytes before anything is sent.
    let wrong = r.repo_only().with_digest(Digest::sha256_of(b"other"));
    let err = client
        .put_manifest(&wrong, index.as_bytes(), oci::media_type::OCI_INDEX)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&d.to_string()), "{err}");
}

#[tokio::test]
async fn registry_to_registry_copy_streams_and_resumes_with_ranges() {
    require_peer!("docker-registry");
    let a = Registry::start(Default::default());
    let b = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(21, 5 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let client = Client::new(ClientOptions {
        monolithic_max: 1 << 20,
        chunk_size: 2 << 20,
        ..options(dir.path())
    })
    .unwrap();
    client
        .put_blob(
            &reference(&a.addr, "src/blob:latest"),
            &desc,
            &Bytes::from(data.clone()),
        )
        .await
        .unwrap();
    let src_proxy = Proxy::start(&a.addr, vec![]).await;
    let dst_proxy = Proxy::start(
        &b.addr,
        vec![Rule {
            method: "PATCH",
            path_contains: "/blobs/uploads/".into(),
            skip: 1,
            times: 1,
            fault: Fault::CutRequest {
                after: 1 << 20,
                forward: false,
            },
        }],
    )
    .await;
    let source = manifold_registry::RegistryBlob {
        client: client.clone(),
        repo: reference(&src_proxy.addr, "src/blob:latest"),
        desc: desc.clone(),
    };
    let outcome = client
        .put_blob(
            &reference(&dst_proxy.addr, "dst/blob:latest"),
            &desc,
            &source,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        BlobPush::Uploaded {
            resumes: 1,
            restarts: 0
        }
    );
    let ranged_reads = src_proxy
        .requests()
        .iter()
        .filter(|q| q.starts_with("GET ") && q.contains("/blobs/sha256:"))
        .count();
    assert_eq!(ranged_reads, 4, "{:?}", src_proxy.requests());
    let got = read_all(
        client
            .get_blob(&reference(&b.addr, "dst/blob:latest"), &desc)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(got == data);
}

#[tokio::test]
async fn monolithic_upload_dropped_midway_starts_over() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(8, 2 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let proxy = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "PUT",
            path_contains: "/blobs/uploads/".into(),
            skip: 0,
            times: 1,
            fault: Fault::CutRequest {
                after: 1 << 20,
                forward: false,
            },
        }],
    )
    .await;
    let client = Client::new(options(dir.path())).unwrap();
    let r = reference(&proxy.addr, "mono/blob:latest");
    let outcome = client
        .put_blob(&r, &desc, &Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        BlobPush::Uploaded {
            resumes: 0,
            restarts: 1
        }
    );
    let got = read_all(client.get_blob(&r, &desc).await.unwrap())
        .await
        .unwrap();
    assert!(got == data);
}

/// A mirror that drops every blob download midway: after its retry the download goes on from
/// the registry itself, from the offset reached, and the whole is verified.
#[tokio::test]
async fn a_mirror_that_fails_midway_hands_the_download_to_the_registry() {
    require_peer!("docker-registry");
    let reg = Registry::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let data = common::pseudo_random(7, 12 << 20);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let r = reference(&reg.addr, "mid/blob:latest");
    Client::new(options(dir.path()))
        .unwrap()
        .put_blob(&r, &desc, &Bytes::from(data.clone()))
        .await
        .unwrap();
    let mirror = Proxy::start(
        &reg.addr,
        vec![Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            skip: 0,
            times: 100,
            fault: Fault::CutResponse { after: 3 << 20 },
        }],
    )
    .await;
    let mut opts = options(dir.path());
    opts.registries
        .set_mirrors(&reg.addr, vec![mirror.addr.clone()]);
    let client = Client::new(opts).unwrap();
    let got = read_all(client.get_blob(&r, &desc).await.unwrap())
        .await
        .expect("download completed by the registry");
    assert!(got == data, "the download differs from the blob");
    let mirror_gets = mirror
        .requests()
        .iter()
        .filter(|q| q.starts_with("GET ") && q.contains("/blobs/sha256:"))
        .count();
    assert_eq!(mirror_gets, 2, "the first try and one resume on the mirror");
    let report = client.mirror_report();
    let m = report.iter().find(|u| u.host == mirror.addr).unwrap();
    assert!(m.is_mirror && m.blobs == 1 && m.failures == 1, "{report:?}");
    let up = report.iter().find(|u| u.host == reg.addr).unwrap();
    assert!(!up.is_mirror && up.blobs == 1, "{report:?}");
}
