//! From text to [`Dockerfile`]: BuildKit's line rules (directives, continuations with the escape
//! character, comment lines inside continuations, CRLF, here-documents), then each instruction
//! and its flags.
//!
//! parse-dockerfile was the first choice, but 0.1.9 only sees a RUN here-document when `<<EOF`
//! is the first word and only one per instruction (its own TODOs), so `RUN python3 <<EOF` fails.
//! It remains a dev-dependency: the corpus test compares instruction keywords with it.

use std::borrow::Cow;
use std::sync::Arc;

use crate::ast::*;
use crate::error::{nearest, Error, ErrorKind, Location, Pos};

const INSTRUCTIONS: &[&str] = &[
    "FROM",
    "ARG",
    "ENV",
    "LABEL",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "VOLUME",
    "CMD",
    "ENTRYPOINT",
    "SHELL",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "ONBUILD",
    "MAINTAINER",
];

/// Parses Dockerfile text. `file` names the file in errors and findings.
pub fn parse(source: &str, file: &str) -> Result<Dockerfile, Error> {
    parse_owned(source.to_string(), file)
}

/// Parses Dockerfile bytes. BuildKit accepts any bytes: invalid UTF-8 sequences (in a comment, a
/// label, a Latin-1 file) become U+FFFD instead of rejecting the file. Valid UTF-8 is not copied.
pub fn parse_bytes(source: Vec<u8>, file: &str) -> Result<Dockerfile, Error> {
    let text = match String::from_utf8(source) {
        Ok(t) => t,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    parse_owned(text, file)
}

fn parse_owned(mut text: String, file: &str) -> Result<Dockerfile, Error> {
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    // Shared: single-line instructions keep a range of it as their text instead of a copy.
    let text: Arc<str> = Arc::from(text);
    let (directives, instructions, empty_continuation_lines) = parse_text(&text, file)?;
    let df = Dockerfile {
        file: file.to_string(),
        directives,
        instructions,
        empty_continuation_lines,
        lines: Lines::new(text),
    };
    check_order(&df)?;
    Ok(df)
}

type Parsed = (Directives, Vec<Instruction>, Vec<usize>);

fn parse_text(text: &Arc<str>, file: &str) -> Result<Parsed, Error> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let src = Src {
        file,
        source: Some(text),
        lines: &lines,
        ascii: lines.iter().map(|l| l.is_ascii()).collect(),
        cursor: std::cell::Cell::new((usize::MAX, 0, 0)),
    };
    let (directives, mut i) = src.directives()?;
    let esc = directives.escape;
    let mut instructions = Vec::new();
    let mut empty_continuation_lines = Vec::new();
    let n = lines.len();
    // Comment lines since the previous instruction (BuildKit's PrevComment).
    let mut comments: Vec<String> = Vec::new();
    while i < n {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        if let Some(c) = trimmed.strip_prefix('#') {
            let c = c.trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
            i += 1;
            continue;
        }
        let mut logical = Logical::default();
        let mut cur = trimmed;
        let mut col = line.len() - trimmed.len();
        let mut empty_continuation = false;
        loop {
            let (content, more) = strip_continuation(cur, esc);
            logical.push(content, i, col);
            i += 1;
            if !more {
                break;
            }
            // Comment and empty lines inside a continuation are dropped, as BuildKit does.
            while i < n && {
                let t = lines[i].trim_start();
                t.is_empty() || t.starts_with('#')
            } {
                // (The last element after a final newline is not a line.)
                if lines[i].trim().is_empty() && i + 1 < n {
                    empty_continuation = true;
                }
                i += 1;
            }
            if i >= n {
                break;
            }
            cur = lines[i];
            col = 0;
        }
        // BuildKit reports it once per instruction, at the instruction's last line.
        if empty_continuation {
            empty_continuation_lines.push(i);
        }
        let mut heredoc_reader = HeredocReader {
            lines: &lines,
            next: i,
        };
        let mut ins = src.instruction(&logical, esc, Some(&mut heredoc_reader))?;
        ins.comments = std::mem::take(&mut comments);
        i = heredoc_reader.next;
        instructions.push(ins);
    }
    Ok((directives, instructions, empty_continuation_lines))
}

/// Only ARG may precede the first FROM, and there must be a FROM.
fn check_order(df: &Dockerfile) -> Result<(), Error> {
    for ins in &df.instructions {
        match ins.kind {
            Kind::From(_) => return Ok(()),
            Kind::Arg { .. } => {}
            _ => {
                return Err(df
                    .error(
                        ErrorKind::Syntax(format!(
                            "{} before the first FROM: only ARG may come before FROM",
                            ins.kind.name()
                        )),
                        ins.pos,
                    )
                    .with_help("add a FROM line (for example `FROM scratch`) above it"))
            }
        }
    }
    Err(df
        .error(ErrorKind::NoStage, Pos { line: 1, column: 1 })
        .with_help("start the build with `FROM <image>`"))
}

impl Dockerfile {
    /// An error located at `pos` in this file.
    pub(crate) fn error(&self, kind: ErrorKind, pos: Pos) -> Error {
        let line = pos
            .line
            .checked_sub(1)
            .map(|i| self.lines.line(i))
            .unwrap_or_default();
        Error::new(
            kind,
            Some(Location {
                file: self.file.clone(),
                pos,
                source_line: line.to_string(),
            }),
        )
    }
}

/// Strips a trailing escape character (and the blanks after it): the line continues. As in
/// BuildKit (`([^\\])\\[ \t]*$|^\\[ \t]*$`), an escaped escape (`\\\\`) ends the line.
fn strip_continuation(line: &str, esc: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(esc) {
        Some(rest) if !rest.ends_with(esc) => (rest, true),
        _ => (line, false),
    }
}

/// A logical line and where each of its pieces came from, to map offsets back to line:column.
#[derive(Default)]
struct Logical {
    text: String,
    /// (offset in text, 0-based line index, byte column in that line)
    segs: Vec<(usize, usize, usize)>,
}

