//! The kernel side of a bridge network, over rtnetlink: the bridge with its gateway
//! address, one veth pair per attached container (the container end `eth0` in the
//! container's network namespace, with its address and default route), and the names
//! that tie these links to one agent instance.
//!
//! Threads and namespaces: a netlink socket belongs to the network namespace of the
//! thread that opened it (netlink(7)). [`Netlink::connect`] opens the host-side socket
//! on the calling thread (an agent's tokio worker, in the host namespace). Container-side
//! work runs on a dedicated thread that joined the container's namespace
//! ([`netns::run_in`]), with its own socket and a current-thread executor that ends
//! with the thread. Structure after netavark's `src/network/bridge.rs` and
//! `netlink.rs`: create in order, undo on failure, teardown that tolerates "not found".

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use super::netns::{self, NetnsError};

/// Errors of link operations; each names the link (and namespace) it failed on.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    #[error("look up link {name}: {source}")]
    GetLink {
        name: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("link {name} does not exist")]
    MissingLink { name: String },
    #[error("list links: {0}")]
    ListLinks(#[source] Box<rtnetlink::Error>),
    #[error("create bridge {name}: {source}")]
    CreateBridge {
        name: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("list addresses of {link}: {source}")]
    ListAddresses {
        link: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("add address {addr}/{prefix_len} to {link}: {source}")]
    AddAddress {
        link: String,
        addr: Ipv4Addr,
        prefix_len: u8,
        source: Box<rtnetlink::Error>,
    },
    #[error("bring up {link}: {source}")]
    SetUp {
        link: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("create veth {host_veth} (peer {ifname} in {}): {source}", netns.display())]
    CreateVeth {
        host_veth: String,
        ifname: String,
        netns: PathBuf,
        source: Box<rtnetlink::Error>,
    },
    #[error("open network namespace {}: {source}", netns.display())]
    OpenNetns { netns: PathBuf, source: io::Error },
    #[error("start a netlink executor in {}: {source}", netns.display())]
    Executor { netns: PathBuf, source: io::Error },
    #[error("configure {ifname} in {}: {source}", netns.display())]
    ConfigureContainer {
        ifname: String,
        netns: PathBuf,
        source: Box<LinkError>,
    },
    #[error("add default route via {gateway} on {link}: {source}")]
    AddRoute {
        link: String,
        gateway: Ipv4Addr,
        source: Box<rtnetlink::Error>,
    },
    #[error("list routes: {0}")]
    ListRoutes(#[source] Box<rtnetlink::Error>),
    #[error("delete link {name}: {source}")]
    DeleteLink {
        name: String,
        source: Box<rtnetlink::Error>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("container-side netlink thread for {} failed: {message}", netns.display())]
    Join { netns: PathBuf, message: String },
    #[error("{error}; cleaning up also failed: {cleanup}")]
    CleanupFailed {
        error: Box<LinkError>,
        cleanup: Box<LinkError>,
    },
    #[error("{}", list_message(.0))]
    Several(Vec<LinkError>),
}

fn list_message(errors: &[LinkError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{} errors: {}", errors.len(), parts.join("; "))
}

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// The container end of a veth pair, as [`Netlink::attach`] made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The host end, enslaved to the bridge; deleting it removes the pair.
    pub host_veth: String,
    /// The MAC address of the container's interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// What [`Netlink::attach`] connects: a container's namespace to a bridge.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub bridge: &'a str,
    /// The host end's name, from [`veth_name`].
    pub host_veth: &'a str,
    /// The container's pinned network namespace (see [`netns::create`]).
    pub netns: &'a Path,
    /// The interface name inside the container, `eth0` for the first network.
    pub ifname: &'a str,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's gateway: only the first network of a container gets one
    /// (Docker's rule); the others are reached through their subnet routes.
    pub gateway: Option<Ipv4Addr>,
}

/// A default route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Ipv4Addr,
    pub link: String,
}

