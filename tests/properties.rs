//! Property tests of the two parsers of untrusted input: the manifest decoder and the
//! layer unpacker, on random and mutated input (docs/security.md, "keep them closed").
//!
//! Bounded for CI by the number of cases (`PROPTEST_CASES` raises it for a longer run
//! by hand). The properties: no panic; no write outside the unpack target; every error
//! has a position (manifests) or names the entry (layers), and a message short enough
//! to serve.

use std::fs;
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use wharf::images::{unpack_layer_with, ImageError};
use wharf::manifest::parse_file;

/// A valid manifest with most of the contract's fields, to mutate.
const VALID: &str = r#"apiVersion: wharf/v1
kind: Container
metadata:
  name: web
  labels: {app: web}
spec:
  image: 127.0.0.1:5099/test/busybox:latest
  command: ["sh", "-c"]
  args: ["echo hello; exec sleep 3600"]
  env: {LOG_LEVEL: info}
  user: "1000:1000"
  ports: ["8080:80", {hostPort: 8443, containerPort: 443, protocol: TCP}]
  mounts:
    - {type: tmpfs, target: /scratch, size: 64Mi}
  resources: {memory: 256Mi, cpus: 0.5, pids: 100}
  capabilities: {add: [NET_ADMIN], drop: [ALL]}
  restartPolicy: Always
---
apiVersion: wharf/v1
kind: Network
metadata:
  name: backend
spec:
  subnet: 10.89.7.0/24
  internal: true
"#;

fn check_manifest(text: &str) -> Result<(), TestCaseError> {
    let (objects, diagnostics) = parse_file("m.yaml", text);
    for d in &diagnostics {
        prop_assert!(
            d.line.is_some() || d.message.starts_with("invalid YAML"),
            "no position: {d}"
        );
        prop_assert!(d.message.chars().count() <= 301, "unbounded: {d}");
        prop_assert!(
            !d.message.chars().any(char::is_control),
            "control character in: {d}"
        );
    }
    if !diagnostics.is_empty() {
        // A file with errors yields nothing to apply (its last good objects are kept).
        prop_assert!(objects.len() <= 2);
    }
    Ok(())
}

/// One edit of a text: insert, delete or replace a span, or duplicate a line.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, char),
    DuplicateLine(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), ".{0,8}").prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<usize>().prop_map(Edit::DuplicateLine),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Insert(i, s) => {
                let i = at(*i, chars.len());
                chars.splice(i..i, s.chars());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, chars.len());
                let end = (i + n).min(chars.len());
                chars.drain(i..end);
            }
            Edit::Replace(i, c) => {
                if !chars.is_empty() {
                    let i = i % chars.len();
                    chars[i] = *c;
                }
            }
            Edit::DuplicateLine(i) => {
                let s: String = chars.iter().collect();
                let lines: Vec<&str> = s.split('\n').collect();
                let n = i % lines.len();
                let mut out: Vec<&str> = lines.clone();
                out.insert(n, lines[n]);
                chars = out.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_manifest_decoder_takes_any_text(text in "(?s).{0,400}") {
        check_manifest(&text)?;
    }

    #[test]
    fn the_manifest_decoder_takes_any_edit_of_a_valid_file(edits in prop::collection::vec(edit(), 1..6)) {
        check_manifest(&apply(VALID, &edits))?;
    }
}

#[test]
fn the_valid_manifest_is_valid() {
    let (objects, diagnostics) = parse_file("m.yaml", VALID);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(objects.len(), 2);
}

/// A layer with what attacks use: `..`, absolute paths, links out, a symlinked parent,
/// hard links, a whiteout, a device, a FIFO, a sparse file.
fn hostile_layer() -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |kind: tar::EntryType, name: &str, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        out.append(&h, data).unwrap();
    };
    use tar::EntryType as T;
    add(T::Directory, "etc/", None, b"");
    add(
        T::Regular,
        "etc/passwd",
        None,
        b"root:x:0:0::/root:/bin/sh\n",
    );
    add(T::Symlink, "up", Some("../../.."), b"");
    add(T::Symlink, "abs", Some("/etc"), b"");
    add(T::Regular, "up/escaped", None, b"x");
    add(T::Regular, "../escaped", None, b"x");
    add(T::Regular, "/abs-escaped", None, b"x");
    add(T::Link, "hard", Some("etc/passwd"), b"");
    add(T::Link, "hard-out", Some("../outside/x"), b"");
    add(T::Regular, "etc/.wh.gone", None, b"");
    add(T::Fifo, "fifo", None, b"");
    add(T::Char, "dev", None, b"");
    add(T::Regular, "abs/through-link", None, b"x");
    add(T::Regular, "zeros", None, &[0u8; 70_000]);
    out.into_inner().unwrap()
}

fn unpack_sandboxed(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (layer, outside) = (dir.path().join("layer"), dir.path().join("outside"));
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    match unpack_layer_with(bytes, &layer, 1 << 20) {
        Ok(_) => {}
        Err(ImageError::UnpackEntry { entry, reason, .. }) => {
            prop_assert!(entry.chars().count() < 10_000 && !reason.is_empty());
        }
        Err(ImageError::UnpackLayer { .. } | ImageError::LayerTooLarge { .. }) => {}
        Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
    }
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    prop_assert_eq!(names(dir.path()), ["layer", "outside"]);
    prop_assert!(names(&outside).is_empty(), "written outside the layer");
    Ok(())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_unpacker_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        unpack_sandboxed(&bytes)?;
    }

    #[test]
    fn the_unpacker_takes_any_corruption_of_a_hostile_layer(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..24),
        compressed in any::<bool>(),
    ) {
        let mut bytes = hostile_layer();
        for (at, value) in flips {
            let n = bytes.len();
            bytes[at % n] = value;
        }
        let bytes = if compressed { gzip(&bytes) } else { bytes };
        unpack_sandboxed(&bytes)?;
    }
}

#[test]
fn the_hostile_layer_itself_writes_nothing_outside() {
    let bytes = hostile_layer();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("layer")).unwrap();
    let err = unpack_layer_with(&bytes[..], &dir.path().join("layer"), 1 << 20);
    assert!(err.is_err(), "a layer with `up/escaped` must fail");
    let outside: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(outside.len(), 1);
}
