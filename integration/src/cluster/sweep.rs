//! Removing a cluster without its handles: on Ctrl-C, in `just cluster
//! down`, and after a run that died hard. Everything is found from the
//! state directory's path (every long-running process of the cluster has
//! it on its command line, the node holders included) and the cluster's
//! unique prefix (its cgroups and namespaces are named `weft-<pid>-…`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::reap;
use crate::kube_api::{all_pids, cmdline, process_alive};

/// State directories are `<tmp>/weft-cluster-<pid>-<random>`.
pub const STATE_PREFIX: &str = "weft-cluster-";

/// The clusters of this process: (state directory, unique prefix).
static ACTIVE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
/// Set while a program waits for Ctrl-C (`just cluster up`).
static WAITING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

fn active() -> std::sync::MutexGuard<'static, Vec<(PathBuf, String)>> {
    ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn register(dir: &Path, unique: &str) {
    active().push((dir.to_path_buf(), unique.to_string()));
}

pub(super) fn unregister(dir: &Path) {
    active().retain(|(d, _)| d != dir);
}

/// Installs the Ctrl-C/SIGTERM handler of programs and tests that make
/// clusters: it removes every cluster of this process (processes,
/// cgroups, directories) and every namespace, then exits with 130 —
/// except while [`wait_for_interrupt`] waits, which it then ends. Call it
/// before the first namespace is made; a second call does nothing.
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        weft_netns::cleanup_in_own_handler();
        let result = ctrlc::set_handler(|| {
            if WAITING.load(Ordering::SeqCst) {
                STOP.store(true, Ordering::SeqCst);
                return;
            }
            eprintln!("weft cluster: interrupted, removing everything");
            let clusters = active().clone();
            for (dir, unique) in clusters {
                sweep_dir(&dir, &unique);
            }
            crate::weftd::kill_all();
            weft_netns::cleanup_all();
            std::process::exit(130);
        });
        if let Err(e) = result {
            eprintln!("weft cluster: no Ctrl-C handler ({e}); an interrupted run is swept by the next one");
        }
    });
}

/// Blocks until Ctrl-C or SIGTERM (with [`install_interrupt_handler`]).
pub fn wait_for_interrupt() {
    WAITING.store(true, Ordering::SeqCst);
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    WAITING.store(false, Ordering::SeqCst);
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Removes what a cluster with state directory `dir` and cgroup/namespace
/// prefix `unique` left: its nodes' processes (found through the holders),
/// every process naming `dir`, the holders, the cgroups, the directory.
pub fn sweep_dir(dir: &Path, unique: &str) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let own: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| p != me && cmdline(p).contains(&needle))
        .collect();
    let holders: Vec<u32> = own
        .iter()
        .copied()
        .filter(|&p| cmdline(p).starts_with(reap::HOLDER_NAME))
        .collect();
    let roots = reap::stale_cgroup_roots(&format!("{unique}-"));
    for &holder in &holders {
        reap::kill_node_processes(holder, &roots);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = own.iter().copied().filter(|&p| process_alive(p)).collect();
        if alive.is_empty() || Instant::now() > deadline {
            break;
        }
        alive.into_iter().for_each(kill_pid);
        std::thread::sleep(Duration::from_millis(50));
    }
    for root in roots {
        reap::remove_cgroups(&root);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the clusters of runs that died without cleaning up (their pid
/// is gone): processes, cgroups and directories; their namespaces go with
/// the namespace kit's own sweep.
pub fn sweep_stale() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STATE_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        eprintln!(
            "weft cluster: removing what run {pid} left ({})",
            e.path().display()
        );
        sweep_dir(&e.path(), &format!("weft-{pid}"));
    }
    let _ = weft_netns::sweep_stale();
}
