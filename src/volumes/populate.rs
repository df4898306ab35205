//! Filling a new volume from the image, Docker's behaviour: the first time a volume is
//! mounted, if it is empty and the image has a directory at the mount point, that
//! directory's content (ownership, modes, times, xattrs, symlinks, hard links, device
//! nodes) is copied into the volume, and the volume's root takes the directory's owner
//! and mode. Unlike Docker, an emptied volume is not refilled at the next start: the
//! record says it was populated once (Docker's refill surprises people who cleared it).
//!
//! Runs in the shim's child, inside the container's mount namespace after the overlay is
//! mounted and before the volume is mounted over it, as root. The source is the
//! container's rootfs, which the image controls: nothing here follows a symlink.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use super::{VolumeError, VolumeStore};

/// One volume to populate before it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The agent's state root (the store is `<state_root>/volumes`).
    pub state_root: PathBuf,
    pub name: String,
    /// The mount point in the container.
    pub target: PathBuf,
}

/// Populates the volume of `req` from `rootfs` if this is its first mount.
///
/// The store lock is held only to read and write the record: the copy itself runs under
/// the volume's own fill lock, so a large image directory delays nothing else. Nobody
/// mounts the volume meanwhile (a container mounts it only after its own `populate`,
/// which waits on the fill lock), and nobody deletes it (the shim starting this container
/// holds its in-use lock).
pub fn populate(req: &Request, rootfs: &Path) -> Result<(), VolumeError> {
    let store = VolumeStore::new(&req.state_root);
    // An unreadable record: the volume's history is unknown, so it is not filled (a
    // container may be using it).
    let needs_fill = |store: &VolumeStore| -> Result<Option<PathBuf>, VolumeError> {
        let guard = store.lock()?;
        let data = store.create(&guard, &req.name, &Default::default())?;
        Ok(match store.record(&req.name) {
            Ok(Some(r)) if !r.populated => Some(data),
            _ => None,
        })
    };
    if needs_fill(&store)?.is_none() {
        return Ok(());
    }
    let _filling = store.fill_lock(&req.name)?;
    // Another container may have filled it while this one waited.
    let Some(data) = needs_fill(&store)? else {
        return Ok(());
    };
    let fail = |message: String| VolumeError::Failed {
        name: req.name.clone(),
        message,
    };
    let empty = fs::read_dir(&data)
        .map_err(|e| fail(format!("read {}: {e}", data.display())))?
        .next()
        .is_none();
    if empty {
        if let Some(source) = image_dir(rootfs, &req.target).map_err(&fail)? {
            if let Err(e) = copy_tree(&source, &data) {
                // Leave it empty, as it was: the next start tries again.
                if let Ok(entries) = fs::read_dir(&data) {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                    }
                }
                return Err(fail(format!(
                    "copy {} from the image: {e}",
                    req.target.display()
                )));
            }
        }
    }
    let guard = store.lock()?;
    let mut record = store.record(&req.name)?.unwrap_or_default();
    record.populated = true;
    store.write_record(&guard, &req.name, &record)
}

/// The directory at `target` in `rootfs`, if the image has one. A symlink anywhere on the
/// way is an error (it could point out of the rootfs); a file there is not a directory
/// to copy, so nothing is copied.
fn image_dir(rootfs: &Path, target: &Path) -> Result<Option<PathBuf>, String> {
    let mut path = rootfs.to_path_buf();
    for c in target.components() {
        match c {
            Component::Normal(p) => path.push(p),
            Component::RootDir | Component::CurDir => continue,
            other => return Err(format!("mount target {target:?} has {other:?}")),
        }
        match path.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "mount target {} goes through a symlink in the image",
                    target.display()
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(path.is_dir().then_some(path))
}

/// Copies the content of `from` into the existing empty directory `to`, then gives `to`
/// the owner and mode of `from`. An error names the entry it failed on.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_dir_content(from, to, &mut links)?;
    let meta = from.symlink_metadata()?;
    copy_attributes(from, to, &meta).map_err(|e| at(to, e))
}

/// `e` with the path it happened at.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn copy_dir_content(
    from: &Path,
    to: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(from).map_err(|e| at(from, e))? {
        let entry = entry.map_err(|e| at(from, e))?;
        copy_entry(&entry.path(), &to.join(entry.file_name()), links)?;
    }
    Ok(())
}

/// Copies one entry (a directory with its content); errors name the entry.
fn copy_entry(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let here = |e| at(src, e);
    let meta = src.symlink_metadata().map_err(here)?;
    let kind = meta.file_type();
    if !kind.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, dst).map_err(here);
        }
        links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
    }
    if kind.is_dir() {
        fs::create_dir(dst).map_err(here)?;
        copy_dir_content(src, dst, links)?;
    } else if kind.is_symlink() {
        symlink(fs::read_link(src).map_err(here)?, dst).map_err(here)?;
    } else if kind.is_file() {
        let mut input = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(here)?;
        let mut output = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(here)?;
        // std uses copy_file_range where it can.
        io::copy(&mut input, &mut output).map_err(here)?;
    } else {
        use std::os::unix::fs::FileTypeExt;
        let sflag = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else if kind.is_block_device() {
            SFlag::S_IFBLK
        } else if kind.is_fifo() {
            SFlag::S_IFIFO
        } else {
            return Ok(()); // a socket is no content
        };
        let rdev = meta.rdev();
        mknod(
            dst,
            sflag,
            Mode::from_bits_truncate(0o600),
            makedev(libc::major(rdev) as u64, libc::minor(rdev) as u64),
        )
        .map_err(|e| here(e.into()))?;
    }
    copy_attributes(src, dst, &meta).map_err(here)
}

