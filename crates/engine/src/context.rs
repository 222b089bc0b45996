//! Where COPY and ADD read: the build context (with `.dockerignore`) or another stage's root
//! filesystem, and docker's rules for what lands where.

use std::collections::VecDeque;
use std::fs::{self, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use dockerfile::plan::PlannedSource;
use dockerfile::values::Chmod;

use runtime::{io_err, Error, Result};

/// A build context that is still arriving: a builder node starts the build while the context
/// streams in, and the steps that read it wait until it is complete and its digest checked.
#[derive(Clone, Default)]
pub struct ContextGate(std::sync::Arc<GateState>);

/// The outcome once known (`Err`: why the context will never be complete), and its waiters.
#[derive(Default)]
struct GateState {
    outcome: std::sync::Mutex<Option<Result<(), String>>>,
    arrived: std::sync::Condvar,
}

impl std::fmt::Debug for ContextGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContextGate(open: {})", self.is_open())
    }
}

impl ContextGate {
    /// The context is complete (`Ok`) or will never be (`Err`, why).
    pub fn open(&self, outcome: Result<(), String>) {
        let mut g = self.0.outcome.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(outcome);
        self.0.arrived.notify_all();
    }

    pub fn is_open(&self) -> bool {
        let g = self.0.outcome.lock().unwrap_or_else(|p| p.into_inner());
        g.is_some()
    }

