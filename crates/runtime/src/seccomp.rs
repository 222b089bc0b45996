//! Docker's default seccomp profile for RUN steps.
//!
//! The profile is docker's own `default.json`, read from the system rather than shipped here:
//! `MANIFOLD_SECCOMP_PROFILE`, else the copy in Debian's golang-github-docker-docker-dev (the
//! moby source of the docker.io package). A missing or unreadable profile fails the step: a
//! sandbox never runs without its filter. It is evaluated as moby does for
//! this machine's architecture, the running kernel and the capabilities a step keeps, then
//! compiled by libseccomp into one BPF program covering the native architecture and its
//! sub-architectures (amd64 also filters i386 and x32 calls, arm64 also arm), as runc does.
//! The program is compiled once per process, before any fork; the forked child only hands the
//! finished instructions to the kernel.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::str::FromStr;
use std::sync::OnceLock;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

use crate::{Error, Result};

/// Where the default profile is looked for when `MANIFOLD_SECCOMP_PROFILE` is not set.
pub const SYSTEM_PROFILE: &str =
    "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json";

/// The profile's JSON, read once per process.
pub fn profile_json() -> Result<&'static str> {
    static TEXT: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r = TEXT.get_or_init(|| {
        let path = std::env::var("MANIFOLD_SECCOMP_PROFILE")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| SYSTEM_PROFILE.into());
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {path}: {e}; install docker's default profile (Debian: apt-get install golang-github-docker-docker-dev) or point MANIFOLD_SECCOMP_PROFILE at a copy of moby's profiles/seccomp/default.json"
            )
        })
    });
    r.as_deref().map_err(|e| profile_err(e.clone()))
}

/// Docker's default capability set, which a step keeps (everything else leaves the bounding set).
pub const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<ArgRule>>,
    #[serde(default)]
    includes: Option<Condition>,
    #[serde(default)]
    excludes: Option<Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// One argument condition, as the profile writes it (`value` is the mask for MASKED_EQ).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ArgRule {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// What the profile does with one system call (or one argument pattern of it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EffectiveRule {
    pub name: String,
    /// `None`: allowed; `Some(errno)`: fails with that errno.
    pub errno: Option<u32>,
    /// All must hold (an empty list: unconditional).
    pub args: Vec<ArgRule>,
}

