//! Pulls of the harder fixture images from the real registry (scripts/test-registry.sh),
//! each checked against an independent tool rather than against wharf's own idea of
//! right:
//!
//! - `test/layers`: five layers with a hard link, symlinks, setuid/setgid, ownership, an
//!   xattr, a device node, a fifo, whiteouts of a file and of a directory and an opaque
//!   directory. wharf's unpacked layers, merged read-only by overlayfs as a container
//!   would see them, must equal the tree `umoci unpack` makes of the same image.
//! - `test/multi`: an OCI index listing arm64 first, then amd64 (= `test/busybox`).
//! - `test/zstd`: `test/busybox` recompressed by skopeo with zstd.
//!
//! Needs root (device nodes, ownership, overlayfs), `skopeo`, `umoci` and the registry;
//! skips with a reason otherwise, or fails when `WHARF_REQUIRE_PRIVILEGED=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::{registry, sha256_digest, skip, skopeo_raw};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use sha2::{Digest, Sha256};
use wharf::images::{Image, ImageStore};

/// Why this machine cannot run the tests against `fixture` (a repository under the
/// registry), if it cannot; else the fixture's raw manifest as the registry serves it.
fn prerequisites(fixture: &str) -> Result<Vec<u8>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (device nodes, chown and overlayfs need it)".into());
    }
    for tool in ["skopeo", "umoci"] {
        let found = Command::new(tool).arg("--version").output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Err(format!("{tool} is not installed (apt-get install {tool})"));
        }
    }
    if let Some(reason) = common::fixture::registry_unreachable() {
        return Err(reason);
    }
    let addr = registry();
    skopeo_raw(&format!("{addr}/{fixture}")).map_err(|e| {
        format!("fixture {fixture} missing ({e}); push it with scripts/test-registry.sh start")
    })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image unpacked by umoci: skopeo copies it from the registry into an OCI layout
/// under `work` (same blobs, same digests), `umoci unpack` applies the layers the way
/// the reference implementation does. Returns the rootfs.
fn umoci_rootfs(reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    fs::create_dir_all(work).unwrap();
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:image", layout.display())));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:image", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

// --- A tree snapshot that two unpackers can be compared on -------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        size: u64,
        sha256: String,
    },
    Symlink(PathBuf),
    /// Major and minor number.
    Char(u64, u64),
    Block(u64, u64),
    Fifo,
    Socket,
}

/// What a user of the container sees of one path. Directory mtimes are left out: a
/// directory that a whiteout layer only names implicitly gets the unpack time in both
/// unpackers, and overlayfs shows the top layer's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    mode: u32,
    uid: u32,
    gid: u32,
    /// Seconds, for everything but directories.
    mtime: Option<i64>,
    /// All xattrs but `security.selinux` (a host labelling artefact); overlayfs hides its
    /// own `trusted.overlay.*` in the merged view.
    xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
    /// Paths that are one inode (hard links), as groups of two or more.
    links: BTreeSet<BTreeSet<PathBuf>>,
}

fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    walk(root, Path::new(""), &mut tree, &mut inodes);
    tree.links = inodes.into_values().filter(|g| g.len() > 1).collect();
    tree
}

fn walk(
    root: &Path,
    rel: &Path,
    tree: &mut Tree,
    inodes: &mut BTreeMap<(u64, u64), BTreeSet<PathBuf>>,
) {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = meta.file_type();
    let rdev = || {
        (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        )
    };
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File {
            size: meta.len(),
            sha256: file_sha256(&path),
        }
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(&path).unwrap())
    } else if ft.is_char_device() {
        Kind::Char(rdev().0, rdev().1)
    } else if ft.is_block_device() {
        Kind::Block(rdev().0, rdev().1)
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mut xattrs = BTreeMap::new();
    if !ft.is_symlink() {
        for name in xattr::list(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            let name = name.to_string_lossy().into_owned();
            if name == "security.selinux" {
                continue;
            }
            let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
            xattrs.insert(name, value);
        }
    }
    if !ft.is_dir() && meta.nlink() > 1 {
        inodes
            .entry((meta.dev(), meta.ino()))
            .or_default()
            .insert(rel.to_path_buf());
    }
    tree.nodes.insert(
        rel.to_path_buf(),
        Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (!ft.is_dir()).then_some(meta.mtime()),
            xattrs,
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), tree, inodes);
        }
    }
}

