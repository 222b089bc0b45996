//! The local store as commands name and collect it.

use std::path::Path;

use anyhow::{Context, Result};
use oci::Reference;

/// The store name for what a user typed: a full reference, or a digest.
pub fn store_name(s: &str) -> Result<String> {
    Ok(Reference::parse(s)
        .with_context(|| format!("{s:?} is not an image name"))?
        .to_string())
}

/// The store's GC, keeping the layers cached build steps use.
pub fn gc(store: &store::Layout, root: &Path) -> Result<store::layout::GcReport> {
    let roots = ::engine::cache::LocalCache::new(root).roots();
    Ok(store.gc_keeping(&roots)?)
}
