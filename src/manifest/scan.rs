//! One scan of the manifests folder: which files are manifests, and their text.
//!
//! The folder is written by the manifest author, who is trusted, but what it holds is
//! still read defensively, because a mistake there must not stop or fool the agent,
//! and what is read is shown on an unauthenticated endpoint:
//! - a file is opened without blocking (`O_NONBLOCK`), and the *opened* descriptor must
//!   be a regular file: a name that became a FIFO between a `stat` and the `open` hung
//!   the watcher for good. FIFOs, sockets and devices with a manifest name are reported,
//!   never opened for reading (opening a device can have effects of its own);
//! - a read is bounded by [`MAX_FILE_BYTES`];
//! - symlinks are followed inside the folder (git-sync swaps a link to the checkout,
//!   Kubernetes ConfigMaps link `x.yaml -> ..data/x.yaml`), but a link whose target
//!   leaves the folder is an error unless [`ScanPolicy::external_links`] allows it:
//!   a link to `/etc/shadow` had its lines quoted back as unknown fields, and one to
//!   `/usr` made the agent parse thousands of files. The check is made on the opened
//!   descriptor (`/proc/self/fd`), so a link swapped after the check cannot pass;
//! - file names are keyed and shown escaped ([`escape_name`]), so two names that are
//!   not UTF-8 never collide.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::yaml::MAX_FILE_BYTES;

/// One manifest file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the root, `/`-separated, each name escaped by [`escape_name`].
    pub path: String,
    /// The text, or why it could not be read. A folder that cannot be listed is
    /// reported as an entry with its path and an error, so nothing it holds is
    /// taken as removed.
    pub text: Result<String, ReadError>,
}

/// Why a manifest (or a folder of them) could not be read. Carried as data in a
/// snapshot (a file that cannot be read keeps its last good objects), hence `Clone`
/// and `Eq`: an I/O error is kept as its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the manifests folder: {0}")]
    Root(String),
    #[error("cannot list folder: {0}")]
    Folder(String),
    #[error("{0}")]
    Io(String),
    #[error("cannot tell where the file is: {0}")]
    Locate(String),
    #[error(
        "is a symlink to {0}, outside the manifests folder; move the target into the folder, \
         or run the agent with --allow-external-symlinks (wharf validate and plan never follow such links)"
    )]
    Outside(String),
    #[error("is {0}, not a regular file; a manifest must be a regular file")]
    NotRegular(&'static str),
    #[error("file is larger than the {MAX_FILE_BYTES} bytes a manifest may have")]
    TooLarge,
    #[error("file is not valid UTF-8")]
    NotUtf8,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e.to_string())
    }
}

/// What a scan may follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanPolicy {
    /// Follow symlinks whose target is outside the folder (`--allow-external-symlinks`).
    pub external_links: bool,
}

