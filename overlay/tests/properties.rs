//! Properties of the overlay's diff, over random desired and observed
//! tables (proptest): the plan turns what is observed into what is desired,
//! a state diffed with itself needs nothing, and a plan only ever deletes
//! what was observed (the kernel view holds only weft's objects, so nothing
//! foreign can be in a plan) and only writes what is desired.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_overlay::*;

/// A small key space, so desired and observed share keys often (replaces).
fn route() -> impl Strategy<Value = Route> {
    (0u8..24, 0u8..3, any::<bool>(), 0u8..2).prop_map(|(n, gw, onlink, dev)| Route {
        dst: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24)
            .unwrap()
            .into(),
        via: Ipv4Addr::new(10, 244, n, gw).into(),
        dev: if dev == 0 {
            Dev::Overlay
        } else {
            Dev::Underlay
        },
        onlink,
        protocol: ROUTE_PROTOCOL,
    })
}

fn mac(b: u8) -> MacAddr {
    format!("02:00:00:00:00:{b:02x}").parse().unwrap()
}

fn neighbour() -> impl Strategy<Value = Neighbour> {
    (0u8..24, 0u8..6).prop_map(|(n, m)| Neighbour {
        ip: Ipv4Addr::new(10, 244, n, 0).into(),
        mac: mac(m),
    })
}

fn fdb() -> impl Strategy<Value = FdbEntry> {
    (0u8..24, 0u8..6).prop_map(|(m, d)| FdbEntry {
        mac: mac(m),
        dst: Ipv4Addr::new(172, 18, 0, d).into(),
    })
}

fn entries() -> impl Strategy<Value = Entries> {
    (
        proptest::collection::vec(route(), 0..20),
        proptest::collection::vec(neighbour(), 0..20),
        proptest::collection::vec(fdb(), 0..20),
    )
        .prop_map(|(rs, ns, fs)| {
            let mut e = Entries::default();
            rs.into_iter().for_each(|r| e.put_route(r));
            ns.into_iter().for_each(|n| e.put_neighbour(n));
            fs.into_iter().for_each(|f| e.put_fdb(f));
            e
        })
}

fn device() -> VxlanDevice {
    VxlanDevice {
        name: "flannel.1".into(),
        vni: 1,
        local: Ipv4Addr::new(172, 18, 0, 2).into(),
        port: 8472,
        underlay: 2,
        learning: false,
        mtu: 1450,
        mac: None,
        address: "10.244.2.0/32".parse().unwrap(),
        network: "10.244.0.0/16".parse().unwrap(),
    }
}

/// Desired and observed: without a device (host-gw), or a desired device
/// that does not exist yet (the plan creates it: what was on the overlay
/// is gone with the old one).
fn states() -> impl Strategy<Value = (OverlayState, Observed)> {
    (entries(), entries(), any::<bool>()).prop_map(|(want, have, with_device)| {
        (
            OverlayState {
                device: with_device.then(|| DeviceSpec::Vxlan(device())),
                entries: want,
            },
            Observed {
                device: None,
                entries: have,
            },
        )
    })
}

proptest! {
    #[test]
    fn the_plan_turns_observed_into_desired((desired, observed) in states()) {
        let plan = diff(&desired, &observed);
        let mut after = observed.entries.clone();
        plan.apply_to(&mut after);
        prop_assert_eq!(after, desired.entries);
    }

    #[test]
    fn a_state_needs_nothing_against_itself(e in entries()) {
        let desired = OverlayState { device: None, entries: e.clone() };
        let observed = Observed { device: None, entries: e };
        let plan = diff(&desired, &observed);
        prop_assert!(plan.is_empty(), "{:?}", plan);
        prop_assert_eq!(plan.writes(), 0);
    }

    #[test]
    fn a_plan_deletes_only_what_was_observed_and_writes_only_what_is_desired(
        (desired, observed) in states()
    ) {
        let plan = diff(&desired, &observed);
        for r in &plan.routes.delete {
            prop_assert_eq!(observed.entries.routes.get(&r.dst), Some(r));
        }
        for n in &plan.neighbours.delete {
            prop_assert_eq!(observed.entries.neighbours.get(&n.ip), Some(n));
        }
        for f in &plan.fdb.delete {
            prop_assert_eq!(observed.entries.fdb.get(&f.mac), Some(f));
        }
        for r in plan.routes.add.iter().chain(&plan.routes.replace) {
            prop_assert_eq!(desired.entries.routes.get(&r.dst), Some(r));
        }
        for n in plan.neighbours.add.iter().chain(&plan.neighbours.replace) {
            prop_assert_eq!(desired.entries.neighbours.get(&n.ip), Some(n));
        }
        for f in plan.fdb.add.iter().chain(&plan.fdb.replace) {
            prop_assert_eq!(desired.entries.fdb.get(&f.mac), Some(f));
        }
    }
}

