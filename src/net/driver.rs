//! The network driver the reconciler calls: resolves declared networks, makes
//! their bridges, attaches containers (netns-first), publishes ports and cleans up
//! after itself and after a crash.
//!
//! It composes the building blocks: [`ipam`](super::ipam) for addresses,
//! [`link`](super::link) for bridges and veths, [`netns`](super::netns) for the
//! container's namespace file, [`firewall`](super::firewall) for NAT and ports.
//! Structure after netavark's `src/network/bridge.rs`: setup in order and undo what
//! this call made on failure, reporting both errors; teardown is best effort and
//! collects every error.
//!
//! What is on disk (under the state root, `networks/`): `leases.json` (the
//! addresses) and `networks.json` (bridge indices and the networks whose bridge
//! exists, see `records.rs`), both saved atomically after every change. Attachments
//! are not stored: they are rebuilt from leases, namespace files and link names when
//! the reconciler calls [`Networks::attach`] again for a running container, which
//! re-adopts what the kernel still has instead of re-creating it.
//!
//! Threads: host-side netlink runs on the caller's thread (a tokio worker in the
//! host namespace); container-side work runs on dedicated threads that joined the
//! container's namespace (`link::in_netns`), reached through `spawn_blocking`.

mod ports;
mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::firewall::{self, FirewallError, FirewallPlan, NetRules, PortRule};
use super::ipam::{IpamError, LeaseStore, Leases};
use super::link::{self, AttachRequest, LinkError, Netlink};
use super::netns::{self, NetnsError};
use crate::manifest::{Ipv4Cidr, Protocol, DEFAULT_NETWORK_SUBNET};

use records::{RecordStore, Records};

/// The built-in network every container without `networks` joins.
pub const DEFAULT_NETWORK: &str = "default";
/// Docker's `host`: the container shares the host's network namespace.
pub const HOST_NETWORK: &str = "host";
/// Docker's `none`: a namespace with only `lo`.
pub const NONE_NETWORK: &str = "none";

/// The namespace path [`Networks::attach`] returns for `host`: the caller's own.
/// A runtime that sees it (or [`NetworkKind::Host`]) should join nothing.
pub const HOST_NETNS: &str = "/proc/self/ns/net";

/// What went wrong in the driver; each variant names the failed operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("loading network records from {}: {source}", path.display())]
    LoadRecords { path: PathBuf, source: io::Error },
    #[error("saving network records to {}: {source}", path.display())]
    SaveRecords { path: PathBuf, source: io::Error },
    #[error("listing network namespaces in {}: {source}", path.display())]
    ListNetns { path: PathBuf, source: io::Error },
    #[error("no bridge index left for network {network:?}")]
    AllocateBridge { network: String },
    /// `remove_network`, or a subnet change in `ensure_network`, while containers
    /// still use the network.
    #[error("cannot {action} network {network:?}: still used by container(s) {}", containers.join(", "))]
    NetworkInUse {
        network: String,
        action: &'static str,
        containers: Vec<String>,
    },
    #[error("network {network:?} has no pool: call ensure_network before attaching {container:?}")]
    NetworkNotReady { network: String, container: String },
    #[error("cannot attach container {container:?}: {reason}")]
    InvalidAttach { container: String, reason: String },
    #[error("attaching container {container:?}: {error}{}", cleanup_message(.cleanup))]
    AttachFailed {
        container: String,
        error: Box<NetError>,
        cleanup: Vec<NetError>,
    },
    #[error("a blocking network task failed: {0}")]
    Join(String),
    #[error("{}", several_message(.0))]
    Several(Vec<NetError>),
}

fn cleanup_message(cleanup: &[NetError]) -> String {
    if cleanup.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = cleanup.iter().map(ToString::to_string).collect();
        format!("; cleaning up also failed: {}", parts.join("; "))
    }
}

fn several_message(errors: &[NetError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{} errors: {}", errors.len(), parts.join("; "))
}

fn collected(errors: Vec<NetError>) -> Result<(), NetError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        _ => Err(NetError::Several(errors)),
    }
}

/// The three network drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Bridge,
    Host,
    None,
}