impl Logical {
    fn push(&mut self, s: &str, line: usize, col: usize) {
        self.segs.push((self.text.len(), line, col));
        self.text.push_str(s);
    }
}

struct Src<'a> {
    file: &'a str,
    /// The text `lines` are slices of, when instructions may share it.
    source: Option<&'a Arc<str>>,
    lines: &'a [&'a str],
    /// Per line: pure ASCII (columns are byte offsets).
    ascii: Vec<bool>,
    /// Last (line, byte, column) computed on a non-ASCII line: words are located left to
    /// right, so counting on from there keeps long lines linear.
    cursor: std::cell::Cell<(usize, usize, usize)>,
}

struct HeredocReader<'a> {
    lines: &'a [&'a str],
    next: usize,
}

impl HeredocReader<'_> {
    fn read(&mut self, delim: &str, strip_tabs: bool) -> Option<String> {
        let mut content = String::new();
        loop {
            let line = self.lines.get(self.next)?;
            self.next += 1;
            let l = if strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if l == delim {
                return Some(content);
            }
            content.push_str(l);
            content.push('\n');
        }
    }
}

/// A raw word of a logical line with its byte offset in that line.
struct RawWord {
    raw: String,
    off: usize,
}

struct Flag {
    name: String,
    value: Option<String>,
    off: usize,
}

impl Src<'_> {
    /// `text` (the logical line or a part of it) shared with the source when it is one piece of it.
    fn text_of(&self, logical: &Logical, text: &str) -> Text {
        // Where `text` is in the logical line (it is a slice of it, or not shared).
        let off = (text.as_ptr() as usize).wrapping_sub(logical.text.as_ptr() as usize);
        let inside = off
            .checked_add(text.len())
            .is_some_and(|e| e <= logical.text.len());
        if let (Some(src), [(0, line, col)], true) = (self.source, logical.segs.as_slice(), inside)
        {
            if let Some(l) = self.lines.get(*line) {
                let start = (l.as_ptr() as usize)
                    .wrapping_sub(src.as_ptr() as usize)
                    .wrapping_add(*col)
                    .wrapping_add(off);
                let end = start.wrapping_add(text.len());
                if src.get(start..end) == Some(text) {
                    return Text::slice(src, start, end);
                }
            }
        }
        Text::from(text)
    }

    fn pos(&self, logical: &Logical, off: usize) -> Pos {
        // Segments are sorted by offset: binary search keeps long continuations linear overall.
        let idx = logical.segs.partition_point(|s| s.0 <= off);
        let seg = idx
            .checked_sub(1)
            .and_then(|i| logical.segs.get(i))
            .copied()
            .unwrap_or((0, 0, 0));
        let line = self.lines.get(seg.1).copied().unwrap_or("");
        let byte_col = (seg.2 + (off - seg.0)).min(line.len());
        let column = if self.ascii.get(seg.1).copied().unwrap_or(true) {
            byte_col + 1
        } else {
            let (cl, cb, cc) = self.cursor.get();
            let (from_b, from_c) = if cl == seg.1 && cb <= byte_col {
                (cb, cc)
            } else {
                (0, 1)
            };
            let c = from_c + line.get(from_b..byte_col).map_or(0, |t| t.chars().count());
            self.cursor.set((seg.1, byte_col, c));
            c
        };
        Pos {
            line: seg.1 + 1,
            column,
        }
    }

    fn err(&self, kind: ErrorKind, pos: Pos) -> Error {
        let line = pos
            .line
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .copied()
            .unwrap_or("");
        Error::new(
            kind,
            Some(Location {
                file: self.file.to_string(),
                pos,
                source_line: line.to_string(),
            }),
        )
    }

    fn directives(&self) -> Result<(Directives, usize), Error> {
        let mut d = Directives::default();
        let mut seen_escape = false;
        let mut i = 0;
        while let Some(line) = self.lines.get(i) {
            let Some((key, value)) = directive(line) else {
                break;
            };
            let pos = Pos {
                line: i + 1,
                column: 1,
            };
            match key.as_str() {
                "escape" => {
                    if seen_escape {
                        return Err(self.err(
                            ErrorKind::Directive(
                                "only one escape parser directive can be used".into(),
                            ),
                            pos,
                        ));
                    }
                    seen_escape = true;
                    d.escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        _ => {
                            return Err(self
                                .err(
                                    ErrorKind::Directive(format!(
                                        "invalid escape character {value:?}"
                                    )),
                                    pos,
                                )
                                .with_help("use `# escape=\\` or `# escape=``"))
                        }
                    };
                }
                "syntax" => {
                    d.syntax.get_or_insert(value);
                }
                "check" => {
                    d.check.get_or_insert(value);
                }
                _ => break,
            }
            i += 1;
        }
        Ok((d, i))
    }

    fn instruction(
        &self,
        logical: &Logical,
        esc: char,
        heredocs: Option<&mut HeredocReader<'_>>,
    ) -> Result<Instruction, Error> {
        let text = logical.text.trim_end();
        let kw_end = text.find(char::is_whitespace).unwrap_or(text.len());
        let keyword = &text[..kw_end];
        let rest_off = text[kw_end..]
            .find(|c: char| !c.is_whitespace())
            .map_or(text.len(), |i| kw_end + i);
        let pos = self.pos(logical, 0);
        let upper = keyword.to_ascii_uppercase();
        let p = InsParser {
            src: self,
            logical,
            text,
            rest_off,
            esc,
            pos,
            name: upper.clone(),
        };
        let kind = match upper.as_str() {
            "FROM" => p.from()?,
            "ARG" => p.arg()?,
            "ENV" => Kind::Env {
                vars: p.name_values()?,
            },
            "LABEL" => Kind::Label {
                labels: p.name_values()?,
            },
            "RUN" => p.run(heredocs)?,
            "COPY" => Kind::Copy(Box::new(p.copy(false, heredocs)?)),
            "ADD" => Kind::Add(Box::new(p.copy(true, heredocs)?)),
            "WORKDIR" => Kind::Workdir { path: p.whole()? },
            "USER" => Kind::User { user: p.whole()? },
            "STOPSIGNAL" => Kind::Stopsignal { signal: p.whole()? },
            "MAINTAINER" => Kind::Maintainer {
                name: p.whole()?.raw,
            },
            "EXPOSE" => Kind::Expose {
                ports: p.words_at_least_one()?,
            },
            "VOLUME" => Kind::Volume { paths: p.volume()? },
            "CMD" => Kind::Cmd {
                command: p.command(p.rest_off),
            },
            "ENTRYPOINT" => Kind::Entrypoint {
                command: p.command(p.rest_off),
            },
            "SHELL" => Kind::Shell { shell: p.shell()? },
            "HEALTHCHECK" => Kind::Healthcheck {
                check: p.healthcheck()?.map(Box::new),
            },
            "ONBUILD" => p.onbuild(heredocs)?,
            _ => {
                let mut e = self.err(ErrorKind::UnknownInstruction(keyword.to_string()), pos);
                if let Some(near) = nearest(keyword, INSTRUCTIONS) {
                    e = e.with_help(format!("did you mean {near}?"));
                }
                return Err(e);
            }
        };
        let keyword = match INSTRUCTIONS.iter().find(|k| **k == keyword) {
            Some(k) => Cow::Borrowed(*k),
            None => Cow::Owned(keyword.to_string()),
        };
        Ok(Instruction {
            pos,
            keyword,
            text: self.text_of(logical, text),
            kind,
            comments: Vec::new(),
        })
    }
}

