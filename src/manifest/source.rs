//! The folder source: full snapshots of the manifest files.
//!
//! As kubelet's file source (`pkg/kubelet/config/file.go`), every change publishes
//! the whole folder, not the event that revealed it: events are only a hint to look
//! again, so a missed or coalesced event costs latency, never correctness. A
//! periodic rescan catches what inotify cannot see (the root created or replaced
//! later, network filesystems).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use tokio::sync::watch;

use super::yaml::MAX_FILE_BYTES;
use super::ManifestError;

/// One manifest file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the root, `/`-separated.
    pub path: String,
    /// The text, or why it could not be read. A folder that cannot be listed is
    /// reported as an entry with its path and an error, so nothing it holds is
    /// taken as removed.
    pub text: Result<String, String>,
}

/// Whether a file name is a manifest: `*.yaml`/`*.yml`, not hidden, not editor or
/// backup junk (vim's `4913` and `*.swp`, emacs' `#*#` and `*~`, `*.bak`, `*.tmp`).
fn is_manifest_name(name: &str) -> bool {
    let junk = name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
        || [".swp", ".swx", ".bak", ".tmp"]
            .iter()
            .any(|ext| name.ends_with(ext));
    !junk && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Lists the manifest files under `root`, recursively, sorted by path. Hidden
/// files and folders are skipped. A missing root is an empty folder (it may be
/// created later). Symbolic links are followed (Kubernetes ConfigMap mounts are
/// links into a hidden `..data` folder), each folder once, so a loop ends.
pub fn scan_dir(root: &Path) -> Vec<SourceFile> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    match fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => out.push(SourceFile {
            path: ".".into(),
            text: Err(format!("cannot read the manifests folder: {e}")),
        }),
        Ok(_) => walk(root, "", &mut seen, &mut out),
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(dir: &Path, prefix: &str, seen: &mut HashSet<(u64, u64)>, out: &mut Vec<SourceFile>) {
    let listed = fs::metadata(dir).and_then(|m| {
        seen.insert((m.dev(), m.ino()));
        fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()
    });
    let entries = match listed {
        Ok(entries) => entries,
        Err(e) => {
            out.push(SourceFile {
                path: if prefix.is_empty() {
                    ".".into()
                } else {
                    prefix.into()
                },
                text: Err(format!("cannot list folder: {e}")),
            });
            return;
        }
    };
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        // Follow links: the target decides whether it is a file or a folder.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // A dangling link or a file removed while listing: not part of the snapshot.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                if is_manifest_name(&name) {
                    out.push(SourceFile {
                        path: rel,
                        text: Err(e.to_string()),
                    });
                }
                continue;
            }
        };
        if meta.is_dir() {
            if !seen.contains(&(meta.dev(), meta.ino())) {
                walk(&path, &rel, seen, out);
            }
        } else if meta.is_file() && is_manifest_name(&name) {
            out.push(SourceFile {
                path: rel,
                text: read_text(&path, meta.len()),
            });
        }
    }
}

/// Reads a manifest as UTF-8, refusing files too large to be one.
pub(crate) fn read_text(path: &Path, len: u64) -> Result<String, String> {
    if len > MAX_FILE_BYTES as u64 {
        return Err(format!(
            "file is {len} bytes, more than the {MAX_FILE_BYTES} a manifest may have"
        ));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "file is not valid UTF-8".to_string())
}

/// A full snapshot of the manifest files, as published by [`watch_dir`].
pub type Snapshot = Arc<Vec<SourceFile>>;

