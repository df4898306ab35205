//! Image archives: `wharf image import` (OCI layout tars, `docker save` archives, a root
//! filesystem directory) and `wharf image export` (an OCI layout tar).
//!
//! Import reads the archive once, staging every regular member in `tmp/` while hashing
//! it, because the member that describes the image (`index.json`, `manifest.json`) may
//! come anywhere in the tar. Member names are only keys: nothing is ever created at a
//! path taken from the archive, and a name that climbs out of the archive (`..`) is
//! refused. Then every blob's digest and size are checked against its descriptor, the
//! verified staged files are renamed into `blobs/`, layers are unpacked by the same
//! path-safe unpacker as pulls (which also checks each diff id), and records are written
//! last, as a pull does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::config::{
    chain_ids, host_platform, parse_config, parse_manifest, select_platform, Descriptor, Manifest,
    OCI_INDEX, OCI_MANIFEST,
};
use super::content::{digest_hex, sha256_digest, temp_name};
use super::reference::{familiar, normalize_reference, pinned_digest, validate_digest};
use super::store::{ImageRecord, ImageStore, LayerRecord};
use super::{Image, ImageError};

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The full reference, as containerd and Docker 25+ write it.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI layout's name for a manifest: a full reference or, often, only a tag.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Symlink members (old `docker save` links duplicate layers) are followed this often.
const MAX_LINK_HOPS: usize = 16;

impl ImageStore {
    /// Imports an OCI image layout tar (`index.json`, `oci-layout`, `blobs/`) or a
    /// `docker save` archive (`manifest.json`; layer tars and config JSON files) and
    /// returns the images, one per reference the archive names (from the index's
    /// `io.containerd.image.name` or full `org.opencontainers.image.ref.name`
    /// annotations, or `RepoTags`). An image the archive does not name is recorded
    /// without a reference, its `reference` is its digest: tag it before the next prune.
    ///
    /// The archive may be gzip-compressed. Every blob is verified; a digest mismatch
    /// leaves no blob, layer or record behind. Blocking.
    pub fn import_archive(&self, file: &Path) -> Result<Vec<Image>, ImageError> {
        let _lock = self.shared_lock()?;
        let staging = Staging::read(self, file)?;
        let result = if staging.get("index.json").is_some() {
            self.import_oci(&staging)
        } else if staging.get("manifest.json").is_some() {
            self.import_docker(&staging)
        } else {
            Err(staging.fail("neither an OCI layout (no index.json) nor a docker save archive (no manifest.json)"))
        };
        // Blobs renamed into place are synced one by one; the directory once.
        sync_dir(&self.root().join("blobs/sha256")).map_err(|source| ImageError::ReadArchive {
            path: file.to_path_buf(),
            source,
        })?;
        result
    }

    /// Makes an image of one layer from the directory `dir`, like `docker import`:
    /// entries in name order, modes, ownership, times, symlinks (never followed), hard
    /// links, device nodes and fifos are kept; sockets are skipped. The layer is stored
    /// uncompressed. The config has only the platform, `created` and the layer.
    pub fn import_rootfs(&self, dir: &Path, name: &str) -> Result<Image, ImageError> {
        let normalised = normalize_reference(name)?;
        if pinned_digest(&normalised).is_some() {
            return Err(ImageError::ParseReference {
                reference: name.to_string(),
                reason: "an imported image gets a new digest; name it with a tag".into(),
            });
        }
        let _lock = self.shared_lock()?;
        let io_err = |source| ImageError::ReadArchive {
            path: dir.to_path_buf(),
            source,
        };
        let tmp = self.content().tmp_dir();
        let layer = stage_with(&tmp, |w| {
            let mut builder = tar::Builder::new(w);
            append_tree(&mut builder, dir)?;
            builder.into_inner().map(drop)
        })
        .map_err(io_err)?;
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let platform = host_platform();
        let config = serde_json::json!({
            "created": now,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            "history": [{"created": now, "created_by": "wharf image import --rootfs"}],
        });
        let config_bytes = serde_json::to_vec(&config).map_err(|e| io_err(io::Error::other(e)))?;
        let layer_desc = Descriptor {
            media_type: OCI_LAYER_TAR.into(),
            digest: layer.digest.clone(),
            size: layer.size,
            platform: None,
        };
        self.commit_staged(&layer, dir)?;
        let mut images =
            self.record_synthesised(&[normalised], dir, &config_bytes, vec![layer_desc])?;
        sync_dir(&self.root().join("blobs/sha256")).map_err(io_err)?;
        Ok(images.remove(0))
    }

