//! The sandbox as a security boundary: what a hostile RUN step must not reach, compared with
//! docker's defaults (runc with its default seccomp profile and capabilities, no extra devices,
//! a private network), natively and under QEMU.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manifold_runtime::sandbox::{self, Network, RootFs, RunSpec, StepMount};
use manifold_runtime::seccomp;

struct Step {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

impl Step {
    fn new(platform: &str) -> Option<Step> {
        if !common::is_root() {
            return None;
        }
        if platform != "linux/amd64" {
            if let Err(e) =
                manifold_runtime::emulation::check(&oci::Platform::parse(platform).unwrap())
            {
                common::skip(&format!("{e}"));
                return None;
            }
        }
        let snaps = common::busybox_snapshots(platform)?;
        let base = common::repo_root().join("target/fixtures/steps");
        fs::create_dir_all(&base).unwrap();
        Some(Step {
            dir: tempfile::tempdir_in(base).unwrap(),
            lowers: snaps.into_iter().map(|s| s.path).collect(),
        })
    }
    fn spec(&self, argv: &[&str]) -> RunSpec {
        let mut s = RunSpec::new(
            RootFs::Overlay {
                lowers: self.lowers.clone(),
                upper: self.dir.path().join("upper"),
                work: self.dir.path().join("work"),
            },
            argv,
        );
        s.timeout = Some(Duration::from_secs(120));
        s
    }
    /// Runs `argv` on `network`; (exit code, stdout + stderr).
    fn run_on(&self, network: Network, argv: &[&str]) -> (i32, String) {
        let mut spec = self.spec(argv);
        spec.network = network;
        self.go(spec)
    }
    fn go(&self, spec: RunSpec) -> (i32, String) {
        let out = sandbox::run(&spec).unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.code, text)
    }
    fn sh(&self, script: &str) -> (i32, String) {
        self.run_on(Network::Default, &["sh", "-c", script])
    }
    /// The static probe (tests/probe/probe.c) mounted read-only at /probe.
    fn probe(&self, network: Network, args: &[&str]) -> String {
        let bin = probe_binary();
        let mut argv = vec!["/probe"];
        argv.extend_from_slice(args);
        let mut spec = self.spec(&argv);
        spec.network = network;
        spec.mounts.push(StepMount {
            source: manifold_runtime::sandbox::MountSource::Host(bin),
            target: "/probe".into(),
            readonly: true,
        });
        self.go(spec).1.trim().to_string()
    }
}

/// Builds the probe once per test process with the C compiler Rust links with.
fn probe_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
        let dir = common::repo_root().join("target/fixtures");
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("probe-{}", std::process::id()));
        let st = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc (gcc and libc6-dev) builds the test probe");
        assert!(st.success(), "building {}", src.display());
        let fixed = dir.join("probe");
        fs::rename(&out, &fixed).unwrap();
        fixed
    })
    .clone()
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// docker's default capability set as the kernel prints it.
fn docker_cap_mask() -> String {
    let bits: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
        .iter()
        .fold(0, |m, b| m | 1 << b);
    format!("{bits:016x}")
}

