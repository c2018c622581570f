//! Unit tests of the store: resourceVersions, history, subresources.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use super::error::StoreError;
use super::patch::PatchKind;
use super::store::{EventType, NewObjectMeta, Store, Subresource};

fn meta(uid: &str) -> NewObjectMeta {
    NewObjectMeta {
        uid: uid.to_string(),
        creation_timestamp: "2025-01-01T00:00:00Z".to_string(),
    }
}

fn rv(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap()
}

fn store_with(names: &[&str]) -> Store {
    let mut store = Store::new(1000);
    for name in names {
        let node = json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        store
            .create_node(node, meta(&format!("uid-{name}")))
            .unwrap();
    }
    store
}

#[test]
fn create_stamps_and_counts() {
    let mut store = Store::new(1000);
    assert_eq!(store.resource_version(), 1);
    let (node, event) = store
        .create_node(json!({"metadata": {"name": "a"}}), meta("u1"))
        .unwrap();
    assert_eq!(node["kind"], "Node");
    assert_eq!(node["apiVersion"], "v1");
    assert_eq!(node["metadata"]["uid"], "u1");
    assert_eq!(
        node["metadata"]["creationTimestamp"],
        "2025-01-01T00:00:00Z"
    );
    assert_eq!(rv(&node), "2");
    let event = event.unwrap();
    assert_eq!((event.kind, event.resource_version), (EventType::Added, 2));
    let again = store.create_node(json!({"metadata": {"name": "a"}}), meta("u2"));
    assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
    assert_eq!(again.unwrap_err().code(), 409);
    let (generated, _) = store
        .create_node(json!({"metadata": {"generateName": "n-"}}), meta("abcdef"))
        .unwrap();
    assert_eq!(generated["metadata"]["name"], "n-abcde");
    assert_eq!(
        store
            .create_node(json!({"metadata": {}}), meta("x"))
            .unwrap_err()
            .code(),
        422
    );
    assert_eq!(
        store
            .create_node(json!({"kind": "Pod", "metadata": {"name": "p"}}), meta("x"))
            .unwrap_err()
            .code(),
        400
    );
    assert_eq!(
        store.create_node(json!([1]), meta("x")).unwrap_err().code(),
        400
    );
}

#[test]
fn status_subresource_ignores_spec_and_main_ignores_status() {
    let mut store = store_with(&["a"]);
    let patch = json!({"metadata": {"annotations": {"k": "v"}}, "spec": {"podCIDR": "X"},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}});
    let (node, event) = store
        .patch_node("a", PatchKind::Strategic, &patch, Subresource::Status)
        .unwrap();
    assert_eq!(node["metadata"]["annotations"]["k"], "v");
    assert_eq!(node["spec"]["podCIDR"], "10.0.0.0/24");
    assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
    assert_eq!(event.unwrap().kind, EventType::Modified);
    let (node, _) = store
        .patch_node("a", PatchKind::Merge, &patch, Subresource::Main)
        .unwrap();
    assert_eq!(node["spec"]["podCIDR"], "X");
    assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
    assert_eq!(node["metadata"]["uid"], "uid-a");
}

#[test]
fn no_op_writes_keep_the_resource_version() {
    let mut store = store_with(&["a"]);
    let before = store.resource_version();
    let patch = json!({"spec": {"podCIDR": "10.0.0.0/24"}, "status": {"ignored": true}});
    let (node, event) = store
        .patch_node("a", PatchKind::Merge, &patch, Subresource::Main)
        .unwrap();
    assert!(event.is_none());
    assert_eq!(store.resource_version(), before);
    assert_eq!(rv(&node), before.to_string());
}

#[test]
fn immutable_fields_preconditions_and_names() {
    let mut store = store_with(&["a"]);
    let patch =
        json!({"metadata": {"uid": "other", "creationTimestamp": null, "labels": {"x": "1"}}});
    let (node, _) = store
        .patch_node("a", PatchKind::Merge, &patch, Subresource::Main)
        .unwrap();
    assert_eq!(node["metadata"]["uid"], "uid-a");
    assert_eq!(
        node["metadata"]["creationTimestamp"],
        "2025-01-01T00:00:00Z"
    );
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"x": "2"}}});
    let err = store
        .patch_node("a", PatchKind::Merge, &stale, Subresource::Main)
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (409, "Conflict"));
    let current = json!({"metadata": {"resourceVersion": rv(&node), "labels": {"x": "2"}}});
    store
        .patch_node("a", PatchKind::Merge, &current, Subresource::Main)
        .unwrap();
    let renamed = json!({"metadata": {"name": "b"}});
    assert_eq!(
        store
            .patch_node("a", PatchKind::Merge, &renamed, Subresource::Main)
            .unwrap_err()
            .code(),
        400
    );
    let missing = store
        .patch_node("zz", PatchKind::Merge, &json!({}), Subresource::Main)
        .unwrap_err();
    assert_eq!((missing.code(), missing.reason()), (404, "NotFound"));
    let bad = json!([{"op": "test", "path": "/spec/podCIDR", "value": "nope"}]);
    assert_eq!(
        store
            .patch_node("a", PatchKind::Json, &bad, Subresource::Main)
            .unwrap_err()
            .code(),
        422
    );
}

#[test]
fn replace_without_resource_version_is_unconditional() {
    let mut store = store_with(&["a"]);
    let (node, _) = store
        .replace_node(
            "a",
            json!({"metadata": {"name": "a"}, "spec": {"unschedulable": true}}),
            Subresource::Main,
        )
        .unwrap();
    assert_eq!(node["spec"], json!({"unschedulable": true}));
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
}

#[test]
fn history_and_expiry() {
    let mut store = store_with(&["a", "b"]);
    let events = store.events_since(1).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.resource_version)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(store.events_since(2).unwrap().len(), 1);
    let (deleted, _) = store.delete_node("a").unwrap();
    assert_eq!(rv(&deleted), "4");
    let last = store.events_since(3).unwrap();
    assert_eq!(
        (last[0].kind, last[0].resource_version),
        (EventType::Deleted, 4)
    );
    assert!(matches!(
        store.delete_node("a"),
        Err(StoreError::NotFound { .. })
    ));

    store.compact();
    assert_eq!(store.resource_version(), 5);
    let expired = store.events_since(4).unwrap_err();
    assert_eq!((expired.code(), expired.reason()), (410, "Expired"));
    assert!(store.events_since(5).unwrap().is_empty());

    let mut small = Store::new(2);
    for name in ["a", "b", "c"] {
        small
            .create_node(json!({"metadata": {"name": name}}), meta(name))
            .unwrap();
    }
    assert!(small.events_since(1).is_err());
    assert_eq!(small.events_since(2).unwrap().len(), 2);
}

#[test]
fn pods() {
    let mut store = Store::new(10);
    let pod = json!({"metadata": {"name": "weft-x"}, "spec": {"nodeName": "n1"}});
    store.put_pod(pod, meta("p")).unwrap();
    assert_eq!(
        store.pod("default", "weft-x").unwrap()["spec"]["nodeName"],
        "n1"
    );
    assert_eq!(store.pods(Some("default")).count(), 1);
    assert_eq!(store.pods(Some("kube-system")).count(), 0);
    assert_eq!(store.pods(None).count(), 1);
}
