//! The OCI distribution-spec client: talks to registries to move manifests and blobs.
//!
//! It pings `/v2/`, follows `WWW-Authenticate` challenges (anonymous, Basic, Bearer with a token
//! cache per scope), reads docker's `config.json` and credential helpers, trusts system roots plus
//! `certs.d`, retries with backoff, and moves blobs as verified streams that resume after a
//! dropped connection, in bounded memory whatever their size. Pulls go through the mirrors
//! configured for a registry ([`RegistryConfig`], buildkitd.toml's shape) before the registry
//! itself; pushes, existence checks and listings always go to the registry.
//!
//! It refuses to know where content is kept locally (no store, no files beyond docker's config
//! and certificates), and has no platform selection policy: callers say which digests they want.
//!
//! ```no_run
//! # async fn copy() -> Result<(), manifold_registry::Error> {
//! use manifold_registry::{Client, ClientOptions, RegistryBlob};
//! let client = Client::new(ClientOptions::default())?;
//! let src = oci::Reference::parse("registry.example/app:v1").expect("reference");
//! let dst = oci::Reference::parse("127.0.0.1:5000/app:v1").expect("reference");
//! let manifest = client.get_manifest(&src).await?; // an image manifest here, not an index
//! for blob in manifest.children() {
//!     // Streams from one registry to the other, resuming either side after a drop.
//!     let source = RegistryBlob { client: client.clone(), repo: src.clone(), desc: blob.clone() };
//!     client.put_blob(&dst, &blob, &source).await?;
//! }
//! client.put_manifest(&dst, manifest.bytes(), manifest.media_type()).await?;
//! # Ok(()) }
//! ```

// Errors carry the reference, host and the registry's messages; they are the cold path, so their
// size matters less than what they say.
#![allow(clippy::result_large_err)]

pub mod auth;
mod blob;
mod challenge;
mod client;
mod error;
pub mod hosts;
mod ops;
mod tls;

pub use auth::{AuthStore, Credential, Stored};
pub use blob::{BlobPush, BlobSource, BlobStream, FileSource, RegistryBlob};
pub use client::{Client, ClientOptions, MirrorUse};
pub use error::{Error, RegistryError};
pub use hosts::{HostConfig, RegistryConfig};
