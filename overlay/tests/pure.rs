//! Pure tests of the overlay's desired state and diff: no root, no kernel.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use weft_overlay::kernel::{route_of, Scope};
use weft_overlay::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

const MAC0: &str = "5a:11:99:ab:8c:22";
const MAC1: &str = "ce:0a:4f:22:a4:2a";

fn lease(node: &str, subnet: &str, public_ip: &str, mac: &str) -> Lease {
    Lease {
        node: node.into(),
        subnet: net(subnet),
        public_ip: ip(public_ip),
        backend_type: "vxlan".into(),
        backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
    }
}

/// The seed's cluster, seen from worker2 (10.244.2.0/24 on 172.18.0.2).
fn seed_leases() -> Vec<Lease> {
    vec![
        lease("control-plane", "10.244.0.0/24", "172.18.0.3", MAC0),
        lease("worker", "10.244.1.0/24", "172.18.0.4", MAC1),
        lease(
            "worker2",
            "10.244.2.0/24",
            "172.18.0.2",
            "aa:aa:aa:aa:aa:aa",
        ),
    ]
}

fn vxlan(direct_routing: bool) -> OverlayConfig {
    OverlayConfig {
        network: net("10.244.0.0/16"),
        backend: BackendConfig::from(VxlanConfig {
            direct_routing,
            ..VxlanConfig::default()
        }),
    }
}

fn host_gw() -> OverlayConfig {
    OverlayConfig {
        network: net("10.244.0.0/16"),
        backend: BackendConfig::from(weft_overlay::HostGw),
    }
}

fn local() -> LocalNode {
    LocalNode {
        name: "worker2".into(),
        subnet: net("10.244.2.0/24"),
        public_ip: ip("172.18.0.2"),
        underlay: "eth0".into(),
        vtep_mac: None,
    }
}

fn underlay() -> UnderlayFacts {
    UnderlayFacts {
        ifindex: 2,
        mtu: 1500,
        networks: vec![net("172.18.0.0/16")],
    }
}

fn vxlan_route(dst: &str) -> Route {
    let dst = net(dst);
    Route {
        dst,
        via: dst.network(),
        dev: Dev::Overlay,
        onlink: true,
        protocol: ROUTE_PROTOCOL,
    }
}

fn direct_route(dst: &str, via: &str) -> Route {
    Route {
        dst: net(dst),
        via: ip(via),
        dev: Dev::Underlay,
        onlink: false,
        protocol: ROUTE_PROTOCOL,
    }
}

/// Observed state equal to a desired one, with the device as the kernel would report it.
fn programmed(want: &OverlayState) -> Observed {
    Observed {
        device: want.device.as_ref().map(|d| {
            let link = d.link();
            ObservedDevice {
                ifindex: 7,
                kind: match d {
                    DeviceSpec::Vxlan(d) => ObservedKind::Vxlan(VxlanParams {
                        vni: Some(d.vni),
                        local: Some(d.local),
                        port: Some(d.port),
                        underlay: Some(d.underlay),
                        learning: Some(d.learning),
                    }),
                    DeviceSpec::Tun(_) => ObservedKind::Tun,
                },
                mtu: link.mtu,
                mac: Some(mac("0a:58:0a:f4:02:00")),
                up: true,
                addresses: vec![link.address],
            }
        }),
        entries: want.entries.clone(),
    }
}

#[test]
fn seed_tables_for_worker2() {
    let d = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    let e = &d.state.entries;
    assert_eq!(
        e.routes.values().copied().collect::<Vec<_>>(),
        vec![vxlan_route("10.244.0.0/24"), vxlan_route("10.244.1.0/24")]
    );
    assert_eq!(
        e.neighbours.values().copied().collect::<Vec<_>>(),
        vec![
            Neighbour {
                ip: ip("10.244.0.0"),
                mac: mac(MAC0)
            },
            Neighbour {
                ip: ip("10.244.1.0"),
                mac: mac(MAC1)
            }
        ]
    );
    assert_eq!(
        e.fdb.values().copied().collect::<Vec<_>>(),
        vec![
            FdbEntry {
                mac: mac(MAC0),
                dst: ip("172.18.0.3")
            },
            FdbEntry {
                mac: mac(MAC1),
                dst: ip("172.18.0.4")
            }
        ]
    );
    let dev = d.state.device.expect("vxlan has a device");
    let dev = dev.vxlan().unwrap();
    assert_eq!(dev.name, "flannel.1");
    assert_eq!(
        (dev.vni, dev.port, dev.mtu, dev.learning),
        (1, 8472, 1450, false)
    );
    assert_eq!(dev.local, ip("172.18.0.2"));
    assert_eq!(dev.address, net("10.244.2.0/32"));
    assert_eq!(dev.underlay, 2);
}

