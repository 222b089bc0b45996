//! Hostile or broken peers, played by small fake servers (fault injection): a registry whose
//! upload `Location` names another host must not get our credentials sent there; a server that
//! trickles a blob a byte a second is given up on after a stall, and the download resumes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use manifold_registry::{Client, ClientOptions, Credential};
use oci::{Descriptor, Digest, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::options;

/// One request as a fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

/// What a handler answers: status, headers, body, and whether to trickle the body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trickle: bool,
}

fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
    Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        body,
        trickle: false,
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

struct Fake {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(handler: Handler) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((c, _)) = l.accept().await else { return };
                let (h, s) = (handler.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(c, h, s).await;
                });
            }
        });
        Fake { addr, seen, task }
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut c: TcpStream, h: Handler, seen: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut b = [0u8; 4096];
            let n = c.read(&mut b).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&b[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut b = [0u8; 65536];
            let n = c.read(&mut b).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&b[..n]);
        }
        buf.drain(..head_end + len);
        let req = Seen {
            method,
            path,
            headers,
        };
        seen.lock().unwrap().push(req.clone());
        let a = h(&req);
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            a.status,
            a.body.len()
        );
        for (k, v) in &a.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        c.write_all(out.as_bytes()).await?;
        if a.trickle {
            for b in &a.body {
                c.write_all(&[*b]).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        } else {
            c.write_all(&a.body).await?;
        }
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn credentials_stay_with_the_host_that_issued_them() {
    // The second host: wherever the registry's upload Location points. It records what it got.
    let elsewhere = Fake::start(Arc::new(|q: &Seen| {
        let d = q
            .path
            .split("digest=")
            .nth(1)
            .unwrap_or("")
            .replace("%3A", ":");
        answer(201, &[("Docker-Content-Digest", d)], Vec::new())
    }))
    .await;
    let other = elsewhere.addr.clone();
    let want = basic("alice", "s3cret");
    let w = want.clone();
    let registry = Fake::start(Arc::new(move |q: &Seen| {
        if q.headers.get("authorization") != Some(&w) {
            return answer(
                401,
                &[("WWW-Authenticate", "Basic realm=\"fake\"".into())],
                Vec::new(),
            );
        }
        match (q.method.as_str(), q.path.as_str()) {
            ("GET", "/v2/") => answer(200, &[], Vec::new()),
            ("HEAD", _) => answer(404, &[], Vec::new()),
            ("POST", p) if p.starts_with("/v2/app/blobs/uploads/") => answer(
                202,
                &[("Location", format!("http://{other}/upload/1"))],
                Vec::new(),
            ),
            _ => answer(404, &[], Vec::new()),
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(options(dir.path())).unwrap();
    client.set_credential(
        &registry.addr,
        Credential::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        },
    );
    let data = b"layer bytes".to_vec();
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let r = Reference::parse(&format!("{}/app:1", registry.addr)).unwrap();
    client
        .put_blob(&r, &desc, &Bytes::from(data))
        .await
        .expect("the upload completes on the other host");
    let there = elsewhere.seen();
    assert!(
        there.iter().any(|q| q.method == "PUT"),
        "the upload went to the Location: {there:?}"
    );
    for q in &there {
        assert!(
            !q.headers.contains_key("authorization"),
            "credentials for {} were sent to {}: {q:?}",
            registry.addr,
            elsewhere.addr
        );
    }
    assert!(
        registry
            .seen()
            .iter()
            .any(|q| q.headers.get("authorization") == Some(&want)),
        "the registry itself got them"
    );
}

/// A fake registry serving one blob: the first `trickles` GETs send the headers and then a
/// byte a second; later ones (and ranged ones) answer at once.
async fn trickling(data: Vec<u8>, trickles: usize) -> Fake {
    let count = Arc::new(Mutex::new(0usize));
    Fake::start(Arc::new(move |q: &Seen| {
        if q.path == "/v2/" {
            return answer(200, &[], Vec::new());
        }
        let mut n = count.lock().unwrap();
        *n += 1;
        let from: usize = q
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        let body = data[from.min(data.len())..].to_vec();
        let mut a = if from > 0 {
            answer(
                206,
                &[(
                    "Content-Range",
                    format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
                )],
                body,
            )
        } else {
            answer(200, &[], body)
        };
        a.trickle = *n <= trickles;
        a
    }))
    .await
}

fn stall_options(dir: &std::path::Path, retries: u32) -> ClientOptions {
    ClientOptions {
        stall_timeout: Duration::from_secs(2),
        max_retries: retries,
        ..options(dir)
    }
}

#[tokio::test]
async fn a_trickling_download_is_given_up_after_a_stall_and_resumes() {
    let data = common::pseudo_random(9, 64 << 10);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let fake = trickling(data.clone(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(stall_options(dir.path(), 3)).unwrap();
    let r = Reference::parse(&format!("{}/slow:1", fake.addr)).unwrap();
    let mut s = client.get_blob(&r, &desc).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .await
        .expect("resumed after the stall");
    assert!(got == data);
    assert_eq!(s.resumes(), 1);
    let gets: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|q| q.method == "GET" && q.path != "/v2/")
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let range = gets[1].headers.get("range").cloned().unwrap_or_default();
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "resumed with {range:?}"
    );
}

#[tokio::test]
async fn a_peer_that_only_trickles_fails_naming_host_and_blob() {
    let data = common::pseudo_random(10, 64 << 10);
    let desc = Descriptor::new(
        oci::media_type::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let fake = trickling(data, usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(stall_options(dir.path(), 1)).unwrap();
    let r = Reference::parse(&format!("{}/slow:1", fake.addr)).unwrap();
    let mut s = client.get_blob(&r, &desc).await.unwrap();
    let mut got = Vec::new();
    let e = s.read_to_end(&mut got).await.unwrap_err().to_string();
    assert!(e.contains(&fake.addr), "{e}");
    assert!(e.contains(&desc.digest.to_string()), "{e}");
    assert!(e.contains("stalled"), "{e}");
}