/// `# key=value` at the top of the file, for the directives BuildKit knows.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.strip_prefix('#')?;
    let (key, value) = body.split_once('=')?;
    let key = key.trim_matches([' ', '\t']);
    let value = value.trim_matches([' ', '\t']);
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric()) || value.is_empty() {
        return None;
    }
    let key = key.to_ascii_lowercase();
    matches!(key.as_str(), "syntax" | "escape" | "check").then(|| (key, value.to_string()))
}

/// Splits on unquoted blanks, keeping quotes and escapes in the words (expansion removes them).
fn split_words(s: &str, base: usize, esc: char) -> Vec<RawWord> {
    split_words_until(s, base, esc, false)
}

/// With `flags_only`, stops after the first word that is not a `--flag` (the arguments need no
/// splitting just to find the flags).
fn split_words_until(s: &str, base: usize, esc: char, flags_only: bool) -> Vec<RawWord> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut start: Option<usize> = None;
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if let Some(st) = start.take() {
                let raw = std::mem::take(&mut cur);
                let done = flags_only && !raw.starts_with("--");
                words.push(RawWord {
                    raw,
                    off: base + st,
                });
                if done {
                    return words;
                }
            }
            continue;
        }
        start.get_or_insert(i);
        cur.push(c);
        if c == esc && quote != Some('\'') {
            if let Some((_, next)) = chars.next() {
                cur.push(next);
            }
            continue;
        }
        match quote {
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
    }
    if let Some(st) = start {
        words.push(RawWord {
            raw: cur,
            off: base + st,
        });
    }
    words
}

/// A here-document marker: `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` (optionally after a digit,
/// as in `3<<EOF`). Returns (delimiter, strip tabs, expand).
fn heredoc_marker(word: &str) -> Option<(String, bool, bool)> {
    let w = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = w.strip_prefix("<<")?;
    let (strip, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let quoted = rest.contains(['"', '\'']);
    let delim: String = rest.chars().filter(|c| !matches!(c, '"' | '\'')).collect();
    if delim.is_empty() {
        return None;
    }
    Some((delim, strip, !quoted))
}

fn parse_json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// Parses one instruction's arguments.
struct InsParser<'a> {
    src: &'a Src<'a>,
    logical: &'a Logical,
    text: &'a str,
    rest_off: usize,
    esc: char,
    pos: Pos,
    name: String,
}

