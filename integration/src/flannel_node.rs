//! A node whose data plane flannel made, without any weft code: what
//! flanneld v0.28 (kube subnet manager) and flannel's CNI plugin leave on a
//! node, recreated with `ip`, `bridge`, `iptables-restore` and `nft` as
//! ../shared/reference/flannel.md describes it. The lab uses it for mixed
//! flannel/weft clusters and as the starting point of a migration.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use weft_nat::NatMode;
use weft_netns::Netns;

use crate::lab::Backend;
use crate::topology::NodeSpec;

/// flannel's annotation prefix.
pub const PREFIX: &str = "flannel.alpha.coreos.com";
/// The VXLAN device flannel makes for VNI 1.
pub const DEVICE: &str = "flannel.1";
/// The underlay MTU in the lab, and what flannel derives from it.
const UNDERLAY_MTU: u32 = 1500;

/// What flanneld chose for a node: the backend and, for VXLAN, its VTEP MAC.
#[derive(Debug, Clone)]
pub struct FlannelNode {
    /// The node.
    pub spec: NodeSpec,
    /// The backend flanneld runs.
    pub backend: Backend,
    /// The MAC of `flannel.1` (a random locally administered unicast address,
    /// as flannel's `pkg/mac` makes one).
    pub vtep_mac: String,
}

/// A remote node as flannel sees it through its Node annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pod subnet (`spec.podCIDR`).
    pub subnet: Ipv4Net,
    /// `public-ip`.
    pub ip: Ipv4Addr,
    /// `backend-type`.
    pub backend_type: String,
    /// The VtepMAC of `backend-data`, for VXLAN peers.
    pub vtep_mac: Option<String>,
}

impl FlannelNode {
    /// A flannel node with a fresh random VTEP MAC.
    pub fn new(spec: &NodeSpec, backend: Backend) -> anyhow::Result<FlannelNode> {
        Ok(FlannelNode {
            spec: spec.clone(),
            backend,
            vtep_mac: random_mac()?,
        })
    }

    /// The MTU flannel gives the overlay (and writes to subnet.env).
    pub fn mtu(&self) -> u32 {
        match self.backend {
            Backend::HostGw => UNDERLAY_MTU,
            Backend::Vxlan | Backend::VxlanDirect => UNDERLAY_MTU - 50,
        }
    }

