//! Blob transfer: verified streaming downloads that resume with `Range`, cross-repository mounts,
//! and uploads (one PUT for small blobs, PATCH chunks for large ones) that resume from the
//! registry's recorded range after a dropped connection.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Response, StatusCode, Url};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use oci::{Descriptor, Digest, Hasher, Reference};

use crate::client::{describe, redact, scope, Client, Host, Kind, Op};
use crate::Error;

const READ_BUF: usize = 256 << 10;

/// Where upload bytes come from; `open_at` lets an upload restart from any offset.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn AsyncRead + Send + Unpin>>;
}

/// A blob in a file.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource { path: path.into() }
    }
}

#[async_trait::async_trait]
impl BlobSource for FileSource {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let mut f = tokio::fs::File::open(&self.path).await.map_err(|e| {
            io::Error::new(e.kind(), format!("opening {}: {e}", self.path.display()))
        })?;
        f.seek(io::SeekFrom::Start(offset)).await?;
        Ok(Box::new(f))
    }
}

/// Bytes already in memory (configs, small layers).
#[async_trait::async_trait]
impl BlobSource for Bytes {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        Ok(Box::new(io::Cursor::new(self.slice(start..))))
    }
}

/// A blob in a registry, as the source of an upload to another (registry to registry copies
/// in bounded memory; a resumed upload reads on from the offset with `Range`).
#[derive(Clone, Debug)]
pub struct RegistryBlob {
    pub client: Client,
    pub repo: Reference,
    pub desc: Descriptor,
}

#[async_trait::async_trait]
impl BlobSource for RegistryBlob {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let s = self
            .client
            .get_blob_from(&self.repo, &self.desc, offset)
            .await
            .map_err(io::Error::other)?;
        Ok(Box::new(s))
    }
}

/// What `put_blob` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry already had the blob; nothing was sent.
    AlreadyPresent,
    /// The bytes were uploaded; `restarts` counts uploads begun again from zero.
    Uploaded { resumes: u32, restarts: u32 },
}

/// A blob being downloaded: an `AsyncRead` and a `Stream` of chunks. The digest and size are
/// checked as bytes pass; a mismatch is an `InvalidData` error at the end, naming both digests,
/// before end-of-stream is reported, so a consumer that commits only on a clean end never keeps
/// bad content. A dropped connection is resumed with `Range`.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    chunk: Bytes,
    resumes: Arc<std::sync::atomic::AtomicU32>,
}

impl BlobStream {
    /// How many times the download resumed after a dropped connection so far.
    pub fn resumes(&self) -> u32 {
        self.resumes.load(Ordering::Relaxed)
    }
}

impl AsyncRead for BlobStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = buf.remaining().min(this.chunk.len());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => this.chunk = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Stream for BlobStream {
    type Item = io::Result<Bytes>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.chunk.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.chunk))));
        }
        this.inner.as_mut().poll_next(cx)
    }
}

struct Pull {
    client: Client,
    /// The registry the reference names, and the hosts still to ask when this one fails
    /// (mirrors first, the registry last).
    registry: String,
    rest: Vec<(String, bool)>,
    host: Arc<Host>,
    /// Is `host` a mirror?
    mirror: bool,
    /// Failures on this host since it was chosen.
    host_failures: u32,
    /// Has this host's serving been recorded (once per host, not per resume)?
    noted: bool,
    repo: Reference,
    desc: Descriptor,
    url: Url,
    offset: u64,
    /// Bytes to drop from the next answer (a registry that ignored our Range).
    skip: u64,
    hasher: Option<Hasher>,
    resp: Option<Response>,
    resumes: Arc<std::sync::atomic::AtomicU32>,
    done: bool,
    /// Bytes received over the wire (skipped ones included), and since when the current
    /// stall window counts: (start, bytes received at its start).
    received: u64,
    window: (std::time::Instant, u64),
}

