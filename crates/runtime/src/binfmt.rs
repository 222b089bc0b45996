//! binfmt_misc handlers for QEMU user emulation: which architectures have one, registering them
//! (what `tonistiigi/binfmt --install` and `update-binfmts` do) and removing them again.
//!
//! Handlers are registered with the F flag: the kernel opens the interpreter at registration,
//! so it works inside mount namespaces and chroots where the interpreter's path does not exist.
//! That only works for a statically linked interpreter, so dynamic ones are refused.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci::Platform;

use crate::emulation::{self, Handler, RunMode, BINFMT_DIR, PROBES};

/// One architecture buildx lists, and QEMU's binfmt_misc entry for it.
#[derive(Clone, Copy, Debug)]
pub struct Arch {
    /// The OCI architecture with its variant, as buildx lists it: `arm64`, `arm/v7`.
    pub name: &'static str,
    /// QEMU's name for it: `aarch64` (the handler is `qemu-aarch64`).
    pub qemu: &'static str,
    /// The key of its probe in [`PROBES`].
    pub probe: &'static str,
    /// The ELF header bytes that identify it, and which bits of them count (QEMU's
    /// qemu-binfmt-conf.sh values, as Debian and tonistiigi/binfmt register them).
    magic: &'static str,
    mask: &'static str,
}

const ELF32_MASK: &str = "ffffffffffffff00fffffffffffffffffeffffff";

/// Every architecture `manifold binfmt` knows, in buildx's order.
pub const ARCHES: &[Arch] = &[
    Arch {
        name: "amd64",
        qemu: "x86_64",
        probe: "amd64",
        magic: "7f454c4602010100000000000000000002003e00",
        mask: "fffffffffffefe00fffffffffffffffffeffffff",
    },
    Arch {
        name: "386",
        qemu: "i386",
        probe: "386",
        magic: "7f454c4601010100000000000000000002000300",
        mask: "fffffffffffefe00fffffffffffffffffeffffff",
    },
    Arch {
        name: "arm64",
        qemu: "aarch64",
        probe: "arm64",
        magic: "7f454c460201010000000000000000000200b700",
        mask: ELF32_MASK,
    },
    Arch {
        name: "arm/v7",
        qemu: "arm",
        probe: "arm",
        magic: "7f454c4601010100000000000000000002002800",
        mask: ELF32_MASK,
    },
    Arch {
        name: "arm/v6",
        qemu: "arm",
        probe: "arm",
        magic: "7f454c4601010100000000000000000002002800",
        mask: ELF32_MASK,
    },
    Arch {
        name: "riscv64",
        qemu: "riscv64",
        probe: "riscv64",
        magic: "7f454c460201010000000000000000000200f300",
        mask: ELF32_MASK,
    },
    Arch {
        name: "ppc64le",
        qemu: "ppc64le",
        probe: "ppc64le",
        magic: "7f454c4602010100000000000000000002001500",
        mask: "fffffffffffffffcfffffffffffffffffeffff00",
    },
    Arch {
        name: "s390x",
        qemu: "s390x",
        probe: "s390x",
        magic: "7f454c4602020100000000000000000000020016",
        mask: "fffffffffffffffcfffffffffffffffffffeffff",
    },
    Arch {
        name: "mips64le",
        qemu: "mips64el",
        probe: "mips64le",
        magic: "7f454c4602010100000000000000000002000800",
        mask: "ffffffffffffff00fefffffffffffffffeffffff",
    },
    Arch {
        name: "mips64",
        qemu: "mips64",
        probe: "mips64",
        magic: "7f454c4602020100000000000000000000020008",
        mask: "ffffffffffffff00fefffffffffffffffffeffff",
    },
    Arch {
        name: "loong64",
        qemu: "loongarch64",
        probe: "loong64",
        magic: "7f454c4602010100000000000000000002000201",
        mask: "fffffffffffffffc00fffffffffffffffeffffff",
    },
];

impl Arch {
    /// The handler name QEMU's packages use: `qemu-aarch64`.
    pub fn handler_name(&self) -> String {
        format!("qemu-{}", self.qemu)
    }

    pub fn platform(&self) -> Platform {
        let (arch, variant) = self.name.split_once('/').unwrap_or((self.name, ""));
        Platform::new("linux", arch, variant)
    }

