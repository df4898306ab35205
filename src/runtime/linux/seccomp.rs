//! Docker's default seccomp profile, compiled to a BPF program with `seccompiler`.
//!
//! Images are built and tested against Docker, so a container should see the same
//! syscalls allowed and refused as under `docker run`. This module mirrors moby's
//! `profiles/seccomp/default.json` (moby/moby commit 00f3d189e420d485e42d15fe494f96d272284e0e,
//! the version with the `AF_VSOCK` socket rule and the `CAP_BPF`/`CAP_PERFMON` entries):
//! anything not listed fails with `EPERM`, some syscalls are allowed only with certain
//! arguments, and a few groups only when the container holds a capability.
//!
//! Differences from running the JSON through libseccomp:
//! - Only the native ABI of x86_64 and aarch64 is covered, where Docker also allows the
//!   32-bit ones. `seccompiler` checks the audit arch first and kills a process that makes
//!   a syscall through another ABI (i386 on x86_64, AArch32 on aarch64); x32 calls share
//!   the x86_64 audit arch but have their own numbers, so they fail with `EPERM`. The
//!   profile's names that exist only on 32-bit ABIs or other architectures therefore have
//!   no number here; they are listed in the doc of `ALWAYS_ALLOWED`.
//! - The profile's `minKernel` condition (4.8, for `ptrace` and `process_vm_*`) is
//!   dropped: we support only kernels >= 5.x, where it always holds.
//! - `seccompiler` gives a filter one action on match and one otherwise, but `clone3`
//!   needs a third (`ENOSYS`); a hand-written prefix of five instructions adds it
//!   (see `clone3_enosys_prefix`).
//! - `socket` and `personality` take a 32-bit argument, so their rules compare the low 32
//!   bits, as the kernel reads them; libseccomp compares all 64.
//! - `io_pgetevents` is allowed on musl builds only: libc has no number for it on glibc.
//! - `io_uring_setup`, `io_uring_enter` and `io_uring_register` are refused, as in
//!   Docker 25.0 and later: io_uring has been a steady source of kernel
//!   exploits, and its operations bypass the per-syscall filter altogether.

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp profile has syscall tables for x86_64 and aarch64 only");

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule of the tables below could not be expressed: a bug in this module.
    #[error("build seccomp rule for syscall {syscall}: {source}")]
    Rule {
        syscall: i64,
        source: seccompiler::BackendError,
    },
    /// The rules could not be compiled to BPF (for instance, too many instructions).
    #[error("compile seccomp profile to BPF: {0}")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter, or `no_new_privs` could not be set.
    #[error("install seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
}

#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: TargetArch = TargetArch::aarch64;

/// `AUDIT_ARCH_*` of the native ABI, as the kernel reports it in `seccomp_data.arch`:
/// the ELF machine with the 64-bit (0x8000_0000) and little-endian (0x4000_0000) bits.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = libc::EM_X86_64 as u32 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = libc::EM_AARCH64 as u32 | 0x8000_0000 | 0x4000_0000;

