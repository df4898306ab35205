//! Cleaning up after a crash (orphaned links, leases, namespaces, ports) and tearing
//! down everything an instance made.

use std::collections::BTreeSet;

use super::{collected, firewall, link, netns, Leases, NetError, Networks, Records};

impl Networks {
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
        // Their veths go with their namespaces, in the kernel's own time: not strays.
        let mut going = BTreeSet::new();
        for c in &gone {
            for n in self.records.ensured.keys() {
                going.insert(link::veth_name(&self.instance, c, n));
            }
        }
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
            .filter(|l| !expected.contains(l) && !going.contains(l))
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
}
