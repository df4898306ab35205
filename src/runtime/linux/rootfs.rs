//! Building the container's root filesystem inside its new mount namespace: overlayfs
//! over the image layers, the OCI mounts (`/proc`, `/dev`, `/dev/pts`, `/dev/shm`,
//! `/sys`), device nodes, `pivot_root`, masked and read-only paths.
//!
//! Everything here runs in the shim's child after `unshare(CLONE_NEWNS)`, so every
//! mount lives and dies with the container's mount namespace: nothing to clean up on
//! the host. Order follows runc's `rootfs_linux.go`: propagation, root, mounts, devices,
//! pivot, then masking and read-only remounts.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::Mount;

use super::resolve::{fd_path, Kind, Root};

/// A failed rootfs step, naming what it touched.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("pivot_root into {root}: {source}")]
    Pivot { root: PathBuf, source: nix::Error },
    #[error("unsupported mount option {option:?} for {target}")]
    Option { option: String, target: PathBuf },
    #[error("mount target {target} in the container: {source}")]
    Target { target: PathBuf, source: io::Error },
}

pub(super) fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::Error) -> RootfsError {
    let (what, target) = (what.to_owned(), target.to_owned());
    move |source| RootfsError::Mount {
        what,
        target,
        source,
    }
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_owned();
    move |source| RootfsError::Io { op, path, source }
}

/// Stops mount events propagating back to the host: everything below is slave.
pub fn make_root_slave() -> Result<(), RootfsError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err("rslave propagation", Path::new("/")))
}

/// Mounts an overlay of `lower` (bottom first, as images list layers) with `upper` and
/// `work` on `target`.
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    // overlayfs lists lowerdirs top first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(mount_err("overlay", target))
}

/// Joins a container path onto the rootfs lexically, dropping `..` that would climb
/// above it. For messages only: anything that touches the path resolves it with
/// [`Root`], which follows symlinks inside the root and never out of it.
pub fn join_in_root(root: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    root.join(out)
}

/// Splits OCI mount options into flags and filesystem data.
fn parse_options(options: &[String], target: &Path) -> Result<(MsFlags, Vec<String>), RootfsError> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" | "rprivate" | "slave" | "rslave" => {}
            other if other.contains('=') || other == "newinstance" => data.push(other.to_owned()),
            other => {
                return Err(RootfsError::Option {
                    option: other.to_owned(),
                    target: target.to_owned(),
                })
            }
        }
    }
    Ok((flags, data))
}

/// [`Root::ensure`], its error naming the target. Under `/proc`, `/dev` and `/sys`,
/// where the kernel's filesystems go and the shim itself uses what it mounted
/// (`/dev/null` for masking, `/dev` for device nodes), no symlink is followed at all
/// ([`Root::ensure_strict`]).
pub(super) fn ensure(root: &Root, dest: &Path, kind: Kind) -> Result<OwnedFd, RootfsError> {
    let system = ["/proc", "/dev", "/sys"]
        .iter()
        .any(|p| dest.starts_with(p));
    let resolved = if system {
        root.ensure_strict(dest, kind)
    } else {
        root.ensure(dest, kind)
    };
    resolved.map_err(|source| RootfsError::Target {
        target: dest.to_owned(),
        source,
    })
}

/// Performs one OCI mount under `root`. The target is resolved inside the root and
/// mounted through its descriptor (see [`super::resolve`]), so neither a symlink in the
/// image nor one swapped in by another container sharing a volume can move it, or the
/// directories and files made for it, onto the host.
pub fn mount_one(root: &Root, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination();
    let shown = join_in_root(root.path(), dest);
    let options = m.options().clone().unwrap_or_default();
    let (flags, data) = parse_options(&options, &shown)?;
    let typ = m.typ().clone().unwrap_or_default();
    if typ == "cgroup" {
        return super::cgroupfs::mount_view(root, dest, flags);
    }
    let source = m
        .source()
        .clone()
        .unwrap_or_else(|| PathBuf::from(typ.as_str()));
    let is_bind = flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let kind = if is_bind && !source.is_dir() {
        Kind::File
    } else {
        Kind::Dir
    };
    let target = ensure(root, dest, kind)?;
    let at = fd_path(&target);

    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let what = format!("{typ} ({})", source.display());
    if is_bind {
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(Some(&source), &at, None::<&str>, bind, None::<&str>)
            .map_err(mount_err(&what, &shown))?;
        // Bind mounts ignore other flags until a remount applies them. The remount goes
        // to the new mount, which the old descriptor no longer names: resolve again, and
        // check that what was found is the bind's source. A container sharing a folder
        // on the way could have moved the mount point and planted a link, so that the
        // remount (`ro`!) lands on something else while the bind stays writable.
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let mounted = ensure(root, dest, kind)?;
            let id = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
            let found =
                nix::sys::stat::fstat(&mounted).map_err(|e| io_err("stat", &shown)(e.into()))?;
            let wanted =
                nix::sys::stat::stat(&source).map_err(|e| io_err("stat", &source)(e.into()))?;
            if id(found) != id(wanted) {
                return Err(RootfsError::Target {
                    target: dest.to_owned(),
                    source: io::Error::other(
                        "the mount point changed while it was being mounted; refusing to apply its options elsewhere",
                    ),
                });
            }
            mount(
                None::<&str>,
                &fd_path(&mounted),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest,
                None::<&str>,
            )
            .map_err(mount_err(&what, &shown))?;
        }
        return Ok(());
    }
    mount(Some(&source), &at, Some(typ.as_str()), flags, data).map_err(mount_err(&what, &shown))
}

