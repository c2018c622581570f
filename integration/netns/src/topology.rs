//! Building blocks for test topologies: veth pairs, bridges, addresses and
//! the [`Switch`] convenience.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::ns::Netns;

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, and sets both
/// ends up.
///
/// Runs `ip -n A link add A_IF type veth peer name B_IF netns B`, i.e.
/// entirely inside the kit's namespaces. Interface names are limited to 15
/// characters by the kernel.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.link_up(a_if)?;
    b.link_up(b_if)
}

impl Netns {
    /// Creates a bridge `name` and sets it up, with a MAC address of its
    /// own (locally administered, from the name). A bridge left to choose
    /// takes the lowest MAC of its ports, so it changes when a port with a
    /// lower one joins: whoever cached the old one in its ARP table (a lab
    /// node talking to an API server on the bridge) then loses the bridge's
    /// address for up to half a minute.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        let h = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        let [a, b, c, d] = h.to_be_bytes();
        let mac = format!("02:77:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        self.ip(&["link", "add", name, "address", &mac, "type", "bridge"])?;
        self.link_up(name)
    }

    /// Enslaves `ifname` to `bridge` (`ip link set IF master BR`).
    pub fn set_master(&self, ifname: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "master", bridge])
            .map(drop)
    }

    /// Adds an address in CIDR form, e.g. `"10.0.0.1/24"` or `"fd00::1/64"`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Sets `ifname` up.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Sets `ifname` down.
    pub fn link_down(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "down"]).map(drop)
    }

    /// Sets the MTU of `ifname`.
    pub fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// Writes a sysctl inside the namespace, e.g.
    /// `sysctl("net.ipv4.ip_forward", "1")` (runs `sysctl -qw key=value`).
    /// Only per-namespace keys (mostly `net.*`) make sense here.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// The interface index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let args = ["link", "show", "dev", ifname];
        let json = self.ip_json(&args)?;
        json.get(0)
            .and_then(|link| link.get("ifindex"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::Unexpected {
                cmd: format!("ip -n {} -j {}", self.name(), args.join(" ")),
                detail: format!("no ifindex in {json}"),
            })
    }
}

/// A namespace holding a bridge `br0` (up) that other namespaces plug into,
/// like an L2 switch between "nodes".
///
/// Derefs to its [`Netns`], so all namespace methods work on it.
#[derive(Debug)]
pub struct Switch {
    ns: Netns,
    ports: AtomicU32,
}

impl Switch {
    /// Name of the switch's bridge.
    pub const BRIDGE: &'static str = "br0";

    /// Creates the namespace (`weft-<pid>-<role>`) and its bridge.
    pub fn new(role: &str) -> Result<Switch> {
        let ns = Netns::new(role)?;
        ns.add_bridge(Self::BRIDGE)?;
        Ok(Switch {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// Plugs `node` into the switch: a veth from a new bridge port
    /// (`port<n>`, in the switch) to `ifname` in `node`, with `cidr` (e.g.
    /// `"10.0.0.2/24"`) on `ifname`, both ends up. Returns the switch-side
    /// port name (e.g. to take the link down later).
    pub fn attach(&self, node: &Netns, ifname: &str, cidr: &str) -> Result<String> {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        veth(&self.ns, &port, node, ifname)?;
        self.ns.set_master(&port, Self::BRIDGE)?;
        node.add_addr(ifname, cidr)?;
        Ok(port)
    }

    /// The switch's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Deref for Switch {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.ns
    }
}
