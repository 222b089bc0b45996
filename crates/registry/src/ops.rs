//! Manifests, tags, catalog and deletes.

use reqwest::header::{ACCEPT, CONTENT_TYPE, LINK};
use reqwest::{Response, StatusCode, Url};

use oci::{Descriptor, Digest, Manifest, Reference};

use std::sync::Arc;

use crate::client::{read_limited, scope, Client, Host, Kind, Op};
use crate::Error;

/// The spec lets registries refuse manifests over 4 MiB; we refuse to buffer more than that.
const MAX_MANIFEST: usize = 4 << 20;
/// A guard against registries whose `Link` pagination never ends.
const MAX_PAGES: usize = 10_000;

fn content_type(resp: &Response) -> Option<String> {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
}

pub(crate) fn header_digest(resp: &Response) -> Option<Digest> {
    resp.headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Digest::parse(s.trim()).ok())
}

/// `<url>; rel="next"` from a `Link` header.
fn next_link(h: &reqwest::header::HeaderMap) -> Option<String> {
    for v in h.get_all(LINK) {
        let v = v.to_str().ok()?;
        for part in v.split(',') {
            let (target, params) = part.split_once(';').unwrap_or((part, ""));
            if params.contains("rel=\"next\"") || params.contains("rel=next") {
                let t = target.trim().trim_start_matches('<').trim_end_matches('>');
                return Some(t.to_string());
            }
        }
    }
    None
}