/// Namespace flags `clone` may not carry without `CAP_SYS_ADMIN`: creating namespaces is
/// the container's way out (user namespaces especially widen the kernel's attack surface).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The only `personality(2)` arguments allowed: Linux (0), Linux32 (8), UNAME26 (0x20000),
/// both (0x20008), and 0xffffffff, which only queries. Others, such as ADDR_NO_RANDOMIZE,
/// would let a process weaken its own hardening.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: the only socket family refused. vsock is not network-namespaced, so it would
/// reach the host and its VMs past the container's network isolation.
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// Syscalls every container may make, whatever its capabilities, in the profile's order.
///
/// Names of the profile with no number here, because the native ABI of x86_64 and
/// aarch64 has no such syscall (libc defines none; they are 32-bit or other-arch calls):
/// `_llseek`, `_newselect`, `chown32`, `clock_adjtime64`, `clock_getres_time64`,
/// `clock_gettime64`, `clock_nanosleep_time64`, `fadvise64_64`, `fchown32`, `fcntl64`,
/// `fstat64`, `fstatat64`, `fstatfs64`, `ftruncate64`, `futex_time64`, `getegid32`,
/// `geteuid32`, `getgid32`, `getgroups32`, `getresgid32`, `getresuid32`, `getuid32`,
/// `io_pgetevents_time64`, `ipc`, `lchown32`, `lstat64`, `mmap2`, `mq_timedreceive_time64`,
/// `mq_timedsend_time64`, `ppoll_time64`, `pselect6_time64`, `recv`, `recvmmsg_time64`,
/// `rt_sigtimedwait_time64`, `sched_rr_get_interval_time64`, `semtimedop_time64`, `send`,
/// `sendfile64`, `setfsgid32`, `setfsuid32`, `setgid32`, `setgroups32`, `setregid32`,
/// `setresgid32`, `setresuid32`, `setreuid32`, `setuid32`, `sigprocmask`, `sigreturn`,
/// `socketcall`, `stat64`, `statfs64`, `timer_gettime64`, `timer_settime64`,
/// `timerfd_gettime64`, `timerfd_settime64`, `truncate64`, `ugetrlimit`,
/// `utimensat_time64`, `waitpid`; and the arch-specific entries for arm
/// (`arm_fadvise64_64`, `arm_sync_file_range`, `sync_file_range2`, `breakpoint`,
/// `cacheflush`, `set_tls`: AArch32 calls, absent from the aarch64 ABI), ppc64le, s390
/// and riscv64.
///
/// `io_pgetevents` exists on both architectures, but libc defines its number only for
/// musl targets; glibc builds leave it out (it then fails with `EPERM`; `io_getevents`,
/// which libaio uses, stays allowed).
///
/// The names marked x86_64 are legacy calls that aarch64 never had (it uses the `*at`
/// forms, `pipe2`, `ppoll`, `pselect6`, `clone`, ...).
const ALWAYS_ALLOWED: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    libc::SYS_adjtimex,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_alarm,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_creat,
    libc::SYS_dup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    libc::SYS_dup3,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait_old,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_mark,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_get_robust_list,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_get_thread_area,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_inotify_add_watch,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_ioctl,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    #[cfg(target_env = "musl")]
    libc::SYS_io_pgetevents,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    libc::SYS_lgetxattr,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_memfd_secret,
    libc::SYS_mincore,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pause,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_select,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_set_robust_list,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_set_thread_area,
    libc::SYS_set_tid_address,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_socketpair,
    libc::SYS_splice,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_time,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    libc::SYS_utimensat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
    // The profile allows these from kernel 4.8 on, which fixed ptrace bypassing seccomp;
    // every kernel we support is newer.
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    // x86_64 only in the profile: arch_prctl sets the TLS base of every x86_64 program;
    // modify_ldt serves Wine and the like.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
];