impl Pull {
    fn op(&self) -> Op<'static> {
        Op {
            name: "pulling blob",
            reference: format!("{}@{}", self.repo.repo_only(), self.desc.digest),
        }
    }

    fn content_err(&self, source: oci::Error) -> io::Error {
        let op = self.op();
        io::Error::new(
            io::ErrorKind::InvalidData,
            Error::Content {
                op: op.name.into(),
                reference: op.reference,
                host: self.host.name.clone(),
                source,
            },
        )
    }

    /// Gives up on the current host after `e`, and moves to the next one that connects.
    /// `Err` when there is none: the last error.
    async fn fall_back(&mut self, e: Error) -> Result<(), Error> {
        if self.mirror {
            self.client
                .note_mirror_failure(&self.registry, &self.host.name, &e);
        }
        if self.rest.is_empty() {
            return Err(e);
        }
        let (host, mirror) = self
            .client
            .connect_first(&self.registry, &mut self.rest)
            .await?;
        let url = self.client.url(
            &host,
            &format!("v2/{}/blobs/{}", self.repo.repository(), self.desc.digest),
        )?;
        tracing::debug!(from = %self.host.name, to = %host.name, offset = self.offset, "blob download moves to the next host");
        self.host = host;
        self.url = url;
        self.mirror = mirror;
        self.host_failures = 0;
        self.noted = false;
        self.resp = None;
        Ok(())
    }

    /// Opens the download on the current host, moving down the list of hosts while they fail.
    async fn open_any(&mut self) -> Result<Response, Error> {
        loop {
            match self.open().await {
                Ok(r) => {
                    if !self.noted {
                        self.noted = true;
                        self.client.note_served(
                            &self.registry,
                            &self.host.name,
                            self.mirror,
                            Kind::Blob,
                        );
                    }
                    return Ok(r);
                }
                Err(e) => self.fall_back(e).await?,
            }
        }
    }

    async fn open(&mut self) -> Result<Response, Error> {
        let op = self.op();
        let url = self.url.clone();
        let offset = self.offset;
        let resp = self
            .client
            .request_stream(
                &self.host,
                &[scope(self.repo.repository(), "pull")],
                &op,
                &|c| {
                    let rb = c.get(url.clone());
                    if offset > 0 {
                        rb.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        rb
                    }
                },
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                self.skip = offset;
                Ok(resp)
            }
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !cr.starts_with(&format!("bytes {offset}-")) {
                    return Err(Error::Protocol {
                        op: op.name.into(),
                        reference: op.reference,
                        host: self.host.name.clone(),
                        reason: format!("asked for bytes from {offset}, got Content-Range {cr:?}"),
                    });
                }
                self.skip = 0;
                Ok(resp)
            }
            _ => Err(self.client.refused(&self.host, &op, resp).await),
        }
    }

    /// The next verified chunk; `None` at a verified end.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let r = self.step().await;
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    async fn step(&mut self) -> Option<io::Result<Bytes>> {
        let size = self.desc.size;
        loop {
            if self.resp.is_none() {
                match self.open_any().await {
                    Ok(r) => self.resp = Some(r),
                    Err(e) => return Some(Err(io::Error::other(e))),
                }
                self.window = (std::time::Instant::now(), self.received);
            }
            let limit = self.client.options().read_timeout;
            let stall = self.client.options().stall_timeout;
            let moved = self.received - self.window.1;
            let next = if self.window.0.elapsed() >= stall && moved < crate::client::STALL_MIN_BYTES
            {
                Err(format!(
                    "stalled: {moved} bytes in {stall:?} (less than {} KiB); set MANIFOLD_STALL_TIMEOUT (seconds) to wait longer",
                    crate::client::STALL_MIN_BYTES >> 10
                ))
            } else {
                if self.window.0.elapsed() >= stall {
                    self.window = (std::time::Instant::now(), self.received);
                }
                let wait = limit.min(stall.saturating_sub(self.window.0.elapsed()));
                let resp = self.resp.as_mut()?;
                match tokio::time::timeout(wait, resp.chunk()).await {
                    Ok(r) => r.map_err(|e| describe(&e)),
                    // The stall window ended first: judge it above.
                    Err(_) if wait < limit => continue,
                    Err(_) => Err(format!("no data for {limit:?}")),
                }
            };
            let failure = match next {
                Ok(Some(mut b)) => {
                    self.received += b.len() as u64;
                    if self.skip > 0 {
                        let n = usize::try_from(self.skip)
                            .unwrap_or(usize::MAX)
                            .min(b.len());
                        let _ = b.split_to(n);
                        self.skip -= n as u64;
                        if b.is_empty() {
                            continue;
                        }
                    }
                    self.offset += b.len() as u64;
                    if self.offset > size {
                        return Some(Err(self.content_err(oci::Error::SizeMismatch {
                            digest: self.desc.digest.clone(),
                            expected: size,
                            actual: self.offset,
                        })));
                    }
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&b);
                    }
                    return Some(Ok(b));
                }
                Ok(None) if self.offset >= size => {
                    let actual = self.hasher.take()?.finish();
                    if actual != self.desc.digest {
                        return Some(Err(self.content_err(oci::Error::DigestMismatch {
                            expected: self.desc.digest.clone(),
                            actual,
                        })));
                    }
                    return None;
                }
                Ok(None) => format!("the connection ended at byte {} of {size}", self.offset),
                Err(e) => e,
            };
            self.resp = None;
            self.resumes.fetch_add(1, Ordering::Relaxed);
            self.host_failures += 1;
            if self.host_failures > self.host.retries {
                let op = self.op();
                let e = Error::Connect {
                    host: self.host.name.clone(),
                    url: redact(&self.url).to_string(),
                    attempts: self.host_failures,
                    reason: format!("{} for {}: {failure}", op.name, op.reference),
                };
                // The next host (a mirror's registry) goes on from this offset.
                match self.fall_back(e).await {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(io::Error::other(e))),
                }
            }
            tracing::debug!(host = %self.host.name, offset = self.offset, "resuming blob download after: {failure}");
        }
    }
}

