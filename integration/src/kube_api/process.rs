//! The server's processes: pid files, liveness, killing, the watchdog.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// `pid`'s command line, arguments joined by spaces ("" if gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process id on the machine (the numeric entries of `/proc`).
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

pub(super) fn read_pid(state: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(state.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and runs a program of the state directory
/// `state` (not some process that reused the pid).
pub(super) fn runs_own(state: &Path, pid: u32) -> bool {
    process_alive(pid) && cmdline(pid).contains(&*state.to_string_lossy())
}

/// Sends `signal` to those of `pids` that are ours (see [`runs_own`]).
pub(super) fn signal_own(state: &Path, pids: &[u32], signal: Signal) {
    for &pid in pids {
        if runs_own(state, pid) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }
}

/// A process (in its own process group, so Ctrl-C does not reach it) that
/// runs the stop script and deletes the state once our end of its stdin
/// closes — normally in `shutdown`, or when this process dies however it
/// dies. Safety net for what Drop cannot cover.
pub(super) fn watchdog(dir: &Path, state: &Path) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .args(["-c", r#"cat >/dev/null; "$0" "$1"; rm -rf -- "$1""#])
        .arg(dir.join("stop"))
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the watchdog")?;
    let stdin = child.stdin.take().context("watchdog has no stdin")?;
    Ok((child, stdin))
}
