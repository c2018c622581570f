//! `weft trace <src> <dst>`: the seed's "day in the life of a packet" as a
//! command. It walks a packet hop by hop — the source pod's route, the
//! bridge, the node's lookup, the neighbour and FDB entry (or the host-gw
//! route, or the UDP forwarder), the destination node's lookup, its bridge
//! and the pod's veth, or the SNAT rule for a destination outside the
//! cluster — printing at each hop the command a person would run and what
//! the kernel answers, and names the first broken hop as the fault.
//!
//! On a node it reads that node's kernel (and weftd over `@weft/agent`)
//! and says where the path leaves the node. Given namespaces (`--netns`,
//! as the lab does) it reads each and follows the packet through all of
//! them.
//!
//! - [`place`]: what is read, as data, and the [`place::Reader`] trait;
//! - [`walk`]: the walk itself, pure over the reader;
//! - [`kernel`]: the reader over netlink, entering namespaces;
//! - [`show`]: rows printed as `ip` and `bridge` print them.

pub mod kernel;
pub mod place;
pub mod show;
pub mod walk;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// What a hop looks at, for machines (`--json`) and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The source pod's route.
    PodRoute,
    /// The pod's veth on the node's bridge.
    Bridge,
    /// The source node's route lookup.
    NodeRoute,
    /// The next hop's neighbour entry.
    Neighbour,
    /// The VXLAN device's FDB entry.
    Fdb,
    /// The encapsulation (VXLAN device, or flannel0).
    Encapsulation,
    /// The UDP forwarder's peer table on the sending node.
    Forwarder,
    /// The destination's VTEP.
    Vtep,
    /// The UDP forwarder on the receiving node.
    ForwarderPeer,
    /// The SNAT rule for a destination outside the cluster.
    Snat,
    /// The destination node's lookup (after decapsulation).
    DecapRoute,
    /// The destination pod's neighbour entry on the bridge.
    PodNeighbour,
    /// The bridge port (the pod's veth).
    PodPort,
    /// Where the packet ends.
    Arrival,
}

impl Step {
    /// Its name in `--json`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One hop.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// What it looks at.
    pub step: Step,
    /// The namespace (node or pod) it is read in.
    pub place: String,
    /// What happens here, in words.
    pub says: String,
    /// The command a person would run there.
    pub command: Option<String>,
    /// The kernel's answer, printed as that command prints it.
    pub output: Vec<String>,
    /// Set on the hop where the packet is lost: why.
    pub fault: Option<String>,
}

/// Where the walk ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "end")]
pub enum End {
    /// It arrives.
    Delivered {
        /// Where.
        place: String,
    },
    /// It leaves the node read here, for another node.
    LeavesNode {
        /// The node address it is sent to.
        to: IpAddr,
        /// That node's name, if weftd knows it.
        node: Option<String>,
        /// How (the encapsulation).
        how: String,
    },
    /// It leaves the cluster.
    LeavesCluster {
        /// Out of which interface.
        dev: String,
        /// With which source address.
        source: Option<IpAddr>,
    },
    /// It is lost at the faulty hop.
    Dropped,
}

/// A walk.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The source address.
    pub src: IpAddr,
    /// The destination address.
    pub dst: IpAddr,
    /// Every hop, in order.
    pub hops: Vec<Hop>,
    /// Where it ends.
    pub end: End,
}

impl Trace {
    /// The faulty hop, if any (1-based number and hop).
    pub fn fault(&self) -> Option<(usize, &Hop)> {
        self.hops
            .iter()
            .enumerate()
            .find(|(_, h)| h.fault.is_some())
            .map(|(i, h)| (i + 1, h))
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "A day in the life of a packet: {} -> {}",
            self.src, self.dst
        )?;
        for (i, h) in self.hops.iter().enumerate() {
            let colon = if h.command.is_some() { ":" } else { "" };
            writeln!(f, "{}. [{}] {}{colon}", i + 1, h.place, h.says)?;
            if let Some(c) = &h.command {
                writeln!(f, "   $ {c}")?;
            }
            for line in &h.output {
                writeln!(f, "   {line}")?;
            }
            if let Some(why) = &h.fault {
                writeln!(f, "   FAULT: {why}")?;
            }
        }
        match &self.end {
            End::Delivered { place } => writeln!(f, "=> delivered: {place}"),
            End::LeavesNode { to, node, how } => {
                let node = node.as_deref().unwrap_or("another node");
                writeln!(
                    f,
                    "=> the packet leaves this node for {to} ({node}), {how}; run `weft trace {} {}` on {node} to follow it there",
                    self.src, self.dst
                )
            }
            End::LeavesCluster { dev, source } => match source {
                Some(s) => writeln!(
                    f,
                    "=> the packet leaves the cluster out {dev} with source {s}"
                ),
                None => writeln!(f, "=> the packet leaves the cluster out {dev}"),
            },
            End::Dropped => match self.fault() {
                Some((n, h)) => writeln!(
                    f,
                    "=> FAULT at hop {n} on {}: {}",
                    h.place,
                    h.fault.as_deref().unwrap_or_default()
                ),
                None => writeln!(f, "=> the packet is dropped"),
            },
        }
    }
}

/// Where `weft trace` reads.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Network namespaces to read (paths); empty: the calling thread's own.
    pub netns: Vec<std::path::PathBuf>,
    /// The subnet file naming the cluster networks, for when weftd does
    /// not answer.
    pub subnet_file: Option<std::path::PathBuf>,
}

/// Reads every place of `scope` and walks the packet through them. Call it
/// on a current-thread tokio runtime (namespaces are entered on the
/// calling thread).
pub async fn run(scope: &Scope, src: IpAddr, dst: IpAddr) -> Result<Trace, String> {
    let mut places = Vec::new();
    if scope.netns.is_empty() {
        let mut here = kernel::open(None, "this node").await?;
        here.name = here.node_name().to_string();
        places.push(here);
    }
    let names: Vec<String> = scope
        .netns
        .iter()
        .map(|path| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let shared = shared_prefix(&names);
    for (path, name) in scope.netns.iter().zip(&names) {
        places.push(kernel::open(Some(path), &name[shared..]).await?);
    }
    let networks = scope
        .subnet_file
        .as_deref()
        .map(crate::status::networks_in)
        .unwrap_or_default();
    walk::walk(&places, &networks, src, dst).await
}

/// The length of the prefix up to a `-` that every name shares (a lab's
/// `weft-<pid>-`), so that places print as `pod1-1`; 0 for fewer than two.
fn shared_prefix(names: &[String]) -> usize {
    let Some((first, rest)) = names.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    let common = rest.iter().fold(first.len(), |n, other| {
        first
            .bytes()
            .zip(other.bytes())
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    first[..common].rfind('-').map_or(0, |i| i + 1)
}
