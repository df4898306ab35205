//! Import and export against archives made and checked by an independent tool: skopeo
//! writes `docker-archive:` and `oci-archive:` files from the fixture registry
//! (scripts/test-registry.sh) and inspects what `export` writes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::fixture::{registry, unavailable};
use wharf::images::ImageStore;

fn skopeo(args: &[&str]) -> Vec<u8> {
    common::fixture::skopeo(args).unwrap_or_else(|e| panic!("{e}"))
}

/// `skopeo copy` from the fixture registry into `dest` (an archive transport).
fn copy_from_registry(dest: &str) {
    let src = format!("docker://{}/test/busybox:latest", registry());
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &src,
        dest,
    ]);
}

fn digest_of(inspect_json: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(inspect_json).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_from_skopeo_imports_with_the_pulled_layers() {
    if let Some(reason) = unavailable(&["skopeo"]) {
        return common::fixture::skip("images_archive", &reason);
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("busybox-docker.tar");
    copy_from_registry(&format!(
        "docker-archive:{}:test/busybox:latest",
        file.display()
    ));
    let reference = format!("{}/test/busybox:latest", registry());
    let pulled = ImageStore::open(&work.path().join("images"), vec![registry()])
        .unwrap()
        .pull(&reference)
        .await
        .unwrap();

    let store = ImageStore::open(&work.path().join("images"), vec![registry()]).unwrap();
    let imported = store.import_archive(&file).unwrap();
    assert_eq!(imported.len(), 1, "{imported:?}");
    let img = &imported[0];
    assert_eq!(img.reference, "docker.io/test/busybox:latest");
    // Same diff ids give the same chain ids, hence the very same layer directories.
    assert_eq!(img.layers, pulled.layers);
    assert_eq!(img.config, pulled.config);
    let found = store.lookup("test/busybox").unwrap().expect("lookup");
    assert_eq!(&found, img);

    // Into an empty store: the layers are unpacked from the archive itself.
    let fresh = ImageStore::open(&work.path().join("fresh"), vec![]).unwrap();
    let img = fresh.import_archive(&file).unwrap().remove(0);
    assert!(img.layers.iter().any(|l| l.join("bin/busybox").is_file()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_archive_from_skopeo_imports_and_our_export_satisfies_skopeo() {
    if let Some(reason) = unavailable(&["skopeo"]) {
        return common::fixture::skip("images_archive", &reason);
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("busybox-oci.tar");
    copy_from_registry(&format!(
        "oci-archive:{}:test/busybox:latest",
        file.display()
    ));
    let source_digest = digest_of(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}", file.display()),
    ]));

    let store = ImageStore::open(&work.path().join("images"), vec![]).unwrap();
    let imported = store.import_archive(&file).unwrap();
    assert_eq!(imported.len(), 1, "{imported:?}");
    let img = &imported[0];
    assert_eq!(img.digest, source_digest, "the manifest bytes are kept");
    assert!(img.layers.iter().any(|l| l.join("bin/busybox").is_file()));
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));

    let out = work.path().join("export.tar");
    store.export(&img.reference, &out).unwrap();
    let inspected = skopeo(&["inspect", &format!("oci-archive:{}", out.display())]);
    assert_eq!(digest_of(&inspected), img.digest);
    // skopeo can copy it out too (reads and verifies every blob).
    let dir = work.path().join("copied");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        &format!("oci-archive:{}", out.display()),
        &format!("oci:{}:x", dir.display()),
    ]);
    let again = ImageStore::open(&work.path().join("again"), vec![]).unwrap();
    let re = again.import_archive(&out).unwrap().remove(0);
    assert_eq!(re.digest, img.digest);
    assert_eq!(re.reference, img.reference);

    // The same file is a `docker save` archive (its `manifest.json`, as Docker 25
    // writes both): skopeo finds the image in it by its tag (`RepoTags`, Docker's
    // short form), with the image's layers (by diff id), and copies it out.
    let familiar = img.reference.trim_start_matches("docker.io/");
    let by_tag = format!("docker-archive:{}:{familiar}", out.display());
    let docker = skopeo(&["inspect", &by_tag]);
    let docker: serde_json::Value = serde_json::from_slice(&docker).unwrap();
    let config = skopeo(&[
        "inspect",
        "--config",
        &format!("oci-archive:{}", out.display()),
    ]);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(docker["Layers"], config["rootfs"]["diff_ids"], "{docker}");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        &by_tag,
        &format!("oci:{}:docker", dir.display()),
    ]);
    // And our own importer, reading only `manifest.json`, gets the same image.
    let docker_only = work.path().join("docker-only.tar");
    without_member(&out, &docker_only, "index.json");
    let third = ImageStore::open(&work.path().join("third"), vec![]).unwrap();
    let via_docker = third.import_archive(&docker_only).unwrap().remove(0);
    assert_eq!(via_docker.config, img.config);
    assert_eq!(via_docker.reference, img.reference);
}

/// Copies the tar `from` to `to` without the member `skip`.
fn without_member(from: &Path, to: &Path, skip: &str) {
    let mut input = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut output = tar::Builder::new(std::fs::File::create(to).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new(skip) {
            continue;
        }
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        output.append_data(&mut header, path, &mut entry).unwrap();
    }
    output.finish().unwrap();
}

#[test]
fn rootfs_import_exports_as_an_image_skopeo_accepts() {
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
    std::fs::write(rootfs.join("usr/bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        rootfs.join("usr/bin/hello"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::symlink("usr/bin", rootfs.join("bin")).unwrap();

    let store = ImageStore::open(&work.path().join("images"), vec![]).unwrap();
    let img = store.import_rootfs(&rootfs, "local/hello:1").unwrap();
    let layer = &img.layers[0];
    let meta = std::fs::metadata(layer.join("usr/bin/hello")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::read_link(layer.join("bin")).unwrap(),
        Path::new("usr/bin")
    );

    if Command::new("skopeo").arg("--version").output().is_err() {
        return common::fixture::skip("images_archive", "skopeo is not installed");
    }
    let out = work.path().join("hello.tar");
    store.export("local/hello:1", &out).unwrap();
    let inspected = skopeo(&["inspect", &format!("oci-archive:{}", out.display())]);
    assert_eq!(digest_of(&inspected), img.digest);
}