/// `Backend.MTU` stands for the underlay's MTU when the path carries less
/// than the interface says; it never raises the device above what the
/// interface carries (the kernel caps a VXLAN device at its lower device's
/// MTU − 50 and refuses more: every reconcile would fail).
#[test]
fn backend_mtu_lowers_the_device_mtu_never_above_the_underlay() {
    let mtu_with = |mtu| {
        let mut cfg = vxlan(false);
        cfg.backend = BackendConfig::from(VxlanConfig {
            mtu: Some(mtu),
            ..VxlanConfig::default()
        });
        let d = desired(&cfg, &local(), &underlay(), &[]);
        d.state.device.unwrap().vxlan().unwrap().mtu
    };
    assert_eq!(mtu_with(1400), 1350);
    assert_eq!(mtu_with(9001), 1450, "the underlay carries 1500");
    let jumbo = UnderlayFacts {
        mtu: 9001,
        ..underlay()
    };
    let mut cfg = vxlan(false);
    cfg.backend = BackendConfig::from(VxlanConfig::default());
    let d = desired(&cfg, &local(), &jumbo, &[]);
    assert_eq!(d.state.device.unwrap().vxlan().unwrap().mtu, 8951);
}

#[test]
fn direct_routing_uses_plain_routes_on_link_only() {
    let mut leases = seed_leases();
    leases.push(lease(
        "far",
        "10.244.9.0/24",
        "192.168.50.9",
        "02:00:00:00:00:09",
    ));
    let d = desired(&vxlan(true), &local(), &underlay(), &leases);
    assert!(d.rejected.is_empty());
    let e = &d.state.entries;
    assert_eq!(
        e.routes[&net("10.244.0.0/24")],
        direct_route("10.244.0.0/24", "172.18.0.3")
    );
    assert_eq!(
        e.routes[&net("10.244.1.0/24")],
        direct_route("10.244.1.0/24", "172.18.0.4")
    );
    assert_eq!(
        e.routes[&net("10.244.9.0/24")],
        vxlan_route("10.244.9.0/24")
    );
    // Only the far peer needs the overlay's neighbour and FDB entries.
    assert_eq!(
        e.neighbours.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.244.9.0")]
    );
    assert_eq!(e.fdb.len(), 1);
}

#[test]
fn host_gw_routes_via_node_ips_and_rejects_off_link_peers() {
    let mut leases: Vec<Lease> = seed_leases()
        .into_iter()
        .map(|l| Lease {
            backend_type: "host-gw".into(),
            backend_data: "null".into(),
            ..l
        })
        .collect();
    leases.push(Lease {
        node: "far".into(),
        subnet: net("10.244.9.0/24"),
        public_ip: ip("192.168.50.9"),
        ..leases[0].clone()
    });
    let d = desired(&host_gw(), &local(), &underlay(), &leases);
    assert!(d.state.device.is_none());
    assert_eq!(
        d.state.entries.routes.values().copied().collect::<Vec<_>>(),
        vec![
            direct_route("10.244.0.0/24", "172.18.0.3"),
            direct_route("10.244.1.0/24", "172.18.0.4")
        ]
    );
    assert!(d.state.entries.neighbours.is_empty() && d.state.entries.fdb.is_empty());
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(
        (d.rejected[0].node.as_str(), d.rejected[0].field),
        ("far", "public-ip")
    );
}

