//! The cgroups of a node's pods and the end of everything a node ran.
//! Only what the harness made is touched: the node cgroup `/<root>` (whose
//! name carries the cluster's unique prefix) and processes found in the
//! node's own namespaces or that cgroup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// The holder's `argv[0]`, followed by the node's directory, so a sweep
/// finds holders by their command line.
pub const HOLDER_NAME: &str = "weft-node-holder";

/// The mounted cgroup hierarchies (v1 controllers, named ones, the v2 tree).
fn hierarchies() -> Vec<PathBuf> {
    let base = Path::new(CGROUP_FS);
    if base.join("cgroup.procs").is_file() {
        // A pure cgroup v2 machine.
        return vec![base.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").is_file())
        .collect()
}

/// Creates `/<root>` in every v1 hierarchy (kubelet refuses a missing
/// cgroup root), with cpuset's cpus and mems copied from the parent.
pub fn make_cgroups(root: &str) -> anyhow::Result<()> {
    for h in hierarchies() {
        if h.join("cgroup.controllers").is_file() && h != Path::new(CGROUP_FS) {
            // The v2 tree of a hybrid machine: kubelet does not use it.
            continue;
        }
        let dir = h.join(root);
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create cgroup {}: {e}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(h.join(file)) {
                std::fs::write(dir.join(file), value.trim()).map_err(|e| {
                    anyhow::anyhow!("cannot write {}: {e}", dir.join(file).display())
                })?;
            }
        }
    }
    Ok(())
}

/// Every directory under `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// The pids in the node cgroup `/<root>` of every hierarchy.
fn cgroup_pids(root: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    if root.is_empty() {
        return pids;
    }
    for h in hierarchies() {
        let dir = h.join(root);
        if !dir.is_dir() {
            continue;
        }
        for d in subtree(&dir) {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids
}

fn ns_link(pid: u32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Pids of the node's processes: in the holder's mount or network
/// namespace, or in the node cgroups `roots` (pods' containers); never
/// this process or the holder.
pub fn node_processes(holder: u32, roots: &[String]) -> BTreeSet<u32> {
    // Never the machine's (this process's) namespaces: should the holder be
    // gone and its pid reused, nothing outside the node may match.
    let own = |kind: &str| ns_link(std::process::id(), kind);
    let mnt = ns_link(holder, "mnt").filter(|m| Some(m) != own("mnt").as_ref());
    let net = ns_link(holder, "net").filter(|n| Some(n) != own("net").as_ref());
    let mut pids: BTreeSet<u32> = roots.iter().flat_map(|r| cgroup_pids(r)).collect();
    for pid in crate::kube_api::all_pids() {
        let in_mnt = mnt.is_some() && ns_link(pid, "mnt") == mnt;
        let in_net = net.is_some() && ns_link(pid, "net") == net;
        if in_mnt || in_net {
            pids.insert(pid);
        }
    }
    pids.remove(&std::process::id());
    pids.remove(&holder);
    pids
}

/// SIGKILLs the node's processes (see [`node_processes`]) until none is
/// left (at most 10 s).
pub fn kill_node_processes(holder: u32, roots: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = node_processes(holder, roots);
        let alive: Vec<u32> = pids
            .into_iter()
            .filter(|&p| crate::kube_api::process_alive(p))
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in alive {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes `/<root>` and everything below it from every hierarchy,
/// deepest first (retrying while exiting processes still hold them).
pub fn remove_cgroups(root: &str) {
    if root.is_empty() || root.contains('/') {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = false;
        for h in hierarchies() {
            let dir = h.join(root);
            if !dir.is_dir() {
                continue;
            }
            for d in subtree(&dir) {
                if std::fs::remove_dir(&d).is_err() && d.is_dir() {
                    left = true;
                }
            }
        }
        if !left || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node cgroups named `<prefix>*` left by runs that died (their holders
/// are gone); removed with their processes. For the stale sweep.
pub fn stale_cgroup_roots(prefix: &str) -> Vec<String> {
    let mut roots = BTreeSet::new();
    for h in hierarchies() {
        if let Ok(entries) = std::fs::read_dir(&h) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) && e.path().is_dir() {
                    roots.insert(name);
                }
            }
        }
    }
    roots.into_iter().collect()
}