/// Feeds exactly `len` bytes of a reader to a request body, and records a short source.
fn exact_body(
    reader: Box<dyn AsyncRead + Send + Unpin>,
    len: u64,
    failed: Arc<Mutex<Option<io::Error>>>,
) -> reqwest::Body {
    reqwest::Body::wrap_stream(exact_stream(reader, len, failed))
}

fn exact_stream(
    reader: Box<dyn AsyncRead + Send + Unpin>,
    len: u64,
    failed: Arc<Mutex<Option<io::Error>>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold(
        (reader.take(len), 0u64, false),
        move |(mut r, seen, ended)| {
            let failed = failed.clone();
            async move {
                if ended {
                    return None;
                }
                let mut buf = vec![0u8; READ_BUF.min((len - seen).max(1) as usize)];
                let fail = |e: io::Error| {
                    let msg = e.to_string();
                    if let Ok(mut g) = failed.lock() {
                        *g = Some(e);
                    }
                    io::Error::other(msg)
                };
                match r.read(&mut buf).await {
                    Ok(0) if seen < len => {
                        let e = fail(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the source ended after {seen} of {len} bytes"),
                        ));
                        Some((Err(e), (r, seen, true)))
                    }
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), (r, seen + n as u64, false)))
                    }
                    Err(e) => {
                        let e = fail(e);
                        Some((Err(e), (r, seen, true)))
                    }
                }
            }
        },
    )
}

/// Why an upload attempt stopped.
enum UploadErr {
    /// The registry lost or refused the session: begin a new one from zero.
    Restart(Error),
    Fatal(Error),
}

