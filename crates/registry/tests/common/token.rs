//! A token server for distribution's `auth: token` (the Docker registry v2 token protocol): GET
//! with Basic credentials or anonymous, and the OAuth2 refresh-token POST. Tokens are RS256 JWTs
//! signed with `openssl dgst`, carrying the signing certificate in `x5c`; the registry trusts
//! that certificate through its `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SERVICE: &str = "manifold-test-registry";
pub const ISSUER: &str = "manifold-test-issuer";

#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    pub scopes: Vec<String>,
    pub grant_type: Option<String>,
}

struct Inner {
    key: PathBuf,
    x5c: String,
    users: Vec<(String, String)>,
    refresh_tokens: Vec<String>,
    seen: Mutex<Vec<TokenRequest>>,
    dir: PathBuf,
}

pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    pub async fn start(
        dir: &Path,
        users: Vec<(String, String)>,
        refresh_tokens: Vec<String>,
    ) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        super::run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=manifold-token-issuer"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let der = super::run(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert),
        )
        .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            key,
            x5c,
            users,
            refresh_tokens,
            seen: Mutex::new(Vec::new()),
            dir: dir.to_path_buf(),
        });
        let i2 = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let i = i2.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, &i).await;
                });
            }
        });
        TokenServer {
            realm: format!("http://{addr}/token"),
            cert,
            inner,
            task,
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn serve(mut sock: TcpStream, inner: &Inner) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut tmp = [0u8; 4096];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    let mut basic = None;
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization: basic ") {
            let enc = l["authorization: basic ".len()..].trim();
            let dec = base64::engine::general_purpose::STANDARD
                .decode(enc)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&dec).to_string();
            basic = text
                .split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()));
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        let mut tmp = [0u8; 4096];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let (params, form) = if method == "POST" {
        (pairs(&String::from_utf8_lossy(&body)), true)
    } else {
        (pairs(query), false)
    };
    let get = |k: &str| {
        params
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
    };
    let mut scopes: Vec<String> = if form {
        get("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect()
    };
    scopes.sort();
    let user = if form {
        let rt = get("refresh_token").unwrap_or_default();
        if get("grant_type").as_deref() != Some("refresh_token")
            || !inner.refresh_tokens.contains(&rt)
        {
            return reply(&mut sock, 401, r#"{"error":"invalid_grant"}"#).await;
        }
        Some("refresh-user".to_string())
    } else {
        match basic {
            Some((u, p)) => {
                if !inner.users.iter().any(|(uu, pp)| *uu == u && *pp == p) {
                    return reply(&mut sock, 401, r#"{"details":"bad credentials"}"#).await;
                }
                Some(u)
            }
            None => None,
        }
    };
    if let Ok(mut s) = inner.seen.lock() {
        s.push(TokenRequest {
            method: method.clone(),
            user: user.clone(),
            scopes: scopes.clone(),
            grant_type: get("grant_type"),
        });
    }
    // Authenticated users get what they ask for; anonymous users get nothing.
    let access: Vec<serde_json::Value> = if user.is_some() {
        scopes
            .iter()
            .filter_map(|s| {
                let (rest, actions) = s.rsplit_once(':')?;
                let (typ, name) = rest.split_once(':')?;
                Some(serde_json::json!({"type": typ, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [inner.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user.clone().unwrap_or_default(), "aud": SERVICE,
        "exp": now + 300, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", scopes.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = {
        let f = tempfile::NamedTempFile::new_in(&inner.dir)?;
        std::fs::write(f.path(), &signing_input)?;
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&inner.key)
            .arg(f.path())
            .output()?;
        out.stdout
    };
    let jwt = format!("{signing_input}.{}", b64url(&sig));
    let body = if form {
        serde_json::json!({"access_token": jwt, "expires_in": 300, "refresh_token": get("refresh_token")})
    } else {
        serde_json::json!({"token": jwt, "expires_in": 300})
    };
    reply(&mut sock, 200, &body.to_string()).await
}

async fn reply(sock: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}
