//! The cases where the frontend used to differ from BuildKit (issue 15), one test each.

use std::collections::BTreeMap;

use manifold_dockerfile::ast::{Command, Kind};
use manifold_dockerfile::plan::{Op, Origin};
use manifold_dockerfile::{parse, parse_bytes, plan, BuildPlan, Dockerfile, PlanOptions};
use oci::Platform;

fn opts() -> PlanOptions {
    PlanOptions {
        target: None,
        platforms: vec![Platform::new("linux", "amd64", "")],
        build_platform: Platform::new("linux", "amd64", ""),
        build_args: BTreeMap::new(),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    }
}

fn df(src: &str) -> Dockerfile {
    parse(src, "Dockerfile").unwrap_or_else(|e| panic!("parses: {e}"))
}

fn planned(src: &str) -> BuildPlan {
    plan(&df(src), &opts()).unwrap_or_else(|e| panic!("plans: {e}"))
}

fn plan_err(src: &str) -> String {
    match parse(src, "Dockerfile").and_then(|d| plan(&d, &opts())) {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(e) => e.to_string(),
    }
}

fn names(d: &Dockerfile) -> Vec<&'static str> {
    d.instructions.iter().map(|i| i.kind.name()).collect()
}

#[test]
fn escaped_escape_at_end_of_line_ends_the_instruction() {
    // BuildKit's trailing-backslash behaviour (docker/for-win#5254).
    let d = df("FROM a\nENV C=trailing\\\\\nCMD echo hi\n");
    assert_eq!(names(&d), ["FROM", "ENV", "CMD"]);
    let d = df("# escape=`\nFROM a\nRUN dir C:\\Windows\\System32\\ ``\nRUN echo next\n");
    assert_eq!(names(&d), ["FROM", "RUN", "RUN"]);
    let d = df("FROM a\nRUN dir C:\\\\Windows\\\\System32\\\\\nCMD [\"x\"]\n");
    assert_eq!(names(&d), ["FROM", "RUN", "CMD"]);
    // A single escape still continues, also on a line of its own.
    let d = df("FROM a\nRUN a \\\n  b \\\n\\\n  c\nUSER x\n");
    assert_eq!(names(&d), ["FROM", "RUN", "USER"]);
}

#[test]
fn mount_values_with_variables_expand_in_the_stage_scope() {
    let p = planned(
        "FROM alpine AS src\nFROM alpine\nARG T=cache\nENV RO=false TGT=/c\nARG REQ=true\n\
         RUN --mount=type=$T,target=$TGT,ro=$RO,sharing=${SH:-locked} --mount=type=secret,id=s,required=$REQ true\n",
    );
    let steps = &p.stages.last().expect("stage").body.steps;
    let Some(Op::Run { mounts, .. }) = steps.iter().map(|s| &s.op).next_back() else {
        panic!("RUN expected")
    };
    assert_eq!(format!("{:?}", mounts[0].kind), "Cache");
    assert_eq!(mounts[0].target, "/c");
    assert!(!mounts[0].readonly);
    assert_eq!(mounts[0].sharing.as_deref(), Some("locked"));
    assert!(mounts[1].required);
    // Expanded values are validated like written ones.
    assert!(
        plan_err("FROM a\nARG T=nfs\nRUN --mount=type=$T,target=/x true\n")
            .contains("unsupported mount type \"nfs\"")
    );
    // `from` refuses variables at parse time, as BuildKit does.
    let e =
        parse("FROM a\nARG S=b\nRUN --mount=from=$S,target=/x true\n", "D").expect_err("from=$VAR");
    assert!(e
        .to_string()
        .contains("'from' doesn't support variable expansion"));
    // A mount from a stage, across stages (testMountEnvAcrossStages).
    let p = planned(
        "FROM alpine AS base\nENV DIR=/cache\nFROM base\nRUN --mount=type=cache,target=$DIR,id=$DIR true\n",
    );
    let Some(Op::Run { mounts, .. }) = p
        .stages
        .last()
        .and_then(|s| s.body.steps.last())
        .map(|s| &s.op)
    else {
        panic!("RUN expected")
    };
    assert_eq!(mounts[0].target, "/cache");
    assert_eq!(mounts[0].id.as_deref(), Some("/cache"));
}

#[test]
fn add_unpack_and_flag_list() {
    let d = df("FROM a\nADD --unpack=true app.tar.gz /srv/\nADD --unpack --link --exclude=*.md --chmod=644 --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://x/y.tgz /z\n");
    let Kind::Add(c) = &d.instructions[1].kind else {
        panic!("ADD")
    };
    assert_eq!(c.unpack, Some(true));
    // The default behaviour is supported; the rest is refused with a clear message.
    assert!(plan(&df("FROM a\nADD --unpack=true app.tar.gz /srv/\n"), &opts()).is_ok());
    assert!(plan_err("FROM a\nADD --unpack https://x/y.tgz /z\n").contains("not supported yet"));
    assert!(plan_err("FROM a\nADD --unpack=false app.tar /z\n").contains("not supported yet"));
    let e = parse("FROM a\nRUN --device=/dev/fuse true\n", "D").expect_err("device");
    assert!(
        e.to_string().contains("RUN --device is not supported yet"),
        "{e}"
    );
    let e = parse("FROM a\nCOPY --unpack a b\n", "D").expect_err("COPY --unpack");
    assert!(
        e.to_string().contains("unknown flag --unpack for COPY"),
        "{e}"
    );
    let e = parse("FROM a\nADD --parents a b\n", "D").expect_err("ADD --parents");
    assert!(
        e.to_string().contains("--parents is only valid for COPY"),
        "{e}"
    );
}

