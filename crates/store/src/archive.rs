//! Tar archives of images: OCI archives (a tar of an OCI layout) and docker-archives (`docker
//! save`: `manifest.json` with config and layer files), read and written through the same
//! [`Source`]/[`Target`] traits as every other place.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use oci::media_type as mt;
use oci::{
    Descriptor, Digest, Document, ImageConfig, ImageManifest, Index, Manifest, Matcher, Platform,
    Reference,
};
use serde::{Deserialize, Serialize};

use crate::layout::REF_NAME;
use crate::transfer::{FileRange, Put, Source, Target};
use crate::{io_err, Error, Result};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// An entry of docker's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A tar archive read in place: one pass records where each file is, blobs are then served by
/// seeking. A compressed archive is decompressed into a temporary file first.
pub struct TarSource {
    label: String,
    /// The uncompressed tar on disk (the archive itself, or its decompressed spool).
    path: PathBuf,
    file: Mutex<File>,
    _spool: Option<tempfile::NamedTempFile>,
    files: HashMap<String, (u64, u64)>,
    /// Blobs by digest: a file in the archive, or bytes we made (docker-archive manifests).
    blobs: HashMap<Digest, BlobAt>,
    roots: Vec<(Option<String>, Descriptor)>,
    pub format: ArchiveFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Oci,
    Docker,
}

enum BlobAt {
    File(u64, u64),
    Made(Vec<u8>),
}

