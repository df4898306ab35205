//! Networking: bridges, namespaces, IPAM (pure) and the nftables firewall.

pub mod driver;
pub mod firewall;
pub mod hosts;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod overlap;
pub mod runtime;

pub use runtime::NetworkedRuntime;
