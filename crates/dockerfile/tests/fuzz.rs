//! No input may panic or hang the frontend: random token soups, random text, and mutations of
//! the corpus go through parse, lint and plan. Bounded: 2000 cases per property, seconds in all.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use manifold_dockerfile::{lint, parse, plan, render_json, render_text, PlanOptions};
use oci::Platform;
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "FROM",
    "from",
    "RUN",
    "COPY",
    "ADD",
    "ARG",
    "ENV",
    "LABEL",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "VOLUME",
    "CMD",
    "ENTRYPOINT",
    "SHELL",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "ONBUILD",
    "MAINTAINER",
    " ",
    " ",
    " ",
    "\t",
    "\n",
    "\n",
    "\r\n",
    "\\\n",
    "\\",
    "`",
    "#",
    "# escape=`\n",
    "# syntax=docker/dockerfile:1\n",
    "# check=skip=all\n",
    "--platform=",
    "--platform=$BUILDPLATFORM",
    "--from=",
    "--from=0",
    "--from=a",
    "--mount=type=cache,target=/x",
    "--mount=type=secret,id=s",
    "--mount=from=a,target=/m",
    "--mount=",
    "--chown=1:1",
    "--link",
    "--network=none",
    "--interval=1s",
    "AS",
    "as",
    "a",
    "b",
    "alpine",
    "scratch",
    "$",
    "${",
    "}",
    "${A:-",
    "${A:+",
    "${A#",
    "${A%%",
    "${A//",
    "${A:?",
    "$TARGETARCH",
    "\"",
    "'",
    "=",
    "A=",
    "A",
    "<<EOF",
    "<<-'EOF'",
    "<<\"E\"",
    "EOF\n",
    "EOF",
    "E\n",
    "[",
    "]",
    "\"a\"",
    ",",
    "NONE",
    "CMD",
    "0",
    "1",
    "/",
    "..",
    ":",
    "*",
    "?",
    "é",
    "\u{feff}",
];

fn options() -> PlanOptions {
    PlanOptions {
        target: None,
        platforms: vec![
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm64", ""),
        ],
        build_platform: Platform::new("linux", "amd64", ""),
        build_args: BTreeMap::from([("A".to_string(), "x y".to_string())]),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    }
}

/// The property: errors are located (the options are valid, so every error is in the file) and
/// everything renders.
fn exercise(text: &str) {
    match parse(text, "Dockerfile") {
        Ok(df) => {
            let findings = lint(&df);
            let _ = render_text(&findings);
            let _ = render_json(&findings);
            match plan(&df, &options()) {
                Ok(p) => {
                    assert_eq!(p.platforms.len(), 2);
                    for pp in &p.platforms {
                        for key in &pp.stages {
                            assert!(p.stage(key).is_some(), "dangling key {key}");
                        }
                    }
                }
                Err(e) => {
                    let loc = e.location.as_ref().expect("plan errors are located");
                    assert!(loc.pos.line >= 1 && loc.pos.column >= 1);
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let loc = e.location.as_ref().expect("parse errors are located");
            assert!(loc.pos.line >= 1 && loc.pos.column >= 1, "{e}");
            let _ = e.to_string();
        }
    }
}

fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/dockerfiles");
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("corpus dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect();
        v.sort();
        v
    })
}

/// Applies (position, kind, token) edits to a corpus file, on char boundaries.
fn mutate(base: &str, edits: &[(usize, u8, &str)]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for &(pos, kind, tok) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            pos % (chars.len() + 1)
        };
        match kind % 3 {
            0 => {
                chars.splice(at..at, tok.chars());
            }
            1 => {
                let end = (at + tok.len()).min(chars.len());
                chars.drain(at..end);
            }
            _ => {
                let end = (at + 1).min(chars.len());
                chars.splice(at..end, tok.chars());
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_soup(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..80)) {
        exercise(&tokens.concat());
    }

    #[test]
    fn random_text(text in "[ -~\t\n\r\u{e9}]{0,300}") {
        exercise(&text);
    }

    #[test]
    fn random_text_after_from(text in "[ -~\t\n\r\u{e9}]{0,300}") {
        exercise(&format!("FROM a AS a\n{text}"));
    }

    #[test]
    fn mutated_corpus(
        idx in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), prop::sample::select(TOKENS)), 1..6),
    ) {
        let files = corpus();
        prop_assume!(!files.is_empty());
        let base = &files[idx.index(files.len())];
        exercise(&mutate(base, &edits));
    }
}

/// Pathological shapes that once could recurse or loop: deep nesting, long runs.
#[test]
fn pathological_inputs_terminate() {
    let deep_onbuild = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(100_000));
    assert!(parse(&deep_onbuild, "Dockerfile").is_err());
    let deep_subst = format!(
        "FROM a\nENV X={}{}\n",
        "${A:-".repeat(10_000),
        "}".repeat(10_000)
    );
    let df = parse(&deep_subst, "Dockerfile").expect("parses; expansion fails at plan time");
    assert!(plan(&df, &options()).is_err());
    let long_glob = format!(
        "FROM a\nARG V={}\nENV X=${{V//*a*a*a*a*/b}}\n",
        "a".repeat(300)
    );
    let df = parse(&long_glob, "Dockerfile").expect("parses");
    assert!(plan(&df, &options()).is_ok());
    let continuation = format!("FROM a\nRUN {}\n", "x \\\n".repeat(50_000));
    assert!(parse(&continuation, "Dockerfile").is_ok());
    // Every word of a long continuation gets a position: this must not be quadratic.
    let started = std::time::Instant::now();
    let env = format!("FROM a\nENV {}A=1\n", "K=v \\\n".repeat(20_000));
    let df = parse(&env, "Dockerfile").expect("parses");
    assert!(plan(&df, &options()).is_ok());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
