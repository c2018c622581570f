//! A node whose data plane flannel made, without any weft code: what
//! flanneld v0.28 (kube subnet manager) and flannel's CNI plugin leave on a
//! node, recreated with `ip`, `bridge`, `iptables-restore` and `nft` as
//! ../shared/reference/flannel.md describes it. The lab uses it for mixed
//! flannel/weft clusters and as the starting point of a migration.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde_json::{json, Value};
use weft_nat::NatMode;
use weft_netns::Netns;
use weft_overlay::Family;

use crate::lab::Backend;
use crate::topology::{cluster_network, nth_of, NodeSpec};

/// flannel's annotation prefix.
pub const PREFIX: &str = "flannel.alpha.coreos.com";
/// The VXLAN device flannel makes for VNI 1.
pub const DEVICE: &str = "flannel.1";
/// Its IPv6 twin.
pub const DEVICE6: &str = "flannel-v6.1";

/// flannel's VXLAN device of `family`.
pub fn device(family: Family) -> &'static str {
    match family {
        Family::V4 => DEVICE,
        Family::V6 => DEVICE6,
    }
}
/// The underlay MTU in the lab, and what flannel derives from it.
const UNDERLAY_MTU: u32 = 1500;

/// What flanneld chose for a node: the backend and, for VXLAN, its VTEP MAC.
#[derive(Debug, Clone)]
pub struct FlannelNode {
    /// The node.
    pub spec: NodeSpec,
    /// The backend flanneld runs.
    pub backend: Backend,
    /// The families net-conf.json enables, IPv4 first.
    pub families: &'static [Family],
    /// The MAC of `flannel.1` (a random locally administered unicast address,
    /// as flannel's `pkg/mac` makes one).
    pub vtep_mac: String,
    /// The MAC of `flannel-v6.1` (another one).
    pub vtep_mac6: String,
}

/// A remote node as flannel sees it through its Node annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pod subnet of the family (`spec.podCIDRs`).
    pub subnet: IpNet,
    /// `public-ip` (`public-ipv6`).
    pub ip: IpAddr,
    /// `backend-type`.
    pub backend_type: String,
    /// The VtepMAC of `backend-data` (`backend-v6-data`), for VXLAN peers.
    pub vtep_mac: Option<String>,
}

fn data_key(family: Family) -> &'static str {
    match family {
        Family::V4 => "backend-data",
        Family::V6 => "backend-v6-data",
    }
}

fn public_ip_key(family: Family) -> &'static str {
    match family {
        Family::V4 => "public-ip",
        Family::V6 => "public-ipv6",
    }
}

impl FlannelNode {
    /// A flannel node with a fresh random VTEP MAC.
    pub fn new(
        spec: &NodeSpec,
        backend: Backend,
        families: &'static [Family],
    ) -> anyhow::Result<FlannelNode> {
        Ok(FlannelNode {
            spec: spec.clone(),
            backend,
            families,
            vtep_mac: random_mac()?,
            vtep_mac6: random_mac()?,
        })
    }

