//! The pure part of volume reconciliation: what to do, given the volumes on disk, the
//! declared ones and the ones containers mount.

use std::collections::{BTreeMap, BTreeSet};

use super::Record;
use crate::manifest::ReclaimPolicy;

/// One change to the volumes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A declared volume that does not exist yet.
    Create { name: String, record: Record },
    /// A new record: declared again, policy changed, forgotten, or delete requested.
    Update { name: String, record: Record },
    /// A volume whose `Delete` manifest went away and that no container mounts.
    Delete { name: String },
}

/// The volumes the manifests declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Reclaim policy by name.
    pub volumes: BTreeMap<String, ReclaimPolicy>,
    /// The manifest file declaring each (for the status).
    pub sources: BTreeMap<String, String>,
    /// Names declared twice: whatever exists for them is left exactly as it is.
    pub frozen: BTreeSet<String>,
    /// Volumes the declared containers mount: in use, even before any of them runs.
    pub mounted: BTreeSet<String>,
    /// False while some manifest file is invalid without a last good version: it may
    /// declare volumes, so nothing is forgotten or deleted.
    pub complete: bool,
}

/// Complete manifests declaring `items` (for tests).
#[cfg(test)]
pub(super) fn declared(items: &[(&str, ReclaimPolicy)]) -> Declared {
    Declared {
        volumes: items.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        complete: true,
        ..Default::default()
    }
}

/// Plans the changes.
pub fn plan(
    on_disk: &BTreeMap<String, Record>,
    declared: &Declared,
    in_use: &BTreeSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (name, policy) in &declared.volumes {
        let wanted = |r: &Record| Record {
            reclaim_policy: *policy,
            declared: true,
            delete_requested: false,
            ..r.clone()
        };
        match on_disk.get(name) {
            None => actions.push(Action::Create {
                name: name.clone(),
                record: wanted(&Record::default()),
            }),
            Some(r) if *r != wanted(r) => actions.push(Action::Update {
                name: name.clone(),
                record: wanted(r),
            }),
            Some(_) => {}
        }
    }
    if !declared.complete {
        return actions;
    }
    for (name, r) in on_disk {
        if declared.volumes.contains_key(name) || declared.frozen.contains(name) {
            continue;
        }
        if r.declared {
            // Its manifest went away.
            let record = match r.reclaim_policy {
                ReclaimPolicy::Retain => Record {
                    declared: false,
                    ..r.clone()
                },
                ReclaimPolicy::Delete => Record {
                    declared: false,
                    delete_requested: true,
                    ..r.clone()
                },
            };
            let used = in_use.contains(name) || declared.mounted.contains(name);
            if record.delete_requested && !used {
                actions.push(Action::Delete { name: name.clone() });
            } else {
                actions.push(Action::Update {
                    name: name.clone(),
                    record,
                });
            }
        } else if r.delete_requested && !in_use.contains(name) && !declared.mounted.contains(name) {
            actions.push(Action::Delete { name: name.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(items: &[(&str, ReclaimPolicy, bool, bool)]) -> BTreeMap<String, Record> {
        items
            .iter()
            .map(|(n, p, declared, delete_requested)| {
                (
                    n.to_string(),
                    Record {
                        reclaim_policy: *p,
                        declared: *declared,
                        delete_requested: *delete_requested,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn names(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    use super::declared;
    use ReclaimPolicy::{Delete, Retain};

    #[test]
    fn declared_and_existing_needs_nothing() {
        let on_disk = disk(&[("a", Retain, true, false)]);
        assert!(plan(&on_disk, &declared(&[("a", Retain)]), &names(&[])).is_empty());
    }

    #[test]
    fn declaring_an_implicit_volume_adopts_it_with_the_manifest_policy() {
        let on_disk = disk(&[("a", Retain, false, false)]);
        let actions = plan(&on_disk, &declared(&[("a", Delete)]), &names(&[]));
        assert!(matches!(&actions[..], [Action::Update { record, .. }]
            if record.declared && record.reclaim_policy == Delete));
    }

    #[test]
    fn redeclaring_cancels_a_pending_delete() {
        let on_disk = disk(&[("a", Delete, false, true)]);
        let actions = plan(&on_disk, &declared(&[("a", Delete)]), &names(&[]));
        assert!(matches!(&actions[..], [Action::Update { record, .. }]
            if !record.delete_requested && record.declared));
    }

    #[test]
    fn a_removed_delete_volume_in_use_waits_then_goes() {
        let on_disk = disk(&[("a", Delete, true, false)]);
        let actions = plan(&on_disk, &declared(&[]), &names(&["a"]));
        assert!(matches!(&actions[..], [Action::Update { record, .. }] if record.delete_requested));
        let on_disk = disk(&[("a", Delete, false, true)]);
        assert!(plan(&on_disk, &declared(&[]), &names(&["a"])).is_empty());
        assert_eq!(
            plan(&on_disk, &declared(&[]), &names(&[])),
            vec![Action::Delete { name: "a".into() }]
        );
    }

    #[test]
    fn an_unused_removed_delete_volume_goes_at_once() {
        let on_disk = disk(&[("a", Delete, true, false)]);
        assert_eq!(
            plan(&on_disk, &declared(&[]), &names(&[])),
            vec![Action::Delete { name: "a".into() }]
        );
    }

    #[test]
    fn implicit_and_forgotten_volumes_are_never_deleted() {
        let on_disk = disk(&[("a", Retain, false, false), ("b", Delete, false, false)]);
        assert!(plan(&on_disk, &declared(&[]), &names(&[])).is_empty());
    }

    #[test]
    fn nothing_is_forgotten_or_deleted_while_manifests_are_incomplete() {
        let on_disk = disk(&[("a", Delete, true, false), ("b", Delete, false, true)]);
        let incomplete = Declared {
            complete: false,
            ..declared(&[("c", Retain)])
        };
        let actions = plan(&on_disk, &incomplete, &names(&[]));
        assert!(matches!(&actions[..], [Action::Create { name, .. }] if name == "c"));
    }

    #[test]
    fn a_volume_a_declared_container_mounts_is_not_deleted_before_it_runs() {
        // One edit removes the Delete volume and adds a container mounting it: the
        // status snapshot does not know the container yet, the manifests do.
        let on_disk = disk(&[("a", Delete, true, false)]);
        let d = Declared {
            mounted: names(&["a"]),
            ..declared(&[])
        };
        let actions = plan(&on_disk, &d, &names(&[]));
        assert!(matches!(&actions[..], [Action::Update { record, .. }] if record.delete_requested));
    }

    #[test]
    fn a_volume_declared_twice_is_left_as_it_is() {
        let on_disk = disk(&[("a", Delete, true, false)]);
        let conflict = Declared {
            frozen: names(&["a"]),
            ..declared(&[])
        };
        assert!(plan(&on_disk, &conflict, &names(&[])).is_empty());
    }
}