    fn probe_bytes(&self) -> &'static [u8] {
        PROBES
            .iter()
            .find(|(a, _)| *a == self.probe)
            .map(|(_, b)| *b)
            .unwrap_or(&[])
    }

    /// The `register` line: `:name:M::magic:mask:interpreter:flags`, every byte escaped.
    fn register_line(&self, interpreter: &Path, flags: &str) -> String {
        let esc = |hex: &str| {
            (0..hex.len() / 2)
                .map(|i| format!("\\x{}", &hex[2 * i..2 * i + 2]))
                .collect::<String>()
        };
        format!(
            ":{}:M::{}:{}:{}:{flags}",
            self.handler_name(),
            esc(self.magic),
            esc(self.mask),
            interpreter.display()
        )
    }
}

/// Finds architectures by the names users type: buildx's (`arm64`, `arm/v7`), QEMU's
/// (`aarch64`), Debian's (`armhf`, `ppc64el`, `mips64el`), or `all`. Platforms sharing one
/// handler (arm/v7, arm/v6) come back once.
pub fn parse_arches(list: &str) -> Result<Vec<&'static Arch>, String> {
    let mut out: Vec<&'static Arch> = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let word = word.strip_prefix("linux/").unwrap_or(word);
        let found: Vec<&'static Arch> = if word == "all" {
            ARCHES.iter().collect()
        } else {
            let norm = match word {
                "x86_64" | "x86-64" => "amd64",
                "i386" | "i686" | "x86" => "386",
                "aarch64" | "arm64/v8" => "arm64",
                "arm" | "armhf" | "armv7" | "armv7l" => "arm/v7",
                "armel" | "armv6" | "armv6l" => "arm/v6",
                "ppc64el" => "ppc64le",
                "mips64el" => "mips64le",
                "loongarch64" => "loong64",
                w => w,
            };
            match ARCHES.iter().find(|a| a.name == norm || a.qemu == norm) {
                Some(a) => vec![a],
                None => {
                    return Err(format!(
                        "unknown architecture {word:?}: use all or one of {}",
                        ARCHES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                    ))
                }
            }
        };
        for a in found {
            if !out.iter().any(|o| o.qemu == a.qemu) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err(
            "name the architectures: all, or a comma-separated list such as arm64,riscv64".into(),
        );
    }
    Ok(out)
}

/// What `manifold binfmt` shows for one architecture.
#[derive(Clone, Debug)]
pub struct Status {
    pub arch: &'static Arch,
    /// The registered handler the kernel would use for this architecture's binaries.
    pub handler: Option<Handler>,
    /// The live probe: how a tiny static program of this architecture ran, or why it did not.
    pub probe: Result<RunMode, String>,
}

/// The handlers and a live probe for every architecture in [`ARCHES`].
pub fn status() -> Vec<Status> {
    let dir = Path::new(BINFMT_DIR);
    let registered = emulation::handlers(dir);
    let probes = emulation::detect_uncached();
    ARCHES
        .iter()
        .map(|arch| {
            let bytes = arch.probe_bytes();
            let handler = registered
                .iter()
                .filter(|h| h.matches(bytes))
                .max_by_key(|h| h.enabled)
                .cloned();
            let probe = probes
                .iter()
                .find(|e| e.architecture == arch.probe)
                .map(|e| e.mode.clone())
                .unwrap_or_else(|| Err("no probe for this architecture".into()));
            Status {
                arch,
                handler,
                probe,
            }
        })
        .collect()
}

/// Where QEMU's packages put the user-mode emulators, in order of preference: qemu-user-static
/// (`/usr/bin/qemu-aarch64-static`), qemu-user (`/usr/bin/qemu-aarch64`, static since Debian
/// 13), qemu-user-binfmt's `/usr/libexec/qemu-binfmt/aarch64-binfmt-P` (a link to one of those).
pub fn interpreter_candidates(qemu: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["/usr/bin", "/usr/local/bin"] {
        v.push(PathBuf::from(format!("{dir}/qemu-{qemu}-static")));
        v.push(PathBuf::from(format!("{dir}/qemu-{qemu}")));
    }
    v.push(PathBuf::from(format!(
        "/usr/libexec/qemu-binfmt/{qemu}-binfmt-P"
    )));
    v
}

/// The package that provides the emulator, for error messages.
pub fn package_hint(arch: &Arch) -> String {
    format!(
        "install QEMU's static user-mode emulators: `apt-get install qemu-user-static` (Debian, Ubuntu), `dnf install qemu-user-static-{}` (Fedora) or `pacman -S qemu-user-static` (Arch)",
        match arch.qemu {
            "x86_64" | "i386" => "x86",
            "mips64" | "mips64el" => "mips",
            "ppc64le" => "ppc",
            q => q,
        }
    )
}

