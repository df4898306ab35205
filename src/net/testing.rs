//! A recording fake of [`Network`] and the conformance suite that both the fake and the
//! real [`BridgeNetwork`](super::BridgeNetwork) must pass (as `runtime/testing.rs` does
//! for the runtime), so the reconciler's network planning is tested without root
//! against a fake that cannot drift from the real thing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::driver::{NetError, NetworkConfig, NetworkKind, PortMapping, DEFAULT_NETWORK};
use super::seam::{Address, AttachSpec, Attached, Network, NetworkMember, NetworkStatus};
use crate::manifest::{Ipv4Cidr, DEFAULT_NETWORK_SUBNET};
use crate::runtime::Observed;

#[derive(Debug, Default)]
struct State {
    /// Bridge index per network name, kept across resolves.
    indices: BTreeMap<String, u32>,
    resolved: BTreeMap<String, NetworkConfig>,
    made: BTreeMap<String, NetworkConfig>,
    /// Per container: its addresses, in interface order, and its ports.
    attached: BTreeMap<String, (Vec<Address>, Vec<PortMapping>)>,
}

/// An in-memory network service that records every call (`ensure NAME`,
/// `remove NAME`, `attach CONTAINER`, `detach CONTAINER`, `repair`).
#[derive(Debug, Default)]
pub struct FakeNetwork {
    state: Mutex<State>,
    calls: Mutex<Vec<String>>,
}

