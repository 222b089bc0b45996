//! Running commands in the sandbox on real busybox snapshots, natively and under QEMU.

mod common;

use std::fs;
use std::path::PathBuf;

use manifold_runtime::sandbox::{self, Network, RootFs, RunSpec};

/// A step's scratch space (upperdir and workdir) under target/, removed on drop.
struct Step {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

impl Step {
    fn new(platform: &str) -> Option<Step> {
        if !common::is_root() {
            return None;
        }
        let snaps = common::busybox_snapshots(platform)?;
        let base = common::repo_root().join("target/fixtures/steps");
        fs::create_dir_all(&base).unwrap();
        Some(Step {
            dir: tempfile::tempdir_in(base).unwrap(),
            lowers: snaps.into_iter().map(|s| s.path).collect(),
        })
    }
    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }
    fn rootfs(&self) -> RootFs {
        RootFs::Overlay {
            lowers: self.lowers.clone(),
            upper: self.upper(),
            work: self.dir.path().join("work"),
        }
    }
    fn spec(&self, argv: &[&str]) -> RunSpec {
        RunSpec::new(self.rootfs(), argv)
    }
    fn run(&self, argv: &[&str]) -> String {
        let out = sandbox::run(&self.spec(argv)).unwrap();
        assert!(out.success(), "{argv:?}: {} {}", out.code, out.tail);
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Can this machine run `platform` (for foreign ones: is QEMU registered)?
fn runnable(platform: &str) -> bool {
    match manifold_runtime::emulation::check(&oci::Platform::parse(platform).unwrap()) {
        Ok(_) => true,
        Err(e) => {
            common::skip(&format!("{e}"));
            false
        }
    }
}

#[test]
fn uname_reports_each_architecture() {
    for (platform, machine) in [
        ("linux/amd64", "x86_64"),
        ("linux/arm64", "aarch64"),
        ("linux/arm/v7", "armv7l"),
    ] {
        if !runnable(platform) {
            continue;
        }
        let Some(step) = Step::new(platform) else {
            return;
        };
        let out = sandbox::run(&step.spec(&["/bin/busybox", "uname", "-m"])).unwrap();
        eprintln!("{platform}: uname -m in {:?}", out.duration);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            machine,
            "{platform}"
        );
        // Nothing ran that changed anything, and the mountpoint stubs are gone again.
        assert_eq!(
            fs::read_dir(step.upper()).unwrap().count(),
            0,
            "{platform}: upperdir should be empty, has {:?}",
            fs::read_dir(step.upper())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn namespaces_and_minimal_system() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    assert_eq!(
        step.run(&["sh", "-c", "echo $$"]).trim(),
        "1",
        "PID 1 in a new PID namespace"
    );
    assert_eq!(step.run(&["hostname"]).trim(), "buildkitsandbox");
    let devs = step.run(&["ls", "/dev"]);
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(
            devs.split_whitespace().any(|x| x == d),
            "/dev lacks {d}: {devs}"
        );
    }
    assert_eq!(
        step.run(&[
            "sh",
            "-c",
            "echo hi > /dev/null && head -c 4 /dev/zero | wc -c"
        ])
        .trim(),
        "4"
    );
    assert!(step.run(&["cat", "/etc/hosts"]).contains("localhost"));
    assert!(step.run(&["ls", "/proc/self/"]).contains("status"));
    // Only the sandbox's own processes are visible.
    let ps = step.run(&["sh", "-c", "ls -d /proc/[0-9]* | wc -l"]);
    assert!(ps.trim().parse::<u32>().unwrap() <= 3, "{ps}");
    // /proc/sys is read-only (root could otherwise write host sysctls), secrets are masked.
    let out = sandbox::run(&step.spec(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/panic > /proc/sys/kernel/panic",
    ]))
    .unwrap();
    assert_ne!(out.code, 0);
    assert!(out.tail.contains("Read-only file system"), "{}", out.tail);
    for f in ["kcore", "keys", "timer_list"] {
        if std::path::Path::new("/proc").join(f).exists() {
            let n = step.run(&["sh", "-c", &format!("cat /proc/{f} | wc -c")]);
            assert_eq!(n.trim(), "0", "/proc/{f} is masked");
        }
    }
    // No CAP_SYS_ADMIN: root in the step cannot mount.
    let out = sandbox::run(&step.spec(&["mount", "-t", "tmpfs", "x", "/mnt"])).unwrap();
    assert_ne!(out.code, 0, "mount should be refused: {}", out.tail);
}

fn interfaces(step: &Step, network: Network) -> Vec<String> {
    let mut spec = step.spec(&["cat", "/proc/net/dev"]);
    spec.network = network;
    let out = sandbox::run(&spec).unwrap();
    assert!(out.success(), "{}", out.tail);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect()
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    assert_eq!(interfaces(&step, Network::None), ["lo"]);
    let host = interfaces(&step, Network::Host);
    assert!(
        host.len() > 1,
        "the host network has more than lo: {host:?}"
    );
    let mut spec = step.spec(&[
        "sh",
        "-c",
        "cat /sys/class/net/lo/operstate; ping -c1 -W2 127.0.0.1 >/dev/null && echo pong",
    ]);
    spec.network = Network::None;
    let out = sandbox::run(&spec).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pong"),
        "{}",
        out.tail
    );
}