/// Whether a file name is a manifest: `*.yaml`/`*.yml`, not hidden, not editor or
/// backup junk (vim's `4913` and `*.swp`, emacs' `#*#` and `*~`, `*.bak`, `*.tmp`).
pub(super) fn is_manifest_name(name: &str) -> bool {
    let junk = name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
        || [".swp", ".swx", ".bak", ".tmp"]
            .iter()
            .any(|ext| name.ends_with(ext));
    !junk && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// A file name as text that names it exactly: UTF-8 is kept, a backslash is doubled,
/// control characters become `\u{..}` and bytes that are not UTF-8 become `\xNN`.
/// Distinct names give distinct texts (`\xff.yaml` and `\xfe.yaml` were both shown as
/// `"�.yaml"`, and one's error removed the other's container), and nothing a name
/// holds can forge a terminal escape or a line in a log.
pub fn escape_name(name: &OsStr) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Lists the manifest files under `root`, recursively, sorted by path, with the
/// default policy (no link out of the folder). Hidden files and folders are skipped.
/// A missing root is an empty folder (it may be created later). Symbolic links inside
/// the folder are followed, each folder once, so a loop ends.
pub fn scan_dir(root: &Path) -> Vec<SourceFile> {
    scan_dir_with(root, ScanPolicy::default())
}

/// [`scan_dir`] under `policy`.
pub fn scan_dir_with(root: &Path, policy: ScanPolicy) -> Vec<SourceFile> {
    let mut out = Vec::new();
    match fs::canonicalize(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => out.push(SourceFile {
            path: ".".into(),
            text: Err(ReadError::Root(e.to_string())),
        }),
        Ok(real_root) => {
            let mut scan = Scan {
                real_root,
                policy,
                seen: HashSet::new(),
                out: &mut out,
            };
            scan.walk(root, "");
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

struct Scan<'a> {
    /// The folder with every link resolved: what "inside" means.
    real_root: PathBuf,
    policy: ScanPolicy,
    /// Folders already walked (device, inode), so a loop of links ends.
    seen: HashSet<(u64, u64)>,
    out: &'a mut Vec<SourceFile>,
}

impl Scan<'_> {
    fn error(&mut self, path: String, error: ReadError) {
        self.out.push(SourceFile {
            path,
            text: Err(error),
        });
    }

    fn inside(&self, real: &Path) -> bool {
        self.policy.external_links || real.starts_with(&self.real_root)
    }

    fn walk(&mut self, dir: &Path, prefix: &str) {
        let listed = fs::metadata(dir).and_then(|m| {
            self.seen.insert((m.dev(), m.ino()));
            fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                let path = if prefix.is_empty() { "." } else { prefix };
                self.error(path.into(), ReadError::Folder(e.to_string()));
                return;
            }
        };
        for entry in entries {
            let name = escape_name(&entry.file_name());
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            // Follow links: the target decides whether it is a file or a folder.
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // A dangling link or a file removed while listing: not part of the snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    if is_manifest_name(&name) {
                        self.error(rel, e.into());
                    }
                    continue;
                }
            };
            if is_link && (meta.is_dir() || is_manifest_name(&name)) {
                match fs::canonicalize(&path) {
                    Ok(real) if self.inside(&real) => {}
                    Ok(real) => {
                        self.error(rel, outside(&real));
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        self.error(rel, e.into());
                        continue;
                    }
                }
            }
            if meta.is_dir() {
                if !self.seen.contains(&(meta.dev(), meta.ino())) {
                    self.walk(&path, &rel);
                }
            } else if is_manifest_name(&name) {
                let text = if meta.is_file() {
                    self.read(&path)
                } else {
                    Err(not_regular(&meta.file_type()))
                };
                self.out.push(SourceFile { path: rel, text });
            }
        }
    }

    /// Reads a manifest as UTF-8 through a descriptor that must be a regular file
    /// inside the folder.
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        let file = open_nonblocking(path)?;
        if !self.policy.external_links {
            let real = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map_err(|e| ReadError::Locate(e.to_string()))?;
            if !self.inside(&real) {
                return Err(outside(&real));
            }
        }
        read_open(file)
    }
}

/// Opens `path` for reading without blocking: a FIFO opens at once (and is then
/// refused by [`read_open`]) instead of waiting for a writer forever.
fn open_nonblocking(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// The text of an opened manifest: a regular file, at most [`MAX_FILE_BYTES`], UTF-8.
fn read_open(file: fs::File) -> Result<String, ReadError> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    let limit = MAX_FILE_BYTES as u64;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// Reads the manifest at `path` (given explicitly, e.g. to `wharf validate`) under
/// the same rules as a scanned one, but wherever it is.
pub(crate) fn read_text(path: &Path) -> Result<String, ReadError> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    read_open(open_nonblocking(path)?)
}

fn not_regular(t: &fs::FileType) -> ReadError {
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    };
    ReadError::NotRegular(what)
}

