//! Platforms: parse, normalize, detect the host, and match and rank candidates the way containerd
//! does, which is what docker users expect.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// An OCI platform as found in descriptors and image configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Platform {
    pub fn new(os: &str, arch: &str, variant: &str) -> Self {
        Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
            ..Default::default()
        }
        .normalized()
    }

    /// Parses `os[/arch[/variant]]`, `arch` alone (with the host's OS), `os(osversion+feature)/arch`
    /// and `local` (the host). The result is normalized.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidPlatform {
            input: s.to_string(),
            reason: why.to_string(),
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad(
                "empty platform; use os/arch[/variant], such as linux/arm64",
            ));
        }
        if t == "local" {
            return Ok(Platform::host());
        }
        let parts: Vec<&str> = t.split('/').collect();
        if parts.len() > 3 {
            return Err(bad("too many parts; use os/arch[/variant]"));
        }
        let (os_part, os_version, os_features) = split_os_options(parts[0]).map_err(|w| bad(&w))?;
        for p in &parts {
            if p.is_empty() {
                return Err(bad("empty part between slashes"));
            }
        }
        let mut p = Platform {
            os_version,
            os_features,
            ..Default::default()
        };
        let os_lc = os_part.to_ascii_lowercase();
        match parts.len() {
            1 => {
                // Either a known OS (arch of the host) or an architecture (OS of the host).
                if is_known_os(&os_lc) {
                    p.os = os_lc;
                    p.architecture = host_arch().to_string();
                } else if is_known_arch(&os_lc) {
                    p.os = host_os().to_string();
                    p.architecture = os_lc;
                } else {
                    return Err(bad("neither a known OS nor a known architecture"));
                }
            }
            2 => {
                p.os = os_lc;
                p.architecture = parts[1].to_ascii_lowercase();
            }
            _ => {
                p.os = os_lc;
                p.architecture = parts[1].to_ascii_lowercase();
                p.variant = parts[2].to_ascii_lowercase();
            }
        }
        if !p
            .os
            .bytes()
            .chain(p.architecture.bytes())
            .chain(p.variant.bytes())
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(bad(
                "only letters, digits, '_', '-' and '.' may appear in each part",
            ));
        }
        Ok(p.normalized())
    }

    /// containerd's normalization: x86_64→amd64, aarch64→arm64, armhf→arm/v7, armel→arm/v6,
    /// i386→386, arm64/v8→arm64, arm with no variant → arm/v7, macos→darwin.
    pub fn normalized(mut self) -> Self {
        self.os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".into(),
            o => o.into(),
        };
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.to_ascii_lowercase();
        let (arch, variant) = match arch.as_str() {
            "i386" | "i486" | "i586" | "i686" | "x86" => ("386".to_string(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                let v = if variant == "v1" {
                    String::new()
                } else {
                    variant
                };
                ("amd64".to_string(), v)
            }
            "aarch64" | "arm64" => {
                let v = if variant == "8" || variant == "v8" {
                    String::new()
                } else {
                    variant
                };
                ("arm64".to_string(), v)
            }
            "armhf" => ("arm".to_string(), "v7".to_string()),
            "armel" => ("arm".to_string(), "v6".to_string()),
            "arm" => {
                let v = match variant.as_str() {
                    "" | "7" => "v7".to_string(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                };
                ("arm".to_string(), v)
            }
            _ => (arch, variant),
        };
        self.architecture = arch;
        self.variant = variant;
        self
    }

    /// The platform of this machine, as images name it: `linux/amd64`, `linux/arm64`,
    /// `linux/arm/v7`… (the amd64 micro-architecture level is not part of it; see [`Matcher::host`]).
    pub fn host() -> Self {
        Platform::new(host_os(), host_arch(), &host_variant())
    }

    /// The `unknown/unknown` platform that attestation manifests carry.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }

    /// `os/arch[/variant]`, the form docker and buildx print and take in `--platform`.
    pub fn short(&self) -> String {
        let mut s = format!("{}/{}", self.os, self.architecture);
        if !self.variant.is_empty() {
            s.push('/');
            s.push_str(&self.variant);
        }
        s
    }

    /// The form used in directory and tag names: `linux_arm_v7`.
    pub fn slug(&self, sep: char) -> String {
        self.short().replace('/', &sep.to_string())
    }

    /// Same os, architecture and variant after normalization.
    pub fn same_target(&self, other: &Platform) -> bool {
        let a = self.clone().normalized();
        let b = other.clone().normalized();
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }
}