/// An IPv4 route of the main table: where it goes and through which link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub destination: crate::manifest::Ipv4Cidr,
    /// The output interface's name (empty when the route has none, e.g. a blackhole).
    pub link: String,
}

/// Interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const IFNAME_MAX: usize = 15;

/// Six hex characters naming the instance in link names: its id's first six when it is
/// hex (as `agent::instance_id` makes it), otherwise a hash of it.
fn instance_tag(instance: &str) -> String {
    if instance.len() >= 6 && instance.bytes().all(|b| b.is_ascii_hexdigit()) {
        instance[..6].to_ascii_lowercase()
    } else {
        hex::encode(&Sha256::digest(instance.as_bytes())[..3])
    }
}

/// The prefix of every link of `instance` (`wh` + 6 hex), for cleanup after a crash.
pub fn link_prefix(instance: &str) -> String {
    format!("wh{}", instance_tag(instance))
}

/// The bridge of network number `index` of `instance`: `wh<6 hex>b<index hex>`.
pub fn bridge_name(instance: &str, index: u16) -> String {
    format!("{}b{index:x}", link_prefix(instance))
}

/// The host end of the veth of `container` on `network`:
/// `wh<6 hex>v<first 6 hex of sha256(container/network)>`.
pub fn veth_name(instance: &str, container: &str, network: &str) -> String {
    let digest = Sha256::digest(format!("{container}/{network}").as_bytes());
    format!("{}v{}", link_prefix(instance), hex::encode(&digest[..3]))
}

/// A locally administered unicast MAC derived from `name`, so a bridge keeps one MAC:
/// without an explicit address the kernel gives the bridge the lowest MAC of its ports,
/// which changes as containers come and go and leaves stale ARP entries for the
/// gateway in the other containers (Docker sets the bridge MAC for the same reason).
fn stable_mac(name: &str) -> Vec<u8> {
    let digest = Sha256::digest(name.as_bytes());
    let mut mac = digest[..6].to_vec();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// A container interface's MAC, derived from its address (as Docker does): an address
/// that passes from a removed container to a new one (a StartFirst update hands the
/// freed one to the next) keeps its MAC, so the neighbour entries the host and the
/// peers cached for it stay right. A random MAC left them pointing at a gone interface
/// until they expired (tens of seconds of unanswered connections).
fn mac_for(addr: Ipv4Addr) -> Vec<u8> {
    let [a, b, c, d] = addr.octets();
    // Locally administered, unicast; 0x57 ('W') keeps it apart from Docker's 02:42.
    vec![0x02, 0x57, a, b, c, d]
}

/// The MAC address of a link message, `aa:bb:…` (empty when it has none).
fn link_mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
            _ => None,
        })
        .unwrap_or_default()
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::ENODEV)
}