#[test]
fn identity_matches_docker_defaults_native_and_emulated() {
    assert_eq!(docker_cap_mask(), "00000000a80425fb");
    // An inherited descriptor without close-on-exec, as a careless parent leaves it.
    let leak = tempfile::tempfile().unwrap();
    // SAFETY: dup of a descriptor we own; the copy is closed below.
    let raw = unsafe { libc::fcntl(leak.as_raw_fd(), libc::F_DUPFD, 3) };
    assert!(raw > 2);
    for platform in ["linux/amd64", "linux/arm64"] {
        let Some(step) = Step::new(platform) else {
            continue;
        };
        let (code, out) = step.sh("cat /proc/self/status; echo @FDLIST@; ls /proc/self/fd");
        assert_eq!(code, 0, "{platform}: {out}");
        let (status, fds) = out.split_once("@FDLIST@").unwrap();
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                status_field(status, key),
                docker_cap_mask(),
                "{platform} {key}"
            );
        }
        assert_eq!(
            status_field(status, "CapInh"),
            "0000000000000000",
            "{platform}"
        );
        assert_eq!(
            status_field(status, "CapAmb"),
            "0000000000000000",
            "{platform}"
        );
        assert_eq!(
            status_field(status, "Seccomp"),
            "2",
            "{platform}: filter mode"
        );
        assert_eq!(status_field(status, "Seccomp_filters"), "1", "{platform}");
        assert_eq!(
            status_field(status, "NoNewPrivs"),
            "0",
            "{platform}: as docker"
        );
        // 0-2 and the directory ls reads (3), under QEMU too (as in docker), never the one
        // inherited from this process.
        let fds: Vec<u32> = fds.split_whitespace().map(|f| f.parse().unwrap()).collect();
        assert_eq!(
            fds,
            [0, 1, 2, 3],
            "{platform}: only stdio and ls's own directory"
        );
        // The inherited one is not there to write to, whatever its number.
        let (code, out) = step.sh(&format!("echo pwned >/proc/self/fd/{raw}"));
        assert_ne!(
            code, 0,
            "{platform}: wrote through an inherited descriptor: {out}"
        );
        // A non-root user keeps no capabilities, as in docker.
        let mut spec = step.spec(&["cat", "/proc/self/status"]);
        spec.user = Some("65534".into());
        let (_, out) = step.go(spec);
        assert_eq!(
            status_field(&out, "CapEff"),
            "0000000000000000",
            "{platform}"
        );
        assert_eq!(
            status_field(&out, "CapBnd"),
            docker_cap_mask(),
            "{platform}"
        );
    }
    // SAFETY: closing the copy made above.
    unsafe { libc::close(raw) };
    let mut f = leak;
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "", "the step wrote into the host's file");
}

#[test]
fn system_calls_docker_refuses_are_refused() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    // A key in root's user keyring on the host: readable by root outside, not by a step.
    let payload = b"host secret";
    // SAFETY: add_key with valid C strings and a buffer of the length given.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"manifold-test".as_ptr(),
            payload.as_ptr(),
            payload.len(),
            -4i32, // KEY_SPEC_USER_KEYRING
        )
    };
    assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
    let outside = Command::new(probe_binary())
        .args(["keyctl-read", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outside.stdout).trim(),
        "ok",
        "control: the host can read it"
    );
    assert_eq!(
        step.probe(Network::Default, &["keyctl-read", &id.to_string()]),
        "EPERM"
    );
    // SAFETY: keyctl(KEYCTL_REVOKE = 3, id).
    unsafe { libc::syscall(libc::SYS_keyctl, 3, id) };

    assert_eq!(step.probe(Network::Default, &["unshare-user"]), "EPERM");
    assert_eq!(step.probe(Network::Default, &["clone-newuser"]), "EPERM");
    assert_eq!(
        step.probe(Network::Default, &["clone3"]),
        "ENOSYS",
        "as docker: glibc falls back to clone"
    );
    assert_eq!(step.probe(Network::Default, &["mount"]), "EPERM");
    // mseal (462), newer than what the profile's libseccomp knows: ENOSYS as with runc.
    assert_eq!(step.probe(Network::Default, &["raw", "462"]), "ENOSYS");
    assert_eq!(
        step.probe(Network::Default, &["raw", "165"]),
        "EPERM",
        "mount by number"
    );
    let (code, out) = step.sh("unshare -U true");
    assert_ne!(code, 0, "{out}");
    let (code, out) = step.sh("mkdir -p /mnt && mount -t tmpfs none /mnt");
    assert_ne!(code, 0, "{out}");
    // Threads and processes still work (clone without namespace flags).
    let (code, out) = step.sh("(sleep 0; echo child) & wait; echo parent");
    assert_eq!((code, out.as_str()), (0, "child\nparent\n"));
}

