//! The Linux side of the runtime: process creation, namespaces, rootfs, cgroups.
//!
//! All `unsafe` of the runtime lives in this file, each block with its reason.

pub mod cgroupfs;
pub mod cgroups;
pub mod proc;
pub mod rootfs;
pub mod seccomp;

use nix::unistd::ForkResult;

/// Forks the calling process.
///
/// Only the shim calls this: it is single-threaded (no tokio, no helper threads), so
/// the child does not inherit locks held by other threads, and may allocate.
pub fn fork_single_threaded() -> nix::Result<ForkResult> {
    debug_assert_eq!(
        proc::thread_count().unwrap_or(1),
        1,
        "fork from a threaded process"
    );
    // SAFETY: the shim is single-threaded when it forks (asserted above in debug builds),
    // so no other thread can hold a lock or be mid-update of shared state in the child.
    #[allow(unsafe_code)]
    unsafe {
        nix::unistd::fork()
    }
}

/// Restores the default disposition of `sig` (used just before `execve`).
pub fn set_default_handler(sig: nix::sys::signal::Signal) -> nix::Result<()> {
    // SAFETY: installing SIG_DFL registers no Rust code as a handler, so none of the
    // async-signal-safety requirements of `signal` apply.
    #[allow(unsafe_code)]
    unsafe {
        nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl).map(|_| ())
    }
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into
    // `req.ifr_ifru`; `req` is a valid, live ifreq and `sock` an open socket.
    #[allow(unsafe_code)]
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member, so reading it is defined.
    #[allow(unsafe_code)]
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    #[allow(unsafe_code)]
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the calling process at once, without running exit handlers or flushing stdio
/// buffers inherited from the parent across `fork` (which would duplicate output).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(code)
    }
}
