use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, SystemTime};

use super::*;
use crate::images::catalog;
use crate::images::config::ImageConfig;
use crate::images::content::sha256_digest;
use crate::images::normalize_reference;
use crate::images::store::LayerRecord;

/// A fake image: one blob per manifest, config and layer, and one unpacked directory per
/// layer (named by `layers`, which may be shared between images).
struct Fixture {
    dir: tempfile::TempDir,
    store: ImageStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), vec![]).unwrap();
        Self { dir, store }
    }

    fn blob(&self, content: &str) -> String {
        let digest = sha256_digest(content.as_bytes());
        fs::write(self.store.content().blob_path(&digest), content).unwrap();
        digest
    }

    /// Records image `name` with the given layers (by label); returns its digest.
    fn image(&self, name: &str, layers: &[&str]) -> String {
        let layer_records: Vec<LayerRecord> = layers
            .iter()
            .map(|label| {
                let digest = self.blob(&format!("layer {label}"));
                let chain_id = sha256_digest(format!("chain {label}").as_bytes());
                let dir = self.store.layer_path(&chain_id);
                fs::create_dir_all(dir.join("etc")).unwrap();
                fs::write(dir.join("etc/file"), format!("content of {label}")).unwrap();
                LayerRecord {
                    digest,
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    size: 1,
                    diff_id: chain_id.clone(),
                    chain_id,
                }
            })
            .collect();
        let config_digest = self.blob(&format!(
            r#"{{"created":"2026-01-02T03:04:05Z","config":{{}},"rootfs":{{"diff_ids":[]}},"n":"{name}"}}"#
        ));
        let manifest = self.blob(&format!("manifest {name}"));
        let record = ImageRecord {
            digest: manifest.clone(),
            manifest_digest: manifest.clone(),
            config_digest,
            config: ImageConfig::default(),
            layers: layer_records,
        };
        self.store
            .write_records(&normalize_reference(name).unwrap(), &record)
            .unwrap();
        manifest
    }

    fn count(&self, sub: &str) -> usize {
        fs::read_dir(self.dir.path().join(sub)).unwrap().count()
    }
}

fn no_users() -> HashMap<String, Vec<String>> {
    HashMap::new()
}

#[test]
fn list_shows_references_layers_size_and_created() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["base", "app"]);
    f.store
        .tag("example.com/a:1", "example.com/a:stable")
        .unwrap();
    let images = f.store.list().unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.digest, a);
    assert_eq!(
        img.references,
        vec!["example.com/a:1".to_string(), "example.com/a:stable".into()]
    );
    assert_eq!(img.layers, 2);
    assert_eq!(img.created.as_deref(), Some("2026-01-02T03:04:05Z"));
    assert_eq!(img.last_used, None);
    // Two layer files of 15/14 bytes plus four blobs.
    assert!(img.size > 29, "size {}", img.size);

    f.store.mark_used(&a);
    let used = f.store.list().unwrap()[0].last_used.unwrap();
    assert!((catalog::unix_secs(SystemTime::now()) - used).abs() < 60);
}

#[test]
fn tag_of_unknown_image_fails_and_tag_by_digest_works() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["x"]);
    let err = f
        .store
        .tag("example.com/nope:1", "example.com/b:1")
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    f.store.tag(&a, "example.com/b:1").unwrap();
    assert_eq!(
        f.store.lookup("example.com/b:1").unwrap().unwrap().digest,
        a
    );
}

#[test]
fn removing_one_of_two_references_keeps_the_image() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["x"]);
    f.store.tag("example.com/a:1", "example.com/a:2").unwrap();
    f.store.remove("example.com/a:1", &no_users()).unwrap();
    assert!(f.store.lookup("example.com/a:1").unwrap().is_none());
    assert_eq!(
        f.store.lookup("example.com/a:2").unwrap().unwrap().digest,
        a
    );
    let report = f.store.prune(&HashSet::new(), None).unwrap();
    assert_eq!(report.images, Vec::<String>::new());
    assert_eq!(report.blobs, 0);
    assert!(f.store.lookup("example.com/a:2").unwrap().is_some());
}

