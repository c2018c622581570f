//! `weft status`: what weftd wants on this node, held against what the
//! kernel has.
//!
//! weftd answers `status` on its agent socket (`@weft/agent`) with a
//! [`Status`]: the node's leases, the NAT mode and why, every peer and its
//! desired routes, neighbours and FDB entries (each family's overlay
//! [`Snapshot`]), the Nodes skipped and why. The CLI then reads the kernel
//! itself ([`check`]) and names every difference: drift weft will repair,
//! or — with repairs paused, or weftd gone — drift that stays.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_overlay::kernel::Scope;
use weft_overlay::state::{Dev, Entries};
use weft_overlay::{Kernel, Snapshot};

/// What weftd says of itself and its node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The Node.
    pub node: String,
    /// `Backend.Type`.
    pub backend: String,
    /// weftd's pid.
    pub pid: u32,
    /// `/readyz` would say 200.
    pub ready: bool,
    /// Each enabled family.
    pub families: Vec<FamilyStatus>,
    /// Nodes skipped, with the field-named reason.
    pub skipped: Vec<SkippedNode>,
    /// Nodes without flannel's annotations yet.
    pub waiting: Vec<String>,
}

/// One family of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyStatus {
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// This node's pod subnet.
    pub subnet: IpNet,
    /// The address it publishes.
    pub public_ip: IpAddr,
    /// The NAT mode.
    pub nat_mode: String,
    /// Why that mode.
    pub nat_reason: String,
    /// The peers' leases.
    pub peers: Vec<Peer>,
    /// The overlay's desired state.
    pub overlay: Snapshot,
}

/// A peer's lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    /// Its Node.
    pub node: String,
    /// Its pod subnet.
    pub subnet: IpNet,
    /// Its address.
    pub public_ip: IpAddr,
    /// Its VTEP MAC (VXLAN), from its backend data.
    pub vtep_mac: Option<String>,
}

/// A Node weft does not use, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedNode {
    /// The Node.
    pub node: String,
    /// The family.
    pub family: String,
    /// The reason, naming the field.
    pub reason: String,
}

/// One kernel object as weft wants it and as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `route`, `neighbour` or `fdb`.
    pub kind: String,
    /// The object (as `ip`/`bridge` would name it).
    pub object: String,
    /// `ok`, `missing`, `differs` or `extra` (the kernel holds a weft object
    /// no peer wants).
    pub state: String,
    /// What the kernel holds, where it differs.
    pub kernel: Option<String>,
    /// The peer it belongs to, if any.
    pub node: Option<String>,
}

/// What [`check`] found for one family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyCheck {
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// Every desired object, and every extra one.
    pub findings: Vec<Finding>,
    /// Why the kernel could not be read, if it could not.
    pub error: Option<String>,
}

/// Reads the kernel of the calling thread's network namespace and holds it
/// against each family's desired state.
pub async fn check(status: &Status) -> Vec<FamilyCheck> {
    let mut out = Vec::new();
    for f in &status.families {
        let findings = match observed(&f.overlay).await {
            Ok(kernel) => compare(&f.overlay.desired, &kernel, &f.peers, &f.overlay),
            Err(e) => {
                out.push(FamilyCheck {
                    family: f.family.clone(),
                    findings: Vec::new(),
                    error: Some(e),
                });
                continue;
            }
        };
        out.push(FamilyCheck {
            family: f.family.clone(),
            findings,
            error: None,
        });
    }
    out
}

/// What the kernel holds of weft's objects in the family's scope.
async fn observed(s: &Snapshot) -> Result<Entries, String> {
    let kernel = Kernel::connect().map_err(|e| e.to_string())?;
    let underlay = kernel
        .underlay(&s.underlay)
        .await
        .map_err(|e| format!("underlay {}: {e}", s.underlay))?;
    let overlay = match &s.device {
        Some(name) => kernel
            .device(name)
            .await
            .map_err(|e| format!("device {name}: {e}"))?
            .map(|d| d.ifindex),
        None => None,
    };
    let scope = Scope {
        network: s.network,
        overlay,
        underlay: underlay.ifindex,
    };
    kernel.entries(&scope).await.map_err(|e| e.to_string())
}