    /// Waits until the context is complete; `cancelled` is asked every 100 ms.
    pub fn wait(&self, cancelled: impl Fn() -> bool) -> Result<()> {
        let mut g = self.0.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*g {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => {
                    return Err(Error::Unsupported(format!(
                        "the build context did not arrive: {e}"
                    )))
                }
                None if cancelled() => {
                    return Err(Error::Unsupported(
                        "the build was cancelled while its context arrived".into(),
                    ))
                }
                None => {
                    g = self
                        .0
                        .arrived
                        .wait_timeout(g, std::time::Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

/// A directory COPY reads from.
pub struct Context {
    root: PathBuf,
    /// `.dockerignore` patterns in order; `true` for a `!` exception.
    ignore: Vec<(Vec<String>, bool)>,
    /// A stage's root: symlinks (absolute ones too) and `..` resolve inside it, as if it were
    /// `/`, as BuildKit does. The build context refuses links that leave it instead.
    in_root: bool,
}

/// How many symlinks one path may pass through (Linux's limit).
const MAX_SYMLINK_HOPS: usize = 40;

impl Context {
    /// The build context, with its `.dockerignore`.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = dir
            .canonicalize()
            .map_err(io_err("opening the build context", dir))?;
        if !root.is_dir() {
            return Err(Error::Unsupported(format!(
                "the build context {} is not a directory",
                dir.display()
            )));
        }
        let mut ignore = Vec::new();
        if let Ok(text) = fs::read_to_string(root.join(".dockerignore")) {
            for line in text.lines() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let (neg, pat) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                ignore.push((components(pat), neg));
            }
        }
        Ok(Context {
            root,
            ignore,
            in_root: false,
        })
    }

    /// Another stage's root filesystem (no ignore file applies).
    pub fn of_rootfs(dir: &Path) -> Result<Self> {
        Ok(Context {
            root: dir
                .canonicalize()
                .map_err(io_err("opening the stage's filesystem", dir))?,
            ignore: Vec::new(),
            in_root: true,
        })
    }

    fn ignored(&self, rel: &str) -> bool {
        is_excluded(&self.ignore, rel)
    }

    /// Resolves a source path, refusing one that leaves the context through `..` or a symlink.
    /// In a stage's root, symlinks and `..` resolve inside the root instead.
    fn resolve(&self, rel: &str) -> Result<PathBuf> {
        if self.in_root {
            return self.resolve_in_root(rel);
        }
        let joined = self.root.join(clean(rel));
        let real = joined.canonicalize().map_err(|_| not_found(rel))?;
        if !real.starts_with(&self.root) {
            return Err(Error::Unsupported(format!(
                "COPY source {rel:?} points outside the build context (to {}); \
                 copy what it points at into the context instead",
                real.display()
            )));
        }
        Ok(real)
    }

    /// Follows `rel` component by component inside the root: an absolute link target starts
    /// again at the root, and `..` at the root stays there. The root is a scratch copy only this
    /// build writes, so the lexical walk cannot be raced.
    fn resolve_in_root(&self, rel: &str) -> Result<PathBuf> {
        let mut queue: VecDeque<String> = rel
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let full = self.root.join(&next);
            let meta = fs::symlink_metadata(&full).map_err(|_| self.not_found(rel))?;
            if !meta.file_type().is_symlink() {
                cur = next;
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(Error::Unsupported(format!(
                    "COPY --from source {rel:?} passes through more than {MAX_SYMLINK_HOPS} \
                     symlinks (a loop?); name the file the links lead to"
                )));
            }
            let target = fs::read_link(&full).map_err(io_err("reading the link", &full))?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                cur = PathBuf::new();
            }
            let mut rest: VecDeque<String> = target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            rest.extend(queue.drain(..));
            queue = rest;
        }
        Ok(self.root.join(cur))
    }

    fn not_found(&self, rel: &str) -> Error {
        if self.in_root {
            Error::Unsupported(format!(
                "COPY --from source {rel:?} is not in that stage or image \
                 (its symlinks resolve inside it, never on the host)"
            ))
        } else {
            not_found(rel)
        }
    }

    /// The context directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths (relative to the root) matching a source pattern with `*`, `?` or `[...]`.
    fn expand(&self, pattern: &str) -> Result<Vec<String>> {
        let pat = clean(pattern);
        if !pat.contains(['*', '?', '[']) {
            if pat.is_empty() || pat == "." {
                return Ok(vec![String::new()]);
            }
            if self.ignored(&pat) {
                return Err(self.not_found(pattern));
            }
            self.resolve(&pat)?;
            return Ok(vec![pat]);
        }
        let parts = components(&pat);
        let mut found = vec![String::new()];
        for part in &parts {
            let mut next = Vec::new();
            for base in &found {
                let dir = if self.in_root {
                    match self.resolve_in_root(base) {
                        Ok(d) => d,
                        Err(_) => continue,
                    }
                } else {
                    self.root.join(base)
                };
                let Ok(rd) = fs::read_dir(&dir) else { continue };
                let mut names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect();
                names.sort();
                for n in names {
                    if component_match(part, &n) {
                        let rel = if base.is_empty() {
                            n
                        } else {
                            format!("{base}/{n}")
                        };
                        if !self.ignored(&rel) {
                            next.push(rel);
                        }
                    }
                }
            }
            found = next;
        }
        if found.is_empty() {
            return Err(self.not_found(pattern));
        }
        for f in &found {
            self.resolve(f)?;
        }
        Ok(found)
    }
}

fn not_found(rel: &str) -> Error {
    Error::Unsupported(format!(
        "COPY source {rel:?} is not in the build context (or .dockerignore excludes it)"
    ))
}

/// A path made relative and without `.`/`..` escapes (`..` at the top stays at the top).
fn clean(p: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().to_string()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

fn components(p: &str) -> Vec<String> {
    clean(p.trim_start_matches('/'))
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Does the last matching pattern exclude `rel` (or a directory above it)? docker's rules.
pub fn is_excluded(patterns: &[(Vec<String>, bool)], rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let mut excluded = false;
    for (pat, neg) in patterns {
        // A pattern matching a parent directory excludes everything below it.
        let hit = (1..=parts.len()).any(|n| path_match(pat, &parts[..n]));
        if hit {
            excluded = !neg;
        }
    }
    excluded
}

fn path_match(pat: &[String], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((p, rest)) if p == "**" => (0..=parts.len()).any(|i| path_match(rest, &parts[i..])),
        Some((p, rest)) => {
            !parts.is_empty() && component_match(p, parts[0]) && path_match(rest, &parts[1..])
        }
    }
}

/// `*`, `?` and `[...]` within one path component, as Go's filepath.Match.
pub fn component_match(pat: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some(end) = rest.iter().position(|&c| c == ']') else {
                    return !n.is_empty() && n[0] == '[' && go(rest, &n[1..]);
                };
                if n.is_empty() {
                    return false;
                }
                let (set, after) = (&rest[..end], &rest[end + 1..]);
                let (negate, set) = match set.first() {
                    Some('^') | Some('!') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= n[0] && n[0] <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == n[0];
                        i += 1;
                    }
                }
                hit != negate && go(after, &n[1..])
            }
            Some(('\\', rest)) if !rest.is_empty() => {
                !n.is_empty() && n[0] == rest[0] && go(&rest[1..], &n[1..])
            }
            Some((c, rest)) => !n.is_empty() && n[0] == *c && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

impl Context {
    /// The files and directories a source pattern names: (path in the context, real path).
    pub fn matches(&self, pattern: &str) -> Result<Vec<(String, PathBuf)>> {
        self.expand(pattern)?
            .into_iter()
            .map(|rel| {
                let real = self.resolve(&rel)?;
                Ok((rel, real))
            })
            .collect()
    }