    /// Writes the image `reference` names as an OCI layout tar at `file` (replaced
    /// atomically) that also carries `docker save`'s `manifest.json`, as Docker 25's
    /// `docker save` does: `skopeo copy oci-archive:FILE …`, `docker-archive:FILE`,
    /// `docker load` and [`ImageStore::import_archive`] accept it. For a multi-platform image, the platform manifest we have is exported
    /// (the other platforms were never pulled), so its digest is the manifest's.
    pub fn export(&self, reference: &str, file: &Path) -> Result<(), ImageError> {
        let _lock = self.shared_lock()?;
        let digest = self
            .resolve_local(reference)?
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
            })?;
        let Some(record) = super::store::read_record::<ImageRecord>(&self.record_path(&digest))?
        else {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        };
        let content = self.content();
        let manifest = content.read(&record.manifest_digest)?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct MediaType {
            media_type: Option<String>,
        }
        let media_type = serde_json::from_slice::<MediaType>(&manifest)
            .ok()
            .and_then(|m| m.media_type)
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let mut blobs = vec![record.manifest_digest.clone(), record.config_digest.clone()];
        blobs.extend(record.layers.iter().map(|l| l.digest.clone()));
        let mut seen = HashSet::new();
        blobs.retain(|d| seen.insert(d.clone()));
        if let Some(missing) = blobs.iter().find(|d| !content.has(d, None)) {
            return Err(ImageError::MissingBlob {
                reference: reference.to_string(),
                digest: missing.clone(),
            });
        }

        let mut annotations = BTreeMap::new();
        let mut repo_tags = Vec::new();
        if !super::catalog::is_bare_digest(reference) {
            let norm = normalize_reference(reference)?;
            let name = norm.split('@').next().unwrap_or(&norm).to_string();
            let tag_start = name.rfind('/').map_or(0, |i| i + 1);
            if let Some(i) = name[tag_start..].rfind(':') {
                annotations.insert(
                    ANNOTATION_REF_NAME.to_string(),
                    name[tag_start + i + 1..].to_string(),
                );
                repo_tags.push(familiar(&name).to_string());
            }
            annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), name);
        }
        let index = IndexDoc {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: vec![AnnotatedDescriptor {
                media_type: media_type.clone(),
                digest: record.manifest_digest.clone(),
                size: manifest.len() as u64,
                annotations,
            }],
        };
        let index_bytes = serde_json::to_vec(&index).map_err(io::Error::other);
        // `docker save`'s description too (Docker 25 writes both): `docker load` and
        // tools reading docker-archive find the same blobs through it.
        let blob_member = |d: &str| format!("blobs/sha256/{}", digest_hex(d));
        let docker = [DockerManifestOut {
            config: blob_member(&record.config_digest),
            repo_tags,
            layers: record
                .layers
                .iter()
                .map(|l| blob_member(&l.digest))
                .collect(),
        }];
        let docker_bytes = serde_json::to_vec(&docker).map_err(io::Error::other);

        let export_err = |path: &Path, source| ImageError::ExportImage {
            reference: reference.to_string(),
            path: path.to_path_buf(),
            source,
        };
        let index_bytes = index_bytes.map_err(|e| export_err(file, e))?;
        let docker_bytes = docker_bytes.map_err(|e| export_err(file, e))?;
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
        let file_name = file
            .file_name()
            .ok_or_else(|| export_err(file, io::Error::other("not a file name")))?;
        let tmp = dir.unwrap_or(Path::new(".")).join(format!(
            ".{}.{}",
            file_name.to_string_lossy(),
            temp_name("export", "")
        ));
        let result = (|| {
            let out = File::create(&tmp)?;
            let mut b = tar::Builder::new(io::BufWriter::new(out));
            let mut add = |path: &str, data: &mut dyn Read, size: u64, dir: bool| {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(if dir {
                    tar::EntryType::Directory
                } else {
                    tar::EntryType::Regular
                });
                h.set_mode(if dir { 0o755 } else { 0o644 });
                h.set_size(size);
                h.set_mtime(0);
                b.append_data(&mut h, path, data)
            };
            add("blobs/", &mut io::empty(), 0, true)?;
            add("blobs/sha256/", &mut io::empty(), 0, true)?;
            for d in &blobs {
                let path = content.blob_path(d);
                let f = File::open(&path)?;
                let size = f.metadata()?.len();
                add(&blob_member(d), &mut BufReader::new(f), size, false)?;
            }
            let layout: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
            for (member, bytes) in [
                ("oci-layout", layout),
                ("index.json", &index_bytes),
                ("manifest.json", &docker_bytes),
            ] {
                add(member, &mut &bytes[..], bytes.len() as u64, false)?;
            }
            let out = b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            out.sync_all()?;
            fs::rename(&tmp, file)?;
            sync_dir(dir.unwrap_or(Path::new(".")))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| export_err(file, e))
    }

    fn import_oci(&self, s: &Staging) -> Result<Vec<Image>, ImageError> {
        let index: IndexDoc = s.json("index.json")?;
        let mut out = Vec::new();
        for entry in &index.manifests {
            let names = reference_names(&entry.annotations);
            let top = Descriptor {
                media_type: entry.media_type.clone(),
                digest: entry.digest.clone(),
                size: entry.size,
                platform: None,
            };
            let top_staged = s.blob(&top)?;
            let label = names.first().cloned().unwrap_or_else(|| top.digest.clone());
            let top_bytes = read_staged(s, top_staged)?;
            let mut to_commit = vec![top_staged];
            let (manifest_digest, config, layers) = match parse_manifest(&label, &top_bytes)? {
                Manifest::Image { config, layers } => (top.digest.clone(), config, layers),
                Manifest::Index(entries) => {
                    let want = host_platform();
                    let child = select_platform(&entries, &want).ok_or_else(|| {
                        ImageError::SelectPlatform {
                            reference: label.clone(),
                            platform: format!("{}/{}", want.os, want.architecture),
                        }
                    })?;
                    let staged = s.blob(child)?;
                    to_commit.push(staged);
                    match parse_manifest(&label, &read_staged(s, staged)?)? {
                        Manifest::Image { config, layers } => {
                            (child.digest.clone(), config, layers)
                        }
                        Manifest::Index(_) => {
                            return Err(s.fail(&format!(
                                "{}: an index entry for our platform is another index",
                                top.digest
                            )))
                        }
                    }
                }
            };
            let config_staged = s.blob(&config)?;
            let config_bytes = read_staged(s, config_staged)?;
            to_commit.push(config_staged);
            for l in &layers {
                to_commit.push(s.blob(l)?);
            }
            for staged in to_commit {
                self.commit_staged(staged, &s.archive)?;
            }
            out.extend(self.record_image(
                &names,
                &top.digest,
                &manifest_digest,
                &config.digest,
                &config_bytes,
                layers,
            )?);
        }
        Ok(out)
    }

    fn import_docker(&self, s: &Staging) -> Result<Vec<Image>, ImageError> {
        let entries: Vec<DockerManifestEntry> = s.json("manifest.json")?;
        let mut out = Vec::new();
        for entry in entries {
            let mut names = Vec::new();
            for t in entry.repo_tags.unwrap_or_default() {
                names.push(normalize_reference(&t).map_err(|e| s.fail(&e.to_string()))?);
            }
            let config = s
                .get(&entry.config)
                .ok_or_else(|| s.fail(&format!("config {} is not in the archive", entry.config)))?;
            let config_bytes = read_staged(s, config)?;
            let mut layers = Vec::new();
            for member in &entry.layers {
                let staged = s
                    .get(member)
                    .ok_or_else(|| s.fail(&format!("layer {member} is not in the archive")))?;
                let media_type = match magic(&staged.path)? {
                    m if m.starts_with(&[0x1f, 0x8b]) => OCI_LAYER_GZIP,
                    m if m == [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
                    _ => OCI_LAYER_TAR,
                };
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest: staged.digest.clone(),
                    size: staged.size,
                    platform: None,
                });
                self.commit_staged(staged, &s.archive)?;
            }
            // A docker save archive has no manifest: `record_synthesised` makes one and
            // stores the config with it.
            out.extend(self.record_synthesised(&names, &s.archive, &config_bytes, layers)?);
        }
        Ok(out)
    }

    /// Stores `config_bytes` and an OCI manifest naming it and `layers` (already in the
    /// store), then unpacks and records the image: what a `docker save` archive or a
    /// root filesystem lacks. The manifest is serialised deterministically, so the same
    /// content imported twice gets the same digest.
    fn record_synthesised(
        &self,
        names: &[String],
        source: &Path,
        config_bytes: &[u8],
        layers: Vec<Descriptor>,
    ) -> Result<Vec<Image>, ImageError> {
        let config_digest = self.write_blob_bytes(config_bytes, source)?;
        let manifest = ManifestDoc {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                platform: None,
            },
            layers: layers.clone(),
        };
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::ReadArchive {
                path: source.to_path_buf(),
                source: io::Error::other(e),
            })?;
        let manifest_digest = self.write_blob_bytes(&manifest_bytes, source)?;
        self.record_image(
            names,
            &manifest_digest,
            &manifest_digest,
            &config_digest,
            config_bytes,
            layers,
        )
    }

    /// The common end of every import: blobs are in place; parse the config, unpack the
    /// layers (verifying diff ids), write the record and one reference per name.
    fn record_image(
        &self,
        names: &[String],
        digest: &str,
        manifest_digest: &str,
        config_digest: &str,
        config_bytes: &[u8],
        layers: Vec<Descriptor>,
    ) -> Result<Vec<Image>, ImageError> {
        let label = names.first().map_or(digest, String::as_str);
        let parsed = parse_config(label, config_digest, config_bytes)?;
        if parsed.diff_ids.len() != layers.len() {
            return Err(ImageError::ParseConfig {
                reference: label.to_string(),
                digest: config_digest.to_string(),
                reason: format!(
                    "{} diff ids for {} layers",
                    parsed.diff_ids.len(),
                    layers.len()
                ),
            });
        }
        let chains = chain_ids(&parsed.diff_ids);
        let mut layer_records = Vec::with_capacity(layers.len());
        for ((desc, diff_id), chain_id) in layers.into_iter().zip(parsed.diff_ids).zip(chains) {
            if !desc.media_type.is_empty() && !desc.media_type.contains("tar") {
                return Err(ImageError::UnsupportedLayer {
                    reference: label.to_string(),
                    digest: desc.digest,
                    media_type: desc.media_type,
                });
            }
            self.ensure_layer(&desc.digest, &diff_id, &chain_id)?;
            layer_records.push(LayerRecord {
                digest: desc.digest,
                media_type: desc.media_type,
                size: desc.size,
                diff_id,
                chain_id,
            });
        }
        let record = ImageRecord {
            digest: digest.to_string(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config_digest.to_string(),
            config: parsed.config,
            layers: layer_records,
        };
        if names.is_empty() {
            let path = self.record_path(digest);
            crate::state::write_json(&path, &record)
                .map_err(|source| ImageError::WriteRecord { path, source })?;
            return Ok(vec![self.image_from_record(digest, &record)]);
        }
        let mut out = Vec::new();
        for name in names {
            self.write_records(name, &record)?;
            out.push(self.image_from_record(name, &record));
        }
        Ok(out)
    }

    /// Renames a verified staged file into `blobs/` unless the blob is already there.
    fn commit_staged(&self, staged: &Staged, source: &Path) -> Result<(), ImageError> {
        let content = self.content();
        if content.has(&staged.digest, Some(staged.size)) {
            return Ok(());
        }
        let dest = content.blob_path(&staged.digest);
        fs::rename(&staged.path, &dest).map_err(|e| ImageError::WriteBlob {
            digest: staged.digest.clone(),
            path: if e.kind() == io::ErrorKind::NotFound {
                source.to_path_buf()
            } else {
                dest
            },
            source: e,
        })
    }

    /// Stores a small in-memory blob through a temp file; returns its digest.
    fn write_blob_bytes(&self, bytes: &[u8], source: &Path) -> Result<String, ImageError> {
        let staged = stage_with(&self.content().tmp_dir(), |w| w.write_all(bytes)).map_err(
            |source_err| ImageError::WriteBlob {
                digest: sha256_digest(bytes),
                path: source.to_path_buf(),
                source: source_err,
            },
        )?;
        let result = self.commit_staged(&staged, source);
        let _ = fs::remove_file(&staged.path);
        result.map(|()| staged.digest)
    }
}