fn dev_name(dev: &Dev, s: &Snapshot) -> String {
    match dev {
        Dev::Overlay => s.device.clone().unwrap_or_else(|| "(overlay)".into()),
        Dev::Underlay => s.underlay.clone(),
        Dev::Other(i) => format!("if{i}"),
    }
}

fn route_text(r: &weft_overlay::state::Route, s: &Snapshot) -> String {
    format!(
        "{} via {} dev {}{} proto {}",
        r.dst,
        r.via,
        dev_name(&r.dev, s),
        if r.onlink { " onlink" } else { "" },
        r.protocol
    )
}

/// Each desired object against the kernel's, and the kernel's extras.
fn compare(want: &Entries, have: &Entries, peers: &[Peer], s: &Snapshot) -> Vec<Finding> {
    let by_subnet: BTreeMap<IpNet, &str> =
        peers.iter().map(|p| (p.subnet, p.node.as_str())).collect();
    let mac_owner: BTreeMap<String, &str> = peers
        .iter()
        .filter_map(|p| {
            p.vtep_mac
                .as_ref()
                .map(|m| (m.to_lowercase(), p.node.as_str()))
        })
        .collect();
    let owner_of_ip = |ip: &IpAddr| {
        by_subnet
            .iter()
            .find(|(n, _)| n.contains(ip))
            .map(|(_, node)| *node)
    };
    let dev = s.device.clone().unwrap_or_default();
    let mut out = Vec::new();
    table(
        &mut out,
        "route",
        (&want.routes, &have.routes),
        |dst| dst.to_string(),
        |r| route_text(r, s),
        |dst| by_subnet.get(dst).copied(),
    );
    table(
        &mut out,
        "neighbour",
        (&want.neighbours, &have.neighbours),
        |ip| format!("{ip} on {dev}"),
        |n| format!("{} lladdr {} dev {dev} PERMANENT", n.ip, n.mac),
        owner_of_ip,
    );
    table(
        &mut out,
        "fdb",
        (&want.fdb, &have.fdb),
        |mac| format!("{mac} on {dev}"),
        |e| format!("{} dev {dev} dst {} self permanent", e.mac, e.dst),
        |mac| mac_owner.get(&mac.to_string().to_lowercase()).copied(),
    );
    out
}

/// One kernel table: each wanted object (`ok`, `missing` or `differs`, with
/// what the kernel holds), then each the kernel holds that nobody wants
/// (`extra`). `name` names an object by its key, `text` renders it as
/// `ip`/`bridge` would, `owner` finds the peer a wanted one belongs to.
fn table<'a, K: Ord, V>(
    out: &mut Vec<Finding>,
    kind: &str,
    (want, have): (&BTreeMap<K, V>, &BTreeMap<K, V>),
    name: impl Fn(&K) -> String,
    text: impl Fn(&V) -> String,
    owner: impl Fn(&K) -> Option<&'a str>,
) {
    for (key, w) in want {
        let (w, h) = (text(w), have.get(key).map(&text));
        let state = match &h {
            Some(h) if *h == w => "ok",
            Some(_) => "differs",
            None => "missing",
        };
        out.push(Finding {
            kind: kind.into(),
            object: name(key),
            state: state.into(),
            kernel: h.filter(|_| state != "ok"),
            node: owner(key).map(str::to_owned),
        });
    }
    for (key, h) in have.iter().filter(|(k, _)| !want.contains_key(k)) {
        out.push(Finding {
            kind: kind.into(),
            object: name(key),
            state: "extra".into(),
            kernel: Some(text(h)),
            node: None,
        });
    }
}

