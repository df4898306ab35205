//! Networking as a layer around the container runtime (as CNI sits beside a CRI
//! runtime): before a container starts, its network namespace is made and attached to
//! its bridge networks (netns-first), its `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` are written, its ports are published; after it is removed, all
//! of that is undone. The reconciler drives it through the plain [`Runtime`] trait and
//! [`NetworkedRuntime::sync_networks`], so planning stays unaware of networking.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::driver::{NetworkConfig, NetworkKind, Networks, PortMapping};
use super::hosts;
use crate::runtime::{NetworkMode, Observed, Running, Runtime, RuntimeError, StartRequest};

/// One address of a container, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub network: String,
    pub ip: Ipv4Addr,
}

/// A network as `/v1/networks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    pub name: String,
    pub driver: NetworkKind,
    pub subnet: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub bridge: Option<String>,
    pub internal: bool,
    /// Attached containers and their addresses.
    pub containers: Vec<NetworkMember>,
    /// Why it is not (fully) set up, if it is not.
    pub message: Option<String>,
}

/// One container on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMember {
    pub name: String,
    pub ip: Ipv4Addr,
}

struct State {
    nets: Networks,
    /// The resolved networks of the last sync, by name.
    resolved: BTreeMap<String, NetworkConfig>,
    /// Why a declared network could not be set up.
    errors: BTreeMap<String, String>,
    /// Ports each attached container wants published.
    ports: BTreeMap<String, Vec<PortMapping>>,
}

/// A [`Runtime`] with networking around it.
pub struct NetworkedRuntime<R> {
    inner: R,
    state: Arc<Mutex<State>>,
    state_root: PathBuf,
    /// A hosts-file rewrite is scheduled ([`NetworkedRuntime::refresh_hosts_soon`]).
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
        let Ok(hostname) = std::fs::read_to_string(etc.join("hostname")) else {
            continue;
        };
        out.push((etc.join("hosts"), st.nets.hosts_file(name, hostname.trim())));
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

fn fail(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::StartFailed(e.to_string())
}

impl<R: Runtime> NetworkedRuntime<R> {
    /// Wraps `inner`; `nets` is this agent's network driver.
    pub fn new(inner: R, nets: Networks, state_root: &Path) -> Self {
        NetworkedRuntime {
            inner,
            state: Arc::new(Mutex::new(State {
                nets,
                resolved: BTreeMap::new(),
                errors: BTreeMap::new(),
                ports: BTreeMap::new(),
            })),
            state_root: state_root.to_owned(),
            hosts_pending: Arc::default(),
            hosts_writing: Arc::default(),
        }
    }