    /// The four annotations flanneld's kube subnet manager writes on its
    /// Node (`AcquireLease`): backend-data as Go marshals the VXLAN lease
    /// attributes, `null` for host-gw.
    pub fn annotations(&self) -> Vec<(String, String)> {
        let (kind, data) = match self.backend {
            Backend::HostGw => ("host-gw", "null".to_string()),
            Backend::Vxlan | Backend::VxlanDirect => (
                "vxlan",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, self.vtep_mac),
            ),
        };
        vec![
            (format!("{PREFIX}/backend-data"), data),
            (format!("{PREFIX}/backend-type"), kind.to_string()),
            (format!("{PREFIX}/kube-subnet-manager"), "true".to_string()),
            (format!("{PREFIX}/public-ip"), self.spec.ip.to_string()),
        ]
    }

    /// What flanneld does on its node before it learns any peer: the VXLAN
    /// device (VNI 1, port 8472, nolearning, MTU − 50, the subnet's network
    /// address /32), the masquerade and forward rules of `nat`, and
    /// subnet.env at `subnet_file`.
    pub fn set_up(
        &self,
        ns: &Netns,
        network: Ipv4Net,
        nat: NatMode,
        subnet_file: &Path,
    ) -> anyhow::Result<()> {
        if self.backend != Backend::HostGw {
            let mtu = self.mtu().to_string();
            add_device(
                ns,
                self.spec.ip,
                &["address", &self.vtep_mac, "mtu", &mtu],
                &format!("{}/32", self.spec.subnet.network()),
            )?;
        }
        let own = self.spec.subnet.to_string();
        match nat {
            NatMode::IptablesLegacy => restore(ns, "iptables-legacy-restore", &network, &own)?,
            NatMode::IptablesNft => restore(ns, "iptables-nft-restore", &network, &own)?,
            NatMode::Nftables => feed(ns, &["nft", "-f", "-"], &nft_script(&network, &own))?,
        }
        if let Some(dir) = subnet_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let first = Ipv4Addr::from(u32::from(self.spec.subnet.network()) + 1);
        let env = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
            self.spec.subnet.prefix_len(),
            self.mtu()
        );
        std::fs::write(subnet_file, env)?;
        Ok(())
    }

    /// What flanneld's backend does for each remote lease: for a VXLAN peer
    /// the PERMANENT neighbour, the FDB entry and the onlink route through
    /// `flannel.1` (or, with DirectRouting and the peer on the same network,
    /// a plain route via its address); for host-gw a route via its address.
    /// Peers of another backend type are ignored, as flannel does.
    pub fn add_peers(&self, ns: &Netns, peers: &[Peer]) -> anyhow::Result<()> {
        for p in peers.iter().filter(|p| p.subnet != self.spec.subnet) {
            let (dst, peer_ip, gw) = (
                p.subnet.to_string(),
                p.ip.to_string(),
                p.subnet.network().to_string(),
            );
            match (self.backend, p.backend_type.as_str()) {
                (Backend::HostGw, "host-gw") | (Backend::VxlanDirect, "vxlan") => {
                    ns.ip(&["route", "replace", &dst, "via", &peer_ip, "dev", "eth0"])?;
                }
                (Backend::Vxlan, "vxlan") => {
                    let mac = p
                        .vtep_mac
                        .as_deref()
                        .with_context(|| format!("peer {dst} has no VtepMAC"))?;
                    ns.ip(&[
                        "neigh",
                        "replace",
                        &gw,
                        "lladdr",
                        mac,
                        "dev",
                        DEVICE,
                        "nud",
                        "permanent",
                    ])?;
                    ns.exec(&[
                        "bridge",
                        "fdb",
                        "replace",
                        mac,
                        "dev",
                        DEVICE,
                        "dst",
                        &peer_ip,
                        "self",
                        "permanent",
                    ])?;
                    ns.ip(&[
                        "route", "replace", &dst, "via", &gw, "dev", DEVICE, "onlink",
                    ])?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The delegate configuration flannel's CNI plugin builds from
    /// subnet.env and the lab's conflist entry, as it saves it under
    /// `dataDir/<containerID>` before calling `bridge`.
    pub fn delegate(&self, network: Ipv4Net, ipam_dir: &Path) -> Value {
        json!({
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "bridge",
            "hairpinMode": true,
            "isDefaultGateway": true,
            "isGateway": true,
            "ipMasq": false,
            "mtu": self.mtu(),
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": self.spec.subnet.to_string()}]],
                "routes": [{"dst": network.to_string()}],
            },
        })
    }
}

/// Creates `flannel.1` as flanneld does (VXLAN id 1, `local` on `eth0`,
/// port 8472, nolearning) with `link_options` (`address`, `mtu`), gives it
/// `addr` and brings it up; with `ip` only.
pub fn add_device(
    ns: &Netns,
    local: Ipv4Addr,
    link_options: &[&str],
    addr: &str,
) -> anyhow::Result<()> {
    let local = local.to_string();
    let mut args = vec!["link", "add", DEVICE];
    args.extend_from_slice(link_options);
    args.extend_from_slice(&[
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&args)?;
    // flanneld turns router advertisements off on the device, ignoring failure.
    let _ = ns.sysctl(&format!("net/ipv6/conf/{DEVICE}/accept_ra"), "0");
    ns.ip(&["addr", "add", addr, "dev", DEVICE])?;
    ns.ip(&["link", "set", DEVICE, "up"])?;
    Ok(())
}

/// A remote node as flannel reads it from a Node object: `None` when the
/// Node does not carry flannel's `kube-subnet-manager` annotation yet.
pub fn peer_of(node: &Value) -> Option<Peer> {
    let annotation = |name: &str| {
        node.pointer("/metadata/annotations")
            .and_then(|a| a.get(format!("{PREFIX}/{name}")))
            .and_then(Value::as_str)
    };
    if annotation("kube-subnet-manager") != Some("true") {
        return None;
    }
    let subnet = node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)?
        .parse()
        .ok()?;
    let data: Value = serde_json::from_str(annotation("backend-data")?).ok()?;
    Some(Peer {
        subnet,
        ip: annotation("public-ip")?.parse().ok()?,
        backend_type: annotation("backend-type")?.to_string(),
        vtep_mac: data
            .get("VtepMAC")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// flannel's iptables rules, as its `iptables-restore --noflush` payload
/// leaves them on a node that had none: the nat chain with the six masquerade
/// rules (random-fully) and its jump, the filter chain with the two forward
/// rules and its jump.
pub fn restore_payload(network: &Ipv4Net, own: &str) -> String {
    let c = network.to_string();
    let masq = |spec: &str| format!("-A FLANNEL-POSTRTG {spec}\n");
    let m = r#"-m comment --comment "flanneld masq""#;
    let f = r#"-m comment --comment "flanneld forward""#;
    let mut s = String::from("*nat\n:FLANNEL-POSTRTG - [0:0]\n");
    s += &format!("-A POSTROUTING {m} -j FLANNEL-POSTRTG\n");
    s += &masq(&format!("-m mark --mark 0x4000/0x4000 {m} -j RETURN"));
    s += &masq(&format!("-s {own} -d {c} {m} -j RETURN"));
    s += &masq(&format!("-s {c} -d {own} {m} -j RETURN"));
    s += &masq(&format!("! -s {c} -d {own} {m} -j RETURN"));
    s += &masq(&format!(
        "-s {c} ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully"
    ));
    s += &masq(&format!("! -s {c} -d {c} {m} -j MASQUERADE --random-fully"));
    s += "COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n";
    s += &format!("-A FORWARD {f} -j FLANNEL-FWD\n");
    s += &format!("-A FLANNEL-FWD -s {c} {f} -j ACCEPT\n");
    s += &format!("-A FLANNEL-FWD -d {c} {f} -j ACCEPT\nCOMMIT\n");
    s
}

/// flannel's nftables mode (knftables transactions): both tables, the
/// forward chain and the postrouting chain with its six rules.
pub fn nft_script(network: &Ipv4Net, own: &str) -> String {
    let c = network.to_string();
    let t = "ip flannel-ipv4";
    let mut s = String::new();
    s += "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n";
    s += "add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n";
    s += &format!("add chain {t} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n");
    s += &format!("flush chain {t} forward\n");
    s += &format!("add rule {t} forward ip saddr {c} accept\n");
    s += &format!("add rule {t} forward ip daddr {c} accept\n");
    s += &format!("add chain {t} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n");
    s += &format!("flush chain {t} postrtg\n");
    for rule in [
        "meta mark 0x4000 return".to_string(),
        format!("ip saddr {own} ip daddr {c} return"),
        format!("ip saddr {c} ip daddr {own} return"),
        format!("ip saddr != {own} ip daddr {c} return"),
        format!("ip saddr {c} ip daddr != 224.0.0.0/4 masquerade fully-random"),
        format!("ip saddr != {c} ip daddr {c} masquerade fully-random"),
    ] {
        s += &format!("add rule {t} postrtg {rule}\n");
    }
    s
}

fn restore(ns: &Netns, binary: &str, network: &Ipv4Net, own: &str) -> anyhow::Result<()> {
    feed(
        ns,
        &[binary, "--noflush", "-w"],
        &restore_payload(network, own),
    )
}

/// Runs `args` in `ns` with `input` on stdin; fails with its stderr.
fn feed(ns: &Netns, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = ns
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A random locally administered unicast MAC, from the kernel's entropy.
fn random_mac() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    b[0] = (b[0] & 0xfe) | 0x02;
    Ok(b.iter()
        .map(|v| format!("{v:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}