fn outside(real: &Path) -> ReadError {
    ReadError::Outside(escape_name(real.as_os_str()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes `text` to `rel` under `root`, making folders on the way.
    pub(in crate::manifest) fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn paths(files: &[SourceFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
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
    fn scan_is_recursive_sorted_and_follows_links_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yml", "b");
        write(dir.path(), "a/z.yaml", "z");
        write(dir.path(), "a/b/c.yaml", "c");
        symlink(dir.path().join("a"), dir.path().join("a/loop")).unwrap();
        symlink(dir.path().join("b.yml"), dir.path().join("link.yaml")).unwrap();
        // A ConfigMap-style relative link through a hidden folder.
        write(dir.path(), "..data/cm.yaml", "cm");
        symlink("..data/cm.yaml", dir.path().join("cm.yaml")).unwrap();
        let files = scan_dir(dir.path());
        assert_eq!(
            paths(&files),
            ["a/b/c.yaml", "a/z.yaml", "b.yml", "cm.yaml", "link.yaml"]
        );
        assert_eq!(files[3].text, Ok("cm".into()));
        assert_eq!(files[4].text, Ok("b".into()));
    }

    #[test]
    fn a_root_that_is_a_link_works_as_git_sync_swaps_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "worktrees/abc/web.yaml", "w");
        symlink("worktrees/abc", dir.path().join("current")).unwrap();
        let files = scan_dir(&dir.path().join("current"));
        assert_eq!(paths(&files), ["web.yaml"]);
        assert_eq!(files[0].text, Ok("w".into()));
    }

    #[test]
    fn a_link_out_of_the_folder_is_an_error_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(
            outside.path(),
            "secret.yaml",
            "root:$6$hash:19000:0:99999:7:::",
        );
        write(outside.path(), "tree/x.yaml", "x");
        let root = dir.path().join("m");
        fs::create_dir(&root).unwrap();
        symlink(outside.path().join("secret.yaml"), root.join("shadow.yaml")).unwrap();
        symlink(outside.path().join("tree"), root.join("usr")).unwrap();
        let files = scan_dir(&root);
        assert_eq!(paths(&files), ["shadow.yaml", "usr"]);
        for f in &files {
            let err = f.text.as_ref().unwrap_err().to_string();
            assert!(err.contains("outside the manifests folder"), "{err}");
            assert!(!err.contains("hash"), "{err}");
        }
        let allowed = scan_dir_with(
            &root,
            ScanPolicy {
                external_links: true,
            },
        );
        assert_eq!(paths(&allowed), ["shadow.yaml", "usr/x.yaml"]);
    }

    #[test]
    fn fifos_and_sockets_are_reported_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("pipe.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock.yaml")).unwrap();
        let files = scan_dir(dir.path());
        assert_eq!(paths(&files), ["pipe.yaml", "sock.yaml"]);
        assert_eq!(files[0].text, Err(ReadError::NotRegular("a FIFO")));
        assert_eq!(files[1].text, Err(ReadError::NotRegular("a socket")));
        // The race the stat cannot see: the opened descriptor is checked too.
        let file = open_nonblocking(&dir.path().join("pipe.yaml")).unwrap();
        assert_eq!(read_open(file), Err(ReadError::NotRegular("a FIFO")));
    }

    #[test]
    fn names_that_are_not_utf8_stay_distinct_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            &b"\xff.yaml"[..],
            b"\xfe.yaml",
            b"a\\xff.yaml",
            b"\x1b[31m.yaml",
        ] {
            fs::write(dir.path().join(OsStr::from_bytes(name)), "x").unwrap();
        }
        let files = scan_dir(dir.path());
        assert_eq!(
            paths(&files),
            [
                "\\u{1b}[31m.yaml",
                "\\xfe.yaml",
                "\\xff.yaml",
                "a\\\\xff.yaml"
            ]
        );
    }

    #[test]
    fn missing_root_is_an_empty_snapshot_and_bad_utf8_or_size_are_read_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan_dir(&dir.path().join("nope")).is_empty());
        fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe]).unwrap();
        fs::write(dir.path().join("big.yaml"), vec![b'#'; MAX_FILE_BYTES + 1]).unwrap();
        let files = scan_dir(dir.path());
        assert_eq!(files[0].text, Err(ReadError::TooLarge));
        assert_eq!(files[1].text, Err(ReadError::NotUtf8));
    }
}