impl Client {
    /// The blob's size when `repo` has it, `None` when not.
    pub async fn blob_exists(&self, repo: &Reference, d: &Digest) -> Result<Option<u64>, Error> {
        let host = self.host(repo.api_host()).await?;
        let op = Op {
            name: "checking blob",
            reference: format!("{}@{d}", repo.repo_only()),
        };
        let url = self.url(&host, &format!("v2/{}/blobs/{d}", repo.repository()))?;
        let resp = self
            .request(&host, &[scope(repo.repository(), "pull")], &op, &|c| {
                c.head(url.clone())
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.refused(&host, &op, resp).await),
        }
    }

    /// Streams a blob, verified against `desc` (digest and size) as it passes.
    pub async fn get_blob(&self, repo: &Reference, desc: &Descriptor) -> Result<BlobStream, Error> {
        self.get_blob_from(repo, desc, 0).await
    }

    /// Streams a blob from byte `offset` on. From 0 it is verified like [`Client::get_blob`];
    /// from later only the size is (a digest needs every byte), which suits an upload that
    /// resumes, as the receiving registry checks the digest of the whole.
    pub async fn get_blob_from(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream, Error> {
        if offset > desc.size {
            return Err(Error::Invalid(format!(
                "blob {} has {} bytes; cannot read from {offset}",
                desc.digest, desc.size
            )));
        }
        let registry = repo.registry().to_string();
        let mut rest = self.pull_candidates(&registry);
        let (host, mirror) = self.connect_first(&registry, &mut rest).await?;
        let url = self.url(
            &host,
            &format!("v2/{}/blobs/{}", repo.repository(), desc.digest),
        )?;
        let resumes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut pull = Pull {
            client: self.clone(),
            registry,
            rest,
            mirror,
            host_failures: 0,
            noted: false,
            host,
            repo: repo.clone(),
            desc: desc.clone(),
            url,
            offset,
            skip: 0,
            hasher: (offset == 0).then(|| desc.digest.algorithm().hasher()),
            received: 0,
            window: (std::time::Instant::now(), 0),
            resp: None,
            resumes: resumes.clone(),
            done: false,
        };
        // Open now, so "not found" and auth failures surface here rather than on first read.
        pull.resp = Some(pull.open_any().await?);
        let st = stream::unfold(pull, |mut p| async move {
            let item = p.next().await?;
            Some((item, p))
        });
        Ok(BlobStream {
            inner: Box::pin(st),
            chunk: Bytes::new(),
            resumes,
        })
    }

    /// A whole small blob (a config), verified, refusing more than `max` bytes.
    pub async fn get_blob_bytes(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, Error> {
        if desc.size > max {
            return Err(Error::Invalid(format!(
                "blob {} of {} is {} bytes; more than the {max} allowed here",
                desc.digest,
                repo.repo_only(),
                desc.size
            )));
        }
        let mut s = self.get_blob(repo, desc).await?;
        let mut out = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(io_to_error)?);
        }
        Ok(out)
    }