    /// Brings the host to the declared networks (plus `default`): bridges for new ones,
    /// removal of those no longer declared once no container uses them (until then the
    /// network reports why it stays, see [`NetworkedRuntime::network_statuses`]).
    pub async fn sync_networks(&self, declared: &[crate::manifest::Network], remove_stale: bool) {
        let mut st = self.state.lock().await;
        if let Err(e) = st.nets.refresh_host_routes().await {
            tracing::warn!(error = %e, "read the host's routes");
        }
        let resolved = match st.nets.resolve(declared) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "resolve networks");
                return;
            }
        };
        st.errors.clear();
        for net in resolved.iter().filter(|n| n.kind == NetworkKind::Bridge) {
            if let Err(e) = st.nets.ensure_network(net).await {
                st.errors.insert(net.name.clone(), e.to_string());
            }
        }
        let wanted: BTreeSet<String> = resolved.iter().map(|n| n.name.clone()).collect();
        let stale: Vec<String> = st
            .nets
            .networks()
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in stale.into_iter().filter(|_| remove_stale) {
            if let Err(e) = st.nets.remove_network(&name).await {
                st.errors.insert(name, e.to_string());
            }
        }
        st.resolved = resolved.into_iter().map(|n| (n.name.clone(), n)).collect();
    }

    /// What `/v1/networks` shows now (members change as containers come and go).
    pub async fn network_statuses(&self) -> Vec<NetworkStatus> {
        let st = self.state.lock().await;
        self.statuses(&st)
    }

    fn statuses(&self, st: &State) -> Vec<NetworkStatus> {
        let mut names: BTreeSet<String> = st.resolved.keys().cloned().collect();
        names.extend(st.nets.networks().keys().cloned());
        names
            .into_iter()
            .map(|name| {
                let net = st
                    .resolved
                    .get(&name)
                    .or_else(|| st.nets.networks().get(&name));
                let bridge = net.filter(|n| n.kind == NetworkKind::Bridge);
                let containers = st
                    .nets
                    .members(&name)
                    .into_iter()
                    .map(|(name, ip)| NetworkMember { name, ip })
                    .collect();
                NetworkStatus {
                    driver: net.map(|n| n.kind).unwrap_or(NetworkKind::Bridge),
                    subnet: bridge.map(|n| format!("{}/{}", n.subnet.addr, n.subnet.prefix)),
                    gateway: bridge.map(|n| n.gateway),
                    bridge: bridge.map(|n| n.bridge.clone()),
                    internal: net.is_some_and(|n| n.internal),
                    containers,
                    message: st.errors.get(&name).cloned().or_else(|| {
                        (!st.resolved.contains_key(&name)).then(|| {
                            "removed from the manifests; kept until no container uses it".into()
                        })
                    }),
                    name,
                }
            })
            .collect()
    }

    /// After an agent restart: re-attaches running containers (same addresses, no new
    /// links), restores their published ports, and removes what belongs to containers
    /// that no longer exist (links, namespace files, leases, rules).
    pub async fn adopt(&self, observed: &[Observed]) {
        let mut st = self.state.lock().await;
        for o in observed {
            let Some(meta) = o.meta.as_ref().filter(|m| !m.networks.is_empty()) else {
                continue;
            };
            let names = &meta.networks;
            let configs: Option<Vec<NetworkConfig>> =
                names.iter().map(|n| st.resolved.get(n).cloned()).collect();
            let Some(configs) = configs else { continue };
            if let Err(e) = st.nets.attach(&o.name, &configs).await {
                tracing::warn!(container = %o.name, error = %e, "re-attach networks");
                continue;
            }
            st.ports.insert(o.name.clone(), meta.ports.clone());
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
            // Written without the state lock, which starts and removals wait for.
            tokio::task::spawn_blocking(move || write_hosts_files(&files))
                .await
                .ok();
        });
    }

    async fn start_networked(&self, mut req: StartRequest) -> Result<Running, RuntimeError> {
        let mut st = self.state.lock().await;
        let mut configs = Vec::new();
        for name in &req.networks {
            match st.resolved.get(name) {
                Some(n) if n.kind == NetworkKind::Bridge => configs.push(n.clone()),
                Some(_) => {
                    return Err(fail(format!(
                        "network {name:?} cannot be combined with others: host and none stand alone"
                    )))
                }
                None => {
                    return Err(fail(format!(
                        "network {name:?} is not declared: add a Network manifest named {name:?}"
                    )))
                }
            }
        }
        // A network whose config changed (a new subnet) is recreated here once its old
        // containers are gone; until then this start fails and is retried with backoff.
        for net in &configs {
            if st.nets.networks().get(&net.name) != Some(net) {
                st.nets.ensure_network(net).await.map_err(fail)?;
            }
        }
        let (netns, attached) = st.nets.attach(&req.name, &configs).await.map_err(fail)?;
        let ports: Vec<PortMapping> = req.ports.iter().map(PortMapping::from).collect();
        let mut wanted = st.ports.clone();
        wanted.insert(req.name.clone(), ports.clone());
        // Rebuilding the table costs an `nft` run: skip it when this container
        // publishes nothing now and published nothing before.
        let unchanged = ports.is_empty() && st.ports.get(&req.name).is_none_or(|p| p.is_empty());
        let errors = if unchanged {
            Vec::new()
        } else {
            match st.nets.apply_ports(&wanted) {
                Ok(errors) => errors,
                Err(e) => vec![(req.name.clone(), e.to_string())],
            }
        };
        if let Some((_, e)) = errors.iter().find(|(c, _)| *c == req.name) {
            let message = format!("cannot publish ports: {e}");
            let _ = st.nets.detach(&req.name).await;
            return Err(fail(message));
        }
        st.ports = wanted;

        let resolv = hosts::host_resolv_conf().unwrap_or_default();
        req.etc_files = vec![
            ("hostname".into(), hosts::render_hostname(&req.hostname)),
            ("hosts".into(), st.nets.hosts_file(&req.name, &req.hostname)),
            ("resolv.conf".into(), hosts::render_resolv_conf(&resolv)),
        ];
        req.meta.addresses = attached
            .iter()
            .map(|n| Address {
                network: n.network.clone(),
                ip: n.ip,
            })
            .collect();
        req.meta.networks = req.networks.clone();
        req.meta.ports = ports;
        req.network = NetworkMode::Join(netns);
        let name = req.name.clone();
        // Not held across the runtime's start, most of a start's time: other containers
        // attach meanwhile (held, it made networked starts run one at a time). The attachment is made, so nothing can take this
        // container's address or remove a network it is on.
        drop(st);
        let started = self.inner.start(req).await;
        let mut st = self.state.lock().await;
        match started {
            Ok(r) => {
                // Everyone, this container too: a peer that attached while it started
                // is missing from the hosts file it was given.
                self.refresh_hosts_soon();
                Ok(r)
            }
            Err(e) => {
                // Undo the attachment; a restart attaches again with the same address.
                st.ports.remove(&name);
                let ports = st.ports.clone();
                let _ = st.nets.apply_ports(&ports);
                if let Err(d) = st.nets.detach(&name).await {
                    tracing::warn!(container = %name, error = %d, "detach after a failed start");
                }
                Err(e)
            }
        }
    }
}

impl<R: Runtime> Runtime for NetworkedRuntime<R> {
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.inner.list().await
    }

    async fn start(&self, req: StartRequest) -> Result<Running, RuntimeError> {
        if req.networks.is_empty() {
            return self.inner.start(req).await;
        }
        self.start_networked(req).await
    }

    async fn stop(&self, name: &str, signal: Signal, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(name, signal, grace).await
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove(name).await?;
        let mut st = self.state.lock().await;
        if st.ports.remove(name).is_some() {
            let ports = st.ports.clone();
            if let Err(e) = st.nets.apply_ports(&ports) {
                tracing::warn!(error = %e, "unpublish ports");
            }
        }
        st.nets
            .detach(name)
            .await
            .map_err(|e| RuntimeError::Remove {
                name: name.to_owned(),
                message: e.to_string(),
            })?;
        drop(st);
        self.refresh_hosts_soon();
        Ok(())
    }
}
