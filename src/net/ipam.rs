//! IPv4 address management: one pure allocator per network, subnet auto-allocation,
//! and a thin store that persists every network's leases in one atomic JSON file.
//!
//! The allocator never touches the disk: the agent loads [`Leases`] once at start
//! through [`LeaseStore`], mutates it in memory, and saves after every change, so a
//! restarted agent hands each container the address it had (netavark's host-local
//! IPAM keeps leases on disk for the same reason).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{Ipv4Cidr, DEFAULT_NETWORK_SUBNET};

/// The pool that networks declared without a subnet draw a /24 from (manifest-v1).
pub const AUTO_SUBNET_POOL: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 89, 0, 0),
    prefix: 16,
};

/// The prefix length of an auto-allocated subnet.
const AUTO_SUBNET_PREFIX: u8 = 24;

/// What went wrong in IPAM; each variant names the failed operation.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The pool's gateway is not a usable host address of its subnet.
    #[error("network {network:?}: gateway {gateway} is not a host address of subnet {subnet}")]
    CreatePool {
        network: String,
        subnet: Ipv4Cidr,
        gateway: Ipv4Addr,
    },
    /// Every host address of the subnet is leased.
    #[error(
        "network {network:?}: subnet {subnet} is exhausted, no address left for container {container:?}"
    )]
    Allocate {
        network: String,
        subnet: Ipv4Cidr,
        container: String,
    },
    /// A specific address could not be reserved.
    #[error("network {network:?}: cannot reserve {address} for container {container:?}: {reason}")]
    Reserve {
        network: String,
        address: Ipv4Addr,
        container: String,
        reason: String,
    },
    /// No free /24 is left in the auto-allocation pool.
    #[error("no free /{AUTO_SUBNET_PREFIX} left in {AUTO_SUBNET_POOL} for network {network:?}; declare a subnet")]
    AllocateSubnet { network: String },
    /// The lease file could not be read or parsed.
    #[error("loading IPAM leases from {}: {source}", path.display())]
    LoadLeases { path: PathBuf, source: io::Error },
    /// The lease file could not be written.
    #[error("saving IPAM leases to {}: {source}", path.display())]
    SaveLeases { path: PathBuf, source: io::Error },
}

