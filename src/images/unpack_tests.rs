//! Unpack tests: tars are built byte by byte where `tar::Builder` would refuse the
//! malicious names we need (absolute paths, `..`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::EntryType;

use super::*;

/// A layer archive under construction.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    /// Appends an entry with `name` written verbatim into the header.
    fn entry(
        self,
        kind: EntryType,
        name: &str,
        link: Option<&str>,
        mode: u32,
        data: &[u8],
    ) -> Self {
        self.entry_with(kind, name, link, mode, data, |_| {})
    }

    fn entry_with(
        mut self,
        kind: EntryType,
        name: &str,
        link: Option<&str>,
        mode: u32,
        data: &[u8],
        edit: impl FnOnce(&mut tar::Header),
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000_000);
        edit(&mut h);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(self, name: &str) -> Self {
        self.entry(EntryType::Directory, name, None, 0o755, b"")
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(EntryType::Regular, name, None, 0o644, data)
    }
    fn symlink(self, name: &str, to: &str) -> Self {
        self.entry(EntryType::Symlink, name, Some(to), 0o777, b"")
    }
    fn hardlink(self, name: &str, to: &str) -> Self {
        self.entry(EntryType::Link, name, Some(to), 0o644, b"")
    }
    /// A pax extended header applying to the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            // Each record is "LEN KEY=VALUE\n", LEN counting its own digits.
            let body = k.len() + v.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry(EntryType::XHeader, "PaxHeader", None, 0o644, &data)
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A test sandbox: `base/layer` is the unpack target, `base/outside` a directory that
/// must stay empty whatever the layer does.
struct Sandbox {
    _dir: tempfile::TempDir,
    base: std::path::PathBuf,
    layer: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let layer = base.join("layer");
    let outside = base.join("outside");
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    Sandbox {
        _dir: dir,
        base,
        layer,
        outside,
    }
}

impl Sandbox {
    fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, ImageError> {
        unpack_layer(tar, &self.layer)
    }
    fn assert_nothing_outside(&self) {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&self.base),
            ["layer", "outside"],
            "something landed next to the layer"
        );
        assert!(
            names(&self.outside).is_empty(),
            "something landed in outside/"
        );
    }
}

/// Whiteouts and ownership need root; skip elsewhere unless CI demands privileges.
fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("WHARF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root"
    );
    eprintln!("skipping {test}: needs root (mknod, trusted xattrs, chown)");
    false
}

fn assert_entry_error(r: Result<UnpackStats, ImageError>, entry: &str) {
    match r {
        Err(ImageError::UnpackEntry { entry: e, .. }) => assert_eq!(e, entry),
        other => panic!("expected an error naming {entry:?}, got {other:?}"),
    }
}

#[test]
fn whiteout_becomes_an_overlay_character_device() {
    if !privileged("whiteout_becomes_an_overlay_character_device") {
        return;
    }
    let s = sandbox();
    s.unpack(
        &Layer::new()
            .dir("etc/")
            .file("etc/.wh.passwd", b"")
            .file(".wh.tmp", b"")
            .bytes(),
    )
    .unwrap();
    for p in ["etc/passwd", "tmp"] {
        let m = fs::symlink_metadata(s.layer.join(p)).unwrap();
        assert!(m.file_type().is_char_device(), "{p} is not a char device");
        assert_eq!(m.rdev(), 0, "{p} is not 0:0");
    }
    assert!(!s.layer.join("etc/.wh.passwd").exists());
}

