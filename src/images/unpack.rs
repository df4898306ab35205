//! Unpacking a layer tar into a directory that overlayfs can use as a lowerdir.
//!
//! Follows the OCI image spec's `layer.md` and containerd's `applyNaive`
//! (pkg/archive/tar.go), with two deliberate differences:
//!
//! - a path whose parent is a symlink is an error, not resolved inside the root: every
//!   layer is unpacked on its own into an empty directory, so a symlinked parent can only
//!   come from this same layer, and following it is exactly what tar-slip attacks need;
//! - a `..` that would climb above the layer root is an error rather than clamped.
//!
//! Whiteouts become what overlayfs understands natively (Documentation/filesystems/
//! overlayfs.rst): `.wh.NAME` a 0:0 character device `NAME`, `.wh..wh..opq` the xattr
//! `trusted.overlay.opaque=y` on its directory. Both need root (CAP_MKNOD, CAP_SYS_ADMIN).
//!
//! Safety of the walk rests on two facts: the target is a fresh directory no other
//! process writes to (the store unpacks inside its mode-0700 `tmp/`), and parents are
//! checked component by component with `symlink_metadata` before any entry is created,
//! files are opened with `O_NOFOLLOW | O_EXCL`, and metadata calls use the no-follow
//! variants.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};

use super::tar_guard::TarGuard;
use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// aufs' own bookkeeping names (`.wh..wh.plnk`, `.wh..wh.aufs`); layer.md says to ignore them.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs reads its own state from these xattrs (redirects, metacopy, opaque): a
/// layer must not smuggle them in, only our whiteout conversion sets them.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:` of the uncompressed tar stream: the layer's diff id.
    pub diff_id: String,
    /// Entries applied (whiteouts included).
    pub entries: u64,
}

/// The default cap on what one layer unpacks to: the sum of its files' sizes (holes of
/// sparse files included). Far above real layers; low enough that a hostile layer of a
/// few KiB cannot claim a whole disk.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;

/// [`unpack_layer_with`] under [`DEFAULT_MAX_LAYER_BYTES`].
pub fn unpack_layer(reader: impl Read, target: &Path) -> Result<UnpackStats, ImageError> {
    unpack_layer_with(reader, target, DEFAULT_MAX_LAYER_BYTES)
}

/// Unpacks a layer stream (gzip, zstd or plain tar; detected by magic bytes, because
/// media types lie in the wild) into `target`, an existing empty directory. The files
/// may add up to `max_bytes` (checked from each header, before the file is written);
/// zeros are written as holes, so neither a GNU sparse entry declaring 10 GiB nor a
/// gzip bomb of zeros fills the disk.
///
/// A stream that ends cleanly at an entry boundary without the two zero blocks is
/// accepted (umoci 0.4.7 writes those). On error, `target` is left partly filled: the
/// caller unpacks into a temp directory and removes it.
pub fn unpack_layer_with(
    reader: impl Read,
    target: &Path,
    max_bytes: u64,
) -> Result<UnpackStats, ImageError> {
    let layer_err = |source| ImageError::UnpackLayer {
        path: target.to_path_buf(),
        source,
    };
    let mut buffered = BufReader::with_capacity(128 * 1024, reader);
    let magic = peek(&mut buffered, 4).map_err(layer_err)?;
    let decompressed: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::Decoder::with_buffer(buffered).map_err(layer_err)?)
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };

    let mut unpacker = Unpacker {
        root: target.to_path_buf(),
        dir_times: Vec::new(),
        known_dirs: HashSet::new(),
        root_seen: false,
        can_chown: nix::unistd::geteuid().is_root(),
        file_bytes: 0,
        max_bytes,
    };
    let mut entries = 0u64;
    {
        let mut padded = PadToBlock {
            inner: &mut hashing,
            offset: 0,
        };
        // Under the crate: a long name or PAX header of gigabytes fails at its header,
        // before the crate reads it into memory (see `tar_guard`).
        let mut guarded = TarGuard::new(&mut padded);
        let mut archive = tar::Archive::new(&mut guarded);
        for entry in archive.entries().map_err(layer_err)? {
            let entry = entry.map_err(layer_err)?;
            unpacker.apply(entry)?;
            entries += 1;
        }
    }
    // The diff id covers the whole uncompressed stream, end blocks and padding included.
    io::copy(&mut hashing, &mut io::sink()).map_err(layer_err)?;
    unpacker.finish()?;
    Ok(UnpackStats {
        diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
        entries,
    })
}