fn file_sha256(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Every difference between two trees, one line each (empty when they are equal).
fn differences(ours: &Tree, theirs: &Tree, their_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in &ours.nodes {
        match theirs.nodes.get(path) {
            None => out.push(format!(
                "only in wharf's tree: /{} {node:?}",
                path.display()
            )),
            Some(other) if other != node => out.push(format!(
                "/{}: wharf {node:?}, {their_name} {other:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for (path, node) in &theirs.nodes {
        if !ours.nodes.contains_key(path) {
            out.push(format!(
                "only in {their_name}'s tree: /{} {node:?}",
                path.display()
            ));
        }
    }
    if ours.links != theirs.links {
        out.push(format!(
            "hard links: wharf {:?}, {their_name} {:?}",
            ours.links, theirs.links
        ));
    }
    out
}

fn assert_same_tree(ours: &Tree, theirs: &Tree, their_name: &str) {
    let diff = differences(ours, theirs, their_name);
    assert!(
        diff.is_empty(),
        "{} differences between wharf's tree and {their_name}'s:\n{}",
        diff.len(),
        diff.iter().take(60).cloned().collect::<Vec<_>>().join("\n")
    );
}

// --- The merged view a container gets ----------------------------------------------

/// Unmounts when dropped, so a failed assertion never leaves the mount behind.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if let Err(e) = umount2(self.0, MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.0.display());
        }
    }
}

/// Runs `f` on the image's layers merged read-only by overlayfs (`lowerdir` only, top
/// layer first), as a container's rootfs would be minus its upper dir. The mount is made
/// on a thread of its own in a private mount namespace (`unshare(CLONE_NEWNS)` is
/// per-thread), so nothing else on the host sees it and it disappears with the thread
/// even if the guard's unmount were skipped. A one-layer image is its layer.
fn with_merged<T: Send>(image: &Image, mountpoint: &Path, f: impl FnOnce(&Path) -> T + Send) -> T {
    if let [only] = image.layers.as_slice() {
        return f(only);
    }
    let lowerdir = image
        .layers
        .iter()
        .rev()
        .map(|l| l.to_str().expect("layer path is UTF-8").to_string())
        .collect::<Vec<_>>()
        .join(":");
    std::thread::scope(|s| {
        s.spawn(move || {
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
            // Without this a mount under a shared / would propagate back to the host.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private");
            mount(
                Some("overlay"),
                mountpoint,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(format!("lowerdir={lowerdir}").as_str()),
            )
            .unwrap_or_else(|e| panic!("mount overlay lowerdir={lowerdir}: {e}"));
            let _unmount = Unmount(mountpoint);
            f(mountpoint)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn node<'a>(tree: &'a Tree, path: &str) -> Option<&'a Node> {
    tree.nodes.get(Path::new(path))
}

/// The properties the `test/layers` fixture was built to have, checked on any tree: on
/// umoci's (so a fixture or umoci change cannot make the comparison vacuous) and on
/// wharf's (so a failure names the feature, not just a diff line).
fn check_layers_fixture(tree: &Tree, who: &str) {
    let present = |p: &str| {
        node(tree, p).unwrap_or_else(|| panic!("{who}: /{p} is missing"));
    };
    for p in [
        "bin/busybox",
        "etc/layers/kept",
        "opt/opq/new",
        "opt/opq/sub/kept-name",
    ] {
        present(p);
    }
    // Whiteouts (layers 3 and 4) removed what layer 2 added; nothing of them is visible.
    for gone in [
        "etc/layers/removed",
        "etc/layers/gone-dir",
        "etc/layers/gone-dir/file",
    ] {
        assert!(
            node(tree, gone).is_none(),
            "{who}: /{gone} survived its whiteout"
        );
    }
    for (path, n) in &tree.nodes {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !name.is_some_and(|n| n.starts_with(".wh.")),
            "{who}: whiteout entry /{} is visible",
            path.display()
        );
        assert_ne!(
            n.kind,
            Kind::Char(0, 0),
            "{who}: /{} is a whiteout device",
            path.display()
        );
    }
    // The opaque layer (5) replaced /opt/opq: its own entries only, the lower sub/ too.
    let opq: Vec<_> = tree
        .nodes
        .keys()
        .filter(|p| p.starts_with("opt/opq") && p.as_path() != Path::new("opt/opq"))
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        opq,
        ["opt/opq/new", "opt/opq/sub", "opt/opq/sub/kept-name"],
        "{who}: /opt/opq is not exactly the opaque layer's content"
    );
    let sha = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    assert_eq!(
        node(tree, "opt/opq/sub/kept-name").unwrap().kind,
        Kind::File {
            size: 5,
            sha256: sha("new3\n")
        },
        "{who}: /opt/opq/sub/kept-name is not the top layer's"
    );
    // Layer 2's special files.
    let file = node(tree, "srv/data/file").unwrap();
    assert_eq!(
        file.kind,
        Kind::File {
            size: 6,
            sha256: sha("hello\n")
        },
        "{who}"
    );
    let group: BTreeSet<PathBuf> = [
        "srv/data/file",
        "srv/data/hardlink",
        "srv/data/sub/hardlink2",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert!(
        tree.links.contains(&group),
        "{who}: hard links {:?}",
        tree.links
    );
    assert_eq!(
        node(tree, "srv/data/symlink").unwrap().kind,
        Kind::Symlink("../data/file".into()),
        "{who}"
    );
    assert_eq!(
        node(tree, "srv/dangling").unwrap().kind,
        Kind::Symlink("/nonexistent/target".into()),
        "{who}"
    );
    assert_eq!(
        node(tree, "srv/setuid").unwrap().mode,
        0o4755,
        "{who}: setuid"
    );
    assert_eq!(
        node(tree, "srv/setgid").unwrap().mode,
        0o2750,
        "{who}: setgid"
    );
    assert_eq!(
        node(tree, "srv/sticky").unwrap().mode,
        0o1777,
        "{who}: sticky"
    );
    let owned = node(tree, "srv/owned").unwrap();
    assert_eq!(
        (owned.uid, owned.gid, owned.mode),
        (1234, 5678, 0o640),
        "{who}: owner"
    );
    let private = node(tree, "srv/private").unwrap();
    assert_eq!(
        (private.uid, private.gid, private.mode),
        (1234, 5678, 0o750),
        "{who}"
    );
    assert_eq!(
        node(tree, "srv/xattr")
            .unwrap()
            .xattrs
            .get("user.wharf.fixture"),
        Some(&b"layers".to_vec()),
        "{who}: xattr"
    );
    assert_eq!(
        node(tree, "srv/null").unwrap().kind,
        Kind::Char(1, 3),
        "{who}: device"
    );
    assert_eq!(
        node(tree, "srv/fifo").unwrap().kind,
        Kind::Fifo,
        "{who}: fifo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_image_merged_by_overlayfs_equals_umoci_unpack() {
    const TEST: &str = "layered_image_merged_by_overlayfs_equals_umoci_unpack";
    if let Err(reason) = prerequisites("test/layers:latest") {
        return skip(TEST, &reason);
    }
    let reference = format!("{}/test/layers:latest", registry());
    let work = tempfile::tempdir().unwrap();

    let theirs = snapshot(&umoci_rootfs(&reference, &work.path().join("umoci")));
    check_layers_fixture(&theirs, "umoci");

    let store = ImageStore::open(&work.path().join("images"), vec![registry()]).unwrap();
    let image = store
        .pull(&reference)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    assert_eq!(image.layers.len(), 5, "layers: {:?}", image.layers);
    let mountpoint = work.path().join("merged");
    fs::create_dir(&mountpoint).unwrap();
    let ours = with_merged(&image, &mountpoint, snapshot);

    check_layers_fixture(&ours, "wharf");
    assert_same_tree(&ours, &theirs, "umoci");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_to_the_amd64_manifest_and_keeps_the_index_digest() {
    const TEST: &str = "index_resolves_to_the_amd64_manifest_and_keeps_the_index_digest";
    let raw_index = match prerequisites("test/multi:latest") {
        Ok(raw) => raw,
        Err(reason) => return skip(TEST, &reason),
    };
    let registry = registry();
    let index_digest = sha256_digest(&raw_index);
    let index: serde_json::Value = serde_json::from_slice(&raw_index).unwrap();
    let platform_manifest = |arch: &str| -> String {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("fixture index has no {arch}: {index}"))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let amd64 = platform_manifest("amd64");
    let arm64 = platform_manifest("arm64");
    let arm64_manifest: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&format!("{registry}/test/multi@{arm64}")).unwrap())
            .unwrap();
    let arm64_config = arm64_manifest["config"]["digest"].as_str().unwrap();
    let busybox_digest =
        sha256_digest(&skopeo_raw(&format!("{registry}/test/busybox:latest")).unwrap());
    assert_eq!(
        amd64, busybox_digest,
        "fixture: the amd64 entry is not test/busybox"
    );

    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path(), vec![registry.clone()]).unwrap();
    let reference = format!("{registry}/test/multi:latest");
    let image = store.pull(&reference).await.unwrap();

    assert_eq!(
        image.digest, index_digest,
        "Image.digest must be the index's"
    );
    assert_eq!(
        image.config.cmd,
        Some(vec!["sh".to_string()]),
        "config is not the amd64 one (arm64's Cmd is arm64-marker)"
    );
    assert!(
        store.content().has(&amd64, None),
        "amd64 manifest not stored"
    );
    assert!(
        !store.content().has(arm64_config, None),
        "the arm64 config was fetched: the wrong platform was followed"
    );
    assert_eq!(
        store.lookup(&reference).unwrap().as_ref(),
        Some(&image),
        "lookup after pull"
    );

    // Its layers are busybox's: pulling busybox into the same store unpacks nothing new.
    let (busybox, stats) = store
        .pull_with_stats(&format!("{registry}/test/busybox:latest"))
        .await
        .unwrap();
    assert_eq!(busybox.layers, image.layers);
    assert_eq!(busybox.digest, amd64);
    assert_eq!(
        stats.layers_unpacked, 0,
        "busybox's layer was unpacked again"
    );

    // Pinned by the index digest: the same image again.
    let pinned = store
        .pull(&format!("{registry}/test/multi@{index_digest}"))
        .await
        .unwrap();
    assert_eq!(pinned.digest, index_digest);
    assert_eq!(pinned.layers, image.layers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_image_unpacks_to_the_same_tree_as_gzip_busybox() {
    const TEST: &str = "zstd_image_unpacks_to_the_same_tree_as_gzip_busybox";
    let raw = match prerequisites("test/zstd:latest") {
        Ok(raw) => raw,
        Err(reason) => return skip(TEST, &reason),
    };
    let registry = registry();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(
        layers
            .iter()
            .all(|l| l["mediaType"].as_str().unwrap().ends_with("+zstd")),
        "fixture test/zstd has non-zstd layers: {manifest}"
    );
    let zstd_ref = format!("{registry}/test/zstd:latest");
    let busybox_ref = format!("{registry}/test/busybox:latest");
    let work = tempfile::tempdir().unwrap();

    // Separate stores: the zstd and gzip blobs have the same diff id (chain id), so in
    // one store the second pull would reuse the first's unpacked layer.
    let zstd_store = ImageStore::open(&work.path().join("zstd"), vec![registry.clone()]).unwrap();
    let (zstd, stats) = zstd_store
        .pull_with_stats(&zstd_ref)
        .await
        .unwrap_or_else(|e| panic!("pull {zstd_ref}: {e}"));
    assert_eq!(zstd.digest, sha256_digest(&raw));
    assert_eq!(stats.layers_unpacked, 1);
    let blob = zstd_store
        .content()
        .blob_path(layers[0]["digest"].as_str().unwrap());
    let magic = fs::read(&blob).unwrap()[..4].to_vec();
    assert_eq!(
        magic,
        [0x28, 0xb5, 0x2f, 0xfd],
        "stored layer blob is not zstd"
    );

    let gzip_store = ImageStore::open(&work.path().join("gzip"), vec![registry.clone()]).unwrap();
    let busybox = gzip_store.pull(&busybox_ref).await.unwrap();
    assert_eq!(
        zstd.layers
            .iter()
            .map(|l| l.file_name())
            .collect::<Vec<_>>(),
        busybox
            .layers
            .iter()
            .map(|l| l.file_name())
            .collect::<Vec<_>>(),
        "same diff ids must give the same chain ids"
    );

    let ours = snapshot(&zstd.layers[0]);
    assert!(
        node(&ours, "bin/busybox").is_some() && node(&ours, "bin/sh").is_some(),
        "busybox missing from the zstd layer"
    );
    assert_same_tree(&ours, &snapshot(&busybox.layers[0]), "wharf-gzip");
    let theirs = snapshot(&umoci_rootfs(&busybox_ref, &work.path().join("umoci")));
    assert_same_tree(&ours, &theirs, "umoci");
}
