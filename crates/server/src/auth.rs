//! Who may do what: htpasswd users (bcrypt), Basic or Bearer tokens from the built-in token
//! endpoint, and per-repository pull/push rules.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ApiError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const TOKEN_TTL: u64 = 300;
pub const SERVICE: &str = "manifold-registry";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Pull,
    Push,
}

/// `USER:REPOSITORY:pull|push`. USER `*` is anyone logged in, `anonymous` anyone at all;
/// REPOSITORY is a name, `PREFIX/*`, or `*`. Push includes pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub user: String,
    pub pattern: String,
    pub access: Access,
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [user, pattern, access] = parts.as_slice() else {
            return Err(format!(
                "access rule {s:?} is not USER:REPOSITORY:pull|push (e.g. alice:team/*:push, anonymous:public/*:pull)"
            ));
        };
        let access = match *access {
            "pull" => Access::Pull,
            "push" => Access::Push,
            other => {
                return Err(format!(
                    "access rule {s:?}: {other:?} is neither pull nor push"
                ))
            }
        };
        Ok(Rule {
            user: user.to_string(),
            pattern: pattern.to_string(),
            access,
        })
    }
}

impl Rule {
    fn matches(&self, user: Option<&str>, repo: &str) -> bool {
        let who = match user {
            Some(u) => self.user == "*" || self.user == u || self.user == "anonymous",
            None => self.user == "anonymous",
        };
        let what = match self.pattern.strip_suffix('*') {
            Some(prefix) => repo.starts_with(prefix),
            None => self.pattern == repo,
        };
        who && what
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Basic,
    Token,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub htpasswd: std::path::PathBuf,
    pub mode: Mode,
    /// None: every user who logs in may push anywhere, and nobody else may do anything.
    pub rules: Vec<Rule>,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    User(String),
    Token(Claims),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    sub: Option<String>,
    exp: u64,
    access: BTreeMap<String, Access2>,
    #[serde(default)]
    catalog: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq, PartialOrd)]
#[serde(rename_all = "lowercase")]
enum Access2 {
    Pull,
    Push,
}

pub struct Auth {
    cfg: AuthConfig,
    users: HashMap<String, String>,
    key: Vec<u8>,
    /// bcrypt is slow by design; a verified (user, sha256(password)) is remembered.
    verified: Mutex<HashMap<(String, [u8; 32]), bool>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn load_htpasswd(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((u, h)) = line.split_once(':') else {
            return Err(format!("{}:{}: not USER:HASH", path.display(), i + 1));
        };
        if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
            return Err(format!(
                "{}:{}: the entry for {u:?} is not bcrypt; make it with `htpasswd -B`",
                path.display(),
                i + 1
            ));
        }
        users.insert(u.to_string(), h.to_string());
    }
    Ok(users)
}

