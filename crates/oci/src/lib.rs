//! The OCI model: digests, media types, descriptors, manifests, indexes and configs that keep
//! their exact bytes and unknown fields, platforms (parse, normalize, match, rank) and image
//! references.
//!
//! This crate knows what content *is*; it refuses to know where content lives (files, registries)
//! or how it moves. It does no I/O beyond hashing the streams it is handed.

pub mod digest;
pub mod manifest;
pub mod media_type;
pub mod platform;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestReader, DigestWriter, Hasher, VerifyingReader};
pub use manifest::{
    Annotations, ContainerConfig, Descriptor, Document, History, ImageConfig, ImageManifest, Index,
    Manifest, NoMatchingPlatform, RootFs,
};
pub use platform::{Matcher, Platform};
pub use reference::Reference;

/// Errors about content: malformed input, or content that is not what it claims to be.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content {digest} has the wrong size: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("invalid platform {input:?}: {reason}")]
    InvalidPlatform { input: String, reason: String },
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error("invalid {what}: {reason}")]
    InvalidDocument { what: &'static str, reason: String },
}
