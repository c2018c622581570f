//! An independent witness of kernel changes in a namespace: `ip monitor`,
//! for tests that must show weft wrote nothing (a restart, a no-op).

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use weft_netns::Netns;

/// `ip -4 monitor link address route neigh` running in a namespace.
pub struct KernelWitness {
    child: Child,
}

impl KernelWitness {
    /// Starts watching; returns once the monitor is subscribed.
    pub fn start(ns: &Netns) -> anyhow::Result<KernelWitness> {
        // IPv4 only: the kernel finishing IPv6 duplicate address detection on
        // a new device is not a write of weft's.
        let child = ns
            .command(&["ip", "-4", "monitor", "link", "address", "route", "neigh"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ip monitor")?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(KernelWitness { child })
    }

    /// Stops watching (after a short grace for late events) and returns every
    /// change seen, as `ip monitor` printed it; empty when nothing changed.
    pub fn changes(mut self) -> anyhow::Result<String> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let out = self.child.wait_with_output().context("ip monitor")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