/// Syscalls allowed only to a container that holds the capability, as in the profile.
/// The kernel checks the capability again; the filter just keeps the attack surface of
/// these calls away from containers that could never use them.
///
/// Skipped names (no native syscall on x86_64 or aarch64): `umount` (use `umount2`),
/// `stime` and `clock_settime64`.
const BY_CAPABILITY: &[(Capability, &[i64])] = &[
    (
        Capability::CAP_DAC_READ_SEARCH,
        &[libc::SYS_open_by_handle_at],
    ),
    (
        Capability::CAP_SYS_ADMIN,
        &[
            libc::SYS_bpf,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fanotify_init,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fsopen,
            libc::SYS_fspick,
            libc::SYS_lookup_dcookie,
            libc::SYS_mount,
            libc::SYS_mount_setattr,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_perf_event_open,
            libc::SYS_quotactl,
            libc::SYS_quotactl_fd,
            libc::SYS_setdomainname,
            libc::SYS_sethostname,
            libc::SYS_setns,
            libc::SYS_syslog,
            libc::SYS_umount2,
            libc::SYS_unshare,
        ],
    ),
    (Capability::CAP_SYS_BOOT, &[libc::SYS_reboot]),
    (Capability::CAP_SYS_CHROOT, &[libc::SYS_chroot]),
    (
        Capability::CAP_SYS_MODULE,
        &[
            libc::SYS_delete_module,
            libc::SYS_init_module,
            libc::SYS_finit_module,
        ],
    ),
    (Capability::CAP_SYS_PACCT, &[libc::SYS_acct]),
    (
        Capability::CAP_SYS_PTRACE,
        &[
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
            libc::SYS_process_madvise,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_ptrace,
        ],
    ),
    (
        Capability::CAP_SYS_RAWIO,
        &[
            // Port I/O exists on x86 only.
            #[cfg(target_arch = "x86_64")]
            libc::SYS_iopl,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_ioperm,
        ],
    ),
    (
        Capability::CAP_SYS_TIME,
        &[libc::SYS_settimeofday, libc::SYS_clock_settime],
    ),
    (Capability::CAP_SYS_TTY_CONFIG, &[libc::SYS_vhangup]),
    (
        Capability::CAP_SYS_NICE,
        &[
            libc::SYS_get_mempolicy,
            libc::SYS_mbind,
            libc::SYS_set_mempolicy,
            libc::SYS_set_mempolicy_home_node,
        ],
    ),
    (Capability::CAP_SYSLOG, &[libc::SYS_syslog]),
    (Capability::CAP_BPF, &[libc::SYS_bpf]),
    (Capability::CAP_PERFMON, &[libc::SYS_perf_event_open]),
];

/// The profile's decisions for one capability set, before compiling to BPF.
struct Rules {
    /// Syscalls that are allowed: unconditionally for an empty rule list, otherwise when
    /// any one rule matches its arguments.
    allowed: BTreeMap<i64, Vec<SeccompRule>>,
    /// Whether `clone3` fails with `ENOSYS` rather than the default `EPERM`.
    clone3_enosys: bool,
}

/// Docker's default profile for a container whose bounding set is `capabilities`,
/// compiled for the host architecture. The set is typed, so a name spelled another way
/// (`SYS_CHROOT` against `CAP_SYS_CHROOT`) cannot silently match nothing.
pub fn default_profile(capabilities: &CapsHashSet) -> Result<BpfProgram, SeccompError> {
    let rules = rules_for(capabilities)?;
    let filter = SeccompFilter::new(
        rules.allowed,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TARGET_ARCH,
    )
    .map_err(SeccompError::Compile)?;
    let compiled = BpfProgram::try_from(filter).map_err(SeccompError::Compile)?;

    if !rules.clone3_enosys {
        return Ok(compiled);
    }
    let mut program = clone3_enosys_prefix();
    program.extend(compiled);
    Ok(program)
}

/// Installs `program` on the calling thread. Call it last, right before execve: seccompiler
/// sets no_new_privs when it installs a filter.
///
/// Allocates nothing, so it may run in a child between fork and exec.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(SeccompError::Install)
}

