//! Typed values of instruction flags, parsed once while planning so a bad value is an error at
//! its line before any step runs, and so equal values (`--chmod=755`, `--chmod=0755`) give equal
//! cache keys: `--chown`, `--chmod`, and HEALTHCHECK's durations.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A user or group as `--chown` names it: a number, or a name looked up in the stage's own
/// /etc/passwd or /etc/group when the step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Owner {
    Id(u32),
    Name(String),
}

impl Owner {
    fn parse(s: &str) -> Self {
        match s.parse::<u32>() {
            Ok(n) => Owner::Id(n),
            Err(_) => Owner::Name(s.to_string()),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Id(n) => write!(f, "{n}"),
            Owner::Name(s) => f.write_str(s),
        }
    }
}

/// `--chown=USER[:GROUP]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chown {
    pub user: Owner,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Owner>,
}

impl Chown {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid --chown value {s:?}: {why}");
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if u.is_empty() {
            return Err(bad("the user is empty; write USER or USER:GROUP"));
        }
        if let Some(g) = g {
            if g.is_empty() {
                return Err(bad("the group after ':' is empty"));
            }
            if g.contains(':') {
                return Err(bad("write USER or USER:GROUP, with one ':'"));
            }
        }
        Ok(Chown {
            user: Owner::parse(u),
            group: g.map(Owner::parse),
        })
    }

    /// Both parts are numbers: nothing to look up in the stage.
    pub fn numeric(&self) -> Option<(u32, u32)> {
        match (&self.user, &self.group) {
            (Owner::Id(u), None) => Some((*u, *u)),
            (Owner::Id(u), Some(Owner::Id(g))) => Some((*u, *g)),
            _ => None,
        }
    }
}

impl fmt::Display for Chown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// `--chmod`: an octal mode, or the symbolic form BuildKit accepts (`u+x,go-w`, `a=rX`),
/// applied to each copied file's own mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic { text: String, clauses: Vec<Clause> },
}

/// One comma-separated part of a symbolic mode: who, then operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// Bits of 0o7777 the clause may touch (`u`: 0o4700, `g`: 0o2070, `o`: 0o1007).
    who: u32,
    ops: Vec<(char, Perm)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Perm {
    /// `r`, `w`, `x`, `X`, `s`, `t` letters.
    Letters(String),
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

impl Chmod {
    /// BuildKit's rule: octal up to 07777, else a symbolic mode; a numeric value that is not
    /// octal gets BuildKit's message.
    pub fn parse(v: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid chmod parameter: '{v}'. it should be octal string and between 0 and 07777"
            )
        };
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(v, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                _ => Err(bad()),
            };
        }
        let mut clauses = Vec::new();
        for part in v.split(',') {
            let who_end = part
                .find(|c: char| !"ugoa".contains(c))
                .unwrap_or(part.len());
            let mut who = 0;
            for c in part[..who_end].chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => 0o7777,
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut rest = &part[who_end..];
            let mut ops = Vec::new();
            while let Some(op) = rest.chars().next().filter(|c| "+-=".contains(*c)) {
                rest = &rest[1..];
                let end = rest
                    .find(|c: char| !"rwxXstugo".contains(c))
                    .unwrap_or(rest.len());
                let perms = &rest[..end];
                rest = &rest[end..];
                let perm = match perms {
                    "u" | "g" | "o" => Perm::Copy(perms.chars().next().unwrap_or('u')),
                    p if p.chars().all(|c| "rwxXst".contains(c)) => Perm::Letters(p.to_string()),
                    _ => return Err(bad()),
                };
                ops.push((op, perm));
            }
            if ops.is_empty() || !rest.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, ops });
        }
        Ok(Chmod::Symbolic {
            text: v.to_string(),
            clauses,
        })
    }

    /// The mode a file or directory with `mode` (its permission bits) gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic { clauses, .. } => clauses,
        };
        let mut m = mode & 0o7777;
        for c in clauses {
            for (op, perm) in &c.ops {
                let bits = match perm {
                    Perm::Letters(l) => {
                        let mut b = 0;
                        for ch in l.chars() {
                            b |= match ch {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                // Execute only for directories and files someone may run.
                                'X' if is_dir || m & 0o111 != 0 => 0o111,
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => 0,
                            };
                        }
                        b
                    }
                    Perm::Copy(from) => {
                        let rwx = match from {
                            'u' => (m >> 6) & 7,
                            'g' => (m >> 3) & 7,
                            _ => m & 7,
                        };
                        rwx * 0o111
                    }
                };
                let bits = bits & c.who;
                match op {
                    '+' => m |= bits,
                    '-' => m &= !bits,
                    _ => {
                        // `=` clears the class's permission bits, keeping set-id bits of
                        // directories as chmod(1) does.
                        let keep = if is_dir { 0o6000 } else { 0 };
                        m = (m & !(c.who & !keep & 0o7777)) | bits;
                    }
                }
            }
        }
        m
    }
}

