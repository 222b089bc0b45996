//! End-to-end: `manifold binfmt` in a private binfmt_misc instance (a new user and mount
//! namespace with its own binfmt_misc mount, Linux 6.7+), so the host's handlers are never
//! changed: status, install, a live probe, uninstall, and the refusal without an emulator.

mod common;

use std::fs;
use std::process::{Command, Output};

use common::*;

/// Runs `script` (sh) in a new user and mount namespace; with `mount`, a fresh binfmt_misc is
/// mounted first. `$M` is manifold. None (after a loud skip) where that is impossible.
fn private(mount: bool, script: &str) -> Option<Output> {
    if !peer("unshare") || !peer("qemu-aarch64-static") {
        return None;
    }
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")
        .output()
        .unwrap();
    if !probe.status.success() {
        let why = format!(
            "this kernel cannot mount binfmt_misc in a user namespace (Linux 6.7+): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let pre = if mount {
        "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc\n"
    } else {
        ""
    };
    Some(
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(format!("set -u\n{pre}{script}"))
            .env("M", manifold_bin())
            .env("MANIFOLD_ROOT", "/nonexistent")
            .output()
            .unwrap(),
    )
}

fn host_handlers() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|r| {
            r.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().to_string(),
                        fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn entry<'a>(v: &'a serde_json::Value, arch: &str) -> &'a serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|e| e["architecture"] == arch)
        .unwrap_or_else(|| panic!("{arch} missing in {v}"))
}

#[test]
fn install_status_probe_uninstall_in_a_private_instance() {
    let before = host_handlers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let Some(out) = private(
        true,
        &format!(
            "$M binfmt status --format json > {d}/empty.json
$M binfmt install arm64,riscv64,mips64le,loong64 > {d}/install.txt
$M binfmt install arm64 > {d}/again.txt
$M binfmt --format json > {d}/installed.json
$M binfmt > {d}/table.txt
cat /proc/sys/fs/binfmt_misc/qemu-aarch64 > {d}/aarch64.txt
echo ':not-qemu:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x2a\\x00::/bin/true:F' > /proc/sys/fs/binfmt_misc/register
$M binfmt uninstall all > {d}/uninstall.txt
ls /proc/sys/fs/binfmt_misc > {d}/left.txt
$M binfmt --format json > {d}/after.json
"
        ),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();

    // A fresh instance: nothing registered, foreign probes fail, native ones run.
    let empty = json(&read("empty.json"));
    assert_eq!(entry(&empty, "arm64")["handler"], serde_json::Value::Null);
    assert_eq!(entry(&empty, "arm64")["probe"], "fails");
    assert_eq!(entry(&empty, "amd64")["probe"], "native");
    assert_eq!(entry(&empty, "arm/v7")["probe"], "fails");

    let install = read("install.txt");
    for (arch, handler) in [
        ("arm64", "qemu-aarch64"),
        ("riscv64", "qemu-riscv64"),
        ("mips64le", "qemu-mips64el"),
        ("loong64", "qemu-loongarch64"),
    ] {
        assert!(
            install.contains(&format!("installed {handler} (")) && install.contains(arch),
            "{install}"
        );
    }
    assert!(
        read("again.txt").contains("already installed"),
        "{}",
        read("again.txt")
    );

    let installed = json(&read("installed.json"));
    for (arch, handler) in [
        ("arm64", "qemu-aarch64"),
        ("riscv64", "qemu-riscv64"),
        ("mips64le", "qemu-mips64el"),
        ("loong64", "qemu-loongarch64"),
    ] {
        let e = entry(&installed, arch);
        assert_eq!(e["handler"], handler, "{e}");
        assert_eq!(e["flags"], "F", "{e}");
        assert_eq!(e["enabled"], true, "{e}");
        // The live probe ran through the handler just registered.
        assert_eq!(e["probe"], "ok", "{e}");
    }
    assert_eq!(entry(&installed, "s390x")["probe"], "fails");
    assert!(read("table.txt").contains("manifold binfmt install"));
    let aarch64 = read("aarch64.txt");
    assert!(aarch64.contains("flags: F\n"), "{aarch64}");
    assert!(
        aarch64.contains("magic 7f454c460201010000000000000000000200b700"),
        "{aarch64}"
    );
    assert!(
        aarch64.contains("interpreter /usr/bin/qemu-aarch64"),
        "{aarch64}"
    );

    // Only QEMU's handlers go.
    let uninstall = read("uninstall.txt");
    assert!(uninstall.contains("removed qemu-aarch64"), "{uninstall}");
    let left = read("left.txt");
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["not-qemu", "register", "status"]
    );
    let after = json(&read("after.json"));
    assert_eq!(entry(&after, "loong64")["probe"], "fails");

    // The host's handlers are exactly as they were.
    assert_eq!(host_handlers(), before);
}