    /// A digest of everything `sources` would copy: paths, types, modes, mtimes and contents,
    /// after `.dockerignore` and `exclude`. Equal fingerprints give equal COPY layers.
    pub fn fingerprint(&self, sources: &[PlannedSource], exclude: &[String]) -> Result<String> {
        let excludes: Vec<(Vec<String>, bool)> =
            exclude.iter().map(|e| (components(e), false)).collect();
        let mut h = oci::Algorithm::Sha256.hasher();
        let field = |h: &mut oci::Hasher, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for s in sources {
            match s {
                PlannedSource::Heredoc { name, content } => {
                    field(&mut h, b"heredoc");
                    field(&mut h, name.as_bytes());
                    field(&mut h, content.as_bytes());
                }
                PlannedSource::Path { path } => {
                    field(&mut h, b"path");
                    field(&mut h, path.as_bytes());
                    for rel in self.expand(path)? {
                        if is_excluded(&excludes, &rel) {
                            continue;
                        }
                        let real = self.resolve(&rel)?;
                        self.hash_tree(&rel, &real, &excludes, &mut h)?;
                    }
                }
            }
        }
        Ok(h.finish().to_string())
    }

    fn hash_tree(
        &self,
        rel: &str,
        path: &Path,
        excludes: &[(Vec<String>, bool)],
        h: &mut oci::Hasher,
    ) -> Result<()> {
        let field = |h: &mut oci::Hasher, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        let meta = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
        field(h, rel.as_bytes());
        field(h, &meta.mode().to_le_bytes());
        field(h, &meta.mtime().to_le_bytes());
        field(h, &meta.mtime_nsec().to_le_bytes());
        if meta.file_type().is_symlink() {
            let t = fs::read_link(path).map_err(io_err("reading the link", path))?;
            field(h, t.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            // Streamed: a context file of any size is hashed in bounded memory. Small files
            // (most of a context) are read whole, without a large buffer per file.
            let mut f = fs::File::open(path).map_err(io_err("reading", path))?;
            let len = f.metadata().map_err(io_err("reading", path))?.len();
            h.update(&len.to_le_bytes());
            let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
            let mut seen = 0u64;
            loop {
                let n = std::io::Read::read(&mut f, &mut buf).map_err(io_err("reading", path))?;
                if n == 0 {
                    break;
                }
                seen += n as u64;
                h.update(&buf[..n]);
            }
            if seen != len {
                return Err(Error::Unsupported(format!(
                    "{} changed while it was read ({len} bytes, then {seen}); build again",
                    path.display()
                )));
            }
        } else if meta.is_dir() {
            let mut names: Vec<String> = fs::read_dir(path)
                .map_err(io_err("reading", path))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            names.sort();
            for n in names {
                let child = if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                };
                if self.ignored(&child) || is_excluded(excludes, &child) {
                    continue;
                }
                self.hash_tree(&child, &path.join(&n), excludes, h)?;
            }
        }
        Ok(())
    }
}

/// Copies `sources` from `ctx` to `dest` (relative to `workdir` unless absolute) inside `upper`,
/// with docker's rules: a directory's contents are copied, several sources or a trailing `/` make
/// `dest` a directory, files keep their mode and mtime, owners become root or `owner`.
#[allow(clippy::too_many_arguments)]
pub fn copy_into(
    ctx: &Context,
    sources: &[PlannedSource],
    dest: &str,
    workdir: &str,
    upper: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<&Chmod>,
    exclude: &[String],
) -> Result<()> {
    let abs = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let dest_is_dir_hint = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let target = upper.join(clean(&abs));
    let excludes: Vec<(Vec<String>, bool)> =
        exclude.iter().map(|e| (components(e), false)).collect();
    let (uid, gid) = owner.unwrap_or((0, 0));

    let mut items: Vec<Item> = Vec::new();
    for s in sources {
        match s {
            PlannedSource::Path { path } => {
                for rel in ctx.expand(path)? {
                    if is_excluded(&excludes, &rel) {
                        continue;
                    }
                    let real = ctx.resolve(&rel)?;
                    items.push(Item::Path(rel, real));
                }
            }
            PlannedSource::Heredoc { name, content } => {
                items.push(Item::Inline(name.clone(), content.clone()))
            }
        }
    }
    let into_dir = dest_is_dir_hint || items.len() > 1;
    make_parents(upper, &target, uid, gid)?;
    for item in items {
        match item {
            Item::Inline(name, content) => {
                let to = if into_dir {
                    target.join(&name)
                } else {
                    target.clone()
                };
                make_parents(upper, &to, uid, gid)?;
                fs::write(&to, content).map_err(io_err("writing", &to))?;
                finish(
                    &to,
                    uid,
                    gid,
                    Some(mode.map_or(0o644, |c| c.apply(0o644, false))),
                    None,
                )?;
            }
            Item::Path(rel, real) => {
                let meta = fs::symlink_metadata(&real).map_err(io_err("reading", &real))?;
                if meta.is_dir() {
                    fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
                    copy_tree(ctx, &rel, &real, &target, uid, gid, mode, &excludes)?;
                } else {
                    let name = Path::new(&rel)
                        .file_name()
                        .map(|n| n.to_os_string())
                        .unwrap_or_default();
                    let to = if into_dir {
                        target.join(name)
                    } else {
                        target.clone()
                    };
                    copy_one(&real, &to, &meta, uid, gid, mode)?;
                }
            }
        }
    }
    Ok(())
}

enum Item {
    Path(String, PathBuf),
    Inline(String, String),
}

#[allow(clippy::too_many_arguments)]
fn copy_tree(
    ctx: &Context,
    rel: &str,
    dir: &Path,
    to: &Path,
    uid: u32,
    gid: u32,
    mode: Option<&Chmod>,
    excludes: &[(Vec<String>, bool)],
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ctx.ignored(&child_rel) || is_excluded(excludes, &child_rel) {
            continue;
        }
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
        let dest = to.join(&name);
        if meta.is_dir() {
            fs::create_dir_all(&dest).map_err(io_err("creating", &dest))?;
            copy_tree(ctx, &child_rel, &path, &dest, uid, gid, mode, excludes)?;
            finish(
                &dest,
                uid,
                gid,
                Some(mode.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode(), true))),
                Some(&meta),
            )?;
        } else {
            copy_one(&path, &dest, &meta, uid, gid, mode)?;
        }
    }
    Ok(())
}

