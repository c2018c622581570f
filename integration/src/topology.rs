//! A cluster made of network namespaces: an underlay switch, nodes with a
//! `cni0` bridge and one pod each, as the seed document draws it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_netns::{veth, Netns, Switch};
use weft_overlay::Family;

/// The underlay network of the lab (the seed's kind network).
pub const UNDERLAY: &str = "172.18.0.0/16";
/// The cluster network.
pub const CLUSTER: &str = "10.244.0.0/16";
/// The underlay's IPv6 network (each node's v6 address ends like its v4 one).
pub const UNDERLAY6: &str = "fd00:18::/64";
/// The IPv6 cluster network (node n's subnet is `fc00:0:0:n::/64`).
pub const CLUSTER6: &str = "fc00::/48";

/// The lab's cluster network of `family`.
pub fn cluster_network(family: Family) -> IpNet {
    match family {
        Family::V4 => CLUSTER.parse().unwrap_or(IpNet::V4(Ipv4Net::default())),
        Family::V6 => CLUSTER6.parse().unwrap_or(IpNet::V6(Ipv6Net::default())),
    }
}

/// What one node looks like.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Kubernetes Node name.
    pub name: String,
    /// Underlay address.
    pub ip: Ipv4Addr,
    /// Pod subnet.
    pub subnet: Ipv4Net,
}

impl NodeSpec {
    /// The address of the node's `cni0` bridge (the pods' gateway): subnet.1.
    pub fn gateway(&self) -> Ipv4Addr {
        nth(self.subnet, 1)
    }

    /// The address of the node's pod: subnet.2.
    pub fn pod_ip(&self) -> Ipv4Addr {
        nth(self.subnet, 2)
    }

    /// The node's IPv6 underlay address: `fd00:18::<last octet of its v4 one>`.
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, u16::from(self.ip.octets()[3]))
    }

    /// The node's IPv6 pod subnet: `fc00:0:0:<third octet of its v4 one>::/64`.
    pub fn subnet6(&self) -> Ipv6Net {
        let n = u16::from(self.subnet.network().octets()[2]);
        Ipv6Net::new(Ipv6Addr::new(0xfc00, 0, 0, n, 0, 0, 0, 0), 64).unwrap_or_default()
    }

    /// The node's underlay address of `family`.
    pub fn ip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6().into(),
        }
    }

    /// The node's pod subnet of `family`.
    pub fn subnet_of(&self, family: Family) -> IpNet {
        match family {
            Family::V4 => self.subnet.into(),
            Family::V6 => self.subnet6().into(),
        }
    }

    /// `cni0`'s address of `family` (the pods' gateway): the subnet's first.
    pub fn gateway_of(&self, family: Family) -> IpAddr {
        nth_of(self.subnet_of(family), 1)
    }
}

/// The n-th address of a subnet of either family.
pub fn nth_of(subnet: IpNet, n: u32) -> IpAddr {
    match subnet {
        IpNet::V4(s) => nth(s, n).into(),
        IpNet::V6(s) => Ipv6Addr::from(u128::from(s.network()) + u128::from(n)).into(),
    }
}

/// The n-th address of a subnet.
pub fn nth(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// The seed's three nodes: control-plane (10.244.0.0/24 on 172.18.0.3),
/// worker (10.244.1.0/24 on .4) and worker2 (10.244.2.0/24 on .2).
pub fn seed_nodes() -> Vec<NodeSpec> {
    [("control-plane", 3, 0), ("worker", 4, 1), ("worker2", 2, 2)]
        .into_iter()
        .map(|(name, host, n)| NodeSpec {
            name: name.to_string(),
            ip: Ipv4Addr::new(172, 18, 0, host),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap_or_default(),
        })
        .collect()
}

/// One node: its namespace and its pod's.
#[derive(Debug)]
pub struct Node {
    /// The node's spec.
    pub spec: NodeSpec,
    /// The node's namespace (underlay `eth0`, `cni0`).
    pub ns: Netns,
    /// The pod's namespace (`eth0` on `cni0`, default route via cni0).
    pub pod: Netns,
}

/// The whole lab: switch and nodes. Dropping it deletes every namespace.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, in the order given.
    pub nodes: Vec<Node>,
    /// The underlay switch.
    pub switch: Switch,
}

impl Cluster {
    /// Builds the namespaces and links for these nodes.
    pub fn new(specs: &[NodeSpec]) -> weft_netns::Result<Cluster> {
        let switch = Switch::new("sw")?;
        let mut nodes = Vec::new();
        for spec in specs {
            let role = spec
                .name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect::<String>();
            let ns = Netns::new(&role)?;
            switch.attach(&ns, "eth0", &format!("{}/16", spec.ip))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.add_bridge("cni0")?;
            ns.add_addr(
                "cni0",
                &format!("{}/{}", spec.gateway(), spec.subnet.prefix_len()),
            )?;
            let pod = Netns::new(&format!("{role}-pod"))?;
            veth(&ns, "veth0", &pod, "eth0")?;
            ns.set_master("veth0", "cni0")?;
            pod.add_addr(
                "eth0",
                &format!("{}/{}", spec.pod_ip(), spec.subnet.prefix_len()),
            )?;
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                &spec.gateway().to_string(),
            ])?;
            nodes.push(Node {
                spec: spec.clone(),
                ns,
                pod,
            });
        }
        Ok(Cluster { nodes, switch })
    }

    /// The node of that name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.spec.name == name)
    }
}