/// A member of the archive, copied to a temp file and hashed.
#[derive(Debug)]
struct Staged {
    path: PathBuf,
    digest: String,
    size: u64,
}

/// Every regular member of an archive, staged under `tmp/`; removed on drop (members
/// committed as blobs have been renamed away by then).
struct Staging {
    archive: PathBuf,
    dir: PathBuf,
    members: HashMap<String, Staged>,
    /// Symlink and hard-link members: name → the member they point at.
    links: HashMap<String, String>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Staging {
    fn read(store: &ImageStore, archive: &Path) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::ReadArchive {
            path: archive.to_path_buf(),
            source,
        };
        let dir = store
            .content()
            .tmp_dir()
            .join(temp_name("import", digest_hex("")));
        fs::DirBuilder::new().create(&dir).map_err(io_err)?;
        let mut staging = Staging {
            archive: archive.to_path_buf(),
            dir,
            members: HashMap::new(),
            links: HashMap::new(),
        };
        let file = File::open(archive).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let head = reader.fill_buf().map_err(io_err)?;
        let input: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut tar = tar::Archive::new(input);
        for entry in tar.entries().map_err(io_err)? {
            let mut entry = entry.map_err(io_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                tar::EntryType::Directory | tar::EntryType::XGlobalHeader
            ) {
                continue;
            }
            let key = member_key(&[], &raw).map_err(|r| staging.fail(&r))?;
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let staged = stage_with(&staging.dir, |w| io::copy(&mut entry, w).map(drop))
                        .map_err(io_err)?;
                    staging.links.remove(&key);
                    staging.members.insert(key, staged);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    // A symlink is relative to its own directory; a hard link names a
                    // path from the archive root.
                    let base: Vec<&str> = if kind == tar::EntryType::Symlink {
                        let mut parts: Vec<&str> = key.split('/').collect();
                        parts.pop();
                        parts
                    } else {
                        Vec::new()
                    };
                    let target = member_key(&base, &target).map_err(|r| staging.fail(&r))?;
                    staging.members.remove(&key);
                    staging.links.insert(key, target);
                }
                // Nothing else can be part of an image archive; it is not created.
                other => tracing::debug!(member = %raw, kind = ?other, "ignoring archive member"),
            }
        }
        Ok(staging)
    }

    fn get(&self, name: &str) -> Option<&Staged> {
        let mut key = member_key(&[], name).ok()?;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(s) = self.members.get(&key) {
                return Some(s);
            }
            key = self.links.get(&key)?.clone();
        }
        None
    }

    /// The member `blobs/sha256/<hex>` for `desc`, verified against its digest and size.
    fn blob(&self, desc: &Descriptor) -> Result<&Staged, ImageError> {
        validate_digest(&desc.digest).map_err(|r| self.fail(&r))?;
        let name = format!("blobs/sha256/{}", digest_hex(&desc.digest));
        let staged = self
            .get(&name)
            .ok_or_else(|| self.fail(&format!("blob {} is not in the archive", desc.digest)))?;
        if staged.digest != desc.digest || staged.size != desc.size {
            return Err(ImageError::CommitBlob {
                digest: desc.digest.clone(),
                expected_size: desc.size,
                actual: staged.digest.clone(),
                actual_size: staged.size,
            });
        }
        Ok(staged)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ImageError> {
        let staged = self
            .get(name)
            .ok_or_else(|| self.fail(&format!("{name} is missing")))?;
        serde_json::from_slice(&read_staged(self, staged)?)
            .map_err(|e| self.fail(&format!("{name}: {e}")))
    }

    fn fail(&self, reason: &str) -> ImageError {
        ImageError::ImportArchive {
            path: self.archive.clone(),
            reason: reason.to_string(),
        }
    }
}

