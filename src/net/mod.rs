//! Networking: bridges, namespaces, IPAM (pure) and the nftables firewall.

pub mod firewall;
pub mod ipam;
pub mod link;
pub mod netns;
