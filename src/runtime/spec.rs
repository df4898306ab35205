//! Generation of the OCI runtime config (`config.json`) for a container.
//!
//! We start from oci-spec's defaults (runc's `spec` template: the standard mounts,
//! masked and read-only paths) and set what wharf decides. The result is a standard
//! bundle config: the shim runs it, and so could crun (the benchmark does).

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, ProcessBuilder, RootBuilder,
    Spec, UserBuilder,
};

use super::process::{ProcessPlan, ResolvedUser};

/// Everything that shapes the OCI config of one container.
#[derive(Debug, Clone)]
pub struct ConfigInputs {
    pub hostname: String,
    pub process: ProcessPlan,
    pub user: ResolvedUser,
    /// Where the rootfs is mounted (the overlay), inside the container's mount namespace.
    pub rootfs: PathBuf,
    pub read_only_rootfs: bool,
    /// `CAP_*` names for the bounding, effective and permitted sets.
    pub capabilities: Vec<String>,
    pub limits: super::Limits,
    pub network: super::NetworkMode,
    /// Bind mounts of files (host path → container path), e.g. `/etc/hosts`.
    pub file_mounts: Vec<(PathBuf, PathBuf)>,
    /// The manifest's bind and tmpfs mounts, after the standard ones.
    pub user_mounts: Vec<Mount>,
    /// Relative cgroup path.
    pub cgroup: String,
    /// Docker's `--privileged`: every capability (the caller's list), no seccomp and no
    /// `no_new_privs`, nothing masked, `/sys` and cgroups writable, the host's devices.
    pub privileged: bool,
    pub annotations: HashMap<String, String>,
}

/// The OCI capability sets for `names` and user `uid`: the bounding set always;
/// effective and permitted for root only (a non-root user has none, as after an execve,
/// which moby's `SetCapabilities` does too); inheritable and ambient empty (as moby does
/// since CVE-2022-24769). A name this oci-spec version does not know (a capability newer
/// than it) is left out.
pub fn capabilities(
    names: &[String],
    uid: u32,
) -> Result<oci_spec::runtime::LinuxCapabilities, oci_spec::OciSpecError> {
    let set: oci_spec::runtime::Capabilities = names
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
        .collect();
    let held = if uid == 0 {
        set.clone()
    } else {
        oci_spec::runtime::Capabilities::new()
    };
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set)
        .effective(held.clone())
        .permitted(held)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
}

/// The device cgroup rules: everything denied but creating nodes (`m`), then read-write
/// access to the standard devices, as Docker and runc allow by default
/// (`null`, `zero`, `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, `pts/*`,
/// `net/tun`). A privileged container may use every device.
fn device_rules(
    privileged: bool,
) -> Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>, oci_spec::OciSpecError> {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let rule = |allow: bool, typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access.to_owned());
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build()
    };
    if privileged {
        return Ok(vec![rule(true, LinuxDeviceType::A, None, None, "rwm")?]);
    }
    let mut rules = vec![
        rule(false, LinuxDeviceType::A, None, None, "rwm")?,
        rule(true, LinuxDeviceType::C, None, None, "m")?,
        rule(true, LinuxDeviceType::B, None, None, "m")?,
    ];
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(5)),
        (1, Some(7)),
        (1, Some(8)),
        (1, Some(9)),
        (5, Some(0)),
        (5, Some(1)),
        (5, Some(2)),
        (136, None),
        (10, Some(200)),
    ] {
        rules.push(rule(true, LinuxDeviceType::C, Some(major), minor, "rwm")?);
    }
    Ok(rules)
}

