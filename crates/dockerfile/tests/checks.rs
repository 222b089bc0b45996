//! Each build check: BuildKit's rule names, messages and where they fire, and the ones of our own.

use std::collections::BTreeMap;

use manifold_dockerfile::lint::{check, BasePlatforms, CheckOptions, Finding};
use manifold_dockerfile::{lint, parse, BaseConfig, PlanOptions};
use oci::Platform;

fn two_platforms() -> PlanOptions {
    PlanOptions {
        target: None,
        platforms: vec![
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm64", ""),
        ],
        build_platform: Platform::new("linux", "amd64", ""),
        build_args: BTreeMap::new(),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    }
}

fn native() -> PlanOptions {
    PlanOptions {
        platforms: vec![Platform::new("linux", "amd64", "")],
        ..two_platforms()
    }
}

fn run(src: &str, opts: CheckOptions<'_>) -> Vec<Finding> {
    let df = parse(src, "Dockerfile").unwrap_or_else(|e| panic!("parses: {e}"));
    check(&df, &opts).findings
}

fn rules(src: &str) -> Vec<(&'static str, usize)> {
    let df = parse(src, "Dockerfile").unwrap_or_else(|e| panic!("parses: {e}"));
    lint(&df).into_iter().map(|f| (f.rule, f.line)).collect()
}

fn messages(src: &str, opts: CheckOptions<'_>) -> Vec<String> {
    run(src, opts)
        .into_iter()
        .map(|f| format!("{}: {}", f.rule, f.message))
        .collect()
}

fn opts(plan: PlanOptions) -> CheckOptions<'static> {
    CheckOptions {
        plan,
        ..Default::default()
    }
}

#[test]
fn consistent_instruction_casing() {
    let src = "FROM alpine\nrun true\nRUN true\nCopy a b\n";
    assert_eq!(
        messages(src, opts(native())),
        [
            "ConsistentInstructionCasing: Command 'run' should match the case of the command majority (uppercase)",
            "ConsistentInstructionCasing: Command 'Copy' should match the case of the command majority (uppercase)",
        ]
    );
    // FROM in mixed case draws no FromAsCasing (BuildKit leaves that to this rule).
    assert_eq!(
        rules("From alpine AS x\nRUN true\n"),
        [("ConsistentInstructionCasing", 1)]
    );
}

#[test]
fn copy_ignored_file_reads_dockerignore() {
    let src = "FROM alpine\nCOPY secrets/key.pem /k\nCOPY src /src\nADD build/out.tar /\nCOPY --from=alpine secrets /x\n";
    let o = CheckOptions {
        plan: native(),
        dockerignore: Some("# local\nsecrets\n**/*.tar\n".into()),
        base_platforms: None,
    };
    assert_eq!(
        messages(src, o),
        [
            "CopyIgnoredFile: Attempting to Copy file \"secrets/key.pem\" that is excluded by .dockerignore",
            "CopyIgnoredFile: Attempting to Add file \"build/out.tar\" that is excluded by .dockerignore",
        ]
    );
    // With exceptions (`!`) BuildKit skips the check.
    let o = CheckOptions {
        plan: native(),
        dockerignore: Some("secrets\n!secrets/key.pem\n".into()),
        base_platforms: None,
    };
    assert!(messages(src, o).is_empty());
}

#[test]
fn expose_invalid_format_and_proto_casing() {
    assert_eq!(
        messages("FROM a\nEXPOSE 127.0.0.1:80:80 8080:80/TCP 443\n", opts(native())),
        [
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'",
            "ExposeProtoCasing: Defined protocol '8080:80/TCP' in EXPOSE instruction should be lowercase",
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '8080:80/TCP'",
        ]
    );
}

struct Fake;

impl BasePlatforms for Fake {
    fn platform_of(&self, reference: &str, wanted: &Platform) -> Option<Platform> {
        match reference {
            // Only an amd64 image exists locally.
            "docker.io/library/amd64only:1" => Some(Platform::new("linux", "amd64", "")),
            "docker.io/library/alpine:3.19" => Some(wanted.clone()),
            _ => None,
        }
    }
}

