//! The walk against a made-up cluster: the seed's two nodes (worker with
//! Pod-1 10.244.1.6, control-plane with Pod-3 10.244.0.2), its addresses
//! and MACs, as the kernel would answer; every backend and every fault.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_nat::{NatMode, Options, Snapshot as NatSnapshot, SnatRules};
use weft_overlay::state::{Entries, Forward};
use weft_overlay::{MacAddr, Snapshot};

use super::place::{FdbRow, LinkKind, LinkRow, NeighRow, Place, Reader, RouteLookup};
use super::walk::walk;
use super::{End, Step, Trace};
use crate::status::{FamilyStatus, Peer, Status};

#[derive(Default)]
struct Fake {
    routes: BTreeMap<IpAddr, RouteLookup>,
    neigh: Vec<NeighRow>,
    fdb: Vec<FdbRow>,
    nat: Option<(NatMode, NatSnapshot)>,
}

impl Reader for Fake {
    async fn route_get(&self, dst: IpAddr) -> RouteLookup {
        self.routes
            .get(&dst)
            .cloned()
            .unwrap_or_else(|| RouteLookup::Refused("Network is unreachable".into()))
    }
    async fn neighbours(&self, _: IpAddr) -> Result<Vec<NeighRow>, String> {
        Ok(self.neigh.clone())
    }
    async fn fdb(&self) -> Result<Vec<FdbRow>, String> {
        Ok(self.fdb.clone())
    }
    async fn nat(
        &self,
        _: IpAddr,
        _: Option<NatMode>,
    ) -> Result<Option<(NatMode, NatSnapshot)>, String> {
        Ok(self.nat.clone())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn link(index: u32, name: &str, kind: LinkKind, addrs: &[&str]) -> LinkRow {
    LinkRow {
        index,
        name: name.into(),
        kind,
        mac: None,
        mtu: 1450,
        up: true,
        master: None,
        peer_index: None,
        addrs: addrs.iter().map(|a| net(a)).collect(),
    }
}

const LO: u32 = 1;
const ETH0: u32 = 2;
const FLANNEL: u32 = 3;
const CNI0: u32 = 4;
const VETH: u32 = 5;

const WORKER_IP: &str = "172.18.0.2";
const CP_IP: &str = "172.18.0.3";
const WORKER_VTEP: &str = "42:aa:00:00:00:02";
const CP_VTEP: &str = "5a:11:99:ab:8c:22";
const POD1: &str = "10.244.1.6";
const POD1_MAC: &str = "12:34:56:78:9a:bc";
const POD3: &str = "10.244.0.2";
const POD3_MAC: &str = "7e:46:23:43:6f:ec";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Vxlan,
    HostGw,
    Udp,
}

fn overlay_kind(kind: Kind) -> LinkKind {
    match kind {
        Kind::Vxlan => LinkKind::Vxlan {
            vni: Some(1),
            port: Some(8472),
            local: None,
        },
        Kind::Udp => LinkKind::Tun,
        Kind::HostGw => LinkKind::Other("dummy".into()),
    }
}

/// A node: lo, eth0 (underlay), the overlay device, cni0 and one pod's veth.
#[allow(clippy::too_many_arguments)]
fn node(
    name: &str,
    kind: Kind,
    public: &str,
    subnet: &str,
    vtep: &str,
    pod_veth: &str,
    peer: (&str, &str, &str, &str),
    with_weftd: bool,
) -> Place<Fake> {
    let subnet = net(subnet);
    let gw = IpNet::new(subnet.hosts().next().unwrap(), 24).unwrap();
    let mut links = vec![
        link(LO, "lo", LinkKind::Loopback, &["127.0.0.1/8"]),
        link(
            ETH0,
            "eth0",
            LinkKind::Other("veth".into()),
            &[&format!("{public}/24")],
        ),
        link(CNI0, "cni0", LinkKind::Bridge, &[&gw.to_string()]),
    ];
    let mut veth = link(VETH, pod_veth, LinkKind::Veth, &[]);
    veth.master = Some(CNI0);
    veth.peer_index = Some(2);
    links.push(veth);
    if kind != Kind::HostGw {
        let name = if kind == Kind::Udp {
            "flannel0"
        } else {
            "flannel.1"
        };
        let mut l = link(FLANNEL, name, overlay_kind(kind), &[]);
        if kind == Kind::Vxlan {
            l.mac = Some(mac(vtep));
        }
        links.push(l);
    }
    let (peer_node, peer_subnet, peer_ip, peer_vtep) = peer;
    let mut desired = Entries::default();
    if kind == Kind::Udp {
        desired.forwards.insert(
            net(peer_subnet),
            Forward {
                subnet: net(peer_subnet),
                to: ip(peer_ip),
            },
        );
    }
    let status = with_weftd.then(|| Status {
        node: name.into(),
        backend: "vxlan".into(),
        pid: 1,
        ready: true,
        families: vec![FamilyStatus {
            family: "IPv4".into(),
            subnet,
            public_ip: ip(public),
            nat_mode: "iptables-nft".into(),
            nat_reason: String::new(),
            peers: vec![Peer {
                node: peer_node.into(),
                subnet: net(peer_subnet),
                public_ip: ip(peer_ip),
                vtep_mac: (kind == Kind::Vxlan).then(|| peer_vtep.to_string()),
            }],
            overlay: Snapshot {
                network: net("10.244.0.0/16"),
                underlay: "eth0".into(),
                device: None,
                vtep_mac: None,
                desired,
                rejected: Vec::new(),
                paused: false,
                data_path: None,
            },
        }],
        skipped: Vec::new(),
        waiting: Vec::new(),
    });
    Place {
        name: name.into(),
        links,
        status,
        reader: Fake::default(),
    }
}

fn pod(name: &str, addr: &str, pod_mac: &str, gw: &str, peer_veth: u32) -> Place<Fake> {
    let mut eth0 = link(2, "eth0", LinkKind::Veth, &[&format!("{addr}/24")]);
    eth0.mac = Some(mac(pod_mac));
    eth0.peer_index = Some(peer_veth);
    let mut reader = Fake::default();
    reader.routes.insert(
        ip(POD3),
        RouteLookup::Unicast {
            via: Some(ip(gw)),
            dev: 2,
            src: Some(ip(addr)),
        },
    );
    reader.routes.insert(
        ip("172.18.0.100"),
        RouteLookup::Unicast {
            via: Some(ip(gw)),
            dev: 2,
            src: Some(ip(addr)),
        },
    );
    reader.routes.insert(
        ip(addr),
        RouteLookup::Local {
            dev: LO,
            src: Some(ip(addr)),
        },
    );
    Place {
        name: name.into(),
        links: vec![link(LO, "lo", LinkKind::Loopback, &["127.0.0.1/8"]), eth0],
        status: None,
        reader,
    }
}

/// The seed's cluster with `kind`'s kernel state on both nodes.
fn cluster(kind: Kind) -> Vec<Place<Fake>> {
    let mut worker = node(
        "worker",
        kind,
        WORKER_IP,
        "10.244.1.0/24",
        WORKER_VTEP,
        "veth1111",
        ("control-plane", "10.244.0.0/24", CP_IP, CP_VTEP),
        true,
    );
    let mut cp = node(
        "control-plane",
        kind,
        CP_IP,
        "10.244.0.0/24",
        CP_VTEP,
        "vethaabf9eb2",
        ("worker", "10.244.1.0/24", WORKER_IP, WORKER_VTEP),
        true,
    );
    let to_pod3 = match kind {
        Kind::Vxlan => RouteLookup::Unicast {
            via: Some(ip("10.244.0.0")),
            dev: FLANNEL,
            src: Some(ip("10.244.1.0")),
        },
        Kind::HostGw => RouteLookup::Unicast {
            via: Some(ip(CP_IP)),
            dev: ETH0,
            src: Some(ip(WORKER_IP)),
        },
        Kind::Udp => RouteLookup::Unicast {
            via: None,
            dev: FLANNEL,
            src: Some(ip("10.244.1.0")),
        },
    };
    worker.reader.routes.insert(ip(POD3), to_pod3);
    worker.reader.routes.insert(
        ip("172.18.0.100"),
        RouteLookup::Unicast {
            via: None,
            dev: ETH0,
            src: Some(ip(WORKER_IP)),
        },
    );
    match kind {
        Kind::Vxlan => {
            worker.reader.neigh.push(NeighRow {
                ip: ip("10.244.0.0"),
                dev: FLANNEL,
                mac: Some(mac(CP_VTEP)),
                state: "PERMANENT".into(),
            });
            worker.reader.fdb.push(FdbRow {
                mac: mac(CP_VTEP),
                dev: FLANNEL,
                dst: Some(ip(CP_IP)),
                master: None,
                own: true,
                permanent: true,
            });
        }
        Kind::HostGw => worker.reader.neigh.push(NeighRow {
            ip: ip(CP_IP),
            dev: ETH0,
            mac: Some(mac("02:00:00:00:00:03")),
            state: "REACHABLE".into(),
        }),
        Kind::Udp => {}
    }
    let rules = SnatRules::build(
        net("10.244.0.0/16"),
        net("10.244.1.0/24"),
        Options::default(),
    )
    .unwrap();
    let snapshot = NatMode::IptablesNft
        .backend(weft_nat::Family::V4)
        .expected(&rules);
    worker.reader.nat = Some((NatMode::IptablesNft, snapshot));
    cp.reader.routes.insert(
        ip(POD3),
        RouteLookup::Unicast {
            via: None,
            dev: CNI0,
            src: Some(ip("10.244.0.1")),
        },
    );
    cp.reader.neigh.push(NeighRow {
        ip: ip(POD3),
        dev: CNI0,
        mac: Some(mac(POD3_MAC)),
        state: "REACHABLE".into(),
    });
    cp.reader.fdb.push(FdbRow {
        mac: mac(POD3_MAC),
        dev: VETH,
        dst: None,
        master: Some(CNI0),
        own: false,
        permanent: false,
    });
    vec![
        pod("Pod-1", POD1, POD1_MAC, "10.244.1.1", VETH),
        worker,
        cp,
        pod("Pod-3", POD3, POD3_MAC, "10.244.0.1", VETH),
    ]
}

async fn trace(places: &[Place<Fake>], dst: &str) -> Trace {
    walk(places, &[], ip(POD1), ip(dst)).await.unwrap()
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn steps(t: &Trace) -> Vec<Step> {
    t.hops.iter().map(|h| h.step).collect()
}

/// The hop of `step`'s first output line.
fn line(t: &Trace, step: Step) -> String {
    let h = t.hops.iter().find(|h| h.step == step).unwrap();
    h.output.first().cloned().unwrap_or_default()
}

fn fault(t: &Trace) -> String {
    assert_eq!(t.end, End::Dropped, "{t}");
    t.fault().unwrap().1.fault.clone().unwrap()
}

#[test]
fn vxlan_walk_is_the_seeds() {
    let t = run(trace(&cluster(Kind::Vxlan), POD3));
    use Step::*;
    assert_eq!(
        steps(&t),
        [
            PodRoute,
            Bridge,
            NodeRoute,
            Neighbour,
            Fdb,
            Encapsulation,
            Vtep,
            DecapRoute,
            PodNeighbour,
            PodPort,
            Arrival
        ],
        "{t}"
    );
    // The seed's lines, value for value.
    assert_eq!(
        line(&t, PodRoute),
        "10.244.0.2 via 10.244.1.1 dev eth0 src 10.244.1.6"
    );
    assert_eq!(
        line(&t, NodeRoute),
        "10.244.0.2 via 10.244.0.0 dev flannel.1 src 10.244.1.0"
    );
    assert_eq!(
        line(&t, Neighbour),
        "10.244.0.0 dev flannel.1 lladdr 5a:11:99:ab:8c:22 PERMANENT"
    );
    assert_eq!(
        line(&t, Fdb),
        "5a:11:99:ab:8c:22 dev flannel.1 dst 172.18.0.3 self permanent"
    );
    assert!(
        t.hops[6]
            .output
            .iter()
            .any(|l| l.contains("link/ether 5a:11:99:ab:8c:22")),
        "{t}"
    );
    assert_eq!(t.hops[6].place, "control-plane");
    assert_eq!(line(&t, DecapRoute), "10.244.0.2 dev cni0 src 10.244.0.1");
    assert_eq!(
        line(&t, PodNeighbour),
        "10.244.0.2 dev cni0 lladdr 7e:46:23:43:6f:ec REACHABLE"
    );
    assert_eq!(
        line(&t, PodPort),
        "7e:46:23:43:6f:ec dev vethaabf9eb2 master cni0"
    );
    assert_eq!(line(&t, Arrival), "local 10.244.0.2 dev lo src 10.244.0.2");
    assert_eq!(
        t.hops[2].command.as_deref(),
        Some("ip route get 10.244.0.2")
    );
    assert_eq!(
        t.hops[3].command.as_deref(),
        Some("ip neigh get 10.244.0.0 dev flannel.1")
    );
    assert_eq!(
        t.end,
        End::Delivered {
            place: "Pod-3".into()
        }
    );
    assert!(t.fault().is_none());
}

#[test]
fn host_gw_walk_routes_to_the_node_itself() {
    let t = run(trace(&cluster(Kind::HostGw), POD3));
    use Step::*;
    assert_eq!(
        steps(&t),
        [
            PodRoute,
            Bridge,
            NodeRoute,
            Neighbour,
            DecapRoute,
            PodNeighbour,
            PodPort,
            Arrival
        ],
        "{t}"
    );
    assert_eq!(
        line(&t, NodeRoute),
        "10.244.0.2 via 172.18.0.3 dev eth0 src 172.18.0.2"
    );
    assert_eq!(t.hops[4].place, "control-plane");
    assert_eq!(
        t.end,
        End::Delivered {
            place: "Pod-3".into()
        }
    );
}

#[test]
fn udp_walk_names_the_kernel_path_where_it_runs() {
    let mut c = cluster(Kind::Udp);
    for p in c.iter_mut() {
        for f in p.status.iter_mut().flat_map(|s| s.families.iter_mut()) {
            f.overlay.data_path = Some(format!(
                "{}; super-packets unframed by weft-udp-rx (VXLAN, UDP port 8286)",
                weft_overlay::backend::KERNEL_PATH
            ));
        }
    }
    let t = run(trace(&c, POD3));
    let says = |step: Step| {
        t.hops
            .iter()
            .find(|h| h.step == step)
            .map(|h| h.says.clone())
            .unwrap_or_default()
    };
    assert!(says(Step::Encapsulation).contains("kernel path"), "{t}");
    assert!(
        says(Step::Forwarder).starts_with("weft's kernel path on worker"),
        "{t}"
    );
    assert!(says(Step::ForwarderPeer).contains("kernel path"), "{t}");
    assert_eq!(
        t.end,
        End::Delivered {
            place: "Pod-3".into()
        }
    );
    // Without it (the other test), the forwarder is named.
    let t = run(trace(&cluster(Kind::Udp), POD3));
    assert!(
        t.hops.iter().all(|h| !h.says.contains("kernel path")),
        "{t}"
    );
}

#[test]
fn udp_walk_goes_through_both_forwarders() {
    let t = run(trace(&cluster(Kind::Udp), POD3));
    use Step::*;
    assert_eq!(
        steps(&t),
        [
            PodRoute,
            Bridge,
            NodeRoute,
            Encapsulation,
            Forwarder,
            ForwarderPeer,
            DecapRoute,
            PodNeighbour,
            PodPort,
            Arrival
        ],
        "{t}"
    );
    assert_eq!(
        line(&t, NodeRoute),
        "10.244.0.2 dev flannel0 src 10.244.1.0"
    );
    assert_eq!(
        line(&t, Forwarder),
        "peer control-plane subnet 10.244.0.0/24 public-ip 172.18.0.3"
    );
    assert_eq!(
        line(&t, ForwarderPeer),
        "peer worker subnet 10.244.1.0/24 public-ip 172.18.0.2"
    );
    assert_eq!(
        t.end,
        End::Delivered {
            place: "Pod-3".into()
        }
    );
}

#[test]
fn a_missing_fdb_entry_is_the_fault() {
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.fdb.clear();
    let t = run(trace(&c, POD3));
    assert_eq!(
        fault(&t),
        "no FDB entry for 5a:11:99:ab:8c:22 on flannel.1: the packet is dropped here"
    );
    assert_eq!(t.hops.last().unwrap().step, Step::Fdb);
    assert!(t.to_string().contains("FAULT at hop 5 on worker"), "{t}");
}

#[test]
fn a_missing_or_dynamic_neighbour_is_the_fault() {
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.neigh.clear();
    let t = run(trace(&c, POD3));
    assert_eq!(
        fault(&t),
        "no PERMANENT neighbour for 10.244.0.0 on flannel.1: the packet is dropped here"
    );
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.neigh[0].state = "STALE".into();
    let t = run(trace(&c, POD3));
    assert!(fault(&t).starts_with("no PERMANENT neighbour"), "{t}");
}

#[test]
fn an_fdb_entry_to_the_wrong_host_is_the_fault() {
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.fdb[0].dst = Some(ip("172.18.0.99"));
    let t = run(trace(&c, POD3));
    assert_eq!(
        fault(&t),
        "the FDB sends 5a:11:99:ab:8c:22 to 172.18.0.99, but control-plane is at 172.18.0.3: the packet goes to the wrong host"
    );
}

#[test]
fn a_vtep_with_another_mac_is_the_fault() {
    let mut c = cluster(Kind::Vxlan);
    c[2].links
        .iter_mut()
        .find(|l| l.index == FLANNEL)
        .unwrap()
        .mac = Some(mac("02:00:00:00:00:99"));
    let t = run(trace(&c, POD3));
    assert_eq!(t.hops.last().unwrap().step, Step::Vtep);
    assert!(
        fault(&t).contains("has MAC 02:00:00:00:00:99, not 5a:11:99:ab:8c:22"),
        "{t}"
    );
}

#[test]
fn dual_stack_finds_the_vtep_of_the_packets_family() {
    let mut c = cluster(Kind::Vxlan);
    // control-plane's IPv4 device gets an underlay address, and an IPv6
    // device of the same VNI comes first.
    let v4 = c[2].links.iter_mut().find(|l| l.index == FLANNEL).unwrap();
    v4.kind = LinkKind::Vxlan {
        vni: Some(1),
        port: Some(8472),
        local: Some(ip(CP_IP)),
    };
    let mut v6 = link(
        9,
        "flannel-v6.1",
        LinkKind::Vxlan {
            vni: Some(1),
            port: Some(8472),
            local: Some(ip("fd00:18::3")),
        },
        &[],
    );
    v6.mac = Some(mac("02:00:00:00:00:66"));
    c[2].links.insert(0, v6);
    let t = run(trace(&c, POD3));
    assert!(t.fault().is_none(), "{t}");
    assert!(
        t.hops[6].command.as_deref() == Some("ip -d link show flannel.1"),
        "{t}"
    );
}

#[test]
fn no_route_on_the_node_is_the_fault() {
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.routes.remove(&ip(POD3));
    let t = run(trace(&c, POD3));
    assert_eq!(
        fault(&t),
        "worker has no route to 10.244.0.2: the packet is dropped here"
    );
    assert_eq!(
        line(&t, Step::NodeRoute),
        "RTNETLINK answers: Network is unreachable"
    );
}

#[test]
fn udp_without_a_peer_or_weftd_is_the_fault() {
    let mut c = cluster(Kind::Udp);
    c[1].status.as_mut().unwrap().families[0]
        .overlay
        .desired
        .forwards
        .clear();
    let t = run(trace(&c, POD3));
    assert!(fault(&t).contains("holds no peer for 10.244.0.2"), "{t}");
    let mut c = cluster(Kind::Udp);
    c[2].status = None;
    let t = run(trace(&c, POD3));
    assert!(
        fault(&t).starts_with("weftd does not answer on control-plane"),
        "{t}"
    );
    let mut c = cluster(Kind::Udp);
    c[2].status.as_mut().unwrap().families[0].peers.clear();
    let t = run(trace(&c, POD3));
    assert!(
        fault(&t).contains("does not know 172.18.0.2 as a peer"),
        "{t}"
    );
}

#[test]
fn outside_destinations_name_the_snat_rule() {
    let t = run(trace(&cluster(Kind::Vxlan), "172.18.0.100"));
    assert_eq!(t.hops.last().unwrap().step, Step::Snat, "{t}");
    let snat = t.hops.last().unwrap();
    assert_eq!(
        snat.command.as_deref(),
        Some("iptables-nft -t nat -S FLANNEL-POSTRTG")
    );
    assert!(
        snat.output[0].contains("-s 10.244.0.0/16 ! -d 224.0.0.0/4"),
        "{t}"
    );
    assert!(snat.output[0].contains("MASQUERADE --random-fully"), "{t}");
    assert!(snat.says.contains("masqueraded to 172.18.0.2"), "{t}");
    assert_eq!(
        t.end,
        End::LeavesCluster {
            dev: "eth0".into(),
            source: Some(ip(WORKER_IP))
        }
    );
    // The rule gone (another rule of flannel's still there): the fault.
    let mut c = cluster(Kind::Vxlan);
    let (_, snap) = c[1].reader.nat.as_mut().unwrap();
    snap.0
        .retain(|l| !l.contains("MASQUERADE") || l.contains("! -s"));
    let t = run(trace(&c, "172.18.0.100"));
    assert!(
        fault(&t).contains("is not in place: the packet leaves with its pod address 10.244.1.6"),
        "{t}"
    );
    // No rule at all in weftd's mode (weftd runs without --ip-masq): said
    // of that mode, the only one read.
    let mut c = cluster(Kind::Vxlan);
    c[1].reader.nat = None;
    let t = run(trace(&c, "172.18.0.100"));
    let says = &t.hops.last().unwrap().says;
    assert!(
        says.starts_with("weftd's NAT mode (iptables-nft) holds no flannel SNAT rules"),
        "{t}"
    );
}

#[test]
fn read_on_one_node_it_says_where_the_packet_leaves() {
    let c: Vec<_> = cluster(Kind::Vxlan).into_iter().skip(1).take(1).collect();
    let t = run(trace(&c, POD3));
    assert_eq!(t.hops[0].step, Step::PodRoute);
    assert!(t.hops[0].command.is_none());
    assert!(
        t.hops[0].says.contains("default via 10.244.1.1 dev eth0"),
        "{t}"
    );
    assert_eq!(
        t.end,
        End::LeavesNode {
            to: ip(CP_IP),
            node: Some("control-plane".into()),
            how: "VXLAN, VNI 1, UDP port 8472".into()
        }
    );
    assert!(t
        .to_string()
        .contains("run `weft trace 10.244.1.6 10.244.0.2` on control-plane"));
}

#[test]
fn read_on_the_destination_node_it_starts_where_the_packet_arrives() {
    let c: Vec<_> = cluster(Kind::Vxlan).into_iter().skip(2).take(1).collect();
    let t = run(trace(&c, POD3));
    use Step::*;
    assert_eq!(
        steps(&t),
        [Arrival, Vtep, DecapRoute, PodNeighbour, PodPort],
        "{t}"
    );
    assert_eq!(
        t.end,
        End::Delivered {
            place: "10.244.0.2 on control-plane".into()
        }
    );
    // Its VXLAN device down: the fault.
    let mut c: Vec<_> = cluster(Kind::Vxlan).into_iter().skip(2).take(1).collect();
    c[0].links
        .iter_mut()
        .find(|l| l.index == FLANNEL)
        .unwrap()
        .up = false;
    let t = run(trace(&c, POD3));
    assert_eq!(fault(&t), "flannel.1 is down: the packet is dropped here");
}

#[test]
fn mixed_families_are_refused() {
    let r = run(walk(&cluster(Kind::Vxlan), &[], ip(POD1), ip("fd00::1")));
    assert!(r.unwrap_err().contains("different address families"));
}

#[test]
fn lab_prefixes_are_dropped_from_place_names() {
    let names: Vec<String> = ["weft-12-pod1-1", "weft-12-lab-controlp", "weft-12-lab-out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(super::shared_prefix(&names), "weft-12-".len());
    assert_eq!(super::shared_prefix(&names[..1]), 0);
}
