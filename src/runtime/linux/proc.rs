//! Reading `/proc`: process identity (pid + start time) so that a pid is never confused
//! with a later process that reused it.

use std::fs;
use std::io;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
}

/// Field 22 of a stat line. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm come field 3 (state) onwards; start time is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether `pid` is the process that started at `start`, and not a zombie.
pub fn is_alive(pid: i32, start: u64) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            parse_start_time(&stat) == Some(start) && state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Sends `signal` to `pid` only if it is still the process that started at `start`.
/// Returns false when the process is gone.
pub fn signal_if_same(pid: i32, start: u64, signal: Signal) -> nix::Result<bool> {
    if !is_alive(pid, start) {
        return Ok(false);
    }
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Number of threads of the calling process.
pub fn thread_count() -> io::Result<usize> {
    Ok(fs::read_dir("/proc/self/task")?.count())
}

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`).
pub fn boot_time() -> io::Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no btime in /proc/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_past_a_command_name_with_spaces_and_parens() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn own_process_is_alive_with_its_start_time_and_not_with_another() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
    }
}
