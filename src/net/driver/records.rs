//! What the driver keeps on disk besides the leases: each network's bridge index
//! (so a bridge keeps its name across restarts and manifest edits) and the config
//! of every network whose bridge exists (so a restarted agent can rebuild the
//! firewall and remove a network nobody declares any more).
//!
//! Indices are *kept*, not derived: a hash of the name would fit in the 15-byte
//! interface name only with a few hex digits, and two names could then collide
//! with no stable way to break the tie. The built-in `default` network is always
//! index 0; every other network takes the lowest free index when first resolved and
//! keeps it until it is removed. The file sits next to `leases.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NetworkConfig, DEFAULT_NETWORK};

/// `<state>/networks/networks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Records {
    #[serde(default = "version")]
    version: u32,
    /// Network name → bridge index.
    #[serde(default)]
    pub indices: BTreeMap<String, u16>,
    /// Networks whose bridge `ensure_network` made, by name.
    #[serde(default)]
    pub ensured: BTreeMap<String, NetworkConfig>,
    /// The subnet of the built-in `default`, chosen when first resolved (see
    /// `overlap::free_default_subnet`) and kept, so addresses stay stable. Absent in
    /// records of older agents, which always used 10.88.0.0/16.
    #[serde(default)]
    pub default_subnet: Option<crate::manifest::Ipv4Cidr>,
}

fn version() -> u32 {
    1
}

impl Records {
    pub fn new() -> Self {
        Records {
            version: version(),
            ..Records::default()
        }
    }

    /// The index of `network`, assigning the lowest free one (from 1) on first use;
    /// `None` when all 65535 are taken. Returns whether the records changed.
    pub fn index_for(&mut self, network: &str) -> Option<(u16, bool)> {
        if network == DEFAULT_NETWORK {
            let changed = self.indices.insert(network.to_owned(), 0) != Some(0);
            return Some((0, changed));
        }
        if let Some(i) = self.indices.get(network) {
            return Some((*i, false));
        }
        let used: BTreeSet<u16> = self.indices.values().copied().collect();
        let free = (1..=u16::MAX).find(|i| !used.contains(i))?;
        self.indices.insert(network.to_owned(), free);
        Some((free, true))
    }

    /// Forgets the indices of networks neither in `keep` nor ensured (declared once,
    /// never made, now gone). Returns whether anything was dropped.
    pub fn prune(&mut self, keep: &BTreeSet<&str>) -> bool {
        let before = self.indices.len();
        let ensured = &self.ensured;
        self.indices
            .retain(|name, _| keep.contains(name.as_str()) || ensured.contains_key(name));
        before != self.indices.len()
    }
}

/// Where [`Records`] live.
#[derive(Clone, Debug)]
pub(super) struct RecordStore {
    pub path: PathBuf,
}

impl RecordStore {
    pub fn new(state_root: &Path) -> Self {
        RecordStore {
            path: state_root.join("networks").join("networks.json"),
        }
    }

    pub fn load(&self) -> io::Result<Records> {
        Ok(crate::state::read_json(&self.path)?.unwrap_or_else(Records::new))
    }

    pub fn save(&self, records: &Records) -> io::Result<()> {
        crate::state::write_json(&self.path, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_index_zero_and_others_take_the_lowest_free_index_and_keep_it() {
        let mut r = Records::new();
        assert_eq!(r.index_for("backend"), Some((1, true)));
        assert_eq!(r.index_for(DEFAULT_NETWORK), Some((0, true)));
        assert_eq!(r.index_for("front"), Some((2, true)));
        assert_eq!(r.index_for("backend"), Some((1, false)));
        assert!(r.prune(&BTreeSet::from(["front"])));
        assert_eq!(
            r.index_for("new"),
            Some((1, true)),
            "a freed index is reused"
        );
        assert_eq!(r.index_for("front"), Some((2, false)));
    }

    #[test]
    fn records_survive_a_reload_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        assert_eq!(store.load().unwrap(), Records::new());
        let mut r = Records::new();
        r.index_for("backend").unwrap();
        store.save(&r).unwrap();
        assert_eq!(store.load().unwrap(), r);
        assert!(store.path.ends_with("networks/networks.json"));
    }
}