impl TarSource {
    /// Opens an archive (`.tar`, or gzip/zstd-compressed), telling OCI from docker-archive.
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let mut f = File::open(path).map_err(|e| io_err(path, e))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut f, &mut magic).map_err(|e| io_err(path, e))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| io_err(path, e))?;
        let (file, spool, tar_path) =
            if magic[..n].starts_with(GZIP_MAGIC) || magic[..n].starts_with(ZSTD_MAGIC) {
                let dir = std::env::temp_dir();
                let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io_err(&dir, e))?;
                let mut dec: Box<dyn Read> = if magic[..n].starts_with(GZIP_MAGIC) {
                    Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)))
                } else {
                    Box::new(zstd::Decoder::new(f).map_err(|e| io_err(path, e))?)
                };
                io::copy(&mut dec, tmp.as_file_mut()).map_err(|e| io_err(path, e))?;
                let file = tmp.reopen().map_err(|e| io_err(tmp.path(), e))?;
                let p = tmp.path().to_path_buf();
                (file, Some(tmp), p)
            } else {
                (f, None, path.to_path_buf())
            };
        Self::scan(label, tar_path, file, spool)
    }

    fn scan(
        label: String,
        path: PathBuf,
        file: File,
        spool: Option<tempfile::NamedTempFile>,
    ) -> Result<Self> {
        let bad = |reason: String| Error::InvalidArchive {
            path: label.clone(),
            reason,
        };
        let mut files = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        {
            let mut ar = tar::Archive::new(BufReader::new(&file));
            let entries = ar
                .entries()
                .map_err(|e| bad(format!("not a tar archive: {e}")))?;
            let mut last: Option<String> = None;
            for ent in entries {
                // The tar crate's messages quote header bytes: never echo the input back.
                let ent = ent.map_err(|e| {
                    bad(match e.kind() {
                        io::ErrorKind::Other
                        | io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof => match &last {
                            None => "not a tar archive (it does not start with a tar header); give an OCI \
                                     archive, a docker-archive (plain, .gz or .zst) or an OCI layout directory"
                                .to_string(),
                            Some(n) => format!("broken tar entry after {n:?}: the archive is truncated or corrupt"),
                        },
                        k => format!("reading it failed: {k}"),
                    })
                })?;
                let raw = ent.path_bytes();
                let name = String::from_utf8_lossy(&raw).to_string();
                last = Some(name.clone());
                let clean = clean_path(&name).ok_or_else(|| {
                    bad(format!(
                        "entry {name:?} points outside the archive; refusing to read it"
                    ))
                })?;
                match ent.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        files.insert(clean, (ent.raw_file_position(), ent.size()));
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        let target = ent
                            .link_name_bytes()
                            .map(|b| String::from_utf8_lossy(&b).to_string())
                            .unwrap_or_default();
                        let joined = if ent.header().entry_type() == tar::EntryType::Symlink {
                            let parent = Path::new(&clean).parent().unwrap_or(Path::new(""));
                            parent.join(&target).to_string_lossy().to_string()
                        } else {
                            target.clone()
                        };
                        let resolved = clean_path(&joined).ok_or_else(|| {
                            bad(format!(
                                "link {name:?} -> {target:?} points outside the archive"
                            ))
                        })?;
                        links.push((clean, resolved));
                    }
                    _ => {}
                }
            }
        }
        for (from, to) in links {
            if let Some(pos) = files.get(&to).copied() {
                files.insert(from, pos);
            }
        }
        let mut src = TarSource {
            label: label.clone(),
            path,
            file: Mutex::new(file),
            _spool: spool,
            files,
            blobs: HashMap::new(),
            roots: Vec::new(),
            format: ArchiveFormat::Oci,
        };
        if src.files.contains_key("index.json") && src.files.contains_key("oci-layout") {
            src.load_oci()?;
        } else if src.files.contains_key("manifest.json") {
            src.format = ArchiveFormat::Docker;
            src.load_docker()?;
        } else {
            return Err(bad(
                "neither an OCI archive (no oci-layout and index.json) nor a docker-archive \
                 (no manifest.json)"
                    .into(),
            ));
        }
        Ok(src)
    }

    fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let (off, size) = *self.files.get(name).ok_or_else(|| Error::InvalidArchive {
            path: self.label.clone(),
            reason: format!("it has no file {name:?}"),
        })?;
        let mut buf = Vec::new();
        self.section(off, size)?
            .read_to_end(&mut buf)
            .map_err(|e| io_err(Path::new(&self.label), e))?;
        Ok(buf)
    }

    fn section(&self, off: u64, size: u64) -> Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(Section {
            file: &self.file,
            pos: off,
            end: off + size,
        }))
    }

    fn load_oci(&mut self) -> Result<()> {
        for (name, &(off, size)) in &self.files {
            if let Some(rest) = name.strip_prefix("blobs/") {
                if let Some((alg, hex)) = rest.split_once('/') {
                    if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                        self.blobs.insert(d, BlobAt::File(off, size));
                    }
                }
            }
        }
        let idx = Document::<Index>::parse(self.read_file("index.json")?).map_err(|e| {
            Error::InvalidArchive {
                path: self.label.clone(),
                reason: format!("index.json: {e}"),
            }
        })?;
        for d in &idx.value().manifests {
            let name = d
                .annotations
                .get(oci::manifest::ANNOTATION_CONTAINERD_NAME)
                .or_else(|| d.annotations.get(REF_NAME))
                .cloned();
            self.roots.push((name, d.clone()));
        }
        Ok(())
    }

    fn load_docker(&mut self) -> Result<()> {
        let label = self.label.clone();
        let bad = |reason: String| Error::InvalidArchive {
            path: label.clone(),
            reason,
        };
        let entries: Vec<DockerEntry> = serde_json::from_slice(&self.read_file("manifest.json")?)
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        for (n, e) in entries.iter().enumerate() {
            let cfg_bytes = self.read_file(&clean_path(&e.config).unwrap_or_default())?;
            let cfg = Document::<ImageConfig>::parse(cfg_bytes.clone())
                .map_err(|err| bad(format!("config {} of image {}: {err}", e.config, n + 1)))?;
            let cfg_digest = cfg.digest().clone();
            let (off, size) = self.files[&clean_path(&e.config).unwrap_or_default()];
            self.blobs
                .insert(cfg_digest.clone(), BlobAt::File(off, size));
            let diff_ids = &cfg.value().rootfs.diff_ids;
            if diff_ids.len() != e.layers.len() {
                return Err(bad(format!(
                    "image {} lists {} layers but its config has {} diff_ids",
                    n + 1,
                    e.layers.len(),
                    diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            for (i, lp) in e.layers.iter().enumerate() {
                let p = clean_path(lp).unwrap_or_default();
                let (off, size) = *self.files.get(&p).ok_or_else(|| {
                    bad(format!(
                        "image {} names layer {lp:?}, which is not in the archive",
                        n + 1
                    ))
                })?;
                let (digest, diff_id, media_type) = self.hash_layer(off, size)?;
                if diff_id != diff_ids[i] {
                    return Err(bad(format!(
                        "layer {} of image {} ({lp}) has diff ID {diff_id}, but the config expects {}",
                        i + 1,
                        n + 1,
                        diff_ids[i]
                    )));
                }
                self.blobs.insert(digest.clone(), BlobAt::File(off, size));
                layers.push(Descriptor::new(media_type, digest, size));
            }
            let man = ImageManifest {
                schema_version: 2,
                media_type: Some(mt::OCI_MANIFEST.into()),
                artifact_type: None,
                config: Descriptor::new(mt::OCI_CONFIG, cfg_digest, cfg.size()),
                layers,
                subject: None,
                annotations: Default::default(),
                extra: Default::default(),
            };
            let doc = Document::new(man);
            let mut desc = doc.descriptor(mt::OCI_MANIFEST);
            desc.platform = Some(cfg.value().platform());
            self.blobs
                .insert(doc.digest().clone(), BlobAt::Made(doc.into_bytes()));
            let tags = e.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                self.roots.push((None, desc.clone()));
            }
            for t in tags {
                let name = Reference::parse(&t).map(|r| r.to_string()).unwrap_or(t);
                self.roots.push((Some(name), desc.clone()));
            }
        }
        Ok(())
    }

    /// Digest of the file, digest of its uncompressed content, and its layer media type.
    fn hash_layer(&self, off: u64, size: u64) -> Result<(Digest, Digest, &'static str)> {
        let path = Path::new(&self.label);
        let mut head = [0u8; 4];
        let n =
            read_up_to(&mut self.section(off, size)?, &mut head).map_err(|e| io_err(path, e))?;
        let mut outer = oci::DigestReader::new(self.section(off, size)?, oci::Algorithm::Sha256);
        let (inner, media_type) = if head[..n].starts_with(GZIP_MAGIC) {
            let mut dec = oci::DigestReader::new(
                flate2::read::MultiGzDecoder::new(BufReader::new(&mut outer)),
                oci::Algorithm::Sha256,
            );
            io::copy(&mut dec, &mut io::sink()).map_err(|e| io_err(path, e))?;
            (dec.finish().0, mt::OCI_LAYER_GZIP)
        } else if head[..n].starts_with(ZSTD_MAGIC) {
            let mut dec = oci::DigestReader::new(
                zstd::Decoder::new(&mut outer).map_err(|e| io_err(path, e))?,
                oci::Algorithm::Sha256,
            );
            io::copy(&mut dec, &mut io::sink()).map_err(|e| io_err(path, e))?;
            (dec.finish().0, mt::OCI_LAYER_ZSTD)
        } else {
            io::copy(&mut outer, &mut io::sink()).map_err(|e| io_err(path, e))?;
            (Digest::sha256_of(b""), mt::OCI_LAYER_TAR)
        };
        io::copy(&mut outer, &mut io::sink()).map_err(|e| io_err(path, e))?;
        let (digest, _) = outer.finish();
        let diff_id = if media_type == mt::OCI_LAYER_TAR {
            digest.clone()
        } else {
            inner
        };
        Ok((digest, diff_id, media_type))
    }
}

impl Source for TarSource {
    fn describe(&self) -> String {
        match self.format {
            ArchiveFormat::Oci => format!("OCI archive {}", self.label),
            ArchiveFormat::Docker => format!("docker-archive {}", self.label),
        }
    }

    fn resolve(&self, name: &str) -> Result<Descriptor> {
        let want_full = Reference::parse(name).map(|r| r.to_string()).ok();
        for (n, d) in &self.roots {
            if let Some(n) = n {
                if n == name || Some(n) == want_full.as_ref() {
                    return Ok(d.clone());
                }
                if d.annotations.get(REF_NAME).map(String::as_str) == Some(name) {
                    return Ok(d.clone());
                }
            }
            if d.digest.to_string() == name {
                return Ok(d.clone());
            }
        }
        if name.is_empty() && self.roots.len() == 1 {
            return Ok(self.roots[0].1.clone());
        }
        Err(Error::NotFound {
            name: name.to_string(),
            place: self.describe(),
            known: self.roots.iter().filter_map(|(n, _)| n.clone()).collect(),
        })
    }

    fn open_at(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send + '_>> {
        match self.blobs.get(&desc.digest) {
            Some(BlobAt::File(off, size)) => {
                let skip = offset.min(*size);
                self.section(off + skip, size - skip)
            }
            Some(BlobAt::Made(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                Ok(Box::new(io::Cursor::new(bytes[start..].to_vec())))
            }
            None => Err(Error::BlobMissing {
                digest: desc.digest.clone(),
                place: self.describe(),
            }),
        }
    }

    fn entries(&self) -> Result<Vec<(Option<String>, Descriptor)>> {
        Ok(self.roots.clone())
    }

    fn local_file(&self, desc: &Descriptor) -> Option<FileRange> {
        match self.blobs.get(&desc.digest)? {
            BlobAt::File(off, size) => Some(FileRange {
                path: self.path.clone(),
                offset: *off,
                len: *size,
            }),
            BlobAt::Made(_) => None,
        }
    }
}

struct Section<'a> {
    file: &'a Mutex<File>,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end {
            return Ok(0);
        }
        let want = buf.len().min((self.end - self.pos) as usize);
        let mut f = self
            .file
            .lock()
            .map_err(|_| io::Error::other("archive reader poisoned"))?;
        f.seek(SeekFrom::Start(self.pos))?;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends in the middle of a file",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Normalizes an archive path; `None` when it climbs out of the archive or is absolute.
fn clean_path(p: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Writes a tar into a temporary file beside `dest` and renames it into place on `finish`:
/// an interrupted export leaves no half-written archive under the destination name. A `dest` of
/// `-` is standard output (written on `finish`; refused when it is a terminal).
struct TarOut {
    dest: PathBuf,
    tmp: tempfile::NamedTempFile,
    builder: tar::Builder<io::BufWriter<File>>,
}

impl TarOut {
    fn create(dest: &Path) -> Result<Self> {
        let stdout = is_stdout(dest);
        if stdout && io::stdout().is_terminal() {
            return Err(Error::Unsupported(
                "refusing to write an archive to a terminal (dest `-` is standard output); \
                 redirect it to a file or a pipe, or give a file name"
                    .into(),
            ));
        }
        let dir = if stdout {
            std::env::temp_dir()
        } else {
            dest.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        };
        let dir = dir.as_path();
        let tmp = tempfile::Builder::new()
            .prefix(".manifold-")
            .tempfile_in(dir)
            .map_err(|e| io_err(dir, e))?;
        crate::follow_umask(tmp.as_file(), tmp.path())?;
        let f = tmp.reopen().map_err(|e| io_err(tmp.path(), e))?;
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f));
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(TarOut {
            dest: dest.to_path_buf(),
            tmp,
            builder,
        })
    }

    fn append(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut h, name, data)
            .map_err(|e| Error::from_read(e, &self.dest.display().to_string()))
    }

    fn append_dir(&mut self, name: &str) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Directory);
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(|e| io_err(&self.dest, e))
    }

    fn finish(self) -> Result<()> {
        let TarOut { dest, tmp, builder } = self;
        let mut w = builder.into_inner().map_err(|e| io_err(&dest, e))?;
        w.flush().map_err(|e| io_err(&dest, e))?;
        let f = w.into_inner().map_err(|e| io_err(&dest, e.into_error()))?;
        if is_stdout(&dest) {
            let mut r = tmp.reopen().map_err(|e| io_err(tmp.path(), e))?;
            let mut out = io::stdout().lock();
            io::copy(&mut r, &mut out).map_err(|e| io_err(&dest, e))?;
            return out.flush().map_err(|e| io_err(&dest, e));
        }
        f.sync_all().map_err(|e| io_err(&dest, e))?;
        tmp.persist(&dest).map_err(|e| io_err(&dest, e.error))?;
        Ok(())
    }
}

