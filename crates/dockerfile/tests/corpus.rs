//! Walks `tests/dockerfiles/` at the repository root. Each `NAME.Dockerfile` has either a plan
//! golden (`NAME.plan.json`) or, for the negative cases named `err-*`, an error golden
//! (`NAME.err`). Lint findings go to `NAME.lint.txt` when there are any. An optional
//! `NAME.opts` holds `target=`, `build-arg=K=V` and `platforms=` lines.
//! `UPDATE_GOLDEN=1` rewrites the goldens; review the diff before committing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use manifold_dockerfile::lint::{check, CheckOptions};
use manifold_dockerfile::{parse, parse_bytes, plan, render_text, PlanOptions};
use oci::Platform;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/dockerfiles")
}

fn platform(s: &str) -> Platform {
    Platform::parse(s).expect("valid platform")
}

fn options(path: &Path) -> PlanOptions {
    let mut opts = PlanOptions {
        target: None,
        platforms: vec![platform("linux/amd64"), platform("linux/arm64")],
        build_platform: platform("linux/amd64"),
        build_args: BTreeMap::new(),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    };
    let Ok(text) = fs::read_to_string(path.with_extension("opts")) else {
        return opts;
    };
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("target=") {
            opts.target = Some(t.to_string());
        } else if let Some(kv) = line.strip_prefix("build-arg=") {
            let (k, v) = kv.split_once('=').expect("build-arg=K=V");
            opts.build_args.insert(k.to_string(), v.to_string());
        } else if let Some(list) = line.strip_prefix("platforms=") {
            opts.platforms = list.split(',').map(platform).collect();
        }
    }
    opts
}

/// Compares `actual` with the golden at `path` (or rewrites it); returns a problem, if any.
fn check_golden(path: &Path, actual: Option<&str>, update: bool) -> Option<String> {
    let expected = fs::read_to_string(path).ok();
    if update {
        match actual {
            Some(a) => fs::write(path, a).expect("write golden"),
            None if expected.is_some() => fs::remove_file(path).expect("remove golden"),
            None => {}
        }
        return None;
    }
    (expected.as_deref() != actual).then(|| {
        format!(
            "{}: golden differs; rerun with UPDATE_GOLDEN=1 and review the diff\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            expected.as_deref().unwrap_or("(no file)"),
            actual.unwrap_or("(nothing)")
        )
    })
}

fn dockerfiles() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(corpus_dir())
        .expect("tests/dockerfiles exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    files
}

fn is_negative(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("err-"))
}

fn name_of(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name")
}

