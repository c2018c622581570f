//! Unit tests of the patch flavours.
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::json;

#[test]
fn merge_patch_follows_rfc7386() {
    let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
    merge_patch(
        &mut doc,
        &json!({"a": "z", "c": {"f": null, "n": {"x": null, "y": 1}}, "l": [3]}),
    );
    assert_eq!(
        doc,
        json!({"a": "z", "c": {"d": "e", "n": {"y": 1}}, "l": [3]})
    );
    merge_patch(&mut doc, &json!(["whole"]));
    assert_eq!(doc, json!(["whole"]));
}

#[test]
fn strategic_merges_conditions_by_type() {
    let mut node = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "NetworkUnavailable", "status": "True", "reason": "NoRoute"}
    ], "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
    strategic_merge_patch(
        &mut node,
        &json!({"status": {
            "$setElementOrder/conditions": [{"type": "Ready"}],
            "conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": null},
                           {"type": "MemoryPressure", "status": "False"}],
            "addresses": [{"type": "Hostname", "address": "n1"}]
        }}),
    );
    assert_eq!(
        node,
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "False"},
            {"type": "MemoryPressure", "status": "False"}
        ], "addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                         {"type": "Hostname", "address": "n1"}]}})
    );
}

#[test]
fn strategic_delete_replace_and_union() {
    let mut doc = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
        "status": {"conditions": [{"type": "Ready"}, {"type": "Gone"}]},
        "spec": {"taints": [{"key": "a"}]}});
    strategic_merge_patch(
        &mut doc,
        &json!({"metadata": {"finalizers": ["b", "a"], "labels": {"$patch": "replace", "z": "3"}},
            "status": {"conditions": [{"type": "Gone", "$patch": "delete"}]},
            "spec": {"taints": [{"key": "b"}]}}),
    );
    assert_eq!(
        doc,
        json!({"metadata": {"finalizers": ["a", "b"], "labels": {"z": "3"}},
            "status": {"conditions": [{"type": "Ready"}]},
            "spec": {"taints": [{"key": "b"}]}})
    );
}

#[test]
fn json_patch_ops() {
    let mut doc = json!({"metadata": {"annotations": {"a/b": "1"}}, "l": [1, 2]});
    let patch = json!([
        {"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
        {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "add", "path": "/l/0", "value": 0},
        {"op": "remove", "path": "/l/1"},
        {"op": "copy", "from": "/metadata/labels", "path": "/copied"},
        {"op": "move", "from": "/copied", "path": "/moved"}
    ]);
    json_patch(&mut doc, &patch).unwrap();
    assert_eq!(
        doc,
        json!({"metadata": {"annotations": {"a/b": "2"}, "labels": {"k": "v"}},
            "l": [0, 2, 3], "moved": {"k": "v"}})
    );
    let before = doc.clone();
    let failing =
        json!([{"op": "remove", "path": "/l/0"}, {"op": "test", "path": "/l/0", "value": 9}]);
    assert_eq!(
        json_patch(&mut doc, &failing),
        Err(PatchError::TestFailed("/l/0".into()))
    );
    assert_eq!(doc, before);
    assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
}

#[test]
fn content_types() {
    assert_eq!(
        PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
        Some(PatchKind::Merge)
    );
    assert_eq!(
        PatchKind::from_content_type("application/strategic-merge-patch+json"),
        Some(PatchKind::Strategic)
    );
    assert_eq!(
        PatchKind::from_content_type("application/json-patch+json"),
        Some(PatchKind::Json)
    );
    assert_eq!(
        PatchKind::from_content_type("application/apply-patch+yaml"),
        None
    );
}
