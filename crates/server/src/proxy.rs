//! Pull-through mirror: what the registry lacks it fetches from an upstream registry, verifies
//! against its digest, stores, and then serves like anything pushed. Tags are re-checked upstream
//! once their TTL has passed; when upstream is unreachable the stored tag is served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use futures_util::StreamExt;
use oci::Digest;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::route::Reference;
use crate::App;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `https://registry-1.docker.io` or any registry's base URL.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tag_ttl: Duration,
}

pub(crate) struct Upstream {
    cfg: ProxyConfig,
    client: reqwest::Client,
    /// Bearer tokens by scope.
    tokens: Mutex<HashMap<String, String>>,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn upstream_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "UNKNOWN",
        format!("{what} from the upstream registry failed: {e}"),
    )
}

/// `key="value"` parameters of a challenge.
fn challenge_params(h: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = h.split_once(' ').map(|x| x.1).unwrap_or("");
    let mut s = rest;
    while let Some((k, v)) = s.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, after) = if let Some(q) = v.strip_prefix('"') {
            match q.split_once('"') {
                Some((val, after)) => (val.to_string(), after),
                None => (q.to_string(), ""),
            }
        } else {
            match v.split_once(',') {
                Some((val, after)) => (val.trim().to_string(), after),
                None => (v.trim().to_string(), ""),
            }
        };
        out.insert(k, val);
        s = after;
    }
    out
}

impl Upstream {
    pub fn new(cfg: ProxyConfig) -> Result<Upstream, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot make the upstream client: {e}"))?;
        Ok(Upstream {
            cfg: ProxyConfig {
                url: cfg.url.trim_end_matches('/').to_string(),
                ..cfg
            },
            client,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn tag_ttl(&self) -> Duration {
        self.cfg.tag_ttl
    }

    fn basic(&self) -> Option<String> {
        let u = self.cfg.username.as_ref()?;
        let p = self.cfg.password.clone().unwrap_or_default();
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
    }

    /// GET `path` upstream, answering a Basic or Bearer challenge once.
    async fn get(
        &self,
        path: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}{path}", self.cfg.url);
        let mut auth = self.tokens.lock().ok().and_then(|t| t.get(scope).cloned());
        for _ in 0..2 {
            let mut rq = self.client.get(&url);
            if let Some(a) = accept {
                rq = rq.header("accept", a);
            }
            if let Some(a) = &auth {
                rq = rq.header("authorization", a);
            }
            let resp = rq.send().await.map_err(|e| upstream_err(path, e))?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let ch = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if ch.to_ascii_lowercase().starts_with("bearer") {
                let p = challenge_params(&ch);
                let realm = p.get("realm").cloned().unwrap_or_default();
                let mut rq = self.client.get(&realm).query(&[("scope", scope)]);
                if let Some(svc) = p.get("service") {
                    rq = rq.query(&[("service", svc)]);
                }
                if let Some(b) = self.basic() {
                    rq = rq.header("authorization", b);
                }
                let tr = rq.send().await.map_err(|e| upstream_err("token", e))?;
                if !tr.status().is_success() {
                    return Err(upstream_err("token", tr.status()));
                }
                let v: serde_json::Value = tr.json().await.map_err(|e| upstream_err("token", e))?;
                let tok = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .unwrap_or("")
                    .to_string();
                let a = format!("Bearer {tok}");
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(scope.to_string(), a.clone());
                }
                auth = Some(a);
            } else {
                auth = self.basic();
                if auth.is_none() {
                    return Ok(resp);
                }
            }
        }
        Err(upstream_err(
            path,
            "the upstream registry refused our credentials",
        ))
    }
}

fn tag_file(app: &App, repo: &str, tag: &str) -> std::path::PathBuf {
    app.storage
        .state_dir()
        .join("repos")
        .join(repo)
        .join("_proxy_tags")
        .join(tag)
}