/// Owner, then mode (chown clears set-id bits), xattrs, then times (last: the rest
/// changes them).
fn copy_attributes(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let is_link = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !is_link {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    if let Ok(names) = xattr::list(src) {
        for name in names {
            // overlayfs' own attributes describe the lower layers, not the content.
            if name.to_string_lossy().starts_with("trusted.overlay.") {
                continue;
            }
            if let Ok(Some(value)) = xattr::get(src, &name) {
                match xattr::set(dst, &name, &value) {
                    Ok(()) => {}
                    // The state filesystem may not take this namespace (user.* on some
                    // filesystems, a foreign security label): the content still counts.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {
                        eprintln!("{}: xattr {name:?} not kept: {e}", dst.display());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let times = [
        TimeSpec::new(meta.atime(), meta.atime_nsec()),
        TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/app/sub")).unwrap();
        fs::write(root.join("etc/app/conf"), b"x=1").unwrap();
        fs::set_permissions(root.join("etc/app/conf"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(root.join("etc/app/conf"), root.join("etc/app/sub/same")).unwrap();
        symlink("conf", root.join("etc/app/link")).unwrap();
        fs::set_permissions(root.join("etc/app"), fs::Permissions::from_mode(0o750)).unwrap();
    }

    #[test]
    fn the_image_directory_is_copied_once_with_modes_links_and_hard_links() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        tree(rootfs.path());
        let req = Request {
            state_root: state.path().to_owned(),
            name: "conf".into(),
            target: "/etc/app".into(),
        };
        populate(&req, rootfs.path()).unwrap();
        let data = VolumeStore::new(state.path()).data_path("conf");
        assert_eq!(fs::read(data.join("conf")).unwrap(), b"x=1");
        assert_eq!(fs::read_link(data.join("link")).unwrap(), Path::new("conf"));
        let a = data.join("conf").metadata().unwrap();
        assert_eq!(a.mode() & 0o7777, 0o640);
        assert_eq!(a.ino(), data.join("sub/same").metadata().unwrap().ino());
        assert_eq!(data.metadata().unwrap().mode() & 0o7777, 0o750);
        let src_mtime = rootfs
            .path()
            .join("etc/app/sub")
            .metadata()
            .unwrap()
            .mtime();
        assert_eq!(data.join("sub").metadata().unwrap().mtime(), src_mtime);

        // Populated once: an emptied volume stays empty.
        fs::remove_dir_all(&data).unwrap();
        fs::create_dir(&data).unwrap();
        populate(&req, rootfs.path()).unwrap();
        assert_eq!(fs::read_dir(&data).unwrap().count(), 0);
    }

    #[test]
    fn two_first_mounts_at_once_fill_the_volume_once() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        tree(rootfs.path());
        let req = Request {
            state_root: state.path().to_owned(),
            name: "shared".into(),
            target: "/etc/app".into(),
        };
        let results: Vec<_> = std::thread::scope(|s| {
            let a = s.spawn(|| populate(&req, rootfs.path()));
            let b = s.spawn(|| populate(&req, rootfs.path()));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        for r in results {
            r.unwrap(); // the second copy would fail on "file exists"
        }
        let data = VolumeStore::new(state.path()).data_path("shared");
        assert_eq!(fs::read(data.join("conf")).unwrap(), b"x=1");
    }

    #[test]
    fn a_volume_with_data_is_not_overwritten() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        tree(rootfs.path());
        let store = VolumeStore::new(state.path());
        let data = store.ensure("v").unwrap();
        fs::write(data.join("mine"), b"1").unwrap();
        let req = Request {
            state_root: state.path().to_owned(),
            name: "v".into(),
            target: "/etc/app".into(),
        };
        populate(&req, rootfs.path()).unwrap();
        assert!(!data.join("conf").exists());
        assert!(store.record("v").unwrap().unwrap().populated);
    }

    #[test]
    fn a_symlinked_target_in_the_image_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host").unwrap();
        fs::create_dir(rootfs.path().join("etc")).unwrap();
        symlink(outside.path(), rootfs.path().join("etc/app")).unwrap();
        let req = Request {
            state_root: state.path().to_owned(),
            name: "v".into(),
            target: "/etc/app".into(),
        };
        let err = populate(&req, rootfs.path()).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let data = VolumeStore::new(state.path()).data_path("v");
        assert!(!data.join("secret").exists());
    }

    #[test]
    fn a_missing_image_path_populates_nothing() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let req = Request {
            state_root: state.path().to_owned(),
            name: "v".into(),
            target: "/nowhere".into(),
        };
        populate(&req, rootfs.path()).unwrap();
        let store = VolumeStore::new(state.path());
        assert!(store.record("v").unwrap().unwrap().populated);
    }
}
