//! Pulls from the real fixture registry (scripts/test-registry.sh): Debian's
//! docker-registry on `$WHARF_TEST_REGISTRY` (default 127.0.0.1:5099) serving
//! `test/busybox:latest`, built with umoci (whose layers lack tar end-of-archive blocks).
//! `skopeo` is the independent client that says what the right digest is.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::fixture::{registry, registry_unreachable, sha256_digest, skopeo_raw};
use wharf::images::{normalize_reference, ImageStore, PullPolicy, PullStats};

/// Inode of every blob and layer directory: unchanged inodes mean nothing was
/// downloaded or unpacked again (content is renamed in, never rewritten in place).
fn inodes(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for sub in ["blobs/sha256", "layers"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let e = e.unwrap();
            out.insert(
                format!("{sub}/{}", e.file_name().to_string_lossy()),
                e.metadata().unwrap().ino(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_fixture_image_matches_skopeo_and_a_second_pull_downloads_nothing() {
    let registry = registry();
    if let Some(reason) = registry_unreachable() {
        return common::fixture::skip("images_pull", &reason);
    }
    let reference = format!("{registry}/test/busybox:latest");
    let expected = match skopeo_raw(&reference).map(|raw| sha256_digest(&raw)) {
        Ok(d) => d,
        Err(reason) => return common::fixture::skip("images_pull", &reason),
    };
    let state = tempfile::tempdir().unwrap();

    let image = ImageStore::open(&state.path().join("images"), vec![registry.clone()])
        .unwrap()
        .pull(&reference)
        .await
        .unwrap();
    assert_eq!(image.digest, expected, "digest differs from skopeo's");
    assert_eq!(image.reference, normalize_reference(&reference).unwrap());
    assert!(
        image.layers.iter().any(|l| l.join("bin/busybox").is_file()),
        "bin/busybox in none of {:?}",
        image.layers
    );
    let sh = image
        .layers
        .iter()
        .find_map(|l| std::fs::read_link(l.join("bin/sh")).ok());
    assert!(sh.is_some(), "busybox --install -s symlinks are missing");
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert!(
        image.config.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        image.config.env
    );

    let root = state.path().join("images");
    let store = ImageStore::open(&root, vec![registry.clone()]).unwrap();
    assert_eq!(store.lookup(&reference).unwrap().as_ref(), Some(&image));
    assert_eq!(
        store.ensure(&reference, PullPolicy::Never).await.unwrap(),
        image
    );
    assert!(
        store.content().has(&expected, None),
        "manifest blob not stored"
    );
    assert!(
        std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temp files left behind"
    );

    let before = inodes(&root);
    let (again, stats) = store.pull_with_stats(&reference).await.unwrap();
    assert_eq!(again, image);
    assert_eq!(
        stats,
        PullStats::default(),
        "second pull transferred or unpacked something"
    );
    assert_eq!(inodes(&root), before, "second pull rewrote blobs or layers");

    // Pinned by digest: verified against the manifest bytes, same image.
    let pinned = format!("{registry}/test/busybox@{expected}");
    assert_eq!(store.pull(&pinned).await.unwrap().digest, expected);
    let wrong = format!("{registry}/test/busybox@sha256:{}", "0".repeat(64));
    assert!(
        store.pull(&wrong).await.is_err(),
        "a digest the registry lacks must fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_with_if_not_present_is_pulled_and_unknown_repository_fails_clearly() {
    let registry = registry();
    if let Some(reason) = registry_unreachable() {
        return common::fixture::skip("images_pull", &reason);
    }
    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&state.path().join("images"), vec![registry.clone()]).unwrap();
    let reference = format!("{registry}/test/busybox:latest");
    assert!(store.lookup(&reference).unwrap().is_none());
    let image = store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert!(!image.layers.is_empty());

    let missing = format!("{registry}/test/no-such-image:latest");
    let err = store
        .ensure(&missing, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no-such-image"),
        "error does not name the image: {err}"
    );
}