    fn mac(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.vtep_mac,
            Family::V6 => &self.vtep_mac6,
        }
    }

    /// The MTU flannel gives the overlay (and writes to subnet.env).
    pub fn mtu(&self) -> u32 {
        match self.backend {
            Backend::HostGw => UNDERLAY_MTU,
            Backend::Vxlan | Backend::VxlanDirect => UNDERLAY_MTU - 50,
            Backend::Udp => UNDERLAY_MTU - 28,
        }
    }

    /// The annotations flanneld's kube subnet manager writes on its Node
    /// (`AcquireLease`): the backend type and the manager mark, and per
    /// family the backend data (as Go marshals the VXLAN lease attributes,
    /// `null` for host-gw) and the public address.
    pub fn annotations(&self) -> Vec<(String, String)> {
        let kind = match self.backend {
            Backend::HostGw => "host-gw",
            Backend::Vxlan | Backend::VxlanDirect => "vxlan",
            Backend::Udp => "udp",
        };
        let mut out = vec![
            (format!("{PREFIX}/backend-type"), kind.to_string()),
            (format!("{PREFIX}/kube-subnet-manager"), "true".to_string()),
        ];
        for &family in self.families {
            let data = match self.backend {
                Backend::HostGw | Backend::Udp => "null".to_string(),
                Backend::Vxlan | Backend::VxlanDirect => {
                    format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, self.mac(family))
                }
            };
            out.push((format!("{PREFIX}/{}", data_key(family)), data));
            out.push((
                format!("{PREFIX}/{}", public_ip_key(family)),
                self.spec.ip_of(family).to_string(),
            ));
        }
        out
    }

    /// What flanneld does on its node before it learns any peer, for each
    /// family: the VXLAN device (VNI 1, port 8472, nolearning, MTU − 50,
    /// the subnet's network address /32 or /128), the masquerade and
    /// forward rules of `nat`; then subnet.env at `subnet_file`.
    pub fn set_up(&self, ns: &Netns, nat: NatMode, subnet_file: &Path) -> anyhow::Result<()> {
        let mut env = String::new();
        if nat == NatMode::Nftables {
            // knftables' Init: both tables, whatever is enabled.
            feed(ns, &["nft", "-f", "-"], NFT_TABLES)?;
        }
        for &family in self.families {
            let own = self.spec.subnet_of(family);
            let network = cluster_network(family);
            if matches!(self.backend, Backend::Vxlan | Backend::VxlanDirect) {
                let mtu = self.mtu().to_string();
                add_device_of(
                    ns,
                    family,
                    self.spec.ip_of(family),
                    &["address", self.mac(family), "mtu", &mtu],
                    &format!("{}/{}", own.network(), own.max_prefix_len()),
                )?;
            }
            let own_s = own.to_string();
            let v6 = family == Family::V6;
            match nat {
                NatMode::IptablesLegacy => restore(
                    ns,
                    if v6 {
                        "ip6tables-legacy-restore"
                    } else {
                        "iptables-legacy-restore"
                    },
                    &network,
                    &own_s,
                )?,
                NatMode::IptablesNft => restore(
                    ns,
                    if v6 {
                        "ip6tables-nft-restore"
                    } else {
                        "iptables-nft-restore"
                    },
                    &network,
                    &own_s,
                )?,
                NatMode::Nftables => feed(ns, &["nft", "-f", "-"], &nft_script(&network, &own_s))?,
            }
            let (net_key, subnet_key) = match family {
                Family::V4 => ("FLANNEL_NETWORK", "FLANNEL_SUBNET"),
                Family::V6 => ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"),
            };
            env += &format!(
                "{net_key}={network}\n{subnet_key}={}/{}\n",
                nth_of(own, 1),
                own.prefix_len()
            );
        }
        if let Some(dir) = subnet_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        env += &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n", self.mtu());
        std::fs::write(subnet_file, env)?;
        Ok(())
    }

    /// What flanneld's backend does for each remote lease: for a VXLAN peer
    /// the PERMANENT neighbour, the FDB entry and the onlink route through
    /// `flannel.1` (or, with DirectRouting and the peer on the same network,
    /// a plain route via its address); for host-gw a route via its address.
    /// Peers of another backend type are ignored, as flannel does.
    pub fn add_peers(&self, ns: &Netns, peers: &[Peer]) -> anyhow::Result<()> {
        for p in peers
            .iter()
            .filter(|p| p.subnet != self.spec.subnet_of(Family::of_net(&p.subnet)))
        {
            let (dst, peer_ip, gw) = (
                p.subnet.to_string(),
                p.ip.to_string(),
                p.subnet.network().to_string(),
            );
            let dev = device(Family::of_net(&p.subnet));
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
                        dev,
                        "nud",
                        "permanent",
                    ])?;
                    ns.exec(&[
                        "bridge",
                        "fdb",
                        "replace",
                        mac,
                        "dev",
                        dev,
                        "dst",
                        &peer_ip,
                        "self",
                        "permanent",
                    ])?;
                    ns.ip(&["route", "replace", &dst, "via", &gw, "dev", dev, "onlink"])?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The delegate configuration flannel's CNI plugin builds from
    /// subnet.env and the lab's conflist entry, as it saves it under
    /// `dataDir/<containerID>` before calling `bridge`.
    pub fn delegate(&self, ipam_dir: &Path) -> Value {
        let ranges: Vec<Value> = self
            .families
            .iter()
            .map(|f| json!([{"subnet": self.spec.subnet_of(*f).to_string()}]))
            .collect();
        let routes: Vec<Value> = self
            .families
            .iter()
            .map(|f| json!({"dst": cluster_network(*f).to_string()}))
            .collect();
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
                "ranges": ranges,
                "routes": routes,
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
    add_device_of(ns, Family::V4, local.into(), link_options, addr)
}

