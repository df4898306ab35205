//! Parsed JSON records kept between relists, keyed by what `stat` says of the file: a
//! relist of N containers reads 3 N small records, and they change only when a
//! container starts or ends. Every writer replaces a record by an atomic rename, so a
//! new content is a new inode: (device, inode, size, mtime) tells a changed file
//! without reading it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Key = (u64, u64, u64, i64, i64);

/// One cache per record type.
#[derive(Debug, Clone)]
pub struct FileCache<T> {
    entries: Arc<Mutex<HashMap<PathBuf, (Key, T)>>>,
}

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        FileCache {
            entries: Arc::default(),
        }
    }
}

impl<T: Clone> FileCache<T> {
    /// The parsed content of `path`: from the cache while the file is the same one,
    /// else from `parse` (which reads it). `Ok(None)` when the file does not exist.
    pub fn get<E>(
        &self,
        path: &Path,
        parse: impl FnOnce(&Path) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let key = match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()),
            Err(_) => {
                self.lock().remove(path);
                return parse(path);
            }
        };
        if let Some((k, v)) = self.lock().get(path) {
            if *k == key {
                return Ok(Some(v.clone()));
            }
        }
        let value = parse(path)?;
        match &value {
            Some(v) => {
                self.lock().insert(path.to_owned(), (key, v.clone()));
            }
            None => {
                self.lock().remove(path);
            }
        }
        Ok(value)
    }

    /// Drops the entries of files under `dir` (a removed container).
    pub fn forget(&self, dir: &Path) {
        self.lock().retain(|p, _| !p.starts_with(dir));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Key, T)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_read_again_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let cache = FileCache::<u32>::default();
        let reads = std::cell::Cell::new(0);
        let read = |p: &Path| -> Result<Option<u32>, std::io::Error> {
            reads.set(reads.get() + 1);
            crate::state::read_json(p)
        };
        crate::state::write_json(&path, &1u32).unwrap();
        assert_eq!(cache.get(&path, read).unwrap(), Some(1));
        assert_eq!(cache.get(&path, read).unwrap(), Some(1));
        assert_eq!(reads.get(), 1, "the second get is cached");
        crate::state::write_json(&path, &2u32).unwrap();
        assert_eq!(
            cache.get(&path, read).unwrap(),
            Some(2),
            "a rename is a new inode"
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cache.get(&path, read).unwrap(), None);
    }
}
