use std::os::unix::fs::PermissionsExt;

use super::*;

fn tar_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A one-layer image: `(layer tar, config json, manifest json)`.
fn image_parts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = tar_of(&[("etc/hello", b"hi\n", 0o640), ("bin/tool", b"#!x", 0o755)]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    (layer, config, manifest)
}

fn oci_archive(name: &str, tamper: bool) -> Vec<u8> {
    let (mut layer, config, manifest) = image_parts();
    let layer_name = format!("blobs/sha256/{}", digest_hex(&sha256_digest(&layer)));
    if tamper {
        layer[600] ^= 1;
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256_digest(&manifest),
            "size": manifest.len(), "annotations": {ANNOTATION_REF_NAME: name}}],
    }))
    .unwrap();
    let m = format!("blobs/sha256/{}", digest_hex(&sha256_digest(&manifest)));
    let c = format!("blobs/sha256/{}", digest_hex(&sha256_digest(&config)));
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", &index, 0o644),
        (&m, &manifest, 0o644),
        (&c, &config, 0o644),
        (&layer_name, &layer, 0o644),
    ])
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn member_names_are_normalised_and_may_not_escape() {
    assert_eq!(
        member_key(&[], "./blobs//sha256/ab").unwrap(),
        "blobs/sha256/ab"
    );
    assert_eq!(
        member_key(&["a", "b"], "../c/layer.tar").unwrap(),
        "a/c/layer.tar"
    );
    assert_eq!(member_key(&["a"], "/x").unwrap(), "x");
    assert!(member_key(&[], "../etc/passwd").is_err());
    assert!(member_key(&["a"], "../../x").is_err());
    assert!(member_key(&[], "./").is_err());
}

#[test]
fn oci_layout_tar_imports_and_exports_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("s1"), vec![]).unwrap();
    let file = work.path().join("in.tar");
    fs::write(&file, oci_archive("example.com/app:1", false)).unwrap();
    let images = store.import_archive(&file).unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.reference, "example.com/app:1");
    assert_eq!(img.config.cmd, Some(vec!["/bin/tool".to_string()]));
    let hello = img.layers[0].join("etc/hello");
    assert_eq!(fs::read(&hello).unwrap(), b"hi\n");
    assert_eq!(
        fs::metadata(&hello).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        store.lookup("example.com/app:1").unwrap().as_ref(),
        Some(img)
    );
    assert_eq!(entries(&store.content().tmp_dir()), 0, "staging cleaned up");

    let out = work.path().join("out.tar");
    store.export("example.com/app:1", &out).unwrap();
    let other = ImageStore::open(&work.path().join("s2"), vec![]).unwrap();
    let again = other.import_archive(&out).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].digest, img.digest,
        "export keeps the manifest bytes"
    );
    assert_eq!(again[0].reference, "example.com/app:1");
    assert_eq!(
        fs::read(again[0].layers[0].join("bin/tool")).unwrap(),
        b"#!x"
    );
}

#[test]
fn a_tag_only_ref_name_gives_an_image_found_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("s"), vec![]).unwrap();
    let file = work.path().join("in.tar");
    fs::write(&file, oci_archive("latest", false)).unwrap();
    let images = store.import_archive(&file).unwrap();
    assert_eq!(images[0].reference, images[0].digest);
    assert!(store.lookup(&images[0].digest).unwrap().is_some());
    store.tag(&images[0].digest, "example.com/named:1").unwrap();
    assert!(store.lookup("example.com/named:1").unwrap().is_some());
}

#[test]
fn tampered_blob_is_refused_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("s");
    let store = ImageStore::open(&root, vec![]).unwrap();
    let file = work.path().join("bad.tar");
    fs::write(&file, oci_archive("example.com/app:1", true)).unwrap();
    let err = store.import_archive(&file).unwrap_err();
    assert!(matches!(err, ImageError::CommitBlob { .. }), "{err}");
    for sub in ["blobs/sha256", "layers", "records", "refs", "tmp"] {
        assert_eq!(entries(&root.join(sub)), 0, "{sub} not empty");
    }
}

#[test]
fn member_climbing_out_of_the_archive_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&work.path().join("s"), vec![]).unwrap();
    let file = work.path().join("evil.tar");
    // tar::Builder refuses to write `..`, so patch the name into the header.
    let mut data = tar_of(&[("xx/evil", b"x", 0o644)]);
    data[..7].copy_from_slice(b"../evil");
    let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
    h.set_cksum();
    data[..512].copy_from_slice(h.as_bytes());
    fs::write(&file, data).unwrap();
    let err = store.import_archive(&file).unwrap_err();
    assert!(err.to_string().contains("escapes"), "{err}");
    assert!(!work.path().join("evil").exists());
    assert_eq!(entries(&store.content().tmp_dir()), 0);
}

#[test]
fn docker_save_archive_imports_under_its_repo_tag() {
    let (layer, config, _) = image_parts();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "abc.json", "RepoTags": ["busybox:1"], "Layers": ["l1/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", &manifest[..]),
        ("abc.json", &config[..]),
        ("l0/layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, data).unwrap();
    }
    // Old docker save links a repeated layer to its first copy.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_link(&mut h, "l1/layer.tar", "../l0/layer.tar")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("save.tar");
    fs::write(&file, b.into_inner().unwrap()).unwrap();
    let store = ImageStore::open(&work.path().join("s"), vec![]).unwrap();
    let images = store.import_archive(&file).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference, "docker.io/library/busybox:1");
    assert_eq!(
        fs::read(images[0].layers[0].join("etc/hello")).unwrap(),
        b"hi\n"
    );
    // The same archive again gives the same (synthesised) digest.
    assert_eq!(
        store.import_archive(&file).unwrap()[0].digest,
        images[0].digest
    );
}

#[test]
fn rootfs_directory_becomes_a_one_layer_image_keeping_modes_and_links() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("rootfs");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("bin/app"), b"binary").unwrap();
    fs::set_permissions(src.join("bin/app"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::create_dir(src.join("secret")).unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/bin/app", src.join("bin/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("outside")).unwrap();
    fs::hard_link(src.join("bin/app"), src.join("bin/app2")).unwrap();

    let store = ImageStore::open(&work.path().join("s"), vec![]).unwrap();
    let img = store.import_rootfs(&src, "example.com/rootfs:1").unwrap();
    assert_eq!(img.reference, "example.com/rootfs:1");
    assert_eq!(img.layers.len(), 1);
    let l = &img.layers[0];
    let mode = |p: &str| {
        fs::symlink_metadata(l.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(fs::read(l.join("bin/app")).unwrap(), b"binary");
    assert_eq!(mode("bin/app"), 0o751);
    assert_eq!(mode("secret"), 0o700);
    assert_eq!(
        fs::read_link(l.join("bin/link")).unwrap(),
        Path::new("/bin/app")
    );
    // A symlink out of the tree is archived as a link, never followed.
    assert_eq!(
        fs::read_link(l.join("outside")).unwrap(),
        Path::new("/etc/passwd")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(l.join("bin/app")).unwrap().ino(),
        fs::metadata(l.join("bin/app2")).unwrap().ino()
    );
    assert_eq!(store.lookup("example.com/rootfs:1").unwrap(), Some(img));
}