fn copy_one(
    from: &Path,
    to: &Path,
    meta: &fs::Metadata,
    uid: u32,
    gid: u32,
    mode: Option<&Chmod>,
) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    if to.symlink_metadata().is_ok() {
        let _ = fs::remove_file(to);
    }
    if meta.file_type().is_symlink() {
        // Links are copied as links (docker does not follow them inside the context).
        let target = fs::read_link(from).map_err(io_err("reading the link", from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io_err("creating the link", to))?;
        std::os::unix::fs::lchown(to, Some(uid), Some(gid)).map_err(io_err("chown", to))?;
        return Ok(());
    }
    if !meta.is_file() {
        return Err(Error::Unsupported(format!(
            "{} is not a regular file, directory or symlink; COPY takes only those",
            from.display()
        )));
    }
    fs::copy(from, to).map_err(io_err("copying to", to))?;
    finish(
        to,
        uid,
        gid,
        Some(mode.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode(), false))),
        Some(meta),
    )
}

fn finish(
    p: &Path,
    uid: u32,
    gid: u32,
    mode: Option<u32>,
    times_from: Option<&fs::Metadata>,
) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_err("chown", p))?;
    if let Some(m) = mode {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).map_err(io_err("chmod", p))?;
    }
    if let Some(meta) = times_from {
        if let Ok(t) = meta.modified() {
            let f = fs::File::open(p).map_err(io_err("opening", p))?;
            f.set_times(FileTimes::new().set_modified(t))
                .map_err(io_err("setting the time of", p))?;
        }
    }
    Ok(())
}

