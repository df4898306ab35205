//! The `Network` seam the reconciler drives, as it drives the `Runtime`: networks are
//! resolved, listed, ensured and removed as objects of the plan, and containers are
//! attached before their start (netns-first, as CNI does) and detached after their
//! removal. Implementations: [`super::BridgeNetwork`] (bridges, veths, nftables) and
//! [`super::testing::FakeNetwork`]; both pass [`super::testing::conformance`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::driver::{NetError, NetworkConfig, NetworkKind, PortMapping};
use crate::runtime::Observed;

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

/// What a container needs of the networks before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachSpec {
    pub container: String,
    pub hostname: String,
    /// Bridge networks by name, in interface order (`eth0` first).
    pub networks: Vec<String>,
    pub ports: Vec<PortMapping>,
    /// A StartFirst update's new version, beside the one that serves: attached with
    /// its own address, but its ports are not published and peers do not resolve its
    /// name to it until [`Network::handover`].
    pub standby: bool,
}

/// What attaching gave the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    /// The namespace to join.
    pub netns: PathBuf,
    /// `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`, by file name.
    pub etc_files: Vec<(String, String)>,
    pub addresses: Vec<Address>,
    /// The ports published for it.
    pub ports: Vec<PortMapping>,
}

/// The reconciler's view of container networking.
pub trait Network: Send + Sync + 'static {
    /// The bridge networks the manifests want, `default` first: subnets and bridge
    /// names allocated (stable across calls and restarts). Attaching uses the latest.
    fn resolve(
        &self,
        declared: &[crate::manifest::Network],
    ) -> impl Future<Output = Result<Vec<NetworkConfig>, NetError>> + Send;
    /// The bridge networks this instance has made, by name.
    fn list(&self) -> impl Future<Output = BTreeMap<String, NetworkConfig>> + Send;
    /// Creates the network, or brings it to `net` (refused while containers are
    /// attached if its addressing changes). Idempotent.
    fn ensure(&self, net: &NetworkConfig) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Removes a network; refused while containers are attached. Unknown: success.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Attaches a container to its networks and publishes its ports. Idempotent: a
    /// container attached before keeps its addresses.
    fn attach(&self, spec: &AttachSpec) -> impl Future<Output = Result<Attached, NetError>> + Send;
    /// Moves a container's published ports and its name from instance `from` to the
    /// standby instance `to` (a StartFirst update): the ports in one firewall batch, so
    /// a connection attempt finds one or the other, never neither; then peers' hosts
    /// files. `from` becomes standby (it is removed next). Idempotent.
    fn handover(
        &self,
        from: &str,
        to: &str,
        ports: &[PortMapping],
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Undoes [`Network::attach`]: links, addresses, ports, namespace. Unknown: success.
    fn detach(&self, container: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// A container attached with [`Network::attach`] has started: its peers' hosts
    /// files (and its own) are brought up to date.
    fn started(&self, container: &str) -> impl Future<Output = ()> + Send;
    /// After an agent restart: re-attaches the containers that still run (same
    /// addresses, same ports) and removes what belongs to containers that are gone.
    fn adopt(&self, observed: &[Observed]) -> impl Future<Output = ()> + Send;
    /// Undoes what is attached for containers not in `known` (their detach failed, or
    /// a crash came between): links, addresses, ports, namespace files.
    fn forget_others(&self, known: &[String]) -> impl Future<Output = ()> + Send;
    /// Checks the kernel objects of the networks it made and restores what is missing:
    /// a deleted bridge or veth; with `firewall`, a flushed or cut down table too.
    fn repair(&self, firewall: bool) -> impl Future<Output = Result<(), NetError>> + Send;
    /// What `/v1/networks` shows of each network made or resolved (`message` unset:
    /// the reconciler fills it in).
    fn statuses(&self) -> impl Future<Output = Vec<NetworkStatus>> + Send;
}
