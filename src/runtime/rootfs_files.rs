//! Reading a file of the image before the container exists (e.g. `/etc/passwd` to
//! resolve a user name), looking through the layers top first as overlayfs would.
//!
//! The layers are the image's, so untrusted: every lookup is made below the layer's
//! directory without following any symlink (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`), so an image with `/etc -> /host/etc` cannot make the agent
//! read the host's files, and a read is bounded.

use std::io::Read;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;

use super::linux::resolve::open_beneath;

/// The largest image file read this way; `/etc/passwd` of a real image is a few KiB.
const MAX_BYTES: u64 = 1 << 20;

/// The content of `path` (absolute in the image) as the merged rootfs would show it, or
/// `None` when absent, hidden by a whiteout, reached through a symlink, not a regular
/// file, too large, or not UTF-8.
pub fn read_from_layers(layers: &[PathBuf], path: &str) -> Option<String> {
    let rel = Path::new(path.trim_start_matches('/'));
    for layer in layers.iter().rev() {
        match open_beneath(layer, rel) {
            Ok((file, kind)) if kind == SFlag::S_IFREG => {
                let mut text = String::new();
                file.take(MAX_BYTES + 1).read_to_string(&mut text).ok()?;
                return (text.len() as u64 <= MAX_BYTES).then_some(text);
            }
            // A whiteout (0:0 character device), or anything else that is not a file.
            Ok(_) => return None,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // A whiteout of a parent directory, or an opaque parent, also hides it;
                // images with those around /etc/passwd are rare enough to treat as absent.
                let hidden = rel.ancestors().skip(1).any(|a| {
                    !a.as_os_str().is_empty()
                        && matches!(open_beneath(layer, a), Ok((_, k)) if k == SFlag::S_IFCHR)
                });
                if hidden {
                    return None;
                }
            }
            // ELOOP (a symlink on the way) and the rest: not followed, not read.
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layer_wins_and_lower_is_used_when_upper_lacks_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (l1, l2) = (d.path().join("l1"), d.path().join("l2"));
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        std::fs::create_dir_all(l2.join("etc")).unwrap();
        std::fs::write(l1.join("etc/passwd"), "lower").unwrap();
        std::fs::write(l1.join("etc/group"), "g").unwrap();
        std::fs::write(l2.join("etc/passwd"), "upper").unwrap();
        let layers = vec![l1, l2];
        assert_eq!(
            read_from_layers(&layers, "/etc/passwd").as_deref(),
            Some("upper")
        );
        assert_eq!(
            read_from_layers(&layers, "/etc/group").as_deref(),
            Some("g")
        );
        assert_eq!(read_from_layers(&layers, "/etc/shadow"), None);
    }

    #[test]
    fn a_symlink_in_the_image_is_never_followed_to_the_host() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "root:x:0:0:host:/root:/bin/sh\n").unwrap();
        let layer = d.path().join("layer");
        std::fs::create_dir_all(&layer).unwrap();
        std::os::unix::fs::symlink(&host, layer.join("etc")).unwrap();
        assert_eq!(
            read_from_layers(std::slice::from_ref(&layer), "/etc/passwd"),
            None
        );
        std::fs::remove_file(layer.join("etc")).unwrap();
        std::fs::create_dir(layer.join("etc")).unwrap();
        std::os::unix::fs::symlink(host.join("passwd"), layer.join("etc/passwd")).unwrap();
        assert_eq!(read_from_layers(&[layer], "/etc/passwd"), None);
    }
}
