//! The embedded Node API server, driven by the real kube-rs client over
//! loopback: lists, gets, patches, watches (with a kube-runtime reflector
//! across dropped watches, compaction and outages) and fault injection.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::{json, Value};
use weft_integration::node_api::{NodeApi, NodeApiOptions};

fn server() -> NodeApi {
    let options = NodeApiOptions {
        bookmark_interval: Duration::from_millis(200),
        ..NodeApiOptions::default()
    };
    NodeApi::start_with("127.0.0.1:0".parse().unwrap(), options).unwrap()
}

fn client(api: &NodeApi) -> Client {
    Client::try_from(Config::new(api.url().parse().unwrap())).unwrap()
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]
        }
    })
}

fn api_code(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn list_get_create_delete_and_errors() {
    let server = server();
    server.create_node(node("a")).unwrap();
    let typed: Node = serde_json::from_value(node("b")).unwrap();
    server.create_node(&typed).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));

    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    let by_name = nodes
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let by_label = nodes
        .list(&ListParams::default().labels("kubernetes.io/hostname in (a,c)"))
        .await
        .unwrap();
    assert_eq!(by_label.items[0].name_any(), "a");
    let page = nodes.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = nodes
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].name_any(), "b");
    assert!(rest.metadata.continue_.is_none());

    let a = nodes.get("a").await.unwrap();
    assert!(a.metadata.uid.is_some());
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.spec.unwrap().pod_cidr.as_deref(), Some("10.244.0.0/24"));
    assert_eq!(
        api_code(nodes.get("missing").await),
        (404, "NotFound".into())
    );
    assert!(nodes.get_opt("missing").await.unwrap().is_none());
    let configmaps: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    assert_eq!(api_code(configmaps.get("x").await).0, 404);

    let mut c: Node = serde_json::from_value(node("c")).unwrap();
    let created = nodes.create(&PostParams::default(), &c).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        api_code(nodes.create(&PostParams::default(), &c).await),
        (409, "AlreadyExists".into())
    );
    c.metadata.resource_version = Some("1".into());
    assert_eq!(
        api_code(nodes.replace("c", &PostParams::default(), &c).await),
        (409, "Conflict".into())
    );
    c.metadata.resource_version = None;
    c.spec.as_mut().unwrap().unschedulable = Some(true);
    let replaced = nodes
        .replace("c", &PostParams::default(), &c)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().unschedulable, Some(true));
    nodes.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(server.node("c").is_none());
    assert_eq!(
        api_code(nodes.delete("c", &DeleteParams::default()).await).0,
        404
    );

    let version = client(&server).apiserver_version().await.unwrap();
    assert!(version.git_version.starts_with("v1."));
}

#[tokio::test]
async fn patch_status_with_merge_and_strategic_patches() {
    let server = server();
    server.create_node(node("a")).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));
    let before = server.resource_version();

    let annotations = json!({"metadata": {"annotations": {
        "flannel.alpha.coreos.com/public-ip": "192.168.0.10",
        "flannel.alpha.coreos.com/backend-type": "vxlan"
    }}, "spec": {"podCIDR": "ignored by /status"}});
    let patched = nodes
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&annotations))
        .await
        .unwrap();
    assert_eq!(
        patched.annotations()["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );
    assert_eq!(
        patched.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.0.0/24")
    );
    assert_eq!(
        patched.metadata.resource_version,
        Some((before + 1).to_string())
    );
    let request = server
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(request.path(), "/api/v1/nodes/a/status");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert!(request.body.contains("backend-type"));

    // Patching the same annotations again changes nothing.
    nodes
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&annotations))
        .await
        .unwrap();
    assert_eq!(server.resource_version(), before + 1);

    let condition = |status: &str| {
        json!({"status": {"conditions": [{
            "type": "NetworkUnavailable", "status": status, "reason": "FlannelIsUp",
            "message": "weft is running on this node"
        }]}})
    };
    for status in ["True", "False"] {
        let patch = condition(status);
        let patched = nodes
            .patch_status("a", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        let conditions = patched.status.unwrap().conditions.unwrap();
        let summary: Vec<_> = conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(summary, [("Ready", "True"), ("NetworkUnavailable", status)]);
    }
    let request = server
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );

    // The main resource ignores status; a merge patch replaces lists.
    let patch = json!({"metadata": {"labels": {"x": "y"}}, "status": {"conditions": []}});
    let patched = nodes
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(patched.labels()["x"], "y");
    assert_eq!(patched.status.unwrap().conditions.unwrap().len(), 2);
    // JSON patch (RFC 6902), sent raw.
    let ops = json!([{"op": "add", "path": "/metadata/labels/jp", "value": "1"},
                     {"op": "remove", "path": "/metadata/labels/x"}]);
    let request = axum::http::Request::patch("/api/v1/nodes/a")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    let patched: Node = client(&server).request(request).await.unwrap();
    assert_eq!(patched.labels().get("jp").map(String::as_str), Some("1"));
    assert!(!patched.labels().contains_key("x"));
    let server_side_apply = nodes
        .patch("a", &PatchParams::apply("test"), &Patch::Apply(&patch))
        .await;
    assert_eq!(api_code(server_side_apply).0, 415);
}

