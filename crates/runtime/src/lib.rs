//! Running a process in an image's root filesystem: unpacking OCI layers into snapshots, the
//! sandbox (namespaces, overlayfs, pivot_root, capabilities), knowing which platforms this
//! machine can execute (natively or through QEMU's binfmt_misc handlers), and turning what a
//! step changed into a deterministic, compressed layer in the store.
//!
//! This crate refuses to know Dockerfiles, registries, progress display or the step graph: it is
//! handed directories, layers and argv vectors, and hands back snapshots, exit codes and
//! descriptors. `manifold build` (through the engine crate) and `manifold run` both use it.
//! Everything here needs Linux, and the sandbox needs root.

pub mod binfmt;
pub mod emulation;
pub mod inroot;
pub mod layer;
pub mod leftovers;
pub mod network;
mod pargz;
#[rustfmt::skip]
mod probes;
pub mod sandbox;
pub mod seccomp;
pub mod snapshot;

use std::io;
use std::path::{Path, PathBuf};

pub use emulation::{Emulation, RunMode};
pub use layer::{Changes, LayerOptions, WrittenLayer};
pub use sandbox::{MountSource, Network, RootFs, RunOutput, RunSpec, StepMount, StepRoot};
pub use snapshot::{ApplyReport, Snapshot, SnapshotCache, WhiteoutMode};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Dockerfile step failed; `reason` says how.
    #[error("{location} {instruction} ({platform}): {reason}")]
    Step {
        location: String,
        instruction: String,
        platform: String,
        reason: String,
    },
    #[error("base image {reference} for {platform}: {reason}")]
    Base {
        reference: String,
        platform: String,
        reason: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A layer entry that would land outside the root, or that cannot be applied safely.
    #[error("layer {layer}: refusing entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("sandbox: {what}: {reason}")]
    Sandbox { what: String, reason: String },
    #[error("{argv} exited with code {code}{}", tail_block(.tail))]
    StepFailed {
        argv: String,
        code: i32,
        tail: String,
    },
    #[error("cannot run {platform} binaries on this {host} machine: {reason}. {hint}")]
    PlatformUnavailable {
        platform: String,
        host: String,
        reason: String,
        hint: String,
    },
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        " and printed nothing".to_string()
    } else {
        format!("; the end of its output:\n{}", tail.trim_end())
    }
}

/// Maps an I/O error on `path` to [`Error::Io`] saying what was being done.
pub fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