/// Creates the directories above `target` inside `upper`, owned by root as docker makes them.
fn make_parents(upper: &Path, target: &Path, uid: u32, gid: u32) -> Result<()> {
    let _ = (uid, gid);
    if let Some(parent) = target.parent() {
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
            let mut p = parent;
            while p != upper && p.starts_with(upper) {
                fs::set_permissions(p, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", p))?;
                match p.parent() {
                    Some(pp) => p = pp,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

impl Context {
    /// Appends everything `.dockerignore` lets through to `out` (paths relative to the context,
    /// sorted, symlinks as symlinks), as `docker build` sends a context to its daemon. The ignore
    /// file itself always goes along.
    pub fn write_tar<W: std::io::Write>(&self, out: &mut tar::Builder<W>) -> Result<()> {
        out.follow_symlinks(false);
        let mut dirs = vec![String::new()];
        while let Some(rel) = dirs.pop() {
            let dir = self.root.join(&rel);
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map_err(io_err("reading", &dir))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            // Depth-first in name order: push in reverse so the smallest name comes out first.
            let mut subdirs = Vec::new();
            for n in names {
                let r = if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                };
                if self.ignored(&r) && r != ".dockerignore" {
                    // An exception below an excluded directory still needs the walk.
                    if !self.ignore.iter().any(|(_, neg)| *neg) {
                        continue;
                    }
                }
                let p = self.root.join(&r);
                let meta = fs::symlink_metadata(&p).map_err(io_err("reading", &p))?;
                if meta.is_dir() {
                    if !self.ignored(&r) {
                        out.append_path_with_name(&p, &r)
                            .map_err(io_err("adding to the context tar", &p))?;
                    }
                    subdirs.push(r);
                } else if !self.ignored(&r) || r == ".dockerignore" {
                    out.append_path_with_name(&p, &r)
                        .map_err(io_err("adding to the context tar", &p))?;
                }
            }
            dirs.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(v: &[&str]) -> Vec<(Vec<String>, bool)> {
        v.iter()
            .map(|p| match p.strip_prefix('!') {
                Some(x) => (components(x), true),
                None => (components(p), false),
            })
            .collect()
    }

    #[test]
    fn dockerignore_rules() {
        let p = pats(&[
            "*.log",
            "build",
            "**/*.tmp",
            "docs/*",
            "!docs/keep.md",
            "/secret",
        ]);
        assert!(is_excluded(&p, "a.log"));
        assert!(
            !is_excluded(&p, "sub/a.log"),
            "*.log is anchored at the root"
        );
        assert!(
            is_excluded(&p, "build/out/x"),
            "a matched directory excludes what is below"
        );
        assert!(is_excluded(&p, "deep/er/x.tmp"));
        assert!(is_excluded(&p, "x.tmp"));
        assert!(is_excluded(&p, "docs/a.md"));
        assert!(
            !is_excluded(&p, "docs/keep.md"),
            "the last matching pattern wins"
        );
        assert!(is_excluded(&p, "secret"));
        assert!(!is_excluded(&p, "src/main.rs"));
    }

    #[test]
    fn component_globs() {
        assert!(component_match("*.rs", "main.rs"));
        assert!(!component_match("*.rs", "main.rc"));
        assert!(component_match("file?.txt", "file1.txt"));
        assert!(component_match("[a-c]x", "bx"));
        assert!(!component_match("[!a-c]x", "bx"));
        assert!(component_match("lit\\*", "lit*"));
    }

    #[test]
    fn copies_with_docker_rules_and_refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let ctx_dir = t.path().join("ctx");
        fs::create_dir_all(ctx_dir.join("src/sub")).unwrap();
        fs::write(ctx_dir.join("src/a.txt"), "a").unwrap();
        fs::write(ctx_dir.join("src/sub/b.txt"), "b").unwrap();
        fs::write(ctx_dir.join("src/skip.log"), "x").unwrap();
        fs::write(ctx_dir.join("one.txt"), "1").unwrap();
        fs::write(ctx_dir.join(".dockerignore"), "src/*.log\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx_dir.join("evil")).unwrap();
        let ctx = Context::open(&ctx_dir).unwrap();
        let upper = t.path().join("upper");
        fs::create_dir_all(&upper).unwrap();
        let p = |s: &str| PlannedSource::Path { path: s.into() };

        copy_into(&ctx, &[p("src")], "/app", "/", &upper, None, None, &[]).unwrap();
        assert_eq!(fs::read_to_string(upper.join("app/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_to_string(upper.join("app/sub/b.txt")).unwrap(),
            "b"
        );
        assert!(
            !upper.join("app/skip.log").exists(),
            ".dockerignore applies"
        );

        copy_into(
            &ctx,
            &[p("one.txt")],
            "renamed.txt",
            "/work",
            &upper,
            Some((1000, 1000)),
            Some(&Chmod::Octal(0o600)),
            &[],
        )
        .unwrap();
        let m = fs::metadata(upper.join("work/renamed.txt")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1000, 0o600));

        copy_into(
            &ctx,
            &[p("src/*.txt"), p("one.txt")],
            "/multi/",
            "/",
            &upper,
            None,
            None,
            &[],
        )
        .unwrap();
        assert!(upper.join("multi/a.txt").is_file() && upper.join("multi/one.txt").is_file());

        let err = copy_into(&ctx, &[p("evil")], "/x", "/", &upper, None, None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the build context"), "{err}");
        let err = copy_into(
            &ctx,
            &[p("../../etc/passwd")],
            "/x",
            "/",
            &upper,
            None,
            None,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not in the build context"), "{err}");
        let err = copy_into(
            &ctx,
            &[p("missing.txt")],
            "/x",
            "/",
            &upper,
            None,
            None,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"missing.txt\" is not in the build context"),
            "{err}"
        );
    }
}