/// `-` as a destination: standard output, as docker takes it.
pub fn is_stdout(dest: &Path) -> bool {
    dest.as_os_str() == "-"
}

/// What both archive targets keep while writing: the tar, the blobs written and the names given.
struct ArchiveWriter {
    out: Mutex<Option<TarOut>>,
    written: Mutex<HashMap<Digest, u64>>,
    names: Mutex<Vec<(String, Descriptor)>>,
    label: String,
}

impl ArchiveWriter {
    fn new(out: TarOut, dest: &Path) -> Self {
        ArchiveWriter {
            out: Mutex::new(Some(out)),
            written: Mutex::new(HashMap::new()),
            names: Mutex::new(Vec::new()),
            label: dest.display().to_string(),
        }
    }

    /// Appends a file to the tar (one writer at a time).
    fn append(&self, name: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut guard = self
            .out
            .lock()
            .map_err(|_| Error::Unsupported("archive writer poisoned".into()))?;
        guard
            .as_mut()
            .ok_or_else(|| Error::Unsupported("archive already finished".into()))?
            .append(name, size, data)
    }

    fn has(&self, d: &Digest) -> bool {
        self.written
            .lock()
            .map(|w| w.contains_key(d))
            .unwrap_or(false)
    }

    fn mark_written(&self, desc: &Descriptor) {
        if let Ok(mut w) = self.written.lock() {
            w.insert(desc.digest.clone(), desc.size);
        }
    }

