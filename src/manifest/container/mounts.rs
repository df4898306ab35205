//! `spec.mounts`: the short form `"source:target[:ro]"` and the long forms.

use super::checked;
use crate::manifest::check;
use crate::manifest::decode::{boolean, fields, list, one_of, size, string, Ctx};
use crate::manifest::types::MountSpec;
use crate::manifest::yaml::{Node, Value};

pub(super) fn decode_mounts(cx: &mut Ctx, node: &Node) -> Vec<MountSpec> {
    let Some(items) = list(cx, node, "mounts", "[\"data:/var/lib/app\"]") else {
        return Vec::new();
    };
    let mut out: Vec<MountSpec> = Vec::new();
    for item in items {
        let mount = match &item.value {
            Value::Map(_) => decode_mount_long(cx, item),
            Value::Str(s) => match parse_mount_short(s) {
                Ok(m) => Some(m),
                Err(e) => {
                    cx.error(item.pos, e);
                    None
                }
            },
            _ => {
                cx.error(
                    item.pos,
                    format!(
                        "each mount must be \"source:target[:ro]\" or a mapping, found {}",
                        item.describe()
                    ),
                );
                None
            }
        };
        let Some(mount) = mount else { continue };
        if out.iter().any(|m| m.target() == mount.target()) {
            cx.error(
                item.pos,
                format!("two mounts have the target {}", mount.target()),
            );
        }
        out.push(mount);
    }
    out
}

/// `"source:target[:ro|:rw]"`: a name is a volume, an absolute path a bind.
fn parse_mount_short(s: &str) -> Result<MountSpec, String> {
    let bad = |why: String| {
        format!("mount {s:?}: {why}; expected \"source:target[:ro]\", e.g. \"data:/var/lib/app\"")
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(bad(format!("the mode {mode:?} must be ro or rw"))),
        _ => return Err(bad("it needs source and target".into())),
    };
    check::absolute_path(target).map_err(|e| bad(format!("target {e}")))?;
    mount_with_source(source, target, read_only).map_err(bad)
}

fn mount_with_source(source: &str, target: &str, read_only: bool) -> Result<MountSpec, String> {
    if source.starts_with('/') {
        check::absolute_path(source).map_err(|e| format!("source {e}"))?;
        return Ok(MountSpec::Bind {
            source: source.into(),
            target: target.into(),
            read_only,
            create_host_path: false,
        });
    }
    if source.starts_with('.') || source.contains('/') {
        return Err(format!(
            "bind source {source:?} must be an absolute path (there is no working directory to resolve it against)"
        ));
    }
    check::dns_label(source).map_err(|e| format!("volume {e}"))?;
    Ok(MountSpec::Volume {
        source: source.into(),
        target: target.into(),
        read_only,
    })
}

fn decode_mount_long(cx: &mut Ctx, node: &Node) -> Option<MountSpec> {
    // The type decides which fields are allowed, so read it first.
    let type_node = match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.text() == Some("type"))
            .map(|(_, v)| v),
        _ => None,
    };
    let Some(type_node) = type_node else {
        cx.error(
            node.pos,
            "a mount mapping needs \"type\": one of tmpfs, volume, bind",
        );
        return None;
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Type {
        Tmpfs,
        Volume,
        Bind,
    }
    let kind = one_of(
        cx,
        type_node,
        "mount type",
        &[
            ("tmpfs", Type::Tmpfs),
            ("volume", Type::Volume),
            ("bind", Type::Bind),
        ],
    )?;
    let known: &[&str] = match kind {
        Type::Tmpfs => &["type", "target", "size", "mode"],
        Type::Bind => &["type", "source", "target", "readOnly", "createHostPath"],
        Type::Volume => &["type", "source", "target", "readOnly"],
    };
    let what = match kind {
        Type::Tmpfs => "tmpfs mount",
        Type::Volume => "volume mount",
        Type::Bind => "bind mount",
    };
    let f = fields(cx, node, what, known)?;
    let target_node = f.required(cx, "target", &format!("a {what}"))?;
    let target = checked(cx, target_node, "target", check::absolute_path)?;
    if kind == Type::Tmpfs {
        let size = f.get("size").and_then(|n| size(cx, n, "size"));
        let mode = match f.get("mode") {
            Some(n) => {
                let text = string(cx, n, "mode")?;
                match octal_mode(&text) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        cx.error(n.pos, e);
                        return None;
                    }
                }
            }
            None => None,
        };
        return Some(MountSpec::Tmpfs { target, size, mode });
    }
    let read_only = f
        .get("readOnly")
        .and_then(|n| boolean(cx, n, "readOnly"))
        .unwrap_or(false);
    let source_node = f.required(cx, "source", &format!("a {what}"))?;
    let source = string(cx, source_node, "source")?;
    let result = match kind {
        Type::Bind if !source.starts_with('/') => Err(format!(
            "a bind source must be an absolute path, found {source:?}"
        )),
        Type::Volume if source.starts_with('/') => Err(format!(
            "a volume source is a volume name; for the host path {source:?} use type: bind"
        )),
        _ => mount_with_source(&source, &target, read_only),
    };
    let create = f
        .get("createHostPath")
        .and_then(|n| boolean(cx, n, "createHostPath"))
        .unwrap_or(false);
    result
        .map(|m| match m {
            MountSpec::Bind {
                source,
                target,
                read_only,
                ..
            } => MountSpec::Bind {
                source,
                target,
                read_only,
                create_host_path: create,
            },
            other => other,
        })
        .map_err(|e| cx.error(source_node.pos, e))
        .ok()
}

/// A permission mode written in octal, as `chmod` and Docker's `tmpfs-mode` take it:
/// `1777`, `"0755"`, `0o700`.
fn octal_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "tmpfs mode must be octal permission bits such as \"1777\" or \"0755\", found {text:?}"
        )),
    }
}
