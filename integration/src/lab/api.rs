//! The lab's Kubernetes API: the real kube-apiserver or the embedded Node
//! API server, behind one small interface for what the lab does with Nodes.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::kube_api::RealApiServer;
use crate::node_api::NodeApi;
use crate::topology::NodeSpec;
use weft_overlay::Family;

/// Which Kubernetes API a lab should run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApiChoice {
    /// The real kube-apiserver where one is found
    /// ([`RealApiServer::locate`]: `$WEFT_KUBE_DIR`, `../shared/kube`), else
    /// the embedded Node API server.
    #[default]
    Auto,
    /// The real kube-apiserver; an error if there is none.
    Real,
    /// weft's embedded Node API server.
    Embedded,
}

/// Which API server the lab runs.
pub enum Api {
    /// ../shared/kube's kube-apiserver.
    Real(RealApiServer),
    /// weft's embedded Node API server.
    Embedded(NodeApi, PathBuf),
}

impl Api {
    /// What the lab says it uses.
    pub fn describe(&self) -> &'static str {
        match self {
            Api::Real(_) => "the real kube-apiserver (../shared/kube, or --kube-dir / $WEFT_KUBE_DIR), agents with flannel's RBAC rights only",
            Api::Embedded(..) => "weft's embedded Node API server (no real kube-apiserver found, or --api embedded)",
        }
    }

    pub(super) fn kubeconfig(&self) -> PathBuf {
        match self {
            Api::Real(r) => r.agent_kubeconfig(),
            Api::Embedded(_, kc) => kc.clone(),
        }
    }

    /// Sets annotations on a Node as flanneld does (status subresource).
    pub(super) fn annotate_node(
        &self,
        name: &str,
        annotations: &[(String, String)],
    ) -> anyhow::Result<()> {
        match self {
            Api::Real(r) => r.annotate_node(name, annotations),
            Api::Embedded(e, _) => e
                .update_node(name, |node| {
                    for (k, v) in annotations {
                        node["metadata"]["annotations"][k] = Value::from(v.as_str());
                    }
                })
                .map(drop),
        }
    }

    /// The Nodes of these names that exist, as JSON.
    pub fn nodes(&self, names: &[&str]) -> anyhow::Result<Vec<Value>> {
        match self {
            Api::Real(r) => names.iter().filter_map(|n| r.node(n).transpose()).collect(),
            Api::Embedded(e, _) => Ok(names.iter().filter_map(|n| e.node(n)).collect()),
        }
    }

    pub(super) fn delete_node(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Api::Real(r) => r.delete_node(name),
            Api::Embedded(e, _) => e.delete_node(name),
        }
    }

    /// Creates the Node with a pod subnet of each of `families`, as the
    /// controller manager allocates them (`podCIDRs`, IPv4 first).
    pub(super) fn create_node(&self, spec: &NodeSpec, families: &[Family]) -> anyhow::Result<()> {
        let cidrs: Vec<String> = families
            .iter()
            .map(|f| spec.subnet_of(*f).to_string())
            .collect();
        match self {
            Api::Real(r) => r.create_node_with_cidrs(&spec.name, &cidrs, spec.ip, &[]),
            Api::Embedded(e, _) => e.create_node(json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": spec.name},
                "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
                "status": {"addresses": [{"type": "InternalIP", "address": spec.ip.to_string()}]}
            })),
        }
    }
}
