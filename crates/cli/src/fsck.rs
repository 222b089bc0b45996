//! `fsck`: every blob against its digest, every image for missing parts.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::global::OutputFormat;
use crate::output::human_size;

#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

pub fn fsck(root: &Path, a: &FsckArgs) -> Result<ExitCode> {
    let format = a.format;
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
