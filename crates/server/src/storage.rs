//! The registry's content on disk, over the store crate's OCI layout.
//!
//! One content-addressed blob store (`blobs/<alg>/<hex>`) serves every repository. Names live in
//! the layout's `index.json`: a tag as `REPO:TAG`, every pushed manifest as `REPO@DIGEST`, so the
//! store's GC and fsck see every root. Which blobs a repository may serve is recorded by empty
//! link files under `registry/repos/REPO/_blobs/<alg>/<hex>`, or follows from the repository's
//! manifests reaching the blob. Upload sessions live in `registry/uploads/<uuid>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use oci::media_type as mt;
use oci::{Descriptor, Digest, Manifest};
use store::layout::REF_NAME;
use store::Layout;

use crate::error::ApiError;
use crate::route::{validate_name, Reference};

/// How repository names map to names in `index.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// A registry directory of its own: `REPO:TAG` and `REPO@DIGEST`.
    Raw,
    /// manifold's local store: full references as `manifold` writes them
    /// (`busybox:1` is `docker.io/library/busybox:1`, `ghcr.io/a/b` is itself).
    Store,
}

/// An `index.json` entry that belongs to a repository.
#[derive(Debug, Clone)]
pub struct Entry {
    pub repo: String,
    pub reference: Reference,
    pub desc: Descriptor,
}

type IndexCache = Option<(Vec<u8>, Arc<Vec<Entry>>)>;

pub struct Storage {
    layout: Layout,
    state: PathBuf,
    naming: Naming,
    cache: Mutex<IndexCache>,
}

/// Manifests are refused above this size, as distribution does.
pub const MAX_MANIFEST: usize = 4 << 20;

/// The repository name a store reference is served under: Docker Hub's without the registry
/// (`library/busybox`), others with it (`ghcr.io/a/b`), and a registry with a port as
/// `HOST_PORT` (`localhost:5000/app` is `localhost_5000/app`), since `:` cannot be in a
/// repository name. Host names and Docker Hub namespaces have no `_`, so nothing else maps there.
fn store_repo_name(p: &oci::Reference) -> String {
    if p.registry() == oci::reference::DOCKER_HUB {
        return p.repository().to_string();
    }
    match p.registry().rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            format!("{host}_{port}/{}", p.repository())
        }
        _ => format!("{}/{}", p.registry(), p.repository()),
    }
}

