//! The overlay in network namespaces (root): three nodes as the seed draws
//! them, programmed by weft's reconcilers, checked through `ip -j` and
//! `bridge -j`, and by pinging pods across nodes — in IPv4 (the seed's own
//! tables), in IPv6 (the same tables with v6 values on `flannel-v6.1`) and
//! in both at once (one reconciler per family, side by side).
//!
//! The IPv6 half of the cluster is laid over the seed's IPv4 one: underlay
//! `fd00:18::<host>/64` next to `172.18.0.<host>/16`, pod subnets
//! `fc00:0:0:<n>::/64` of the cluster network `fc00::/48` next to
//! `10.244.<n>.0/24`, the same VTEP MACs' v6 twins.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
use weft_integration::{seed_nodes, Cluster, Node, NodeSpec, OverlayAgent};
use weft_netns::{require_netns, Netns};
use weft_overlay::reconciler::{Input, Options};
use weft_overlay::{BackendConfig, Family, Lease, LocalNode, MacAddr, OverlayConfig, VxlanConfig};

// ---------------------------------------------------------------------------
// The seed's cluster in either family

/// What differs between the seed's cluster in IPv4 and in IPv6.
trait SeedFamily: Copy {
    /// The cluster network.
    fn cluster(self) -> IpNet;
    /// The VXLAN device.
    fn device(self) -> &'static str;
    /// `ip`'s family option.
    fn flag(self) -> &'static str;
    /// A node's underlay address.
    fn node_ip(self, spec: &NodeSpec) -> IpAddr;
    /// The underlay's prefix length.
    fn underlay_prefix(self) -> u8;
    /// A node's pod subnet.
    fn subnet(self, spec: &NodeSpec) -> IpNet;
    /// A node's VTEP MAC.
    fn mac(self, name: &str) -> MacAddr;

    /// The `k`-th address of a node's pod subnet.
    fn nth(self, spec: &NodeSpec, k: u8) -> IpAddr {
        match self.subnet(spec).network() {
            IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) + u32::from(k)).into(),
            IpAddr::V6(a) => Ipv6Addr::from(u128::from(a) + u128::from(k)).into(),
        }
    }
    /// The subnet's network address: the route's gateway and the neighbour.
    fn zero(self, spec: &NodeSpec) -> IpAddr {
        self.nth(spec, 0)
    }
    /// `cni0`'s address, the pods' gateway.
    fn gateway(self, spec: &NodeSpec) -> IpAddr {
        self.nth(spec, 1)
    }
    /// The node's pod.
    fn pod_ip(self, spec: &NodeSpec) -> IpAddr {
        self.nth(spec, 2)
    }
}

impl SeedFamily for Family {
    fn cluster(self) -> IpNet {
        match self {
            Family::V4 => weft_integration::topology::CLUSTER.parse().unwrap(),
            Family::V6 => "fc00::/48".parse().unwrap(),
        }
    }

    fn device(self) -> &'static str {
        match self {
            Family::V4 => "flannel.1",
            Family::V6 => "flannel-v6.1",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// IPv6: `fd00:18::<host>` for `172.18.0.<host>`.
    fn node_ip(self, spec: &NodeSpec) -> IpAddr {
        match self {
            Family::V4 => spec.ip.into(),
            Family::V6 => {
                let host = u16::from(spec.ip.octets()[3]);
                Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, host).into()
            }
        }
    }

    fn underlay_prefix(self) -> u8 {
        match self {
            Family::V4 => 16,
            Family::V6 => 64,
        }
    }

    /// IPv6: `fc00:0:0:<n>::/64` for `10.244.<n>.0/24`.
    fn subnet(self, spec: &NodeSpec) -> IpNet {
        match self {
            Family::V4 => spec.subnet.into(),
            Family::V6 => {
                let n = u16::from(spec.subnet.network().octets()[2]);
                IpNet::new(Ipv6Addr::new(0xfc00, 0, 0, n, 0, 0, 0, 0).into(), 64).unwrap()
            }
        }
    }

    /// The seed's VTEP MACs (control-plane's and worker's are the ones it
    /// prints); in IPv6 the same with a last byte of 0x66.
    fn mac(self, name: &str) -> MacAddr {
        let v4 = match name {
            "control-plane" => "5a:11:99:ab:8c:22",
            "worker" => "ce:0a:4f:22:a4:2a",
            _ => "0a:58:0a:f4:02:00",
        };
        match self {
            Family::V4 => v4.parse().unwrap(),
            Family::V6 => format!("{}66", &v4[..15]).parse().unwrap(),
        }
    }
}