#[test]
fn opaque_marker_sets_the_overlay_opaque_xattr_on_its_directory() {
    if !privileged("opaque_marker_sets_the_overlay_opaque_xattr_on_its_directory") {
        return;
    }
    let s = sandbox();
    s.unpack(
        &Layer::new()
            .dir("var/")
            .dir("var/lib/")
            .file("var/lib/.wh..wh..opq", b"")
            .file("var/lib/new", b"x")
            .bytes(),
    )
    .unwrap();
    let lib = s.layer.join("var/lib");
    assert_eq!(
        xattr::get(&lib, OPAQUE_XATTR).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert!(!lib.join(".wh..wh..opq").exists());
    assert!(lib.join("new").is_file());
    assert_eq!(xattr::get(s.layer.join("var"), OPAQUE_XATTR).unwrap(), None);
}

#[test]
fn overlay_xattrs_smuggled_in_a_layer_are_ignored() {
    if !privileged("overlay_xattrs_smuggled_in_a_layer_are_ignored") {
        return;
    }
    let s = sandbox();
    let tar = Layer::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.note", b"kept"),
        ])
        .file("f", b"x")
        .bytes();
    s.unpack(&tar).unwrap();
    let f = s.layer.join("f");
    assert_eq!(xattr::get(&f, "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(
        xattr::get(&f, "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

#[test]
fn hard_link_inside_the_layer_shares_the_inode() {
    let s = sandbox();
    s.unpack(
        &Layer::new()
            .file("bin/busybox", b"elf")
            .hardlink("bin/sh", "bin/busybox")
            .hardlink("sh2", "/bin/busybox")
            .bytes(),
    )
    .unwrap();
    let a = fs::metadata(s.layer.join("bin/busybox")).unwrap();
    let b = fs::metadata(s.layer.join("bin/sh")).unwrap();
    let c = fs::metadata(s.layer.join("sh2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 3);
}

#[test]
fn absolute_path_is_confined_to_the_layer() {
    let s = sandbox();
    s.unpack(&Layer::new().file("/abs/file", b"x").bytes())
        .unwrap();
    assert_eq!(fs::read(s.layer.join("abs/file")).unwrap(), b"x");
    s.assert_nothing_outside();
}

#[test]
fn dot_dot_that_escapes_the_layer_fails_and_writes_nothing_outside() {
    let s = sandbox();
    assert_entry_error(
        s.unpack(&Layer::new().file("../x", b"evil").bytes()),
        "../x",
    );
    assert_entry_error(
        s.unpack(&Layer::new().file("a/../../outside/x", b"evil").bytes()),
        "a/../../outside/x",
    );
    s.assert_nothing_outside();
}

#[test]
fn dot_dot_that_stays_inside_the_layer_is_accepted() {
    let s = sandbox();
    s.unpack(&Layer::new().file("a/../b", b"ok").bytes())
        .unwrap();
    assert_eq!(fs::read(s.layer.join("b")).unwrap(), b"ok");
}

#[test]
fn file_written_through_a_symlink_fails_and_writes_nothing_outside() {
    let s = sandbox();
    let tar = Layer::new()
        .symlink("a", s.outside.to_str().unwrap())
        .file("a/passwd", b"evil")
        .bytes();
    assert_entry_error(s.unpack(&tar), "a/passwd");
    s.assert_nothing_outside();
}

#[test]
fn directory_symlink_escape_fails_and_writes_nothing_outside() {
    let s = sandbox();
    let tar = Layer::new()
        .dir("d/")
        .symlink("d/up", "../..")
        .file("d/up/outside/x", b"evil")
        .bytes();
    assert_entry_error(s.unpack(&tar), "d/up/outside/x");
    let tar = Layer::new()
        .symlink("up", "..")
        .dir("up/outside/sub/")
        .bytes();
    assert_entry_error(s.unpack(&tar), "up/outside/sub/");
    s.assert_nothing_outside();
}

#[test]
fn hard_link_to_outside_fails() {
    let s = sandbox();
    fs::write(s.base.join("secret"), b"s").unwrap();
    assert_entry_error(
        s.unpack(&Layer::new().hardlink("x", "../secret").bytes()),
        "x",
    );
    let tar = Layer::new()
        .symlink("up", "..")
        .hardlink("y", "up/secret")
        .bytes();
    assert_entry_error(s.unpack(&tar), "y");
    assert_eq!(fs::metadata(s.base.join("secret")).unwrap().nlink(), 1);
    fs::remove_file(s.base.join("secret")).unwrap();
    s.assert_nothing_outside();
}

#[test]
fn later_file_replaces_a_symlink_without_following_it() {
    let s = sandbox();
    let victim = s.outside.join("victim");
    let tar = Layer::new()
        .symlink("s", victim.to_str().unwrap())
        .file("s", b"inside")
        .bytes();
    s.unpack(&tar).unwrap();
    assert!(fs::symlink_metadata(s.layer.join("s")).unwrap().is_file());
    assert_eq!(fs::read(s.layer.join("s")).unwrap(), b"inside");
    s.assert_nothing_outside();
}

#[test]
fn stream_without_end_of_archive_blocks_is_accepted() {
    let s = sandbox();
    let mut tar = Layer::new()
        .file("bin/busybox", b"elf")
        .symlink("bin/sh", "busybox")
        .bytes();
    // tar::Builder ends with two 512-byte zero blocks; umoci 0.4.7 does not write them.
    assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
    tar.truncate(tar.len() - 1024);
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.diff_id, crate::images::content::sha256_digest(&tar));
    assert_eq!(
        fs::read_link(s.layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
}

#[test]
fn stream_ending_inside_the_last_entrys_padding_is_accepted() {
    // `umoci insert` closes its layer right after the last file's data: no padding to
    // the 512-byte block, no end-of-archive blocks.
    let s = sandbox();
    let mut tar = Layer::new()
        .file("opt/a", b"first")
        .file("opt/b", b"hello")
        .bytes();
    tar.truncate(tar.len() - 1024 - (512 - 5));
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.diff_id, crate::images::content::sha256_digest(&tar));
    assert_eq!(fs::read(s.layer.join("opt/b")).unwrap(), b"hello");
}

#[test]
fn stream_truncated_inside_an_entry_fails() {
    let s = sandbox();
    let tar = Layer::new().file("big", &[7u8; 4096]).bytes();
    assert!(s.unpack(&tar[..512 + 1000]).is_err());
}

#[test]
fn gzip_and_zstd_layers_are_detected_by_magic_and_hash_to_the_plain_diff_id() {
    let plain = Layer::new().file("hello", b"world").bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 1).unwrap();
    let want = crate::images::content::sha256_digest(&plain);
    for (what, bytes) in [("plain", &plain), ("gzip", &gz), ("zstd", &zst)] {
        let s = sandbox();
        let stats = s.unpack(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stats.diff_id, want, "{what}");
        assert_eq!(fs::read(s.layer.join("hello")).unwrap(), b"world", "{what}");
    }
}

#[test]
fn modes_setuid_owners_devices_and_directory_times_are_applied() {
    if !privileged("modes_setuid_owners_devices_and_directory_times_are_applied") {
        return;
    }
    let s = sandbox();
    let tar = Layer::new()
        .entry(EntryType::Directory, "./", None, 0o751, b"")
        .entry(EntryType::Directory, "usr/", None, 0o700, b"")
        .entry(EntryType::Regular, "usr/su", None, 0o4755, b"x")
        .pax(&[("uid", b"3000000"), ("gid", b"42")])
        .file("usr/owned", b"y")
        .entry(EntryType::Fifo, "usr/fifo", None, 0o600, b"")
        .entry_with(EntryType::Char, "usr/null", None, 0o666, b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .bytes();
    s.unpack(&tar).unwrap();
    let m = |p: &str| fs::symlink_metadata(s.layer.join(p)).unwrap();
    assert_eq!(m("").mode() & 0o7777, 0o751);
    assert_eq!(m("").mtime(), 1_000_000_000);
    assert_eq!(m("usr").mode() & 0o7777, 0o700);
    assert_eq!(m("usr/su").mode() & 0o7777, 0o4755);
    assert_eq!(
        (m("usr/owned").uid(), m("usr/owned").gid()),
        (3_000_000, 42)
    );
    assert!(m("usr/fifo").file_type().is_fifo());
    assert!(m("usr/null").file_type().is_char_device());
    assert_eq!(m("usr/null").rdev(), nix::sys::stat::makedev(1, 3));
    // Children were created after usr/, yet its mtime is the archive's.
    assert_eq!(m("usr").mtime(), 1_000_000_000);
    assert_eq!(m("usr/su").mtime(), 1_000_000_000);
}

/// An old-GNU sparse entry: `real_size` bytes of which only the last `data.len()` are
/// stored (one sparse map entry).
fn sparse(layer: Layer, name: &str, real_size: u64, data: &[u8]) -> Layer {
    layer.entry_with(EntryType::GNUSparse, name, None, 0o644, data, |h| {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - data.len() as u64);
        gnu.sparse[0].set_length(data.len() as u64);
    })
}

#[test]
fn a_sparse_entry_declaring_10_gib_is_written_as_a_hole() {
    let s = sandbox();
    let tar = sparse(Layer::new(), "big", 10 << 30, &[b'x'; 512]).bytes();
    assert!(tar.len() < 16 * 1024);
    s.unpack(&tar).unwrap();
    let meta = fs::metadata(s.layer.join("big")).unwrap();
    assert_eq!(meta.len(), 10 << 30);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    use std::io::{Read as _, Seek as _};
    let mut f = fs::File::open(s.layer.join("big")).unwrap();
    f.seek(std::io::SeekFrom::End(-513)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail[0], 0);
    assert_eq!(&tail[1..], &[b'x'; 512][..]);
}

#[test]
fn zeros_take_no_disk_space_and_read_back_the_same() {
    let s = sandbox();
    let mut content = vec![0u8; 8 << 20];
    content[(4 << 20) + 7] = 1;
    let tar = Layer::new().file("zeros", &content).bytes();
    // Compressed as a registry would send it: a few KiB of gzip for 8 MiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    s.unpack(&gz.finish().unwrap()).unwrap();
    let meta = fs::metadata(s.layer.join("zeros")).unwrap();
    assert_eq!(meta.len(), 8 << 20);
    assert!(
        meta.blocks() * 512 <= 256 * 1024,
        "{} blocks",
        meta.blocks()
    );
    assert_eq!(fs::read(s.layer.join("zeros")).unwrap(), content);
    // Trailing zeros too: the length comes from set_len.
    let s = sandbox();
    let mut content = vec![0u8; 200_000];
    content[0] = 9;
    s.unpack(&Layer::new().file("tail", &content).bytes())
        .unwrap();
    assert_eq!(fs::read(s.layer.join("tail")).unwrap(), content);
}

#[test]
fn a_layer_over_its_cap_fails_before_writing_the_file() {
    let s = sandbox();
    let tar = Layer::new()
        .file("a", &[1u8; 3000])
        .file("b", &[2u8; 3000])
        .bytes();
    let err = unpack_layer_with(&tar[..], &s.layer, 5000).unwrap_err();
    assert!(
        matches!(err, ImageError::LayerTooLarge { limit: 5000, .. }),
        "{err}"
    );
    assert!(!s.layer.join("b").exists());
    let sparse_tar = sparse(Layer::new(), "big", 10 << 30, &[b'x'; 512]).bytes();
    let s = sandbox();
    let err = unpack_layer_with(&sparse_tar[..], &s.layer, 1 << 30).unwrap_err();
    assert!(matches!(err, ImageError::LayerTooLarge { .. }), "{err}");
    assert!(!s.layer.join("big").exists());
    s.assert_nothing_outside();
}
