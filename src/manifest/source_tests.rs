use super::*;
use crate::manifest::scan::scan_dir;
use crate::manifest::scan::tests::write;

/// The watcher's own scans open and read every file: those events must not wake
/// it (they did, and it rescanned forever), nor writes to hidden names; a write,
/// and a rename onto a manifest name, must. As notify reports them from inotify, a
/// rename into place says the file is finished (`IN_MOVED_TO`), and so does a
/// write's close (`IN_CLOSE_WRITE`), not the truncation and writes before it.
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
    // Whether each wake said the write is finished, in order.
    let woken = |what: &str| -> Vec<bool> {
        let mut wakes = Vec::new();
        let mut got = rx.recv_timeout(Duration::from_secs(10));
        while let Ok(wake) = got {
            match wake {
                Wake::Changed { complete } => wakes.push(complete),
                Wake::Stop => panic!("{what}: {wake:?}"),
            }
            got = rx.recv_timeout(Duration::from_millis(50));
        }
        assert!(!wakes.is_empty(), "{what}: not woken");
        wakes
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
    let wakes = woken("rename onto a manifest name");
    assert!(wakes.iter().all(|&c| c), "a rename into place: {wakes:?}");
    write(dir.path(), "sub/web.yaml", "b");
    let wakes = woken("a write");
    assert_eq!(wakes.last(), Some(&true), "the close: {wakes:?}");
    assert!(wakes.contains(&false), "truncation and write: {wakes:?}");
}

/// The kinds notify gives inotify's events, classified without a kernel.
#[test]
fn finished_writes_and_renames_into_place_are_complete() {
    use notify::event::{CreateKind, DataChange, RemoveKind};
    let event = |kind: EventKind, paths: &[&str]| {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    };
    let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
    let name = |mode| EventKind::Modify(ModifyKind::Name(mode));
    for (e, complete) in [
        (event(closed, &["/m/web.yaml"]), true),
        (event(name(RenameMode::To), &["/m/web.yaml"]), true),
        (
            event(
                name(RenameMode::Both),
                &["/m/.web.yaml.partial", "/m/web.yaml"],
            ),
            true,
        ),
        (event(name(RenameMode::To), &["/m/sub"]), true),
        // Moved away: gone, not finished.
        (event(name(RenameMode::From), &["/m/web.yaml"]), false),
        (
            event(name(RenameMode::Both), &["/m/web.yaml", "/m/.web.yaml.old"]),
            false,
        ),
        // Steps of a write still going on, and removals.
        (
            event(EventKind::Create(CreateKind::File), &["/m/web.yaml"]),
            false,
        ),
        (
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/m/web.yaml"],
            ),
            false,
        ),
        (
            event(EventKind::Remove(RemoveKind::File), &["/m/web.yaml"]),
            false,
        ),
        // A queue overflow: no paths, a rescan after the settle.
        (event(EventKind::Other, &[]), false),
    ] {
        assert!(is_change(&e), "{e:?}");
        assert_eq!(is_complete(&e), complete, "{e:?}");
    }
}

/// While idle, a change that is not a finished write waits for quiet, but a finished
/// write ends the wait; gathering a burst ends on quiet only. (Told by what is left
/// in the queue: a wait that ended early leaves the later events.)
#[test]
fn a_finished_write_ends_a_settle_only_when_idle() {
    let long = Duration::from_secs(3600);
    let (tx, rx) = mpsc::channel();
    for complete in [false, true, false] {
        tx.send(Wake::Changed { complete }).unwrap();
    }
    assert!(settle(&rx, long, long, Ends::OnQuietOrComplete).is_some());
    assert!(matches!(
        rx.try_recv(),
        Ok(Wake::Changed { complete: false })
    ));
    assert!(rx.try_recv().is_err());

    for complete in [false, true, false] {
        tx.send(Wake::Changed { complete }).unwrap();
    }
    let short = Duration::from_millis(50);
    assert!(settle(&rx, short, long, Ends::OnQuiet).is_some());
    assert!(rx.try_recv().is_err(), "left events of the burst behind");
}

