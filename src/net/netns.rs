//! Network namespaces as files: created before the container (netns-first, as CNI
//! does), pinned by a bind mount under the run dir, joined by the container later.
//!
//! Threads and namespaces: `unshare(CLONE_NEWNET)` and `setns` change the namespace of
//! the *calling thread* only (setns(2), unshare(2)). So every namespace switch here
//! happens on a short-lived std thread made for it, which ends afterwards: no tokio
//! worker and no pooled thread is ever left in a foreign namespace. Nothing forks
//! (`rtnetlink`'s `NetworkNamespace::add` does, from async code; see pitfalls.md).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Errors of network namespace files; each names the namespace file.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("create network namespace file {path}: {source}")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("network namespace {path} already exists")]
    AlreadyExists { path: PathBuf },
    #[error("unshare a network namespace for {path}: {source}")]
    Unshare { path: PathBuf, source: Errno },
    #[error("bring up lo in the new network namespace {path}: {source}")]
    LoopbackUp { path: PathBuf, source: io::Error },
    #[error("bind-mount the new network namespace onto {path}: {source}")]
    Mount { path: PathBuf, source: Errno },
    #[error("unmount network namespace {path}: {source}")]
    Unmount { path: PathBuf, source: Errno },
    #[error("remove network namespace file {path}: {source}")]
    RemoveFile { path: PathBuf, source: io::Error },
    #[error("open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: Errno },
    #[error("start a thread for network namespace {path}: {source}")]
    SpawnThread { path: PathBuf, source: io::Error },
    #[error("the thread creating network namespace {path} panicked")]
    CreateThreadPanicked { path: PathBuf },
    #[error("{error}; cleaning up also failed: {cleanup}")]
    CleanupFailed {
        error: Box<NetnsError>,
        cleanup: Box<NetnsError>,
    },
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Where the namespace of `container` is pinned: `<run_dir>/netns/<container>`.
pub fn path_for(run_dir: &Path, container: &str) -> PathBuf {
    run_dir.join("netns").join(container)
}

/// Creates a new network namespace with `lo` up, pinned at `path` (parents created).
///
/// A stale empty file at `path` (a crash between creating the file and mounting) is
/// reused; a namespace already mounted there is an error.
pub fn create(path: &Path) -> Result<()> {
    if exists(path) {
        return Err(NetnsError::AlreadyExists { path: path.into() });
    }
    let create_file = || -> io::Result<File> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Mode 0 as `ip netns add` does: the file is only a mount point.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o000)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    };
    create_file().map_err(|source| NetnsError::CreateFile {
        path: path.into(),
        source,
    })?;

    if let Err(error) = unshare_and_pin(path) {
        if let Err(cleanup) = remove_file(path) {
            return Err(NetnsError::CleanupFailed {
                error: Box::new(error),
                cleanup: Box::new(cleanup),
            });
        }
        return Err(error);
    }
    Ok(())
}

/// On a dedicated thread (its namespaces die with it): 1. unshare the network
/// namespace, 2. bring `lo` up while nothing else can see the namespace yet, 3. pin it
/// by bind-mounting this thread's nsfs file onto `path`, as `ip netns add` does.
fn unshare_and_pin(path: &Path) -> Result<()> {
    let owned = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("wharf-netns-create".into())
        .spawn(move || -> Result<()> {
            let path = owned;
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare {
                path: path.clone(),
                source,
            })?;
            crate::runtime::linux::loopback_up().map_err(|source| NetnsError::LoopbackUp {
                path: path.clone(),
                source,
            })?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own.as_str()),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::Mount { path, source })
        })
        .map_err(|source| NetnsError::SpawnThread {
            path: path.into(),
            source,
        })?;
    thread
        .join()
        .map_err(|_| NetnsError::CreateThreadPanicked { path: path.into() })?
}

/// Unmounts and deletes the namespace file; a missing file is success.
///
/// When the unmount fails the file is kept: it is the only handle by which the
/// namespace can be found (and removed) again.
pub fn remove(path: &Path) -> Result<()> {
    // MNT_DETACH as `ip netns del`: a process still inside keeps the namespace alive,
    // but the file is free. Loop in case the file was mounted over more than once.
    for _ in 0..8 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not (or no longer) a mount point; ENOENT: no file.
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(source) => {
                return Err(NetnsError::Unmount {
                    path: path.into(),
                    source,
                })
            }
        }
    }
    remove_file(path)
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NetnsError::RemoveFile {
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether a network namespace is mounted at `path` (an nsfs file, not a plain file).
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The namespace files in `dir` (e.g. `<run_dir>/netns`), for cleanup after a crash;
/// a missing directory is empty.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

/// Runs `f` on a new OS thread that has joined the network namespace at `path`, and
/// returns its result. Sockets `f` opens (netlink included) belong to that namespace
/// and stay there, whichever thread uses them later. Blocks the caller until `f`
/// returns: from async code wrap it in `spawn_blocking`. A panic in `f` is resumed on
/// the caller.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    // setns would reject a plain file with EINVAL; say what is wrong instead.
    if !exists(path) {
        return Err(NetnsError::NotNetns { path: path.into() });
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("wharf-netns".into())
            .spawn_scoped(scope, move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.into(),
                    source,
                })?;
                drop(ns);
                Ok(f())
            })
            .map_err(|source| NetnsError::SpawnThread {
                path: path.into(),
                source,
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_a_namespace_and_cannot_be_entered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(!exists(&file));
        assert!(matches!(
            run_in(&file, || ()),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            run_in(&dir.path().join("missing"), || ()),
            Err(NetnsError::Open { .. })
        ));
    }

    #[test]
    fn removing_a_missing_namespace_is_success_and_a_stale_file_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("missing")).unwrap();
        let stale = path_for(dir.path(), "web");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"").unwrap();
        remove(&stale).unwrap();
        assert!(!stale.exists());
        assert_eq!(
            list(&dir.path().join("netns")).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert!(list(&dir.path().join("nothing")).unwrap().is_empty());
    }

    #[test]
    fn the_calling_threads_namespace_is_not_changed_by_run_in() {
        // Entering our own namespace needs CAP_SYS_ADMIN; without it the error is
        // Enter, never a changed namespace.
        let me = "/proc/thread-self/ns/net";
        let before = std::fs::read_link(me).unwrap();
        let inside = run_in(Path::new("/proc/self/ns/net"), || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        });
        if let Ok(inside) = inside {
            assert_eq!(inside, before);
        }
        assert_eq!(std::fs::read_link(me).unwrap(), before);
    }
}