/// The keys at which two entry tables differ.
fn differing(a: &Entries, b: &Entries) -> Touched {
    fn keys<K: Ord + Clone, V: PartialEq>(
        a: &std::collections::BTreeMap<K, V>,
        b: &std::collections::BTreeMap<K, V>,
    ) -> std::collections::BTreeSet<K> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    }
    Touched {
        all: false,
        routes: keys(&a.routes, &b.routes),
        neighbours: keys(&a.neighbours, &b.neighbours),
        fdb: keys(&a.fdb, &b.fdb),
    }
}

proptest! {
    /// Diffing only the keys that differ gives the plan of the full diff.
    #[test]
    fn the_plan_at_the_differing_keys_is_the_full_plan((desired, observed) in states()) {
        let keys = differing(&desired.entries, &observed.entries);
        let at_keys = plan(desired.device.as_ref(), &desired.entries, &observed, &keys);
        prop_assert_eq!(at_keys, diff(&desired, &observed));
    }
}

/// One step of a cluster's life: a node's lease is new or changed, or gone.
#[derive(Debug, Clone)]
enum Step {
    Upsert(Lease),
    Remove(String),
}

/// Leases in a small space: nodes n0..n7 on /24s and /23s that overlap
/// often, VTEP MACs that repeat, and now and then bad data.
fn lease() -> impl Strategy<Value = Lease> {
    (0u8..8, 0u8..8, any::<bool>(), 1u8..6, 0u8..6, 0u8..10).prop_map(
        |(node, net, wide, ip, m, kind)| {
            let subnet = if wide {
                Ipv4Net::new(Ipv4Addr::new(10, 244, net & !1, 0), 23)
                    .unwrap()
                    .into()
            } else {
                Ipv4Net::new(Ipv4Addr::new(10, 244, net, 0), 24)
                    .unwrap()
                    .into()
            };
            Lease {
                node: format!("n{node}"),
                subnet,
                public_ip: Ipv4Addr::new(172, 18, 0, 10 + ip).into(),
                backend_type: if kind == 0 { "host-gw" } else { "vxlan" }.into(),
                backend_data: if kind == 1 {
                    "{}".into()
                } else {
                    format!(r#"{{"VNI":1,"VtepMAC":"02:00:00:00:00:{m:02x}"}}"#)
                },
            }
        },
    )
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            4 => lease().prop_map(Step::Upsert),
            1 => (0u8..8).prop_map(|n| Step::Remove(format!("n{n}"))),
        ],
        1..40,
    )
}

fn cluster() -> (OverlayConfig, LocalNode, UnderlayFacts) {
    (
        OverlayConfig {
            network: "10.244.0.0/16".parse().unwrap(),
            backend: BackendConfig::from(VxlanConfig {
                direct_routing: true,
                ..VxlanConfig::default()
            }),
        },
        LocalNode {
            name: "self".into(),
            subnet: "10.244.9.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(172, 18, 0, 2).into(),
            underlay: "eth0".into(),
            vtep_mac: None,
        },
        UnderlayFacts {
            ifindex: 2,
            mtu: 1500,
            networks: vec!["172.18.0.0/29".parse().unwrap()],
        },
    )
}

proptest! {
    /// Kept current one change at a time, the desired state is always the
    /// one computed from scratch from the same leases, oldest first; and every
    /// key whose entry changed is among the keys a change reports.
    #[test]
    fn the_incremental_desired_state_is_the_one_from_scratch(steps in steps()) {
        let (config, local, underlay) = cluster();
        let mut peers = Peers::new(config.clone(), local.clone(), Some(underlay.clone()));
        // The model: every node's lease, in the order the nodes first came.
        let mut model: Vec<Lease> = Vec::new();
        for step in steps {
            let before = peers.entries().clone();
            let touched = match step {
                Step::Upsert(l) => {
                    match model.iter_mut().find(|m| m.node == l.node) {
                        Some(m) => *m = l.clone(),
                        None => model.push(l.clone()),
                    }
                    peers.upsert(l)
                }
                Step::Remove(n) => {
                    model.retain(|m| m.node != n);
                    peers.remove(&n)
                }
            };
            prop_assert_eq!(&peers.leases(), &model);
            let scratch = desired(&config, &local, &underlay, &model);
            prop_assert_eq!(peers.entries(), &scratch.state.entries);
            prop_assert_eq!(peers.rejected(), scratch.rejected);
            if !touched.all {
                let changed = differing(&before, peers.entries());
                prop_assert!(changed.routes.is_subset(&touched.routes), "{:?} ⊄ {:?}", changed, touched);
                prop_assert!(changed.neighbours.is_subset(&touched.neighbours));
                prop_assert!(changed.fdb.is_subset(&touched.fdb));
            }
        }
    }
}