#[test]
fn devices_cannot_be_made_or_reached() {
    for platform in ["linux/amd64", "linux/arm64"] {
        let Some(step) = Step::new(platform) else {
            continue;
        };
        // CAP_MKNOD is docker's too; the node cannot be opened on a nodev root.
        let (code, out) = step.sh(
            "mknod /tmp/loop0 b 7 0 && echo made && dd if=/tmp/loop0 of=/dev/null bs=512 count=1",
        );
        assert!(out.contains("made"), "{platform}: {out}");
        assert_ne!(code, 0, "{platform}: read a host loop device: {out}");
        assert!(out.contains("Permission denied"), "{platform}: {out}");
        let (code, out) = step.sh("mknod /dev/sda b 8 0");
        assert_ne!(code, 0, "{platform}: mknod in /dev: {out}");
        let (code, out) = step.sh("ls /dev; ls -A /dev/shm /dev/pts");
        assert_eq!(code, 0, "{out}");
        for absent in [
            "kmsg", "console", "kvm", "mem", "sda", "loop0", "fuse", "net",
        ] {
            assert!(
                !out.split_whitespace().any(|d| d == absent),
                "{platform}: /dev/{absent}: {out}"
            );
        }
        // /proc's masked files are /dev/null bound over them: empty, as in docker.
        let (code, out) = step.sh("wc -c < /proc/timer_list");
        assert_eq!((code, out.trim()), (0, "0"), "{platform}");
        // What docker gives still works.
        let (code, out) = step.sh("echo x >/dev/null && head -c 3 /dev/urandom | wc -c && echo y >/dev/shm/f && cat /dev/shm/f");
        assert_eq!((code, out.as_str()), (0, "3\ny\n"), "{platform}");
    }
}

/// A server on the host's 127.0.0.1 answering one fixed line.
fn loopback_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhost-secret");
        }
    });
    port
}

#[test]
fn host_loopback_is_out_of_reach() {
    if !common::peer("slirp4netns") {
        return;
    }
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let port = loopback_server();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://10.0.2.2:{port}/"),
    ] {
        let (code, out) = step.sh(&format!("timeout 20 wget -q -O- {url}"));
        eprintln!("{url}: {code} {out}");
        assert_ne!(code, 0, "{url}: {out}");
        assert!(!out.contains("host-secret"), "{url}: {out}");
        // Refused, not crashed or killed by the timeout.
        assert!(
            out.contains("refused") || out.contains("unreachable"),
            "{url}: {out}"
        );
    }
    // The control: with the host's network (granted explicitly) the same request succeeds.
    let (code, out) = step.run_on(
        Network::Host,
        &["wget", "-q", "-O-", &format!("http://127.0.0.1:{port}/")],
    );
    assert_eq!((code, out.as_str()), (0, "host-secret"));
    // The isolated network has loopback and the tap device, no host interfaces.
    let (code, out) = step.sh("ls /sys/class/net");
    assert_eq!(code, 0, "{out}");
    let mut ifs: Vec<&str> = out.split_whitespace().collect();
    ifs.sort();
    assert_eq!(ifs, ["lo", "tap0"]);
}

#[test]
fn a_raw_socket_sees_none_of_the_hosts_loopback_traffic() {
    if !common::peer("slirp4netns") {
        return;
    }
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let marker = format!("manifold-marker-{}", std::process::id());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (marker, stop) = (marker.clone(), stop.clone());
        std::thread::spawn(move || {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tx.send_to(marker.as_bytes(), rx.local_addr().unwrap());
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The control proves the probe sees loopback traffic where it can.
    let host = step.probe(Network::Host, &["sniff", &marker]);
    let isolated = step.probe(Network::Default, &["sniff", &marker]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(host, "seen", "control on the host network");
    assert_eq!(isolated, "not seen");
}

/// The first `deb` source of this machine's apt configuration: (base URL, suite).
fn apt_mirror() -> (String, String) {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            texts.push(fs::read_to_string(p).unwrap_or_default());
        }
    }
    for t in &texts {
        // One-line format: deb [opts] URI SUITE COMPONENTS
        for l in t.lines() {
            let w: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if w.len() >= 3 && w[0] == "deb" && w[1].starts_with("http://") {
                return (w[1].trim_end_matches('/').into(), w[2].into());
            }
        }
        // deb822 format.
        for stanza in t.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                if let Some(u) = uris.split_whitespace().find(|u| u.starts_with("http://")) {
                    let s = suites.split_whitespace().next().unwrap_or_default();
                    return (u.trim_end_matches('/').into(), s.into());
                }
            }
        }
    }
    panic!("no http:// deb source in /etc/apt: this test needs the apt mirror the machine uses");
}

