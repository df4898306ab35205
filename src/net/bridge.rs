//! The real [`Network`]: bridges, veths, addresses, published ports and hosts files,
//! through the driver ([`super::driver::Networks`]), which is not internally
//! synchronised: one lock around it. Containers are attached before they start
//! (netns-first, as CNI does): their namespace, links, addresses, ports and
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` are ready when the runtime
//! creates them, and detached after they are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::driver::{NetError, NetworkConfig, NetworkKind, Networks, PortMapping};
use super::hosts;
use super::seam::{Address, AttachSpec, Attached, Network, NetworkMember, NetworkStatus};
use crate::runtime::Observed;

struct State {
    nets: Networks,
    /// The resolved networks of the last resolve, by name (`host` and `none` too).
    resolved: BTreeMap<String, NetworkConfig>,
    /// Ports each attached container wants published.
    ports: BTreeMap<String, Vec<PortMapping>>,
    /// The declared networks of the last resolve: the host's routes are read again
    /// when they change (a new network's subnet must avoid them).
    last_declared: Option<Vec<crate::manifest::Network>>,
}

/// Bridge networking of one agent instance.
pub struct BridgeNetwork {
    state: Arc<Mutex<State>>,
    state_root: PathBuf,
    /// A hosts-file rewrite is scheduled ([`BridgeNetwork::refresh_hosts_soon`]).
    hosts_pending: Arc<AtomicBool>,
    /// Held while a rewrite computes and writes the files.
    hosts_writing: Arc<Mutex<()>>,
}

/// How long a hosts-file rewrite waits for more starts and removals to share it.
const HOSTS_BATCH: Duration = Duration::from_millis(50);

/// The `/etc/hosts` file of every attached container and what it should hold.
fn hosts_files(st: &State, state_root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for name in st.nets.attachments().keys() {
        let etc = state_root.join("containers").join(name).join("etc");
        // Bounded: the file is the container's `/etc/hostname`, which it may rewrite.
        let mut hostname = String::new();
        let read = std::fs::File::open(etc.join("hostname")).and_then(|f| {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 256), &mut hostname)
        });
        if read.is_err() {
            continue;
        }
        let hostname = hostname.lines().next().unwrap_or_default().trim();
        out.push((etc.join("hosts"), st.nets.hosts_file(name, hostname)));
    }
    out
}

/// Rewrites hosts files (peers came or went). In place: they are bind-mounted.
fn write_hosts_files(files: &[(PathBuf, String)]) {
    for (path, content) in files {
        match hosts::write_in_place(path, content) {
            Ok(()) => {}
            // Its container is being removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "update /etc/hosts"),
        }
    }
}

impl BridgeNetwork {
    /// `nets` is this agent's network driver.
    pub fn new(nets: Networks, state_root: &Path) -> Self {
        BridgeNetwork {
            state: Arc::new(Mutex::new(State {
                nets,
                resolved: BTreeMap::new(),
                ports: BTreeMap::new(),
                last_declared: None,
            })),
            state_root: state_root.to_owned(),
            hosts_pending: Arc::default(),
            hosts_writing: Arc::default(),
        }
    }

    /// Removes everything this instance made (`wharf reset`): attachments, bridges,
    /// links, the firewall table and the network records.
    pub async fn teardown(&self) -> Result<(), NetError> {
        let mut st = self.state.lock().await;
        st.ports.clear();
        st.resolved.clear();
        st.nets.teardown().await
    }

    /// Rewrites `/etc/hosts` of every attached container, once, soon: starts and
    /// removals that come together (a folder of manifests dropped at once, a teardown)
    /// share one rewrite. Rewriting all files at each start made converging N
    /// containers write N² files (40,000 for 200, seconds of CPU after the last start).
    fn refresh_hosts_soon(&self) {
        if self.hosts_pending.swap(true, Ordering::SeqCst) {
            return; // one is scheduled, and writes what the lock holds when it runs
        }
        let (state, root, pending) = (
            self.state.clone(),
            self.state_root.clone(),
            self.hosts_pending.clone(),
        );
        let writing = self.hosts_writing.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOSTS_BATCH).await;
            // One rewrite at a time, so an older one never lands after a newer one.
            let _writing = writing.lock().await;
            let files = {
                let st = state.lock().await;
                // Under the lock: a change after this (changes take the lock) schedules
                // another rewrite.
                pending.store(false, Ordering::SeqCst);
                hosts_files(&st, &root)
            };
            // Written without the state lock, which attaches and detaches wait for.
            tokio::task::spawn_blocking(move || write_hosts_files(&files))
                .await
                .ok();
        });
    }
}

impl Network for BridgeNetwork {
    async fn resolve(
        &self,
        declared: &[crate::manifest::Network],
    ) -> Result<Vec<NetworkConfig>, NetError> {
        let mut st = self.state.lock().await;
        if st.last_declared.as_deref() != Some(declared) {
            if let Err(e) = st.nets.refresh_host_routes().await {
                tracing::warn!(error = %e, "read the host's routes");
            }
            st.last_declared = Some(declared.to_vec());
        }
        let resolved = st.nets.resolve(declared)?;
        st.resolved = resolved
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        Ok(resolved
            .into_iter()
            .filter(|n| n.kind == NetworkKind::Bridge)
            .collect())
    }

    async fn list(&self) -> BTreeMap<String, NetworkConfig> {
        let st = self.state.lock().await;
        st.nets
            .networks()
            .iter()
            .filter(|(_, n)| n.kind == NetworkKind::Bridge)
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect()
    }

    async fn ensure(&self, net: &NetworkConfig) -> Result<(), NetError> {
        self.state.lock().await.nets.ensure_network(net).await
    }

    async fn remove(&self, name: &str) -> Result<(), NetError> {
        self.state.lock().await.nets.remove_network(name).await
    }

    async fn attach(&self, spec: &AttachSpec) -> Result<Attached, NetError> {
        let mut st = self.state.lock().await;
        let mut configs = Vec::new();
        for name in &spec.networks {
            let not_ready = || NetError::NetworkNotReady {
                network: name.clone(),
                container: spec.container.clone(),
            };
            match st.resolved.get(name) {
                Some(n) if n.kind == NetworkKind::Bridge => {
                    // Made, and made as resolved: a network whose subnet changes is
                    // recreated (by the reconciler) before anything attaches to it.
                    if st.nets.networks().get(name) != Some(n) {
                        return Err(not_ready());
                    }
                    configs.push(n.clone());
                }
                Some(_) => {
                    return Err(NetError::InvalidAttach {
                        container: spec.container.clone(),
                        reason: format!(
                            "network {name:?} cannot be combined with others: host and none stand alone"
                        ),
                    })
                }
                None => return Err(not_ready()),
            }
        }
        let (netns, attached) = st.nets.attach(&spec.container, &configs).await?;
        st.nets.set_standby(&spec.container, spec.standby);
        // A standby instance's ports are published at its handover.
        let ports = if spec.standby {
            Vec::new()
        } else {
            spec.ports.clone()
        };
        let mut wanted = st.ports.clone();
        wanted.insert(spec.container.clone(), ports.clone());
        // Rebuilding the table costs an `nft` run: skip it when this container
        // publishes nothing now and published nothing before.
        let unchanged =
            ports.is_empty() && st.ports.get(&spec.container).is_none_or(|p| p.is_empty());
        let errors = if unchanged {
            Vec::new()
        } else {
            match st.nets.apply_ports(&wanted) {
                Ok(errors) => errors,
                Err(e) => vec![(spec.container.clone(), e.to_string())],
            }
        };
        if let Some((_, reason)) = errors.iter().find(|(c, _)| *c == spec.container) {
            let err = NetError::PortsUnavailable {
                container: spec.container.clone(),
                reason: reason.clone(),
            };
            if let Err(e) = st.nets.detach(&spec.container).await {
                tracing::warn!(container = %spec.container, error = %e, "detach after ports failed");
            }
            return Err(err);
        }
        st.ports = wanted;
        let resolv = hosts::host_resolv_conf().unwrap_or_default();
        Ok(Attached {
            netns,
            etc_files: vec![
                ("hostname".into(), hosts::render_hostname(&spec.hostname)),
                (
                    "hosts".into(),
                    st.nets.hosts_file(&spec.container, &spec.hostname),
                ),
                ("resolv.conf".into(), hosts::render_resolv_conf(&resolv)),
            ],
            addresses: attached
                .iter()
                .map(|n| Address {
                    network: n.network.clone(),
                    ip: n.ip,
                })
                .collect(),
            ports: spec.ports.clone(),
        })
    }

    async fn handover(&self, from: &str, to: &str, ports: &[PortMapping]) -> Result<(), NetError> {
        let _writing = self.hosts_writing.lock().await;
        let files = {
            let mut st = self.state.lock().await;
            if !st.nets.attachments().contains_key(to) {
                return Err(NetError::InvalidAttach {
                    container: to.to_owned(),
                    reason: "cannot hand over to an instance that is not attached".into(),
                });
            }
            let mut wanted = st.ports.clone();
            wanted.remove(from);
            wanted.insert(to.to_owned(), ports.to_vec());
            if wanted != st.ports {
                // One table, one batch: the old DNAT rules go as the new ones come.
                let errors = st.nets.apply_ports(&wanted)?;
                if let Some((_, reason)) = errors.iter().find(|(c, _)| c == to) {
                    let reason = reason.clone();
                    let old = st.ports.clone();
                    if let Err(e) = st.nets.apply_ports(&old) {
                        tracing::warn!(container = %from, error = %e, "restore published ports");
                    }
                    return Err(NetError::PortsUnavailable {
                        container: to.to_owned(),
                        reason,
                    });
                }
                st.ports = wanted;
            }
            st.nets.set_standby(to, false);
            st.nets.set_standby(from, true);
            hosts_files(&st, &self.state_root)
        };
        // At once, not batched: peers resolve the name to the new instance from now on.
        tokio::task::spawn_blocking(move || write_hosts_files(&files))
            .await
            .ok();
        Ok(())
    }

    async fn detach(&self, container: &str) -> Result<(), NetError> {
        let mut st = self.state.lock().await;
        if st.ports.remove(container).is_some_and(|p| !p.is_empty()) {
            let ports = st.ports.clone();
            if let Err(e) = st.nets.apply_ports(&ports) {
                tracing::warn!(error = %e, "unpublish ports");
            }
        }
        let detached = st.nets.detach(container).await;
        drop(st);
        self.refresh_hosts_soon();
        detached
    }

    async fn started(&self, _container: &str) {
        // Everyone, this container too: a peer that attached while it started is
        // missing from the hosts file it was given.
        self.refresh_hosts_soon();
    }

    async fn adopt(&self, observed: &[Observed]) {
        let mut st = self.state.lock().await;
        // Which instance of each container serves (an update may have been cut short).
        let serving: Vec<String> = crate::runtime::instance::roles(observed.to_vec())
            .into_values()
            .map(|i| i.current.name)
            .collect();
        for o in observed {
            let Some(meta) = o.meta.as_ref().filter(|m| !m.networks.is_empty()) else {
                continue;
            };
            let configs: Option<Vec<NetworkConfig>> = meta
                .networks
                .iter()
                .map(|n| st.resolved.get(n).cloned())
                .collect();
            let Some(configs) = configs else { continue };
            if let Err(e) = st.nets.attach(&o.name, &configs).await {
                tracing::warn!(container = %o.name, error = %e, "re-attach networks");
                continue;
            }
            let serves = serving.contains(&o.name);
            st.nets.set_standby(&o.name, !serves);
            st.ports.insert(
                o.name.clone(),
                if serves {
                    meta.ports.clone()
                } else {
                    Vec::new()
                },
            );
        }
        let known: Vec<String> = observed.iter().map(|o| o.name.clone()).collect();
        match st.nets.cleanup_orphans(&known).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed network leftovers")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "network cleanup"),
        }
        let ports = st.ports.clone();
        if let Err(e) = st.nets.apply_ports(&ports) {
            tracing::warn!(error = %e, "restore published ports");
        }
        // Peers that went while the agent was down leave the hosts files, and a file a
        // crash cut short is whole again (they are written without fsync).
        write_hosts_files(&hosts_files(&st, &self.state_root));
    }

    async fn forget_others(&self, known: &[String]) {
        let mut st = self.state.lock().await;
        st.ports.retain(|c, _| known.contains(c));
        match st.nets.cleanup_orphans(known).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(
                    ?removed,
                    "removed network leftovers of containers that are gone"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "network sweep"),
        }
    }

    async fn repair(&self, firewall: bool) -> Result<(), NetError> {
        let repaired = self.state.lock().await.nets.repair(firewall).await?;
        if !repaired.is_empty() {
            tracing::warn!(containers = ?repaired, "network links were gone; attached again");
        }
        Ok(())
    }

    async fn statuses(&self) -> Vec<NetworkStatus> {
        let st = self.state.lock().await;
        let mut names: std::collections::BTreeSet<String> = st.resolved.keys().cloned().collect();
        names.extend(st.nets.networks().keys().cloned());
        names
            .into_iter()
            .map(|name| {
                let net = st
                    .resolved
                    .get(&name)
                    .or_else(|| st.nets.networks().get(&name));
                let bridge = net.filter(|n| n.kind == NetworkKind::Bridge);
                // By container name; an update's standby instance is not a member yet.
                let containers = st
                    .nets
                    .members(&name)
                    .into_iter()
                    .filter(|(instance, _)| st.nets.serving(instance))
                    .map(|(instance, ip)| NetworkMember {
                        name: crate::runtime::instance::container_of(&instance).to_owned(),
                        ip,
                    })
                    .collect();
                NetworkStatus {
                    driver: net.map(|n| n.kind).unwrap_or(NetworkKind::Bridge),
                    subnet: bridge.map(|n| format!("{}/{}", n.subnet.addr, n.subnet.prefix)),
                    gateway: bridge.map(|n| n.gateway),
                    bridge: bridge.map(|n| n.bridge.clone()),
                    internal: net.is_some_and(|n| n.internal),
                    containers,
                    message: None,
                    name,
                }
            })
            .collect()
    }
}
