//! Hostile Dockerfiles built with the real binary: a RUN step tries to reach the host through
//! mount sources and targets, to keep what it wrote through a writable bind, to leave secrets
//! or mountpoint stubs behind. Each asserts the host stays out of reach and, where manifold
//! refuses, that the error says why.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64"])
}

/// Builds `df` into a local directory; returns (success, stderr).
fn build(
    store: &Path,
    ctx: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let dest = format!("type=local,dest={}", out.display());
    let mut args = vec!["build"];
    args.extend(extra);
    args.extend(["-o", &dest, ctx.to_str().unwrap()]);
    let res = run_with(store, env, None, &args);
    (
        res.status.success(),
        String::from_utf8_lossy(&res.stderr).into_owned(),
    )
}

/// A directory on the host a step must not reach, holding `canary`.
fn host_canary() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("hostile-canary-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::write(t.path().join("canary"), "HOST-SECRET-CANARY\n").unwrap();
    t
}

#[test]
fn bind_sources_resolve_inside_their_own_roots() {
    let Some((_reg, base)) = base() else { return };
    let host = host_canary();
    let h = host.path().display().to_string();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    // Symlinks made by an earlier RUN resolve inside the stage: /hostroot/etc is its own /etc.
    let df = format!(
        "FROM {base} AS evil\nRUN ln -s / /hostroot && ln -s ../../../../../.. /up\n\
         FROM {base}\n\
         RUN --mount=type=bind,from=evil,source=/hostroot/etc,target=/m cmp /m/passwd /etc/passwd && echo same > /own-etc\n\
         RUN --mount=type=bind,from=evil,source=/up/etc,target=/m cmp /m/passwd /etc/passwd && echo same > /up-etc\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let out = t.path().join("ok");
    let (ok, err) = build(store.path(), ctx.path(), &out, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(read(&out.join("own-etc")).trim(), "same");
    assert_eq!(read(&out.join("up-etc")).trim(), "same");

    // Each of these reached the host before: read it, write to it, mount its root.
    let attacks = [
        (
            format!("RUN --mount=type=bind,from=evil,source=/hostroot{h},target=/m cat /m/canary"),
            "no such file or directory",
        ),
        (
            format!("RUN --mount=type=bind,from=evil,source=/hostroot{h},target=/m,rw touch /m/planted"),
            "no such file or directory",
        ),
        (
            format!("RUN --mount=type=bind,from=evil,source=../../../../../../..{h},target=/m cat /m/canary"),
            "climbs out of its root",
        ),
        (
            format!("RUN --mount=type=bind,from={base},source=../../../../../../..{h},target=/m,rw touch /m/planted"),
            "climbs out of its root",
        ),
    ];
    for (i, (line, want)) in attacks.iter().enumerate() {
        let df = format!(
            "FROM {base} AS evil\nRUN ln -s / /hostroot && ln -s ../../../../../.. /up\nFROM {base}\n{line}\n"
        );
        let ctx = context(&[("Dockerfile", &df)]);
        let (ok, err) = build(
            store.path(),
            ctx.path(),
            &t.path().join(format!("o{i}")),
            &[],
            &[],
        );
        assert!(!ok, "{line}: the build should have been refused");
        assert!(
            err.contains("mount source") && err.contains(want),
            "{line}: {err}"
        );
        assert!(!err.contains("HOST-SECRET-CANARY"), "{line}: {err}");
    }
    assert!(
        !host.path().join("planted").exists(),
        "a step wrote on the host"
    );
    assert_eq!(read(&host.path().join("canary")), "HOST-SECRET-CANARY\n");

    // A symlink in the build context is refused too.
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN --mount=type=bind,source=hostroot{h},target=/m cat /m/canary\n"),
    )]);
    std::os::unix::fs::symlink("/", ctx.path().join("hostroot")).unwrap();
    let (ok, err) = build(store.path(), ctx.path(), &t.path().join("ctx"), &[], &[]);
    assert!(!ok && err.contains("outside the build context"), "{err}");
}

