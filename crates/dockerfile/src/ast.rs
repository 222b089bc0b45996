//! The typed syntax tree. Words keep their quotes and `$` references as written: expansion needs
//! the ARG and ENV values in effect, which only planning knows.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

use crate::error::Pos;

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The name used in error messages and findings.
    pub file: String,
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    /// Empty lines inside continuations (BuildKit warns: NoEmptyContinuation).
    pub empty_continuation_lines: Vec<usize>,
    /// The text, for caret displays: one copy, lines found by offset.
    #[serde(skip)]
    pub(crate) lines: Lines,
}

/// The source text and where each physical line starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lines {
    text: Arc<str>,
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: Arc<str>) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Lines { text, starts }
    }

    #[cfg(test)]
    pub(crate) fn holds(&self, s: &str) -> bool {
        let base = self.text.as_ptr() as usize;
        (s.as_ptr() as usize)
            .checked_sub(base)
            .is_some_and(|o| o + s.len() <= self.text.len())
    }

    /// Line `i` (0-based) without its line ending; empty past the end.
    pub(crate) fn line(&self, i: usize) -> &str {
        let Some(&start) = self.starts.get(i) else {
            return "";
        };
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |e| e.saturating_sub(1));
        let l = self.text.get(start..end).unwrap_or("");
        l.strip_suffix('\r').unwrap_or(l)
    }
}

/// Parser directives from the top of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directives {
    pub syntax: Option<String>,
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// One instruction (its continuation lines joined).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instruction {
    pub pos: Pos,
    /// The keyword as written (any case); borrowed when written in upper case.
    pub keyword: Cow<'static, str>,
    /// The logical line: continuations joined, here-document bodies not included. Shares the
    /// source when the instruction is one physical line.
    pub text: Text,
    pub kind: Kind,
    /// The comment lines since the previous instruction, without `#` (BuildKit reads
    /// `# check=...` and description comments from them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<String>,
}

/// Read-only text that is either a range of the parsed source (no copy) or its own. A 50 MB
/// Dockerfile of short RUN lines holds ~600,000 logical lines: copying each doubled the memory.
#[derive(Clone)]
pub struct Text {
    src: Arc<str>,
    start: u32,
    /// `u32::MAX`: all of `src` (own text, of any length).
    end: u32,
}

impl Text {
    pub fn as_str(&self) -> &str {
        if self.end == u32::MAX {
            &self.src
        } else {
            self.src
                .get(self.start as usize..self.end as usize)
                .unwrap_or("")
        }
    }

    /// `src[start..end]` without copying it when the offsets are small enough.
    pub(crate) fn slice(src: &Arc<str>, start: usize, end: usize) -> Text {
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) if e != u32::MAX && src.get(start..end).is_some() => Text {
                src: src.clone(),
                start: s,
                end: e,
            },
            _ => Text::from(src.get(start..end).unwrap_or("")),
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::from("")
    }
}

impl std::convert::From<&str> for Text {
    fn from(s: &str) -> Self {
        Text {
            src: Arc::from(s),
            start: 0,
            end: u32::MAX,
        }
    }
}

