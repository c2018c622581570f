//! `up` and `down` of the lab and the cluster: the process that keeps one
//! up records its pid; `down` asks it to stop (SIGTERM, which its Ctrl-C
//! handler turns into a normal teardown) and waits until it is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The pid file of program `name` (`<tmp>/<name>.pid`).
pub fn pid_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}.pid"))
}

/// Records this process as the one keeping `name` up.
pub fn record(name: &str) -> anyhow::Result<()> {
    std::fs::write(pid_file(name), std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pid_file(name).display()))
}

/// Forgets the record (when the up process ends on its own).
pub fn forget(name: &str) {
    let _ = std::fs::remove_file(pid_file(name));
}

/// Stops the process recorded for `name` and waits (at most `timeout`)
/// until it has removed everything and exited. `false` if none was
/// recorded.
pub fn stop_recorded(name: &str, timeout: Duration) -> anyhow::Result<bool> {
    let path = pid_file(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("bad pid file {}", path.display()))?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let began = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && began.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(100));
    }
    forget(name);
    Ok(true)
}
