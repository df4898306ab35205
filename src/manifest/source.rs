//! The folder source: full snapshots of the manifest files.
//!
//! As kubelet's file source (`pkg/kubelet/config/file.go`), every change publishes
//! the whole folder, not the event that revealed it: events are only a hint to look
//! again, so a missed or coalesced event costs latency, never correctness. A
//! periodic rescan catches what inotify cannot see (the root created or replaced
//! later, network filesystems). What one scan reads, and how safely, is `scan.rs`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use tokio::sync::watch;

use super::scan::{scan_dir_with, ScanPolicy, SourceFile};
use super::ManifestError;

/// A full snapshot of the manifest files, as published by [`watch_dir`].
pub type Snapshot = Arc<Vec<SourceFile>>;

/// Keeps the watcher running; dropping it stops the watcher thread.
pub struct WatchGuard {
    stop: mpsc::Sender<Wake>,
    heartbeat: Arc<AtomicI64>,
    max_silence: Duration,
}

impl WatchGuard {
    /// Unix time in milliseconds when the watcher thread last finished a scan (or
    /// woke to wait for the next): a watcher stuck in a system call stops updating it.
    pub fn heartbeat(&self) -> Arc<AtomicI64> {
        self.heartbeat.clone()
    }

    /// How long the heartbeat may stay still before the watcher counts as stuck: it
    /// beats at least once per rescan period.
    pub fn max_silence(&self) -> Duration {
        self.max_silence
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(Wake::Stop);
    }
}

#[derive(Debug)]
enum Wake {
    Changed,
    Stop,
}

