//! The build session: runs a planned Dockerfile (from the dockerfile crate) for every target
//! platform, steps starting as their inputs are ready, RUN steps in the runtime crate's sandbox,
//! COPY/ADD from the build context, stages and images; caches steps by the content of their
//! inputs, and writes the resulting images into the store.
//!
//! It refuses to know registries, command-line flags and terminals: base images arrive through
//! a resolver the caller supplies, and progress leaves as events.

pub mod cache;
pub mod cache_remote;
pub mod context;
pub mod contexts;
pub mod engine;
pub mod export;
pub mod pipeline;

pub use runtime::{Error, Result};
