//! The folder source: full snapshots of the manifest files.
//!
//! As kubelet's file source (`pkg/kubelet/config/file.go`), every change publishes
//! the whole folder, not the event that revealed it: events are only a hint to look
//! again, so a missed or coalesced event costs latency, never correctness. A
//! periodic rescan catches what inotify cannot see (the root created or replaced
//! later, network filesystems). What one scan reads, and how safely, is `scan.rs`.
//!
//! When to scan is a trade between latency and work. A write that is finished (the
//! file closed after writing, or renamed into place as editors and git do) is
//! scanned at once: the time from a save to a running container is the point of
//! the agent. Other events (a create, a write still going on, a removal) wait for
//! [`SETTLE`] of quiet, or a finished write if one comes first, so a scan does not
//! read a file half written. And once a scan has run for events, more events while
//! it runs or within [`SETTLE`] after it are a burst (200 files written at once, a
//! checkout): they are gathered into one more scan once the burst goes quiet, rather
//! than one scan per file. The latest snapshot wins.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode};
use tokio::sync::watch;

use super::scan::{scan_dir_with, ReadError, ScanPolicy, SourceFile};
use super::ManifestError;

/// A full snapshot of the manifest files, as published by [`watch_dir`].
pub type Snapshot = Arc<Vec<SourceFile>>;

/// Keeps the watcher running; dropping it stops the watcher thread.
pub struct WatchGuard {
    stop: mpsc::Sender<Wake>,
    heartbeat: Arc<AtomicI64>,
    scans: Arc<AtomicU64>,
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

    /// How many times the watcher thread has scanned the folder: what the events so
    /// far have cost. A burst of writes should cost a few scans, not one per file.
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(Wake::Stop);
    }
}

#[derive(Debug)]
enum Wake {
    /// An event a scan may see; `complete` if it says a write is finished
    /// ([`is_complete`]).
    Changed {
        complete: bool,
    },
    Stop,
}

/// Watches `root` and publishes a full snapshot ([`scan_dir_with`] under `policy`)
/// whenever it changes: on file events (recursive; at once for a finished write or
/// rename, else once they have been quiet for [`SETTLE`]) and every `rescan`. A
/// snapshot is published only when it differs from the last one.
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
    watch_dir_paced(root, rescan, policy, Pace::DEFAULT)
}

/// [`watch_dir`] with its quiet periods given: tests stretch them, so that what must
/// not wait for them shows without measuring time.
fn watch_dir_paced(
    root: PathBuf,
    rescan: Duration,
    policy: ScanPolicy,
    pace: Pace,
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
    let scans = Arc::new(AtomicU64::new(0));
    let watcher = Watcher {
        root,
        policy,
        rescan,
        pace,
        heartbeat: heartbeat.clone(),
        scans: scans.clone(),
    };
    std::thread::Builder::new()
        .name("wharf-manifests".into())
        .spawn(move || watcher.run(tx, events, wake_rx))
        .map_err(|source| ManifestError::SpawnWatcher {
            path: shown,
            source,
        })?;
    let guard = WatchGuard {
        stop: wake_tx,
        heartbeat,
        scans,
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

/// Quiet time that ends a burst of events, and that a change which is not a finished
/// write (a create, a write not closed yet, a removal) waits for before the folder is
/// scanned. Short, because such a change waits for it before its container starts or
/// stops (`cat > f` holds the file open while it writes); a burst that outlasts it
/// only costs an extra snapshot (the latest one wins and reconciling is
/// level-triggered), except a snapshot that lost a file, which waits for
/// [`REMOVAL_SETTLE`] of quiet and a second scan. A finished write is scanned at once
/// ([`is_complete`]).
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
fn holds_content(text: &Result<String, ReadError>) -> bool {
    let Ok(text) = text else { return true };
    text.lines().any(|line| {
        let line = line.trim();
        !(line.is_empty() || line.starts_with('#') || line == "---" || line == "...")
    })
}

/// A stream of events that never goes quiet (a file written continuously) still gets a
/// scan this often.
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// The watcher's quiet periods.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// See [`SETTLE`]; also how long after a scan for events a further event counts
    /// as the same burst.
    quiet: Duration,
    /// See [`MAX_SETTLE`].
    max: Duration,
}

impl Pace {
    const DEFAULT: Pace = Pace {
        quiet: SETTLE,
        max: MAX_SETTLE,
    };
}

/// What ends a wait for quiet early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    /// Only quiet (or the longest wait): a burst being gathered, a removal.
    OnQuiet,
    /// Quiet, or a finished write: a change seen while idle, such as the create or
    /// the first write of a save whose close is still to come.
    OnQuietOrComplete,
}

struct Watcher {
    root: PathBuf,
    policy: ScanPolicy,
    rescan: Duration,
    pace: Pace,
    heartbeat: Arc<AtomicI64>,
    scans: Arc<AtomicU64>,
}

