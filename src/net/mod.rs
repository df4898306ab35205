//! Networking: the `Network` seam the reconciler drives, its bridge implementation,
//! namespaces, IPAM (pure) and the nftables firewall.

pub mod bridge;
pub mod driver;
pub mod firewall;
pub mod hosts;
pub mod ipam;
pub mod link;
pub mod monitor;
pub mod netns;
pub mod overlap;
pub mod seam;
pub mod testing;

pub use bridge::BridgeNetwork;
pub use seam::{Address, AttachSpec, Attached, Network, NetworkMember, NetworkStatus};
