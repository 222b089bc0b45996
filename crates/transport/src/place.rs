//! Places images live, as users spell them on the command line, opened as copy sources and
//! targets: the local store, `oci:DIR[:NAME]`, `oci-archive:FILE[:NAME]`,
//! `docker-archive:FILE[:NAME]`.

use std::path::{Path, PathBuf};

use oci::{Descriptor, Reference};
use store::{DockerArchiveTarget, Layout, OciArchiveTarget, Source, TarSource, Target};

use crate::remote::RegistryRepo;
use crate::{Env, Error, Result};

macro_rules! bail {
    ($($t:tt)*) => { return Err(Error::Place(format!($($t)*))) };
}

/// A parsed place plus the name inside it.
#[derive(Debug, Clone)]
pub enum Place {
    /// The local store; the name is a full image reference.
    Store(Reference),
    Oci(PathBuf, Option<String>),
    OciArchive(PathBuf, Option<String>),
    DockerArchive(PathBuf, Option<String>),
    /// A registry reference (`docker://` prefix optional).
    Registry(Reference),
}

impl Place {
    pub fn parse(s: &str) -> Result<Self> {
        fn split(rest: &str) -> (PathBuf, Option<String>) {
            // The name follows the first ':' after the path (paths with ':' are rare; names are not).
            match rest.split_once(':') {
                Some((p, n)) if !n.is_empty() => (PathBuf::from(p), Some(n.to_string())),
                Some((p, _)) => (PathBuf::from(p), None),
                None => (PathBuf::from(rest), None),
            }
        }
        for (prefix, what) in [
            ("oci:", "DIR"),
            ("oci-archive:", "FILE"),
            ("docker-archive:", "FILE"),
        ] {
            let Some(rest) = s.strip_prefix(prefix) else {
                continue;
            };
            let (p, n) = split(rest);
            // An empty path would silently mean the current directory.
            if p.as_os_str().is_empty() {
                bail!("{s:?} names no path; use {prefix}{what}[:NAME] (`.` for the current directory)");
            }
            return Ok(match prefix {
                "oci:" => Place::Oci(p, n),
                "oci-archive:" => Place::OciArchive(p, n),
                _ => Place::DockerArchive(p, n),
            });
        }
        if let Some(rest) = s
            .strip_prefix("store:")
            .or_else(|| s.strip_prefix("local:"))
        {
            return Ok(Place::Store(Reference::parse(rest)?));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(Place::Registry(Reference::parse(rest)?));
        }
        const OTHER_TRANSPORTS: [&str; 6] = [
            "containers-storage:",
            "docker-daemon:",
            "dir:",
            "ostree:",
            "sif:",
            "tarball:",
        ];
        if let Some(t) = OTHER_TRANSPORTS.iter().find(|t| s.starts_with(*t)) {
            bail!(
                "{s:?}: the {} transport is not supported; use oci:DIR, oci-archive:FILE, \
                 docker-archive:FILE, store:REF or a registry reference",
                t.trim_end_matches(':')
            );
        }
        Ok(Place::Registry(Reference::parse(s)?))
    }
}

/// A source opened for reading, with the root to copy.
pub struct OpenSource {
    pub source: Box<dyn Source>,
    pub root: Descriptor,
    pub name: Option<String>,
}

