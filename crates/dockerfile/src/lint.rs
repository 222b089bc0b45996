//! BuildKit's build checks (same rule names, messages and doc links, so `# check=skip=...` lists
//! and docs carry over from docker), plus a few for multi-platform builds that BuildKit lacks
//! (documented in `docs/checks/`). [`check`] is `--check`: the findings, the plan's warnings,
//! and the error that stops the build, if any (findings found before it are still reported).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use oci::{Platform, Reference};
use serde::Serialize;

use crate::ast::{Command, Dockerfile, Instruction, Kind, Source};
use crate::error::{nearest, Error, Pos};
use crate::expand::{expand_word, referenced_names};
use crate::plan::{validate, PlanOptions};

/// One lint finding, located in the Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub url: String,
}

/// Looks up which platform a base image has: the caller's window on its local store or on a
/// registry (`--check --pull`). The frontend itself knows no store.
pub trait BasePlatforms {
    /// The platform of the image that `reference` (as planned, e.g.
    /// `docker.io/library/alpine:3.19`) resolves to when `wanted` is asked for; `None` when
    /// unknown (not in the store, not pulled).
    fn platform_of(&self, reference: &str, wanted: &Platform) -> Option<Platform>;
}

/// What a check knows beyond the Dockerfile.
#[derive(Default)]
pub struct CheckOptions<'a> {
    /// Target, platforms, build args (`BUILDKIT_DOCKERFILE_CHECK` among them) and known base
    /// image configs (their ENV feeds UndefinedVar).
    pub plan: PlanOptions,
    /// The context's `.dockerignore`, for CopyIgnoredFile.
    pub dockerignore: Option<String>,
    /// For InvalidBaseImagePlatform; without it that check is skipped.
    pub base_platforms: Option<&'a dyn BasePlatforms>,
}

/// The result of `--check`.
#[derive(Debug)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// The plan's warnings (unused build args).
    pub warnings: Vec<String>,
    /// The error that stops the build. Findings are complete even when it is set.
    pub error: Option<Error>,
    /// `# check=error=true` (or `--build-arg BUILDKIT_DOCKERFILE_CHECK=error=true`).
    pub error_on_findings: bool,
    /// A `check=` setting that could not be parsed (BuildKit fails the build on it).
    pub config_error: Option<String>,
}