/// The host's device nodes (char and block, under `/dev` and its subfolders but `pts`,
/// `shm` and `mqueue`), for a privileged container, as Docker gives it.
fn host_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                if !matches!(path.to_str(), Some("/dev/pts" | "/dev/shm" | "/dev/mqueue")) {
                    stack.push(path);
                }
                continue;
            }
            let typ = if kind.is_char_device() {
                LinuxDeviceType::C
            } else if kind.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            // The standard nodes are created anyway; /dev/console and ptmx are special.
            if matches!(path.to_str(), Some("/dev/console" | "/dev/ptmx")) {
                continue;
            }
            let rdev = meta.rdev();
            if let Ok(d) = LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(libc::major(rdev) as i64)
                .minor(libc::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
            {
                out.push(d);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// `linux.resources` for the limits: memory in bytes, CPU as a CFS quota per 100 ms
/// period (`cpus: 1.5` is 150 ms), pids, and the device rules.
fn resources(
    l: &super::Limits,
    privileged: bool,
) -> Result<oci_spec::runtime::LinuxResources, oci_spec::OciSpecError> {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    let mut b = LinuxResourcesBuilder::default().devices(device_rules(privileged)?);
    if let Some(bytes) = l.memory {
        b = b.memory(LinuxMemoryBuilder::default().limit(bytes as i64).build()?);
    }
    if let Some(cpus) = l.cpus {
        const PERIOD: u64 = 100_000;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota((cpus * PERIOD as f64).round() as i64)
                .period(PERIOD)
                .build()?,
        );
    }
    if let Some(n) = l.pids {
        b = b.pids(LinuxPidsBuilder::default().limit(n as i64).build()?);
    }
    b.build()
}

/// The OCI mount for a manifest mount. A bind source must exist on the host: wharf never
/// creates host paths on the user's behalf (Docker's `--mount` rule). A named volume is
/// a bind of its data folder, `volume_data(name)`.
pub fn user_mount(
    m: &crate::manifest::MountSpec,
    volume_data: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<Mount, String> {
    use crate::manifest::MountSpec;
    let mut out = Mount::default();
    match m {
        MountSpec::Bind {
            source,
            target,
            read_only,
            create_host_path,
        } => {
            match std::fs::metadata(source) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && *create_host_path => {
                    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(source)
                        .and_then(|()| {
                            // The mode given to mkdir passes through the umask.
                            std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o755))
                        })
                        .map_err(|e| format!("create bind mount source {source}: {e}"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!(
                        "bind mount source {source} does not exist on the host; create it, set createHostPath: true, or fix spec.mounts"
                    ));
                }
                Err(e) => return Err(format!("bind mount source {source}: {e}")),
            }
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if *read_only {
                options.push("ro".into());
            }
            out.set_destination(PathBuf::from(target));
            out.set_typ(Some("bind".into()));
            out.set_source(Some(PathBuf::from(source)));
            out.set_options(Some(options));
        }
        MountSpec::Tmpfs { target, size, mode } => {
            let mode = format!("mode={:o}", mode.unwrap_or(0o1777));
            let mut options = vec!["nosuid".to_string(), "nodev".into(), mode];
            if let Some(bytes) = size {
                options.push(format!("size={bytes}"));
            }
            out.set_destination(PathBuf::from(target));
            out.set_typ(Some("tmpfs".into()));
            out.set_source(Some(PathBuf::from("tmpfs")));
            out.set_options(Some(options));
        }
        MountSpec::Volume {
            source,
            target,
            read_only,
        } => {
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if *read_only {
                options.push("ro".into());
            }
            out.set_destination(PathBuf::from(target));
            out.set_typ(Some("bind".into()));
            out.set_source(Some(volume_data(source)?));
            out.set_options(Some(options));
        }
    }
    Ok(out)
}