    /// Asks the registry to link blob `d` from `from` into `repo` without sending it.
    /// `Ok(false)` means it did not (other registry, unknown blob, mounts off): upload instead.
    pub async fn mount_blob(
        &self,
        repo: &Reference,
        from: &Reference,
        d: &Digest,
    ) -> Result<bool, Error> {
        if from.api_host() != repo.api_host() {
            return Ok(false);
        }
        let host = self.host(repo.api_host()).await?;
        let op = Op {
            name: "mounting blob",
            reference: format!("{}@{d} from {}", repo.repo_only(), from.repository()),
        };
        let mut url = self.url(&host, &format!("v2/{}/blobs/uploads/", repo.repository()))?;
        url.query_pairs_mut()
            .append_pair("mount", &d.to_string())
            .append_pair("from", from.repository());
        let scopes = [
            scope(repo.repository(), "pull,push"),
            scope(from.repository(), "pull"),
        ];
        let resp = self
            .request(&host, &scopes, &op, &|c| {
                c.post(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead; close it so it does not linger.
                if let Ok(loc) = self.location(&host, &op, &resp) {
                    let _ = self
                        .request(&host, &scopes, &op, &|c| c.delete(loc.clone()))
                        .await;
                }
                Ok(false)
            }
            _ => Err(self.refused(&host, &op, resp).await),
        }
    }

    fn location(&self, host: &Host, op: &Op<'_>, resp: &Response) -> Result<Url, Error> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Protocol {
                op: op.name.into(),
                reference: op.reference.clone(),
                host: host.name.clone(),
                reason: format!("the registry answered {} without a Location", resp.status()),
            })?;
        // Relative locations are relative to the request URL; all of ours are under base.
        resp.url().join(loc).map_err(|e| Error::Protocol {
            op: op.name.into(),
            reference: op.reference.clone(),
            host: host.name.clone(),
            reason: format!("bad Location {loc:?}: {e}"),
        })
    }

    /// Uploads a blob unless the registry has it. Blobs up to `monolithic_max` go in one PUT;
    /// larger ones in PATCH chunks, resuming after a dropped connection from the range the
    /// registry reports, and starting over only when the registry lost the session.
    pub async fn put_blob(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        source: &dyn BlobSource,
    ) -> Result<BlobPush, Error> {
        if self.blob_exists(repo, &desc.digest).await?.is_some() {
            return Ok(BlobPush::AlreadyPresent);
        }
        let host = self.host(repo.api_host()).await?;
        let op = Op {
            name: "pushing blob",
            reference: format!("{}@{}", repo.repo_only(), desc.digest),
        };
        let scopes = [scope(repo.repository(), "pull,push")];
        let mut restarts = 0u32;
        let mut resumes = 0u32;
        loop {
            let start = self.url(&host, &format!("v2/{}/blobs/uploads/", repo.repository()))?;
            let resp = self
                .request(&host, &scopes, &op, &|c| {
                    c.post(start.clone()).header(CONTENT_LENGTH, "0")
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.refused(&host, &op, resp).await);
            }
            let loc = self.location(&host, &op, &resp)?;
            let r = if desc.size <= self.inner.opts.monolithic_max {
                self.put_whole(&host, &op, &scopes, desc, source, loc).await
            } else {
                self.put_chunks(&host, &op, &scopes, desc, source, loc, &mut resumes)
                    .await
            };
            match r {
                Ok(()) => return Ok(BlobPush::Uploaded { resumes, restarts }),
                Err(UploadErr::Restart(e)) if restarts < self.inner.opts.max_retries => {
                    restarts += 1;
                    tracing::debug!(host = %host.name, "starting the upload of {} again: {e}", desc.digest);
                    tokio::time::sleep(self.inner.opts.backoff_base).await;
                }
                Err(UploadErr::Restart(e) | UploadErr::Fatal(e)) => return Err(e),
            }
        }
    }

    async fn put_whole(
        &self,
        host: &Arc<Host>,
        op: &Op<'_>,
        scopes: &[String],
        desc: &Descriptor,
        source: &dyn BlobSource,
        mut loc: Url,
    ) -> Result<(), UploadErr> {
        let reader = source.open_at(0).await.map_err(|e| {
            UploadErr::Fatal(Error::Source {
                op: op.name.into(),
                reference: op.reference.clone(),
                source: e,
            })
        })?;
        let failed = Arc::new(Mutex::new(None));
        loc.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let rb = host
            .http
            .put(loc)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, desc.size)
            .body(exact_body(reader, desc.size, failed.clone()));
        match self
            .send_once(host, scopes, op, rb)
            .await
            .map_err(UploadErr::Fatal)?
        {
            Ok(resp) if resp.status().is_success() => self.check_committed(host, op, desc, &resp),
            Ok(resp) => {
                let retry = resp.status().is_server_error()
                    || resp.status() == StatusCode::TOO_MANY_REQUESTS;
                let e = self.refused(host, op, resp).await;
                Err(if retry {
                    UploadErr::Restart(e)
                } else {
                    UploadErr::Fatal(e)
                })
            }
            Err(e) => Err(self.send_failure(host, op, &failed, &e)),
        }
    }

    fn send_failure(
        &self,
        host: &Host,
        op: &Op<'_>,
        failed: &Mutex<Option<io::Error>>,
        e: &reqwest::Error,
    ) -> UploadErr {
        if let Some(src) = failed.lock().ok().and_then(|mut g| g.take()) {
            return UploadErr::Fatal(Error::Source {
                op: op.name.into(),
                reference: op.reference.clone(),
                source: src,
            });
        }
        UploadErr::Restart(Error::Connect {
            host: host.name.clone(),
            url: redact(&host.base).to_string(),
            attempts: 1,
            reason: describe(e),
        })
    }

    fn check_committed(
        &self,
        host: &Host,
        op: &Op<'_>,
        desc: &Descriptor,
        resp: &Response,
    ) -> Result<(), UploadErr> {
        if let Some(d) = crate::ops::header_digest(resp) {
            if d != desc.digest {
                return Err(UploadErr::Fatal(Error::Protocol {
                    op: op.name.into(),
                    reference: op.reference.clone(),
                    host: host.name.clone(),
                    reason: format!("the registry stored {d} instead of {}", desc.digest),
                }));
            }
        }
        Ok(())
    }

    /// The upload's progress as the registry recorded it: (next offset, location).
    async fn upload_status(
        &self,
        host: &Arc<Host>,
        op: &Op<'_>,
        scopes: &[String],
        loc: &Url,
    ) -> Result<(u64, Url), UploadErr> {
        let resp = self
            .request(host, scopes, op, &|c| c.get(loc.clone()))
            .await
            .map_err(UploadErr::Restart)?;
        if !resp.status().is_success() {
            // BLOB_UPLOAD_UNKNOWN / BLOB_UPLOAD_INVALID: the session is gone.
            return Err(UploadErr::Restart(self.refused(host, op, resp).await));
        }
        let next = range_end(resp.headers()).map_or(0, |e| e + 1);
        let loc = self
            .location(host, op, &resp)
            .unwrap_or_else(|_| loc.clone());
        Ok((next, loc))
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_chunks(
        &self,
        host: &Arc<Host>,
        op: &Op<'_>,
        scopes: &[String],
        desc: &Descriptor,
        source: &dyn BlobSource,
        mut loc: Url,
        resumes: &mut u32,
    ) -> Result<(), UploadErr> {
        let size = desc.size;
        let chunk = self.inner.opts.chunk_size;
        let mut offset = 0u64;
        let mut failures = 0u32;
        while offset < size {
            let len = chunk.min(size - offset);
            let reader = source.open_at(offset).await.map_err(|e| {
                UploadErr::Fatal(Error::Source {
                    op: op.name.into(),
                    reference: op.reference.clone(),
                    source: e,
                })
            })?;
            let failed = Arc::new(Mutex::new(None));
            let rb = host
                .http
                .patch(loc.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                .body(exact_body(reader, len, failed.clone()));
            let failure = match self
                .send_once(host, scopes, op, rb)
                .await
                .map_err(UploadErr::Fatal)?
            {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    let new_loc = self.location(host, op, &resp).map_err(UploadErr::Fatal)?;
                    let next = range_end(resp.headers()).map_or(offset + len, |e| e + 1);
                    if next != offset + len {
                        tracing::debug!(host = %host.name, "registry recorded {next} bytes, expected {}", offset + len);
                    }
                    loc = new_loc;
                    offset = next;
                    failures = 0;
                    continue;
                }
                Ok(resp) => {
                    let s = resp.status();
                    let e = self.refused(host, op, resp).await;
                    if !(s.is_server_error()
                        || s == StatusCode::TOO_MANY_REQUESTS
                        || s == StatusCode::UNAUTHORIZED)
                    {
                        return Err(UploadErr::Restart(e));
                    }
                    e
                }
                Err(e) => match self.send_failure(host, op, &failed, &e) {
                    UploadErr::Restart(e) => e,
                    fatal => return Err(fatal),
                },
            };
            failures += 1;
            if failures > self.inner.opts.max_retries {
                return Err(UploadErr::Fatal(failure));
            }
            tracing::debug!(host = %host.name, offset, "upload interrupted, asking the registry where to resume: {failure}");
            tokio::time::sleep(self.backoff_for(failures)).await;
            let (next, new_loc) = self.upload_status(host, op, scopes, &loc).await?;
            *resumes += 1;
            offset = next;
            loc = new_loc;
        }
        loc.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self
            .request(host, scopes, op, &|c| {
                c.put(loc.clone()).header(CONTENT_LENGTH, "0")
            })
            .await
            .map_err(UploadErr::Restart)?;
        if resp.status().is_success() {
            return self.check_committed(host, op, desc, &resp);
        }
        let s = resp.status();
        let e = self.refused(host, op, resp).await;
        // DIGEST_INVALID means the bytes we sent are not the blob: sending them again won't help.
        if e.codes().contains(&"DIGEST_INVALID")
            || s == StatusCode::BAD_REQUEST && e.codes().is_empty()
        {
            return Err(UploadErr::Fatal(e));
        }
        Err(UploadErr::Restart(e))
    }

    fn backoff_for(&self, n: u32) -> std::time::Duration {
        let o = &self.inner.opts;
        o.backoff_base
            .saturating_mul(1u32 << n.min(16))
            .min(o.backoff_max)
    }
}