fn split_os_options(part: &str) -> Result<(&str, String, Vec<String>), String> {
    let Some(open) = part.find('(') else {
        return Ok((part, String::new(), Vec::new()));
    };
    let Some(inner) = part[open + 1..].strip_suffix(')') else {
        return Err(
            "an OS with options must end with ')', as in windows(10.0.17763+win32k)".into(),
        );
    };
    let mut it = inner.split('+');
    let version = it.next().unwrap_or_default().to_string();
    let features = it.filter(|f| !f.is_empty()).map(str::to_string).collect();
    Ok((&part[..open], version, features))
}

fn is_known_os(s: &str) -> bool {
    matches!(
        s,
        "linux"
            | "windows"
            | "darwin"
            | "freebsd"
            | "netbsd"
            | "openbsd"
            | "solaris"
            | "illumos"
            | "android"
            | "ios"
            | "aix"
            | "plan9"
            | "dragonfly"
            | "js"
            | "wasip1"
            | "macos"
    )
}

fn is_known_arch(s: &str) -> bool {
    matches!(
        s,
        "amd64"
            | "x86_64"
            | "386"
            | "i386"
            | "arm"
            | "armhf"
            | "armel"
            | "arm64"
            | "aarch64"
            | "riscv64"
            | "s390x"
            | "ppc64le"
            | "ppc64"
            | "mips64le"
            | "mips64"
            | "mipsle"
            | "mips"
            | "loong64"
            | "wasm"
    )
}

fn host_os() -> &'static str {
    std::env::consts::OS
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The arm variant of a 32-bit arm host, from /proc/cpuinfo's "CPU architecture" line.
fn host_variant() -> String {
    if host_arch() != "arm" {
        return String::new();
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for line in cpuinfo.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("CPU architecture") {
                return match v.trim() {
                    "8" | "AArch64" => "v8".into(),
                    "7" => "v7".into(),
                    "6" => "v6".into(),
                    "5" | "5T" | "5TE" | "5TEJ" => "v5".into(),
                    _ => "v7".into(),
                };
            }
        }
    }
    "v7".into()
}

/// The x86-64 micro-architecture level (1..=4) this CPU supports, from cpuid.
pub fn host_amd64_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v2 = has!("sse3")
            && has!("ssse3")
            && has!("sse4.1")
            && has!("sse4.2")
            && has!("popcnt")
            && has!("cmpxchg16b");
        let v3 = v2
            && has!("avx")
            && has!("avx2")
            && has!("bmi1")
            && has!("bmi2")
            && has!("f16c")
            && has!("fma")
            && has!("lzcnt")
            && has!("movbe");
        let v4 = v3
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl");
        if v4 {
            4
        } else if v3 {
            3
        } else if v2 {
            2
        } else {
            1
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.os)?;
        if !self.os_version.is_empty() || !self.os_features.is_empty() {
            write!(f, "({}", self.os_version)?;
            for feat in &self.os_features {
                write!(f, "+{feat}")?;
            }
            f.write_str(")")?;
        }
        write!(f, "/{}", self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Platform::parse(s)
    }
}

/// Decides which platforms can stand in for a wanted one, and ranks them (lower is better).
#[derive(Clone, Debug)]
pub struct Matcher {
    wanted: Platform,
    /// For amd64: the highest micro-architecture level that may run (1..=4).
    amd64_level: u8,
    strict: bool,
}

impl Matcher {
    /// Matches what can run where `wanted` runs: `amd64/v3` takes v3, v2, v1, then 386;
    /// `arm/v7` takes v7, v6, v5; `arm64` takes arm64, then arm/v8..v5.
    pub fn new(wanted: &Platform) -> Self {
        let wanted = wanted.clone().normalized();
        let amd64_level = amd64_level_of(&wanted.variant).unwrap_or(1);
        Matcher {
            wanted,
            amd64_level,
            strict: false,
        }
    }

    /// The host's matcher: like `new(Platform::host())`, but an amd64 host also runs the
    /// micro-architecture levels its CPU has.
    pub fn host() -> Self {
        let mut m = Matcher::new(&Platform::host());
        if m.wanted.architecture == "amd64" {
            m.amd64_level = host_amd64_level().max(1);
        }
        m
    }