/// The seed's nodes as namespaces, with the IPv6 half laid over the IPv4
/// one when `families` holds IPv6.
fn seed_cluster(families: &[Family]) -> (Vec<NodeSpec>, Cluster) {
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    if families.contains(&Family::V6) {
        add_ipv6(&cluster);
    }
    (specs, cluster)
}

/// IPv6 on every node: forwarding (inside the node's namespace), the
/// underlay address, `cni0`'s and the pod's, the pod's default route; then
/// waits until duplicate address detection is over everywhere.
fn add_ipv6(cluster: &Cluster) {
    let v6 = Family::V6;
    for n in &cluster.nodes {
        n.ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        let (ip, prefix) = (v6.node_ip(&n.spec), v6.underlay_prefix());
        add_nodad(&n.ns, "eth0", &format!("{ip}/{prefix}"));
        add_nodad(&n.ns, "cni0", &format!("{}/64", v6.gateway(&n.spec)));
        add_nodad(&n.pod, "eth0", &format!("{}/64", v6.pod_ip(&n.spec)));
        let via = v6.gateway(&n.spec).to_string();
        n.pod
            .ip(&["-6", "route", "add", "default", "via", &via])
            .unwrap();
    }
    wait_dad(cluster);
}

/// An IPv6 address usable at once (no duplicate address detection).
fn add_nodad(ns: &Netns, dev: &str, cidr: &str) {
    ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        .unwrap();
}

/// Whether an IPv6 address in `ns` is still tentative (in duplicate address
/// detection, unusable: link-local addresses of new links, the device's).
fn tentative(ns: &Netns) -> bool {
    ns.ip(&["-6", "addr", "show", "tentative"])
        .unwrap()
        .contains("tentative")
}

/// Polls until no IPv6 address of the cluster is tentative any more.
fn wait_dad(cluster: &Cluster) {
    let all: Vec<&Netns> = cluster
        .nodes
        .iter()
        .flat_map(|n| [&n.ns, &n.pod])
        .chain([cluster.switch.netns()])
        .collect();
    wait_for(
        "duplicate address detection",
        Duration::from_secs(10),
        || !all.iter().any(|ns| tentative(ns)),
    );
}

fn spec<'a>(specs: &'a [NodeSpec], name: &str) -> &'a NodeSpec {
    specs.iter().find(|s| s.name == name).unwrap()
}

// ---------------------------------------------------------------------------
// weft's reconcilers on the nodes

fn vxlan(fam: Family, direct_routing: bool) -> OverlayConfig {
    OverlayConfig {
        network: fam.cluster(),
        backend: BackendConfig::from(VxlanConfig {
            direct_routing,
            ..VxlanConfig::default()
        }),
    }
}

fn host_gw(fam: Family) -> OverlayConfig {
    OverlayConfig {
        network: fam.cluster(),
        backend: BackendConfig::from(weft_overlay::HostGw),
    }
}

fn lease(spec: &NodeSpec, config: &OverlayConfig) -> Lease {
    let fam = Family::of_net(&config.network);
    Lease {
        node: spec.name.clone(),
        subnet: fam.subnet(spec),
        public_ip: fam.node_ip(spec),
        backend_type: config.backend.kind().into(),
        backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, fam.mac(&spec.name)),
    }
}

/// `me`'s input in the configuration's family.
fn input(me: &NodeSpec, specs: &[NodeSpec], config: &OverlayConfig) -> Input {
    let fam = Family::of_net(&config.network);
    Input {
        config: config.clone(),
        local: LocalNode {
            name: me.name.clone(),
            subnet: fam.subnet(me),
            public_ip: fam.node_ip(me),
            underlay: "eth0".into(),
            vtep_mac: Some(fam.mac(&me.name)),
        },
        leases: specs.iter().map(|s| lease(s, config)).collect(),
    }
}

fn start(node: &Node, specs: &[NodeSpec], config: &OverlayConfig) -> OverlayAgent {
    let agent = OverlayAgent::start(
        &node.ns,
        input(&node.spec, specs, config),
        Options::default(),
    )
    .unwrap();
    let first = block(agent.handle.wait_applied(1)).unwrap();
    assert!(first.errors.is_empty(), "{first:?}");
    agent
}

/// An agent on every node of `cluster`, each past its first clean
/// reconcile; in IPv6, also past the DAD of the devices' addresses.
fn start_all(cluster: &Cluster, specs: &[NodeSpec], config: &OverlayConfig) -> Vec<OverlayAgent> {
    let agents = cluster
        .nodes
        .iter()
        .map(|n| start(n, specs, config))
        .collect();
    if Family::of_net(&config.network) == Family::V6 {
        wait_dad(cluster);
    }
    agents
}

