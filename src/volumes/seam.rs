//! The `Volumes` seam the reconciler drives: named volumes are listed, created,
//! updated and deleted as objects of the plan, like containers and networks.
//! Implementations: [`super::VolumeStore`] and [`FakeVolumes`] (for the reconciler's
//! tests without root).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;

use super::{Action, Record, VolumeError, VolumeStore};

/// What the reconciler sees of the volumes on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnDisk {
    /// Every volume with its record, by name.
    pub records: BTreeMap<String, Record>,
    /// Volumes a running container's shim holds: in use, whatever the snapshot says.
    pub held: BTreeSet<String>,
}

/// The reconciler's view of named volumes.
pub trait Volumes: Send + Sync + 'static {
    fn list(&self) -> impl Future<Output = OnDisk> + Send;
    /// Applies one action of [`super::plan`]. A delete is checked again at the last
    /// moment: a container that started with the volume refuses it.
    fn apply(&self, action: Action) -> impl Future<Output = Result<(), VolumeError>> + Send;
}

impl crate::class::Classify for VolumeError {
    /// Every volume failure may pass (a busy volume, a full disk); none needs an edit.
    fn class(&self) -> crate::class::ErrorClass {
        crate::class::ErrorClass::Transient
    }
}

impl Volumes for VolumeStore {
    async fn list(&self) -> OnDisk {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let records = store.list();
            let held = records.keys().filter(|n| store.held(n)).cloned().collect();
            OnDisk { records, held }
        })
        .await
        .unwrap_or_default()
    }

    async fn apply(&self, action: Action) -> Result<(), VolumeError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&action))
            .await
            .unwrap_or_else(|e| {
                Err(VolumeError::Failed {
                    name: "(store)".into(),
                    message: format!("volume task failed: {e}"),
                })
            })
    }
}

/// An in-memory volume store that records every call (`create NAME`, `update NAME`,
/// `delete NAME`).
#[derive(Debug, Default)]
pub struct FakeVolumes {
    records: Mutex<BTreeMap<String, Record>>,
    held: Mutex<BTreeSet<String>>,
    /// Names whose next action fails, as a full disk would.
    failing: Mutex<BTreeSet<String>>,
    calls: Mutex<Vec<String>>,
}

impl FakeVolumes {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Marks `name` as held by a running container (or not).
    pub fn hold(&self, name: &str, held: bool) {
        let mut h = self.held.lock().expect("held");
        if held {
            h.insert(name.to_owned());
        } else {
            h.remove(name);
        }
    }

    /// Makes the next action on `name` fail.
    pub fn fail_next(&self, name: &str) {
        self.failing
            .lock()
            .expect("failing")
            .insert(name.to_owned());
    }

    pub fn names(&self) -> Vec<String> {
        self.records
            .lock()
            .expect("records")
            .keys()
            .cloned()
            .collect()
    }
}

impl Volumes for FakeVolumes {
    async fn list(&self) -> OnDisk {
        OnDisk {
            records: self.records.lock().expect("records").clone(),
            held: self.held.lock().expect("held").clone(),
        }
    }

    async fn apply(&self, action: Action) -> Result<(), VolumeError> {
        let name = match &action {
            Action::Create { name, .. } | Action::Update { name, .. } | Action::Delete { name } => {
                name.clone()
            }
        };
        if self.failing.lock().expect("failing").remove(&name) {
            return Err(VolumeError::Failed {
                name,
                message: "no space left on device".into(),
            });
        }
        let mut records = self.records.lock().expect("records");
        let call = match action {
            Action::Create { name, record } => {
                records.entry(name.clone()).or_insert(record);
                format!("create {name}")
            }
            Action::Update { name, record } => {
                records.insert(name.clone(), record);
                format!("update {name}")
            }
            Action::Delete { name } => {
                if self.held.lock().expect("held").contains(&name) {
                    return Err(VolumeError::Failed {
                        name,
                        message: "not deleted: a container started with it".into(),
                    });
                }
                records.remove(&name);
                format!("delete {name}")
            }
        };
        self.calls.lock().expect("calls").push(call);
        Ok(())
    }
}
