//! weft deployed as a user deploys it: one of `manifests/*/kube-weft.yml`
//! applied through the API unchanged, apart from the image reference when
//! another one is asked for.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::control::Kubectl;
use super::{wait_for, MANIFEST_IMAGE};

/// weft's namespace, DaemonSet and container (flannel's names).
pub const NAMESPACE: &str = "kube-flannel";
/// The DaemonSet.
pub const DAEMONSET: &str = "kube-flannel-ds";

/// Which manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    /// `manifests/legacy`: NAT through iptables (the node's flavor, or
    /// nftables where kube-proxy uses it).
    Legacy,
    /// `manifests/nftables`: native nftables.
    Nftables,
}

impl Manifest {
    /// Its directory name.
    pub fn name(self) -> &'static str {
        match self {
            Manifest::Legacy => "legacy",
            Manifest::Nftables => "nftables",
        }
    }

    /// `manifests/<name>/kube-weft.yml` of the workspace.
    pub fn path(self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(self.name())
            .join("kube-weft.yml")
    }

    /// The manifest's text with `image` as weft's image.
    pub fn text(self, image: &str) -> anyhow::Result<String> {
        let path = self.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let from = format!("image: {MANIFEST_IMAGE}");
        if !text.contains(&from) {
            bail!("{} has no `{from}`", path.display());
        }
        Ok(text.replace(&from, &format!("image: {image}")))
    }
}

/// `kubectl apply` of the manifest with `image`.
pub fn apply(kubectl: &Kubectl, manifest: Manifest, image: &str) -> anyhow::Result<()> {
    let text = manifest.text(image)?;
    kubectl
        .run_with_input(&["apply", "-f", "-"], Some(&text))
        .map(drop)
}

/// Waits until the DaemonSet is rolled out on every node.
pub fn wait_rollout(kubectl: &Kubectl, timeout: Duration) -> anyhow::Result<Duration> {
    let began = std::time::Instant::now();
    let t = format!("--timeout={}s", timeout.as_secs());
    kubectl.run(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        &format!("ds/{DAEMONSET}"),
        &t,
    ])?;
    Ok(began.elapsed())
}

/// Waits until every node is Ready.
pub fn wait_nodes_ready(kubectl: &Kubectl, timeout: Duration) -> anyhow::Result<Duration> {
    wait_for("every node Ready", timeout, || {
        let nodes = kubectl.json(&["get", "nodes"])?;
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        Ok(!items.is_empty() && items.iter().all(is_ready))
    })
}

/// Whether an object (a Node, a Pod) has the condition Ready=True.
pub fn is_ready(object: &serde_json::Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// One weft pod.
#[derive(Debug, Clone)]
pub struct WeftPod {
    /// Pod name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Ready.
    pub ready: bool,
    /// Its image.
    pub image: String,
}

/// The DaemonSet's pods, but for those being deleted (with the manifests'
/// `maxSurge` an old pod terminates beside its successor for a while).
pub fn weft_pods(kubectl: &Kubectl) -> anyhow::Result<Vec<WeftPod>> {
    let pods = kubectl.json(&["-n", NAMESPACE, "get", "pods", "-l", "app=flannel"])?;
    Ok(pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| WeftPod {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ready: is_ready(p),
            image: p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .into(),
        })
        .collect())
}

/// The log of weft's pod on `node`.
pub fn weft_log(kubectl: &Kubectl, node: &str) -> anyhow::Result<String> {
    let pod = weft_pods(kubectl)?
        .into_iter()
        .find(|p| p.node == node)
        .with_context(|| format!("no weft pod on {node}"))?;
    kubectl.run(&["-n", NAMESPACE, "logs", &pod.name, "-c", "kube-flannel"])
}