/// The watcher's pacing, fed events through its queue as inotify would: a finished
/// write seen while idle is scanned at once; once a scan has run for events, what
/// comes right after is gathered, finished writes included.
#[test]
fn after_a_scan_for_events_the_next_events_are_gathered() {
    let long = Duration::from_secs(3600);
    let watcher = |quiet| Watcher {
        root: PathBuf::from("/nonexistent"),
        policy: ScanPolicy::default(),
        rescan: long,
        pace: Pace { quiet, max: long },
        heartbeat: Arc::new(AtomicI64::new(0)),
        scans: Arc::new(AtomicU64::new(0)),
    };
    let (tx, rx) = mpsc::channel();

    // Idle (the last scan was the periodic one): the first finished write is due.
    let idle = watcher(long);
    let mut for_events = false;
    for complete in [true, true, true] {
        tx.send(Wake::Changed { complete }).unwrap();
    }
    assert!(idle.next_scan(&rx, &mut for_events).is_some());
    assert!(for_events);
    assert_eq!(rx.try_iter().count(), 2, "waited for more than the first");

    // Right after a scan for events: 200 finished writes are one scan.
    let busy = watcher(Duration::from_millis(50));
    for _ in 0..200 {
        tx.send(Wake::Changed { complete: true }).unwrap();
    }
    assert!(busy.next_scan(&rx, &mut for_events).is_some());
    assert!(rx.try_recv().is_err(), "left events of the burst behind");

    drop(tx);
    assert!(busy.next_scan(&rx, &mut for_events).is_none(), "stop");
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
            let _ = tx.send(Wake::Changed { complete: true });
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert!(settle(&rx, quiet, max, Ends::OnQuiet).is_some());
    let waited = start.elapsed();
    assert!(waited >= max, "scanned mid-stream after {waited:?}");
    assert!(waited < max * 2, "the stream was still going: {waited:?}");
    feeder.join().unwrap();
    while rx.try_recv().is_ok() {}
    assert!(
        settle(&rx, quiet, max, Ends::OnQuiet).is_none(),
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
        text: Err(ReadError::NotRegular("a FIFO")),
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
        s.len() == 1 && s[0].text == Err(ReadError::NotRegular("a FIFO"))
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

/// Waits (up to 10 s) until the watcher thread has made its first scan, so that what
/// a test does next is seen as events, not by that scan.
fn first_scan_done(guard: &WatchGuard) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while guard.scans() == 0 {
        assert!(std::time::Instant::now() < deadline, "no first scan");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With quiet periods of an hour, a write still open is not scanned, and its close
/// is published at once; so is a file renamed into place. (A watcher that waited for
/// the settle would publish neither within the test's 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_write_is_published_without_waiting_for_the_settle() {
    use std::io::Write;
    let hour = Duration::from_secs(3600);
    let pace = Pace {
        quiet: hour,
        max: hour,
    };
    let text = "kind: Container\n";

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (guard, mut rx) = watch_dir_paced(root.clone(), hour, ScanPolicy::default(), pace).unwrap();
    first_scan_done(&guard);
    let mut file = fs::File::create(root.join("web.yaml")).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.has_changed().unwrap(), "scanned a write still open");
    drop(file);
    until(&mut rx, |s| {
        s.len() == 1 && s[0].text.as_deref() == Ok(text)
    })
    .await;

    // A fresh watcher: right after the scan above, the next event would count as
    // part of a burst, which waits for the quiet.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (guard, mut rx) = watch_dir_paced(root.clone(), hour, ScanPolicy::default(), pace).unwrap();
    first_scan_done(&guard);
    write(&root, ".api.yaml.partial", text);
    fs::rename(root.join(".api.yaml.partial"), root.join("api.yaml")).unwrap();
    until(&mut rx, |s| s.len() == 1 && s[0].path == "api.yaml").await;
}

/// 200 files written at once, each as editors and git do (a temp name, then a
/// rename): the first is scanned at once, the rest are gathered. A quiet of 200 ms,
/// so that only a writer stalled that long (a loaded machine) adds a scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_coalesces_into_few_scans() {
    const FILES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pace = Pace {
        quiet: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    let (guard, mut rx) = watch_dir_paced(
        root.clone(),
        Duration::from_secs(3600),
        ScanPolicy::default(),
        pace,
    )
    .unwrap();
    first_scan_done(&guard);
    let before = guard.scans();
    for i in 0..FILES {
        write(&root, &format!(".c{i}.yaml.partial"), "kind: Container\n");
        fs::rename(
            root.join(format!(".c{i}.yaml.partial")),
            root.join(format!("c{i}.yaml")),
        )
        .unwrap();
    }
    until(&mut rx, |s| s.len() == FILES).await;
    let scans = guard.scans() - before;
    // Two when the writer never pauses 200 ms: the first file's, then the rest.
    assert!(
        (1..=5).contains(&scans),
        "{FILES} files written at once cost {scans} scans"
    );
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
