//! `GET /metrics`: the status snapshot in Prometheus text format (prometheus-client).
//!
//! Built from the snapshot on each scrape, so a metric can never disagree with
//! `/v1/containers`; a scrape costs one small registry per request.

use prometheus_client::encoding::text::encode;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reconciler::status::StatusSnapshot;

type Labels = Vec<(&'static str, String)>;

/// Renders `snapshot` as Prometheus text.
pub fn render(snapshot: &StatusSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();

    let by_state = Family::<Labels, Gauge>::default();
    for state in ["pending", "running", "exited", "failed"] {
        let n = snapshot
            .containers
            .iter()
            .filter(|c| c.state.to_string() == state)
            .count();
        by_state
            .get_or_create(&vec![("state", state.to_owned())])
            .set(n as i64);
    }
    registry.register("wharf_containers", "Containers by state", by_state);

    let restarts = Family::<Labels, Gauge>::default();
    let running = Family::<Labels, Gauge>::default();
    for c in &snapshot.containers {
        let labels = vec![("container", c.name.clone())];
        restarts
            .get_or_create(&labels)
            .set(i64::from(c.restart_count));
        running.get_or_create(&labels).set(i64::from(
            c.state == crate::reconciler::status::ContainerState::Running,
        ));
    }
    // One series per container with a healthcheck, labelled with its health (1).
    let health = Family::<Labels, Gauge>::default();
    for c in &snapshot.containers {
        if let Some(h) = c.health {
            health
                .get_or_create(&vec![
                    ("container", c.name.clone()),
                    ("health", h.to_string()),
                ])
                .set(1);
        }
    }
    registry.register(
        "wharf_container_health",
        "1 for a container's health (starting, healthy, unhealthy), if it has a healthcheck",
        health,
    );
    registry.register(
        "wharf_container_restarts",
        "Restarts of a container since it was created",
        restarts,
    );
    registry.register(
        "wharf_container_running",
        "1 while the container's process runs",
        running,
    );

    // Usage of running containers, from their cgroups (absent when not running).
    let memory = Family::<Labels, Gauge>::default();
    let pids = Family::<Labels, Gauge>::default();
    let cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for c in &snapshot.containers {
        let Some(u) = &c.usage else { continue };
        let labels = vec![("container", c.name.clone())];
        memory.get_or_create(&labels).set(u.memory_bytes as i64);
        pids.get_or_create(&labels).set(u.pids as i64);
        // A fresh registry per scrape: the counter holds exactly the cgroup's total.
        cpu.get_or_create(&labels).inc_by(u.cpu_seconds);
    }
    registry.register(
        "wharf_container_memory_working_set_bytes",
        "Memory in use minus inactive file cache",
        memory,
    );
    registry.register(
        "wharf_container_pids",
        "Processes and threads in the container",
        pids,
    );
    registry.register(
        "wharf_container_cpu_usage_seconds",
        "CPU time used by the container since it started",
        cpu,
    );

    let volume_bytes = Family::<Labels, Gauge>::default();
    for v in &snapshot.volumes {
        volume_bytes
            .get_or_create(&vec![("volume", v.name.clone())])
            .set(v.size as i64);
    }
    registry.register(
        "wharf_volume_bytes",
        "Bytes on disk of a named volume",
        volume_bytes,
    );

    let manifest_errors = Family::<Labels, Gauge>::default();
    for m in &snapshot.manifests {
        manifest_errors
            .get_or_create(&vec![("file", m.file.clone())])
            .set(m.errors.len() as i64);
    }
    registry.register(
        "wharf_manifest_errors",
        "Errors in a manifest file (0 when valid)",
        manifest_errors,
    );

    let images: Gauge = Gauge::default();
    images.set(snapshot.images.len() as i64);
    registry.register("wharf_images", "Images in the local store", images);
    let image_bytes: Gauge = Gauge::default();
    image_bytes.set(snapshot.images.iter().map(|i| i.size as i64).sum());
    registry.register(
        "wharf_image_bytes",
        "Bytes on disk of local images (shared layers counted per image)",
        image_bytes,
    );

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::status::{ContainerState, ContainerStatus};

    #[test]
    fn containers_are_counted_by_state_with_their_restarts() {
        let c = |name: &str, state| ContainerStatus {
            name: name.into(),
            state,
            image: "busybox".into(),
            restart_count: 2,
            ..Default::default()
        };
        let mut a = c("a", ContainerState::Running);
        a.usage = Some(crate::runtime::Usage {
            memory_bytes: 4096,
            cpu_seconds: 1.5,
            pids: 3,
        });
        let snapshot = StatusSnapshot {
            containers: vec![a, c("b", ContainerState::Failed)],
            ..Default::default()
        };
        let text = render(&snapshot).unwrap();
        assert!(
            text.contains("wharf_containers{state=\"running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wharf_containers{state=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wharf_container_restarts{container=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wharf_container_running{container=\"b\"} 0"),
            "{text}"
        );
        for line in [
            "wharf_container_memory_working_set_bytes{container=\"a\"} 4096",
            "wharf_container_pids{container=\"a\"} 3",
            "wharf_container_cpu_usage_seconds_total{container=\"a\"} 1.5",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("wharf_container_pids{container=\"b\"}"),
            "no usage for a container that does not run: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
