//! The Linux side of the runtime: process creation, namespaces, rootfs, cgroups.
//!
//! All `unsafe` of the runtime lives in this file, each block with its reason.

pub mod cgroupfs;
pub mod cgroups;
pub mod devices_bpf;
pub mod proc;
pub mod resolve;
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

/// Forks the calling process with the child born in the cgroup v2 folder `cgroup`
/// (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), and in a new pid namespace if
/// `new_pid_ns`.
///
/// Why: moving a process into a cgroup afterwards (`cgroup.procs`) takes the kernel's
/// global threadgroup lock for writing, and its first writer after a quiet spell waits
/// for an RCU grace period (~15 ms on these VMs' unified hierarchy, against 0.6 ms for
/// this). `Err(ENOSYS)`, `Err(E2BIG)` or `Err(EINVAL)` on kernels without it: fork,
/// then move.
///
/// Same rule as [`fork_single_threaded`]: only the single-threaded shim calls this.
pub fn fork_into_cgroup(cgroup: &std::fs::File, new_pid_ns: bool) -> nix::Result<ForkResult> {
    use std::os::fd::AsRawFd;
    debug_assert_eq!(
        proc::thread_count().unwrap_or(1),
        1,
        "fork from a threaded process"
    );
    /// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    /// linux/sched.h (libc's constant is an overflowing `c_int`).
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let pid_ns = if new_pid_ns {
        libc::CLONE_NEWPID as u64
    } else {
        0
    };
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | pid_ns,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: with no stack given, clone3 duplicates the caller like fork(2): the child
    // returns here on a copy of this stack. `args` lives across the call and its size is
    // passed. The caller is single-threaded (asserted above in debug builds), so the
    // child inherits no lock another thread holds. Unlike glibc's fork this runs no
    // atfork handlers (we register none) and leaves glibc's cached thread id stale in
    // the child, which glibc (>= 2.34) no longer uses to signal itself; the child only
    // sets up the container and execs, as crun's does after the same raw clone3.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(pid as i32),
        }),
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

/// A pidfd of `pid` (`pidfd_open(2)`, Linux 5.3): readable once the process has ended,
/// whoever its parent is, and never confused with a later process of the same pid.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags (0) by value and touches no memory of ours.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel returned a new descriptor, which nothing else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` (a pidfd) is readable, on the current tokio runtime's reactor.
pub async fn readable(fd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    async_fd(fd)?.readable().await.map(|_| ())
}

/// Registers `fd` for readiness with the current tokio runtime's reactor (a pidfd, a
/// non-blocking netlink socket).
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor, and the `AsyncFd` owns it from
    // here until it is dropped, so it stays open and the same while registered.
    #[allow(unsafe_code)]
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Ends the calling process at once, without running exit handlers or flushing stdio
/// buffers inherited from the parent across `fork` (which would duplicate output).
/// Marks every descriptor from `first` up close-on-exec (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`): whatever a caller let this process inherit never reaches a
/// program it execs (runc's CVE-2024-21626 was a leaked descriptor).
pub fn cloexec_from(first: u32) -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes two descriptor numbers and flags by value and touches no
    // memory; with CLOSE_RANGE_CLOEXEC it closes nothing, so no descriptor owned
    // elsewhere in this process is invalidated.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor from `first` up (`close_range(2)`): for a forked child that
/// must hold nothing of its parent but what it set up below `first`.
pub fn close_from(first: u32) -> std::io::Result<()> {
    // SAFETY: close_range takes two descriptor numbers and flags by value and touches no
    // memory. The caller is a freshly forked single-threaded child that owns no
    // descriptor from `first` up that it still uses, and exits without running the
    // destructors of the parent's objects (`exit_now`).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(code)
    }
}

/// One eBPF instruction, the kernel's `struct bpf_insn`: opcode, destination register
/// (low 4 bits of `regs`) and source register (high 4 bits), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct BpfProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads `program` as a cgroup device program and attaches it to the cgroup v2 folder
/// `cgroup` (alongside any other: `BPF_F_ALLOW_MULTI`). The attachment holds the program;
/// it goes when the cgroup is removed. A verifier refusal comes back with its log.
pub fn attach_device_program(cgroup: &std::path::Path, program: &[BpfInsn]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..11].copy_from_slice(b"wharf_devcg");
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size passed; the pointers
    // in it (instructions, license, log buffer) point to live buffers of the lengths
    // given, which outlive the call; the kernel writes only into `log`, within log_size.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(0);
        let text = String::from_utf8_lossy(&log[..end]);
        return Err(std::io::Error::new(
            err.kind(),
            format!("load device program: {err}: {}", text.trim()),
        ));
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor we own.
    #[allow(unsafe_code)]
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup)?;
    let attach = BpfProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attach` is a valid BPF_PROG_ATTACH attribute of the size passed, naming
    // two open descriptors; the kernel only reads it.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const BpfProgAttach,
            std::mem::size_of::<BpfProgAttach>(),
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            err.kind(),
            format!("attach device program to {}: {err}", cgroup.display()),
        ));
    }
    Ok(())
}