/// `HOST_PORT/rest` (as [`store_repo_name`] writes it) back to `HOST:PORT/rest`; anything else
/// as it is.
fn unmap_port(name: &str) -> String {
    let Some((first, rest)) = name.split_once('/') else {
        return name.to_string();
    };
    let Some((host, port)) = first.rsplit_once('_') else {
        return name.to_string();
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    if host_ok && port_ok {
        format!("{host}:{port}/{rest}")
    } else {
        name.to_string()
    }
}

impl Storage {
    pub fn open(root: &Path, naming: Naming) -> store::Result<Storage> {
        let layout = Layout::open_or_create(root)?;
        let state = root.join("registry");
        for d in ["uploads", "repos"] {
            fs::create_dir_all(state.join(d)).map_err(|e| store::Error::Io {
                path: state.join(d),
                source: e,
            })?;
        }
        Ok(Storage {
            layout,
            state,
            naming,
            cache: Mutex::new(None),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn name_for(&self, repo: &str, r: &Reference) -> String {
        let raw = match r {
            Reference::Tag(t) => format!("{repo}:{t}"),
            Reference::Digest(d) => format!("{repo}@{d}"),
        };
        match self.naming {
            Naming::Raw => raw,
            Naming::Store => oci::Reference::parse(&unmap_port(&raw))
                .map(|x| x.to_string())
                .unwrap_or(raw),
        }
    }

    /// The one spelling of a repository name: in the store, `busybox` and `library/busybox`
    /// are the same image.
    pub fn canonical(&self, repo: &str) -> String {
        match self.naming {
            Naming::Raw => repo.to_string(),
            Naming::Store => match oci::Reference::parse_bare(&unmap_port(repo)) {
                Ok(p) => store_repo_name(&p),
                Err(_) => repo.to_string(),
            },
        }
    }

    /// The repository and reference an `index.json` name stands for, if it is one of ours.
    fn parse_name(&self, name: &str) -> Option<(String, Reference)> {
        let (repo, r) = match self.naming {
            Naming::Raw => {
                if let Some((repo, d)) = name.split_once('@') {
                    (repo.to_string(), Reference::Digest(Digest::parse(d).ok()?))
                } else {
                    let (repo, t) = name.rsplit_once(':')?;
                    (repo.to_string(), Reference::Tag(t.to_string()))
                }
            }
            Naming::Store => {
                let p = oci::Reference::parse_bare(name).ok()?;
                let repo = store_repo_name(&p);
                let r = match (p.tag(), p.digest()) {
                    (Some(t), None) => Reference::Tag(t.to_string()),
                    (None, Some(d)) => Reference::Digest(d.clone()),
                    _ => return None,
                };
                (repo, r)
            }
        };
        if validate_name(&repo).is_err() || self.name_for(&repo, &r) != name {
            return None;
        }
        Some((repo, r))
    }

    /// Every named entry, parsed again only when the bytes of `index.json` change (timestamps
    /// are too coarse to tell two quick rewrites apart).
    pub fn entries(&self) -> Result<Arc<Vec<Entry>>, ApiError> {
        let p = self.layout.root().join("index.json");
        let bytes = fs::read(&p)?;
        let mut cache = self.cache.lock().map_err(|_| ApiError::internal("lock"))?;
        if let Some((k, v)) = cache.as_ref() {
            if *k == bytes {
                return Ok(v.clone());
            }
        }
        let idx: oci::Index = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))?;
        let mut out = Vec::new();
        for d in idx.manifests {
            let Some(name) = d.annotations.get(REF_NAME) else {
                continue;
            };
            if let Some((repo, reference)) = self.parse_name(name) {
                out.push(Entry {
                    repo,
                    reference,
                    desc: d,
                });
            }
        }
        let v = Arc::new(out);
        *cache = Some((bytes, v.clone()));
        Ok(v)
    }

    pub fn repositories(&self) -> Result<BTreeSet<String>, ApiError> {
        Ok(self.entries()?.iter().map(|e| e.repo.clone()).collect())
    }

    pub fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, ApiError> {
        let entries = self.entries()?;
        let mut known = false;
        let mut tags = BTreeSet::new();
        for e in entries.iter().filter(|e| e.repo == repo) {
            known = true;
            if let Reference::Tag(t) = &e.reference {
                tags.insert(t.clone());
            }
        }
        if !known && !self.repo_dir(repo).is_dir() {
            return Ok(None);
        }
        Ok(Some(tags.into_iter().collect()))
    }

    /// The manifest a tag or digest names in `repo`.
    pub fn resolve(&self, repo: &str, r: &Reference) -> Result<Option<Descriptor>, ApiError> {
        let entries = self.entries()?;
        let found = entries.iter().find(|e| {
            e.repo == repo
                && match r {
                    Reference::Tag(_) => &e.reference == r,
                    Reference::Digest(d) => &e.desc.digest == d,
                }
        });
        if let Some(e) = found {
            let mut d = e.desc.clone();
            d.annotations.clear();
            return Ok(self.layout.has_blob(&d.digest).then_some(d));
        }
        // A platform's manifest inside a tagged index (what `manifold build` stores) is served
        // by digest too.
        if let Reference::Digest(d) = r {
            if let Some(desc) = self.reachable(repo, d)? {
                if mt::is_manifest_like(&desc.media_type) && self.layout.has_blob(d) {
                    return Ok(Some(desc));
                }
            }
        }
        Ok(None)
    }

    /// The descriptor by which some manifest of `repo` reaches `d`.
    fn reachable(&self, repo: &str, d: &Digest) -> Result<Option<Descriptor>, ApiError> {
        let entries = self.entries()?;
        let mut seen = BTreeSet::new();
        let mut stack: Vec<Descriptor> = entries
            .iter()
            .filter(|e| e.repo == repo)
            .map(|e| e.desc.clone())
            .collect();
        while let Some(desc) = stack.pop() {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            if &desc.digest == d {
                let mut out = desc;
                out.annotations.remove(REF_NAME);
                return Ok(Some(out));
            }
            if mt::is_manifest_like(&desc.media_type) && self.layout.has_blob(&desc.digest) {
                if let Ok(m) = self.layout.read_manifest(&desc) {
                    stack.extend(m.children());
                }
            }
        }
        Ok(None)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.state.join("repos").join(repo)
    }

    fn link_path(&self, repo: &str, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// May `repo` serve blob `d`? (It is stored, and the repository received it or refers to it.)
    pub fn blob_in_repo(&self, repo: &str, d: &Digest) -> Result<bool, ApiError> {
        if !self.layout.has_blob(d) {
            return Ok(false);
        }
        if self.link_path(repo, d).exists() {
            return Ok(true);
        }
        if self.reachable(repo, d)?.is_some() {
            self.link(repo, d)?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn link(&self, repo: &str, d: &Digest) -> Result<(), ApiError> {
        let p = self.link_path(repo, d);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        File::create(&p)?;
        Ok(())
    }

    pub fn unlink(&self, repo: &str, d: &Digest) -> Result<bool, ApiError> {
        match fs::remove_file(self.link_path(repo, d)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks a blob as just used, so GC's grace period protects it until a manifest names it.
    pub fn touch(&self, d: &Digest) {
        if let Ok(f) = File::options().write(true).open(self.layout.blob_path(d)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Verifies and stores a manifest, then names it. Returns its descriptor.
    pub fn put_manifest(
        &self,
        repo: &str,
        r: &Reference,
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<Descriptor, ApiError> {
        let m = Manifest::parse(bytes, content_type)
            .map_err(|e| ApiError::manifest_invalid(e.to_string()))?;
        let digest = match r {
            Reference::Digest(want) => {
                let got = Digest::of(want.algorithm(), m.bytes());
                if &got != want {
                    return Err(ApiError::digest_invalid(format!(
                        "the manifest's content hashes to {got}, not to {want} named in the URL"
                    )));
                }
                got
            }
            Reference::Tag(_) => m.digest().clone(),
        };
        let declared = match &m {
            Manifest::Index(d) => d.value().media_type.clone(),
            Manifest::Image(d) => d.value().media_type.clone(),
        };
        let media_type = match (declared, content_type) {
            (Some(d), Some(c)) if mt::is_manifest_like(c) && d != c => {
                return Err(ApiError::manifest_invalid(format!(
                    "the manifest's mediaType {d} differs from its Content-Type {c}"
                )));
            }
            (Some(d), _) => d,
            (None, Some(c)) if mt::is_manifest_like(c) => c.to_string(),
            (None, _) => m.media_type().to_string(),
        };
        if mt::is_docker(&media_type) && !mt::is_manifest_like(&media_type) {
            return Err(ApiError::manifest_invalid(format!(
                "{media_type} is not a manifest media type"
            )));
        }
        let _guard = self.layout.write_guard()?;
        for child in m.children() {
            if mt::is_non_distributable(&child.media_type) {
                continue;
            }
            let present = if matches!(m, Manifest::Index(_)) {
                self.resolve(repo, &Reference::Digest(child.digest.clone()))?
                    .is_some()
            } else {
                self.blob_in_repo(repo, &child.digest)?
            };
            if !present {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!(
                        "the manifest refers to {}, which is not in repository {repo}; push it first",
                        child.digest
                    ),
                ));
            }
            if let Some(size) = self.layout.blob_size(&child.digest) {
                if size != child.size {
                    return Err(ApiError::manifest_invalid(format!(
                        "the manifest gives {} a size of {} bytes; it has {size}",
                        child.digest, child.size
                    )));
                }
            }
        }
        let len = m.bytes().len() as u64;
        self.layout
            .ingest(&mut &m.bytes()[..], Some((&digest, Some(len))))?;
        self.touch(&digest);
        self.link(repo, &digest)?;
        let desc = Descriptor::new(media_type, digest.clone(), len);
        let mut names = vec![(
            self.name_for(repo, &Reference::Digest(digest.clone())),
            desc.clone(),
        )];
        if let Reference::Tag(_) = r {
            names.push((self.name_for(repo, r), desc.clone()));
        }
        self.layout.set_names(&names)?;
        Ok(desc)
    }

    /// Stores a manifest fetched from upstream (verified by the caller) and names it. Its
    /// children are fetched when asked for, so they are not checked here.
    pub fn put_proxied_manifest(
        &self,
        repo: &str,
        r: &Reference,
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<Descriptor, ApiError> {
        let m = Manifest::parse(bytes, content_type)
            .map_err(|e| ApiError::manifest_invalid(format!("upstream manifest: {e}")))?;
        let media_type = match &m {
            Manifest::Index(d) => d.value().media_type.clone(),
            Manifest::Image(d) => d.value().media_type.clone(),
        }
        .or_else(|| {
            content_type
                .filter(|c| mt::is_manifest_like(c))
                .map(str::to_string)
        })
        .unwrap_or_else(|| m.media_type().to_string());
        let _guard = self.layout.write_guard()?;
        let digest = m.digest().clone();
        let len = m.bytes().len() as u64;
        self.layout
            .ingest(&mut &m.bytes()[..], Some((&digest, Some(len))))?;
        self.touch(&digest);
        self.link(repo, &digest)?;
        let desc = Descriptor::new(media_type, digest.clone(), len);
        let mut names = vec![(
            self.name_for(repo, &Reference::Digest(digest)),
            desc.clone(),
        )];
        if let Reference::Tag(_) = r {
            names.push((self.name_for(repo, r), desc.clone()));
        }
        self.layout.set_names(&names)?;
        Ok(desc)
    }

    /// Removes a tag, or a manifest by digest with every tag on it. False when nothing matched.
    pub fn delete_manifest(&self, repo: &str, r: &Reference) -> Result<bool, ApiError> {
        let names: Vec<String> = self
            .entries()?
            .iter()
            .filter(|e| {
                e.repo == repo
                    && match r {
                        Reference::Tag(_) => &e.reference == r,
                        Reference::Digest(d) => &e.desc.digest == d,
                    }
            })
            .filter_map(|e| e.desc.annotations.get(REF_NAME).cloned())
            .collect();
        if names.is_empty() {
            return Ok(false);
        }
        self.layout.remove_names(&names)?;
        Ok(true)
    }

    /// The manifests of `repo` whose subject is `d`, as index entries.
    pub fn referrers(
        &self,
        repo: &str,
        d: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, ApiError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for e in self.entries()?.iter().filter(|e| e.repo == repo) {
            if !seen.insert(e.desc.digest.clone()) {
                continue;
            }
            let Ok(bytes) = self.layout.read_blob(&e.desc.digest) else {
                continue;
            };
            let Ok(m) = Manifest::parse(bytes, Some(&e.desc.media_type)) else {
                continue;
            };
            let (subject, at, ann) = match &m {
                Manifest::Image(doc) => {
                    let v = doc.value();
                    (
                        v.subject.as_ref(),
                        v.artifact_type
                            .clone()
                            .or_else(|| Some(v.config.media_type.clone())),
                        v.annotations.clone(),
                    )
                }
                Manifest::Index(doc) => {
                    let v = doc.value();
                    (
                        v.subject.as_ref(),
                        v.artifact_type.clone(),
                        v.annotations.clone(),
                    )
                }
            };
            if subject.map(|s| &s.digest) != Some(d) {
                continue;
            }
            if artifact_type.is_some() && at.as_deref() != artifact_type {
                continue;
            }
            let mut desc = Descriptor::new(
                e.desc.media_type.clone(),
                e.desc.digest.clone(),
                e.desc.size,
            );
            desc.artifact_type = at;
            desc.annotations = ann;
            out.push(desc);
        }
        Ok(out)
    }

    // ---- uploads ----

    pub fn upload_dir(&self, id: &str) -> PathBuf {
        self.state.join("uploads").join(id)
    }

    pub fn upload_data(&self, id: &str) -> PathBuf {
        self.upload_dir(id).join("data")
    }

    pub fn start_upload(&self, repo: &str) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.upload_dir(&id);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("repo"), repo)?;
        File::create(dir.join("data"))?;
        Ok(id)
    }

    /// The repository an upload belongs to, if the session exists.
    pub fn upload_repo(&self, id: &str) -> Option<String> {
        fs::read_to_string(self.upload_dir(id).join("repo")).ok()
    }

    pub fn cancel_upload(&self, id: &str) {
        let _ = fs::remove_dir_all(self.upload_dir(id));
    }

    /// Verifies a finished upload against `want` and moves it into the blob store.
    /// `hashed` is the digest computed while receiving, when every byte passed through us.
    pub fn finish_upload(
        &self,
        repo: &str,
        id: &str,
        want: &Digest,
        hashed: Option<Digest>,
    ) -> Result<(), ApiError> {
        let data = self.upload_data(id);
        let got = match hashed.filter(|h| h.algorithm() == want.algorithm()) {
            Some(h) => h,
            None => {
                let mut r = oci::DigestReader::new(
                    io::BufReader::with_capacity(1 << 20, File::open(&data)?),
                    want.algorithm(),
                );
                io::copy(&mut r, &mut io::sink())?;
                r.finish().0
            }
        };
        if &got != want {
            self.cancel_upload(id);
            return Err(ApiError::digest_invalid(format!(
                "the uploaded content hashes to {got}, not to {want}; nothing was stored"
            )));
        }
        let _guard = self.layout.write_guard()?;
        let dest = self.layout.blob_path(want);
        if self.layout.has_blob(want) {
            self.touch(want);
        } else {
            // The data is on disk before the name is, so a crash never leaves a visible blob
            // that is short (clients would trust it and never push it again). The directory
            // is not synced per blob (distribution syncs nothing): a rename lost in a crash
            // loses only the blob, which the client pushes again, and the manifest that names
            // it is written with a directory sync, which commits the earlier renames with it on
            // journaling filesystems. Streamed uploads start the writeback of each piece as it
            // arrives (handlers::append), so for large blobs this sync only waits for the tail.
            File::open(&data)?.sync_data()?;
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p)?;
            }
            fs::rename(&data, &dest)?;
        }
        self.link(repo, want)?;
        self.cancel_upload(id);
        Ok(())
    }

    // ---- garbage collection ----

    /// Deletes blobs no name reaches that are older than `grace`, links to deleted blobs, and
    /// upload sessions untouched for `upload_ttl`. Safe while the server runs: it waits for
    /// writers (they hold the layout's GC lock shared), and young blobs (just uploaded, not yet
    /// named by a manifest) are kept.
    pub fn gc(
        &self,
        grace: Duration,
        upload_ttl: Duration,
        delete_untagged: bool,
    ) -> Result<GcReport, ApiError> {
        let _lock = self.layout.gc_lock()?;
        let now = SystemTime::now();
        let age = |p: &Path| -> Duration {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default())
                .unwrap_or_default()
        };
        let mut report = GcReport::default();
        if delete_untagged {
            report.manifests_untagged = self.drop_untagged(grace, &age)?;
        }
        let mut marked = BTreeMap::new();
        let mut missing = Vec::new();
        for e in self.layout.index()?.manifests {
            self.layout.walk(&e, &mut marked, &mut missing)?;
        }
        let blobs = self.layout.root().join("blobs");
        for alg in fs::read_dir(&blobs)?.flatten() {
            let alg_name = alg.file_name().to_string_lossy().to_string();
            for f in fs::read_dir(alg.path())?.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                let Ok(d) = Digest::parse(&format!("{alg_name}:{name}")) else {
                    continue;
                };
                if marked.contains_key(&d) {
                    continue;
                }
                if age(&f.path()) < grace {
                    report.blobs_kept_young += 1;
                    continue;
                }
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(f.path()).is_ok() {
                    report.blobs_removed += 1;
                    report.bytes_freed += len;
                }
            }
        }
        // Links to blobs that are gone.
        let mut stack = vec![self.state.join("repos")];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let p = ent.path();
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(p);
                    continue;
                }
                let alg = p
                    .parent()
                    .and_then(|x| x.file_name())
                    .map(|x| x.to_string_lossy().to_string())
                    .unwrap_or_default();
                let hex = ent.file_name().to_string_lossy().to_string();
                if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                    if !self.layout.has_blob(&d) && fs::remove_file(&p).is_ok() {
                        report.links_removed += 1;
                    }
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.state.join("uploads")) {
            for ent in rd.flatten() {
                let p = ent.path();
                if age(&p.join("data")) >= upload_ttl && fs::remove_dir_all(&p).is_ok() {
                    report.uploads_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

impl Storage {
    /// Removes the digest names of manifests no tag of their repository reaches, when older
    /// than `grace` (a multi-platform push names its per-platform manifests before the tag).
    fn drop_untagged(
        &self,
        grace: Duration,
        age: &dyn Fn(&Path) -> Duration,
    ) -> Result<usize, ApiError> {
        let entries = self.entries()?;
        let mut reached: BTreeMap<&str, BTreeMap<Digest, u64>> = BTreeMap::new();
        for e in entries.iter() {
            if let Reference::Tag(_) = e.reference {
                let seen = reached.entry(&e.repo).or_default();
                self.layout.walk(&e.desc, seen, &mut Vec::new())?;
            }
        }
        let names: Vec<String> = entries
            .iter()
            .filter(|e| matches!(e.reference, Reference::Digest(_)))
            .filter(|e| {
                !reached
                    .get(e.repo.as_str())
                    .is_some_and(|r| r.contains_key(&e.desc.digest))
            })
            .filter(|e| age(&self.layout.blob_path(&e.desc.digest)) >= grace)
            .filter_map(|e| e.desc.annotations.get(REF_NAME).cloned())
            .collect();
        if names.is_empty() {
            return Ok(0);
        }
        Ok(self.layout.remove_names(&names)?.len())
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub manifests_untagged: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub blobs_kept_young: usize,
    pub links_removed: usize,
    pub uploads_removed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_with_a_port_map_to_host_underscore_port() {
        let t = tempfile::tempdir().unwrap();
        let st = Storage::open(t.path(), Naming::Store).unwrap();
        let tag = Reference::Tag("1".into());
        assert_eq!(st.canonical("localhost_5000/app"), "localhost_5000/app");
        assert_eq!(
            st.name_for("localhost_5000/app", &tag),
            "localhost:5000/app:1"
        );
        assert_eq!(
            st.parse_name("localhost:5000/app:1").map(|x| x.0),
            Some("localhost_5000/app".to_string())
        );
        assert_eq!(
            st.parse_name("10.0.0.1:443/a/b:1").map(|x| x.0),
            Some("10.0.0.1_443/a/b".to_string())
        );
        // Docker Hub and registries without a port are as before.
        assert_eq!(st.name_for("busybox", &tag), "docker.io/library/busybox:1");
        assert_eq!(
            st.parse_name("ghcr.io/a/b:1").map(|x| x.0),
            Some("ghcr.io/a/b".to_string())
        );
        assert_eq!(unmap_port("my_ns/app"), "my_ns/app");
        assert_eq!(unmap_port("a_1"), "a_1");
    }
}