impl InsParser<'_> {
    fn at(&self, off: usize) -> Pos {
        self.src.pos(self.logical, off)
    }

    fn syntax(&self, msg: impl Into<String>, pos: Pos) -> Error {
        self.src.err(ErrorKind::Syntax(msg.into()), pos)
    }

    fn rest(&self) -> &str {
        &self.text[self.rest_off..]
    }

    /// FROM, COPY, ADD, EXPOSE and VOLUME split on blanks only, quotes or not, as BuildKit's
    /// line parsers do (paths with spaces need the JSON form).
    fn plain_words(&self, from: usize) -> Vec<RawWord> {
        let mut out = Vec::new();
        let mut start: Option<usize> = None;
        for (i, c) in self.text[from..].char_indices() {
            if matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r') {
                if let Some(st) = start.take() {
                    out.push(RawWord {
                        raw: self.text[from + st..from + i].to_string(),
                        off: from + st,
                    });
                }
            } else {
                start.get_or_insert(i);
            }
        }
        if let Some(st) = start {
            out.push(RawWord {
                raw: self.text[from + st..].to_string(),
                off: from + st,
            });
        }
        out
    }

    fn words(&self, from: usize) -> Vec<RawWord> {
        split_words(&self.text[from..], from, self.esc)
    }

    fn word(&self, w: &RawWord) -> Word {
        Word {
            raw: w.raw.clone(),
            pos: self.at(w.off),
        }
    }

    /// Leading `--name[=value]` words; returns them and the offset where the arguments start.
    fn flags(&self, allowed: &[&str]) -> Result<(Vec<Flag>, usize), Error> {
        let mut flags = Vec::new();
        let words = split_words_until(&self.text[self.rest_off..], self.rest_off, self.esc, true);
        let mut args_off = self.text.len();
        for w in &words {
            let Some(body) = w.raw.strip_prefix("--") else {
                args_off = w.off;
                break;
            };
            if body.is_empty() {
                continue;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if !allowed.contains(&name.as_str()) {
                let mut e = self.src.err(
                    ErrorKind::UnknownFlag {
                        instruction: self.name.clone(),
                        flag: name.clone(),
                    },
                    self.at(w.off),
                );
                let only = match (self.name.as_str(), name.as_str()) {
                    ("COPY", "checksum" | "keep-git-dir") => Some("ADD"),
                    ("ADD", "from" | "parents") => Some("COPY"),
                    _ => None,
                };
                if let Some(other) = only {
                    e = e.with_help(format!("--{name} is only valid for {other}"));
                } else if let Some(near) = nearest(&name, allowed) {
                    e = e.with_help(format!("did you mean --{near}?"));
                } else if allowed.is_empty() {
                    e = e.with_help(format!("{} takes no flags", self.name));
                }
                return Err(e);
            }
            flags.push(Flag {
                name,
                value,
                off: w.off,
            });
        }
        Ok((flags, args_off))
    }

    fn flag_word(&self, f: &Flag) -> Result<Word, Error> {
        match &f.value {
            Some(v) => Ok(Word {
                raw: v.clone(),
                pos: self.at(f.off),
            }),
            None => Err(self.syntax(
                format!("flag --{} needs a value: --{}=<value>", f.name, f.name),
                self.at(f.off),
            )),
        }
    }

    fn flag_bool(&self, f: &Flag) -> Result<bool, Error> {
        match f.value.as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(self.syntax(
                format!("flag --{} expects true or false, not {v:?}", f.name),
                self.at(f.off),
            )),
        }
    }

    fn from(&self) -> Result<Kind, Error> {
        let (flags, args_off) = self.flags(&["platform"])?;
        let mut platform = None;
        for f in &flags {
            platform = Some(self.flag_word(f)?);
        }
        let words = self.plain_words(args_off);
        let (image, name, as_keyword) = match words.as_slice() {
            [image] => (self.word(image), None, None),
            [image, as_, name] if as_.raw.eq_ignore_ascii_case("as") => {
                let lower = name.raw.to_ascii_lowercase();
                if !valid_stage_name(&lower) {
                    return Err(self
                        .syntax(
                            format!("invalid name for build stage: {:?}", name.raw),
                            self.at(name.off),
                        )
                        .with_help(
                            "a stage name starts with a letter and holds only letters, digits, '-', '_' and '.'",
                        ));
                }
                (
                    self.word(image),
                    Some(self.word(name)),
                    Some(as_.raw.clone()),
                )
            }
            _ => {
                return Err(self
                    .syntax("FROM requires either one or three arguments", self.pos)
                    .with_help("write `FROM <image> [AS <name>]`"))
            }
        };
        Ok(Kind::From(Box::new(From {
            image,
            platform,
            name,
            as_keyword,
        })))
    }

    fn arg(&self) -> Result<Kind, Error> {
        let words = self.words(self.rest_off);
        if words.is_empty() {
            return Err(self.syntax("ARG requires at least one argument", self.pos));
        }
        let mut args = Vec::new();
        for w in &words {
            let (name, default) = match w.raw.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (w.raw.clone(), None),
            };
            if name.is_empty() {
                return Err(self.syntax("ARG names can not be blank", self.at(w.off)));
            }
            args.push(ArgDecl {
                name,
                default,
                pos: self.at(w.off),
            });
        }
        Ok(Kind::Arg { args })
    }

    /// ENV and LABEL: `key=value ...`, or the legacy `key value with spaces`.
    fn name_values(&self) -> Result<Vec<KeyValue>, Error> {
        let words = self.words(self.rest_off);
        let Some(first) = words.first() else {
            return Err(self.syntax(
                format!("{} requires at least one argument", self.name),
                self.pos,
            ));
        };
        if !first.raw.contains('=') {
            let value_off = self.text[first.off + first.raw.len()..]
                .find(|c: char| !c.is_whitespace())
                .map(|i| first.off + first.raw.len() + i);
            let Some(value_off) = value_off else {
                return Err(self
                    .syntax(format!("{} must have two arguments", self.name), self.pos)
                    .with_help(format!("write `{} {}=<value>`", self.name, first.raw)));
            };
            return Ok(vec![KeyValue {
                key: first.raw.clone(),
                value: self.text[value_off..].to_string(),
                pos: self.at(first.off),
                legacy: true,
            }]);
        }
        let mut out = Vec::new();
        for w in &words {
            let Some((k, v)) = w.raw.split_once('=') else {
                return Err(self.syntax(
                    format!(
                        "Syntax error - can't find = in {:?}. Must be of the form: name=value",
                        w.raw
                    ),
                    self.at(w.off),
                ));
            };
            if k.is_empty() {
                return Err(self.syntax(
                    format!("{} names can not be blank", self.name),
                    self.at(w.off),
                ));
            }
            out.push(KeyValue {
                key: k.to_string(),
                value: v.to_string(),
                pos: self.at(w.off),
                legacy: false,
            });
        }
        Ok(out)
    }

    fn command(&self, off: usize) -> Command<Text> {
        let s = self.text[off..].trim();
        match parse_json_array(s) {
            Some(v) => Command::Exec(v),
            None => Command::Shell(self.src.text_of(self.logical, s)),
        }
    }

    fn read_heredocs(
        &self,
        words: &[RawWord],
        reader: Option<&mut HeredocReader<'_>>,
    ) -> Result<Vec<Option<Heredoc>>, Error> {
        let mut out = Vec::new();
        let mut reader = reader;
        for w in words {
            let Some((delimiter, strip_tabs, expand)) = heredoc_marker(&w.raw) else {
                out.push(None);
                continue;
            };
            let Some(r) = reader.as_deref_mut() else {
                // Only a caller without following lines passes no reader.
                return Err(self.syntax("here-document without a body", self.at(w.off)));
            };
            let pos = self.at(w.off);
            let content = r.read(&delimiter, strip_tabs).ok_or_else(|| {
                self.src
                    .err(ErrorKind::UnterminatedHeredoc(delimiter.clone()), pos)
                    .with_help(format!("end the here-document with a line `{delimiter}`"))
            })?;
            out.push(Some(Heredoc {
                delimiter,
                content,
                expand,
                strip_tabs,
                pos,
            }));
        }
        Ok(out)
    }

    fn run(&self, reader: Option<&mut HeredocReader<'_>>) -> Result<Kind, Error> {
        let (flags, args_off) = self.flags(&["mount", "network", "security", "device"])?;
        if let Some(f) = flags.iter().find(|f| f.name == "device") {
            return Err(self
                .syntax(
                    "RUN --device is not supported yet (it needs the labs Dockerfile syntax and device access in the sandbox)",
                    self.at(f.off),
                )
                .with_help("remove --device, or build this Dockerfile with docker buildx"));
        }
        let mut run = Run {
            mounts: Vec::new(),
            network: None,
            security: None,
            command: self.command(args_off),
            heredocs: Vec::new(),
        };
        for f in &flags {
            let w = self.flag_word(f)?;
            match f.name.as_str() {
                "mount" => run.mounts.push(self.mount(&w)?),
                "network" => {
                    run.network = Some(Box::new(self.one_of(
                        "network",
                        w,
                        &["default", "none", "host"],
                    )?))
                }
                _ => {
                    run.security = Some(Box::new(self.one_of(
                        "security",
                        w,
                        &["sandbox", "insecure"],
                    )?))
                }
            }
        }
        match &run.command {
            Command::Shell(s) if s.is_empty() => {
                return Err(self.syntax("RUN requires at least one argument", self.pos))
            }
            Command::Exec(v) if v.is_empty() => {
                return Err(self.syntax("RUN requires at least one argument", self.pos))
            }
            // Only a line with `<<` can hold a here-document: no splitting otherwise.
            Command::Shell(_) if self.text[args_off..].contains("<<") => {
                let words = self.words(args_off);
                run.heredocs = self
                    .read_heredocs(&words, reader)?
                    .into_iter()
                    .flatten()
                    .collect();
            }
            Command::Shell(_) | Command::Exec(_) => {}
        }
        Ok(Kind::Run(run))
    }

    /// A flag value from a fixed set (unless it holds a variable, checked at planning).
    fn one_of(&self, flag: &str, w: Word, allowed: &[&str]) -> Result<Word, Error> {
        if w.raw.contains('$') || allowed.contains(&w.raw.as_str()) {
            return Ok(w);
        }
        Err(self
            .syntax(format!("unsupported value {:?} for --{flag}", w.raw), w.pos)
            .with_help(format!("use one of {}", allowed.join(", "))))
    }

    fn mount(&self, w: &Word) -> Result<Mount, Error> {
        let bad = |(msg, help): (String, Option<String>)| {
            let e = self.src.err(ErrorKind::InvalidMount(msg), w.pos);
            match help {
                Some(h) => e.with_help(h),
                None => e,
            }
        };
        if !w.raw.contains('$') {
            let mut m = parse_mount(&w.raw, None).map_err(bad)?;
            m.pos = w.pos;
            return Ok(m);
        }
        // Variables: only `from` is checked now (BuildKit refuses variables there); the rest is
        // parsed and validated at planning, after expansion with the stage's scope.
        for field in split_csv(&w.raw) {
            if let Some((k, v)) = field.split_once('=') {
                let idx = v.find('$');
                if k.trim().eq_ignore_ascii_case("from") && idx.is_some_and(|i| i + 1 != v.len()) {
                    return Err(bad((
                        "'from' doesn't support variable expansion, define alias stage instead"
                            .into(),
                        Some("add `FROM ${VAR} AS alias` and use from=alias".into()),
                    )));
                }
            }
        }
        Ok(Mount {
            pos: w.pos,
            raw: w.raw.clone(),
            deferred: true,
            ..Default::default()
        })
    }

    fn copy(&self, add: bool, reader: Option<&mut HeredocReader<'_>>) -> Result<Copy, Error> {
        let allowed: &[&str] = if add {
            &[
                "chown",
                "chmod",
                "link",
                "exclude",
                "checksum",
                "keep-git-dir",
                "unpack",
            ]
        } else {
            &["from", "chown", "chmod", "link", "exclude", "parents"]
        };
        let (flags, args_off) = self.flags(allowed)?;
        let mut c = Copy::default();
        for f in &flags {
            match f.name.as_str() {
                "from" => c.from = Some(self.flag_word(f)?),
                "chown" => c.chown = Some(self.flag_word(f)?),
                "chmod" => c.chmod = Some(self.flag_word(f)?),
                "link" => c.link = self.flag_bool(f)?,
                "exclude" => c.exclude.push(self.flag_word(f)?),
                "parents" => c.parents = self.flag_bool(f)?,
                "checksum" => c.checksum = Some(self.flag_word(f)?),
                "unpack" => c.unpack = Some(self.flag_bool(f)?),
                _ => c.keep_git_dir = self.flag_bool(f)?,
            }
        }
        let args = self.text[args_off..].trim();
        let mut words: Vec<Word> = Vec::new();
        let mut sources = Vec::new();
        if let Some(v) = parse_json_array(args) {
            c.json = true;
            let pos = self.at(args_off);
            words = v.into_iter().map(|raw| Word { raw, pos }).collect();
        } else {
            let raw = self.plain_words(args_off);
            let docs = self.read_heredocs(&raw, reader)?;
            for (w, doc) in raw.iter().zip(docs) {
                if let Some(h) = doc {
                    sources.push((words.len(), h));
                }
                words.push(self.word(w));
            }
        }
        let Some(dest) = words.pop() else {
            return Err(self.syntax(
                format!("{} requires at least two arguments", self.name),
                self.pos,
            ));
        };
        if words.is_empty() {
            return Err(self
                .syntax(
                    format!(
                        "{} requires at least two arguments, but only one was provided. Destination could not be determined",
                        self.name
                    ),
                    self.pos,
                )
                .with_help(format!("write `{} <source>... <destination>`", self.name)));
        }
        let mut docs = sources.into_iter().peekable();
        for (i, w) in words.into_iter().enumerate() {
            match docs.peek() {
                Some((j, _)) if *j == i => {
                    if let Some((_, h)) = docs.next() {
                        c.sources.push(Source::Heredoc(h));
                    }
                }
                _ => c.sources.push(Source::Path(w)),
            }
        }
        c.dest = dest;
        Ok(c)
    }

    /// WORKDIR, USER, STOPSIGNAL, MAINTAINER: the rest of the line is one word.
    fn whole(&self) -> Result<Word, Error> {
        let rest = self.rest().trim();
        if rest.is_empty() {
            return Err(self.syntax(
                format!("{} requires exactly one argument", self.name),
                self.pos,
            ));
        }
        Ok(Word {
            raw: rest.to_string(),
            pos: self.at(self.rest_off),
        })
    }

    fn words_at_least_one(&self) -> Result<Vec<Word>, Error> {
        let words: Vec<Word> = self
            .plain_words(self.rest_off)
            .iter()
            .map(|w| self.word(w))
            .collect();
        if words.is_empty() {
            return Err(self.syntax(
                format!("{} requires at least one argument", self.name),
                self.pos,
            ));
        }
        Ok(words)
    }

    fn volume(&self) -> Result<Vec<Word>, Error> {
        let words = match parse_json_array(self.rest().trim()) {
            Some(v) => {
                let pos = self.at(self.rest_off);
                v.into_iter().map(|raw| Word { raw, pos }).collect()
            }
            None => self.words_at_least_one()?,
        };
        if words.is_empty() || words.iter().any(|w| w.raw.trim().is_empty()) {
            return Err(self.syntax("VOLUME specified can not be an empty string", self.pos));
        }
        Ok(words)
    }

    fn shell(&self) -> Result<Vec<String>, Error> {
        match parse_json_array(self.rest().trim()) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self
                .syntax("SHELL requires the arguments to be in JSON form", self.pos)
                .with_help("write `SHELL [\"/bin/bash\", \"-c\"]`")),
        }
    }

    fn healthcheck(&self) -> Result<Option<Healthcheck>, Error> {
        let (flags, args_off) = self.flags(&[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ])?;
        let words = self.words(args_off);
        let Some(first) = words.first() else {
            return Err(self
                .syntax("HEALTHCHECK requires an argument", self.pos)
                .with_help("write `HEALTHCHECK CMD <command>` or `HEALTHCHECK NONE`"));
        };
        if first.raw.eq_ignore_ascii_case("none") {
            if words.len() > 1 || !flags.is_empty() {
                return Err(self.syntax("HEALTHCHECK NONE takes no other arguments", self.pos));
            }
            return Ok(None);
        }
        if !first.raw.eq_ignore_ascii_case("cmd") {
            return Err(self
                .syntax(
                    format!("unknown type {:?} in HEALTHCHECK", first.raw),
                    self.at(first.off),
                )
                .with_help("try CMD"));
        }
        let command = self.command(first.off + first.raw.len()).to_owned_command();
        if matches!(&command, Command::Shell(s) if s.is_empty()) {
            return Err(self.syntax("missing command after HEALTHCHECK CMD", self.pos));
        }
        let mut h = Healthcheck {
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
            command,
        };
        for f in &flags {
            let v = self.flag_word(f)?.raw;
            if f.name == "retries" {
                let n = v.parse::<u32>().map_err(|_| {
                    self.syntax(
                        format!("--retries expects a number, not {v:?}"),
                        self.at(f.off),
                    )
                })?;
                h.retries = Some(n);
                continue;
            }
            let d = crate::values::parse_duration(&v).map_err(|why| {
                self.syntax(
                    format!("--{} expects a duration: {why}", f.name),
                    self.at(f.off),
                )
                .with_help("use a duration such as 30s, 1m30s or 500ms")
            })?;
            match f.name.as_str() {
                "interval" => h.interval = Some(d),
                "timeout" => h.timeout = Some(d),
                "start-period" => h.start_period = Some(d),
                _ => h.start_interval = Some(d),
            }
        }
        Ok(Some(h))
    }

    fn onbuild(&self, reader: Option<&mut HeredocReader<'_>>) -> Result<Kind, Error> {
        let rest = self.rest();
        if rest.trim().is_empty() {
            return Err(self.syntax("ONBUILD requires at least one argument", self.pos));
        }
        // Reject forbidden triggers before recursing, so `ONBUILD ONBUILD ...` cannot nest deep.
        let first = rest.split_whitespace().next().unwrap_or_default();
        if ["ONBUILD", "FROM", "MAINTAINER"]
            .iter()
            .any(|k| first.eq_ignore_ascii_case(k))
        {
            return Err(self.syntax(
                format!(
                    "{} isn't allowed as an ONBUILD trigger",
                    first.to_ascii_uppercase()
                ),
                self.at(self.rest_off),
            ));
        }
        // Re-parse the trigger as its own logical line, keeping positions.
        let mut inner = Logical::default();
        for (i, seg) in self.logical.segs.iter().enumerate() {
            let end = self
                .logical
                .segs
                .get(i + 1)
                .map_or(self.text.len(), |s| s.0)
                .min(self.text.len());
            if end <= self.rest_off {
                continue;
            }
            let start = seg.0.max(self.rest_off);
            let col = seg.2 + (start - seg.0);
            inner.push(&self.text[start..end], seg.1, col);
        }
        // BuildKit reads here-documents for ONBUILD RUN/COPY/ADD triggers too.
        let trigger = self.src.instruction(&inner, self.esc, reader)?;
        Ok(Kind::Onbuild {
            trigger: Box::new(trigger),
        })
    }
}

