//! Making unpacked layers and their blobs durable before they get their final names,
//! with as few flushes of the disk as possible.
//!
//! A layer is ~1,000 files: fsyncing each costs a disk flush per file, so the store
//! syncs the whole filesystem once (`syncfs(2)`) before renaming a layer directory and
//! its blob into place (see `ImageStore::ensure_layer` and `pull::layer`). A `syncfs`
//! that *starts* after a thread's last write covers that write, so concurrent layer
//! tasks of a pull (or of two pulls) share one: whoever asks while a `syncfs` runs
//! waits for it to end, and then one of the waiters runs the next one for all of them
//! (group commit, as in database write-ahead logs). Four layers finishing together
//! cost two flushes instead of four.
//!
//! The file descriptor `syncfs` reports on is opened with the store: since Linux 5.8
//! `syncfs` returns writeback errors that happened since that descriptor was opened
//! (`errseq`), so an error from the kernel flusher between two pulls is not missed
//! the way it would be with a descriptor opened just before the call.

use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};

type Flush = Box<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Coalesces `syncfs` calls of concurrent threads on one filesystem.
pub(crate) struct GroupSync {
    flush: Flush,
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// Flushes started so far; the one numbered `started + 1` is the first that starts
    /// after now.
    started: u64,
    /// The number of the last flush that ended, and its error if it failed.
    finished: u64,
    failed: Option<(io::ErrorKind, String)>,
    running: bool,
}

impl std::fmt::Debug for GroupSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSync").finish_non_exhaustive()
    }
}

impl GroupSync {
    /// Syncs the filesystem holding `dir` (the store root).
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let fd = std::fs::File::open(dir)?;
        Ok(Self::with(Box::new(move || {
            nix::unistd::syncfs(&fd).map_err(io::Error::from)
        })))
    }

    /// A group sync around any flush (tests count calls).
    fn with(flush: Flush) -> Self {
        Self {
            flush,
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
        }
    }

    /// Returns once everything this thread wrote before the call is on disk. Blocking.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A flush already running may have passed our files: only a later one counts.
        let needed = st.started + 1;
        loop {
            if st.finished >= needed {
                // The last flush ended after ours began and covered our writes; its
                // outcome is ours.
                return match &st.failed {
                    Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
                    None => Ok(()),
                };
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let number = st.started;
                drop(st);
                let result = (self.flush)();
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                st.finished = number;
                st.failed = result.as_ref().err().map(|e| (e.kind(), e.to_string()));
                self.finished.notify_all();
                return result;
            }
            st = self.finished.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_flushes_and_each_waits_for_one_that_started_after_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sync = Arc::new(GroupSync::with(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            Ok(())
        })));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = sync.clone();
                let c = calls.clone();
                std::thread::spawn(move || {
                    let before = c.load(Ordering::SeqCst);
                    s.sync().unwrap();
                    // At least one flush started (and ended) after this call began.
                    assert!(c.load(Ordering::SeqCst) > before);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((1..8).contains(&n), "{n} flushes for 8 callers");
    }

    #[test]
    fn a_failed_flush_fails_its_callers_and_the_next_one_is_tried_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sync = GroupSync::with(Box::new(move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(io::Error::other("EIO"))
            } else {
                Ok(())
            }
        }));
        assert!(sync.sync().is_err());
        sync.sync().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn real_syncfs_works_on_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        GroupSync::open(dir.path()).unwrap().sync().unwrap();
    }
}