pub fn open_source(place: &Place, env: &Env) -> Result<OpenSource> {
    let (source, name): (Box<dyn Source>, Option<String>) = match place {
        Place::Store(r) => (Box::new(open_store(&env.store_root)?), Some(r.to_string())),
        Place::Oci(dir, n) => (Box::new(Layout::open_existing(dir.clone())?), n.clone()),
        Place::OciArchive(f, n) | Place::DockerArchive(f, n) => {
            (Box::new(TarSource::open(f)?), n.clone())
        }
        Place::Registry(r) => (
            Box::new(RegistryRepo::new(env.client()?, r, env.runtime())),
            Some(r.to_string()),
        ),
    };
    let root = match &name {
        Some(n) => source.resolve(n)?,
        None => {
            let entries = source.entries()?;
            match entries.as_slice() {
                [(_, d)] => d.clone(),
                [] => bail!("{} holds no image", source.describe()),
                many => bail!(
                    "{} holds {} images; name one: {}",
                    source.describe(),
                    many.len(),
                    many.iter()
                        .map(|(n, d)| n.clone().unwrap_or_else(|| d.digest.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    Ok(OpenSource { source, root, name })
}

/// The local store at `root`, created when missing.
pub fn open_store(root: &Path) -> Result<Layout> {
    Layout::open_or_create(root.to_path_buf()).map_err(|e| {
        Error::Place(format!(
            "opening the image store at {}: {e}",
            root.display()
        ))
    })
}

/// A target opened for writing. Archives are finished (and moved into place) by `finish`.
pub enum OpenTarget {
    /// The guard keeps GC away until the copy has named what it wrote.
    Layout(Layout, #[allow(dead_code)] store::WriteGuard),
    /// An OCI layout directory written for others: only the layout is left when finished.
    Export(Layout, store::WriteGuard),
    OciArchive(OciArchiveTarget),
    DockerArchive(DockerArchiveTarget),
    Registry(RegistryRepo),
}

impl OpenTarget {
    pub fn open(place: &Place, env: &Env) -> Result<Self> {
        Ok(match place {
            Place::Store(_) => {
                let l = open_store(&env.store_root)?;
                let g = l.write_guard()?;
                OpenTarget::Layout(l, g)
            }
            Place::Oci(dir, _) => {
                let l = Layout::open_or_create(dir.clone())?;
                let g = l.write_guard()?;
                OpenTarget::Export(l, g)
            }
            Place::OciArchive(f, _) => OpenTarget::OciArchive(OciArchiveTarget::create(f)?),
            Place::DockerArchive(f, _) => {
                OpenTarget::DockerArchive(DockerArchiveTarget::create(f)?)
            }
            Place::Registry(r) => {
                OpenTarget::Registry(RegistryRepo::new(env.client()?, r, env.runtime()))
            }
        })
    }

    pub fn target(&self) -> &dyn Target {
        match self {
            OpenTarget::Layout(l, _) | OpenTarget::Export(l, _) => l,
            OpenTarget::OciArchive(t) => t,
            OpenTarget::DockerArchive(t) => t,
            OpenTarget::Registry(t) => t,
        }
    }

    /// Completes the write; returns lines worth telling the user.
    pub fn finish(self) -> Result<Vec<String>> {
        match self {
            OpenTarget::Layout(_, _) | OpenTarget::Registry(_) => Ok(Vec::new()),
            OpenTarget::Export(l, guard) => {
                drop(guard);
                l.tidy_export()?;
                Ok(Vec::new())
            }
            OpenTarget::OciArchive(t) => {
                t.finish()?;
                Ok(Vec::new())
            }
            OpenTarget::DockerArchive(t) => {
                let entries = t.finish()?;
                let mut lines = Vec::new();
                if entries.len() > 1 {
                    lines.push(format!(
                        "docker-archive holds {} images, one per platform (docker load cannot hold an index):",
                        entries.len()
                    ));
                }
                for e in entries {
                    lines.push(format!(
                        "  {}{}",
                        e.tags.join(", "),
                        e.platform.map(|p| format!("  ({p})")).unwrap_or_default()
                    ));
                }
                Ok(lines)
            }
        }
    }
}

/// The name to give a root in a target place: the full reference in the store, the given or
/// source name elsewhere.
pub fn target_name(place: &Place, source_name: Option<&str>) -> Option<String> {
    match place {
        Place::Store(r) | Place::Registry(r) => Some(r.to_string()),
        Place::Oci(_, n) | Place::OciArchive(_, n) | Place::DockerArchive(_, n) => {
            n.clone().or_else(|| source_name.map(str::to_string))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_places() {
        match Place::parse("my-app:1").unwrap() {
            Place::Registry(r) => assert_eq!(r.to_string(), "docker.io/library/my-app:1"),
            other => panic!("a reference with a dash is a registry reference, got {other:?}"),
        }
        match Place::parse("oci:/tmp/lay:v1").unwrap() {
            Place::Oci(p, n) => {
                assert_eq!((p, n.as_deref()), (PathBuf::from("/tmp/lay"), Some("v1")))
            }
            other => panic!("{other:?}"),
        }
        match Place::parse("docker-archive:x.tar").unwrap() {
            Place::DockerArchive(p, None) => assert_eq!(p, PathBuf::from("x.tar")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Place::parse("store:busybox").unwrap(),
            Place::Store(_)
        ));
        assert!(matches!(
            Place::parse("docker://localhost:5000/a:b").unwrap(),
            Place::Registry(_)
        ));
        for empty in ["oci:", "oci::x", "oci-archive:", "docker-archive::n"] {
            let err = Place::parse(empty).unwrap_err().to_string();
            assert!(err.contains("names no path"), "{empty}: {err}");
        }
        let err = Place::parse("containers-storage:busybox")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("containers-storage transport is not supported"),
            "{err}"
        );
    }
}
