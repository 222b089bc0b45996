//! Commands on the local store and archives: images, rm, tag, save, load, cp, prune, fsck.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use oci::{Descriptor, Digest, Document, ImageConfig, Manifest, Platform, Reference};
use serde::Serialize;
use store::layout::REF_NAME;
use store::{copy, CopyOptions, Layout, Platforms, Source, TarSource};

use transport::{Env, OpenTarget, Place};

use crate::{
    build, lists, remote, ArchiveKind, Cli, Command, ImagetoolsCmd, ManifestCmd, OutputFormat,
};

pub fn run(cli: &Cli, env: &Env) -> Result<ExitCode> {
    let root = env.store_root.as_path();
    match &cli.command {
        Command::Builder { command } => crate::builder::run(cli, env, command),
        Command::Images {
            repository,
            format,
            no_trunc,
        } => images(root, repository.as_deref(), *format, *no_trunc),
        Command::Rm { images } => rm(cli, root, images),
        Command::Tag { source, target } => tag(cli, root, source, target),
        Command::Save {
            output,
            archive_type,
            platform,
            oci_mediatypes,
            images,
        } => save(
            cli,
            env,
            output,
            *archive_type,
            platform,
            images,
            *oci_mediatypes,
        ),
        Command::Load { input, platform } => load(cli, root, input.as_deref(), platform),
        Command::Cp {
            source,
            destination,
            all: _,
            platform,
            jobs,
            oci_mediatypes,
        } => cp(
            cli,
            env,
            source,
            destination,
            platform,
            *jobs,
            *oci_mediatypes,
        ),
        Command::Pull {
            image,
            platform,
            all_platforms,
            jobs,
        } => remote::pull(cli, env, image, platform, *all_platforms, *jobs),
        Command::Push { image, jobs } => remote::push(cli, env, image, *jobs),
        Command::Tags { repository, format } => remote::tags(env, repository, *format),
        Command::Catalog { registry, format } => remote::catalog(env, registry, *format),
        Command::Delete { image } => remote::delete(cli, env, image),
        Command::Login {
            registry,
            username,
            password_stdin,
            password,
        } => remote::login(
            env,
            registry,
            username.as_deref(),
            *password_stdin,
            password.as_deref(),
        ),
        Command::Logout { registry } => remote::logout(env, registry),
        Command::Registry { command } => crate::serve::run(cli, root, command),
        Command::Manifest { command } => match command {
            ManifestCmd::Create {
                list,
                sources,
                amend,
                no_flatten,
                insecure: _,
                list_type,
            } => lists::manifest_create(cli, env, list, sources, *amend, !*no_flatten, *list_type),
            ManifestCmd::Annotate {
                list,
                source,
                os,
                arch,
                variant,
                os_version,
                os_features,
                insecure: _,
            } => lists::manifest_annotate(
                cli,
                env,
                list,
                source,
                os.as_deref(),
                arch.as_deref(),
                variant.as_deref(),
                os_version.as_deref(),
                os_features,
            ),
            ManifestCmd::Inspect {
                reference,
                verbose,
                insecure: _,
            } => lists::manifest_inspect(env, reference, *verbose),
            ManifestCmd::Push {
                list,
                purge,
                insecure: _,
            } => lists::manifest_push(cli, env, list, *purge),
            ManifestCmd::Rm { lists: names } => lists::manifest_rm(env, names),
        },
        Command::Imagetools { command } => match command {
            ImagetoolsCmd::Inspect {
                reference,
                raw,
                format,
            } => lists::imagetools_inspect(env, reference, *raw, *format),
            ImagetoolsCmd::Create {
                tags,
                sources,
                append,
                platform,
                annotation,
                dry_run,
                list_type,
            } => lists::imagetools_create(
                cli, env, tags, sources, *append, platform, annotation, *dry_run, *list_type,
            ),
        },
        Command::Build(args) => build::run(cli, env, args),
        Command::Digest {
            reference,
            platform,
            which: Some(digest),
            limit,
        } => {
            let _ = platform;
            lists::digest_which(cli, env, digest, reference, *limit)
        }
        Command::Digest {
            reference,
            platform,
            which: None,
            limit: _,
        } => lists::digest(env, reference, platform.as_deref(), cli.quiet),
        Command::Prune {
            format,
            cache,
            filter,
            keep_storage,
        } => prune(root, *format, *cache, filter, keep_storage.as_deref()),
        Command::Du { verbose, format } => du(root, *verbose, *format),
        Command::Fsck { format } => fsck(root, *format),
        Command::Run(a) => crate::run::run(cli, env, a),
        Command::Binfmt(a) => crate::binfmt::run(cli, a),
    }
}

