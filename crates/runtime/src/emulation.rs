//! Which platforms this machine can execute: natively, or through a binfmt_misc handler (QEMU
//! user emulation), found out as BuildKit does, by running a tiny static probe per architecture.
//!
//! A handler only counts when it is enabled and has the F flag: without it the kernel looks the
//! interpreter up inside the step's root filesystem, where it is not.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use oci::Platform;

use crate::probes;
use crate::{Error, Result};

pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// What to do when `arches` (OCI architecture names, comma-separated) cannot run here.
pub fn install_hint(arches: &str) -> String {
    format!(
        "Run `manifold binfmt install {arches}` (as root; it needs QEMU's user-mode emulators: `apt-get install qemu-user-static` on Debian and Ubuntu, `qemu-user-static` on Fedora and Arch), then `manifold binfmt` to check"
    )
}

/// How steps of a platform run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunMode {
    Native,
    /// Through the binfmt_misc handler `handler` (such as `qemu-aarch64`), whose interpreter is
    /// `interpreter`.
    Emulated {
        handler: String,
        interpreter: String,
    },
}

impl RunMode {
    pub fn is_emulated(&self) -> bool {
        matches!(self, RunMode::Emulated { .. })
    }
}

/// What the probe of one architecture found.
#[derive(Clone, Debug)]
pub struct Emulation {
    /// The OCI architecture name (`arm64`, `arm`, `386`...).
    pub architecture: &'static str,
    /// `Ok` with how it runs, or `Err` with why it cannot.
    pub mode: Result<RunMode, String>,
}

/// (OCI architecture, probe ELF) for every architecture manifold knows how to probe.
pub const PROBES: &[(&str, &[u8])] = &[
    ("amd64", probes::X86_64),
    ("386", probes::I386),
    ("arm64", probes::AARCH64),
    ("arm", probes::ARM),
    ("riscv64", probes::RISCV64),
    ("s390x", probes::S390X),
    ("ppc64le", probes::PPC64LE),
    ("mips64le", probes::MIPS64EL),
    ("mips64", probes::MIPS64),
    ("loong64", probes::LOONGARCH64),
];

