//! RUN --mount in the sandbox on real busybox snapshots: sources resolved inside their roots,
//! writable binds copy-on-write, secrets on a private tmpfs, repeated lower layers.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use manifold_runtime::sandbox::{self, MountSource, RootFs, RunSpec, SecretBytes, StepMount};

struct Step {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

impl Step {
    fn new() -> Option<Step> {
        if !common::is_root() {
            return None;
        }
        let snaps = common::busybox_snapshots("linux/amd64")?;
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
    fn spec(&self, argv: &[&str], mounts: Vec<StepMount>) -> RunSpec {
        let mut s = RunSpec::new(
            RootFs::Overlay {
                lowers: self.lowers.clone(),
                upper: self.upper(),
                work: self.dir.path().join("work"),
            },
            argv,
        );
        s.mounts = mounts;
        s
    }
    fn run(&self, argv: &[&str], mounts: Vec<StepMount>) -> String {
        let out = sandbox::run(&self.spec(argv, mounts)).unwrap();
        assert!(out.success(), "{argv:?}: {} {}", out.code, out.tail);
        String::from_utf8(out.stdout).unwrap()
    }
}

fn bind(root: &Path, path: &str, target: &str, readonly: bool) -> StepMount {
    StepMount {
        source: MountSource::Bind {
            root: root.to_path_buf(),
            path: path.into(),
        },
        target: target.into(),
        readonly,
    }
}

/// A stage-like root with `/hostroot -> /` and a marker of its own.
fn hostile_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("etc")).unwrap();
    fs::write(t.path().join("etc/marker"), "inside\n").unwrap();
    fs::create_dir_all(t.path().join("data")).unwrap();
    fs::write(t.path().join("data/f"), "orig\n").unwrap();
    std::os::unix::fs::symlink("/", t.path().join("hostroot")).unwrap();
    t
}

#[test]
fn bind_sources_resolve_inside_their_root() {
    let Some(step) = Step::new() else { return };
    let root = hostile_root();
    let out = step.run(
        &["cat", "/m/marker"],
        vec![bind(root.path(), "/hostroot/etc", "/m", true)],
    );
    assert_eq!(out, "inside\n");
    // The host's /etc (and anything else on the host) is out of reach.
    let e = sandbox::run(&step.spec(
        &["true"],
        vec![bind(
            root.path(),
            "/hostroot/../../etc/../../proc",
            "/m",
            true,
        )],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("climbs out"), "{e}");
    let host = step.dir.path().display().to_string();
    let e = sandbox::run(&step.spec(
        &["true"],
        vec![bind(root.path(), &format!("/hostroot{host}"), "/m", false)],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("no such file"), "{e}");
    // Read-only means read-only.
    let out = sandbox::run(&step.spec(
        &["sh", "-c", "echo x > /m/marker"],
        vec![bind(root.path(), "etc", "/m", true)],
    ))
    .unwrap();
    assert!(!out.success());
    assert!(out.tail.contains("Read-only"), "{}", out.tail);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/marker")).unwrap(),
        "inside\n"
    );
}

#[test]
fn writable_binds_are_copy_on_write() {
    let Some(step) = Step::new() else { return };
    let root = hostile_root();
    let out = step.run(
        &["sh", "-c", "echo changed > /m/f && touch /m/new && rm /m/../m/f && echo again > /m/f && cat /m/f && ls /m"],
        vec![
            bind(root.path(), "data", "/m", false),
            bind(root.path(), "etc/marker", "/file", false),
        ],
    );
    assert_eq!(out, "again\nf\nnew\n");
    assert_eq!(
        fs::read_to_string(root.path().join("data/f")).unwrap(),
        "orig\n"
    );
    assert!(!root.path().join("data/new").exists());
    // The mountpoints were only stubs: nothing is left in the step's changes.
    assert!(!step.upper().join("m").exists());
    assert!(!step.upper().join("file").exists());
}

#[test]
fn secrets_live_on_a_private_tmpfs_and_leave_no_stub() {
    let Some(step) = Step::new() else { return };
    let out = step.run(
        &["sh", "-c", "cat /run/secrets/tok; stat -c ' %a %u %g' /run/secrets/tok; grep ' /run/secrets/tok ' /proc/mounts | cut -d' ' -f3,4 | cut -d, -f1"],
        vec![StepMount {
            source: MountSource::Secret {
                data: SecretBytes(b"hush".to_vec()),
                mode: 0o440,
                uid: 3,
                gid: 4,
            },
            target: "/run/secrets/tok".into(),
            readonly: true,
        }],
    );
    assert_eq!(out, "hush 440 3 4\ntmpfs ro\n");
    assert!(!step.upper().join("run").exists(), "stubs left: /run");
}

#[test]
fn a_lower_layer_may_repeat() {
    let Some(mut step) = Step::new() else { return };
    let same = tempfile::tempdir().unwrap();
    fs::write(same.path().join("stamp"), "").unwrap();
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("other"), "o").unwrap();
    step.lowers.push(same.path().to_path_buf());
    step.lowers.push(other.path().to_path_buf());
    step.lowers.push(same.path().to_path_buf());
    assert_eq!(
        step.run(&["ls", "/stamp", "/other"], vec![]),
        "/other\n/stamp\n"
    );
}

#[test]
fn users_are_never_looked_up_through_a_symlink_to_the_host() {
    let Some(mut step) = Step::new() else { return };
    // A layer whose /etc points at the host's /etc (on the host, that is where it leads).
    let evil = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", evil.path().join("etc")).unwrap();
    step.lowers.push(evil.path().to_path_buf());
    let mut spec = step.spec(&["true"], vec![]);
    spec.user = Some("root".into());
    let e = sandbox::run(&spec).unwrap_err().to_string();
    assert!(
        e.contains("not found in the root filesystem's /etc/passwd"),
        "{e}"
    );
}
