//! Reading a file of the image before the container exists (e.g. `/etc/passwd` to
//! resolve a user name), looking through the layers top first as overlayfs would.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// The content of `path` (absolute in the image) as the merged rootfs would show it, or
/// `None` when absent or hidden by a whiteout. Symlinks are not followed.
pub fn read_from_layers(layers: &[PathBuf], path: &str) -> Option<String> {
    let rel = Path::new(path.trim_start_matches('/'));
    for layer in layers.iter().rev() {
        let p = layer.join(rel);
        match p.symlink_metadata() {
            Ok(m) if m.file_type().is_char_device() => return None, // whiteout
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            Ok(_) => return None,
            Err(_) => {
                // A whiteout of a parent directory, or an opaque parent, also hides it;
                // images with those around /etc/passwd are rare enough to treat as absent.
                if rel
                    .ancestors()
                    .skip(1)
                    .any(|a| !a.as_os_str().is_empty() && is_whiteout(&layer.join(a)))
                {
                    return None;
                }
            }
        }
    }
    None
}

fn is_whiteout(p: &Path) -> bool {
    p.symlink_metadata()
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
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
}