impl std::convert::From<String> for Text {
    fn from(s: String) -> Self {
        Text {
            src: Arc::from(s),
            start: 0,
            end: u32::MAX,
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A word as written, quotes and variable references intact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Word {
    pub raw: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Kind {
    // The large variants are boxed: a 50 MB file of RUN lines holds ~600,000 of these.
    From(Box<From>),
    Arg { args: Vec<ArgDecl> },
    Env { vars: Vec<KeyValue> },
    Label { labels: Vec<KeyValue> },
    Run(Run),
    Copy(Box<Copy>),
    Add(Box<Copy>),
    Workdir { path: Word },
    User { user: Word },
    Expose { ports: Vec<Word> },
    Volume { paths: Vec<Word> },
    Cmd { command: Command<Text> },
    Entrypoint { command: Command<Text> },
    Shell { shell: Vec<String> },
    Healthcheck { check: Option<Box<Healthcheck>> },
    Stopsignal { signal: Word },
    Onbuild { trigger: Box<Instruction> },
    Maintainer { name: String },
}

impl Kind {
    /// The canonical upper-case instruction name.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::From(_) => "FROM",
            Kind::Arg { .. } => "ARG",
            Kind::Env { .. } => "ENV",
            Kind::Label { .. } => "LABEL",
            Kind::Run(_) => "RUN",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::Workdir { .. } => "WORKDIR",
            Kind::User { .. } => "USER",
            Kind::Expose { .. } => "EXPOSE",
            Kind::Volume { .. } => "VOLUME",
            Kind::Cmd { .. } => "CMD",
            Kind::Entrypoint { .. } => "ENTRYPOINT",
            Kind::Shell { .. } => "SHELL",
            Kind::Healthcheck { .. } => "HEALTHCHECK",
            Kind::Stopsignal { .. } => "STOPSIGNAL",
            Kind::Onbuild { .. } => "ONBUILD",
            Kind::Maintainer { .. } => "MAINTAINER",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct From {
    pub image: Word,
    pub platform: Option<Word>,
    /// The stage name after `AS`, as written.
    pub name: Option<Word>,
    /// The `AS` keyword as written (for the FromAsCasing check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_keyword: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub pos: Pos,
    /// Written in the legacy `KEY value` form.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
}

/// Exec form (a JSON array) or shell form (text, escapes preserved). The syntax tree's RUN, CMD
/// and ENTRYPOINT hold `Command<Text>` (the shell form shares the source); plans and
/// HEALTHCHECK hold their own `Command`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command<S = String> {
    Exec(Vec<String>),
    Shell(S),
}

impl Command<Text> {
    /// The command with its own text, as planning hands it on.
    pub fn to_owned_command(&self) -> Command {
        match self {
            Command::Exec(v) => Command::Exec(v.clone()),
            Command::Shell(s) => Command::Shell(s.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter without quotes.
    pub delimiter: String,
    pub content: String,
    /// False when the delimiter was quoted: the content is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped from the content.
    pub strip_tabs: bool,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    pub mounts: Vec<Mount>,
    // Boxed: rare, and a RUN is the most common instruction.
    pub network: Option<Box<Word>>,
    pub security: Option<Box<Word>>,
    pub command: Command<Text>,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// A `RUN --mount`. Values are as written; planning expands them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: Option<MountType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    pub pos: Pos,
    /// The value as written. When `deferred`, fields hold variables: planning parses `raw` again
    /// with the stage's ARG/ENV scope (as BuildKit does) and only then validates.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub raw: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

/// COPY and ADD. Flags that only ADD accepts (`--checksum`, `--keep-git-dir`) stay empty for COPY,
/// and `--from` stays empty for ADD: the parser rejects them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub exclude: Vec<Word>,
    pub parents: bool,
    pub checksum: Option<Word>,
    pub keep_git_dir: bool,
    /// ADD `--unpack[=bool]`; `None` when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    pub sources: Vec<Source>,
    pub dest: Word,
    /// The sources and destination were given in JSON form.
    pub json: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Path(Word),
    Heredoc(Heredoc),
}

/// HEALTHCHECK CMD with its flags, durations parsed as Go's time.ParseDuration reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    #[serde(serialize_with = "crate::values::serialize_duration")]
    pub interval: Option<std::time::Duration>,
    #[serde(serialize_with = "crate::values::serialize_duration")]
    pub timeout: Option<std::time::Duration>,
    #[serde(serialize_with = "crate::values::serialize_duration")]
    pub start_period: Option<std::time::Duration>,
    #[serde(serialize_with = "crate::values::serialize_duration")]
    pub start_interval: Option<std::time::Duration>,
    pub retries: Option<u32>,
    pub command: Command,
}
