//! Parsing `/v2/...` paths ourselves: repository names contain `/`, so the kind of request is
//! decided from the end of the path, and every part is validated before it names a file.

use oci::Digest;

use crate::error::ApiError;

/// What a `/v2/` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, Reference),
    Blob(String, Digest),
    /// `None`: the upload collection (POST starts a session).
    Upload(String, Option<String>),
    Referrers(String, Digest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

impl Route {
    /// The same route with its repository name replaced by `f(name)`.
    pub fn map_repository(self, f: impl FnOnce(&str) -> String) -> Route {
        match self {
            Route::Base | Route::Catalog => self,
            Route::Tags(n) => Route::Tags(f(&n)),
            Route::Manifest(n, r) => Route::Manifest(f(&n), r),
            Route::Blob(n, d) => Route::Blob(f(&n), d),
            Route::Upload(n, u) => Route::Upload(f(&n), u),
            Route::Referrers(n, d) => Route::Referrers(f(&n), d),
        }
    }

    pub fn repository(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

/// Parses the part of the path after `/v2`. `None` when the path is no API route at all.
pub fn parse(rest: &str) -> Result<Option<Route>, ApiError> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Some(Route::Base));
    }
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<String, ApiError> {
        let name = segs[..n - k].join("/");
        validate_name(&name)?;
        Ok(name)
    };
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Some(Route::Tags(name(2)?)));
    }
    if n >= 3 && segs[n - 2] == "manifests" {
        return Ok(Some(Route::Manifest(
            name(2)?,
            parse_reference(segs[n - 1])?,
        )));
    }
    if n >= 3 && segs[n - 2] == "referrers" {
        return Ok(Some(Route::Referrers(name(2)?, parse_digest(segs[n - 1])?)));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let id = segs[n - 1];
        if id.is_empty() {
            return Ok(Some(Route::Upload(name(3)?, None)));
        }
        if uuid::Uuid::parse_str(id).is_err() || id.len() != 36 {
            return Err(ApiError::upload_unknown());
        }
        return Ok(Some(Route::Upload(name(3)?, Some(id.to_ascii_lowercase()))));
    }
    if n >= 3 && segs[n - 2] == "blobs" {
        if segs[n - 1] == "uploads" {
            return Ok(Some(Route::Upload(name(2)?, None)));
        }
        return Ok(Some(Route::Blob(name(2)?, parse_digest(segs[n - 1])?)));
    }
    Ok(None)
}

pub fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    Digest::parse(s).map_err(|e| ApiError::digest_invalid(e.to_string()))
}

fn parse_reference(s: &str) -> Result<Reference, ApiError> {
    if s.contains(':') {
        return Ok(Reference::Digest(parse_digest(s)?));
    }
    validate_tag(s)?;
    Ok(Reference::Tag(s.to_string()))
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, as the spec says.
pub fn validate_tag(t: &str) -> Result<(), ApiError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag {t:?}: use letters, digits, _ . - (not first), at most 128"),
        ))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 long.
/// No component can be `.` or `..`, so a valid name never leaves the directory it names.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let bad =
        |why: &str| ApiError::name_invalid(format!("invalid repository name {name:?}: {why}"));
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 255 {
        return Err(bad("longer than 255 characters"));
    }
    for comp in name.split('/') {
        if !valid_component(comp) {
            return Err(bad(
                "each /-separated part is lower-case letters and digits, joined by one . or _, two _, or dashes",
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(parse("/").unwrap(), Some(Route::Base));
        assert_eq!(parse("").unwrap(), Some(Route::Base));
        assert_eq!(parse("/_catalog").unwrap(), Some(Route::Catalog));
        assert_eq!(
            parse("/a/b/tags/list").unwrap(),
            Some(Route::Tags("a/b".into()))
        );
        assert_eq!(
            parse("/blobs/manifests/v1").unwrap(),
            Some(Route::Manifest("blobs".into(), Reference::Tag("v1".into())))
        );
        assert_eq!(
            parse(&format!("/x/blobs/{D}")).unwrap(),
            Some(Route::Blob("x".into(), Digest::parse(D).unwrap()))
        );
        assert_eq!(
            parse("/x/y/blobs/uploads/").unwrap(),
            Some(Route::Upload("x/y".into(), None))
        );
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            parse(&format!("/x/blobs/uploads/{id}")).unwrap(),
            Some(Route::Upload("x".into(), Some(id.into())))
        );
        assert_eq!(parse("/x/nothing/here").unwrap(), None);
    }

    #[test]
    fn refuses_hostile_parts() {
        for p in [
            "/../etc/manifests/latest",
            "/a/../b/manifests/latest",
            "/a//b/manifests/latest",
            "/A/manifests/latest",
            "/a./manifests/latest",
            "/a/manifests/..",
            "/a/manifests/sha256:../../x",
            "/a/blobs/sha256:zz",
            "/a/blobs/uploads/../../etc",
            "/%2e%2e/manifests/latest",
        ] {
            assert!(!matches!(parse(p), Ok(Some(_))), "{p} accepted");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
        assert!(validate_name("a__b/c-----d/e.f_g").is_ok());
        assert!(validate_name("a___b").is_err());
        assert!(validate_tag(&"t".repeat(129)).is_err());
        assert!(validate_tag("-x").is_err());
        assert!(validate_tag("v1.0_RC-2").is_ok());
    }
}