#[test]
fn last_reference_of_an_image_in_use_is_refused_naming_the_container() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["x"]);
    let users = HashMap::from([(a.clone(), vec!["web".to_string()])]);
    let err = f.store.remove("example.com/a:1", &users).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("web") && msg.contains(&a), "{msg}");
    assert!(f.store.lookup("example.com/a:1").unwrap().is_some());
    // With another reference, untagging an image in use is fine.
    f.store.tag("example.com/a:1", "example.com/a:2").unwrap();
    f.store.remove("example.com/a:1", &users).unwrap();
    let err = f.store.remove("example.com/a:1", &users).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
}

#[test]
fn prune_removes_blobs_and_layers_of_removed_images_but_keeps_shared_ones() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["base", "a-only"]);
    let b = f.image("example.com/b:1", &["base", "b-only"]);
    assert_eq!(f.count("layers"), 3);
    // Two manifests, two configs, three layer blobs ("base" is shared).
    assert_eq!(f.count("blobs/sha256"), 7);

    f.store.remove("example.com/a:1", &no_users()).unwrap();
    assert_eq!(f.store.list().unwrap().len(), 1);
    let report = f.store.prune(&HashSet::new(), None).unwrap();
    // a's manifest, config and a-only layer blob; a-only's directory.
    assert_eq!(report.blobs, 3, "{report:?}");
    assert_eq!(report.layers, 1, "{report:?}");
    assert!(report.bytes > 0);
    assert_eq!(f.count("layers"), 2);
    assert!(!f.store.content().has(&a, None));
    let img_b = f.store.lookup("example.com/b:1").unwrap().unwrap();
    assert_eq!(img_b.digest, b);
    assert!(img_b.layers.iter().all(|l| l.join("etc/file").is_file()));
    // Nothing left to do: prune is idempotent.
    let again = f.store.prune(&HashSet::new(), None).unwrap();
    assert_eq!(again, PruneReport::default());
}

#[test]
fn dangling_image_in_use_survives_prune_with_all_its_content() {
    let f = Fixture::new();
    let a = f.image("example.com/a:1", &["base"]);
    // The tag moves to a new image; the old one is dangling but a container uses it.
    let b = f.image("example.com/b:1", &["other"]);
    f.store.tag("example.com/b:1", "example.com/a:1").unwrap();
    let keep = HashSet::from([a.clone()]);
    let report = f.store.prune(&keep, None).unwrap();
    assert_eq!(report.images, Vec::<String>::new());
    assert_eq!(f.count("layers"), 2);
    let pinned = format!("example.com/a@{a}");
    let img = f.store.lookup(&pinned).unwrap().expect("kept image");
    assert!(img.layers[0].join("etc/file").is_file());
    // Once no container uses it, it goes.
    let report = f.store.prune(&HashSet::new(), None).unwrap();
    assert_eq!(report.images, vec![a]);
    assert_eq!(f.count("layers"), 1);
    assert_eq!(
        f.store.lookup("example.com/a:1").unwrap().unwrap().digest,
        b
    );
}

#[test]
fn grace_period_collects_tagged_images_no_container_used_recently() {
    let f = Fixture::new();
    let old = f.image("example.com/old:1", &["o"]);
    let used = f.image("example.com/used:1", &["u"]);
    let hour = Duration::from_secs(3600);
    // Just pulled: younger than the grace period, kept.
    let r = f.store.prune(&HashSet::new(), Some(hour)).unwrap();
    assert!(r.images.is_empty(), "{r:?}");
    // Zero grace: everything not in use goes, references included.
    let keep = HashSet::from([used.clone()]);
    let r = f.store.prune(&keep, Some(Duration::ZERO)).unwrap();
    assert_eq!(r.images, vec![old]);
    assert_eq!(r.references, vec!["example.com/old:1".to_string()]);
    assert!(f.store.lookup("example.com/old:1").unwrap().is_none());
    assert!(f.store.lookup("example.com/used:1").unwrap().is_some());
}

#[test]
fn prune_deletes_old_temp_leftovers_and_keeps_fresh_ones() {
    let f = Fixture::new();
    let tmp = f.dir.path().join("tmp");
    fs::create_dir(tmp.join("layer-old")).unwrap();
    fs::write(tmp.join("layer-old/f"), "x").unwrap();
    fs::write(tmp.join("blob-fresh"), "y").unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    fs::File::open(tmp.join("layer-old"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let r = f.store.prune(&HashSet::new(), None).unwrap();
    assert_eq!(r.temp_entries, 1);
    assert!(!tmp.join("layer-old").exists());
    assert!(tmp.join("blob-fresh").exists());
}