impl CheckReport {
    /// BuildKit's error for `check=error=true` with findings: the build must fail with it.
    pub fn lint_error(&self) -> Option<String> {
        if !self.error_on_findings || self.findings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = self.findings.iter().map(|f| f.rule).collect();
        Some(format!(
            "lint violation found for rules: {}",
            rules.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Rules beyond BuildKit's: their docs live in this repository.
const OWN_RULES: [&str; 3] = [
    "CompileUnderEmulation",
    "ArchSpecificBase",
    "AddRemoteWithoutChecksum",
];

/// Rules BuildKit runs only when asked (`# check=experimental=...`).
const EXPERIMENTAL: [&str; 1] = ["InvalidDefinitionDescription"];

fn kebab(rule: &str) -> String {
    let mut kebab = String::new();
    for (i, c) in rule.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kebab.push('-');
        }
        kebab.push(c.to_ascii_lowercase());
    }
    // BuildKit spells these two as one word in their URLs.
    kebab.replace("j-s-o-n", "json")
}

fn url(rule: &str) -> String {
    if rule == "InvalidBaseImagePlatform" {
        // BuildKit's rule has no documentation page.
        return String::new();
    }
    if OWN_RULES.contains(&rule) {
        return format!("docs/checks/{}.md", kebab(rule));
    }
    format!(
        "https://docs.docker.com/go/dockerfile/rule/{}/",
        kebab(rule)
    )
}

/// A `check=` setting: BuildKit's ParseLintOptions.
#[derive(Clone, Debug, Default)]
struct Config {
    skip_all: bool,
    skip: HashSet<String>,
    experimental_all: bool,
    experimental: HashSet<String>,
    error: bool,
}

impl Config {
    fn parse(s: &str) -> Result<Config, String> {
        let s = s.trim();
        let mut c = Config::default();
        if s.is_empty() {
            return Ok(c);
        }
        for part in s.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let v = v.trim();
            let list = || v.split(',').map(|r| r.trim().to_string());
            match k.trim() {
                "skip" if v == "all" => c.skip_all = true,
                "skip" => c.skip.extend(list()),
                "experimental" if v == "all" => c.experimental_all = true,
                "experimental" => c.experimental.extend(list()),
                "error" => {
                    c.error = parse_go_bool(v).ok_or_else(|| {
                        format!("failed to parse check option {part:?}: invalid syntax")
                    })?
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(c)
    }

    fn merged(&self, other: &Config) -> Config {
        let mut c = self.clone();
        c.skip_all |= other.skip_all;
        c.experimental_all |= other.experimental_all;
        c.skip.extend(other.skip.iter().cloned());
        c.experimental.extend(other.experimental.iter().cloned());
        c
    }

    fn allows(&self, rule: &str) -> bool {
        if EXPERIMENTAL.contains(&rule) {
            return self.experimental_all || self.experimental.contains(rule);
        }
        !self.skip_all && !self.skip.contains(rule)
    }

    /// With the first `check=` among an instruction's comments, as BuildKit merges them.
    fn for_comments(&self, comments: &[String]) -> Option<Config> {
        for c in comments {
            let Some((k, v)) = c.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if !k.eq_ignore_ascii_case("check") {
                continue;
            }
            let v = v.trim().split(' ').next().unwrap_or_default();
            return Config::parse(v).ok().map(|o| self.merged(&o));
        }
        None
    }
}

fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

struct Linter<'a> {
    file: &'a str,
    config: Config,
    out: Vec<Finding>,
}

impl Linter<'_> {
    fn report(&mut self, ins: Option<&Instruction>, rule: &'static str, msg: String, pos: Pos) {
        let local = ins
            .filter(|i| !i.comments.is_empty())
            .and_then(|i| self.config.for_comments(&i.comments));
        if !local.as_ref().unwrap_or(&self.config).allows(rule) {
            return;
        }
        self.out.push(Finding {
            rule,
            message: msg,
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            url: url(rule),
        });
    }
}

/// The file's `check=` config: the directive, overridden by the BUILDKIT_DOCKERFILE_CHECK
/// build arg when given.
fn config_of(df: &Dockerfile, opts: &PlanOptions) -> Result<Config, String> {
    match opts.build_args.get("BUILDKIT_DOCKERFILE_CHECK") {
        Some(v) => Config::parse(v),
        None => Config::parse(df.directives.check.as_deref().unwrap_or("")),
    }
}

/// Runs every check that needs nothing but the Dockerfile (the host as the only platform, no
/// `.dockerignore`, no base image lookups) and returns findings in file order.
pub fn lint(df: &Dockerfile) -> Vec<Finding> {
    let opts = CheckOptions::default();
    let config = config_of(df, &opts.plan).unwrap_or_default();
    findings(df, &opts, config)
}

/// `--check`: every check, then everything planning checks. BuildKit prints the warnings it
/// found before an error too, so findings are complete even when `error` is set.
pub fn check(df: &Dockerfile, opts: &CheckOptions<'_>) -> CheckReport {
    let (config, config_error) = match config_of(df, &opts.plan) {
        Ok(c) => (c, None),
        Err(e) => (Config::default(), Some(e)),
    };
    let error_on_findings = config.error;
    let findings = findings(df, opts, config);
    let (warnings, error) = match validate(df, &opts.plan) {
        Ok(w) => (w, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    CheckReport {
        findings,
        warnings,
        error,
        error_on_findings,
        config_error,
    }
}

/// What the checks know about a stage; stages built `FROM` it inherit it.
#[derive(Clone, Default)]
struct StageInfo {
    /// ENV and ARG values in scope.
    env: BTreeMap<String, String>,
    /// ARG names declared in the stage (never undefined, even without a value).
    declared: HashSet<String>,
    /// The base's ENV is known (scratch, a known image config, or a stage rooted in one):
    /// only then can a variable be called undefined.
    known: bool,
    workdir_set: bool,
    custom_shell: bool,
    /// `FROM --platform=$BUILDPLATFORM`: its RUN steps run natively.
    on_build_platform: bool,
    /// The platform this stage is for when given as a constant.
    platform: Option<Platform>,
}

fn auto_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        m.insert(format!("{prefix}PLATFORM"), p.short());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(format!("{prefix}VARIANT"), p.variant.clone());
    }
    m
}

/// Expands `word` in `env`; returns the value (empty on error) and the names not found.
fn expand_in(word: &str, env: &BTreeMap<String, String>, esc: char) -> (String, Vec<String>) {
    let missing = std::cell::RefCell::new(BTreeSet::new());
    let lookup = |n: &str| -> Option<String> {
        let v = env.get(n).cloned();
        if v.is_none() {
            missing.borrow_mut().insert(n.to_string());
        }
        v
    };
    let value = expand_word(word, &lookup, esc).unwrap_or_default();
    (value, missing.into_inner().into_iter().collect())
}

/// BuildKit's secret-name test: a `_`-separated part of the name is a secret word, and none
/// is an allowed one.
fn looks_secret(key: &str) -> bool {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let lower = key.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('_').collect();
    parts.iter().any(|p| DENY.contains(p)) && !parts.iter().any(|p| ALLOW.contains(p))
}

/// Image namespaces on Docker Hub that hold one architecture's builds.
const ARCH_NAMESPACES: [(&str, &str); 11] = [
    ("amd64", "linux/amd64"),
    ("arm32v5", "linux/arm/v5"),
    ("arm32v6", "linux/arm/v6"),
    ("arm32v7", "linux/arm/v7"),
    ("arm64v8", "linux/arm64"),
    ("i386", "linux/386"),
    ("mips64le", "linux/mips64le"),
    ("ppc64le", "linux/ppc64le"),
    ("riscv64", "linux/riscv64"),
    ("s390x", "linux/s390x"),
    ("winamd64", "windows/amd64"),
];

/// The single-architecture namespace of an image reference, and the image without it.
fn arch_namespace(image: &str) -> Option<(&'static str, &'static str, String)> {
    let rest = image.strip_prefix("docker.io/").unwrap_or(image);
    let (ns, name) = rest.split_once('/')?;
    let (ns_name, platform) = ARCH_NAMESPACES.iter().find(|(n, _)| *n == ns)?;
    Some((ns_name, platform, name.to_string()))
}

/// A RUN that compiles: the tool's name, if one is found.
fn compiler_in(text: &str) -> Option<String> {
    const SINGLE: [&str; 14] = [
        "gcc",
        "g++",
        "cc",
        "c++",
        "clang",
        "clang++",
        "make",
        "cmake",
        "ninja",
        "rustc",
        "javac",
        "mvn",
        "gradle",
        "./gradlew",
    ];
    const PAIRS: [(&str, &[&str]); 6] = [
        ("go", &["build", "install", "test"]),
        ("cargo", &["build", "install", "test"]),
        ("npm", &["ci", "install", "rebuild"]),
        ("yarn", &["install"]),
        ("pnpm", &["install"]),
        ("dotnet", &["build", "publish"]),
    ];
    // Words at the start of a command (after ; && || | ( and line starts).
    for line in text.lines() {
        let mut at_start = true;
        let mut prev_cmd: Option<&str> = None;
        for w in line.split_whitespace() {
            if w == "\\" {
                continue;
            }
            if matches!(w, "&&" | "||" | ";" | "|" | "(" | "then" | "do" | "else") {
                at_start = true;
                prev_cmd = None;
                continue;
            }
            let trimmed = w.trim_matches(|c| matches!(c, ';' | '(' | ')' | '"' | '\''));
            if let Some(p) = prev_cmd.take() {
                if let Some((_, subs)) = PAIRS.iter().find(|(c, _)| *c == p) {
                    if subs.contains(&trimmed) {
                        return Some(format!("{p} {trimmed}"));
                    }
                }
            }
            if at_start {
                let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
                if SINGLE.contains(&trimmed) || SINGLE.contains(&base) {
                    return Some(base.to_string());
                }
                prev_cmd = PAIRS.iter().find(|(c, _)| *c == base).map(|(c, _)| *c);
                // Prefixes such as `sudo`, `env X=y` or `CGO_ENABLED=0` keep a command start.
                at_start = trimmed.contains('=') || matches!(trimmed, "sudo" | "env" | "time");
            }
            if w.ends_with(';') {
                at_start = true;
            }
        }
    }
    None
}

fn is_windows_abs(p: &str) -> bool {
    let b = p.as_bytes();
    (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
        || p.starts_with("\\\\")
}

fn findings(df: &Dockerfile, opts: &CheckOptions<'_>, config: Config) -> Vec<Finding> {
    let mut l = Linter {
        file: &df.file,
        config,
        out: Vec::new(),
    };
    let esc = df.directives.escape;
    let popts = &opts.plan;
    let build = &popts.build_platform;
    let target = popts
        .platforms
        .first()
        .cloned()
        .unwrap_or_else(|| build.clone());
    let auto = auto_args(&target, build);
    let ignore = opts.dockerignore.as_deref().map(Ignore::new);
    let multi = popts.platforms.len() > 1;
    let emulated: Vec<&Platform> = popts
        .platforms
        .iter()
        .filter(|p| p.os != build.os || p.architecture != build.architecture)
        .collect();

    // Global ARGs as FROM sees them (build args win), and with defaults only.
    let mut meta = auto.clone();
    let mut meta_defaults = auto.clone();
    let mut globals: BTreeSet<String> = PLATFORM_ARGS.iter().map(|s| s.to_string()).collect();
    let mut global_list: Vec<String> = Vec::new();

    // ConsistentInstructionCasing: the majority over stage instructions.
    let (mut lower, mut upper) = (0usize, 0usize);
    let mut in_stage = false;
    for ins in &df.instructions {
        in_stage |= matches!(ins.kind, Kind::From(_));
        if in_stage {
            if ins.keyword == ins.keyword.to_ascii_lowercase() {
                lower += 1;
            } else if ins.keyword == ins.keyword.to_ascii_uppercase() {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    let stage_count = df
        .instructions
        .iter()
        .filter(|i| matches!(i.kind, Kind::From(_)))
        .count();
    let target_stage = match &popts.target {
        Some(t) => {
            let t = t.to_ascii_lowercase();
            let mut idx = None;
            let mut n = 0;
            for ins in &df.instructions {
                if let Kind::From(f) = &ins.kind {
                    if f.name
                        .as_ref()
                        .is_some_and(|x| x.raw.to_ascii_lowercase() == t)
                    {
                        idx = Some(n);
                    }
                    n += 1;
                }
            }
            idx
        }
        None => stage_count.checked_sub(1),
    };

    let mut stages: Vec<StageInfo> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut cur = StageInfo::default();
    let mut seen_once: Vec<(&'static str, Pos)> = Vec::new();
    let mut seen_from = false;

    for ins in &df.instructions {
        let pos = ins.pos;
        let here = Some(ins);
        if !seen_from {
            if let Kind::Arg { args } = &ins.kind {
                description(
                    &mut l,
                    ins,
                    "ARG",
                    args.iter().map(|a| a.name.clone()).collect(),
                );
                for a in args {
                    globals.insert(a.name.clone());
                    global_list.push(a.name.clone());
                    let d = a
                        .default
                        .as_deref()
                        .map(|d| expand_in(d, &meta_defaults, esc).0);
                    if let Some(d) = &d {
                        meta_defaults.insert(a.name.clone(), d.clone());
                    }
                    let v = match popts.build_args.get(&a.name) {
                        Some(v) => Some(v.clone()),
                        None => a.default.as_deref().map(|d| expand_in(d, &meta, esc).0),
                    };
                    if let Some(v) = v {
                        meta.insert(a.name.clone(), v);
                    }
                }
                continue;
            }
        }
        if !matches!(ins.kind, Kind::From(_)) {
            casing(&mut l, ins, majority_lower);
        }
        match &ins.kind {
            Kind::From(f) => {
                seen_from = true;
                // Close the previous stage: later stages may build FROM it.
                if let Some(last) = stages.last_mut() {
                    *last = std::mem::take(&mut cur);
                }
                let index = stages.len();
                casing(&mut l, ins, majority_lower);
                if let Some(n) = &f.name {
                    description(&mut l, ins, "FROM", vec![n.raw.to_ascii_lowercase()]);
                }
                // UndefinedArgInFrom.
                let mut words = vec![&f.image];
                words.extend(f.platform.iter());
                for w in words {
                    for name in referenced_names(&w.raw, esc) {
                        if globals.contains(&name) {
                            continue;
                        }
                        let cands: Vec<&str> = global_list.iter().map(String::as_str).collect();
                        let hint = nearest(&name, &cands)
                            .map(|n| format!(" (did you mean {n}?)"))
                            .unwrap_or_default();
                        l.report(
                            here,
                            "UndefinedArgInFrom",
                            format!("FROM argument '{name}' is not declared{hint}"),
                            w.pos,
                        );
                    }
                }
                // InvalidDefaultArgInFrom: with defaults only, the base must be a reference.
                let (with_defaults, _) = expand_in(&f.image.raw, &meta_defaults, esc);
                let stage_ref = by_name.contains_key(&with_defaults);
                if !stage_ref
                    && f.image.raw.contains('$')
                    && (with_defaults.is_empty()
                        || (!with_defaults.eq_ignore_ascii_case("scratch")
                            && Reference::parse(&with_defaults).is_err()))
                {
                    l.report(
                        here,
                        "InvalidDefaultArgInFrom",
                        format!(
                            "Default value for ARG {} results in empty or invalid base image name",
                            f.image.raw
                        ),
                        pos,
                    );
                }
                let (image, _) = expand_in(&f.image.raw, &meta, esc);
                let platform_value = f.platform.as_ref().map(|p| expand_in(&p.raw, &meta, esc).0);
                let lower_name = f
                    .name
                    .as_ref()
                    .map(|n| n.raw.to_ascii_lowercase())
                    .unwrap_or_default();
                if let Some(p) = &f.platform {
                    // As BuildKit: a constant is fine when the stage name contains its OS or
                    // architecture (`build_amd64`); an unparsable value fails later anyway.
                    let constant = (!p.raw.contains('$'))
                        .then(|| Platform::parse(&p.raw).ok())
                        .flatten();
                    let flagged = constant.as_ref().is_some_and(|c| {
                        !lower_name.contains(&c.os) && !lower_name.contains(&c.architecture)
                    });
                    if flagged {
                        l.report(
                            here,
                            "FromPlatformFlagConstDisallowed",
                            format!(
                                "FROM --platform flag should not use constant value {:?}",
                                p.raw
                            ),
                            p.pos,
                        );
                    }
                    if p.raw == "$TARGETPLATFORM" || p.raw == "${TARGETPLATFORM}" {
                        l.report(
                            here,
                            "RedundantTargetPlatform",
                            format!(
                                "Setting platform to predefined {} in FROM is redundant as this is the default behavior",
                                p.raw
                            ),
                            p.pos,
                        );
                    }
                    if multi && constant.is_some() && target_stage == Some(index) {
                        l.report(
                            here,
                            "ArchSpecificBase",
                            format!(
                                "FROM --platform={} pins the target stage to one platform: every platform of this multi-platform build gets its content",
                                p.raw
                            ),
                            p.pos,
                        );
                    }
                }
                if let Some(n) = &f.name {
                    if n.raw != n.raw.to_ascii_lowercase() {
                        l.report(
                            here,
                            "StageNameCasing",
                            format!("Stage name '{}' should be lowercase", n.raw),
                            n.pos,
                        );
                    }
                    if let (Some(kw), true) = (&f.as_keyword, true) {
                        let from_lower = ins.keyword == ins.keyword.to_ascii_lowercase();
                        let from_upper = ins.keyword == ins.keyword.to_ascii_uppercase();
                        let ok = if from_lower {
                            *kw == kw.to_ascii_lowercase()
                        } else if from_upper {
                            *kw == kw.to_ascii_uppercase()
                        } else {
                            true
                        };
                        if !ok {
                            l.report(
                                here,
                                "FromAsCasing",
                                format!(
                                    "'{kw}' and '{}' keywords' casing do not match",
                                    ins.keyword
                                ),
                                pos,
                            );
                        }
                    }
                    if lower_name == "context" || lower_name == "scratch" {
                        l.report(
                            here,
                            "ReservedStageName",
                            format!(
                                "Stage name should not use the same name as reserved stage {lower_name:?}"
                            ),
                            n.pos,
                        );
                    }
                    if by_name.contains_key(&lower_name) {
                        l.report(
                            here,
                            "DuplicateStageName",
                            format!(
                                "Duplicate stage name {lower_name:?}, stage names should be unique"
                            ),
                            n.pos,
                        );
                    }
                }
                // The new stage's state: inherited from a stage, or from the base image.
                let explicit = platform_value
                    .as_deref()
                    .and_then(|v| Platform::parse(v).ok());
                let on_build_platform = f.platform.as_ref().is_some_and(|p| {
                    p.raw.contains("BUILDPLATFORM") || p.raw.contains("BUILDARCH")
                });
                let mut next = match by_name.get(&image).and_then(|&i| stages.get(i)) {
                    Some(parent) => {
                        let mut s = parent.clone();
                        s.declared.clear();
                        s
                    }
                    None => {
                        let platform = explicit.clone().unwrap_or_else(|| target.clone());
                        let mut s = StageInfo::default();
                        if image.eq_ignore_ascii_case("scratch") {
                            s.known = true;
                        } else if let Ok(r) = Reference::parse(&image) {
                            let reference = r.to_string();
                            if let Some(c) = popts
                                .base_configs
                                .get(&(reference.clone(), platform.short()))
                            {
                                s.known = true;
                                s.env = c.env.clone();
                                s.workdir_set =
                                    c.working_dir.as_deref().is_some_and(|w| !w.is_empty());
                                s.custom_shell = !c.shell.is_empty();
                            }
                            if let Some(bp) = opts.base_platforms {
                                let wanted = platform.clone();
                                if let Some(actual) = bp.platform_of(&reference, &wanted) {
                                    if actual.os != wanted.os
                                        || actual.architecture != wanted.architecture
                                    {
                                        l.report(
                                            here,
                                            "InvalidBaseImagePlatform",
                                            format!(
                                                "Base image {image} was pulled with platform {:?}, expected {:?} for current build",
                                                actual.short(),
                                                wanted.short()
                                            ),
                                            pos,
                                        );
                                    }
                                }
                            }
                            if multi && f.platform.is_none() {
                                if let Some((ns, plat, rest)) = arch_namespace(&image) {
                                    l.report(
                                        here,
                                        "ArchSpecificBase",
                                        format!(
                                            "FROM {image} is an image for {plat} only ({ns}/): in a multi-platform build every platform gets it; use the multi-platform image {rest}"
                                        ),
                                        f.image.pos,
                                    );
                                }
                            }
                        }
                        s
                    }
                };
                // PATH is always set (BuildKit adds a default when the image has none).
                next.env.entry("PATH".into()).or_insert_with(|| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                });
                if f.platform.is_some() {
                    next.on_build_platform = on_build_platform;
                    next.platform = explicit;
                }
                cur = next;
                seen_once.clear();
                stages.push(StageInfo::default());
                if !lower_name.is_empty() {
                    by_name.insert(lower_name, index);
                }
            }
            Kind::Arg { args } => {
                description(
                    &mut l,
                    ins,
                    "ARG",
                    args.iter().map(|a| a.name.clone()).collect(),
                );
                for a in args {
                    if looks_secret(&a.name) {
                        l.report(
                            here,
                            "SecretsUsedInArgOrEnv",
                            format!(
                                "Do not use ARG or ENV instructions for sensitive data (ARG {:?})",
                                a.name
                            ),
                            pos,
                        );
                    }
                    let value = match popts.build_args.get(&a.name) {
                        Some(v) => Some(v.clone()),
                        None => match &a.default {
                            Some(d) => {
                                let v = undefined(&mut l, ins, &cur, d, esc);
                                Some(v)
                            }
                            None => auto.get(&a.name).cloned().or_else(|| {
                                globals
                                    .contains(&a.name)
                                    .then(|| meta.get(&a.name).cloned())
                                    .flatten()
                            }),
                        },
                    };
                    cur.declared.insert(a.name.clone());
                    if let Some(v) = value {
                        cur.env.insert(a.name.clone(), v);
                    }
                }
            }
            Kind::Env { vars } => {
                let mut out = Vec::new();
                for kv in vars {
                    if looks_secret(&kv.key) {
                        l.report(
                            here,
                            "SecretsUsedInArgOrEnv",
                            format!(
                                "Do not use ARG or ENV instructions for sensitive data (ENV {:?})",
                                kv.key
                            ),
                            pos,
                        );
                    }
                    let k = undefined(&mut l, ins, &cur, &kv.key, esc);
                    let v = undefined(&mut l, ins, &cur, &kv.value, esc);
                    out.push((k, v));
                }
                if vars.iter().any(|v| v.legacy) {
                    legacy(&mut l, ins);
                }
                cur.env.extend(out);
            }
            Kind::Label { labels } => {
                for kv in labels {
                    undefined(&mut l, ins, &cur, &kv.key, esc);
                    undefined(&mut l, ins, &cur, &kv.value, esc);
                }
                if labels.iter().any(|v| v.legacy) {
                    legacy(&mut l, ins);
                }
            }
            Kind::Run(r) => {
                for m in &r.mounts {
                    if !m.raw.is_empty() {
                        for field in m.raw.split(',') {
                            if let Some((_, v)) = field.split_once('=') {
                                undefined(&mut l, ins, &cur, v, esc);
                            }
                        }
                    }
                }
                let tool = match &r.command {
                    Command::Shell(s) => compiler_in(s),
                    Command::Exec(v) => compiler_in(&v.join(" ")),
                }
                .or_else(|| r.heredocs.iter().find_map(|h| compiler_in(&h.content)));
                if let Some(tool) = tool {
                    let runs_on = match &cur.platform {
                        Some(p) => vec![p],
                        None if cur.on_build_platform => Vec::new(),
                        None => emulated.clone(),
                    };
                    let foreign: Vec<String> = runs_on
                        .iter()
                        .filter(|p| p.os != build.os || p.architecture != build.architecture)
                        .map(|p| p.short())
                        .collect();
                    if !cur.on_build_platform && !foreign.is_empty() {
                        l.report(
                            here,
                            "CompileUnderEmulation",
                            format!(
                                "RUN `{tool}` compiles in a stage built for the target platform: for {} it runs under emulation, several times slower than natively; build in a `FROM --platform=$BUILDPLATFORM` stage and cross-compile with TARGETOS/TARGETARCH",
                                foreign.join(", ")
                            ),
                            pos,
                        );
                    }
                }
            }
            Kind::Copy(c) | Kind::Add(c) => {
                let add = matches!(ins.kind, Kind::Add(_));
                let mut paths = Vec::new();
                for s in &c.sources {
                    if let Source::Path(w) = s {
                        paths.push(undefined(&mut l, ins, &cur, &w.raw, esc));
                    }
                }
                undefined(&mut l, ins, &cur, &c.dest.raw, esc);
                for w in [&c.chown, &c.chmod].into_iter().flatten() {
                    undefined(&mut l, ins, &cur, &w.raw, esc);
                }
                if let (Some(ig), None) = (&ignore, &c.from) {
                    for p in &paths {
                        if add && (p.contains("://") || p.starts_with("git@")) {
                            continue;
                        }
                        if let Some(clean) = ig.excludes(p) {
                            l.report(
                                here,
                                "CopyIgnoredFile",
                                format!(
                                    "Attempting to {} file {clean:?} that is excluded by .dockerignore",
                                    if add { "Add" } else { "Copy" }
                                ),
                                pos,
                            );
                        }
                    }
                }
                if add && c.checksum.is_none() {
                    for p in &paths {
                        let git = p.ends_with(".git") || p.contains(".git#");
                        if (p.starts_with("http://") || p.starts_with("https://")) && !git {
                            l.report(
                                here,
                                "AddRemoteWithoutChecksum",
                                format!(
                                    "ADD of remote file {p:?} without --checksum: its content can change between builds and platforms; pin it with --checksum=sha256:<digest>"
                                ),
                                pos,
                            );
                        }
                    }
                }
            }
            Kind::Workdir { path } => {
                let (value, missing) = expand_in(&path.raw, &cur.env, esc);
                report_missing(&mut l, ins, &cur, &missing);
                let unknown = !missing.is_empty() && !cur.known;
                let absolute = value.starts_with('/') || is_windows_abs(&value) || unknown;
                if !absolute && !cur.workdir_set {
                    l.report(
                        here,
                        "WorkdirRelativePath",
                        format!(
                            "Relative workdir {value:?} can have unexpected results if the base image changes"
                        ),
                        pos,
                    );
                }
                cur.workdir_set = true;
            }
            Kind::User { user } => {
                undefined(&mut l, ins, &cur, &user.raw, esc);
            }
            Kind::Volume { paths } => {
                for w in paths {
                    undefined(&mut l, ins, &cur, &w.raw, esc);
                }
            }
            Kind::Stopsignal { signal } => {
                undefined(&mut l, ins, &cur, &signal.raw, esc);
            }
            Kind::Expose { ports } => {
                for w in ports {
                    let (value, _) = expand_in(&w.raw, &cur.env, esc);
                    for raw in value.split_whitespace() {
                        let (rest, proto) = raw.rsplit_once('/').unwrap_or((raw, ""));
                        if proto != proto.to_ascii_lowercase() {
                            l.report(
                                here,
                                "ExposeProtoCasing",
                                format!(
                                    "Defined protocol '{raw}' in EXPOSE instruction should be lowercase"
                                ),
                                w.pos,
                            );
                        }
                        if rest.contains(':') {
                            l.report(
                                here,
                                "ExposeInvalidFormat",
                                format!(
                                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
                                ),
                                w.pos,
                            );
                        }
                    }
                }
            }
            Kind::Shell { .. } => cur.custom_shell = true,
            Kind::Maintainer { .. } => l.report(
                here,
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label".into(),
                pos,
            ),
            _ => {}
        }
        if let Kind::Cmd { command } | Kind::Entrypoint { command } = &ins.kind {
            if matches!(command, Command::Shell(_)) && !cur.custom_shell {
                l.report(
                    here,
                    "JSONArgsRecommended",
                    format!(
                        "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                        ins.kind.name()
                    ),
                    pos,
                );
            }
        }
        if matches!(
            ins.kind,
            Kind::Cmd { .. } | Kind::Entrypoint { .. } | Kind::Healthcheck { .. }
        ) {
            let name = ins.kind.name();
            // BuildKit reports the earlier one: it is the one that is ignored.
            if let Some(i) = seen_once.iter().position(|(n, _)| *n == name) {
                let (_, earlier) = seen_once.remove(i);
                l.report(
                    here,
                    "MultipleInstructionsDisallowed",
                    format!(
                        "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                    ),
                    earlier,
                );
            }
            seen_once.push((name, pos));
        }
    }
    for line in &df.empty_continuation_lines {
        l.report(
            None,
            "NoEmptyContinuation",
            "Empty continuation line".into(),
            Pos {
                line: *line,
                column: 1,
            },
        );
    }
    let mut out = l.out;
    out.sort_by_key(|f| (f.line, f.column));
    out
}

fn legacy(l: &mut Linter<'_>, ins: &Instruction) {
    let n = ins.kind.name();
    l.report(
        Some(ins),
        "LegacyKeyValueFormat",
        format!("\"{n} key=value\" should be used instead of legacy \"{n} key value\" format"),
        ins.pos,
    );
}

fn casing(l: &mut Linter<'_>, ins: &Instruction, majority_lower: bool) {
    let k = &ins.keyword;
    let want = if majority_lower && *k != k.to_ascii_lowercase() {
        "lowercase"
    } else if !majority_lower && *k != k.to_ascii_uppercase() {
        "uppercase"
    } else {
        return;
    };
    l.report(
        Some(ins),
        "ConsistentInstructionCasing",
        format!("Command '{k}' should match the case of the command majority ({want})"),
        ins.pos,
    );
}

/// InvalidDefinitionDescription (experimental in BuildKit): a comment right above FROM ... AS
/// or ARG should start with the name it describes.
fn description(l: &mut Linter<'_>, ins: &Instruction, what: &str, keys: Vec<String>) {
    let (Some(last), Some(first)) = (ins.comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or_default();
    if keys.iter().any(|k| k == word) {
        return;
    }
    let example = if keys.len() > 1 {
        "<arg_key>"
    } else {
        first.as_str()
    };
    l.report(
        Some(ins),
        "InvalidDefinitionDescription",
        format!("Comment for {what} should follow the format: `# {example} <description>`"),
        ins.pos,
    );
}

/// Expands `word` in the stage's scope, reporting UndefinedVar for names nothing defines.
fn undefined(
    l: &mut Linter<'_>,
    ins: &Instruction,
    cur: &StageInfo,
    word: &str,
    esc: char,
) -> String {
    if !word.contains('$') {
        return expand_in(word, &cur.env, esc).0;
    }
    let (value, missing) = expand_in(word, &cur.env, esc);
    report_missing(l, ins, cur, &missing);
    value
}

fn report_missing(l: &mut Linter<'_>, ins: &Instruction, cur: &StageInfo, missing: &[String]) {
    if !cur.known {
        return;
    }
    for name in missing {
        if cur.declared.contains(name) {
            continue;
        }
        let keys: Vec<&str> = cur.env.keys().map(String::as_str).collect();
        let hint = nearest(name, &keys)
            .map(|n| format!(" (did you mean ${n}?)"))
            .unwrap_or_default();
        l.report(
            Some(ins),
            "UndefinedVar",
            format!("Usage of undefined variable '${name}'{hint}"),
            ins.pos,
        );
    }
}

/// `.dockerignore` patterns (moby's patternmatcher): `#` comments, `**`, and `!` exceptions.
/// With exceptions BuildKit does not run CopyIgnoredFile, and neither do we.
struct Ignore {
    patterns: Vec<Vec<String>>,
    has_exclusions: bool,
    root_ignored: bool,
}

impl Ignore {
    fn new(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        let mut has_exclusions = false;
        let mut root_ignored = false;
        for line in text.lines() {
            let p = line.trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            if p.starts_with('!') {
                has_exclusions = true;
                continue;
            }
            let clean = clean_path(p);
            if matches!(clean.as_str(), "*" | "**" | "**/*") {
                root_ignored = true;
            }
            patterns.push(clean.split('/').map(str::to_string).collect());
        }
        Ignore {
            patterns,
            has_exclusions,
            root_ignored,
        }
    }

    /// The cleaned source path when the patterns exclude it (or a parent of it).
    fn excludes(&self, src: &str) -> Option<String> {
        if self.has_exclusions {
            return None;
        }
        let clean = clean_path(src);
        if (clean == "." || clean == "/") && !self.root_ignored {
            return None;
        }
        let rel = clean.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        // The path or any parent of it.
        for end in 1..=parts.len() {
            let prefix = &parts[..end];
            if self.patterns.iter().any(|p| segments_match(p, prefix)) {
                return Some(clean);
            }
        }
        None
    }
}

/// Go's filepath.Clean on a slash path.
fn clean_path(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !abs {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Segment-wise glob match where `**` spans any number of segments (dynamic programming, no
/// backtracking blowup).
fn segments_match(pattern: &[String], path: &[&str]) -> bool {
    let ns = path.len();
    // ok[j]: pattern[..i] matches path[..j].
    let mut ok = vec![false; ns + 1];
    ok[0] = true;
    for p in pattern {
        let mut next = vec![false; ns + 1];
        if p == "**" {
            let mut any = false;
            for j in 0..=ns {
                any |= ok[j];
                next[j] = any;
            }
        } else {
            for j in 1..=ns {
                next[j] = ok[j - 1] && crate::expand::glob_match(p, path[j - 1]);
            }
        }
        ok = next;
    }
    ok[ns]
}

/// One line per finding: `file:line:col: RuleName: message (url)`.
pub fn render_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!(
            "{}:{}:{}: {}: {}",
            f.file, f.line, f.column, f.rule, f.message
        ));
        if !f.url.is_empty() {
            s.push_str(&format!(" ({})", f.url));
        }
        s.push('\n');
    }
    s
}

/// A JSON array of findings.
pub fn render_json(findings: &[Finding]) -> String {
    serde_json::to_string_pretty(findings).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn rules(src: &str) -> Vec<(&'static str, usize)> {
        let df = parse(src, "Dockerfile").expect("test input parses");
        lint(&df).into_iter().map(|f| (f.rule, f.line)).collect()
    }

    #[test]
    fn each_rule_fires_where_expected() {
        let src = "ARG VERSION=1\n\
                   FROM --platform=linux/amd64 golang:${VERSON} AS Build\n\
                   MAINTAINER me\n\
                   FROM alpine AS build\n\
                   CMD echo hi\n\
                   ENTRYPOINT [\"x\"]\n";
        assert_eq!(
            rules(src),
            [
                // BuildKit too: `golang:` (VERSON unset) is not a valid reference.
                ("InvalidDefaultArgInFrom", 2),
                ("FromPlatformFlagConstDisallowed", 2),
                ("UndefinedArgInFrom", 2),
                ("StageNameCasing", 2),
                ("MaintainerDeprecated", 3),
                ("DuplicateStageName", 4),
                ("JSONArgsRecommended", 5),
            ]
        );
    }

    #[test]
    fn stage_and_style_rules_fire() {
        let src = "FROM alpine as Builder\n\
                   WORKDIR app\n\
                   ENV K v\n\
                   EXPOSE 80/TCP\n\
                   CMD [\"a\"]\n\
                   CMD [\"b\"]\n\
                   FROM --platform=$TARGETPLATFORM builder AS scratch\n\
                   WORKDIR rel\n\
                   RUN a \\\n\n  b\n";
        assert_eq!(
            rules(src),
            [
                ("FromAsCasing", 1),
                ("StageNameCasing", 1),
                ("WorkdirRelativePath", 2),
                ("LegacyKeyValueFormat", 3),
                ("ExposeProtoCasing", 4),
                ("MultipleInstructionsDisallowed", 5),
                ("RedundantTargetPlatform", 7),
                ("ReservedStageName", 7),
                ("NoEmptyContinuation", 11),
            ]
        );
    }

    #[test]
    fn constant_platform_is_fine_in_a_stage_named_for_it() {
        let named = "FROM --platform=linux/arm/v7 alpine AS fetch-arm\nFROM --platform=linux/amd64 alpine AS linux-tools\n";
        assert!(rules(named).is_empty());
        let unnamed = "FROM --platform=linux/arm/v7 alpine AS fetch\n";
        assert_eq!(rules(unnamed), [("FromPlatformFlagConstDisallowed", 1)]);
    }

    #[test]
    fn clean_file_has_no_findings_and_skip_directive_works() {
        let clean = "ARG GO=1.22\nFROM --platform=$BUILDPLATFORM golang:${GO} AS build\nFROM scratch\nCMD [\"/app\"]\n";
        assert!(rules(clean).is_empty());
        let skipped = "# check=skip=JSONArgsRecommended\nFROM alpine\nCMD echo hi\n";
        assert!(rules(skipped).is_empty());
        let shell = "FROM alpine\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n";
        assert!(rules(shell).is_empty());
    }

    #[test]
    fn renders_text_and_json() {
        let df = parse("FROM alpine\nCMD echo hi\n", "Dockerfile").expect("parses");
        let f = lint(&df);
        assert_eq!(
            render_text(&f),
            "Dockerfile:2:1: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (https://docs.docker.com/go/dockerfile/rule/json-args-recommended/)\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render_json(&f)).expect("valid JSON");
        assert_eq!(v[0]["rule"], "JSONArgsRecommended");
        assert_eq!(v[0]["line"], 2);
    }
}
