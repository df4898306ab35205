//! The last steps of every container process, from root in the container's namespaces
//! to the command: user and groups, capabilities, working directory, open-files limit,
//! `no_new_privs`, signals, seccomp, `execve`. Shared by the shim's init and by
//! `wharf exec` (and so the `exec` healthcheck), so a process run later is confined
//! exactly as the container's own. Single-threaded callers only (the shim's child, the
//! exec helper's child).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{chdir, execve, setgid, setgroups, setuid, Gid, Uid};
use oci_spec::runtime::LinuxCapabilities;

/// How the messages of a failed exec begin (Docker's wording): the one failure of a
/// start that is the image's and the manifest's, not the host's.
pub const EXEC_FAILED: &str = "exec";

/// What never exists: the success type of a function that only returns on failure.
pub enum Never {}

/// Who the process becomes, and what confines it.
pub struct Identity<'a> {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: &'a [u32],
    /// The OCI sets; `None` keeps the caller's (root's) sets.
    pub capabilities: Option<&'a LinuxCapabilities>,
    pub no_new_privileges: bool,
    /// The soft open-files limit to start with (`None`: the caller's).
    pub nofile_soft: Option<u64>,
    /// Install Docker's default seccomp profile (off when privileged).
    pub seccomp: bool,
}

impl Identity<'_> {
    /// Becomes this identity in `cwd` and execs `args` with `env` (its `PATH` finds
    /// the program). Returns only on failure, with the message.
    pub fn exec(&self, cwd: &Path, args: &[String], env: &[String]) -> Result<Never, String> {
        self.confine(cwd)?;
        exec_program(args, env)
    }

    /// Every step but the exec: user and groups, capabilities, working directory,
    /// umask, open-files limit, `no_new_privs`, signals, and last the seccomp filter.
    /// What a process may do from here on is what the container's own processes may:
    /// `wharf exec` confines itself so before it forks the command, so nothing of the
    /// container ever sees a process of ours with more.
    pub fn confine(&self, cwd: &Path) -> Result<(), String> {
        let groups: Vec<Gid> = self
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        // Capabilities: shrink the bounding set and keep the permitted set across setuid
        // (runc's order), then set the final sets once the user has changed.
        if let Some(c) = self.capabilities {
            super::capabilities::limit_bounding(c)?;
            nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keep capabilities: {e}"))?;
        }
        setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
        setgid(Gid::from_raw(self.gid)).map_err(|e| format!("setgid {}: {e}", self.gid))?;
        setuid(Uid::from_raw(self.uid)).map_err(|e| format!("setuid {}: {e}", self.uid))?;
        if let Some(c) = self.capabilities {
            let _ = nix::sys::prctl::set_keepcaps(false);
            super::capabilities::apply_sets(c)?;
        }
        chdir(cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
        // A working directory reached through a descriptor of the host (a
        // `/proc/self/fd/N` one) would be outside the root: the kernel then has no path
        // for it from the root (runc's CVE-2024-21626).
        match nix::unistd::getcwd() {
            Ok(dir) if dir.is_absolute() => {}
            _ => {
                return Err(format!(
                    "working directory {} is outside the container",
                    cwd.display()
                ))
            }
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        if let Some(soft) = self.nofile_soft {
            // Lowering the soft limit needs no privilege; the hard one stays.
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
                setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)
                    .map_err(|e| format!("set the open files limit: {e}"))?;
            }
        }
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        }
        // Rust ignores SIGPIPE at startup and ignored signals survive execve: restore the
        // default, and an empty signal mask, as a fresh process expects.
        reset_signals();
        // Last: the filter must allow only what the container may do, not what setting
        // it up needed. (Installing it sets no_new_privs too.)
        if self.seccomp {
            // The bounding set decides, as in Docker: a non-root user has no effective
            // capabilities, yet its profile is the one of the capabilities it could gain.
            let caps = self
                .capabilities
                .map(|c| super::capabilities::convert(c.bounding()))
                .unwrap_or_default();
            let program =
                super::linux::seccomp::default_profile(&caps).map_err(|e| e.to_string())?;
            super::linux::seccomp::install(&program).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Execs `args` with `env`, the program found on the `PATH` of `env` (from a confined
/// process: [`Identity::confine`]). Returns only on failure, with the message.
pub fn exec_program(args: &[String], env: &[String]) -> Result<Never, String> {
    let program = args.first().ok_or("no command to run")?;
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::process::DEFAULT_PATH);
    let exe = find_executable(program, path)?;
    let c = |s: &str| CString::new(s).map_err(|_| format!("argument {s:?} contains a NUL byte"));
    let argv: Vec<CString> = args.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let exe_c = CString::new(exe.as_os_str().as_bytes()).map_err(|_| "bad path".to_string())?;
    let err = execve(&exe_c, &argv, &envp).unwrap_err();
    Err(format!("{EXEC_FAILED} {}: {err}", exe.display()))
}

/// Resolves `program` like execvp(3) but against the container's `PATH`, with Docker's
/// error message when it is not found.
fn find_executable(program: &str, path: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return match p.metadata() {
            Ok(_) => Ok(p),
            Err(_) => Err(format!(
                "{EXEC_FAILED}: \"{program}\": stat {program}: no such file or directory"
            )),
        };
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{EXEC_FAILED}: \"{program}\": executable file not found in $PATH"
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn reset_signals() {
    for sig in Signal::iterator() {
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            let _ = super::linux::set_default_handler(sig);
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
