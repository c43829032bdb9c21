//! `ConfigError`: what is wrong, and where (file, line), always one line of text.
use std::{fmt, ops::Range, path::Path, path::PathBuf};

/// A configuration error at a place in a file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: about the file as a whole (unreadable) or about command-line flags.
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl ConfigError {
    /// An error about the bytes at `span` of `text`, read from `path`.
    pub fn at(path: &Path, text: &str, span: Range<usize>, message: String) -> Self {
        let line = text
            .get(..span.start.min(text.len()))
            .map_or(1, |before| before.matches('\n').count() + 1);
        Self {
            path: path.to_owned(),
            line,
            message,
        }
    }
}

impl ConfigError {
    /// Reads the file at `path` (an unreadable file is an error about the file as a whole).
    pub fn read_file(path: &Path) -> Result<String, Self> {
        std::fs::read_to_string(path).map_err(|e| Self {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot read: {e}"),
        })
    }

    /// A TOML parse error of `text` (read from `path`) as `FILE:LINE: reason`. toml's reasons
    /// can span lines ("invalid table header\nexpected ..."): one line keeps them greppable.
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error) -> Self {
        let reason = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Self::at(path, text, e.span().unwrap_or(0..0), reason)
    }
}