/// The address allocator of one network.
///
/// Invariants (checked on creation and on load): the gateway is a host address of
/// the subnet; every lease is a host address of the subnet other than the gateway;
/// no address is leased twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PoolRecord", into = "PoolRecord")]
pub struct Ipam {
    network: String,
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    /// Container name → address; the source of truth, persisted.
    by_container: BTreeMap<String, Ipv4Addr>,
    /// Every address not free: the leases plus the gateway, in order, so "lowest
    /// free" walks the taken addresses instead of the whole subnet.
    taken: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// An empty pool. `gateway` defaults to the subnet's first host address.
    pub fn new(
        network: &str,
        subnet: Ipv4Cidr,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Self, IpamError> {
        let gateway = gateway.unwrap_or_else(|| subnet.first_host());
        // Manifest validation already rejects this with file:line; the check stays
        // here because the pool's arithmetic depends on it (a /31 or /32, or a
        // gateway on the broadcast address, would otherwise hand out bad addresses).
        if !is_host(subnet, gateway) {
            return Err(IpamError::CreatePool {
                network: network.to_owned(),
                subnet,
                gateway,
            });
        }
        Ok(Ipam {
            network: network.to_owned(),
            subnet,
            gateway,
            by_container: BTreeMap::new(),
            taken: BTreeSet::from([gateway]),
        })
    }

    /// The network this pool belongs to.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The pool's subnet.
    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    /// The gateway address (on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The address leased to `container`, if any.
    pub fn lease(&self, container: &str) -> Option<Ipv4Addr> {
        self.by_container.get(container).copied()
    }

    /// Every lease, ordered by container name.
    pub fn leases(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.by_container.iter().map(|(c, a)| (c.as_str(), *a))
    }

    /// Leases the lowest free host address to `container`. Idempotent: a container
    /// that already holds a lease gets the same address back.
    pub fn allocate(&mut self, container: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = self.lease(container) {
            return Ok(addr);
        }
        let addr = self.lowest_free().ok_or_else(|| IpamError::Allocate {
            network: self.network.clone(),
            subnet: self.subnet,
            container: container.to_owned(),
        })?;
        self.insert(container, addr);
        Ok(addr)
    }

    /// Leases exactly `address` to `container`: used to re-adopt a running container
    /// whose address is known from the kernel. Succeeds if the container already
    /// holds it; fails if it is taken by another container, is not a usable host
    /// address, or the container holds a different one.
    pub fn reserve(&mut self, container: &str, address: Ipv4Addr) -> Result<(), IpamError> {
        let fail = |reason: String| IpamError::Reserve {
            network: self.network.clone(),
            address,
            container: container.to_owned(),
            reason,
        };
        if let Some(held) = self.lease(container) {
            return if held == address {
                Ok(())
            } else {
                Err(fail(format!("the container already holds {held}")))
            };
        }
        if !is_host(self.subnet, address) {
            return Err(fail(format!("not a host address of {}", self.subnet)));
        }
        if address == self.gateway {
            return Err(fail("it is the gateway".to_owned()));
        }
        if self.taken.contains(&address) {
            let owner = self.leases().find(|(_, a)| *a == address).map(|(c, _)| c);
            return Err(fail(format!(
                "it is leased to container {:?}",
                owner.unwrap_or("?")
            )));
        }
        self.insert(container, address);
        Ok(())
    }

    /// Returns `container`'s address to the pool; `None` if it held none (releasing
    /// twice is not an error, so teardown can retry).
    pub fn release(&mut self, container: &str) -> Option<Ipv4Addr> {
        let addr = self.by_container.remove(container)?;
        self.taken.remove(&addr);
        Some(addr)
    }

    fn insert(&mut self, container: &str, addr: Ipv4Addr) {
        self.by_container.insert(container.to_owned(), addr);
        self.taken.insert(addr);
    }

    /// The first gap in the ordered taken addresses: the cost is the number of
    /// leases, not the size of the subnet.
    fn lowest_free(&self) -> Option<Ipv4Addr> {
        let last = u32::from(self.subnet.broadcast()).checked_sub(1)?;
        let mut candidate = u32::from(self.subnet.first_host());
        for taken in self.taken.iter().map(|a| u32::from(*a)) {
            if taken > candidate {
                break;
            }
            if taken == candidate {
                candidate += 1;
            }
        }
        (candidate <= last).then(|| Ipv4Addr::from(candidate))
    }
}

/// Whether `addr` is in `subnet` and is neither its network nor broadcast address.
fn is_host(subnet: Ipv4Cidr, addr: Ipv4Addr) -> bool {
    subnet.prefix <= 30
        && subnet.contains(addr)
        && addr != subnet.addr
        && addr != subnet.broadcast()
}

/// The on-disk shape of one pool. Kept separate so loading re-checks the
/// invariants instead of trusting the file.
#[derive(Serialize, Deserialize)]
struct PoolRecord {
    network: String,
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    leases: BTreeMap<String, Ipv4Addr>,
}

impl TryFrom<PoolRecord> for Ipam {
    type Error = IpamError;

    fn try_from(r: PoolRecord) -> Result<Self, IpamError> {
        let mut pool = Ipam::new(&r.network, r.subnet, Some(r.gateway))?;
        for (container, addr) in r.leases {
            pool.reserve(&container, addr)?;
        }
        Ok(pool)
    }
}

impl From<Ipam> for PoolRecord {
    fn from(p: Ipam) -> Self {
        PoolRecord {
            network: p.network,
            subnet: p.subnet,
            gateway: p.gateway,
            leases: p.by_container,
        }
    }
}

/// The pools of every network, keyed by network name: what `leases.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    /// Format version, so a later agent can migrate the file.
    version: u32,
    networks: BTreeMap<String, Ipam>,
}

/// The current `leases.json` format.
const LEASES_VERSION: u32 = 1;

impl Default for Leases {
    fn default() -> Self {
        Leases::new()
    }
}

impl Leases {
    /// No networks.
    pub fn new() -> Self {
        Leases {
            version: LEASES_VERSION,
            networks: BTreeMap::new(),
        }
    }

    /// The pool of `network`, if it has one.
    pub fn pool(&self, network: &str) -> Option<&Ipam> {
        self.networks.get(network)
    }

    /// The pool of `network`, mutable.
    pub fn pool_mut(&mut self, network: &str) -> Option<&mut Ipam> {
        self.networks.get_mut(network)
    }

    /// Every pool, ordered by network name.
    pub fn pools(&self) -> impl Iterator<Item = &Ipam> {
        self.networks.values()
    }

