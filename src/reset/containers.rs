//! Containers: each stopped with its own stop signal and grace period, all at once as
//! `docker stop` does, then removed (process, cgroup, record, run folder).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Removed, ResetError};
use crate::runtime::{Observed, Runtime};

/// The grace period of a container whose manifest has none (the reconciler's too).
const DEFAULT_GRACE: Duration = crate::reconciler::task::DEFAULT_STOP_GRACE;

/// The signal a container is stopped with: its record's (`SIGQUIT`, or a number as the
/// manifest wrote it), else SIGTERM.
fn stop_signal(o: &Observed) -> Signal {
    let Some(name) = o.meta.as_ref().map(|m| m.stop_signal.as_str()) else {
        return Signal::SIGTERM;
    };
    Signal::from_str(name)
        .ok()
        .or_else(|| {
            name.parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
        })
        .unwrap_or(Signal::SIGTERM)
}

/// `timeout` if given, else the container's `stopGracePeriod`, else 10 s.
fn grace_period(o: &Observed, timeout: Option<Duration>) -> Duration {
    timeout
        .or_else(|| o.meta.as_ref()?.spec.as_ref()?.spec.stop_grace_period)
        .unwrap_or(DEFAULT_GRACE)
}

/// Stops every container with its stop signal and grace period, all at once, then
/// removes it. A container whose stop failed is still removed (the removal kills).
pub(super) async fn remove_containers<R: Runtime>(
    runtime: Arc<R>,
    timeout: Option<Duration>,
) -> (Vec<Removed>, Vec<ResetError>) {
    let containers = match runtime.list().await {
        Ok(list) => list,
        Err(e) => return (Vec::new(), vec![e.into()]),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for o in containers {
        let rt = runtime.clone();
        tasks.spawn(async move {
            let (signal, grace) = (stop_signal(&o), grace_period(&o, timeout));
            if let Err(e) = rt.stop(&o.name, signal, grace).await {
                tracing::warn!(container = %o.name, error = %e, "stop failed; removing anyway");
            }
            (o.name.clone(), rt.remove(&o.name).await)
        });
    }
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(pair) => done.push(pair),
            Err(e) => errors.push(ResetError::Task {
                what: "remove a container".into(),
                message: e.to_string(),
            }),
        }
    }
    // In name order, whatever order they finished in.
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut removed = Vec::new();
    for (name, result) in done {
        match result {
            Ok(()) => removed.push(Removed::Container(name)),
            Err(e) => errors.push(e.into()),
        }
    }
    (removed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::{request, FakeRuntime};

    #[tokio::test]
    async fn each_container_is_stopped_with_its_own_signal_then_removed() {
        let rt = Arc::new(FakeRuntime::default());
        let mut web = request("web", &["sleep", "100"], Vec::new());
        web.meta.stop_signal = "SIGQUIT".into();
        let mut db = request("db", &["sleep", "100"], Vec::new());
        db.meta.stop_signal = "2".into();
        rt.start(web).await.unwrap();
        rt.start(db).await.unwrap();

        let (removed, errors) = remove_containers(rt.clone(), None).await;

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            removed,
            [
                Removed::Container("db".into()),
                Removed::Container("web".into())
            ]
        );
        let calls = rt.calls();
        for (name, signal) in [("web", "SIGQUIT"), ("db", "SIGINT")] {
            let stop = calls
                .iter()
                .position(|c| *c == format!("stop {name} {signal}"));
            let remove = calls.iter().position(|c| *c == format!("remove {name}"));
            assert!(stop.is_some() && stop < remove, "{calls:?}");
        }
        assert!(rt.list().await.unwrap().is_empty());
        // Again: nothing left, nothing done.
        assert_eq!(remove_containers(rt, None).await.0, []);
    }
}