#[test]
fn bad_leases_are_skipped_with_node_and_field_and_the_rest_programmed() {
    let mut leases = seed_leases();
    let bad = [
        lease(
            "bad-mac",
            "10.244.5.0/24",
            "172.18.0.5",
            "zz:11:99:ab:8c:22",
        ),
        lease("outside", "10.99.0.0/24", "172.18.0.6", "02:00:00:00:00:06"),
        lease(
            "same-as-own",
            "10.244.2.0/24",
            "172.18.0.7",
            "02:00:00:00:00:07",
        ),
        lease(
            "overlap",
            "10.244.0.0/23",
            "172.18.0.8",
            "02:00:00:00:00:08",
        ),
        lease("dup-mac", "10.244.8.0/24", "172.18.0.9", MAC0),
        lease("bad-ip", "10.244.10.0/24", "0.0.0.0", "02:00:00:00:00:10"),
        lease(
            "host-bits",
            "10.244.11.5/24",
            "172.18.0.11",
            "02:00:00:00:00:11",
        ),
        Lease {
            backend_type: "wireguard".into(),
            ..lease(
                "other-backend",
                "10.244.12.0/24",
                "172.18.0.12",
                "02:00:00:00:00:12",
            )
        },
        Lease {
            backend_data: "{".into(),
            ..lease("garbage", "10.244.13.0/24", "172.18.0.13", "x")
        },
        Lease {
            backend_data: r#"{"VNI":7,"VtepMAC":"02:00:00:00:00:14"}"#.into(),
            ..lease("vni", "10.244.14.0/24", "172.18.0.14", "x")
        },
    ];
    leases.extend(bad);
    leases.push(lease(
        "good-late",
        "10.244.3.0/24",
        "172.18.0.20",
        "02:00:00:00:00:20",
    ));
    let d = desired(&vxlan(false), &local(), &underlay(), &leases);
    let got: Vec<(&str, &str)> = d
        .rejected
        .iter()
        .map(|e| (e.node.as_str(), e.field))
        .collect();
    assert_eq!(
        got,
        vec![
            ("bad-mac", "backend-data.VtepMAC"),
            ("outside", "podCIDR"),
            ("same-as-own", "podCIDR"),
            ("overlap", "podCIDR"),
            ("dup-mac", "backend-data.VtepMAC"),
            ("bad-ip", "public-ip"),
            ("host-bits", "podCIDR"),
            ("other-backend", "backend-type"),
            ("garbage", "backend-data"),
            ("vni", "backend-data.VNI"),
        ]
    );
    // The messages name node and field in words a user can act on.
    let overlap = d
        .rejected
        .iter()
        .find(|e| e.node == "overlap")
        .unwrap()
        .to_string();
    assert_eq!(
        overlap,
        "node overlap: podCIDR: subnet 10.244.0.0/23 overlaps 10.244.0.0/24 of node control-plane"
    );
    assert!(d.rejected[0].to_string().contains("zz:11:99:ab:8c:22"));
    // Every good peer is programmed, the bad ones left no trace.
    assert_eq!(
        d.state.entries.routes.keys().copied().collect::<Vec<_>>(),
        vec![
            net("10.244.0.0/24"),
            net("10.244.1.0/24"),
            net("10.244.3.0/24")
        ]
    );
    assert_eq!(d.state.entries.fdb.len(), 3);
    assert_eq!(d.state.entries.neighbours.len(), 3);
}

#[test]
fn first_of_two_overlapping_peers_keeps_its_place() {
    let leases = vec![
        lease("old", "10.244.0.0/24", "172.18.0.3", MAC0),
        lease("new", "10.244.0.0/24", "172.18.0.4", MAC1),
    ];
    let d = desired(&vxlan(false), &local(), &underlay(), &leases);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].node, "new");
    assert_eq!(
        d.state.entries.fdb.values().next().unwrap().dst,
        ip("172.18.0.3")
    );
}

#[test]
fn empty_kernel_gets_everything_added_then_nothing() {
    let d = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let plan = diff(&d.state, &Observed::default());
    assert!(matches!(plan.device.as_slice(), [DeviceOp::Create(_)]));
    assert_eq!(
        (
            plan.routes.add.len(),
            plan.neighbours.add.len(),
            plan.fdb.add.len()
        ),
        (2, 2, 2)
    );
    assert_eq!(plan.writes(), 7);
    // Once programmed (or after a restart on a programmed node): nothing to write.
    let again = diff(&d.state, &programmed(&d.state));
    assert!(again.is_empty(), "{again}");
    assert_eq!(again.writes(), 0);
}