#[test]
fn refuses_without_the_emulator_and_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // /dev/null over s390x's emulators, in this mount namespace only.
    let Some(out) = private(
        true,
        &format!(
            "for f in /usr/bin/qemu-s390x-static /usr/bin/qemu-s390x /usr/libexec/qemu-binfmt/s390x-binfmt-P; do
  [ -e $f ] && mount --bind /dev/null $f
done
$M binfmt install arm64,s390x 2> {d}/err.txt; echo $? > {d}/rc.txt
ls /proc/sys/fs/binfmt_misc > {d}/left.txt
$M binfmt install all > {d}/all.txt 2> {d}/all-err.txt
"
        ),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();
    assert_eq!(read("rc.txt").trim(), "1");
    let err = read("err.txt");
    assert!(err.contains("no static QEMU emulator for s390x"), "{err}");
    assert!(err.contains("apt-get install qemu-user-static"), "{err}");
    // Nothing was registered, not even arm64.
    assert_eq!(
        read("left.txt").split_whitespace().collect::<Vec<_>>(),
        ["register", "status"]
    );
    // `all` installs what it can and says what it skipped.
    let all = read("all.txt");
    assert!(all.contains("installed qemu-aarch64"), "{all}");
    assert!(all.contains("s390x") && all.contains("skipped"), "{all}");
    assert!(read("all-err.txt").contains("qemu-user-static"));
}

#[test]
fn mounts_binfmt_misc_when_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // An empty tmpfs hides the host's instance; install mounts this namespace's own.
    let Some(out) = private(
        false,
        &format!(
            "mount -t tmpfs none /proc/sys/fs/binfmt_misc
$M binfmt install arm64 > {d}/install.txt
ls /proc/sys/fs/binfmt_misc > {d}/left.txt
"
        ),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();
    assert!(read("install.txt").contains("installed qemu-aarch64"));
    assert_eq!(
        read("left.txt").split_whitespace().collect::<Vec<_>>(),
        ["qemu-aarch64", "register", "status"]
    );
}

#[test]
fn build_and_run_name_the_install_command_when_a_platform_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    fs::write(dir.path().join("Dockerfile"), "FROM scratch\nRUN true\n").unwrap();
    // No handler in the private instance: arm64 cannot run; nothing is pulled or built.
    let Some(out) = private(
        true,
        &format!(
            "export MANIFOLD_ROOT={d}/store
$M build --platform linux/arm64 {d} 2> {d}/build.txt; echo $? >> {d}/build.txt
$M run --platform linux/arm64 localhost:1/nothing/here uname -m 2> {d}/run.txt; echo $? >> {d}/run.txt
"
        ),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["build.txt", "run.txt"] {
        let text = fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(text.contains("cannot run linux/arm64"), "{f}: {text}");
        assert!(
            text.contains("`manifold binfmt install arm64`"),
            "{f}: {text}"
        );
        assert!(text.trim_end().ends_with('1'), "{f}: {text}");
    }
}