/// Keeps the watcher running; dropping it stops the watcher thread.
pub struct WatchGuard {
    stop: mpsc::Sender<Wake>,
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

/// Watches `root` and publishes a full snapshot ([`scan_dir`]) whenever it
/// changes: on file events (recursive, once they have been quiet for [`SETTLE`]) and
/// every `rescan`.
/// A snapshot is published only when it differs from the last one.
///
/// The receiver starts with the current snapshot. `root` may not exist yet: the
/// snapshot is then empty, and the folder is picked up by a rescan once it appears
/// (and watched again if it is replaced). Works inside or outside a tokio runtime:
/// the work runs on a plain thread, since scanning is blocking I/O.
pub fn watch_dir(
    root: PathBuf,
    rescan: Duration,
) -> Result<(WatchGuard, watch::Receiver<Snapshot>), ManifestError> {
    if let Ok(meta) = fs::metadata(&root) {
        if !meta.is_dir() {
            return Err(ManifestError::RootNotADirectory {
                path: root.display().to_string(),
            });
        }
    }
    let (tx, rx) = watch::channel(Arc::new(scan_dir(&root)));
    let (wake_tx, wake_rx) = mpsc::channel();
    let events = wake_tx.clone();
    let rescan = rescan.max(Duration::from_millis(10));
    let shown = root.display().to_string();
    std::thread::Builder::new()
        .name("wharf-manifests".into())
        .spawn(move || run_watcher(root, rescan, tx, events, wake_rx))
        .map_err(|source| ManifestError::SpawnWatcher {
            path: shown,
            source,
        })?;
    Ok((WatchGuard { stop: wake_tx }, rx))
}

/// Quiet time after the last file event before the folder is scanned. Short, because it
/// adds straight to the time from a saved file to a running container; a burst that
/// outlasts it only costs an extra snapshot (the latest one wins and reconciling is
/// level-triggered), except a snapshot that lost a file, which waits for
/// [`REMOVAL_SETTLE`] of quiet and a second scan.
pub const SETTLE: Duration = Duration::from_millis(10);

/// Quiet time asked before publishing a scan that lost a file (see [`loses_a_file`]).
const REMOVAL_SETTLE: Duration = Duration::from_millis(200);

/// Whether `new` lacks a file `old` has: a removal, or a save half done.
fn loses_a_file(old: &[SourceFile], new: &[SourceFile]) -> bool {
    // Both are sorted by path (scan_dir).
    let mut new = new.iter().map(|f| &f.path).peekable();
    old.iter().any(|f| {
        while new.next_if(|p| **p < f.path).is_some() {}
        new.next_if(|p| **p == f.path).is_none()
    })
}

/// A stream of events that never goes quiet (a file written continuously) still gets a
/// scan this often.
const MAX_SETTLE: Duration = Duration::from_millis(250);

fn run_watcher(
    root: PathBuf,
    rescan: Duration,
    tx: watch::Sender<Snapshot>,
    events: mpsc::Sender<Wake>,
    wake: mpsc::Receiver<Wake>,
) {
    // The watch is tied to the root's inode: if the folder is created later, or
    // replaced (deleted and re-created, or a symlink swapped), watch it again.
    let mut watched: Option<((u64, u64), notify::RecommendedWatcher)> = None;
    loop {
        let current = fs::metadata(&root).ok().map(|m| (m.dev(), m.ino()));
        if current.is_none() || watched.as_ref().map(|(id, _)| Some(*id)) != Some(current) {
            watched = current.and_then(|id| start_watch(&root, events.clone()).map(|w| (id, w)));
        }

        let mut snapshot = scan_dir(&root);
        if loses_a_file(&tx.borrow(), &snapshot) {
            // An editor's save may move the file away (vim's backup, "safe write") and
            // write the new one a moment later: a removal is published only once the
            // folder has been quiet for longer, so a save never stops a container.
            if settle(&wake, REMOVAL_SETTLE, REMOVAL_SETTLE * 5).is_none() {
                return;
            }
            snapshot = scan_dir(&root);
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

        match wake.recv_timeout(rescan) {
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

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn paths(files: &[SourceFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

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
        let (_guard, mut rx) = watch_dir(dir.path().to_owned(), Duration::from_secs(60)).unwrap();
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
    fn editor_junk_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for junk in [
            ".web.yaml.swp",
            "web.yaml~",
            "web.yaml.swp",
            "web.yaml.swx",
            "web.yaml.bak",
            "web.yaml.tmp",
            "4913",
            "#web.yaml#",
            ".#web.yaml",
            ".hidden.yaml",
            "notes.txt",
            ".git/config.yaml",
            "..data/web.yaml",
        ] {
            write(dir.path(), junk, "x");
        }
        write(dir.path(), "web.yaml", "a");
        assert_eq!(paths(&scan_dir(dir.path())), ["web.yaml"]);
    }

    #[test]
    fn scan_is_recursive_sorted_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yml", "b");
        write(dir.path(), "a/z.yaml", "z");
        write(dir.path(), "a/b/c.yaml", "c");
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("a/loop")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("b.yml"), dir.path().join("link.yaml")).unwrap();
        let files = scan_dir(dir.path());
        assert_eq!(
            paths(&files),
            ["a/b/c.yaml", "a/z.yaml", "b.yml", "link.yaml"]
        );
        assert_eq!(files[3].text, Ok("b".into()));
    }

    #[test]
    fn missing_root_is_an_empty_snapshot_and_bad_utf8_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan_dir(&dir.path().join("nope")).is_empty());
        fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe]).unwrap();
        assert_eq!(
            scan_dir(dir.path())[0].text,
            Err("file is not valid UTF-8".into())
        );
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
        let (_guard, mut rx) = watch_dir(root.clone(), Duration::from_secs(3600)).unwrap();
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
        let (guard, mut rx) = watch_dir(root.clone(), Duration::from_millis(50)).unwrap();
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
            watch_dir(f, Duration::from_secs(1)),
            Err(ManifestError::RootNotADirectory { .. })
        ));
    }
}
