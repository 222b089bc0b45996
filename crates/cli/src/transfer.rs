//! Copies between places with a progress display, and the rewrites a copy may need.

use anyhow::Result;
use oci::{Descriptor, Platform};
use store::{copy, CopyOptions, Platforms, Source};

use crate::global::Cli;
use crate::output::{human_size, say};

/// Blob → repositories it came from (registry exporters mount from them).
pub(crate) type Origins = std::collections::HashMap<oci::Digest, Vec<String>>;

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