    fn set_name(&self, name: &str, desc: &Descriptor) {
        if let Ok(mut n) = self.names.lock() {
            n.push((name.to_string(), desc.clone()));
        }
    }

    fn names(&self) -> Vec<(String, Descriptor)> {
        self.names.lock().map(|n| n.clone()).unwrap_or_default()
    }

    fn into_out(self) -> Result<TarOut> {
        self.out
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| Error::Unsupported("archive already finished".into()))
    }
}

/// An OCI archive being written.
pub struct OciArchiveTarget {
    w: ArchiveWriter,
}

impl OciArchiveTarget {
    pub fn create(dest: &Path) -> Result<Self> {
        let mut out = TarOut::create(dest)?;
        out.append(
            "oci-layout",
            30,
            &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
        )?;
        out.append_dir("blobs/")?;
        out.append_dir("blobs/sha256/")?;
        Ok(OciArchiveTarget {
            w: ArchiveWriter::new(out, dest),
        })
    }

    /// Writes `index.json` and moves the archive into place.
    pub fn finish(self) -> Result<()> {
        let names = self.w.names();
        let mut entries = Vec::new();
        for (name, desc) in names {
            let mut d = desc.clone();
            d.annotations.insert(REF_NAME.into(), name.clone());
            if let Ok(r) = Reference::parse(&name) {
                if name.contains('/') || name.contains(':') {
                    d.annotations.insert(
                        oci::manifest::ANNOTATION_CONTAINERD_NAME.into(),
                        r.to_string(),
                    );
                }
            }
            entries.push(d);
        }
        let idx = Document::new(Index::new(mt::OCI_INDEX, entries));
        let mut out = self.w.into_out()?;
        out.append("index.json", idx.size(), &mut idx.bytes())?;
        out.finish()
    }
}

