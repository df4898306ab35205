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
//! Files: this one holds the types, network lifecycle and bookkeeping; `attach.rs`
//! attaching and detaching containers; `lifecycle.rs` crash cleanup and teardown;
//! `ports.rs` the pure port plan; `records.rs` the network records.
//!
//! Threads: host-side netlink runs on the caller's thread (a tokio worker in the
//! host namespace); container-side work runs on dedicated threads that joined the
//! container's namespace (`link::in_netns`), reached through `spawn_blocking`.

mod attach;
mod lifecycle;
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
use crate::net::overlap;

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
    /// The subnet overlaps a route of another link on the host (Docker's "Pool
    /// overlaps with other one on this address space").
    #[error("network {network:?}: subnet {subnet} overlaps the host's route to {route} via {}; another agent, Docker or the uplink uses it: choose another subnet{}", if link.is_empty() { "no interface" } else { link.as_str() }, if network == DEFAULT_NETWORK { " (the built-in default moves by itself only when first created)" } else { "" })]
    SubnetOverlaps {
        network: String,
        subnet: Ipv4Cidr,
        route: Ipv4Cidr,
        link: String,
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
    /// A published port cannot be had (taken on the host or by another container, no
    /// non-internal network, an IPv6 host address).
    #[error("cannot publish ports of container {container:?}: {reason}")]
    PortsUnavailable { container: String, reason: String },
    #[error("a blocking network task failed: {0}")]
    Join(String),
    #[error("{}", several_message(.0))]
    Several(Vec<NetError>),
}

