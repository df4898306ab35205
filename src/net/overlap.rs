//! Subnets that would collide with the host's routes.
//!
//! A bridge whose subnet overlaps a route the host already has (the uplink's, Docker's
//! `docker0`, another wharf agent's `default`) takes traffic from the other one, or
//! loses it to it, with no error anywhere: two agents both made `default` with
//! 10.88.0.0/16 and their containers' packets went to the wrong bridge. As Docker
//! ("Pool overlaps with other one on this address space"), such a subnet is refused;
//! the built-in `default` instead moves to the first free candidate. The default route
//! (prefix 0) overlaps everything and is no conflict; nor is our own bridge's route.

use crate::manifest::{Ipv4Cidr, DEFAULT_NETWORK_SUBNET};

use super::link::HostRoute;

/// The route of another link that overlaps `subnet`, if any. `own` is the bridge the
/// subnet is (or will be) on.
pub fn conflicting_route<'a>(
    subnet: Ipv4Cidr,
    own: &str,
    routes: &'a [HostRoute],
) -> Option<&'a HostRoute> {
    routes
        .iter()
        .find(|r| r.destination.prefix > 0 && r.link != own && r.destination.overlaps(subnet))
}

/// Where the built-in `default` network may go, in order: 10.88.0.0/16 as podman, then
/// 10.90.0.0/16 to 10.99.0.0/16 (10.89.0.0/16 is where declared networks get their
/// subnets).
pub fn default_candidates() -> impl Iterator<Item = Ipv4Cidr> {
    std::iter::once(DEFAULT_NETWORK_SUBNET).chain((90..=99).map(|b| Ipv4Cidr {
        addr: std::net::Ipv4Addr::new(10, b, 0, 0),
        prefix: 16,
    }))
}

/// The first candidate for `default` (on bridge `own`) that overlaps no route of
/// another link and none of `declared`.
pub fn free_default_subnet(
    own: &str,
    routes: &[HostRoute],
    declared: &[Ipv4Cidr],
) -> Option<Ipv4Cidr> {
    default_candidates().find(|c| {
        conflicting_route(*c, own, routes).is_none() && !declared.iter().any(|d| d.overlaps(*c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cidr: &str, link: &str) -> HostRoute {
        HostRoute {
            destination: cidr.parse().unwrap(),
            link: link.into(),
        }
    }

    #[test]
    fn another_links_route_conflicts_and_our_own_or_the_default_route_does_not() {
        let routes = [
            route("0.0.0.0/0", "eth0"),
            route("192.0.2.0/24", "eth0"),
            route("10.88.0.0/16", "whaaaaaab0"),
        ];
        let subnet = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
        assert_eq!(
            conflicting_route(subnet("10.88.1.0/24"), "whbbbbbbb1", &routes),
            Some(&routes[2])
        );
        assert_eq!(
            conflicting_route(subnet("10.88.0.0/16"), "whaaaaaab0", &routes),
            None
        );
        assert_eq!(
            conflicting_route(subnet("192.0.0.0/8"), "x", &routes),
            Some(&routes[1])
        );
        assert_eq!(
            conflicting_route(subnet("10.89.0.0/24"), "x", &routes),
            None
        );
    }

    #[test]
    fn default_moves_to_the_first_free_candidate_or_has_none() {
        let taken = [
            route("10.88.0.0/16", "docker0"),
            route("10.90.0.0/15", "other"),
        ];
        let declared = ["10.92.3.0/24".parse().unwrap()];
        assert_eq!(
            free_default_subnet("mine", &taken, &declared),
            Some("10.93.0.0/16".parse().unwrap())
        );
        assert_eq!(
            free_default_subnet("mine", &[], &[]),
            Some(DEFAULT_NETWORK_SUBNET)
        );
        let everything = [route("10.0.0.0/8", "vpn0")];
        assert_eq!(free_default_subnet("mine", &everything, &[]), None);
    }
}