impl Target for OciArchiveTarget {
    fn describe(&self) -> String {
        format!("OCI archive {}", self.w.label)
    }
    fn has(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.w.has(&desc.digest))
    }
    fn put(&self, desc: &Descriptor, src: &dyn Source) -> Result<Put> {
        let mut reader = src.open(desc)?;
        let name = format!(
            "blobs/{}/{}",
            desc.digest.algorithm().as_str(),
            desc.digest.hex()
        );
        let mut v = oci::VerifyingReader::new(&mut reader, desc.digest.clone(), Some(desc.size));
        self.w.append(&name, desc.size, &mut v)?;
        self.w.mark_written(desc);
        Ok(Put::Written)
    }
    fn set_name(&self, name: &str, desc: &Descriptor) -> Result<()> {
        self.w.set_name(name, desc);
        Ok(())
    }
}

/// A docker-archive being written: uncompressed layers named by diff ID, one `manifest.json` entry
/// per image. An index becomes one entry per platform, each with its own tag.
pub struct DockerArchiveTarget {
    w: ArchiveWriter,
    /// Compressed layer digest → diff ID of what was written.
    layers: Mutex<HashMap<Digest, Digest>>,
    docs: Mutex<HashMap<Digest, Vec<u8>>>,
    spool_dir: PathBuf,
}

/// One image written into a docker-archive.
#[derive(Debug, Clone, Serialize)]
pub struct DockerArchiveEntry {
    pub tags: Vec<String>,
    pub platform: Option<String>,
    pub config: Digest,
}

impl DockerArchiveTarget {
    pub fn create(dest: &Path) -> Result<Self> {
        let spool_dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(DockerArchiveTarget {
            w: ArchiveWriter::new(TarOut::create(dest)?, dest),
            layers: Mutex::new(HashMap::new()),
            docs: Mutex::new(HashMap::new()),
            spool_dir,
        })
    }

