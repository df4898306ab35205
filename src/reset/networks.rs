//! Networks: a snapshot of what the instance has in the kernel before and after, the
//! driver's teardown from the network records, and a sweep by name when there are no
//! records; what went is told by the difference of the two snapshots.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Removed, ResetError};
use crate::net::driver::Networks;
use crate::net::firewall;
use crate::net::link::{self, Netlink};
use crate::net::netns;

/// What of the instance's networking exists now: links with its prefix, whether its
/// nftables table exists (`None`: unknown), its namespace files.
struct NetSnapshot {
    links: BTreeSet<String>,
    table: Option<bool>,
    namespaces: BTreeSet<PathBuf>,
}

async fn net_snapshot(
    netlink: &Netlink,
    instance: &str,
    run_dir: &Path,
    errors: &mut Vec<ResetError>,
) -> NetSnapshot {
    let links = match netlink
        .list_links_with_prefix(&link::link_prefix(instance))
        .await
    {
        Ok(links) => links.into_iter().collect(),
        Err(e) => {
            errors.push(e.into());
            BTreeSet::new()
        }
    };
    let table = firewall::wharf_tables()
        .ok()
        .map(|t| t.contains(&firewall::table_name(instance)));
    let namespaces = netns::list(&run_dir.join("netns"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    NetSnapshot {
        links,
        table,
        namespaces,
    }
}

/// Every attachment, bridge, link with the instance's prefix, its nftables table, and
/// the network records, through the driver's teardown. Without a state root (purged
/// before) there are no records: what the kernel has is swept by name alone.
pub(super) async fn remove_networks(
    state: &Path,
    run_dir: &Path,
    instance: &str,
) -> (Vec<Removed>, Vec<ResetError>) {
    let mut errors = Vec::new();
    let netlink = match Netlink::connect() {
        Ok(n) => n,
        Err(e) => return (Vec::new(), vec![e.into()]),
    };
    let before = net_snapshot(&netlink, instance, run_dir, &mut errors).await;
    let mut networks = Vec::new();
    let driver = state
        .is_dir()
        .then(|| Networks::new(instance, state, run_dir));
    match driver {
        Some(Ok(mut nets)) => {
            networks = nets.networks().values().cloned().collect();
            if let Err(e) = nets.teardown().await {
                errors.push(e.into());
            }
        }
        Some(Err(e)) => {
            errors.push(e.into());
            sweep_by_name(&netlink, instance, &before, &mut errors).await;
        }
        None => sweep_by_name(&netlink, instance, &before, &mut errors).await,
    }
    let after = net_snapshot(&netlink, instance, run_dir, &mut errors).await;

    let mut removed = Vec::new();
    let bridges: BTreeSet<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    for n in &networks {
        if !after.links.contains(&n.bridge) {
            removed.push(Removed::Network {
                name: n.name.clone(),
                bridge: n.bridge.clone(),
            });
        }
    }
    for l in before.links.difference(&after.links) {
        if !bridges.contains(l.as_str()) {
            removed.push(Removed::Link(l.clone()));
        }
    }
    for ns in before.namespaces.difference(&after.namespaces) {
        removed.push(Removed::Netns(ns.clone()));
    }
    if before.table == Some(true) && after.table == Some(false) {
        removed.push(Removed::Table(firewall::table_name(instance)));
    }
    (removed, errors)
}

/// Without records (no state root, or unreadable ones): what the kernel has, by name.
/// Namespaces first (the container ends of veths go with them), then links (veths
/// before bridges), then the table.
async fn sweep_by_name(
    netlink: &Netlink,
    instance: &str,
    found: &NetSnapshot,
    errors: &mut Vec<ResetError>,
) {
    for ns in &found.namespaces {
        if let Err(e) = netns::remove(ns) {
            errors.push(e.into());
        }
    }
    if let Err(e) = netlink
        .remove_links_with_prefix(&link::link_prefix(instance))
        .await
    {
        errors.push(e.into());
    }
    // Unknown (`nft` did not answer): try, so the error says why.
    if found.table != Some(false) {
        if let Err(e) = firewall::remove(instance) {
            errors.push(e.into());
        }
    }
}
