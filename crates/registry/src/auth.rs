//! Credentials as docker keeps them: `config.json` in `$DOCKER_CONFIG` or `~/.docker`, with
//! `auths` entries (base64 `auth`, `identitytoken`), a `credsStore` for every host, and
//! `credHelpers` per host, spoken to through the `docker-credential-*` protocol.
//!
//! `login`/`logout` write the same file docker writes, through the helper when one is configured,
//! and keep every other key of the file as it was. Secrets never reach logs: [`Credential`]'s
//! `Debug` hides them.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;

use base64::Engine as _;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::Error;

/// The key docker uses for Docker Hub in `config.json`.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (or personal access token).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token ("identity token"), exchanged at the token endpoint by POST.
    IdentityToken { username: String, token: String },
}

impl Credential {
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                username
            }
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::IdentityToken { username, .. } => {
                write!(
                    f,
                    "IdentityToken {{ username: {username:?}, token: <redacted> }}"
                )
            }
        }
    }
}

/// Where a login was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// In `config.json` itself (base64 `auth`).
    File(PathBuf),
    /// In a credential helper (`docker-credential-NAME`).
    Helper(String),
}

/// The `config.json` key for a registry host: Docker Hub's is the historical v1 URL.
pub fn config_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        other => other.to_string(),
    }
}

/// `https://host:port/v1/` and `host:port` name the same registry in `auths`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        other => other.to_string(),
    }
}

/// docker's config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker"))
}

/// A docker config directory and where its credential helpers live.
#[derive(Clone, Debug)]
pub struct AuthStore {
    dir: PathBuf,
    /// When set, helpers are run from this directory instead of being looked up on `PATH`.
    helper_dir: Option<PathBuf>,
}