/// Copies `from` into the new file `to`, leaving a hole wherever a whole block is
/// zero (what `cp --sparse=always` does): a gzip bomb of zeros then takes no disk
/// space. Reading a file back gives the same bytes either way.
fn copy_with_holes(from: &mut impl Read, to: &mut fs::File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    let mut pending_hole = false;
    loop {
        // Fill a whole block (the reader may return less), so a hole is block-aligned.
        let mut filled = 0;
        while filled < BLOCK {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let block = &buf[..filled];
        if is_zero(block) {
            to.seek(SeekFrom::Current(filled as i64))?;
            pending_hole = true;
        } else {
            to.write_all(block)?;
            pending_hole = false;
        }
        len += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    if pending_hole {
        // A file that ends in a hole gets its length from set_len, not from a write.
        to.set_len(len)?;
    }
    Ok(len)
}

/// Whether every byte is zero, 16 at a time (the compiler vectorises it).
fn is_zero(block: &[u8]) -> bool {
    let (chunks, rest) = block.split_at(block.len() - block.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Returns up to `n` leading bytes without consuming them.
fn peek<R: Read>(r: &mut BufReader<R>, n: usize) -> io::Result<Vec<u8>> {
    // One fill_buf may return fewer bytes than asked for only at end of stream or for
    // short reads from pipes; a layer with fewer than 4 bytes is not compressed anyway.
    let buf = r.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Completes a stream that ends inside the padding of its last entry with zero bytes up
/// to the 512-byte block boundary. `umoci insert` closes its layer without padding the
/// last file's data (nor writing end-of-archive blocks); the `tar` crate then fails with
/// "unexpected EOF during skip" although every byte of content is there. The zeros are
/// added after hashing, so the diff id still covers exactly the bytes of the blob.
struct PadToBlock<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Read for PadToBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.offset += n as u64;
            return Ok(n);
        }
        let missing = ((512 - self.offset % 512) % 512) as usize;
        let n = missing.min(buf.len());
        buf[..n].fill(0);
        self.offset += n as u64;
        Ok(n)
    }
}

struct Unpacker {
    root: PathBuf,
    /// Directory mtimes, applied after every entry: creating a child changes its
    /// parent's mtime.
    dir_times: Vec<(PathBuf, u64)>,
    /// Directories under the root already checked (or made) by this unpack: real
    /// directories, not symlinks. Only this unpack writes here, and it forgets them all
    /// whenever it removes anything, so a parent is checked with `lstat` once instead
    /// of once per entry below it (two or three path walks saved per file).
    known_dirs: HashSet<PathBuf>,
    /// Whether a `./` entry gave the layer root its metadata; else it gets 0755.
    root_seen: bool,
    /// Unprivileged unpacking (tests, rootless) cannot chown; root must.
    can_chown: bool,
    /// The sizes of the files so far, as their headers declare them.
    file_bytes: u64,
    /// The cap on `file_bytes`.
    max_bytes: u64,
}

impl Unpacker {
    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let root = self.root.clone();
        let fail = |reason: String| ImageError::UnpackEntry {
            path: root.clone(),
            entry: name.clone(),
            reason,
        };
        let kind = entry.header().entry_type();
        // Global pax headers carry defaults for later entries, nothing to create.
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let path = entry.path().map_err(|e| fail(e.to_string()))?.into_owned();
        let comps = confine(&path).map_err(&fail)?;

        let header = entry.header();
        let mode = header.mode().map_err(|e| fail(e.to_string()))? & 0o7777;
        let mtime = header.mtime().map_err(|e| fail(e.to_string()))?;
        let (mut uid, mut gid) = (
            header.uid().map_err(|e| fail(e.to_string()))?,
            header.gid().map_err(|e| fail(e.to_string()))?,
        );
        // Device numbers only mean something for device entries; other writers leave
        // the fields blank, which does not parse as a number.
        let device = if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let num = |r: io::Result<Option<u32>>| {
                r.map(Option::unwrap_or_default)
                    .map_err(|e| fail(e.to_string()))
            };
            makedev(
                num(header.device_major())?.into(),
                num(header.device_minor())?.into(),
            )
        } else {
            0
        };
        let mut xattrs = Vec::new();
        // PAX records override the header's numeric ids (ids past 2^21 do not fit it).
        if let Some(pax) = entry.pax_extensions().map_err(|e| fail(e.to_string()))? {
            for ext in pax {
                let ext = ext.map_err(|e| fail(e.to_string()))?;
                let key = ext.key().map_err(|e| fail(e.to_string()))?;
                match key {
                    "uid" => uid = parse_pax_id(ext.value_bytes()).map_err(&fail)?,
                    "gid" => gid = parse_pax_id(ext.value_bytes()).map_err(&fail)?,
                    k => {
                        if let Some(x) = k.strip_prefix(PAX_XATTR_PREFIX) {
                            xattrs.push((x.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }

        let Some((last, parents)) = comps.split_last() else {
            // `./` or `/`: the layer root itself, which exists; only its metadata applies.
            if !kind.is_dir() {
                return Err(fail("a non-directory entry names the layer root".into()));
            }
            self.root_seen = true;
            return self
                .set_metadata(&root, kind, mode, uid, gid, mtime, &xattrs)
                .map_err(&fail);
        };
        let parent = self.ensure_parents(parents, true).map_err(&fail)?;

        let last_str = last.to_string_lossy();
        if let Some(hidden) = last_str.strip_prefix(WHITEOUT_PREFIX) {
            if last_str == OPAQUE_WHITEOUT {
                return xattr::set(&parent, OPAQUE_XATTR, b"y")
                    .map_err(|e| fail(format!("set {OPAQUE_XATTR} on {}: {e}", parent.display())));
            }
            if last_str.starts_with(WHITEOUT_META_PREFIX) {
                return Ok(());
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(fail("whiteout of an invalid name".into()));
            }
            return self.whiteout(&parent.join(hidden)).map_err(&fail);
        }

        let target = parent.join(last);

        // A later entry replaces an earlier one of the same name, except that a
        // directory over a directory merges (GNU tar and containerd agree).
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && kind.is_dir()) {
                let removed = if m.is_dir() {
                    fs::remove_dir_all(&target)
                } else {
                    fs::remove_file(&target)
                };
                self.known_dirs.clear();
                removed.map_err(|e| fail(format!("replace existing entry: {e}")))?;
            }
        }

        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                // The size a file will have is in its header: the cap is checked before
                // a byte is written. (For a GNU sparse entry, the real size.)
                let size = match entry.header().as_gnu().filter(|_| kind == T::GNUSparse) {
                    Some(gnu) => gnu.real_size().map_err(|e| fail(e.to_string()))?,
                    None => entry.size(),
                };
                self.file_bytes = self.file_bytes.saturating_add(size);
                if self.file_bytes > self.max_bytes {
                    return Err(ImageError::LayerTooLarge {
                        path: root.clone(),
                        limit: self.max_bytes,
                    });
                }
                if kind == T::GNUSparse {
                    // The tar crate seeks over the sparse map's holes itself, without
                    // reading gigabytes of zeros. Its open is O_CREAT | O_EXCL, which
                    // follows no link, under parents checked above.
                    entry
                        .unpack(&target)
                        .map_err(|e| fail(format!("write sparse file: {e}")))?;
                } else {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(&target)
                        .map_err(|e| fail(format!("create file: {e}")))?;
                    copy_with_holes(&mut entry, &mut f)
                        .map_err(|e| fail(format!("write file: {e}")))?;
                }
            }
            T::Directory => {
                if existing.is_none() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(|e| fail(format!("create directory: {e}")))?;
                }
                self.known_dirs.insert(target.clone());
            }
            T::Symlink => {
                // The link text is stored as is: it is resolved by the kernel inside the
                // container's root at run time, never by us.
                let link = entry
                    .link_name()
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| fail("symlink without a target".into()))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| fail(format!("create symlink: {e}")))?;
            }
            T::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| fail("hard link without a target".into()))?;
                let source = self.hardlink_source(&link).map_err(&fail)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&source, &target)
                    .map_err(|e| fail(format!("create hard link: {e}")))?;
                // A hard link shares the inode; its header's metadata is not applied.
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                let sflag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                mknod(&target, sflag, Mode::empty(), device)
                    .map_err(|e| fail(format!("mknod: {e}")))?;
            }
            other => return Err(fail(format!("unsupported entry type {other:?}"))),
        }

        self.set_metadata(&target, kind, mode, uid, gid, mtime, &xattrs)
            .map_err(&fail)
    }

    /// Applies ownership, mode, xattrs and (except for directories) times.
    #[allow(clippy::too_many_arguments)]
    fn set_metadata(
        &mut self,
        target: &Path,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        // Order matters: chown clears setuid/setgid, so chown first, then chmod.
        if self.can_chown {
            let id = |v: u64| u32::try_from(v).map_err(|_| format!("id {v} out of range"));
            std::os::unix::fs::lchown(target, Some(id(uid)?), Some(id(gid)?))
                .map_err(|e| format!("lchown {uid}:{gid}: {e}"))?;
        }
        let is_symlink = kind == tar::EntryType::Symlink;
        if !is_symlink {
            // The target is not a symlink (created just now, no one else writes here), so
            // chmod, which follows symlinks, acts on the entry itself.
            fs::set_permissions(target, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {mode:o}: {e}"))?;
        }
        for (name, value) in xattrs {
            if name.starts_with(OVERLAY_XATTR_PREFIX) {
                tracing::warn!(entry = %target.display(), xattr = %name, "ignoring overlay xattr from layer");
                continue;
            }
            match xattr::set(target, name, value) {
                Ok(()) => {}
                // Some filesystems lack some namespaces (user.* on symlinks, trusted.* on
                // some); the file is still usable, as with containerd's lenient default.
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                    tracing::warn!(entry = %target.display(), xattr = %name, "xattr not supported here")
                }
                Err(e) => return Err(format!("set xattr {name}: {e}")),
            }
        }
        if kind.is_dir() {
            self.dir_times.push((target.to_path_buf(), mtime));
            Ok(())
        } else {
            set_mtime(target, mtime)
        }
    }

    /// Makes a 0:0 character device at `path`, overlayfs' whiteout. If this layer already
    /// put something there, it is kept: a whiteout hides only lower layers (layer.md).
    fn whiteout(&self, path: &Path) -> Result<(), String> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| format!("mknod whiteout {}: {e}", path.display()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Walks `parents` from the root, creating missing directories (0755, as GNU tar
    /// does for implied parents) if `create`, refusing symlinks and non-directories.
    fn ensure_parents(&mut self, parents: &[OsString], create: bool) -> Result<PathBuf, String> {
        let mut dir = self.root.clone();
        for c in parents {
            dir.push(c);
            if self.known_dirs.contains(&dir) {
                continue;
            }
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "parent {} is a symlink; refusing to follow it",
                        rel(&self.root, &dir)
                    ))
                }
                Ok(_) => {
                    return Err(format!(
                        "parent {} is not a directory",
                        rel(&self.root, &dir)
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&dir)
                        .map_err(|e| format!("create parent {}: {e}", rel(&self.root, &dir)))?;
                }
                Err(e) => return Err(format!("parent {}: {e}", rel(&self.root, &dir))),
            }
            self.known_dirs.insert(dir.clone());
        }
        Ok(dir)
    }

    /// Resolves a hard link's target inside the layer: confined, through real
    /// directories only, existing, and not a directory.
    fn hardlink_source(&mut self, link: &Path) -> Result<PathBuf, String> {
        let comps = confine(link).map_err(|e| format!("hard link target: {e}"))?;
        let Some((last, parents)) = comps.split_last() else {
            return Err("hard link to the layer root".into());
        };
        let source = self
            .ensure_parents(parents, false)
            .map_err(|e| format!("hard link target: {e}"))?
            .join(last);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Err(format!(
                "hard link target {} is a directory",
                link.display()
            )),
            Ok(_) => Ok(source),
            Err(e) => Err(format!("hard link target {}: {e}", link.display())),
        }
    }

    /// Sets directory times deepest first (creating nothing more, so order is only
    /// cosmetic), then gives a root without a `./` entry the usual 0755.
    fn finish(&mut self) -> Result<(), ImageError> {
        for (dir, mtime) in self.dir_times.iter().rev() {
            set_mtime(dir, *mtime).map_err(|reason| ImageError::UnpackEntry {
                path: self.root.clone(),
                entry: rel(&self.root, dir),
                reason,
            })?;
        }
        if self.root_seen {
            return Ok(());
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755)).map_err(|source| {
            ImageError::UnpackLayer {
                path: self.root.clone(),
                source,
            }
        })
    }
}

/// Turns an archive path into components inside the layer: a leading `/` is dropped
/// (layer paths are relative to the root, as Docker treats them), `.` is skipped, and
/// `..` pops a component but may never climb above the root.
fn confine(path: &Path) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(format!("path {} escapes the layer root", path.display()));
                }
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Ok(out)
}

fn parse_pax_id(v: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("bad pax id {:?}", String::from_utf8_lossy(v)))
}

fn set_mtime(path: &Path, mtime: u64) -> Result<(), String> {
    let secs = i64::try_from(mtime).map_err(|_| format!("mtime {mtime} out of range"))?;
    let t = TimeSpec::new(secs, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("set mtime: {e}"))
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
