//! Helpers of the networking tests: each runs inside a network namespace it creates, so
//! no bridge, veth or nftables rule ever reaches the host.
#![allow(dead_code)]

use std::future::Future;
use std::process::Command;

/// Whether a networking test can run: root, `nft` and `ip`. Skips with a printed reason
/// otherwise, or fails under `WHARF_REQUIRE_PRIVILEGED=1` (a skip would hide a broken CI).
pub fn privileged(test: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("not running as root".to_owned())
    } else {
        ["nft", "ip"].iter().find_map(|bin| {
            let ok = Command::new(bin)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success());
            (!ok).then(|| format!("`{bin}` is not installed (apt-get install nftables iproute2)"))
        })
    };
    match missing {
        None => true,
        Some(why) => {
            super::fixture::skip(test, &why);
            false
        }
    }
}

/// Runs `body` on a new thread inside a fresh network namespace with `lo` up, on a
/// current-thread tokio runtime; resumes its panic here. The namespace goes with the
/// thread, whatever the test leaves in it.
pub fn in_test_host<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        wharf::runtime::linux::loopback_up().expect("lo up");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