    /// Only the exact platform (after normalization) matches; no fallbacks.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    pub fn wanted(&self) -> &Platform {
        &self.wanted
    }

    /// The candidate's rank, lower is better; `None` when it cannot stand in for the wanted one.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        let c = candidate.clone().normalized();
        let w = &self.wanted;
        if c.is_unknown() || c.os != w.os {
            return None;
        }
        if !w.os_version.is_empty() && !c.os_version.is_empty() && !os_version_compatible(w, &c) {
            return None;
        }
        if self.strict {
            return (c.architecture == w.architecture && c.variant == w.variant).then_some(0);
        }
        match w.architecture.as_str() {
            "amd64" => {
                if c.architecture == "amd64" {
                    let lvl = amd64_level_of(&c.variant)?;
                    (lvl <= self.amd64_level).then(|| (self.amd64_level - lvl) as usize)
                } else if c.architecture == "386" {
                    Some(self.amd64_level as usize)
                } else {
                    None
                }
            }
            "arm64" => {
                if c.architecture == "arm64" {
                    (c.variant == w.variant || c.variant.is_empty()).then_some(0)
                } else if c.architecture == "arm" {
                    let v = arm_version(&c.variant)?;
                    (v <= 8).then(|| 1 + (8 - v) as usize)
                } else {
                    None
                }
            }
            "arm" => {
                if c.architecture != "arm" {
                    return None;
                }
                let want = arm_version(&w.variant)?;
                let v = arm_version(&c.variant)?;
                (v <= want).then(|| (want - v) as usize)
            }
            _ => (c.architecture == w.architecture && c.variant == w.variant).then_some(0),
        }
    }

    pub fn matches(&self, candidate: &Platform) -> bool {
        self.rank(candidate).is_some()
    }

    /// The index of the best-ranked candidate (the first among equals).
    pub fn best<'a, I>(&self, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a Platform>,
    {
        candidates
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| self.rank(p).map(|r| (r, i)))
            .min()
            .map(|(_, i)| i)
    }
}

fn amd64_level_of(variant: &str) -> Option<u8> {
    match variant {
        "" | "v1" => Some(1),
        "v2" => Some(2),
        "v3" => Some(3),
        "v4" => Some(4),
        _ => None,
    }
}

fn arm_version(variant: &str) -> Option<u8> {
    match variant {
        "v5" => Some(5),
        "v6" => Some(6),
        "v7" | "" => Some(7),
        "v8" => Some(8),
        _ => None,
    }
}