/// Makes sure the manifest `r` of `repo` is stored, fetching it when missing or (for a tag)
/// older than the TTL.
pub(crate) async fn ensure_manifest(
    app: &Arc<App>,
    up: &Upstream,
    repo: &str,
    r: &Reference,
) -> Result<(), ApiError> {
    let have = {
        let (a, repo, r) = (app.clone(), repo.to_string(), r.clone());
        tokio::task::spawn_blocking(move || a.storage.resolve(&repo, &r))
            .await
            .map_err(ApiError::internal)??
            .is_some()
    };
    let fresh = match r {
        Reference::Digest(_) => have,
        Reference::Tag(t) => {
            have && std::fs::metadata(tag_file(app, repo, t))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age < up.tag_ttl())
        }
    };
    if fresh {
        return Ok(());
    }
    let fetched = fetch_manifest(app, up, repo, r).await;
    match fetched {
        Ok(()) => Ok(()),
        Err(e) if have => {
            eprintln!("upstream: {}; serving the stored {repo}:{r}", e.message);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn fetch_manifest(
    app: &Arc<App>,
    up: &Upstream,
    repo: &str,
    r: &Reference,
) -> Result<(), ApiError> {
    let scope = format!("repository:{repo}:pull");
    let resp = up
        .get(&format!("/v2/{repo}/manifests/{r}"), &scope, Some(ACCEPT))
        .await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ApiError::manifest_unknown(&r.to_string()));
    }
    if !resp.status().is_success() {
        return Err(upstream_err("manifest", resp.status()));
    }
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string());
    let claimed = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok());
    if resp.content_length().unwrap_or(0) > crate::storage::MAX_MANIFEST as u64 {
        return Err(upstream_err("manifest", "it is larger than 4 MiB"));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| upstream_err("manifest", e))?;
    if bytes.len() > crate::storage::MAX_MANIFEST {
        return Err(upstream_err("manifest", "it is larger than 4 MiB"));
    }
    let got = Digest::sha256_of(&bytes);
    if let Some(c) = claimed.filter(|c| c.algorithm() == got.algorithm()) {
        if c != got {
            return Err(upstream_err(
                "manifest",
                format!("it hashes to {got}, not {c} as the upstream said"),
            ));
        }
    }
    if let Reference::Digest(want) = r {
        if Digest::of(want.algorithm(), &bytes) != *want {
            return Err(upstream_err(
                "manifest",
                format!("it does not hash to {want}"),
            ));
        }
    }
    let (a, repo2, r2) = (app.clone(), repo.to_string(), r.clone());
    tokio::task::spawn_blocking(move || {
        a.storage
            .put_proxied_manifest(&repo2, &r2, bytes.to_vec(), ct.as_deref())
    })
    .await
    .map_err(ApiError::internal)??;
    if let Reference::Tag(t) = r {
        let p = tag_file(app, repo, t);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(p, b"");
    }
    Ok(())
}

/// Makes sure blob `d` is stored and linked to `repo`, fetching and verifying it if not.
pub(crate) async fn ensure_blob(
    app: &Arc<App>,
    up: &Upstream,
    repo: &str,
    d: &Digest,
) -> Result<(), ApiError> {
    let have = {
        let (a, repo, d) = (app.clone(), repo.to_string(), d.clone());
        tokio::task::spawn_blocking(move || a.storage.blob_in_repo(&repo, &d))
            .await
            .map_err(ApiError::internal)??
    };
    if have {
        return Ok(());
    }
    let scope = format!("repository:{repo}:pull");
    let resp = up
        .get(&format!("/v2/{repo}/blobs/{d}"), &scope, None)
        .await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ApiError::blob_unknown(d));
    }
    if !resp.status().is_success() {
        return Err(upstream_err("blob", resp.status()));
    }
    let id = app.storage.start_upload(repo)?;
    let file = tokio::fs::File::create(app.storage.upload_data(&id)).await?;
    let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = d.algorithm().hasher();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                app.storage.cancel_upload(&id);
                return Err(upstream_err("blob", e));
            }
        };
        hasher.update(&chunk);
        w.write_all(&chunk).await?;
    }
    w.flush().await?;
    let (a, repo2, d2) = (app.clone(), repo.to_string(), d.clone());
    let hashed = hasher.finish();
    tokio::task::spawn_blocking(move || a.storage.finish_upload(&repo2, &id, &d2, Some(hashed)))
        .await
        .map_err(ApiError::internal)?
}