/// A resolved network.
///
/// For `host` and `none` (listed by [`Networks::resolve`] as Docker lists them)
/// `subnet` is `0.0.0.0/0`, `gateway` is `0.0.0.0` and `bridge` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub name: String,
    pub kind: NetworkKind,
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// The bridge's interface name, `wh<instance>b<index>`.
    pub bridge: String,
}

impl NetworkConfig {
    fn special(name: &str, kind: NetworkKind) -> Self {
        NetworkConfig {
            name: name.into(),
            kind,
            subnet: Ipv4Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            },
            gateway: Ipv4Addr::UNSPECIFIED,
            internal: false,
            bridge: String::new(),
        }
    }
}

/// A published port of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl From<&crate::manifest::PortSpec> for PortMapping {
    fn from(p: &crate::manifest::PortSpec) -> Self {
        PortMapping {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol,
        }
    }
}

/// A container's interface on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub network: String,
    /// `eth0`, `eth1`… in the order the networks were given to `attach`.
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The container interface's MAC, `aa:bb:…`.
    pub mac: String,
    pub host_veth: String,
}

/// What one container is attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerAttachment {
    /// Its namespace file; `None` for `host`.
    pub netns: Option<PathBuf>,
    /// One per bridge network, in interface order; empty for `host` and `none`.
    pub nets: Vec<ContainerNet>,
}

/// What [`Networks::attach`] made in this call, to undo on failure.
#[derive(Default)]
struct Made {
    netns: Option<PathBuf>,
    veths: Vec<String>,
    /// Networks on which this call took a new lease.
    leases: Vec<String>,
}

/// The network driver of one agent instance. Not internally synchronised: the
/// caller serialises calls (one `Mutex` around it).
pub struct Networks {
    instance: String,
    run_dir: PathBuf,
    lease_store: LeaseStore,
    leases: Leases,
    record_store: RecordStore,
    records: Records,
    netlink: Netlink,
    attached: BTreeMap<String, ContainerAttachment>,
    /// The port rules in the applied firewall table, per container.
    published: BTreeMap<String, Vec<PortRule>>,
}

impl Networks {
    /// Loads leases and network records and opens a netlink socket in the calling
    /// thread's network namespace. Needs a tokio runtime with IO enabled.
    pub fn new(instance: &str, state_root: &Path, run_dir: &Path) -> Result<Self, NetError> {
        let lease_store = LeaseStore::new(state_root);
        let leases = lease_store.load()?;
        let record_store = RecordStore::new(state_root);
        let records = record_store
            .load()
            .map_err(|source| NetError::LoadRecords {
                path: record_store.path.clone(),
                source,
            })?;
        Ok(Networks {
            instance: instance.to_owned(),
            run_dir: run_dir.to_owned(),
            lease_store,
            leases,
            record_store,
            records,
            netlink: Netlink::connect()?,
            attached: BTreeMap::new(),
            published: BTreeMap::new(),
        })
    }