/// The human form of a status and its check.
pub fn render(status: &Status, checks: &[FamilyCheck]) -> String {
    let mut o = String::new();
    let ready = if status.ready { "ready" } else { "NOT ready" };
    o += &format!(
        "node {} — backend {}, weftd pid {}, {ready}\n",
        status.node, status.backend, status.pid
    );
    for f in &status.families {
        let s = &f.overlay;
        o += &format!(
            "\n{}: subnet {}, public IP {} on {}{}\n",
            f.family,
            f.subnet,
            f.public_ip,
            s.underlay,
            match (&s.device, &s.vtep_mac) {
                (Some(d), Some(m)) => format!(", device {d} (VTEP MAC {m})"),
                (Some(d), None) => format!(", device {d}"),
                _ => String::new(),
            }
        );
        o += &format!("  NAT: {} — {}\n", f.nat_mode, f.nat_reason);
        if let Some(d) = &s.data_path {
            o += &format!("  data path: {d}\n");
        }
        if s.paused {
            o += "  REPAIRS PAUSED (weft debug resume): drift stays until resumed\n";
        }
        let check = checks.iter().find(|c| c.family == f.family);
        o += &format!("  peers ({}):\n", f.peers.len());
        for p in &f.peers {
            let mut line = format!(
                "    {:<16} {:<22} {:<16}",
                p.node,
                p.subnet.to_string(),
                p.public_ip.to_string()
            );
            if let Some(m) = &p.vtep_mac {
                line += &format!(" {m}");
            }
            if let Some(c) = check {
                for x in c
                    .findings
                    .iter()
                    .filter(|x| x.node.as_deref() == Some(&p.node))
                {
                    line += &format!("  {} {}", x.kind, x.state);
                }
            }
            o += &line;
            o.push('\n');
        }
        for r in &s.rejected {
            o += &format!("  refused: {r}\n");
        }
        match check {
            Some(FamilyCheck { error: Some(e), .. }) => {
                o += &format!("  kernel: cannot read it: {e}\n")
            }
            Some(c) => {
                let drift: Vec<&Finding> = c.findings.iter().filter(|x| x.state != "ok").collect();
                if drift.is_empty() {
                    o += &format!("  drift: none ({} objects as wanted)\n", c.findings.len());
                } else {
                    o += "  drift:\n";
                    for x in drift {
                        let fix = if s.paused { "" } else { " (weft repairs it)" };
                        let have = x
                            .kernel
                            .as_deref()
                            .map(|k| format!(": kernel has `{k}`"))
                            .unwrap_or_default();
                        o += &format!("    {} {} {}{have}{fix}\n", x.kind, x.object, x.state);
                    }
                }
            }
            None => {}
        }
    }
    if !status.skipped.is_empty() {
        o += "\nskipped Nodes:\n";
        for s in &status.skipped {
            o += &format!("  {} ({}): {}\n", s.node, s.family, s.reason);
        }
    }
    if !status.waiting.is_empty() {
        o += "\nno flannel annotations yet (no agent has started there):\n";
        for n in &status.waiting {
            o += &format!("  {n}\n");
        }
    }
    o
}

/// The cluster networks a subnet file names (`FLANNEL_NETWORK`,
/// `FLANNEL_IPV6_NETWORK`); none if it cannot be read.
pub fn networks_in(subnet_file: &std::path::Path) -> Vec<IpNet> {
    let text = std::fs::read_to_string(subnet_file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k == "FLANNEL_NETWORK" || *k == "FLANNEL_IPV6_NETWORK")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect::<Vec<IpNet>>()
        })
        .collect()
}

/// Without weftd: the flannel devices, and weft's routes, neighbours and
/// FDB entries the kernel holds for the cluster networks `subnet_file`
/// names (the underlay taken as the default route's interface).
pub async fn kernel_view(subnet_file: &std::path::Path) -> String {
    use crate::agent::host::Host;
    use weft_overlay::Family;
    let mut o = String::new();
    let networks = networks_in(subnet_file);
    let (host, kernel) = match (Host::connect(), Kernel::connect()) {
        (Ok(h), Ok(k)) => (h, k),
        (Err(e), _) | (_, Err(e)) => return format!("cannot read the kernel: {e}\n"),
    };
    let interfaces = host.interfaces().await.unwrap_or_default();
    let devices: Vec<_> = interfaces
        .iter()
        .filter(|i| i.name.starts_with("flannel"))
        .collect();
    if devices.is_empty() {
        o += "  no flannel device\n";
    }
    for d in &devices {
        let addrs: Vec<String> = d.addresses.iter().map(ToString::to_string).collect();
        o += &format!(
            "  device {} mtu {} {} {}\n",
            d.name,
            d.mtu,
            if d.up { "UP" } else { "DOWN" },
            addrs.join(" ")
        );
    }
    if networks.is_empty() {
        o += &format!("  no cluster network in {}\n", subnet_file.display());
    }
    for network in networks {
        let family = Family::of_net(&network);
        let prefix = match family {
            Family::V4 => "flannel.",
            Family::V6 => "flannel-v6.",
        };
        let overlay = devices
            .iter()
            .find(|d| d.name.starts_with(prefix) || (family == Family::V4 && d.name == "flannel0"))
            .map(|d| d.index);
        let underlay = host
            .default_route_interface(family)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        let scope = Scope {
            network,
            overlay,
            underlay,
        };
        match kernel.entries(&scope).await {
            Ok(e) => {
                o += &format!(
                    "  {network}: {} routes, {} neighbours, {} FDB entries of weft's\n",
                    e.routes.len(),
                    e.neighbours.len(),
                    e.fdb.len()
                );
                for r in e.routes.values() {
                    o += &format!("    route {} via {} ({:?})\n", r.dst, r.via, r.dev);
                }
                for n in e.neighbours.values() {
                    o += &format!("    neighbour {} lladdr {}\n", n.ip, n.mac);
                }
                for f in e.fdb.values() {
                    o += &format!("    fdb {} dst {}\n", f.mac, f.dst);
                }
            }
            Err(e) => o += &format!("  {network}: cannot read: {e}\n"),
        }
    }
    o
}

