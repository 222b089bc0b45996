//! `manifold build` on a real pseudo-terminal: the live view (running steps with timers and
//! their output, collapsed finished steps, CACHED and EMULATED), and plain lines on request.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};

use common::*;

/// Starts `manifold build ARGS` with a pseudo-terminal (200 columns) as its standard streams.
fn on_pty(store: &Path, args: &[&str]) -> (Child, fs::File) {
    let winsize = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).unwrap();
    let slave = fs::File::from(pty.slave);
    let child = Command::new(manifold_bin())
        .env("MANIFOLD_ROOT", store)
        .env("TERM", "xterm")
        .args(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    (child, fs::File::from(pty.master))
}

/// Reads until `want` shows up; false when the terminal closed first (every writer exited).
fn read_until(master: &mut fs::File, seen: &mut Vec<u8>, want: &str) -> bool {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Runs to the end; returns everything the terminal showed.
fn finish(child: Child, master: fs::File, seen: Vec<u8>) -> String {
    let (ok, shown) = end(child, master, seen);
    assert!(ok, "{shown}");
    shown
}

/// Runs to the end; did it succeed, and what did the terminal show?
fn end(mut child: Child, mut master: fs::File, mut seen: Vec<u8>) -> (bool, String) {
    let _ = read_until(&mut master, &mut seen, "\u{0}never");
    let status = child.wait().unwrap();
    (status.success(), plain_text(&seen))
}

/// The text without terminal escape sequences and carriage returns.
fn plain_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Does `text` hold `prefix`, then the step's line followed by a time (`… echo "tock
/// $((7*8))" 1.2s`), before the next drawn line (`=> `, `[+] `)? indicatif pads lines to the
/// terminal's width rather than ending them, so this does not go by newlines.
fn timed(text: &str, prefix: &str) -> bool {
    let end = "$((7*8))\" ";
    text.match_indices(prefix).any(|(at, _)| {
        let seg = &text[at + prefix.len()..];
        let stop = ["=> ", "[+] ", "\n"]
            .iter()
            .filter_map(|m| seg.find(m))
            .min()
            .unwrap_or(seg.len());
        let seg = &seg[..stop];
        let Some(i) = seg.find(end) else {
            return false;
        };
        let rest = &seg[i + end.len()..];
        let secs: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        secs.contains('.') && rest[secs.len()..].starts_with('s')
    })
}

#[test]
fn the_live_view_on_a_terminal_then_plain_lines_on_request() {
    if !peer("qemu-aarch64-static") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let Some((layout, _)) = busybox_layout(&["amd64", "arm64"]) else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let base = format!("{}/base/busybox:1", reg.addr);
    ok(
        store.path(),
        &["cp", &format!("oci:{}:latest", layout.display()), &base],
    );
    let ctx = tempfile::tempdir().unwrap();
    // The step's printed lines differ from its text, so seeing them means the output was shown.
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo \"tick $((6*7))\" && sleep 3 && echo \"tock $((7*8))\"\n"),
    )
    .unwrap();
    let args = [
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        "app:1",
        ctx.path().to_str().unwrap(),
    ];

    // auto on a terminal: the live view.
    let (child, mut master) = on_pty(store.path(), &args);
    let mut seen = Vec::new();
    assert!(
        read_until(&mut master, &mut seen, "tock 56"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let running = plain_text(&seen);
    // Before the step ended: its line with a running timer, the line it printed under it,
    // and the platform's header.
    let before = &running[..running.find("tock 56").unwrap()];
    assert!(timed(before, "] RUN echo \"tick"), "{running}");
    assert!(
        before.contains("    tick 42") && !before.contains("| tick 42"),
        "{running}"
    );
    assert!(before.contains("[+] linux/"), "{running}");
    let shown = finish(child, master, seen);
    // Finished steps collapse to one line each, the emulated one marked.
    assert!(timed(&shown, "=> [linux/amd64 "), "{shown}");
    assert!(timed(&shown, "=> EMULATED [linux/arm64 "), "{shown}");
    assert!(!shown.contains("| tick 42"), "plain output lines: {shown}");

    // A rebuild: every step CACHED, in one line each.
    let (child, master) = on_pty(store.path(), &args);
    let shown = finish(child, master, Vec::new());
    for p in [
        "=> CACHED [linux/amd64 ",
        "=> CACHED EMULATED [linux/arm64 ",
    ] {
        assert!(timed(&shown, p), "{p}: {shown}");
    }

    // --progress plain on the same terminal: plain lines, nothing drawn.
    let mut plain = args.to_vec();
    plain.extend(["--progress", "plain", "--no-cache"]);
    let (child, master) = on_pty(store.path(), &plain);
    let shown = finish(child, master, Vec::new());
    assert!(!shown.contains("=> "), "{shown}");
    assert!(shown.contains("| tick 42\n"), "{shown}");
    assert!(
        shown.lines().any(|l| l.starts_with("[linux/arm64 ")
            && l.contains("RUN echo")
            && l.contains(" EMULATED ")),
        "{shown}"
    );

    // A failing step: marked ERROR where it ran, its output and the error in full at the end,
    // after the live view.
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo \"why $((2*3))\" && exit 3\n"),
    )
    .unwrap();
    let (child, master) = on_pty(
        store.path(),
        &args[..3]
            .iter()
            .chain(&args[5..])
            .copied()
            .collect::<Vec<_>>(),
    );
    let (ok, shown) = end(child, master, Vec::new());
    assert!(!ok, "{shown}");
    let error = shown.find("=> ERROR [linux/").expect(&shown);
    let report = shown.rfind("> [linux/").expect(&shown);
    assert!(report > error, "{shown}");
    let report = &shown[report..];
    assert!(
        report.contains("RUN echo \"why $((2*3))\" && exit 3:\n   why 6\n------\n"),
        "{shown}"
    );
    // Then the error, once.
    assert!(report.contains("------\nerror: "), "{shown}");
    assert_eq!(shown.matches("exited with code 3").count(), 1, "{shown}");
}