impl Auth {
    pub fn new(cfg: AuthConfig) -> Result<Auth, String> {
        let users = load_htpasswd(&cfg.htpasswd)?;
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Ok(Auth {
            cfg,
            users,
            key,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    fn check_password(&self, user: &str, pass: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let mut h = <Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, pass.as_bytes());
        let k = (user.to_string(), sha2::Digest::finalize(h).into());
        if let Some(v) = self.verified.lock().ok().and_then(|m| m.get(&k).copied()) {
            return v;
        }
        let ok = bcrypt::verify(pass, hash).unwrap_or(false);
        if let Ok(mut m) = self.verified.lock() {
            m.insert(k, ok);
        }
        ok
    }

    /// The user named by valid Basic credentials; Err when credentials are given but wrong.
    fn basic_user(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        let Some(b) = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
        else {
            return Ok(None);
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|_| ())?;
        let text = String::from_utf8(raw).map_err(|_| ())?;
        let (u, p) = text.split_once(':').ok_or(())?;
        if u.is_empty() && p.is_empty() {
            return Ok(None);
        }
        if self.check_password(u, p) {
            Ok(Some(u.to_string()))
        } else {
            Err(())
        }
    }

    /// What rules give `user` on `repo`.
    fn allowed(&self, user: Option<&str>, repo: &str) -> Option<Access> {
        if self.cfg.rules.is_empty() {
            return user.map(|_| Access::Push);
        }
        self.cfg
            .rules
            .iter()
            .filter(|r| r.matches(user, repo))
            .map(|r| r.access)
            .max()
    }

    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Identity, ()> {
        match self.cfg.mode {
            Mode::Basic => Ok(match self.basic_user(headers)? {
                Some(u) => Identity::User(u),
                None => Identity::Anonymous,
            }),
            Mode::Token => {
                let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
                    return Ok(Identity::Anonymous);
                };
                let Some(t) = v.strip_prefix("Bearer ") else {
                    return Ok(Identity::Anonymous);
                };
                self.verify_token(t.trim()).map(Identity::Token).ok_or(())
            }
        }
    }

    /// May `id` do `access` on `repo`?
    pub fn can(&self, id: &Identity, repo: &str, access: Access) -> bool {
        match id {
            Identity::Anonymous => self.allowed(None, repo) >= Some(access),
            Identity::User(u) => self.allowed(Some(u), repo) >= Some(access),
            Identity::Token(c) => {
                let want = match access {
                    Access::Pull => Access2::Pull,
                    Access::Push => Access2::Push,
                };
                c.access.get(repo).is_some_and(|a| *a >= want)
            }
        }
    }

    pub fn logged_in(&self, id: &Identity) -> bool {
        match id {
            Identity::Anonymous => false,
            Identity::User(_) => true,
            Identity::Token(c) => c.sub.is_some() || c.catalog || !c.access.is_empty(),
        }
    }

    /// May `id` list the catalog (and then only what it may pull)?
    pub fn catalog_user(&self, id: &Identity) -> Option<Option<String>> {
        match id {
            Identity::Anonymous => None,
            Identity::User(u) => Some(Some(u.clone())),
            Identity::Token(c) if c.catalog => Some(c.sub.clone()),
            Identity::Token(_) => None,
        }
    }

    pub fn can_pull_as(&self, user: Option<&str>, repo: &str) -> bool {
        self.allowed(user, repo) >= Some(Access::Pull)
    }

    /// The 401 for a request without (enough) credentials, with the challenge clients follow.
    pub fn challenge(&self, realm_base: &str, scope: Option<String>) -> ApiError {
        let v = match self.cfg.mode {
            Mode::Basic => format!("Basic realm=\"{SERVICE}\""),
            Mode::Token => {
                let mut v = format!("Bearer realm=\"{realm_base}/token\",service=\"{SERVICE}\"");
                if let Some(s) = scope {
                    v.push_str(&format!(",scope=\"{s}\""));
                }
                v
            }
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required: log in (docker login / manifold login)",
        )
        .with_header("www-authenticate", v)
    }

    pub fn denied(&self, repo: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!("you may not do that in {repo}; ask for access"),
        )
    }

    fn sign(&self, payload: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(payload.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    fn verify_token(&self, t: &str) -> Option<Claims> {
        let (payload, sig) = t.split_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(payload.as_bytes());
        mac.verify_slice(&B64.decode(sig).ok()?).ok()?;
        let c: Claims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        (c.exp > now()).then_some(c)
    }

    /// The token endpoint: Basic credentials (optional) and `scope` parameters in, a token with
    /// what the rules grant out.
    pub fn issue(&self, headers: &HeaderMap, scopes: &[String]) -> Result<String, ApiError> {
        let user = self.basic_user(headers).map_err(|_| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "wrong user name or password",
            )
            .with_header("www-authenticate", format!("Basic realm=\"{SERVICE}\""))
        })?;
        let mut claims = Claims {
            sub: user.clone(),
            exp: now() + TOKEN_TTL,
            access: BTreeMap::new(),
            catalog: false,
        };
        for scope in scopes.iter().flat_map(|s| s.split(' ')) {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next(), parts.next(), parts.next());
            match (kind, name, actions) {
                (Some("registry"), Some("catalog"), _) => claims.catalog = user.is_some(),
                (Some("repository"), Some(name), Some(actions)) => {
                    let has = self.allowed(user.as_deref(), name);
                    let wants_push = actions
                        .split(',')
                        .any(|a| a == "push" || a == "delete" || a == "*");
                    let grant = match has {
                        Some(Access::Push) if wants_push => Some(Access2::Push),
                        Some(_) => Some(Access2::Pull),
                        None => None,
                    };
                    if let Some(g) = grant {
                        claims.access.insert(name.to_string(), g);
                    }
                }
                _ => {}
            }
        }
        let payload = B64.encode(serde_json::to_vec(&claims).map_err(ApiError::internal)?);
        let token = format!("{payload}.{}", self.sign(&payload));
        Ok(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL,
        })
        .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r: Rule = "alice:team/*:push".parse().unwrap();
        assert!(r.matches(Some("alice"), "team/app"));
        assert!(!r.matches(Some("bob"), "team/app"));
        assert!(!r.matches(Some("alice"), "other"));
        let a: Rule = "anonymous:public/*:pull".parse().unwrap();
        assert!(a.matches(None, "public/x") && a.matches(Some("bob"), "public/x"));
        let any: Rule = "*:*:pull".parse().unwrap();
        assert!(any.matches(Some("bob"), "x") && !any.matches(None, "x"));
        assert!("alice:x".parse::<Rule>().is_err());
        assert!("alice:x:write".parse::<Rule>().is_err());
    }
}