/// The profile evaluated for `arch` (Go's name: amd64, arm64, ...), `caps` and the kernel
/// version `kernel` (major, minor), as moby's `setupSeccomp` does.
pub fn effective_rules(
    arch: &str,
    caps: &[&str],
    kernel: (u32, u32),
) -> Result<Vec<EffectiveRule>> {
    let profile = profile()?;
    let has = |c: &String| caps.iter().any(|k| k == c);
    let mut out = BTreeSet::new();
    for r in &profile.syscalls {
        let ex = r.excludes.as_ref();
        let inc = r.includes.as_ref();
        if ex
            .and_then(|e| e.arches.as_ref())
            .is_some_and(|a| a.iter().any(|x| x == arch))
            || ex
                .and_then(|e| e.caps.as_ref())
                .is_some_and(|c| c.iter().any(has))
            || ex
                .and_then(|e| e.min_kernel.as_deref())
                .is_some_and(|k| kernel >= parse_kernel(k))
            || inc
                .and_then(|i| i.arches.as_ref())
                .is_some_and(|a| !a.is_empty() && !a.iter().any(|x| x == arch))
            || inc
                .and_then(|i| i.caps.as_ref())
                .is_some_and(|c| !c.iter().all(has))
            || inc
                .and_then(|i| i.min_kernel.as_deref())
                .is_some_and(|k| kernel < parse_kernel(k))
        {
            continue;
        }
        let errno = match r.action.as_str() {
            "SCMP_ACT_ALLOW" => None,
            "SCMP_ACT_ERRNO" => Some(
                r.errno_ret
                    .or(profile.default_errno_ret)
                    .unwrap_or(libc::EPERM as u32),
            ),
            other => {
                return Err(profile_err(format!(
                    "action {other} of {:?} is not supported",
                    r.names
                )))
            }
        };
        let args = r.args.clone().unwrap_or_default();
        // Conditions on the same argument twice are alternatives (runc adds one rule each).
        let mut seen = BTreeSet::new();
        let groups: Vec<Vec<ArgRule>> = if args.iter().all(|a| seen.insert(a.index)) {
            vec![args]
        } else {
            args.into_iter().map(|a| vec![a]).collect()
        };
        for name in &r.names {
            for g in &groups {
                out.insert(EffectiveRule {
                    name: name.clone(),
                    errno,
                    args: g.clone(),
                });
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn profile() -> Result<Profile> {
    let p: Profile = serde_json::from_str(profile_json()?)
        .map_err(|e| profile_err(format!("cannot parse the profile: {e}")))?;
    if p.default_action != "SCMP_ACT_ERRNO" {
        return Err(profile_err(format!(
            "default action {} is not supported",
            p.default_action
        )));
    }
    Ok(p)
}

fn profile_err(reason: String) -> Error {
    Error::Sandbox {
        what: "docker's seccomp profile".into(),
        reason,
    }
}

fn parse_kernel(s: &str) -> (u32, u32) {
    let mut it = s.split(['.', '-']).map(|p| {
        p.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    });
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    nix::sys::utsname::uname()
        .map(|u| parse_kernel(&u.release().to_string_lossy()))
        .unwrap_or((0, 0))
}

/// This build's architecture as Go (and so the profile) names it, and as libseccomp does.
pub fn native_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "arm" => ("arm", "SCMP_ARCH_ARM"),
        "x86" => ("386", "SCMP_ARCH_X86"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
        "loongarch64" => ("loong64", "SCMP_ARCH_LOONGARCH64"),
        other => (other, "SCMP_ARCH_NATIVE"),
    }
}

/// A compiled filter: classic BPF instructions ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug)]
pub struct Bpf {
    prog: Vec<libc::sock_filter>,
    /// Profile syscall names this libseccomp does not know (left to the default action).
    pub unknown: Vec<String>,
}

impl Bpf {
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.prog
    }

    /// Installs the filter on the calling thread. Allocates nothing, so it may run after fork.
    /// Without `no_new_privs` (as docker loads it), which needs CAP_SYS_ADMIN at this point.
    pub fn install(&self) -> std::io::Result<()> {
        let fprog = libc::sock_fprog {
            len: self.prog.len() as libc::c_ushort,
            filter: self.prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at `self.prog`, which outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Docker's default profile for the default capabilities on this machine, compiled once.
pub fn docker_default() -> Result<&'static Bpf> {
    static BPF: OnceLock<std::result::Result<Bpf, String>> = OnceLock::new();
    BPF.get_or_init(|| compile(DOCKER_DEFAULT_CAPS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Sandbox {
            what: "compiling the seccomp filter".into(),
            reason: e.clone(),
        })
}

/// Compiles the profile for this machine and `caps`.
pub fn compile(caps: &[&str]) -> Result<Bpf> {
    let fail = |what: &str, e: libseccomp::error::SeccompError| {
        profile_err(format!(
            "{what}: {e} (libseccomp {}; is libseccomp2 installed?)",
            libseccomp::ScmpVersion::current()
                .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
                .unwrap_or_default()
        ))
    };
    let profile = profile()?;
    let (go_arch, scmp_arch) = native_arch();
    let rules = effective_rules(go_arch, caps, kernel_version())?;
    let default_errno = profile.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(default_errno as i32))
        .map_err(|e| fail("creating a filter", e))?;
    // Loaded by hand without no_new_privs, as runc does when the image does not ask for it.
    ctx.set_ctl_nnp(false)
        .map_err(|e| fail("clearing the no_new_privs attribute", e))?;
    if let Some(m) = profile
        .arch_map
        .iter()
        .find(|m| m.architecture == scmp_arch)
    {
        for sub in m.sub_architectures.iter().flatten() {
            if let Ok(a) = ScmpArch::from_str(sub) {
                // A sub-architecture this kernel or libseccomp lacks is skipped, as runc does.
                let _ = ctx.add_arch(a);
            }
        }
    }
    let mut unknown = BTreeSet::new();
    for r in &rules {
        let Ok(sc) = ScmpSyscall::from_name(&r.name) else {
            unknown.insert(r.name.clone());
            continue;
        };
        let action = match r.errno {
            None => ScmpAction::Allow,
            Some(e) => ScmpAction::Errno(e as i32),
        };
        let cmps: Vec<ScmpArgCompare> = r
            .args
            .iter()
            .map(|a| {
                let op = match a.op.as_str() {
                    "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
                    "SCMP_CMP_LT" => ScmpCompareOp::Less,
                    "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
                    "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                    "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
                    "SCMP_CMP_GT" => ScmpCompareOp::Greater,
                    "SCMP_CMP_MASKED_EQ" => {
                        return Ok(ScmpArgCompare::new(
                            a.index,
                            ScmpCompareOp::MaskedEqual(a.value),
                            a.value_two,
                        ))
                    }
                    other => {
                        return Err(profile_err(format!("comparison {other} is not supported")))
                    }
                };
                Ok(ScmpArgCompare::new(a.index, op, a.value))
            })
            .collect::<Result<_>>()?;
        let added = if cmps.is_empty() {
            ctx.add_rule(action, sc)
        } else {
            ctx.add_rule_conditional(action, sc, &cmps)
        };
        added.map_err(|e| fail(&format!("adding the rule for {}", r.name), e))?;
    }
    let mut f = tempfile::tempfile().map_err(|e| profile_err(format!("a temporary file: {e}")))?;
    ctx.export_bpf(&f)
        .map_err(|e| fail("exporting the filter", e))?;
    let mut bytes = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| profile_err(format!("reading the exported filter: {e}")))?;
    let body: Vec<libc::sock_filter> = bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = with_enosys_stub(&rules, &native_and_subs(&ctx, scmp_arch, &profile), body);
    if prog.len() <= 1 || prog.len() > u16::MAX as usize || bytes.len() % 8 != 0 {
        return Err(profile_err(format!(
            "libseccomp exported a filter of {} bytes",
            bytes.len()
        )));
    }
    Ok(Bpf {
        prog,
        unknown: unknown.into_iter().collect(),
    })
}

/// The architectures the filter covers, with their audit values.
fn native_and_subs(ctx: &ScmpFilterContext, native: &str, profile: &Profile) -> Vec<ScmpArch> {
    let mut names = vec![native.to_string()];
    if let Some(m) = profile.arch_map.iter().find(|m| m.architecture == native) {
        names.extend(m.sub_architectures.iter().flatten().cloned());
    }
    names
        .iter()
        .filter_map(|n| ScmpArch::from_str(n).ok())
        .filter(|a| ctx.is_arch_present(*a).unwrap_or(false))
        .collect()
}

fn audit_arch(a: ScmpArch) -> Option<u32> {
    Some(match a {
        ScmpArch::X8664 | ScmpArch::X32 => 0xc000_003e,
        ScmpArch::X86 => 0x4000_0003,
        ScmpArch::Aarch64 => 0xc000_00b7,
        ScmpArch::Arm => 0x4000_0028,
        ScmpArch::Riscv64 => 0xc000_00f3,
        ScmpArch::S390X => 0x8000_0016,
        ScmpArch::Ppc64Le => 0xc000_0015,
        _ => return None,
    })
}

/// runc's stub, which docker has: a system call newer than every one the profile names (as
/// this libseccomp knows them) fails with ENOSYS rather than the default EPERM, so programs
/// built for newer kernels fall back as they do on an older kernel. Prepended to `body`.
fn with_enosys_stub(
    rules: &[EffectiveRule],
    arches: &[ScmpArch],
    body: Vec<libc::sock_filter>,
) -> Vec<libc::sock_filter> {
    const X32_BIT: u32 = 0x4000_0000;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // (audit arch, highest known number); x32 shares x86_64's audit value and is left alone.
    let mut limits: Vec<(u32, u32)> = Vec::new();
    for a in arches.iter().filter(|a| **a != ScmpArch::X32) {
        let Some(audit) = audit_arch(*a) else {
            continue;
        };
        let max = rules
            .iter()
            .filter_map(|r| ScmpSyscall::from_name_by_arch(&r.name, *a).ok())
            .map(i32::from)
            .filter(|n| *n >= 0)
            .max();
        if let Some(m) = max {
            limits.push((audit, m as u32));
        }
    }
    // Per arch: ld arch; jeq A ? next : skip; ld nr; [jset X32 ? body]; jgt M ? enosys : body.
    let block = |x32: bool| if x32 { 5 } else { 4 };
    let blocks: Vec<usize> = limits
        .iter()
        .map(|(a, _)| block(*a == 0xc000_003e && arches.contains(&ScmpArch::X32)))
        .collect();
    let total: usize = blocks.iter().sum();
    // After the blocks: a jump over the ENOSYS return (no arch matched), the return, the body.
    let (enosys_at, body_at) = (total + 1, total + 2);
    let mut out = Vec::with_capacity(total + 2 + body.len());
    for ((audit, max), len) in limits.iter().zip(&blocks) {
        let here = out.len();
        let rel = |target: usize, at: usize| (target - at - 1) as u8;
        out.push(ins(0x20, 0, 0, 4)); // ld [arch]
        out.push(ins(0x15, 0, (len - 2) as u8, *audit)); // jeq audit
        out.push(ins(0x20, 0, 0, 0)); // ld [nr]
        if *len == 5 {
            let at = here + 3;
            out.push(ins(0x45, rel(body_at, at), 0, X32_BIT)); // jset x32 bit
        }
        let at = out.len();
        out.push(ins(0x25, rel(enosys_at, at), rel(body_at, at), *max)); // jgt max
    }
    out.push(ins(0x05, 0, 0, 1)); // ja body
    out.push(ins(0x06, 0, 0, 0x0005_0000 | libc::ENOSYS as u32)); // ret ERRNO(ENOSYS)
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_caps_keep_chroot_and_block_namespaces() {
        let rules = effective_rules("amd64", DOCKER_DEFAULT_CAPS, (6, 1)).unwrap();
        let allowed = |n: &str| rules.iter().any(|r| r.name == n && r.errno.is_none());
        assert!(allowed("chroot"), "CAP_SYS_CHROOT brings chroot");
        assert!(allowed("read") && allowed("arch_prctl"));
        for n in [
            "mount", "unshare", "setns", "keyctl", "add_key", "bpf", "umount2",
        ] {
            assert!(!rules.iter().any(|r| r.name == n), "{n} must not be listed");
        }
        let clone3 = rules.iter().find(|r| r.name == "clone3").unwrap();
        assert_eq!(clone3.errno, Some(libc::ENOSYS as u32));
        let clone: Vec<_> = rules.iter().filter(|r| r.name == "clone").collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].op, "SCMP_CMP_MASKED_EQ");
        // With CAP_SYS_ADMIN the picture changes, as in docker.
        let mut caps = DOCKER_DEFAULT_CAPS.to_vec();
        caps.push("CAP_SYS_ADMIN");
        let admin = effective_rules("amd64", &caps, (6, 1)).unwrap();
        assert!(admin.iter().any(|r| r.name == "mount" && r.errno.is_none()));
        assert!(!admin
            .iter()
            .any(|r| r.name == "clone3" && r.errno.is_some()));
    }

    #[test]
    fn compiles_for_this_machine() {
        let bpf = compile(DOCKER_DEFAULT_CAPS).unwrap();
        assert!(bpf.instructions().len() > 100);
    }
}