#[test]
fn invalid_base_image_platform_uses_the_lookup() {
    let src = "FROM amd64only:1 AS a\nFROM alpine:3.19 AS b\nFROM unknown:1\n";
    let mut plan = native();
    plan.platforms = vec![Platform::new("linux", "arm64", "")];
    let found = run(
        src,
        CheckOptions {
            plan: plan.clone(),
            dockerignore: None,
            base_platforms: Some(&Fake),
        },
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "InvalidBaseImagePlatform");
    assert_eq!(
        found[0].message,
        "Base image amd64only:1 was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build"
    );
    assert_eq!(found[0].url, "", "BuildKit's rule has no doc page");
    // Without a lookup the check cannot run.
    assert!(run(src, opts(plan)).is_empty());
}

#[test]
fn invalid_default_arg_in_from_is_a_warning_then_the_error() {
    let src = "ARG IMAGE\nFROM $IMAGE\n";
    let df = parse(src, "Dockerfile").expect("parses");
    let report = check(&df, &opts(native()));
    assert_eq!(report.findings[0].rule, "InvalidDefaultArgInFrom");
    assert_eq!(
        report.findings[0].message,
        "Default value for ARG $IMAGE results in empty or invalid base image name"
    );
    // As in BuildKit, planning still fails without a value; the warning came first.
    let e = report.error.expect("blank base name");
    assert!(
        e.to_string()
            .contains("base name ($IMAGE) should not be blank"),
        "{e}"
    );
    // With a build arg the build works; the defaults-only check still warns.
    let mut plan = native();
    plan.build_args.insert("IMAGE".into(), "alpine".into());
    let report = check(&df, &opts(plan));
    assert!(report.error.is_none());
    assert_eq!(report.findings[0].rule, "InvalidDefaultArgInFrom");
}

#[test]
fn secrets_used_in_arg_or_env() {
    assert_eq!(
        messages(
            "FROM a\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x PUBLIC_KEY=y api_key_file=z AUTHOR=me\n",
            opts(native())
        ),
        [
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\")",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"DB_PASSWORD\")",
        ]
    );
}

#[test]
fn undefined_var_with_known_base_env() {
    let src = "FROM python:3.12\nENV PATH=/venv/bin:$PATH HOME2=$PYTHON_VERSION\nARG DECLARED\nCOPY $DECLARED $UNSET_DIR /app\nWORKDIR $PYTHON_VERSON\n";
    // Unknown base env: no finding (the image may define it).
    assert!(messages(src, opts(native())).is_empty());
    let mut plan = native();
    plan.base_configs.insert(
        ("docker.io/library/python:3.12".into(), "linux/amd64".into()),
        BaseConfig {
            env: BTreeMap::from([
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("PYTHON_VERSION".to_string(), "3.12.1".to_string()),
            ]),
            ..Default::default()
        },
    );
    assert_eq!(
        messages(src, opts(plan)),
        [
            "UndefinedVar: Usage of undefined variable '$UNSET_DIR'",
            "UndefinedVar: Usage of undefined variable '$PYTHON_VERSON' (did you mean $PYTHON_VERSION?)",
            // The undefined variable leaves WORKDIR empty, hence relative (as in BuildKit).
            "WorkdirRelativePath: Relative workdir \"\" can have unexpected results if the base image changes",
        ]
    );
    // scratch has a known (empty) environment.
    assert_eq!(
        messages("FROM scratch\nCOPY $NOPE /x\n", opts(native())),
        ["UndefinedVar: Usage of undefined variable '$NOPE'"]
    );
}

#[test]
fn invalid_definition_description_is_experimental() {
    let src = "# check=experimental=InvalidDefinitionDescription\n# the base stage\nFROM alpine AS base\n# VERSION of the tool\nARG VERSION=1\n# something else\nARG OTHER=2\n";
    assert_eq!(
        messages(src, opts(native())),
        [
            "InvalidDefinitionDescription: Comment for FROM should follow the format: `# base <description>`",
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# OTHER <description>`",
        ]
    );
    assert!(messages(&src.replace("experimental", "skip"), opts(native())).is_empty());
}

#[test]
fn workdir_quoted_absolute_and_empty_continuation_once() {
    assert!(rules("FROM a\nWORKDIR \"/app\"\nWORKDIR '/srv'\n").is_empty());
    assert_eq!(
        rules("FROM a\nWORKDIR \"app\"\n"),
        [("WorkdirRelativePath", 2)]
    );
    // Two empty lines in one instruction: one finding, at its last line.
    assert_eq!(
        rules("FROM a\nRUN a \\\n\n  b \\\n\n  c\nRUN d\n"),
        [("NoEmptyContinuation", 6)]
    );
}