/// The end of `Range: 0-N` in an upload answer.
fn range_end(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = h.get(RANGE)?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    let (start, end) = v.split_once('-')?;
    let (start, end) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
    );
    // "0-0" is what distribution answers for an empty upload too; treat it as nothing yet.
    if start == 0 && end == 0 {
        return None;
    }
    Some(end)
}

fn io_to_error(e: io::Error) -> Error {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Invalid(other.to_string()),
        },
        None => Error::Invalid("blob stream failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn range(v: &str) -> Option<u64> {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_str(v).unwrap());
        range_end(&h)
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(range("0-1048575"), Some(1048575));
        assert_eq!(range("bytes=0-99"), Some(99));
        assert_eq!(range("0-0"), None);
        assert_eq!(range("garbage"), None);
        assert_eq!(range_end(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn bytes_source_opens_at_offsets() {
        let src = Bytes::from_static(b"hello world");
        let mut out = String::new();
        src.open_at(6)
            .await
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "world");
        let mut rest = Vec::new();
        src.open_at(99)
            .await
            .unwrap()
            .read_to_end(&mut rest)
            .await
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn exact_stream_passes_exactly_len_bytes() {
        use futures_util::TryStreamExt;
        let failed = Arc::new(Mutex::new(None));
        let st = exact_stream(Box::new(&b"abcdef"[..]), 4, failed.clone());
        let got: Vec<Bytes> = st.try_collect().await.unwrap();
        assert_eq!(got.concat(), b"abcd");
        assert!(failed.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn exact_stream_reports_a_short_source() {
        use futures_util::TryStreamExt;
        let failed = Arc::new(Mutex::new(None));
        let st = exact_stream(Box::new(&b"abc"[..]), 5, failed.clone());
        let collected: Result<Vec<Bytes>, _> = st.try_collect().await;
        assert!(collected.is_err());
        let err = failed.lock().unwrap().take().unwrap().to_string();
        assert!(err.contains("after 3 of 5 bytes"), "{err}");
    }
}