#[test]
fn the_isolated_network_downloads_by_host_name() {
    // Never skipped in CI: peer() fails there when slirp4netns is missing.
    if !common::peer("slirp4netns") {
        return;
    }
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let (base, suite) = apt_mirror();
    let url = format!("{base}/dists/{suite}/Release");
    let (code, out) = step.sh(&format!("timeout 60 wget -q -O- {url} | head -n 20"));
    assert_eq!(code, 0, "{url}: {out}");
    assert!(
        out.contains("Codename: ") && out.contains("Suite:"),
        "{url}: {out}"
    );
    // Emulated steps use the same network.
    if let Some(arm) = Step::new("linux/arm64") {
        let (code, out) = arm.sh(&format!("timeout 60 wget -q -O- {url} | head -n 5"));
        assert_eq!(code, 0, "arm64 {url}: {out}");
        assert!(out.contains("Suite:") || out.contains("Origin:"), "{out}");
    }
}

#[test]
fn network_none_and_host_entitlement() {
    let Some(step) = Step::new("linux/amd64") else {
        return;
    };
    let (code, out) = step.run_on(Network::None, &["ls", "/sys/class/net"]);
    assert_eq!((code, out.trim()), (0, "lo"));
    let e = manifold_runtime::network::check_entitlement(Network::Host, &[]).unwrap_err();
    assert!(e.to_string().contains("--allow network.host"), "{e}");
}

// ---- Killing the process that started a step kills the step. ----

/// Runs by [`killing_the_runner_kills_its_steps`] in a child process: one step sleeping with
/// a recognisable argument.
#[test]
#[ignore = "a helper for killing_the_runner_kills_its_steps"]
fn helper_sleeping_step() {
    let (Ok(platform), Ok(token)) = (
        std::env::var("MANIFOLD_TEST_PLATFORM"),
        std::env::var("MANIFOLD_TEST_TOKEN"),
    ) else {
        return;
    };
    let step = Step::new(&platform).unwrap();
    let mut spec = step.spec(&["sleep", &token]);
    if std::env::var_os("MANIFOLD_TEST_SETUID").is_some() {
        // PID 1 execs a set-user-ID binary as a non-root user: the kernel clears its
        // parent-death signal, so only its parent can take it down.
        use std::os::unix::fs::PermissionsExt;
        let bin = step.dir.path().join("upper/suid");
        fs::create_dir_all(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let busybox = step
            .lowers
            .iter()
            .map(|l| l.join("bin/busybox"))
            .find(|p| p.is_file())
            .unwrap();
        fs::copy(&busybox, bin.join("busybox")).unwrap();
        fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o4755)).unwrap();
        spec.argv = vec!["/suid/busybox".into(), "sleep".into(), token.clone()];
        spec.user = Some("65534".into());
    }
    eprintln!("{:?}", sandbox::run(&spec));
}