fn read_staged(s: &Staging, staged: &Staged) -> Result<Vec<u8>, ImageError> {
    // Manifests and configs are small; a huge one is a broken or hostile archive.
    if staged.size > 16 * 1024 * 1024 {
        return Err(s.fail(&format!(
            "{} is too large for a JSON document",
            staged.digest
        )));
    }
    fs::read(&staged.path).map_err(|source| ImageError::ReadArchive {
        path: s.archive.clone(),
        source,
    })
}

/// Normalises a member name (or link target, resolved from `base`) to `a/b/c`:
/// `.` and empty components dropped, `..` popping, never above the archive root.
fn member_key(base: &[&str], name: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = if name.starts_with('/') {
        Vec::new()
    } else {
        base.to_vec()
    };
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("member {name:?} escapes the archive"));
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!("member {name:?} names the archive root"));
    }
    Ok(parts.join("/"))
}

/// References from an index entry's annotations. `ref.name` is only a tag in many
/// layouts (Docker writes `latest`); a bare word is not taken for a repository.
fn reference_names(annotations: &BTreeMap<String, String>) -> Vec<String> {
    if let Some(n) = annotations.get(ANNOTATION_IMAGE_NAME) {
        if let Ok(r) = normalize_reference(n) {
            return vec![r];
        }
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        Some(n) if n.contains('/') || n.contains(':') => {
            normalize_reference(n).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn magic(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut buf = [0u8; 4];
    let mut f = File::open(path).map_err(|source| ImageError::ReadBlob {
        path: path.to_path_buf(),
        source,
    })?;
    let n = f.read(&mut buf).map_err(|source| ImageError::ReadBlob {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(buf[..n].to_vec())
}

/// Writes through `write` into a new temp file in `dir` while hashing, then fsyncs.
fn stage_with(
    dir: &Path,
    write: impl FnOnce(&mut HashingWriter<io::BufWriter<File>>) -> io::Result<()>,
) -> io::Result<Staged> {
    let path = dir.join(temp_name("stage", ""));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let mut w = HashingWriter {
        inner: io::BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let result = write(&mut w).and_then(|()| {
        let HashingWriter {
            inner,
            hasher,
            written,
        } = w;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok((
            format!("sha256:{}", hex::encode(hasher.finalize())),
            written,
        ))
    });
    match result {
        Ok((digest, size)) => Ok(Staged { path, digest, size }),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Appends everything under `root` in name order, with paths relative to it. Walks with
/// `lstat` and opens files with `O_NOFOLLOW`, so a symlink is archived as a symlink and
/// never followed out of the tree.
fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path) -> io::Result<()> {
    let mut hardlinks: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        // Pushed in reverse so subdirectories come out in name order too (depth first).
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let abs = root.join(&rel_path);
            let meta = fs::symlink_metadata(&abs)?;
            let ft = meta.file_type();
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            if ft.is_dir() {
                h.set_size(0);
                b.append_data(&mut h, &rel_path, io::empty())?;
                subdirs.push(rel_path);
            } else if ft.is_symlink() {
                h.set_size(0);
                let target = fs::read_link(&abs)?;
                b.append_link(&mut h, &rel_path, target)?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = hardlinks.get(&(meta.dev(), meta.ino())) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &rel_path, first)?;
                        continue;
                    }
                    hardlinks.insert((meta.dev(), meta.ino()), rel_path.clone());
                }
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&abs)?;
                b.append_data(&mut h, &rel_path, f)?;
            } else {
                use std::os::unix::fs::FileTypeExt;
                if ft.is_socket() {
                    tracing::warn!(path = %abs.display(), "skipping socket: tar cannot hold one");
                    continue;
                }
                h.set_size(0);
                if ft.is_char_device() || ft.is_block_device() {
                    let rdev = meta.rdev();
                    h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
                    h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
                }
                b.append_data(&mut h, &rel_path, io::empty())?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `index.json` of an OCI layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<AnnotatedDescriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnnotatedDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The `docker save` `manifest.json` entry `export` writes.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestOut {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// The manifest we write for archives that have none; field order is the output order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
