//! The agent's volume task: after every reconcile pass, publishes `/v1/volumes` (the
//! volumes on disk, their size, who mounts them). The reconciler creates, forgets and
//! deletes them (see `Volumes`); sizes walk whole trees, so they are measured here, off
//! the reconcile loop, at most every [`SIZE_TTL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Declared, VolumeStore};
use crate::reconciler::status::{StatusSnapshot, VolumeStatus};
use crate::runtime::records::rfc3339;

/// How long a measured size is shown before the tree is walked again.
const SIZE_TTL: Duration = Duration::from_secs(10);

/// Runs until `status` closes. Nothing is deleted before the first reconcile pass has
/// published which containers exist (an empty snapshot would make every volume look
/// unused).
pub async fn run(
    store: VolumeStore,
    mut status: watch::Receiver<Arc<StatusSnapshot>>,
    mut declared: watch::Receiver<Declared>,
    out: watch::Sender<Vec<VolumeStatus>>,
) {
    if status.changed().await.is_err() {
        return;
    }
    let mut sizes: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        let snapshot = status.borrow_and_update().clone();
        let decl = declared.borrow_and_update().clone();
        let store_c = store.clone();
        let mut sizes_c = std::mem::take(&mut sizes);
        let result = tokio::task::spawn_blocking(move || {
            let list = pass(&store_c, &snapshot, &decl, &mut sizes_c);
            (list, sizes_c)
        })
        .await;
        match result {
            Ok((list, kept)) => {
                sizes = kept;
                out.send_replace(list);
            }
            Err(e) => tracing::warn!(error = %e, "volume housekeeping task"),
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = declared.changed() => if changed.is_err() { return },
        }
    }
}

/// One round: the statuses. Blocking.
fn pass(
    store: &VolumeStore,
    snapshot: &StatusSnapshot,
    declared: &Declared,
    sizes: &mut HashMap<String, (u64, Instant)>,
) -> Vec<VolumeStatus> {
    // What a delete cut short (a crash) left behind.
    store.remove_trash();
    let on_disk = store.list();
    sizes.retain(|name, _| on_disk.contains_key(name));
    on_disk
        .into_iter()
        .map(|(name, r)| {
            let size = match sizes.get(&name) {
                Some((size, at)) if at.elapsed() < SIZE_TTL => *size,
                _ => {
                    let size = store.usage(&name);
                    sizes.insert(name.clone(), (size, Instant::now()));
                    size
                }
            };
            VolumeStatus {
                path: store.data_path(&name).display().to_string(),
                size,
                reclaim_policy: r.reclaim_policy,
                declared: r.declared,
                source: declared.sources.get(&name).cloned(),
                state: if r.delete_requested {
                    "deleting"
                } else {
                    "ready"
                }
                .to_owned(),
                populated: r.populated,
                created_at: (r.created_at > 0).then(|| rfc3339(r.created_at)),
                used_by: snapshot
                    .containers
                    .iter()
                    .filter(|c| c.volumes.contains(&name))
                    .map(|c| c.name.clone())
                    .collect(),
                // The reconciler's, filled in by the agent (`Reconciler::volume_messages`).
                message: None,
                name,
            }
        })
        .collect()
}
