//! Following the backend file: a change of its modification time or size is a reload.
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Notices when a file's modification time or size changes.
pub struct FileWatcher {
    path: PathBuf,
    last: Option<(SystemTime, u64)>,
}

impl FileWatcher {
    pub fn new(path: PathBuf) -> Self {
        let last = Self::stamp(&path);
        Self { path, last }
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// True once per change (a file that disappears is not a change: the next write is).
    pub fn changed(&mut self) -> bool {
        let now = Self::stamp(&self.path);
        if now != self.last {
            self.last = now;
            return now.is_some();
        }
        false
    }
}