#[test]
fn mount_targets_cannot_follow_a_symlink_to_the_host() {
    let Some((_reg, base)) = base() else { return };
    let host = host_canary();
    let h = host.path().display().to_string();
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    for line in [
        "RUN --mount=type=tmpfs,target=/out/made true",
        "RUN --mount=type=secret,id=tok,target=/out/secret-file true",
        "RUN --mount=type=bind,source=.,target=/out/made true",
    ] {
        let df = format!("FROM {base}\nRUN ln -s {h} /out\n{line}\n");
        let ctx = context(&[("Dockerfile", &df)]);
        let (ok, err) = build(
            store.path(),
            ctx.path(),
            &t.path().join("o"),
            &["--secret", "id=tok,env=TOK"],
            &[("TOK", "x")],
        );
        assert!(
            !ok && err.contains("resolve inside the step's root"),
            "{line}: {err}"
        );
    }
    // Inside the root the same link works: the mountpoint is made in the root's /tmp.
    let df = format!("FROM {base}\nRUN ln -s {h} /out && mkdir -p {h}\nRUN --mount=type=tmpfs,target=/out/made touch /out/made/x\n");
    let ctx = context(&[("Dockerfile", &df)]);
    let (ok, err) = build(store.path(), ctx.path(), &t.path().join("o"), &[], &[]);
    assert!(ok, "{err}");
    assert!(
        !host.path().join("made").exists(),
        "a mountpoint was made on the host"
    );
    assert!(
        !host.path().join("secret-file").exists(),
        "a mountpoint was made on the host"
    );
}

#[test]
fn writable_binds_are_copy_on_write_and_snapshots_stay_intact() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let s = store.path().display().to_string();
    let df = format!(
        "FROM {base} AS st\nRUN mkdir /data && echo orig > /data/f && ln -s / /hostroot\n\
         FROM {base}\n\
         RUN --mount=type=bind,from=st,source=/data,target=/m,rw sh -c 'echo changed > /m/f && cat /m/f > /seen'\n\
         RUN --mount=type=bind,from=st,source=/data,target=/m cat /m/f > /after\n\
         RUN --mount=type=bind,from={base},source=/bin,target=/m,rw sh -c 'echo planted > /m/busybox; echo planted > /m/new'\n\
         RUN --mount=type=bind,rw,target=/ctx sh -c 'echo changed > /ctx/in.txt && touch /ctx/new && cat /ctx/in.txt > /ctx-seen'\n\
         RUN --mount=type=bind,from=st,source=/hostroot{s},target=/m,rw sh -c 'for d in $(find /m -type d); do echo planted > $d/planted; done; true'\n\
         RUN ls /bin/busybox > /still-runs\n"
    );
    let ctx = context(&[("Dockerfile", &df), ("in.txt", "original\n")]);
    let out = t.path().join("o");
    let (ok, err) = build(store.path(), ctx.path(), &out, &[], &[]);
    // The last bind names the store on the host, which is not inside the stage.
    assert!(!ok && err.contains("no such file or directory"), "{err}");
    let df = df.replace(
        &format!("RUN --mount=type=bind,from=st,source=/hostroot{s}"),
        "RUN --mount=type=bind,from=st,source=/hostroot/",
    );
    let ctx = context(&[("Dockerfile", &df), ("in.txt", "original\n")]);
    let (ok, err) = build(store.path(), ctx.path(), &out, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        read(&out.join("seen")).trim(),
        "changed",
        "the step sees its writes"
    );
    assert_eq!(
        read(&out.join("after")).trim(),
        "orig",
        "and nothing is kept"
    );
    assert_eq!(read(&out.join("ctx-seen")), "changed\n");
    assert_eq!(
        read(&ctx.path().join("in.txt")),
        "original\n",
        "the context is untouched"
    );
    assert!(!ctx.path().join("new").exists());
    assert!(
        !out.join("m").exists(),
        "the mountpoint stub is not in the image"
    );
    let planted = walk(store.path())
        .into_iter()
        .find(|p| p.ends_with("planted"));
    assert!(
        planted.is_none(),
        "a step wrote into the store: {planted:?}"
    );
    // A later, unrelated build from the same base runs the real busybox.
    let df2 = format!("FROM {base}\nRUN cat /bin/busybox | wc -c > /size && busybox true\n");
    let ctx2 = context(&[("Dockerfile", &df2)]);
    let out2 = t.path().join("o2");
    let (ok, err) = build(store.path(), ctx2.path(), &out2, &[], &[]);
    assert!(ok, "{err}");
    assert!(read(&out2.join("size")).trim().parse::<u64>().unwrap() > 1000);
    let fsck = ok_fsck(store.path());
    assert!(!fsck.contains("problem"), "{fsck}");
}