impl Watcher {
    /// Scans the folder. `None`: stop.
    ///
    /// The events queued now happened before the scan reads the folder, so it covers
    /// them: they are dropped, or a single-file save (notify reports a rename into
    /// place as `To`, then `Both` when it saw the origin) would look like a burst still
    /// going and cost a second scan.
    fn scan(&self, wake: &mpsc::Receiver<Wake>) -> Option<Vec<SourceFile>> {
        loop {
            match wake.try_recv() {
                Ok(Wake::Changed { .. }) => {}
                Ok(Wake::Stop) | Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let files = scan_dir_with(&self.root, self.policy);
        self.scans.fetch_add(1, Ordering::Relaxed);
        self.heartbeat.store(unix_millis(), Ordering::Relaxed);
        Some(files)
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
        // Whether the last scan was for events (rather than the periodic rescan).
        let mut for_events = false;
        loop {
            let current = fs::metadata(root).ok().map(|m| (m.dev(), m.ino()));
            if current.is_none() || watched.as_ref().map(|(id, _)| Some(*id)) != Some(current) {
                watched = current.and_then(|id| start_watch(root, events.clone()).map(|w| (id, w)));
            }

            let Some(mut snapshot) = self.scan(&wake) else {
                return;
            };
            if loses_a_file(&tx.borrow(), &snapshot) {
                // An editor's save may move the file away (vim's backup, "safe write"),
                // or truncate it, and write the new one a moment later: a removal is
                // published only once the folder has been quiet for longer, so a save
                // never stops a container. A finished write does not end this wait
                // early: a truncated file closed empty is finished too.
                if settle(&wake, REMOVAL_SETTLE, REMOVAL_SETTLE * 5, Ends::OnQuiet).is_none() {
                    return;
                }
                let Some(again) = self.scan(&wake) else {
                    return;
                };
                snapshot = again;
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
            if self.next_scan(&wake, &mut for_events).is_none() {
                return;
            }
        }
    }

    /// Waits until the next scan is due. `None`: stop.
    fn next_scan(&self, wake: &mpsc::Receiver<Wake>, for_events: &mut bool) -> Option<()> {
        let Pace { quiet, max } = self.pace;
        if *for_events {
            // Events that came while the scan ran (still queued), or that come within
            // `quiet` after it, are a burst still going: gather them into one scan once
            // it is quiet, finished writes included. 200 files written at once then
            // cost two scans (the first file's, and one for the rest, as long as the
            // writer never pauses for `quiet`), not 200.
            match wake.recv_timeout(quiet) {
                Ok(Wake::Changed { .. }) => return settle(wake, quiet, max, Ends::OnQuiet),
                Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        match wake.recv_timeout(self.rescan) {
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *for_events = false;
                Some(())
            }
            Ok(Wake::Changed { complete }) => {
                *for_events = true;
                if complete {
                    Some(())
                } else {
                    settle(wake, quiet, max, Ends::OnQuietOrComplete)
                }
            }
        }
    }
}

/// Waits until no event has come for `quiet` (at most `max`), or, with
/// [`Ends::OnQuietOrComplete`], until an event says a write is finished. `None`: stop.
///
/// Our own quiet period rather than notify-debouncer-full's: that one checks on a timer
/// (every quarter of its timeout, forever, even with nothing to do) and reports a path
/// only after timeout + a tick; here the thread sleeps until an event or the quiet
/// period's end.
fn settle(wake: &mpsc::Receiver<Wake>, quiet: Duration, max: Duration, ends: Ends) -> Option<()> {
    let deadline = std::time::Instant::now() + max;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Some(());
        }
        match wake.recv_timeout(quiet.min(left)) {
            Ok(Wake::Changed { complete: true }) if ends == Ends::OnQuietOrComplete => {
                return Some(())
            }
            Ok(Wake::Changed { .. }) => continue,
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
    // No paths: a queue overflow or the like, which asks for a rescan.
    kind_counts && (event.paths.is_empty() || !event.paths.iter().all(|p| is_hidden(p)))
}

/// Whether an event says a write is finished, so that the folder is scanned at once:
/// a file closed after writing (`IN_CLOSE_WRITE`, notify's `Close(Write)`), or a name
/// renamed into the folder (`IN_MOVED_TO`: notify's `Name(To)`, then `Name(Both)` when
/// it pairs the move with its origin), as editors and git put a file in place. Its
/// destination (the last path) must not be hidden: a file moved to a hidden name is
/// gone, and a removal waits anyway. Every other change may be one step of several (a
/// create before the writes, a write before the close).
fn is_complete(event: &notify::Event) -> bool {
    let finishes = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    );
    finishes && event.paths.last().is_some_and(|p| !is_hidden(p))
}

/// Whether a path's last name is hidden (a scan skips it).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn start_watch(root: &Path, events: mpsc::Sender<Wake>) -> Option<notify::RecommendedWatcher> {
    let handler = move |result: notify::Result<notify::Event>| {
        let wake = match &result {
            Ok(event) if is_change(event) => Some(Wake::Changed {
                complete: is_complete(event),
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "manifest watcher error; the periodic rescan still runs");
                Some(Wake::Changed { complete: false })
            }
        };
        if let Some(wake) = wake {
            let _ = events.send(wake);
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
#[path = "source_tests.rs"]
mod tests;