#[test]
fn removing_a_peer_deletes_its_route_neighbour_and_fdb_entry() {
    let all = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let fewer = desired(&vxlan(false), &local(), &underlay(), &seed_leases()[1..]);
    let plan = diff(&fewer.state, &programmed(&all.state));
    assert!(plan.routes.add.is_empty() && plan.routes.replace.is_empty());
    assert_eq!(plan.routes.delete, vec![vxlan_route("10.244.0.0/24")]);
    assert_eq!(
        plan.neighbours.delete,
        vec![Neighbour {
            ip: ip("10.244.0.0"),
            mac: mac(MAC0)
        }]
    );
    assert_eq!(
        plan.fdb.delete,
        vec![FdbEntry {
            mac: mac(MAC0),
            dst: ip("172.18.0.3")
        }]
    );
    assert_eq!(plan.writes(), 3);
}

#[test]
fn changed_mac_replaces_the_neighbour_in_place_and_moves_the_fdb_entry() {
    let before = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let mut leases = seed_leases();
    leases[0] = lease(
        "control-plane",
        "10.244.0.0/24",
        "172.18.0.3",
        "02:12:34:56:78:9a",
    );
    let after = desired(&vxlan(false), &local(), &underlay(), &leases);
    let plan = diff(&after.state, &programmed(&before.state));
    // The neighbour keeps its key (the IP) and is rewritten in place.
    assert!(plan.neighbours.add.is_empty() && plan.neighbours.delete.is_empty());
    assert_eq!(
        plan.neighbours.replace,
        vec![Neighbour {
            ip: ip("10.244.0.0"),
            mac: mac("02:12:34:56:78:9a")
        }]
    );
    // The kernel keys FDB entries by MAC: the new one is added (before) the old one goes.
    assert_eq!(
        plan.fdb.add,
        vec![FdbEntry {
            mac: mac("02:12:34:56:78:9a"),
            dst: ip("172.18.0.3")
        }]
    );
    assert_eq!(
        plan.fdb.delete,
        vec![FdbEntry {
            mac: mac(MAC0),
            dst: ip("172.18.0.3")
        }]
    );
    assert!(plan.routes.is_empty(), "the route does not change");
    assert!(plan.device.is_empty());
}

#[test]
fn changed_node_ip_replaces_the_fdb_entry_in_place() {
    let before = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let mut leases = seed_leases();
    leases[0].public_ip = ip("172.18.0.33");
    let after = desired(&vxlan(false), &local(), &underlay(), &leases);
    let plan = diff(&after.state, &programmed(&before.state));
    assert_eq!(
        plan.fdb.replace,
        vec![FdbEntry {
            mac: mac(MAC0),
            dst: ip("172.18.0.33")
        }]
    );
    assert_eq!(plan.writes(), 1);
}

#[test]
fn vxlan_to_host_gw_switch_replaces_routes_in_place() {
    let vx = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let leases: Vec<Lease> = seed_leases()
        .into_iter()
        .map(|l| Lease {
            backend_type: "host-gw".into(),
            ..l
        })
        .collect();
    let hg = desired(&host_gw(), &local(), &underlay(), &leases);
    // host-gw does not look at the VXLAN device; its routes replace the VXLAN ones by key.
    let observed = Observed {
        device: None,
        entries: vx.state.entries.clone(),
    };
    let plan = diff(&hg.state, &observed);
    assert!(
        plan.routes.add.is_empty() && plan.routes.delete.is_empty(),
        "{plan}"
    );
    assert_eq!(
        plan.routes.replace,
        vec![
            direct_route("10.244.0.0/24", "172.18.0.3"),
            direct_route("10.244.1.0/24", "172.18.0.4")
        ]
    );
    // And back: replace again, no delete + add.
    let back = diff(
        &vx.state,
        &programmed(&OverlayState {
            device: vx.state.device.clone(),
            entries: hg.state.entries.clone(),
        }),
    );
    assert!(back.routes.add.is_empty() && back.routes.delete.is_empty());
    assert_eq!(back.routes.replace.len(), 2);
}

