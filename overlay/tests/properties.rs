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
        dst: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap(),
        via: Ipv4Addr::new(10, 244, n, gw),
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
        ip: Ipv4Addr::new(10, 244, n, 0),
        mac: mac(m),
    })
}

fn fdb() -> impl Strategy<Value = FdbEntry> {
    (0u8..24, 0u8..6).prop_map(|(m, d)| FdbEntry {
        mac: mac(m),
        dst: Ipv4Addr::new(172, 18, 0, d),
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
        local: Ipv4Addr::new(172, 18, 0, 2),
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
                device: with_device.then(device),
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
