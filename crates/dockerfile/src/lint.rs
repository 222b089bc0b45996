//! BuildKit's build checks that need no build: same rule names, so `# check=skip=...` and
//! docs links carry over from docker.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::ast::{Command, Dockerfile, Kind};
use crate::error::{nearest, Pos};
use crate::expand::referenced_names;

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

fn url(rule: &str) -> String {
    let mut kebab = String::new();
    for (i, c) in rule.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kebab.push('-');
        }
        kebab.push(c.to_ascii_lowercase());
    }
    // BuildKit spells these two as one word in their URLs.
    let kebab = kebab.replace("j-s-o-n", "json");
    format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
}

/// Rules disabled by `# check=skip=A,B` (or `skip=all`).
fn skipped(df: &Dockerfile) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(check) = &df.directives.check {
        for part in check.split(';') {
            if let Some(list) = part.trim().strip_prefix("skip=") {
                out.extend(list.split(',').map(|s| s.trim().to_string()));
            }
        }
    }
    out
}

/// Runs every check and returns findings in file order.
pub fn lint(df: &Dockerfile) -> Vec<Finding> {
    let skip = skipped(df);
    let mut out: Vec<Finding> = Vec::new();
    let mut add = |rule: &'static str, message: String, line: usize, column: usize| {
        if skip.contains(rule) || skip.contains("all") {
            return;
        }
        out.push(Finding {
            rule,
            message,
            file: df.file.clone(),
            line,
            column,
            url: url(rule),
        });
    };
    let esc = df.directives.escape;
    let mut globals: BTreeSet<String> = PLATFORM_ARGS.iter().map(|s| s.to_string()).collect();
    let mut global_list: Vec<String> = Vec::new();
    let mut seen_from = false;
    let mut names: Vec<String> = Vec::new();
    let mut custom_shell = false;
    // (stage name, whether its SHELL is custom), in stage order.
    let mut shells: Vec<(String, bool)> = Vec::new();
    for ins in &df.instructions {
        let (line, column) = (ins.pos.line, ins.pos.column);
        match &ins.kind {
            Kind::Arg { args } if !seen_from => {
                for a in args {
                    globals.insert(a.name.clone());
                    global_list.push(a.name.clone());
                }
            }
            Kind::From(f) => {
                seen_from = true;
                // A stage built FROM another inherits its SHELL.
                let parent = f.image.raw.to_ascii_lowercase();
                custom_shell = shells.iter().any(|(n, custom)| *n == parent && *custom);
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
                        add(
                            "UndefinedArgInFrom",
                            format!("FROM argument '{name}' is not declared{hint}"),
                            w.pos.line,
                            w.pos.column,
                        );
                    }
                }
                if let Some(p) = &f.platform {
                    let lower_name = f
                        .name
                        .as_ref()
                        .map(|n| n.raw.to_ascii_lowercase())
                        .unwrap_or_default();
                    // As BuildKit: a constant is fine when the stage name contains its OS or
                    // architecture (`build_amd64`); an unparsable value fails later anyway.
                    let constant = (!p.raw.contains('$'))
                        .then(|| oci::Platform::parse(&p.raw).ok())
                        .flatten();
                    let flagged = constant.is_some_and(|c| {
                        !lower_name.contains(&c.os) && !lower_name.contains(&c.architecture)
                    });
                    if flagged {
                        add(
                            "FromPlatformFlagConstDisallowed",
                            format!(
                                "FROM --platform flag should not use constant value {:?}",
                                p.raw
                            ),
                            p.pos.line,
                            p.pos.column,
                        );
                    }
                }
                if let Some(n) = &f.name {
                    if n.raw != n.raw.to_ascii_lowercase() {
                        add(
                            "StageNameCasing",
                            format!("Stage name '{}' should be lowercase", n.raw),
                            n.pos.line,
                            n.pos.column,
                        );
                    }
                    let lower = n.raw.to_ascii_lowercase();
                    if names.contains(&lower) {
                        add(
                            "DuplicateStageName",
                            format!(
                                "Duplicate stage name {:?}, stage names should be unique",
                                n.raw
                            ),
                            n.pos.line,
                            n.pos.column,
                        );
                    }
                    names.push(lower);
                }
                let own = f.name.as_ref().map(|n| n.raw.to_ascii_lowercase());
                shells.push((own.unwrap_or_default(), custom_shell));
            }
            Kind::Shell { .. } => {
                custom_shell = true;
                if let Some(last) = shells.last_mut() {
                    last.1 = true;
                }
            }
            Kind::Cmd {
                command: Command::Shell(_),
            }
            | Kind::Entrypoint {
                command: Command::Shell(_),
            } if !custom_shell => {
                add(
                    "JSONArgsRecommended",
                    format!(
                        "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                        ins.kind.name()
                    ),
                    line,
                    column,
                );
            }
            Kind::Maintainer { .. } => add(
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label".into(),
                line,
                column,
            ),
            _ => {}
        }
    }
    stage_checks(df, &mut add);
    for line in &df.empty_continuation_lines {
        add(
            "NoEmptyContinuation",
            "Empty continuation line".into(),
            *line,
            1,
        );
    }
    out.sort_by_key(|f| (f.line, f.column));
    out
}