pub fn say(cli: &Cli, line: impl AsRef<str>) {
    if !cli.quiet {
        eprintln!("{}", line.as_ref());
    }
}

/// Parses `--platform` values; ones that name the same platform after normalization
/// (`linux/arm64` and `linux/arm64/v8`) are merged, with a note.
pub fn parse_platforms(list: &[String]) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    let mut typed: Vec<&str> = Vec::new();
    for s in list {
        let p = Platform::parse(s)?;
        match out
            .iter()
            .position(|q| q.same_target(&p) && q.os_version == p.os_version)
        {
            Some(i) => eprintln!(
                "note: --platform {s} is {} after normalization, like {}; taking it once",
                p.short(),
                typed[i]
            ),
            None => {
                out.push(p);
                typed.push(s);
            }
        }
    }
    Ok(out)
}

/// `--platform` values with duplicates after normalization merged (see [`parse_platforms`]),
/// spelled as the user typed the first of each.
pub(crate) fn dedup_platform_args(list: &[String]) -> Result<Vec<String>> {
    let kept = parse_platforms(list)?;
    let mut out = Vec::new();
    for p in kept {
        if let Some(s) = list
            .iter()
            .find(|s| Platform::parse(s).is_ok_and(|q| q == p))
        {
            out.push(s.clone());
        }
    }
    Ok(out)
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

fn images(
    root: &Path,
    filter: Option<&str>,
    format: OutputFormat,
    no_trunc: bool,
) -> Result<ExitCode> {
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

pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Sizes as docker prints them (SI units).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[u]
    }
}

/// The store name for what a user typed: a full reference, or a digest.
fn store_name(s: &str) -> Result<String> {
    Ok(Reference::parse(s)
        .with_context(|| format!("{s:?} is not an image name"))?
        .to_string())
}

