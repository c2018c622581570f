//! weft on a real Kubernetes cluster (`weft_integration::cluster`): real
//! kube-apiserver, controller-manager and scheduler, three nodes with
//! containerd, kubelet and kube-proxy, weft's image built from its
//! Containerfile and its manifests applied through the API unchanged.
//!
//! The nodes cover the three host/kube-proxy combinations: node1's
//! `iptables` is iptables-legacy with kube-proxy in iptables mode, node2's
//! is iptables-nft with kube-proxy in iptables mode, node3 runs kube-proxy
//! in nftables mode. Each manifest gets its own cluster; the two tests run
//! one after the other (a cluster takes ~1.3 GiB and both cores).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use weft_integration::cluster::deploy::{self, Manifest};
use weft_integration::cluster::{
    self, checks, default_nodes, image, node_ip, scenario, workload, Cluster, ClusterSpec,
    Firewall, NodeSpec, ProxyMode, MANIFEST_IMAGE,
};
use weft_netns::require_netns;

/// One cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// weftd and weft-cni of this test build, for the image (without debug
/// sections: the same code, ~300 MB smaller).
fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        image::without_debug_info(
            &[
                ("weftd", env!("CARGO_BIN_EXE_weftd").as_ref()),
                ("weft", env!("CARGO_BIN_EXE_weft").as_ref()),
                ("weft-cni", env!("CARGO_BIN_EXE_weft-cni").as_ref()),
            ],
            &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-bins"),
        )
        .unwrap()
    })
    .clone()
}

/// A cluster with weft deployed from `manifest` and a web pod per node.
fn cluster_with(manifest: Manifest) -> Cluster {
    let t = Instant::now();
    let spec = ClusterSpec {
        nodes: default_nodes(3),
        kube_dir: None,
        weft_bin_dir: bin_dir(),
        weft_image: MANIFEST_IMAGE.to_string(),
    };
    let cluster = Cluster::up(&spec).unwrap();
    println!(
        "cluster up in {:.1?} (images {:.1?}, control plane {:.1?}, nodes {:.1?})",
        t.elapsed(),
        cluster.timings.images,
        cluster.timings.control_plane,
        cluster.timings.nodes
    );
    match cluster.deploy_weft(manifest, MANIFEST_IMAGE) {
        Ok(took) => println!(
            "manifests/{} applied: weft's pods running, nodes Ready after {took:.1?}",
            manifest.name()
        ),
        Err(e) => panic!("{e:#}\n{}", cluster.diagnose()),
    }
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.spec.name.clone())
        .collect();
    workload::create_web(
        cluster.kubectl().unwrap(),
        &names,
        &cluster.images().workload.reference,
    )
    .unwrap();
    cluster
}

fn assert_matrix(cluster: &Cluster, what: &str) {
    let t = Instant::now();
    let m =
        checks::run(cluster).unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", cluster.diagnose()));
    println!("{what}: connectivity ({:.1?})\n{}", t.elapsed(), m.render());
    assert!(m.all_ok(), "{what}: failed probes: {:#?}", m.failures());
}

fn assert_nat_mode(cluster: &Cluster, node: &str, mode: &str) {
    let line = cluster.nat_mode(node).unwrap();
    println!("{node}: {line}");
    assert!(
        line.contains(&format!("mode={mode}")),
        "{node}: expected NAT mode {mode}: {line}"
    );
}

