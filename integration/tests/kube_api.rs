//! The real kube-apiserver harness (root): nodes, flannel's RBAC rights
//! for user `node-agent` (exactly those), access from a node namespace over
//! the switch, pause/resume, and that stop leaves no process behind.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;
use weft_integration::kube_api::{
    self, check_dir, process_alive, RealApiServer, FLANNEL_ROLE, FLANNEL_RULES,
};
use weft_netns::{require_netns, Netns, Switch};

/// Skips the test (with the reason) unless the shared kube directory is here.
macro_rules! require_kube {
    () => {
        require_netns!();
        if let Err(reason) = RealApiServer::locate() {
            eprintln!("SKIPPED: no real kube-apiserver: {reason}");
            return;
        }
    };
}

fn forbidden<T>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

fn start(ns: &Netns, ip: Ipv4Addr) -> RealApiServer {
    let api = RealApiServer::start(ns, ip, 6443).unwrap();
    eprintln!(
        "kube-apiserver ready at {} in {:?}",
        api.url(),
        api.startup_time()
    );
    api
}

#[test]
fn check_dir_reports_what_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    assert!(check_dir(empty.path()).unwrap_err().contains("absent"));
    std::fs::write(empty.path().join("start"), "").unwrap();
    let err = check_dir(empty.path()).unwrap_err();
    assert!(err.contains("stop") && err.contains("etcd.xz"), "{err}");
}

/// What user node-agent may do, from `kubeconfig` in the namespace the
/// caller runs it in: everything flannel does, and nothing else.
async fn agent_has_exactly_flannel_rights(kubeconfig: PathBuf) {
    let client = kube_api::client(&kubeconfig, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = list
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["node-a", "node-b"]);
    let node = nodes.get("node-a").await.unwrap();
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
    let pods = Api::<Pod>::namespaced(client.clone(), "kube-system");
    assert!(pods.get_opt("kube-flannel-ds-x").await.unwrap().is_none()); // 404, not 403

    let rv = list.metadata.resource_version.unwrap();
    let mut watch = nodes
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let annotation = json!({"metadata": {"annotations": {
        "flannel.alpha.coreos.com/public-ip": "172.18.0.2",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
    }}});
    let pp = PatchParams::default();
    nodes
        .patch_status("node-a", &pp, &Patch::Merge(&annotation))
        .await
        .unwrap();
    let condition = json!({"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False",
        "reason": "FlannelIsUp", "message": "Flannel is running on this node",
    }]}});
    nodes
        .patch_status("node-a", &pp, &Patch::Strategic(&condition))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Modified(node) = event else {
        panic!("expected Modified, got {event:?}")
    };
    let annotations = node.metadata.annotations.unwrap();
    assert_eq!(
        annotations["flannel.alpha.coreos.com/public-ip"],
        "172.18.0.2"
    );

    // Not flannel's rights: the node object itself, deleting, listing pods.
    let labels = json!({"metadata": {"labels": {"x": "y"}}});
    assert!(forbidden(
        &nodes.patch("node-a", &pp, &Patch::Merge(&labels)).await
    ));
    assert!(forbidden(
        &nodes.delete("node-b", &DeleteParams::default()).await
    ));
    assert!(forbidden(&pods.list(&ListParams::default()).await));
}

