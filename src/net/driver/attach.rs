//! Attaching containers to their networks (netns-first, undo on failure, re-adoption
//! after a restart) and detaching them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use std::path::{Path, PathBuf};

use super::{
    blocking, collected, link, netns, AttachRequest, ContainerAttachment, ContainerNet, Made,
    NetError, NetworkConfig, NetworkKind, Networks, HOST_NETNS,
};

impl Networks {
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
    ) -> Result<&mut crate::net::ipam::Ipam, NetError> {
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
        let path = netns::path_for(&self.run_dir, container);
        if netns::exists(&path) {
            // Freeing the namespace frees its links: the kernel deletes each veth pair
            // in its namespace cleanup, which it batches across namespaces, instead of
            // one synchronous RTM_DELLINK (~15 ms, an RCU wait) per veth; tearing down
            // 100 networked containers took 3.5 s that way. (The container's processes
            // are gone: the namespace has no other holder.) A host end still there when
            // the same name is attached again is deleted then (`attach_one`).
            let p = path.clone();
            match blocking(move || netns::remove(&p).map_err(NetError::from)).await {
                Ok(()) => {
                    let mut released = false;
                    for network in &networks {
                        if let Some(p) = self.leases.pool_mut(network) {
                            released |= p.release(container).is_some();
                        }
                    }
                    if released {
                        if let Err(e) = self.save_leases() {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        } else {
            for network in networks {
                self.detach_one(container, &network, &mut errors).await;
            }
        }
        if errors.is_empty() {
            self.attached.remove(container);
            self.standby.remove(container);
        }
        collected(errors)
    }
}