#[test]
fn check_directives() {
    let src = "# check=skip=JSONArgsRecommended,MaintainerDeprecated;error=true\nFROM a\nMAINTAINER me\nCMD x\nENV K v\n";
    let df = parse(src, "Dockerfile").expect("parses");
    let report = check(&df, &opts(native()));
    assert_eq!(
        report.findings.iter().map(|f| f.rule).collect::<Vec<_>>(),
        ["LegacyKeyValueFormat"]
    );
    assert_eq!(
        report.lint_error().as_deref(),
        Some("lint violation found for rules: LegacyKeyValueFormat")
    );
    // skip=all, and the build arg overrides the directive.
    assert!(rules("# check=skip=all\nFROM a\nCMD x\n").is_empty());
    let mut plan = native();
    plan.build_args.insert(
        "BUILDKIT_DOCKERFILE_CHECK".into(),
        "skip=LegacyKeyValueFormat".into(),
    );
    let report = check(&df, &opts(plan));
    assert!(report.lint_error().is_none());
    assert_eq!(report.findings.len(), 2);
    // Per instruction: a check= comment right above it.
    assert_eq!(
        rules("FROM a\n# check=skip=JSONArgsRecommended\nCMD x\nENTRYPOINT y\n"),
        [("JSONArgsRecommended", 4)]
    );
    let bad = parse("# check=bogus=1\nFROM a\n", "D").expect("parses");
    assert!(check(&bad, &opts(native())).config_error.is_some());
}

#[test]
fn compile_under_emulation() {
    let src = "FROM golang:1.22 AS build\nRUN CGO_ENABLED=0 go build -o /app .\nFROM --platform=$BUILDPLATFORM golang:1.22 AS cross\nARG TARGETARCH\nRUN GOARCH=$TARGETARCH go build -o /app .\nFROM alpine\nRUN apk add curl\n";
    let found = run(src, opts(two_platforms()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "CompileUnderEmulation");
    assert_eq!(found[0].line, 2);
    assert!(found[0].message.contains("`go build`") && found[0].message.contains("linux/arm64"));
    assert_eq!(found[0].url, "docs/checks/compile-under-emulation.md");
    // Building only for the build platform: nothing is emulated.
    assert!(run(src, opts(native())).is_empty());
    // Compilers after `&&`, behind `sudo`, in a here-document.
    let src = "FROM debian\nRUN apt-get update && sudo make -j4\nRUN <<EOF\nset -e\ncargo build --release\nEOF\n";
    let found = run(src, opts(two_platforms()));
    assert_eq!(found.iter().map(|f| f.line).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn arch_specific_base() {
    let src = "FROM arm64v8/alpine:3.19 AS a\nFROM --platform=linux/amd64 alpine AS tools\nFROM --platform=linux/amd64 alpine\n";
    let found: Vec<(&str, usize)> = run(src, opts(two_platforms()))
        .iter()
        .filter(|f| f.rule == "ArchSpecificBase")
        .map(|f| (f.rule, f.line))
        .collect();
    // The arm64v8 image, and the constant platform on the target stage (not on a helper).
    assert_eq!(found, [("ArchSpecificBase", 1), ("ArchSpecificBase", 3)]);
    assert!(run(src, opts(native()))
        .iter()
        .all(|f| f.rule != "ArchSpecificBase"));
}

#[test]
fn add_remote_without_checksum() {
    let src = "FROM a\nADD https://x/tool /tool\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://x/t2 /t2\nADD https://github.com/a/b.git#v1 /src\nADD local.tar /\n";
    assert_eq!(rules(src), [("AddRemoteWithoutChecksum", 2)]);
}

#[test]
fn own_rules_link_to_a_doc_page_in_the_repository() {
    let src = "FROM arm64v8/alpine AS a\nRUN make\nADD https://x/y /y\n";
    let found = run(src, opts(two_platforms()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let own: Vec<&Finding> = found
        .iter()
        .filter(|f| f.url.starts_with("docs/"))
        .collect();
    assert_eq!(own.len(), 3, "{found:?}");
    for f in own {
        let page = std::fs::read_to_string(root.join(&f.url)).expect("doc page exists");
        assert!(page.starts_with(&format!("# {}", f.rule)), "{}", f.url);
    }
}
