//! Typed manifest objects, with defaults resolved.
//!
//! Serialisation (camelCase, as in the manifests) leaves out every field equal to its
//! default. The Loader persists these types as JSON, and the spec hash is taken over the
//! same form, so a field added later with a default, or a default written out, changes
//! neither.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::network::{Ipv4Cidr, Ipv6Cidr};

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The envelope's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    /// The object's name: a DNS label, unique per kind.
    pub name: String,
    /// Labels; a change replaces a container.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations; never affect the spec hash.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A `kind: Container` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Name, labels and annotations.
    pub metadata: ObjectMeta,
    /// What to run.
    pub spec: ContainerSpec,
}

/// A `kind: Network` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Name, labels and annotations.
    pub metadata: ObjectMeta,
    /// Addressing.
    pub spec: NetworkSpec,
}

/// A `kind: Volume` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name, labels and annotations.
    pub metadata: ObjectMeta,
    /// What happens to the data when the object is removed.
    pub spec: VolumeSpec,
}

/// The `spec` of a Container. Field meanings are those of `manifest-v1.md`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerSpec {
    /// OCI image reference.
    pub image: String,
    /// When to pull the image.
    #[serde(skip_serializing_if = "is_default")]
    pub pull_policy: PullPolicy,
    /// Replaces the image's ENTRYPOINT (`Some(vec![])` clears it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Merged over the image's environment.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Absolute path; default: the image's, else `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a user name (optionally `:group`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Default: `metadata.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Published ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Networks to join; `None` means `[default]`. Exactly `[host]` or `[none]` use
    /// Docker's meaning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Volumes, binds and tmpfs, in mount order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// Limits; `None` when none is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// When to restart the container after it exits.
    #[serde(skip_serializing_if = "is_default")]
    pub restart_policy: RestartPolicy,
    /// Normalised to `SIGNAME` (or the number as written); default: the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL (millisecond precision).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "duration_opt",
        default
    )]
    pub stop_grace_period: Option<Duration>,
    /// Health probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Containers to wait for before starting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// Mount the root filesystem read-only.
    #[serde(skip_serializing_if = "is_default")]
    pub read_only_root_filesystem: bool,
    /// Run with all capabilities and devices (Docker's `--privileged`).
    #[serde(skip_serializing_if = "is_default")]
    pub privileged: bool,
    /// Capabilities added to or dropped from Docker's default set; `None` when both
    /// lists are empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// How a replacement is rolled out; `None` when the default (Recreate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateSpec>,
}

/// `spec.pullPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull only when the image is not in the local store.
    #[default]
    IfNotPresent,
    /// Pull (check the registry) every time the container is created.
    Always,
    /// Never pull; the image must be imported.
    Never,
}

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    #[default]
    Always,
    /// Restart when it exits with a non-zero status.
    OnFailure,
    /// Never restart.
    Never,
}

/// A published port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Host address to bind; `None` means every address.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none", default)]
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Transport protocol.
    #[serde(skip_serializing_if = "is_default", default)]
    pub protocol: Protocol,
}

/// A port's transport protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// A mount. The short form `source:target[:ro]` is a volume when `source` is a name
/// and a bind when it is an absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum MountSpec {
    /// A named volume (created implicitly with `Retain` if not declared).
    Volume {
        /// Volume name.
        source: String,
        /// Absolute path in the container.
        target: String,
        /// Mount read-only.
        #[serde(skip_serializing_if = "is_default", default)]
        read_only: bool,
    },
    /// A host path.
    Bind {
        /// Absolute host path.
        source: String,
        /// Absolute path in the container.
        target: String,
        /// Mount read-only.
        #[serde(skip_serializing_if = "is_default", default)]
        read_only: bool,
        /// Create the host folder (root-owned, 0755) if it is missing, as Kubernetes'
        /// `hostPath.type: DirectoryOrCreate`; otherwise a missing source is an error.
        #[serde(skip_serializing_if = "is_default", default)]
        create_host_path: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
        /// Size limit in bytes; `None`: the kernel's default (half the RAM).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        size: Option<u64>,
        /// Permission bits of its root; `None`: 1777, as Docker.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        mode: Option<u32>,
    },
}

impl Container {
    /// The named volumes it mounts, in mount order.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.spec.mounts.iter().filter_map(|m| match m {
            MountSpec::Volume { source, .. } => Some(source.as_str()),
            _ => None,
        })
    }
}