/// [`add_device`] for either family: `flannel-v6.1` with a v6 `local`.
pub fn add_device_of(
    ns: &Netns,
    family: Family,
    local: IpAddr,
    link_options: &[&str],
    addr: &str,
) -> anyhow::Result<()> {
    let dev = device(family);
    let local = local.to_string();
    let mut args = vec!["link", "add", dev];
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
    let _ = ns.sysctl(&format!("net/ipv6/conf/{dev}/accept_ra"), "0");
    ns.ip(&["addr", "add", addr, "dev", dev])?;
    ns.ip(&["link", "set", dev, "up"])?;
    Ok(())
}

/// A remote node's lease of `family` as flannel reads it from a Node
/// object: `None` when the Node does not carry flannel's
/// `kube-subnet-manager` annotation (or that family's) yet.
pub fn peer_of(node: &Value, family: Family) -> Option<Peer> {
    let annotation = |name: &str| {
        node.pointer("/metadata/annotations")
            .and_then(|a| a.get(format!("{PREFIX}/{name}")))
            .and_then(Value::as_str)
    };
    if annotation("kube-subnet-manager") != Some("true") {
        return None;
    }
    let subnet = node
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|c| c.as_str()?.parse::<IpNet>().ok())
        .find(|c| Family::of_net(c) == family)?;
    let data: Value = serde_json::from_str(annotation(data_key(family))?).ok()?;
    Some(Peer {
        subnet,
        ip: annotation(public_ip_key(family))?.parse().ok()?,
        backend_type: annotation("backend-type")?.to_string(),
        vtep_mac: data
            .get("VtepMAC")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// flannel's iptables rules, as its `iptables-restore --noflush` (or
/// `ip6tables-restore`) payload leaves them on a node that had none: the nat
/// chain with the six masquerade rules (random-fully) and its jump, the
/// filter chain with the two forward rules and its jump.
pub fn restore_payload(network: &IpNet, own: &str) -> String {
    let c = network.to_string();
    let multicast = match network {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    };
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
        "-s {c} ! -d {multicast} {m} -j MASQUERADE --random-fully"
    ));
    s += &masq(&format!("! -s {c} -d {c} {m} -j MASQUERADE --random-fully"));
    s += "COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n";
    s += &format!("-A FORWARD {f} -j FLANNEL-FWD\n");
    s += &format!("-A FLANNEL-FWD -s {c} {f} -j ACCEPT\n");
    s += &format!("-A FLANNEL-FWD -d {c} {f} -j ACCEPT\nCOMMIT\n");
    s
}

/// flannel's nftables Init: both tables, whichever families are enabled.
const NFT_TABLES: &str = "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
    add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n";

/// flannel's nftables mode (knftables transactions) for the network's
/// family: the forward chain and the postrouting chain with its six rules
/// in that family's table.
pub fn nft_script(network: &IpNet, own: &str) -> String {
    let c = network.to_string();
    let (t, ip, multicast) = match network {
        IpNet::V4(_) => ("ip flannel-ipv4", "ip", "224.0.0.0/4"),
        IpNet::V6(_) => ("ip6 flannel-ipv6", "ip6", "ff00::/8"),
    };
    let mut s = String::new();
    s += &format!("add chain {t} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n");
    s += &format!("flush chain {t} forward\n");
    s += &format!("add rule {t} forward {ip} saddr {c} accept\n");
    s += &format!("add rule {t} forward {ip} daddr {c} accept\n");
    s += &format!("add chain {t} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n");
    s += &format!("flush chain {t} postrtg\n");
    for rule in [
        "meta mark 0x4000 return".to_string(),
        format!("{ip} saddr {own} {ip} daddr {c} return"),
        format!("{ip} saddr {c} {ip} daddr {own} return"),
        format!("{ip} saddr != {own} {ip} daddr {c} return"),
        format!("{ip} saddr {c} {ip} daddr != {multicast} masquerade fully-random"),
        format!("{ip} saddr != {c} {ip} daddr {c} masquerade fully-random"),
    ] {
        s += &format!("add rule {t} postrtg {rule}\n");
    }
    s
}

fn restore(ns: &Netns, binary: &str, network: &IpNet, own: &str) -> anyhow::Result<()> {
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