    /// The built-in `default`, then every declared network (subnets allocated from
    /// 10.89.0.0/16 for those without one, stable across calls and restarts), then
    /// `host` and `none`. Bridge names come from indices kept in `networks.json`
    /// (see `records.rs`). Saves the records if an index was assigned or freed.
    pub fn resolve(
        &mut self,
        declared: &[crate::manifest::Network],
    ) -> Result<Vec<NetworkConfig>, NetError> {
        let mut taken: Vec<Ipv4Cidr> = declared.iter().filter_map(|n| n.spec.subnet).collect();
        taken.push(DEFAULT_NETWORK_SUBNET);
        let mut out = Vec::with_capacity(declared.len() + 3);
        // Free the indices of networks gone from the manifests (and never made)
        // first, so a network declared in the same edit can take one.
        let keep: BTreeSet<&str> = declared
            .iter()
            .map(|n| n.metadata.name.as_str())
            .chain([DEFAULT_NETWORK])
            .collect();
        let mut changed = self.records.prune(&keep);
        let mut bridge = |records: &mut Records, name: &str| {
            let (index, new) = records
                .index_for(name)
                .ok_or_else(|| NetError::AllocateBridge {
                    network: name.to_owned(),
                })?;
            changed |= new;
            Ok::<_, NetError>(link::bridge_name(&self.instance, index))
        };
        out.push(NetworkConfig {
            name: DEFAULT_NETWORK.into(),
            kind: NetworkKind::Bridge,
            subnet: DEFAULT_NETWORK_SUBNET,
            gateway: DEFAULT_NETWORK_SUBNET.first_host(),
            internal: false,
            bridge: bridge(&mut self.records, DEFAULT_NETWORK)?,
        });
        for n in declared {
            let name = n.metadata.name.as_str();
            let subnet = match n.spec.subnet {
                Some(s) => s,
                None => {
                    let s = self.leases.auto_subnet(name, &taken)?;
                    taken.push(s);
                    s
                }
            };
            out.push(NetworkConfig {
                name: name.to_owned(),
                kind: NetworkKind::Bridge,
                subnet,
                gateway: n.spec.gateway.unwrap_or_else(|| subnet.first_host()),
                internal: n.spec.internal,
                bridge: bridge(&mut self.records, name)?,
            });
        }
        out.push(NetworkConfig::special(HOST_NETWORK, NetworkKind::Host));
        out.push(NetworkConfig::special(NONE_NETWORK, NetworkKind::None));
        if changed {
            self.save_records()?;
        }
        Ok(out)
    }

    /// Create-or-keep the bridge of `net` with its gateway, its address pool, and
    /// (non-internal) `route_localnet` on the bridge and IPv4 forwarding; rebuilds
    /// the firewall when the network is new or changed. A changed subnet, gateway or
    /// bridge replaces the bridge, and is refused while containers are attached
    /// (replace them first, per the manifest contract). `host`/`none`: nothing to do.
    pub async fn ensure_network(&mut self, net: &NetworkConfig) -> Result<(), NetError> {
        if net.kind != NetworkKind::Bridge {
            return Ok(());
        }
        let previous = self.records.ensured.get(&net.name).cloned();
        if let Some(old) = previous.as_ref().filter(|old| *old != net) {
            let addressing_changed =
                (old.subnet, old.gateway, &old.bridge) != (net.subnet, net.gateway, &net.bridge);
            if addressing_changed {
                let containers = self.containers_on(&net.name);
                if !containers.is_empty() {
                    return Err(NetError::NetworkInUse {
                        network: net.name.clone(),
                        action: "change the subnet of",
                        containers,
                    });
                }
                self.netlink.remove_bridge(&old.bridge).await?;
            }
        }
        self.leases
            .ensure_pool(&net.name, net.subnet, Some(net.gateway))?;
        self.save_leases()?;
        self.netlink
            .ensure_bridge(&net.bridge, net.gateway, net.subnet.prefix)
            .await?;
        if !net.internal {
            firewall::set_route_localnet(&net.bridge)?;
            firewall::enable_forwarding()?;
        }
        if previous.as_ref() != Some(net) {
            self.records.ensured.insert(net.name.clone(), net.clone());
            self.save_records()?;
            self.sync_firewall()?;
        }
        Ok(())
    }

    /// Removes the bridge, pool and records of `name`; refuses while containers are
    /// attached (the error names them). Unknown, `host` and `none`: success.
    pub async fn remove_network(&mut self, name: &str) -> Result<(), NetError> {
        let containers = self.containers_on(name);
        if !containers.is_empty() {
            return Err(NetError::NetworkInUse {
                network: name.to_owned(),
                action: "remove",
                containers,
            });
        }
        let bridge = match self.records.ensured.get(name) {
            Some(n) => Some(n.bridge.clone()),
            None => self
                .records
                .indices
                .get(name)
                .map(|i| link::bridge_name(&self.instance, *i)),
        };
        if let Some(bridge) = &bridge {
            self.netlink.remove_bridge(bridge).await?;
        }
        if self.leases.remove_pool(name).is_some() {
            self.save_leases()?;
        }
        let was_ensured = self.records.ensured.remove(name).is_some();
        if was_ensured | self.records.indices.remove(name).is_some() {
            self.save_records()?;
        }
        if was_ensured {
            self.sync_firewall()?;
        }
        Ok(())
    }