impl fmt::Display for Chmod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chmod::Octal(m) => write!(f, "{m:o}"),
            Chmod::Symbolic { text, .. } => f.write_str(text),
        }
    }
}

/// In cache keys and plan dumps: the canonical text (`755` for `0755`).
impl Serialize for Chmod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Go's `time.ParseDuration` (what BuildKit reads HEALTHCHECK's flags with), with BuildKit's
/// rule that a duration other than 0 is at least 1ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let e = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(e)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{s:?} has no unit; use ns, us, ms, s, m or h")),
            u => return Err(format!("{s:?} has the unknown unit {u:?}")),
        };
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(bad)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: u128 = frac[..digits as usize].parse().map_err(|_| bad())?;
            part += f * scale / 10u128.pow(digits);
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = after;
    }
    if total > i64::MAX as u128 {
        return Err(format!("{s:?} is too long"));
    }
    if neg && total > 0 {
        return Err("it cannot be less than 1ms".into());
    }
    if total > 0 && total < 1_000_000 {
        return Err("it cannot be less than 1ms".into());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A duration as nanoseconds, for plan dumps and cache keys (`90s` and `1m30s` are equal).
pub fn serialize_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u128(d.as_nanos()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_octal_and_symbolic() {
        assert_eq!(Chmod::parse("0755").unwrap(), Chmod::parse("755").unwrap());
        assert_eq!(Chmod::parse("755").unwrap().to_string(), "755");
        for bad in ["8", "10000", "64a", "q+x", "u+z", "", "u+x,"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
        let m = |s: &str, mode: u32, dir: bool| Chmod::parse(s).unwrap().apply(mode, dir);
        assert_eq!(m("u+x", 0o644, false), 0o744);
        assert_eq!(m("go-w", 0o666, false), 0o644);
        assert_eq!(m("a+r", 0o600, false), 0o644);
        assert_eq!(m("+x", 0o644, false), 0o755);
        assert_eq!(m("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(m("a=rX", 0o644, false), 0o444);
        assert_eq!(m("a=rX", 0o744, false), 0o555);
        assert_eq!(m("a=rX", 0o700, true), 0o555);
        assert_eq!(m("g=u", 0o640, false), 0o660);
        assert_eq!(m("u+s", 0o755, false), 0o4755);
        assert_eq!(m("o+t", 0o777, true), 0o1777);
        assert_eq!(m("u+x,g-r", 0o644, false), 0o704);
    }

    #[test]
    fn chown_forms() {
        let c = Chown::parse("1000:50").unwrap();
        assert_eq!(c.numeric(), Some((1000, 50)));
        assert_eq!(Chown::parse("01000").unwrap().numeric(), Some((1000, 1000)));
        let n = Chown::parse("app:staff").unwrap();
        assert_eq!(n.numeric(), None);
        assert_eq!(n.to_string(), "app:staff");
        for bad in ["", ":g", "u:", "a:b:c"] {
            assert!(Chown::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_as_go_parses_them() {
        let d = |s: &str| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5m"), Duration::from_secs(90));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d(".5s"), Duration::from_millis(500));
        for bad in ["5", "1.5.5s", "s", "1x", "100us", "-1s", "", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
