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
    pub annotations: HashMap<String, String>,
}

/// The OCI capability sets for `names`: bounding, effective and permitted; inheritable
/// and ambient empty (as moby does since CVE-2022-24769). A name this oci-spec version
/// does not know (a capability newer than it) is left out.
fn capabilities(
    names: &[String],
) -> Result<oci_spec::runtime::LinuxCapabilities, oci_spec::OciSpecError> {
    let set: oci_spec::runtime::Capabilities = names
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
        .collect();
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
}

/// `linux.resources` for the limits: memory in bytes, CPU as a CFS quota per 100 ms
/// period (`cpus: 1.5` is 150 ms), pids.
fn resources(
    l: &super::Limits,
) -> Result<oci_spec::runtime::LinuxResources, oci_spec::OciSpecError> {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    let mut b = LinuxResourcesBuilder::default();
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
        } => {
            if std::fs::metadata(source).is_err() {
                return Err(format!(
                    "bind mount source {source} does not exist on the host; create it or fix spec.mounts"
                ));
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
        MountSpec::Tmpfs { target, size } => {
            let mut options = vec!["nosuid".to_string(), "nodev".into(), "mode=1777".into()];
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
        .capabilities(capabilities(&inputs.capabilities)?)
        // Seccomp comes with the rest of the isolation work (issue 5).
        .no_new_privileges(false)
        .build()?;
    spec.set_process(Some(process));
    spec.set_hostname(Some(inputs.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(inputs.rootfs.clone())
            .readonly(inputs.read_only_rootfs)
            .build()?,
    ));

    // The default template also mounts `/sys/fs/cgroup`; on a cgroup v1 host that needs
    // one mount per controller, which comes with resource limits. Leave it out for now.
    let mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.destination() != &PathBuf::from("/sys/fs/cgroup"))
        .chain(inputs.file_mounts.iter().map(|(source, target)| {
            let mut m = Mount::default();
            m.set_destination(target.clone());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(source.clone()));
            m.set_options(Some(vec!["rbind".into(), "rprivate".into()]));
            m
        }))
        .chain(inputs.user_mounts.iter().cloned())
        .collect();
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
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .cgroups_path(PathBuf::from(&inputs.cgroup))
        .resources(resources(&inputs.limits)?)
        .build()?;
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(inputs.annotations.clone()));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!dests.contains(&PathBuf::from("/sys/fs/cgroup")));
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