/// A VTEP MAC from a peer's backend data (`{"VNI":1,"VtepMAC":"…"}`).
pub fn vtep_mac_of(backend_data: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(backend_data).ok()?;
    v.get("VtepMAC")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_overlay::state::{FdbEntry, Neighbour, Route};
    use weft_overlay::MacAddr;

    fn snap() -> Snapshot {
        Snapshot {
            network: "10.244.0.0/16".parse().unwrap(),
            underlay: "eth0".into(),
            device: Some("flannel.1".into()),
            vtep_mac: None,
            desired: Entries::default(),
            rejected: Vec::new(),
            paused: false,
            data_path: None,
        }
    }

    #[test]
    fn compare_names_missing_differing_and_extra_objects() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:01".parse().unwrap();
        let gw: IpAddr = "10.244.2.0".parse().unwrap();
        let dst: IpNet = "10.244.2.0/24".parse().unwrap();
        let mut want = Entries::default();
        want.routes.insert(
            dst,
            Route {
                dst,
                via: gw,
                dev: Dev::Overlay,
                onlink: true,
                protocol: 119,
            },
        );
        want.neighbours.insert(gw, Neighbour { ip: gw, mac });
        want.fdb.insert(
            mac,
            FdbEntry {
                mac,
                dst: "172.18.0.4".parse().unwrap(),
            },
        );
        let mut have = want.clone();
        have.neighbours.clear();
        have.fdb.insert(
            mac,
            FdbEntry {
                mac,
                dst: "172.18.0.9".parse().unwrap(),
            },
        );
        let other: IpNet = "10.244.9.0/24".parse().unwrap();
        have.routes.insert(
            other,
            Route {
                dst: other,
                via: "10.244.9.0".parse().unwrap(),
                dev: Dev::Overlay,
                onlink: true,
                protocol: 119,
            },
        );
        let peers = vec![Peer {
            node: "worker2".into(),
            subnet: dst,
            public_ip: "172.18.0.4".parse().unwrap(),
            vtep_mac: Some("aa:bb:cc:dd:ee:01".into()),
        }];
        let f = compare(&want, &have, &peers, &snap());
        let state = |kind: &str, state: &str| {
            f.iter()
                .filter(|x| x.kind == kind && x.state == state)
                .count()
        };
        assert_eq!(state("route", "ok"), 1, "{f:?}");
        assert_eq!(state("route", "extra"), 1, "{f:?}");
        assert_eq!(state("neighbour", "missing"), 1, "{f:?}");
        assert_eq!(state("fdb", "differs"), 1, "{f:?}");
        let fdb = f.iter().find(|x| x.kind == "fdb").unwrap();
        assert_eq!(fdb.node.as_deref(), Some("worker2"));
        assert!(fdb.kernel.as_deref().unwrap().contains("172.18.0.9"));
        let n = f.iter().find(|x| x.kind == "neighbour").unwrap();
        assert_eq!(n.node.as_deref(), Some("worker2"));
    }
}
