//! Manifest lists: `manifest create/annotate/inspect/push/rm`, `imagetools inspect/create` and
//! `digest`. Lists are assembled from images in any repository of any registry; on push every
//! entry's content is copied (or mounted) into the target repository by the one copy routine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use oci::media_type as mt;
use oci::{Descriptor, Document, ImageConfig, Index, Manifest, Matcher, Platform, Reference};
use serde::{Deserialize, Serialize};
use store::{CopyOptions, InMemory, Platforms, Source, Target};
use transport::{Env, Place, RegistryRepo};

use crate::global::{Cli, ListFormat, OutputFormat};
use crate::output::{human_size, print_table, say};

#[derive(clap::Args, Debug)]
pub struct DigestArgs {
    /// A registry reference or a place (store:REF, oci:DIR:NAME, ...); with --which, the
    /// repository to search.
    pub reference: String,
    /// The platform whose manifest digest to print.
    #[arg(long, conflicts_with = "which")]
    pub platform: Option<String>,
    /// Say which tags of the repository hold this digest, and as which platform:
    /// `digest --which sha256:... localhost:5000/app`.
    #[arg(long, value_name = "DIGEST")]
    pub which: Option<String>,
    /// With --which: look at no more than this many tags.
    #[arg(long, requires = "which")]
    pub limit: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCmd {
    /// Stage a manifest list locally from images in any repository of any registry. A source that
    /// is itself a list contributes each of its platforms.
    Create(ManifestCreateArgs),
    /// Set the platform of one entry of a staged list.
    Annotate(ManifestAnnotateArgs),
    /// Show a staged list, or a list or manifest in a registry.
    Inspect(ManifestInspectArgs),
    /// Push a staged list: every entry's content is copied (or mounted) into the list's
    /// repository first, then the list is tagged. Prints the list's digest.
    Push(ManifestPushArgs),
    /// Remove staged lists.
    Rm(ManifestRmArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImagetoolsCmd {
    /// Show an image or index: the index digest, and per platform its manifest digest, size,
    /// creation time and layers; attestations apart. Takes a registry reference or any place
    /// (store:REF, oci:DIR:NAME, oci-archive:FILE, docker-archive:FILE).
    Inspect(ImagetoolsInspectArgs),
    /// Merge images (tags or digests, from any repositories) into one index and push it to every
    /// -t tag, copying what each target repository lacks.
    Create(ImagetoolsCreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct ManifestCreateArgs {
    /// The list's name, e.g. localhost:5000/app:1.
    pub list: String,
    /// The images (tags or digests) whose platforms make the list.
    #[arg(required = true)]
    pub sources: Vec<String>,
    /// Add to a list that is already staged (may be repeated, as with docker).
    #[arg(short, long, overrides_with = "amend")]
    pub amend: bool,
    /// Refuse sources that are lists instead of taking their platforms.
    #[arg(long)]
    pub no_flatten: bool,
    /// Reach the registries named here over plain HTTP or unverified TLS.
    #[arg(long)]
    pub insecure: bool,
    /// The list's media type; by default Docker's when every source is a Docker v2 manifest,
    /// OCI otherwise.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub list_type: Option<ListFormat>,
}

#[derive(clap::Args, Debug)]
pub struct ManifestAnnotateArgs {
    /// The staged list.
    pub list: String,
    /// The entry: any reference `manifest create` took for it, or its digest (sha256:...).
    pub source: String,
    /// The entry's operating system, stored as typed.
    #[arg(long)]
    pub os: Option<String>,
    /// The entry's architecture, stored as typed.
    #[arg(long)]
    pub arch: Option<String>,
    /// The entry's architecture variant (v7, v8, ...), stored as typed.
    #[arg(long)]
    pub variant: Option<String>,
    /// The entry's OS version (Windows images).
    #[arg(long)]
    pub os_version: Option<String>,
    /// The entry's OS features, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub os_features: Vec<String>,
    /// Reach the registries named here over plain HTTP or unverified TLS.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(clap::Args, Debug)]
pub struct ManifestInspectArgs {
    /// A staged list, or a registry reference.
    pub reference: String,
    /// Show every entry's manifest too.
    #[arg(short, long)]
    pub verbose: bool,
    /// Reach the registry named here over plain HTTP or unverified TLS.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(clap::Args, Debug)]
pub struct ManifestPushArgs {
    /// The staged list; it is pushed to the name it was created with.
    pub list: String,
    /// Remove the staged list after pushing.
    #[arg(short, long)]
    pub purge: bool,
    /// Reach the registry named here over plain HTTP or unverified TLS.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(clap::Args, Debug)]
pub struct ManifestRmArgs {
    /// The staged lists to remove.
    #[arg(required = true)]
    pub lists: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ImagetoolsInspectArgs {
    /// A registry reference or a place (store:REF, oci:DIR:NAME, ...).
    pub reference: String,
    /// Print the manifest or index exactly as stored.
    #[arg(long)]
    pub raw: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct ImagetoolsCreateArgs {
    /// Where the index goes (repeatable).
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// The images to merge: tags or digests, from any repositories.
    pub sources: Vec<String>,
    /// Keep the entries the first tag's index has now.
    #[arg(long)]
    pub append: bool,
    /// Take only these platforms from the sources.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// index:KEY=VALUE (or KEY=VALUE) annotations on the index.
    #[arg(long)]
    pub annotation: Vec<String>,
    /// Print the index instead of pushing it.
    #[arg(long)]
    pub dry_run: bool,
    /// The index's media type; by default Docker's when every source is a Docker v2
    /// manifest and there are no annotations, OCI otherwise.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub list_type: Option<ListFormat>,
}

/// An entry of a staged list: where it came from, and its descriptor in the list.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// The repository holding the manifest (`registry/repo`), for copying on push.
    source: String,
    descriptor: Descriptor,
    /// The references `manifest create` took for this entry, so `annotate` finds it by them
    /// (a one-entry index that create flattened has another digest than its entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    added_as: Vec<String>,
}

/// A list staged locally by `manifest create`, pushed by `manifest push`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Staged {
    name: String,
    format: Option<ListFormat>,
    entries: Vec<Entry>,
}

fn staged_path(env: &Env, list: &Reference) -> PathBuf {
    let safe: String = list
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    env.store_root
        .join("manifests")
        .join(format!("{safe}.json"))
}

fn load_staged(env: &Env, list: &Reference) -> Result<Option<Staged>> {
    let p = staged_path(env, list);
    match std::fs::read(&p) {
        Ok(b) => {
            Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("reading staged list {}", p.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_staged(env: &Env, s: &Staged, list: &Reference) -> Result<()> {
    let p = staged_path(env, list);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    store::layout::write_atomic(&p, &serde_json::to_vec_pretty(s)?)?;
    Ok(())
}

fn repo(env: &Env, r: &Reference) -> Result<RegistryRepo> {
    Ok(RegistryRepo::new(env.client()?, r, env.runtime()))
}

/// Why an image manifest is an artifact rather than a runnable image, if it is one.
fn artifact_kind(m: &oci::ImageManifest) -> Option<String> {
    if let Some(t) = &m.artifact_type {
        return Some(format!("artifactType {t}"));
    }
    let cmt = m.config.media_type.as_str();
    (cmt != mt::OCI_CONFIG && cmt != mt::DOCKER_CONFIG).then(|| format!("config type {cmt}"))
}

fn has_platform(p: Option<&Platform>) -> bool {
    p.is_some_and(|p| !p.os.is_empty() && !p.architecture.is_empty())
}

/// The store's entry for a registry reference that could not be read, as a hint.
fn store_hint(env: &Env, r: &Reference) -> Option<String> {
    let store = store::Layout::open_existing(env.store_root.clone()).ok()?;
    store.lookup(&r.to_string()).ok()??;
    Some(format!(
        "{} is in the local store: name it store:{} to read it from there",
        r.familiar(),
        r.familiar()
    ))
}

/// Adds the store hint to an error about reading `r` from its registry.
fn with_store_hint<T>(env: &Env, r: &Reference, res: Result<T>) -> Result<T> {
    res.map_err(|e| match store_hint(env, r) {
        Some(h) => e.context(h),
        None => e,
    })
}

/// The platform an image manifest runs on, from its config.
fn config_platform(src: &dyn Source, m: &Manifest) -> Result<Option<Platform>> {
    let Manifest::Image(doc) = m else {
        return Ok(None);
    };
    let cfg = src.read_verified(&doc.value().config)?;
    Ok(Document::<ImageConfig>::parse(cfg)
        .ok()
        .map(|c| c.value().platform()))
}

/// The entries a source contributes: its platforms when it is an index, itself otherwise.
fn entries_of(env: &Env, source: &str, flatten: bool, only: &[Matcher]) -> Result<Vec<Entry>> {
    let r = Reference::parse(source)?;
    let src = repo(env, &r)?;
    let root = with_store_hint(env, &r, src.resolve(&r.to_string()).map_err(Into::into))?;
    let m = src.read_manifest(&root)?;
    let origin = r.repo_only().to_string();
    let keep = |p: Option<&Platform>| {
        only.is_empty() || p.is_some_and(|p| only.iter().any(|m| m.matches(p)))
    };
    match &m {
        Manifest::Index(doc) => {
            if !flatten {
                bail!(
                    "{source} is a manifest list of {} entries, and --no-flatten refuses lists; \
                     drop --no-flatten to take its platforms, or name one platform's manifest by digest",
                    doc.value().manifests.len()
                );
            }
            let mut out = Vec::new();
            for d in &doc.value().manifests {
                if d.is_attestation() || !keep(d.platform.as_ref()) {
                    continue;
                }
                if !has_platform(d.platform.as_ref()) {
                    bail!(
                        "{source}: its entry {} names no platform, so it cannot be a platform \
                         entry of a list; name the images it is for instead",
                        d.digest
                    );
                }
                out.push(Entry {
                    source: origin.clone(),
                    descriptor: d.clone(),
                    added_as: Vec::new(),
                });
            }
            if out.is_empty() {
                bail!("{source} has no platform matching {}", matchers_text(only));
            }
            Ok(out)
        }
        Manifest::Image(doc) => {
            if let Some(kind) = artifact_kind(doc.value()) {
                bail!(
                    "{source} is an OCI artifact ({kind}), not an image: it runs on no platform, \
                     so it cannot be a platform entry of a list; attach it to an image as a \
                     referrer instead (oras attach)"
                );
            }
            let mut d = root.clone();
            d.platform = config_platform(&src, &m)?;
            if !has_platform(d.platform.as_ref()) {
                let p = d.platform.clone().unwrap_or_default();
                bail!(
                    "{source} names no platform in its config (architecture {:?}, os {:?}), so it \
                     cannot be a platform entry of a list; give the image a platform when making \
                     it (crane: --platform, buildah: --arch/--os)",
                    p.architecture,
                    p.os
                );
            }
            if !keep(d.platform.as_ref()) {
                bail!(
                    "{source} is for {}, not {}",
                    d.platform
                        .as_ref()
                        .map_or("an unknown platform".into(), |p| p.to_string()),
                    matchers_text(only)
                );
            }
            Ok(vec![Entry {
                source: origin,
                descriptor: d,
                added_as: Vec::new(),
            }])
        }
    }
}

fn matchers_text(m: &[Matcher]) -> String {
    m.iter()
        .map(|m| m.wanted().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The list's media type: as asked, else Docker's only when every entry is a Docker manifest.
/// A Docker list of anything but Docker v2 manifests is refused.
fn list_media_type(
    format: Option<ListFormat>,
    entries: &[Entry],
    has_annotations: bool,
) -> Result<&'static str> {
    Ok(match format {
        Some(ListFormat::Oci) => mt::OCI_INDEX,
        Some(ListFormat::Docker) => {
            if let Some(e) = entries
                .iter()
                .find(|e| e.descriptor.media_type != mt::DOCKER_MANIFEST)
            {
                bail!(
                    "--type docker: the entry {}@{} ({}) has media type {}, and a Docker manifest \
                     list holds only Docker v2 manifests; use --type oci, or leave --type out to get \
                     an OCI index",
                    e.source,
                    e.descriptor.digest,
                    platform_text(&e.descriptor),
                    e.descriptor.media_type
                );
            }
            mt::DOCKER_MANIFEST_LIST
        }
        None => {
            let all_docker = !entries.is_empty()
                && entries
                    .iter()
                    .all(|e| e.descriptor.media_type == mt::DOCKER_MANIFEST);
            if all_docker && !has_annotations {
                mt::DOCKER_MANIFEST_LIST
            } else {
                mt::OCI_INDEX
            }
        }
    })
}

fn build_index(
    media_type: &str,
    entries: &[Entry],
    annotations: &BTreeMap<String, String>,
) -> Document<Index> {
    let mut idx = Index::new(
        media_type,
        entries.iter().map(|e| e.descriptor.clone()).collect(),
    );
    idx.annotations = annotations.clone();
    Document::new(idx)
}

fn warn_duplicates(cli: &Cli, entries: &[Entry]) {
    let mut seen = BTreeMap::new();
    for e in entries {
        if let Some(p) = &e.descriptor.platform {
            if let Some(prev) = seen.insert(p.to_string(), e.descriptor.digest.clone()) {
                if prev != e.descriptor.digest {
                    say(cli, format!("warning: two entries are for {p}: {prev} and {}; clients will pick the first", e.descriptor.digest));
                }
            }
        }
    }
}

pub fn manifest_create(cli: &Cli, env: &Env, a: &ManifestCreateArgs) -> Result<ExitCode> {
    let (list, sources, amend, flatten, format) = (
        a.list.as_str(),
        &a.sources,
        a.amend,
        !a.no_flatten,
        a.list_type,
    );
    let list_ref = Reference::parse(list)?;
    let mut staged = match load_staged(env, &list_ref)? {
        Some(s) if amend => s,
        Some(_) => bail!(
            "a list named {} is already staged; add --amend to add to it, or `manifold manifest rm {list}`",
            list_ref.familiar()
        ),
        None => Staged { name: list_ref.to_string(), format, entries: Vec::new() },
    };
    if format.is_some() {
        staged.format = format;
    }
    for s in sources {
        let mut found = entries_of(env, s, flatten, &[])?;
        if let [one] = found.as_mut_slice() {
            one.added_as.push(Reference::parse(s)?.to_string());
        }
        for mut e in found {
            if let Some(old) = staged
                .entries
                .iter()
                .find(|x| x.descriptor.digest == e.descriptor.digest)
            {
                for a in &old.added_as {
                    if !e.added_as.contains(a) {
                        e.added_as.push(a.clone());
                    }
                }
            }
            staged
                .entries
                .retain(|x| x.descriptor.digest != e.descriptor.digest);
            staged.entries.push(e);
        }
    }
    list_media_type(staged.format, &staged.entries, false)?;
    warn_duplicates(cli, &staged.entries);
    save_staged(env, &staged, &list_ref)?;
    println!("Created manifest list {}", list_ref.familiar());
    for e in &staged.entries {
        println!(
            "  {:<16} {}",
            platform_text(&e.descriptor),
            e.descriptor.digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn platform_text(d: &Descriptor) -> String {
    d.platform.as_ref().map_or("?".into(), |p| p.to_string())
}

/// The staged entry `source` names: a digest, a reference create took, or a reference whose
/// manifest (or the one entry of its index) is in the list.
fn find_entry(env: &Env, staged: &Staged, list: &Reference, source: &str) -> Result<usize> {
    let by_digest = |d: &oci::Digest| {
        staged
            .entries
            .iter()
            .position(|e| &e.descriptor.digest == d)
    };
    let missing = |what: String| {
        let have: Vec<String> = staged
            .entries
            .iter()
            .map(|e| format!("{} {}", platform_text(&e.descriptor), e.descriptor.digest))
            .collect();
        anyhow::anyhow!(
            "{what} is not in list {}; its entries are: {}",
            list.familiar(),
            have.join(", ")
        )
    };
    if let Ok(d) = oci::Digest::parse(source) {
        return by_digest(&d).ok_or_else(|| missing(source.to_string()));
    }
    let want = Reference::parse(source)?;
    if let Some(d) = want.digest() {
        return by_digest(d).ok_or_else(|| missing(source.to_string()));
    }
    let full = want.to_string();
    if let Some(i) = staged
        .entries
        .iter()
        .position(|e| e.added_as.contains(&full))
    {
        return Ok(i);
    }
    // Not known by name: ask the registry what the reference points at now.
    let src = repo(env, &want)?;
    let root = src.resolve(&full)?;
    if let Some(i) = by_digest(&root.digest) {
        return Ok(i);
    }
    if let Manifest::Index(doc) = src.read_manifest(&root)? {
        let hits: Vec<usize> = doc
            .value()
            .manifests
            .iter()
            .filter_map(|d| by_digest(&d.digest))
            .collect();
        if let [one] = hits.as_slice() {
            return Ok(*one);
        }
        if hits.len() > 1 {
            bail!(
                "{source} is an index with {} entries in list {}; name one by digest",
                hits.len(),
                list.familiar()
            );
        }
    }
    Err(missing(format!("{source} ({})", root.digest)))
}

pub fn manifest_annotate(cli: &Cli, env: &Env, a: &ManifestAnnotateArgs) -> Result<ExitCode> {
    let (list, source, os, arch, variant, os_version, os_features) = (
        a.list.as_str(),
        a.source.as_str(),
        a.os.as_deref(),
        a.arch.as_deref(),
        a.variant.as_deref(),
        a.os_version.as_deref(),
        &a.os_features,
    );
    let list_ref = Reference::parse(list)?;
    let mut staged = load_staged(env, &list_ref)?.with_context(|| {
        format!(
            "no list named {} is staged; create it with `manifold manifest create`",
            list_ref.familiar()
        )
    })?;
    let i = find_entry(env, &staged, &list_ref, source)?;
    let e = &mut staged.entries[i];
    // What the user types is what the list gets (as docker does); normalization is for matching.
    let mut p = e.descriptor.platform.clone().unwrap_or_default();
    if let Some(v) = os {
        p.os = v.to_string();
    }
    if let Some(v) = arch {
        p.architecture = v.to_string();
    }
    if let Some(v) = variant {
        p.variant = v.to_string();
    }
    if let Some(v) = os_version {
        p.os_version = v.to_string();
    }
    if !os_features.is_empty() {
        p.os_features = os_features.to_vec();
    }
    let norm = p.clone().normalized();
    if norm.architecture != p.architecture {
        say(
            cli,
            format!(
                "note: architecture {:?} is stored as typed; clients match it as {} (docker's \
                 own name is {:?})",
                p.architecture,
                norm.short(),
                norm.architecture
            ),
        );
    }
    e.descriptor.platform = Some(p);
    let digest = e.descriptor.digest.clone();
    let text = platform_text(&e.descriptor);
    save_staged(env, &staged, &list_ref)?;
    println!("{digest} is now {text} in {}", list_ref.familiar());
    Ok(ExitCode::SUCCESS)
}

pub fn manifest_inspect(env: &Env, a: &ManifestInspectArgs) -> Result<ExitCode> {
    let (reference, verbose) = (a.reference.as_str(), a.verbose);
    let r = Reference::parse(reference)?;
    if let Some(staged) = load_staged(env, &r)? {
        let media_type = list_media_type(staged.format, &staged.entries, false)?;
        let doc = build_index(media_type, &staged.entries, &BTreeMap::new());
        if verbose {
            let v = serde_json::json!({
                "Ref": r.to_string(),
                "Staged": true,
                "Descriptor": doc.descriptor(media_type),
                "Index": doc.value(),
                "Sources": staged.entries.iter().map(|e| serde_json::json!({"Ref": format!("{}@{}", e.source, e.descriptor.digest), "Platform": platform_text(&e.descriptor)})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}", serde_json::to_string_pretty(doc.value())?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let src = repo(env, &r)?;
    let root = with_store_hint(env, &r, src.resolve(&r.to_string()).map_err(Into::into))?;
    let m = src.read_manifest(&root)?;
    let pretty = |b: &[u8]| -> Result<String> {
        let v: serde_json::Value = serde_json::from_slice(b)?;
        Ok(serde_json::to_string_pretty(&v)?)
    };
    if !verbose {
        println!("{}", pretty(m.bytes())?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = Vec::new();
    let children: Vec<Descriptor> = match &m {
        Manifest::Index(doc) => doc.value().manifests.clone(),
        Manifest::Image(_) => vec![root.clone()],
    };
    for d in children {
        let child = src.read_manifest(&d)?;
        let body: serde_json::Value = serde_json::from_slice(child.bytes())?;
        out.push(serde_json::json!({
            "Ref": format!("{}@{}", r.repo_only(), d.digest),
            "Descriptor": d,
            "Manifest": body,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// Copies every entry into `target`'s repository (mounting within a registry), then pushes the
/// index under each tag. Nothing is tagged until every entry is in place.
fn push_index(
    cli: &Cli,
    env: &Env,
    targets: &[Reference],
    entries: &[Entry],
    doc: &Document<Index>,
    media_type: &str,
) -> Result<()> {
    for t in targets {
        let dst = repo(env, t)?;
        for e in entries {
            let src_ref = Reference::parse(&e.source)?;
            let src = repo(env, &src_ref)?;
            let report = store::copy(
                &src,
                &dst,
                &e.descriptor,
                &CopyOptions {
                    platforms: Platforms::All,
                    jobs: 4,
                    progress: None,
                },
            )?;
            if report.blobs_copied + report.blobs_mounted > 0 {
                say(
                    cli,
                    format!(
                        "  {} into {}: {} blobs copied ({}), {} mounted",
                        platform_text(&e.descriptor),
                        t.repo_only(),
                        report.blobs_copied,
                        human_size(report.bytes_copied),
                        report.blobs_mounted
                    ),
                );
            }
        }
        let desc = doc.descriptor(media_type);
        dst.put(
            &desc,
            &InMemory {
                desc: &desc,
                bytes: doc.bytes(),
            },
        )?;
        dst.set_name(&t.to_string(), &desc)?;
    }
    Ok(())
}

pub fn manifest_push(cli: &Cli, env: &Env, a: &ManifestPushArgs) -> Result<ExitCode> {
    let (list, purge) = (a.list.as_str(), a.purge);
    let list_ref = Reference::parse(list)?;
    let staged = load_staged(env, &list_ref)?.with_context(|| {
        format!(
            "no list named {} is staged; create it with `manifold manifest create`",
            list_ref.familiar()
        )
    })?;
    if staged.entries.is_empty() {
        bail!("list {} has no entries", list_ref.familiar());
    }
    let media_type = list_media_type(staged.format, &staged.entries, false)?;
    let doc = build_index(media_type, &staged.entries, &BTreeMap::new());
    push_index(
        cli,
        env,
        std::slice::from_ref(&list_ref),
        &staged.entries,
        &doc,
        media_type,
    )?;
    if purge {
        std::fs::remove_file(staged_path(env, &list_ref))?;
    }
    println!("{}", doc.digest());
    Ok(ExitCode::SUCCESS)
}

pub fn manifest_rm(env: &Env, a: &ManifestRmArgs) -> Result<ExitCode> {
    let lists = &a.lists;
    let mut failed = false;
    for l in lists {
        let r = Reference::parse(l)?;
        match std::fs::remove_file(staged_path(env, &r)) {
            Ok(()) => println!("Removed staged list {}", r.familiar()),
            Err(_) => {
                eprintln!("error: no list named {} is staged", r.familiar());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One platform row of `imagetools inspect`.
#[derive(Serialize)]
struct PlatformRow {
    platform: String,
    digest: String,
    #[serde(rename = "mediaType")]
    media_type: String,
    size: u64,
    config: String,
    created: Option<String>,
    layers: usize,
    #[serde(rename = "layersSize")]
    layers_size: u64,
}

#[derive(Serialize)]
struct AttestationRow {
    digest: String,
    size: u64,
    /// The image manifest it describes.
    #[serde(rename = "for")]
    for_digest: Option<String>,
}

#[derive(Serialize)]
struct Inspection {
    name: String,
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    /// `index`, `manifest` or `artifact`.
    kind: &'static str,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    /// For a platform manifest named by digest: the tags whose index holds it.
    #[serde(rename = "foundIn", skip_serializing_if = "Vec::is_empty")]
    found_in: Vec<Holder>,
    platforms: Vec<PlatformRow>,
    attestations: Vec<AttestationRow>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

fn describe_image(
    src: &dyn Source,
    d: &Descriptor,
    platform: Option<&Platform>,
) -> Result<PlatformRow> {
    let m = src.read_manifest(d)?;
    let Manifest::Image(doc) = &m else {
        bail!("{} is a nested index; inspect it by digest", d.digest);
    };
    let man = doc.value();
    let cfg = src
        .read_verified(&man.config)
        .ok()
        .and_then(|b| Document::<ImageConfig>::parse(b).ok());
    let plat = platform
        .cloned()
        .or_else(|| cfg.as_ref().map(|c| c.value().platform()))
        .map_or("?".into(), |p| p.to_string());
    Ok(PlatformRow {
        platform: plat,
        digest: d.digest.to_string(),
        media_type: m.media_type().to_string(),
        size: d.size,
        config: man.config.digest.to_string(),
        created: cfg.and_then(|c| c.value().created.clone()),
        layers: man.layers.len(),
        layers_size: man.layers.iter().map(|l| l.size).sum(),
    })
}

fn open_place(env: &Env, reference: &str) -> Result<(Box<dyn Source>, Descriptor, String)> {
    let place = Place::parse(reference)?;
    let opened = match &place {
        Place::Registry(r) => with_store_hint(
            env,
            r,
            transport::open_source(&place, env).map_err(Into::into),
        )?,
        _ => transport::open_source(&place, env)?,
    };
    let name = match &place {
        Place::Registry(r) | Place::Store(r) => r.to_string(),
        _ => reference.to_string(),
    };
    Ok((opened.source, opened.root, name))
}

pub fn imagetools_inspect(env: &Env, a: &ImagetoolsInspectArgs) -> Result<ExitCode> {
    let (reference, raw, format) = (a.reference.as_str(), a.raw, a.format);
    let (src, root, name) = open_place(env, reference)?;
    let m = src.read_manifest(&root)?;
    if raw {
        use std::io::Write;
        std::io::stdout().write_all(m.bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut ins = Inspection {
        name,
        media_type: m.media_type().to_string(),
        digest: m.digest().to_string(),
        kind: "manifest",
        artifact_type: None,
        found_in: Vec::new(),
        platforms: Vec::new(),
        attestations: Vec::new(),
        annotations: BTreeMap::new(),
    };
    match &m {
        Manifest::Index(doc) => {
            ins.kind = "index";
            ins.annotations = doc.value().annotations.clone();
            for d in &doc.value().manifests {
                if d.is_attestation() {
                    ins.attestations.push(AttestationRow {
                        digest: d.digest.to_string(),
                        size: d.size,
                        for_digest: d
                            .annotations
                            .get(oci::manifest::ANNOTATION_DOCKER_REFERENCE_DIGEST)
                            .cloned(),
                    });
                } else if mt::is_index(&d.media_type) {
                    ins.platforms.push(PlatformRow {
                        platform: "(nested index)".into(),
                        digest: d.digest.to_string(),
                        media_type: d.media_type.clone(),
                        size: d.size,
                        config: String::new(),
                        created: None,
                        layers: 0,
                        layers_size: 0,
                    });
                } else {
                    ins.platforms
                        .push(describe_image(src.as_ref(), d, d.platform.as_ref())?);
                }
            }
        }
        Manifest::Image(doc) => {
            if let Some(kind) = artifact_kind(doc.value()) {
                ins.kind = "artifact";
                ins.artifact_type = Some(
                    doc.value()
                        .artifact_type
                        .clone()
                        .unwrap_or_else(|| doc.value().config.media_type.clone()),
                );
                let man = doc.value();
                ins.platforms.push(PlatformRow {
                    platform: format!("(artifact: {kind})"),
                    digest: root.digest.to_string(),
                    media_type: m.media_type().to_string(),
                    size: root.size,
                    config: man.config.digest.to_string(),
                    created: None,
                    layers: man.layers.len(),
                    layers_size: man.layers.iter().map(|l| l.size).sum(),
                });
            } else {
                ins.platforms
                    .push(describe_image(src.as_ref(), &root, None)?);
                // A platform manifest named by digest: say which tags hold it.
                if let Ok(Place::Registry(r)) = Place::parse(reference) {
                    if r.tag().is_none() && r.digest().is_some() {
                        // Best effort: a registry may not list tags to this account.
                        ins.found_in = holders(env, &r, &root.digest, Some(100), true)
                            .map(|h| h.0)
                            .unwrap_or_default();
                    }
                }
            }
        }
    }
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Name:      {}", ins.name);
    println!("MediaType: {}", ins.media_type);
    if ins.kind == "index" {
        println!(
            "Digest:    {}  (the index: what the tag points at)",
            ins.digest
        );
    } else if let Some(t) = &ins.artifact_type {
        println!("Digest:    {}", ins.digest);
        println!("ArtifactType: {t}");
        println!();
        println!(
            "This is an OCI artifact, not an image: it runs on no platform (layers below are its files)."
        );
    } else {
        println!("Digest:    {}", ins.digest);
        println!();
        println!(
            "This is a single-platform image ({}), not an index: the digest above is the image itself.",
            ins.platforms.first().map_or("?", |p| p.platform.as_str())
        );
        for h in &ins.found_in {
            println!("It is the {}", h.text());
        }
    }
    for (k, v) in &ins.annotations {
        println!("Annotation: {k}={v}");
    }
    println!();
    let rows: Vec<[String; 6]> = ins
        .platforms
        .iter()
        .map(|p| {
            [
                p.platform.clone(),
                p.digest.clone(),
                human_size(p.size),
                p.created.clone().unwrap_or_else(|| "-".into()),
                p.layers.to_string(),
                human_size(p.layers_size),
            ]
        })
        .collect();
    print_table(
        &[
            "PLATFORM",
            "MANIFEST DIGEST",
            "SIZE",
            "CREATED",
            "LAYERS",
            "LAYERS SIZE",
        ],
        &rows,
    );
    if !ins.attestations.is_empty() {
        println!();
        println!("Attestations (not platforms; provenance and SBOMs for the images above):");
        for a in &ins.attestations {
            println!(
                "  {}  for {}",
                a.digest,
                a.for_digest.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn imagetools_create(cli: &Cli, env: &Env, a: &ImagetoolsCreateArgs) -> Result<ExitCode> {
    let (tags, sources, append, platform, annotation, dry_run, format) = (
        &a.tags,
        &a.sources,
        a.append,
        &a.platform,
        &a.annotation,
        a.dry_run,
        a.list_type,
    );
    if tags.is_empty() {
        bail!("name where the index goes with -t REF (repeat for several tags)");
    }
    if sources.is_empty() && !append {
        bail!("name the images to merge (tags or digests, from any repositories)");
    }
    let targets: Vec<Reference> = tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<_, _>>()?;
    let only: Vec<Matcher> = platform
        .iter()
        .map(|p| Platform::parse(p).map(|p| Matcher::new(&p).strict()))
        .collect::<Result<_, _>>()?;
    let mut annotations = BTreeMap::new();
    for a in annotation {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("annotation {a:?} is not KEY=VALUE"))?;
        let k = match k.split_once(':') {
            Some(("index", k)) => k,
            Some((other, _)) if !other.contains('.') => bail!(
                "annotation {a:?}: only index annotations are supported (index:KEY=VALUE or KEY=VALUE)"
            ),
            _ => k,
        };
        annotations.insert(k.to_string(), v.to_string());
    }
    let mut entries: Vec<Entry> = Vec::new();
    if append {
        let first = &targets[0];
        entries.extend(entries_of(env, &first.to_string(), true, &[])?);
    }
    for s in sources {
        for e in entries_of(env, s, true, &only)? {
            entries.retain(|x| x.descriptor.digest != e.descriptor.digest);
            entries.push(e);
        }
    }
    warn_duplicates(cli, &entries);
    let media_type = list_media_type(format, &entries, !annotations.is_empty())?;
    if media_type == mt::DOCKER_MANIFEST_LIST && !annotations.is_empty() {
        bail!("Docker manifest lists cannot carry annotations; use --format oci");
    }
    let doc = build_index(media_type, &entries, &annotations);
    if dry_run {
        let v: serde_json::Value = serde_json::from_slice(doc.bytes())?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    push_index(cli, env, &targets, &entries, &doc, media_type)?;
    for t in &targets {
        say(cli, format!("pushed {} to {}", doc.digest(), t.familiar()));
    }
    println!("{}  index", doc.digest());
    for e in &entries {
        println!("{}  {}", e.descriptor.digest, platform_text(&e.descriptor));
    }
    Ok(ExitCode::SUCCESS)
}

/// `digest`: the digest to pin, or with --which the tags that hold one.
pub fn digest_cmd(cli: &Cli, env: &Env, a: &DigestArgs) -> Result<ExitCode> {
    match &a.which {
        Some(digest) => digest_which(cli, env, digest, &a.reference, a.limit),
        None => digest(env, &a.reference, a.platform.as_deref(), cli.quiet),
    }
}

pub fn digest(env: &Env, reference: &str, platform: Option<&str>, quiet: bool) -> Result<ExitCode> {
    let (src, root, _) = open_place(env, reference)?;
    let m = src.read_manifest(&root)?;
    match (&m, platform) {
        (Manifest::Index(doc), None) => {
            let plats: Vec<String> = doc
                .value()
                .manifests
                .iter()
                .filter(|d| !d.is_attestation())
                .map(platform_text)
                .collect();
            if quiet {
                println!("{}", m.digest());
            } else {
                println!(
                    "{}  index of {} ({})",
                    m.digest(),
                    plats.len(),
                    plats.join(", ")
                );
            }
        }
        (Manifest::Index(doc), Some(p)) => {
            let want = Platform::parse(p)?;
            let entry = doc
                .value()
                .select(&want)
                .map_err(|e| anyhow::anyhow!("{reference} has {e}"))?;
            if quiet {
                println!("{}", entry.digest);
            } else {
                println!(
                    "{}  {} manifest (in index {})",
                    entry.digest,
                    entry.platform.clone().unwrap_or_default(),
                    m.digest()
                );
            }
        }
        (Manifest::Image(_), p) => {
            let own = config_platform(src.as_ref(), &m)?;
            if let (Some(p), Some(own)) = (p, &own) {
                let want = Platform::parse(p)?;
                if !Matcher::new(&want).matches(own) {
                    bail!("{reference} is a single-platform image for {own}, not {want}");
                }
            }
            if quiet {
                println!("{}", m.digest());
            } else {
                println!(
                    "{}  single-platform manifest ({})",
                    m.digest(),
                    own.map_or("?".into(), |p| p.to_string())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A tag whose index holds a digest (or that points at it directly).
#[derive(Serialize)]
struct Holder {
    tag: String,
    /// The platform of the entry, or None when the tag points at the digest itself.
    platform: Option<String>,
    index: Option<String>,
}

impl Holder {
    fn text(&self) -> String {
        match (&self.platform, &self.index) {
            (Some(p), Some(i)) => format!("{p} entry of {} (index {i})", self.tag),
            _ => format!("manifest {} points at", self.tag),
        }
    }
}

/// Looks through the tags of `repo` (up to `limit`) for indexes holding `digest`. Returns what
/// it found and how many tags it looked at, of how many.
fn holders(
    env: &Env,
    repo_ref: &Reference,
    digest: &oci::Digest,
    limit: Option<usize>,
    quiet: bool,
) -> Result<(Vec<Holder>, usize, usize)> {
    let client = env.client()?;
    let rt = env.runtime();
    let bare = repo_ref.repo_only();
    let mut tags = rt.block_on(client.tags(&bare))?;
    tags.sort();
    let total = tags.len();
    let take = limit.unwrap_or(usize::MAX).min(total);
    let bar = crate::progress::counter(quiet, take as u64, "tags looked at");
    let src = repo(env, &bare)?;
    let mut found = Vec::new();
    for t in tags.iter().take(take) {
        bar.inc(1);
        let tagged = format!("{bare}:{t}");
        let Ok(root) = src.resolve(&tagged) else {
            continue;
        };
        let name = Reference::parse(&tagged)?.familiar();
        if &root.digest == digest {
            found.push(Holder {
                tag: name,
                platform: None,
                index: None,
            });
            continue;
        }
        if !mt::is_index(&root.media_type) {
            continue;
        }
        let Ok(Manifest::Index(doc)) = src.read_manifest(&root) else {
            continue;
        };
        for d in doc.value().manifests.iter().filter(|d| &d.digest == digest) {
            let p = if d.is_attestation() {
                "attestation".to_string()
            } else {
                platform_text(d)
            };
            found.push(Holder {
                tag: name.clone(),
                platform: Some(p),
                index: Some(root.digest.to_string()),
            });
        }
    }
    bar.finish_and_clear();
    Ok((found, take, total))
}

/// `digest --which DIGEST REPO`: which tags' indexes hold this digest, and as what.
pub fn digest_which(
    cli: &Cli,
    env: &Env,
    digest: &str,
    repository: &str,
    limit: Option<usize>,
) -> Result<ExitCode> {
    let d = oci::Digest::parse(digest)
        .with_context(|| format!("--which takes a digest (sha256:...), not {digest:?}"))?;
    let r = Reference::parse(repository)?;
    let (found, looked, total) = holders(env, &r, &d, limit, cli.quiet)?;
    for h in &found {
        println!("{}", h.text());
    }
    if found.is_empty() {
        let scope = if looked < total {
            format!("the first {looked} of {total} tags (raise --limit to look further)")
        } else {
            format!("any of its {total} tags")
        };
        bail!("{d} is not held by {scope} of {}", r.repo_only());
    }
    if looked < total {
        say(
            cli,
            format!("looked at the first {looked} of {total} tags; raise --limit to look further"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
