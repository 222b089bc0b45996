//! `prune` and `du`: what the store and the build cache hold, and reclaiming it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use oci::Digest;
use serde::Serialize;
use store::layout::REF_NAME;

use crate::global::OutputFormat;
use crate::output::{familiar, human_size};
use crate::stores::gc;

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Also drop the build cache: cached steps, RUN cache mounts, unpacked layer snapshots.
    /// Without it, layers that cached steps use are kept.
    #[arg(long)]
    pub cache: bool,
    /// With --cache: `until=DURATION` (24h, 90m) drops only steps unused for that long.
    #[arg(long, requires = "cache")]
    pub filter: Vec<String>,
    /// With --cache: drop the least recently used steps until the rest fits in SIZE
    /// (10GB, 512MB, 0).
    #[arg(long, requires = "cache")]
    pub keep_storage: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct DuArgs {
    /// One line per image, cache mount and snapshot too.
    #[arg(long, short)]
    pub verbose: bool,
    /// table, or json for tools.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

pub fn prune(root: &Path, a: &PruneArgs) -> Result<ExitCode> {
    let (format, cache, filter, keep_storage) =
        (a.format, a.cache, &a.filter, a.keep_storage.as_deref());
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
pub fn du(root: &Path, a: &DuArgs) -> Result<ExitCode> {
    let (verbose, format) = (a.verbose, a.format);
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
}
