//! Following the backend file: a change of its modification time or size is looked at, and a
//! change of its contents is a reload. (Editors and config management often rewrite or touch a
//! file without changing it; reloading then would only add noise to logs and counters.)
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Notices when a file's contents change, polling its modification time and size.
pub struct FileWatcher {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    contents: Option<u64>,
}

impl FileWatcher {
    pub fn new(path: PathBuf) -> Self {
        let stamp = Self::stamp(&path);
        let contents = Self::contents(&path);
        Self {
            path,
            stamp,
            contents,
        }
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    fn contents(path: &Path) -> Option<u64> {
        let bytes = std::fs::read(path).ok()?;
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        Some(hasher.finish())
    }

    /// True once per change of contents (a file that disappears is not a change: the next
    /// write is).
    pub fn changed(&mut self) -> bool {
        let stamp = Self::stamp(&self.path);
        if stamp == self.stamp {
            return false;
        }
        self.stamp = stamp;
        let contents = Self::contents(&self.path);
        if contents.is_none() || contents == self.contents {
            return false;
        }
        self.contents = contents;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_with_the_same_contents_is_not_a_change() {
        let dir = std::env::temp_dir().join(format!("lb-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("backends.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let mut watcher = FileWatcher::new(path.clone());
        assert!(!watcher.changed());

        // Same bytes, later mtime: not a change.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&path, "a = 1\n").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("set mtime");
        assert!(!watcher.changed());

        // Same size, new bytes: a change, reported once.
        std::fs::write(&path, "a = 2\n").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later + std::time::Duration::from_secs(5)))
            .expect("set mtime");
        assert!(watcher.changed());
        assert!(!watcher.changed());

        // Gone is not a change; back with other contents is.
        std::fs::remove_file(&path).expect("remove");
        assert!(!watcher.changed());
        std::fs::write(&path, "a = 3\n").expect("write");
        assert!(watcher.changed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
