//! End-to-end for `manifold registry serve`: real clients (skopeo, the docker CLI, manifold
//! itself) push and pull through it; raw HTTP checks the distribution spec's details, faults
//! (dropped uploads, concurrent pushes, GC while pushing) and hostile input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use common::*;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The first error code of a spec error body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn parse_resp(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn req(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_resp(&raw)
}

fn sha(b: &[u8]) -> String {
    oci::Digest::sha256_of(b).to_string()
}

fn push_blob(addr: &str, repo: &str, b: &[u8]) -> String {
    let d = sha(b);
    let r = req(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[],
        b,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d
}

/// A manifest with unusual formatting, so a re-serialization would change its digest.
fn manifest(config: &str, config_len: usize, layers: &[(&str, usize)], extra: &str) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(
                "{{ \"mediaType\": \"application/vnd.oci.image.layer.v1.tar\", \"digest\": \"{d}\", \"size\": {n} }}"
            )
        })
        .collect();
    format!(
        "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"config\": {{ \"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"digest\": \"{config}\", \"size\": {config_len} }},\n  \"layers\": [ {} ]{extra}\n}}\n",
        layers.join(", ")
    )
}

fn raw_root() -> (tempfile::TempDir, tempfile::TempDir, Server) {
    let store = tempfile::tempdir().unwrap();
    let reg = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path(),
        &["--root", reg.path().join("r").to_str().unwrap()],
        &[],
    );
    (store, reg, srv)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn skopeo_copies_in_and_out_oci_and_docker_v2s2_byte_exact() {
    if !peer("skopeo") {
        return;
    }
    let Some((layout, index_digest)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let (_store, _reg, srv) = raw_root();
    let a = &srv.addr;
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:latest", layout.display());
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{a}/lib/busybox:1"),
    ]));
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{a}/lib/busybox:1"),
    ]));
    // Stored byte-exact: the index served has the digest it was pushed with.
    assert_eq!(sha(raw.as_bytes()), index_digest);
    let out = t.path().join("out");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{a}/lib/busybox:1"),
        &format!("oci:{}:x", out.display()),
    ]));
    let idx = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(idx.contains(&index_digest), "{idx}");

    // Docker schema 2: a manifest list and v2 manifests, converted by skopeo on the way in.
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{a}/lib/bbdocker:1"),
    ]));
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{a}/lib/bbdocker:1"),
    ]));
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.list.v2+json"),
        "{raw}"
    );
    let list_digest = sha(raw.as_bytes());
    let head = req(a, "HEAD", "/v2/lib/bbdocker/manifests/1", &[], b"");
    assert_eq!(head.h("docker-content-digest"), Some(list_digest.as_str()));
    assert_eq!(
        head.h("content-type"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json")
    );
    let arch = sh(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        "--format",
        "{{.Architecture}}",
        &format!("docker://{a}/lib/bbdocker:1"),
    ]));
    assert_eq!(arch.trim(), "arm64");
    let d2 = t.path().join("d2");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{a}/lib/bbdocker:1"),
        &format!("oci:{}:x", d2.display()),
    ]));
    assert!(d2.join("index.json").is_file());
    assert_eq!(
        req(a, "GET", "/v2/_catalog", &[], b"").json()["repositories"],
        serde_json::json!(["lib/bbdocker", "lib/busybox"])
    );
}

#[test]
fn manifold_and_the_docker_cli_push_pull_and_inspect() {
    let Some((layout, index_digest)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let (store, _reg, srv) = raw_root();
    let s = store.path();
    let a = &srv.addr;
    let r = format!("{a}/team/busybox:1");
    let out = ok(s, &["cp", &format!("oci:{}:latest", layout.display()), &r]);
    assert!(out.contains(&index_digest), "{out}");
    let inspect = ok(s, &["imagetools", "inspect", &r]);
    assert!(
        inspect.contains(&index_digest) && inspect.contains("linux/arm64"),
        "{inspect}"
    );
    ok(s, &["pull", "--all-platforms", &r]);
    let copy = format!("{a}/other/busybox:2");
    ok(s, &["tag", &r, &copy]);
    ok(s, &["push", &copy]);
    assert_eq!(ok(s, &["-q", "digest", &copy]).trim(), index_digest);
    let tags = ok(s, &["tags", &format!("{a}/team/busybox")]);
    assert_eq!(tags.trim(), "1");
    let cat = ok(s, &["catalog", a]);
    assert!(
        cat.contains("team/busybox") && cat.contains("other/busybox"),
        "{cat}"
    );
    if peer("docker") {
        let out = sh(Command::new("docker").args(["manifest", "inspect", "--insecure", &r]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "{out}");
    }
    ok(s, &["delete", &copy]);
    let err = fails(s, &["imagetools", "inspect", &copy]);
    assert!(
        err.contains("MANIFEST_UNKNOWN") || err.contains("not found"),
        "{err}"
    );
    // One log line per request.
    let log = srv.log_text();
    assert!(
        log.lines()
            .any(|l| l.starts_with("GET /v2/team/busybox/manifests/1 200")),
        "{log}"
    );
}

#[test]
fn store_mode_serves_the_local_store_and_takes_pushes_into_it() {
    if !peer("skopeo") {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    let idx = fixed_layout(&lay, &["amd64", "arm64"], "v1");
    ok(
        s,
        &["cp", &format!("oci:{}:v1", lay.display()), "store:app:1"],
    );
    let srv = Server::start(s, &[], &["--store"]);
    let a = &srv.addr;
    // What the store holds as docker.io/library/app:1 is the registry's app:1, by tag and by
    // each platform's digest.
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{a}/app:1"),
    ]));
    assert_eq!(sha(raw.as_bytes()), idx);
    let out = t.path().join("out");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{a}/library/app:1"),
        &format!("oci:{}:x", out.display()),
    ]));
    // A push lands in the store under the name manifold uses for it.
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", lay.display()),
        &format!("docker://{a}/pushed/app:2"),
    ]));
    let images = ok(s, &["images"]);
    assert!(
        images.contains("pushed/app") && images.contains('2'),
        "{images}"
    );
    assert_eq!(ok(s, &["-q", "digest", "store:pushed/app:2"]).trim(), idx);

    // A store name whose registry has a port is served as HOST_PORT/REPO (`:` cannot be in a
    // repository name): localhost:5000/team/app:1 is localhost_5000/team/app:1, both ways.
    ok(
        s,
        &[
            "cp",
            &format!("oci:{}:v1", lay.display()),
            "store:localhost:5000/team/app:1",
        ],
    );
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{a}/localhost_5000/team/app:1"),
    ]));
    assert_eq!(sha(raw.as_bytes()), idx);
    let pulled = tempfile::tempdir().unwrap();
    let o = ok(
        pulled.path(),
        &[
            "pull",
            "--all-platforms",
            &format!("{a}/localhost_5000/team/app:1"),
        ],
    );
    assert!(o.contains(&idx), "{o}");
    let catalog = ok(s, &["catalog", a]);
    assert!(
        catalog.lines().any(|l| l == "localhost_5000/team/app"),
        "{catalog}"
    );
    let tags = ok(s, &["tags", &format!("{a}/localhost_5000/team/app")]);
    assert_eq!(tags.trim(), "1");
    sh(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", lay.display()),
        &format!("docker://{a}/127.0.0.1_5001/new:3"),
    ]));
    assert_eq!(
        ok(s, &["-q", "digest", "store:127.0.0.1:5001/new:3"]).trim(),
        idx
    );
    ok(s, &["fsck"]);
    // Without --store or --root the command refuses to guess.
    let err = fails(s, &["registry", "serve", "--addr", "127.0.0.1:0"]);
    assert!(
        err.contains("--root DIR") && err.contains("--store"),
        "{err}"
    );
}

