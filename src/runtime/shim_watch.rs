//! Noticing at once when a container's shim ends, through a pidfd per shim.
//!
//! A shim ends when its container has exited and the exit is recorded, or when it was
//! killed (then its container is orphaned: see `LinuxRuntime::stop_orphan`). Either way
//! the agent should look again now, not at its next periodic relist: each listed running
//! container's shim gets a pidfd (`pidfd_open(2)`), watched by a small task on tokio's
//! reactor, and its end wakes whoever waits in [`ShimWatch::ended`]. The relist stays
//! as the safety net (a shim from before an agent restart is watched from the first
//! list on; a kernel without pidfds simply relies on the relist).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::linux::{pidfd_open, proc, readable};
use super::records::Running;

/// The shims being watched, by container name.
#[derive(Debug, Default, Clone)]
pub struct ShimWatch {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Container name → the shim watched for it.
    watched: Mutex<HashMap<String, Watched>>,
    ended: Notify,
}

#[derive(Debug)]
struct Watched {
    pid: i32,
    task: AbortHandle,
    /// Set by the task when the pidfd said the shim has ended.
    ended: Arc<AtomicBool>,
}

impl ShimWatch {
    /// Watches the shims of `running` (containers as the last list saw them running),
    /// and stops watching any other. Must run inside a tokio runtime (a blocking task of
    /// one is fine); outside of one it does nothing.
    pub fn update<'a>(&self, running: impl Iterator<Item = (&'a str, &'a Running)>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut watched = self.inner.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = HashMap::new();
        for (name, r) in running.filter(|(_, r)| r.shim_pid > 0) {
            if let Some(w) = watched.remove(name) {
                if w.pid == r.shim_pid {
                    keep.insert(name.to_owned(), w);
                    continue;
                }
                w.task.abort();
            }
            let Ok(fd) = pidfd_open(r.shim_pid) else {
                continue; // gone already, or no pidfds: the relist sees it
            };
            // The pid may have been reused between the record and the open.
            if !proc::is_alive(r.shim_pid, r.shim_start_time) {
                self.inner.ended.notify_one();
                continue;
            }
            let inner = self.inner.clone();
            let ended = Arc::new(AtomicBool::new(false));
            let flag = ended.clone();
            let task = handle.spawn(async move {
                if readable(fd).await.is_ok() {
                    flag.store(true, Ordering::Release);
                    inner.ended.notify_one();
                }
            });
            keep.insert(
                name.to_owned(),
                Watched {
                    pid: r.shim_pid,
                    task: task.abort_handle(),
                    ended,
                },
            );
        }
        for (_, w) in watched.drain() {
            w.task.abort();
        }
        *watched = keep;
    }

    /// Whether shim `shim_pid` of container `name` is watched and its pidfd has not said
    /// it ended: then it lives, known without reading `/proc` (the pidfd names that very
    /// process, checked alive when it was opened, so a reused pid cannot fool it).
    pub fn alive(&self, name: &str, shim_pid: i32) -> bool {
        let watched = self.inner.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched
            .get(name)
            .is_some_and(|w| w.pid == shim_pid && !w.ended.load(Ordering::Acquire))
    }

    /// Resolves when a watched shim has ended (at once if one ended since the last call).
    pub async fn ended(&self) {
        self.inner.ended.notified().await;
    }

    /// How many shims are watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn running(pid: i32) -> Running {
        Running {
            run: 1,
            pid,
            start_time: 0,
            started_at: 0,
            started_at_ms: 0,
            shim_pid: pid,
            shim_start_time: proc::start_time(pid).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_watched_process_that_ends_wakes_the_waiter_and_others_are_dropped() {
        let mut a = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let watch = ShimWatch::default();
        let (ra, rb) = (running(a.id() as i32), running(b.id() as i32));
        watch.update([("a", &ra), ("b", &rb)].into_iter());
        assert_eq!(watch.len(), 2);
        assert!(watch.alive("a", ra.shim_pid));
        assert!(!watch.alive("a", rb.shim_pid), "another pid under the name");
        watch.update([("a", &ra)].into_iter());
        assert_eq!(watch.len(), 1);
        // b is no longer watched: its end wakes nobody.
        b.kill().unwrap();
        b.wait().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.ended())
                .await
                .is_err(),
            "woken by an unwatched process"
        );
        a.kill().unwrap();
        a.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.ended())
            .await
            .expect("the end of a watched process was not noticed");
        assert!(
            !watch.alive("a", ra.shim_pid),
            "an ended shim is still said alive"
        );
        assert!(
            !watch.alive("b", rb.shim_pid),
            "an unwatched shim is said alive"
        );
    }
}
