//! The store lock: one `flock(2)` on `<root>/lock` shared by every process that uses the
//! store (the agent and the image commands).
//!
//! Writers that only *add* content (pull, import, tag, push and export, which read)
//! take it shared: their writes are already safe beside each other because every name
//! appears by an atomic rename (see the module docs of `images`). Only removal (`image
//! rm`, prune) takes it exclusive, because deleting a blob or layer that a concurrent
//! pull has just decided to reuse would leave that pull's image broken.
//!
//! `flock` rather than `fcntl` record locks: an `fcntl` lock belongs to the process and
//! is dropped when *any* descriptor of the file is closed, so two tasks of the agent
//! would release each other's lock; a `flock` lock belongs to the open file description,
//! so each guard here is independent (flock(2), "NOTES"). The kernel drops it when the
//! process dies, so a crashed CLI never leaves the store locked.
//!
//! Locks are not re-entrant across guards: a task that holds a shared guard must not ask
//! for the exclusive one (it would wait for itself). No function of the store takes a
//! lock while holding another.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::ImageError;

/// Which kind of store lock a guard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Adding or reading content; many holders at once.
    Shared,
    /// Removing content; no other holder.
    Exclusive,
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _flock: Flock<File>,
    mode: LockMode,
}

/// Opens (creating) `<root>/lock`.
fn open_lock_file(root: &Path) -> Result<(PathBuf, File), ImageError> {
    let path = lock_path(root);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ImageError::LockStore {
            path: path.clone(),
            source,
        })?;
    Ok((path, file))
}

impl StoreLock {
    /// Blocks until the lock on `<root>/lock` is held in `mode`. Call from a blocking
    /// context (`spawn_blocking` in the agent): the wait can last as long as a pull.
    pub(crate) fn acquire(root: &Path, mode: LockMode) -> Result<Self, ImageError> {
        let (path, file) = open_lock_file(root)?;
        let err = |source| ImageError::LockStore {
            path: path.clone(),
            source,
        };
        let arg = match mode {
            LockMode::Shared => FlockArg::LockShared,
            LockMode::Exclusive => FlockArg::LockExclusive,
        };
        let mut file = file;
        loop {
            match Flock::lock(file, arg) {
                Ok(flock) => {
                    return Ok(Self {
                        _flock: flock,
                        mode,
                    })
                }
                // A signal interrupted the wait; keep waiting.
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(err(errno.into())),
            }
        }
    }

    /// Like [`StoreLock::acquire`] but returns `None` instead of waiting (the tests use
    /// it to see who holds the lock).
    #[cfg(test)]
    pub(crate) fn try_acquire(root: &Path, mode: LockMode) -> Result<Option<Self>, ImageError> {
        let (path, file) = open_lock_file(root)?;
        let err = |source| ImageError::LockStore {
            path: path.clone(),
            source,
        };
        let arg = match mode {
            LockMode::Shared => FlockArg::LockSharedNonblock,
            LockMode::Exclusive => FlockArg::LockExclusiveNonblock,
        };
        match Flock::lock(file, arg) {
            Ok(flock) => Ok(Some(Self {
                _flock: flock,
                mode,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(err(errno.into())),
        }
    }

    /// The mode this guard holds.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

fn lock_path(root: &Path) -> PathBuf {
    root.join("lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn shared_locks_coexist_and_exclusive_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = StoreLock::acquire(dir.path(), LockMode::Shared).unwrap();
        let b = StoreLock::try_acquire(dir.path(), LockMode::Shared)
            .unwrap()
            .expect("a second shared lock is granted at once");
        assert!(StoreLock::try_acquire(dir.path(), LockMode::Exclusive)
            .unwrap()
            .is_none());

        let (tx, rx) = mpsc::channel();
        let root = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let g = StoreLock::acquire(&root, LockMode::Exclusive).unwrap();
            tx.send(()).unwrap();
            g
        });
        drop(a);
        // Still one shared holder: the exclusive waiter must not get in.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(b);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("exclusive lock granted once the shared holders left");
        let g = waiter.join().unwrap();
        assert_eq!(g.mode(), LockMode::Exclusive);
        // And while it is held, a shared lock waits.
        assert!(StoreLock::try_acquire(dir.path(), LockMode::Shared)
            .unwrap()
            .is_none());
        drop(g);
        assert!(StoreLock::try_acquire(dir.path(), LockMode::Shared)
            .unwrap()
            .is_some());
    }
}