/// A mount error: the message and an optional hint.
pub(crate) type MountError = (String, Option<String>);

/// Expands one mount value (planning passes the stage's scope).
pub(crate) type Expander<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// Parses a `--mount` value with BuildKit's rules. With `expand`, every value is expanded first
/// (planning, for mounts written with variables); without, values stay as written.
pub(crate) fn parse_mount(raw: &str, expand: Option<Expander<'_>>) -> Result<Mount, MountError> {
    let bad = |msg: String| -> MountError { (msg, None) };
    let mut m = Mount {
        raw: raw.to_string(),
        ..Default::default()
    };
    for field in split_csv(raw) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => {
                let v = match expand {
                    Some(x) => x(v).map_err(bad)?,
                    None => v.to_string(),
                };
                (k.trim().to_ascii_lowercase(), Some(v))
            }
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<String>| {
            v.ok_or_else(|| bad(format!("invalid field '{field}' must be a key=value pair")))
        };
        // Go's strconv.ParseBool, which BuildKit uses.
        let boolean = |v: Option<String>| match v.as_deref() {
            None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(x) => Err(bad(format!("invalid value for {key}: {x}"))),
        };
        match key.as_str() {
            "type" => {
                m.kind = Some(match need(value)?.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => {
                        return Err((
                            format!("unsupported mount type {other:?}"),
                            Some("use one of bind, cache, tmpfs, secret, ssh".into()),
                        ))
                    }
                })
            }
            "target" | "dst" | "destination" => m.target = Some(need(value)?),
            "source" | "src" => m.source = Some(need(value)?),
            "from" => m.from = Some(need(value)?),
            "id" => m.id = Some(need(value)?),
            "sharing" => {
                let v = need(value)?.to_ascii_lowercase();
                if !matches!(v.as_str(), "shared" | "private" | "locked") {
                    return Err((
                        format!("unsupported sharing value {v:?}"),
                        Some("use shared, private or locked".into()),
                    ));
                }
                m.sharing = Some(v);
            }
            "mode" => {
                let v = need(value)?;
                if u32::from_str_radix(&v, 8).is_err() {
                    return Err((
                        format!("invalid value {v} for mode"),
                        Some("give an octal mode such as 0400".into()),
                    ));
                }
                m.mode = Some(v);
            }
            "uid" | "gid" => {
                let v = need(value)?;
                if v.parse::<u32>().is_err() {
                    return Err(bad(format!("invalid value {v} for {key}")));
                }
                if key == "uid" {
                    m.uid = Some(v);
                } else {
                    m.gid = Some(v);
                }
            }
            "ro" | "readonly" => m.readonly = Some(boolean(value)?),
            "rw" | "readwrite" => m.readonly = Some(!boolean(value)?),
            "required" => m.required = Some(boolean(value)?),
            "env" => m.env = Some(need(value)?),
            "size" => m.size = Some(need(value)?),
            "" => {}
            other => return Err(bad(format!("unexpected key {other:?} in {field:?}"))),
        }
    }
    // BuildKit's checks. No target is fine: it means the working directory.
    let kind = m.kind.unwrap_or(MountType::Bind);
    m.kind = Some(kind);
    let name = format!("{kind:?}").to_ascii_lowercase();
    let file_info = matches!(kind, MountType::Secret | MountType::Ssh | MountType::Cache);
    if m.required.is_some() && !matches!(kind, MountType::Secret | MountType::Ssh) {
        return Err(bad(format!(
            "unexpected key 'required' for mount type '{name}'"
        )));
    }
    if m.size.is_some() && kind != MountType::Tmpfs {
        return Err(bad(format!(
            "unexpected key 'size' for mount type '{name}'"
        )));
    }
    for (set, what) in [(&m.mode, "mode"), (&m.uid, "uid"), (&m.gid, "gid")] {
        if set.is_some() && !file_info {
            return Err(bad(format!("{what} not allowed for {name:?} type mounts")));
        }
    }
    if kind == MountType::Secret {
        if m.from.is_some() {
            return Err(bad("secret mount should not have a from".into()));
        }
        if m.sharing.is_some() {
            return Err(bad("secret mount should not define sharing".into()));
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err((
                "invalid secret mount. one of source, target required".into(),
                Some("add id=<secret id>".into()),
            ));
        }
        if m.source.is_some() && m.id.is_some() {
            return Err(bad("both source and id can't be set".into()));
        }
    }
    if m.sharing.is_some() && kind != MountType::Cache {
        return Err(bad(format!("invalid cache sharing set for {name} mount")));
    }
    Ok(m)
}

