//! `--platform` values as commands take them.

use anyhow::Result;
use oci::Platform;

/// Parses `--platform` values; ones that name the same platform after normalization
/// (`linux/arm64` and `linux/arm64/v8`) are merged, with a note.
pub fn parse_platforms(list: &[String]) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    let mut typed: Vec<&str> = Vec::new();
    for s in list {
        let p = Platform::parse(s)?;
        match out
            .iter()
            .position(|q| q.same_target(&p) && q.os_version == p.os_version)
        {
            Some(i) => eprintln!(
                "note: --platform {s} is {} after normalization, like {}; taking it once",
                p.short(),
                typed[i]
            ),
            None => {
                out.push(p);
                typed.push(s);
            }
        }
    }
    Ok(out)
}

/// `--platform` values with duplicates after normalization merged (see [`parse_platforms`]),
/// spelled as the user typed the first of each.
pub(crate) fn dedup_platform_args(list: &[String]) -> Result<Vec<String>> {
    let kept = parse_platforms(list)?;
    let mut out = Vec::new();
    for p in kept {
        if let Some(s) = list
            .iter()
            .find(|s| Platform::parse(s).is_ok_and(|q| q == p))
        {
            out.push(s.clone());
        }
    }
    Ok(out)
}
