//! Race-free resolution of paths inside a container's root, for the shim's mounts.
//!
//! The shim mounts before `pivot_root`, so a path such as `<rootfs>/data/sub` is looked
//! up by the host's kernel from the host's `/`. If a container sharing a volume swaps
//! `data/sub` for a symlink to `/` between a check and the mount, a path-based mount (or
//! `create_dir_all`, or `File::create`) lands on the host. This is CVE-2019-19921 and
//! CVE-2021-30465 in runc; the fix, as runc (`securejoin` + `openat2`) and youki do it:
//!
//! 1. Hold the root as a descriptor, and resolve every target *relative to it* with
//!    `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: the kernel treats the root as
//!    `/` for every component, so `..` and absolute symlinks stay inside it whatever is
//!    swapped meanwhile. Symlinks are followed inside the root, as under Docker (an image
//!    with `/var/run -> /run` and a volume at `/var/run/app` works), except on the way
//!    to the kernel's filesystems (`Root::ensure_strict`, for `/proc`, `/dev`, `/sys`).
//! 2. Create a missing component with `mkdirat`/`openat(O_CREAT | O_EXCL)` relative to
//!    its parent's descriptor (neither follows a symlink in the last component), then
//!    resolve again.
//! 3. Mount onto `/proc/self/fd/N` of the `O_PATH` descriptor: the kernel mounts on the
//!    object the descriptor holds, not on whatever the path names by then.
//!
//! Fallback for kernels without `openat2` (before 5.6): a walk one component at a time
//! with `openat(O_PATH | O_NOFOLLOW)`, which refuses every symlink on the way. It is as
//! race-free (each step is relative to the previous descriptor), only stricter.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// What a mount target must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory: filesystems and directory binds.
    Dir,
    /// A non-directory: file binds. A symlink as the last component is replaced by an
    /// empty file, as Docker shadows an image's `/etc/hosts -> …` link.
    File,
}

/// Whether symlinks on the way are followed (inside the root) or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Symlinks {
    InRoot,
    Refuse,
}

