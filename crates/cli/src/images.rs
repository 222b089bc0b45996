//! `images`, `rm` and `tag`: the names in the local store.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use oci::{Descriptor, Digest, Document, ImageConfig, Manifest, Reference};
use serde::Serialize;
use store::layout::REF_NAME;
use store::{Layout, Source};

use crate::global::{Cli, OutputFormat};
use crate::output::{familiar, human_size, print_table, say};
use crate::stores::{gc, store_name};

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// Only images whose repository matches this name (e.g. busybox, localhost:5000/app).
    pub repository: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Show full digests.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Image names (busybox:latest) or digests (sha256:…).
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    /// The image's current name or digest.
    pub source: String,
    /// The new name.
    pub target: String,
}

/// One row of `manifold images`.
#[derive(Serialize)]
struct ImageRow {
    name: String,
    repository: String,
    tag: String,
    digest: String,
    #[serde(rename = "mediaType")]
    media_type: String,
    platforms: Vec<String>,
    size: u64,
}

fn describe_entry(store: &Layout, e: &Descriptor) -> Result<(Vec<String>, u64)> {
    let mut seen = BTreeMap::new();
    let mut missing = Vec::new();
    store.walk(e, &mut seen, &mut missing)?;
    let size = seen.values().sum();
    let platforms = match store.read_manifest(e) {
        Ok(Manifest::Index(doc)) => doc
            .value()
            .manifests
            .iter()
            .filter(|d| !d.is_attestation())
            .map(|d| d.platform.as_ref().map_or("?".into(), |p| p.to_string()))
            .collect(),
        Ok(Manifest::Image(doc)) => {
            let cfg = store
                .read_blob(&doc.value().config.digest)
                .ok()
                .and_then(|b| Document::<ImageConfig>::parse(b).ok());
            vec![cfg.map_or("?".into(), |c| c.value().platform().to_string())]
        }
        Err(_) => vec!["?".into()],
    };
    Ok((platforms, size))
}

pub fn images(root: &Path, a: &ImagesArgs) -> Result<ExitCode> {
    let (filter, format, no_trunc) = (a.repository.as_deref(), a.format, a.no_trunc);
    let store = transport::open_store(root)?;
    let want = filter
        .map(|f| Reference::parse_bare(f).map(|r| r.name()))
        .transpose()?;
    let mut rows = Vec::new();
    for e in store.index()?.manifests {
        let name = e.annotations.get(REF_NAME).cloned();
        let (repository, tag) = match name.as_deref().map(Reference::parse) {
            Some(Ok(r)) => (
                r.familiar_name(),
                r.tag().map_or("<none>".to_string(), str::to_string),
            ),
            Some(Err(_)) => (name.clone().unwrap_or_default(), "<none>".into()),
            None => ("<none>".into(), "<none>".into()),
        };
        if let Some(w) = &want {
            let full = name
                .as_deref()
                .and_then(|n| Reference::parse(n).ok())
                .map(|r| r.name());
            if full.as_ref() != Some(w) {
                continue;
            }
        }
        let (platforms, size) = describe_entry(&store, &e)?;
        rows.push(ImageRow {
            name: name.unwrap_or_default(),
            repository,
            tag,
            digest: e.digest.to_string(),
            media_type: e.media_type.clone(),
            platforms,
            size,
        });
    }
    rows.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let digest = |d: &str| {
        if no_trunc {
            d.to_string()
        } else {
            d.chars().take(19).collect()
        }
    };
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.repository.clone(),
                r.tag.clone(),
                digest(&r.digest),
                r.platforms.join(","),
                human_size(r.size),
            ]
        })
        .collect();
    print_table(
        &["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE"],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes names and digests in one update of the index and one GC; when any is not in the
/// store, nothing changes.
pub fn rm(cli: &Cli, root: &Path, a: &RmArgs) -> Result<ExitCode> {
    let names = &a.images;
    let store = transport::open_store(root)?;
    let mut digests = std::collections::BTreeSet::new();
    let mut full_names = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for n in names {
        match Digest::parse(n) {
            Ok(d) => {
                digests.insert(d);
            }
            Err(_) => {
                full_names.insert(store_name(n)?);
            }
        }
    }
    let removed = store.update_index(|entries| {
        for d in &digests {
            if !entries.iter().any(|e| &e.digest == d) {
                errors.push(format!("no image with digest {d} in the store"));
            }
        }
        for n in &full_names {
            if !entries
                .iter()
                .any(|e| e.annotations.get(REF_NAME) == Some(n))
            {
                errors.push(format!("no such image: {}", familiar(n)));
            }
        }
        if !errors.is_empty() {
            return Ok(Vec::new());
        }
        let (gone, keep): (Vec<_>, Vec<_>) = entries.drain(..).partition(|e| {
            digests.contains(&e.digest)
                || e.annotations
                    .get(REF_NAME)
                    .is_some_and(|n| full_names.contains(n))
        });
        *entries = keep;
        Ok(gone)
    })?;
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("nothing was removed");
        return Ok(ExitCode::from(1));
    }
    for g in &removed {
        println!(
            "Untagged: {}",
            g.annotations
                .get(REF_NAME)
                .map_or(g.digest.to_string(), |s| familiar(s))
        );
    }
    let r = gc(&store, root)?;
    if r.blobs_removed > 0 {
        say(
            cli,
            format!(
                "Deleted {} blobs ({})",
                r.blobs_removed,
                human_size(r.bytes_freed)
            ),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tag(cli: &Cli, root: &Path, a: &TagArgs) -> Result<ExitCode> {
    let (source, target) = (a.source.as_str(), a.target.as_str());
    let store = transport::open_store(root)?;
    let src = if Digest::parse(source).is_ok() {
        source.to_string()
    } else {
        store_name(source)?
    };
    let desc = Source::resolve(&store, &src)?;
    let dst = store_name(target)?;
    let mut clean = desc.clone();
    clean.annotations.remove(REF_NAME);
    store.set_name(&dst, &clean)?;
    say(
        cli,
        format!("Tagged {} as {}", familiar(&src), familiar(&dst)),
    );
    Ok(ExitCode::SUCCESS)
}