/// What the profile allows a container holding `capabilities`.
fn rules_for(capabilities: &CapsHashSet) -> Result<Rules, SeccompError> {
    let holds = |cap: &Capability| capabilities.contains(cap);
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();

    allowed.insert(
        libc::SYS_socket,
        vec![rule(
            libc::SYS_socket,
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            AF_VSOCK,
        )?],
    );
    // `personality` takes an `unsigned int`: compare the low 32 bits, as the kernel reads them.
    let personalities = PERSONALITIES
        .iter()
        .map(|&persona| {
            rule(
                libc::SYS_personality,
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                persona,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    allowed.insert(libc::SYS_personality, personalities);

    let sys_admin = holds(&Capability::CAP_SYS_ADMIN);
    if !sys_admin {
        // Threads and processes yes, namespaces no. Flags are the first argument on both
        // of our architectures (only s390 swaps them).
        allowed.insert(
            libc::SYS_clone,
            vec![rule(
                libc::SYS_clone,
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                0,
            )?],
        );
    }

    // Unconditional entries last, so that they replace any argument rules for the same call
    // (with CAP_SYS_ADMIN, `clone` is allowed with any flags).
    let unconditional = ALWAYS_ALLOWED.iter().chain(
        BY_CAPABILITY
            .iter()
            .filter(|(cap, _)| holds(cap))
            .flat_map(|(_, syscalls)| syscalls.iter()),
    );
    for &syscall in unconditional {
        allowed.insert(syscall, Vec::new());
    }

    Ok(Rules {
        allowed,
        // Without CAP_SYS_ADMIN a filter cannot inspect clone3's flags (they sit in a struct
        // in memory), so the profile refuses it with ENOSYS: glibc then falls back to clone,
        // whose flags the rule above checks. EPERM would fail thread creation outright.
        clone3_enosys: !sys_admin,
    })
}

/// A rule of a single condition on argument `index` of `syscall`.
fn rule(
    syscall: i64,
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, SeccompError> {
    SeccompCondition::new(index, len, op, value)
        .and_then(|condition| SeccompRule::new(vec![condition]))
        .map_err(|source| SeccompError::Rule { syscall, source })
}

/// BPF that makes `clone3` return `ENOSYS`, to run before the compiled profile.
///
/// `seccompiler` compiles a filter with one action on match and one for the rest, so the
/// profile compiles to "allow listed, EPERM otherwise" and these instructions go in front.
/// They check the audit arch themselves, since a foreign ABI numbers its calls differently;
/// for such a call they jump straight to the profile, whose own arch check kills it. Jumps
/// in BPF are relative, so the profile that follows runs unchanged.
fn clone3_enosys_prefix() -> Vec<sock_filter> {
    // Opcodes are 16 bits in `struct sock_filter`; libc declares them as u32.
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let arch_offset = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
    let nr_offset = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let instruction = |code, k, jt, jf| sock_filter { code, jt, jf, k };

    vec![
        instruction(LOAD_WORD, arch_offset, 0, 0),
        // Foreign ABI: skip the three instructions below.
        instruction(JUMP_IF_EQUAL, AUDIT_ARCH, 0, 3),
        instruction(LOAD_WORD, nr_offset, 0, 0),
        // Not clone3: skip the return below.
        instruction(JUMP_IF_EQUAL, libc::SYS_clone3 as u32, 0, 1),
        instruction(RETURN, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Output};

    fn caps(names: &[&str]) -> CapsHashSet {
        names
            .iter()
            .map(|name| name.parse().expect("capability name"))
            .collect()
    }

    /// Runs `/bin/sh -c script` under the profile for `capabilities`.
    #[allow(unsafe_code)]
    fn sh_filtered(capabilities: &[&str], script: &str) -> Output {
        let program = default_profile(&caps(capabilities)).expect("compile profile");
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        // SAFETY: the closure runs in the forked child of a multi-threaded process (the
        // test harness), where only async-signal-safe work is sound: no allocation, no
        // locks. `install` does not allocate (seccompiler builds the `sock_fprog` on the
        // stack and makes two syscalls; its errors hold an OS error code, not a heap
        // value), the program was allocated before the fork and is only borrowed, and
        // `last_os_error` reads errno into an `io::Error` without allocating.
        unsafe {
            command.pre_exec(move || install(&program).map_err(|_| io::Error::last_os_error()));
        }
        command.output().expect("spawn /bin/sh")
    }

    fn sh_unfiltered(script: &str) -> Output {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("spawn /bin/sh")
    }

    fn stdout(output: &Output) -> String {
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn stderr(output: &Output) -> String {
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Whether `tool` runs here; tests that need it are skipped (with a note) otherwise,
    /// but fail under `WHARF_REQUIRE_PRIVILEGED=1` (CI must not skip silently).
    fn have(tool: &str) -> bool {
        let found = sh_unfiltered(&format!("command -v {tool}"))
            .status
            .success();
        if !found {
            assert!(
                std::env::var("WHARF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{tool} is not installed and WHARF_REQUIRE_PRIVILEGED=1"
            );
            eprintln!("skipped: {tool} is not installed");
        }
        found
    }

    /// Runs `python3 -c code` under the profile; `code` must not contain single quotes.
    fn python_filtered(capabilities: &[&str], code: &str) -> Output {
        sh_filtered(capabilities, &format!("exec python3 -c '{code}'"))
    }

    #[test]
    fn compiles_for_both_capability_sets_and_sys_admin_allows_more() {
        let default = default_profile(&CapsHashSet::new()).expect("default profile");
        let admin = default_profile(&caps(&["CAP_SYS_ADMIN"])).expect("CAP_SYS_ADMIN profile");
        let max = libc::BPF_MAXINSNS as usize;
        assert!(
            !default.is_empty() && default.len() <= max,
            "{}",
            default.len()
        );
        assert!(!admin.is_empty() && admin.len() <= max, "{}", admin.len());

        let default = rules_for(&CapsHashSet::new()).expect("default rules");
        let admin = rules_for(&caps(&["CAP_SYS_ADMIN"])).expect("CAP_SYS_ADMIN rules");
        let unconditional =
            |rules: &Rules, nr: i64| rules.allowed.get(&nr).is_some_and(Vec::is_empty);
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_clone3,
        ] {
            assert!(
                !default.allowed.contains_key(&nr),
                "syscall {nr} allowed by default"
            );
            assert!(
                unconditional(&admin, nr),
                "syscall {nr} not allowed with CAP_SYS_ADMIN"
            );
        }
        // clone: argument-checked by default, free with CAP_SYS_ADMIN.
        assert_eq!(default.allowed[&libc::SYS_clone].len(), 1);
        assert!(unconditional(&admin, libc::SYS_clone));
        assert!(default.clone3_enosys && !admin.clone3_enosys);
        // Everything allowed by default is still allowed, and more.
        assert!(default
            .allowed
            .keys()
            .all(|nr| admin.allowed.contains_key(nr)));
        assert!(admin.allowed.len() > default.allowed.len());
    }

    #[test]
    fn other_capabilities_add_their_syscalls_only() {
        let default = rules_for(&CapsHashSet::new()).expect("default rules");
        for (cap, nr) in [
            (Capability::CAP_SYS_CHROOT, libc::SYS_chroot),
            (Capability::CAP_SYS_BOOT, libc::SYS_reboot),
            (Capability::CAP_SYS_TIME, libc::SYS_settimeofday),
            (Capability::CAP_SYSLOG, libc::SYS_syslog),
            (Capability::CAP_BPF, libc::SYS_bpf),
            (Capability::CAP_PERFMON, libc::SYS_perf_event_open),
            (Capability::CAP_SYS_NICE, libc::SYS_mbind),
            (Capability::CAP_SYS_MODULE, libc::SYS_finit_module),
            (Capability::CAP_SYS_PTRACE, libc::SYS_kcmp),
        ] {
            assert!(
                !default.allowed.contains_key(&nr),
                "{cap}: allowed by default"
            );
            let with = rules_for(&CapsHashSet::from([cap])).expect("rules");
            assert!(
                with.allowed.contains_key(&nr),
                "{cap}: syscall {nr} not allowed"
            );
            // None of them lifts what only CAP_SYS_ADMIN may do.
            assert!(
                !with.allowed.contains_key(&libc::SYS_mount),
                "{cap}: mount allowed"
            );
            assert_eq!(
                with.allowed[&libc::SYS_clone].len(),
                1,
                "{cap}: clone unchecked"
            );
            assert!(with.clone3_enosys, "{cap}: clone3 allowed");
        }
    }

    #[test]
    fn normal_commands_still_work() {
        let output = sh_filtered(
            &[],
            "echo ok; ls / >/dev/null && cat /proc/self/status >/dev/null",
        );
        assert!(output.status.success(), "{output:?}");
        assert_eq!(stdout(&output), "ok\n");
    }

    #[test]
    fn process_runs_with_filter_and_no_new_privs() {
        let output = sh_filtered(&[], "cat /proc/self/status");
        assert!(output.status.success(), "{output:?}");
        let status = stdout(&output);
        assert!(status.contains("Seccomp:\t2\n"), "{status}");
        assert!(status.contains("NoNewPrivs:\t1\n"), "{status}");
    }

    #[test]
    fn namespaces_need_cap_sys_admin() {
        if !have("unshare") {
            return;
        }
        for script in ["unshare -U true", "unshare -m true"] {
            let unfiltered = sh_unfiltered(script);
            if !unfiltered.status.success() {
                eprintln!("skipped {script}: fails even without a filter: {unfiltered:?}");
                continue;
            }
            let refused = sh_filtered(&[], script);
            assert!(
                !refused.status.success(),
                "{script} ran without CAP_SYS_ADMIN"
            );
            assert!(
                stderr(&refused).contains("Operation not permitted"),
                "{script}: {}",
                stderr(&refused)
            );
            let allowed = sh_filtered(&["CAP_SYS_ADMIN"], script);
            assert!(
                allowed.status.success(),
                "{script} with CAP_SYS_ADMIN: {allowed:?}"
            );
        }
    }

    #[test]
    fn clone3_fails_with_enosys_and_threads_still_work() {
        if !have("python3") {
            return;
        }
        // clone3(NULL, 0): EINVAL where the call is allowed (size too small), ENOSYS where the
        // profile refuses it; a thread checks that glibc's fallback to clone works.
        let code = format!(
            "import ctypes, threading\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.syscall({}, None, 0)\n\
             print(ctypes.get_errno())\n\
             t = threading.Thread(target=print, args=(\"thread\",))\n\
             t.start(); t.join()",
            libc::SYS_clone3
        );
        let refused = python_filtered(&[], &code);
        assert!(refused.status.success(), "{refused:?}");
        assert_eq!(stdout(&refused), format!("{}\nthread\n", libc::ENOSYS));

        let allowed = python_filtered(&["CAP_SYS_ADMIN"], &code);
        assert!(allowed.status.success(), "{allowed:?}");
        assert_eq!(stdout(&allowed), format!("{}\nthread\n", libc::EINVAL));
    }

    #[test]
    fn vsock_sockets_are_refused() {
        if !have("python3") {
            return;
        }
        let vsock = python_filtered(&[], "import socket; socket.socket(40, socket.SOCK_STREAM)");
        assert!(
            !vsock.status.success(),
            "AF_VSOCK socket created: {vsock:?}"
        );
        assert!(
            stderr(&vsock).contains("PermissionError"),
            "{}",
            stderr(&vsock)
        );

        let unix = python_filtered(
            &[],
            "import socket; socket.socket(socket.AF_UNIX); print(\"ok\")",
        );
        assert!(unix.status.success(), "{unix:?}");
        assert_eq!(stdout(&unix), "ok\n");
    }

    #[test]
    fn io_uring_is_refused_even_with_sys_admin() {
        if !have("python3") {
            return;
        }
        // io_uring_setup(1, NULL): EFAULT if the kernel saw it, EPERM from the filter.
        let code = format!(
            "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); \
             r = libc.syscall({}, 1, None); print(r, os.strerror(ctypes.get_errno()))",
            libc::SYS_io_uring_setup
        );
        let unfiltered = sh_unfiltered(&format!("exec python3 -c '{code}'"));
        assert!(
            !stdout(&unfiltered).contains("Operation not permitted"),
            "the host itself refuses io_uring: {unfiltered:?}"
        );
        for caps in [&[][..], &["CAP_SYS_ADMIN"][..]] {
            let filtered = python_filtered(caps, &code);
            assert_eq!(
                stdout(&filtered),
                "-1 Operation not permitted\n",
                "{caps:?}: {filtered:?}"
            );
        }
    }

    #[test]
    fn personality_allows_only_docker_values() {
        if !have("python3") {
            return;
        }
        // Querying (0xffffffff) and PER_LINUX32 are allowed; ADDR_NO_RANDOMIZE is not.
        let code = "import ctypes\n\
                    libc = ctypes.CDLL(None, use_errno=True)\n\
                    print(libc.personality(0xffffffff) >= 0)\n\
                    print(libc.personality(0x0040000), ctypes.get_errno())";
        let output = python_filtered(&[], code);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(stdout(&output), format!("True\n-1 {}\n", libc::EPERM));
    }
}