#[tokio::test]
async fn raw_watch_protocol() {
    let server = server();
    server.create_node(node("a")).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));

    // From "0": the current state as ADDED, then bookmarks; ends at the timeout.
    let started = Instant::now();
    let params = WatchParams::default().timeout(1);
    let events: Vec<_> = nodes
        .watch(&params, "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(matches!(&events[0], WatchEvent::Added(n) if n.name_any() == "a"));
    assert!(events[1..]
        .iter()
        .all(|e| matches!(e, WatchEvent::Bookmark(_))));
    assert!(events.len() >= 3, "expected bookmarks, got {events:?}");

    // From a resourceVersion: only what came after it.
    let rv = server.resource_version().to_string();
    server.create_node(node("b")).unwrap();
    server
        .update_node("a", |n| n["metadata"]["labels"]["changed"] = json!("yes"))
        .unwrap();
    server.delete_node("b").unwrap();
    let mut stream = nodes
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(n) => format!("ADDED {}", n.name_any()),
            WatchEvent::Modified(n) => format!("MODIFIED {}", n.name_any()),
            WatchEvent::Deleted(n) => {
                format!("DELETED {} {}", n.name_any(), n.resource_version().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "ADDED b",
            "MODIFIED a",
            format!("DELETED b {}", server.resource_version()).as_str()
        ]
    );
    server.drop_watches();
    assert!(stream.try_next().await.unwrap().is_none());

    // After a compaction, an old resourceVersion gets 410 Expired in the stream.
    server.compact();
    let mut stream = nodes
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_follows_changes_dropped_watches_and_compaction() {
    let server = server();
    server.create_node(node("a")).unwrap();
    server.create_node(node("b")).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));

    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (reader, writer) = reflector::store::<Node>();
    let stream = reflector(
        writer,
        watcher(nodes, watcher::Config::default()).default_backoff(),
    );
    let task_log = log.clone();
    let task = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(event) = stream.next().await {
            let entry = match event {
                Ok(watcher::Event::Apply(n)) => format!("apply {}", n.name_any()),
                Ok(watcher::Event::Delete(n)) => format!("delete {}", n.name_any()),
                Ok(watcher::Event::Init) => "init".to_string(),
                Ok(watcher::Event::InitApply(n)) => format!("init {}", n.name_any()),
                Ok(watcher::Event::InitDone) => "init done".to_string(),
                Err(e) => format!("error {e}"),
            };
            task_log.lock().unwrap().push(entry);
        }
    });
    let names = |reader: &reflector::Store<Node>| {
        let mut names: Vec<_> = reader.state().iter().map(|n| n.name_any()).collect();
        names.sort();
        names
    };
    let label = |reader: &reflector::Store<Node>, name: &str| {
        reader
            .state()
            .iter()
            .find(|n| n.name_any() == name)
            .and_then(|n| n.labels().get("step").cloned())
    };
    reader.wait_until_ready().await.unwrap();
    assert_eq!(names(&reader), ["a", "b"]);

    server.create_node(node("c")).unwrap();
    server
        .update_node("a", |n| n["metadata"]["labels"]["step"] = json!("1"))
        .unwrap();
    server.delete_node("b").unwrap();
    eventually("c, a modified, b deleted", || {
        names(&reader) == ["a", "c"] && label(&reader, "a").is_some()
    })
    .await;
    {
        let log = log.lock().unwrap();
        let tail: Vec<_> = log
            .iter()
            .skip_while(|e| *e != "init done")
            .cloned()
            .collect();
        assert_eq!(tail, ["init done", "apply c", "apply a", "delete b"]);
    }

    // Bookmarks come and go without disturbing anything.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let watches = |server: &NodeApi| server.requests().iter().filter(|r| r.is_watch()).count();
    let lists = |server: &NodeApi| {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && !r.is_watch())
            .count()
    };
    assert_eq!((lists(&server), watches(&server)), (1, 1));
    assert!(server
        .requests()
        .iter()
        .any(|r| r.is_watch() && r.uri.contains("allowWatchBookmarks=true")));

    // A dropped watch resumes from its resourceVersion, without a relist.
    server.drop_watches();
    server
        .update_node("a", |n| n["metadata"]["labels"]["step"] = json!("2"))
        .unwrap();
    eventually("a at step 2", || {
        label(&reader, "a").as_deref() == Some("2")
    })
    .await;
    eventually("a second watch", || {
        watches(&server) == 2 && server.open_watches() == 1
    })
    .await;
    assert_eq!(lists(&server), 1);

    // An outage, changes, a compaction: the watcher gets 503s, then 410, relists.
    server.set_unavailable(true);
    server.create_node(node("d")).unwrap();
    server.delete_node("c").unwrap();
    server.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_unavailable(false);
    eventually("the relisted state", || names(&reader) == ["a", "d"]).await;
    assert_eq!(lists(&server), 2);
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("410") || e.contains("Expired")));

    // And it keeps following.
    server
        .update_node("d", |n| n["metadata"]["labels"]["step"] = json!("3"))
        .unwrap();
    eventually("d at step 3", || {
        label(&reader, "d").as_deref() == Some("3")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = server();
    server.create_node(node("a")).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));
    let (reader, writer) = reflector::store::<Node>();
    let config = watcher::Config::default().streaming_lists();
    let stream = reflector(writer, watcher(nodes, config).default_backoff());
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.state().len(), 1);
    server.create_node(node("b")).unwrap();
    eventually("b", || reader.state().len() == 2).await;
    assert!(server
        .requests()
        .iter()
        .all(|r| r.is_watch() || r.method != "GET"));
    task.abort();
}

