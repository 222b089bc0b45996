//! Word expansion with BuildKit's shell-lexer semantics: `$V`, `${V}`, `${V:-w}`, `${V-w}`,
//! `${V:+w}`, `${V+w}`, `${V:?w}`, `${V?w}`, `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`,
//! `${V/p/r}`, `${V//p/r}`, single and double quotes, and the escape character.

use std::collections::BTreeSet;

/// Looks a variable up; `None` means unset.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Expands one word: quotes removed, no splitting.
pub fn expand_word(word: &str, env: &dyn Env, escape: char) -> Result<String, String> {
    Ok(expand(word, env, escape)?.joined())
}

/// Expands a word and splits it on unquoted blanks, including blanks that came from variables.
pub fn expand_words(word: &str, env: &dyn Env, escape: char) -> Result<Vec<String>, String> {
    Ok(expand(word, env, escape)?.words)
}

/// Expands a COPY/ADD here-document body as BuildKit does (`SkipProcessQuotes`, escape fixed at
/// `\\` whatever the Dockerfile's escape directive): `$` references expand, quotes are ordinary
/// characters, and `\\x` gives `x` (so `\\$` is a literal `$`).
pub fn expand_heredoc(content: &str, env: &dyn Env) -> Result<String, String> {
    let chars: Vec<char> = content.chars().collect();
    let mut lx = Lexer {
        chars: &chars,
        i: 0,
        env,
        escape: '\\',
        depth: 0,
    };
    let mut s = String::new();
    while let Some(c) = lx.next() {
        match c {
            '$' => s.push_str(&lx.dollar()?),
            '\\' => s.push(lx.next().unwrap_or('\\')),
            c => s.push(c),
        }
    }
    Ok(s)
}

/// The names a word refers to (for lints such as UndefinedArgInFrom).
pub fn referenced_names(word: &str, escape: char) -> BTreeSet<String> {
    let seen = std::cell::RefCell::new(BTreeSet::new());
    let env = |name: &str| -> Option<String> {
        seen.borrow_mut().insert(name.to_string());
        None
    };
    let _ = expand(word, &env, escape);
    seen.into_inner()
}

struct Out {
    words: Vec<String>,
    cur: String,
    in_word: bool,
}

impl Out {
    fn joined(mut self) -> String {
        // Re-join what splitting separated: a single word keeps its blanks.
        if self.in_word {
            self.words.push(std::mem::take(&mut self.cur));
        }
        self.words.join(" ")
    }
}

fn expand(word: &str, env: &dyn Env, escape: char) -> Result<Out, String> {
    let chars: Vec<char> = word.chars().collect();
    let mut lx = Lexer {
        chars: &chars,
        i: 0,
        env,
        escape,
        depth: 0,
    };
    let mut out = Out {
        words: Vec::new(),
        cur: String::new(),
        in_word: false,
    };
    lx.process(&mut out)?;
    if out.in_word {
        out.words.push(std::mem::take(&mut out.cur));
        out.in_word = false;
    }
    Ok(out)
}

struct Lexer<'a> {
    chars: &'a [char],
    i: usize,
    env: &'a dyn Env,
    escape: char,
    depth: usize,
}

fn push_unquoted(out: &mut Out, s: &str) {
    for c in s.chars() {
        if c == ' ' || c == '\t' || c == '\n' {
            if out.in_word {
                out.words.push(std::mem::take(&mut out.cur));
                out.in_word = false;
            }
        } else {
            out.cur.push(c);
            out.in_word = true;
        }
    }
}

