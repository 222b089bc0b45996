//! The crate table of DESIGN.md and the README ("Layout of the code"), checked against every
//! crate's Cargo.toml, as go-containerregistry's depcheck does: a crate may depend only on the
//! crates the table lets it use, so arrows point down the table and nothing imports `cli`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Crate folder → the workspace crates it may depend on (normal, build and dev dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("oci", &[]),
    ("store", &["oci"]),
    ("registry", &["oci"]),
    ("transport", &["oci", "store", "registry"]),
    ("dockerfile", &["oci"]),
    ("runtime", &["oci", "store"]),
    ("engine", &["oci", "store", "dockerfile", "runtime"]),
    ("server", &["oci", "store"]),
    (
        "cli",
        &[
            "oci",
            "store",
            "registry",
            "transport",
            "dockerfile",
            "runtime",
            "engine",
            "server",
        ],
    ),
];

/// Workspace dependency key (`oci`, `store`, ...) → crate folder, from the root Cargo.toml's
/// `[workspace.dependencies]` entries with a `path = "crates/X"`.
fn workspace_crates(root: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        if let Some(p) = rest.split("path = \"crates/").nth(1) {
            let folder = p.split('"').next().unwrap().to_string();
            out.insert(key.trim().to_string(), folder);
        }
    }
    out
}

/// The workspace crates a Cargo.toml depends on, by folder, with the section naming each.
fn deps_of(toml: &str, crates: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.trim_matches(['[', ']']).to_string();
            continue;
        }
        if !section.ends_with("dependencies") {
            continue;
        }
        let Some((key, rest)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_end_matches(".workspace").trim();
        let folder = match crates.get(key) {
            Some(f) => Some(f.clone()),
            None => rest
                .split("path = \"")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .and_then(|p| Path::new(p).file_name())
                .map(|f| f.to_string_lossy().to_string()),
        };
        if let Some(f) = folder {
            out.push((f, section.clone()));
        }
    }
    out
}

#[test]
fn crates_depend_only_on_crates_below_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crates = workspace_crates(&root);
    assert!(crates.len() >= 7, "read the workspace crates: {crates:?}");
    let mut problems = Vec::new();
    let mut seen = 0;
    for entry in fs::read_dir(root.join("crates")).unwrap().flatten() {
        let folder = entry.file_name().to_string_lossy().to_string();
        let Ok(toml) = fs::read_to_string(entry.path().join("Cargo.toml")) else {
            continue;
        };
        seen += 1;
        let Some((_, allowed)) = ALLOWED.iter().find(|(c, _)| *c == folder) else {
            problems.push(format!(
                "crates/{folder} is not in the crate table: add it to DESIGN.md, the README and ALLOWED here"
            ));
            continue;
        };
        for (dep, section) in deps_of(&toml, &crates) {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!(
                    "crates/{folder} depends on {dep} ([{section}]), which the crate table puts \
                     above it or does not allow; it may use: {}",
                    if allowed.is_empty() {
                        "no workspace crate".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
        }
    }
    assert!(seen >= 8, "found the crates");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_dependency() {
    let crates: BTreeMap<String, String> = [("engine", "engine"), ("oci", "oci")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let toml = "[package]\nname = \"x\"\n\n[dependencies]\noci.workspace = true\nengine = { path = \"../engine\" }\nserde = \"1\"\n\n[dev-dependencies]\nengine.workspace = true\n";
    let deps = deps_of(toml, &crates);
    assert_eq!(
        deps,
        [
            ("oci".to_string(), "dependencies".to_string()),
            ("engine".to_string(), "dependencies".to_string()),
            ("engine".to_string(), "dev-dependencies".to_string()),
        ]
    );
}
