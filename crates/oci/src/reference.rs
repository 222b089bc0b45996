//! Image references in docker's grammar: `[host[:port]/]path[:tag][@digest]`, with the implicit
//! `docker.io/library/` and the familiar short form.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::Error;

pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// A fully qualified image reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference. With neither tag nor digest, the tag is `latest`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut r = Self::parse_bare(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".into());
        }
        Ok(r)
    }

    /// Parses a reference and leaves tag and digest empty when absent (for repository names).
    pub fn parse_bare(s: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::InvalidReference {
            input: s.to_string(),
            reason: why,
        };
        if s.is_empty() {
            return Err(bad("empty reference".into()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(e.to_string()))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(bad)?;
        }
        let (registry, repository) = split_domain(name).map_err(bad)?;
        if repository.is_empty() {
            return Err(bad("missing repository name".into()));
        }
        for comp in repository.split('/') {
            validate_path_component(comp).map_err(bad)?;
        }
        let total = if registry == DOCKER_HUB {
            name.len()
        } else {
            registry.len() + 1 + repository.len()
        };
        if total > MAX_NAME {
            return Err(bad(format!(
                "repository name is {total} characters long; the limit is {MAX_NAME}"
            )));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }
    pub fn repository(&self) -> &str {
        &self.repository
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub fn with_tag(&self, tag: &str) -> Result<Self, Error> {
        validate_tag(tag).map_err(|why| Error::InvalidReference {
            input: tag.to_string(),
            reason: why,
        })?;
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with neither tag nor digest.
    pub fn repo_only(&self) -> Self {
        Reference {
            tag: None,
            digest: None,
            ..self.clone()
        }
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The short form docker prints: `busybox:latest`, `user/app:v1`, `ghcr.io/o/app@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        self.push_suffix(&mut s);
        s
    }

    /// The familiar name without tag or digest.
    pub fn familiar_name(&self) -> String {
        self.repo_only().familiar()
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }

    /// The host to connect to: Docker Hub's API lives at registry-1.docker.io.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

fn split_domain(name: &str) -> Result<(String, String), String> {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[')
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            validate_domain(first)?;
            let domain = if first == "index.docker.io" || first == "registry-1.docker.io" {
                DOCKER_HUB.to_string()
            } else {
                first.to_string()
            };
            let repo = if domain == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_string()
            };
            Ok((domain, repo))
        }
        Some(_) => Ok((DOCKER_HUB.to_string(), name.to_string())),
        None => Ok((DOCKER_HUB.to_string(), format!("library/{name}"))),
    }
}

fn validate_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host {d:?} opens '[' without closing it"))?;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(format!("registry host {d:?} is not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(host) = host {
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("registry host {d:?} is not a valid host name"));
            }
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!(
                "registry port {p:?} in {d:?} is not a number from 0 to 65535"
            ));
        }
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err(
            "empty path component in repository name (check for '//' or a trailing '/')".into(),
        );
    }
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository name must be lowercase: {c:?} (try {:?})",
            c.to_ascii_lowercase()
        ));
    }
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(format!(
            "repository path component {c:?} must start and end with a letter or digit"
        ));
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(format!(
                "repository path component {c:?} has {sep:?}; only lowercase letters, digits and \
                 single '.', '_' or '__' or runs of '-' may separate them"
            ));
        }
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty tag after ':'".into());
    }
    if t.len() > MAX_TAG {
        return Err(format!(
            "tag is {} characters long; the limit is {MAX_TAG}",
            t.len()
        ));
    }
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if !word(b[0]) {
        return Err(format!("tag {t:?} must start with a letter, digit or '_'"));
    }
    if let Some(bad) = t
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return Err(format!(
            "tag {t:?} has {bad:?}; tags hold letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_the_docker_grammar() {
        let cases = [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
                "busybox:1.36",
            ),
            (
                "user/app:v1",
                "docker.io",
                "user/app",
                Some("v1"),
                false,
                "user/app:v1",
            ),
            (
                "docker.io/library/alpine",
                "docker.io",
                "library/alpine",
                Some("latest"),
                false,
                "alpine:latest",
            ),
            (
                "index.docker.io/alpine",
                "docker.io",
                "library/alpine",
                Some("latest"),
                false,
                "alpine:latest",
            ),
            (
                "localhost/app",
                "localhost",
                "app",
                Some("latest"),
                false,
                "localhost/app:latest",
            ),
            (
                "localhost:5000/a/b/c:t",
                "localhost:5000",
                "a/b/c",
                Some("t"),
                false,
                "localhost:5000/a/b/c:t",
            ),
            (
                "127.0.0.1:5000/app:x",
                "127.0.0.1:5000",
                "app",
                Some("x"),
                false,
                "127.0.0.1:5000/app:x",
            ),
            (
                "ghcr.io/o/app",
                "ghcr.io",
                "o/app",
                Some("latest"),
                false,
                "ghcr.io/o/app:latest",
            ),
            (
                "[::1]:5000/app",
                "[::1]:5000",
                "app",
                Some("latest"),
                false,
                "[::1]:5000/app:latest",
            ),
            (
                "my-reg.example.com/a.b/c__d/e--f:v1.0-rc_1",
                "my-reg.example.com",
                "a.b/c__d/e--f",
                Some("v1.0-rc_1"),
                false,
                "my-reg.example.com/a.b/c__d/e--f:v1.0-rc_1",
            ),
        ];
        for (input, reg, repo, tag, dig, familiar) in cases {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.registry(), reg, "{input}");
            assert_eq!(r.repository(), repo, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().is_some(), dig, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn digests_and_tags_with_digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.selector(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = Reference::parse(&format!("localhost:5000/app:v1@{D}")).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.selector(), D);
        assert_eq!(r.familiar(), format!("localhost:5000/app:v1@{D}"));
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(
            Reference::parse("alpine").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn every_malformed_form_is_explained() {
        let long = format!("a/{}", "b".repeat(260));
        let cases = [
            ("", "empty reference"),
            ("Busybox", "must be lowercase"),
            ("user/MyApp", "must be lowercase: \"MyApp\""),
            ("busybox:", "empty tag"),
            ("busybox@sha256:abc", "64 hex digits"),
            ("busybox@md5:abc", "unsupported algorithm"),
            ("busybox:-x", "must start with"),
            ("a//b", "empty path component"),
            ("app/", "empty path component"),
            ("-app", "start and end"),
            ("a..b", "\"..\""),
            ("localhost:99999/app", "0 to 65535"),
            ("my_host.com/app", "not a valid host name"),
            (long.as_str(), "the limit is 255"),
            ("busybox:a@b", "ALGORITHM:HEX"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        let tag = "t".repeat(129);
        let err = Reference::parse(&format!("app:{tag}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit is 128"), "{err}");
    }

    #[test]
    fn bare_and_derived_forms() {
        let r = Reference::parse_bare("localhost:5000/app").unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.to_string(), "localhost:5000/app");
        let t = r.with_tag("v2").unwrap();
        assert_eq!(t.to_string(), "localhost:5000/app:v2");
        assert!(r.with_tag("bad tag").is_err());
        assert_eq!(
            Reference::parse("alpine:3").unwrap().familiar_name(),
            "alpine"
        );
    }
}