/// Builds the OCI config.
pub fn build(inputs: &ConfigInputs) -> Result<Spec, oci_spec::OciSpecError> {
    let mut spec = Spec::default();
    let user = UserBuilder::default()
        .uid(inputs.user.uid)
        .gid(inputs.user.gid)
        .additional_gids(inputs.user.additional_gids.clone())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(inputs.process.args.clone())
        .env(inputs.process.env.clone())
        .cwd(PathBuf::from(&inputs.process.cwd))
        .capabilities(capabilities(&inputs.capabilities, inputs.user.uid)?)
        // A setuid binary cannot gain privileges (issue 5 asks for it; Kubernetes'
        // allowPrivilegeEscalation: false). Privileged containers keep Docker's default.
        .no_new_privileges(!inputs.privileged)
        .build()?;
    spec.set_process(Some(process));
    spec.set_hostname(Some(inputs.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(inputs.rootfs.clone())
            .readonly(inputs.read_only_rootfs)
            .build()?,
    ));

    // The template's `/sys` and `/sys/fs/cgroup` (the container's own cgroup, through its
    // cgroup namespace) are read-only; a privileged container may write them.
    let mut mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            if inputs.privileged
                && matches!(m.destination().to_str(), Some("/sys" | "/sys/fs/cgroup"))
            {
                let options = m.options().clone().unwrap_or_default();
                m.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
            }
            m
        })
        .collect();
    // The manifest's mounts and the agent's `/etc` files, ordered by the depth of their
    // target (a stable sort, as Docker's `sortMounts`): a mount on `/etc` or `/data`
    // goes before anything below it, instead of hiding it. At equal depth the agent's
    // files come last, so `/etc/hosts` stays the one wharf keeps current.
    let mut ordered: Vec<Mount> = inputs
        .user_mounts
        .iter()
        .cloned()
        .chain(inputs.file_mounts.iter().map(|(source, target)| {
            let mut m = Mount::default();
            m.set_destination(target.clone());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(source.clone()));
            m.set_options(Some(vec!["rbind".into(), "rprivate".into()]));
            m
        }))
        .collect();
    ordered.sort_by_key(|m| m.destination().components().count());
    mounts.extend(ordered);
    spec.set_mounts(Some(mounts));

    let namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];

    let default_linux = spec.linux().clone().unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(
            namespaces
                .into_iter()
                .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
                .chain(match &inputs.network {
                    super::NetworkMode::Private => Some(
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Network)
                            .build(),
                    ),
                    super::NetworkMode::Join(path) => Some(
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Network)
                            .path(path.clone())
                            .build(),
                    ),
                    super::NetworkMode::Host => None,
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
        .masked_paths(if inputs.privileged {
            Vec::new()
        } else {
            default_linux.masked_paths().clone().unwrap_or_default()
        })
        .readonly_paths(if inputs.privileged {
            Vec::new()
        } else {
            default_linux.readonly_paths().clone().unwrap_or_default()
        })
        .devices(if inputs.privileged {
            host_devices()
        } else {
            Vec::new()
        })
        .cgroups_path(PathBuf::from(&inputs.cgroup))
        .resources(resources(&inputs.limits, inputs.privileged)?)
        .build()?;
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(inputs.annotations.clone()));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn inputs() -> ConfigInputs {
        ConfigInputs {
            hostname: "web".into(),
            process: ProcessPlan {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: "0:0".into(),
            },
            user: ResolvedUser {
                uid: 1,
                gid: 2,
                additional_gids: vec![3],
                home: "/".into(),
            },
            rootfs: "/run/wharf/containers/web/rootfs".into(),
            read_only_rootfs: true,
            capabilities: crate::runtime::process::resolve_capabilities(&[], &[]),
            limits: crate::runtime::Limits {
                memory: Some(64 << 20),
                cpus: Some(1.5),
                pids: Some(512),
            },
            network: crate::runtime::NetworkMode::Private,
            file_mounts: vec![("/state/web/etc/hosts".into(), "/etc/hosts".into())],
            user_mounts: Vec::new(),
            cgroup: "wharf/abc/web".into(),
            privileged: false,
            annotations: HashMap::from([("io.wharf.spec-hash".into(), "h".into())]),
        }
    }

    #[test]
    fn config_has_new_namespaces_and_standard_mounts() {
        let spec = build(&inputs()).unwrap();
        let ns: Vec<_> = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 6);
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        for d in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"] {
            assert!(dests.contains(&PathBuf::from(d)), "{d} missing");
        }
        assert!(dests.contains(&PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(spec.process().as_ref().unwrap().user().uid(), 1);
    }

    #[test]
    fn dockers_default_capabilities_are_in_the_config() {
        let spec = build(&inputs()).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert_eq!(bounding.len(), 14);
        assert!(bounding.contains(&oci_spec::runtime::Capability::NetRaw));
        assert!(!bounding.contains(&oci_spec::runtime::Capability::SysAdmin));
        assert!(caps.inheritable().clone().unwrap().is_empty());
    }

    #[test]
    fn limits_become_memory_cfs_quota_and_pids() {
        let spec = build(&inputs()).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 512);
    }

    #[test]
    fn the_default_profile_masks_paths_and_limits_devices_and_privileged_lifts_it() {
        let spec = build(&inputs()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        let rules = |linux: &oci_spec::runtime::Linux| {
            linux
                .resources()
                .as_ref()
                .unwrap()
                .devices()
                .clone()
                .unwrap()
        };
        let nnp = |spec: &Spec| spec.process().as_ref().unwrap().no_new_privileges();
        assert_eq!(nnp(&spec), Some(true));
        let rules_default = rules(linux);
        assert!(!rules_default[0].allow(), "deny all first");
        assert!(rules_default
            .iter()
            .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)));
        let sys = |spec: &Spec, d: &str| {
            spec.mounts()
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap()
                .options()
                .clone()
                .unwrap()
        };
        assert!(sys(&spec, "/sys").contains(&"ro".to_string()));
        assert!(sys(&spec, "/sys/fs/cgroup").contains(&"ro".to_string()));

        let spec = build(&ConfigInputs {
            privileged: true,
            ..inputs()
        })
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().unwrap().is_empty());
        assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
        assert_eq!(nnp(&spec), Some(false));
        let rules = rules(linux);
        assert!(rules.len() == 1 && rules[0].allow());
        assert!(linux
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .any(|d| d.path() == Path::new("/dev/null")));
        assert!(!sys(&spec, "/sys").contains(&"ro".to_string()));
        assert!(!sys(&spec, "/sys/fs/cgroup").contains(&"ro".to_string()));
    }

    #[test]
    fn host_network_shares_the_host_namespace() {
        let spec = build(&ConfigInputs {
            network: crate::runtime::NetworkMode::Host,
            ..inputs()
        })
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }

    #[test]
    fn a_prepared_network_namespace_is_joined_by_path() {
        let spec = build(&ConfigInputs {
            network: crate::runtime::NetworkMode::Join("/run/wharf/netns/web".into()),
            ..inputs()
        })
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some(std::path::Path::new("/run/wharf/netns/web"))
        );
    }

    #[test]
    fn etc_files_are_bind_mounted_after_the_standard_mounts() {
        let spec = build(&inputs()).unwrap();
        let last = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(last.destination(), &PathBuf::from("/etc/hosts"));
        assert_eq!(last.typ().as_deref(), Some("bind"));
    }

    #[test]
    fn user_mounts_are_ordered_by_depth_and_never_hide_the_etc_files() {
        let mut inputs = inputs();
        let tmpfs = |target: &str| {
            let mut m = Mount::default();
            m.set_destination(target.into());
            m.set_typ(Some("tmpfs".into()));
            m
        };
        inputs.user_mounts = vec![tmpfs("/data/a/b"), tmpfs("/etc"), tmpfs("/data")];
        let spec = build(&inputs).unwrap();
        let targets: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .skip_while(|t| t != "/etc")
            .collect();
        assert_eq!(targets, ["/etc", "/data", "/etc/hosts", "/data/a/b"]);
    }

    #[test]
    fn config_round_trips_through_json() {
        let spec = build(&inputs()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.annotations().as_ref().unwrap()["io.wharf.spec-hash"],
            "h"
        );
    }
}