#[test]
fn corpus_matches_goldens() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let files = dockerfiles();
    let positives = files.iter().filter(|p| !is_negative(p)).count();
    let negatives = files.len() - positives;
    assert!(positives >= 60, "only {positives} positive Dockerfiles");
    assert!(negatives >= 15, "only {negatives} negative Dockerfiles");
    let mut problems = Vec::new();
    for path in &files {
        let name = name_of(path);
        // Bytes: the corpus has a file that is not UTF-8, as BuildKit accepts.
        let bytes = fs::read(path).expect("readable Dockerfile");
        // Lint as `--check` does, with this file's platforms (two by default), so the
        // multi-platform checks run too.
        let result = parse_bytes(bytes, name).and_then(|df| {
            let report = check(
                &df,
                &CheckOptions {
                    plan: options(path),
                    ..Default::default()
                },
            );
            plan(&df, &options(path)).map(|p| (p, report.findings))
        });
        let (plan_out, err_out, lint_out) = match result {
            Ok((p, findings)) => {
                let json = serde_json::to_string_pretty(&p).expect("plan serializes") + "\n";
                let lint = (!findings.is_empty()).then(|| render_text(&findings));
                (Some(json), None, lint)
            }
            Err(e) => (None, Some(format!("{e}\n")), None),
        };
        if is_negative(path) != err_out.is_some() {
            problems.push(format!(
                "{name}: expected {}, got {}",
                if is_negative(path) {
                    "an error"
                } else {
                    "a plan"
                },
                err_out.as_deref().unwrap_or("a plan")
            ));
            continue;
        }
        let checks = [
            (path.with_extension("plan.json"), plan_out),
            (path.with_extension("err"), err_out),
            (path.with_extension("lint.txt"), lint_out),
        ];
        for (golden, actual) in checks {
            problems.extend(check_golden(&golden, actual.as_deref(), update));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every error in the negative corpus points into the file: a line and column that exist, and
/// the source line shown is that line.
#[test]
fn negative_cases_point_into_the_file() {
    let mut checked = 0;
    for path in dockerfiles().iter().filter(|p| is_negative(p)) {
        let name = name_of(path);
        let text = String::from_utf8_lossy(&fs::read(path).expect("readable")).into_owned();
        let Err(e) = parse(&text, name).and_then(|df| plan(&df, &options(path))) else {
            panic!("{name} should fail");
        };
        let Some(loc) = e.location.as_ref() else {
            // Only errors in the build options (such as --target) have no place in the file.
            assert!(path.with_extension("opts").exists(), "{name}: no location");
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            loc.pos.line >= 1 && loc.pos.line <= lines.len().max(1),
            "{name}: line {}",
            loc.pos.line
        );
        let line = lines.get(loc.pos.line - 1).copied().unwrap_or("");
        assert!(
            loc.pos.column >= 1 && loc.pos.column <= line.chars().count().max(1),
            "{name}: column {}",
            loc.pos.column
        );
        assert_eq!(loc.source_line, line.trim_end_matches('\r'), "{name}");
        assert_eq!(loc.file, name);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} located errors");
}

/// parse-dockerfile agrees with us on the instruction sequence wherever it can parse the file
/// (it cannot do several here-documents per RUN, or one after other words).
#[test]
fn instruction_sequence_agrees_with_parse_dockerfile() {
    use parse_dockerfile::Instruction as I;
    let mut compared = 0;
    for path in dockerfiles().iter().filter(|p| !is_negative(p)) {
        let text = String::from_utf8_lossy(&fs::read(path).expect("readable")).into_owned();
        // parse-dockerfile still continues a line after an escaped escape (`\\\\`), which
        // BuildKit stopped doing (docker/for-win#5254): there it is the one that is wrong.
        if ["escape-trailing-backslash", "windows-powershell-paths"]
            .iter()
            .any(|n| name_of(path).starts_with(n))
        {
            continue;
        }
        let Ok(theirs) = parse_dockerfile::parse(&text) else {
            continue;
        };
        let ours = parse(&text, "Dockerfile").expect("positive corpus parses");
        let their_names: Vec<&str> = theirs
            .instructions
            .iter()
            .map(|i| match i {
                I::From(_) => "FROM",
                I::Arg(_) => "ARG",
                I::Env(_) => "ENV",
                I::Label(_) => "LABEL",
                I::Run(_) => "RUN",
                I::Copy(_) => "COPY",
                I::Add(_) => "ADD",
                I::Workdir(_) => "WORKDIR",
                I::User(_) => "USER",
                I::Expose(_) => "EXPOSE",
                I::Volume(_) => "VOLUME",
                I::Cmd(_) => "CMD",
                I::Entrypoint(_) => "ENTRYPOINT",
                I::Shell(_) => "SHELL",
                I::Healthcheck(_) => "HEALTHCHECK",
                I::Stopsignal(_) => "STOPSIGNAL",
                I::Onbuild(_) => "ONBUILD",
                I::Maintainer(_) => "MAINTAINER",
                _ => "?",
            })
            .collect();
        let our_names: Vec<&str> = ours.instructions.iter().map(|i| i.kind.name()).collect();
        assert_eq!(our_names, their_names, "{}", path.display());
        compared += 1;
    }
    assert!(compared >= 40, "only {compared} files compared");
}

/// Line endings do not matter: every positive file plans byte-for-byte the same with LF and CRLF.
#[test]
fn crlf_and_lf_plan_identically() {
    let mut compared = 0;
    for path in dockerfiles().iter().filter(|p| !is_negative(p)) {
        let text = String::from_utf8_lossy(&fs::read(path).expect("readable")).into_owned();
        let lf = text.replace("\r\n", "\n");
        let crlf = lf.replace('\n', "\r\n");
        let plan_of = |t: &str| {
            let df = parse(t, name_of(path)).expect("positive corpus parses");
            serde_json::to_string(&plan(&df, &options(path)).expect("plans")).expect("serializes")
        };
        assert_eq!(plan_of(&lf), plan_of(&crlf), "{}", path.display());
        compared += 1;
    }
    assert!(compared >= 60);
}
