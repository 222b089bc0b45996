//! Per-registry settings in buildkitd.toml's shape: mirrors to pull through, plain HTTP,
//! unverified TLS, extra CAs and client key pairs.
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5001", "mirror.gcr.io"]
//!
//! [registry."127.0.0.1:5001"]
//! http = true
//!
//! [registry."reg.lan:5000"]
//! ca = ["/etc/manifold/lan-ca.pem"]
//! [[registry."reg.lan:5000".keypair]]
//! key = "/etc/manifold/client.key"
//! cert = "/etc/manifold/client.pem"
//! ```
//!
//! Only the `registry` table is read, so a buildkitd.toml can be given as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;

/// The settings of every configured registry host, by name (`docker.io`, `HOST[:PORT]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    hosts: BTreeMap<String, HostConfig>,
}

/// One `[registry."NAME"]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts (`HOST[:PORT]`, optionally `http://` or `https://` first) tried in order before
    /// this registry for pulls. Each is asked for the same repository path.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP only.
    #[serde(default)]
    pub http: bool,
    /// HTTPS without certificate verification (or plain HTTP when HTTPS fails).
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificates (PEM files) trusted for this host.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// Client certificates for this host.
    #[serde(default)]
    pub keypair: Vec<KeyPair>,
}

/// A client certificate and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// Docker Hub's names all mean one registry.
fn canonical(name: &str) -> String {
    let n = name.trim().trim_end_matches('/').to_ascii_lowercase();
    match n.as_str() {
        "index.docker.io" | "registry-1.docker.io" => oci::reference::DOCKER_HUB.to_string(),
        _ => n,
    }
}

/// A mirror entry as a host name, and whether it named plain HTTP.
fn mirror_host(origin: &str, registry: &str, entry: &str) -> Result<(String, bool), Error> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "{origin}: registry {registry:?}: mirror {entry:?} {why}; write HOST[:PORT], e.g. \"127.0.0.1:5001\" or \"http://mirror.lan:5000\""
        ))
    };
    let (rest, plain) = match entry.trim() {
        e if e.starts_with("http://") => (&e["http://".len()..], true),
        e if e.starts_with("https://") => (&e["https://".len()..], false),
        e => (e, false),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err(bad("is empty"));
    }
    if host.contains('/') {
        return Err(bad(
            "has a path; mirrors are asked for /v2/ at their root, as buildkit and containerd do",
        ));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '@' || c == '?' || c == '#') {
        return Err(bad("is not a host name"));
    }
    Ok((host.to_ascii_lowercase(), plain))
}

