//! Network and Volume specs, and the CIDR types they use.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::decode::{boolean, fields, one_of, string, Ctx};
use super::types::{Ipv6Spec, NetworkSpec, ReclaimPolicy, VolumeSpec};
use super::yaml::Node;

/// The built-in `default` network's subnet (manifest-v1: bridge, 10.88.0.0/16).
pub const DEFAULT_NETWORK_SUBNET: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 88, 0, 0),
    prefix: 16,
};

/// An IPv4 subnet, `10.89.1.0/24`; host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The broadcast (last) address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The first host address: the default gateway.
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// Parses `a.b.c.d/n`; host bits must be zero (the fix is suggested).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 subnet; expected e.g. 10.89.1.0/24");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let cidr = Ipv4Cidr { addr, prefix };
        let network = Ipv4Addr::from(u32::from(addr) & cidr.mask());
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {network}/{prefix}?"
            ));
        }
        Ok(cidr)
    }
}

/// An IPv6 subnet, `fd00:89:1::/64`; host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length, 0 to 128.
    pub prefix: u8,
}

impl Ipv6Cidr {
    fn mask(self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(self, other: Ipv6Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv6 subnet; expected e.g. fd00:89:1::/64");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128).ok_or_else(bad)?;
        let cidr = Ipv6Cidr { addr, prefix };
        let network = Ipv6Addr::from(u128::from(addr) & cidr.mask());
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {network}/{prefix}?"
            ));
        }
        Ok(cidr)
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(Ipv4Cidr);
serde_as_string!(Ipv6Cidr);

pub(crate) fn decode_network_spec(cx: &mut Ctx, node: &Node) -> Option<NetworkSpec> {
    let f = fields(
        cx,
        node,
        "Network spec",
        &["subnet", "gateway", "internal", "ipv6"],
    )?;
    let mut spec = NetworkSpec::default();
    if let Some(n) = f.get("subnet") {
        spec.subnet = string(cx, n, "subnet").and_then(|s| {
            let parsed = s.parse::<Ipv4Cidr>().map_err(|e| format!("subnet {e}"));
            let checked = parsed.and_then(|c| {
                if c.prefix > 30 {
                    Err(format!(
                        "subnet {c} is too small: use a prefix of /30 or shorter (room for a gateway and a container)"
                    ))
                } else if c.overlaps(DEFAULT_NETWORK_SUBNET) {
                    Err(format!(
                        "subnet {c} overlaps the built-in network \"default\" ({DEFAULT_NETWORK_SUBNET}); choose another, e.g. in 10.89.0.0/16"
                    ))
                } else {
                    Ok(c)
                }
            });
            checked.map_err(|e| cx.error(n.pos, e)).ok()
        });
    }
    if let Some(n) = f.get("gateway") {
        let gateway = string(cx, n, "gateway").and_then(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| cx.error(n.pos, format!("gateway {s:?} is not an IPv4 address")))
                .ok()
        });
        match (gateway, spec.subnet, f.get("subnet")) {
            (Some(gw), Some(subnet), _) => {
                if !subnet.contains(gw) {
                    cx.error(
                        n.pos,
                        format!("gateway {gw} is outside the subnet {subnet}"),
                    );
                } else if gw == subnet.addr || gw == subnet.broadcast() {
                    cx.error(
                        n.pos,
                        format!(
                            "gateway {gw} is the network or broadcast address of {subnet}; e.g. {}",
                            subnet.first_host()
                        ),
                    );
                } else {
                    spec.gateway = Some(gw);
                }
            }
            // Without a subnet the address range is allocated later, so a fixed
            // gateway could fall outside it.
            (Some(_), None, None) => cx.error(
                n.pos,
                "gateway needs a subnet: set spec.subnet, or leave gateway out",
            ),
            _ => {}
        }
    }
    if let Some(n) = f.get("internal") {
        spec.internal = boolean(cx, n, "internal").unwrap_or(false);
    }
    if let Some(n) = f.get("ipv6") {
        spec.ipv6 = fields(cx, n, "ipv6", &["subnet"]).and_then(|v6| {
            let sn = v6.required(cx, "subnet", "ipv6")?;
            let s = string(cx, sn, "ipv6.subnet")?;
            let subnet = s
                .parse::<Ipv6Cidr>()
                .and_then(|c| {
                    if c.prefix > 124 {
                        Err(format!("{c} is too small: use a prefix of /124 or shorter"))
                    } else {
                        Ok(c)
                    }
                })
                .map_err(|e| cx.error(sn.pos, format!("ipv6.subnet {e}")))
                .ok()?;
            Some(Ipv6Spec { subnet })
        });
    }
    Some(spec)
}

pub(crate) fn decode_volume_spec(cx: &mut Ctx, node: &Node) -> Option<VolumeSpec> {
    let f = fields(cx, node, "Volume spec", &["reclaimPolicy"])?;
    let mut spec = VolumeSpec::default();
    if let Some(n) = f.get("reclaimPolicy") {
        spec.reclaim_policy = one_of(
            cx,
            n,
            "reclaimPolicy",
            &[
                ("Retain", ReclaimPolicy::Retain),
                ("Delete", ReclaimPolicy::Delete),
            ],
        )?;
    }
    Some(spec)
}
