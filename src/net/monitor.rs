//! Noticing at once when someone changes the kernel objects networking relies on: a
//! link of this instance deleted (a veth, a bridge), or the nftables ruleset changed
//! (`nft flush ruleset`, a firewalld reload: a long-standing Docker complaint is that
//! this silently breaks its published ports). Two netlink sockets subscribed to the
//! kernel's notifications (`RTMGRP_LINK`, `NFNLGRP_NFTABLES`) wake the agent, which
//! then repairs what is missing; the periodic resync stays as the safety net.
//!
//! Only what concerns this instance wakes it: a deleted link whose name carries this
//! instance's prefix, a ruleset change that names this instance's table (`nft flush
//! ruleset` deletes it by name; another tool's changes to its own tables do not
//! concern us). Our own changes notify too (the repair then finds nothing to do), and
//! changes are gathered for a moment before the one check they call for.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// `RTMGRP_LINK`: link notifications on a `NETLINK_ROUTE` socket.
const RTMGRP_LINK: u32 = 1;
/// `NFNLGRP_NFTABLES` (7) as a bind-time group mask.
const NFNLGRP_NFTABLES_MASK: u32 = 1 << (7 - 1);
/// `RTM_DELLINK`.
const RTM_DELLINK: u16 = 17;
/// `IFLA_IFNAME`.
const IFLA_IFNAME: u16 = 3;
/// `sizeof(struct nlmsghdr)`, `sizeof(struct ifinfomsg)`.
const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nftables message's type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN`: the generation notice that ends every batch; names no table.
const NFT_MSG_NEWGEN: u16 = 15;
/// `sizeof(struct nfgenmsg)`.
const NFGENMSG: usize = 4;
/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`...: every
/// nftables object message names its table in attribute 1.
const NFTA_TABLE: u16 = 1;

/// What changed since the last [`Drift::changed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// A link with this instance's prefix was deleted.
    pub links: bool,
    /// The nftables ruleset changed.
    pub firewall: bool,
}

#[derive(Debug, Default)]
struct Shared {
    links: AtomicBool,
    firewall: AtomicBool,
    notify: Notify,
}