    /// Attaches `container` (netns-first): creates `<run>/netns/<container>` if
    /// missing, then for each network, in order, leases an address (the same one it
    /// held, if any) and connects a veth named `eth0`, `eth1`… Idempotent: an
    /// already attached container (also after an agent restart) keeps its links and
    /// addresses. Leases it holds on networks not in `networks` are released. On
    /// failure everything this call made is undone and both errors are reported.
    ///
    /// `host` (alone) returns [`HOST_NETNS`] and makes nothing; `none` (alone) makes
    /// only the namespace.
    pub async fn attach(
        &mut self,
        container: &str,
        networks: &[NetworkConfig],
    ) -> Result<(PathBuf, Vec<ContainerNet>), NetError> {
        let invalid = |reason: &str| NetError::InvalidAttach {
            container: container.to_owned(),
            reason: reason.to_owned(),
        };
        if networks.is_empty() {
            return Err(invalid("no network given"));
        }
        let special = networks.iter().any(|n| n.kind != NetworkKind::Bridge);
        if special && networks.len() != 1 {
            return Err(invalid(
                "`host` and `none` cannot be combined with other networks",
            ));
        }
        let names: BTreeSet<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        if names.len() != networks.len() {
            return Err(invalid("a network is listed twice"));
        }
        if networks[0].kind == NetworkKind::Host {
            self.attached
                .insert(container.to_owned(), ContainerAttachment::default());
            return Ok((PathBuf::from(HOST_NETNS), Vec::new()));
        }
        for n in networks.iter().filter(|n| n.kind == NetworkKind::Bridge) {
            if self
                .leases
                .pool(&n.name)
                .is_none_or(|p| p.subnet() != n.subnet)
            {
                return Err(NetError::NetworkNotReady {
                    network: n.name.clone(),
                    container: container.to_owned(),
                });
            }
        }

        let path = netns::path_for(&self.run_dir, container);
        let existed = netns::exists(&path);
        let mut made = Made::default();
        if !existed {
            let p = path.clone();
            blocking(move || netns::create(&p).map_err(NetError::from)).await?;
            made.netns = Some(path.clone());
        }
        let mut nets = Vec::new();
        for (i, net) in networks
            .iter()
            .filter(|n| n.kind == NetworkKind::Bridge)
            .enumerate()
        {
            match self
                .attach_one(container, &path, existed, i, net, &mut made)
                .await
            {
                Ok(n) => nets.push(n),
                Err(error) => {
                    let cleanup = self.undo(container, made).await;
                    return Err(NetError::AttachFailed {
                        container: container.to_owned(),
                        error: Box::new(error),
                        cleanup,
                    });
                }
            }
        }
        // Networks it left (a changed `networks` replaces the container, but a
        // re-attach must not keep the old interface and address either).
        let left: Vec<String> = self
            .leases
            .pools()
            .filter(|p| p.lease(container).is_some() && !names.contains(p.network()))
            .map(|p| p.network().to_owned())
            .collect();
        let mut errors = Vec::new();
        for network in left {
            self.detach_one(container, &network, &mut errors).await;
        }
        collected(errors)?;
        self.attached.insert(
            container.to_owned(),
            ContainerAttachment {
                netns: Some(path.clone()),
                nets: nets.clone(),
            },
        );
        Ok((path, nets))
    }