/// A registered binfmt_misc handler.
#[derive(Clone, Debug)]
pub struct Handler {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

impl Handler {
    /// Would the kernel hand `bin` to this handler (its magic under its mask)?
    pub fn matches(&self, bin: &[u8]) -> bool {
        let Some(head) = bin.get(self.offset..self.offset + self.magic.len()) else {
            return false;
        };
        head.iter().enumerate().all(|(i, b)| {
            let m = self.mask.get(i).copied().unwrap_or(0xff);
            b & m == self.magic[i] & m
        })
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The magic-based handlers registered in `dir` (normally [`BINFMT_DIR`]).
pub fn handlers(dir: &Path) -> Vec<Handler> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let mut h = Handler {
            name,
            enabled: false,
            interpreter: String::new(),
            flags: String::new(),
            offset: 0,
            magic: Vec::new(),
            mask: Vec::new(),
        };
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "enabled" => h.enabled = true,
                "interpreter" => h.interpreter = v.to_string(),
                "flags:" => h.flags = v.to_string(),
                "offset" => h.offset = v.parse().unwrap_or(0),
                "magic" => h.magic = parse_hex(v).unwrap_or_default(),
                "mask" => h.mask = parse_hex(v).unwrap_or_default(),
                _ => {}
            }
        }
        if !h.magic.is_empty() {
            out.push(h);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs a probe binary; `Ok` when it exited 0.
fn run_probe(bytes: &[u8], dir: &Path, arch: &str) -> io::Result<bool> {
    let path: PathBuf = dir.join(format!("probe-{arch}"));
    fs::write(&path, bytes)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
    // Another thread's fork can briefly hold the file open for writing: ETXTBSY, retry.
    for _ in 0..20 {
        match Command::new(&path).env_clear().status() {
            Ok(s) => return Ok(s.success()),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Probes every known architecture now (uncached).
pub fn detect_uncached() -> Vec<Emulation> {
    let host = Platform::host();
    let registered = handlers(Path::new(BINFMT_DIR));
    let mounted = Path::new(BINFMT_DIR).join("status").exists();
    let tmp = tempfile::Builder::new().prefix("manifold-probe-").tempdir();
    PROBES
        .iter()
        .map(|(arch, bytes)| {
            let handler = registered.iter().find(|h| h.enabled && h.matches(bytes));
            let ran = match &tmp {
                Ok(t) => run_probe(bytes, t.path(), arch),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let mode = match (ran, handler) {
                (Ok(true), None) => Ok(RunMode::Native),
                (Ok(true), Some(_)) if *arch == host.architecture => Ok(RunMode::Native),
                (Ok(true), Some(h)) if h.flags.contains('F') => Ok(RunMode::Emulated {
                    handler: h.name.clone(),
                    interpreter: h.interpreter.clone(),
                }),
                (Ok(true), Some(h)) => Err(format!(
                    "the binfmt_misc handler {} lacks the F flag, so its interpreter {} would have to exist inside the build's root filesystem; re-register it with flag F",
                    h.name, h.interpreter
                )),
                (Ok(false), Some(h)) => Err(format!(
                    "the binfmt_misc handler {} is registered but its interpreter {} did not run the probe",
                    h.name, h.interpreter
                )),
                (Ok(false), None) if !mounted => Err(format!(
                    "binfmt_misc is not mounted (mount -t binfmt_misc binfmt_misc {BINFMT_DIR}), so no emulator is registered"
                )),
                (Ok(false), None) => {
                    let disabled = registered.iter().find(|h| !h.enabled && h.matches(bytes));
                    match disabled {
                        Some(h) => Err(format!(
                            "the binfmt_misc handler {} is disabled (echo 1 > {BINFMT_DIR}/{})",
                            h.name, h.name
                        )),
                        None => Err(format!(
                            "no binfmt_misc handler for {arch} binaries is registered"
                        )),
                    }
                }
                (Err(e), _) => Err(format!("the probe could not be started: {e}")),
            };
            Emulation {
                architecture: arch,
                mode,
            }
        })
        .collect()
}

/// Probes every known architecture once per process.
pub fn detect() -> &'static [Emulation] {
    static CACHE: OnceLock<Vec<Emulation>> = OnceLock::new();
    CACHE.get_or_init(detect_uncached)
}

/// How steps for `platform` run on this machine, or why they cannot, with what to do.
pub fn check(platform: &Platform) -> Result<RunMode> {
    check_in(detect(), platform)
}

/// Checks every platform up front; the error names each one that cannot run.
pub fn check_all(platforms: &[Platform]) -> Result<Vec<RunMode>> {
    let results: Vec<_> = platforms.iter().map(check).collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    if failed.len() > 1 {
        return Err(Error::PlatformUnavailable {
            platform: platforms
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_err())
                .map(|(p, _)| p.short())
                .collect::<Vec<_>>()
                .join(", "),
            host: Platform::host().short(),
            reason: failed.join("; "),
            hint: install_hint(
                &platforms
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_err())
                    .map(|(p, _)| p.clone().normalized().architecture)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        });
    }
    results.into_iter().collect()
}

fn check_in(found: &[Emulation], platform: &Platform) -> Result<RunMode> {
    let p = platform.clone().normalized();
    let host = Platform::host();
    let unavailable = |reason: String| Error::PlatformUnavailable {
        platform: p.short(),
        host: host.short(),
        reason,
        hint: install_hint(&p.architecture),
    };
    if p.os != "linux" {
        return Err(Error::PlatformUnavailable {
            platform: p.short(),
            host: host.short(),
            reason: "only linux images can run build steps here".into(),
            hint: "Build for a linux platform, or run this build on a machine of that OS".into(),
        });
    }
    let Some(e) = found.iter().find(|e| e.architecture == p.architecture) else {
        return Err(Error::PlatformUnavailable {
            platform: p.short(),
            host: host.short(),
            reason: format!(
                "manifold has no probe for the {} architecture (it knows {})",
                p.architecture,
                PROBES
                    .iter()
                    .map(|(a, _)| *a)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: "`manifold binfmt` lists the architectures manifold can set up emulation for"
                .into(),
        });
    };
    let mode = e.mode.clone().map_err(unavailable)?;
    if p.architecture == "amd64" && mode == RunMode::Native {
        let want: u8 = p.variant.trim_start_matches('v').parse().unwrap_or(1);
        let have = oci::platform::host_amd64_level();
        if have > 0 && want > have {
            return Err(unavailable(format!(
                "this CPU supports x86-64-v{have}, not v{want}"
            )));
        }
    }
    Ok(mode)
}

/// The platforms this machine can run, with how, for `manifold` to show.
pub fn runnable() -> Vec<(Platform, RunMode)> {
    detect()
        .iter()
        .filter_map(|e| {
            let variant = if e.architecture == "arm" { "v7" } else { "" };
            e.mode
                .clone()
                .ok()
                .map(|m| (Platform::new("linux", e.architecture, variant), m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_elf_for_the_right_machine() {
        // e_machine of each probe.
        let want = [
            ("amd64", 62u16),
            ("386", 3),
            ("arm64", 183),
            ("arm", 40),
            ("riscv64", 243),
            ("s390x", 22),
            ("ppc64le", 21),
            ("mips64le", 8),
            ("mips64", 8),
            ("loong64", 258),
        ];
        assert_eq!(PROBES.len(), want.len());
        for ((arch, bytes), (warch, machine)) in PROBES.iter().zip(want) {
            assert_eq!(*arch, warch);
            assert_eq!(&bytes[..4], b"\x7fELF");
            let m = if *arch == "s390x" || *arch == "mips64" {
                u16::from_be_bytes([bytes[18], bytes[19]])
            } else {
                u16::from_le_bytes([bytes[18], bytes[19]])
            };
            assert_eq!(m, machine, "{arch}");
            assert!(bytes.len() < 1024);
        }
    }

    #[test]
    fn the_host_runs_natively() {
        let host = Platform::host();
        assert_eq!(check(&host).unwrap(), RunMode::Native);
    }

    #[test]
    fn a_missing_handler_says_what_to_install() {
        let found = vec![Emulation {
            architecture: "s390x",
            mode: Err("no binfmt_misc handler for s390x binaries is registered".into()),
        }];
        let err = check_in(&found, &Platform::parse("linux/s390x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("no binfmt_misc handler"),
            "{err}"
        );
        assert!(
            err.contains("manifold binfmt install s390x") && err.contains("qemu-user-static"),
            "{err}"
        );
        let err = check_in(&found, &Platform::parse("linux/sparc64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no probe for the sparc64"), "{err}");
    }

    #[test]
    fn handler_magic_matching() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n",
        )
        .unwrap();
        fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let hs = handlers(dir.path());
        assert_eq!(hs.len(), 1);
        assert!(hs[0].matches(probes::AARCH64));
        assert!(!hs[0].matches(probes::ARM));
        assert!(!hs[0].matches(probes::X86_64));
        assert!(hs[0].flags.contains('F'));
    }
}