fn link_name_of(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn cleanup_failed(error: LinkError, cleanup: Result<()>) -> LinkError {
    match cleanup {
        Ok(()) => error,
        Err(cleanup) => LinkError::CleanupFailed {
            error: Box::new(error),
            cleanup: Box::new(cleanup),
        },
    }
}

/// A route netlink socket in the network namespace of the thread that connected it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace and drives it on the
    /// current tokio runtime (it needs IO enabled); the driver ends with the last clone.
    pub fn connect() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| LinkError::Connect(io::Error::other(e)))?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// The link called `name`, or `None`.
    async fn find(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(LinkError::GetLink {
                name: name.into(),
                source: Box::new(source),
            }),
        }
    }

    async fn index_of(&self, name: &str) -> Result<u32> {
        match self.find(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(LinkError::MissingLink { name: name.into() }),
        }
    }

    /// The MAC address of `name`, `aa:bb:…`.
    pub async fn mac(&self, name: &str) -> Result<String> {
        let link = self
            .find(name)
            .await?
            .ok_or_else(|| LinkError::MissingLink { name: name.into() })?;
        Ok(link_mac(&link))
    }

    /// Deletes `name`; returns whether it existed.
    async fn delete(&self, name: &str) -> Result<bool> {
        // RTM_DELLINK finds the link by IFLA_IFNAME when the index is 0: one round trip.
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(LinkError::DeleteLink {
                name: name.into(),
                source: Box::new(source),
            }),
        }
    }

    async fn set_up(&self, name: &str, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| LinkError::SetUp {
                link: name.into(),
                source: Box::new(source),
            })
    }

    /// The IPv4 addresses of `name` with their prefix lengths.
    pub async fn addresses(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let index = self.index_of(name).await?;
        self.addresses_of(name, index).await
    }

    async fn addresses_of(&self, name: &str, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let list_error = |source: rtnetlink::Error| LinkError::ListAddresses {
            link: name.into(),
            source: Box::new(source),
        };
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(list_error)? {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links and equal to it elsewhere (rtnetlink(7)).
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if msg.header.index == index {
                if let Some(ip) = local.or(address) {
                    found.push((ip, msg.header.prefix_len));
                }
            }
        }
        Ok(found)
    }

    async fn add_address(
        &self,
        name: &str,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix_len)
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(|source| LinkError::AddAddress {
                link: name.into(),
                addr,
                prefix_len,
                source: Box::new(source),
            }),
        }
    }

    /// Makes sure bridge `name` exists, has `gateway/prefix_len` and is up; creates
    /// only what is missing. A bridge it created is deleted again if a later step fails.
    /// Other addresses already on the bridge are left alone.
    pub async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let (index, created) = match self.find(name).await? {
            Some(link) => (link.header.index, false),
            None => {
                let msg = LinkBridge::new(name).address(stable_mac(name)).build();
                match self.handle.link().add(msg).execute().await {
                    // Another caller made it between our look-up and add: keep theirs.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    other => other.map_err(|source| LinkError::CreateBridge {
                        name: name.into(),
                        source: Box::new(source),
                    })?,
                }
                (self.index_of(name).await?, true)
            }
        };
        let configure = async {
            let present = self.addresses_of(name, index).await?;
            if !present.contains(&(gateway, prefix_len)) {
                self.add_address(name, index, gateway, prefix_len).await?;
            }
            self.set_up(name, index).await
        };
        match configure.await {
            Err(error) if created => {
                let cleanup = self.delete(name).await.map(drop);
                Err(cleanup_failed(error, cleanup))
            }
            other => other,
        }
    }

    /// Deletes bridge `name`; a missing bridge is success. Detach its veths first: the
    /// kernel only unenslaves them.
    pub async fn remove_bridge(&self, name: &str) -> Result<()> {
        self.delete(name).await.map(drop)
    }

    /// Connects the namespace `req.netns` to `req.bridge`: in this order,
    /// 1. one RTM_NEWLINK makes the veth pair with the host end in the bridge and up,
    ///    and the peer created directly inside the container's namespace (by fd) under
    ///    its final name (`ip link add H master B up type veth peer name eth0 netns N`),
    ///    so there is no move or rename step that could fail half-way;
    /// 2. on a thread inside that namespace: address, up, default route via the
    ///    gateway, and the MAC read back.
    ///
    /// If step 2 fails, the veth is deleted again and both errors are reported.
    pub async fn attach(&self, req: &AttachRequest<'_>) -> Result<Attachment> {
        let netns_file = std::fs::File::open(req.netns).map_err(|source| LinkError::OpenNetns {
            netns: req.netns.into(),
            source,
        })?;
        let bridge = self.index_of(req.bridge).await?;
        let peer = LinkUnspec::new_with_name(req.ifname)
            .address(mac_for(req.addr))
            .setns_by_fd(netns_file.as_raw_fd())
            .build();
        let msg = LinkVeth::new(req.host_veth, req.ifname)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge)
            .up()
            .build();
        let created = self.handle.link().add(msg).execute().await;
        // The kernel has resolved the fd by now.
        drop(netns_file);
        created.map_err(|source| LinkError::CreateVeth {
            host_veth: req.host_veth.into(),
            ifname: req.ifname.into(),
            netns: req.netns.into(),
            source: Box::new(source),
        })?;

        let (netns, ifname) = (req.netns.to_path_buf(), req.ifname.to_owned());
        let (addr, prefix_len, gateway) = (req.addr, req.prefix_len, req.gateway);
        let configured = tokio::task::spawn_blocking(move || {
            configure_container(&netns, &ifname, addr, prefix_len, gateway)
        })
        .await
        .unwrap_or_else(|e| {
            Err(LinkError::Join {
                netns: req.netns.into(),
                message: e.to_string(),
            })
        });
        match configured {
            Ok(mac) => Ok(Attachment {
                host_veth: req.host_veth.into(),
                mac,
            }),
            Err(error) => {
                let cleanup = self.delete(req.host_veth).await.map(drop);
                Err(cleanup_failed(error, cleanup))
            }
        }
    }

    /// Deletes the host end `host_veth` (which deletes its peer); missing is success.
    pub async fn detach(&self, host_veth: &str) -> Result<()> {
        self.delete(host_veth).await.map(drop)
    }

    /// The names of all links starting with `prefix` (e.g. [`link_prefix`]), sorted.
    pub async fn list_links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| LinkError::ListLinks(Box::new(e)))?
        {
            if let Some(name) = link_name_of(&link).filter(|n| n.starts_with(prefix)) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Deletes every link starting with `prefix`, veths before bridges; best-effort:
    /// tries all and reports every failure. Returns the names it deleted.
    pub async fn remove_links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = self.list_links_with_prefix(prefix).await?;
        // Bridge names carry `b` right after the prefix, veths `v`.
        names.sort_by_key(|n| n[prefix.len().min(n.len())..].starts_with('b'));
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for name in names {
            match self.delete(&name).await {
                Ok(true) => removed.push(name),
                // Gone already: a veth whose peer was deleted first.
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(LinkError::Several(errors))
        }
    }

    /// Every IPv4 route of the main table (the uplink's subnet, other bridges' subnets,
    /// static routes, the default route), with its output interface's name.
    pub async fn routes_v4(&self) -> Result<Vec<HostRoute>> {
        let mut names = std::collections::HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| LinkError::ListRoutes(Box::new(e)))?
        {
            names.insert(
                link.header.index,
                link_name_of(&link).unwrap_or_default().to_owned(),
            );
        }
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        let mut out = Vec::new();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(|e| LinkError::ListRoutes(Box::new(e)))?
        {
            // RT_TABLE_MAIN: the local table's per-address entries say nothing more.
            if route.header.table != 254 {
                continue;
            }
            let addr = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let link = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Oif(i) => names.get(i).cloned(),
                    _ => None,
                })
                .unwrap_or_default();
            out.push(HostRoute {
                destination: crate::manifest::Ipv4Cidr {
                    addr,
                    prefix: route.header.destination_prefix_length,
                },
                link,
            });
        }
        Ok(out)
    }

    /// The main table's IPv4 default route, if any.
    pub async fn default_route(&self) -> Result<Option<DefaultRoute>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(|e| LinkError::ListRoutes(Box::new(e)))?
        {
            if route.header.destination_prefix_length != 0 {
                continue;
            }
            let gateway = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let (Some(gateway), Some(oif)) = (gateway, oif) {
                let mut links = self.handle.link().get().match_index(oif).execute();
                let link = links
                    .try_next()
                    .await
                    .map_err(|source| LinkError::GetLink {
                        name: format!("#{oif}"),
                        source: Box::new(source),
                    })?;
                let link = link.as_ref().and_then(link_name_of).unwrap_or_default();
                return Ok(Some(DefaultRoute {
                    gateway,
                    link: link.to_owned(),
                }));
            }
        }
        Ok(None)
    }
}

