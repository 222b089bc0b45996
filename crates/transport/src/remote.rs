//! A registry repository as a copy [`Source`] and [`Target`].
//!
//! The copy routine is synchronous and runs transfers on its own threads; the registry client is
//! async. Each call here blocks its copy thread on the shared runtime. Uploads never read a sync
//! stream inside the runtime: their bytes come from a local file range, another registry, or
//! memory, each read asynchronously, so an upload can restart at any offset.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use oci::media_type as mt;
use oci::{Descriptor, Digest, Reference};
use registry::{BlobSource, Client};
use store::{FileRange, Put, Source, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::runtime::Handle;

/// One repository of one registry.
pub struct RegistryRepo {
    client: Client,
    repo: Reference,
    rt: Handle,
    /// Manifests fetched or pushed, by digest, so naming one needs no second fetch.
    manifests: Mutex<HashMap<Digest, Vec<u8>>>,
}

fn backend(e: registry::Error) -> store::Error {
    store::Error::Backend(Box::new(e))
}

impl RegistryRepo {
    pub fn new(client: Client, reference: &Reference, rt: Handle) -> Self {
        RegistryRepo {
            client,
            repo: reference.repo_only(),
            rt,
            manifests: Mutex::new(HashMap::new()),
        }
    }

    pub fn repository(&self) -> &Reference {
        &self.repo
    }

    /// The reference a name means here: a tag, a digest, or a full reference (its selector).
    fn reference_for(&self, name: &str) -> store::Result<Reference> {
        if let Ok(d) = Digest::parse(name) {
            return Ok(self.repo.with_digest(d));
        }
        if let Ok(r) = Reference::parse(name) {
            if name.contains('/') || name.contains('@') {
                return Ok(match (r.digest(), r.tag()) {
                    (Some(d), _) => self.repo.with_digest(d.clone()),
                    (None, Some(t)) => self.repo.with_tag(t)?,
                    (None, None) => self.repo.with_tag("latest")?,
                });
            }
        }
        Ok(self.repo.with_tag(name)?)
    }

    fn remember(&self, d: &Digest, bytes: &[u8]) {
        if let Ok(mut m) = self.manifests.lock() {
            m.insert(d.clone(), bytes.to_vec());
        }
    }

    fn manifest_bytes(&self, desc: &Descriptor) -> store::Result<Vec<u8>> {
        if let Some(b) = self
            .manifests
            .lock()
            .ok()
            .and_then(|m| m.get(&desc.digest).cloned())
        {
            return Ok(b);
        }
        let r = self.repo.with_digest(desc.digest.clone());
        let m = self
            .rt
            .block_on(self.client.get_manifest(&r))
            .map_err(backend)?;
        self.remember(&desc.digest, m.bytes());
        Ok(m.bytes().to_vec())
    }
}

impl Source for RegistryRepo {
    fn describe(&self) -> String {
        format!("registry repository {}", self.repo)
    }

    fn resolve(&self, name: &str) -> store::Result<Descriptor> {
        let r = self.reference_for(name)?;
        let m = self
            .rt
            .block_on(self.client.get_manifest(&r))
            .map_err(backend)?;
        self.remember(m.digest(), m.bytes());
        Ok(m.descriptor())
    }

    fn open_at(&self, desc: &Descriptor, offset: u64) -> store::Result<Box<dyn Read + Send + '_>> {
        if mt::is_manifest_like(&desc.media_type) {
            let bytes = self.manifest_bytes(desc)?;
            let start = (offset as usize).min(bytes.len());
            return Ok(Box::new(io::Cursor::new(bytes[start..].to_vec())));
        }
        let stream = self
            .rt
            .block_on(self.client.get_blob(&self.repo, desc))
            .map_err(backend)?;
        let mut r = tokio_util::io::SyncIoBridge::new_with_handle(stream, self.rt.clone());
        if offset > 0 {
            io::copy(&mut (&mut r).take(offset), &mut io::sink())
                .map_err(|e| store::Error::from_read(e, &Source::describe(self)))?;
        }
        Ok(Box::new(r))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl Target for RegistryRepo {
    fn describe(&self) -> String {
        Source::describe(self)
    }

    fn has(&self, desc: &Descriptor) -> store::Result<bool> {
        if mt::is_manifest_like(&desc.media_type) {
            let r = self.repo.with_digest(desc.digest.clone());
            return Ok(self
                .rt
                .block_on(self.client.head_manifest(&r))
                .map_err(backend)?
                .is_some());
        }
        Ok(self
            .rt
            .block_on(self.client.blob_exists(&self.repo, &desc.digest))
            .map_err(backend)?
            == Some(desc.size))
    }

    fn put(&self, desc: &Descriptor, src: &dyn Source) -> store::Result<Put> {
        if mt::is_manifest_like(&desc.media_type) {
            let bytes = src.read_verified(desc)?;
            let r = self.repo.with_digest(desc.digest.clone());
            self.rt
                .block_on(self.client.put_manifest(&r, &bytes, &desc.media_type))
                .map_err(backend)?;
            self.remember(&desc.digest, &bytes);
            return Ok(Put::Written);
        }
        let other = src.as_any().and_then(|a| a.downcast_ref::<RegistryRepo>());
        if let Some(other) = other {
            if other.repo.registry() == self.repo.registry() && other.repo != self.repo {
                let mounted = self
                    .rt
                    .block_on(
                        self.client
                            .mount_blob(&self.repo, &other.repo, &desc.digest),
                    )
                    .map_err(backend)?;
                if mounted {
                    return Ok(Put::Mounted);
                }
            }
        }
        // Where the source says the blob also lives (a build's base image): mount from there.
        for origin in src.also_in(&desc.digest) {
            let Ok(from) = Reference::parse(&origin) else {
                continue;
            };
            let from = from.repo_only();
            if from.registry() != self.repo.registry() || from == self.repo {
                continue;
            }
            let mounted = self
                .rt
                .block_on(self.client.mount_blob(&self.repo, &from, &desc.digest))
                .map_err(backend)?;
            if mounted {
                return Ok(Put::Mounted);
            }
        }
        let source: Box<dyn BlobSource> = if let Some(other) = other {
            Box::new(registry::RegistryBlob {
                client: other.client.clone(),
                repo: other.repo.clone(),
                desc: desc.clone(),
            })
        } else if let Some(range) = src.local_file(desc) {
            Box::new(LocalRange(range))
        } else {
            let mut buf = Vec::new();
            src.open(desc)?
                .read_to_end(&mut buf)
                .map_err(|e| store::Error::from_read(e, &src.describe()))?;
            Box::new(Bytes::from(buf))
        };
        self.rt
            .block_on(self.client.put_blob(&self.repo, desc, source.as_ref()))
            .map_err(backend)?;
        Ok(Put::Written)
    }

    fn set_name(&self, name: &str, desc: &Descriptor) -> store::Result<()> {
        let r = self.reference_for(name)?;
        if r.tag().is_none() {
            return Ok(()); // a digest names itself
        }
        let bytes = self.manifest_bytes(desc)?;
        self.rt
            .block_on(self.client.put_manifest(&r, &bytes, &desc.media_type))
            .map_err(backend)?;
        Ok(())
    }
}

/// Upload bytes from a range of a local file (a store blob or an archive member).
struct LocalRange(FileRange);

#[async_trait]
impl BlobSource for LocalRange {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let mut f = tokio::fs::File::open(&self.0.path).await?;
        let skip = offset.min(self.0.len);
        f.seek(io::SeekFrom::Start(self.0.offset + skip)).await?;
        Ok(Box::new(f.take(self.0.len - skip)))
    }
}
