//! The spec hash: replace a container when, and only when, what it runs changes.
//!
//! Like kubelet's config hash (`pkg/kubelet/config/common.go`), it is taken over a
//! canonical form of the object, with two refinements so that upgrading the agent
//! does not restart everything:
//! - every field equal to its default is left out (the types' serialisation skips
//!   them), so a new field with a default, or a default written out, changes nothing;
//! - fields that do not need a restart (`metadata.annotations`, `dependsOn`,
//!   `update`, `stopGracePeriod`) are left out.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::types::Container;

/// Spec fields whose change takes effect at the next use, without a restart
/// (manifest-v1, "What a change does").
const NO_RESTART_FIELDS: &[&str] = &["dependsOn", "update", "stopGracePeriod"];

impl Container {
    /// Hex SHA-256 of the canonical JSON of the fields that restart the container:
    /// `spec` (minus the no-restart fields) and `metadata.labels`, defaults omitted.
    pub fn spec_hash(&self) -> String {
        let mut text = String::new();
        write_canonical(&Value::Object(hashed_view(self)), &mut text);
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// The camelCase names of fields set to a value this release cannot apply yet.
    /// The caller decides what to do (report, refuse to start); the manifest is
    /// still valid. (None at present: every field of manifest v1 is applied.)
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The fields that count in the hash and differ between `old` and `new`, as
/// dotted paths (`spec.image`, `metadata.labels`), sorted. Empty exactly when the
/// two spec hashes are equal.
pub fn changed_fields(old: &Container, new: &Container) -> Vec<String> {
    let (old, new) = (hashed_view(old), hashed_view(new));
    let mut changed = Vec::new();
    for section in ["metadata", "spec"] {
        let empty = Map::new();
        let a = old
            .get(section)
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let b = new
            .get(section)
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if a.get(key) != b.get(key) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    changed
}

/// `{"metadata": {"labels": …}, "spec": {…}}` with defaults and no-restart fields
/// removed; empty sections are dropped too.
fn hashed_view(c: &Container) -> Map<String, Value> {
    let mut spec = match serde_json::to_value(&c.spec) {
        Ok(Value::Object(map)) => map,
        // Serialising plain structs to a Value cannot fail; keep the hash total anyway.
        _ => Map::new(),
    };
    for field in NO_RESTART_FIELDS {
        spec.remove(*field);
    }
    // Defaults that depend on the object rather than the type.
    if c.spec.hostname.as_deref() == Some(c.metadata.name.as_str()) {
        spec.remove("hostname");
    }
    if c.spec.networks.as_deref() == Some(&["default".to_string()][..]) {
        spec.remove("networks");
    }
    let mut view = Map::new();
    if !c.metadata.labels.is_empty() {
        let labels = c
            .metadata
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut metadata = Map::new();
        metadata.insert("labels".into(), Value::Object(labels));
        view.insert("metadata".into(), Value::Object(metadata));
    }
    view.insert("spec".into(), Value::Object(spec));
    view
}

/// JSON with object keys sorted and no whitespace, independent of whether
/// serde_json's `preserve_order` feature is on somewhere in the build.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
