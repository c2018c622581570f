//! Objects in the real API server: flannel's RBAC rules and Nodes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use super::RealApiServer;

/// One RBAC rule (a ClusterRole's `rules[]` entry), as plain constants so
/// the deployment manifests can be checked against the same definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule {
    /// `apiGroups`; `""` is the core group.
    pub api_groups: &'static [&'static str],
    /// `resources`, e.g. `"nodes/status"` for a subresource.
    pub resources: &'static [&'static str],
    /// `verbs`.
    pub verbs: &'static [&'static str],
}

impl PolicyRule {
    /// The rule as it appears in a ClusterRole.
    pub fn to_json(&self) -> Value {
        json!({"apiGroups": self.api_groups, "resources": self.resources, "verbs": self.verbs})
    }
}

/// flannel's ClusterRole `flannel`: what a node agent needs, nothing more.
pub const FLANNEL_RULES: &[PolicyRule] = &[
    PolicyRule {
        api_groups: &[""],
        resources: &["pods"],
        verbs: &["get"],
    },
    PolicyRule {
        api_groups: &[""],
        resources: &["nodes"],
        verbs: &["get", "list", "watch"],
    },
    PolicyRule {
        api_groups: &[""],
        resources: &["nodes/status"],
        verbs: &["patch"],
    },
];

/// Name of flannel's ClusterRole (and of its binding here).
pub const FLANNEL_ROLE: &str = "flannel";

/// The user of `kubeconfig-agent`.
pub const AGENT_USER: &str = "node-agent";

/// Field manager for what the harness applies.
const MANAGER: &str = "weft-lab";

impl RealApiServer {
    /// Creates ClusterRole `flannel` with [`FLANNEL_RULES`] and binds it to
    /// user `node-agent`; returns once the authorizer grants it.
    pub fn grant_flannel_role(&self) -> anyhow::Result<()> {
        self.grant_role(FLANNEL_ROLE, FLANNEL_RULES, AGENT_USER)
    }

    /// Applies ClusterRole `role` with `rules` and a ClusterRoleBinding of
    /// the same name to `user`, then waits (≤ 10 s) until a
    /// SubjectAccessReview allows `user` every verb of every rule.
    pub fn grant_role(&self, role: &str, rules: &[PolicyRule], user: &str) -> anyhow::Result<()> {
        let (role, user, rules) = (role.to_owned(), user.to_owned(), rules.to_vec());
        self.admin(move |client| async move {
            let params = PatchParams::apply(MANAGER).force();
            let cluster_role: ClusterRole = serde_json::from_value(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": rules.iter().map(PolicyRule::to_json).collect::<Vec<_>>(),
            }))?;
            Api::<ClusterRole>::all(client.clone())
                .patch(&role, &params, &Patch::Apply(&cluster_role))
                .await
                .with_context(|| format!("cannot apply ClusterRole {role}"))?;
            let binding: ClusterRoleBinding = serde_json::from_value(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }))?;
            Api::<ClusterRoleBinding>::all(client.clone())
                .patch(&role, &params, &Patch::Apply(&binding))
                .await
                .with_context(|| format!("cannot apply ClusterRoleBinding {role}"))?;
            wait_allowed(&client, &user, &rules).await
        })
    }

    /// Creates Node `name` with `spec.podCIDR`/`podCIDRs` = `pod_cidr`,
    /// `annotations`, and an `InternalIP` address in its status.
    pub fn create_node(
        &self,
        name: &str,
        pod_cidr: &str,
        internal_ip: Ipv4Addr,
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.create_node_with_cidrs(name, &[pod_cidr.to_owned()], internal_ip, annotations)
    }

    /// Creates a Node with these pod subnets (`podCIDRs`, one per family,
    /// IPv4 first, as the controller manager allocates them), its
    /// InternalIP and annotations.
    pub fn create_node_with_cidrs(
        &self,
        name: &str,
        pod_cidrs: &[String],
        internal_ip: Ipv4Addr,
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        }))?;
        let status = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip.to_string()},
            {"type": "Hostname", "address": name},
        ]}});
        let name = name.to_owned();
        self.admin(move |client| async move {
            let api = Api::<Node>::all(client);
            api.create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("cannot create Node {name}"))?;
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("cannot set the status of Node {name}"))?;
            Ok(())
        })
    }

    /// Deletes Node `name` (no error if it does not exist).
    pub fn delete_node(&self, name: &str) -> anyhow::Result<()> {
        let name = name.to_owned();
        self.admin(move |client| async move {
            match Api::<Node>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot delete Node {name}")),
            }
        })
    }

    /// Sets `annotations` on Node `name` the way flanneld does: a
    /// strategic-merge patch through the `status` subresource.
    pub fn annotate_node(
        &self,
        name: &str,
        annotations: &[(String, String)],
    ) -> anyhow::Result<()> {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let patch = json!({"metadata": {"annotations": annotations}});
        let name = name.to_owned();
        self.admin(move |client| async move {
            Api::<Node>::all(client)
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .with_context(|| format!("cannot annotate Node {name}"))?;
            Ok(())
        })
    }

    /// Node `name` as JSON, or `None` if there is none.
    pub fn node(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let name = name.to_owned();
        self.admin(move |client| async move {
            let node = Api::<Node>::all(client)
                .get_opt(&name)
                .await
                .with_context(|| format!("cannot get Node {name}"))?;
            node.map(serde_json::to_value)
                .transpose()
                .context("cannot serialize a Node")
        })
    }
}

/// Polls SubjectAccessReviews until `user` may do everything in `rules`.
async fn wait_allowed(
    client: &kube::Client,
    user: &str,
    rules: &[PolicyRule],
) -> anyhow::Result<()> {
    let api = Api::<SubjectAccessReview>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    for rule in rules {
        for (group, resource, verb) in rule
            .api_groups
            .iter()
            .flat_map(|g| rule.resources.iter().map(move |r| (g, r)))
            .flat_map(|(g, r)| rule.verbs.iter().map(move |v| (g, r, v)))
        {
            let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
            let review: SubjectAccessReview = serde_json::from_value(json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": user, "resourceAttributes": {
                    "group": group, "resource": resource, "subresource": subresource, "verb": verb,
                }},
            }))?;
            loop {
                let answer = api.create(&PostParams::default(), &review).await?;
                if answer.status.is_some_and(|s| s.allowed) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{user} still may not {verb} {resource}/{subresource} after 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}
