//! What weft keeps of a Node: the watch stream's objects are cut down to
//! it before they reach the store, so memory follows the number of Nodes,
//! not their size (a real cluster's Node carries labels, images, addresses,
//! conditions and nodeInfo: tens of kilobytes each).
//!
//! Kept: name, uid, resourceVersion and creation time; the annotations under
//! weft's prefix; `spec.podCIDR(s)`; the `NetworkUnavailable` condition
//! (whether it must still be set). Everything else is dropped.

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Annotations;

/// The only condition weft reads.
const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// Cuts `node` down to what weft reads (see the module docs).
pub fn project(node: &mut Node, annotations: &Annotations) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        creation_timestamp: meta.creation_timestamp,
        annotations: meta.annotations.map(|all| {
            all.into_iter()
                .filter(|(k, _)| annotations.owns(k))
                .collect()
        }),
        ..ObjectMeta::default()
    };
    node.spec = node.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..NodeSpec::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == NETWORK_UNAVAILABLE)
                .collect()
        }),
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// A Node as a real cluster has it, with flannel's annotations.
    fn real_sized() -> Node {
        let images: Vec<_> = (0..40)
            .map(|i| json!({"names": [format!("registry.example/team/app-{i}@sha256:{:064x}", i), format!("registry.example/team/app-{i}:v1.{i}")], "sizeBytes": 123_456_789}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": "worker7", "uid": "0b9c-uid", "resourceVersion": "4242",
                "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"kubernetes.io/hostname": "worker7", "topology.kubernetes.io/zone": "z1", "node.kubernetes.io/instance-type": "m5.large"},
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"c6:26:7f:ef:fa:6b\"}",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/public-ip": "172.18.0.4",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"
                }
            },
            "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"], "providerID": "aws:///z1/i-0abc",
                     "taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "172.18.0.4"}, {"type": "Hostname", "address": "worker7"}],
                "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
                    {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp", "message": "weft is running on this node"},
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"}
                ],
                "images": images,
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn keeps_what_weft_reads_and_nothing_else() {
        let annotations = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let full = real_sized();
        let mut cut = full.clone();
        project(&mut cut, &annotations);
        // What weft derives from a Node is the same.
        assert_eq!(
            annotations.lease(&cut, weft_overlay::Family::V4).unwrap(),
            annotations.lease(&full, weft_overlay::Family::V4).unwrap()
        );
        assert_eq!(
            crate::subnet::annotations::pod_cidr(&cut, weft_overlay::Family::V4),
            crate::subnet::annotations::pod_cidr(&full, weft_overlay::Family::V4)
        );
        assert_eq!(
            cut.metadata.creation_timestamp,
            full.metadata.creation_timestamp
        );
        let ann = cut.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.len(), 4, "only flannel's annotations: {ann:?}");
        assert!(cut.metadata.labels.is_none());
        let conditions = cut.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "NetworkUnavailable");
        let (before, after) = (
            serde_json::to_vec(&full).unwrap().len(),
            serde_json::to_vec(&cut).unwrap().len(),
        );
        assert!(after * 10 < before, "{before} bytes cut to {after}");
    }
}