impl MountSpec {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Volume { target, .. }
            | MountSpec::Bind { target, .. }
            | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// `spec.resources`: hard limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU quota in cores (1.5 = one and a half cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// The grace period between the stop signal and SIGKILL when `stopGracePeriod` is not
/// set (Docker's is 10 s).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// `spec.healthcheck`. Durations are kept at millisecond precision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Healthcheck {
    /// The probe: exactly one of exec, http, tcp.
    #[serde(flatten)]
    pub probe: Probe,
    /// Time between probes (default 30s, as Docker).
    #[serde(
        with = "duration",
        skip_serializing_if = "Healthcheck::is_default_interval",
        default = "Healthcheck::default_interval"
    )]
    pub interval: Duration,
    /// Time a probe may take (default 30s, as Docker).
    #[serde(
        with = "duration",
        skip_serializing_if = "Healthcheck::is_default_timeout",
        default = "Healthcheck::default_timeout"
    )]
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy (default 3).
    #[serde(
        skip_serializing_if = "Healthcheck::is_default_retries",
        default = "Healthcheck::default_retries"
    )]
    pub retries: u32,
    /// Failures during this time after start do not count (default 0s).
    #[serde(with = "duration", skip_serializing_if = "Duration::is_zero", default)]
    pub start_period: Duration,
}

impl Healthcheck {
    /// Docker's default interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Docker's default timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Docker's default retries.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// The shortest `interval` and `timeout` taken.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

    fn default_interval() -> Duration {
        Self::DEFAULT_INTERVAL
    }
    fn default_timeout() -> Duration {
        Self::DEFAULT_TIMEOUT
    }
    fn default_retries() -> u32 {
        Self::DEFAULT_RETRIES
    }
    fn is_default_interval(d: &Duration) -> bool {
        *d == Self::DEFAULT_INTERVAL
    }
    fn is_default_timeout(d: &Duration) -> bool {
        *d == Self::DEFAULT_TIMEOUT
    }
    fn is_default_retries(n: &u32) -> bool {
        *n == Self::DEFAULT_RETRIES
    }
}

/// A health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Run a command in the container; exit 0 is healthy.
    Exec(Vec<String>),
    /// HTTP GET on the container's address; 2xx/3xx is healthy.
    Http {
        /// Port in the container.
        port: u16,
        /// Request path (default `/`).
        path: String,
    },
    /// A TCP connect to the container's address.
    Tcp {
        /// Port in the container.
        port: u16,
    },
}

/// An entry of `spec.dependsOn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The Container it waits for.
    pub name: String,
    /// What it waits for.
    #[serde(skip_serializing_if = "is_default", default)]
    pub condition: DependencyCondition,
}

/// What a dependency waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DependencyCondition {
    /// The dependency has started.
    #[default]
    Started,
    /// The dependency's healthcheck passes.
    Healthy,
    /// The dependency has exited with status 0.
    Completed,
}

/// `spec.capabilities`. Names are normalised to the kernel's `CAP_XXX` form, and
/// `ALL` stays `ALL`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Added to the default set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Removed from the default set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// `spec.update`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateSpec {
    /// How a replacement is rolled out.
    #[serde(skip_serializing_if = "is_default")]
    pub strategy: UpdateStrategy,
    /// `StartFirst`: how long the new container has to become healthy before the
    /// update is rolled back.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "duration_opt",
        default
    )]
    pub timeout: Option<Duration>,
}

/// `spec.update.strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateStrategy {
    /// Stop the old container, then start the new one.
    #[default]
    Recreate,
    /// Start the new one, wait until healthy, then stop the old (roll back on failure).
    StartFirst,
}

/// The `spec` of a Network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSpec {
    /// IPv4 subnet; `None`: allocated from 10.89.0.0/16 in /24 steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Cidr>,
    /// Gateway; `None`: the subnet's first host address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// No outbound NAT, no published ports.
    #[serde(skip_serializing_if = "is_default")]
    pub internal: bool,
    /// IPv6 addressing, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Spec>,
}

/// `spec.ipv6` of a Network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Spec {
    /// IPv6 subnet.
    pub subnet: Ipv6Cidr,
}

/// The `spec` of a Volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeSpec {
    /// What removing the object does to the data.
    #[serde(skip_serializing_if = "is_default")]
    pub reclaim_policy: ReclaimPolicy,
}

/// `spec.reclaimPolicy` of a Volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReclaimPolicy {
    /// Forget the object, keep the data.
    #[default]
    Retain,
    /// Delete the data once no container uses it.
    Delete,
}

/// Any manifest object.
// Not boxed: objects are few, and `Object::Container(c)` patterns are the API.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Object {
    /// `kind: Container`.
    Container(Container),
    /// `kind: Network`.
    Network(Network),
    /// `kind: Volume`.
    Volume(Volume),
}

impl Object {
    /// `Container`, `Network` or `Volume`.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Container(_) => "Container",
            Object::Network(_) => "Network",
            Object::Volume(_) => "Volume",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The object's identity, `kind/name` (e.g. `Container/web`).
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The envelope's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Container(c) => &c.metadata,
            Object::Network(n) => &n.metadata,
            Object::Volume(v) => &v.metadata,
        }
    }
}

/// An object and where it was defined (the position of its `metadata.name` value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sourced<T> {
    /// The object.
    pub object: T,
    /// The file, relative to the manifests root.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl<T> Sourced<T> {
    /// The same source position around another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced {
            object: f(self.object),
            file: self.file,
            line: self.line,
            column: self.column,
        }
    }
}

/// Durations as users write them (`1m30s`), for persistence and the spec hash.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::units::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| crate::units::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
