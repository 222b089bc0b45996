//! `manifold build`: today the frontend half (parse, plan, lint with --check).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use oci::Platform;

use crate::OutputFormat;

pub fn run(
    context: &Path,
    file: Option<&Path>,
    platform: &[String],
    build_arg: &[String],
    target: Option<&str>,
    check: bool,
    format: OutputFormat,
) -> Result<ExitCode> {
    let path: PathBuf = file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the Dockerfile {}", path.display()))?;
    let shown = path.display().to_string();
    let df = match dockerfile::parse(&text, &shown) {
        Ok(df) => df,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut platforms = platform
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    let mut build_args = BTreeMap::new();
    for a in build_arg {
        match a.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // docker takes the value from the environment for a bare KEY.
            None => build_args.insert(a.clone(), std::env::var(a).unwrap_or_default()),
        };
    }
    let opts = dockerfile::PlanOptions {
        target: target.map(str::to_string),
        platforms,
        build_platform: Platform::host(),
        build_args,
        ..Default::default()
    };
    let plan = match dockerfile::plan(&df, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    if !check {
        bail!(
            "building is not in this version of manifold yet; `manifold build --check` parses, \
             plans and lints {} ({} stage instances for {} platforms)",
            shown,
            plan.stages.len(),
            plan.platforms.len()
        );
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let findings = dockerfile::lint(&df);
    if format == OutputFormat::Json {
        println!("{}", dockerfile::render_json(&findings));
    } else if findings.is_empty() {
        println!("Check complete, no warnings found.");
    } else {
        print!("{}", dockerfile::render_text(&findings));
        println!("Check complete, {} warnings found.", findings.len());
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