fn push_quoted(out: &mut Out, s: &str) {
    out.cur.push_str(s);
    out.in_word = true;
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn process(&mut self, out: &mut Out) -> Result<(), String> {
        while let Some(c) = self.next() {
            match c {
                '\'' => {
                    let s = self.single_quoted()?;
                    push_quoted(out, &s);
                }
                '"' => {
                    let s = self.double_quoted()?;
                    push_quoted(out, &s);
                }
                '$' => {
                    let v = self.dollar()?;
                    push_unquoted(out, &v);
                }
                c if c == self.escape => match self.next() {
                    Some(n) => push_quoted(out, &n.to_string()),
                    None => push_quoted(out, &c.to_string()),
                },
                c => push_unquoted(out, &c.to_string()),
            }
        }
        Ok(())
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('"') => return Ok(s),
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.i += 1;
                        s.push(n);
                    }
                    _ => s.push(c),
                },
                Some(c) => s.push(c),
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.i += 1;
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.env.get(&name).unwrap_or_default());
        }
        self.i += 1;
        let name = self.name();
        if name.is_empty() {
            return Err("missing variable name in ${}".into());
        }
        let value = self.env.get(&name);
        let Some(c) = self.next() else {
            return Err(format!("missing '}}' in ${{{name}"));
        };
        match c {
            '}' => Ok(value.unwrap_or_default()),
            ':' => {
                let Some(m) = self.next() else {
                    return Err(format!("missing '}}' in ${{{name}:"));
                };
                let word = self.until(&['}'])?;
                self.close(&name)?;
                let set = value.as_deref().is_some_and(|v| !v.is_empty());
                self.modifier(&name, m, true, set, value, word)
            }
            '-' | '+' | '?' => {
                let word = self.until(&['}'])?;
                self.close(&name)?;
                let set = value.is_some();
                self.modifier(&name, c, false, set, value, word)
            }
            '#' | '%' => {
                let longest = self.peek() == Some(c);
                if longest {
                    self.i += 1;
                }
                let pattern = self.until(&['}'])?;
                self.close(&name)?;
                let v = value.unwrap_or_default();
                Ok(if c == '#' {
                    trim_prefix(&v, &pattern, longest)
                } else {
                    trim_suffix(&v, &pattern, longest)
                })
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.i += 1;
                }
                let pattern = self.until(&['/', '}'])?;
                let replacement = if self.peek() == Some('/') {
                    self.i += 1;
                    self.until(&['}'])?
                } else {
                    String::new()
                };
                self.close(&name)?;
                Ok(replace(
                    &value.unwrap_or_default(),
                    &pattern,
                    &replacement,
                    all,
                ))
            }
            other => Err(format!(
                "unsupported modifier ({other}) in substitution ${{{name}{other}...}}"
            )),
        }
    }

    fn close(&mut self, name: &str) -> Result<(), String> {
        match self.next() {
            Some('}') => Ok(()),
            _ => Err(format!("missing '}}' in ${{{name}...")),
        }
    }

    fn modifier(
        &self,
        name: &str,
        m: char,
        colon: bool,
        set: bool,
        value: Option<String>,
        word: String,
    ) -> Result<String, String> {
        match m {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            '?' if set => Ok(value.unwrap_or_default()),
            '?' if word.is_empty() => Err(format!("{name}: is not allowed to be unset")),
            '?' => Err(format!("{name}: {word}")),
            other => Err(format!(
                "unsupported modifier ({}{other}) in substitution",
                if colon { ":" } else { "" }
            )),
        }
    }

    /// Processes a nested word (quotes, escapes, `$`) up to an unquoted stop character, which is
    /// left unread.
    fn until(&mut self, stops: &[char]) -> Result<String, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("substitutions nested too deeply".into());
        }
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if stops.contains(&c) {
                self.depth -= 1;
                return Ok(s);
            }
            self.i += 1;
            match c {
                '\'' => s.push_str(&self.single_quoted()?),
                '"' => s.push_str(&self.double_quoted()?),
                '$' => s.push_str(&self.dollar()?),
                c if c == self.escape => match self.next() {
                    Some(n) => s.push(n),
                    None => s.push(c),
                },
                c => s.push(c),
            }
        }
        Err("missing '}' in substitution".into())
    }
}

