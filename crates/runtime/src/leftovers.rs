//! Directories a killed `manifold` leaves behind, and telling them from those of a process that
//! is still running. The sandbox's state directories (`$TMPDIR/manifold-run-*`) hold an `owner`
//! file naming their process (pid and start time, so a reused pid does not count); `manifold
//! prune` removes those whose owner is gone.

use std::fs;
use std::path::Path;

const OWNER: &str = "owner";

/// The pid and start time (in clock ticks since boot) of this process.
fn me() -> Option<String> {
    let pid = std::process::id();
    start_time(pid).map(|t| format!("{pid} {t}\n"))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Marks `dir` as this process's.
pub fn mark(dir: &Path) -> std::io::Result<()> {
    fs::write(dir.join(OWNER), me().unwrap_or_default())
}

/// Is the process that marked `dir` still running? `None` when `dir` has no readable mark.
pub fn owner_alive(dir: &Path) -> Option<bool> {
    let text = fs::read_to_string(dir.join(OWNER)).ok()?;
    let mut f = text.split_whitespace();
    let pid: u32 = f.next()?.parse().ok()?;
    let started: u64 = f.next()?.parse().ok()?;
    Some(start_time(pid) == Some(started))
}

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub dirs: usize,
    pub bytes: u64,
}

/// Removes the sandbox state directories in `tmp` whose owner is gone. Unmarked ones (from
/// versions before the mark) go when nothing changed them for an hour.
pub fn sweep_state_dirs(tmp: &Path) -> Swept {
    let mut s = Swept::default();
    let Ok(rd) = fs::read_dir(tmp) else { return s };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("manifold-run-") {
            continue;
        }
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_dir() {
            continue;
        }
        let gone = match owner_alive(&p) {
            Some(alive) => !alive,
            None => m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600),
        };
        if gone {
            let bytes = size(&p);
            if fs::remove_dir_all(&p).is_ok() {
                s.dirs += 1;
                s.bytes += bytes;
            }
        }
    }
    s
}

/// Removes everything in `dir` (a build's scratch directory: call it only while no build can
/// be using it, under the store's GC lock).
pub fn sweep_all(dir: &Path) -> Swept {
    let mut s = Swept::default();
    let Ok(rd) = fs::read_dir(dir) else { return s };
    for e in rd.flatten() {
        let p = e.path();
        let bytes = size(&p);
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&p).is_ok(),
            _ => fs::remove_file(&p).is_ok(),
        };
        if removed {
            s.dirs += 1;
            s.bytes += bytes;
        }
    }
    s
}

fn size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dirs_of_gone_processes_are_swept() {
        let t = tempfile::tempdir().unwrap();
        let mine = t.path().join("manifold-run-mine");
        let dead = t.path().join("manifold-run-dead");
        let reused = t.path().join("manifold-run-reused");
        let young = t.path().join("manifold-run-unmarked");
        let other = t.path().join("something-else");
        for d in [&mine, &dead, &reused, &young, &other] {
            fs::create_dir(d).unwrap();
        }
        mark(&mine).unwrap();
        assert_eq!(owner_alive(&mine), Some(true));
        // A pid above the kernel's maximum never runs.
        fs::write(dead.join(OWNER), "4194305 1\n").unwrap();
        // Our pid with another start time: a reused pid.
        fs::write(reused.join(OWNER), format!("{} 1\n", std::process::id())).unwrap();
        let s = sweep_state_dirs(t.path());
        assert_eq!(s.dirs, 2);
        assert!(mine.exists() && young.exists() && other.exists());
        assert!(!dead.exists() && !reused.exists());
    }
}