/// Windows images run only on a host of the same major.minor.build.
fn os_version_compatible(w: &Platform, c: &Platform) -> bool {
    let prefix = |v: &str| v.split('.').take(3).collect::<Vec<_>>().join(".");
    w.os != "windows" || prefix(&w.os_version) == prefix(&c.os_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn normalizes_every_alias() {
        for (input, want) in [
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v5", "linux/arm/v5"),
            ("linux/i386", "linux/386"),
            ("linux/i686", "linux/386"),
            ("Linux/AMD64", "linux/amd64"),
            ("macos/arm64", "darwin/arm64"),
            ("linux/riscv64", "linux/riscv64"),
        ] {
            assert_eq!(p(input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn parses_os_options_and_short_forms() {
        let w = p("windows(10.0.17763+win32k)/amd64");
        assert_eq!(w.os, "windows");
        assert_eq!(w.os_version, "10.0.17763");
        assert_eq!(w.os_features, vec!["win32k"]);
        assert_eq!(w.to_string(), "windows(10.0.17763+win32k)/amd64");
        assert_eq!(w.short(), "windows/amd64");

        let host = Platform::host();
        assert_eq!(p("local"), host);
        assert_eq!(p("linux").architecture, host.architecture);
        assert_eq!(p("arm64").os, std::env::consts::OS);
        assert_eq!(p("arm64").architecture, "arm64");
        assert_eq!(p("linux/arm/v7").slug('_'), "linux_arm_v7");
    }

    #[test]
    fn rejects_malformed() {
        for (input, want) in [
            ("", "empty platform"),
            ("linux/amd64/v3/x", "too many parts"),
            ("linux//v7", "empty part"),
            ("windows(10.0/amd64", "must end with ')'"),
            ("plan10", "neither a known OS"),
            ("linux/am d64", "only letters"),
        ] {
            let err = Platform::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn serde_uses_oci_field_names() {
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1","os.features":["win32k"]}"#;
        let w: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(w.os_version, "10.0.17763.1");
        assert_eq!(serde_json::to_string(&w).unwrap(), json);
        let l: Platform =
            serde_json::from_str(r#"{"architecture":"arm","os":"linux","variant":"v7"}"#).unwrap();
        assert_eq!(l.to_string(), "linux/arm/v7");
    }

    /// Every rule on the design page: (wanted, candidate, matches?).
    #[test]
    fn match_table() {
        let table = [
            ("linux/amd64/v3", "linux/amd64/v3", true),
            ("linux/amd64/v3", "linux/amd64/v2", true),
            ("linux/amd64/v3", "linux/amd64", true),
            ("linux/amd64/v3", "linux/386", true),
            ("linux/amd64/v3", "linux/amd64/v4", false),
            ("linux/amd64", "linux/amd64/v2", false),
            ("linux/amd64", "linux/386", true),
            ("linux/386", "linux/amd64", false),
            ("linux/arm/v7", "linux/arm/v7", true),
            ("linux/arm/v7", "linux/arm/v6", true),
            ("linux/arm/v7", "linux/arm/v5", true),
            ("linux/arm/v7", "linux/arm/v8", false),
            ("linux/arm/v6", "linux/arm/v7", false),
            ("linux/arm64", "linux/arm64", true),
            ("linux/arm64", "linux/arm64/v8", true),
            ("linux/arm64", "linux/arm/v8", true),
            ("linux/arm64", "linux/arm/v7", true),
            ("linux/arm64", "linux/arm/v5", true),
            ("linux/arm64", "linux/amd64", false),
            ("linux/amd64", "linux/arm64", false),
            ("linux/amd64", "windows/amd64", false),
            ("linux/amd64", "unknown/unknown", false),
            ("linux/riscv64", "linux/riscv64", true),
            ("linux/s390x", "linux/riscv64", false),
            (
                "windows(10.0.17763)/amd64",
                "windows(10.0.17763.5830)/amd64",
                true,
            ),
            (
                "windows(10.0.17763)/amd64",
                "windows(10.0.20348.1)/amd64",
                false,
            ),
        ];
        for (wanted, cand, want) in table {
            let got = Matcher::new(&p(wanted)).matches(&p(cand));
            assert_eq!(got, want, "{wanted} runs {cand}?");
        }
        let unknown = Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            ..Default::default()
        };
        assert!(!Matcher::new(&p("linux/amd64")).matches(&unknown));
    }

    #[test]
    fn ranks_best_not_first() {
        let cands: Vec<Platform> = ["linux/386", "linux/amd64", "linux/amd64/v2", "linux/arm64"]
            .iter()
            .map(|s| p(s))
            .collect();
        assert_eq!(Matcher::new(&p("linux/amd64/v3")).best(&cands), Some(2));
        assert_eq!(Matcher::new(&p("linux/amd64")).best(&cands), Some(1));
        assert_eq!(Matcher::new(&p("linux/arm64")).best(&cands), Some(3));
        let arm: Vec<Platform> = ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"]
            .iter()
            .map(|s| p(s))
            .collect();
        assert_eq!(Matcher::new(&p("linux/arm/v7")).best(&arm), Some(2));
        assert_eq!(Matcher::new(&p("linux/arm/v6")).best(&arm), Some(1));
        assert_eq!(Matcher::new(&p("linux/arm64")).best(&arm), Some(2));
        assert_eq!(Matcher::new(&p("linux/s390x")).best(&arm), None);
    }

    #[test]
    fn strict_mode_takes_only_exact() {
        let m = Matcher::new(&p("linux/arm/v7")).strict();
        assert!(m.matches(&p("linux/arm")));
        assert!(!m.matches(&p("linux/arm/v6")));
        let m = Matcher::new(&p("linux/amd64")).strict();
        assert!(!m.matches(&p("linux/386")));
        assert!(m.matches(&p("linux/x86_64")));
    }

    #[test]
    fn host_is_detected() {
        let h = Platform::host();
        assert_eq!(h.os, std::env::consts::OS);
        assert!(!h.architecture.is_empty());
        assert!(Matcher::host().matches(&h));
        #[cfg(target_arch = "x86_64")]
        {
            let lvl = host_amd64_level();
            assert!((1..=4).contains(&lvl));
            let own = p(&format!("linux/amd64/v{lvl}"));
            assert!(Matcher::host().matches(&own));
            assert!(!Matcher::host().matches(&p("linux/amd64/v5")));
        }
    }
}
