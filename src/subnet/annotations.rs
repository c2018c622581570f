//! flannel's Node annotations: their names under a prefix, and the
//! conversion of a Node into a [`Lease`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use weft_overlay::{Family, Lease};

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
    /// `…/backend-data` (IPv4) or `…/backend-v6-data` (IPv6).
    pub fn backend_data(&self, family: Family) -> String {
        self.name(match family {
            Family::V4 => "backend-data",
            Family::V6 => "backend-v6-data",
        })
    }
    /// `…/public-ip` or `…/public-ipv6`.
    pub fn public_ip(&self, family: Family) -> String {
        self.name(match family {
            Family::V4 => "public-ip",
            Family::V6 => "public-ipv6",
        })
    }
    /// `…/public-ip-overwrite` or `…/public-ipv6-overwrite`: set by users;
    /// advertised instead of the detected address.
    pub fn public_ip_overwrite(&self, family: Family) -> String {
        self.name(match family {
            Family::V4 => "public-ip-overwrite",
            Family::V6 => "public-ipv6-overwrite",
        })
    }
    /// `…/node-public-ip` or `…/node-public-ipv6`: set by users; used as
    /// `--public-ip` / `--public-ipv6`.
    pub fn node_public_ip(&self, family: Family) -> String {
        self.name(match family {
            Family::V4 => "node-public-ip",
            Family::V6 => "node-public-ipv6",
        })
    }

    /// What this node publishes, exactly as flanneld does: the backend type,
    /// the subnet-manager mark, and for each enabled family its backend data
    /// and advertised address.
    pub fn published(
        &self,
        backend_type: &str,
        families: &[Published],
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::from([
            (self.backend_type(), backend_type.to_string()),
            (self.subnet_manager(), "true".to_string()),
        ]);
        for p in families {
            let family = Family::of_addr(&p.public_ip);
            out.insert(self.backend_data(family), p.backend_data.clone());
            out.insert(self.public_ip(family), p.public_ip.to_string());
        }
        out
    }

    /// Whether the node runs flannel or weft: `kube-subnet-manager: "true"`.
    pub fn is_managed(&self, node: &Node) -> bool {
        annotations_of(node)
            .get(&self.subnet_manager())
            .map(String::as_str)
            == Some("true")
    }

    /// Whether the node publishes anything of `family` (its public address
    /// or its backend data).
    pub fn publishes(&self, node: &Node, family: Family) -> bool {
        let ann = annotations_of(node);
        ann.contains_key(&self.public_ip(family)) || ann.contains_key(&self.backend_data(family))
    }

    /// A peer's lease of one family from its Node. `Ok(None)`: the node does
    /// not run flannel or weft (yet): no `kube-subnet-manager: "true"`.
    /// `Err`: it does, but a field is unusable (named in the error),
    /// including a podCIDR without the family's annotations and the reverse.
    pub fn lease(&self, node: &Node, family: Family) -> Result<Option<Lease>, NodeError> {
        if !self.is_managed(node) {
            return Ok(None);
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let ann = annotations_of(node);
        let bad = |field: String, reason: String| NodeError {
            node: name.clone(),
            field,
            reason,
        };
        let public_ip_key = self.public_ip(family);
        let subnet = match pod_cidr(node, family) {
            Ok(subnet) => subnet,
            // No subnet of this family, though the node publishes an
            // address of it: the two disagree.
            Err(PodCidrError::NoneOfFamily(field, _, list)) if ann.contains_key(&public_ip_key) => {
                return Err(bad(
                    field.into(),
                    format!("no {family} subnet in {list}, but the node publishes {public_ip_key}"),
                ))
            }
            Err(e) => return Err(bad(e.field().into(), e.to_string())),
        };
        let public_ip = match ann.get(&public_ip_key) {
            None => {
                return Err(bad(
                    public_ip_key,
                    format!("missing, but spec.podCIDRs has the {family} subnet {subnet}"),
                ))
            }
            Some(v) => v
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| Family::of_addr(ip) == family)
                .ok_or_else(|| {
                    bad(
                        public_ip_key.clone(),
                        format!("{v:?} is not an {family} address"),
                    )
                })?,
        };
        let backend_type = ann
            .get(&self.backend_type())
            .cloned()
            .ok_or_else(|| bad(self.backend_type(), "missing".into()))?;
        let backend_data = ann
            .get(&self.backend_data(family))
            .cloned()
            .unwrap_or_else(|| "null".into());
        Ok(Some(Lease {
            node: name,
            subnet,
            public_ip,
            backend_type,
            backend_data,
        }))
    }
}