impl RegistryConfig {
    /// Parses a TOML document; `origin` (a file name) goes into error messages.
    pub fn parse(text: &str, origin: &str) -> Result<RegistryConfig, Error> {
        let doc: toml::Table = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{origin}: not valid TOML: {e}")))?;
        let mut cfg = RegistryConfig::default();
        let Some(table) = doc.get("registry") else {
            return Ok(cfg);
        };
        let table = table.as_table().ok_or_else(|| {
            Error::Invalid(format!(
                "{origin}: `registry` must be a table of hosts, as in [registry.\"docker.io\"]"
            ))
        })?;
        let mut plain_mirrors = Vec::new();
        for (name, v) in table {
            let mut host: HostConfig = v.clone().try_into().map_err(|e: toml::de::Error| {
                Error::Invalid(format!(
                    "{origin}: [registry.{name:?}]: {}; the keys are mirrors, http, insecure, ca and keypair",
                    e.message()
                ))
            })?;
            let key = canonical(name);
            if key.is_empty() || key.contains('/') {
                return Err(Error::Invalid(format!(
                    "{origin}: [registry.{name:?}]: a registry is a HOST[:PORT], e.g. \"docker.io\""
                )));
            }
            let mut mirrors = Vec::new();
            for m in &host.mirrors {
                let (h, plain) = mirror_host(origin, name, m)?;
                if canonical(&h) == key {
                    return Err(Error::Invalid(format!(
                        "{origin}: registry {name:?} names itself as its mirror"
                    )));
                }
                if plain {
                    plain_mirrors.push(h.clone());
                }
                mirrors.push(h);
            }
            host.mirrors = mirrors;
            if cfg.hosts.insert(key.clone(), host).is_some() {
                return Err(Error::Invalid(format!(
                    "{origin}: registry {key:?} is configured twice"
                )));
            }
        }
        // `http://HOST` in a mirror list means what `http = true` on HOST means.
        for h in plain_mirrors {
            cfg.hosts.entry(h).or_default().http = true;
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<RegistryConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            what: "reading registry config".into(),
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Is anything configured?
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The settings of `registry` (a reference's registry, or an API host), if any.
    pub fn host(&self, registry: &str) -> Option<&HostConfig> {
        self.hosts.get(&canonical(registry))
    }

    /// The mirrors of `registry`, in the order to try them.
    pub fn mirrors(&self, registry: &str) -> &[String] {
        self.host(registry).map_or(&[], |h| h.mirrors.as_slice())
    }

    /// Sets the mirrors of `registry` (for callers that build settings in code).
    pub fn set_mirrors(&mut self, registry: &str, mirrors: Vec<String>) {
        self.hosts.entry(canonical(registry)).or_default().mirrors = mirrors;
    }

    /// Changes the settings of `registry`.
    pub fn host_mut(&mut self, registry: &str) -> &mut HostConfig {
        self.hosts.entry(canonical(registry)).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkitd_shape() {
        let cfg = RegistryConfig::parse(
            r#"
debug = true
[worker.oci]
enabled = true

[registry."docker.io"]
mirrors = ["127.0.0.1:5001", "http://Mirror.lan:5000/"]

[registry."127.0.0.1:5001"]
http = true

[registry."reg.lan:5000"]
insecure = true
ca = ["/etc/ca.pem"]
[[registry."reg.lan:5000".keypair]]
key = "/k.pem"
cert = "/c.pem"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            cfg.mirrors("docker.io"),
            ["127.0.0.1:5001", "mirror.lan:5000"]
        );
        // Hub's other names find the same table.
        assert_eq!(cfg.mirrors("registry-1.docker.io").len(), 2);
        assert_eq!(cfg.mirrors("index.docker.io").len(), 2);
        assert!(cfg.host("127.0.0.1:5001").unwrap().http);
        assert!(cfg.host("mirror.lan:5000").unwrap().http);
        let lan = cfg.host("reg.lan:5000").unwrap();
        assert!(lan.insecure && !lan.http);
        assert_eq!(lan.ca, [PathBuf::from("/etc/ca.pem")]);
        assert_eq!(lan.keypair[0].cert, PathBuf::from("/c.pem"));
        assert!(cfg.mirrors("ghcr.io").is_empty());
        assert!(RegistryConfig::parse("", "t").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |t: &str| {
            RegistryConfig::parse(t, "cfg.toml")
                .unwrap_err()
                .to_string()
        };
        let e = err("[registry.\"docker.io\"]\nmirror = [\"a\"]\n");
        assert!(
            e.contains("cfg.toml") && e.contains("mirror") && e.contains("mirrors, http"),
            "{e}"
        );
        let e = err("[registry.\"docker.io\"]\nmirrors = [\"m.lan/v2/prefix\"]\n");
        assert!(e.contains("has a path"), "{e}");
        let e = err("[registry.\"docker.io\"]\nmirrors = [\"registry-1.docker.io\"]\n");
        assert!(e.contains("itself"), "{e}");
        let e = err("[registry.\"docker.io\"]\nhttp = \"yes\"\n");
        assert!(e.contains("docker.io"), "{e}");
        let e = err("registry = 3\n");
        assert!(e.contains("table"), "{e}");
        let e = err("[registry.\"docker.io\"\n");
        assert!(e.contains("not valid TOML"), "{e}");
        let e = err("[registry.\"docker.io\"]\n[registry.\"index.docker.io\"]\n");
        assert!(e.contains("twice"), "{e}");
    }
}