/// Runs `f` with a [`Netlink`] whose socket lives in the namespace at `netns`, on a
/// dedicated thread with a current-thread executor (both end when `f` is done).
/// Blocking: from async code call it inside `spawn_blocking`.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send,
{
    netns::run_in(netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| LinkError::Executor {
                netns: netns.into(),
                source,
            })?;
        runtime.block_on(async {
            let netlink = Netlink::connect()?;
            f(netlink).await
        })
    })?
}

/// The container side of [`Netlink::attach`], inside the container's namespace.
fn configure_container(
    netns: &Path,
    ifname: &str,
    addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<String> {
    let result = in_netns(netns, |nl| async move {
        let link = nl
            .find(ifname)
            .await?
            .ok_or_else(|| LinkError::MissingLink {
                name: ifname.into(),
            })?;
        let index = link.header.index;
        nl.add_address(ifname, index, addr, prefix_len).await?;
        nl.set_up(ifname, index).await?;
        if let Some(gateway) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            nl.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(|source| LinkError::AddRoute {
                    link: ifname.into(),
                    gateway,
                    source: Box::new(source),
                })?;
        }
        Ok(link_mac(&link))
    });
    result.map_err(|source| match source {
        LinkError::Netns(_) => source,
        other => LinkError::ConfigureContainer {
            ifname: ifname.into(),
            netns: netns.into(),
            source: Box::new(other),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE: &str = "3fa29c01";

    #[test]
    fn bridge_names_fit_ifnamsiz_and_are_stable() {
        assert_eq!(bridge_name(INSTANCE, 0), "wh3fa29cb0");
        assert_eq!(bridge_name(INSTANCE, 0x2a), "wh3fa29cb2a");
        assert_eq!(bridge_name(INSTANCE, u16::MAX), "wh3fa29cbffff");
        assert!(bridge_name(INSTANCE, u16::MAX).len() <= IFNAME_MAX);
    }

    #[test]
    fn veth_names_fit_ifnamsiz_are_stable_and_differ_per_container_and_network() {
        let web = veth_name(INSTANCE, "web", "default");
        assert_eq!(web.len(), IFNAME_MAX);
        assert!(web.starts_with("wh3fa29cv"));
        assert_eq!(web, veth_name(INSTANCE, "web", "default"));
        // sha256("web/default") starts 0x8e 0x5d …; pin it so a change of scheme is seen.
        assert_eq!(&web[9..], &hex::encode(Sha256::digest(b"web/default"))[..6]);
        assert_ne!(web, veth_name(INSTANCE, "web", "backend"));
        assert_ne!(web, veth_name(INSTANCE, "db", "default"));
        let long = "a-container-name-much-longer-than-fifteen-characters";
        assert_eq!(veth_name(INSTANCE, long, long).len(), IFNAME_MAX);
    }

    #[test]
    fn every_name_starts_with_the_instance_prefix_even_for_odd_instance_ids() {
        for instance in [INSTANCE, "ABCDEF12", "x", "not-hex-at-all", ""] {
            let prefix = link_prefix(instance);
            assert_eq!(prefix.len(), 8, "{instance}");
            assert!(prefix.starts_with("wh"));
            assert!(bridge_name(instance, 7).starts_with(&prefix));
            assert!(veth_name(instance, "c", "n").starts_with(&prefix));
            assert!(veth_name(instance, "c", "n").len() <= IFNAME_MAX);
        }
        assert_ne!(link_prefix("x"), link_prefix("y"));
    }

    #[test]
    fn a_container_mac_is_derived_from_its_address() {
        let mac = mac_for(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(format_mac(&mac), "02:57:0a:58:00:02");
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn the_bridge_mac_is_locally_administered_unicast_and_stable() {
        let mac = stable_mac("wh3fa29cb0");
        assert_eq!(mac.len(), 6);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac, stable_mac("wh3fa29cb0"));
        assert_ne!(mac, stable_mac("wh3fa29cb1"));
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
    }
}