impl crate::class::Classify for NetError {
    /// Permanent: what the manifest must change (a subnet another link routes, an
    /// impossible combination of networks). The rest may pass: a network still in
    /// use, not made yet, a port taken by something that may go away, a busy kernel.
    fn class(&self) -> crate::class::ErrorClass {
        use crate::class::ErrorClass::{Permanent, Transient};
        match self {
            NetError::SubnetOverlaps { .. } | NetError::InvalidAttach { .. } => Permanent,
            NetError::AttachFailed { error, .. } => error.class(),
            NetError::Several(errors) if errors.iter().all(|e| e.class() == Permanent) => Permanent,
            _ => Transient,
        }
    }
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
    /// Attached instances that do not serve (a StartFirst update's new version before
    /// the handover, the old one after): left out of peers' hosts files.
    standby: BTreeSet<String>,
    /// The port rules in the applied firewall table, per container.
    published: BTreeMap<String, Vec<PortRule>>,
    /// The host's routes at the last [`Networks::refresh_host_routes`], for choosing
    /// subnets that collide with nothing; `None` until they were read once.
    host_routes: Option<Vec<link::HostRoute>>,
    /// Whether this process has checked that the firewall table exists. The records
    /// survive a reboot (or an `nft flush ruleset`) and the table does not: the first
    /// ensure applies it when it is missing, before `route_localnet` is set (its input
    /// chain is what keeps containers off the host's loopback). A table that exists is
    /// left alone, so published ports keep answering across an agent restart.
    firewall_checked: bool,
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
            standby: BTreeSet::new(),
            published: BTreeMap::new(),
            host_routes: None,
            firewall_checked: false,
        })
    }

    /// Reads the host's routes, which [`Networks::resolve`] then avoids when it picks a
    /// subnet (for `default` on first use, and for declared networks without one).
    pub async fn refresh_host_routes(&mut self) -> Result<(), NetError> {
        self.host_routes = Some(self.netlink.routes_v4().await?);
        Ok(())
    }

    /// The built-in `default`, then every declared network (subnets allocated from
    /// 10.89.0.0/16 for those without one, stable across calls and restarts), then
    /// `host` and `none`. Bridge names come from indices kept in `networks.json`
    /// (see `records.rs`). Saves the records if an index was assigned or freed.
    pub fn resolve(
        &mut self,
        declared: &[crate::manifest::Network],
    ) -> Result<Vec<NetworkConfig>, NetError> {
        let declared_subnets: Vec<Ipv4Cidr> =
            declared.iter().filter_map(|n| n.spec.subnet).collect();
        // `default`'s subnet is chosen once and kept: 10.88.0.0/16 unless another link
        // of the host routes it (another agent, Docker), then the first free candidate.
        // Chosen blind (routes never read), it is used but not kept, so that the next
        // resolve with the routes known can still choose.
        let default_bridge = link::bridge_name(&self.instance, 0);
        let routes = self.host_routes.as_deref().unwrap_or_default();
        let mut chose_default = false;
        let default_subnet = match (self.records.default_subnet, &self.host_routes) {
            (Some(s), _) => s,
            (None, None) => DEFAULT_NETWORK_SUBNET,
            (None, Some(routes)) => {
                let s = overlap::free_default_subnet(&default_bridge, routes, &declared_subnets)
                    .unwrap_or(DEFAULT_NETWORK_SUBNET);
                self.records.default_subnet = Some(s);
                chose_default = true;
                s
            }
        };
        let mut taken = declared_subnets;
        taken.push(default_subnet);
        // Routes of other links (not ours) are taken too, for automatic subnets.
        let ours = link::link_prefix(&self.instance);
        taken.extend(
            routes
                .iter()
                .filter(|r| r.destination.prefix > 0 && !r.link.starts_with(&ours))
                .map(|r| r.destination),
        );
        let mut out = Vec::with_capacity(declared.len() + 3);
        // Free the indices of networks gone from the manifests (and never made)
        // first, so a network declared in the same edit can take one.
        let keep: BTreeSet<&str> = declared
            .iter()
            .map(|n| n.metadata.name.as_str())
            .chain([DEFAULT_NETWORK])
            .collect();
        let mut changed = self.records.prune(&keep);
        changed |= chose_default;
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
            subnet: default_subnet,
            gateway: default_subnet.first_host(),
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
        // Refused before anything is made: a bridge on a subnet another link routes
        // would steal or lose its traffic silently.
        let routes = self.netlink.routes_v4().await?;
        if let Some(r) = overlap::conflicting_route(net.subnet, &net.bridge, &routes) {
            return Err(NetError::SubnetOverlaps {
                network: net.name.clone(),
                subnet: net.subnet,
                route: r.destination,
                link: r.link.clone(),
            });
        }
        self.leases
            .ensure_pool(&net.name, net.subnet, Some(net.gateway))?;
        self.save_leases()?;
        self.netlink
            .ensure_bridge(&net.bridge, net.gateway, net.subnet.prefix)
            .await?;
        crate::fault::point("network-ensure:bridge");
        // The table first: its `input` chain drops martian loopback traffic from the
        // bridge, which `route_localnet` would otherwise let reach the host's
        // 127.0.0.1 services.
        let table_missing = !self.firewall_checked
            && !firewall::wharf_tables()?.contains(&firewall::table_name(&self.instance));
        if previous.as_ref() != Some(net) || table_missing {
            self.records.ensured.insert(net.name.clone(), net.clone());
            self.save_records()?;
            self.sync_firewall()?;
        }
        self.firewall_checked = true;
        if !net.internal {
            firewall::set_route_localnet(&net.bridge)?;
            firewall::enable_forwarding()?;
        }
        Ok(())
    }

    /// Restores the kernel objects of every network made and of every attached
    /// container: a bridge someone deleted, a firewall table a `nft flush ruleset` (a
    /// firewalld reload) wiped with the published ports in it, a container's veth
    /// deleted (or cut off by its bridge's deletion). What exists is left alone.
    /// Returns the containers attached again (same addresses).
    ///
    /// `firewall`: also check the table (an `nft` run), when the ruleset changed or at
    /// the periodic resync; a link deletion alone does not need it.
    pub async fn repair(&mut self, firewall: bool) -> Result<Vec<String>, NetError> {
        let prefix = link::link_prefix(&self.instance);
        let before: BTreeSet<String> = self
            .netlink
            .list_links_with_prefix(&prefix)
            .await?
            .into_iter()
            .collect();
        let nets: Vec<NetworkConfig> = self.records.ensured.values().cloned().collect();
        let mut errors = Vec::new();
        for net in nets
            .iter()
            .filter(|n| n.kind == NetworkKind::Bridge && !before.contains(&n.bridge))
        {
            if let Err(e) = self.ensure_network(net).await {
                errors.push(e);
            }
        }
        if firewall && !firewall::intact(&self.firewall_plan())? {
            tracing::warn!(table = %firewall::table_name(&self.instance), "the firewall table was changed behind wharf's back; applied again");
            self.sync_firewall()?;
        }
        // A bridge made anew has no ports: its containers' veths must be made again
        // too, as must a veth that is gone.
        let remade: BTreeSet<&str> = nets
            .iter()
            .filter(|n| n.kind == NetworkKind::Bridge && !before.contains(&n.bridge))
            .map(|n| n.name.as_str())
            .collect();
        let broken: Vec<(String, Vec<ContainerNet>)> = self
            .attached
            .iter()
            // A container whose namespace is gone is being removed, not repaired.
            .filter(|(c, _)| netns::exists(&netns::path_for(&self.run_dir, c)))
            .filter(|(_, a)| {
                a.nets
                    .iter()
                    .any(|n| !before.contains(&n.host_veth) || remade.contains(n.network.as_str()))
            })
            .map(|(c, a)| (c.clone(), a.nets.clone()))
            .collect();
        let mut repaired = Vec::new();
        for (container, old) in broken {
            for n in &old {
                // Both ends go with it; a fresh pair is made below.
                if let Err(e) = self.netlink.detach(&n.host_veth).await {
                    errors.push(e.into());
                }
            }
            let configs: Option<Vec<NetworkConfig>> = old
                .iter()
                .map(|n| self.records.ensured.get(&n.network).cloned())
                .collect();
            let Some(configs) = configs else { continue };
            match self.attach(&container, &configs).await {
                Ok(_) => repaired.push(container),
                Err(e) => errors.push(e),
            }
        }
        collected(errors)?;
        Ok(repaired)
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
            crate::fault::point("network-remove:bridge");
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

    /// Marks an attached instance as standby (not serving: see [`Self::hosts_file`]),
    /// or as serving.
    pub fn set_standby(&mut self, instance: &str, standby: bool) {
        if standby {
            self.standby.insert(instance.to_owned());
        } else {
            self.standby.remove(instance);
        }
    }

    /// Whether an instance serves (is not standby).
    pub fn serving(&self, instance: &str) -> bool {
        !self.standby.contains(instance)
    }

    /// The `/etc/hosts` of `instance` with `hostname`: its own addresses and every
    /// serving peer on a shared network, by container name (see [`super::hosts`]).
    pub fn hosts_file(&self, instance: &str, hostname: &str) -> String {
        use super::hosts::{render_hosts, Member};
        use crate::runtime::instance::container_of;
        fn member<'a>(name: &'a str, a: Option<&'a ContainerAttachment>) -> Member<'a> {
            Member {
                container: container_of(name),
                addrs: a
                    .map(|a| a.nets.iter().map(|n| (n.network.as_str(), n.ip)).collect())
                    .unwrap_or_default(),
            }
        }
        let me = member(instance, self.attached.get(instance));
        let peers: Vec<Member<'_>> = self
            .attached
            .iter()
            .filter(|(name, _)| !self.standby.contains(*name))
            .map(|(name, a)| member(name, Some(a)))
            .collect();
        render_hosts(&me, hostname, &peers)
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
        let plan = self.firewall_plan();
        firewall::apply(&plan)?;
        Ok(())
    }

    /// The table the ensured networks and published ports call for.
    fn firewall_plan(&mut self) -> FirewallPlan {
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
        FirewallPlan {
            instance: self.instance.clone(),
            networks,
            ports: self.published.values().flatten().cloned().collect(),
        }
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