#[test]
fn non_utf8_bytes_are_accepted() {
    let mut bytes = b"FROM alpine\n# caf\xe9 in Latin-1\nLABEL x=\"\xff\"\nRUN true\n".to_vec();
    let d = parse_bytes(bytes.clone(), "D").expect("BuildKit accepts any bytes");
    assert_eq!(names(&d), ["FROM", "LABEL", "RUN"]);
    bytes.truncate(0);
    bytes.extend_from_slice("FROM a\nRUN echo ü\n".as_bytes());
    let d = parse_bytes(bytes, "D").expect("UTF-8");
    assert_eq!(
        d.instructions[1].kind,
        Kind::Run(manifold_dockerfile::ast::Run {
            mounts: vec![],
            network: None,
            security: None,
            command: Command::Shell("echo ü".into()),
            heredocs: vec![],
        })
    );
}

#[test]
fn a_chain_of_ten_thousand_stages_plans_without_recursion() {
    let mut src = String::from("FROM alpine AS s0\n");
    for i in 1..10_000 {
        src.push_str(&format!("FROM s{} AS s{i}\nRUN echo {i}\n", i - 1));
    }
    // Run on a small stack: recursion per stage would overflow it.
    let p = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || plan(&df(&src), &opts()).map(|p| p.stages.len()))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert_eq!(p.expect("plans"), 10_000);
}

#[test]
fn invalid_files_buildkit_rejects() {
    assert!(plan_err("FROM a\nCOPY https://example.com/x /x\n")
        .contains("source can't be a URL for COPY"));
    for bad in ["64a", "10000", "8"] {
        assert!(
            plan_err(&format!("FROM a\nCOPY --chmod={bad} x /x\n"))
                .contains("invalid chmod parameter"),
            "{bad}"
        );
    }
    for good in ["0755", "7777", "u+x", "go-w,a+r", "u=rwx"] {
        assert!(
            plan(&df(&format!("FROM a\nCOPY --chmod={good} x /x\n")), &opts()).is_ok(),
            "{good}"
        );
    }
    assert!(plan_err("FROM a\nADD --checksum=sha256:00 local.tar /x\n")
        .contains("checksum requires HTTP(S) or Git sources"));
    assert!(plan_err("FROM a\nEXPOSE 80000\n").contains("invalid containerPort: 80000"));
    assert!(plan(
        &df("FROM a\nEXPOSE 80 443/tcp 53/udp 8000-8010 127.0.0.1:80:80\n"),
        &opts()
    )
    .is_ok());
    let mut o = opts();
    o.target = Some("x".into());
    let later = plan(&df("FROM a AS x\nCOPY --from=y /a /a\nFROM a AS y\n"), &o);
    assert!(later.expect_err("later stage").to_string().contains(
        "cannot copy from stage \"y\", it needs to be defined before current stage \"x\""
    ));
    assert!(
        plan_err("FROM a AS s\nARG F=s\nFROM a\nCOPY --from=$F /a /a\n")
            .contains("variable expansion is not supported for --from")
    );
    // FROM compares with stage names exactly: `Build` is an (invalid) image reference.
    assert!(plan_err("FROM alpine AS build\nFROM Build\n")
        .contains("invalid base image reference \"Build\""));
    // COPY --from is case-insensitive, as in BuildKit.
    let p = planned("FROM alpine AS build\nFROM alpine\nCOPY --from=BUILD /a /a\n");
    let Some(Op::Copy { from, .. }) = p
        .stages
        .last()
        .and_then(|s| s.body.steps.last())
        .map(|s| &s.op)
    else {
        panic!("COPY expected")
    };
    assert!(matches!(from, Origin::Stage { .. }));
}

#[test]
fn build_contexts_replace_stages_froms_and_from_flags() {
    let mut o = opts();
    for (name, r) in [
        ("alpine", "ctx.example/alpine:1"),
        ("tools", "ctx.example/tools:1"),
        ("extra", "oci-layout:///l@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
    ] {
        o.contexts
            .insert(manifold_dockerfile::plan::context_name(name), r.into());
    }
    let src = "FROM busybox AS tools\nRUN never-runs\n\n\
               FROM docker.io/library/alpine:latest\n\
               COPY --from=tools /t /t\nCOPY --from=extra /e /e\n\
               RUN --mount=from=extra,target=/m true\n";
    let p = plan(&df(src), &o).unwrap_or_else(|e| panic!("plans: {e}"));
    let target = p.stage(&p.platforms[0].target).unwrap();
    assert_eq!(
        target.body.base,
        manifold_dockerfile::plan::Base::Image {
            reference: "ctx.example/alpine:1".into()
        }
    );
    let mut froms = Vec::new();
    for st in &target.body.steps {
        match &st.op {
            Op::Copy { from, .. } => froms.push(from.clone()),
            Op::Run { mounts, .. } => froms.extend(mounts.iter().filter_map(|m| m.from.clone())),
            _ => {}
        }
    }
    // The stage `tools` is replaced whole: its RUN is not planned.
    let Origin::Stage { key, .. } = &froms[0] else {
        panic!("{froms:?}")
    };
    let tools = p.stage(key).unwrap();
    assert!(tools.body.steps.is_empty(), "{:?}", tools.body.steps);
    assert_eq!(
        tools.body.base,
        manifold_dockerfile::plan::Base::Image {
            reference: "ctx.example/tools:1".into()
        }
    );
    for f in &froms[1..] {
        assert!(
            matches!(f, Origin::Image { reference } if reference.starts_with("oci-layout:///l@")),
            "{f:?}"
        );
    }
}
