//! The exact requests weftd sends to publish a node: path, content type and
//! body, checked against a mock API (tower-test, as kube-rs tests itself).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use weft::subnet::annotations::Published;
use weft::subnet::kube::NodeClient;
use weft::subnet::Annotations;

fn node(annotations: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "worker2", "annotations": annotations},
        "spec": {"podCIDR": "10.244.2.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

async fn body_json(req: Request<Body>) -> (Method, String, String, Value) {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let ct = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    (method, uri, ct, serde_json::from_slice(&bytes).unwrap())
}

fn wanted() -> BTreeMap<String, String> {
    Annotations::new("flannel.alpha.coreos.com")
        .unwrap()
        .published(
            "vxlan",
            &[Published {
                backend_data: r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:02:00"}"#.into(),
                public_ip: Ipv4Addr::new(172, 18, 0, 2).into(),
            }],
        )
}

#[tokio::test]
async fn annotations_are_merge_patched_through_the_status_subresource() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        let (method, uri, ct, body) = body_json(req).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(uri, "/api/v1/nodes/worker2/status?");
        assert_eq!(ct, "application/merge-patch+json");
        assert_eq!(
            body,
            json!({"metadata": {"annotations": {
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:02:00\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "172.18.0.2"
            }}})
        );
        let reply = serde_json::to_vec(&node(json!({}))).unwrap();
        send.send_response(Response::builder().body(Body::from(reply)).unwrap());
    });
    let nodes = NodeClient::new(client, "worker2");
    assert!(nodes.publish(&node(json!({})), &wanted()).await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn only_differing_annotations_are_sent_and_none_when_all_match() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let mut have: serde_json::Map<String, Value> = wanted()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    have.insert(
        "flannel.alpha.coreos.com/public-ip".into(),
        "172.18.0.99".into(),
    );
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        let (_, _, _, body) = body_json(req).await;
        assert_eq!(
            body,
            json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "172.18.0.2"}}})
        );
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&node(json!({}))).unwrap()))
                .unwrap(),
        );
    });
    let nodes = NodeClient::new(client.clone(), "worker2");
    assert!(nodes
        .publish(&node(Value::Object(have)), &wanted())
        .await
        .unwrap());
    server.await.unwrap();
    // Everything in place: no request at all (the mock would hang on one).
    let all: serde_json::Map<String, Value> = wanted()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    assert!(!nodes
        .publish(&node(Value::Object(all)), &wanted())
        .await
        .unwrap());
}

#[tokio::test]
async fn network_unavailable_false_is_a_strategic_merge_of_conditions() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        let (method, uri, ct, body) = body_json(req).await;
        assert_eq!(
            (method, uri.as_str(), ct.as_str()),
            (
                Method::PATCH,
                "/api/v1/nodes/worker2/status?",
                "application/strategic-merge-patch+json"
            )
        );
        assert_eq!(
            body,
            json!({"status": {"conditions": [{
                "type": "NetworkUnavailable", "status": "False",
                "reason": "FlannelIsUp", "message": "Flannel is running on this node",
                "lastTransitionTime": "2026-11-25T16:00:00Z", "lastHeartbeatTime": "2026-11-25T16:00:00Z"
            }]}})
        );
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&node(json!({}))).unwrap()))
                .unwrap(),
        );
    });
    let nodes = NodeClient::new(client, "worker2");
    assert!(nodes
        .set_network_available(&node(json!({})), "2026-11-25T16:00:00Z")
        .await
        .unwrap());
    server.await.unwrap();
}