/// Shell glob match (`*`, `?`, `[...]`) of a whole string, iteratively (no exponential blowup).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class(&p[pi..], t[ti]) {
                        if matched {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                    pi += 2;
                    ti += 1;
                    continue;
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches a bracket class at the start of `p`; returns (matched, pattern length) or None if
/// the bracket is not closed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

fn char_boundaries(s: &str) -> Vec<usize> {
    let mut v: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    v.push(s.len());
    v
}

fn trim_prefix(v: &str, pattern: &str, longest: bool) -> String {
    let b = char_boundaries(v);
    let mut order: Vec<usize> = b.clone();
    if longest {
        order.reverse();
    }
    for end in order {
        if glob_match(pattern, &v[..end]) {
            return v[end..].to_string();
        }
    }
    v.to_string()
}

fn trim_suffix(v: &str, pattern: &str, longest: bool) -> String {
    let b = char_boundaries(v);
    let mut order: Vec<usize> = b.clone();
    if !longest {
        order.reverse();
    }
    for start in order {
        if glob_match(pattern, &v[start..]) {
            return v[..start].to_string();
        }
    }
    v.to_string()
}

fn replace(v: &str, pattern: &str, replacement: &str, all: bool) -> String {
    if pattern.is_empty() {
        return v.to_string();
    }
    let b = char_boundaries(v);
    let mut out = String::new();
    let mut i = 0; // index into b
    while i + 1 < b.len() {
        let start = b[i];
        // Longest match starting here.
        let found = b[i + 1..]
            .iter()
            .rev()
            .find(|&&end| glob_match(pattern, &v[start..end]));
        match found {
            Some(&end) => {
                out.push_str(replacement);
                if !all {
                    out.push_str(&v[end..]);
                    return out;
                }
                i = b.iter().position(|&x| x == end).unwrap_or(b.len());
            }
            None => {
                out.push_str(&v[start..b[i + 1]]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [
            ("V", "value"),
            ("E", ""),
            ("P", "/usr/local/bin/tool.tar.gz"),
            ("S", "a b  c"),
            ("N", "1.22.3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn x(w: &str) -> String {
        let e = env();
        let f = |n: &str| e.get(n).cloned();
        expand_word(w, &f, '\\').unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(x("$V"), "value");
        assert_eq!(x("${V}x"), "valuex");
        assert_eq!(x("$Vx"), "");
        assert_eq!(x("a$"), "a$");
        assert_eq!(x("$U-$V"), "-value");
        assert_eq!(x("$1"), "");
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(x("${U:-def}"), "def");
        assert_eq!(x("${E:-def}"), "def");
        assert_eq!(x("${E-def}"), "");
        assert_eq!(x("${U-def}"), "def");
        assert_eq!(x("${V:+alt}"), "alt");
        assert_eq!(x("${E:+alt}"), "");
        assert_eq!(x("${E+alt}"), "alt");
        assert_eq!(x("${U+alt}"), "");
        assert_eq!(x("${U:-${V}-x}"), "value-x");
        assert_eq!(x("${U:-\"a b\"}"), "a b");
        assert_eq!(x("${U:?must be set}"), "ERR U: must be set");
        assert_eq!(x("${V:?must be set}"), "value");
    }

    #[test]
    fn prefix_suffix_replace() {
        assert_eq!(x("${P#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(x("${P##*/}"), "tool.tar.gz");
        assert_eq!(x("${P%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(x("${P%%.*}"), "/usr/local/bin/tool");
        assert_eq!(x("${N%.*}"), "1.22");
        assert_eq!(x("${N/./-}"), "1-22.3");
        assert_eq!(x("${N//./-}"), "1-22-3");
        assert_eq!(x("${N//[0-9]/x}"), "x.xx.x");
        assert_eq!(x("${V/nomatch/x}"), "value");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(x("'$V'"), "$V");
        assert_eq!(x("\"$V\""), "value");
        assert_eq!(x("\"a \\\"q\\\" \\$V\""), "a \"q\" $V");
        assert_eq!(x("\\$V"), "$V");
        assert_eq!(x("a\\ b"), "a b");
        assert_eq!(x("\"C:\\dir\""), "C:\\dir");
        assert_eq!(
            x("'unterminated"),
            "ERR unexpected end of statement while looking for matching single-quote"
        );
        assert_eq!(x("${V"), "ERR missing '}' in ${V");
        assert_eq!(
            x("${V!x}"),
            "ERR unsupported modifier (!) in substitution ${V!...}"
        );
    }

    #[test]
    fn backtick_escape() {
        let e = env();
        let f = |n: &str| e.get(n).cloned();
        assert_eq!(
            expand_word("C:\\dir\\$V", &f, '`').unwrap(),
            "C:\\dir\\value"
        );
        assert_eq!(expand_word("`$V", &f, '`').unwrap(), "$V");
    }

    #[test]
    fn splitting_words() {
        let e = env();
        let f = |n: &str| e.get(n).cloned();
        assert_eq!(expand_words("$S", &f, '\\').unwrap(), ["a", "b", "c"]);
        assert_eq!(expand_words("\"$S\"", &f, '\\').unwrap(), ["a b  c"]);
        assert_eq!(expand_words("x\"\"", &f, '\\').unwrap(), ["x"]);
        assert_eq!(expand_words("\"\"", &f, '\\').unwrap(), [""]);
        assert!(expand_words("$E", &f, '\\').unwrap().is_empty());
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_process_escapes() {
        let e = env();
        let f = |n: &str| e.get(n).cloned();
        assert_eq!(
            expand_heredoc("a='$V' \\$V \\\\ \"${U:-d}\"\n", &f).unwrap(),
            "a='value' $V \\ \"d\"\n"
        );
    }

    #[test]
    fn names_referenced() {
        let names = referenced_names("${A:-$B}/x:${C#v}", '\\');
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }

    #[test]
    fn globbing() {
        assert!(glob_match("*.go", "main.go"));
        assert!(!glob_match("*.go", "main.rs"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[!a]*", "bcd"));
        assert!(!glob_match("[!a]*", "abc"));
        assert!(glob_match("*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!glob_match("*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaa"));
    }
}
