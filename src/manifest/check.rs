//! Checks of single values. Each returns a message that says what is expected, so
//! the caller only adds the position.

/// A DNS label (RFC 1123): what `metadata.name` must be, since names become host
/// names, link names and DNS records.
pub(crate) fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    let mut message = format!(
        "{name:?} is not a valid name: use at most 63 lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    );
    let fixed: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c == '_' || c == '.' || c == ' ' {
                '-'
            } else {
                c
            }
        })
        .collect();
    if fixed != name && fixed.len() <= 63 && dns_label(&fixed).is_ok() {
        message.push_str(&format!("; did you mean {fixed:?}?"));
    }
    Err(message)
}

/// Network names exclude those with Docker's built-in meaning.
pub(crate) fn network_name(name: &str) -> Result<(), String> {
    match name {
        "default" => Err(
            "metadata.name \"default\" is reserved for the built-in network; choose another name"
                .into(),
        ),
        "host" | "none" => Err(format!(
            "metadata.name {name:?} is reserved (Docker's meaning: {} ); choose another name",
            if name == "host" {
                "the host's network namespace"
            } else {
                "no network"
            }
        )),
        _ => Ok(()),
    }
}

/// Label and annotation keys: Kubernetes' `[prefix/]name` shape, loosely (no
/// whitespace, no `=`), so they survive being passed on as OCI annotations.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("key {key:?} must have 1 to 253 characters"));
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || c == '=' || c.is_control())
    {
        return Err(format!("key {key:?} must not contain whitespace or '='"));
    }
    Ok(())
}

/// Environment variable names: anything but empty, `=` or NUL (what `execve` can
/// carry); POSIX-style names are a convention, not a rule.
pub(crate) fn env_name(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!(
            "variable name {key:?} must be non-empty and must not contain '='"
        ));
    }
    Ok(())
}

/// An absolute path in the container or on the host.
pub(crate) fn absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path (start with /)"));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} must not contain NUL"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

/// A host name (RFC 1123), at most 64 bytes (Linux's HOST_NAME_MAX).
pub(crate) fn hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 64 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid host name: dot-separated labels of letters, digits and '-', \
             at most 64 characters"
        ))
    }
}

/// `uid[:gid]` or `name[:group]`, as Docker's `--user`.
pub(crate) fn user(user: &str) -> Result<(), String> {
    let bad =
        || format!("user {user:?} must be uid[:gid] or a name (e.g. \"1000:1000\", \"nobody\")");
    let mut parts = user.split(':');
    let (Some(u), g, None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let part_ok = |p: &str| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            return !p.is_empty() && p.parse::<u32>().is_ok();
        }
        !p.is_empty()
            && !p.starts_with('-')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
    };
    if part_ok(u) && g.is_none_or(part_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

const SIGNALS: &[(&str, u8)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A stop signal: `SIGTERM`, `TERM` (any case, as Docker) or a number 1..=64, or
/// `SIGRTMIN+n` / `SIGRTMAX-n`. Returns the normalised form: `SIGTERM`, or the
/// number as written.
pub(crate) fn signal(sig: &str) -> Result<String, String> {
    let bad = || {
        format!("stopSignal {sig:?} is not a signal: use a name such as SIGTERM or SIGQUIT, or a number 1-64")
    };
    if let Ok(n) = sig.parse::<u8>() {
        return if (1..=64).contains(&n) {
            Ok(n.to_string())
        } else {
            Err(bad())
        };
    }
    let upper = sig.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.iter().any(|(name, _)| *name == bare) {
        return Ok(format!("SIG{bare}"));
    }
    // Real-time signals: RTMIN (34) + n and RTMAX (64) - n, within 34..=64.
    let rt = |base: &str, sign: char| -> Option<()> {
        let rest = bare.strip_prefix(base)?;
        if rest.is_empty() {
            return Some(());
        }
        let n: u8 = rest.strip_prefix(sign)?.parse().ok()?;
        (n <= 30).then_some(())
    };
    if rt("RTMIN", '+').is_some() || rt("RTMAX", '-').is_some() {
        return Ok(format!("SIG{bare}"));
    }
    Err(bad())
}

const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability name, with or without `CAP_`, any case (as Docker); or `ALL`.
/// Returns `CAP_XXX` (the kernel's name) or `ALL`.
pub(crate) fn capability(cap: &str) -> Result<String, String> {
    let upper = cap.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        return Ok(format!("CAP_{bare}"));
    }
    let hint = super::decode::suggest(bare, CAPABILITIES)
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default();
    Err(format!("unknown capability {cap:?}{hint}"))
}

/// An OCI image reference: `[registry[:port]/]path[:tag][@algo:hex]`, with the
/// distribution spec's grammar for path components, tags and digests.
pub(crate) fn image_reference(image: &str) -> Result<(), String> {
    let bad = |why: &str| format!("image {image:?} is not a valid reference: {why}");
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let (algo, hex) = digest
            .split_once(':')
            .ok_or_else(|| bad("a digest is written algorithm:hex, e.g. sha256:…"))?;
        let hex_ok = |n: usize| {
            hex.len() == n && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let ok = match algo {
            "sha256" => hex_ok(64),
            "sha512" => hex_ok(128),
            _ => false,
        };
        if !ok {
            return Err(bad(
                "the digest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>",
            ));
        }
    }
    // A tag is after the last ':' that follows the last '/' (a ':' before it is a
    // registry port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(bad(
                "a tag has at most 128 letters, digits, '_', '.' and '-'",
            ));
        }
    }
    if name.is_empty() {
        return Err(bad("the repository name is missing"));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it looks like a host (Docker's rule).
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            components.remove(0);
        }
    }
    for c in components {
        let ok = !c.is_empty()
            && c.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !ok {
            let hint = if c.bytes().any(|b| b.is_ascii_uppercase()) {
                " (repository names are lowercase)"
            } else {
                ""
            };
            return Err(bad(&format!(
                "path component {c:?} must be lowercase letters, digits and separators{hint}"
            )));
        }
    }
    Ok(())
}
