//! Errors that say what failed, on which host and reference, why, and what to do next.

use std::fmt;
use std::path::PathBuf;

/// One entry of a registry's JSON error body (`{"errors":[{"code","message","detail"}]}`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct RegistryError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.code, self.message),
            (false, true) => f.write_str(&self.code),
            _ => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry answered, and refused.
    #[error("{}", fmt_refused(.op, .reference, .host, .status, .errors, .hint))]
    Refused {
        op: String,
        reference: String,
        host: String,
        status: u16,
        errors: Vec<RegistryError>,
        hint: String,
    },

    #[error("cannot reach registry {host} ({url}) after {attempts} attempt(s): {reason}; check the address, that the registry runs, and any proxy settings")]
    Connect {
        host: String,
        url: String,
        attempts: u32,
        reason: String,
    },

    /// Neither HTTPS nor (where allowed) plain HTTP reached the registry.
    #[error("cannot reach registry {host}: {reasons}; check the address, that the registry runs, and any proxy settings")]
    Unreachable { host: String, reasons: String },

    #[error("TLS certificate of {host} is not trusted ({reason}{}); if you trust its CA, put the CA certificate (PEM) at {} (or add {host} to the insecure registries)",
        .issuer.as_ref().map(|i| format!(", issued by {i:?}")).unwrap_or_default(), .ca_path.display())]
    Certificate {
        host: String,
        issuer: Option<String>,
        reason: String,
        ca_path: PathBuf,
    },

    /// An HTTPS request reached a port that speaks plain HTTP.
    #[error("registry {host} answers plain HTTP, not HTTPS; to reach it over plain HTTP (only on a network you trust), pass --insecure-registry {host} (or set MANIFOLD_INSECURE_REGISTRIES, or list it in /etc/docker/daemon.json's insecure-registries)")]
    PlainHttp { host: String },

    #[error("TLS setup for {host} failed: {reason}")]
    Tls { host: String, reason: String },

    #[error("{op} {reference} on {host}: {reason}")]
    Protocol {
        op: String,
        reference: String,
        host: String,
        reason: String,
    },

    /// Content that is not what its descriptor says (digest or size); both values are named.
    #[error("{op} {reference} on {host}: {source}")]
    Content {
        op: String,
        reference: String,
        host: String,
        #[source]
        source: oci::Error,
    },

    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{op} {reference}: reading the local source failed: {source}")]
    Source {
        op: String,
        reference: String,
        #[source]
        source: std::io::Error,
    },

    #[error("docker config {}: {reason}", .path.display())]
    Config { path: PathBuf, reason: String },

    #[error("credential helper docker-credential-{helper} failed to {action} credentials for {host}: {reason}")]
    Helper {
        helper: String,
        action: &'static str,
        host: String,
        reason: String,
    },

    #[error("{0}")]
    Invalid(String),
}

fn fmt_refused(
    op: &str,
    reference: &str,
    host: &str,
    status: &u16,
    errors: &[RegistryError],
    hint: &str,
) -> String {
    let mut s = format!("{op} {reference}: registry {host} answered {status}");
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        s.push_str(": ");
        s.push_str(&list.join("; "));
    }
    if !hint.is_empty() {
        s.push_str("; ");
        s.push_str(hint);
    }
    s
}

impl Error {
    /// The HTTP status the registry answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Does the registry not know the manifest, blob or repository?
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The registry's error codes (`MANIFEST_UNKNOWN`, `DENIED`, …).
    pub fn codes(&self) -> Vec<&str> {
        match self {
            Error::Refused { errors, .. } => errors.iter().map(|e| e.code.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// What to tell a user for a refusal with this status.
pub(crate) fn hint_for(status: u16, host: &str, had_credentials: bool) -> String {
    match status {
        401 if had_credentials => format!(
            "the registry refused the stored credentials; run `manifold login {host}` again"
        ),
        401 => format!("authentication required: run `manifold login {host}`"),
        403 => format!("the account used for {host} lacks permission for this; check the repository's access rights or `manifold login {host}` as another user"),
        404 => "check the repository name, tag or digest".into(),
        405 => "the registry does not allow this operation (deletes may be disabled)".into(),
        429 => "the registry is rate limiting; wait and retry, or log in for a higher limit".into(),
        s if s >= 500 => "the registry failed; retry later or check its logs".into(),
        _ => String::new(),
    }
}