/// The emulator for `arch`: the first candidate that is a statically linked executable. (The
/// `-binfmt-P` links are resolved: they expect the P flag, the binary itself does not.)
pub fn find_interpreter(arch: &Arch) -> Result<PathBuf, String> {
    let mut notes = Vec::new();
    for c in interpreter_candidates(arch.qemu) {
        let Ok(real) = fs::canonicalize(&c) else {
            continue;
        };
        let Ok(meta) = fs::metadata(&real) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            notes.push(format!("{} is not an executable file", c.display()));
            continue;
        }
        match fs::read(&real).map(|b| elf_is_static(&b)) {
            Ok(Some(true)) => return Ok(real),
            Ok(Some(false)) => notes.push(format!(
                "{} is dynamically linked (with flag F the kernel runs it inside the container's root filesystem, where its libraries are not)",
                real.display()
            )),
            Ok(None) => notes.push(format!("{} is not an ELF executable", real.display())),
            Err(e) => notes.push(format!("{}: {e}", real.display())),
        }
    }
    let looked = interpreter_candidates(arch.qemu)
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut msg = format!(
        "no static QEMU emulator for {} (looked for {looked})",
        arch.name
    );
    if !notes.is_empty() {
        msg.push_str(&format!("; {}", notes.join("; ")));
    }
    msg.push_str(&format!("; {}", package_hint(arch)));
    Err(msg)
}

/// `Some(true)` for an ELF file without a program interpreter (PT_INTERP), `Some(false)` with
/// one, `None` when it is not ELF.
fn elf_is_static(b: &[u8]) -> Option<bool> {
    if b.get(..4)? != b"\x7fELF" {
        return None;
    }
    let is64 = *b.get(4)? == 2;
    let le = *b.get(5)? == 1;
    let u16_at = |o: usize| -> Option<u64> {
        let s: [u8; 2] = b.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        } as u64)
    };
    let u32_at = |o: usize| -> Option<u64> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        } as u64)
    };
    let u64_at = |o: usize| -> Option<u64> {
        let s: [u8; 8] = b.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(s)
        } else {
            u64::from_be_bytes(s)
        })
    };
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(32)?, u16_at(54)?, u16_at(56)?)
    } else {
        (u32_at(28)?, u16_at(42)?, u16_at(44)?)
    };
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).ok()?;
        if u32_at(off)? == 3 {
            return Some(false);
        }
    }
    Some(true)
}

/// Mounts binfmt_misc at `dir` unless it is mounted there already.
pub fn ensure_mounted(dir: &Path) -> Result<(), String> {
    if dir.join("register").exists() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    nix::mount::mount(
        Some("binfmt_misc"),
        dir,
        Some("binfmt_misc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "binfmt_misc is not mounted at {} and mounting it failed: {e} (it needs root; is the binfmt_misc module loaded? `modprobe binfmt_misc`)",
            dir.display()
        )
    })
}

/// What `install` did for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Registered now.
    Registered {
        handler: String,
        interpreter: PathBuf,
    },
    /// A QEMU handler with flag F was enabled already; left as it is.
    Present {
        handler: String,
        interpreter: String,
    },
    /// This machine runs these binaries itself: no handler wanted.
    Native,
}

/// Is this handler one QEMU's packages (or ours) registered?
pub fn is_qemu(h: &Handler) -> bool {
    let base = Path::new(&h.interpreter)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    h.name.starts_with("qemu-") && (base.contains("qemu") || base.ends_with("-binfmt-P"))
}

fn write_to(path: &Path, line: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // One write: binfmt_misc takes each write as a whole command.
    f.write_all(line.as_bytes())
        .map_err(|e| format!("writing {line:?} to {}: {e}", path.display()))
}

/// Registers the handler for `arch` in the binfmt_misc at `dir` with `interpreter` and flag F.
/// A QEMU handler without F, or disabled, is replaced; a handler that is not QEMU's is left
/// alone and reported.
pub fn install(arch: &Arch, interpreter: &Path, dir: &Path) -> Result<Installed, String> {
    ensure_mounted(dir)?;
    let bytes = arch.probe_bytes();
    let host = Platform::host();
    let natively = host.architecture == arch.probe
        || (host.architecture == "amd64" && arch.probe == "386")
        || (host.architecture == "arm64" && arch.probe == "arm" && arm32_runs_natively());
    let existing = emulation::handlers(dir);
    let claim = existing.iter().find(|h| h.matches(bytes));
    if natively && claim.is_none() {
        return Ok(Installed::Native);
    }
    if let Some(h) = claim {
        if !is_qemu(h) {
            return Err(format!(
                "the binfmt_misc handler {} (interpreter {}) already claims {} binaries and is not QEMU's; remove it first (echo -1 > {}/{})",
                h.name,
                h.interpreter,
                arch.name,
                dir.display(),
                h.name
            ));
        }
        if h.enabled && h.flags.contains('F') && Path::new(&h.interpreter).exists() {
            return Ok(Installed::Present {
                handler: h.name.clone(),
                interpreter: h.interpreter.clone(),
            });
        }
        write_to(&dir.join(&h.name), "-1")?;
    }
    // A stale entry of our name that does not match (another magic) would make register fail.
    if let Some(h) = existing
        .iter()
        .find(|h| h.name == arch.handler_name() && !h.matches(bytes))
    {
        if is_qemu(h) {
            write_to(&dir.join(&h.name), "-1")?;
        }
    }
    write_to(&dir.join("register"), &arch.register_line(interpreter, "F"))?;
    Ok(Installed::Registered {
        handler: arch.handler_name(),
        interpreter: interpreter.to_path_buf(),
    })
}

