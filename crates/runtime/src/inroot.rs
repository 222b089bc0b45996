//! Paths inside a root that hostile code may have shaped: a stage's filesystem where an earlier
//! RUN made `/hostroot -> /`, a build context from a pull request. Every lookup is made with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a descriptor of the root, so
//! symlinks (absolute or relative) and `..` resolve inside it as if it were `/`, and the result
//! is a descriptor, never a path that could be swapped before it is used.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};

use crate::{Error, Result};

/// What a resolved path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// An `O_PATH` descriptor of something inside a root.
#[derive(Debug)]
pub struct Resolved {
    pub fd: OwnedFd,
    pub kind: Kind,
}

pub(crate) const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn refused(path: &str, root: &Path, why: impl Into<String>) -> Error {
    Error::Sandbox {
        what: format!("mount source {path:?} in {}", root.display()),
        reason: why.into(),
    }
}

/// Does `path`, read as written, stay inside its root? `a/../b` does; `../x` and `a/../../x` do
/// not. (Symlinks are not looked at here: [`open_in_root`] keeps them inside.)
pub fn stays_inside(path: &str) -> bool {
    let mut depth: usize = 0;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// Opens `path` inside `root` as if `root` were `/`. A `..` that climbs out of the root as
/// written is refused; symlinks on the way resolve inside the root. Only directories and
/// regular files are accepted (a device node or socket from an image is not bound).
pub fn open_in_root(root: &Path, path: &str) -> Result<Resolved> {
    if !stays_inside(path) {
        return Err(refused(
            path,
            root,
            "it climbs out of its root with `..`; name a path inside the stage, image or context",
        ));
    }
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refused(path, root, format!("opening the root: {e}")))?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let fd = openat2(
        &root_fd,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOSYS => refused(
            path,
            root,
            "this kernel has no openat2 (Linux 5.6 or newer is needed to resolve mount sources safely)",
        ),
        rustix::io::Errno::NOENT => refused(
            path,
            root,
            "no such file or directory inside that root (its symlinks resolve inside it, never on the host)",
        ),
        e => refused(path, root, e.to_string()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| refused(path, root, e.to_string()))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        other => {
            return Err(refused(
                path,
                root,
                format!("it is a {other:?}; only files and directories can be bound"),
            ))
        }
    };
    Ok(Resolved { fd, kind })
}

/// `/proc/self/fd/N` in a stack buffer, for mount(2) through a descriptor without allocating
/// (it runs in the forked child).
pub(crate) struct FdPath([u8; 32]);

impl FdPath {
    pub(crate) fn new(fd: i32) -> FdPath {
        let mut b = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        b[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            b[prefix.len() + i] = digits[len - 1 - i];
        }
        FdPath(b)
    }

    pub(crate) fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits.
        CStr::from_bytes_until_nul(&self.0).unwrap_or_default()
    }
}

/// In the forked child: the mount target `prefixes` (one per component: `a`, `a/b`, `a/b/c`)
/// resolved inside `root`, each missing directory created (the last one a file when `file`).
/// Returns an `O_PATH` descriptor of the target, or which prefix failed and why.
pub(crate) fn make_target<'a>(
    root: BorrowedFd<'_>,
    prefixes: &'a [std::ffi::CString],
    names: &'a [std::ffi::CString],
    file: bool,
) -> std::result::Result<OwnedFd, (&'a CStr, rustix::io::Errno)> {
    let mut parent: Option<OwnedFd> = None;
    for (i, (prefix, name)) in prefixes.iter().zip(names).enumerate() {
        let last = i + 1 == prefixes.len();
        let want_dir = !(last && file);
        let flags = if want_dir {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
        } else {
            OFlags::PATH | OFlags::CLOEXEC
        };
        let fd = match openat2(root, prefix.as_c_str(), flags, Mode::empty(), IN_ROOT) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                let dir = parent.as_ref().map(|p| p.as_fd()).unwrap_or(root);
                let made = if want_dir {
                    rustix::fs::mkdirat(dir, name.as_c_str(), Mode::from_raw_mode(0o755))
                } else {
                    rustix::fs::openat(
                        dir,
                        name.as_c_str(),
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map(drop)
                };
                made.map_err(|e| (prefix.as_c_str(), e))?;
                openat2(root, prefix.as_c_str(), flags, Mode::empty(), IN_ROOT)
                    .map_err(|e| (prefix.as_c_str(), e))?
            }
            Err(e) => return Err((prefix.as_c_str(), e)),
        };
        parent = Some(fd);
    }
    parent.ok_or((c"/", rustix::io::Errno::INVAL))
}