#[test]
fn the_distribution_api_in_detail() {
    let (_store, reg, srv) = raw_root();
    let a = &srv.addr;
    let base = req(a, "GET", "/v2/", &[], b"");
    assert_eq!(base.status, 200);
    assert_eq!(
        base.h("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // Monolithic upload, then HEAD and ranged GETs.
    let blob: Vec<u8> = (0..100u8).collect();
    let d = push_blob(a, "t/a", &blob);
    let head = req(a, "HEAD", &format!("/v2/t/a/blobs/{d}"), &[], b"");
    assert_eq!((head.status, head.h("content-length")), (200, Some("100")));
    assert_eq!(head.h("docker-content-digest"), Some(d.as_str()));
    let part = req(
        a,
        "GET",
        &format!("/v2/t/a/blobs/{d}"),
        &[("Range", "bytes=10-19")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &blob[10..20]);
    assert_eq!(part.h("content-range"), Some("bytes 10-19/100"));
    let tail = req(
        a,
        "GET",
        &format!("/v2/t/a/blobs/{d}"),
        &[("Range", "bytes=-5")],
        b"",
    );
    assert_eq!(tail.body, &blob[95..]);
    let bad = req(
        a,
        "GET",
        &format!("/v2/t/a/blobs/{d}"),
        &[("Range", "bytes=100-")],
        b"",
    );
    assert_eq!(
        (bad.status, bad.h("content-range")),
        (416, Some("bytes */100"))
    );

    // Chunked upload with the spec's headers; a chunk that does not continue is refused.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let start = req(a, "POST", "/v2/t/a/blobs/uploads/", &[], b"");
    assert_eq!(start.status, 202);
    assert_eq!(start.h("range"), Some("0-0"));
    let loc = start.h("location").unwrap().to_string();
    let uuid = start.h("docker-upload-uuid").unwrap().to_string();
    assert!(loc.ends_with(&uuid), "{loc}");
    let p1 = req(
        a,
        "PATCH",
        &loc,
        &[
            ("Content-Range", "0-99999"),
            ("Content-Type", "application/octet-stream"),
        ],
        &big[..100_000],
    );
    assert_eq!((p1.status, p1.h("range")), (202, Some("0-99999")));
    let wrong = req(a, "PATCH", &loc, &[("Content-Range", "5-10")], &big[5..11]);
    assert_eq!(wrong.status, 416);
    assert_eq!(wrong.h("range"), Some("0-99999"));
    let st = req(a, "GET", &loc, &[], b"");
    assert_eq!((st.status, st.h("range")), (204, Some("0-99999")));
    let p2 = req(a, "PATCH", &loc, &[], &big[100_000..200_000]);
    assert_eq!(p2.h("range"), Some("0-199999"));
    let bd = sha(&big);
    let fin = req(
        a,
        "PUT",
        &format!("{loc}?digest={bd}"),
        &[],
        &big[200_000..],
    );
    assert_eq!(fin.status, 201, "{}", fin.text());
    assert_eq!(
        fin.h("location"),
        Some(format!("/v2/t/a/blobs/{bd}").as_str())
    );
    assert_eq!(
        req(a, "GET", &format!("/v2/t/a/blobs/{bd}"), &[], b"").body,
        big
    );
    assert_eq!(req(a, "GET", &loc, &[], b"").code(), "BLOB_UPLOAD_UNKNOWN");

    // A blob of one repository is not another's until mounted.
    assert_eq!(
        req(a, "HEAD", &format!("/v2/t/b/blobs/{d}"), &[], b"").status,
        404
    );
    let m = req(
        a,
        "POST",
        &format!("/v2/t/b/blobs/uploads/?mount={d}&from=t/a"),
        &[],
        b"",
    );
    assert_eq!(
        (m.status, m.h("docker-content-digest")),
        (201, Some(d.as_str()))
    );
    assert_eq!(
        req(a, "HEAD", &format!("/v2/t/b/blobs/{d}"), &[], b"").status,
        200
    );
    let unknown = sha(b"nowhere");
    let m = req(
        a,
        "POST",
        &format!("/v2/t/b/blobs/uploads/?mount={unknown}&from=t/a"),
        &[],
        b"",
    );
    assert_eq!(m.status, 202, "a failed mount starts an upload");

    // Manifests: byte-exact by tag and digest.
    let cfg = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let cd = push_blob(a, "t/a", cfg);
    let man = manifest(&cd, cfg.len(), &[(&d, 100), (&bd, big.len())], "");
    let md = sha(man.as_bytes());
    let put = req(
        a,
        "PUT",
        "/v2/t/a/manifests/v1",
        &[("Content-Type", OCI_MANIFEST)],
        man.as_bytes(),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(put.h("docker-content-digest"), Some(md.as_str()));
    for r in ["v1", md.as_str()] {
        let g = req(
            a,
            "GET",
            &format!("/v2/t/a/manifests/{r}"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        assert_eq!(g.body, man.as_bytes());
        assert_eq!(g.h("content-type"), Some(OCI_MANIFEST));
        let h = req(a, "HEAD", &format!("/v2/t/a/manifests/{r}"), &[], b"");
        assert_eq!(h.h("content-length"), Some(man.len().to_string().as_str()));
    }

    // Referrers, with the OCI-Subject header and artifactType filtering.
    let empty = push_blob(a, "t/a", b"{}");
    for (kind, n) in [
        ("application/vnd.example.sig", 1),
        ("application/vnd.example.sbom", 2),
    ] {
        let r = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"artifactType\":\"{kind}\",\"config\":{{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"{empty}\",\"size\":2}},\"layers\":[],\"subject\":{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{md}\",\"size\":{}}},\"annotations\":{{\"n\":\"{n}\"}}}}",
            man.len()
        );
        let rd = sha(r.as_bytes());
        let p = req(
            a,
            "PUT",
            &format!("/v2/t/a/manifests/{rd}"),
            &[("Content-Type", OCI_MANIFEST)],
            r.as_bytes(),
        );
        assert_eq!(p.status, 201, "{}", p.text());
        assert_eq!(p.h("oci-subject"), Some(md.as_str()));
    }
    let all = req(a, "GET", &format!("/v2/t/a/referrers/{md}"), &[], b"");
    assert_eq!(
        all.h("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        all.json()["manifests"].as_array().unwrap().len(),
        2,
        "{}",
        all.text()
    );
    let sig = req(
        a,
        "GET",
        &format!("/v2/t/a/referrers/{md}?artifactType=application/vnd.example.sig"),
        &[],
        b"",
    );
    assert_eq!(sig.h("oci-filters-applied"), Some("artifactType"));
    let list = sig.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(list[0]["annotations"]["n"], "1");
    let none = req(
        a,
        "GET",
        &format!("/v2/t/a/referrers/{}", sha(b"x")),
        &[],
        b"",
    );
    assert_eq!(
        (
            none.status,
            none.json()["manifests"].as_array().unwrap().len()
        ),
        (200, 0)
    );

    // Tags and catalog, paginated with Link headers.
    for t in ["v2", "v3", "v4"] {
        let p = req(
            a,
            "PUT",
            &format!("/v2/t/a/manifests/{t}"),
            &[("Content-Type", OCI_MANIFEST)],
            man.as_bytes(),
        );
        assert_eq!(p.status, 201);
    }
    let page = req(a, "GET", "/v2/t/a/tags/list?n=2", &[], b"");
    assert_eq!(page.json()["tags"], serde_json::json!(["v1", "v2"]));
    let link = page.h("link").unwrap().to_string();
    assert_eq!(link, "</v2/t/a/tags/list?last=v2&n=2>; rel=\"next\"");
    let next = req(
        a,
        "GET",
        link.trim_start_matches('<').split('>').next().unwrap(),
        &[],
        b"",
    );
    assert_eq!(next.json()["tags"], serde_json::json!(["v3", "v4"]));
    assert!(next.h("link").is_none());
    let p = req(
        a,
        "PUT",
        "/v2/u/manifests/x",
        &[("Content-Type", OCI_MANIFEST)],
        man.as_bytes(),
    );
    assert_eq!(
        p.code(),
        "MANIFEST_BLOB_UNKNOWN",
        "u has none of t/a's blobs"
    );
    for b in [cd.as_str(), d.as_str(), bd.as_str()] {
        let m = req(
            a,
            "POST",
            &format!("/v2/u/blobs/uploads/?mount={b}&from=t/a"),
            &[],
            b"",
        );
        assert_eq!(m.status, 201);
    }
    let p = req(
        a,
        "PUT",
        "/v2/u/manifests/x",
        &[("Content-Type", OCI_MANIFEST)],
        man.as_bytes(),
    );
    assert_eq!(p.status, 201);
    let cat = req(a, "GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(cat.json()["repositories"], serde_json::json!(["t/a"]));
    assert_eq!(
        cat.h("link"),
        Some("</v2/_catalog?last=t%2Fa&n=1>; rel=\"next\"")
    );
    let cat = req(a, "GET", "/v2/_catalog?last=t/a", &[], b"");
    assert_eq!(cat.json()["repositories"], serde_json::json!(["u"]));
    assert_eq!(
        req(a, "GET", "/v2/nobody/tags/list", &[], b"").code(),
        "NAME_UNKNOWN"
    );

    // Deletes: a tag, then the manifest by digest, then a blob link.
    assert_eq!(
        req(a, "DELETE", "/v2/t/a/manifests/v4", &[], b"").status,
        202
    );
    assert_eq!(
        req(a, "GET", "/v2/t/a/tags/list", &[], b"").json()["tags"],
        serde_json::json!(["v1", "v2", "v3"])
    );
    assert_eq!(
        req(a, "DELETE", &format!("/v2/t/a/manifests/{md}"), &[], b"").status,
        202
    );
    let gone = req(a, "GET", "/v2/t/a/manifests/v1", &[], b"");
    assert_eq!(
        (gone.status, gone.code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert_eq!(
        req(a, "GET", "/v2/u/manifests/x", &[], b"").status,
        200,
        "u keeps its own"
    );
    assert_eq!(
        req(a, "DELETE", &format!("/v2/t/b/blobs/{d}"), &[], b"").status,
        202
    );
    assert_eq!(
        req(a, "HEAD", &format!("/v2/t/b/blobs/{d}"), &[], b"").status,
        404
    );
    assert_eq!(
        req(a, "PATCH", "/v2/t/a/tags/list", &[], b"").code(),
        "UNSUPPORTED"
    );

    // Metrics in Prometheus text.
    let metrics = req(a, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("manifold_registry_requests_total{method=\"GET\",status=\"200\"}")
            && metrics.contains("manifold_registry_errors_total"),
        "{metrics}"
    );
    // The registry directory is an OCI layout that fsck checks.
    let out = ok(reg.path().join("r").as_path(), &["fsck"]);
    assert!(!out.to_lowercase().contains("missing"), "{out}");
}

/// A client sends half of a PATCH and drops the connection; it asks where the upload stands and
/// sends the rest.
#[test]
fn a_dropped_upload_resumes_where_it_stopped() {
    let (_store, _reg, srv) = raw_root();
    let a = &srv.addr;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let half = 1_234_567;
    let start = req(a, "POST", "/v2/r/blobs/uploads/", &[], b"");
    let loc = start.h("location").unwrap().to_string();
    {
        let mut s = TcpStream::connect(a).unwrap();
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\nContent-Range: 0-{}\r\n\r\n",
            data.len(),
            data.len() - 1
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&data[..half]).unwrap();
        s.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // The server logs the request when it has dealt with the broken body.
    let started = std::time::Instant::now();
    while !srv.log_text().contains(&format!("PATCH {loc} ")) {
        assert!(
            started.elapsed().as_secs() < 60,
            "the dropped PATCH was never logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = req(a, "GET", &loc, &[], b"");
    assert_eq!(st.status, 204);
    assert_eq!(st.h("range"), Some(format!("0-{}", half - 1).as_str()));
    let cr = format!("{half}-{}", data.len() - 1);
    let d = sha(&data);
    let fin = req(
        a,
        "PUT",
        &format!("{loc}?digest={d}"),
        &[("Content-Range", &cr)],
        &data[half..],
    );
    assert_eq!(fin.status, 201, "{}", fin.text());
    assert_eq!(
        req(a, "GET", &format!("/v2/r/blobs/{d}"), &[], b"").body,
        data
    );
}

#[test]
fn hostile_input_is_refused_and_stores_nothing() {
    let (_store, reg, srv) = raw_root();
    let a = &srv.addr;
    let root = reg.path().join("r");
    let blobs_before = count_files(&root.join("blobs"));

    // Content that does not match the digest it claims.
    let claimed = sha(b"the real thing");
    let r = req(
        a,
        "POST",
        &format!("/v2/x/blobs/uploads/?digest={claimed}"),
        &[],
        b"an impostor",
    );
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(
        req(a, "HEAD", &format!("/v2/x/blobs/{claimed}"), &[], b"").status,
        404
    );
    let start = req(a, "POST", "/v2/x/blobs/uploads/", &[], b"");
    let loc = start.h("location").unwrap().to_string();
    let r = req(
        a,
        "PUT",
        &format!("{loc}?digest={claimed}"),
        &[],
        b"an impostor",
    );
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = req(a, "PUT", &format!("{loc}?digest=sha256:1234"), &[], b"");
    assert!(
        r.code() == "DIGEST_INVALID" || r.code() == "BLOB_UPLOAD_UNKNOWN",
        "{}",
        r.text()
    );
    let r = req(a, "GET", "/v2/x/blobs/sha256:not-hex", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    let r = req(a, "PUT", "/v2/x/manifests/sha256:ab", &[], b"{}");
    assert_eq!(r.code(), "DIGEST_INVALID");

    // A manifest whose digest in the URL is not its own.
    let cfg = push_blob(a, "x", b"{}");
    let man = manifest(&cfg, 2, &[], "");
    let r = req(
        a,
        "PUT",
        &format!("/v2/x/manifests/{}", sha(b"other")),
        &[("Content-Type", OCI_MANIFEST)],
        man.as_bytes(),
    );
    assert_eq!(r.code(), "DIGEST_INVALID");
    // ... that refers to blobs nobody pushed, or with a wrong size.
    let missing = manifest(&cfg, 2, &[(&sha(b"absent"), 6)], "");
    let r = req(
        a,
        "PUT",
        "/v2/x/manifests/m",
        &[("Content-Type", OCI_MANIFEST)],
        missing.as_bytes(),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    let wrong_size = manifest(&cfg, 3, &[], "");
    let r = req(
        a,
        "PUT",
        "/v2/x/manifests/m",
        &[("Content-Type", OCI_MANIFEST)],
        wrong_size.as_bytes(),
    );
    assert_eq!(r.code(), "MANIFEST_INVALID");
    // Malformed JSON, schema 1, a type that is no manifest.
    for (body, ct) in [
        (&b"{\"schemaVersion\": 2, \"config\": "[..], OCI_MANIFEST),
        (&b"[1,2,3]"[..], OCI_MANIFEST),
        (
            &b"{\"schemaVersion\":1,\"name\":\"x\",\"tag\":\"m\",\"fsLayers\":[]}"[..],
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        (
            man.as_bytes(),
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let r = req(a, "PUT", "/v2/x/manifests/m", &[("Content-Type", ct)], body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "MANIFEST_INVALID"),
            "{}",
            r.text()
        );
    }
    // A manifest far over the 4 MiB limit, declared, and streamed without a length.
    {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(format!("PUT /v2/x/manifests/big HTTP/1.1\r\nHost: {a}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 104857600\r\n\r\n").as_bytes()).unwrap();
        let _ = s.write_all(&vec![b' '; 1 << 20]);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let r = parse_resp(&raw);
        assert_eq!(r.status, 413);
    }
    {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(format!("PUT /v2/x/manifests/big HTTP/1.1\r\nHost: {a}\r\nContent-Type: {OCI_MANIFEST}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes()).unwrap();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..100 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert_eq!(parse_resp(&raw).status, 413);
    }
    // Names that try to leave the root, and other invalid names and tags.
    for path in [
        "/v2/../../etc/manifests/latest",
        "/v2/x/../../../tmp/manifests/latest",
        "/v2/x/%2e%2e/manifests/latest",
        "/v2/X/manifests/latest",
        "/v2/x//y/manifests/latest",
    ] {
        let r = req(
            a,
            "PUT",
            path,
            &[("Content-Type", OCI_MANIFEST)],
            man.as_bytes(),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "NAME_INVALID"),
            "{path}"
        );
        let r = req(
            a,
            "POST",
            &path.replace("manifests/latest", "blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(r.code(), "NAME_INVALID", "{path}");
    }
    let r = req(
        a,
        "PUT",
        "/v2/x/manifests/-bad",
        &[("Content-Type", OCI_MANIFEST)],
        man.as_bytes(),
    );
    assert_eq!(r.code(), "TAG_INVALID");
    let r = req(a, "PATCH", "/v2/x/blobs/uploads/..%2F..%2Fetc", &[], b"x");
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    // Another repository's upload session is not this one's.
    let other = req(a, "POST", "/v2/y/blobs/uploads/", &[], b"");
    let id = other.h("docker-upload-uuid").unwrap();
    let r = req(a, "PATCH", &format!("/v2/x/blobs/uploads/{id}"), &[], b"x");
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");

    // Only the one good config blob arrived; no manifest, no stray files outside the root.
    assert_eq!(count_files(&root.join("blobs")), blobs_before + 1);
    let idx = std::fs::read_to_string(root.join("index.json")).unwrap();
    assert!(!idx.contains("\"x:"), "{idx}");
    assert!(!reg.path().join("etc").exists() && !reg.path().join("tmp").exists());
    assert!(!root.join("registry/repos/X").exists());
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                n += count_files(&e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Several clients push the same blob and different tags of one repository at once, while GC
/// runs again and again; every tag is complete afterwards, and GC did remove what was garbage.
#[test]
fn concurrent_pushes_and_gc_lose_nothing() {
    let store = tempfile::tempdir().unwrap();
    let regdir = tempfile::tempdir().unwrap();
    let root = regdir.path().join("r");
    let rs = root.to_str().unwrap().to_string();
    let srv = Server::start(store.path(), &["--root", &rs], &[]);
    let a = srv.addr.clone();

    // Garbage: an image whose tag is deleted, backdated past GC's grace period.
    let t = tempfile::tempdir().unwrap();
    let old = t.path().join("old");
    fixed_layout(&old, &["garbage"], "v");
    let s = store.path();
    ok(
        s,
        &[
            "cp",
            &format!("oci:{}:v", old.display()),
            &format!("{a}/app/old:1"),
        ],
    );
    ok(s, &["delete", &format!("{a}/app/old:1")]);
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let blobs = root.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        std::fs::File::options()
            .write(true)
            .open(e.path())
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let old_blobs: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(old_blobs.len(), 4, "index, manifest, config, layer");

    // The same blob from eight clients at once.
    let same: Vec<u8> = (0..500_000u32).map(|i| (i % 199) as u8).collect();
    std::thread::scope(|sc| {
        for _ in 0..8 {
            let a = a.clone();
            let same = same.clone();
            sc.spawn(move || {
                let start = req(&a, "POST", "/v2/app/same/blobs/uploads/", &[], b"");
                let loc = start.h("location").unwrap().to_string();
                let p = req(&a, "PATCH", &loc, &[], &same[..250_000]);
                assert_eq!(p.status, 202);
                let fin = req(
                    &a,
                    "PUT",
                    &format!("{loc}?digest={}", sha(&same)),
                    &[],
                    &same[250_000..],
                );
                assert_eq!(fin.status, 201, "{}", fin.text());
            });
        }
    });
    assert_eq!(
        req(
            &a,
            "GET",
            &format!("/v2/app/same/blobs/{}", sha(&same)),
            &[],
            b""
        )
        .body,
        same
    );

    // Eight tags of one repository, each a different image, pushed at once while GC runs.
    let images: Vec<(String, String)> = (0..8)
        .map(|i| {
            let dir = t.path().join(format!("img{i}"));
            let d = fixed_layout(&dir, &[&format!("arch{i}"), "shared"], "v");
            (dir.display().to_string(), d)
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let gc_runs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                ok(s, &["--root", &rs, "registry", "gc", "--delete-untagged"]);
                gc_runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let pushers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, (dir, _))| {
                let a = a.clone();
                sc.spawn(move || {
                    let st = tempfile::tempdir().unwrap();
                    ok(
                        st.path(),
                        &[
                            "cp",
                            &format!("oci:{dir}:v"),
                            &format!("{a}/app/multi:t{i}"),
                        ],
                    );
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(gc_runs.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    ok(s, &["--root", &rs, "registry", "gc"]);
    // Every tag re-pulls whole, and the directory passes fsck.
    for (i, (_, d)) in images.iter().enumerate() {
        let st = tempfile::tempdir().unwrap();
        let out = ok(
            st.path(),
            &["pull", "--all-platforms", &format!("{a}/app/multi:t{i}")],
        );
        assert!(
            out.contains(d)
                || ok(
                    st.path(),
                    &["-q", "digest", &format!("store:{a}/app/multi:t{i}")]
                )
                .trim()
                    == d
        );
    }
    let fsck = run(&root, &["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // The deleted image's blobs (config, layer, manifest) are gone; nothing else is.
    let tags = req(&a, "GET", "/v2/app/multi/tags/list", &[], b"").json();
    assert_eq!(tags["tags"].as_array().unwrap().len(), 8);
    for p in &old_blobs {
        assert!(!p.exists(), "{} should have been collected", p.display());
    }
    let gc = ok(
        s,
        &[
            "--root", &rs, "registry", "gc", "--grace", "0s", "--format", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&gc).unwrap();
    // The uploaded-twice blob of app/same is named by no manifest: only now, with no grace, is
    // it collected.
    assert_eq!(v["blobs_removed"], 1, "{gc}");
    assert_eq!(
        req(
            &a,
            "HEAD",
            &format!("/v2/app/same/blobs/{}", sha(&same)),
            &[],
            b""
        )
        .status,
        404
    );
}

fn htpasswd(dir: &Path) -> Option<std::path::PathBuf> {
    if !peer("htpasswd") {
        return None;
    }
    let f = dir.join("htpasswd");
    sh(Command::new("htpasswd").args(["-Bbc", f.to_str().unwrap(), "alice", "secret"]));
    sh(Command::new("htpasswd").args(["-Bb", f.to_str().unwrap(), "bob", "hunter2"]));
    Some(f)
}

/// Logins in both modes, per-repository rules, and TLS with the auto CA placed in certs.d:
/// manifold's own client and skopeo (which verifies against --cert-dir).
#[test]
fn auth_modes_rules_and_tls_auto() {
    if !peer("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(htp) = htpasswd(t.path()) else {
        return;
    };
    let lay = t.path().join("lay");
    let idx = fixed_layout(&lay, &["amd64"], "v");
    for mode in ["basic", "token"] {
        let store = tempfile::tempdir().unwrap();
        let s = store.path();
        let home = tempfile::tempdir().unwrap();
        let reg = t.path().join(format!("reg-{mode}"));
        let srv = Server::start(
            s,
            &["--root", reg.to_str().unwrap()],
            &[
                "--htpasswd",
                htp.to_str().unwrap(),
                "--auth",
                mode,
                "--allow",
                "alice:*:push",
                "--allow",
                "bob:team/*:pull",
                "--allow",
                "anonymous:public/*:pull",
                "--tls",
                "auto",
            ],
        );
        let a = &srv.addr;
        // The exact line for clients is printed; follow it, into this test's HOME.
        let log = srv.log_text();
        let ca = reg.join("registry/tls/ca.crt");
        assert!(
            log.contains(&format!(
                "cp {} /etc/docker/certs.d/{a}/ca.crt",
                ca.display()
            )),
            "{log}"
        );
        let certs = home.path().join(format!(".docker/certs.d/{a}"));
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
        let home_s = home.path().to_str().unwrap();
        let cfg = home.path().join(".docker");
        let env = [("HOME", home_s), ("DOCKER_CONFIG", cfg.to_str().unwrap())];
        let m = |stdin: Option<&str>, args: &[&str]| run_with(s, &env, stdin, args);
        let okm = |stdin: Option<&str>, args: &[&str]| {
            let o = m(stdin, args);
            assert!(
                o.status.success(),
                "{mode}: manifold {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).to_string()
        };
        let src = format!("oci:{}:v", lay.display());
        let team = format!("{a}/team/app:1");
        // Nobody logged in: refused.
        let o = m(None, &["cp", &src, &team]);
        assert!(!o.status.success(), "{mode}: anonymous push went through");
        let o = m(
            Some("wrong\n"),
            &["login", a, "-u", "alice", "--password-stdin"],
        );
        assert!(!o.status.success(), "{mode}: a wrong password logged in");
        okm(
            Some("secret\n"),
            &["login", a, "-u", "alice", "--password-stdin"],
        );
        okm(None, &["cp", &src, &team]);
        okm(None, &["cp", &src, &format!("{a}/public/app:1")]);
        // bob may pull team/* but push nowhere.
        okm(
            Some("hunter2\n"),
            &["login", a, "-u", "bob", "--password-stdin"],
        );
        assert_eq!(okm(None, &["-q", "digest", &team]).trim(), idx);
        let o = m(None, &["cp", &src, &format!("{a}/team/app:2")]);
        assert!(!o.status.success(), "{mode}: bob pushed");
        let o = m(None, &["-q", "digest", &format!("{a}/other/app:1")]);
        assert!(!o.status.success());
        // skopeo verifies the server against the CA, with and without credentials.
        let certdir = certs.to_str().unwrap();
        let out = sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--cert-dir",
            certdir,
            "--creds",
            "bob:hunter2",
            &format!("docker://{team}"),
        ]));
        assert_eq!(sha(out.as_bytes()), idx);
        let out = sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--cert-dir",
            certdir,
            "--no-creds",
            &format!("docker://{a}/public/app:1"),
        ]));
        assert_eq!(sha(out.as_bytes()), idx, "anonymous may pull public/*");
        let o = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--cert-dir",
                certdir,
                "--no-creds",
                &format!("docker://{team}"),
            ])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{mode}: anonymous read team/*");
        // Without the CA, TLS is refused.
        let o = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--creds",
                "bob:hunter2",
                &format!("docker://{team}"),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("certificate"), "{err}");
    }
}

/// SIGTERM stops the server cleanly (exit 0), after it finished a download in progress.
#[test]
fn stops_cleanly_on_sigterm_finishing_running_requests() {
    let (_store, _reg, mut srv) = raw_root();
    let a = srv.addr.clone();
    assert_eq!(req(&a, "GET", "/v2/", &[], b"").status, 200);
    let big: Vec<u8> = (0..40_000_000u32).map(|i| (i % 241) as u8).collect();
    let d = push_blob(&a, "big", &big);
    let mut s = TcpStream::connect(&a).unwrap();
    s.write_all(
        format!("GET /v2/big/blobs/{d} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).unwrap();
    assert!(n > 0);
    // The server is mid-body (40 MB do not fit in socket buffers) when it is told to stop.
    let _ = Command::new("kill").arg(srv.pid().to_string()).status();
    let mut raw = first[..n].to_vec();
    s.read_to_end(&mut raw).unwrap();
    let r = parse_resp(&raw);
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "the download was cut short: {} of {} bytes",
        r.body.len(),
        big.len()
    );
    let st = srv.stop();
    assert!(st.success(), "{st}");
    assert!(
        srv.log_text().contains("shutting down"),
        "{}",
        srv.log_text()
    );
}

/// A pull-through mirror of a registry that wants a token login (a second instance stands for
/// Docker Hub): it fetches and verifies what it lacks, re-checks tags after their TTL, refuses
/// pushes, and keeps serving what it has when upstream is gone.
#[test]
fn pull_through_mirror() {
    if !peer("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(htp) = htpasswd(t.path()) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let mut upstream = Server::start(
        s,
        &["--root", t.path().join("up").to_str().unwrap()],
        &["--htpasswd", htp.to_str().unwrap(), "--auth", "token"],
    );
    let up = upstream.addr.clone();
    let cfg = t.path().join("docker");
    let env = [("DOCKER_CONFIG", cfg.to_str().unwrap())];
    let o = run_with(
        s,
        &env,
        Some("secret\n"),
        &["login", &up, "-u", "alice", "--password-stdin"],
    );
    assert!(o.status.success());
    let v1 = fixed_layout(&t.path().join("v1"), &["amd64", "arm64"], "v");
    let v2 = fixed_layout(&t.path().join("v2"), &["amd64", "riscv64"], "v");
    let push = |dir: &str| {
        let o = run_with(
            s,
            &env,
            None,
            &[
                "cp",
                &format!("oci:{}:v", t.path().join(dir).display()),
                &format!("{up}/library/app:1"),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    push("v1");
    let mreg = t.path().join("mirror");
    let mirror = Server::start(
        s,
        &["--root", mreg.to_str().unwrap()],
        &[
            "--proxy",
            &format!("http://{up}"),
            "--proxy-username",
            "alice",
            "--proxy-password",
            "secret",
            "--proxy-tag-ttl",
            "0s",
        ],
    );
    let m = &mirror.addr;
    let inspect = || {
        sha(sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{m}/library/app:1"),
        ]))
        .as_bytes())
    };
    let copy_out = |name: &str| {
        sh(Command::new("skopeo").args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{m}/library/app:1"),
            &format!("oci:{}:x", t.path().join(name).display()),
        ]));
    };
    assert_eq!(inspect(), v1);
    copy_out("out1");
    // Everything came through and was verified into the mirror's own directory.
    let f = run(&mreg, &["fsck"]);
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stdout));
    assert!(
        count_files(&mreg.join("blobs")) >= 7,
        "index, 2 manifests, 2 configs, 2 layers"
    );
    // A new image under the same tag upstream: with a TTL of 0 the mirror follows at once.
    push("v2");
    assert_eq!(inspect(), v2);
    copy_out("out2");
    let r = req(
        m,
        "PUT",
        "/v2/library/app/manifests/x",
        &[("Content-Type", OCI_MANIFEST)],
        b"{}",
    );
    assert_eq!((r.status, r.code().as_str()), (405, "UNSUPPORTED"));
    // Upstream gone: what the mirror has is still served, what it lacks is an error.
    upstream.stop();
    assert_eq!(inspect(), v2);
    copy_out("out3");
    let r = req(m, "GET", "/v2/library/other/manifests/1", &[], b"");
    assert!(r.status >= 400, "{}", r.status);
}

/// buildah pulls from and pushes to it; `manifold build --push` pushes a multi-platform build.
#[test]
fn buildah_and_manifold_build_push() {
    if !peer("buildah") || !peer("skopeo") {
        return;
    }
    let (store, _reg, srv) = raw_root();
    let s = store.path();
    let a = &srv.addr;
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    let idx = fixed_layout(&lay, &["amd64", "arm64"], "v");
    ok(
        s,
        &[
            "cp",
            &format!("oci:{}:v", lay.display()),
            &format!("{a}/base/img:1"),
        ],
    );
    let b = |args: &[&str]| {
        sh(Command::new("buildah")
            .arg("--root")
            .arg(t.path().join("broot"))
            .arg("--runroot")
            .arg(t.path().join("brun"))
            .args(["--storage-driver", "vfs"])
            .args(args))
    };
    b(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{a}/base/img:1"),
    ]);
    b(&[
        "push",
        "--tls-verify=false",
        &format!("{a}/base/img:1"),
        &format!("docker://{a}/buildah/img:1"),
    ]);
    let cfg = sh(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{a}/buildah/img:1"),
    ]));
    assert!(cfg.contains("\"architecture\""), "{cfg}");

    // manifold build --push: a FROM of the registry's own image, per platform, pushed back.
    let ctx = t.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("note.txt"), "built\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {a}/base/img:1\nCOPY note.txt /note.txt\n"),
    )
    .unwrap();
    let app = format!("{a}/built/app:1");
    ok(
        s,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &app,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{app}"),
    ]));
    assert!(raw.contains("arm64") && raw.contains("amd64"), "{raw}");
    assert_ne!(sha(raw.as_bytes()), idx);
}

/// A fault-injecting mirror: answers `/v2/`, serves a manifest whose bytes are not what any
/// digest asks for, and lacks every blob.
fn lying_mirror() -> (
    String,
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let h = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let (status, body) = if path == "/v2/" {
                ("200 OK", "{}".to_string())
            } else if path.contains("/manifests/") {
                (
                    "200 OK",
                    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_string(),
                )
            } else {
                (
                    "404 Not Found",
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#.to_string(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, h, stop)
}

/// manifold's own client with `[registry."X"] mirrors`: pulls go through `registry serve
/// --proxy` (docker.io names too, without the network), fall back to the registry when the
/// mirror is stopped or serves what does not verify, and pushes go to the registry.
#[test]
fn client_mirrors_with_fallback() {
    let Some(upstream) = Registry::start(None) else {
        return;
    };
    let up = upstream.addr.clone();
    let t = tempfile::tempdir().unwrap();
    let idx = fixed_layout(&t.path().join("lay"), &["amd64", "arm64"], "v");
    let lay = format!("oci:{}:v", t.path().join("lay").display());
    ok(t.path(), &["cp", &lay, &format!("{up}/library/app:1")]);

    let mreg = t.path().join("mirror");
    let mut mirror = Server::start(
        t.path(),
        &["--root", mreg.to_str().unwrap()],
        &["--proxy", &format!("http://{up}")],
    );
    let m = mirror.addr.clone();
    let cfg = t.path().join("registries.toml");
    std::fs::write(
        &cfg,
        format!(
            "[registry.\"{up}\"]\nmirrors = [\"{m}\"]\n\n[registry.\"docker.io\"]\nmirrors = [\"http://{m}\"]\n"
        ),
    )
    .unwrap();
    let conf_dir = t.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let pull = |store: &str, image: &str, with_flag: bool| {
        let store = t.path().join(store);
        let mut args = vec![];
        if with_flag {
            args.extend(["--registry-config", cfg.to_str().unwrap()]);
        }
        args.extend(["pull", "--platform", "linux/arm64", image]);
        // Without the flag the config comes from registries.toml in MANIFOLD_CONFIG.
        let o = run_with(
            &store,
            &[("MANIFOLD_CONFIG", conf_dir.to_str().unwrap())],
            None,
            &args,
        );
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "pull {image}: {err}");
        let f = run(&store, &["fsck"]);
        assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stdout));
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };

    // Through the mirror: it fetched, verified and stored what was pulled.
    let (out, err) = pull("s1", &format!("{up}/library/app:1"), true);
    assert!(out.contains(&idx), "{out}");
    assert!(
        err.contains(&format!("mirror {m} served 2 manifests, 2 blobs of {up}")),
        "{err}"
    );
    assert!(!err.contains("itself served"), "{err}");
    assert!(mirror
        .log_text()
        .contains("GET /v2/library/app/manifests/1 200"));
    assert!(
        count_files(&mreg.join("blobs")) >= 4,
        "index, manifest, config, layer"
    );

    // A docker.io name maps to the mirror (whose upstream stands for Docker Hub here): no
    // request leaves the machine, and the config file comes from the config dir.
    std::fs::copy(&cfg, conf_dir.join("registries.toml")).unwrap();
    let (out, err) = pull("s2", "docker.io/library/app:1", false);
    assert!(out.contains(&idx), "{out}");
    assert!(
        err.contains(&format!(
            "mirror {m} served 2 manifests, 2 blobs of docker.io"
        )),
        "{err}"
    );
    assert!(!err.contains("registry-1.docker.io"), "{err}");

    // A build's FROM goes the same way.
    let ctx = t.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("note.txt"), "built\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM docker.io/library/app:1\nCOPY note.txt /note.txt\n",
    )
    .unwrap();
    let o = run_with(
        &t.path().join("s5"),
        &[("MANIFOLD_CONFIG", conf_dir.to_str().unwrap())],
        None,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/arm64",
            "-t",
            "built:1",
            ctx.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("mirror {m} served")) && err.contains("of docker.io"),
        "{err}"
    );

    // Pushes go to the registry itself, never to the mirror (which refuses them).
    let before = mirror.log_text();
    ok(
        t.path(),
        &[
            "--registry-config",
            cfg.to_str().unwrap(),
            "cp",
            &lay,
            &format!("{up}/pushed/app:1"),
        ],
    );
    let after = mirror.log_text();
    assert!(!after[before.len()..].contains("/v2/pushed/"), "{after}");

    // The mirror stopped: the pull falls back to the registry and says so.
    mirror.stop();
    let (out, err) = pull("s3", &format!("{up}/library/app:1"), true);
    assert!(out.contains(&idx), "{out}");
    assert!(
        err.contains(&format!("mirror {m} of {up} could not serve")),
        "{err}"
    );
    assert!(err.contains(&format!("{up} itself served")), "{err}");

    // A mirror whose manifest does not verify and which lacks the blobs: passed over.
    let (liar, h, stop) = lying_mirror();
    std::fs::write(
        &cfg,
        format!("[registry.\"{up}\"]\nmirrors = [\"{liar}\"]\n"),
    )
    .unwrap();
    let (out, err) = pull("s4", &format!("{up}/library/app@{idx}"), true);
    assert!(out.contains(&idx), "{out}");
    assert!(
        err.contains(&format!("mirror {liar} of {up} could not serve")),
        "{err}"
    );
    assert!(
        err.contains("sha256:"),
        "the digest mismatch is named: {err}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    h.join().unwrap();

    // A broken config file is an error that names it.
    std::fs::write(&cfg, "[registry.\"docker.io\"]\nmirror = [\"x\"]\n").unwrap();
    let e = fails(
        t.path(),
        &["--registry-config", cfg.to_str().unwrap(), "pull", "x:1"],
    );
    assert!(e.contains("registries.toml") && e.contains("mirror"), "{e}");
}