/// Checks that follow each stage's state: repeated CMD/ENTRYPOINT/HEALTHCHECK, relative
/// WORKDIR, keyword casing, reserved names, legacy ENV/LABEL form, EXPOSE protocol casing.
fn stage_checks(df: &Dockerfile, add: &mut dyn FnMut(&'static str, String, usize, usize)) {
    // Whether each named stage has set an absolute WORKDIR, inherited by `FROM <stage>`.
    let mut workdir_by_stage: Vec<(String, bool)> = Vec::new();
    let mut workdir_set = false;
    let mut seen: Vec<(&'static str, Pos)> = Vec::new();
    for ins in &df.instructions {
        let (line, column) = (ins.pos.line, ins.pos.column);
        match &ins.kind {
            Kind::From(f) => {
                let parent = f.image.raw.to_ascii_lowercase();
                workdir_set = workdir_by_stage
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == parent)
                    .is_some_and(|(_, set)| *set);
                seen.clear();
                let name = f.name.as_ref().map(|n| n.raw.to_ascii_lowercase());
                workdir_by_stage.push((name.clone().unwrap_or_default(), workdir_set));
                if let (Some(kw), Some(n)) = (&f.as_keyword, &f.name) {
                    let from_upper = ins.keyword == ins.keyword.to_ascii_uppercase();
                    let as_upper = *kw == kw.to_ascii_uppercase();
                    if from_upper != as_upper {
                        add(
                            "FromAsCasing",
                            format!("'{kw}' and '{}' keywords' casing do not match", ins.keyword),
                            line,
                            column,
                        );
                    }
                    if let Some(reserved) = name.filter(|n| n == "context" || n == "scratch") {
                        add(
                            "ReservedStageName",
                            format!(
                                "Stage name should not use the same name as reserved stage {reserved:?}"
                            ),
                            n.pos.line,
                            n.pos.column,
                        );
                    }
                }
                if let Some(p) = &f.platform {
                    if p.raw == "$TARGETPLATFORM" || p.raw == "${TARGETPLATFORM}" {
                        add(
                            "RedundantTargetPlatform",
                            format!(
                                "Setting platform to predefined {} in FROM is redundant as this is the default behavior",
                                p.raw
                            ),
                            p.pos.line,
                            p.pos.column,
                        );
                    }
                }
            }
            Kind::Cmd { .. } | Kind::Entrypoint { .. } | Kind::Healthcheck { .. } => {
                let name = ins.kind.name();
                // BuildKit reports the earlier one: it is the one that is ignored.
                if let Some(i) = seen.iter().position(|(n, _)| *n == name) {
                    let (_, pos) = seen.remove(i);
                    add(
                        "MultipleInstructionsDisallowed",
                        format!(
                            "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                        ),
                        pos.line,
                        pos.column,
                    );
                }
                seen.push((name, ins.pos));
            }
            Kind::Workdir { path } => {
                let raw = path.raw.as_str();
                let bytes = raw.as_bytes();
                let windows_abs = bytes.len() >= 3
                    && bytes[0].is_ascii_alphabetic()
                    && bytes[1] == b':'
                    && (bytes[2] == b'\\' || bytes[2] == b'/');
                let absolute = raw.starts_with('/') || raw.starts_with('$') || windows_abs;
                if !absolute && !workdir_set {
                    add(
                        "WorkdirRelativePath",
                        format!(
                            "Relative workdir {raw:?} can have unexpected results if the base image changes"
                        ),
                        line,
                        column,
                    );
                }
                workdir_set = true;
                if let Some(last) = workdir_by_stage.last_mut() {
                    last.1 = true;
                }
            }
            Kind::Env { vars } | Kind::Label { labels: vars } if vars.iter().any(|v| v.legacy) => {
                let n = ins.kind.name();
                add(
                    "LegacyKeyValueFormat",
                    format!(
                        "\"{n} key=value\" should be used instead of legacy \"{n} key value\" format"
                    ),
                    line,
                    column,
                );
            }
            Kind::Expose { ports } => {
                for w in ports {
                    if let Some((_, proto)) = w.raw.split_once('/') {
                        if proto != proto.to_ascii_lowercase() {
                            add(
                                "ExposeProtoCasing",
                                format!(
                                    "Defined protocol '{}' in EXPOSE instruction should be lowercase",
                                    w.raw
                                ),
                                w.pos.line,
                                w.pos.column,
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// One line per finding: `file:line:col: RuleName: message (url)`.
pub fn render_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!(
            "{}:{}:{}: {}: {} ({})\n",
            f.file, f.line, f.column, f.rule, f.message, f.url
        ));
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