#[test]
fn flannel_routes_on_the_device_are_adopted_not_duplicated() {
    let d = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let mut observed = programmed(&d.state);
    // flannel's routes carry no protocol tag.
    for r in observed.entries.routes.values_mut() {
        r.protocol = 0;
    }
    let plan = diff(&d.state, &observed);
    assert!(plan.routes.add.is_empty() && plan.routes.delete.is_empty());
    assert_eq!(plan.routes.replace.len(), 2, "retagged in place");
}

#[test]
fn device_changes_in_place_and_recreation() {
    let d = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let base = programmed(&d.state);

    let mut o = base.clone();
    let dev = o.device.as_mut().unwrap();
    dev.mtu = 1400;
    dev.up = false;
    dev.addresses = vec![net("10.244.7.0/32"), net("192.0.2.1/24")];
    let plan = diff(&d.state, &o);
    assert_eq!(
        plan.device,
        vec![
            DeviceOp::SetMtu(1450),
            DeviceOp::DelAddress(net("10.244.7.0/32")),
            DeviceOp::AddAddress(net("10.244.2.0/32")),
            DeviceOp::SetUp
        ],
        "a foreign address outside the cluster network stays"
    );
    assert!(
        plan.routes.is_empty() && plan.fdb.is_empty(),
        "entries untouched by in-place device changes"
    );

    for change in [
        (|d: &mut ObservedDevice| d.vxlan_mut().unwrap().vni = Some(2)) as fn(&mut ObservedDevice),
        |d| d.vxlan_mut().unwrap().local = Some(ip("172.18.0.99")),
        |d| d.vxlan_mut().unwrap().port = Some(4789),
        |d| d.vxlan_mut().unwrap().underlay = Some(9),
        |d| d.kind = ObservedKind::Other,
    ] {
        let mut o = base.clone();
        change(o.device.as_mut().unwrap());
        let plan = diff(&d.state, &o);
        assert!(
            matches!(
                plan.device.as_slice(),
                [DeviceOp::Recreate { ifindex: 7, .. }]
            ),
            "{:?}",
            plan.device
        );
        // A new device starts empty, so every entry is (re)added.
        assert_eq!(
            (
                plan.routes.add.len(),
                plan.neighbours.add.len(),
                plan.fdb.add.len()
            ),
            (2, 2, 2)
        );
        assert!(plan.routes.delete.is_empty());
    }

    let mut with_mac = d.state.clone();
    with_mac.device.as_mut().unwrap().vxlan_mut().unwrap().mac = Some(mac("02:aa:bb:cc:dd:ee"));
    assert_eq!(
        diff(&with_mac, &base).device,
        vec![DeviceOp::SetMac(mac("02:aa:bb:cc:dd:ee"))]
    );
}

#[test]
fn plan_apply_to_tracks_the_kernel() {
    let d = desired(&vxlan(false), &local(), &underlay(), &seed_leases());
    let mut entries = Entries::default();
    diff(&d.state, &Observed::default()).apply_to(&mut entries);
    assert_eq!(entries, d.state.entries);
    let fewer = desired(&vxlan(false), &local(), &underlay(), &seed_leases()[1..]);
    let o = Observed {
        device: programmed(&d.state).device,
        entries: entries.clone(),
    };
    diff(&fewer.state, &o).apply_to(&mut entries);
    assert_eq!(entries, fewer.state.entries);
}

fn route_msg(
    dst: &str,
    via: &str,
    oif: u32,
    protocol: RouteProtocol,
    onlink: bool,
) -> RouteMessage {
    let dst: ipnet::Ipv4Net = dst.parse().unwrap();
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = 254;
    m.header.protocol = protocol;
    m.header.kind = RouteType::Unicast;
    if onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            dst.network(),
        )));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(ip4(via))));
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