    /// Create-or-keep the pool of `network` for `subnet` and `gateway` (`None`: the
    /// first host). A pool whose subnet or gateway differs is replaced by an empty
    /// one: per the manifest contract, a subnet change replaces the containers on
    /// the network, which then lease again.
    pub fn ensure_pool(
        &mut self,
        network: &str,
        subnet: Ipv4Cidr,
        gateway: Option<Ipv4Addr>,
    ) -> Result<&mut Ipam, IpamError> {
        let fresh = Ipam::new(network, subnet, gateway)?;
        let keep = self
            .networks
            .get(network)
            .is_some_and(|p| p.subnet == fresh.subnet && p.gateway == fresh.gateway);
        if !keep {
            self.networks.insert(network.to_owned(), fresh);
        }
        Ok(self
            .networks
            .get_mut(network)
            .expect("the pool was kept or inserted just above"))
    }

    /// Forgets `network` and its leases; `None` if it had no pool.
    pub fn remove_pool(&mut self, network: &str) -> Option<Ipam> {
        self.networks.remove(network)
    }

    /// The subnet for `network` when its manifest declares none: the one it already
    /// has (so an agent restart keeps it), unless that now overlaps a declared
    /// subnet; otherwise the first free /24 of [`AUTO_SUBNET_POOL`]. `declared` are
    /// the subnets other networks declare explicitly.
    pub fn auto_subnet(&self, network: &str, declared: &[Ipv4Cidr]) -> Result<Ipv4Cidr, IpamError> {
        if let Some(pool) = self.networks.get(network) {
            if !declared.iter().any(|d| d.overlaps(pool.subnet)) {
                return Ok(pool.subnet);
            }
        }
        let others = self
            .networks
            .iter()
            .filter(|(name, _)| name.as_str() != network)
            .map(|(_, p)| p.subnet);
        let taken: Vec<Ipv4Cidr> = declared.iter().copied().chain(others).collect();
        first_free_subnet(&taken).ok_or_else(|| IpamError::AllocateSubnet {
            network: network.to_owned(),
        })
    }
}

/// The first /24 of [`AUTO_SUBNET_POOL`] that overlaps neither `taken` nor the
/// built-in default network.
pub fn first_free_subnet(taken: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    let base = u32::from(AUTO_SUBNET_POOL.addr);
    let step = 1u32 << (32 - AUTO_SUBNET_PREFIX);
    let count = 1u32 << (AUTO_SUBNET_PREFIX - AUTO_SUBNET_POOL.prefix);
    (0..count)
        .map(|i| Ipv4Cidr {
            addr: Ipv4Addr::from(base + i * step),
            prefix: AUTO_SUBNET_PREFIX,
        })
        .find(|c| !c.overlaps(DEFAULT_NETWORK_SUBNET) && !taken.iter().any(|t| t.overlaps(*c)))
}

/// Where the leases of every network live: `<state>/networks/leases.json`.
#[derive(Clone, Debug)]
pub struct LeaseStore {
    path: PathBuf,
}