/// One family's part of what a node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The backend data (`{"VNI":1,"VtepMAC":"…"}`, or `null`).
    pub backend_data: String,
    /// The advertised address (its family says which annotations).
    pub public_ip: IpAddr,
}

fn annotations_of(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.annotations.as_ref().unwrap_or(&EMPTY)
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

/// Why a node has no usable pod subnet of a family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrError {
    /// Neither `spec.podCIDRs` nor `spec.podCIDR` is set.
    #[error("not set (has the controller manager allocated node CIDRs?)")]
    NotSet,
    /// The field (named) holds no subnet of the family; the list as text.
    #[error("no {1} subnet in {2}")]
    NoneOfFamily(&'static str, Family, String),
    /// The field (named) holds something that is not a CIDR.
    #[error("{1:?} is not a CIDR")]
    NotACidr(&'static str, String),
    /// More than one entry per family, or more than two entries.
    #[error("{0:?} has more than one subnet per family")]
    TooMany(Vec<String>),
    /// The field (named): a subnet with host bits.
    #[error("{1} has host bits set")]
    HostBits(&'static str, IpNet),
}

impl PodCidrError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PodCidrError::NotSet => "spec.podCIDR",
            PodCidrError::TooMany(_) => "spec.podCIDRs",
            PodCidrError::NoneOfFamily(f, _, _)
            | PodCidrError::NotACidr(f, _)
            | PodCidrError::HostBits(f, _) => f,
        }
    }
}