#[test]
fn only_weft_routes_and_flannel_leftovers_on_the_device_are_managed() {
    let scope = Scope {
        network: net("10.244.0.0/16"),
        overlay: Some(7),
        underlay: 2,
    };
    let weft = RouteProtocol::from(ROUTE_PROTOCOL);
    // weft's own, on either device.
    assert_eq!(
        route_of(
            &route_msg("10.244.0.0/24", "10.244.0.0", 7, weft, true),
            &scope
        ),
        Some(vxlan_route("10.244.0.0/24"))
    );
    assert!(route_of(
        &route_msg("10.244.0.0/24", "172.18.0.3", 2, weft, false),
        &scope
    )
    .is_some());
    // flannel's leftover on flannel.1: adopted.
    let adopted = route_of(
        &route_msg(
            "10.244.0.0/24",
            "10.244.0.0",
            7,
            RouteProtocol::Unspec,
            true,
        ),
        &scope,
    )
    .unwrap();
    assert_eq!(adopted.protocol, 0);
    // Foreign: a user's static route in the cluster network on the underlay, the
    // kernel's route for the own cni0 subnet, anything outside the cluster network.
    assert_eq!(
        route_of(
            &route_msg(
                "10.244.5.0/24",
                "172.18.0.9",
                2,
                RouteProtocol::Static,
                false
            ),
            &scope
        ),
        None
    );
    assert_eq!(
        route_of(
            &route_msg("10.244.2.0/24", "0.0.0.0", 5, RouteProtocol::Kernel, false),
            &scope
        ),
        None
    );
    assert_eq!(
        route_of(
            &route_msg("10.99.0.0/24", "172.18.0.9", 2, weft, false),
            &scope
        ),
        None
    );
    // Another table is never weft's.
    let mut other_table = route_msg("10.244.0.0/24", "10.244.0.0", 7, weft, true);
    other_table.header.table = 100;
    assert_eq!(route_of(&other_table, &scope), None);
}

/// The kernel gives every IPv6 route a metric, 1024 when the request names
/// none (as weft's and flannel's do): such a route is weft's; one with
/// another metric, or an IPv6 route without one, is not.
#[test]
fn ipv6_routes_are_managed_at_the_kernels_default_metric() {
    let scope = Scope {
        network: net("fd00:10:244::/56"),
        overlay: Some(7),
        underlay: 2,
    };
    let v6_route = |priority: Option<u32>| {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.destination_prefix_length = 64;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::Onlink;
        let dst: std::net::Ipv6Addr = "fd00:10:244:1::".parse().unwrap();
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(dst)));
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(dst)));
        m.attributes.push(RouteAttribute::Oif(7));
        m.attributes.extend(priority.map(RouteAttribute::Priority));
        m
    };
    let r = route_of(&v6_route(Some(1024)), &scope).unwrap();
    assert_eq!(
        (r.dst, r.via, r.dev, r.onlink),
        (
            net("fd00:10:244:1::/64"),
            ip("fd00:10:244:1::"),
            Dev::Overlay,
            true
        )
    );
    assert_eq!(route_of(&v6_route(Some(100)), &scope), None);
    assert_eq!(route_of(&v6_route(None), &scope), None);
    // IPv4 routes carry no metric by default; one with a metric is not weft's.
    let v4 = Scope {
        network: net("10.244.0.0/16"),
        ..scope
    };
    let mut m = route_msg(
        "10.244.0.0/24",
        "10.244.0.0",
        7,
        RouteProtocol::from(ROUTE_PROTOCOL),
        true,
    );
    assert!(route_of(&m, &v4).is_some());
    m.attributes.push(RouteAttribute::Priority(1024));
    assert_eq!(route_of(&m, &v4), None);
}

/// worker2 of an IPv6 cluster: its node and underlay.
fn v6_node() -> (LocalNode, UnderlayFacts) {
    (
        LocalNode {
            name: "worker2".into(),
            subnet: net("fd00:10:244:2::/64"),
            public_ip: ip("fd00:172:18::2"),
            underlay: "eth0".into(),
            vtep_mac: None,
        },
        UnderlayFacts {
            ifindex: 2,
            mtu: 1500,
            networks: vec![net("fd00:172:18::/64")],
        },
    )
}

