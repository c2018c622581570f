//! End to end over the matrix backend × NAT mode: the lab (real weftd on
//! three nodes, the real kube-apiserver where ../shared/kube has it, pods
//! through weft-cni, an outside host), asserting the seed's tables on every
//! node, NAT rules in the chosen mode, and full connectivity.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::Duration;

use weft_integration::lab::{Backend, Binaries, Lab};
use weft_integration::seed_nodes;
use weft_nat::NatMode;
use weft_netns::require_netns;

fn binaries() -> Binaries {
    Binaries {
        weftd: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        weft_cni: PathBuf::from(env!("CARGO_BIN_EXE_weft-cni")),
        reference_plugins: PathBuf::from("/usr/lib/cni"),
    }
}

/// The seed's tables on every node, for this backend.
fn assert_tables(lab: &Lab, backend: Backend) {
    for n in &lab.nodes {
        let routes = n.ns.ip(&["route", "show", "proto", "119"]).unwrap();
        let neigh = n.ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap();
        let fdb =
            n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap_or_default();
        for o in lab.nodes.iter().filter(|o| o.spec.name != n.spec.name) {
            let (dst, gw) = (
                o.spec.subnet.to_string(),
                o.spec.subnet.network().to_string(),
            );
            match backend {
                Backend::Vxlan => {
                    assert!(
                        routes.contains(&format!("{dst} via {gw} dev flannel.1 onlink")),
                        "{}: {routes}",
                        n.spec.name
                    );
                    assert!(
                        neigh.contains(&format!("{gw} dev flannel.1 lladdr")),
                        "{}: {neigh}",
                        n.spec.name
                    );
                    assert!(
                        fdb.contains(&format!("dst {} self permanent", o.spec.ip)),
                        "{}: {fdb}",
                        n.spec.name
                    );
                }
                Backend::HostGw | Backend::VxlanDirect => {
                    assert!(
                        routes.contains(&format!("{dst} via {} dev eth0", o.spec.ip)),
                        "{}: {routes}",
                        n.spec.name
                    );
                }
            }
        }
    }
}

fn assert_nat(lab: &Lab, nat: NatMode) {
    for n in &lab.nodes {
        let listing = match nat {
            NatMode::IptablesLegacy => n.ns.exec(&["iptables-legacy-save", "-t", "nat"]).unwrap(),
            NatMode::IptablesNft => n.ns.exec(&["iptables-nft-save", "-t", "nat"]).unwrap(),
            NatMode::Nftables => {
                n.ns.exec(&["nft", "list", "table", "ip", "flannel-ipv4"])
                    .unwrap()
            }
        };
        let random = if nat == NatMode::Nftables {
            "masquerade fully-random"
        } else {
            "--random-fully"
        };
        assert!(
            listing.contains(random),
            "{}: {nat}: {listing}",
            n.spec.name
        );
        assert!(
            listing.contains(&n.spec.subnet.to_string()),
            "{}: {nat}: {listing}",
            n.spec.name
        );
    }
}

fn combination(backend: Backend, nat: NatMode) {
    let mut lab = Lab::start(&seed_nodes(), backend, nat, &binaries()).unwrap();
    for i in 0..lab.nodes.len() {
        for k in 1..=2 {
            lab.add_pod(i, &format!("p{}{k}", i + 1)).unwrap();
        }
    }
    let t = lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    eprintln!(
        "{backend:?} × {nat}: converged {:.0} ms after the last pod ({})",
        t.as_secs_f64() * 1e3,
        lab.api.describe()
    );
    assert_tables(&lab, backend);
    assert_nat(&lab, nat);
    let matrix = lab.ping_matrix();
    assert!(
        matrix.iter().flatten().all(|ok| *ok),
        "{backend:?} × {nat}: pod ping matrix {matrix:?}"
    );
    for c in lab.outside_checks().unwrap() {
        assert!(c.masqueraded(), "{backend:?} × {nat}: {c:?}");
        assert!(c.kept_source(), "{backend:?} × {nat}: {c:?}");
    }
}

fn all_backends(nat: NatMode) {
    for backend in [Backend::Vxlan, Backend::HostGw, Backend::VxlanDirect] {
        combination(backend, nat);
    }
}

#[test]
fn every_backend_with_iptables_legacy() {
    require_netns!();
    all_backends(NatMode::IptablesLegacy);
}

#[test]
fn every_backend_with_iptables_nft() {
    require_netns!();
    all_backends(NatMode::IptablesNft);
}

#[test]
fn every_backend_with_nftables() {
    require_netns!();
    all_backends(NatMode::Nftables);
}

#[test]
fn restarting_weftd_under_traffic_loses_no_packet() {
    require_netns!();
    let mut lab = Lab::start(
        &seed_nodes(),
        Backend::Vxlan,
        NatMode::IptablesNft,
        &binaries(),
    )
    .unwrap();
    for i in 0..lab.nodes.len() {
        lab.add_pod(i, &format!("r{}", i + 1)).unwrap();
    }
    lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    let target = lab.nodes[2].pods[0].ip.to_string();
    // 400 pings 10 ms apart from a pod on node 1 to a pod on node 3 while
    // both nodes' weftd restart.
    let ping = lab.nodes[0].pods[0]
        .ns
        .command(&["ping", "-i", "0.01", "-c", "400", "-W", "1", "-q", &target])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.restart_agent(2).unwrap();
    lab.restart_agent(0).unwrap();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "packets lost during the restarts:\n{text}"
    );
}
