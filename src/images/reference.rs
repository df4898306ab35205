//! Image references, normalised the way Docker does it (distribution's
//! `reference.ParseNormalizedNamed`): `busybox` is `docker.io/library/busybox:latest`.

use super::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker's legacy name for Docker Hub; it normalises to `docker.io`.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";

/// Normalises an image reference as Docker does:
///
/// - no registry: `docker.io`, and single-component names go under `library/`;
/// - the first component is a registry when it has a `.` or `:`, or is `localhost`;
/// - no tag and no digest: `:latest`; a digest without a tag keeps no tag;
/// - repository names must be lowercase; only `sha256` digests are accepted.
pub fn normalize_reference(s: &str) -> Result<String, ImageError> {
    let fail = |reason: &str| ImageError::ParseReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(fail("empty reference"));
    }
    if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("contains whitespace or is too long"));
    }

    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    if let Some(d) = digest {
        validate_digest(d).map_err(|r| fail(&r))?;
    }

    // A tag is a `:` after the last `/`; a `:` before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        validate_tag(t).map_err(|r| fail(&r))?;
    }

    let (domain, path) = split_domain(name);
    if domain.is_empty() {
        return Err(fail("empty registry name"));
    }
    if path.is_empty() {
        return Err(fail("empty repository name"));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(fail("repository name must be lowercase"));
    }
    for component in path.split('/') {
        validate_path_component(component).map_err(|r| fail(&r))?;
    }

    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), Some(d)) => out.push_str(&format!(":{t}@{d}")),
        (Some(t), None) => out.push_str(&format!(":{t}")),
        (None, Some(d)) => out.push_str(&format!("@{d}")),
        (None, None) => out.push_str(&format!(":{DEFAULT_TAG}")),
    }
    Ok(out)
}

/// The short form Docker shows (and writes in `docker save`'s `RepoTags`) for a
/// normalised reference: Docker Hub's `docker.io/` and `library/` prefixes dropped.
pub fn familiar(normalized: &str) -> &str {
    let hub = normalized
        .strip_prefix(DEFAULT_DOMAIN)
        .and_then(|r| r.strip_prefix('/'));
    match hub {
        // `library/` only goes from a one-component name (`library/a/b` keeps it).
        Some(path) => match path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest,
            _ => path,
        },
        None => normalized,
    }
}

/// Splits `name` into registry and repository path, applying Docker Hub's defaults.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

/// distribution's path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn validate_path_component(c: &str) -> Result<(), String> {
    let bad = || format!("invalid repository path component {c:?}");
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// distribution's tag grammar: `[\w][\w.-]{0,127}`.
fn validate_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {t:?}"))
    }
}

/// Only sha256 is supported, as by every registry we talk to.
pub(crate) fn validate_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "invalid digest {d:?}: want sha256:<64 lowercase hex>"
        )),
    }
}

/// The digest of a normalised reference, if it is pinned.
pub(crate) fn pinned_digest(normalised: &str) -> Option<&str> {
    normalised.split_once('@').map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn familiar_names_drop_docker_hubs_prefixes_only() {
        for (norm, short) in [
            ("docker.io/library/busybox:latest", "busybox:latest"),
            ("docker.io/team/app:1", "team/app:1"),
            ("docker.io/library/a/b:1", "library/a/b:1"),
            (
                "127.0.0.1:5099/test/busybox:latest",
                "127.0.0.1:5099/test/busybox:latest",
            ),
            ("docker.iox/app:1", "docker.iox/app:1"),
        ] {
            assert_eq!(familiar(norm), short, "{norm}");
        }
    }

    #[test]
    fn references_normalise_as_docker_does() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_string()),
            (
                "library/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            ("user/app:v1", "docker.io/user/app:v1".to_string()),
            ("ghcr.io/org/app", "ghcr.io/org/app:latest".to_string()),
            ("localhost/app", "localhost/app:latest".to_string()),
            (
                "localhost:5000/app:dev",
                "localhost:5000/app:dev".to_string(),
            ),
            (
                "127.0.0.1:5099/test/busybox",
                "127.0.0.1:5099/test/busybox:latest".to_string(),
            ),
            (
                "quay.io/a/b/c:1.0-rc_1",
                "quay.io/a/b/c:1.0-rc_1".to_string(),
            ),
            (
                "my-app__x.y",
                "docker.io/library/my-app__x.y:latest".to_string(),
            ),
            (
                &format!("busybox@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                &format!("r.io:443/x:tag@{D}"),
                format!("r.io:443/x:tag@{D}"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).unwrap(), want, "input {input}");
        }
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:short",
            "busybox@md5:0123",
            "a//b",
            "-a/b",
            "a/b-",
            "a b",
            "a..b",
            "host:5000/",
            "/busybox",
        ] {
            assert!(
                normalize_reference(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn pinned_digest_is_found_only_when_present() {
        let r = normalize_reference(&format!("busybox@{D}")).unwrap();
        assert_eq!(pinned_digest(&r), Some(D));
        assert_eq!(pinned_digest("docker.io/library/busybox:latest"), None);
    }
}