/// The same cluster in IPv6 (flannel's `IPv6Network`, `backend-v6-data`,
/// `public-ipv6`): the same code gives flannel's v6 tables — device
/// `flannel-v6.1` with its VTEP on the node's IPv6 address and the subnet's
/// network address as /128; per peer an onlink route via the subnet's
/// network address, a PERMANENT neighbour and an FDB entry to the peer's
/// IPv6 address.
#[test]
fn ipv6_vxlan_gives_flannels_v6_tables() {
    let config = OverlayConfig {
        network: net("fd00:10:244::/56"),
        backend: BackendConfig::from(VxlanConfig::default()),
    };
    let (me, under) = v6_node();
    let leases = vec![
        lease("control-plane", "fd00:10:244::/64", "fd00:172:18::3", MAC0),
        lease("worker", "fd00:10:244:1::/64", "fd00:172:18::4", MAC1),
    ];
    let d = desired(&config, &me, &under, &leases);
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    let dev = d.state.device.as_ref().unwrap().vxlan().unwrap();
    assert_eq!(dev.name, "flannel-v6.1");
    assert_eq!(dev.local, ip("fd00:172:18::2"));
    assert_eq!(dev.address, net("fd00:10:244:2::/128"));
    assert_eq!(
        dev.mtu, 1430,
        "flannel asks for underlay − 50 in IPv6 too, the kernel makes it − 70"
    );
    let r = d.state.entries.routes[&net("fd00:10:244:1::/64")];
    assert_eq!(
        (r.via, r.dev, r.onlink),
        (ip("fd00:10:244:1::"), Dev::Overlay, true)
    );
    let n = d.state.entries.neighbours[&ip("fd00:10:244:1::")];
    assert_eq!(n.mac, mac(MAC1));
    let f = d.state.entries.fdb[&mac(MAC1)];
    assert_eq!(f.dst, ip("fd00:172:18::4"));
    // The diff against a fresh node creates everything; against itself, nothing.
    let plan = diff(&d.state, &Observed::default());
    assert_eq!(plan.writes(), 1 + 6);
    assert!(diff(&d.state, &programmed(&d.state)).is_empty());
}

/// An IPv6 VTEP's device gets the underlay's MTU (or a smaller
/// `Backend.MTU`) − 70, what the kernel allows it, never more than the
/// underlay carries; IPv4 keeps flannel's − 50.
#[test]
fn ipv6_vxlan_device_mtu_is_what_the_kernel_allows() {
    let (me, under) = v6_node();
    let config = |mtu| OverlayConfig {
        network: net("fd00:10:244::/56"),
        backend: BackendConfig::from(VxlanConfig {
            mtu,
            ..VxlanConfig::default()
        }),
    };
    let mtu_of = |c: &OverlayConfig, me: &LocalNode| {
        desired(c, me, &under, &[])
            .state
            .device
            .unwrap()
            .vxlan()
            .unwrap()
            .mtu
    };
    assert_eq!(mtu_of(&config(None), &me), 1430);
    assert_eq!(mtu_of(&config(Some(9001)), &me), 1430);
    assert_eq!(mtu_of(&config(Some(1400)), &me), 1330);
    let v4_vtep = LocalNode {
        public_ip: ip("172.18.0.2"),
        ..me.clone()
    };
    assert_eq!(mtu_of(&config(None), &v4_vtep), 1450);
}

/// IPv6 leases are checked like IPv4 ones: outside the network, overlapping,
/// or of the other family, they are skipped with the node and the field.
#[test]
fn bad_ipv6_leases_are_skipped_naming_node_and_field() {
    let config = OverlayConfig {
        network: net("fd00:10:244::/56"),
        backend: BackendConfig::from(weft_overlay::HostGw),
    };
    let (me, under) = v6_node();
    let host_gw = |node: &str, subnet: &str, public_ip: &str| Lease {
        backend_type: "host-gw".into(),
        backend_data: "null".into(),
        ..lease(node, subnet, public_ip, MAC0)
    };
    let leases = vec![
        host_gw("good", "fd00:10:244:1::/64", "fd00:172:18::4"),
        host_gw("outside", "fd00:99::/64", "fd00:172:18::5"),
        host_gw("overlap", "fd00:10:244:1::/72", "fd00:172:18::6"),
        host_gw("v4", "10.244.7.0/24", "172.18.0.7"),
    ];
    let d = desired(&config, &me, &under, &leases);
    assert_eq!(d.state.entries.routes.len(), 1);
    let r = d.state.entries.routes[&net("fd00:10:244:1::/64")];
    assert_eq!(
        (r.via, r.dev, r.onlink),
        (ip("fd00:172:18::4"), Dev::Underlay, false)
    );
    let why: Vec<(String, &str)> = d
        .rejected
        .iter()
        .map(|e| (e.node.clone(), e.field))
        .collect();
    assert_eq!(
        why,
        [
            ("outside".to_string(), "podCIDR"),
            ("overlap".to_string(), "podCIDR"),
            ("v4".to_string(), "podCIDR"),
        ]
    );
}

