//! `/sys/fs/cgroup` inside the container (the OCI `cgroup` mount): the container sees
//! its own cgroup as the root, through its cgroup namespace, so tools such as `free`
//! replacements, JVMs and Go runtimes read their limits where they expect them.
//!
//! On cgroup v2 that is one `cgroup2` mount. On v1 it is a tmpfs holding one mount per
//! hierarchy the host has (`memory`, `cpu,cpuacct`, `name=systemd`…) and the host's
//! symlinks (`cpu -> cpu,cpuacct`), as Docker shows it. The hybrid `unified` cgroup2 of
//! a v1 host is left out, as Docker does.
//!
//! Runs in the shim's child after it entered its cgroup and unshared its cgroup namespace
//! (the namespace root is the container's cgroup), before `pivot_root`.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::resolve::{fd_path, Kind, Root};
use super::rootfs::{ensure, io_err, mount_err, RootfsError};

const HOST: &str = "/sys/fs/cgroup";

/// Mounts the container's cgroup view at `dest` (in the container) with `flags`
/// (read-only unless privileged). `dest` is resolved inside `root` (see
/// [`super::resolve`]); below the fresh tmpfs, nothing but this shim can write, so paths
/// through its descriptor are safe.
pub fn mount_view(root: &Root, dest: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    let resolve = || ensure(root, dest, Kind::Dir);
    let below = resolve()?;
    let target = &fd_path(&below);
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if cgroups_rs::hierarchies::is_cgroup2_unified_mode() {
        return mount(
            Some("cgroup2"),
            target,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(mount_err("cgroup2", target));
    }
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=755"),
    )
    .map_err(mount_err("tmpfs", target))?;
    // The descriptor names the directory under the new tmpfs: resolve again, and check
    // that it is a tmpfs (a folder swapped in meanwhile would not be).
    let view = resolve()?;
    let is_tmpfs = nix::sys::statfs::fstatfs(&view)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !is_tmpfs {
        return Err(RootfsError::Target {
            target: dest.to_owned(),
            source: std::io::Error::other("the mount point changed while it was being mounted"),
        });
    }
    let target = &fd_path(&view);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    for (dir, options) in v1_hierarchies(&mountinfo) {
        let at = target.join(&dir);
        fs::create_dir_all(&at).map_err(io_err("create", &at))?;
        mount(
            Some("cgroup"),
            &at,
            Some("cgroup"),
            flags,
            Some(options.as_str()),
        )
        .map_err(mount_err(&format!("cgroup ({options})"), &at))?;
    }
    // `cpu -> cpu,cpuacct` and the like.
    if let Ok(entries) = fs::read_dir(HOST) {
        for entry in entries.flatten() {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            let at = target.join(entry.file_name());
            if at.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(&link, &at).map_err(io_err("symlink", &at))?;
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs_flags,
            Some("mode=755"),
        )
        .map_err(mount_err("read-only tmpfs", target))?;
    }
    Ok(())
}

/// The host's v1 hierarchies directly under `/sys/fs/cgroup`: (folder name, mount data
/// naming its controllers), from mountinfo lines such as
/// `36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct`.
fn v1_hierarchies(mountinfo: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some("cgroup") {
            continue;
        }
        let options = right.nth(1).unwrap_or("");
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let Some(dir) = point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if dir.contains('/') {
            continue;
        }
        let data: Vec<&str> = options
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro"))
            .collect();
        out.push((dir.to_owned(), data.join(",")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_come_from_mountinfo_with_their_controllers() {
        let mountinfo = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
33 26 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
90 33 0:31 /docker /mnt/elsewhere rw - cgroup cgroup rw,memory
";
        assert_eq!(
            v1_hierarchies(mountinfo),
            [
                ("systemd".to_string(), "xattr,name=systemd".to_string()),
                ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
                ("memory".into(), "memory".into()),
            ]
        );
    }
}
