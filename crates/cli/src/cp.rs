//! `cp`: an image from any place to any place.

use std::process::ExitCode;

use anyhow::{bail, Result};
use store::layout::REF_NAME;
use transport::{Env, OpenTarget, Place};

use crate::global::Cli;
use crate::output::say;
use crate::platforms::parse_platforms;
use crate::transfer::{progress_copy, rewrite_for};

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    /// Where the image is.
    pub source: String,
    /// Where it goes.
    pub destination: String,
    /// Copy every platform (the default when no --platform is given).
    #[arg(long, conflicts_with = "platform")]
    pub all: bool,
    /// Keep only these platforms; the copy gets a new index listing just them.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Parallel blob transfers.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Copy Docker manifests, lists and configs with OCI media types (digests change), for
    /// tools that read only OCI layouts. The source must be in the store (store:REF).
    #[arg(long)]
    pub oci_mediatypes: bool,
}

pub fn cp(cli: &Cli, env: &Env, a: &CpArgs) -> Result<ExitCode> {
    let (source, destination, platform, jobs, oci_mediatypes) = (
        a.source.as_str(),
        a.destination.as_str(),
        &a.platform,
        a.jobs,
        a.oci_mediatypes,
    );
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