#[tokio::test]
async fn faults_unavailable_blackhole_and_delay() {
    let server = server();
    server.create_node(node("a")).unwrap();
    let nodes: Api<Node> = Api::all(client(&server));

    // kube retries 503s (15 times, backing off from 5 ms): without that
    // retry layer the error shows at once...
    let mut config = Config::new(server.url().parse().unwrap());
    config.default_retry = false;
    let no_retry: Api<Node> = Api::all(Client::try_from(config).unwrap());
    server.set_unavailable(true);
    assert_eq!(
        api_code(no_retry.get("a").await),
        (503, "ServiceUnavailable".into())
    );
    // ...and with it a short outage is ridden out.
    let pending = tokio::spawn({
        let nodes = nodes.clone();
        async move { nodes.get("a").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_unavailable(false);
    pending.await.unwrap().unwrap();
    no_retry.get("a").await.unwrap();

    server.set_blackhole(true);
    let held = tokio::time::timeout(Duration::from_millis(500), nodes.get("a")).await;
    assert!(held.is_err(), "a blackholed request must not be answered");
    server.set_blackhole(false);
    nodes.get("a").await.unwrap();

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    nodes.get("a").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);

    let url = server.url();
    server.stop();
    let after = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
    assert!(Api::<Node>::all(after).get("a").await.is_err());
}

#[tokio::test]
async fn loads_yaml_pods_and_kubeconfig() {
    let server = server();
    let dir = std::env::temp_dir().join(format!("weft-node-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nodes.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations:\n    flannel.alpha.coreos.com/public-ip: 10.0.0.1\nspec:\n  podCIDR: 10.244.1.0/24\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n2\nspec:\n  podCIDR: 10.244.2.0/24\n",
    )
    .unwrap();
    assert_eq!(server.load_nodes(&file).unwrap(), 2);
    assert_eq!(server.nodes().len(), 2);
    assert_eq!(
        server.node("n2").unwrap()["spec"]["podCIDR"],
        "10.244.2.0/24"
    );

    server.add_pod("kube-flannel", "weft-x1", "n2");
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let client = Client::try_from(config).unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-flannel");
    let pod = pods.get("weft-x1").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n2"));
    assert_eq!(api_code(pods.get("nope").await).0, 404);
    let nodes: Api<Node> = Api::all(client);
    let n1 = nodes.get("n1").await.unwrap();
    assert_eq!(
        n1.annotations()["flannel.alpha.coreos.com/public-ip"],
        "10.0.0.1"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
