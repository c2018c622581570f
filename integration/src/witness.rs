//! An independent witness of kernel changes in a namespace: `ip monitor`,
//! for tests that must show weft wrote nothing (a restart, a no-op).

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use weft_netns::Netns;

/// `ip -4 monitor link address route neigh` running in a namespace.
pub struct KernelWitness {
    child: Child,
    /// Drop lines the kernel writes itself (reachability states of IPv6
    /// neighbour discovery, routes of addresses); weft's neighbours are
    /// PERMANENT and its routes `proto 119`.
    only_permanent_neighbours: bool,
}

impl KernelWitness {
    /// Starts watching; returns once the monitor is subscribed.
    pub fn start(ns: &Netns) -> anyhow::Result<KernelWitness> {
        // IPv4 only: the kernel finishing IPv6 duplicate address detection on
        // a new device is not a write of weft's.
        Self::start_with(ns, &["-4", "monitor", "link", "address", "route", "neigh"])
    }

    /// Watches IPv6 routes and neighbours (`ip -6 monitor route neigh`):
    /// the IPv6 overlay's writes. Neighbour discovery's own state changes
    /// (REACHABLE, STALE, …) and the kernel's address routes are not
    /// reported.
    pub fn start_v6(ns: &Netns) -> anyhow::Result<KernelWitness> {
        let mut w = Self::start_with(ns, &["-6", "monitor", "route", "neigh"])?;
        w.only_permanent_neighbours = true;
        Ok(w)
    }

    /// Watches VXLAN FDB entries (`bridge monitor fdb`).
    pub fn start_fdb(ns: &Netns) -> anyhow::Result<KernelWitness> {
        let child = ns
            .command(&["bridge", "monitor", "fdb"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start bridge monitor")?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(KernelWitness {
            child,
            only_permanent_neighbours: false,
        })
    }

    /// Watches with these `ip` arguments (e.g. `-4 monitor address route`).
    pub fn start_with_args(ns: &Netns, args: &[&str]) -> anyhow::Result<KernelWitness> {
        Self::start_with(ns, args)
    }

    fn start_with(ns: &Netns, args: &[&str]) -> anyhow::Result<KernelWitness> {
        let mut all = vec!["ip"];
        all.extend_from_slice(args);
        let child = ns
            .command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ip monitor")?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(KernelWitness {
            child,
            only_permanent_neighbours: false,
        })
    }

    /// Stops watching (after a short grace for late events) and returns every
    /// change seen, as `ip monitor` printed it; empty when nothing changed.
    pub fn changes(mut self) -> anyhow::Result<String> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let out = self.child.wait_with_output().context("ip monitor")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !self.only_permanent_neighbours || !is_discovery_state(l))
            .collect();
        Ok(kept.join("\n").trim().to_string())
    }
}

/// A line the kernel writes itself: a neighbour state neighbour discovery
/// sets, or a route the kernel makes for an address (`proto kernel`: a
/// veth's link-local address leaving duplicate address detection).
fn is_discovery_state(line: &str) -> bool {
    if line.contains(" proto kernel") {
        return true;
    }
    let states = [
        "REACHABLE",
        "STALE",
        "DELAY",
        "PROBE",
        "FAILED",
        "INCOMPLETE",
        "NOARP",
    ];
    (line.contains(" lladdr ") || line.contains(" router") || line.starts_with("Deleted "))
        && !line.contains("PERMANENT")
        && states
            .iter()
            .any(|s| line.split_whitespace().any(|w| w == *s))
}