    /// One network of [`attach`](Self::attach): re-adopt what the kernel has, or
    /// make it. Records what it made in `made`.
    async fn attach_one(
        &mut self,
        container: &str,
        path: &Path,
        netns_existed: bool,
        index: usize,
        net: &NetworkConfig,
        made: &mut Made,
    ) -> Result<ContainerNet, NetError> {
        let ifname = format!("eth{index}");
        let host_veth = link::veth_name(&self.instance, container, &net.name);
        let lease = self.leases.pool(&net.name).and_then(|p| p.lease(container));
        let done = |ip: Ipv4Addr, mac: String| ContainerNet {
            network: net.name.clone(),
            ifname: ifname.clone(),
            ip,
            prefix_len: net.subnet.prefix,
            gateway: net.gateway,
            mac,
            host_veth: host_veth.clone(),
        };

        if netns_existed {
            if let Some((ip, mac)) = self.adoptable(path, &ifname, &host_veth, lease, net).await {
                if lease.is_none() {
                    // Found in the kernel but not in the leases (lost or older file).
                    self.pool_mut(&net.name, container)?
                        .reserve(container, ip)?;
                    made.leases.push(net.name.clone());
                    self.save_leases()?;
                }
                return Ok(done(ip, mac));
            }
        }
        // A leftover host end (and with it its peer) would clash with the new pair.
        self.netlink.detach(&host_veth).await?;
        let ip = self.pool_mut(&net.name, container)?.allocate(container)?;
        if lease.is_none() {
            made.leases.push(net.name.clone());
        }
        // Persist before the kernel object exists: a crash in between leaves a lease
        // that the next attach or cleanup_orphans finds.
        self.save_leases()?;
        let attachment = self
            .netlink
            .attach(&AttachRequest {
                bridge: &net.bridge,
                host_veth: &host_veth,
                netns: path,
                ifname: &ifname,
                addr: ip,
                prefix_len: net.subnet.prefix,
                gateway: (ifname == "eth0").then_some(net.gateway),
            })
            .await?;
        made.veths.push(host_veth.clone());
        Ok(done(ip, attachment.mac))
    }

    /// The address and MAC of a live attachment of `net` in the container: the host
    /// end exists and `ifname` inside holds the leased address (or, without a lease,
    /// an address of the subnet). `None`: make it anew.
    async fn adoptable(
        &self,
        path: &Path,
        ifname: &str,
        host_veth: &str,
        lease: Option<Ipv4Addr>,
        net: &NetworkConfig,
    ) -> Option<(Ipv4Addr, String)> {
        self.netlink.mac(host_veth).await.ok()?;
        let (p, name) = (path.to_path_buf(), ifname.to_owned());
        let (addrs, mac) = blocking(move || {
            link::in_netns(&p, move |nl| async move {
                let addrs = nl.addresses(&name).await?;
                let mac = nl.mac(&name).await?;
                Ok((addrs, mac))
            })
            .map_err(NetError::from)
        })
        .await
        .ok()?;
        let prefix = net.subnet.prefix;
        let ip = match lease {
            Some(ip) => addrs.contains(&(ip, prefix)).then_some(ip)?,
            None => addrs
                .iter()
                .find(|(a, p)| *p == prefix && net.subnet.contains(*a))
                .map(|(a, _)| *a)?,
        };
        Some((ip, mac))
    }

    fn pool_mut(
        &mut self,
        network: &str,
        container: &str,
    ) -> Result<&mut super::ipam::Ipam, NetError> {
        self.leases
            .pool_mut(network)
            .ok_or_else(|| NetError::NetworkNotReady {
                network: network.to_owned(),
                container: container.to_owned(),
            })
    }

