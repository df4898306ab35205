//! `push` against the fixture registry (scripts/test-registry.sh), checked by skopeo: the
//! manifest the registry serves must hash to the digest wharf reports, and a copy by
//! skopeo must see the same digests.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::fixture::{registry, skopeo, unavailable};
use sha2::{Digest, Sha256};
use wharf::images::ImageStore;

/// Deletes the pushed manifest from the registry however the test ends (the fixture
/// registry has deletes enabled); blobs are the registry's own GC's business.
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Err(e) = skopeo(&["delete", "--tls-verify=false", &self.0]) {
            eprintln!("cleanup: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_image_is_served_with_our_digest_and_skopeo_copies_it() {
    if let Some(reason) = unavailable(&["skopeo"]) {
        return common::fixture::skip("images_push", &reason);
    }
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("images"), vec![reg.clone()]).unwrap();
    let source = format!("{reg}/test/busybox:latest");
    let pulled = store.pull(&source).await.unwrap();

    // A repository nobody else uses, so parallel runs do not meet.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let target = format!(
        "{reg}/wharf-push-test/busybox-{}-{nanos}:v1",
        std::process::id()
    );
    store.tag(&source, &target).unwrap();
    let digest = store.push(&target).await.unwrap();
    let _cleanup = DeleteOnDrop(format!("docker://{target}"));
    assert_eq!(
        digest, pulled.digest,
        "a single-platform image keeps its digest"
    );

    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ])
    .unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
        digest,
        "the registry serves our exact manifest bytes"
    );

    let dir = work.path().join("copy");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:pushed", dir.display()),
    ])
    .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(digest.as_str())
    );

    // Again: every blob is already there, and the result is the same.
    assert_eq!(store.push(&target).await.unwrap(), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_rootfs_image_pushes_and_pulls_back() {
    if let Some(reason) = unavailable(&["skopeo"]) {
        return common::fixture::skip("images_push", &reason);
    }
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), b"pushed by wharf\n").unwrap();
    let store = ImageStore::open(&work.path().join("images"), vec![reg.clone()]).unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let target = format!(
        "{reg}/wharf-push-test/rootfs-{}-{nanos}:v1",
        std::process::id()
    );
    let img = store.import_rootfs(&rootfs, &target).unwrap();
    let digest = store.push(&target).await.unwrap();
    let _cleanup = DeleteOnDrop(format!("docker://{target}"));
    assert_eq!(digest, img.digest);

    let other = ImageStore::open(&work.path().join("other"), vec![reg.clone()]).unwrap();
    let back = other.pull(&target).await.unwrap();
    assert_eq!(back.digest, digest);
    assert_eq!(
        std::fs::read(back.layers[0].join("etc/motd")).unwrap(),
        b"pushed by wharf\n"
    );
}
