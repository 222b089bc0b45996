//! `builder node-build`: the node side of a build on a builder's nodes. It reads the context
//! stream, builds with `build`'s handler, and answers with an OCI archive. It lives apart from
//! nodes.rs (the client side, which `build` uses) so that neither imports the other.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use crate::builder::NodeBuildArgs;
use crate::global::Cli;
use crate::nodes::NODE_DIR;

/// The node side of `build`: read the stream, build, answer with an OCI archive.
pub fn run(cli: &Cli, env: &transport::Env, a: &NodeBuildArgs) -> Result<ExitCode> {
    let work = tempfile::Builder::new()
        .prefix("manifold-run-node-")
        .tempdir()
        .context("creating a scratch directory")?;
    // A cancelled node kills itself: `prune` removes what it leaves by this mark.
    let _ = runtime::leftovers::mark(work.path());
    let ctx = work.path().join("context");
    std::fs::create_dir(&ctx)?;
    let dockerfile = work.path().join("Dockerfile");
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let mut input = std::io::stdin();
    {
        let mut ar = tar::Archive::new(&mut input);
        ar.set_preserve_permissions(true);
        ar.set_preserve_mtime(true);
        for entry in ar.entries().context("reading the context stream")? {
            let mut e = entry.context("reading the context stream")?;
            let path = e.path()?.to_string_lossy().into_owned();
            if let Some(rest) = path.strip_prefix(&format!("{NODE_DIR}/")) {
                let mut v = Vec::new();
                e.read_to_end(&mut v)?;
                if rest == "Dockerfile" {
                    std::fs::write(&dockerfile, v)?;
                } else if let Some(id) = rest.strip_prefix("secrets/") {
                    secrets.push((id.to_string(), v));
                }
                continue;
            }
            if !e
                .unpack_in(&ctx)
                .with_context(|| format!("unpacking {path}"))?
            {
                bail!("the context stream has an entry outside the context: {path:?}");
            }
        }
    }
    // Secrets and the epoch reach the build through this process's environment (no thread runs
    // yet), never through a file on this machine's disk.
    let mut secret_specs = Vec::new();
    for (i, (id, v)) in secrets.iter().enumerate() {
        let var = format!("MANIFOLD_NODE_SECRET_{i}");
        std::env::set_var(&var, OsStr::from_bytes(v));
        secret_specs.push(format!("id={id},env={var}"));
    }
    if let Some(e) = &a.source_date_epoch {
        std::env::set_var("SOURCE_DATE_EPOCH", e);
    }
    // The other side closing our input means the build is cancelled: stop everything.
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // SAFETY: signalling our own process group; nothing is shared afterwards.
                    unsafe { libc::kill(0, libc::SIGKILL) };
                    std::process::exit(130);
                }
                Ok(_) => {}
            }
        }
    });
    let result = work.path().join("result.tar");
    let outputs = vec![format!("type=oci,dest={}", result.display())];
    // The build prints digests on standard output: keep that stream for the archive alone.
    let saved = dup_stdout_to_stderr()?;
    let code = crate::build::run(
        cli,
        env,
        &crate::build::BuildArgs {
            context: ctx.clone(),
            file: Some(dockerfile.clone()),
            platform: a.platform.clone(),
            tag: Vec::new(),
            build_arg: a.build_arg.clone(),
            target: a.target.clone(),
            check: false,
            format: crate::global::OutputFormat::Table,
            push: false,
            load: false,
            output: outputs,
            metadata_file: None,
            no_cache: a.no_cache,
            pull: a.pull,
            progress: "plain".into(),
            jobs: None,
            secret: secret_specs,
            iidfile: None,
            label: a.label.clone(),
            annotation: a.annotation.clone(),
            add_host: a.add_host.clone(),
            no_cache_filter: a.no_cache_filter.clone(),
            ssh: a.ssh.clone(),
            builder: Some(crate::builder::DEFAULT.into()),
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            network: a.network.clone(),
            allow: a.allow.clone(),
        },
    );
    let mut out = restore_stdout(saved)?;
    let code = code?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let mut f = std::fs::File::open(&result).context("opening the result archive")?;
    std::io::copy(&mut f, &mut out).context("sending the result")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Points descriptor 1 at standard error; returns the original standard output.
fn dup_stdout_to_stderr() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup and dup2 on the process's own standard descriptors.
    unsafe {
        let saved = libc::dup(1);
        if saved < 0 || libc::dup2(2, 1) < 0 {
            bail!(
                "redirecting standard output: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(saved))
    }
}

fn restore_stdout(saved: std::os::fd::OwnedFd) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::io::stdout().flush()?;
    // SAFETY: dup2 of a descriptor we own onto standard output.
    if unsafe { libc::dup2(saved.as_raw_fd(), 1) } < 0 {
        bail!(
            "restoring standard output: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(std::fs::File::from(saved))
}