/// The watch on the kernel's notifications; dropping it stops the watching tasks.
#[derive(Debug)]
pub struct Drift {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Drift {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn subscribe(protocol: SockProtocol, groups: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        protocol,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    crate::runtime::linux::async_fd(fd)
}

/// Each message of a netlink batch: its type and its payload (after the header).
/// Bounded by the batch: a length that lies ends the walk.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > buf.len() {
            return None;
        }
        let payload = &buf[NLMSG_HDR..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

/// The string value of attribute `want` among `attrs`, if present.
fn string_attr(mut attrs: &[u8], want: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        // The top two bits are flags (nested, byte order).
        let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            return None;
        }
        if atype == want {
            let value = attrs[4..alen].split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    None
}

/// The names of the links an `RTM_DELLINK` batch reports deleted.
fn deleted_links(buf: &[u8]) -> Vec<String> {
    messages(buf)
        .filter(|(kind, payload)| *kind == RTM_DELLINK && payload.len() >= IFINFO)
        .filter_map(|(_, payload)| string_attr(&payload[IFINFO..], IFLA_IFNAME))
        .collect()
}

/// Whether an nftables notification batch may concern table `table`: a message names
/// it, or names no table at all (not understood: taken as concerning us).
fn concerns_table(buf: &[u8], table: &str) -> bool {
    messages(buf)
        .filter(|(kind, _)| kind >> 8 == NFNL_SUBSYS_NFTABLES && kind & 0xff != NFT_MSG_NEWGEN)
        .any(|(_, payload)| {
            payload
                .get(NFGENMSG..)
                .and_then(|attrs| string_attr(attrs, NFTA_TABLE))
                .is_none_or(|name| name == table)
        })
}

impl Drift {
    /// Starts watching, in the calling thread's network namespace (the agent's). Needs a
    /// tokio runtime with IO. Either socket failing (an old kernel, a seccomp filter)
    /// leaves only the periodic resync for that kind, and is reported.
    pub fn watch(link_prefix: &str, table: &str) -> Self {
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        match subscribe(SockProtocol::NetlinkRoute, RTMGRP_LINK) {
            Ok(fd) => {
                let (shared, prefix) = (shared.clone(), link_prefix.to_owned());
                tasks.push(
                    tokio::spawn(async move {
                        read_loop(fd, |batch| {
                            // An empty batch: notifications were dropped, any link may
                            // be gone.
                            let ours = batch.is_empty()
                                || deleted_links(batch).iter().any(|n| n.starts_with(&prefix));
                            if ours {
                                shared.links.store(true, Ordering::SeqCst);
                                shared.notify.notify_one();
                            }
                        })
                        .await
                    })
                    .abort_handle(),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch link changes; relying on the resync")
            }
        }
        match subscribe(SockProtocol::NetlinkNetFilter, NFNLGRP_NFTABLES_MASK) {
            Ok(fd) => {
                let (shared, table) = (shared.clone(), table.to_owned());
                tasks.push(
                    tokio::spawn(async move {
                        read_loop(fd, |batch| {
                            // An empty batch: notifications were dropped.
                            if batch.is_empty() || concerns_table(batch, &table) {
                                shared.firewall.store(true, Ordering::SeqCst);
                                shared.notify.notify_one();
                            }
                        })
                        .await
                    })
                    .abort_handle(),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch nftables changes; relying on the resync")
            }
        }
        Drift { shared, tasks }
    }

    /// Resolves with what changed, once something did.
    pub async fn changed(&self) -> Changes {
        loop {
            let changes = self.take();
            if changes != Changes::default() {
                return changes;
            }
            self.shared.notify.notified().await;
        }
    }

    /// What changed since the last call, without waiting.
    pub fn take(&self) -> Changes {
        Changes {
            links: self.shared.links.swap(false, Ordering::SeqCst),
            firewall: self.shared.firewall.swap(false, Ordering::SeqCst),
        }
    }
}

/// Repairs the networks of `network` whenever the kernel says their objects changed,
/// after [`GATHER`] to take a burst (a teardown deleting many veths) in one go. Runs
/// until the task is aborted.
pub async fn repair_on_drift<N: super::Network>(drift: Drift, network: Arc<N>) {
    loop {
        let first = drift.changed().await;
        tokio::time::sleep(GATHER).await;
        let more = drift.take();
        let firewall = first.firewall || more.firewall;
        if let Err(e) = network.repair(firewall).await {
            tracing::warn!(error = %e, "repair networks");
        }
    }
}

/// How long a repair waits for more notifications to gather.
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads notification batches until the socket fails; `seen` gets each batch.
async fn read_loop(fd: AsyncFd<OwnedFd>, mut seen: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => seen(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            // The kernel dropped notifications (its buffer overflowed): something
            // changed, what is unknown.
            Err(nix::errno::Errno::ENOBUFS) => seen(&[]),
            Err(e) => {
                tracing::warn!(error = %e, "netlink notifications stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_attr(kind: u16, value: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let value: Vec<u8> = value.bytes().chain([0]).collect();
        attr.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&kind.to_ne_bytes());
        attr.extend_from_slice(&value);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        attr
    }

    fn message(kind: u16, fixed: usize, attrs: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR + fixed + attrs.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend(std::iter::repeat_n(0u8, fixed));
        msg.extend_from_slice(attrs);
        msg
    }

    fn dellink(name: &str) -> Vec<u8> {
        message(RTM_DELLINK, IFINFO, &string_attr(IFLA_IFNAME, name))
    }

    /// An nftables notification: `NFT_MSG_*` number `msg` about an object of `table`.
    fn nft(msg: u16, table: Option<&str>) -> Vec<u8> {
        let attrs = table.map_or_else(Vec::new, |t| string_attr(NFTA_TABLE, t));
        message((NFNL_SUBSYS_NFTABLES << 8) | msg, NFGENMSG, &attrs)
    }

    #[test]
    fn a_ruleset_change_concerns_us_only_when_it_names_our_table() {
        const DELTABLE: u16 = 2;
        const NEWRULE: u16 = 6;
        let gen = nft(NFT_MSG_NEWGEN, None);
        // Another tool (firewalld, Docker) changing its own table, ended by the
        // generation notice.
        let theirs = [nft(NEWRULE, Some("firewalld")), gen.clone()].concat();
        assert!(!concerns_table(&theirs, "wharf_a1"));
        assert!(!concerns_table(&gen, "wharf_a1"));
        // `nft flush ruleset`: every table deleted by name, ours among them.
        let flush = [
            nft(DELTABLE, Some("firewalld")),
            nft(DELTABLE, Some("wharf_a1")),
            gen.clone(),
        ]
        .concat();
        assert!(concerns_table(&flush, "wharf_a1"));
        assert!(
            !concerns_table(&flush, "wharf_b2"),
            "another instance's table"
        );
        // A message naming no table is not understood: taken as ours.
        assert!(concerns_table(&nft(NEWRULE, None), "wharf_a1"));
        // Not nftables at all, or garbage: nothing.
        assert!(!concerns_table(&dellink("wharf_a1"), "wharf_a1"));
        assert!(!concerns_table(&[7; 3], "wharf_a1"));
    }

    #[test]
    fn deleted_link_names_are_read_from_a_batch_and_garbage_is_ignored() {
        let mut batch = dellink("wh3fa29cv1a2b3c");
        batch.extend(dellink("eth7"));
        assert_eq!(deleted_links(&batch), ["wh3fa29cv1a2b3c", "eth7"]);
        assert!(deleted_links(&[1, 2, 3]).is_empty());
        let mut lying = dellink("x");
        lying[0] = 255; // a length past the end
        assert!(deleted_links(&lying).is_empty());
        // A last attribute without its padding.
        let mut short = dellink("abcde");
        short.truncate(short.len() - 2);
        let len = short.len() as u32;
        short[..4].copy_from_slice(&len.to_ne_bytes());
        let attr_at = NLMSG_HDR + IFINFO;
        let alen = (short.len() - attr_at) as u16;
        short[attr_at..attr_at + 2].copy_from_slice(&alen.to_ne_bytes());
        assert_eq!(deleted_links(&short), ["abcde"]);
    }
}
