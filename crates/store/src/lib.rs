//! The local image store and the places images are copied between.
//!
//! The store is an OCI image layout on disk (skopeo, umoci and crane read it directly): blobs by
//! digest, names in `index.json` as `org.opencontainers.image.ref.name`, atomic ingest, locking
//! between processes, GC and fsck. OCI layouts, OCI archives and docker-archives are read and
//! written through one pair of traits and one [`transfer::copy`] routine.
//!
//! This crate knows nothing of registries, networks or Dockerfiles.

pub mod archive;
pub mod layout;
pub mod rewrite;
pub mod transfer;

use std::io;
use std::path::{Path, PathBuf};

pub use archive::{
    ArchiveFormat, DockerArchiveEntry, DockerArchiveTarget, OciArchiveTarget, TarSource,
};
pub use layout::{FsckReport, GcReport, Layout, WriteGuard};
pub use transfer::{
    copy, CopyOptions, CopyReport, Event, FileRange, InMemory, Platforms, Put, Source, Target,
    WithOrigins,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Content(#[from] oci::Error),
    #[error("blob {digest} is missing from {place}")]
    BlobMissing { digest: oci::Digest, place: String },
    #[error("{name:?} is not in {place}{}", known_list(.known))]
    NotFound {
        name: String,
        place: String,
        known: Vec<String>,
    },
    #[error("{source_name} has no image for platform {wanted}; it offers: {}", .available.join(", "))]
    NoMatchingPlatform {
        source_name: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    InvalidArchive { path: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    /// An error of a place implemented above this crate (a registry), passed through whole.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

fn known_list(k: &[String]) -> String {
    if k.is_empty() {
        String::new()
    } else {
        let mut v = k.to_vec();
        v.sort();
        format!("; it holds: {}", v.join(", "))
    }
}

/// The process umask, read from /proc (setting it to read it would race other threads);
/// 022 when /proc is not there.
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// Gives a file made by `tempfile` (always 0600) the mode a plain create would have: 0666 less
/// the umask, as cp, tar and docker do.
pub fn follow_umask(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o666 & !umask()))
        .map_err(|e| io_err(path, e))
}

pub(crate) fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Error {
    /// An I/O error from reading a stream: a digest or size mismatch inside it becomes that error.
    pub fn from_read(e: io::Error, place: &str) -> Error {
        if e.get_ref().is_some_and(|i| i.is::<oci::Error>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(oe) = inner.downcast::<oci::Error>() {
                    return Error::Content(*oe);
                }
            }
            return Error::Unsupported(format!("{place}: read failed"));
        }
        io_err(Path::new(place), e)
    }
}

/// The store's default location: `$MANIFOLD_ROOT`, else `$XDG_DATA_HOME/manifold`, else
/// `~/.local/share/manifold`.
pub fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("MANIFOLD_ROOT").filter(|v| !v.is_empty()) {
        return PathBuf::from(r);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("manifold");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/manifold")
}
