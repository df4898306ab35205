//! `push` against the fixture registry (scripts/test-registry.sh), checked by skopeo: the
//! manifest the registry serves must hash to the digest wharf reports, and a copy by
//! skopeo must see the same digests.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wharf::images::ImageStore;

fn registry() -> String {
    std::env::var("WHARF_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5099".to_string())
}

fn skip(reason: &str) {
    if std::env::var("WHARF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("cannot run the push test: {reason}");
    }
    eprintln!("skipping push test: {reason}");
}

fn unavailable() -> Option<String> {
    let addr = registry();
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|s| TcpStream::connect_timeout(&s, Duration::from_secs(2)).is_ok());
    if !reachable {
        return Some(format!(
            "registry {addr} unreachable; start it with scripts/test-registry.sh start"
        ));
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        return Some("skopeo is not installed".into());
    }
    None
}

fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

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
    if let Some(reason) = unavailable() {
        return skip(&reason);
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
    if let Some(reason) = unavailable() {
        return skip(&reason);
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
