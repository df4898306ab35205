//! What the container runs: the manifest merged with the image config exactly as
//! Docker does (ENTRYPOINT/CMD, env, working dir, user). Pure functions.

use std::collections::BTreeMap;

pub use crate::images::ImageConfig;

/// The manifest's say on the process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessRequest {
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
}

/// The resolved process, before the user name is looked up in the image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `uid[:gid]` or `name[:group]`, as written; resolved against the image's files.
    pub user: String,
}

/// Docker's default `PATH` when neither the image nor the manifest sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Merges the manifest over the image config.
///
/// - `command` replaces ENTRYPOINT and, as with `docker run --entrypoint` and Kubernetes
///   `command`, also discards the image's CMD; `args` replaces CMD.
/// - `env` is merged over the image's env; `PATH` and `HOSTNAME` get Docker's defaults.
/// - `workingDir` defaults to the image's, else `/`; `user` to the image's, else root.
pub fn plan_process(
    req: &ProcessRequest,
    image: &ImageConfig,
) -> Result<ProcessPlan, super::RuntimeError> {
    let (entrypoint, cmd) = match &req.command {
        Some(command) => (command.clone(), req.args.clone().unwrap_or_default()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            req.args
                .clone()
                .or_else(|| image.cmd.clone())
                .unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(super::RuntimeError::Unrunnable(
            "no command to run: the image has no ENTRYPOINT or CMD; set spec.command".into(),
        ));
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let image_env = image
        .env
        .iter()
        .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), "")));
    for (key, value) in image_env.chain(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => env.push((key.to_owned(), value.to_owned())),
        }
    }
    for (key, default) in [("PATH", DEFAULT_PATH), ("HOSTNAME", req.hostname.as_str())] {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_owned(), default.to_owned()));
        }
    }

    let cwd = req
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = req
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0:0".into());
    Ok(ProcessPlan {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        user,
    })
}

/// Docker's default capability set (moby `oci/caps/defaults.go`): what a container's
/// root keeps unless the manifest adds or drops.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capability set of a container: Docker's default set, minus `drop`, plus `add`
/// (`ALL` in `drop` starts from nothing; `ALL` in `add` means every capability the
/// kernel knows, as Docker does). Names are `CAP_*`, as the manifest normalises them.
pub fn resolve_capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let mut set: std::collections::BTreeSet<String> = if drop.iter().any(|d| d == "ALL") {
        Default::default()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|a| a == "ALL") {
        // Every capability this process may pass on: a capability outside its bounding
        // set (a restricted host, or one the kernel lacks) cannot be granted, and asking
        // for it would fail the start.
        let all = caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all());
        // `drop` still applies to "all" (Docker: `--cap-add ALL --cap-drop X`, and
        // `privileged` with `drop`).
        set.extend(
            all.into_iter()
                .map(|c| c.to_string())
                .filter(|c| !drop.contains(c)),
        );
    }
    set.extend(add.iter().filter(|a| *a != "ALL").cloned());
    set.into_iter().collect()
}

/// A user resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Resolves `uid[:gid]` / `name[:group]` against the image's `/etc/passwd` and
/// `/etc/group` (either may be absent), as Docker does: a numeric uid need not exist;
/// the gid defaults to the passwd entry's, else 0; supplementary groups come from
/// `/etc/group` membership; HOME from passwd, else `/`.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let entry = entries
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let uid = match (u.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => f[2]
            .parse()
            .map_err(|_| format!("bad uid for user {u:?}"))?,
        (Err(_), None) => {
            return Err(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        }
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.map(|f| f[0]);
    let mut additional_gids: Vec<u32> = groups
        .iter()
        .filter(|f| name.is_some_and(|n| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n))))
        .filter_map(|f| f[2].parse().ok())
        .filter(|g| *g != gid)
        .collect();
    additional_gids.sort_unstable();
    additional_gids.dedup();
    let home = entry
        .map(|f| f[5].to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/img/bin".into(), "A=image".into()],
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default-arg".into()]),
            working_dir: Some("/srv".into()),
            user: None,
            stop_signal: None,
        }
    }

    fn req() -> ProcessRequest {
        ProcessRequest {
            hostname: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_entrypoint_and_cmd_are_used_when_manifest_sets_neither() {
        let p = plan_process(&req(), &image()).unwrap();
        assert_eq!(p.args, ["/entry", "default-arg"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user, "0:0");
    }

    #[test]
    fn args_replace_cmd_but_keep_entrypoint() {
        let r = ProcessRequest {
            args: Some(vec!["x".into()]),
            ..req()
        };
        assert_eq!(plan_process(&r, &image()).unwrap().args, ["/entry", "x"]);
    }

    #[test]
    fn command_replaces_entrypoint_and_discards_image_cmd() {
        let r = ProcessRequest {
            command: Some(vec!["/bin/sh".into()]),
            ..req()
        };
        assert_eq!(plan_process(&r, &image()).unwrap().args, ["/bin/sh"]);
        let r = ProcessRequest {
            command: Some(vec!["/bin/sh".into()]),
            args: Some(vec!["-c".into(), "true".into()]),
            ..req()
        };
        assert_eq!(
            plan_process(&r, &image()).unwrap().args,
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn nothing_to_run_is_an_error_naming_the_fix() {
        let err = plan_process(&req(), &ImageConfig::default()).unwrap_err();
        assert!(err.to_string().contains("spec.command"));
    }

    #[test]
    fn manifest_env_overrides_image_env_and_defaults_are_added() {
        let mut r = req();
        r.env.insert("A".into(), "manifest".into());
        let mut img = image();
        img.env.retain(|e| !e.starts_with("PATH="));
        let p = plan_process(&r, &img).unwrap();
        assert!(p.env.contains(&"A=manifest".to_string()));
        assert!(p.env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(p.env.contains(&"HOSTNAME=web".to_string()));
        assert_eq!(p.env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nweb:x:34:\nextra:x:50:www,other\n";

    #[test]
    fn capabilities_start_from_dockers_default_set() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let default = resolve_capabilities(&[], &[]);
        assert_eq!(default.len(), 14);
        assert!(default.contains(&"CAP_NET_RAW".to_string()));
        let tweaked = resolve_capabilities(&s(&["CAP_NET_ADMIN"]), &s(&["CAP_NET_RAW"]));
        assert!(tweaked.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!tweaked.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(
            resolve_capabilities(&s(&["CAP_NET_ADMIN"]), &s(&["ALL"])),
            ["CAP_NET_ADMIN"]
        );
        assert!(resolve_capabilities(&s(&["ALL"]), &[]).contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn user_name_resolves_to_uid_gid_groups_and_home() {
        let u = resolve_user("www", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (33, 34, vec![50], "/var/www")
        );
    }

    #[test]
    fn numeric_user_need_not_exist_and_gid_defaults_to_zero() {
        let u = resolve_user("1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 0, "/"));
        let u = resolve_user("1000:1000", "", "").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
    }

    #[test]
    fn unknown_user_name_is_an_error() {
        assert!(resolve_user("nobody-here", PASSWD, GROUP)
            .unwrap_err()
            .contains("nobody-here"));
        assert!(resolve_user("www:nogroup", PASSWD, GROUP)
            .unwrap_err()
            .contains("nogroup"));
    }
}
