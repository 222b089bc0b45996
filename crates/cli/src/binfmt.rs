//! `manifold binfmt`: show, install and remove QEMU's binfmt_misc handlers (what
//! `tonistiigi/binfmt` and `update-binfmts` do), with a live probe per architecture.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use runtime::binfmt::{self, Installed, Status};
use runtime::emulation::BINFMT_DIR;
use runtime::RunMode;

use crate::global::{Cli, OutputFormat};
use crate::output::say;

#[derive(Args, Debug)]
pub struct BinfmtArgs {
    #[command(subcommand)]
    command: Option<BinfmtCmd>,
    /// table, or json for tools.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Subcommand, Debug)]
enum BinfmtCmd {
    /// Per architecture: the handler, its interpreter and flags, and a live probe (the default).
    Status {
        /// table, or json for tools.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Register QEMU's handlers with flag F (so they work in containers and chroots) for
    /// `all` or a comma-separated list (arm64,riscv64,...). Needs root and the static QEMU
    /// user-mode emulators (qemu-user-static). Mounts binfmt_misc when it is not.
    Install {
        /// all, or architectures: amd64, 386, arm64, arm/v7, arm/v6, riscv64, ppc64le, s390x, ...
        #[arg(value_name = "all|ARCH,...")]
        arches: String,
    },
    /// Remove QEMU's handlers for `all` or the named architectures; other handlers stay.
    Uninstall {
        /// all, or the architectures whose QEMU handlers go.
        #[arg(value_name = "all|ARCH,...")]
        arches: String,
    },
}

pub fn run(cli: &Cli, a: &BinfmtArgs) -> Result<ExitCode> {
    match &a.command {
        None => status(a.format),
        Some(BinfmtCmd::Status { format }) => status(if a.format == OutputFormat::Json {
            a.format
        } else {
            *format
        }),
        Some(BinfmtCmd::Install { arches }) => install(cli, arches),
        Some(BinfmtCmd::Uninstall { arches }) => uninstall(cli, arches),
    }
}

fn probe_text(s: &Status) -> (String, Option<String>) {
    match &s.probe {
        Ok(RunMode::Native) => ("native".into(), None),
        Ok(RunMode::Emulated { .. }) => ("ok".into(), None),
        Err(e) => ("fails".into(), Some(e.clone())),
    }
}

fn status(format: OutputFormat) -> Result<ExitCode> {
    let all = binfmt::status();
    if format == OutputFormat::Json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|s| {
                let (probe, error) = probe_text(s);
                serde_json::json!({
                    "architecture": s.arch.name,
                    "platform": s.arch.platform().to_string(),
                    "handler": s.handler.as_ref().map(|h| h.name.clone()),
                    "interpreter": s.handler.as_ref().map(|h| h.interpreter.clone()),
                    "flags": s.handler.as_ref().map(|h| h.flags.clone()),
                    "enabled": s.handler.as_ref().map(|h| h.enabled),
                    "probe": probe,
                    "error": error,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !Path::new(BINFMT_DIR).join("status").exists() {
        eprintln!(
            "note: binfmt_misc is not mounted at {BINFMT_DIR}; `manifold binfmt install` mounts it"
        );
    }
    println!(
        "{:<10} {:<18} {:<8} {:<6} {:<8} INTERPRETER",
        "PLATFORM", "HANDLER", "ENABLED", "FLAGS", "PROBE"
    );
    let mut notes = Vec::new();
    for s in &all {
        let (probe, error) = probe_text(s);
        let (name, enabled, flags, interp) = match &s.handler {
            Some(h) => (
                h.name.as_str(),
                if h.enabled { "yes" } else { "no" },
                if h.flags.is_empty() { "-" } else { &h.flags },
                h.interpreter.as_str(),
            ),
            None => ("-", "-", "-", "-"),
        };
        println!(
            "{:<10} {:<18} {:<8} {:<6} {:<8} {interp}",
            s.arch.name, name, enabled, flags, probe
        );
        if let Some(e) = error {
            notes.push(format!("{}: {e}", s.arch.name));
        }
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
        println!("Add handlers with `manifold binfmt install all` (or ARCH,...).");
    }
    Ok(ExitCode::SUCCESS)
}

fn install(cli: &Cli, list: &str) -> Result<ExitCode> {
    let arches = binfmt::parse_arches(list).map_err(anyhow::Error::msg)?;
    let all = list.split(',').any(|w| w.trim() == "all");
    let dir = Path::new(BINFMT_DIR);
    // Every named architecture's emulator must exist before anything is registered.
    let mut plan = Vec::new();
    let mut missing = Vec::new();
    for a in &arches {
        match binfmt::find_interpreter(a) {
            Ok(p) => plan.push((*a, Some(p))),
            Err(e) => {
                plan.push((*a, None));
                missing.push(e);
            }
        }
    }
    if !all && !missing.is_empty() {
        bail!("nothing was registered: {}", missing.join("\n"));
    }
    let mut failed = 0;
    for (a, interp) in &plan {
        let Some(interp) = interp else {
            println!("{:<10} skipped: no static QEMU emulator found", a.name);
            continue;
        };
        match binfmt::install(a, interp, dir) {
            Ok(Installed::Registered {
                handler,
                interpreter,
            }) => println!(
                "{:<10} installed {handler} ({}, flags F)",
                a.name,
                interpreter.display()
            ),
            Ok(Installed::Present {
                handler,
                interpreter,
            }) => println!(
                "{:<10} already installed: {handler} ({interpreter})",
                a.name
            ),
            Ok(Installed::Native) => println!("{:<10} runs natively here: no handler", a.name),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", a.name);
            }
        }
    }
    if all && !missing.is_empty() {
        say(
            cli,
            format!(
                "{} architectures have no static QEMU emulator here; {}",
                missing.len(),
                binfmt::package_hint(arches[0])
            ),
        );
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn uninstall(cli: &Cli, list: &str) -> Result<ExitCode> {
    let arches = binfmt::parse_arches(list).map_err(anyhow::Error::msg)?;
    let dir = Path::new(BINFMT_DIR);
    if !dir.join("status").exists() {
        say(
            cli,
            format!("binfmt_misc is not mounted at {BINFMT_DIR}: no handler to remove"),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let done = binfmt::uninstall(&arches, dir).map_err(anyhow::Error::msg)?;
    if done.is_empty() {
        say(cli, "no QEMU handler registered for those architectures");
    }
    for (h, removed) in done {
        if removed {
            println!("removed {} ({})", h.name, h.interpreter);
        } else {
            println!(
                "left {} alone: its interpreter {} is not QEMU's",
                h.name, h.interpreter
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