    fn doc(&self, d: &Digest) -> Result<Vec<u8>> {
        self.docs
            .lock()
            .ok()
            .and_then(|m| m.get(d).cloned())
            .ok_or_else(|| Error::BlobMissing {
                digest: d.clone(),
                place: self.describe(),
            })
    }

    /// Writes `manifest.json` and `repositories` and moves the archive into place.
    pub fn finish(self) -> Result<Vec<DockerArchiveEntry>> {
        let names = self.w.names();
        let layers = self.layers.lock().map(|l| l.clone()).unwrap_or_default();
        // Entries keyed by image manifest digest, so two names of one image share an entry.
        let mut order: Vec<Digest> = Vec::new();
        let mut by_image: HashMap<Digest, (ImageManifest, Vec<String>, Option<Platform>)> =
            HashMap::new();
        let host = Matcher::host();
        for (name, root) in &names {
            let r = Reference::parse(name).ok();
            let m = Manifest::parse(self.doc(&root.digest)?, Some(&root.media_type))?;
            let images: Vec<(ImageManifest, Digest, Option<Platform>, Vec<String>)> = match &m {
                Manifest::Image(doc) => {
                    let tag = r.as_ref().map(|r| r.familiar()).unwrap_or(name.clone());
                    vec![(doc.value().clone(), root.digest.clone(), None, vec![tag])]
                }
                Manifest::Index(doc) => {
                    let runnable: Vec<&Descriptor> = doc
                        .value()
                        .manifests
                        .iter()
                        .filter(|d| !d.is_attestation() && mt::is_image_manifest(&d.media_type))
                        .collect();
                    let plats: Vec<Platform> = runnable
                        .iter()
                        .map(|d| d.platform.clone().unwrap_or_default())
                        .collect();
                    let best = host.best(&plats);
                    let mut v = Vec::new();
                    for (i, d) in runnable.iter().enumerate() {
                        let child = Document::<ImageManifest>::parse(self.doc(&d.digest)?)?;
                        let mut tags = Vec::new();
                        if let Some(r) = &r {
                            let base = r.tag().unwrap_or("latest");
                            if runnable.len() > 1 {
                                let t = r.with_tag(&format!("{base}-{}", plats[i].slug('-')))?;
                                tags.push(t.familiar());
                            }
                            if runnable.len() == 1 || best == Some(i) {
                                tags.push(r.with_tag(base)?.familiar());
                            }
                        }
                        v.push((
                            child.value().clone(),
                            d.digest.clone(),
                            Some(plats[i].clone()),
                            tags,
                        ));
                    }
                    v
                }
            };
            for (man, digest, plat, tags) in images {
                let e = by_image.entry(digest.clone()).or_insert_with(|| {
                    order.push(digest.clone());
                    (man, Vec::new(), plat)
                });
                for t in tags {
                    if !e.1.contains(&t) {
                        e.1.push(t);
                    }
                }
            }
        }
        let mut entries = Vec::new();
        let mut report = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for d in &order {
            let (man, tags, plat) = &by_image[d];
            let mut layer_paths = Vec::new();
            for l in &man.layers {
                let diff = layers.get(&l.digest).ok_or_else(|| Error::BlobMissing {
                    digest: l.digest.clone(),
                    place: self.describe(),
                })?;
                layer_paths.push(format!("blobs/sha256/{}", diff.hex()));
            }
            for t in tags {
                if let Ok(r) = Reference::parse(t) {
                    if let (Some(tag), Some(last)) = (r.tag(), layer_paths.last()) {
                        repositories.entry(r.familiar_name()).or_default().insert(
                            tag.to_string(),
                            last.trim_start_matches("blobs/sha256/").to_string(),
                        );
                    }
                }
            }
            entries.push(DockerEntry {
                config: format!("blobs/sha256/{}", man.config.digest.hex()),
                repo_tags: Some(tags.clone()),
                layers: layer_paths,
            });
            report.push(DockerArchiveEntry {
                tags: tags.clone(),
                platform: plat.as_ref().map(|p| p.to_string()),
                config: man.config.digest.clone(),
            });
        }
        let manifest_json =
            serde_json::to_vec(&entries).map_err(|e| Error::Unsupported(e.to_string()))?;
        let repos_json =
            serde_json::to_vec(&repositories).map_err(|e| Error::Unsupported(e.to_string()))?;
        let mut out = self.w.into_out()?;
        out.append(
            "manifest.json",
            manifest_json.len() as u64,
            &mut &manifest_json[..],
        )?;
        out.append(
            "repositories",
            repos_json.len() as u64,
            &mut &repos_json[..],
        )?;
        out.finish()?;
        Ok(report)
    }
}