/// Does this arm64 CPU run 32-bit arm code (many servers do not)? Asked of the probe.
fn arm32_runs_natively() -> bool {
    emulation::detect()
        .iter()
        .any(|e| e.architecture == "arm" && e.mode == Ok(RunMode::Native))
}

/// Removes the QEMU handlers for `arches` from the binfmt_misc at `dir`; returns
/// (handler, removed) for each one found, `removed` false for handlers that are not QEMU's
/// (left alone).
pub fn uninstall(arches: &[&Arch], dir: &Path) -> Result<Vec<(Handler, bool)>, String> {
    let mut out = Vec::new();
    for h in emulation::handlers(dir) {
        if !arches.iter().any(|a| h.matches(a.probe_bytes())) {
            continue;
        }
        if is_qemu(&h) {
            write_to(&dir.join(&h.name), "-1")?;
            out.push((h, true));
        } else {
            out.push((h, false));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arch_matches_its_own_probe_only() {
        for a in ARCHES {
            assert_eq!(a.magic.len(), 40, "{}", a.name);
            assert_eq!(a.mask.len(), 40, "{}", a.name);
            let line = a.register_line(Path::new("/usr/bin/qemu-x-static"), "F");
            assert!(line.starts_with(&format!(":qemu-{}:M::\\x7f\\x45", a.qemu)));
            let dir = tempfile::tempdir().unwrap();
            fs::write(
                dir.path().join(a.handler_name()),
                format!(
                    "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic {}\nmask {}\n",
                    a.magic, a.mask
                ),
            )
            .unwrap();
            let h = &emulation::handlers(dir.path())[0];
            for (probe, bytes) in PROBES {
                assert_eq!(h.matches(bytes), *probe == a.probe, "{} vs {probe}", a.name);
            }
        }
    }

    #[test]
    fn arch_names() {
        let names =
            |s: &str| -> Vec<&str> { parse_arches(s).unwrap().iter().map(|a| a.name).collect() };
        assert_eq!(names("aarch64,linux/riscv64"), ["arm64", "riscv64"]);
        assert_eq!(names("arm/v7,armel,ppc64el"), ["arm/v7", "ppc64le"]);
        assert_eq!(names("all").len(), ARCHES.len() - 1);
        assert!(parse_arches("sparc").unwrap_err().contains("loong64"));
        assert!(parse_arches("").is_err());
    }

    #[test]
    fn static_and_dynamic_elf() {
        assert_eq!(elf_is_static(crate::probes::AARCH64), Some(true));
        assert_eq!(elf_is_static(crate::probes::S390X), Some(true));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
        // This test binary is dynamically linked (or static-pie without PT_INTERP).
        let me = fs::read("/proc/self/exe").unwrap();
        let has_interp = String::from_utf8_lossy(&me).contains("ld-linux");
        assert_eq!(elf_is_static(&me), Some(!has_interp));
    }

    #[test]
    fn qemu_handlers_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        for (name, interp) in [
            ("qemu-aarch64", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
            ("qemu-arm", "/usr/bin/qemu-arm-static"),
            ("jar", "/usr/bin/jexec"),
            ("qemu-ppc64le", "/usr/bin/box64"),
        ] {
            fs::write(
                dir.path().join(name),
                format!("enabled\ninterpreter {interp}\nflags: F\noffset 0\nmagic 7f454c46\n"),
            )
            .unwrap();
        }
        let hs = emulation::handlers(dir.path());
        let q: Vec<_> = hs.iter().filter(|h| is_qemu(h)).map(|h| &h.name).collect();
        assert_eq!(q, ["qemu-aarch64", "qemu-arm"]);
    }
}