fn writes(agent: &OverlayAgent) -> u64 {
    agent
        .handle
        .stats()
        .writes
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs a future to completion on a throwaway runtime, failing after 20 s.
fn block<T>(fut: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("timed out")
    })
}

/// Polls until `ok` holds; the time it took, or a panic after `limit`.
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}: not done after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// Polls until `ok` holds; the time it took, or a panic after 5 s.
fn wait_until(what: &str, ok: impl FnMut() -> bool) -> Duration {
    wait_for(what, Duration::from_secs(5), ok)
}

// ---------------------------------------------------------------------------
// The kernel's tables, as `ip -j` and `bridge -j` print them

fn json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    match ns.ip_json(args).unwrap() {
        Value::Array(v) => v,
        other => panic!("not an array: {other}"),
    }
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == flag))
}

fn bridge_fdb(ns: &Netns, dev: &str) -> Vec<Value> {
    let out = ns
        .exec(&["bridge", "-j", "fdb", "show", "dev", dev])
        .unwrap();
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// Routes inside the family's cluster network, but the kernel's own.
fn routes_in_cluster(ns: &Netns, fam: Family) -> Vec<Value> {
    let cluster = fam.cluster().to_string();
    json(ns, &[fam.flag(), "route", "show", "root", &cluster])
        .into_iter()
        .filter(|r| r["protocol"] != "kernel")
        .collect()
}

fn permanent_neighbours(ns: &Netns, fam: Family) -> Vec<Value> {
    json(
        ns,
        &[
            fam.flag(),
            "neigh",
            "show",
            "dev",
            fam.device(),
            "nud",
            "permanent",
        ],
    )
}

fn self_fdb(ns: &Netns, fam: Family) -> Vec<Value> {
    bridge_fdb(ns, fam.device())
        .into_iter()
        .filter(|f| has_flag(f, "self"))
        .collect()
}

/// The family's addresses on the device, as `address/prefix`.
fn device_addresses(ns: &Netns, fam: Family) -> Vec<String> {
    json(ns, &[fam.flag(), "addr", "show", "dev", fam.device()])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", text(&a, "local"), a["prefixlen"]))
        .collect()
}

/// Asserts the seed's "routing table", "static ARP entries" and "VXLAN
/// forwarding database" on worker2, in the family's form: per peer (the
/// seed's control-plane and worker) `subnet via subnet.0 dev <device> onlink`
/// (proto 119, weft's tag), a PERMANENT neighbour `subnet.0 → VTEP MAC`,
/// an FDB entry `VTEP MAC dst node IP self permanent`, nothing else.
fn assert_seed_tables(worker2: &Netns, fam: Family) {
    let specs = seed_nodes();
    let peers: Vec<&NodeSpec> = specs.iter().filter(|s| s.name != "worker2").collect();
    let dev = fam.device();

    let routes = routes_in_cluster(worker2, fam);
    let mut got: Vec<_> = routes
        .iter()
        .map(|r| {
            let onlink = has_flag(r, "onlink");
            (
                text(r, "dst"),
                text(r, "gateway"),
                text(r, "dev"),
                onlink,
                text(r, "protocol"),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<_> = peers
        .iter()
        .map(|p| {
            let (dst, via) = (fam.subnet(p).to_string(), fam.zero(p).to_string());
            (dst, via, dev.to_string(), true, "119".to_string())
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "routes: {routes:#?}");

    let neigh = permanent_neighbours(worker2, fam);
    let mut got: Vec<_> = neigh
        .iter()
        .map(|n| (text(n, "dst"), text(n, "lladdr")))
        .collect();
    got.sort();
    let mut want: Vec<_> = peers
        .iter()
        .map(|p| (fam.zero(p).to_string(), fam.mac(&p.name).to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want, "neighbours: {neigh:#?}");

    let mut got: Vec<_> = self_fdb(worker2, fam)
        .iter()
        .map(|f| (text(f, "mac"), text(f, "dst"), f["state"] == "permanent"))
        .collect();
    got.sort();
    let mut want: Vec<_> = peers
        .iter()
        .map(|p| {
            (
                fam.mac(&p.name).to_string(),
                fam.node_ip(p).to_string(),
                true,
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "fdb");
}

/// The device as flannel makes it: VNI 1 over eth0 from the node's address
/// of the family, port 8472, no learning, MTU underlay − 50 (− 70 for an
/// IPv6 VTEP, the most the kernel allows), the VTEP MAC,
/// up, and `subnet.0` as its only address of the family (`/32`, `/128`).
fn assert_device(ns: &Netns, me: &NodeSpec, fam: Family) {
    let link = &json(ns, &["-d", "link", "show", fam.device()])[0];
    let mtu = match fam {
        Family::V4 => 1450,
        // The kernel allows an IPv6 VTEP no more (flannel asks for 1450 and gets this).
        Family::V6 => 1430,
    };
    assert_eq!(link["mtu"], mtu, "{link}");
    assert_eq!(link["address"], fam.mac(&me.name).to_string());
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    let local = match fam {
        Family::V4 => "local",
        Family::V6 => "local6",
    };
    assert_eq!(info[local], fam.node_ip(me).to_string(), "{info}");
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert_eq!(info["link"], "eth0");
    assert!(has_flag(link, "UP"), "{link}");
    let host = match fam {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    assert_eq!(
        device_addresses(ns, fam),
        vec![format!("{}/{host}", fam.zero(me))]
    );
}

fn ping(from: &Netns, to: IpAddr) -> bool {
    from.exec_status(&["ping", "-c1", "-W2", "-q", &to.to_string()])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Every pod reaches every other pod, and every node every pod, in the family.
fn assert_full_connectivity(cluster: &Cluster, fam: Family) {
    let mut failures = Vec::new();
    for a in &cluster.nodes {
        for b in &cluster.nodes {
            let to = fam.pod_ip(&b.spec);
            if !ping(&a.pod, to) {
                failures.push(format!("pod {} -> pod {to}", a.spec.name));
            }
            if !ping(&a.ns, to) {
                failures.push(format!("node {} -> pod {to}", a.spec.name));
            }
        }
    }
    assert!(failures.is_empty(), "{fam} unreachable: {failures:?}");
}

fn tx_packets(ns: &Netns, dev: &str) -> u64 {
    let v = json(ns, &["-s", "link", "show", dev]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

/// An independent witness of kernel changes in a namespace: `ip -4|-6
/// monitor link address route neigh` (one family, so that the other
/// family's noise — IPv6 duplicate address detection finishing — is not
/// taken for a write of weft's; in IPv6, start it once no address is
/// tentative any more).
struct Witness(Option<Child>);

impl Witness {
    fn start(ns: &Netns, fam: Family) -> Witness {
        let child = ns
            .command(&[
                "ip",
                fam.flag(),
                "monitor",
                "link",
                "address",
                "route",
                "neigh",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Witness(Some(child))
    }

    /// Every change seen (after a short grace for late events), as `ip
    /// monitor` printed it; empty when nothing changed.
    fn changes(mut self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        let mut child = self.0.take().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Witness {
    /// A test that failed before asking stops its monitor too.
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// One body per behaviour, run in each family

fn vxlan_converges(fam: Family) {
    let (specs, cluster) = seed_cluster(&[fam]);
    let agents = start_all(&cluster, &specs, &vxlan(fam, false));
    for a in &agents {
        let r = a.handle.last_report();
        assert!(r.rejected.is_empty(), "{r:?}");
    }
    let worker2 = cluster.node("worker2").unwrap();
    assert_seed_tables(&worker2.ns, fam);
    assert_device(&worker2.ns, &worker2.spec, fam);
    assert_full_connectivity(&cluster, fam);
    for a in agents {
        a.stop().unwrap();
    }
}

fn host_gw_routes_via_node_ips(fam: Family) {
    let (specs, cluster) = seed_cluster(&[fam]);
    let agents = start_all(&cluster, &specs, &host_gw(fam));
    let worker2 = &cluster.node("worker2").unwrap().ns;
    let mut got: Vec<_> = routes_in_cluster(worker2, fam)
        .iter()
        .map(|r| (text(r, "dst"), text(r, "gateway"), text(r, "dev")))
        .collect();
    got.sort();
    let mut want: Vec<_> = specs
        .iter()
        .filter(|s| s.name != "worker2")
        .map(|p| {
            (
                fam.subnet(p).to_string(),
                fam.node_ip(p).to_string(),
                "eth0".into(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(
        json(worker2, &["link", "show"])
            .iter()
            .all(|l| l["ifname"] != fam.device()),
        "host-gw makes no device"
    );
    assert_full_connectivity(&cluster, fam);
    drop(agents);
}

fn direct_routing_bypasses_the_overlay(fam: Family) {
    let (specs, cluster) = seed_cluster(&[fam]);
    let agents = start_all(&cluster, &specs, &vxlan(fam, true));
    let worker2 = &cluster.node("worker2").unwrap().ns;
    let routes = routes_in_cluster(worker2, fam);
    assert_eq!(routes.len(), 2, "{routes:#?}");
    for r in &routes {
        assert_eq!(r["dev"], "eth0", "same-L2 peers get plain routes: {r}");
        let via: IpAddr = text(r, "gateway").parse().unwrap();
        assert!(
            specs.iter().any(|s| fam.node_ip(s) == via),
            "via a node's address: {r}"
        );
    }
    assert!(permanent_neighbours(worker2, fam).is_empty() && self_fdb(worker2, fam).is_empty());
    let tx = || -> Vec<u64> {
        cluster
            .nodes
            .iter()
            .map(|n| tx_packets(&n.ns, fam.device()))
            .collect()
    };
    let before = tx();
    assert_full_connectivity(&cluster, fam);
    assert_eq!(before, tx(), "{} carried no packet", fam.device());
    drop(agents);
}

/// What the self-repair tests break on worker2.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// The route to control-plane's subnet.
    Route,
    /// control-plane's neighbour.
    Neighbour,
    /// control-plane's FDB entry.
    Fdb,
    /// The device set down (which takes its routes and neighbours, and in
    /// IPv6 its addresses, with it).
    DeviceDown,
    /// The device deleted.
    Device,
}

const BREAKAGES: [Breakage; 5] = [
    Breakage::Route,
    Breakage::Neighbour,
    Breakage::Fdb,
    Breakage::DeviceDown,
    Breakage::Device,
];

impl Breakage {
    fn name(self) -> &'static str {
        match self {
            Breakage::Route => "route",
            Breakage::Neighbour => "neighbour",
            Breakage::Fdb => "fdb entry",
            Breakage::DeviceDown => "device down",
            Breakage::Device => "device",
        }
    }
}

/// Breaks one of worker2's objects of the family and returns how long weft
/// took to have it back (polling the kernel every 5 ms).
fn break_and_repair(w2: &Netns, fam: Family, what: Breakage) -> Duration {
    let specs = seed_nodes();
    let cp = spec(&specs, "control-plane");
    let dev = fam.device();
    let subnet = fam.subnet(cp).to_string();
    let zero = fam.zero(cp).to_string();
    let mac = fam.mac(&cp.name).to_string();
    let node_ip = fam.node_ip(cp).to_string();
    let route_back = || {
        routes_in_cluster(w2, fam)
            .iter()
            .any(|r| r["dst"] == subnet.as_str() && r["dev"] == dev)
    };
    let neigh_back = || {
        permanent_neighbours(w2, fam)
            .iter()
            .any(|n| n["dst"] == zero.as_str())
    };
    let fdb_back = || {
        self_fdb(w2, fam)
            .iter()
            .any(|f| f["mac"] == mac.as_str() && f["dst"] == node_ip.as_str())
    };
    let all_back = || {
        route_back()
            && neigh_back()
            && fdb_back()
            && routes_in_cluster(w2, fam).len() == 2
            && device_addresses(w2, fam).len() == 1
            && has_flag(&json(w2, &["link", "show", dev])[0], "UP")
    };
    match what {
        Breakage::Route => {
            w2.ip(&[fam.flag(), "route", "del", &subnet]).unwrap();
            wait_until("route", route_back)
        }
        Breakage::Neighbour => {
            w2.ip(&[fam.flag(), "neigh", "del", &zero, "dev", dev])
                .unwrap();
            wait_until("neighbour", neigh_back)
        }
        Breakage::Fdb => {
            w2.exec(&[
                "bridge", "fdb", "del", &mac, "dev", dev, "dst", &node_ip, "self",
            ])
            .unwrap();
            wait_until("fdb", fdb_back)
        }
        Breakage::DeviceDown => {
            w2.ip(&["link", "set", dev, "down"]).unwrap();
            wait_until("device up with its address and entries", all_back)
        }
        Breakage::Device => {
            w2.ip(&["link", "del", dev]).unwrap();
            wait_until("device and all entries", all_back)
        }
    }
}

fn deleted_objects_come_back(fam: Family) {
    let (specs, cluster) = seed_cluster(&[fam]);
    let agents = start_all(&cluster, &specs, &vxlan(fam, false));
    let w2 = cluster.node("worker2").unwrap();
    for what in BREAKAGES {
        let t = break_and_repair(&w2.ns, fam, what);
        eprintln!(
            "self-repair ({fam}): deleted {} back in {:.1} ms",
            what.name(),
            t.as_secs_f64() * 1e3
        );
        assert!(t < Duration::from_secs(1), "{} took {t:?}", what.name());
    }
    assert_seed_tables(&w2.ns, fam);
    assert_device(&w2.ns, &w2.spec, fam);
    assert!(ping(&w2.pod, fam.pod_ip(spec(&specs, "control-plane"))));
    drop(agents);
}

fn restart_writes_nothing(fam: Family) {
    let (specs, cluster) = seed_cluster(&[fam]);
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(fam, false);
    let agent = start(node, &specs, &config);
    let again = block(agent.handle.reconcile_now()).unwrap();
    assert_eq!(again.writes, 0, "{}", again.plan);
    let dump = || {
        (
            node.ns.ip(&[fam.flag(), "route"]).unwrap(),
            node.ns.ip(&["-d", "link", "show", fam.device()]).unwrap(),
        )
    };
    let before = dump();
    agent.stop().unwrap();
    // The device's addresses out of duplicate address detection, which the
    // witness would see finishing.
    wait_for("DAD", Duration::from_secs(10), || !tentative(&node.ns));

    // An independent witness: `ip monitor` prints every change the kernel makes.
    let witness = Witness::start(&node.ns, fam);
    let again = OverlayAgent::start(
        &node.ns,
        input(&node.spec, &specs, &config),
        Options::default(),
    )
    .unwrap();
    let first = block(again.handle.wait_applied(1)).unwrap();
    let seen = witness.changes();
    assert!(
        seen.is_empty(),
        "the kernel changed during the restart:\n{seen}"
    );
    assert!(first.resynced && first.errors.is_empty());
    assert_eq!(
        first.writes, 0,
        "a restart on a programmed node writes nothing: {}",
        first.plan
    );
    assert_eq!(writes(&again), 0);
    assert_eq!(block(again.handle.reconcile_now()).unwrap().writes, 0);
    assert_eq!(before, dump(), "nothing was flushed or recreated");
    assert_seed_tables(&node.ns, fam);
}

// ---------------------------------------------------------------------------
// IPv4: the seed itself

#[test]
fn vxlan_converges_to_the_seed_tables_and_pods_reach_each_other() {
    require_netns!();
    vxlan_converges(Family::V4);
}

#[test]
fn host_gw_routes_via_node_ips_and_pods_reach_each_other() {
    require_netns!();
    host_gw_routes_via_node_ips(Family::V4);
}

#[test]
fn direct_routing_bypasses_the_overlay_on_one_l2_network() {
    require_netns!();
    direct_routing_bypasses_the_overlay(Family::V4);
}

#[test]
fn deleted_objects_come_back_within_a_second() {
    require_netns!();
    deleted_objects_come_back(Family::V4);
}

/// `weft debug pause`: while paused nothing is written, not even by a
/// reconcile asked for; resumed, what was missed is repaired.
#[test]
fn paused_repairs_write_nothing_until_resumed() {
    require_netns!();
    let fam = Family::V4;
    let (specs, cluster) = seed_cluster(&[fam]);
    let node = cluster.node("worker2").unwrap();
    let agent = start(node, &specs, &vxlan(fam, false));
    let subnet = fam.subnet(spec(&specs, "control-plane")).to_string();
    let present = || {
        routes_in_cluster(&node.ns, fam)
            .iter()
            .any(|r| r["dst"] == subnet.as_str())
    };
    assert!(block(agent.handle.pause(true)));
    let before = writes(&agent);
    node.ns.ip(&["route", "del", &subnet]).unwrap();
    let report = block(agent.handle.reconcile_now()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!present(), "a paused reconciler put the route back");
    assert_eq!(writes(&agent), before, "{}", report.plan);
    assert!(block(agent.handle.pause(false)));
    let t = wait_until("route after resuming", present);
    eprintln!("resumed: route back in {:.1} ms", t.as_secs_f64() * 1e3);
}

#[test]
fn reconciling_again_and_restarting_send_no_writes() {
    require_netns!();
    restart_writes_nothing(Family::V4);
}

// ---------------------------------------------------------------------------
// IPv6: the same tables with v6 values on flannel-v6.1

#[test]
fn ipv6_vxlan_converges_to_the_seed_tables_and_pods_reach_each_other() {
    require_netns!();
    vxlan_converges(Family::V6);
}

#[test]
fn ipv6_host_gw_routes_via_node_ips_and_pods_reach_each_other() {
    require_netns!();
    host_gw_routes_via_node_ips(Family::V6);
}

#[test]
fn ipv6_direct_routing_bypasses_the_overlay_on_one_l2_network() {
    require_netns!();
    direct_routing_bypasses_the_overlay(Family::V6);
}

#[test]
fn ipv6_deleted_objects_come_back_within_a_second() {
    require_netns!();
    deleted_objects_come_back(Family::V6);
}

#[test]
fn ipv6_reconciling_again_and_restarting_send_no_writes() {
    require_netns!();
    restart_writes_nothing(Family::V6);
}

// ---------------------------------------------------------------------------
// Dual stack: a reconciler per family on every node

fn other(fam: Family) -> Family {
    match fam {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

#[test]
fn dual_stack_reconcilers_side_by_side_keep_to_their_family() {
    require_netns!();
    let (specs, cluster) = seed_cluster(&Family::ALL);
    // agents[family][node]
    let agents: Vec<Vec<OverlayAgent>> = Family::ALL
        .iter()
        .map(|&fam| start_all(&cluster, &specs, &vxlan(fam, false)))
        .collect();
    let at = cluster
        .nodes
        .iter()
        .position(|n| n.spec.name == "worker2")
        .unwrap();
    let w2 = &cluster.nodes[at];
    for fam in Family::ALL {
        assert_seed_tables(&w2.ns, fam);
        assert_device(&w2.ns, &w2.spec, fam);
        assert_full_connectivity(&cluster, fam);
    }
    for fam in Family::ALL {
        let mine = &agents[fam.index()][at];
        let theirs = &agents[other(fam).index()][at];
        for what in BREAKAGES {
            assert_eq!(block(theirs.handle.reconcile_now()).unwrap().writes, 0);
            let (mine0, theirs0) = (writes(mine), writes(theirs));
            let t = break_and_repair(&w2.ns, fam, what);
            // Whatever the other family's reconciler was told by the kernel is folded in by now.
            let after = block(theirs.handle.reconcile_now()).unwrap();
            eprintln!(
                "dual-stack: deleted {fam} {} back in {:.1} ms ({} writes by the {fam} reconciler, {} by the {} one)",
                what.name(),
                t.as_secs_f64() * 1e3,
                writes(mine) - mine0,
                writes(theirs) - theirs0,
                other(fam)
            );
            assert!(t < Duration::from_secs(1), "{} took {t:?}", what.name());
            assert!(writes(mine) > mine0);
            assert_eq!(
                (writes(theirs) - theirs0, after.writes),
                (0, 0),
                "a {fam} repair made the {} reconciler write: {}",
                other(fam),
                after.plan
            );
            assert_seed_tables(&w2.ns, other(fam));
        }
        assert_seed_tables(&w2.ns, fam);
        assert_device(&w2.ns, &w2.spec, fam);
    }
    wait_dad(&cluster);
    for fam in Family::ALL {
        assert_full_connectivity(&cluster, fam);
    }
    drop(agents);
}

// ---------------------------------------------------------------------------
// IPv4 only: peer changes, bad leases, flannel's leftovers
#[test]
fn removed_and_changed_peers_are_updated_in_place() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(Family::V4, false);
    let agent = start(node, &specs, &config);
    let w2 = &node.ns;

    // Changed VTEP MAC and node IP of worker.
    let mut leases = input(&node.spec, &specs, &config).leases;
    leases[1].backend_data = r#"{"VNI":1,"VtepMAC":"02:12:34:56:78:9a"}"#.into();
    leases[1].public_ip = "172.18.0.44".parse().unwrap();
    let g = agent.handle.set_leases(leases.clone());
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(
        r.writes, 3,
        "neighbour replaced, new FDB entry, old FDB entry deleted: {}",
        r.plan
    );
    let neigh = permanent_neighbours(w2, Family::V4);
    assert!(
        neigh
            .iter()
            .any(|n| n["dst"] == "10.244.1.0" && n["lladdr"] == "02:12:34:56:78:9a"),
        "{neigh:?}"
    );
    assert_eq!(neigh.len(), 2);
    let fdb = self_fdb(w2, Family::V4);
    assert!(
        fdb.iter()
            .any(|f| f["mac"] == "02:12:34:56:78:9a" && f["dst"] == "172.18.0.44"),
        "{fdb:?}"
    );
    assert!(
        !fdb.iter().any(|f| f["mac"] == "ce:0a:4f:22:a4:2a"),
        "old MAC gone: {fdb:?}"
    );

    // Changed node IP only: the FDB entry is rewritten in place.
    leases[1].public_ip = "172.18.0.45".parse().unwrap();
    let g = agent.handle.set_leases(leases.clone());
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(r.writes, 1, "{}", r.plan);
    assert!(self_fdb(w2, Family::V4)
        .iter()
        .any(|f| f["mac"] == "02:12:34:56:78:9a" && f["dst"] == "172.18.0.45"));
    assert_eq!(self_fdb(w2, Family::V4).len(), 2);

    // control-plane leaves the cluster.
    leases.remove(0);
    let g = agent.handle.set_leases(leases);
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(r.writes, 3, "{}", r.plan);
    assert!(!routes_in_cluster(w2, Family::V4)
        .iter()
        .any(|r| r["dst"] == "10.244.0.0/24"));
    assert!(!permanent_neighbours(w2, Family::V4)
        .iter()
        .any(|n| n["dst"] == "10.244.0.0"));
    assert!(!self_fdb(w2, Family::V4)
        .iter()
        .any(|f| f["mac"] == "5a:11:99:ab:8c:22"));
    assert_eq!(
        (
            routes_in_cluster(w2, Family::V4).len(),
            permanent_neighbours(w2, Family::V4).len(),
            self_fdb(w2, Family::V4).len()
        ),
        (1, 1, 1)
    );
}

#[test]
fn bad_leases_are_skipped_and_the_rest_is_programmed() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(Family::V4, false);
    let mut inp = input(&node.spec, &specs, &config);
    let good = inp.leases[0].clone();
    inp.leases.push(Lease {
        node: "bad-mac".into(),
        subnet: "10.244.5.0/24".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"5a:11:99:zz:8c:22"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "outside".into(),
        subnet: "10.99.0.0/24".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "same-as-own".into(),
        subnet: node.spec.subnet.into(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "overlap".into(),
        subnet: "10.244.0.0/23".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:08"}"#.into(),
        ..good
    });
    let agent = OverlayAgent::start(&node.ns, inp, Options::default()).unwrap();
    let r = block(agent.handle.wait_applied(1)).unwrap();
    let got: Vec<(String, &str)> = r
        .rejected
        .iter()
        .map(|e| (e.node.clone(), e.field))
        .collect();
    assert_eq!(
        got,
        vec![
            ("bad-mac".into(), "backend-data.VtepMAC"),
            ("outside".into(), "podCIDR"),
            ("same-as-own".into(), "podCIDR"),
            ("overlap".into(), "podCIDR")
        ]
    );
    assert!(r.errors.is_empty());
    assert_seed_tables(&node.ns, Family::V4);
}

#[test]
fn foreign_routes_survive_and_flannel_state_is_adopted() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let w2 = &node.ns;
    // What flannel leaves on a node: its device, an untagged onlink route, neighbour and FDB entry.
    for cmd in [
        "link add flannel.1 type vxlan id 1 local 172.18.0.2 dev eth0 dstport 8472 nolearning",
        "link set flannel.1 address 0a:58:0a:f4:02:00 mtu 1450 up",
        "addr add 10.244.2.0/32 dev flannel.1",
        "route add 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink",
        "neigh add 10.244.0.0 dev flannel.1 lladdr 5a:11:99:ab:8c:22 nud permanent",
        // Someone else's routes: inside the cluster network on the underlay, and outside it.
        "route add 10.244.99.0/24 via 172.18.0.50 dev eth0 proto static",
        "route add 192.168.77.0/24 via 172.18.0.50 dev eth0",
    ] {
        w2.ip(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
    }
    w2.exec(&[
        "bridge",
        "fdb",
        "add",
        "5a:11:99:ab:8c:22",
        "dev",
        "flannel.1",
        "dst",
        "172.18.0.3",
        "self",
        "permanent",
    ])
    .unwrap();
    let ifindex = w2.ifindex("flannel.1").unwrap();

    let agent = OverlayAgent::start(
        &node.ns,
        input(&node.spec, &specs, &vxlan(Family::V4, false)),
        Options::default(),
    )
    .unwrap();
    let r = block(agent.handle.wait_applied(1)).unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        w2.ifindex("flannel.1").unwrap(),
        ifindex,
        "flannel's device is kept, not recreated"
    );
    let routes = routes_in_cluster(w2, Family::V4);
    assert_eq!(
        routes
            .iter()
            .filter(|r| r["dst"] == "10.244.0.0/24")
            .count(),
        1,
        "adopted, not duplicated: {routes:#?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "10.244.99.0/24" && r["protocol"] == "static"),
        "foreign route kept"
    );
    assert!(
        json(w2, &["route", "show", "192.168.77.0/24"]).len() == 1,
        "foreign route kept"
    );
    assert_eq!(permanent_neighbours(w2, Family::V4).len(), 2);
    assert_eq!(self_fdb(w2, Family::V4).len(), 2);
    // weft's own routes plus the foreign one.
    assert_eq!(routes.len(), 3);
    assert_eq!(block(agent.handle.reconcile_now()).unwrap().writes, 0);
}
