//! End-to-end: what real builds showed (issue 17): steps that change nothing are empty history
//! entries docker accepts, step output streams live and in order, proxy build args reach RUN and
//! stay out of the image, the first failure stops every platform, and fully cached rebuilds
//! reproduce the previous image byte for byte.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A registry holding the busybox fixture as REG/base/busybox:1.
fn base() -> Option<(Registry, String)> {
    registry_with_busybox(&["amd64", "arm64"])
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("Dockerfile"), dockerfile).unwrap();
    t
}

/// The config of `tag` for `platform` in the store at `root`.
fn config(root: &Path, tag: &str, platform: &str) -> serde_json::Value {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("oci");
    ok(
        root,
        &[
            "cp",
            "--platform",
            platform,
            &format!("store:{tag}"),
            &format!("oci:{}:x", dir.display()),
        ],
    );
    let blob = |d: &str| layout_json(&dir, d);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut m = blob(index["manifests"][0]["digest"].as_str().unwrap());
    if m["manifests"].is_array() {
        m = blob(m["manifests"][0]["digest"].as_str().unwrap());
    }
    blob(m["config"]["digest"].as_str().unwrap())
}

#[test]
fn a_run_that_changes_nothing_is_an_empty_history_entry_fresh_and_cached() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&format!(
        "FROM {base}\nRUN echo hi > /hi\nRUN [\"/bin/sh\", \"-c\", \"test -s /hi\"]\nENV A=1\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let c = ctx.path().to_str().unwrap();
    let args = [
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        "localhost/empty:1",
        c,
    ];
    ok(s, &args);
    let log = String::from_utf8_lossy(&run(s, &args).stderr).to_string();
    assert!(log.contains("CACHED"), "{log}");
    // Base, fresh and cached images: every one keeps docker's invariant.
    assert!(check_empty_layers(s) >= 3);
    for p in ["linux/amd64", "linux/arm64"] {
        let cfg = config(s, "localhost/empty:1", p);
        let test_step = cfg["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["created_by"].as_str().unwrap_or("").contains("test -s"))
            .unwrap_or_else(|| panic!("{cfg}"));
        assert_eq!(test_step["empty_layer"], true, "{cfg}");
    }
}

#[test]
fn fully_cached_rebuilds_give_the_same_digests_and_push_nothing() {
    let Some((reg, base)) = base() else { return };
    let ctx = context(&format!(
        "FROM {base}\nENV A=1\nRUN echo hi > /hi\nRUN [\"/bin/sh\", \"-c\", \"test -s /hi\"]\nWORKDIR /app\nCMD [\"cat\", \"/hi\"]\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let tag = format!("{}/app/stable:1", reg.addr);
    let args = [
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "--push",
        "--load",
        ctx.path().to_str().unwrap(),
    ];
    let first = ok(s, &args);
    let cfg_first = config(s, &tag, "linux/arm64");
    // Another second on the clock: only the cache may decide the times.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run(s, &args);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert_eq!(
        first,
        String::from_utf8_lossy(&out.stdout),
        "index and platform digests\n{log}"
    );
    assert_eq!(cfg_first, config(s, &tag, "linux/arm64"));
    assert!(
        log.contains("(0 blobs, 0B,"),
        "the unchanged push moved blobs:\n{log}"
    );
}

#[test]
fn proxy_build_args_and_docker_config_proxies_reach_run_and_stay_out_of_the_image() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&format!(
        "FROM {base}\nRUN env | grep -i _proxy= | sort > /proxies\n"
    ));
    let docker_cfg = tempfile::tempdir().unwrap();
    fs::write(
        docker_cfg.path().join("config.json"),
        r#"{"proxies":{"default":{"httpProxy":"http://cfg.example:1","httpsProxy":"http://cfg.example:2","noProxy":"localhost,.internal"}}}"#,
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    let out = tempfile::tempdir().unwrap();
    let fs_dir = out.path().join("fs");
    let res = run_with(
        s,
        &[("DOCKER_CONFIG", docker_cfg.path().to_str().unwrap())],
        None,
        &[
            "build",
            "--build-arg",
            "HTTPS_PROXY=http://arg.example:3128",
            "--build-arg",
            "ftp_proxy=http://ftp.example:21",
            "-t",
            "localhost/proxied:1",
            "-o",
            &format!("type=local,dest={}", fs_dir.display()),
            "--load",
            ctx.path().to_str().unwrap(),
        ],
    );
    let log = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{log}");
    assert!(!log.contains("not consumed"), "{log}");
    let seen = fs::read_to_string(fs_dir.join("proxies")).unwrap();
    for want in [
        "HTTPS_PROXY=http://arg.example:3128",
        // The config's https proxy fills only the spelling --build-arg left unset, as docker's CLI.
        "https_proxy=http://cfg.example:2",
        "HTTP_PROXY=http://cfg.example:1",
        "http_proxy=http://cfg.example:1",
        "NO_PROXY=localhost,.internal",
        "no_proxy=localhost,.internal",
        "ftp_proxy=http://ftp.example:21",
    ] {
        assert!(
            seen.lines().any(|l| l == want),
            "{want} missing in:\n{seen}"
        );
    }
    let cfg = config(s, "localhost/proxied:1", &platform_here()).to_string();
    for secret in ["example", "PROXY="] {
        assert!(!cfg.contains(secret), "{secret} in the config: {cfg}");
    }
}

fn platform_here() -> String {
    if cfg!(target_arch = "x86_64") {
        "linux/amd64".into()
    } else {
        "linux/arm64".into()
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn the_first_failure_stops_every_platform_and_kills_their_steps() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let Some((_reg, base)) = base() else { return };
    // amd64 sleeps (after opening the gate); arm64 waits for the gate, then fails.
    let marker = format!("9{}7", std::process::id());
    let ctx = context(&format!(
        "FROM {base}\nRUN --mount=type=cache,id=gate,target=/gate,sharing=shared \
         if [ \"$(uname -m)\" = x86_64 ]; then touch /gate/open; exec sleep {marker}; \
         else while [ ! -f /gate/open ]; do sleep 0.1; done; echo arm64 broke >&2; exit 3; fi\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", store.path())
        .args([
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "localhost/stops:1",
            ctx.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Only a guard against hanging on the sleep: the build should end as soon as arm64 fails.
    let guard = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if guard.elapsed() > std::time::Duration::from_secs(300) {
            let _ = child.kill();
            panic!(
                "the build kept running after arm64 failed: {:?}",
                processes_with(&marker)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{log}");
    // The sleeping step is gone with the build.
    let mut left = processes_with(&marker);
    for _ in 0..10 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = processes_with(&marker);
    }
    assert!(left.is_empty(), "still running: {left:?}\n{log}");
    // The failure is printed first, then what it stopped; nothing was named.
    let failed = log
        .find("ERROR")
        .unwrap_or_else(|| panic!("no ERROR line:\n{log}"));
    assert!(log[failed..].contains("arm64 broke"), "{log}");
    let cancelled = log
        .find("CANCELED")
        .unwrap_or_else(|| panic!("no CANCELED line:\n{log}"));
    assert!(failed < cancelled, "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("[linux/amd64]") && l.contains("CANCELED")),
        "{log}"
    );
    let images = ok(store.path(), &["images"]);
    assert!(!images.contains("stops"), "{images}");
    check_empty_layers(store.path());
}

#[test]
fn step_output_streams_live_in_write_order_with_its_platform_and_step() {
    use std::io::BufRead;
    let Some((_reg, base)) = base() else { return };
    // The step prints on both streams, then waits for the test to release it: its lines must
    // arrive while it waits.
    let ctx = context(&format!(
        "FROM {base}\nRUN --mount=type=bind,target=/ctx echo out-1; echo err-2 >&2; echo out-3; \
         while [ ! -f /ctx/release ]; do sleep 0.1; done; echo after-release\n"
    ));
    let release = ctx.path().join("release");
    let store = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", store.path())
        .args([
            "build",
            "--platform",
            "linux/amd64",
            "-t",
            "localhost/live:1",
            ctx.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Hang guard only: without live output the step would wait for ever.
    let guard_release = release.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        let waited = done_rx.recv_timeout(std::time::Duration::from_secs(300));
        if waited == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            fs::write(&guard_release, "").unwrap();
            return true;
        }
        false
    });
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.ends_with("| out-3") {
            // Seen while the step still runs: it has not printed its end line.
            assert!(
                !seen
                    .iter()
                    .any(|l: &String| l.contains("RUN") && ends_with_seconds(l)),
                "{seen:#?}"
            );
            fs::write(&release, "").unwrap();
        }
        seen.push(line);
    }
    drop(done_tx);
    assert!(
        !guard.join().unwrap(),
        "output arrived only after the step:\n{seen:#?}"
    );
    assert!(child.wait().unwrap().success(), "{seen:#?}");
    assert!(check_empty_layers(store.path()) > 0);
    let pos = |what: &str| {
        seen.iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what}:\n{seen:#?}"))
    };
    // Announced, then the output in the order written, across stdout and stderr.
    let started = pos("RUN --mount");
    assert!(!seen[started].contains("CACHED"), "{seen:#?}");
    assert!(pos("pulled ") < started, "{seen:#?}");
    let order = [
        pos("| out-1"),
        pos("| err-2"),
        pos("| out-3"),
        pos("| after-release"),
    ];
    assert!(started < order[0] && order.is_sorted(), "{seen:#?}");
    assert!(
        seen[order[1]]
            .trim_start()
            .starts_with("linux/amd64 stage-0 1/1 |"),
        "{seen:#?}"
    );
}

#[test]
fn build_platform_stages_say_which_target_they_serve_and_rawjson_has_steps_and_output() {
    let Some((_reg, base)) = base() else { return };
    let ctx = context(&format!(
        "FROM --platform=$BUILDPLATFORM {base} AS tools\nARG TARGETARCH\nRUN echo for-$TARGETARCH; echo on-stderr >&2\n\
         FROM --platform=$BUILDPLATFORM {base} AS shared\nRUN echo once; echo once > /once\n\
         FROM {base}\nCOPY --from=tools /etc/passwd /copied\nCOPY --from=shared /once /once\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let out = run(
        store.path(),
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--progress",
            "rawjson",
            "-t",
            "localhost/json:1",
            ctx.path().to_str().unwrap(),
        ],
    );
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == kind).collect()
    };
    let starts = of("start");
    assert!(
        starts
            .iter()
            .any(|e| e["platform"] == "linux/amd64 for linux/arm64"
                && e["instruction"].as_str().unwrap().starts_with("RUN echo")
                && e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{log}"
    );
    let outputs = of("output");
    for (platform, line, stream) in [
        ("linux/amd64 for linux/arm64", "for-arm64", "combined"),
        ("linux/amd64", "for-amd64", "combined"),
        ("linux/amd64", "on-stderr", "combined"),
    ] {
        assert!(
            outputs.iter().any(|e| e["platform"] == platform
                && e["line"] == line
                && e["stream"] == stream
                && e["stage"] == "tools"
                && e["step"].as_u64().is_some()
                && e["timestamp"].as_str().is_some()),
            "{platform} {line}:\n{log}"
        );
    }
    // One instance for both targets says so.
    assert!(
        outputs.iter().any(|e| e["line"] == "once"
            && e["platform"] == "linux/amd64 for linux/amd64, linux/arm64"
            && e["stage"] == "shared"),
        "{log}"
    );
    assert!(!of("done").is_empty(), "{log}");
}

/// A step's end line ends with its duration, `0.52s`.
fn ends_with_seconds(l: &str) -> bool {
    l.rsplit(' ')
        .next()
        .and_then(|w| w.strip_suffix('s'))
        .is_some_and(|n| n.parse::<f64>().is_ok())
}