impl Client {
    fn op(name: &'static str, r: &Reference) -> Op<'static> {
        Op {
            name,
            reference: r.to_string(),
        }
    }

    fn protocol(host: &Host, op: &Op<'_>, reason: impl Into<String>) -> Error {
        Error::Protocol {
            op: op.name.into(),
            reference: op.reference.clone(),
            host: host.name.clone(),
            reason: reason.into(),
        }
    }

    /// Fetches a manifest or index with the OCI + Docker Accept list. When `r` has a digest, the
    /// bytes must hash to it; otherwise they must match the registry's `Docker-Content-Digest`.
    /// With mirrors configured for `r`'s registry, each is asked first, in order; a mirror
    /// that fails, lacks the manifest or answers bytes that do not verify is passed over.
    pub async fn get_manifest(&self, r: &Reference) -> Result<Manifest, Error> {
        self.pull_through(r.registry(), Kind::Manifest, |host| {
            self.get_manifest_at(host, r)
        })
        .await
    }

    async fn get_manifest_at(&self, host: Arc<Host>, r: &Reference) -> Result<Manifest, Error> {
        let op = Self::op("pulling manifest", r);
        let url = self.url(
            &host,
            &format!("v2/{}/manifests/{}", r.repository(), r.selector()),
        )?;
        let accept = oci::media_type::MANIFEST_ACCEPT.join(", ");
        let resp = self
            .request(&host, &[scope(r.repository(), "pull")], &op, &|c| {
                c.get(url.clone()).header(ACCEPT, accept.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(&host, &op, resp).await);
        }
        let ct = content_type(&resp);
        let claimed = header_digest(&resp);
        let bytes = read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|e| Self::protocol(&host, &op, e))?;
        let expected = r.digest().cloned().or(claimed);
        if let Some(want) = expected {
            let got = Digest::of(want.algorithm(), &bytes);
            if got != want {
                return Err(Error::Content {
                    op: op.name.into(),
                    reference: op.reference,
                    host: host.name.clone(),
                    source: oci::Error::DigestMismatch {
                        expected: want,
                        actual: got,
                    },
                });
            }
        }
        Manifest::parse(bytes, ct.as_deref()).map_err(|e| Error::Content {
            op: op.name.into(),
            reference: op.reference,
            host: host.name.clone(),
            source: e,
        })
    }

    /// The descriptor of what `r` points at, or `None` when the registry does not know it.
    pub async fn head_manifest(&self, r: &Reference) -> Result<Option<Descriptor>, Error> {
        let host = self.host(r.api_host()).await?;
        let op = Self::op("checking manifest", r);
        let url = self.url(
            &host,
            &format!("v2/{}/manifests/{}", r.repository(), r.selector()),
        )?;
        let accept = oci::media_type::MANIFEST_ACCEPT.join(", ");
        let resp = self
            .request(&host, &[scope(r.repository(), "pull")], &op, &|c| {
                c.head(url.clone()).header(ACCEPT, accept.clone())
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.refused(&host, &op, resp).await);
        }
        let (Some(digest), Some(size)) = (
            header_digest(&resp).or_else(|| r.digest().cloned()),
            resp.headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            // Some registries answer HEAD without the digest or length: fetch instead.
            return self.get_manifest(r).await.map(|m| Some(m.descriptor()));
        };
        let mt = content_type(&resp).unwrap_or_else(|| oci::media_type::OCI_MANIFEST.to_string());
        Ok(Some(Descriptor::new(mt, digest, size)))
    }

    /// Pushes manifest bytes under `r`'s tag, or its digest (checked against the bytes first).
    /// Children (blobs, manifests of an index) must already be there.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, Error> {
        let host = self.host(r.api_host()).await?;
        let op = Self::op("pushing manifest", r);
        let digest = match r.digest() {
            Some(want) => {
                let got = Digest::of(want.algorithm(), bytes);
                if &got != want {
                    return Err(Error::Content {
                        op: op.name.into(),
                        reference: op.reference,
                        host: host.name.clone(),
                        source: oci::Error::DigestMismatch {
                            expected: want.clone(),
                            actual: got,
                        },
                    });
                }
                got
            }
            None => Digest::sha256_of(bytes),
        };
        let url = self.url(
            &host,
            &format!("v2/{}/manifests/{}", r.repository(), r.selector()),
        )?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let mt = media_type.to_string();
        let resp = self
            .request(&host, &[scope(r.repository(), "pull,push")], &op, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, mt.clone())
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(&host, &op, resp).await);
        }
        if let Some(d) = header_digest(&resp) {
            if d.algorithm() == digest.algorithm() && d != digest {
                return Err(Self::protocol(
                    &host,
                    &op,
                    format!(
                        "the registry stored the manifest as {d}, but its bytes hash to {digest}"
                    ),
                ));
            }
        }
        Ok(digest)
    }

    /// Deletes the manifest `r` names by digest (resolve a tag with `head_manifest` first).
    pub async fn delete_manifest(&self, r: &Reference) -> Result<(), Error> {
        let Some(d) = r.digest() else {
            return Err(Error::Invalid(format!(
                "deleting {r}: registries delete manifests by digest; resolve the tag first"
            )));
        };
        let host = self.host(r.api_host()).await?;
        let op = Self::op("deleting manifest", r);
        let url = self.url(&host, &format!("v2/{}/manifests/{d}", r.repository()))?;
        let resp = self
            .request(&host, &[scope(r.repository(), "delete")], &op, &|c| {
                c.delete(url.clone())
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(&host, &op, resp).await)
        }
    }

    /// Every tag of `repo`, following `Link` (or `n`/`last`) pagination.
    pub async fn tags(&self, repo: &Reference) -> Result<Vec<String>, Error> {
        let host = self.host(repo.api_host()).await?;
        let op = Op {
            name: "listing tags of",
            reference: repo.repo_only().to_string(),
        };
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let first = self.url(&host, &format!("v2/{}/tags/list", repo.repository()))?;
        self.paginate(
            &host,
            &op,
            &[scope(repo.repository(), "pull")],
            first,
            |b| serde_json::from_slice::<Page>(b).map(|p| p.tags.unwrap_or_default()),
        )
        .await
    }

    /// Every repository the registry lists in `/v2/_catalog`.
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>, Error> {
        let host = self.host(registry).await?;
        let op = Op {
            name: "listing repositories of",
            reference: registry.to_string(),
        };
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let first = self.url(&host, "v2/_catalog")?;
        self.paginate(
            &host,
            &op,
            &["registry:catalog:*".to_string()],
            first,
            |b| serde_json::from_slice::<Page>(b).map(|p| p.repositories.unwrap_or_default()),
        )
        .await
    }

    async fn paginate(
        &self,
        host: &std::sync::Arc<Host>,
        op: &Op<'_>,
        scopes: &[String],
        first: Url,
        parse: impl Fn(&[u8]) -> serde_json::Result<Vec<String>>,
    ) -> Result<Vec<String>, Error> {
        let n = self.inner.opts.page_size;
        let mut url = first.clone();
        if let Some(n) = n {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let mut all = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let u = url.clone();
            let resp = self
                .request(host, scopes, op, &|c| c.get(u.clone()))
                .await?;
            if !resp.status().is_success() {
                return Err(self.refused(host, op, resp).await);
            }
            let next = next_link(resp.headers());
            let body = read_limited(resp, 64 << 20)
                .await
                .map_err(|e| Self::protocol(host, op, e))?;
            let page = parse(&body).map_err(|e| {
                Self::protocol(
                    host,
                    op,
                    format!("the listing is not the expected JSON: {e}"),
                )
            })?;
            let got = page.len();
            let last = page.last().cloned();
            let before = all.len();
            for e in page {
                if seen.insert(e.clone()) {
                    all.push(e);
                }
            }
            // A registry that ignores `n`/`last` answers everything, or the same page again.
            if all.len() == before || n.is_some_and(|n| got > n as usize) {
                return Ok(all);
            }
            url = match (next, n, last) {
                (Some(link), _, _) => url.join(&link).map_err(|e| {
                    Self::protocol(host, op, format!("bad Link header {link:?}: {e}"))
                })?,
                // No Link but a full page: ask for what follows the last entry, as the spec allows.
                (None, Some(n), Some(last)) if got >= n as usize => {
                    let mut u = first.clone();
                    u.query_pairs_mut()
                        .append_pair("n", &n.to_string())
                        .append_pair("last", &last);
                    u
                }
                _ => return Ok(all),
            };
        }
        Err(Self::protocol(
            host,
            op,
            format!("more than {MAX_PAGES} pages; the registry's pagination does not end"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn link_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            HeaderValue::from_static(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            HeaderValue::from_static(r#"</a?x=1>; rel="prev", </b?y=2>; rel="next""#),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/b?y=2"));
        assert_eq!(next_link(&HeaderMap::new()), None);
    }
}