/// Removes `rel` under `top` when it is an empty directory or an empty regular file, never
/// following a symlink on the way (the step may have planted some). Reports whether it did.
pub(crate) fn remove_empty(top: &Path, rel: &str) -> bool {
    let Ok(mut dir) = rustix::fs::open(
        top,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let Some((last, inner)) = parts.split_last() else {
        return false;
    };
    for c in inner {
        match rustix::fs::openat(
            &dir,
            *c,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => dir = d,
            Err(_) => return false,
        }
    }
    let Ok(st) = rustix::fs::statat(&dir, *last, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    match FileType::from_raw_mode(st.st_mode) {
        // rmdir refuses a directory that is not empty.
        FileType::Directory => {
            rustix::fs::unlinkat(&dir, *last, rustix::fs::AtFlags::REMOVEDIR).is_ok()
        }
        FileType::RegularFile if st.st_size == 0 => {
            rustix::fs::unlinkat(&dir, *last, rustix::fs::AtFlags::empty()).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_out_of_the_root_is_refused_as_written() {
        assert!(stays_inside("a/../b"));
        assert!(stays_inside("/"));
        assert!(stays_inside("./a/./b/.."));
        assert!(!stays_inside("../../.."));
        assert!(!stays_inside("/a/../../etc"));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        let root = t.path().join("root");
        std::fs::create_dir_all(host.join("secret")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/inside"), "in").unwrap();
        std::os::unix::fs::symlink("/", root.join("hostroot")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("abs")).unwrap();
        // `/hostroot/etc` is the root's own etc, not the host's.
        for p in ["hostroot/etc", "up/etc", "/hostroot/up/etc/"] {
            let r = open_in_root(&root, p).unwrap();
            assert_eq!(r.kind, Kind::Dir);
            let link = std::fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&r.fd)
            ))
            .unwrap();
            assert_eq!(link, root.join("etc"), "{p}");
        }
        // An absolute link to a host directory names a path inside the root, which is missing.
        let e = open_in_root(&root, "abs/secret").unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        let e = open_in_root(&root, "../host").unwrap_err().to_string();
        assert!(e.contains("climbs out"), "{e}");
        assert_eq!(open_in_root(&root, "etc/inside").unwrap().kind, Kind::File);
    }

    #[test]
    fn fd_paths() {
        assert_eq!(FdPath::new(0).as_cstr(), c"/proc/self/fd/0");
        assert_eq!(FdPath::new(1234).as_cstr(), c"/proc/self/fd/1234");
    }

    #[test]
    fn removing_stubs_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let top = t.path().join("top");
        std::fs::create_dir_all(outside.join("empty")).unwrap();
        std::fs::create_dir_all(top.join("run/secrets")).unwrap();
        std::fs::write(top.join("run/secrets/x"), "").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        assert!(!remove_empty(&top, "link/empty"));
        assert!(outside.join("empty").is_dir());
        assert!(!remove_empty(&top, "run/secrets"), "not empty");
        assert!(remove_empty(&top, "run/secrets/x"));
        assert!(remove_empty(&top, "run/secrets"));
        assert!(remove_empty(&top, "run"));
    }
}