/// The node's pod subnet of `family`: its entry in `spec.podCIDRs`, else
/// `spec.podCIDR` (as flannel reads them: at most one entry per family).
pub fn pod_cidr(node: &Node, family: Family) -> Result<IpNet, PodCidrError> {
    let spec = node.spec.as_ref();
    let (field, list): (&'static str, Vec<&String>) = match spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .filter(|l| !l.is_empty())
    {
        Some(l) => ("spec.podCIDRs", l.iter().collect()),
        None => match spec.and_then(|s| s.pod_cidr.as_ref()) {
            Some(c) => ("spec.podCIDR", vec![c]),
            None => return Err(PodCidrError::NotSet),
        },
    };
    let mut parsed = Vec::with_capacity(list.len());
    for c in &list {
        parsed.push(
            c.parse::<IpNet>()
                .map_err(|_| PodCidrError::NotACidr(field, (*c).clone()))?,
        );
    }
    let of_family: Vec<IpNet> = parsed
        .iter()
        .copied()
        .filter(|n| Family::of_net(n) == family)
        .collect();
    if parsed.len() > 2 || of_family.len() > 1 {
        return Err(PodCidrError::TooMany(list.into_iter().cloned().collect()));
    }
    let subnet = of_family
        .first()
        .copied()
        .ok_or_else(|| PodCidrError::NoneOfFamily(field, family, format!("{list:?}")))?;
    if subnet.trunc() != subnet {
        return Err(PodCidrError::HostBits(field, subnet));
    }
    Ok(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

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
                .backend_data(Family::V4),
            "flannel.alpha.coreos.com/backend-data"
        );
        assert_eq!(
            Annotations::new("example.com/")
                .unwrap()
                .public_ip(Family::V4),
            "example.com/public-ip"
        );
        assert_eq!(
            Annotations::new("example.com/net")
                .unwrap()
                .public_ip(Family::V6),
            "example.com/net-public-ipv6"
        );
        assert!(Annotations::new("a/b/c").is_err());
        assert!(Annotations::new("Bad_Domain/x").is_err());
    }

    #[test]
    fn flannel_written_node_round_trips_to_a_lease() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let lease = a.lease(&flannel_node(), Family::V4).unwrap().unwrap();
        assert_eq!(
            a.lease(&flannel_node(), Family::V6).unwrap_err().field,
            "spec.podCIDRs"
        );
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
        let published = a.published(
            "vxlan",
            &[Published {
                backend_data: data.to_json(),
                public_ip: Ipv4Addr::new(172, 18, 0, 3).into(),
            }],
        );
        assert_eq!(published.len(), 4);
        let ann = flannel_node().metadata.annotations.unwrap();
        for (k, v) in &published {
            assert_eq!(ann.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn nodes_without_flannel_are_not_peers_and_bad_fields_are_named() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(
            a.lease(
                &node(json!({"metadata": {"name": "plain"}, "spec": {"podCIDR": "10.244.9.0/24"}})),
                Family::V4
            )
            .unwrap(),
            None
        );
        let mut n = flannel_node();
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(a.public_ip(Family::V4), "not-an-ip".into());
        let e = a.lease(&n, Family::V4).unwrap_err();
        assert_eq!(
            (e.node.as_str(), e.field.as_str()),
            (
                "k8s-guide-control-plane",
                "flannel.alpha.coreos.com/public-ip"
            )
        );
        let mut n = flannel_node();
        n.spec = None;
        assert_eq!(a.lease(&n, Family::V4).unwrap_err().field, "spec.podCIDR");
        let mut n = flannel_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00::/64".into()]);
        let e = a.lease(&n, Family::V4).unwrap_err();
        assert_eq!(e.field, "spec.podCIDRs");
        assert!(e.reason.contains("no IPv4 subnet"), "{e}");
        let mut n = flannel_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00::/64".into(), "10.244.7.0/24".into()]);
        assert_eq!(
            a.lease(&n, Family::V4).unwrap().unwrap().subnet,
            "10.244.7.0/24".parse::<ipnet::IpNet>().unwrap()
        );
        // The v6 subnet without the v6 annotations: a family mismatch, named.
        let e = a.lease(&n, Family::V6).unwrap_err();
        assert_eq!(e.field, "flannel.alpha.coreos.com/public-ipv6");
        assert!(e.reason.contains("missing"), "{e}");
        let mut n = flannel_node();
        n.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.244.7.0/24".into(), "10.244.8.0/24".into()]);
        assert_eq!(a.lease(&n, Family::V4).unwrap_err().field, "spec.podCIDRs");
    }
}

#[cfg(test)]
mod dual_stack_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// A dual-stack Node as flanneld v0.28 leaves it (vxlan).
    fn dual_node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "worker", "annotations": {
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"5a:11:99:ab:8c:22\"}",
                "flannel.alpha.coreos.com/backend-v6-data": "{\"VNI\":1,\"VtepMAC\":\"6e:5f:3b:12:00:9a\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "172.18.0.3",
                "flannel.alpha.coreos.com/public-ipv6": "fd00:18::3"
            }},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fc00:0:0:1::/64"]}
        }))
        .unwrap()
    }

    #[test]
    fn each_family_gets_its_own_lease() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let v4 = a.lease(&dual_node(), Family::V4).unwrap().unwrap();
        let v6 = a.lease(&dual_node(), Family::V6).unwrap().unwrap();
        assert_eq!(v4.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(v4.public_ip.to_string(), "172.18.0.3");
        assert!(v4.backend_data.contains("5a:11:99:ab:8c:22"));
        assert_eq!(v6.subnet.to_string(), "fc00:0:0:1::/64");
        assert_eq!(v6.public_ip.to_string(), "fd00:18::3");
        assert!(v6.backend_data.contains("6e:5f:3b:12:00:9a"));
        // What weft publishes for both families is flannel's set, byte for byte.
        let published = a.published(
            "vxlan",
            &[
                Published {
                    backend_data: v4.backend_data.clone(),
                    public_ip: v4.public_ip,
                },
                Published {
                    backend_data: v6.backend_data.clone(),
                    public_ip: v6.public_ip,
                },
            ],
        );
        assert_eq!(
            &published,
            dual_node().metadata.annotations.as_ref().unwrap()
        );
    }

    #[test]
    fn family_mismatches_are_named() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        // The v6 address published, but no v6 podCIDR.
        let mut n = dual_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.1.0/24".into()]);
        let e = a.lease(&n, Family::V6).unwrap_err();
        assert_eq!(
            (e.node.as_str(), e.field.as_str()),
            ("worker", "spec.podCIDRs")
        );
        assert!(
            e.reason
                .contains("publishes flannel.alpha.coreos.com/public-ipv6"),
            "{e}"
        );
        // A v4 address in the v6 annotation.
        let mut n = dual_node();
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(a.public_ip(Family::V6), "172.18.0.3".into());
        let e = a.lease(&n, Family::V6).unwrap_err();
        assert_eq!(e.field, "flannel.alpha.coreos.com/public-ipv6");
        assert!(e.reason.contains("not an IPv6 address"), "{e}");
        // IPv6-only: podCIDR alone, v6.
        let mut n = dual_node();
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("fc00:0:0:7::/64".into()),
            ..Default::default()
        });
        assert_eq!(
            a.lease(&n, Family::V6).unwrap().unwrap().subnet.to_string(),
            "fc00:0:0:7::/64"
        );
        assert!(a.publishes(&n, Family::V6) && a.publishes(&n, Family::V4));
    }
}
