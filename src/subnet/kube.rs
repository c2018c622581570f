//! The Kubernetes subnet manager: this node from the API, what it publishes
//! there, and every other node as a lease.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use weft_overlay::Family;

use super::annotations::Annotations;

/// Errors talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No way to find this node's name.
    #[error("cannot tell which Node this is: set NODE_NAME (or POD_NAME and POD_NAMESPACE, as flannel's manifest does)")]
    NoNodeName,
    /// The pod has no node yet.
    #[error("pod {namespace}/{name} has no spec.nodeName")]
    PodWithoutNode {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// A write got no answer in time (retried by the caller).
    #[error("{what}: no answer within {waited:?}")]
    Timeout {
        /// What was asked.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// How long one write to the API may take before it is given up and
/// retried: a request stuck on a lost connection would otherwise hold this
/// node's publication for kube's 30 s connect timeout (or longer).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, failing with [`KubeError::Timeout`] after [`WRITE_TIMEOUT`].
async fn bounded<T>(
    what: String,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(WRITE_TIMEOUT, request).await {
        Ok(r) => r.map_err(|source| KubeError::Api { what, source }),
        Err(_) => Err(KubeError::Timeout {
            what,
            waited: WRITE_TIMEOUT,
        }),
    }
}

/// This node's name: `NODE_NAME`, else the pod's `spec.nodeName` (`POD_NAME`, `POD_NAMESPACE`), as flanneld finds it.
pub async fn node_name(
    client: &Client,
    env: &HashMap<String, String>,
) -> Result<String, KubeError> {
    if let Some(n) = env.get("NODE_NAME").filter(|n| !n.is_empty()) {
        return Ok(n.clone());
    }
    let (Some(name), Some(namespace)) = (env.get("POD_NAME"), env.get("POD_NAMESPACE")) else {
        return Err(KubeError::NoNodeName);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await.map_err(|source| KubeError::Api {
        what: format!("get pod {namespace}/{name}"),
        source,
    })?;
    pod.spec
        .and_then(|s| s.node_name)
        .ok_or_else(|| KubeError::PodWithoutNode {
            namespace: namespace.clone(),
            name: name.clone(),
        })
}

/// Talks to the API about this node.
#[derive(Clone)]
pub struct NodeClient {
    api: Api<Node>,
    name: String,
}

/// flannel's reason and message on `NetworkUnavailable=False`.
pub const CONDITION_REASON: &str = "FlannelIsUp";
/// See [`CONDITION_REASON`].
pub const CONDITION_MESSAGE: &str = "Flannel is running on this node";

impl NodeClient {
    /// For node `name`.
    pub fn new(client: Client, name: &str) -> NodeClient {
        NodeClient {
            api: Api::all(client),
            name: name.to_string(),
        }
    }

    /// The Nodes API.
    pub fn api(&self) -> &Api<Node> {
        &self.api
    }

    /// Publishes `wanted` annotations through `nodes/<name>/status` (as flanneld
    /// does) with a JSON merge patch of only the ones that differ. Returns
    /// whether it patched.
    pub async fn publish(
        &self,
        node: &Node,
        wanted: &BTreeMap<String, String>,
    ) -> Result<bool, KubeError> {
        let empty = BTreeMap::new();
        let have = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let differ: BTreeMap<&String, &String> = wanted
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .collect();
        if differ.is_empty() {
            return Ok(false);
        }
        let patch = json!({ "metadata": { "annotations": differ } });
        bounded(
            format!("patch annotations of node {}", self.name),
            self.api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(true)
    }

    /// Sets `NetworkUnavailable=False` (strategic merge on `status.conditions`,
    /// by type), unless it already is.
    pub async fn set_network_available(&self, node: &Node, now: &str) -> Result<bool, KubeError> {
        let already = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
            });
        if already {
            return Ok(false);
        }
        let patch = json!({ "status": { "conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": CONDITION_REASON,
            "message": CONDITION_MESSAGE,
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        bounded(
            format!("set NetworkUnavailable=False on node {}", self.name),
            self.api.patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            ),
        )
        .await?;
        Ok(true)
    }
}

/// The address to publish for `detected`'s family: `public-ip-overwrite`
/// (`public-ipv6-overwrite`) when the user set it, else the detected one.
pub fn advertised_ip(node: &Node, annotations: &Annotations, detected: IpAddr) -> IpAddr {
    let family = Family::of_addr(&detected);
    annotation(node, &annotations.public_ip_overwrite(family))
        .and_then(|v| v.parse::<IpAddr>().ok())
        .filter(|ip| Family::of_addr(ip) == family)
        .unwrap_or(detected)
}

/// The `node-public-ip` (`node-public-ipv6`) annotation, which flannel uses
/// as `--public-ip` (`--public-ipv6`).
pub fn node_public_ip(node: &Node, annotations: &Annotations, family: Family) -> Option<IpAddr> {
    annotation(node, &annotations.node_public_ip(family))?
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| Family::of_addr(ip) == family)
}

/// The `backend-data` (`backend-v6-data`) this node published before, if
/// any (its backend says what to keep of it, e.g. the VTEP MAC, flannel #1795).
pub fn own_backend_data<'a>(
    node: &'a Node,
    annotations: &Annotations,
    family: Family,
) -> Option<&'a str> {
    annotation(node, &annotations.backend_data(family))
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}