/// Removes names and digests in one update of the index and one GC; when any is not in the
/// store, nothing changes.
fn rm(cli: &Cli, root: &Path, names: &[String]) -> Result<ExitCode> {
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

pub fn familiar(name: &str) -> String {
    Reference::parse(name).map_or(name.to_string(), |r| r.familiar())
}

fn tag(cli: &Cli, root: &Path, source: &str, target: &str) -> Result<ExitCode> {
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

pub fn progress_copy(
    cli: &Cli,
    src: &dyn Source,
    dst: &dyn store::Target,
    root: &Descriptor,
    platforms: &[Platform],
    jobs: usize,
) -> Result<store::CopyReport> {
    let bp = crate::progress::BlobProgress::new(cli.quiet, "copied");
    let show = |e: store::Event<'_>| bp.event(e);
    let opts = CopyOptions {
        platforms: Platforms::of(platforms),
        jobs,
        progress: if cli.quiet { None } else { Some(&show) },
    };
    let report = copy(src, dst, root, &opts)?;
    let mounted = if report.blobs_mounted > 0 {
        format!(", {} mounted from another repository", report.blobs_mounted)
    } else {
        String::new()
    };
    say(
        cli,
        format!(
            "copied {} blobs ({}), {} already present{mounted}",
            report.blobs_copied,
            human_size(report.bytes_copied),
            report.blobs_skipped
        ),
    );
    Ok(report)
}

/// Rewrites a store image for where it goes (see [`store::rewrite`]) and says what changed.
pub fn rewrite_for(
    cli: &Cli,
    store: &store::Layout,
    root: &Descriptor,
    how: store::rewrite::Rewrite,
) -> Result<Descriptor> {
    let rw = store::rewrite::rewrite(store, root, how)?;
    let zipped = rw.layers_compressed + rw.layers_reused;
    if zipped > 0 {
        let sizes = format!(
            "{} -> {}",
            human_size(rw.bytes_before),
            human_size(rw.bytes_after)
        );
        let line = if rw.layers_compressed == 0 {
            format!(
                "sending {zipped} layer(s) stored uncompressed in the gzip form remembered from \
                 before ({sizes}; {} remembered from before)",
                rw.layers_reused
            )
        } else {
            format!(
                "compressed {} layer(s) stored uncompressed with gzip, as docker push does \
                 ({sizes}{})",
                rw.layers_compressed,
                if rw.layers_reused > 0 {
                    format!("; {} more remembered from before", rw.layers_reused)
                } else {
                    String::new()
                }
            )
        };
        say(cli, line);
    }
    if rw.converted > 0 {
        say(
            cli,
            format!(
                "converted {} Docker manifest(s) and list(s) to OCI media types",
                rw.converted
            ),
        );
    }
    if rw.changed(root) {
        say(
            cli,
            format!(
                "the copy's digest is {}; the image in the store keeps {}",
                rw.root.digest, root.digest
            ),
        );
    }
    Ok(rw.root)
}

#[allow(clippy::too_many_arguments)]
fn save(
    cli: &Cli,
    env: &Env,
    output: &Path,
    format: ArchiveKind,
    platform: &[String],
    names: &[String],
    oci_mediatypes: bool,
) -> Result<ExitCode> {
    let platforms = parse_platforms(platform)?;
    let store = transport::open_store(&env.store_root)?;
    let _guard = store.write_guard()?;
    let place = match format {
        ArchiveKind::Oci => Place::OciArchive(output.to_path_buf(), None),
        ArchiveKind::Docker => Place::DockerArchive(output.to_path_buf(), None),
    };
    let target = OpenTarget::open(&place, env)?;
    for n in names {
        let full = if Digest::parse(n).is_ok() {
            n.clone()
        } else {
            store_name(n)?
        };
        let mut desc = Source::resolve(&store, &full)?;
        if oci_mediatypes {
            let how = store::rewrite::Rewrite {
                compress: false,
                oci_media_types: true,
            };
            desc = rewrite_for(cli, &store, &desc, how)?;
        }
        let report = progress_copy(cli, &store, target.target(), &desc, &platforms, 4)?;
        let mut root_desc = report.root.clone();
        root_desc.annotations.remove(REF_NAME);
        target.target().set_name(&full, &root_desc)?;
    }
    for line in target.finish()? {
        say(cli, line);
    }
    say(cli, format!("wrote {}", output.display()));
    Ok(ExitCode::SUCCESS)
}

/// A name found in an archive, made into a store name. OCI layouts often name images by tag
/// alone (`latest`); those become `localhost/<archive name>:<tag>`.
fn load_name(found: &str, archive: &Path) -> Result<String> {
    let looks_like_tag = !found.contains('/') && !found.contains(':') && !found.contains('@');
    if looks_like_tag {
        let stem = archive
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "image".into());
        let repo: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .to_string();
        let repo = if repo.is_empty() {
            "image".to_string()
        } else {
            repo
        };
        return store_name(&format!("localhost/{repo}:{found}"));
    }
    store_name(found)
}

fn load(cli: &Cli, root: &Path, input: Option<&Path>, platform: &[String]) -> Result<ExitCode> {
    let platforms = parse_platforms(platform)?;
    let mut _spool = None;
    let path: PathBuf = match input {
        Some(p) => p.to_path_buf(),
        None => {
            let mut tmp = tempfile::NamedTempFile::new()?;
            let mut stdin = std::io::stdin().lock();
            let mut first = [0u8; 1];
            if stdin.read(&mut first)? == 0 {
                bail!("nothing on standard input; use -i FILE or pipe an archive in");
            }
            std::io::Write::write_all(tmp.as_file_mut(), &first)?;
            std::io::copy(&mut stdin, tmp.as_file_mut())?;
            let p = tmp.path().to_path_buf();
            _spool = Some(tmp);
            p
        }
    };
    let source: Box<dyn Source> = if path.is_dir() {
        Box::new(Layout::open_existing(path.clone())?)
    } else {
        Box::new(TarSource::open(&path).map_err(|e| {
            let text = e.to_string();
            match &_spool {
                // Name what the user gave, not our spool file.
                Some(t) => anyhow::anyhow!(
                    "{}",
                    text.replace(&t.path().display().to_string(), "standard input")
                ),
                None => e.into(),
            }
        })?)
    };
    let entries = source.entries()?;
    if entries.is_empty() {
        bail!("{} holds no image", source.describe());
    }
    let store = transport::open_store(root)?;
    let _guard = store.write_guard()?;
    let mut names = Vec::new();
    let mut unnamed = Vec::new();
    for (name, desc) in &entries {
        let report = progress_copy(cli, source.as_ref(), &store, desc, &platforms, 4)?;
        let mut d = report.root.clone();
        d.annotations.remove(REF_NAME);
        d.annotations
            .remove(oci::manifest::ANNOTATION_CONTAINERD_NAME);
        match name {
            Some(n) => names.push((load_name(n, &path)?, d)),
            None => unnamed.push(d),
        }
    }
    // All names land in one atomic update: an interrupted load names nothing.
    store.set_names(&names)?;
    for d in &unnamed {
        store.add_unnamed(d)?;
    }
    for (n, _) in &names {
        println!("Loaded image: {}", familiar(n));
    }
    for d in &unnamed {
        println!("Loaded image ID: {}", d.digest);
    }
    Ok(ExitCode::SUCCESS)
}

fn cp(
    cli: &Cli,
    env: &Env,
    source: &str,
    destination: &str,
    platform: &[String],
    jobs: usize,
    oci_mediatypes: bool,
) -> Result<ExitCode> {
    let platforms = parse_platforms(platform)?;
    let src_place = Place::parse(source)?;
    let dst_place = Place::parse(destination)?;
    let src = transport::open_source(&src_place, env)?;
    let to_registry = matches!(dst_place, Place::Registry(_));
    let mut root = src.root.clone();
    let mut _guard = None;
    if let Place::Store(_) = &src_place {
        let how = store::rewrite::Rewrite {
            compress: to_registry,
            oci_media_types: oci_mediatypes,
        };
        let store = transport::open_store(&env.store_root)?;
        _guard = Some(store.write_guard()?);
        root = rewrite_for(cli, &store, &root, how)?;
    } else if oci_mediatypes {
        bail!(
            "--oci-mediatypes converts images from the local store; copy {source} into the \
             store first (manifold cp {source} store:NAME), then from there"
        );
    }
    let target = OpenTarget::open(&dst_place, env)?;
    let report = progress_copy(
        cli,
        src.source.as_ref(),
        target.target(),
        &root,
        &platforms,
        jobs,
    )?;
    let mut d = report.root.clone();
    d.annotations.remove(REF_NAME);
    d.annotations
        .remove(oci::manifest::ANNOTATION_CONTAINERD_NAME);
    match transport::target_name(&dst_place, src.name.as_deref()) {
        Some(n) => target.target().set_name(&n, &d)?,
        None => {
            if let OpenTarget::Layout(l, _) | OpenTarget::Export(l, _) = &target {
                l.add_unnamed(&d)?;
            } else {
                target.target().set_name(&d.digest.to_string(), &d)?;
            }
        }
    }
    for line in target.finish()? {
        say(cli, line);
    }
    let to_stdout = match &dst_place {
        Place::OciArchive(p, _) | Place::DockerArchive(p, _) => store::archive::is_stdout(p),
        _ => false,
    };
    if to_stdout {
        // Standard output holds the archive.
        eprintln!("{}", d.digest);
    } else {
        println!("{}", d.digest);
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(
    root: &Path,
    format: OutputFormat,
    cache: bool,
    filter: &[String],
    keep_storage: Option<&str>,
) -> Result<ExitCode> {
    let store = transport::open_store(root)?;
    let build_cache = ::engine::cache::LocalCache::new(root);
    let mut cache_freed = 0u64;
    let mut steps_removed = 0;
    let leftovers = {
        // Under the GC lock every build of this store has ended (each holds the lock shared
        // while it runs): what is left in the cache's tmp is a killed build's step directories,
        // and no build is using the cache while it goes.
        let _g = store.gc_lock()?;
        let mut s = runtime::leftovers::sweep_all(&build_cache.tmp_dir());
        // The sandbox's state directories, of any store: only those whose process is gone.
        let t = runtime::leftovers::sweep_state_dirs(&std::env::temp_dir());
        s.dirs += t.dirs;
        s.bytes += t.bytes;
        if cache {
            let mut f = ::engine::cache::PruneFilter::default();
            for spec in filter {
                match spec.split_once('=') {
                    Some(("until", v)) => f.until = Some(parse_duration(v)?),
                    _ => bail!("--filter {spec:?}: use until=DURATION (for example until=24h)"),
                }
            }
            if let Some(k) = keep_storage {
                f.keep_storage = Some(parse_size(k)?);
            }
            let before = ::engine::cache::dir_size(build_cache.dir());
            steps_removed = build_cache.prune(&f, &|d| store.blob_size(d).unwrap_or(0))?;
            cache_freed = before.saturating_sub(::engine::cache::dir_size(build_cache.dir()));
        }
        s
    };
    let r = gc(&store, root)?;
    if format == OutputFormat::Json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("leftover_dirs_removed".into(), leftovers.dirs.into());
            o.insert("leftover_bytes_freed".into(), leftovers.bytes.into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "Deleted {} blobs, reclaimed {}; removed {} leftover temporary files",
            r.blobs_removed,
            human_size(r.bytes_freed),
            r.temporaries_removed
        );
        if leftovers.dirs > 0 {
            println!(
                "Removed {} step directories left by killed builds ({})",
                leftovers.dirs,
                human_size(leftovers.bytes)
            );
        }
        if cache {
            println!(
                "Removed {steps_removed} cached steps from the build cache ({})",
                human_size(cache_freed)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store's GC, keeping the layers cached build steps use.
pub fn gc(store: &store::Layout, root: &Path) -> Result<store::layout::GcReport> {
    let roots = ::engine::cache::LocalCache::new(root).roots();
    Ok(store.gc_keeping(&roots)?)
}

/// `24h`, `90m`, `1h30m`, `45s`, `7d`.
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("duration {s:?}: a number must come before {c:?}"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => bail!("duration {s:?}: unknown unit {c:?}; use s, m, h or d"),
        };
    }
    if !num.is_empty() {
        bail!("duration {s:?} needs a unit (s, m, h or d), as in 24h");
    }
    Ok(std::time::Duration::from_secs(total))
}

/// `0`, `512MB`, `10GB`, `1.5GiB`, `100kB` (decimal units as docker shows them; `Ki`/`Mi`/`Gi`
/// binary).
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .with_context(|| format!("size {s:?}: use a number with a unit, as in 10GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("size {s:?}: unknown unit {other:?}; use B, kB, MB, GB or TB"),
    };
    Ok((n * mult) as u64)
}

#[derive(Serialize)]
struct DuRow {
    kind: &'static str,
    name: String,
    size: u64,
}

/// `manifold du`: what the store and the build cache hold, by kind (`--verbose`: by entry).
fn du(root: &Path, verbose: bool, format: OutputFormat) -> Result<ExitCode> {
    let store = transport::open_store(root)?;
    let cache = ::engine::cache::LocalCache::new(root);
    let mut rows: Vec<DuRow> = Vec::new();
    let mut in_images: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut details: Vec<DuRow> = Vec::new();
    for e in store.index()?.manifests {
        let mut mine = BTreeMap::new();
        store.walk(&e, &mut mine, &mut Vec::new())?;
        details.push(DuRow {
            kind: "image",
            name: e
                .annotations
                .get(REF_NAME)
                .map_or_else(|| e.digest.to_string(), |n| familiar(n)),
            size: mine.values().sum(),
        });
        in_images.extend(mine);
    }
    rows.push(DuRow {
        kind: "images",
        name: format!("{} entries", details.len()),
        size: in_images.values().sum(),
    });
    let size_of = |d: &Digest| store.blob_size(d).unwrap_or(0);
    let usage = cache.usage(&size_of);
    let cache_only: u64 = cache
        .roots()
        .iter()
        .filter(|d| !in_images.contains_key(*d))
        .map(size_of)
        .sum();
    rows.push(DuRow {
        kind: "build cache",
        name: format!("{} steps (layers no image uses)", usage.steps),
        size: cache_only,
    });
    for (kind, dir, size) in [
        ("cache mounts", cache.cache_mounts_dir(), usage.cache_mounts),
        (
            "snapshots",
            cache.snapshots_dir().join("sha256"),
            usage.snapshots,
        ),
        ("scratch", cache.tmp_dir(), usage.scratch),
    ] {
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).collect())
            .unwrap_or_default();
        rows.push(DuRow {
            kind,
            name: format!("{} entries", entries.len()),
            size,
        });
        for e in entries {
            details.push(DuRow {
                kind: match kind {
                    "cache mounts" => "cache mount",
                    "snapshots" => "snapshot",
                    _ => "scratch",
                },
                name: e.file_name().to_string_lossy().to_string(),
                size: ::engine::cache::dir_size(&e.path()),
            });
        }
    }
    let total: u64 = rows.iter().map(|r| r.size).sum();
    if verbose {
        rows.extend(details);
    }
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"total": total, "entries": rows}))?
        );
    } else {
        println!("{:<14} {:>10}  DETAIL", "TYPE", "SIZE");
        for r in &rows {
            println!("{:<14} {:>10}  {}", r.kind, human_size(r.size), r.name);
        }
        println!("{:<14} {:>10}", "total", human_size(total));
    }
    Ok(ExitCode::SUCCESS)
}

fn fsck(root: &Path, format: OutputFormat) -> Result<ExitCode> {
    let store = transport::open_store(root)?;
    let r = store.fsck()?;
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "checked {} blobs ({})",
            r.blobs_checked,
            human_size(r.bytes_checked)
        );
        for p in &r.problems {
            println!("problem: {p}");
        }
        if r.temporaries > 0 {
            println!(
                "{} temporary files from interrupted writes (harmless; `manifold prune` removes them)",
                r.temporaries
            );
        }
        if r.problems.is_empty() {
            println!("store is consistent");
        }
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_durations_and_sizes() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5_400);
        assert!(parse_duration("24").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_261_234), "4.261MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn bare_tags_from_layouts_get_a_local_name() {
        let n = load_name("latest", Path::new("/tmp/My Image.tar")).unwrap();
        assert_eq!(n, "localhost/my-image:latest");
        let n = load_name("docker.io/library/busybox:1.36", Path::new("x.tar")).unwrap();
        assert_eq!(n, "docker.io/library/busybox:1.36");
        assert_eq!(
            load_name("busybox:1", Path::new("x")).unwrap(),
            "docker.io/library/busybox:1"
        );
    }
}