    /// Undoes a failed attach, in reverse: veths, new leases, the namespace.
    async fn undo(&mut self, container: &str, made: Made) -> Vec<NetError> {
        let mut errors = Vec::new();
        for veth in made.veths.iter().rev() {
            if let Err(e) = self.netlink.detach(veth).await {
                errors.push(e.into());
            }
        }
        for network in &made.leases {
            if let Some(p) = self.leases.pool_mut(network) {
                p.release(container);
            }
        }
        if !made.leases.is_empty() {
            if let Err(e) = self.save_leases() {
                errors.push(e);
            }
        }
        if let Some(path) = made.netns {
            if let Err(e) = blocking(move || netns::remove(&path).map_err(NetError::from)).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Deletes the veth of `container` on `network`, then releases its lease (in that
    /// order: a failed delete keeps the lease, so a retry still finds the veth).
    async fn detach_one(&mut self, container: &str, network: &str, errors: &mut Vec<NetError>) {
        let veth = link::veth_name(&self.instance, container, network);
        if let Err(e) = self.netlink.detach(&veth).await {
            errors.push(e.into());
            return;
        }
        if let Some(p) = self.leases.pool_mut(network) {
            if p.release(container).is_some() {
                if let Err(e) = self.save_leases() {
                    errors.push(e);
                }
            }
        }
    }

    /// Detaches `container` from every network: its veths, leases, published ports
    /// and namespace file. Best effort, every error collected; unknown is success.
    pub async fn detach(&mut self, container: &str) -> Result<(), NetError> {
        let mut errors = Vec::new();
        let mut networks: BTreeSet<String> = self
            .leases
            .pools()
            .filter(|p| p.lease(container).is_some())
            .map(|p| p.network().to_owned())
            .collect();
        if let Some(a) = self.attached.get(container) {
            networks.extend(a.nets.iter().map(|n| n.network.clone()));
        }
        if self.published.remove(container).is_some() {
            // Before the address is released: a DNAT to it must not outlive it.
            if let Err(e) = self.sync_firewall() {
                errors.push(e);
            }
        }
        for network in networks {
            self.detach_one(container, &network, &mut errors).await;
        }
        let path = netns::path_for(&self.run_dir, container);
        if let Err(e) = blocking(move || netns::remove(&path).map_err(NetError::from)).await {
            errors.push(e);
        }
        if errors.is_empty() {
            self.attached.remove(container);
        }
        collected(errors)
    }

    /// Replaces the published ports with `ports` (every attached container's, whole)
    /// and rebuilds the firewall table in one batch. A container whose ports cannot
    /// all be published (a host port taken on the host or by another container, no
    /// non-internal network, an IPv6 host address) gets none and one
    /// `(container, error)` in the result; the others' ports are applied. `Err` only
    /// when the table cannot be applied at all.
    pub fn apply_ports(
        &mut self,
        ports: &BTreeMap<String, Vec<PortMapping>>,
    ) -> Result<Vec<(String, String)>, NetError> {
        let (accepted, errors) = ports::plan(
            ports,
            &self.attached,
            &self.records.ensured,
            &self.published,
            firewall::port_in_use,
        );
        self.published = accepted;
        self.sync_firewall()?;
        Ok(errors)
    }

    /// Every attached container (attached or re-adopted by this agent run), by name.
    pub fn attachments(&self) -> &BTreeMap<String, ContainerAttachment> {
        &self.attached
    }

    /// The networks whose bridge exists, by name (for `/v1/networks`).
    pub fn networks(&self) -> &BTreeMap<String, NetworkConfig> {
        &self.records.ensured
    }

    /// `(container, address)` of every container on `network`, by name.
    pub fn members(&self, network: &str) -> Vec<(String, Ipv4Addr)> {
        self.leases
            .pool(network)
            .map(|p| p.leases().map(|(c, a)| (c.to_owned(), a)).collect())
            .unwrap_or_default()
    }

    /// The `/etc/hosts` of `container` with `hostname`: its own addresses and every
    /// peer on a shared network (see [`super::hosts`]).
    pub fn hosts_file(&self, container: &str, hostname: &str) -> String {
        use super::hosts::{render_hosts, Member};
        let all: Vec<Member<'_>> = self
            .attached
            .iter()
            .map(|(name, a)| Member {
                container: name.as_str(),
                addrs: a.nets.iter().map(|n| (n.network.as_str(), n.ip)).collect(),
            })
            .collect();
        let me = all
            .iter()
            .find(|m| m.container == container)
            .cloned()
            .unwrap_or(Member {
                container,
                addrs: Vec::new(),
            });
        render_hosts(&me, hostname, &all)
    }

    /// After a crash: removes what belongs to containers not in `known` (veths,
    /// leases, namespace files, published ports), links with this instance's prefix
    /// that no known container or network accounts for, and rebuilds the firewall
    /// table from what remains. Returns what it removed.
    pub async fn cleanup_orphans(&mut self, known: &[String]) -> Result<Vec<String>, NetError> {
        let known: BTreeSet<&str> = known.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        let mut errors = Vec::new();

        // 1. Containers known from leases, namespace files or memory, but not alive.
        let ns_dir = self.run_dir.join("netns");
        let ns_files = netns::list(&ns_dir).map_err(|source| NetError::ListNetns {
            path: ns_dir.clone(),
            source,
        })?;
        let mut gone: BTreeSet<String> = ns_files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        for pool in self.leases.pools() {
            gone.extend(pool.leases().map(|(c, _)| c.to_owned()));
        }
        gone.extend(self.attached.keys().cloned());
        gone.retain(|c| !known.contains(c.as_str()));
        for container in gone {
            match self.detach(&container).await {
                Ok(()) => removed.push(format!("container {container}")),
                Err(e) => errors.push(e),
            }
        }

        // 2. Links no lease or network accounts for (veths first, then bridges).
        let mut expected: BTreeSet<String> = self
            .records
            .ensured
            .values()
            .map(|n| n.bridge.clone())
            .collect();
        for pool in self.leases.pools() {
            for (c, _) in pool.leases() {
                expected.insert(link::veth_name(&self.instance, c, pool.network()));
            }
        }
        let prefix = link::link_prefix(&self.instance);
        let mut stray: Vec<String> = self
            .netlink
            .list_links_with_prefix(&prefix)
            .await?
            .into_iter()
            .filter(|l| !expected.contains(l))
            .collect();
        stray.sort_by_key(|n| n[prefix.len()..].starts_with('b'));
        for name in stray {
            // Deleting a link is the same call for a veth and a bridge.
            match self.netlink.detach(&name).await {
                Ok(()) => removed.push(format!("link {name}")),
                Err(e) => errors.push(e.into()),
            }
        }

        // 3. The firewall, from what remains.
        self.published.retain(|c, _| known.contains(c.as_str()));
        if let Err(e) = self.sync_firewall() {
            errors.push(e);
        }
        collected(errors)?;
        Ok(removed)
    }

    /// Removes everything this instance made: every container's attachment, every
    /// bridge, every link with its prefix, its firewall table, and empties the lease
    /// and network records (tests, uninstall). Best effort; every error collected.
    pub async fn teardown(&mut self) -> Result<(), NetError> {
        let mut errors = Vec::new();
        // No firewall rebuild per container: the table goes as a whole below.
        self.published.clear();
        let mut containers: BTreeSet<String> = self.attached.keys().cloned().collect();
        for pool in self.leases.pools() {
            containers.extend(pool.leases().map(|(c, _)| c.to_owned()));
        }
        let ns_dir = self.run_dir.join("netns");
        match netns::list(&ns_dir) {
            Ok(files) => containers.extend(
                files
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str().map(str::to_owned)),
            ),
            Err(source) => errors.push(NetError::ListNetns {
                path: ns_dir,
                source,
            }),
        }
        for c in containers {
            if let Err(e) = self.detach(&c).await {
                errors.push(e);
            }
        }
        let bridges: Vec<String> = self
            .records
            .ensured
            .values()
            .map(|n| n.bridge.clone())
            .collect();
        for bridge in bridges {
            if let Err(e) = self.netlink.remove_bridge(&bridge).await {
                errors.push(e.into());
            }
        }
        if let Err(e) = self
            .netlink
            .remove_links_with_prefix(&link::link_prefix(&self.instance))
            .await
        {
            errors.push(e.into());
        }
        if let Err(e) = firewall::remove(&self.instance) {
            errors.push(e.into());
        }
        self.attached.clear();
        self.leases = Leases::new();
        if let Err(e) = self.save_leases() {
            errors.push(e);
        }
        self.records = Records::new();
        if let Err(e) = self.save_records() {
            errors.push(e);
        }
        collected(errors)
    }

    /// The containers with a lease or an attachment on `network`, sorted.
    fn containers_on(&self, network: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = self
            .leases
            .pool(network)
            .map(|p| p.leases().map(|(c, _)| c.to_owned()).collect())
            .unwrap_or_default();
        out.extend(
            self.attached
                .iter()
                .filter(|(_, a)| a.nets.iter().any(|n| n.network == network))
                .map(|(c, _)| c.clone()),
        );
        out.into_iter().collect()
    }

    /// Rebuilds the firewall table from the ensured networks and published ports.
    fn sync_firewall(&mut self) -> Result<(), NetError> {
        let networks: Vec<NetRules> = self
            .records
            .ensured
            .values()
            .filter(|n| n.kind == NetworkKind::Bridge)
            .map(|n| NetRules {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect();
        // Ports whose network went away are dropped rather than failing the batch.
        self.published.retain(|_, rules| {
            rules.retain(|r| networks.iter().any(|n| n.bridge == r.bridge && !n.internal));
            !rules.is_empty()
        });
        let plan = FirewallPlan {
            instance: self.instance.clone(),
            networks,
            ports: self.published.values().flatten().cloned().collect(),
        };
        firewall::apply(&plan)?;
        Ok(())
    }

    fn save_leases(&self) -> Result<(), NetError> {
        Ok(self.lease_store.save(&self.leases)?)
    }

    fn save_records(&self) -> Result<(), NetError> {
        self.record_store
            .save(&self.records)
            .map_err(|source| NetError::SaveRecords {
                path: self.record_store.path.clone(),
                source,
            })
    }
}

/// Runs blocking namespace work off the async executor.
async fn blocking<T, F>(f: F) -> Result<T, NetError>
where
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_networks_have_no_addressing_and_kinds_serialise_lowercase() {
        let host = NetworkConfig::special(HOST_NETWORK, NetworkKind::Host);
        assert_eq!(host.subnet.prefix, 0);
        assert!(host.bridge.is_empty());
        let json = serde_json::to_string(&host).unwrap();
        assert!(json.contains("\"kind\":\"host\""), "{json}");
    }

    fn declared(name: &str, subnet: Option<&str>) -> crate::manifest::Network {
        crate::manifest::Network {
            metadata: crate::manifest::ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: crate::manifest::NetworkSpec {
                subnet: subnet.map(|s| s.parse().unwrap()),
                ..Default::default()
            },
        }
    }

    /// `resolve` touches no kernel object; the netlink socket it opens is unprivileged.
    #[tokio::test]
    async fn resolve_allocates_subnets_and_bridge_indices_that_survive_a_restart() {
        let state = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let mut nets = Networks::new("3fa29c01", state.path(), run.path()).unwrap();
        let decl = [
            declared("front", None),
            declared("back", Some("10.89.0.0/24")),
            declared("jobs", None),
        ];
        let got = nets.resolve(&decl).unwrap();
        let view: Vec<(&str, String, &str)> = got
            .iter()
            .map(|n| (n.name.as_str(), n.subnet.to_string(), n.bridge.as_str()))
            .collect();
        assert_eq!(
            view,
            [
                ("default", "10.88.0.0/16".into(), "wh3fa29cb0"),
                // 10.89.0.0/24 is declared by `back`: auto-allocation skips it.
                ("front", "10.89.1.0/24".into(), "wh3fa29cb1"),
                ("back", "10.89.0.0/24".into(), "wh3fa29cb2"),
                ("jobs", "10.89.2.0/24".into(), "wh3fa29cb3"),
                ("host", "0.0.0.0/0".into(), ""),
                ("none", "0.0.0.0/0".into(), ""),
            ]
        );
        assert_eq!(got[1].gateway, Ipv4Addr::new(10, 89, 1, 1));

        // A restarted agent sees the same indices; a network no longer declared
        // (and never made) frees its index for the next one.
        drop(nets);
        let mut nets = Networks::new("3fa29c01", state.path(), run.path()).unwrap();
        let again = nets.resolve(&decl).unwrap();
        assert_eq!(again, got);
        let fewer = nets
            .resolve(&[
                declared("jobs", None),
                declared("new", Some("10.89.9.0/24")),
            ])
            .unwrap();
        let bridges: Vec<(&str, &str)> = fewer
            .iter()
            .map(|n| (n.name.as_str(), n.bridge.as_str()))
            .collect();
        assert_eq!(bridges[1], ("jobs", "wh3fa29cb3"), "kept its index");
        assert_eq!(bridges[2], ("new", "wh3fa29cb1"), "lowest free index");
    }

    #[test]
    fn attach_failure_message_carries_both_errors() {
        let e = NetError::AttachFailed {
            container: "web".into(),
            error: Box::new(NetError::Join("boom".into())),
            cleanup: vec![NetError::Join("also".into())],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("\"web\"") && msg.contains("boom") && msg.contains("also"),
            "{msg}"
        );
    }
}