fn ppid_and_state(pid: u32) -> Option<(u32, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn descendants(root: u32) -> Vec<u32> {
    let table: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| ppid_and_state(p).map(|(pp, _)| (p, pp)))
        .collect();
    let mut out = vec![];
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for (c, pp) in &table {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                todo.push(*c);
            }
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn killing_the_runner_kills_its_steps() {
    for (i, (platform, setuid)) in [
        ("linux/amd64", false),
        ("linux/arm64", false),
        ("linux/amd64", true),
    ]
    .into_iter()
    .enumerate()
    {
        // Prepares the fixtures here, so the helper only runs.
        if Step::new(platform).is_none() {
            continue;
        }
        let token = format!("{}{i}", 700000 + std::process::id() % 100000);
        // The killed runner's state directory lands here, removed with it.
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        if setuid {
            cmd.env("MANIFOLD_TEST_SETUID", "1");
        }
        let mut child = cmd
            .args([
                "--exact",
                "helper_sleeping_step",
                "--ignored",
                "--nocapture",
            ])
            .env("MANIFOLD_TEST_PLATFORM", platform)
            .env("TMPDIR", tmp.path())
            .env("MANIFOLD_TEST_TOKEN", &token)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for the step to be running (the deadline only bounds a hang).
        let deadline = Instant::now() + Duration::from_secs(120);
        let tree = loop {
            let tree = descendants(pid);
            if tree.iter().any(|p| cmdline(*p).contains(&token)) {
                break tree;
            }
            assert!(
                Instant::now() < deadline,
                "{platform}: the step never started"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let names: Vec<String> = tree.iter().map(|p| cmdline(*p)).collect();
        eprintln!("{platform}: processes under the runner: {names:?}");
        assert!(
            names.iter().any(|n| n.contains("slirp4netns")),
            "{platform}: the network helper should be among them"
        );
        // SAFETY: kill on our own unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alive: Vec<u32> = tree
                .iter()
                .copied()
                .filter(|p| ppid_and_state(*p).is_some_and(|(_, s)| s != 'Z'))
                .filter(|p| cmdline(*p) == names[tree.iter().position(|x| x == p).unwrap()])
                .collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{platform}: still running after the runner was killed: {:?}",
                alive.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---- The compiled seccomp filter against docker's profile. ----

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// A classic-BPF interpreter for seccomp programs: what the kernel would answer.
fn eval(prog: &[libc::sock_filter], nr: i32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + i * 8..24 + i * 8].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
    loop {
        let ins = prog[pc];
        let k = ins.k;
        pc += 1;
        let jump = |cond: bool, pc: &mut usize| {
            *pc += if cond {
                ins.jt as usize
            } else {
                ins.jf as usize
            }
        };
        match ins.code {
            0x20 => a = u32::from_ne_bytes(data[k as usize..k as usize + 4].try_into().unwrap()),
            0x00 => a = k,
            0x01 => x = k,
            0x60 => a = mem[k as usize],
            0x61 => x = mem[k as usize],
            0x02 => mem[k as usize] = a,
            0x03 => mem[k as usize] = x,
            0x87 => a = x,
            0x07 => x = a,
            0x54 => a &= k,
            0x5c => a &= x,
            0x44 => a |= k,
            0x05 => pc += k as usize,
            0x15 => jump(a == k, &mut pc),
            0x25 => jump(a > k, &mut pc),
            0x35 => jump(a >= k, &mut pc),
            0x45 => jump(a & k != 0, &mut pc),
            0x1d => jump(a == x, &mut pc),
            0x2d => jump(a > x, &mut pc),
            0x3d => jump(a >= x, &mut pc),
            0x06 => return k,
            0x16 => return a,
            other => panic!("BPF opcode {other:#x} at {} not interpreted", pc - 1),
        }
    }
}

#[test]
fn the_compiled_filter_is_dockers_default_profile() {
    let bpf = seccomp::compile(seccomp::DOCKER_DEFAULT_CAPS).unwrap();
    let prog = bpf.instructions();
    let (arch, _) = seccomp::native_arch();
    assert_eq!(arch, "amd64", "this comparison is written for amd64 hosts");
    let rules = seccomp::effective_rules(
        arch,
        seccomp::DOCKER_DEFAULT_CAPS,
        seccomp::kernel_version(),
    )
    .unwrap();
    eprintln!(
        "profile names this libseccomp does not know (left denied): {:?}",
        bpf.unknown
    );
    let nr = |name: &str| libseccomp::ScmpSyscall::from_name(name).ok().map(i32::from);
    let conditional: Vec<&str> = rules
        .iter()
        .filter(|r| !r.args.is_empty() || r.errno.is_some())
        .map(|r| r.name.as_str())
        .collect();
    let mut allowed = std::collections::BTreeSet::new();
    for r in rules
        .iter()
        .filter(|r| r.args.is_empty() && r.errno.is_none())
    {
        if let Some(n) = nr(&r.name).filter(|n| *n >= 0) {
            assert_eq!(
                eval(prog, n, AUDIT_ARCH_X86_64, [0; 6]),
                RET_ALLOW,
                "{} ({n})",
                r.name
            );
            allowed.insert(n);
        }
    }
    assert!(allowed.len() > 250, "{}", allowed.len());
    // Everything else up to the newest call the profile names is refused with EPERM, as
    // docker's default action; newer ones fail with ENOSYS (runc's stub), so programs fall back.
    let conditional_nrs: Vec<i32> = conditional.iter().filter_map(|n| nr(n)).collect();
    let newest = rules.iter().filter_map(|r| nr(&r.name)).max().unwrap();
    eprintln!("newest system call the profile names that libseccomp knows: {newest}");
    assert!(newest >= 435, "clone3 at least: {newest}");
    for n in newest + 1..newest + 100 {
        assert_eq!(
            eval(prog, n, AUDIT_ARCH_X86_64, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32,
            "syscall {n}, newer than the profile"
        );
    }
    // x32 calls (bit 30) are not taken for newer calls; i386 has its own limit.
    assert_eq!(
        eval(prog, 0x4000_0000 | 39, AUDIT_ARCH_X86_64, [0; 6]),
        RET_ALLOW,
        "x32 getpid"
    );
    assert_eq!(
        eval(prog, 2000, AUDIT_ARCH_I386, [0; 6]),
        RET_ERRNO | libc::ENOSYS as u32
    );
    for n in 0..=newest {
        if allowed.contains(&n) || conditional_nrs.contains(&n) {
            continue;
        }
        assert_eq!(
            eval(prog, n, AUDIT_ARCH_X86_64, [0; 6]),
            RET_ERRNO | libc::EPERM as u32,
            "syscall {n} must be refused"
        );
    }
    // The argument rules.
    let call = |name: &str, args: [u64; 6]| eval(prog, nr(name).unwrap(), AUDIT_ARCH_X86_64, args);
    for p in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(
            call("personality", [p, 0, 0, 0, 0, 0]),
            RET_ALLOW,
            "personality({p:#x})"
        );
    }
    assert_eq!(call("personality", [1, 0, 0, 0, 0, 0]), RET_ERRNO | 1);
    assert_eq!(
        call("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
    ] {
        assert_eq!(
            call("clone", [flag as u64 | 17, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1,
            "clone({flag:#x})"
        );
    }
    assert_eq!(call("clone3", [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
    assert_eq!(
        call("socket", [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    // Newer moby profiles also refuse AF_VSOCK sockets; docker 20.10's (Debian's) does not.
    let vsock = call("socket", [libc::AF_VSOCK as u64, 0, 0, 0, 0, 0]);
    let refuses_vsock = manifold_runtime::seccomp::profile_json()
        .unwrap()
        .contains("\"value\": 40");
    assert_eq!(
        vsock,
        if refuses_vsock {
            RET_ERRNO | 1
        } else {
            RET_ALLOW
        }
    );
    for denied in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "open_by_handle_at",
    ] {
        assert_eq!(call(denied, [0; 6]), RET_ERRNO | 1, "{denied}");
    }
    for granted in [
        "chroot",
        "ptrace",
        "read",
        "execve",
        "setuid",
        "capset",
        "close_range",
    ] {
        assert_eq!(call(granted, [0; 6]), RET_ALLOW, "{granted}");
    }
    // i386 binaries (a 386 image on this host) are filtered by the same list, not killed.
    assert_eq!(
        eval(prog, 20, AUDIT_ARCH_I386, [0; 6]),
        RET_ALLOW,
        "i386 getpid"
    );
    assert_eq!(
        eval(prog, 21, AUDIT_ARCH_I386, [0; 6]),
        RET_ERRNO | 1,
        "i386 mount"
    );
}