/// manifests/legacy on the three kinds of node: weft follows each node's
/// firewall (legacy from kubelet's and kube-proxy's hint chains; native
/// nftables where kube-proxy uses nftables and no iptables rule exists);
/// the matrix with Services and NodePort; a rolling update and a deleted
/// weft pod under 10 ms pings; pod churn leaves nothing behind.
#[test]
fn legacy_manifest_on_a_real_cluster() {
    // Before anything makes a namespace (require_netns! does).
    cluster::install_interrupt_handler();
    require_netns!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = cluster_with(Manifest::Legacy);
    assert_nat_mode(&cluster, "node1", "iptables-legacy");
    assert_nat_mode(&cluster, "node2", "iptables-nft");
    assert_nat_mode(&cluster, "node3", "nftables");
    assert_matrix(&cluster, "manifests/legacy");
    // The outside host's NodePort requests carry kube-proxy's masquerade
    // mark 0x4000, and kube-proxy masquerades them itself: its jump comes
    // first in POSTROUTING (it inserts, weft appends, as flannel does), and
    // weft's RETURN for the mark covers the reverse order.
    for (node, save) in [
        ("node1", "iptables-legacy-save"),
        ("node2", "iptables-nft-save"),
    ] {
        let (kube_proxy, weft_return) = checks::mark_counters(&cluster, node, save).unwrap();
        println!(
            "{node}: packets with kube-proxy's mark 0x4000: {kube_proxy} masqueraded by kube-proxy, \
             {weft_return} returned by weft"
        );
        assert!(
            kube_proxy > 0,
            "{node}: the NodePort traffic was not kube-proxy's to masquerade"
        );
    }

    let (took, pings) = scenario::under_ping(&cluster, || {
        scenario::rolling_update(&cluster, "localhost/weft:0.1.0-next", &bin_dir())
    })
    .unwrap();
    println!("rolling update to a new image tag: {took:.1?}");
    for (label, p) in &pings {
        println!("  ping {label}: {} sent, {} lost", p.sent, p.lost());
        assert!(
            p.lost() <= 1,
            "rolling update: {label} lost {}: {}",
            p.lost(),
            p.text
        );
    }

    let (took, pings) =
        scenario::under_ping(&cluster, || scenario::delete_weft_pod(&cluster, "node2")).unwrap();
    println!("weft pod on node2 deleted, new one ready after {took:.1?}");
    for (label, p) in &pings {
        println!("  ping {label}: {} sent, {} lost", p.sent, p.lost());
        assert_eq!(p.lost(), 0, "pod deletion: {label}: {}", p.text);
    }
    assert_matrix(&cluster, "after the rolling update and the deletion");

    // `kubectl exec … -- weft status` in every weft pod: weftd answers, and
    // its node's kernel holds exactly what it wants (exit 0, no drift).
    let kubectl = cluster.kubectl().unwrap();
    for pod in deploy::weft_pods(kubectl).unwrap() {
        let out = kubectl
            .run(&[
                "-n",
                "kube-flannel",
                "exec",
                &pod.name,
                "-c",
                "kube-flannel",
                "--",
                "weft",
                "status",
            ])
            .unwrap_or_else(|e| panic!("weft status in {} ({}): {e:#}", pod.name, pod.node));
        assert!(out.contains("drift: none"), "{}: {out}", pod.node);
        assert!(out.contains(&format!("node {}", pod.node)), "{out}");
    }
    trace_between_web_pods(&cluster);

    let churn = scenario::churn(&cluster, 50).unwrap();
    println!(
        "pod churn: {} pods running after {:.1?}, deleted and cleaned up after {:.1?}",
        churn.pods, churn.up, churn.cleaned
    );
    assert!(
        churn.leaks.is_empty(),
        "pod churn leaked: {:#?}",
        churn.leaks
    );
    cluster.check_processes().unwrap();
    let t = Instant::now();
    cluster.down();
    println!("cluster removed in {:.1?}", t.elapsed());
}

/// `kubectl exec … -- weft trace <a> <b>` between web pods of two nodes:
/// on a's node it follows the packet to where it leaves for b's node; on
/// b's node it starts where the packet arrives and ends at the pod.
fn trace_between_web_pods(cluster: &Cluster) {
    let kubectl = cluster.kubectl().unwrap();
    let web = workload::pods(kubectl, "app=web").unwrap();
    let (Some(a), Some(b)) = (web.first(), web.iter().find(|p| p.node != web[0].node)) else {
        panic!("no web pods on two nodes: {web:?}");
    };
    let weft_pods = deploy::weft_pods(kubectl).unwrap();
    let on = |node: &str| {
        weft_pods
            .iter()
            .find(|p| p.node == node)
            .unwrap_or_else(|| panic!("no weft pod on {node}"))
            .name
            .clone()
    };
    let trace = |node: &str| {
        let pod = on(node);
        let out = kubectl
            .run(&[
                "-n",
                "kube-flannel",
                "exec",
                &pod,
                "-c",
                "kube-flannel",
                "--",
                "weft",
                "trace",
                &a.ip.to_string(),
                &b.ip.to_string(),
            ])
            .unwrap_or_else(|e| panic!("weft trace on {node}: {e:#}"));
        println!("weft trace {} {} on {node}:\n{out}", a.ip, b.ip);
        out
    };
    let out = trace(&a.node);
    assert!(
        out.contains(&format!(
            "leaves this node for {} ({})",
            cluster.node(&b.node).unwrap().spec.ip,
            b.node
        )),
        "{out}"
    );
    let out = trace(&b.node);
    assert!(
        out.contains(&format!("=> delivered: {} on {}", b.ip, b.node)),
        "{out}"
    );
}

/// manifests/nftables on the same three kinds of node: native nftables
/// everywhere, the matrix, and a node that joins and leaves at run time.
#[test]
fn nftables_manifest_on_a_real_cluster() {
    // Before anything makes a namespace (require_netns! does).
    cluster::install_interrupt_handler();
    require_netns!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = cluster_with(Manifest::Nftables);
    for node in ["node1", "node2", "node3"] {
        assert_nat_mode(&cluster, node, "nftables");
    }
    assert_matrix(&cluster, "manifests/nftables");

    let joiner = NodeSpec {
        name: "node4".into(),
        ip: node_ip(4),
        firewall: Firewall::Nft,
        proxy: ProxyMode::Iptables,
    };
    let jl = scenario::join_and_leave(&mut cluster, joiner).unwrap();
    println!(
        "node4 joined: Ready with weft after {:.1?}, reached both ways: {}; left: its route gone everywhere {:.1?} after its Node was deleted",
        jl.ready, jl.reached, jl.routes_gone
    );
    assert!(
        jl.reached,
        "node4's pod was not reached from every pod and back"
    );
    cluster.check_processes().unwrap();
    let t = Instant::now();
    cluster.down();
    println!("cluster removed in {:.1?}", t.elapsed());
}
