//! Errors that point into the Dockerfile: file, line, column, the source line with a caret, and
//! a hint when the fix is obvious.

use std::fmt;

use serde::Serialize;

/// A 1-based line and column (in characters) in a Dockerfile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Where an error happened, with the text of that line for the caret display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub pos: Pos,
    pub source_line: String,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unknown instruction {0:?}")]
    UnknownInstruction(String),
    #[error("{0}")]
    Syntax(String),
    #[error("unterminated here-document: no line {0:?} before the end of the file")]
    UnterminatedHeredoc(String),
    #[error("unknown flag --{flag} for {instruction}")]
    UnknownFlag { instruction: String, flag: String },
    #[error("invalid mount: {0}")]
    InvalidMount(String),
    #[error("{0}")]
    Expansion(String),
    #[error("no build stage in the Dockerfile: it needs at least one FROM")]
    NoStage,
    #[error("{0}")]
    Directive(String),
    #[error("invalid platform {value:?}: {reason}")]
    InvalidPlatform { value: String, reason: String },
    #[error("invalid base image reference {value:?}: {reason}")]
    InvalidReference { value: String, reason: String },
    #[error("unknown stage {0:?}")]
    UnknownStage(String),
    #[error("circular dependency between stages: {0}")]
    Cycle(String),
    #[error("target stage {0:?} not found")]
    UnknownTarget(String),
    #[error("no target platform given")]
    NoPlatforms,
}

/// A Dockerfile error. `location` is absent only for errors in the build options (such as an
/// unknown `--target`), which have no place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub location: Option<Box<Location>>,
    pub help: Option<String>,
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn new(kind: ErrorKind, location: Option<Location>) -> Self {
        Error {
            kind,
            location: location.map(Box::new),
            help: None,
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// A machine-readable form for `--format json`: file, line, column, message, help.
    pub fn to_json(&self) -> serde_json::Value {
        let loc = self.location.as_deref();
        serde_json::json!({
            "file": loc.map(|l| l.file.as_str()),
            "line": loc.map(|l| l.pos.line),
            "column": loc.map(|l| l.pos.column),
            "source_line": loc.map(|l| l.source_line.as_str()),
            "message": self.kind.to_string(),
            "help": self.help,
        })
    }

    pub fn line(&self) -> Option<usize> {
        self.location.as_ref().map(|l| l.pos.line)
    }

    pub fn column(&self) -> Option<usize> {
        self.location.as_ref().map(|l| l.pos.column)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => {
                writeln!(
                    f,
                    "{}:{}:{}: {}",
                    loc.file, loc.pos.line, loc.pos.column, self.kind
                )?;
                let num = loc.pos.line.to_string();
                let pad = " ".repeat(num.len());
                let shown: String = loc.source_line.replace('\t', " ");
                writeln!(f, "{num} | {shown}")?;
                write!(
                    f,
                    "{pad} | {}^",
                    " ".repeat(loc.pos.column.saturating_sub(1))
                )?;
            }
            None => write!(f, "{}", self.kind)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {help}")?;
        }
        Ok(())
    }
}

/// Edit distance counting a swap of neighbours as one edit, for "did you mean" hints.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut v = (d[(i - 1) * w + j - 1] + cost)
                    .min(d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let best = candidates
        .iter()
        .map(|c| (distance(&w, &c.to_ascii_lowercase()), *c))
        .min_by_key(|(d, _)| *d)?;
    let limit = (w.chars().count() / 3).max(1);
    (best.0 <= limit).then_some(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_and_rejects_far_words() {
        assert_eq!(nearest("RUNN", &["RUN", "COPY"]), Some("RUN"));
        assert_eq!(nearest("cpoy", &["RUN", "COPY"]), Some("COPY"));
        assert_eq!(nearest("banana", &["RUN", "COPY"]), None);
    }

    #[test]
    fn json_form_carries_location_and_help() {
        let e = Error::new(
            ErrorKind::UnknownStage("biuld".into()),
            Some(Location {
                file: "Dockerfile".into(),
                pos: Pos { line: 5, column: 6 },
                source_line: "COPY --from=biuld /a /a".into(),
            }),
        )
        .with_help("did you mean \"build\"?");
        let v = e.to_json();
        assert_eq!(v["file"], "Dockerfile");
        assert_eq!(v["line"], 5);
        assert_eq!(v["column"], 6);
        assert_eq!(v["message"], "unknown stage \"biuld\"");
        assert_eq!(v["help"], "did you mean \"build\"?");
        let no_loc = Error::new(ErrorKind::NoPlatforms, None).to_json();
        assert!(no_loc["line"].is_null());
    }

    #[test]
    fn display_has_caret_under_column() {
        let e = Error::new(
            ErrorKind::UnknownInstruction("RUNN".into()),
            Some(Location {
                file: "Dockerfile".into(),
                pos: Pos { line: 3, column: 5 },
                source_line: "    RUNN x".into(),
            }),
        )
        .with_help("did you mean RUN?");
        assert_eq!(
            e.to_string(),
            "Dockerfile:3:5: unknown instruction \"RUNN\"\n3 |     RUNN x\n  |     ^\nhelp: did you mean RUN?"
        );
    }
}