fn udp() -> OverlayConfig {
    OverlayConfig {
        network: net("10.244.0.0/16"),
        backend: BackendConfig::from(UdpConfig::default()),
    }
}

fn udp_lease(node: &str, subnet: &str, public_ip: &str) -> Lease {
    Lease {
        node: node.into(),
        subnet: net(subnet),
        public_ip: ip(public_ip),
        backend_type: "udp".into(),
        backend_data: "null".into(),
    }
}

/// flannel's udp backend: flannel0 (TUN, MTU − 28, the subnet's network
/// address with the cluster prefix), the whole network routed into it, and
/// per peer no kernel object but a line of the forwarder's table.
#[test]
fn udp_gives_flannel0_one_network_route_and_a_forwarder_line_per_peer() {
    let d = desired(
        &udp(),
        &local(),
        &underlay(),
        &[
            udp_lease("control-plane", "10.244.0.0/24", "172.18.0.3"),
            udp_lease("worker", "10.244.1.0/24", "172.18.0.4"),
            lease("vx", "10.244.9.0/24", "172.18.0.9", "02:00:00:00:00:09"),
        ],
    );
    let dev = d.state.device.clone().expect("a device");
    assert_eq!(
        dev,
        DeviceSpec::Tun(TunDevice {
            name: "flannel0".into(),
            mtu: 1472,
            address: net("10.244.2.0/16"),
            network: net("10.244.0.0/16"),
            offload: true,
        })
    );
    let e = &d.state.entries;
    assert_eq!(
        e.routes.values().copied().collect::<Vec<_>>(),
        [Route {
            dst: net("10.244.0.0/16"),
            via: ip("0.0.0.0"),
            dev: Dev::Overlay,
            onlink: false,
            protocol: ROUTE_PROTOCOL,
        }],
        "the network's route only"
    );
    assert!(e.neighbours.is_empty() && e.fdb.is_empty());
    assert_eq!(
        e.forwards.values().copied().collect::<Vec<_>>(),
        [
            Forward {
                subnet: net("10.244.0.0/24"),
                to: ip("172.18.0.3"),
            },
            Forward {
                subnet: net("10.244.1.0/24"),
                to: ip("172.18.0.4"),
            },
        ]
    );
    // A vxlan lease in a udp cluster is skipped, named.
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(
        (d.rejected[0].node.as_str(), d.rejected[0].field),
        ("vx", "backend-type")
    );
    // Applied to an empty kernel: the device and one route; to itself: nothing.
    let plan = diff(&d.state, &Observed::default());
    assert_eq!(plan.writes(), 1 + 1);
    assert!(diff(&d.state, &programmed(&d.state)).is_empty());
    // What pods get, and what the node publishes.
    let b = udp().backend;
    assert_eq!(b.backend().mtu(1500, Family::V4), 1472);
    assert_eq!(b.backend().backend_data(None).as_deref(), Some("null"));
    assert!(!b.backend().supports(Family::V6));
}

/// Incremental: a peer removed leaves the forwarder's table at once; the
/// network route stays through every rebuild.
#[test]
fn udp_peers_come_and_go_from_the_forwarders_table() {
    let mut peers = Peers::new(udp(), local(), Some(underlay()));
    peers.upsert(udp_lease("a", "10.244.0.0/24", "172.18.0.3"));
    peers.upsert(udp_lease("b", "10.244.1.0/24", "172.18.0.4"));
    assert_eq!(peers.entries().forwards.len(), 2);
    peers.remove("a");
    assert_eq!(
        peers.entries().forwards.keys().copied().collect::<Vec<_>>(),
        [net("10.244.1.0/24")]
    );
    // A conflicting lease forces a rebuild; the device route is still there.
    peers.upsert(udp_lease("c", "10.244.0.0/23", "172.18.0.5"));
    peers.remove("b");
    assert!(peers.entries().routes.contains_key(&net("10.244.0.0/16")));
    assert_eq!(
        peers.entries().forwards.keys().copied().collect::<Vec<_>>(),
        [net("10.244.0.0/23")]
    );
}
