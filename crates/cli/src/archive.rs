//! `save` and `load`: images between the local store and archives.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use oci::Digest;
use store::layout::REF_NAME;
use store::{Layout, Source, TarSource};
use transport::{Env, OpenTarget, Place};

use crate::global::Cli;
use crate::output::{familiar, say};
use crate::platforms::parse_platforms;
use crate::stores::store_name;
use crate::transfer::{progress_copy, rewrite_for};

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// The file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The archive's kind.
    #[arg(long = "type", value_enum, value_name = "TYPE", default_value_t = ArchiveKind::Oci)]
    pub archive_type: ArchiveKind,
    /// Keep only these platforms (the best match for each); all when not given.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Write Docker manifests, lists and configs with OCI media types (digests change), for
    /// tools that read only OCI layouts.
    #[arg(long)]
    pub oci_mediatypes: bool,
    /// The images to write.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The archive or directory to read; standard input when not given.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Only these platforms of each image.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI archive (a tar of an OCI image layout), readable by skopeo, podman and docker 25+.
    Oci,
    /// A `docker save` archive for `docker load`: one entry per platform.
    Docker,
}

#[allow(clippy::too_many_arguments)]
pub fn save(cli: &Cli, env: &Env, a: &SaveArgs) -> Result<ExitCode> {
    let (output, format, platform, names, oci_mediatypes) = (
        a.output.as_path(),
        a.archive_type,
        &a.platform,
        &a.images,
        a.oci_mediatypes,
    );
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

pub fn load(cli: &Cli, root: &Path, a: &LoadArgs) -> Result<ExitCode> {
    let (input, platform) = (a.input.as_deref(), &a.platform);
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

#[cfg(test)]
mod tests {
    use super::*;

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
