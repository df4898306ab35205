//! Two runtime instances per container name, for `update.strategy: StartFirst`.
//!
//! A container `web` runs as the runtime instance `web` or `web.alt` (a container name
//! is a DNS label, so it never holds a dot and never clashes with an instance name). A
//! StartFirst update starts the new version in the slot the current one does not use,
//! beside it, and only then stops the old: the two coexist for a while, each with its
//! own record, cgroup, namespace and address. Slots alternate from update to update,
//! because a running container cannot be renamed (its cgroup, namespace, veth and
//! leases are named for it).
//!
//! Which instance serves is decided from the records alone, so an agent killed at any
//! point of an update finds it again ([`roles`]): the newer instance (higher
//! generation) serves once it is marked promoted (a file in its folder, written
//! before the traffic moves), and until then the older one does.

use std::collections::BTreeMap;

use super::Observed;

/// The suffix of a container's second slot.
pub const ALT: &str = ".alt";

/// The container an instance belongs to: `web.alt` → `web`.
pub fn container_of(instance: &str) -> &str {
    instance.strip_suffix(ALT).unwrap_or(instance)
}

/// The other slot of an instance's container: `web` ↔ `web.alt`.
pub fn alternate(instance: &str) -> String {
    match instance.strip_suffix(ALT) {
        Some(base) => base.to_owned(),
        None => format!("{instance}{ALT}"),
    }
}

/// What an instance is to its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one that serves: the container's status, ports, name and logs are its.
    Current,
    /// A StartFirst update's new version, started beside the current one and not yet
    /// promoted.
    Candidate,
    /// The old version after the new one was promoted: to be stopped and removed.
    Retired,
}

/// The instances of one container, by role.
#[derive(Debug, Clone, PartialEq)]
pub struct Instances {
    pub current: Observed,
    /// The other instance, if there are two: a [`Role::Candidate`] or a
    /// [`Role::Retired`].
    pub other: Option<(Observed, Role)>,
}

/// Groups the runtime's instances by container and tells their roles. Of two
/// instances the newer is the one without a readable record (a start cut short, or a
/// removal: it does not serve), else the higher generation, else the `.alt` one; it
/// is current only once promoted, with a readable record.
pub fn roles(observed: Vec<Observed>) -> BTreeMap<String, Instances> {
    let mut by_name: BTreeMap<String, Vec<Observed>> = BTreeMap::new();
    for o in observed {
        by_name
            .entry(container_of(&o.name).to_owned())
            .or_default()
            .push(o);
    }
    by_name
        .into_iter()
        .filter_map(|(name, mut all)| {
            let age = |o: &Observed| {
                (
                    o.meta.as_ref().map_or(u64::MAX, |m| m.generation),
                    o.name.ends_with(ALT),
                )
            };
            all.sort_by_key(age);
            let newer = all.pop()?;
            let instances = match all.pop() {
                None => Instances {
                    current: newer,
                    other: None,
                },
                // (Only with a readable record: a folder half removed is no version.)
                Some(older) if newer.promoted && newer.meta.is_some() => Instances {
                    current: newer,
                    other: Some((older, Role::Retired)),
                },
                Some(older) => Instances {
                    current: older,
                    other: Some((newer, Role::Candidate)),
                },
            };
            Some((name, instances))
        })
        .collect()
}

/// The serving instance of each container, and the other one of those in an update,
/// both by container name.
pub type ByContainer = (
    BTreeMap<String, Observed>,
    BTreeMap<String, (Observed, Role)>,
);

/// [`roles`], split: the serving instances, and the other ones.
pub fn by_container(observed: Vec<Observed>) -> ByContainer {
    let mut current = BTreeMap::new();
    let mut others = BTreeMap::new();
    for (name, i) in roles(observed) {
        if let Some(other) = i.other {
            others.insert(name.clone(), other);
        }
        current.insert(name, i.current);
    }
    (current, others)
}

/// The instance that serves `container` among those on disk under `state_root`
/// (`wharf exec web` finds `web.alt` after an update). An instance name (with a
/// dot) is taken as given.
pub fn current_on_disk(state_root: &std::path::Path, container: &str) -> String {
    if container.contains('.') {
        return container.to_owned();
    }
    let dir = state_root.join("containers");
    let alt = alternate(container);
    match (dir.join(container).is_dir(), dir.join(&alt).is_dir()) {
        (_, false) => container.to_owned(),
        (false, true) => alt,
        (true, true) => {
            let read = |name: &str| {
                let d = dir.join(name);
                let generation = super::records::Record::load(&d.join("record.json"))
                    .ok()
                    .flatten()
                    .and_then(|r| r.meta)
                    .map_or(u64::MAX, |m| m.generation);
                (generation, name.ends_with(ALT), d.join(PROMOTED).exists())
            };
            let (a, b) = (read(container), read(&alt));
            let (newer, older, promoted) = if (a.0, a.1) > (b.0, b.1) {
                (container.to_owned(), alt, a.2)
            } else {
                (alt, container.to_owned(), b.2)
            };
            let readable = if newer == container { a.0 } else { b.0 } != u64::MAX;
            if promoted && readable {
                newer
            } else {
                older
            }
        }
    }
}

/// The file in an instance's folder that marks it promoted.
pub const PROMOTED: &str = "promoted";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerMeta, ObservedState};

    fn instance(name: &str, generation: Option<u64>, promoted: bool) -> Observed {
        Observed {
            name: name.into(),
            meta: generation.map(|generation| ContainerMeta {
                generation,
                ..Default::default()
            }),
            refused: None,
            state: ObservedState::Lost,
            last_state: None,
            restart_count: 0,
            started_at: None,
            log_path: Default::default(),
            previous_log: None,
            usage: None,
            promoted,
        }
    }

    #[test]
    fn slots_alternate_and_name_their_container() {
        assert_eq!(alternate("web"), "web.alt");
        assert_eq!(alternate("web.alt"), "web");
        assert_eq!(container_of("web.alt"), "web");
        assert_eq!(container_of("web"), "web");
    }

    #[test]
    fn the_newer_instance_serves_only_once_promoted() {
        let r = roles(vec![
            instance("web", Some(2), false),
            instance("web.alt", Some(3), false),
            instance("db.alt", Some(1), false),
        ]);
        assert_eq!(r["web"].current.name, "web");
        let (other, role) = r["web"].other.as_ref().unwrap();
        assert_eq!((other.name.as_str(), *role), ("web.alt", Role::Candidate));
        assert_eq!(r["db"].current.name, "db.alt");
        assert!(r["db"].other.is_none());

        let r = roles(vec![
            instance("web", Some(4), true),
            instance("web.alt", Some(3), false),
        ]);
        assert_eq!(r["web"].current.name, "web");
        assert_eq!(r["web"].other.as_ref().unwrap().1, Role::Retired);
    }

    #[test]
    fn a_folder_half_removed_never_serves_even_marked_promoted() {
        let r = roles(vec![
            instance("web", None, true),
            instance("web.alt", Some(5), true),
        ]);
        assert_eq!(r["web"].current.name, "web.alt");
        assert_eq!(r["web"].other.as_ref().unwrap().1, Role::Candidate);
    }

    #[test]
    fn a_start_cut_short_is_the_candidate_not_the_current() {
        let r = roles(vec![
            instance("web", None, false),
            instance("web.alt", Some(5), false),
        ]);
        assert_eq!(r["web"].current.name, "web.alt");
        assert_eq!(r["web"].other.as_ref().unwrap().0.name, "web");
    }
}