/// Watches `root` and publishes a full snapshot ([`scan_dir_with`] under `policy`)
/// whenever it changes: on file events (recursive, once they have been quiet for
/// [`SETTLE`]) and every `rescan`. A snapshot is published only when it differs from
/// the last one.
///
/// The receiver starts with the current snapshot. `root` may not exist yet: the
/// snapshot is then empty, and the folder is picked up by a rescan once it appears
/// (and watched again if it is replaced). Works inside or outside a tokio runtime:
/// the work runs on a plain thread, since scanning is blocking I/O.
pub fn watch_dir(
    root: PathBuf,
    rescan: Duration,
    policy: ScanPolicy,
) -> Result<(WatchGuard, watch::Receiver<Snapshot>), ManifestError> {
    if let Ok(meta) = fs::metadata(&root) {
        if !meta.is_dir() {
            return Err(ManifestError::RootNotADirectory {
                path: root.display().to_string(),
            });
        }
    }
    let (tx, rx) = watch::channel(Arc::new(scan_dir_with(&root, policy)));
    let (wake_tx, wake_rx) = mpsc::channel();
    let events = wake_tx.clone();
    let rescan = rescan.max(Duration::from_millis(10));
    let shown = root.display().to_string();
    let heartbeat = Arc::new(AtomicI64::new(unix_millis()));
    let beat = heartbeat.clone();
    std::thread::Builder::new()
        .name("wharf-manifests".into())
        .spawn(move || {
            let watcher = Watcher {
                root,
                policy,
                rescan,
                heartbeat: beat,
            };
            watcher.run(tx, events, wake_rx)
        })
        .map_err(|source| ManifestError::SpawnWatcher {
            path: shown,
            source,
        })?;
    let guard = WatchGuard {
        stop: wake_tx,
        heartbeat,
        // A rescan period, the longest settle, and room for a slow scan.
        max_silence: rescan * 2 + REMOVAL_SETTLE * 5 + Duration::from_secs(30),
    };
    Ok((guard, rx))
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Quiet time after the last file event before the folder is scanned. Short, because it
/// adds straight to the time from a saved file to a running container; a burst that
/// outlasts it only costs an extra snapshot (the latest one wins and reconciling is
/// level-triggered), except a snapshot that lost a file, which waits for
/// [`REMOVAL_SETTLE`] of quiet and a second scan.
pub const SETTLE: Duration = Duration::from_millis(10);

/// Quiet time asked before publishing a scan that lost a file (see [`loses_a_file`]).
const REMOVAL_SETTLE: Duration = Duration::from_millis(200);

/// Whether `new` lacks a file `old` has, or has it with nothing left in it: a removal,
/// or a save half done. `cat > f`, `echo > f` and some editors truncate the file and
/// then write it; a scan between the two sees a file of zero objects, which would
/// remove its containers as surely as a deleted file.
fn loses_a_file(old: &[SourceFile], new: &[SourceFile]) -> bool {
    // Both are sorted by path (scan_dir).
    let mut new = new.iter().peekable();
    old.iter().any(|f| {
        while new.next_if(|n| n.path < f.path).is_some() {}
        match new.next_if(|n| n.path == f.path) {
            None => true,
            Some(n) => holds_content(&f.text) && !holds_content(&n.text),
        }
    })
}

/// Whether a file may hold an object: anything but blank lines, comments and
/// document markers. An unreadable file counts as holding (its last good objects
/// are kept anyway).
fn holds_content(text: &Result<String, String>) -> bool {
    let Ok(text) = text else { return true };
    text.lines().any(|line| {
        let line = line.trim();
        !(line.is_empty() || line.starts_with('#') || line == "---" || line == "...")
    })
}

/// A stream of events that never goes quiet (a file written continuously) still gets a
/// scan this often.
const MAX_SETTLE: Duration = Duration::from_millis(250);

struct Watcher {
    root: PathBuf,
    policy: ScanPolicy,
    rescan: Duration,
    heartbeat: Arc<AtomicI64>,
}

impl Watcher {
    fn scan(&self) -> Vec<SourceFile> {
        let files = scan_dir_with(&self.root, self.policy);
        self.heartbeat.store(unix_millis(), Ordering::Relaxed);
        files
    }

    fn run(
        self,
        tx: watch::Sender<Snapshot>,
        events: mpsc::Sender<Wake>,
        wake: mpsc::Receiver<Wake>,
    ) {
        let root = &self.root;
        // The watch is tied to the root's inode: if the folder is created later, or
        // replaced (deleted and re-created, or a symlink swapped), watch it again.
        let mut watched: Option<((u64, u64), notify::RecommendedWatcher)> = None;
        loop {
            let current = fs::metadata(root).ok().map(|m| (m.dev(), m.ino()));
            if current.is_none() || watched.as_ref().map(|(id, _)| Some(*id)) != Some(current) {
                watched = current.and_then(|id| start_watch(root, events.clone()).map(|w| (id, w)));
            }

            let mut snapshot = self.scan();
            if loses_a_file(&tx.borrow(), &snapshot) {
                // An editor's save may move the file away (vim's backup, "safe write"),
                // or truncate it, and write the new one a moment later: a removal is
                // published only once the folder has been quiet for longer, so a save
                // never stops a container.
                if settle(&wake, REMOVAL_SETTLE, REMOVAL_SETTLE * 5).is_none() {
                    return;
                }
                snapshot = self.scan();
            }
            tx.send_if_modified(|old| {
                if **old == snapshot {
                    return false;
                }
                *old = Arc::new(snapshot);
                true
            });
            if tx.is_closed() {
                return;
            }

            match wake.recv_timeout(self.rescan) {
                Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Wake::Changed) => {
                    if settle(&wake, SETTLE, MAX_SETTLE).is_none() {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Waits until no event has come for `quiet` (at most `max`). `None`: stop.
///
/// Our own quiet period rather than notify-debouncer-full's: that one checks on a timer
/// (every quarter of its timeout, forever, even with nothing to do) and reports a path
/// only after timeout + a tick; here the thread sleeps until an event or the quiet
/// period's end.
fn settle(wake: &mpsc::Receiver<Wake>, quiet: Duration, max: Duration) -> Option<()> {
    let deadline = std::time::Instant::now() + max;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Some(());
        }
        match wake.recv_timeout(quiet.min(left)) {
            Ok(Wake::Changed) => continue,
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => return Some(()),
        }
    }
}

/// Whether an event may change what a scan reads. inotify also reports opens and
/// read-only closes (notify watches `IN_OPEN`), and every scan opens every file: waking
/// on those made the watcher rescan the folder forever (a quarter of a core with 100
/// manifests). Events on hidden names (vim's `.web.yaml.swp`, a temp file before its
/// rename) do not count either: a scan skips those, files and folders alike. (Other
/// junk names are skipped only as files; a folder may carry one, so they count.)
fn is_change(event: &notify::Event) -> bool {
    let kind_counts = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    let ignored = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    };
    // No paths: a queue overflow or the like, which asks for a rescan.
    kind_counts && (event.paths.is_empty() || !event.paths.iter().all(ignored))
}

fn start_watch(root: &Path, events: mpsc::Sender<Wake>) -> Option<notify::RecommendedWatcher> {
    let handler = move |result: notify::Result<notify::Event>| {
        let changed = match &result {
            Ok(event) => is_change(event),
            Err(e) => {
                tracing::warn!(error = %e, "manifest watcher error; the periodic rescan still runs");
                true
            }
        };
        if changed {
            let _ = events.send(Wake::Changed);
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        notify::Watcher::watch(&mut w, root, RecursiveMode::Recursive).map(|()| w)
    });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            // For example the inotify watch limit: degrade to the periodic rescan.
            tracing::warn!(root = %root.display(), error = %e, "cannot watch the manifests folder; relying on the periodic rescan");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::scan::scan_dir;
    use crate::manifest::scan::tests::write;

    /// The watcher's own scans open and read every file: those events must not wake
    /// it (they did, and it rescanned forever), nor writes to hidden names; a write,
    /// and a rename onto a manifest name, must.
    #[test]
    fn only_changes_a_scan_can_see_wake_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sub/web.yaml", "a");
        let (tx, rx) = mpsc::channel();
        let _watch = start_watch(dir.path(), tx).expect("inotify watch");
        let quiet = |what: &str| {
            let got = rx.recv_timeout(Duration::from_millis(300));
            assert!(got.is_err(), "woken by {what}: {got:?}");
        };
        let woken = |what: &str| {
            let got = rx.recv_timeout(Duration::from_secs(10));
            assert!(matches!(got, Ok(Wake::Changed)), "{what}: {got:?}");
            while rx.recv_timeout(Duration::from_millis(50)).is_ok() {}
        };
        for _ in 0..5 {
            assert_eq!(scan_dir(dir.path()).len(), 1);
        }
        quiet("reads");
        write(dir.path(), "sub/.api.yaml.partial", "b");
        write(dir.path(), "sub/.web.yaml.swp", "b");
        quiet("hidden files");
        fs::rename(
            dir.path().join("sub/.api.yaml.partial"),
            dir.path().join("sub/api.yaml"),
        )
        .unwrap();
        woken("rename onto a manifest name");
        write(dir.path(), "sub/web.yaml", "b");
        woken("a write");
    }

    /// A burst is one scan once quiet; a stream that never goes quiet still gets one.
    /// (Wide margins: a loaded machine may pause the feeding thread.)
    #[test]
    fn settle_waits_for_quiet_but_not_forever() {
        let (quiet, max) = (Duration::from_millis(300), Duration::from_millis(600));
        let (tx, rx) = mpsc::channel();
        let start = std::time::Instant::now();
        let feeder = std::thread::spawn(move || {
            while start.elapsed() < max * 2 {
                let _ = tx.send(Wake::Changed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert!(settle(&rx, quiet, max).is_some());
        let waited = start.elapsed();
        assert!(waited >= max, "scanned mid-stream after {waited:?}");
        assert!(waited < max * 2, "the stream was still going: {waited:?}");
        feeder.join().unwrap();
        while rx.try_recv().is_ok() {}
        assert!(
            settle(&rx, quiet, max).is_none(),
            "the sender is gone: stop"
        );
    }

    #[test]
    fn a_lost_file_is_told_from_added_and_kept_ones() {
        let files = |paths: &[&str]| -> Vec<SourceFile> {
            paths
                .iter()
                .map(|p| SourceFile {
                    path: p.to_string(),
                    text: Ok(String::new()),
                })
                .collect()
        };
        assert!(!loses_a_file(
            &files(&["a", "c"]),
            &files(&["a", "b", "c", "d"])
        ));
        assert!(!loses_a_file(&files(&[]), &files(&["a"])));
        assert!(loses_a_file(&files(&["a", "c"]), &files(&["a", "b"])));
        assert!(loses_a_file(&files(&["a"]), &files(&[])));
        assert!(loses_a_file(&files(&["a", "b"]), &files(&["b"])));
    }

    /// vim's save (and "safe write" editors): the file is moved away, then written
    /// anew. With the new file 40 ms later (longer than the settle), no snapshot
    /// without it is ever published; a real removal still is.
    #[test]
    fn an_editors_move_away_and_rewrite_never_publishes_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", "old");
        let (_guard, mut rx) = watch_dir(
            dir.path().to_owned(),
            Duration::from_secs(60),
            ScanPolicy::default(),
        )
        .unwrap();
        assert_eq!(rx.borrow_and_update().len(), 1);
        fs::rename(dir.path().join("web.yaml"), dir.path().join("web.yaml~")).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        write(dir.path(), "web.yaml", "new");
        let _ = fs::remove_file(dir.path().join("web.yaml~"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if rx.has_changed().unwrap() {
                let snap = rx.borrow_and_update().clone();
                assert!(
                    snap.iter().any(|f| f.path == "web.yaml"),
                    "published without web.yaml: {snap:?}"
                );
                if snap[0].text.as_deref() == Ok("new") {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new file never came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        fs::remove_file(dir.path().join("web.yaml")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !rx.borrow_and_update().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the removal never came"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_file_emptied_is_told_like_a_lost_one() {
        let file = |text: &str| SourceFile {
            path: "web.yaml".into(),
            text: Ok(text.into()),
        };
        let full = [file("kind: Container\n")];
        for emptied in ["", "\n  \n", "# nothing\n---\n"] {
            assert!(loses_a_file(&full, &[file(emptied)]), "{emptied:?}");
        }
        assert!(!loses_a_file(&full, &[file("kind: Network\n")]));
        assert!(!loses_a_file(&[file("")], &[file("")]));
        let unreadable = SourceFile {
            path: "web.yaml".into(),
            text: Err("is a FIFO".into()),
        };
        assert!(!loses_a_file(&full, std::slice::from_ref(&unreadable)));
    }

    /// `cat > web.yaml`: truncated, then written 40 ms later. No snapshot with the
    /// empty file is ever published; emptying it for good still is.
    #[test]
    fn a_file_rewritten_in_place_never_publishes_it_empty() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", "old: 1\n");
        let (_guard, mut rx) = watch_dir(
            dir.path().to_owned(),
            Duration::from_secs(60),
            ScanPolicy::default(),
        )
        .unwrap();
        rx.borrow_and_update();
        for _ in 0..3 {
            let f = fs::File::create(dir.path().join("web.yaml")).unwrap();
            std::thread::sleep(Duration::from_millis(40));
            drop(f);
            write(dir.path(), "web.yaml", "new: 1\n");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if rx.has_changed().unwrap() {
                    let snap = rx.borrow_and_update().clone();
                    assert_ne!(snap[0].text.as_deref(), Ok(""), "published empty");
                    if snap[0].text.as_deref() == Ok("new: 1\n") {
                        break;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the new text never came"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            write(dir.path(), "web.yaml", "old: 1\n");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while rx.borrow_and_update()[0].text.as_deref() != Ok("old: 1\n") {
                assert!(std::time::Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        fs::File::create(dir.path().join("web.yaml")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rx.borrow_and_update()[0].text.as_deref() != Ok("") {
            assert!(std::time::Instant::now() < deadline, "emptying never came");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A FIFO under a manifest name is reported and the watcher goes on: later edits
    /// are published and its heartbeat moves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fifo_never_stops_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (guard, mut rx) = watch_dir(
            root.clone(),
            Duration::from_millis(50),
            ScanPolicy::default(),
        )
        .unwrap();
        nix::unistd::mkfifo(&root.join("pipe.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        until(&mut rx, |s| {
            s.len() == 1 && s[0].text.as_ref().is_err_and(|e| e.contains("FIFO"))
        })
        .await;
        let before = guard.heartbeat().load(Ordering::Relaxed);
        write(&root, "web.yaml", "one");
        until(&mut rx, |s| s.len() == 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(guard.heartbeat().load(Ordering::Relaxed) > before);
    }

    /// Waits until the published snapshot satisfies `ok`.
    async fn until(rx: &mut watch::Receiver<Snapshot>, ok: impl Fn(&[SourceFile]) -> bool) {
        let wait = rx.wait_for(|s| ok(s));
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("no matching snapshot within 10s")
            .expect("watcher stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watcher_publishes_a_snapshot_on_create_edit_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // A long rescan: changes must be seen through file events.
        let (_guard, mut rx) = watch_dir(
            root.clone(),
            Duration::from_secs(3600),
            ScanPolicy::default(),
        )
        .unwrap();
        assert!(rx.borrow_and_update().is_empty());

        write(&root, "sub/web.yaml", "one");
        until(&mut rx, |s| s.len() == 1 && s[0].text == Ok("one".into())).await;
        write(&root, "sub/web.yaml", "two");
        until(&mut rx, |s| s.len() == 1 && s[0].text == Ok("two".into())).await;
        write(&root, "web.yaml.swp", "junk");
        fs::remove_file(root.join("sub/web.yaml")).unwrap();
        until(&mut rx, |s| s.is_empty()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watcher_picks_up_a_root_created_later() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        let (guard, mut rx) = watch_dir(
            root.clone(),
            Duration::from_millis(50),
            ScanPolicy::default(),
        )
        .unwrap();
        assert!(rx.borrow().is_empty());
        write(&root, "web.yaml", "one");
        until(&mut rx, |s| s.len() == 1).await;
        // Once the root exists it is watched: later edits arrive too.
        write(&root, "db.yaml", "two");
        until(&mut rx, |s| s.len() == 2).await;
        drop(guard);
    }

    #[test]
    fn a_file_as_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.yaml");
        fs::write(&f, "x").unwrap();
        assert!(matches!(
            watch_dir(f, Duration::from_secs(1), ScanPolicy::default()),
            Err(ManifestError::RootNotADirectory { .. })
        ));
    }
}
