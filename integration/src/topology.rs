//! A cluster made of network namespaces: an underlay switch, nodes with a
//! `cni0` bridge and one pod each, as the seed document draws it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_netns::{veth, Netns, Switch};

/// The underlay network of the lab (the seed's kind network).
pub const UNDERLAY: &str = "172.18.0.0/16";
/// The cluster network.
pub const CLUSTER: &str = "10.244.0.0/16";

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
