//! flannel's Node annotations: their names under a prefix, and the
//! conversion of a Node into a [`Lease`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use weft_overlay::Lease;

/// The annotation names under one prefix (`--kube-annotation-prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    prefix: String,
}

/// Why a prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--kube-annotation-prefix {0:?}: {1}")]
pub struct BadPrefix(pub String, pub &'static str);

impl Annotations {
    /// flannel's rules: at most one `/`; none → one is appended; a prefix
    /// with a path part gets a `-` separator (`example.com/net` → `example.com/net-`).
    pub fn new(prefix: &str) -> Result<Annotations, BadPrefix> {
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(BadPrefix(prefix.into(), "can contain at most one slash"));
        }
        let mut p = prefix.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let (domain, _) = p.split_once('/').unwrap_or((&p, ""));
        let ok_domain = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !ok_domain {
            return Err(BadPrefix(
                prefix.into(),
                "the part before the slash must be a DNS name (lower case)",
            ));
        }
        Ok(Annotations { prefix: p })
    }

    /// Whether annotation `key` is under the prefix (flannel's and weft's).
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// `…/kube-subnet-manager`: `"true"` on nodes run by flannel or weft.
    pub fn subnet_manager(&self) -> String {
        self.name("kube-subnet-manager")
    }
    /// `…/backend-type`.
    pub fn backend_type(&self) -> String {
        self.name("backend-type")
    }
    /// `…/backend-data`.
    pub fn backend_data(&self) -> String {
        self.name("backend-data")
    }
    /// `…/public-ip`.
    pub fn public_ip(&self) -> String {
        self.name("public-ip")
    }
    /// `…/public-ip-overwrite`: set by users; advertised instead of the detected IP.
    pub fn public_ip_overwrite(&self) -> String {
        self.name("public-ip-overwrite")
    }
    /// `…/node-public-ip`: set by users; used as `--public-ip`.
    pub fn node_public_ip(&self) -> String {
        self.name("node-public-ip")
    }

    /// What this node publishes, exactly as flanneld does.
    pub fn published(
        &self,
        backend_type: &str,
        backend_data: &str,
        public_ip: Ipv4Addr,
    ) -> BTreeMap<String, String> {
        BTreeMap::from([
            (self.backend_data(), backend_data.to_string()),
            (self.backend_type(), backend_type.to_string()),
            (self.subnet_manager(), "true".to_string()),
            (self.public_ip(), public_ip.to_string()),
        ])
    }

    /// A peer's lease from its Node. `Ok(None)`: the node does not run flannel
    /// or weft (yet): no `kube-subnet-manager: "true"`. `Err`: it does, but a
    /// field is unusable (named in the error).
    pub fn lease(&self, node: &Node) -> Result<Option<Lease>, NodeError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
        if ann.get(&self.subnet_manager()).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let bad = |field: String, reason: String| NodeError {
            node: name.clone(),
            field,
            reason,
        };
        let subnet = pod_cidr(node).map_err(|(f, r)| bad(f.into(), r))?;
        let public_ip = match ann.get(&self.public_ip()) {
            None => return Err(bad(self.public_ip(), "missing".into())),
            Some(v) => v
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(self.public_ip(), format!("{v:?} is not an IPv4 address")))?,
        };
        let backend_type = ann
            .get(&self.backend_type())
            .cloned()
            .ok_or_else(|| bad(self.backend_type(), "missing".into()))?;
        let backend_data = ann
            .get(&self.backend_data())
            .cloned()
            .unwrap_or_else(|| "null".into());
        Ok(Some(Lease {
            node: name,
            subnet: subnet.into(),
            public_ip: public_ip.into(),
            backend_type,
            backend_data,
        }))
    }
}