/// A container's root, held open, against which targets are resolved.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path` (a host path the shim made: the overlay's mount point).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The host path of the root (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `target` (absolute in the container) to an `O_PATH` descriptor of an
    /// existing object of `kind`, creating missing directories on the way and the
    /// target itself. The descriptor always names an object inside the root.
    pub fn ensure(&self, target: &Path, kind: Kind) -> io::Result<OwnedFd> {
        self.ensure_with(target, kind, Symlinks::InRoot)
    }

    /// [`Root::ensure`] refusing every symlink on the way (`RESOLVE_NO_SYMLINKS`), for
    /// the kernel's filesystems (`/proc`, `/dev`, `/sys`): an image whose `/dev` links
    /// to a volume would otherwise let the container choose what `/dev/null` is while
    /// the shim still uses it (runc's CVE-2025-31133).
    pub fn ensure_strict(&self, target: &Path, kind: Kind) -> io::Result<OwnedFd> {
        self.ensure_with(target, kind, Symlinks::Refuse)
    }

    fn ensure_with(&self, target: &Path, kind: Kind, links: Symlinks) -> io::Result<OwnedFd> {
        let parts = components(target)?;
        let Some((last, dirs)) = parts.split_last() else {
            // The root itself.
            return match kind {
                Kind::Dir => reopen(&self.fd),
                Kind::File => Err(Errno::EISDIR.into()),
            };
        };
        let parent = self.ensure_dirs(dirs, links)?;
        match kind {
            Kind::Dir => {
                match self.lookup(&parts, links) {
                    Ok(fd) => return expect_kind(fd, Kind::Dir),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
                // Missing, or a dangling symlink: mkdirat makes a directory in its place
                // or fails with EEXIST (it never follows a last-component symlink).
                match mkdirat(&parent, *last, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                expect_kind(self.lookup(&parts, links)?, Kind::Dir)
            }
            Kind::File => {
                // Looked up relative to the parent's descriptor, without following the
                // last component: a symlink there is the image's, and is replaced.
                match openat(
                    &parent,
                    *last,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) if file_type(&fd)? == SFlag::S_IFLNK => {
                        if links == Symlinks::Refuse {
                            return Err(Errno::ELOOP.into());
                        }
                        unlinkat(&parent, *last, UnlinkatFlags::NoRemoveDir)?;
                    }
                    Ok(fd) => return expect_kind(fd, Kind::File),
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                // O_EXCL: never opens (so never truncates) an existing file, and never
                // follows a symlink someone put there since.
                let created = openat(
                    &parent,
                    *last,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                );
                match created {
                    Ok(fd) => expect_kind(fd, Kind::File),
                    Err(Errno::EEXIST) => {
                        let fd = openat(
                            &parent,
                            *last,
                            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )?;
                        expect_kind(fd, Kind::File)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Every directory of `dirs`, created where missing; the last one's descriptor.
    fn ensure_dirs(&self, dirs: &[&OsStr], links: Symlinks) -> io::Result<OwnedFd> {
        let mut parent = reopen(&self.fd)?;
        for i in 0..dirs.len() {
            let fd = match self.lookup(&dirs[..=i], links) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match mkdirat(&parent, dirs[i], Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.lookup(&dirs[..=i], links)?
                }
                Err(e) => return Err(e),
            };
            parent = expect_kind(fd, Kind::Dir)?;
        }
        Ok(parent)
    }

    /// `O_PATH` descriptor of `parts` below the root, following symlinks inside it.
    fn lookup(&self, parts: &[&OsStr], links: Symlinks) -> io::Result<OwnedFd> {
        if parts.is_empty() {
            return reopen(&self.fd);
        }
        let rel: PathBuf = parts.iter().collect();
        let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if links == Symlinks::Refuse {
            resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(resolve);
        match openat2(&self.fd, &rel, how) {
            Err(Errno::ENOSYS) | Err(Errno::E2BIG) => walk_no_symlinks(&self.fd, parts),
            // openat2 retries internally, then gives up with EAGAIN if a rename raced the
            // lookup of `..`; the walk has no `..` to race on.
            Err(Errno::EAGAIN) => walk_no_symlinks(&self.fd, parts),
            other => other.map_err(io::Error::from),
        }
    }
}

/// Opens `rel` below the directory `root` for reading, following no symlink anywhere
/// and never leaving `root` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; the fallback walk
/// without `openat2` refuses symlinks too), and says what it is. A special file (a
/// whiteout's character device, a FIFO) is opened `O_PATH`, so opening it does nothing.
pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<(std::fs::File, SFlag)> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let parts = components(rel)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let rel: PathBuf = parts.iter().collect();
    let fd = match openat2(&dir, &rel, how) {
        Err(Errno::ENOSYS) | Err(Errno::E2BIG) | Err(Errno::EAGAIN) => {
            walk_no_symlinks(&dir, &parts)?
        }
        other => other?,
    };
    let kind = file_type(&fd)?;
    if kind != SFlag::S_IFREG {
        return Ok((std::fs::File::from(fd), kind));
    }
    // Reopened for reading through the descriptor: the very file resolved above.
    let file = std::fs::File::open(fd_path(&fd))?;
    Ok((file, kind))
}

/// The path through which a mount (or a path-based call) reaches exactly the object
/// `fd` holds. Valid while `fd` is open, in this process, with `/proc` mounted.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The normal components of an absolute container path. `..` is refused: manifest paths
/// are validated as clean, and a `..` that reached here is a bug, not something to
/// interpret.
fn components(target: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} has a `..` component", target.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// Kernels without `openat2`: one `openat(O_PATH | O_NOFOLLOW)` per component from the
/// root; a symlink anywhere is refused with `ELOOP`.
pub(super) fn walk_no_symlinks(root: &OwnedFd, parts: &[&OsStr]) -> io::Result<OwnedFd> {
    let mut fd = reopen(root)?;
    for part in parts {
        let next = openat(
            &fd,
            *part,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        if file_type(&next)? == SFlag::S_IFLNK {
            return Err(io::Error::other(format!(
                "{} is a symlink; this kernel has no openat2 to follow it safely",
                part.to_string_lossy()
            )));
        }
        fd = next;
    }
    Ok(fd)
}

fn reopen(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

fn file_type(fd: &OwnedFd) -> io::Result<SFlag> {
    let st = fstat(fd)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

fn expect_kind(fd: OwnedFd, kind: Kind) -> io::Result<OwnedFd> {
    let is_dir = file_type(&fd)? == SFlag::S_IFDIR;
    match (kind, is_dir) {
        (Kind::Dir, false) => Err(Errno::ENOTDIR.into()),
        (Kind::File, true) => Err(Errno::EISDIR.into()),
        _ => Ok(fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn real(fd: &OwnedFd) -> PathBuf {
        fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn missing_directories_are_created_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let fd = root.ensure(Path::new("/a/b/c"), Kind::Dir).unwrap();
        assert_eq!(real(&fd), dir.path().join("a/b/c"));
        let fd = root.ensure(Path::new("/a/f"), Kind::File).unwrap();
        assert_eq!(real(&fd), dir.path().join("a/f"));
        assert!(dir.path().join("a/f").is_file());
    }

    #[test]
    fn an_absolute_symlink_on_the_way_resolves_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // Exists on the host and, under the same name, inside the root.
        let name = outside.path().strip_prefix("/").unwrap();
        fs::create_dir_all(dir.path().join(name)).unwrap();
        symlink(outside.path(), dir.path().join("escape")).unwrap();
        symlink("/", dir.path().join("slash")).unwrap();
        symlink("../../..", dir.path().join("up")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        for target in ["/escape/x", "/slash/x", "/up/y"] {
            let fd = root.ensure(Path::new(target), Kind::Dir).unwrap();
            assert!(
                real(&fd).starts_with(dir.path()),
                "{target} resolved to {}",
                real(&fd).display()
            );
        }
        assert!(dir.path().join(name).join("x").is_dir());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_dangling_symlink_on_the_way_is_an_error_and_creates_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path().join("gone"), dir.path().join("dangling")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert!(root.ensure(Path::new("/dangling/x"), Kind::Dir).is_err());
        assert!(root.ensure(Path::new("/dangling"), Kind::File).is_ok());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_file_is_never_truncated_and_a_file_symlink_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), "host").unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/kept"), "image").unwrap();
        symlink(outside.path(), dir.path().join("etc/hosts")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.ensure(Path::new("/etc/kept"), Kind::File).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/kept")).unwrap(),
            "image"
        );
        let fd = root.ensure(Path::new("/etc/hosts"), Kind::File).unwrap();
        assert_eq!(real(&fd), dir.path().join("etc/hosts"));
        assert!(dir
            .path()
            .join("etc/hosts")
            .symlink_metadata()
            .unwrap()
            .is_file());
        assert_eq!(fs::read_to_string(outside.path()).unwrap(), "host");
    }

    #[test]
    fn strict_resolution_refuses_any_symlink_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("data")).unwrap();
        symlink("/data", dir.path().join("dev")).unwrap();
        symlink(
            "/proc/sys/kernel/core_pattern",
            dir.path().join("data/null"),
        )
        .unwrap();
        let root = Root::open(dir.path()).unwrap();
        let e = root
            .ensure_strict(Path::new("/dev"), Kind::Dir)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let e = root
            .ensure_strict(Path::new("/data/null"), Kind::File)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        // Not strict: followed inside the root.
        let fd = root.ensure(Path::new("/dev"), Kind::Dir).unwrap();
        assert_eq!(real(&fd), dir.path().join("data"));
    }

    #[test]
    fn a_kind_mismatch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "").unwrap();
        fs::create_dir(dir.path().join("dir")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let e = root.ensure(Path::new("/file"), Kind::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        let e = root.ensure(Path::new("/dir"), Kind::File).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
        assert!(root.ensure(Path::new("/a/../b"), Kind::Dir).is_err());
    }

    #[test]
    fn the_fallback_walk_refuses_every_symlink() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("real/x")).unwrap();
        symlink("real", dir.path().join("link")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let ok = walk_no_symlinks(&root.fd, &[OsStr::new("real"), OsStr::new("x")]).unwrap();
        assert_eq!(real(&ok), dir.path().join("real/x"));
        assert!(walk_no_symlinks(&root.fd, &[OsStr::new("link"), OsStr::new("x")]).is_err());
    }
}