impl AuthStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AuthStore {
            dir: dir.into(),
            helper_dir: None,
        }
    }

    pub fn with_helper_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.helper_dir = dir;
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    async fn read(&self) -> Result<Map<String, Value>, Error> {
        let path = self.config_path();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => {
                return Err(Error::Io {
                    what: "reading docker config".into(),
                    path,
                    source: e,
                })
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::Config {
                path,
                reason: "expected a JSON object".into(),
            }),
            Err(e) => Err(Error::Config {
                path,
                reason: format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            }),
        }
    }

    /// Writes atomically with mode 0600, as the file holds secrets.
    async fn write(&self, cfg: &Map<String, Value>) -> Result<(), Error> {
        let path = self.config_path();
        let io = |what: &str, e| Error::Io {
            what: what.into(),
            path: path.clone(),
            source: e,
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io("creating the docker config directory for", e))?;
        let mut bytes = serde_json::to_vec_pretty(cfg).map_err(|e| Error::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let tmp = self
            .dir
            .join(format!(".config.json.tmp-{}", std::process::id()));
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts
            .open(&tmp)
            .await
            .map_err(|e| io("writing docker config", e))?;
        f.write_all(&bytes)
            .await
            .map_err(|e| io("writing docker config", e))?;
        f.sync_all()
            .await
            .map_err(|e| io("writing docker config", e))?;
        drop(f);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io("replacing docker config", e))
    }

    /// The helper configured for `registry`, if any: `credHelpers[key]`, else `credsStore`.
    fn helper_for(cfg: &Map<String, Value>, registry: &str) -> Option<String> {
        let want = normalize_key(&config_key(registry));
        if let Some(Value::Object(h)) = cfg.get("credHelpers") {
            for (k, v) in h {
                if normalize_key(k) == want {
                    if let Some(name) = v.as_str().filter(|s| !s.is_empty()) {
                        return Some(name.to_string());
                    }
                }
            }
        }
        cfg.get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The credential for `registry` (a host as in a reference: `docker.io`, `host:port`).
    pub async fn get(&self, registry: &str) -> Result<Option<Credential>, Error> {
        let cfg = self.read().await?;
        let key = config_key(registry);
        if let Some(helper) = Self::helper_for(&cfg, registry) {
            if let Some(c) = self.helper_get(&helper, &key).await? {
                return Ok(Some(c));
            }
        }
        let want = normalize_key(&key);
        let Some(Value::Object(auths)) = cfg.get("auths") else {
            return Ok(None);
        };
        // An exact key wins over one that only normalizes to the same host.
        let entry = auths
            .get(&key)
            .or_else(|| {
                auths
                    .iter()
                    .find(|(k, _)| normalize_key(k) == want)
                    .map(|(_, v)| v)
            })
            .and_then(Value::as_object);
        let Some(entry) = entry else { return Ok(None) };
        self.parse_entry(entry, &key)
    }

    fn parse_entry(
        &self,
        entry: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<Credential>, Error> {
        let s = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("");
        let (mut username, mut password) = (s("username").to_string(), s("password").to_string());
        let auth = s("auth");
        if !auth.is_empty() {
            let bad = |why: String| Error::Config {
                path: self.config_path(),
                reason: format!("auths[{key:?}].auth {why}"),
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("is not valid base64: {e}")))?;
            let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8".into()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad("does not decode to USER:PASSWORD".into()))?;
            username = u.to_string();
            password = p.to_string();
        }
        let token = s("identitytoken");
        if !token.is_empty() {
            return Ok(Some(Credential::IdentityToken {
                username,
                token: token.to_string(),
            }));
        }
        if username.is_empty() && password.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential::Basic { username, password }))
    }

    fn helper_cmd(&self, helper: &str) -> PathBuf {
        let bin = format!("docker-credential-{helper}");
        match &self.helper_dir {
            Some(d) => d.join(bin),
            None => PathBuf::from(bin),
        }
    }

    async fn run_helper(
        &self,
        helper: &str,
        action: &'static str,
        host: &str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>), Error> {
        let fail = |reason: String| Error::Helper {
            helper: helper.into(),
            action,
            host: host.into(),
            reason,
        };
        let mut child = tokio::process::Command::new(self.helper_cmd(helper))
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run docker-credential-{helper}: {e}; install it or remove it from {}",
                    self.config_path().display()
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input)
                .await
                .map_err(|e| fail(format!("writing to it: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        Ok((out.status.success(), out.stdout))
    }

    async fn helper_get(&self, helper: &str, key: &str) -> Result<Option<Credential>, Error> {
        let (ok, out) = self.run_helper(helper, "get", key, key.as_bytes()).await?;
        if !ok {
            // The protocol's "not found" is a failure whose output says so; other failures
            // are errors, but never echo the output (it could hold a secret).
            let text = String::from_utf8_lossy(&out);
            if text.contains("credentials not found") || text.trim().is_empty() {
                return Ok(None);
            }
            return Err(Error::Helper {
                helper: helper.into(),
                action: "get",
                host: key.into(),
                reason: "it exited with an error".into(),
            });
        }
        #[derive(serde::Deserialize)]
        struct Reply {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: String,
        }
        let r: Reply = serde_json::from_slice(&out).map_err(|e| Error::Helper {
            helper: helper.into(),
            action: "get",
            host: key.into(),
            reason: format!("its answer is not the expected JSON: {e}"),
        })?;
        if r.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if r.username == "<token>" {
            Credential::IdentityToken {
                username: String::new(),
                token: r.secret,
            }
        } else {
            Credential::Basic {
                username: r.username,
                password: r.secret,
            }
        }))
    }

    /// Stores a login as docker does: through the configured helper (leaving an empty
    /// `auths` entry, as docker does), or base64 in `config.json`.
    pub async fn login(&self, registry: &str, cred: &Credential) -> Result<Stored, Error> {
        let mut cfg = self.read().await?;
        let key = config_key(registry);
        let auths = cfg
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let helper = Self::helper_for(&cfg, registry);
        let (entry, stored) = if let Some(helper) = helper {
            let (user, secret) = match cred {
                Credential::Basic { username, password } => (username.as_str(), password.as_str()),
                Credential::IdentityToken { token, .. } => ("<token>", token.as_str()),
            };
            let input = serde_json::json!({"ServerURL": key, "Username": user, "Secret": secret});
            let (ok, _) = self
                .run_helper(&helper, "store", &key, input.to_string().as_bytes())
                .await?;
            if !ok {
                return Err(Error::Helper {
                    helper,
                    action: "store",
                    host: key,
                    reason: "it exited with an error".into(),
                });
            }
            (Map::new(), Stored::Helper(helper))
        } else {
            let mut e = Map::new();
            match cred {
                Credential::Basic { username, password } => {
                    let b64 = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    e.insert("auth".into(), Value::String(b64));
                }
                Credential::IdentityToken { username, token } => {
                    if !username.is_empty() {
                        let b64 = base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:"));
                        e.insert("auth".into(), Value::String(b64));
                    }
                    e.insert("identitytoken".into(), Value::String(token.clone()));
                }
            }
            (e, Stored::File(self.config_path()))
        };
        if let Some(Value::Object(a)) = cfg.get_mut("auths") {
            a.insert(key, Value::Object(entry));
        }
        self.write(&cfg).await?;
        Ok(stored)
    }

    /// Removes a login (from the helper too when one is configured). Returns whether there was one.
    pub async fn logout(&self, registry: &str) -> Result<bool, Error> {
        let mut cfg = self.read().await?;
        let key = config_key(registry);
        let want = normalize_key(&key);
        let mut found = false;
        if let Some(helper) = Self::helper_for(&cfg, registry) {
            let (ok, _) = self
                .run_helper(&helper, "erase", &key, key.as_bytes())
                .await?;
            found |= ok;
        }
        if let Some(Value::Object(a)) = cfg.get_mut("auths") {
            let keys: Vec<String> = a
                .keys()
                .filter(|k| normalize_key(k) == want)
                .cloned()
                .collect();
            for k in keys {
                a.remove(&k);
                found = true;
            }
        }
        if found {
            self.write(&cfg).await?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalize() {
        assert_eq!(config_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(normalize_key(DOCKER_HUB_KEY), "docker.io");
        assert_eq!(
            normalize_key("https://h.example:5000/v1/"),
            "h.example:5000"
        );
        assert_eq!(normalize_key("h.example:5000"), "h.example:5000");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Credential::IdentityToken {
            username: "u".into(),
            token: "tok-secret".into(),
        };
        assert!(!format!("{c:?}").contains("tok-secret"));
    }

    #[tokio::test]
    async fn login_get_logout_roundtrip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"other:1":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let store = AuthStore::new(dir.path());
        let cred = Credential::Basic {
            username: "user".into(),
            password: "p:ss".into(),
        };
        let stored = store.login("reg.example:5000", &cred).await.unwrap();
        assert_eq!(stored, Stored::File(dir.path().join("config.json")));
        assert_eq!(store.get("reg.example:5000").await.unwrap(), Some(cred));
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(
            text.contains("psFormat") && text.contains("other:1"),
            "{text}"
        );
        // docker's encoding: base64("user:p:ss")
        assert!(text.contains("dXNlcjpwOnNz"), "{text}");
        assert!(store.logout("reg.example:5000").await.unwrap());
        assert_eq!(store.get("reg.example:5000").await.unwrap(), None);
        assert!(!store.logout("reg.example:5000").await.unwrap());
        assert_eq!(
            store.get("other:1").await.unwrap(),
            Some(Credential::Basic {
                username: "x".into(),
                password: "y".into()
            })
        );
    }

    #[tokio::test]
    async fn identity_token_and_hub_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"bWU6","identitytoken":"rt"}}}"#,
        )
        .unwrap();
        let store = AuthStore::new(dir.path());
        assert_eq!(
            store.get("docker.io").await.unwrap(),
            Some(Credential::IdentityToken {
                username: "me".into(),
                token: "rt".into()
            })
        );
    }

    #[tokio::test]
    async fn malformed_config_names_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\n \"auths\": [,\n}").unwrap();
        let err = AuthStore::new(dir.path())
            .get("x.example")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("line 2"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn credential_helper_get_store_erase() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        // A file-backed helper speaking docker's protocol; the key is the file name.
        let script = format!(
            r#"#!/bin/sh
db={db}
case "$1" in
get) read -r host; f="$db/$(echo "$host" | tr '/:' '__')"; if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi;;
store) body=$(cat); host=$(echo "$body" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/'); echo "$body" > "$db/$(echo "$host" | tr '/:' '__')";;
erase) read -r host; rm "$db/$(echo "$host" | tr '/:' '__')";;
esac
"#,
            db = db.display()
        );
        let helper = bin.join("docker-credential-test");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"reg.example:5000":"test"}}"#,
        )
        .unwrap();
        let store = AuthStore::new(dir.path()).with_helper_dir(Some(bin));
        assert_eq!(store.get("reg.example:5000").await.unwrap(), None);
        let cred = Credential::Basic {
            username: "u".into(),
            password: "s3cret".into(),
        };
        let stored = store.login("reg.example:5000", &cred).await.unwrap();
        assert_eq!(stored, Stored::Helper("test".into()));
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(
            !text.contains("s3cret"),
            "secret leaked into config.json: {text}"
        );
        assert!(text.contains("reg.example:5000"), "{text}");
        assert_eq!(store.get("reg.example:5000").await.unwrap(), Some(cred));
        assert!(store.logout("reg.example:5000").await.unwrap());
        assert_eq!(store.get("reg.example:5000").await.unwrap(), None);
    }
}