/// A node that runs flannel or weft but cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: {field}: {reason}")]
pub struct NodeError {
    /// The Node.
    pub node: String,
    /// The field or annotation.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The node's IPv4 pod subnet: the first IPv4 entry of `spec.podCIDRs`, else `spec.podCIDR`.
pub fn pod_cidr(node: &Node) -> Result<Ipv4Net, (&'static str, String)> {
    let spec = node.spec.as_ref();
    let list: Vec<&String> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    if !list.is_empty() {
        for c in &list {
            if let Ok(n) = c.parse::<Ipv4Net>() {
                return check_network(n).map_err(|r| ("spec.podCIDRs", r));
            }
        }
        if list.iter().all(|c| c.parse::<ipnet::IpNet>().is_ok()) {
            return Err((
                "spec.podCIDRs",
                format!("no IPv4 subnet in {list:?} (IPv6 is not supported yet)"),
            ));
        }
        return Err(("spec.podCIDRs", format!("{list:?} is not a list of CIDRs")));
    }
    match spec.and_then(|s| s.pod_cidr.as_ref()) {
        None => Err((
            "spec.podCIDR",
            "not set (has the controller manager allocated node CIDRs?)".into(),
        )),
        Some(c) => {
            let n = c
                .parse::<Ipv4Net>()
                .map_err(|_| ("spec.podCIDR", format!("{c:?} is not an IPv4 CIDR")))?;
            check_network(n).map_err(|r| ("spec.podCIDR", r))
        }
    }
}

fn check_network(n: Ipv4Net) -> Result<Ipv4Net, String> {
    if n.trunc() == n {
        Ok(n)
    } else {
        Err(format!("{n} has host bits set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    /// A Node as flanneld v0.28 leaves it (annotations copied from a real cluster's form).
    fn flannel_node() -> Node {
        node(json!({
            "metadata": {"name": "k8s-guide-control-plane", "annotations": {
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"5a:11:99:ab:8c:22\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "172.18.0.3",
                "node.alpha.kubernetes.io/ttl": "0"
            }},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}
        }))
    }

    #[test]
    fn prefixes_as_flannel_builds_them() {
        assert_eq!(
            Annotations::new("flannel.alpha.coreos.com")
                .unwrap()
                .backend_data(),
            "flannel.alpha.coreos.com/backend-data"
        );
        assert_eq!(
            Annotations::new("example.com/").unwrap().public_ip(),
            "example.com/public-ip"
        );
        assert_eq!(
            Annotations::new("example.com/net").unwrap().public_ip(),
            "example.com/net-public-ip"
        );
        assert!(Annotations::new("a/b/c").is_err());
        assert!(Annotations::new("Bad_Domain/x").is_err());
    }

    #[test]
    fn flannel_written_node_round_trips_to_a_lease() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let lease = a.lease(&flannel_node()).unwrap().unwrap();
        assert_eq!(lease.node, "k8s-guide-control-plane");
        assert_eq!(
            lease.subnet,
            "10.244.0.0/24".parse::<ipnet::IpNet>().unwrap()
        );
        assert_eq!(
            lease.public_ip,
            std::net::IpAddr::from(Ipv4Addr::new(172, 18, 0, 3))
        );
        assert_eq!(lease.backend_type, "vxlan");
        let data = weft_overlay::VxlanBackendData::parse(&lease.backend_data).unwrap();
        assert_eq!(data.vtep_mac.to_string(), "5a:11:99:ab:8c:22");
        // What weft publishes is the same set of annotations, byte for byte.
        let published = a.published("vxlan", &data.to_json(), Ipv4Addr::new(172, 18, 0, 3));
        let ann = flannel_node().metadata.annotations.unwrap();
        for (k, v) in &published {
            assert_eq!(ann.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn nodes_without_flannel_are_not_peers_and_bad_fields_are_named() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(
            a.lease(&node(
                json!({"metadata": {"name": "plain"}, "spec": {"podCIDR": "10.244.9.0/24"}})
            ))
            .unwrap(),
            None
        );
        let mut n = flannel_node();
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(a.public_ip(), "not-an-ip".into());
        let e = a.lease(&n).unwrap_err();
        assert_eq!(
            (e.node.as_str(), e.field.as_str()),
            (
                "k8s-guide-control-plane",
                "flannel.alpha.coreos.com/public-ip"
            )
        );
        let mut n = flannel_node();
        n.spec = None;
        assert_eq!(a.lease(&n).unwrap_err().field, "spec.podCIDR");
        let mut n = flannel_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00::/64".into()]);
        assert!(a.lease(&n).unwrap_err().reason.contains("IPv6"));
        let mut n = flannel_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00::/64".into(), "10.244.7.0/24".into()]);
        assert_eq!(
            a.lease(&n).unwrap().unwrap().subnet,
            "10.244.7.0/24".parse::<ipnet::IpNet>().unwrap()
        );
    }
}