#[test]
fn exit_code_and_output_tail_are_reported() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let spec = step.spec(&[
        "sh",
        "-c",
        "seq 1 5000; echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    let out = sandbox::run(&spec).unwrap();
    assert_eq!(out.code, 3);
    assert!(out.stdout.ends_with(b"5000\nto-stdout\n"));
    assert_eq!(out.stderr, b"to-stderr\n");
    assert!(
        out.tail.len() <= 4096 && out.tail.contains("to-stderr"),
        "{}",
        out.tail
    );
    assert!(!out.tail.contains("\n1\n2\n3\n"), "only the tail is kept");
    assert!(out.tail.ends_with("to-stdout\nto-stderr\n"), "{}", out.tail);
    let err = out.check(&spec.argv).unwrap_err().to_string();
    assert!(
        err.contains("exited with code 3") && err.contains("to-stderr"),
        "{err}"
    );
    // PID 1 ignores signals from inside its namespace; a killed child shows as 128 + 9.
    let out = sandbox::run(&step.spec(&["sh", "-c", "kill -9 $$; echo survived"])).unwrap();
    assert_eq!((out.code, out.stdout.as_slice()), (0, &b"survived\n"[..]));
    let out = sandbox::run(&step.spec(&["sh", "-c", "sleep 10 & kill -9 $!; wait $!"])).unwrap();
    assert_eq!(out.code, 137);
    // An argv[0] that does not exist is an error naming it.
    let err = sandbox::run(&step.spec(&["no-such-tool"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-tool"), "{err}");
}

#[test]
fn env_user_and_workdir_are_honored() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let mut spec = step.spec(&[
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $FOO; echo $HOME; echo $PATH",
    ]);
    spec.user = Some("65534".into());
    spec.workdir = "/work/deep/dir".into();
    spec.env = vec!["FOO=bar baz".into()];
    let out = sandbox::run(&spec).unwrap();
    assert!(out.success(), "{}", out.tail);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "65534",
            "65534",
            "/work/deep/dir",
            "bar baz",
            "/nonexistent",
            sandbox::DEFAULT_PATH
        ]
    );
    // By name, with an explicit group.
    let mut spec = step.spec(&["sh", "-c", "id -u; id -g"]);
    spec.user = Some("nobody:root".into());
    assert_eq!(
        String::from_utf8(sandbox::run(&spec).unwrap().stdout).unwrap(),
        "65534\n0\n"
    );
    // The workdir, created as docker does, is part of the step's changes.
    assert!(step.upper().join("work/deep/dir").is_dir());
    // A setup failure in the child comes back as an error that says what failed.
    let mut spec = step.spec(&["true"]);
    spec.workdir = "/etc/passwd/sub".into();
    let err = sandbox::run(&spec).unwrap_err().to_string();
    assert!(
        err.contains("creating workdir /etc/passwd/sub") && err.contains("Not a directory"),
        "{err}"
    );
    let mut spec = step.spec(&["true"]);
    spec.user = Some("nosuchuser".into());
    let err = sandbox::run(&spec).unwrap_err().to_string();
    assert!(
        err.contains("nosuchuser") && err.contains("/etc/passwd"),
        "{err}"
    );
}

#[test]
fn a_flattened_directory_works_without_overlay() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let flat = step.dir.path().join("flat");
    manifold_runtime::snapshot::flatten(&step.lowers, &flat).unwrap();
    let spec = RunSpec::new(
        RootFs::Dir(flat.clone()),
        &["sh", "-c", "uname -m > /tmp/m"],
    );
    let out = sandbox::run(&spec).unwrap();
    assert!(out.success(), "{}", out.tail);
    assert_eq!(fs::read_to_string(flat.join("tmp/m")).unwrap(), "x86_64\n");
    assert!(
        !flat.join("proc").exists() && !flat.join("etc/hosts").exists(),
        "stubs removed"
    );
}