/// The device nodes every container gets (Docker's and runc's default set).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Creates the default device nodes, the config's `extra` ones (a privileged container's
/// host devices) and the `/dev` symlinks in `<root>/dev`.
pub fn populate_dev(
    root: &Root,
    extra: &[oci_spec::runtime::LinuxDevice],
) -> Result<(), RootfsError> {
    // `/dev` is the tmpfs just mounted: resolved again so the descriptor names the new
    // mount, not the directory under it. Below it, paths go through the descriptor.
    let dev_fd = ensure(root, Path::new("/dev"), Kind::Dir)?;
    let dev = fd_path(&dev_fd);
    for d in extra {
        let (Some(parent), Some(name)) = (d.path().parent(), d.path().file_name()) else {
            continue;
        };
        let parent_fd = ensure(root, parent, Kind::Dir)?;
        let path = fd_path(&parent_fd).join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
            _ => SFlag::S_IFCHR,
        };
        mknod(
            &path,
            kind,
            Mode::from_bits_truncate(d.file_mode().unwrap_or(0o600)),
            makedev(d.major() as u64, d.minor() as u64),
        )
        .map_err(|e| io_err("mknod", &path)(e.into()))?;
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(d.file_mode().unwrap_or(0o600)),
        )
        .map_err(io_err("chmod", &path))?;
        std::os::unix::fs::lchown(&path, d.uid(), d.gid()).map_err(io_err("chown", &path))?;
    }
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if path.symlink_metadata().is_err() {
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(*major, *minor),
            )
            .map_err(|e| io_err("mknod", &path)(e.into()))?;
        }
        // mknod applies the umask; the nodes must be world read-write.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .map_err(io_err("chmod", &path))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        // runc's (and so Docker's) link; masked like its target.
        ("core", "/proc/kcore"),
    ] {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            symlink(target, &path).map_err(io_err("symlink", &path))?;
        }
    }
    Ok(())
}

/// Makes `root` the new `/` and detaches the old root, using the `pivot_root(".", ".")`
/// trick (no put_old directory needed; see pivot_root(2) notes and runc's `pivotRoot`).
pub fn pivot(root: &Path) -> Result<(), RootfsError> {
    let pivot_err = |source| RootfsError::Pivot {
        root: root.to_owned(),
        source,
    };
    chdir(root).map_err(pivot_err)?;
    pivot_root(".", ".").map_err(pivot_err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(pivot_err)?;
    chdir("/").map_err(pivot_err)
}

/// The container's `/dev/null` (after the pivot), opened without following a link and
/// checked to be the null device (character 1:3), for [`mask_paths`]. The container's
/// `/dev` may be a volume's by then, and its `null` a link to
/// `/proc/sys/kernel/core_pattern`: masks bound from it would expose that file
/// read-write (runc's CVE-2025-31133, fixed the same way). The check is made on the
/// descriptor the mounts then use, so nothing can be swapped in between.
pub fn null_device() -> Result<OwnedFd, RootfsError> {
    let path = Path::new("/dev/null");
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", path)(e.into()))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| io_err("stat", path)(e.into()))?;
    let is_char = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR;
    if !is_char || st.st_rdev != makedev(1, 3) {
        return Err(io_err("check", path)(io::Error::other(
            "/dev/null is not the null device (1:3); refusing to mask paths with it",
        )));
    }
    Ok(fd)
}

/// Hides paths after the pivot: `null` (the checked null device, see [`null_device`])
/// over files, an empty read-only tmpfs over directories. Missing paths are skipped.
pub fn mask_paths(paths: &[String], null: &OwnedFd) -> Result<(), RootfsError> {
    let null = fd_path(null);
    for p in paths {
        let path = Path::new(p);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_symlink() {
            // Masks name the kernel's own files; a link there is not one to follow.
            continue;
        }
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some(&null),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        }
        .map_err(mount_err("mask", path))?;
    }
    Ok(())
}

/// Remounts `paths` read-only (after the pivot). Missing paths are skipped.
pub fn readonly_paths(paths: &[String]) -> Result<(), RootfsError> {
    for p in paths {
        let path = Path::new(p);
        if path.symlink_metadata().is_err() {
            continue;
        }
        remount_readonly(path, true)?;
    }
    Ok(())
}

/// Bind-mounts `path` onto itself and remounts it read-only.
pub fn remount_readonly(path: &Path, bind_first: bool) -> Result<(), RootfsError> {
    if bind_first {
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(mount_err("bind", path))?;
    }
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(mount_err("read-only remount", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_in_root_cannot_climb_above_the_root() {
        let root = Path::new("/r");
        assert_eq!(join_in_root(root, Path::new("/proc")), Path::new("/r/proc"));
        assert_eq!(
            join_in_root(root, Path::new("/../../etc")),
            Path::new("/r/etc")
        );
        assert_eq!(join_in_root(root, Path::new("a/../b")), Path::new("/r/b"));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "mode=755", "size=65536k", "ro"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts, Path::new("/dev")).unwrap();
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(data, vec!["mode=755", "size=65536k"]);
        assert!(parse_options(&["bogus".into()], Path::new("/x")).is_err());
    }
}