impl LeaseStore {
    /// The store under the state root (`--state`).
    pub fn new(state_root: &Path) -> Self {
        LeaseStore {
            path: state_root.join("networks").join("leases.json"),
        }
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the leases; an absent file is an empty set (first start).
    pub fn load(&self) -> Result<Leases, IpamError> {
        let loaded = crate::state::read_json::<Leases>(&self.path).map_err(|source| {
            IpamError::LoadLeases {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(loaded.unwrap_or_default())
    }

    /// Writes the leases atomically (temp file, fsync, rename).
    pub fn save(&self, leases: &Leases) -> Result<(), IpamError> {
        crate::state::write_json(&self.path, leases).map_err(|source| IpamError::SaveLeases {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pool(subnet: &str) -> Ipam {
        Ipam::new("backend", cidr(subnet), None).unwrap()
    }

    #[test]
    fn first_allocation_skips_network_and_gateway_addresses() {
        let mut p = pool("10.89.1.0/24");
        assert_eq!(p.gateway(), ip("10.89.1.1"));
        assert_eq!(p.allocate("web").unwrap(), ip("10.89.1.2"));
        assert_eq!(p.allocate("db").unwrap(), ip("10.89.1.3"));
    }

    #[test]
    fn same_container_name_gets_the_same_address() {
        let mut p = pool("10.89.1.0/24");
        let a = p.allocate("web").unwrap();
        p.allocate("db").unwrap();
        assert_eq!(p.allocate("web").unwrap(), a);
        assert_eq!(p.leases().count(), 2);
    }

    #[test]
    fn released_address_is_reused_lowest_first() {
        let mut p = pool("10.89.1.0/24");
        for name in ["a", "b", "c"] {
            p.allocate(name).unwrap();
        }
        assert_eq!(p.release("a"), Some(ip("10.89.1.2")));
        assert_eq!(p.release("a"), None, "a second release is a no-op");
        assert_eq!(p.allocate("d").unwrap(), ip("10.89.1.2"));
        assert_eq!(p.allocate("e").unwrap(), ip("10.89.1.5"));
    }

    #[test]
    fn gateway_in_the_middle_is_never_handed_out() {
        let mut p = Ipam::new("n", cidr("10.89.1.0/29"), Some(ip("10.89.1.3"))).unwrap();
        let got: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| p.allocate(n).unwrap())
            .collect();
        let want: Vec<_> = [
            "10.89.1.1",
            "10.89.1.2",
            "10.89.1.4",
            "10.89.1.5",
            "10.89.1.6",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn exhausted_subnet_is_an_error_naming_network_and_subnet() {
        // A /30 has two host addresses: the gateway and one container.
        let mut p = pool("10.89.1.0/30");
        assert_eq!(p.allocate("one").unwrap(), ip("10.89.1.2"));
        let err = p.allocate("two").unwrap_err();
        assert!(matches!(err, IpamError::Allocate { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"backend\"") && msg.contains("10.89.1.0/30"),
            "{msg}"
        );
        assert!(msg.contains("exhausted"), "{msg}");
        assert!(
            !msg.contains("10.89.1.3 "),
            "the broadcast address is never offered"
        );
    }

    #[test]
    fn no_address_is_handed_out_twice_in_a_full_subnet() {
        let mut p = pool("10.89.1.0/24");
        let mut seen = BTreeSet::new();
        for i in 0..253 {
            let a = p.allocate(&format!("c{i}")).unwrap();
            assert!(seen.insert(a), "{a} handed out twice");
            assert!(a != p.gateway() && a != ip("10.89.1.0") && a != ip("10.89.1.255"));
        }
        assert!(p.allocate("one-too-many").is_err());
    }

    #[test]
    fn gateway_outside_subnet_is_rejected() {
        let err = Ipam::new("n", cidr("10.89.1.0/24"), Some(ip("10.89.2.1"))).unwrap_err();
        assert!(matches!(err, IpamError::CreatePool { .. }), "{err:?}");
        assert!(err.to_string().contains("10.89.2.1"));
    }

    #[test]
    fn gateway_on_network_or_broadcast_address_is_rejected() {
        for gw in ["10.89.1.0", "10.89.1.255"] {
            assert!(
                Ipam::new("n", cidr("10.89.1.0/24"), Some(ip(gw))).is_err(),
                "{gw}"
            );
        }
    }

    #[test]
    fn static_request_of_a_taken_address_fails_and_names_the_owner() {
        let mut p = pool("10.89.1.0/24");
        let a = p.allocate("web").unwrap();
        let err = p.reserve("db", a).unwrap_err();
        assert!(err.to_string().contains("\"web\""), "{err}");
        assert!(p.reserve("db", p.gateway()).is_err());
        assert!(p.reserve("db", ip("10.89.2.7")).is_err());
        assert!(p.reserve("db", ip("10.89.1.255")).is_err());
    }

    #[test]
    fn static_request_is_honoured_and_idempotent() {
        let mut p = pool("10.89.1.0/24");
        p.reserve("old", ip("10.89.1.9")).unwrap();
        p.reserve("old", ip("10.89.1.9")).unwrap();
        assert!(p.reserve("old", ip("10.89.1.10")).is_err());
        assert_eq!(p.allocate("old").unwrap(), ip("10.89.1.9"));
        assert_eq!(p.allocate("new").unwrap(), ip("10.89.1.2"));
    }

    #[test]
    fn persisted_leases_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        assert_eq!(store.load().unwrap(), Leases::default(), "no file: empty");
        let mut leases = Leases::new();
        let p = leases
            .ensure_pool("backend", cidr("10.89.1.0/24"), None)
            .unwrap();
        p.allocate("web").unwrap();
        p.reserve("db", ip("10.89.1.40")).unwrap();
        leases
            .ensure_pool("default", DEFAULT_NETWORK_SUBNET, None)
            .unwrap()
            .allocate("web")
            .unwrap();
        store.save(&leases).unwrap();
        assert_eq!(store.path(), dir.path().join("networks/leases.json"));

        let mut reloaded = LeaseStore::new(dir.path()).load().unwrap();
        assert_eq!(reloaded, leases);
        let p = reloaded.pool_mut("backend").unwrap();
        assert_eq!(p.allocate("web").unwrap(), ip("10.89.1.2"));
        assert_eq!(p.allocate("new").unwrap(), ip("10.89.1.3"));
        assert!(p.reserve("x", ip("10.89.1.40")).is_err(), "index rebuilt");
    }

    #[test]
    fn corrupt_lease_file_with_a_duplicate_address_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        let json = r#"{"version":1,"networks":{"n":{"network":"n","subnet":"10.89.1.0/24",
            "gateway":"10.89.1.1","leases":{"a":"10.89.1.2","b":"10.89.1.2"}}}}"#;
        crate::state::atomic_write(store.path(), json.as_bytes()).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, IpamError::LoadLeases { .. }), "{err:?}");
        assert!(err.to_string().contains("10.89.1.2"), "{err}");
    }

    #[test]
    fn changed_subnet_replaces_the_pool_and_drops_its_leases() {
        let mut leases = Leases::new();
        leases
            .ensure_pool("n", cidr("10.89.1.0/24"), None)
            .unwrap()
            .allocate("web")
            .unwrap();
        let same = leases.ensure_pool("n", cidr("10.89.1.0/24"), None).unwrap();
        assert_eq!(same.lease("web"), Some(ip("10.89.1.2")), "kept");
        let moved = leases.ensure_pool("n", cidr("10.89.7.0/24"), None).unwrap();
        assert_eq!(moved.lease("web"), None);
        assert_eq!(moved.subnet(), cidr("10.89.7.0/24"));
    }

    #[test]
    fn auto_allocation_takes_the_first_free_slash_24() {
        assert_eq!(first_free_subnet(&[]), Some(cidr("10.89.0.0/24")));
    }

    #[test]
    fn auto_allocation_skips_taken_and_overlapping_subnets() {
        let taken = [
            cidr("10.89.0.0/24"),
            cidr("10.89.1.128/25"),
            cidr("10.89.2.0/23"),
        ];
        assert_eq!(first_free_subnet(&taken), Some(cidr("10.89.4.0/24")));
    }

    #[test]
    fn auto_allocation_fails_when_the_pool_is_covered() {
        assert_eq!(first_free_subnet(&[cidr("10.89.0.0/16")]), None);
        let leases = Leases::new();
        let err = leases.auto_subnet("n", &[cidr("10.0.0.0/8")]).unwrap_err();
        assert!(matches!(err, IpamError::AllocateSubnet { .. }), "{err:?}");
    }

    #[test]
    fn auto_allocated_subnet_is_stable_and_avoids_other_pools() {
        let mut leases = Leases::new();
        let a = leases.auto_subnet("a", &[]).unwrap();
        leases.ensure_pool("a", a, None).unwrap();
        let b = leases.auto_subnet("b", &[cidr("10.89.1.0/24")]).unwrap();
        assert_eq!((a, b), (cidr("10.89.0.0/24"), cidr("10.89.2.0/24")));
        assert_eq!(
            leases.auto_subnet("a", &[]).unwrap(),
            a,
            "kept across calls"
        );
        // A newly declared subnet over `a`'s moves it.
        let moved = leases.auto_subnet("a", &[cidr("10.89.0.0/23")]).unwrap();
        assert_eq!(moved, cidr("10.89.2.0/24"));
    }

    #[test]
    fn overlapping_declared_subnets_are_never_auto_allocated_twice() {
        let mut leases = Leases::new();
        for name in ["a", "b", "c"] {
            let s = leases.auto_subnet(name, &[]).unwrap();
            leases.ensure_pool(name, s, None).unwrap();
        }
        let subnets: Vec<_> = leases.pools().map(|p| p.subnet()).collect();
        for (i, x) in subnets.iter().enumerate() {
            for y in &subnets[i + 1..] {
                assert!(!x.overlaps(*y), "{x} overlaps {y}");
            }
            assert!(!x.overlaps(DEFAULT_NETWORK_SUBNET));
        }
    }
}