fn ok_fsck(store: &Path) -> String {
    ok(store, &["fsck"])
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn identical_layers_stack() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let df = format!(
        "FROM {base}\nRUN touch -d '2020-01-01 00:00:00' /stamp\nRUN touch -d '2020-01-01 00:00:00' /stamp\nRUN ls /stamp > /listed\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let out = t.path().join("o");
    let (ok, err) = build(store.path(), ctx.path(), &out, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(read(&out.join("listed")).trim(), "/stamp");
}

#[test]
fn secrets_never_touch_a_disk_and_stubs_are_removed() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    // manifold's own temporary directory: nothing holding the secret may be left in it.
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let value = "s3cr3t-from-env-7f3a";
    let df = format!(
        "FROM {base}\n\
         RUN --mount=type=secret,id=tok sh -c 'wc -c < /run/secrets/tok > /len && stat -c %a:%u /run/secrets/tok > /mode'\n\
         RUN --mount=type=secret,id=tok,target=/deep/er/tok,mode=0440,uid=7 stat -c %a:%u /deep/er/tok > /mode2\n\
         RUN --mount=type=cache,target=/var/cache/thing/x true\n\
         RUN --mount=type=tmpfs,target=/scratch/deep true\n\
         RUN --mount=type=bind,source=in.txt,target=/opt/in.txt cat /opt/in.txt > /bound\n"
    );
    let ctx = context(&[("Dockerfile", &df), ("in.txt", "x\n")]);
    let out = t.path().join("o");
    let tmp_s = tmp.to_str().unwrap();
    let env = [("TOK", value), ("TMPDIR", tmp_s)];
    let (ok, err) = build(
        store.path(),
        ctx.path(),
        &out,
        &["--secret", "id=tok,env=TOK"],
        &env,
    );
    assert!(ok, "{err}");
    assert_eq!(read(&out.join("len")).trim(), value.len().to_string());
    assert_eq!(read(&out.join("mode")).trim(), "400:0");
    assert_eq!(read(&out.join("mode2")).trim(), "440:7");
    for stub in [
        "run/secrets",
        "deep",
        "var/cache/thing",
        "scratch",
        "opt/in.txt",
    ] {
        assert!(
            !out.join(stub).exists(),
            "the mountpoint stub /{stub} is in the image"
        );
    }
    assert_eq!(read(&out.join("bound")), "x\n");
    // A failing step with the secret: nothing left either.
    let df = format!("FROM {base}\nRUN --mount=type=secret,id=tok false\n");
    let ctx = context(&[("Dockerfile", &df)]);
    let (ok, _) = build(
        store.path(),
        ctx.path(),
        &t.path().join("o2"),
        &["--secret", "id=tok,env=TOK"],
        &env,
    );
    assert!(!ok);
    // grep -r: fast where a byte-by-byte scan in a debug build is not.
    let found = std::process::Command::new("grep")
        .args(["-rlF", "-D", "skip", "--", value])
        .arg(&tmp)
        .arg(store.path())
        .output()
        .unwrap();
    let holding = String::from_utf8_lossy(&found.stdout).into_owned();
    // 1: searched everything, found nothing (2 would be an error, 0 a match).
    assert_eq!(
        found.status.code(),
        Some(1),
        "grep: {holding} {}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert!(holding.is_empty(), "the secret is on disk in {holding:?}");
    let left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn prune_removes_what_a_killed_build_left_and_nothing_a_live_one_uses() {
    let Some((_reg, base)) = base() else { return };
    let store = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    // A state directory of a live process (this test) stays.
    let live = tmp.join("manifold-run-live");
    fs::create_dir(&live).unwrap();
    fs::write(
        live.join("owner"),
        format!(
            "{} {}\n",
            std::process::id(),
            fs::read_to_string("/proc/self/stat")
                .unwrap()
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(19)
                .unwrap()
        ),
    )
    .unwrap();
    // An older version's step directory.
    fs::create_dir_all(store.path().join("build/tmp/run-old/upper")).unwrap();
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN sleep 3\n"))]);
    let mut child = std::process::Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", store.path())
        .env("TMPDIR", &tmp)
        .args(["build", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let names = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Wait until the step runs: its step directory and sandbox state exist.
    let running = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        names(&store.path().join("build/tmp"))
            .iter()
            .any(|n| n.starts_with("run-") && n != "run-old")
            && names(&tmp)
                .iter()
                .any(|n| n.starts_with("manifold-run-") && n != "manifold-run-live")
    });
    assert!(running, "the RUN step never started");
    child.kill().unwrap();
    child.wait().unwrap();
    let tmp_s = tmp.to_str().unwrap();
    let out = run_with(store.path(), &[("TMPDIR", tmp_s)], None, &["prune"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("step directories left by killed builds"),
        "{text}"
    );
    assert_eq!(names(&store.path().join("build/tmp")), Vec::<String>::new());
    assert_eq!(names(&tmp), vec!["manifold-run-live".to_string()]);
    assert_eq!(names(&store.path().join("ingest")), Vec::<String>::new());
}

#[test]
fn emulated_steps_get_the_same_mount_rules() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let base = format!("{}/base/busybox:2", reg.addr);
    ok(
        t.path(),
        &["cp", &format!("oci:{}:latest", layout.display()), &base],
    );
    let host = host_canary();
    let h = host.path().display().to_string();
    let store = tempfile::tempdir().unwrap();
    let df = format!(
        "FROM {base} AS evil\nRUN ln -s / /hostroot && mkdir /data && echo orig > /data/f\n\
         FROM {base}\n\
         RUN --mount=type=bind,from=evil,source=/hostroot/etc,target=/m cmp /m/passwd /etc/passwd && uname -m > /arch\n\
         RUN --mount=type=bind,from=evil,source=/data,target=/m,rw sh -c 'echo changed > /m/f && cat /m/f > /seen'\n\
         RUN --mount=type=bind,from=evil,source=/data,target=/m cat /m/f > /after\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let out = t.path().join("o");
    let (ok_, err) = build(
        store.path(),
        ctx.path(),
        &out,
        &["--platform", "linux/arm64"],
        &[],
    );
    assert!(ok_, "{err}");
    assert_eq!(read(&out.join("arch")).trim(), "aarch64");
    assert_eq!(read(&out.join("seen")).trim(), "changed");
    assert_eq!(read(&out.join("after")).trim(), "orig");
    let df = format!(
        "FROM {base} AS evil\nRUN ln -s / /hostroot\nFROM {base}\n\
         RUN --mount=type=bind,from=evil,source=/hostroot{h},target=/m,rw touch /m/planted\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let (ok_, err) = build(
        store.path(),
        ctx.path(),
        &t.path().join("o2"),
        &["--platform", "linux/arm64"],
        &[],
    );
    assert!(!ok_ && err.contains("no such file or directory"), "{err}");
    assert!(!host.path().join("planted").exists());
}
