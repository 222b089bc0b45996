//! Parses, plans (linux/amd64 + linux/arm64 on linux/amd64) and lints the Dockerfiles given as
//! arguments; prints one line per file, the error or the findings. Exit code 1 if any failed.
//!
//! `cargo run -p manifold-dockerfile --example check -- path/to/Dockerfile...`
//! With `PLAN_JSON=1` in the environment it also prints each plan as JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;

use manifold_dockerfile::{lint, parse, plan, render_text, PlanOptions};
use oci::Platform;

fn main() -> ExitCode {
    let opts = PlanOptions {
        target: None,
        platforms: vec![
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm64", ""),
        ],
        build_platform: Platform::new("linux", "amd64", ""),
        build_args: BTreeMap::new(),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    };
    let mut failed = false;
    for path in std::env::args().skip(1) {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                println!("{path}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        match parse(&text, &path).and_then(|df| plan(&df, &opts).map(|p| (df, p))) {
            Ok((df, p)) => {
                println!(
                    "{path}: ok, {} stage instances for {} platforms",
                    p.stages.len(),
                    p.platforms.len()
                );
                print!("{}", render_text(&lint(&df)));
                if std::env::var_os("PLAN_JSON").is_some() {
                    println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
                }
            }
            Err(e) => {
                println!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
