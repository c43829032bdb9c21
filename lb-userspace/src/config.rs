//! The backend file: one TOML file with the L4 sections (`[encap]`, `[[vip]]`) and the L7
//! sections (`[[pool]]`, `[[listener]]`, `[[route]]`). Parsed once as a whole (unknown keys
//! anywhere are errors); each tier validates its own sections. Errors name file, line, reason.
use std::{fmt, ops::Range, path::Path, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    l4::config::{RawEncap, RawVip},
    l7::config::{RawListener, RawPool, RawRoute},
};

/// A configuration error at a place in a file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub encap: Option<RawEncap>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Spanned<RawVip>>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<Spanned<RawPool>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

impl RawFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            ConfigError::at(
                path,
                text,
                e.span().unwrap_or(0..0),
                e.message().trim().to_owned(),
            )
        })
    }
}
