//! The CLI's own modules form no import circle: every `crate::MODULE` (and `super::` from a
//! top-level file, which is the crate root) in crates/cli/src is an arrow, and the graph must be
//! acyclic. The crate root (main.rs) is a node too: a handler that uses an item of main.rs while
//! main.rs dispatches to it is a circle. Read as tokens, so comments and strings do not count
//! and paths inside macros (`format!("{}", crate::x::y())`) do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

const ROOT: &str = "main";

/// Module → (module it uses → one path that shows it).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn is_sep(t: &[TokenTree], i: usize) -> bool {
    matches!((t.get(i), t.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && b.as_char() == ':')
}

fn ident(t: Option<&TokenTree>) -> Option<String> {
    match t {
        Some(TokenTree::Ident(i)) => Some(i.to_string()),
        _ => None,
    }
}

/// The module a root-relative name (`build` in `crate::build::run`) belongs to: that module, or
/// the crate root for an item defined there (`crate::Cli`).
fn target(name: &str, modules: &BTreeSet<String>) -> String {
    if modules.contains(name) {
        name.to_string()
    } else {
        ROOT.to_string()
    }
}

/// Collects the arrows of one file's tokens. `depth` counts inline `mod x { }` blocks: there
/// `super::` is the file's own module, not the root.
fn walk(
    ts: TokenStream,
    me: &str,
    depth: usize,
    modules: &BTreeSet<String>,
    out: &mut BTreeMap<String, String>,
) {
    let t: Vec<TokenTree> = ts.into_iter().collect();
    fn add(out: &mut BTreeMap<String, String>, me: &str, to: String, via: String) {
        if to != me {
            out.entry(to).or_insert(via);
        }
    }
    for i in 0..t.len() {
        let after_sep = i >= 2 && is_sep(&t, i - 2);
        let head = ident(t.get(i));
        let is_root_path = match head.as_deref() {
            Some("crate") => true,
            Some("super") => me != ROOT && depth == 0 && !after_sep,
            _ => false,
        };
        if is_root_path && is_sep(&t, i + 1) {
            let kw = head.as_deref().unwrap_or_default();
            match t.get(i + 3) {
                Some(TokenTree::Ident(n)) => {
                    let n = n.to_string();
                    add(out, me, target(&n, modules), format!("{kw}::{n}"));
                }
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                    // `use crate::{a, b::c, D}`: the first name of each item.
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    let mut first = true;
                    for tt in &inner {
                        match tt {
                            TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                            TokenTree::Ident(n) if first => {
                                let n = n.to_string();
                                add(out, me, target(&n, modules), format!("{kw}::{{{n}}}"));
                                first = false;
                            }
                            _ => first = false,
                        }
                    }
                }
                _ => {}
            }
        }
        // In the root, modules are named bare: `build::BuildArgs`, `local::run(..)`.
        if me == ROOT && depth == 0 && !after_sep && is_sep(&t, i + 1) {
            if let Some(n) = &head {
                if modules.contains(n) {
                    add(out, me, n.clone(), format!("{n}::"));
                }
            }
        }
        if let TokenTree::Group(g) = &t[i] {
            let is_mod_body = g.delimiter() == Delimiter::Brace
                && i >= 2
                && ident(t.get(i - 2)).as_deref() == Some("mod");
            walk(g.stream(), me, depth + is_mod_body as usize, modules, out);
        }
    }
}

/// Every `.rs` file under src, by the top-level module it belongs to.
fn sources(src: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap();
                let first = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                let name = first.trim_end_matches(".rs").to_string();
                out.push((name, p));
            }
        }
    }
    out.sort();
    out
}

fn graph_of(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files
        .iter()
        .map(|(m, _)| m.clone())
        .filter(|m| m != ROOT)
        .collect();
    let mut g = Graph::new();
    for (m, text) in files {
        let ts = TokenStream::from_str(text).unwrap_or_else(|e| panic!("{m}: {e:?}"));
        walk(ts, m, 0, &modules, g.entry(m.clone()).or_default());
    }
    g
}

/// One circle of the graph, as `a -> b -> a`, if it has any.
fn find_cycle(g: &Graph) -> Option<String> {
    fn dfs(
        g: &Graph,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            let steps: Vec<String> = c
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
                .collect();
            return Some(steps.join(", "));
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = dfs(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| dfs(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_cli_modules_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<(String, String)> = sources(&src)
        .into_iter()
        .map(|(m, p)| (m, std::fs::read_to_string(p).unwrap()))
        .collect();
    let g = graph_of(&files);
    // The reader must see the arrows it is meant to judge: main dispatches to every handler.
    let arrows: usize = g.values().map(BTreeMap::len).sum();
    assert!(
        g[ROOT].len() >= 5 && arrows >= 20,
        "the reader found only {arrows} arrows: {g:#?}"
    );
    if let Some(c) = find_cycle(&g) {
        panic!("crates/cli/src has an import circle: {c}\nthe whole graph: {g:#?}");
    }
}

#[test]
fn the_reader_sees_circles_through_root_braces_macros_and_super() {
    let files = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let cases = [
        // A grouped `use`, answered by a path inside a macro.
        files(&[
            ("main", "mod a; mod b;"),
            ("a", "use crate::{b, Cli};"),
            ("b", "fn f() { println!(\"{}\", crate::a::g()); }"),
        ]),
        // A handler using an item of the root, which dispatches to it bare.
        files(&[
            ("main", "fn main() { a::run(); }"),
            ("a", "use super::Cli;"),
        ]),
    ];
    for fs in &cases {
        assert!(find_cycle(&graph_of(fs)).is_some(), "{fs:?}");
    }
    let fine = files(&[
        ("main", "fn main() { a::run(); }"),
        // `super` in a test module is the file itself; comments and strings do not count.
        (
            "a",
            "// crate::main\nfn run() { let s = \"crate::main\"; }\nmod tests { use super::*; }",
        ),
    ]);
    assert_eq!(find_cycle(&graph_of(&fine)), None);
}