#[test]
fn nodes_rbac_and_access_from_a_node_namespace() {
    require_kube!();
    let switch = Switch::new("kapi-sw").unwrap();
    switch.add_addr(Switch::BRIDGE, "172.18.0.1/16").unwrap();
    let node_ns = Netns::new("kapi-n1").unwrap();
    switch.attach(&node_ns, "eth0", "172.18.0.2/16").unwrap();
    let api = start(&switch, Ipv4Addr::new(172, 18, 0, 1));
    assert_eq!(api.url(), "https://172.18.0.1:6443");

    let public_ip = ("flannel.alpha.coreos.com/public-ip", "172.18.0.2");
    api.create_node(
        "node-a",
        "10.244.1.0/24",
        Ipv4Addr::new(172, 18, 0, 2),
        &[public_ip],
    )
    .unwrap();
    api.create_node("node-b", "10.244.2.0/24", Ipv4Addr::new(172, 18, 0, 3), &[])
        .unwrap();
    let a = api.node("node-a").unwrap().unwrap();
    assert_eq!(a["spec"]["podCIDR"], "10.244.1.0/24");
    assert_eq!(a["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
    assert_eq!(a["metadata"]["annotations"][public_ip.0], public_ip.1);
    let addresses = a["status"]["addresses"].as_array().unwrap();
    assert!(addresses.contains(&json!({"type": "InternalIP", "address": "172.18.0.2"})));
    let b = api.node("node-b").unwrap().unwrap();
    assert_eq!(b["status"]["addresses"][0]["address"], "172.18.0.3");
    assert!(api.node("node-c").unwrap().is_none());

    // Before the grant: the agent (from the node namespace) may not list nodes.
    let agent = api.agent_kubeconfig();
    let kc = agent.clone();
    let before = node_ns
        .run(move || async move {
            let client = kube_api::client(&kc, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            Api::<Node>::all(client).list(&ListParams::default()).await
        })
        .unwrap();
    assert!(forbidden(&before), "{before:?}");

    api.grant_flannel_role().unwrap();
    let role = api
        .admin(|c| async move { Ok(Api::<ClusterRole>::all(c).get(FLANNEL_ROLE).await?) })
        .unwrap();
    let expected: Vec<_> = FLANNEL_RULES.iter().map(|r| r.to_json()).collect();
    assert_eq!(serde_json::to_value(role.rules).unwrap(), json!(expected));
    node_ns
        .run(move || agent_has_exactly_flannel_rights(agent))
        .unwrap();

    let a = api.node("node-a").unwrap().unwrap();
    assert_eq!(
        a["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );
    let conditions = a["status"]["conditions"].as_array().unwrap();
    assert!(conditions
        .iter()
        .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"));
    assert!(a["metadata"]["labels"].get("x").is_none());

    api.delete_node("node-b").unwrap();
    assert!(api.node("node-b").unwrap().is_none());
    api.delete_node("node-b").unwrap(); // idempotent
    let began = Instant::now();
    drop(api);
    eprintln!("dropped in {:?}", began.elapsed());
}

#[test]
fn pause_resume_and_stop_leaves_nothing() {
    require_kube!();
    let ns = Netns::new("kapi-lo").unwrap();
    let api = start(&ns, Ipv4Addr::LOCALHOST);
    api.create_node("n1", "10.244.0.0/24", Ipv4Addr::new(172, 18, 0, 2), &[])
        .unwrap();
    let get = |kc: PathBuf| async move {
        let client = kube_api::client(&kc, Some(Duration::from_secs(2)))
            .await
            .unwrap();
        let began = Instant::now();
        let node = Api::<Node>::all(client).get("n1").await;
        (node.map(|n| n.metadata.name), began.elapsed())
    };
    let kc = api.admin_kubeconfig();
    let (node, _) = ns
        .run({
            let kc = kc.clone();
            move || get(kc)
        })
        .unwrap();
    assert_eq!(node.unwrap().as_deref(), Some("n1"));

    api.pause().unwrap();
    let (node, took) = ns
        .run({
            let kc = kc.clone();
            move || get(kc)
        })
        .unwrap();
    assert!(node.is_err(), "{node:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("paused API: {:?} after {took:?}", node.unwrap_err());

    api.resume().unwrap();
    let (node, _) = ns.run(move || get(kc)).unwrap();
    assert_eq!(node.unwrap().as_deref(), Some("n1"));
    assert!(api.node("n1").unwrap().is_some());

    // Stop while paused: still stops everything.
    api.pause().unwrap();
    let pids = api.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| process_alive(pid)));
    let state = api.state_dir().to_path_buf();
    let began = Instant::now();
    api.stop();
    eprintln!("stopped in {:?}", began.elapsed());
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} still runs");
    }
    assert!(!state.exists());
}

#[test]
fn drop_on_panic_stops_the_server() {
    require_kube!();
    let ns = Netns::new("kapi-panic").unwrap();
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let api = start(&ns, Ipv4Addr::LOCALHOST);
            *pids.lock().unwrap() = api.pids();
            panic!("deliberate panic while the API server runs");
        })
        .join()
    });
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} still runs");
    }
}