#[test]
fn timeout_kills_the_whole_namespace() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let mut spec = step.spec(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
    spec.timeout = Some(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    let out = sandbox::run(&spec).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert!(out.timed_out);
    assert_eq!(out.code, 137);
    let err = out.check(&spec.argv).unwrap_err().to_string();
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn cancel_from_another_thread_kills_the_whole_namespace() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let mut spec = step.spec(&["sh", "-c", "sleep 300 & echo up; sleep 300; echo never"]);
    let cancel = sandbox::Cancel::default();
    spec.cancel = Some(cancel.clone());
    // Cancel once the command is running (it printed), as a failing platform does.
    spec.on_output = Some(sandbox::OutputSink(std::sync::Arc::new(move |_, _| {
        cancel.cancel()
    })));
    let out = sandbox::run(&spec).unwrap();
    assert!(out.cancelled && !out.timed_out);
    assert_eq!(out.code, 137);
    let err = out.check(&spec.argv).unwrap_err().to_string();
    assert!(err.contains("cancelled"), "{err}");
}

#[test]
fn merged_output_keeps_the_order_written_across_stdout_and_stderr() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; exit 2";
    let mut spec = step.spec(&["sh", "-c", script]);
    spec.merge_output = true;
    let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = streams.clone();
    spec.on_output = Some(sandbox::OutputSink(std::sync::Arc::new(move |which, _| {
        s2.lock().unwrap().push(which)
    })));
    let out = sandbox::run(&spec).unwrap();
    let want = "out1\nerr1\nout2\nerr2\nout3\nerr3\nout4\nerr4\nout5\nerr5\n";
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert!(out.stderr.is_empty());
    assert!(streams
        .lock()
        .unwrap()
        .iter()
        .all(|s| *s == sandbox::Stream::Combined));
    // The error message's tail is in that order too.
    assert!(out
        .check(&spec.argv)
        .unwrap_err()
        .to_string()
        .contains(want.trim_end()));
}

#[test]
fn output_is_streamed_as_it_arrives() {
    use std::sync::{Arc, Mutex};
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut spec = step.spec(&["sh", "-c", "echo one; echo two >&2"]);
    spec.on_output = Some(sandbox::OutputSink(Arc::new(move |which, bytes| {
        s2.lock().unwrap().push((which, bytes.to_vec()));
    })));
    sandbox::run(&spec).unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.contains(&(sandbox::Stream::Stdout, b"one\n".to_vec())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(sandbox::Stream::Stderr, b"two\n".to_vec())),
        "{seen:?}"
    );
}

#[test]
fn a_platform_that_cannot_run_fails_before_anything_runs() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let mut spec = step.spec(&["sh", "-c", "touch /ran"]);
    // No probe (and no QEMU handler) exists for sparc64.
    spec.platform = Some(oci::Platform::parse("linux/sparc64").unwrap());
    let err = sandbox::run(&spec).unwrap_err().to_string();
    assert!(
        err.contains("linux/sparc64") && err.contains("no probe for the sparc64"),
        "{err}"
    );
    assert!(!step.upper().join("ran").exists());
}

#[test]
fn from_scratch_runs_a_static_binary_with_no_lower_layers() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    // FROM scratch + COPY of a static busybox: only the upperdir has files.
    let upper = step.upper();
    fs::create_dir_all(&upper).unwrap();
    fs::copy(step.lowers[0].join("bin/busybox"), upper.join("busybox")).unwrap();
    let rootfs = RootFs::Overlay {
        lowers: Vec::new(),
        upper: upper.clone(),
        work: step.dir.path().join("work"),
    };
    let out = sandbox::run(&RunSpec::new(rootfs, &["/busybox", "echo", "from scratch"])).unwrap();
    assert!(out.success(), "{}", out.tail);
    assert_eq!(out.stdout, b"from scratch\n");
    let mut left: Vec<_> = fs::read_dir(&upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["busybox"], "no mountpoint stubs left behind");
}

#[test]
fn emulated_step_with_user_workdir_and_no_network() {
    if !runnable("linux/arm/v7") {
        return;
    }
    let Some(step) = Step::new("linux/arm/v7") else {
        return;
    };
    let mut spec = step.spec(&[
        "sh",
        "-c",
        "id -u; pwd; uname -m; cat /proc/net/dev | tail -n +3 | wc -l",
    ]);
    spec.platform = Some(oci::Platform::parse("linux/arm/v7").unwrap());
    spec.user = Some("nobody".into());
    spec.workdir = "/srv/app".into();
    spec.network = Network::None;
    let out = sandbox::run(&spec).unwrap();
    assert!(out.success(), "{}", out.tail);
    assert!(out.mode.is_emulated());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "65534\n/srv/app\narmv7l\n1\n"
    );
}

#[test]
fn more_layers_than_a_page_of_mount_options_holds() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    // 120 layers of ~150-byte paths: ~18 KB of lowerdir, far past the kernel's 4 KB.
    let deep = step.dir.path().join("l".repeat(100));
    let mut lowers = step.lowers.clone();
    for i in 0..120 {
        let d = deep.join(format!("{i:03}-{}", "x".repeat(40)));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("layer{i:03}")), format!("{i}\n")).unwrap();
        fs::write(d.join("top"), format!("{i}\n")).unwrap();
    }
    let mut names: Vec<_> = fs::read_dir(&deep)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    lowers.extend(names);
    let rootfs = RootFs::Overlay {
        lowers,
        upper: step.upper(),
        work: step.dir.path().join("work"),
    };
    let out = sandbox::run(&RunSpec::new(
        rootfs,
        &["sh", "-c", "ls / | grep -c '^layer'; cat /top /layer000"],
    ))
    .unwrap();
    assert!(out.success(), "{}", out.tail);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "120\n119\n0\n");
}