impl FakeNetwork {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Names of the networks made.
    pub fn made(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("state")
            .made
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets a made network, as if someone deleted its bridge.
    pub fn lose(&self, name: &str) {
        self.state.lock().expect("state").made.remove(name);
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    fn users(st: &State, network: &str) -> Vec<String> {
        st.attached
            .iter()
            .filter(|(_, (addrs, _))| addrs.iter().any(|a| a.network == network))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

fn config(name: &str, subnet: Ipv4Cidr, internal: bool, index: u32) -> NetworkConfig {
    NetworkConfig {
        name: name.to_owned(),
        kind: NetworkKind::Bridge,
        subnet,
        gateway: subnet.first_host(),
        internal,
        bridge: format!("fakeb{index}"),
    }
}

impl Network for FakeNetwork {
    async fn resolve(
        &self,
        declared: &[crate::manifest::Network],
    ) -> Result<Vec<NetworkConfig>, NetError> {
        let mut st = self.state.lock().expect("state");
        let mut out = vec![config(DEFAULT_NETWORK, DEFAULT_NETWORK_SUBNET, false, 0)];
        for n in declared {
            let next = st.indices.len() as u32 + 1;
            let index = *st.indices.entry(n.metadata.name.clone()).or_insert(next);
            let subnet = n.spec.subnet.unwrap_or(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 89, index as u8, 0),
                prefix: 24,
            });
            out.push(config(&n.metadata.name, subnet, n.spec.internal, index));
        }
        st.resolved = out.iter().map(|n| (n.name.clone(), n.clone())).collect();
        Ok(out)
    }

    async fn list(&self) -> BTreeMap<String, NetworkConfig> {
        self.state.lock().expect("state").made.clone()
    }

    async fn ensure(&self, net: &NetworkConfig) -> Result<(), NetError> {
        self.record(format!("ensure {}", net.name));
        let mut st = self.state.lock().expect("state");
        if let Some(old) = st.made.get(&net.name) {
            let users = Self::users(&st, &net.name);
            if old.subnet != net.subnet && !users.is_empty() {
                return Err(NetError::NetworkInUse {
                    network: net.name.clone(),
                    action: "change the subnet of",
                    containers: users,
                });
            }
        }
        st.made.insert(net.name.clone(), net.clone());
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), NetError> {
        self.record(format!("remove {name}"));
        let mut st = self.state.lock().expect("state");
        let users = Self::users(&st, name);
        if !users.is_empty() {
            return Err(NetError::NetworkInUse {
                network: name.to_owned(),
                action: "remove",
                containers: users,
            });
        }
        st.made.remove(name);
        Ok(())
    }

    async fn attach(&self, spec: &AttachSpec) -> Result<Attached, NetError> {
        self.record(format!("attach {}", spec.container));
        let mut st = self.state.lock().expect("state");
        let mut addresses = Vec::new();
        for name in &spec.networks {
            let net = match (st.resolved.get(name), st.made.get(name)) {
                (Some(r), Some(m)) if r == m => m.clone(),
                _ => {
                    return Err(NetError::NetworkNotReady {
                        network: name.clone(),
                        container: spec.container.clone(),
                    })
                }
            };
            let kept = st
                .attached
                .get(&spec.container)
                .and_then(|(a, _)| a.iter().find(|a| a.network == *name))
                .map(|a| a.ip);
            let ip = kept.unwrap_or_else(|| {
                let taken = Self::users(&st, name).len() as u32;
                Ipv4Addr::from(u32::from(net.subnet.addr) + 2 + taken)
            });
            addresses.push(Address {
                network: name.clone(),
                ip,
            });
        }
        let clash = st.attached.iter().find(|(c, (_, ports))| {
            !spec.standby
                && *c != &spec.container
                && ports.iter().any(|p| {
                    spec.ports
                        .iter()
                        .any(|q| (q.host_port, q.protocol) == (p.host_port, p.protocol))
                })
        });
        if let Some((other, _)) = clash {
            return Err(NetError::PortsUnavailable {
                container: spec.container.clone(),
                reason: format!("a host port is published by container {other:?}"),
            });
        }
        let published = if spec.standby {
            Vec::new()
        } else {
            spec.ports.clone()
        };
        st.attached
            .insert(spec.container.clone(), (addresses.clone(), published));
        Ok(Attached {
            netns: PathBuf::from(format!("/run/fake/netns/{}", spec.container)),
            etc_files: vec![("hostname".into(), format!("{}\n", spec.hostname))],
            addresses,
            ports: spec.ports.clone(),
        })
    }

    async fn handover(&self, from: &str, to: &str, ports: &[PortMapping]) -> Result<(), NetError> {
        self.record(format!("handover {from} {to}"));
        let mut st = self.state.lock().expect("state");
        if !st.attached.contains_key(to) {
            return Err(NetError::InvalidAttach {
                container: to.to_owned(),
                reason: "cannot hand over to an instance that is not attached".into(),
            });
        }
        if let Some((_, p)) = st.attached.get_mut(from) {
            p.clear();
        }
        if let Some((_, p)) = st.attached.get_mut(to) {
            *p = ports.to_vec();
        }
        Ok(())
    }

    async fn detach(&self, container: &str) -> Result<(), NetError> {
        self.record(format!("detach {container}"));
        self.state.lock().expect("state").attached.remove(container);
        Ok(())
    }

    async fn started(&self, _container: &str) {}

    async fn adopt(&self, observed: &[Observed]) {
        let mut st = self.state.lock().expect("state");
        for o in observed {
            if let Some(m) = o.meta.as_ref().filter(|m| !m.addresses.is_empty()) {
                st.attached
                    .insert(o.name.clone(), (m.addresses.clone(), m.ports.clone()));
            }
        }
        let known: Vec<&str> = observed.iter().map(|o| o.name.as_str()).collect();
        st.attached.retain(|c, _| known.contains(&c.as_str()));
    }

    async fn forget_others(&self, known: &[String]) {
        self.record("forget_others".into());
        let mut st = self.state.lock().expect("state");
        st.attached.retain(|c, _| known.contains(c));
    }

    async fn repair(&self, _firewall: bool) -> Result<(), NetError> {
        self.record("repair".into());
        Ok(())
    }

    async fn statuses(&self) -> Vec<NetworkStatus> {
        let st = self.state.lock().expect("state");
        let mut names: Vec<&String> = st.resolved.keys().chain(st.made.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let net = st.resolved.get(name).or_else(|| st.made.get(name));
                NetworkStatus {
                    name: name.clone(),
                    driver: NetworkKind::Bridge,
                    subnet: net.map(|n| n.subnet.to_string()),
                    gateway: net.map(|n| n.gateway),
                    bridge: net.map(|n| n.bridge.clone()),
                    internal: net.is_some_and(|n| n.internal),
                    containers: st
                        .attached
                        .iter()
                        .filter_map(|(c, (addrs, _))| {
                            let a = addrs.iter().find(|a| a.network == *name)?;
                            Some(NetworkMember {
                                name: c.clone(),
                                ip: a.ip,
                            })
                        })
                        .collect(),
                    message: None,
                }
            })
            .collect()
    }
}

/// The behaviour every [`Network`] must have. Panics with the broken rule. Uses a
/// network named `{prefix}net` on `subnet` and containers prefixed with `prefix`;
/// removes what it made, except what resolving alone records.
pub async fn conformance<N: Network>(net: &N, prefix: &str, subnet: Ipv4Cidr) {
    let name = format!("{prefix}net");
    let declared = crate::manifest::Network {
        metadata: crate::manifest::ObjectMeta {
            name: name.clone(),
            ..Default::default()
        },
        spec: crate::manifest::NetworkSpec {
            subnet: Some(subnet),
            ..Default::default()
        },
    };
    // Resolving lists `default` first, then the declared network as declared.
    let resolved = net.resolve(&[declared]).await.expect("resolve");
    assert_eq!(resolved[0].name, DEFAULT_NETWORK, "default first");
    let config = resolved
        .iter()
        .find(|n| n.name == name)
        .expect("declared network resolved")
        .clone();
    assert_eq!((config.subnet, config.kind), (subnet, NetworkKind::Bridge));

    // Nothing attaches to a network not made yet.
    let c1 = format!("{prefix}c1");
    let spec = AttachSpec {
        container: c1.clone(),
        hostname: c1.clone(),
        networks: vec![name.clone()],
        ports: Vec::new(),
        standby: false,
    };
    let err = net.attach(&spec).await.expect_err("not made yet");
    assert!(
        matches!(err, NetError::NetworkNotReady { .. }),
        "not ready: {err}"
    );

    // Ensured, it is listed as resolved; ensuring again changes nothing.
    net.ensure(&config).await.expect("ensure");
    net.ensure(&config).await.expect("ensure again");
    assert_eq!(net.list().await.get(&name), Some(&config), "listed as made");

    // Attached: an address of the subnet, the same one again on a second attach.
    let first = net.attach(&spec).await.expect("attach");
    assert_eq!(first.addresses.len(), 1);
    assert!(subnet.contains(first.addresses[0].ip), "{first:?}");
    assert!(
        first.etc_files.iter().any(|(f, _)| f == "hostname"),
        "{first:?}"
    );
    let again = net.attach(&spec).await.expect("attach again");
    assert_eq!(again.addresses, first.addresses, "same address");
    let status = net.statuses().await;
    let members = &status
        .iter()
        .find(|s| s.name == name)
        .expect("network status")
        .containers;
    assert!(members.iter().any(|m| m.name == c1), "{members:?}");

    // A standby instance (an update's new version) gets its own address; the handover
    // to it works, again too, and only to an attached instance.
    let c2 = format!("{prefix}c1.alt");
    let standby = AttachSpec {
        container: c2.clone(),
        standby: true,
        ..spec.clone()
    };
    let second = net.attach(&standby).await.expect("attach standby");
    assert_ne!(second.addresses, first.addresses, "its own address");
    net.handover(&c1, &c2, &[]).await.expect("handover");
    net.handover(&c1, &c2, &[]).await.expect("handover again");
    let err = net
        .handover(&c1, &format!("{prefix}ghost"), &[])
        .await
        .expect_err("handover to an unattached instance");
    assert!(matches!(err, NetError::InvalidAttach { .. }), "{err}");
    net.detach(&c2).await.expect("detach standby");

    // Removing is refused while a container is attached, and names it.
    let err = net.remove(&name).await.expect_err("in use");
    assert!(
        matches!(&err, NetError::NetworkInUse { containers, .. } if containers.contains(&c1)),
        "{err}"
    );

    // Detached, it goes; detaching or removing what is not there is success.
    net.detach(&c1).await.expect("detach");
    net.detach(&c1).await.expect("detach twice");
    net.remove(&name).await.expect("remove");
    net.remove(&name).await.expect("remove twice");
    assert!(!net.list().await.contains_key(&name), "gone after remove");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_fake_network_passes_the_conformance_suite() {
        let subnet = "10.123.0.0/24".parse().unwrap();
        super::conformance(&super::FakeNetwork::default(), "f", subnet).await;
    }
}