impl Target for DockerArchiveTarget {
    fn describe(&self) -> String {
        format!("docker-archive {}", self.w.label)
    }

    fn has(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.w.has(&desc.digest))
    }

    fn put(&self, desc: &Descriptor, src: &dyn Source) -> Result<Put> {
        let mut reader = src.open(desc)?;
        let mut v = oci::VerifyingReader::new(&mut reader, desc.digest.clone(), Some(desc.size));
        if mt::is_manifest_like(&desc.media_type) {
            let mut buf = Vec::new();
            v.read_to_end(&mut buf)
                .map_err(|e| Error::from_read(e, &self.describe()))?;
            if let Ok(mut d) = self.docs.lock() {
                d.insert(desc.digest.clone(), buf);
            }
        } else if let Some(comp) = mt::layer_compression(&desc.media_type) {
            // docker load wants uncompressed layers named by diff ID: spool, then append.
            let mut spool =
                tempfile::tempfile_in(&self.spool_dir).map_err(|e| io_err(&self.spool_dir, e))?;
            let mut dec: Box<dyn Read> = match comp {
                mt::Compression::None => Box::new(&mut v),
                mt::Compression::Gzip => {
                    Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(&mut v)))
                }
                mt::Compression::Zstd => Box::new(
                    zstd::Decoder::new(&mut v).map_err(|e| io_err(Path::new(&self.w.label), e))?,
                ),
            };
            let mut w =
                oci::DigestWriter::new(io::BufWriter::new(&mut spool), oci::Algorithm::Sha256);
            io::copy(&mut dec, &mut w).map_err(|e| Error::from_read(e, &self.describe()))?;
            drop(dec);
            io::copy(&mut v, &mut io::sink()).map_err(|e| Error::from_read(e, &self.describe()))?;
            let (bw, diff_id, size) = w.finish();
            drop(bw);
            spool
                .seek(SeekFrom::Start(0))
                .map_err(|e| io_err(&self.spool_dir, e))?;
            // Held across the check and the append, so one layer is written once.
            let mut layers = self
                .layers
                .lock()
                .map_err(|_| Error::Unsupported("archive writer poisoned".into()))?;
            if !layers.values().any(|d| d == &diff_id) {
                self.w
                    .append(&format!("blobs/sha256/{}", diff_id.hex()), size, &mut spool)?;
            }
            layers.insert(desc.digest.clone(), diff_id);
        } else {
            // Configs go in as they are, named by their digest.
            let mut buf = Vec::new();
            v.read_to_end(&mut buf)
                .map_err(|e| Error::from_read(e, &self.describe()))?;
            self.w.append(
                &format!("blobs/sha256/{}", desc.digest.hex()),
                buf.len() as u64,
                &mut &buf[..],
            )?;
        }
        self.w.mark_written(desc);
        Ok(Put::Written)
    }

    fn set_name(&self, name: &str, desc: &Descriptor) -> Result<()> {
        self.w.set_name(name, desc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(
            clean_path("./blobs/sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(clean_path("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_path("../etc/passwd"), None);
        assert_eq!(clean_path("/etc/passwd"), None);
        assert_eq!(clean_path("a/../../b"), None);
    }

    #[test]
    fn refuses_path_traversal_entries() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so tar's own checks cannot reject it first.
            let name = b"../../etc/evil";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, &b"hi"[..]).unwrap();
            b.finish().unwrap();
        }
        let err = TarSource::open(&p).err().expect("must fail").to_string();
        assert!(err.contains("outside the archive"), "{err}");
    }

    #[test]
    fn refuses_a_tar_that_is_no_image_archive() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("plain.tar");
        {
            let mut b = tar::Builder::new(File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
            b.finish().unwrap();
        }
        let err = TarSource::open(&p).err().expect("must fail").to_string();
        assert!(err.contains("neither an OCI archive"), "{err}");
    }
}
