//! The built-in runtime on temp roots, for the runtime and isolation tests.
#![allow(dead_code)]

use wharf::runtime::{LinuxRuntime, ObservedState, ProcessPlan, Runtime, StartRequest};

/// A runtime on temp roots with a busybox layer made from the host's busybox-static.
pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub rt: LinuxRuntime,
    pub layer: std::path::PathBuf,
    pub instance: String,
}

pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let layer = super::busybox_layer(tmp.path());
    let instance = super::unique("rt");
    let rt = LinuxRuntime::new(
        &tmp.path().join("state"),
        &tmp.path().join("run"),
        &instance,
        env!("CARGO_BIN_EXE_wharf").into(),
    );
    Fixture {
        _tmp: tmp,
        rt,
        layer,
        instance,
    }
}

impl Fixture {
    /// The log of container `name` once it contains `needle` (polled for 10 s).
    pub fn wait_log(&self, name: &str, needle: &str) -> String {
        let path = self
            ._tmp
            .path()
            .join("state/containers")
            .join(name)
            .join("container.log");
        super::wait_for(30, &format!("{needle:?} in the log of {name}"), || {
            let l = std::fs::read_to_string(&path).ok()?;
            l.contains(needle).then_some(l)
        })
    }

    /// The observed container `name` once `done` holds for it (polled for `secs`).
    pub fn wait_observed<T>(
        &self,
        name: &str,
        secs: u64,
        done: impl Fn(&wharf::runtime::Observed) -> Option<T>,
    ) -> T {
        super::wait_for(secs, &format!("container {name}"), || {
            let list = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(self.rt.list())
            })
            .ok()?;
            list.iter().find(|o| o.name == name).and_then(&done)
        })
    }
}

/// The exit record of an exited container.
pub fn exited(o: &wharf::runtime::Observed) -> Option<wharf::runtime::ExitRecord> {
    match &o.state {
        ObservedState::Exited(e) => Some(e.clone()),
        _ => None,
    }
}

pub fn request(f: &Fixture, name: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        name: name.into(),
        hostname: format!("{name}-host"),
        process: ProcessPlan {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            cwd: "/work".into(),
            user: "0:0".into(),
        },
        layers: vec![f.layer.clone()],
        read_only_rootfs: false,
        network: wharf::runtime::NetworkMode::Private,
        etc_files: Vec::new(),
        capabilities: wharf::runtime::process::resolve_capabilities(&[], &[]),
        limits: wharf::runtime::Limits::default(),
        privileged: false,
        mounts: Vec::new(),
        meta: wharf::runtime::ContainerMeta {
            source: "test.yaml".into(),
            ..Default::default()
        },
        fresh: true,
    }
}

/// Removes the container whatever happens, so a failing test leaves nothing behind.
pub struct Cleanup<'a>(pub &'a LinuxRuntime, pub &'a str);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let rt = self.0.clone();
        let name = self.1.to_owned();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(rt.remove(&name))
        })
        .join();
    }
}