/// Comma-separated fields; double quotes protect commas (BuildKit reads --mount as CSV).
fn split_csv(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

pub(crate) fn valid_stage_name(lower: &str) -> bool {
    let mut chars = lower.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Instruction {
        let df = parse(&format!("FROM a\n{src}"), "Dockerfile").expect("parses");
        df.instructions
            .into_iter()
            .nth(1)
            .expect("second instruction")
    }

    #[test]
    fn single_line_text_and_command_share_the_source() {
        let src = "\u{feff}FROM a\r\nRUN  echo ü  \r\nrun echo a \\\n  b\nCMD [\"x\"]\n";
        let df = parse(src, "Dockerfile").expect("parses");
        let [_, run, cont, cmd] = df.instructions.as_slice() else {
            panic!("four instructions: {:?}", df.instructions);
        };
        assert_eq!(run.text, "RUN  echo ü");
        assert_eq!(run.keyword, "RUN");
        assert!(matches!(run.keyword, Cow::Borrowed(_)));
        let Kind::Run(r) = &run.kind else {
            panic!("RUN: {run:?}")
        };
        assert_eq!(r.command, Command::Shell(Text::from("echo ü")));
        let Command::Shell(s) = &r.command else {
            panic!("shell form")
        };
        assert!(df.lines.holds(&run.text) && df.lines.holds(s));
        // A continued line is joined, so it has its own text.
        assert_eq!(cont.text, "run echo a   b");
        assert_eq!(cont.keyword, "run");
        assert!(!df.lines.holds(&cont.text));
        assert_eq!(cmd.text, "CMD [\"x\"]");
        assert!(df.lines.holds(&cmd.text));
    }

    fn err(src: &str) -> String {
        parse(src, "Dockerfile").expect_err("fails").to_string()
    }

    #[test]
    fn directives_only_at_the_top() {
        let df = parse(
            "# syntax=x/y:1\n# ESCAPE = `\n# check=skip=all\nFROM a\n",
            "D",
        )
        .expect("parses");
        assert_eq!(df.directives.syntax.as_deref(), Some("x/y:1"));
        assert_eq!(df.directives.escape, '`');
        assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
        // After a comment, `# escape=` is just a comment.
        let df = parse("# hello\n# escape=`\nFROM a\n", "D").expect("parses");
        assert_eq!(df.directives.escape, '\\');
        assert!(err("# escape=`\n# escape=\\\nFROM a\n").contains("only one escape"));
    }

    #[test]
    fn continuation_skips_comments_and_blank_lines_and_keeps_positions() {
        let i = one("RUN a \\\n  # note\n\n  b \\  \n  c\nUSER x\n");
        assert_eq!(
            i.kind,
            Kind::Run(Run {
                mounts: vec![],
                network: None,
                security: None,
                command: Command::Shell("a   b   c".into()),
                heredocs: vec![],
            })
        );
        let df = parse("FROM a\nRUN a \\\n  # note\n\n  b\nUSER x\n", "D").expect("parses");
        assert_eq!(df.instructions[2].pos, Pos { line: 6, column: 1 });
    }

    #[test]
    fn heredoc_after_words_and_several_per_instruction() {
        let Kind::Run(r) =
            one("RUN python3 <<EOF && cat <<'RAW' >x\nprint(1)\nEOF\n$HOME\nRAW\nUSER u\n").kind
        else {
            panic!("RUN expected")
        };
        assert_eq!(r.heredocs.len(), 2);
        assert_eq!(
            (
                r.heredocs[0].delimiter.as_str(),
                r.heredocs[0].content.as_str(),
                r.heredocs[0].expand
            ),
            ("EOF", "print(1)\n", true)
        );
        assert_eq!(
            (
                r.heredocs[1].delimiter.as_str(),
                r.heredocs[1].content.as_str(),
                r.heredocs[1].expand
            ),
            ("RAW", "$HOME\n", false)
        );
        // `<<<` (a here-string) and `<<` alone are not here-documents.
        let Kind::Run(r) = one("RUN cat <<< hi\n").kind else {
            panic!("RUN expected")
        };
        assert!(r.heredocs.is_empty());
    }

    #[test]
    fn flags_and_forms() {
        let Kind::Copy(c) = one("copy --from=b --chown=1:2 --chmod=640 --link --exclude=*.md --exclude=x --parents a \"b c\" /d/\n").kind
        else {
            panic!("COPY expected")
        };
        assert_eq!(c.from.map(|w| w.raw), Some("b".into()));
        assert_eq!(c.exclude.len(), 2);
        assert!(c.link && c.parents && !c.json);
        // Blanks split COPY words even inside quotes, as in BuildKit: spaces need the JSON form.
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.dest.raw, "/d/");
        let Kind::Copy(c) = one("COPY [\"b c\", \"/d/\"]\n").kind else {
            panic!("COPY expected")
        };
        assert!(c.json);
        assert_eq!(
            c.sources,
            [Source::Path(Word {
                raw: "b c".into(),
                pos: Pos { line: 2, column: 6 }
            })]
        );
        let Kind::Add(a) =
            one("ADD --checksum=sha256:abc --keep-git-dir=true https://x/y.git /src\n").kind
        else {
            panic!("ADD expected")
        };
        assert!(a.keep_git_dir && a.checksum.is_some());
        assert_eq!(
            one("CMD [\"a\", \"b\"]\n").kind,
            Kind::Cmd {
                command: Command::Exec(vec!["a".into(), "b".into()])
            }
        );
        // Broken JSON falls back to the shell form, as in BuildKit.
        assert_eq!(
            one("CMD [\"a\", b]\n").kind,
            Kind::Cmd {
                command: Command::Shell("[\"a\", b]".into())
            }
        );
        let Kind::Env { vars } = one("ENV K value with  spaces\n").kind else {
            panic!("ENV")
        };
        assert_eq!(
            (vars[0].key.as_str(), vars[0].value.as_str()),
            ("K", "value with  spaces")
        );
        let Kind::Arg { args } = one("ARG A B=2 C=\"x y\"\n").kind else {
            panic!("ARG")
        };
        assert_eq!(args.len(), 3);
        assert_eq!(args[2].default.as_deref(), Some("\"x y\""));
    }

    #[test]
    fn mounts_parse_with_options() {
        let Kind::Run(r) = one("RUN --mount=type=cache,target=/c,id=i,sharing=locked,uid=1,gid=2,mode=0755 --mount=type=secret,id=s,env=TOK,required --mount=type=bind,from=b,src=/x,dst=/y,rw true\n").kind
        else {
            panic!("RUN expected")
        };
        assert_eq!(r.mounts[0].kind, Some(MountType::Cache));
        assert_eq!(r.mounts[0].sharing.as_deref(), Some("locked"));
        assert_eq!(r.mounts[1].required, Some(true));
        assert_eq!(r.mounts[1].env.as_deref(), Some("TOK"));
        assert_eq!(r.mounts[2].readonly, Some(false));
        assert_eq!(r.mounts[2].target.as_deref(), Some("/y"));
        assert!(
            err("FROM a\nRUN --mount=type=cache,bogus=1,target=/x true\n")
                .contains("unexpected key \"bogus\"")
        );
        assert!(
            err("FROM a\nRUN --mount=type=cache,target=/x,sharing=sometimes true\n")
                .contains("unsupported sharing")
        );
    }

    #[test]
    fn error_columns_point_at_the_offending_word() {
        let e = parse("FROM a\n  COPY --chmod=1 --nope a b\n", "D").expect_err("unknown flag");
        assert_eq!(
            e.location.map(|l| l.pos),
            Some(Pos {
                line: 2,
                column: 18
            })
        );
        let e = parse("FROM a\nENV A=1 \\\n    B\n", "D").expect_err("missing =");
        assert_eq!(e.location.map(|l| l.pos), Some(Pos { line: 3, column: 5 }));
    }

    #[test]
    fn onbuild_keeps_the_trigger() {
        let Kind::Onbuild { trigger } = one("ONBUILD run echo hi\n").kind else {
            panic!("ONBUILD")
        };
        assert_eq!(trigger.kind.name(), "RUN");
        assert_eq!(trigger.pos, Pos { line: 2, column: 9 });
        assert!(
            err("FROM a\nONBUILD ONBUILD RUN x\n").contains("isn't allowed as an ONBUILD trigger")
        );
    }
}
